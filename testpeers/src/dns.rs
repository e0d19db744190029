//! A minimal DNS client over UDP (hickory-proto wire format), for readiness checks and for
//! tests that want to look at what a resolver or an authoritative server answers.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RecordType};
use tokio::net::UdpSocket;

use crate::{Error, Result};

/// How long [`query`] waits for the answer.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// Asks `server` for `name`/`rtype` (class IN, recursion desired) once over UDP and returns the
/// response, whatever its response code. Errors: the name is invalid, nothing came back within
/// [`QUERY_TIMEOUT`], or the response did not parse.
pub async fn query(server: SocketAddr, name: &str, rtype: RecordType) -> Result<Message> {
    query_class(server, name, rtype, DNSClass::IN).await
}

/// Like [`query`], with the class given (e.g. `CH` for `version.server`).
pub async fn query_class(
    server: SocketAddr,
    name: &str,
    rtype: RecordType,
    class: DNSClass,
) -> Result<Message> {
    let name =
        Name::from_ascii(name).map_err(|e| Error::Dns(format!("invalid name {name}: {e}")))?;
    let mut q = Query::query(name, rtype);
    q.set_query_class(class);
    let mut msg = Message::query();
    msg.metadata.recursion_desired = true;
    msg.add_query(q);
    exchange(server, &msg).await
}

/// Sends `msg` to `server` over UDP and waits up to [`QUERY_TIMEOUT`] for the response with the
/// same id. The socket is connected, so a closed port fails at once (ICMP port unreachable)
/// instead of timing out.
pub async fn exchange(server: SocketAddr, msg: &Message) -> Result<Message> {
    let bytes = msg
        .to_vec()
        .map_err(|e| Error::Dns(format!("encoding a query: {e}")))?;
    let local: IpAddr = match server.ip() {
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
    };
    let socket = UdpSocket::bind((local, 0))
        .await
        .map_err(|e| Error::io("binding a UDP socket", e))?;
    socket
        .connect(server)
        .await
        .map_err(|e| Error::io(format!("connecting a UDP socket to {server}"), e))?;
    socket
        .send(&bytes)
        .await
        .map_err(|e| Error::io(format!("sending a query to {server}"), e))?;
    let mut buf = vec![0u8; 65535];
    let wait = async {
        loop {
            let n = socket
                .recv(&mut buf)
                .await
                .map_err(|e| Error::io(format!("receiving from {server}"), e))?;
            let reply = Message::from_vec(&buf[..n])
                .map_err(|e| Error::Dns(format!("unparsable response from {server}: {e}")))?;
            if reply.metadata.id == msg.metadata.id {
                return Ok(reply);
            }
        }
    };
    tokio::time::timeout(QUERY_TIMEOUT, wait)
        .await
        .map_err(|_| Error::Dns(format!("no answer from {server} within {QUERY_TIMEOUT:?}")))?
}

/// A UDP responder on 127.0.0.1:<free port>: a thread that answers each well-formed query with
/// what `answer` makes of it (nothing for `None`). Counts the queries it answered; stops on
/// drop. The test servers below are one each.
#[derive(Debug)]
pub struct UdpResponder {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    answered: Arc<std::sync::atomic::AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl UdpResponder {
    pub fn start(
        name: &str,
        answer: impl Fn(&Message) -> Option<Message> + Send + 'static,
    ) -> Result<UdpResponder> {
        let socket = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| Error::io("binding a UDP socket", e))?;
        let addr = socket
            .local_addr()
            .map_err(|e| Error::io("reading a bound address", e))?;
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .map_err(|e| Error::io("setting a read timeout", e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (flag, count) = (stop.clone(), answered.clone());
        let thread = std::thread::Builder::new()
            .name(format!("{name}-{addr}"))
            .spawn(move || {
                let mut buf = vec![0u8; 65535];
                while !flag.load(Ordering::SeqCst) {
                    let Ok((n, from)) = socket.recv_from(&mut buf) else {
                        continue;
                    };
                    let Ok(query) = Message::from_vec(&buf[..n]) else {
                        continue;
                    };
                    let Some(reply) = answer(&query) else {
                        continue;
                    };
                    count.fetch_add(1, Ordering::SeqCst);
                    if let Ok(bytes) = reply.to_vec() {
                        let _ = socket.send_to(&bytes, from);
                    }
                }
            })
            .map_err(|e| Error::io("spawning a DNS responder thread", e))?;
        Ok(UdpResponder {
            addr,
            stop,
            answered,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Queries answered so far.
    pub fn answered(&self) -> usize {
        self.answered.load(Ordering::SeqCst)
    }
}

impl Drop for UdpResponder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A UDP "server" on 127.0.0.1:<free port> that answers every query with one response code
/// and no records (e.g. SERVFAIL: a broken authoritative server). Stops on drop.
#[derive(Debug)]
pub struct RcodeServer(UdpResponder);

impl RcodeServer {
    pub fn start(rcode: ResponseCode) -> Result<RcodeServer> {
        UdpResponder::start("rcode", move |query| {
            let mut reply = Message::error_msg(query.metadata.id, query.metadata.op_code, rcode);
            reply.metadata.recursion_desired = query.metadata.recursion_desired;
            for q in &query.queries {
                reply.add_query(q.clone());
            }
            Some(reply)
        })
        .map(RcodeServer)
    }

    pub fn addr(&self) -> SocketAddr {
        self.0.addr()
    }
}
