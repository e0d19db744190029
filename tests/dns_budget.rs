//! End to end: the DNS checks respect the resolvers. The real `mxguard serve` watches 200
//! domains, each with an MX host of its own (and one shared backup host), through a single
//! counting resolver at `max_qps = 10`: every domain settles, no wall-clock second sees more
//! than max_qps queries (plus one A/AAAA pair whose answer crossed into the next second), and
//! once settled the hosts' answers are reused for `dns_interval` instead of being asked every
//! round. The MTA-STS and DANE looks of every domain (the default `mta_sts = "warn"`) ask the
//! same resolver from its spare budget, and a host's TLSA is asked once for all the domains
//! that use it. Domains are on `named` (RFC 2136) and the MTAs are Postfix; the resolver is
//! `testpeers::dns::CountingResolver`, which answers the hosts' A (and NODATA for AAAA, and
//! NXDOMAIN for the TXT and TLSA names) and counts its answers per second and per question.
//!
//! `MXGUARD_DNS_BUDGET_DOMAINS` sets how many domains (default 200).

mod common;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::lab::{mxguard_bin, Mxguard, READ_TOKEN, SECRET};
use hickory_proto::rr::RecordType;
use mxguard_testpeers::{
    dns::CountingResolver,
    free_port, free_port_on,
    named::{Named, TsigKey, Zone},
    postfix::{Postfix, PostfixConfig},
    Ca,
};

const MAX_QPS: usize = 10;
/// A host's A and AAAA are sent together; the pair sent last in a second may be answered in
/// the next one.
const ALLOWANCE: usize = 2;
const INTERVAL: Duration = Duration::from_secs(5);
const DNS_INTERVAL: Duration = Duration::from_secs(60);
const PRIMARY_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 20);
const BACKUP_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 21);

