//! DNS probe: one query to one server, answered exactly as that server answers it now.
//!
//! hickory-proto builds and parses the messages; the transport is ours and minimal (UDP, then
//! TCP when the answer is truncated) because a probe must see each resolver's own rcode, TTL and
//! truncation bit: a resolver library would add a cache, retries across servers and its own
//! error mapping, which hide exactly what we are measuring.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::{Name, RData as WireData, RecordType as WireType};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::model::{Fqdn, MxRecord, RData, RecordType};

/// How a query ended. NODATA is NOERROR with no record of the asked type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "status", content = "detail")]
pub enum DnsStatus {
    NoError,
    NoData,
    NxDomain,
    ServFail,
    Refused,
    Timeout,
    /// Another rcode (FORMERR, NOTIMP…) by name.
    Rcode(String),
    /// The server could not be reached or answered garbage.
    Network(String),
}

impl DnsStatus {
    /// Short text for reasons and tables: `NXDOMAIN`, `timeout`…
    pub fn label(&self) -> String {
        match self {
            DnsStatus::NoError => "NOERROR".into(),
            DnsStatus::NoData => "NODATA".into(),
            DnsStatus::NxDomain => "NXDOMAIN".into(),
            DnsStatus::ServFail => "SERVFAIL".into(),
            DnsStatus::Refused => "REFUSED".into(),
            DnsStatus::Timeout => "timeout".into(),
            DnsStatus::Rcode(r) => r.clone(),
            DnsStatus::Network(e) => format!("network error: {e}"),
        }
    }
}

/// One answer: status, the records of the asked type, and their (smallest) TTL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DnsAnswer {
    pub server: SocketAddr,
    pub name: Fqdn,
    #[serde(rename = "type")]
    pub rtype: RecordType,
    #[serde(flatten)]
    pub status: DnsStatus,
    #[serde(serialize_with = "as_strings")]
    pub records: Vec<RData>,
    pub ttl: Option<u32>,
    pub authoritative: bool,
    pub via_tcp: bool,
    pub latency_ms: u64,
    /// An earlier round's answer, reused rather than asked again (`probe::reuse`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub reused: bool,
}

fn as_strings<S: serde::Serializer>(records: &[RData], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(records.iter().map(|r| r.to_string()))
}

impl DnsAnswer {
    pub fn addresses(&self) -> Vec<IpAddr> {
        self.records
            .iter()
            .filter_map(|r| match r {
                RData::A(ip) => Some(IpAddr::V4(*ip)),
                RData::Aaaa(ip) => Some(IpAddr::V6(*ip)),
                _ => None,
            })
            .collect()
    }

    pub fn mx(&self) -> Vec<MxRecord> {
        self.records
            .iter()
            .filter_map(|r| match r {
                RData::Mx(m) => Some(m.clone()),
                _ => None,
            })
            .collect()
    }
}

/// Queries one server. `recursion` sets RD (true for resolvers, false for authoritative servers).
#[derive(Debug, Clone, Copy)]
pub struct DnsClient {
    pub server: SocketAddr,
    pub timeout: Duration,
    pub recursion: bool,
}

const EDNS_PAYLOAD: u16 = 1232;
/// The UDP receive buffer: room for the payload we advertise and for servers that ignore it up
/// to 4 KiB; a datagram that fills it is taken as cut off and asked again over TCP. (A
/// 64 KiB buffer per query in flight was most of the memory with thousands of domains.)
const UDP_BUFFER: usize = 4096;
/// UDP sends within one timeout (the first and up to two resends).
const UDP_SENDS: u32 = 3;

impl DnsClient {
    pub fn resolver(server: SocketAddr, timeout: Duration) -> Self {
        DnsClient {
            server,
            timeout,
            recursion: true,
        }
    }

    pub fn authoritative(server: SocketAddr, timeout: Duration) -> Self {
        DnsClient {
            server,
            timeout,
            recursion: false,
        }
    }

