//! The fake's authoritative nameserver: the zones' records as Cloudflare's own nameservers
//! would serve them (over UDP on loopback), so a client can verify a change at the
//! authoritative servers by DNS instead of reading it back through the API. Answers what the
//! API state holds at the moment of the query: a write is visible at once, as it is at
//! Cloudflare within a few seconds.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, MX, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record as DnsRecord};

use super::{Record, Shared};
use crate::dns::UdpResponder;
use crate::Result;

/// The nameserver; stops when dropped.
pub struct FakeNameserver(UdpResponder);

impl FakeNameserver {
    pub(super) fn start(state: Shared) -> Result<FakeNameserver> {
        UdpResponder::start("fake-cf-dns", move |query| {
            (query.metadata.message_type == MessageType::Query).then(|| answer(query, &state))
        })
        .map(FakeNameserver)
    }

    pub fn addr(&self) -> SocketAddr {
        self.0.addr()
    }

    /// Queries answered so far.
    pub fn queries(&self) -> usize {
        self.0.answered()
    }
}

fn answer(query: &Message, state: &Shared) -> Message {
    let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    let [q] = query.queries.as_slice() else {
        reply.metadata.response_code = ResponseCode::FormErr;
        return reply;
    };
    reply.add_query(q.clone());
    if query.metadata.op_code != OpCode::Query || q.query_class() != DNSClass::IN {
        reply.metadata.response_code = ResponseCode::Refused;
        return reply;
    }
    let asked = q
        .name()
        .to_ascii()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let s = state.lock().unwrap_or_else(|p| p.into_inner());
    // The zone that holds the name: the longest zone name it ends with.
    let zone = s
        .zones
        .iter()
        .filter(|z| asked == z.name || asked.ends_with(&format!(".{}", z.name)))
        .max_by_key(|z| z.name.len());
    let Some(zone) = zone else {
        reply.metadata.response_code = ResponseCode::Refused;
        return reply;
    };
    reply.metadata.authoritative = true;
    let at_name: Vec<&Record> = zone
        .records
        .iter()
        .filter(|r| r.name.eq_ignore_ascii_case(&asked))
        .collect();
    if at_name.is_empty() {
        reply.metadata.response_code = ResponseCode::NXDomain;
        return reply;
    }
    for r in at_name {
        if r.rtype != q.query_type().to_string() {
            continue;
        }
        if let Some(data) = rdata(r) {
            // Cloudflare's "automatic" TTL (1) is served as 300 s.
            let ttl = if r.ttl == 1 { 300 } else { r.ttl };
            reply.add_answer(DnsRecord::from_rdata(q.name().clone(), ttl, data));
        }
    }
    reply
}

fn rdata(r: &Record) -> Option<RData> {
    match r.rtype.as_str() {
        "A" => r.content.parse::<Ipv4Addr>().ok().map(|a| RData::A(A(a))),
        "AAAA" => match r.content.parse::<IpAddr>().ok()? {
            IpAddr::V6(a) => Some(RData::AAAA(AAAA(a))),
            IpAddr::V4(_) => None,
        },
        "MX" => {
            let host = if r.content == "." {
                Name::root()
            } else {
                Name::from_ascii(format!("{}.", r.content.trim_end_matches('.'))).ok()?
            };
            Some(RData::MX(MX::new(r.priority?, host)))
        }
        "TXT" => Some(RData::TXT(TXT::new(txt_strings(&r.content)))),
        _ => None,
    }
}

/// `"a" "b"` → `[a, b]`; content without quotes is one string as it is.
fn txt_strings(content: &str) -> Vec<String> {
    let t = content.trim();
    if !t.starts_with('"') {
        return vec![t.to_string()];
    }
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut inside = false;
    let mut escaped = false;
    for c in t.chars() {
        match (inside, escaped, c) {
            (true, true, c) => {
                cur.push(c);
                escaped = false;
            }
            (true, false, '\\') => escaped = true,
            (true, false, '"') => {
                out.push(std::mem::take(&mut cur));
                inside = false;
            }
            (true, false, c) => cur.push(c),
            (false, _, '"') => inside = true,
            (false, _, _) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_txt_content_reads_as_its_strings() {
        assert_eq!(txt_strings(r#""v=spf1 -all""#), vec!["v=spf1 -all"]);
        assert_eq!(txt_strings(r#""a" "b\"c""#), vec!["a", "b\"c"]);
        assert_eq!(txt_strings("plain text"), vec!["plain text"]);
    }
}
