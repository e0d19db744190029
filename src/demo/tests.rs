//! The demo DNS server: queries, RFC 2136 UPDATE (prerequisites, updates, serial) and TSIG,
//! first as raw messages through `Authority::handle`, then over sockets with mxguard's own
//! RFC 2136 provider as the client.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use hickory_proto::op::{Message, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::tsig::{TsigAlgorithm, TsigError};
use hickory_proto::rr::rdata::{A, MX};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType, TSigner};
use mxguard_core::{Change, ChangeSet, DnsProvider, RecordSet, RrsetKey, Ttl};
use mxguard_rfc2136::{Rfc2136Config, Rfc2136Provider, TsigSecret};

use super::dns::{Authority, DnsServer};
use super::lab::base64;
use super::zone::{DemoHosts, Lookup, Zone};
use crate::model::{Fqdn, RecordType as Rt};

const SECRET: &[u8] = b"a demo secret of thirty-two bytes";

fn name(s: &str) -> Name {
    Name::from_ascii(s).expect("name")
}

fn authority() -> Authority {
    let hosts = DemoHosts {
        ns: Ipv4Addr::new(127, 0, 0, 1),
        primary: Ipv4Addr::new(127, 0, 0, 2),
        backup: Ipv4Addr::new(127, 0, 0, 3),
    };
    let zone = Zone::demo(&name("demo.test."), &hosts).expect("zone");
    Authority::new(zone, name("demo-key."), SECRET.to_vec()).expect("authority")
}

