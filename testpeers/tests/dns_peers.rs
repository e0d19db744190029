//! named + Unbound: the resolver answers from the authoritative server, caches with the
//! published TTLs, and can be made to fail.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use mxguard_testpeers::dns::RcodeServer;
use mxguard_testpeers::hickory_proto::op::{Message, ResponseCode};
use mxguard_testpeers::hickory_proto::rr::{RData, RecordType};
use mxguard_testpeers::{dns, free_port, poll_until, Named, Unbound, UnboundOptions, Zone};

const RECORDS: &str = "@ 300 IN MX 10 mx1\nmx1 300 IN A 127.0.0.20\nshort 2 IN A 127.0.0.30\n";

async fn a_record(server: SocketAddr, name: &str) -> Message {
    dns::query(server, name, RecordType::A)
        .await
        .expect("an answer")
}

fn first_a(m: &Message) -> (IpAddr, u32) {
    let rr = m
        .answers
        .first()
        .unwrap_or_else(|| panic!("no answer: {m:?}"));
    match &rr.data {
        RData::A(a) => (IpAddr::V4(a.0), rr.ttl),
        other => panic!("not an A record: {other:?}"),
    }
}

#[tokio::test]
async fn unbound_resolves_from_named_and_serves_its_cache_while_named_is_down() {
    let mut named = Named::start(&[Zone::new("example.test", RECORDS)], None)
        .await
        .expect("named");
    let unbound = Unbound::start("example.test", named.addr(), UnboundOptions::default())
        .await
        .expect("unbound");

    let mx = dns::query(unbound.addr(), "example.test.", RecordType::MX)
        .await
        .expect("MX");
    assert_eq!(mx.metadata.response_code, ResponseCode::NoError);
    assert_eq!(mx.answers.len(), 1, "{mx:?}");
    let (ip, ttl) = first_a(&a_record(unbound.addr(), "mx1.example.test.").await);
    assert_eq!(ip, IpAddr::from([127, 0, 0, 20]));
    assert!(ttl <= 300 && ttl > 250, "TTL as published: {ttl}");
    let (_, short_ttl) = first_a(&a_record(unbound.addr(), "short.example.test.").await);
    assert!(short_ttl <= 2, "{short_ttl}");

    named.stop();
    // Still cached: mx1 (300 s) keeps answering.
    let (ip, _) = first_a(&a_record(unbound.addr(), "mx1.example.test.").await);
    assert_eq!(ip, IpAddr::from([127, 0, 0, 20]));
    // short (2 s) expires and cannot be refreshed: no longer answered once its TTL has run
    // out (Unbound retries the dead server for ~13 s, then says SERVFAIL).
    let addr = unbound.addr();
    poll_until(
        Duration::from_secs(30),
        "short.example.test to expire",
        || async move {
            match dns::query(addr, "short.example.test.", RecordType::A).await {
                Ok(m) if !m.answers.is_empty() => Err(format!("still answered: {:?}", m.answers)),
                _ => Ok(()),
            }
        },
    )
    .await
    .expect("the 2 s record expires");

    named.restart().await.expect("named restarts");
    poll_until(
        Duration::from_secs(30),
        "short.example.test to resolve again",
        || async move {
            let m = dns::query(addr, "short.example.test.", RecordType::A)
                .await
                .map_err(|e| e.to_string())?;
            if m.answers.is_empty() {
                Err(format!("{}", m.metadata.response_code))
            } else {
                Ok(())
            }
        },
    )
    .await
    .expect("resolves again once named is back");
}

#[tokio::test]
async fn cache_max_ttl_caps_the_ttl() {
    let named = Named::start(&[Zone::new("example.test", RECORDS)], None)
        .await
        .expect("named");
    let opts = UnboundOptions {
        cache_max_ttl: Some(5),
        ..UnboundOptions::default()
    };
    let unbound = Unbound::start("example.test.", named.addr(), opts)
        .await
        .expect("unbound");
    let (_, ttl) = first_a(&a_record(unbound.addr(), "mx1.example.test.").await);
    assert!(ttl <= 5, "capped TTL: {ttl}");
}

#[tokio::test]
async fn servfail_resolver_answers_servfail() {
    let unbound = Unbound::start_servfail("example.test", UnboundOptions::default())
        .await
        .expect("unbound");
    let m = a_record(unbound.addr(), "mx1.example.test.").await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail, "{m:?}");
}