    /// Asks for `rtype` at `name`. Never fails: every failure is a [`DnsStatus`].
    pub async fn query(&self, name: &Fqdn, rtype: RecordType) -> DnsAnswer {
        let start = Instant::now();
        let mut answer = DnsAnswer {
            server: self.server,
            name: name.clone(),
            rtype,
            status: DnsStatus::Timeout,
            records: Vec::new(),
            ttl: None,
            authoritative: false,
            via_tcp: false,
            latency_ms: 0,
            reused: false,
        };
        let result = tokio::time::timeout(
            self.timeout,
            self.exchange(name, rtype, &mut answer.via_tcp),
        )
        .await;
        answer.latency_ms = start.elapsed().as_millis() as u64;
        match result {
            Err(_) => answer.status = DnsStatus::Timeout,
            Ok(Err(e)) => answer.status = DnsStatus::Network(e),
            Ok(Ok(msg)) => fill(&mut answer, &msg),
        }
        answer
    }

    /// The whole reply to `rtype` at `name`, for types the model does not carry (TLSA), with
    /// the AD bit set in the query (RFC 6840 §5.7) so that a validating resolver says in its
    /// answer whether it validated it. Errors are timeouts and transport failures.
    pub async fn query_message(&self, name: &Fqdn, rtype: WireType) -> Result<Message, String> {
        let work = async {
            let mut request = self.request_wire(name, rtype)?;
            request.metadata.authentic_data = true;
            self.send(&request, &mut false).await
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| format!("timeout after {:?} asking {}", self.timeout, self.server))?
    }

    async fn exchange(
        &self,
        name: &Fqdn,
        rtype: RecordType,
        via_tcp: &mut bool,
    ) -> Result<Message, String> {
        let request = self.request(name, rtype)?;
        self.send(&request, via_tcp).await
    }

    async fn send(&self, request: &Message, via_tcp: &mut bool) -> Result<Message, String> {
        let bytes = request.to_vec().map_err(|e| e.to_string())?;
        // An answer larger than the UDP buffer is asked again over TCP, as a truncated one is.
        let reply = self.udp(&bytes, request).await?;
        if let Some(reply) = reply.filter(|r| !r.metadata.truncation) {
            return Ok(reply);
        }
        *via_tcp = true;
        self.tcp(&bytes, request).await
    }

    fn request(&self, name: &Fqdn, rtype: RecordType) -> Result<Message, String> {
        self.request_wire(name, wire_type(rtype))
    }

    fn request_wire(&self, name: &Fqdn, rtype: WireType) -> Result<Message, String> {
        let qname = Name::from_ascii(name.as_str()).map_err(|e| e.to_string())?;
        let mut msg = Message::query();
        msg.add_query(Query::query(qname, rtype));
        msg.metadata.recursion_desired = self.recursion;
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        msg.set_edns(edns);
        Ok(msg)
    }

    /// The answer over UDP; `None` when it did not fit [`UDP_BUFFER`].
    async fn udp(&self, bytes: &[u8], request: &Message) -> Result<Option<Message>, String> {
        let bind: SocketAddr = if self.server.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let sock = UdpSocket::bind(bind).await.map_err(|e| e.to_string())?;
        sock.connect(self.server).await.map_err(|e| e.to_string())?;
        // Like any stub resolver, resend a lost datagram: one lost packet is not the
        // resolver failing. The caller's timeout bounds the whole exchange.
        let resend_after = (self.timeout / UDP_SENDS).max(Duration::from_millis(100));
        let mut buf = vec![0u8; UDP_BUFFER];
        loop {
            sock.send(bytes).await.map_err(|e| e.to_string())?;
            let wait = tokio::time::timeout(resend_after, async {
                loop {
                    let n = sock.recv(&mut buf).await.map_err(|e| e.to_string())?;
                    if n == buf.len() {
                        return Ok(None);
                    }
                    // Ignore stray datagrams that do not answer our query (spoofing, late
                    // replies, a query reflected back).
                    if let Ok(msg) = parse_answer(request, &buf[..n]) {
                        return Ok::<Option<Message>, String>(Some(msg));
                    }
                }
            });
            if let Ok(result) = wait.await {
                return result;
            }
        }
    }

