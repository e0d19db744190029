//! Small SMTP listeners on 127.0.0.1:<free port>, each misbehaving in one way.
//!
//! Each listener runs on its own thread with its own tokio runtime, so it keeps serving
//! whatever the test's runtime is doing (blocking calls included), and stops on drop.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::ca::LeafCert;
use crate::{Error, Result};

/// The name fault listeners give in banners and EHLO replies.
pub const FAULT_HOST: &str = "fault.mxguard.test";

/// What a [`FaultListener`] does wrong. Apart from its fault, each one speaks ordinary SMTP
/// (EHLO, MAIL, RCPT accepted, QUIT), without STARTTLS unless it is [`Fault::StartTls`].
#[derive(Clone, Debug)]
pub enum Fault {
    /// Accepts the connection, then never sends a byte.
    Silent,
    /// Greets with this 4xx or 5xx code (4xx, e.g. 421: then closes; 5xx, e.g. 554: answers
    /// 503 to everything but QUIT, as RFC 5321 §3.1 asks).
    Banner(u16),
    /// A healthy-looking server that does not offer STARTTLS.
    NoStartTls,
    /// Offers STARTTLS and completes the handshake with this certificate (expired, wrong
    /// name…), then goes on in TLS.
    StartTls(LeafCert),
    /// Sends its 220 banner one byte per interval (e.g. one second), then behaves.
    Trickle(Duration),
    /// Sends every reply (the banner included) this long after it is due: each reply within
    /// a phase timeout, the whole session long.
    SlowReplies(Duration),
    /// Answers EHLO and HELO with this code (e.g. 550).
    EhloRejected(u16),
    /// Answers every RCPT with this code (e.g. 450 or 550).
    RcptRejected(u16),
    /// Greets with this code in a reply of 99 lines of 2,000 bytes (about 200 KB: a hostile
    /// server's largest reply a client reads); with a 5xx it then refuses everything but QUIT.
    LongBanner(u16),
}

