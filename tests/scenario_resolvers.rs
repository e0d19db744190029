//! Scenario 2 of the outage lab, end to end: the DNS of the primary's MX host fails at some
//! resolvers only (the Cloudflare-outage case: MX hosts unresolvable in some regions).
//!
//! The real `mxguard serve` binary, BIND `named` (RFC 2136 + TSIG) serving example.test and, as
//! a zone of its own, mx.test (the primary MX host `mx1.mx.test`), three Unbound resolvers with
//! a stub zone for each, two Postfix MX hosts; `resolver_quorum = 2`. Re-pointing one
//! resolver's mx.test stub at a server answering SERVFAIL leaves the primary resolvable by a
//! quorum: rounds go on, nothing moves. Doing it at a second resolver breaks the quorum: the
//! MX moves to the backup at `named`, in exactly one UPDATE.

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::lab::{Lab, LabOptions, Layout, Mxguard, PRIMARY_IP};
use mxguard_testpeers::hickory_proto::op::ResponseCode;
use mxguard_testpeers::hickory_proto::rr::{RData, RecordType};
use serde_json::Value;

const DOMAIN_PATH: &str = "/v1/domains/example.test";
const BACKUP_MX: &str = "10 backup.example.test. 30";

fn timeline(ev: &[mxguard::store::Event]) -> Vec<String> {
    ev.iter()
        .map(|e| format!("{} {} {}", e.at, e.kind, e.message))
        .collect()
}

/// The domain's full status from the API, once it answers 200.
async fn status(lab: &Lab, mx: &Mxguard) -> Value {
    common::poll("the status endpoint", Duration::from_secs(60), || async {
        match lab.api_get(mx, DOMAIN_PATH).await {
            Some((200, v)) => Some(v),
            _ => None,
        }
    })
    .await
}

/// What resolver `server` answers for the primary MX host's A record: the address, or the
/// response code when there is none.
async fn mx_host_at(server: SocketAddr, host: &str) -> Result<IpAddr, ResponseCode> {
    let reply = mxguard_testpeers::dns::query(server, &format!("{host}."), RecordType::A)
        .await
        .expect("the resolver answers");
    reply
        .answers
        .iter()
        .find_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        })
        .ok_or(reply.metadata.response_code)
}

#[tokio::test(flavor = "multi_thread")]
async fn mx_host_unresolvable_at_one_resolver_of_three_is_no_outage_at_two_it_fails_over() {
    let mut lab = Lab::start_with(
        LabOptions {
            hold: "1h",
            mx_ttl: 300,
        },
        Layout {
            resolvers: 3,
            resolver_quorum: 2,
            mx_zone: Some("mx.test"),
            read_token: true,
            ..Layout::default()
        },
    )
    .await;
    let primary_mx = format!("{} 300", lab.primary_mx());
    assert_eq!(primary_mx, "10 mx1.mx.test. 300");
    let mx = lab.serve(None);

    // settled: the primary is published and both sides have been seen Up
    common::poll(
        "settled on the primary",
        Duration::from_secs(60),
        || async {
            let s = status(&lab, &mx).await;
            (s["phase"] == "primary"
                && s["health"]["primary"] == "up"
                && s["health"]["backup"] == "up")
                .then_some(())
        },
    )
    .await;
    assert_eq!(lab.served_mx().await, vec![primary_mx.clone()]);
    let serial = lab.serial().await;

    // --- the MX host's DNS fails at one resolver of three ---
    lab.fail_mx_zone_at(2).await;
    let broken_at = chrono::Utc::now();
    let host = lab.mx_host.clone();
    let primary_ip: IpAddr = PRIMARY_IP.parse().expect("ip");
    for (i, r) in lab.resolvers.iter().enumerate() {
        let got = mx_host_at(r.addr(), &host).await;
        let want = if i == 2 {
            Err(ResponseCode::ServFail)
        } else {
            Ok(primary_ip)
        };
        assert_eq!(got, want, "resolver {i} ({}) for {host}", r.addr());
    }
    // Several primary rounds run with it broken (fail_after is 2; six rounds is three times
    // that): every one passes, the controller stays on the primary.
    let mut rounds = BTreeSet::new();
    let start = Instant::now();
    while rounds.len() < 6 {
        let s = status(&lab, &mx).await;
        assert_eq!(
            s["phase"], "primary",
            "moved with one resolver failing: {s}"
        );
        assert_eq!(s["health"]["primary"], "up", "{s}");
        let empty = Vec::new();
        for r in s["rounds"].as_array().unwrap_or(&empty) {
            let at = r["at"].as_str().unwrap_or_default();
            let after_break = chrono::DateTime::parse_from_rfc3339(at)
                .is_ok_and(|t| t > broken_at + chrono::Duration::seconds(1));
            if r["side"] == "primary" && after_break {
                assert_eq!(r["pass"], true, "a primary round failed: {r}");
                rounds.insert(at.to_string());
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "only {} primary round(s) seen in 90 s:\n{}",
            rounds.len(),
            mx.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ev = lab.events().await;
    let after: Vec<&mxguard::store::Event> = ev.iter().filter(|e| e.at >= broken_at).collect();
    assert!(
        after
            .iter()
            .all(|e| !matches!(e.kind.as_str(), "transition" | "change" | "health")),
        "something happened with one resolver of three failing:\n{:#?}",
        timeline(&ev)
    );
    assert_eq!(lab.serial().await, serial, "no UPDATE was sent");
    assert_eq!(lab.served_mx().await, vec![primary_mx.clone()]);

    // --- and at a second resolver: only one of three resolves it, below the quorum ---
    lab.fail_mx_zone_at(1).await;
    assert_eq!(
        mx_host_at(lab.resolvers[1].addr(), &host).await,
        Err(ResponseCode::ServFail)
    );
    let start = Instant::now();
    while lab.served_mx().await != vec![BACKUP_MX.to_string()] {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no failover with two resolvers of three failing; named serves {:?}:\n{}",
            lab.served_mx().await,
            mx.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(lab.serial().await, serial + 1, "exactly one UPDATE");

    // the timeline says why: the primary went Down for lack of a resolver quorum
    let ev = common::poll("the change event", Duration::from_secs(30), || async {
        let ev = lab.events().await;
        ev.iter().any(|e| e.kind == "change").then_some(ev)
    })
    .await;
    let down = ev
        .iter()
        .find(|e| e.kind == "health" && e.message.starts_with("primary Up → Down"))
        .unwrap_or_else(|| panic!("no primary Down event:\n{:#?}", timeline(&ev)));
    let failover = ev
        .iter()
        .find(|e| e.kind == "transition" && e.message.contains("FailingOver"))
        .unwrap_or_else(|| panic!("no failover transition:\n{:#?}", timeline(&ev)));
    // the verdict's reason, in the evidence of the Down or of the failover
    let evidence = format!("{} {}", down.evidence, failover.evidence);
    assert!(
        evidence.contains("resolved by 1 of 3 resolvers, quorum is 2")
            && evidence.contains("SERVFAIL"),
        "{evidence}"
    );
    assert!(
        failover.message.contains("primary Down, backup Up"),
        "{}",
        failover.message
    );
    assert_eq!(
        ev.iter().filter(|e| e.kind == "change").count(),
        1,
        "{:#?}",
        timeline(&ev)
    );
}
