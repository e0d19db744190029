//! The demo's MX hosts: a small SMTP listener that answers like a real MX for one domain —
//! 220 banner, EHLO (no STARTTLS), MAIL, RCPT accepted for the domain and refused with 554
//! for anyone else's (no open relay), DATA always refused, QUIT. It never takes a message.
//! `stop` closes the port (connections are refused) and `start` opens it again.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// A client that says nothing for this long is dropped.
const IDLE: Duration = Duration::from_secs(30);
/// The longest command line accepted (RFC 5321 §4.5.3.1.4 says 512 octets).
const MAX_LINE: u64 = 1000;

pub struct SmtpHost {
    addr: SocketAddr,
    identity: Arc<Identity>,
    task: Option<JoinHandle<()>>,
}

struct Identity {
    /// The host name in the banner and EHLO reply, e.g. `mx1.demo.test`.
    host: String,
    /// The mail domain this host accepts mail for, e.g. `demo.test`.
    domain: String,
}

impl SmtpHost {
    /// Serves on `listener` (see [`bind_pair`]) now.
    pub fn start(listener: TcpListener, host: &str, domain: &str) -> io::Result<SmtpHost> {
        let identity = Arc::new(Identity {
            host: host.trim_end_matches('.').to_string(),
            domain: domain.trim_end_matches('.').to_ascii_lowercase(),
        });
        Ok(SmtpHost {
            addr: listener.local_addr()?,
            task: Some(tokio::spawn(serve(listener, identity.clone()))),
            identity,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes the port and every open session; returns once new connections are refused.
    pub async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens again on the same address.
    pub async fn resume(&mut self) -> io::Result<()> {
        if self.task.is_none() {
            let listener = TcpListener::bind(self.addr).await?;
            self.task = Some(tokio::spawn(serve(listener, self.identity.clone())));
        }
        Ok(())
    }
}

impl Drop for SmtpHost {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Binds the same free port on each address (the probes use one SMTP port for every host).
pub async fn bind_pair(
    first: std::net::IpAddr,
    second: std::net::IpAddr,
) -> io::Result<(TcpListener, TcpListener)> {
    let mut last = None;
    for _ in 0..20 {
        let a = TcpListener::bind(SocketAddr::new(first, 0)).await?;
        let port = a.local_addr()?.port();
        match TcpListener::bind(SocketAddr::new(second, port)).await {
            Ok(b) => return Ok((a, b)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no port free on both addresses")))
}

async fn serve(listener: TcpListener, identity: Arc<Identity>) {
    // Sessions live in this set: stopping the host drops them with the listener.
    let mut sessions = JoinSet::new();
    loop {
        while sessions.try_join_next().is_some() {}
        if let Ok((stream, _)) = listener.accept().await {
            let identity = identity.clone();
            sessions.spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(300), session(stream, &identity))
                    .await;
            });
        }
    }
}

async fn session(stream: TcpStream, me: &Identity) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let banner = format!("220 {} ESMTP mxguard demo MX\r\n", me.host);
    write.write_all(banner.as_bytes()).await?;
    let mut have_sender = false;
    let mut line = String::new();
    loop {
        line.clear();
        let n = match tokio::time::timeout(IDLE, (&mut read).take(MAX_LINE).read_line(&mut line))
            .await
        {
            Ok(r) => r?,
            Err(_) => {
                write.write_all(b"421 4.4.2 idle too long\r\n").await?;
                return Ok(());
            }
        };
        if n == 0 {
            return Ok(());
        }
        let (reply, quit) = reply(me, line.trim_end(), &mut have_sender);
        write.write_all(reply.as_bytes()).await?;
        if quit {
            return Ok(());
        }
    }
}

/// The reply to one command line, and whether the session ends.
fn reply(me: &Identity, line: &str, have_sender: &mut bool) -> (String, bool) {
    let verb = line
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_ascii_uppercase();
    let arg = line.get(verb.len()..).unwrap_or("").trim();
    let text = match verb.as_str() {
        "EHLO" => format!(
            "250-{}\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 10240000",
            me.host
        ),
        "HELO" => format!("250 {}", me.host),
        "MAIL" => {
            *have_sender = true;
            "250 2.1.0 Ok".into()
        }
        "RCPT" if !*have_sender => "503 5.5.1 MAIL first".into(),
        "RCPT" => match recipient_domain(arg) {
            Some(d) if d == me.domain => "250 2.1.5 Ok".into(),
            Some(_) => "554 5.7.1 Relay access denied".into(),
            None => "501 5.1.3 Bad recipient address syntax".into(),
        },
        "DATA" => "554 5.5.1 This demo MX never accepts a message".into(),
        "RSET" => {
            *have_sender = false;
            "250 2.0.0 Ok".into()
        }
        "NOOP" => "250 2.0.0 Ok".into(),
        "QUIT" => return ("221 2.0.0 Bye\r\n".into(), true),
        "STARTTLS" => "454 4.7.0 TLS not available in the demo".into(),
        _ => "502 5.5.2 Command not recognized".into(),
    };
    (format!("{text}\r\n"), false)
}

/// `TO:<user@domain>` → `domain`, lower case.
fn recipient_domain(arg: &str) -> Option<String> {
    let rest = arg
        .get(..3)?
        .eq_ignore_ascii_case("TO:")
        .then(|| &arg[3..])?;
    let addr = rest.trim().strip_prefix('<')?.split('>').next()?;
    let (_, domain) = addr.rsplit_once('@')?;
    (!domain.is_empty()).then(|| domain.trim_end_matches('.').to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_like_an_mx_that_is_no_open_relay() {
        let me = Identity {
            host: "mx1.demo.test".into(),
            domain: "demo.test".into(),
        };
        let mut sender = false;
        let mut say = |l: &str| reply(&me, l, &mut sender).0[..3].to_string();
        assert_eq!(say("RCPT TO:<postmaster@demo.test>"), "503");
        assert_eq!(say("EHLO probe.test"), "250");
        assert_eq!(say("MAIL FROM:<>"), "250");
        assert_eq!(say("RCPT TO:<postmaster@DEMO.test>"), "250");
        assert_eq!(say("rcpt to:<someone@example.net>"), "554");
        assert_eq!(say("RCPT TO:garbage"), "501");
        assert_eq!(say("DATA"), "554");
        assert!(reply(&me, "QUIT", &mut sender).1);
    }
}