fn domains() -> usize {
    std::env::var("MXGUARD_DNS_BUDGET_DOMAINS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200)
}

fn domain(i: usize) -> String {
    format!("d{i:04}.example.test")
}

fn host(i: usize) -> String {
    format!("mx{i:04}.example.test")
}

fn unix_second() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Domains per (phase, primary health, backup health), from the store.
async fn phases(db: &std::path::Path) -> BTreeMap<(String, String, String), i64> {
    let mut counts = BTreeMap::new();
    let url = format!("sqlite://{}?mode=ro", db.display());
    let Ok(pool) = sqlx::SqlitePool::connect(&url).await else {
        return counts;
    };
    let states: Vec<(String,)> = sqlx::query_as("SELECT state FROM domain_state")
        .fetch_all(&pool)
        .await
        .unwrap_or_default();
    pool.close().await;
    for (state,) in states {
        let v: serde_json::Value = serde_json::from_str(&state).unwrap_or_default();
        let field = |f: &str| v["machine"][f].as_str().unwrap_or("?").to_string();
        *counts
            .entry((field("phase"), field("primary"), field("backup")))
            .or_default() += 1;
    }
    counts
}

/// `mxguard_dns_queries_total` and `…_skipped_total` for `resolver`, from `/metrics`.
async fn dns_counters(mx: &Mxguard, resolver: SocketAddr) -> Option<(f64, f64)> {
    let text = reqwest::Client::new()
        .get(format!("http://{}/metrics", mx.listen))
        .bearer_auth(READ_TOKEN)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let value = |name: &str| {
        let prefix = format!("{name}{{resolver=\"{resolver}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    Some((
        value("mxguard_dns_queries_total")?,
        value("mxguard_dns_queries_skipped_total")?,
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_hosts_through_one_resolver_stay_within_its_budget() {
    let n = domains();
    let dir = tempfile::tempdir().expect("tempdir");

    // named holds the domains' MX (each its own host); TSIG for RFC 2136
    let tsig = TsigKey {
        name: "mxguard-test.".into(),
        algorithm: "hmac-sha256".into(),
        secret_b64: SECRET.into(),
    };
    let mut records = format!("backup 300 IN A {BACKUP_IP}\n");
    for i in 0..n {
        let label = domain(i).trim_end_matches(".example.test").to_string();
        let mx = host(i).trim_end_matches(".example.test").to_string();
        records.push_str(&format!(
            "{label} 300 IN MX 10 {mx}\n{mx} 300 IN A {PRIMARY_IP}\n"
        ));
    }
    let named = Named::start(&[Zone::new("example.test", &records)], Some(&tsig))
        .await
        .expect("named (bind9) must start: install bind9");

    // the one resolver mxguard asks, counting its answers per second
    let mut answers: Vec<(String, Ipv4Addr)> = (0..n).map(|i| (host(i), PRIMARY_IP)).collect();
    answers.push(("backup.example.test".into(), BACKUP_IP));
    let hosts = answers.len();
    let resolver = CountingResolver::start(answers, 300).expect("the counting resolver");

    // the MTAs: every primary host at one Postfix, the shared backup at another
    let ca = Ca::new().expect("ca");
    let port = free_port_on(&[PRIMARY_IP.into(), BACKUP_IP.into()]).expect("port");
    let mtas = Postfix::start_all(vec![
        PostfixConfig::mx(&ca, "mx0000.example.test", (PRIMARY_IP, port).into())
            .expect("cfg")
            .without_starttls(),
        PostfixConfig::mx(&ca, "backup.example.test", (BACKUP_IP, port).into())
            .expect("cfg")
            .without_starttls(),
    ])
    .await
    .expect("postfix must start: install postfix");

    let digest: String = {
        use sha2::Digest;
        sha2::Sha256::digest(READ_TOKEN.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let mut config = format!(
        r#"
[[tokens]]
name = "lab"
sha256 = "{digest}"
scopes = ["read"]

[providers.lab]
kind = "rfc2136"
server = "{named}"
tsig_name = "mxguard-test"
tsig_algorithm = "hmac-sha256"
tsig_secret_env = "MXGUARD_TEST_TSIG"

[checks]
interval = "{interval}s"
timeout = "2s"
fail_after = 2
recover_after = 2
confirm_interval = "500ms"
resolvers = ["{resolver}"]
resolver_quorum = 1
smtp_port = {port}
starttls = "off"
rcpt_checks = "off"
ehlo_name = "mxguard.test"
max_qps = {MAX_QPS}
dns_interval = "{dns_interval}s"
"#,
        named = named.addr(),
        resolver = resolver.addr(),
        interval = INTERVAL.as_secs(),
        dns_interval = DNS_INTERVAL.as_secs(),
    );
    for i in 0..n {
        config.push_str(&format!(
            "\n[[domains]]\nname = \"{name}\"\nzone = \"example.test\"\nprovider = \"lab\"\nprimary = [\"10 {mx}.\"]\nbackup = [\"10 backup.example.test.\"]\nfailover_ttl = 30\nauthoritative = [\"{named}\"]\n",
            name = domain(i),
            mx = host(i),
            named = named.addr(),
        ));
    }
    let config_path = dir.path().join("mxguard.toml");
    let db = dir.path().join("mxguard.db");
    std::fs::write(&config_path, config).expect("write config");

    let listen = SocketAddr::from(([127, 0, 0, 1], free_port().expect("port")));
    let mut cmd = Command::new(mxguard_bin());
    cmd.args([
        "--config",
        &config_path.display().to_string(),
        "serve",
        "--listen",
        &listen.to_string(),
    ])
    .current_dir(dir.path())
    .env("MXGUARD_STORE_URL", format!("sqlite://{}", db.display()))
    .env("MXGUARD_TEST_TSIG", SECRET)
    .env_remove("MXGUARD_FAILPOINT");
    let start = Instant::now();
    let first_second = unix_second();
    let mut mx = Mxguard::spawn(cmd, listen);
    eprintln!("{n} domains, {hosts} hosts, one resolver at max_qps = {MAX_QPS}");

    // Every domain settles on its primary, both sides Up: no resolver over its budget ever
    // counted as a failure.
    let want = ("primary".to_string(), "up".to_string(), "up".to_string());
    let deadline = Duration::from_secs(300);
    loop {
        let rows = phases(&db).await;
        if rows.get(&want).copied().unwrap_or(0) == n as i64 {
            break;
        }
        if let Ok(Some(status)) = mx.child.try_wait() {
            panic!("mxguard exited ({status}):\n{}", mx.plain_log());
        }
        if start.elapsed() > deadline {
            let log = mx.plain_log();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!(
                "not every domain settled within {deadline:?}: {rows:?}\nmxguard's last lines, newest first:\n{}",
                tail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let settled = start.elapsed();
    let asked_to_settle = resolver.answered();
    eprintln!("all {n} domains settled {settled:?} after start ({asked_to_settle} queries)");

    // After settling, over one dns_interval: answers are reused, not asked every round.
    let (before, window) = (resolver.answered(), Instant::now());
    tokio::time::sleep(DNS_INTERVAL).await;
    let after = resolver.answered();
    let rate = (after - before) as f64 / window.elapsed().as_secs_f64();
    let every_round = (hosts * 2) as f64 / INTERVAL.as_secs_f64();
    let (sent, skipped) = common::poll("the DNS query counters", Duration::from_secs(30), || {
        dns_counters(&mx, resolver.addr())
    })
    .await;

    // The MTA-STS and DANE looks (mta_sts = "warn", the default) ask each domain's two TXT
    // records and each host's TLSA on the same resolver, within a quarter of its budget and
    // only with tokens the rounds leave: wait until half the domains have been looked at, so
    // the per-second counts below cover them too.
    let txt_wanted = n;
    let looked = Instant::now();
    while resolver.asked_type(RecordType::TXT) < txt_wanted {
        assert!(
            looked.elapsed() < Duration::from_secs(600),
            "{} of {txt_wanted} MTA-STS / TLS-RPT TXT queries after 10 minutes: the looks do not get their share",
            resolver.asked_type(RecordType::TXT)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let looks_took = looked.elapsed();
    // A host's TLSA is asked once per look period for all the domains that use it: the
    // backup, shared by every domain, is not asked once per domain.
    let backup_tlsa = resolver.asked("_25._tcp.backup.example.test", RecordType::TLSA);
    let tlsa = resolver.asked_type(RecordType::TLSA);
    eprintln!(
        "MTA-STS looks of {} domains done {:.0} s after the window ({} TXT, {tlsa} TLSA, {backup_tlsa} for the shared backup)",
        txt_wanted / 2,
        looks_took.as_secs_f64(),
        resolver.asked_type(RecordType::TXT)
    );
    assert!(
        (1..=3).contains(&backup_tlsa),
        "the shared backup's TLSA was asked {backup_tlsa} times for {n} domains"
    );
    // each domain looked at asks its own primary host's TLSA (each its own here); the backup's
    // is shared: about one per two TXT, plus the looks in flight (16) and the backup's few
    let looked_at = resolver.asked_type(RecordType::TXT) / 2;
    assert!(
        tlsa <= looked_at + 16 + 3,
        "{tlsa} TLSA queries for {looked_at} domains looked at: the shared backup's is not shared"
    );

    let per_second = resolver.per_second();
    let busiest = resolver.busiest_second().unwrap_or_default();
    let mut histogram: BTreeMap<usize, usize> = BTreeMap::new();
    for n in per_second.values() {
        *histogram.entry(*n).or_default() += 1;
    }
    eprintln!(
        "{hosts} hosts @ max_qps {MAX_QPS}: settled {:.0} s after start; busiest second {} answers; \
         {rate:.1} queries/s over the {} s after settling vs {every_round:.1}/s when asking every round; \
         mxguard counted {sent} sent and {skipped} skipped for the budget; the resolver answered {after} \
         ({} of them resends); seconds by answers: {histogram:?}",
        settled.as_secs_f64(),
        busiest.1,
        DNS_INTERVAL.as_secs(),
        resolver.resent(),
    );

    assert!(
        busiest.1 <= MAX_QPS + ALLOWANCE,
        "{} queries answered in second {} ({} s after start): more than max_qps {MAX_QPS} + {ALLOWANCE}; \
         the seconds around it: {:?}",
        busiest.1,
        busiest.0,
        busiest.0.saturating_sub(first_second),
        per_second
            .range(busiest.0.saturating_sub(3)..=busiest.0 + 3)
            .collect::<Vec<_>>()
    );
    assert!(
        rate < every_round / 4.0,
        "{rate:.1} queries/s after settling: answers are not reused (every round: {every_round:.1}/s)"
    );
    assert!(
        rate <= (MAX_QPS + ALLOWANCE) as f64,
        "{rate:.1} queries/s after settling, over the budget"
    );
    assert!(
        sent >= (after - resolver.resent()) as f64,
        "mxguard counted {sent} queries sent, the resolver answered {after} ({} resends)",
        resolver.resent()
    );
    assert!(
        skipped > 0.0,
        "{hosts} hosts in one interval is more than {MAX_QPS} queries/s: some asks wait a round"
    );
    drop(mtas);
    mx.terminate();
}
