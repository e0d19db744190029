//! RFC 2136 behaviour beyond the shared kit, against a real `named` (raw provider, no retries).

mod common;

use std::time::{Duration, Instant};

use common::{Named, ZoneSpec};
use mxguard_core::{
    diff, Change, ChangeSet, DnsProvider, Fqdn, ProviderError, RecordSet, RecordType, RrsetKey, Ttl,
};
use mxguard_rfc2136::{Rfc2136Config, Rfc2136Provider, TsigAlgorithm, TsigSecret};

fn fqdn(s: &str) -> Fqdn {
    Fqdn::parse(s).unwrap()
}

fn set(name: &str, rtype: RecordType, ttl: u32, records: &[&str]) -> RecordSet {
    RecordSet::parse(fqdn(name), rtype, Ttl::new(ttl).unwrap(), records).unwrap()
}

fn upsert(set: &RecordSet) -> ChangeSet {
    ChangeSet {
        changes: vec![Change::Upsert {
            set: set.clone(),
            expected: None,
        }],
    }
}

async fn start(algorithm: TsigAlgorithm, zones: Vec<ZoneSpec>) -> Named {
    tokio::task::spawn_blocking(move || Named::start(algorithm, &zones))
        .await
        .expect("starting named")
}

#[tokio::test]
async fn hmac_sha512_keys_update_read_and_transfer() {
    let named = start(
        TsigAlgorithm::HmacSha512,
        vec![ZoneSpec::new("sha512.test")],
    )
    .await;
    let p = named.provider();
    let zone = fqdn("sha512.test");
    let a = set("mxg-a.sha512.test", RecordType::A, 42, &["192.0.2.42"]);
    assert_eq!(p.apply(&zone, &upsert(&a)).await, Ok(()));
    assert_eq!(
        p.read(&zone, &[RrsetKey::of(&a)]).await,
        Ok(vec![a.clone()])
    );
    let all = p
        .list_zone(&zone)
        .await
        .expect("AXFR signed with hmac-sha512");
    assert!(all.contains(&a), "{all:?}");
}

#[tokio::test]
async fn a_wrong_secret_or_an_unknown_key_is_auth_and_never_echoes_the_secret() {
    let named = start(TsigAlgorithm::HmacSha256, vec![ZoneSpec::new("auth.test")]).await;
    let zone = fqdn("auth.test");
    let a = set("mxg-a.auth.test", RecordType::A, 60, &["192.0.2.1"]);

    let wrong_secret = common::random_secret(32);
    let bad_secret = Rfc2136Provider::new(named.config(&wrong_secret)).unwrap();
    let unknown_key = Rfc2136Provider::new(Rfc2136Config::new(
        "test",
        named.addr,
        fqdn("nobody-knows-me"),
        TsigAlgorithm::HmacSha256,
        TsigSecret::from_base64(&named.secret_b64).unwrap(),
    ))
    .unwrap();
    for (label, p, code) in [
        ("wrong secret", bad_secret, "BadSig"),
        ("unknown key", unknown_key, "BadKey"),
    ] {
        for result in [
            p.apply(&zone, &upsert(&a)).await,
            p.read(&zone, &[RrsetKey::of(&a)]).await.map(|_| ()),
            p.list_zone(&zone).await.map(|_| ()),
        ] {
            match result {
                Err(ProviderError::Auth(msg)) => {
                    assert!(msg.contains(code), "{label}: {msg}");
                    assert!(
                        !msg.contains(&wrong_secret) && !msg.contains(&named.secret_b64),
                        "{msg}"
                    );
                }
                other => panic!("{label}: expected Auth, got {other:?}"),
            }
        }
    }
    assert_eq!(
        named.provider().read(&zone, &[RrsetKey::of(&a)]).await,
        Ok(vec![])
    );
}

