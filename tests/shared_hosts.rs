//! End to end: many domains on the same two MX hosts, as a mail or hosting provider's customer
//! domains are. The real `mxguard serve` watches them on `named` (RFC 2136), two Unbound
//! resolvers and two Postfix MTAs with Postfix's default client limits (50 connections per
//! client). Each host is probed once per round for every domain, so neither MTA ever answers
//! `421 too many connections`, every domain settles on the primary, and when the primary MTA
//! stops every domain fails over to the backup.
//!
//! `MXGUARD_SHARED_DOMAINS` sets how many domains share the hosts (default 2,000).

mod common;

use std::time::{Duration, Instant};

use common::lab::{shared_domain, Checks, Lab, LabOptions, Layout, Mxguard};

fn shared_domains() -> usize {
    std::env::var("MXGUARD_SHARED_DOMAINS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2000)
}

/// Domains per (phase, primary health, backup health), from the store.
async fn phases(lab: &Lab) -> Vec<(String, String, String, i64)> {
    let url = format!("sqlite://{}?mode=ro", lab.db.display());
    let Ok(pool) = sqlx::SqlitePool::connect(&url).await else {
        return Vec::new();
    };
    let states: Vec<(String,)> = sqlx::query_as("SELECT state FROM domain_state")
        .fetch_all(&pool)
        .await
        .unwrap_or_default();
    pool.close().await;
    let mut counts: std::collections::BTreeMap<(String, String, String), i64> = Default::default();
    for (state,) in states {
        let v: serde_json::Value = serde_json::from_str(&state).unwrap_or_default();
        let field = |f: &str| v["machine"][f].as_str().unwrap_or("?").to_string();
        *counts
            .entry((field("phase"), field("primary"), field("backup")))
            .or_default() += 1;
    }
    counts
        .into_iter()
        .map(|((p, a, b), n)| (p, a, b, n))
        .collect()
}

/// Until `want` domains are in `phase` with the given side healths; panics (with the
/// distribution and mxguard's log tail) after `deadline`.
async fn wait_for(
    lab: &Lab,
    mx: &mut Mxguard,
    want: i64,
    state: (&str, &str, &str),
    deadline: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        let rows = phases(lab).await;
        let have = rows
            .iter()
            .find(|(p, a, b, _)| (p.as_str(), a.as_str(), b.as_str()) == state)
            .map_or(0, |r| r.3);
        if have == want {
            return start.elapsed();
        }
        if let Ok(Some(status)) = mx.child.try_wait() {
            panic!("mxguard exited ({status}):\n{}", mx.plain_log());
        }
        if start.elapsed() > deadline {
            let log = mx.plain_log();
            let kept = std::env::temp_dir().join("mxguard-shared-hosts.log");
            let _ = std::fs::write(&kept, &log);
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            let limited = (
                too_many(&lab.primary.log()).len(),
                too_many(&lab.backup.log()).len(),
            );
            panic!(
                "{have} of {want} domains in {state:?} after {deadline:?}: {rows:?}\n\
                 connections the MTAs refused as too many (primary, backup): {limited:?}\n\
                 mxguard's log in {}; its last lines, newest first:\n{}",
                kept.display(),
                tail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Finished SMTP sessions (Postfix's `disconnect from … ehlo=…` lines) in an MTA's log.
fn sessions(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("disconnect from") && l.contains("ehlo="))
        .count()
}

fn too_many(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| {
            // smtpd answers `421 4.7.0 … too many connections`; the log says why
            l.contains("too many connections")
                || l.contains("Connection concurrency limit exceeded")
                || l.contains("Connection rate limit exceeded")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn domains_sharing_two_postfix_hosts_are_probed_once_per_host_and_all_fail_over() {
    let n = shared_domains();
    let total = n as i64 + 1; // and example.test itself
    let interval = Duration::from_secs(3);
    // The deadlines grow with the domains: settling and failing over are paced by the
    // provider's budget, one read and one write per domain.
    let scale = (total as f64 / 2001.0).max(1.0);
    let deadline = |secs: u64| Duration::from_secs(secs).mul_f64(scale);
    let mut lab = Lab::start_with(
        LabOptions {
            hold: "1h",
            mx_ttl: 300,
        },
        Layout {
            shared_domains: n,
            checks: Checks {
                interval: "3s",
                timeout: "2s",
                fail_after: 2,
                recover_after: 2,
                confirm_interval: "500ms",
                ..Checks::FAST
            },
            read_token: true,
            ..Layout::default()
        },
    )
    .await;
    eprintln!("lab with {total} domains started");
    let mut mx = lab.serve(None);

    // Every domain settles on the primary with both sides Up: no false BothDown, no failover.
    let settled = wait_for(&lab, &mut mx, total, ("primary", "up", "up"), deadline(300)).await;
    eprintln!("{total} domains settled {settled:?} after start");

    // Their first reads of what is published, all in one zone and asked together, were
    // answered by zone listings (AXFR), not one read each through the provider's 50/s.
    let metrics = reqwest::Client::new()
        .get(format!("http://{}/metrics", mx.listen))
        .bearer_auth(common::lab::READ_TOKEN)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("scrape /metrics")
        .text()
        .await
        .expect("metrics text");
    let operations = |op: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("mxguard_provider_operations_total{")
                    && l.contains(&format!("operation=\"{op}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let (listings, reads) = (operations("list_zone"), operations("read"));
    eprintln!("first reads: {listings} zone listings, {reads} reads for {total} domains");
    assert!(
        listings >= 1.0 && reads < total as f64 / 2.0,
        "{total} domains' first reads: {listings} listings and {reads} reads"
    );

    // One session per host per round, whatever the number of domains.
    let (p0, b0) = (sessions(&lab.primary.log()), sessions(&lab.backup.log()));
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let (p1, b1) = (sessions(&lab.primary.log()), sessions(&lab.backup.log()));
    let rounds = window.elapsed().as_secs_f64() / interval.as_secs_f64();
    // rounds vary by ± 5 % jitter; a round in flight at either end adds one
    let most = (rounds * 1.1).ceil() as usize + 2;
    eprintln!(
        "over {:?}: {} primary and {} backup sessions ({rounds:.1} rounds)",
        window.elapsed(),
        p1 - p0,
        b1 - b0
    );
    assert!(
        p1 - p0 <= most && b1 - b0 <= most,
        "sessions per host over {rounds:.1} rounds: primary {}, backup {} (at most {most})",
        p1 - p0,
        b1 - b0
    );
    assert!(p1 > p0 && b1 > b0, "both hosts are still probed");
    let summary = lab
        .backup
        .log()
        .lines()
        .rev()
        .find(|l| l.contains("disconnect from") && l.contains("rcpt="))
        .map(str::to_string)
        .unwrap_or_default();
    // a slice of 100 domains' postmasters a round (each domain's turn comes every
    // total / 100 rounds), and the relay check
    let slice = total.min(100);
    assert!(
        summary.contains(&format!("mail=1 rcpt={slice}/{}", slice + 1)),
        "the backup's session checks {slice} domains' postmaster and the relay: {summary}"
    );

    // The primary MTA stops: every domain fails over, verified at named.
    lab.primary.stop().await.expect("stop the primary MTA");
    let took = wait_for(
        &lab,
        &mut mx,
        total,
        ("on_backup", "down", "up"),
        deadline(600),
    )
    .await;
    eprintln!("{total} domains on the backup {took:?} after the primary stopped");
    lab.wait_verified(&mx, total as usize, deadline(300)).await;
    let client =
        mxguard::probe::dns::DnsClient::authoritative(lab.named.addr(), Duration::from_secs(2));
    for name in [
        "example.test".to_string(),
        shared_domain(0),
        shared_domain(n - 1),
    ] {
        let fqdn = mxguard::model::Fqdn::parse(&name).expect("name");
        let a = client.query(&fqdn, mxguard::model::RecordType::Mx).await;
        let served: Vec<String> = a.records.iter().map(|r| r.to_string()).collect();
        assert_eq!(served, ["10 backup.example.test."], "{name}");
    }

    // mxguard never made either MTA refuse it.
    for (who, log) in [("primary", lab.primary.log()), ("backup", lab.backup.log())] {
        let refused = too_many(&log);
        assert!(
            refused.is_empty(),
            "the {who} MTA limited mxguard: {refused:?}"
        );
    }
    assert!(!mx.plain_log().contains("too many connections"));
}