fn key(secret: &[u8], key_name: &str) -> TSigner {
    TSigner::new(
        secret.to_vec(),
        TsigAlgorithm::HmacSha256,
        name(key_name),
        300,
    )
    .expect("signer")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// Sends `msg` (signed with `signer` when given) and returns the answer, whose signature is
/// verified when the request was signed and the answer carries a MAC.
fn exchange(auth: &Authority, mut msg: Message, signer: Option<&TSigner>) -> Message {
    let mut verifier = signer.map(|s| msg.finalize(s, now()).expect("sign").expect("verifier"));
    let bytes = msg.to_vec().expect("encode");
    let reply = auth.handle(&bytes, None).expect("an answer");
    let answer = Message::from_vec(&reply).expect("decode");
    let mac = answer.signature().is_some_and(|t| !t.data.mac.is_empty());
    if let (Some(v), true) = (verifier.as_mut(), mac) {
        v.verify(&reply)
            .expect("the answer is signed with the demo key");
    }
    answer
}

fn mx(target: &str, ttl: u32, class: DNSClass) -> Record {
    let mut r = Record::from_rdata(
        name("demo.test."),
        ttl,
        RData::MX(MX::new(10, name(target))),
    );
    r.dns_class = class;
    r
}

fn meta(owner: &str, rtype: RecordType, class: DNSClass) -> Record {
    let mut r = Record::update0(name(owner), 0, rtype);
    r.dns_class = class;
    r
}

/// An UPDATE of demo.test. with these prerequisites and updates.
fn update(prerequisites: Vec<Record>, updates: Vec<Record>) -> Message {
    let mut msg = Message::query();
    msg.metadata.op_code = OpCode::Update;
    msg.metadata.recursion_desired = false;
    let mut zone = Query::query(name("demo.test."), RecordType::SOA);
    zone.set_query_class(DNSClass::IN);
    msg.add_query(zone);
    msg.answers = prerequisites;
    msg.authorities = updates;
    msg
}

/// Replace the MX with backup's, as mxguard's provider does: expect mx1, delete, add.
fn failover() -> Message {
    update(
        vec![mx("mx1.demo.test.", 0, DNSClass::IN)],
        vec![
            meta("demo.test.", RecordType::MX, DNSClass::ANY),
            mx("backup.demo.test.", 30, DNSClass::IN),
        ],
    )
}

fn served_mx(auth: &Authority) -> Vec<String> {
    match auth.zone().lookup(&name("demo.test."), RecordType::MX) {
        Lookup::Answer(rs) => rs.iter().map(|r| format!("{} {}", r.ttl, r.data)).collect(),
        other => panic!("no MX: {other:?}"),
    }
}

#[test]
fn a_signed_update_is_applied_signed_and_bumps_the_serial() {
    let auth = authority();
    let k = key(SECRET, "demo-key.");
    let answer = exchange(&auth, failover(), Some(&k));
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert!(
        answer.signature().is_some(),
        "answer to a signed UPDATE is signed"
    );
    assert_eq!(served_mx(&auth), vec!["30 10 backup.demo.test."]);
    assert_eq!(auth.zone().serial(), 2);

    // the same change again: the prerequisite (mx1) no longer holds
    let answer = exchange(&auth, failover(), Some(&k));
    assert_eq!(answer.metadata.response_code, ResponseCode::NXRRSet);
    assert_eq!(auth.zone().serial(), 2, "a refused UPDATE changes nothing");

    // re-adding what is there changes nothing, so the serial stays
    let same = update(vec![], vec![mx("backup.demo.test.", 30, DNSClass::IN)]);
    assert_eq!(
        exchange(&auth, same, Some(&k)).metadata.response_code,
        ResponseCode::NoError
    );
    assert_eq!(auth.zone().serial(), 2);

    // delete one RR (class NONE) and add an address in one message
    let mut addr = Record::from_rdata(
        name("mx2.demo.test."),
        60,
        RData::A(A(Ipv4Addr::new(127, 0, 0, 9))),
    );
    addr.dns_class = DNSClass::IN;
    let msg = update(
        vec![meta("mx2.demo.test.", RecordType::A, DNSClass::NONE)],
        vec![
            addr,
            mx("mx1.demo.test.", 300, DNSClass::IN),
            mx("backup.demo.test.", 0, DNSClass::NONE),
        ],
    );
    assert_eq!(
        exchange(&auth, msg, Some(&k)).metadata.response_code,
        ResponseCode::NoError
    );
    assert_eq!(served_mx(&auth), vec!["300 10 mx1.demo.test."]);
    assert_eq!(auth.zone().serial(), 3);
}

#[test]
fn failed_prerequisites_answer_as_rfc_2136_says() {
    let auth = authority();
    let k = key(SECRET, "demo-key.");
    let code = |prereq: Record| {
        let msg = update(
            vec![prereq],
            vec![mx("backup.demo.test.", 30, DNSClass::IN)],
        );
        exchange(&auth, msg, Some(&k)).metadata.response_code
    };
    // RRset exists (value dependent), but holds another value
    assert_eq!(
        code(mx("backup.demo.test.", 0, DNSClass::IN)),
        ResponseCode::NXRRSet
    );
    // RRset does not exist, but it does
    assert_eq!(
        code(meta("demo.test.", RecordType::MX, DNSClass::NONE)),
        ResponseCode::YXRRSet
    );
    // RRset exists (value independent), but it does not
    assert_eq!(
        code(meta("mx1.demo.test.", RecordType::AAAA, DNSClass::ANY)),
        ResponseCode::NXRRSet
    );
    // name is in use / not in use
    assert_eq!(
        code(meta("mx1.demo.test.", RecordType::ANY, DNSClass::NONE)),
        ResponseCode::YXDomain
    );
    assert_eq!(
        code(meta("nope.demo.test.", RecordType::ANY, DNSClass::ANY)),
        ResponseCode::NXDomain
    );
    // outside the zone; a prerequisite with a TTL
    assert_eq!(
        code(meta("demo.example.", RecordType::MX, DNSClass::NONE)),
        ResponseCode::NotZone
    );
    assert_eq!(
        code(mx("mx1.demo.test.", 60, DNSClass::IN)),
        ResponseCode::FormErr
    );
    assert_eq!(served_mx(&auth), vec!["300 10 mx1.demo.test."]);
    assert_eq!(auth.zone().serial(), 1);

    // an UPDATE for another zone
    let mut other = update(vec![], vec![]);
    other.queries = vec![Query::query(name("example.test."), RecordType::SOA)];
    assert_eq!(
        exchange(&auth, other, Some(&k)).metadata.response_code,
        ResponseCode::NotAuth
    );
}

#[test]
fn bad_or_missing_signatures_change_nothing() {
    let auth = authority();
    let tsig_error = |m: &Message| m.signature().and_then(|t| t.data.error);

    let answer = exchange(
        &auth,
        failover(),
        Some(&key(b"not the demo secret", "demo-key.")),
    );
    assert_eq!(answer.metadata.response_code, ResponseCode::NotAuth);
    assert_eq!(tsig_error(&answer), Some(TsigError::BadSig));
    assert!(
        answer.signature().is_some_and(|t| t.data.mac.is_empty()),
        "BADSIG answers are unsigned"
    );

    let answer = exchange(&auth, failover(), Some(&key(SECRET, "other-key.")));
    assert_eq!(answer.metadata.response_code, ResponseCode::NotAuth);
    assert_eq!(tsig_error(&answer), Some(TsigError::BadKey));

    let answer = exchange(&auth, failover(), None);
    assert_eq!(answer.metadata.response_code, ResponseCode::Refused);

    // a signature far outside the fudge
    let mut msg = failover();
    msg.finalize(&key(SECRET, "demo-key."), now() - 3600)
        .expect("sign");
    let reply = auth
        .handle(&msg.to_vec().expect("encode"), None)
        .expect("answer");
    let answer = Message::from_vec(&reply).expect("decode");
    assert_eq!(answer.metadata.response_code, ResponseCode::NotAuth);
    assert_eq!(tsig_error(&answer), Some(TsigError::BadTime));

    assert_eq!(served_mx(&auth), vec!["300 10 mx1.demo.test."]);
    assert_eq!(auth.zone().serial(), 1);
}

#[test]
fn queries_are_answered_authoritatively() {
    let auth = authority();
    let ask = |n: &str, t: RecordType| {
        let mut q = Message::query();
        q.add_query(Query::query(name(n), t));
        exchange(&auth, q, None)
    };
    let a = ask("mx1.demo.test.", RecordType::A);
    assert!(a.metadata.authoritative);
    assert_eq!(
        (a.metadata.response_code, a.answers.len()),
        (ResponseCode::NoError, 1)
    );
    assert!(a.signature().is_none(), "unsigned query, unsigned answer");

    let nodata = ask("mx1.demo.test.", RecordType::AAAA);
    assert_eq!(
        (nodata.metadata.response_code, nodata.answers.len()),
        (ResponseCode::NoError, 0)
    );
    assert_eq!(nodata.authorities[0].record_type(), RecordType::SOA);

    let nx = ask("nope.demo.test.", RecordType::A);
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    assert!(nx.metadata.authoritative);
    assert_eq!(nx.authorities[0].record_type(), RecordType::SOA);

    assert_eq!(
        ask("example.com.", RecordType::A).metadata.response_code,
        ResponseCode::Refused
    );
}

fn mx_set(target: &str, ttl: u32) -> RecordSet {
    RecordSet::parse(
        Fqdn::parse("demo.test").expect("fqdn"),
        Rt::Mx,
        Ttl::new(ttl).expect("ttl"),
        &[format!("10 {target}").as_str()],
    )
    .expect("set")
}

fn provider(server: std::net::SocketAddr, secret: &[u8]) -> Rfc2136Provider {
    let cfg = Rfc2136Config::new(
        "demo",
        server,
        Fqdn::parse("demo-key").expect("key name"),
        mxguard_rfc2136::TsigAlgorithm::HmacSha256,
        TsigSecret::from_base64(&base64(secret)).expect("secret"),
    );
    Rfc2136Provider::new(cfg).expect("provider")
}

#[tokio::test]
async fn mxguards_rfc2136_provider_reads_and_updates_over_the_wire() {
    let server = DnsServer::start(IpAddr::V4(Ipv4Addr::LOCALHOST), Arc::new(authority()))
        .await
        .expect("server");
    let zone = Fqdn::parse("demo.test").expect("zone");
    let p = provider(server.addr(), SECRET);
    let key = RrsetKey::of(&mx_set("mx1.demo.test.", 300));
    let live = p
        .read(&zone, std::slice::from_ref(&key))
        .await
        .expect("signed read");
    assert_eq!(live, vec![mx_set("mx1.demo.test.", 300)]);

    let change = |expected: RecordSet| ChangeSet {
        changes: vec![Change::Upsert {
            set: mx_set("backup.demo.test.", 30),
            expected: Some(expected),
        }],
    };
    p.apply(&zone, &change(mx_set("mx1.demo.test.", 300)))
        .await
        .expect("applied");
    assert_eq!(
        p.read(&zone, std::slice::from_ref(&key))
            .await
            .expect("read"),
        vec![mx_set("backup.demo.test.", 30)]
    );
    assert_eq!(server.authority().zone().serial(), 2);

    let stale = p.apply(&zone, &change(mx_set("mx1.demo.test.", 300))).await;
    assert_eq!(
        stale.map_err(|e| e.kind()),
        Err("rejected"),
        "stale expected → NXRRSET"
    );
    let wrong = provider(server.addr(), b"not the demo secret")
        .apply(&zone, &change(mx_set("backup.demo.test.", 30)))
        .await;
    assert_eq!(
        wrong.map_err(|e| e.kind()),
        Err("auth"),
        "bad key → BADSIG → auth"
    );
    let listed = p.list_zone(&zone).await.expect("signed AXFR");
    assert!(
        listed.contains(&mx_set("backup.demo.test.", 30)),
        "{listed:?}"
    );
    assert_eq!(server.authority().zone().serial(), 2);
}