#[tokio::test]
async fn a_stopped_named_is_transient_at_once() {
    let mut named = start(TsigAlgorithm::HmacSha256, vec![ZoneSpec::new("down.test")]).await;
    let p = named.provider();
    let zone = fqdn("down.test");
    let a = set("mxg-a.down.test", RecordType::A, 60, &["192.0.2.1"]);
    assert_eq!(p.read(&zone, &[RrsetKey::of(&a)]).await, Ok(vec![]));
    tokio::task::spawn_blocking(move || {
        named.stop();
        named
    })
    .await
    .unwrap();
    let started = Instant::now();
    for result in [
        p.read(&zone, &[RrsetKey::of(&a)]).await.map(|_| ()),
        p.apply(&zone, &upsert(&a)).await,
        p.list_zone(&zone).await.map(|_| ()),
    ] {
        assert!(
            matches!(result, Err(ProviderError::Transient(_))),
            "{result:?}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "refused, not timed out: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_server_that_never_answers_is_transient_after_the_timeout() {
    // a UDP port and a TCP listener on the same port that accept but never reply (the UDP
    // port's number may be taken in TCP by another socket: try another one)
    let (_udp, _tcp, addr) = (0..100)
        .find_map(|_| {
            let udp = std::net::UdpSocket::bind("127.0.0.1:0").ok()?;
            let addr = udp.local_addr().ok()?;
            let tcp = std::net::TcpListener::bind(addr).ok()?;
            Some((udp, tcp, addr))
        })
        .expect("a UDP and TCP port pair on loopback");
    let config = Rfc2136Config::new(
        "silent",
        addr,
        fqdn("k"),
        TsigAlgorithm::HmacSha256,
        TsigSecret::from_base64(&common::random_secret(32)).unwrap(),
    )
    .with_timeout(Duration::from_millis(300));
    let p = Rfc2136Provider::new(config).unwrap();
    let zone = fqdn("silent.test");
    let started = Instant::now();
    let read = p.read(&zone, &[]).await;
    let apply = p
        .apply(
            &zone,
            &upsert(&set("a.silent.test", RecordType::A, 60, &["192.0.2.1"])),
        )
        .await;
    for result in [read.map(|_| ()), apply] {
        match result {
            Err(ProviderError::Transient(msg)) => assert!(msg.contains("within"), "{msg}"),
            other => panic!("expected a timeout, got {other:?}"),
        }
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(600) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[tokio::test]
async fn mixed_case_zone_data_reads_back_canonical() {
    let mut spec = ZoneSpec::new("case.test");
    spec.records =
        "MXG-Host.Case.TEST. 300 IN A 192.0.2.7\n@ 300 IN MX 10 MXG-HOST.case.test.\n".into();
    let named = start(TsigAlgorithm::HmacSha256, vec![spec]).await;
    let p = named.provider();
    let zone = fqdn("CASE.test");
    let desired = vec![
        set("mxg-host.case.test", RecordType::A, 300, &["192.0.2.7"]),
        set(
            "case.test",
            RecordType::Mx,
            300,
            &["10 mxg-host.case.test."],
        ),
    ];
    let keys: Vec<RrsetKey> = desired.iter().map(RrsetKey::of).collect();
    let actual = p
        .read(&zone, &keys)
        .await
        .expect("reading the seeded RRsets");
    assert!(diff(&desired, &actual).is_empty(), "{actual:?}");
    let listed = p.list_zone(&zone).await.expect("AXFR of the seeded zone");
    assert!(desired.iter().all(|s| listed.contains(s)), "{listed:?}");
}

#[tokio::test]
async fn transfer_not_allowed_is_auth_and_refused_content_is_auth_with_the_reason() {
    let mut spec = ZoneSpec::new("closed.test");
    spec.allow_transfer = false;
    let named = start(TsigAlgorithm::HmacSha256, vec![spec]).await;
    let p = named.provider();
    let zone = fqdn("closed.test");
    match p.list_zone(&zone).await {
        Err(ProviderError::Auth(msg)) => assert!(msg.contains("allow-transfer"), "{msg}"),
        other => panic!("expected Auth, got {other:?}"),
    }
    // named refuses an MX whose in-zone target has no address (its check-mx on UPDATE)
    let mx = set(
        "closed.test",
        RecordType::Mx,
        60,
        &["10 mxg-nowhere.closed.test."],
    );
    match p.apply(&zone, &upsert(&mx)).await {
        Err(ProviderError::Auth(msg)) => assert!(msg.contains("A/AAAA"), "{msg}"),
        other => panic!("expected Auth (REFUSED), got {other:?}"),
    }
    assert_eq!(p.read(&zone, &[RrsetKey::of(&mx)]).await, Ok(vec![]));
}