/// A running fault listener; it stops, and drops its connections, on drop.
#[derive(Debug)]
pub struct FaultListener {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultListener {
    /// Binds 127.0.0.1:0 and serves `fault` until dropped. Needs no runtime of its own.
    pub fn start(fault: Fault) -> Result<FaultListener> {
        FaultListener::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), fault)
    }

    /// Like [`FaultListener::start`], on `addr` (e.g. 127.0.0.20:PORT, one of several MX
    /// hosts on one port). With [`Fault::StartTls`] and a valid certificate it is a healthy MX
    /// host, much lighter than Postfix: what benchmarks with thousands of probes use.
    pub fn start_on(addr: SocketAddr, fault: Fault) -> Result<FaultListener> {
        let listener = std::net::TcpListener::bind(addr)
            .map_err(|e| Error::io(format!("binding a fault listener on {addr}"), e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("reading a fault listener's address", e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::io("making a listener non-blocking", e))?;
        let tls = match &fault {
            Fault::StartTls(cert) => Some(TlsAcceptor::from(cert.rustls_server_config()?)),
            _ => None,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::io("building a runtime for a fault listener", e))?;
        let accepted = Arc::new(AtomicUsize::new(0));
        let (shutdown, stop) = oneshot::channel();
        let count = accepted.clone();
        let thread = std::thread::Builder::new()
            .name(format!("fault-{addr}"))
            .spawn(move || runtime.block_on(serve(listener, Arc::new(fault), tls, count, stop)))
            .map_err(|e| Error::io("spawning a fault listener thread", e))?;
        Ok(FaultListener {
            addr,
            accepted,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many connections it has accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for FaultListener {
    fn drop(&mut self) {
        drop(self.shutdown.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    fault: Arc<Fault>,
    tls: Option<TlsAcceptor>,
    accepted: Arc<AtomicUsize>,
    mut stop: oneshot::Receiver<()>,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    // Dropped when this returns: aborts every open session.
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => return,
            conn = listener.accept() => {
                if let Ok((stream, _)) = conn {
                    accepted.fetch_add(1, Ordering::SeqCst);
                    sessions.spawn(session(stream, fault.clone(), tls.clone()));
                }
            }
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
}

/// What the SMTP dialogue does besides the basics.
#[derive(Clone, Copy, Default)]
struct Rules {
    offer_starttls: bool,
    /// Every reply waits this long.
    delay: Option<Duration>,
    ehlo_code: Option<u16>,
    rcpt_code: Option<u16>,
    /// After a 5xx banner: 503 to everything but QUIT.
    refuse_all: bool,
}

async fn session(
    mut stream: TcpStream,
    fault: Arc<Fault>,
    tls: Option<TlsAcceptor>,
) -> std::io::Result<()> {
    let greeting = format!("220 {FAULT_HOST} ESMTP fault listener\r\n");
    let mut rules = Rules::default();
    match &*fault {
        Fault::Silent => {
            // Read and ignore until the client gives up.
            let mut buf = [0u8; 1024];
            while stream.read(&mut buf).await? > 0 {}
            return Ok(());
        }
        Fault::Banner(code) => {
            let text = if *code < 500 {
                "4.3.2 Service not available, closing transmission channel"
            } else {
                "5.3.2 No SMTP service here"
            };
            stream
                .write_all(format!("{code} {FAULT_HOST} {text}\r\n").as_bytes())
                .await?;
            if *code < 500 {
                return stream.shutdown().await;
            }
            rules.refuse_all = true;
        }
        Fault::LongBanner(code) => {
            let line = "x".repeat(2000);
            let mut text = String::new();
            for _ in 0..98 {
                text.push_str(&format!("{code}-{line}\r\n"));
            }
            text.push_str(&format!("{code} {line}\r\n"));
            stream.write_all(text.as_bytes()).await?;
            rules.refuse_all = *code >= 500;
        }
        Fault::Trickle(interval) => {
            for byte in greeting.bytes() {
                stream.write_all(&[byte]).await?;
                stream.flush().await?;
                tokio::time::sleep(*interval).await;
            }
        }
        Fault::NoStartTls => stream.write_all(greeting.as_bytes()).await?,
        Fault::SlowReplies(delay) => {
            rules.delay = Some(*delay);
            tokio::time::sleep(*delay).await;
            stream.write_all(greeting.as_bytes()).await?;
        }
        Fault::StartTls(_) => {
            rules.offer_starttls = true;
            stream.write_all(greeting.as_bytes()).await?;
        }
        Fault::EhloRejected(code) => {
            rules.ehlo_code = Some(*code);
            stream.write_all(greeting.as_bytes()).await?;
        }
        Fault::RcptRejected(code) => {
            rules.rcpt_code = Some(*code);
            stream.write_all(greeting.as_bytes()).await?;
        }
    }
    let upgrade = dialogue(stream, rules).await?;
    if let (Some(plain), Some(acceptor)) = (upgrade, tls) {
        let secure = acceptor.accept(plain).await?;
        let rules = Rules {
            offer_starttls: false,
            ..rules
        };
        dialogue(secure, rules).await?;
    }
    Ok(())
}

/// Answers commands until QUIT or EOF. Returns the stream when the client asked for STARTTLS
/// and it was offered (the buffered plaintext is discarded, as RFC 3207 requires).
async fn dialogue<S>(stream: S, rules: Rules) -> std::io::Result<Option<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut io = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if (&mut io).take(1024).read_line(&mut line).await? == 0 {
            return Ok(None);
        }
        let verb = line
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        let reply = match verb.as_str() {
            "QUIT" => {
                io.write_all(b"221 2.0.0 Bye\r\n").await?;
                return Ok(None);
            }
            _ if rules.refuse_all => "503 5.5.1 Error: no SMTP service here".to_string(),
            "EHLO" | "HELO" if rules.ehlo_code.is_some() => {
                let code = rules.ehlo_code.unwrap_or(550);
                format!("{code} {}.7.1 Error: {verb} rejected", code / 100)
            }
            "EHLO" => {
                let tls = if rules.offer_starttls {
                    "250-STARTTLS\r\n"
                } else {
                    ""
                };
                format!(
                    "250-{FAULT_HOST}\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n{tls}250 8BITMIME"
                )
            }
            "HELO" => format!("250 {FAULT_HOST}"),
            "STARTTLS" if rules.offer_starttls => {
                io.write_all(b"220 2.0.0 Ready to start TLS\r\n").await?;
                io.flush().await?;
                return Ok(Some(io.into_inner()));
            }
            "MAIL" => "250 2.1.0 Ok".to_string(),
            "RCPT" => match rules.rcpt_code {
                Some(code) => format!(
                    "{code} {}.7.1 Recipient address rejected by the fault listener",
                    code / 100
                ),
                None => "250 2.1.5 Ok".to_string(),
            },
            "RSET" | "NOOP" => "250 2.0.0 Ok".to_string(),
            "DATA" => "554 5.5.1 Error: this test listener takes no mail".to_string(),
            "STARTTLS" => "502 5.5.1 Error: command not implemented".to_string(),
            _ => "502 5.5.2 Error: command not recognized".to_string(),
        };
        if let Some(delay) = rules.delay {
            tokio::time::sleep(delay).await;
        }
        io.write_all(format!("{reply}\r\n").as_bytes()).await?;
        io.flush().await?;
    }
}
