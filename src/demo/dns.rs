//! The demo's authoritative DNS server: one zone in memory, UDP and TCP on one loopback port,
//! queries (AA, NXDOMAIN/NODATA with the SOA), AXFR and RFC 2136 UPDATE, with TSIG
//! (RFC 8945) verified on every signed request and every answer to one signed.
//!
//! - An UPDATE must be signed with the demo key; unsigned: REFUSED.
//! - A bad signature: NOTAUTH with an unsigned TSIG carrying BADSIG; an unknown key or
//!   algorithm: NOTAUTH + BADKEY; a time outside the fudge: NOTAUTH + BADTIME (signed).
//! - Unsigned queries are answered unsigned (the probes ask that way); AXFR needs the key.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::tsig::{TsigAlgorithm, TsigError};
use hickory_proto::rr::{DNSClass, Name, RecordType, TSigResponseContext, TSigner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::{JoinHandle, JoinSet};

use super::zone::{Lookup, Zone};

/// How far apart the clocks of a client and this server may be (RFC 8945 §10).
const FUDGE_SECS: u16 = 300;
/// Room left for the TSIG record when deciding whether a UDP answer must be truncated.
const TSIG_ROOM: usize = 200;
/// A TCP client that sends nothing for this long is dropped.
const TCP_IDLE: Duration = Duration::from_secs(30);

/// The zone and the one key allowed to change it.
pub struct Authority {
    zone: Mutex<Zone>,
    key: TSigner,
}

/// What the request's signature says about it.
enum Auth {
    Unsigned,
    /// Verified; the request MAC that the answer's signature covers.
    Signed(Vec<u8>),
    BadTime(Vec<u8>),
    BadSig,
    BadKey(Name),
}

impl Authority {
    /// `secret` is the raw TSIG key (hmac-sha256) named `key_name`.
    pub fn new(zone: Zone, key_name: Name, secret: Vec<u8>) -> Result<Authority, String> {
        let key = TSigner::new(secret, TsigAlgorithm::HmacSha256, key_name, FUDGE_SECS)
            .map_err(|e| format!("TSIG key: {e}"))?;
        Ok(Authority {
            zone: Mutex::new(zone),
            key,
        })
    }

    /// A copy of the zone as it is now.
    pub fn zone(&self) -> Zone {
        self.zone
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Answers one request; `udp_limit` is the datagram size for UDP, `None` over TCP.
    /// `None` when the bytes deserve no answer (a response, or not DNS at all).
    pub fn handle(&self, bytes: &[u8], udp_limit: Option<usize>) -> Option<Vec<u8>> {
        let request = match Message::from_vec(bytes) {
            Ok(m) => m,
            Err(_) => return form_error(bytes),
        };
        if request.metadata.message_type != MessageType::Query {
            return None;
        }
        let now = unix_now();
        let auth = self.authenticate(&request, bytes, now);
        let mut response = Message::response(request.metadata.id, request.metadata.op_code);
        response.metadata.recursion_desired = request.metadata.recursion_desired;
        response.queries = request.queries.clone();
        if request.edns.is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(1232);
            response.set_edns(edns);
        }
        match auth {
            Auth::Unsigned | Auth::Signed(_) => {
                let signed = matches!(auth, Auth::Signed(_));
                self.answer(&request, signed, udp_limit.is_none(), &mut response);
            }
            _ => response.metadata.response_code = ResponseCode::NotAuth,
        }
        if let Some(limit) = udp_limit {
            let room = if matches!(auth, Auth::Unsigned) {
                0
            } else {
                TSIG_ROOM
            };
            let limit = usize::from(request.max_payload()).min(limit);
            if response.to_vec().ok()?.len() + room > limit {
                response = response.truncate();
            }
        }
        let unsigned = response.to_vec().ok()?;
        let id = request.metadata.id;
        let context = match auth {
            Auth::Unsigned => return Some(unsigned),
            Auth::Signed(mac) => TSigResponseContext::new(id, now, self.key.clone(), mac, None),
            Auth::BadTime(mac) => {
                TSigResponseContext::new(id, now, self.key.clone(), mac, Some(TsigError::BadTime))
            }
            Auth::BadSig => TSigResponseContext::bad_signature(id, now, self.key.clone()),
            Auth::BadKey(name) => TSigResponseContext::unknown_key(id, now, name),
        };
        let signature = context.sign(&unsigned).ok()?;
        response.set_signature(signature);
        response.to_vec().ok()
    }

    fn authenticate(&self, request: &Message, bytes: &[u8], now: u64) -> Auth {
        let Some(tsig) = request.signature() else {
            return Auth::Unsigned;
        };
        if tsig.name != *self.key.signer_name() || tsig.data.algorithm != *self.key.algorithm() {
            return Auth::BadKey(tsig.name.clone());
        }
        match self.key.verify_message_byte(bytes, None, true) {
            Err(_) => Auth::BadSig,
            Ok((mac, _, window)) if !window.contains(&now) => Auth::BadTime(mac),
            Ok((mac, _, _)) => Auth::Signed(mac),
        }
    }

    fn answer(&self, request: &Message, signed: bool, tcp: bool, response: &mut Message) {
        let code = &mut response.metadata.response_code;
        let [query] = request.queries.as_slice() else {
            *code = ResponseCode::FormErr;
            return;
        };
        let zone = &mut *self.zone.lock().unwrap_or_else(PoisonError::into_inner);
        match request.metadata.op_code {
            OpCode::Query if query.query_class() != DNSClass::IN => *code = ResponseCode::Refused,
            OpCode::Query if query.query_type() == RecordType::AXFR => {
                if !(signed && tcp && query.name() == zone.origin()) {
                    *code = ResponseCode::Refused;
                    return;
                }
                response.metadata.authoritative = true;
                response.answers = zone.transfer();
            }
            OpCode::Query => match zone.lookup(query.name(), query.query_type()) {
                Lookup::Answer(records) => {
                    response.metadata.authoritative = true;
                    response.answers = records;
                }
                Lookup::NoData(soa) => {
                    response.metadata.authoritative = true;
                    response.authorities = vec![soa];
                }
                Lookup::NxDomain(soa) => {
                    response.metadata.authoritative = true;
                    *code = ResponseCode::NXDomain;
                    response.authorities = vec![soa];
                }
                Lookup::Refused => *code = ResponseCode::Refused,
            },
            OpCode::Update => {
                *code = if !signed {
                    ResponseCode::Refused
                } else if query.query_type() != RecordType::SOA {
                    ResponseCode::FormErr
                } else if query.name() != zone.origin() {
                    ResponseCode::NotAuth
                } else {
                    zone.update(&request.answers, &request.authorities)
                };
            }
            _ => *code = ResponseCode::NotImp,
        }
    }
}

/// FORMERR for a request that does not parse, when it is long enough to carry an id.
fn form_error(bytes: &[u8]) -> Option<Vec<u8>> {
    let id = u16::from_be_bytes([*bytes.first()?, *bytes.get(1)?]);
    if bytes.len() < 12 || bytes.get(2).is_some_and(|b| b & 0x80 != 0) {
        return None;
    }
    Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)
        .to_vec()
        .ok()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The server: UDP and TCP on one port. Dropping it stops both.
pub struct DnsServer {
    addr: SocketAddr,
    authority: Arc<Authority>,
    tasks: Vec<JoinHandle<()>>,
}

impl DnsServer {
    /// Serves `authority` on `ip` at a port free for both UDP and TCP.
    pub async fn start(ip: IpAddr, authority: Arc<Authority>) -> io::Result<DnsServer> {
        let mut last = None;
        for _ in 0..20 {
            let udp = UdpSocket::bind(SocketAddr::new(ip, 0)).await?;
            let addr = udp.local_addr()?;
            match TcpListener::bind(addr).await {
                Ok(tcp) => {
                    let tasks = vec![
                        tokio::spawn(serve_udp(udp, authority.clone())),
                        tokio::spawn(serve_tcp(tcp, authority.clone())),
                    ];
                    return Ok(DnsServer {
                        addr,
                        authority,
                        tasks,
                    });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no free port")))
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn authority(&self) -> &Authority {
        &self.authority
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn serve_udp(socket: UdpSocket, authority: Arc<Authority>) {
    let mut buf = vec![0u8; 65_535];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        if let Some(reply) = authority.handle(&buf[..n], Some(65_535)) {
            let _ = socket.send_to(&reply, peer).await;
        }
    }
}

async fn serve_tcp(listener: TcpListener, authority: Arc<Authority>) {
    // Connections live in this set: stopping the server drops them too.
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        if let Ok((stream, _)) = listener.accept().await {
            conns.spawn(serve_conn(stream, authority.clone()));
        }
    }
}

async fn serve_conn(mut stream: TcpStream, authority: Arc<Authority>) {
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if stream.read_exact(&mut buf).await.is_err() {
            return;
        }
        let Some(reply) = authority.handle(&buf, None) else {
            continue;
        };
        let Ok(n) = u16::try_from(reply.len()) else {
            return;
        };
        let mut framed = n.to_be_bytes().to_vec();
        framed.extend_from_slice(&reply);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}