    async fn tcp(&self, bytes: &[u8], request: &Message) -> Result<Message, String> {
        let mut stream = TcpStream::connect(self.server)
            .await
            .map_err(|e| e.to_string())?;
        let len = u16::try_from(bytes.len()).map_err(|_| "query too large".to_string())?;
        let mut framed = len.to_be_bytes().to_vec();
        framed.extend_from_slice(bytes);
        stream.write_all(&framed).await.map_err(|e| e.to_string())?;
        let mut len = [0u8; 2];
        stream
            .read_exact(&mut len)
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream
            .read_exact(&mut buf)
            .await
            .map_err(|e| e.to_string())?;
        parse_answer(request, &buf)
    }
}

/// The answer to `request` in `bytes`, as either transport received them; an error for bytes
/// that are no DNS message or a message that does not answer the query.
fn parse_answer(request: &Message, bytes: &[u8]) -> Result<Message, String> {
    let msg = Message::from_vec(bytes).map_err(|e| e.to_string())?;
    if !answers(request, &msg) {
        return Err(
            "an answer that does not answer the query (id, QR bit, opcode or question)".into(),
        );
    }
    Ok(msg)
}

/// Whether `reply` answers `request`: the same id, the QR bit set, and the same question
/// (RFC 5452 §9.1: a resolver accepts an answer only when all of them match), and the opcode
/// the query carried (RFC 1035 §4.1.1: a response copies it; a NOTIFY or UPDATE reply with a
/// matching id and question is not an answer to a query).
fn answers(request: &Message, reply: &Message) -> bool {
    reply.metadata.id == request.metadata.id
        && reply.metadata.message_type == MessageType::Response
        && reply.metadata.op_code == request.metadata.op_code
        && reply.queries == request.queries
}

fn fill(answer: &mut DnsAnswer, msg: &Message) {
    answer.authoritative = msg.metadata.authoritative;
    let want = wire_type(answer.rtype);
    answer.status = match msg.metadata.response_code {
        ResponseCode::NoError => DnsStatus::NoError,
        ResponseCode::NXDomain => DnsStatus::NxDomain,
        ResponseCode::ServFail => DnsStatus::ServFail,
        ResponseCode::Refused => DnsStatus::Refused,
        other => DnsStatus::Rcode(format!("{other:?}").to_uppercase()),
    };
    if answer.status != DnsStatus::NoError {
        return;
    }
    // Records of the asked type; a CNAME chain in front of them is followed implicitly.
    let mut ttl: Option<u32> = None;
    for rec in msg.answers.iter().filter(|r| r.record_type() == want) {
        if let Some(data) = convert(&rec.data) {
            answer.records.push(data);
            ttl = Some(ttl.map_or(rec.ttl, |t| t.min(rec.ttl)));
        }
    }
    answer.records.sort();
    answer.records.dedup();
    answer.ttl = ttl;
    if answer.records.is_empty() {
        answer.status = DnsStatus::NoData;
    }
}

fn convert(data: &WireData) -> Option<RData> {
    match data {
        WireData::A(a) => Some(RData::A(a.0)),
        WireData::AAAA(a) => Some(RData::Aaaa(a.0)),
        WireData::MX(mx) => {
            let exchange = Fqdn::parse(&mx.exchange.to_ascii()).ok()?;
            Some(RData::Mx(MxRecord::new(mx.preference, exchange)))
        }
        WireData::TXT(txt) => {
            let text: Vec<u8> = txt
                .txt_data
                .iter()
                .flat_map(|s| s.iter().copied())
                .collect();
            Some(RData::Txt(String::from_utf8_lossy(&text).into_owned()))
        }
        _ => None,
    }
}

fn wire_type(t: RecordType) -> WireType {
    match t {
        RecordType::Mx => WireType::MX,
        RecordType::A => WireType::A,
        RecordType::Aaaa => WireType::AAAA,
        RecordType::Txt => WireType::TXT,
    }
}

