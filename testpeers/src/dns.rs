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

/// A recursive resolver's stand-in on 127.0.0.1:<free port> that counts what it is asked: it
/// answers `A` for the names it was given (with their address and `ttl`), NOERROR with no
/// records (NODATA) for their `AAAA`, and NXDOMAIN for any other name, and records the
/// wall-clock second of each answer, so a test can check a client's query rate per second. A
/// query sent again (the same id and question: a client's resend after a lost or late answer)
/// is answered but counted apart ([`CountingResolver::resent`]), not as another query.
/// Stops on drop.
#[derive(Debug)]
pub struct CountingResolver {
    responder: UdpResponder,
    per_second: Arc<std::sync::Mutex<std::collections::BTreeMap<u64, usize>>>,
    per_question: Arc<std::sync::Mutex<std::collections::HashMap<(String, RecordType), usize>>>,
    resent: Arc<std::sync::atomic::AtomicUsize>,
}

impl CountingResolver {
    /// Answers for `hosts` (names without the trailing dot, any case) with `ttl`.
    pub fn start(
        hosts: impl IntoIterator<Item = (String, Ipv4Addr)>,
        ttl: u32,
    ) -> Result<CountingResolver> {
        use hickory_proto::op::OpCode;
        use hickory_proto::rr::rdata::A;
        use hickory_proto::rr::{RData, Record};

        let hosts: std::collections::HashMap<String, Ipv4Addr> = hosts
            .into_iter()
            .map(|(h, a)| (h.trim_end_matches('.').to_ascii_lowercase(), a))
            .collect();
        let per_second: Arc<std::sync::Mutex<std::collections::BTreeMap<u64, usize>>> =
            Arc::default();
        let counts = per_second.clone();
        let resent: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let resends = resent.clone();
        let per_question: Arc<
            std::sync::Mutex<std::collections::HashMap<(String, RecordType), usize>>,
        > = Arc::default();
        let questions = per_question.clone();
        let seen: std::sync::Mutex<std::collections::HashSet<(u16, String, RecordType)>> =
            Default::default();
        let responder = UdpResponder::start("counting-resolver", move |query| {
            let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
            reply.metadata.recursion_desired = query.metadata.recursion_desired;
            reply.metadata.recursion_available = true;
            let [q] = query.queries.as_slice() else {
                reply.metadata.response_code = ResponseCode::FormErr;
                return Some(reply);
            };
            reply.add_query(q.clone());
            let asked = q
                .name()
                .to_ascii()
                .trim_end_matches('.')
                .to_ascii_lowercase();
            match hosts.get(&asked) {
                _ if query.metadata.op_code != OpCode::Query => {
                    reply.metadata.response_code = ResponseCode::Refused;
                }
                None => reply.metadata.response_code = ResponseCode::NXDomain,
                Some(addr) if q.query_type() == RecordType::A => {
                    reply.add_answer(Record::from_rdata(
                        q.name().clone(),
                        ttl,
                        RData::A(A(*addr)),
                    ));
                }
                Some(_) => {}
            }
            let first = seen.lock().unwrap_or_else(|p| p.into_inner()).insert((
                query.metadata.id,
                asked.clone(),
                q.query_type(),
            ));
            if !first {
                resends.fetch_add(1, Ordering::SeqCst);
                return Some(reply);
            }
            *questions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry((asked, q.query_type()))
                .or_default() += 1;
            let second = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            *counts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(second)
                .or_default() += 1;
            Some(reply)
        })?;
        Ok(CountingResolver {
            responder,
            per_second,
            per_question,
            resent,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.responder.addr()
    }

    /// Queries answered so far, resends included.
    pub fn answered(&self) -> usize {
        self.responder.answered()
    }

    /// Resends answered so far (a query whose id and question came before).
    pub fn resent(&self) -> usize {
        self.resent.load(Ordering::SeqCst)
    }

    /// Queries (resends not counted) answered in each wall-clock second (Unix seconds) that had any.
    pub fn per_second(&self) -> std::collections::BTreeMap<u64, usize> {
        self.per_second
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Queries (resends not counted) for `name` (without the trailing dot, any case) and
    /// `rtype` answered so far.
    pub fn asked(&self, name: &str, rtype: RecordType) -> usize {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.per_question
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(name, rtype))
            .copied()
            .unwrap_or(0)
    }

    /// Queries (resends not counted) of `rtype` answered so far, whatever their name.
    pub fn asked_type(&self, rtype: RecordType) -> usize {
        self.per_question
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|((_, t), _)| *t == rtype)
            .map(|(_, n)| n)
            .sum()
    }

    /// The most queries answered within one wall-clock second, and that second.
    pub fn busiest_second(&self) -> Option<(u64, usize)> {
        self.per_second()
            .into_iter()
            .max_by_key(|&(second, n)| (n, std::cmp::Reverse(second)))
    }
}