#[tokio::test]
async fn stopped_resolver_is_silent_until_restarted() {
    let named = Named::start(&[Zone::new("example.test", RECORDS)], None)
        .await
        .expect("named");
    let mut unbound = Unbound::start("example.test", named.addr(), UnboundOptions::default())
        .await
        .expect("unbound");
    unbound.stop();
    assert!(!unbound.is_running());
    let err = dns::query(unbound.addr(), "mx1.example.test.", RecordType::A).await;
    assert!(err.is_err(), "a stopped resolver answered: {err:?}");
    unbound.restart().await.expect("restarts");
    let (ip, _) = first_a(&a_record(unbound.addr(), "mx1.example.test.").await);
    assert_eq!(ip, IpAddr::from([127, 0, 0, 20]));
}

#[tokio::test]
async fn named_accepts_tsig_config_and_serves_several_zones() {
    let key = mxguard_testpeers::TsigKey {
        name: "mxguard-test.".into(),
        algorithm: "hmac-sha256".into(),
        secret_b64: "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI=".into(),
    };
    let zones = [
        Zone::new("example.test", RECORDS),
        Zone::new("backup.test", "mx 60 IN A 127.0.0.40\n"),
    ];
    let named = Named::start(&zones, Some(&key)).await.expect("named");
    let (ip, ttl) = first_a(&a_record(named.addr(), "mx.backup.test.").await);
    assert_eq!((ip, ttl), (IpAddr::from([127, 0, 0, 40]), 60));
    assert!(named.log().contains("running"), "{}", named.log());
}

#[tokio::test]
async fn unbound_can_start_before_its_authoritative_server() {
    let nowhere = SocketAddr::from(([127, 0, 0, 1], free_port().expect("a port")));
    let opts = UnboundOptions {
        wait_for_zone: false,
        ..UnboundOptions::default()
    };
    let mut unbound = Unbound::start("example.test", nowhere, opts)
        .await
        .expect("starts without its upstream");
    assert!(unbound.is_running());
}

#[tokio::test]
async fn rcode_server_answers_every_query_with_its_code() {
    let server = RcodeServer::start(ResponseCode::Refused).expect("server");
    let m = dns::query(server.addr(), "anything.example.test.", RecordType::MX)
        .await
        .expect("an answer");
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert_eq!(m.queries.len(), 1);
}

/// Two stub zones in one resolver: the managed zone and the MX hosts' zone. Re-pointing the
/// MX hosts' zone at a SERVFAIL server fails that zone only (a regional outage of the MX
/// hosts' DNS), and pointing it back heals it.
#[tokio::test]
async fn an_extra_stub_zone_can_fail_on_its_own_and_recover() {
    let named = Named::start(
        &[
            Zone::new("example.test", "@ 300 IN MX 10 mx1.mx.test.\n"),
            Zone::new("mx.test", "mx1 300 IN A 127.0.0.20\n"),
        ],
        None,
    )
    .await
    .expect("named");
    let opts = UnboundOptions {
        extra_stubs: vec![mxguard_testpeers::Stub::new("mx.test.", named.addr())],
        ..UnboundOptions::default()
    };
    let mut unbound = Unbound::start("example.test", named.addr(), opts)
        .await
        .expect("unbound");
    let (ip, _) = first_a(&a_record(unbound.addr(), "mx1.mx.test.").await);
    assert_eq!(ip, IpAddr::from([127, 0, 0, 20]));

    let broken = RcodeServer::start(ResponseCode::ServFail).expect("SERVFAIL server");
    unbound
        .set_stub("mx.test", broken.addr())
        .await
        .expect("re-pointed");
    assert_eq!(unbound.extra_stubs()[0].upstream, broken.addr());
    let failed = a_record(unbound.addr(), "mx1.mx.test.").await;
    assert_eq!(failed.metadata.response_code, ResponseCode::ServFail);
    // the managed zone still resolves at this resolver
    let mx = dns::query(unbound.addr(), "example.test.", RecordType::MX)
        .await
        .expect("MX");
    assert_eq!(mx.metadata.response_code, ResponseCode::NoError);
    assert_eq!(mx.answers.len(), 1, "{mx:?}");

    unbound
        .set_stub("mx.test", named.addr())
        .await
        .expect("pointed back");
    let (ip, _) = first_a(&a_record(unbound.addr(), "mx1.mx.test.").await);
    assert_eq!(ip, IpAddr::from([127, 0, 0, 20]));
    assert!(
        unbound
            .set_stub("example.test", broken.addr())
            .await
            .is_err(),
        "the main stub zone is fixed"
    );
}