/// A and AAAA of `host` from one resolver, as the health model wants it.
pub async fn resolve_addresses(client: &DnsClient, host: &Fqdn) -> (Vec<IpAddr>, Vec<DnsAnswer>) {
    let (a, aaaa) = tokio::join!(
        client.query(host, RecordType::A),
        client.query(host, RecordType::Aaaa)
    );
    let mut addrs = a.addresses();
    addrs.extend(aaaa.addresses());
    (addrs, vec![a, aaaa])
}

/// Why a host did not resolve, from its A and AAAA answers: `A NXDOMAIN, AAAA NXDOMAIN`.
pub fn resolution_error(answers: &[DnsAnswer]) -> String {
    answers
        .iter()
        .map(|a| format!("{} {}", a.rtype, a.status.label()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The zone's authoritative servers: its NS names (asked of `resolver`) and their addresses,
/// each on `port` (53 in production; tests run servers on high ports).
pub async fn authoritative_servers(
    resolver: &DnsClient,
    zone: &Fqdn,
    port: u16,
) -> Result<Vec<(Fqdn, SocketAddr)>, String> {
    let ns = ns_names(resolver, zone).await?;
    let mut out = Vec::new();
    for name in ns {
        let (addrs, answers) = resolve_addresses(resolver, &name).await;
        if addrs.is_empty() {
            tracing::warn!(ns = %name, error = %resolution_error(&answers), "authoritative server does not resolve");
        }
        out.extend(
            addrs
                .into_iter()
                .map(|ip| (name.clone(), SocketAddr::new(ip, port))),
        );
    }
    if out.is_empty() {
        return Err(format!("no address for any NS of {zone}"));
    }
    Ok(out)
}

async fn ns_names(resolver: &DnsClient, zone: &Fqdn) -> Result<Vec<Fqdn>, String> {
    let qname = Name::from_ascii(zone.as_str()).map_err(|e| e.to_string())?;
    let mut msg = Message::query();
    msg.add_query(Query::query(qname, WireType::NS));
    msg.metadata.recursion_desired = true;
    let bytes = msg.to_vec().map_err(|e| e.to_string())?;
    let reply = tokio::time::timeout(resolver.timeout, resolver.udp(&bytes, &msg))
        .await
        .map_err(|_| format!("timeout asking {} for the NS of {zone}", resolver.server))??
        .ok_or_else(|| {
            format!(
                "{}'s NS answer for {zone} does not fit a datagram",
                resolver.server
            )
        })?;
    let names: Vec<Fqdn> = reply
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            WireData::NS(ns) => Fqdn::parse(&ns.0.to_ascii()).ok(),
            _ => None,
        })
        .collect();
    if names.is_empty() {
        return Err(format!(
            "{} returned no NS for {zone} ({:?})",
            resolver.server, reply.metadata.response_code
        ));
    }
    Ok(names)
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str) -> Message {
        let mut msg = Message::query();
        msg.add_query(Query::query(
            Name::from_ascii(name).expect("name"),
            WireType::MX,
        ));
        msg
    }

    #[test]
    fn only_a_response_to_the_same_question_with_the_same_id_answers() {
        let request = query("example.test.");
        let mut reply = request.clone();
        reply.metadata.message_type = MessageType::Response;
        assert!(answers(&request, &reply));

        let reflected = request.clone();
        assert!(!answers(&request, &reflected), "the QR bit is not set");

        let mut other_id = reply.clone();
        other_id.metadata.id = request.metadata.id.wrapping_add(1);
        assert!(!answers(&request, &other_id));

        let mut other_opcode = reply.clone();
        other_opcode.metadata.op_code = hickory_proto::op::OpCode::Notify;
        assert!(!answers(&request, &other_opcode), "another opcode");

        let mut other_question = query("evil.test.");
        other_question.metadata.id = request.metadata.id;
        other_question.metadata.message_type = MessageType::Response;
        assert!(!answers(&request, &other_question), "another question");
    }
}
