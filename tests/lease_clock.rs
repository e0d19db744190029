//! Lease expiry is on the store's clock: two `mxguard serve` processes on one PostgreSQL whose
//! wall clocks disagree by a minute still agree on who leads. libfaketime shifts one process's
//! wall clock (`CLOCK_REALTIME`; its monotonic clock, which paces renewals, is left alone), as
//! an instance whose NTP is broken would be. Each case watches the lease while the leader
//! renews it three times: the epoch never moves, and every expiry the store holds is ahead of
//! the store's own clock.

mod common;

use std::process::Command;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::ha::{self, Node};
use common::lab::{mxguard_bin, Mxguard};
use common::{poll, PgDb};
use mxguard::store::{Lease, Store};
use sqlx::Connection;

const LONG: Duration = Duration::from_secs(60);
/// The instances' lease TTL (renewed every second).
const TTL_SECS: u64 = 3;
/// How far the skewed instance's wall clock is off: far beyond the TTL.
const SKEW_SECS: i64 = 60;

/// Where Debian's `libfaketime` puts the preload library (scripts/peers.sh installs it).
fn libfaketime() -> &'static str {
    const PATHS: [&str; 2] = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    ];
    PATHS
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or_else(|| {
            panic!(
                "libfaketime is not installed (scripts/peers.sh installs it): looked in {PATHS:?}"
            )
        })
}

/// Starts `mxguard serve` with no domains as `vantage` on `db`, its wall clock shifted by
/// `skew_secs` when given.
fn serve(
    dir: &tempfile::TempDir,
    db: &PgDb,
    vantage: &'static str,
    skew_secs: Option<i64>,
) -> Node {
    let port = mxguard_testpeers::free_port().expect("port");
    let api = format!("http://127.0.0.1:{port}");
    let config = dir.path().join(format!("mxguard-{vantage}.toml"));
    std::fs::write(
        &config,
        format!(
            "[server]\nopen_readyz = true\n\n[cluster]\nvantage = \"{vantage}\"\nlease_ttl = \"{TTL_SECS}s\"\nadvertise_url = \"{api}\"\n"
        ),
    )
    .expect("write config");
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut cmd = Command::new(mxguard_bin());
    cmd.args([
        "--config",
        &config.display().to_string(),
        "serve",
        "--listen",
        &listen.to_string(),
    ])
    .current_dir(dir.path())
    .env("MXGUARD_STORE_URL", db.url.expose())
    .env_remove("MXGUARD_FAILPOINT");
    if let Some(skew) = skew_secs {
        cmd.env("LD_PRELOAD", libfaketime())
            .env("FAKETIME", format!("{skew:+}s"))
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    }
    Node {
        vantage,
        api,
        mx: Mxguard::spawn(cmd, listen),
    }
}

/// The wall clock `node` runs on, minus ours, from the timestamp its log lines start with:
/// proves the preload took effect.
async fn skew_of(node: &Node) -> i64 {
    let logged: DateTime<Utc> = poll(&format!("{} to log", node.vantage), LONG, || async {
        let first = node.mx.lines.lock().ok()?.first().cloned()?;
        let stamp = first.split_whitespace().next()?.to_string();
        DateTime::parse_from_rfc3339(&stamp)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    })
    .await;
    // The line was written before now: its skew is at most this much below the real one.
    (logged - Utc::now()).num_seconds()
}

/// Reads the store's clock, in ms since the epoch.
async fn store_now_ms(db: &PgDb) -> i64 {
    let mut conn = sqlx::PgConnection::connect(db.url.expose())
        .await
        .expect("connect");
    let (now,): (i64,) =
        sqlx::query_as("SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT")
            .fetch_one(&mut conn)
            .await
            .expect("clock_timestamp");
    conn.close().await.ok();
    now
}

/// Watches the lease until its holder has renewed it three times, asserting at every read that
/// `vantage` still holds it at `epoch` and that its expiry is live on the store's clock and no
/// further ahead than one TTL. Returns the last lease seen.
async fn renewed_three_times(db: &PgDb, store: &dyn Store, vantage: &str, epoch: i64) -> Lease {
    let ttl_ms = i64::try_from(TTL_SECS * 1000).expect("ttl");
    let started = std::time::Instant::now();
    let mut seen: Vec<DateTime<Utc>> = Vec::new();
    loop {
        let before = store_now_ms(db).await;
        let lease = store.lease().await.expect("lease");
        assert_eq!(
            (lease.vantage.as_str(), lease.epoch),
            (vantage, epoch),
            "the lease changed hands while its holder renewed it: {lease:?}"
        );
        let left = lease.expires_at.timestamp_millis() - before;
        assert!(
            left > 0,
            "the stored expiry {} is already past on the store's clock ({} ms ago)",
            lease.expires_at,
            -left
        );
        assert!(
            left <= ttl_ms + 1000,
            "the stored expiry {} is {left} ms ahead of the store's clock, more than the TTL",
            lease.expires_at
        );
        if seen.last() != Some(&lease.expires_at) {
            seen.push(lease.expires_at);
        }
        // The first expiry seen may be the one the lease was taken with.
        if seen.len() > 3 {
            return lease;
        }
        assert!(
            started.elapsed() < LONG,
            "the leader renewed its lease {} times in {LONG:?}",
            seen.len().saturating_sub(1)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Both instances up, the first one leading: (leader, follower, the leader's epoch).
async fn cluster(
    dir: &tempfile::TempDir,
    db: &PgDb,
    skew_a: Option<i64>,
    skew_b: Option<i64>,
) -> (Node, Node, i64) {
    let a = serve(dir, db, "a", skew_a);
    let epoch = ha::wait_role(&a, "leader", LONG)
        .await
        .expect("leader epoch");
    let b = serve(dir, db, "b", skew_b);
    // Either role: a follower that took the lease is what the watch below reports.
    poll("b to answer /readyz", LONG, || ha::role(&b)).await;
    for (node, skew) in [(&a, skew_a), (&b, skew_b)] {
        if let Some(want) = skew {
            let got = skew_of(node).await;
            assert!(
                (got - want).abs() <= 5,
                "{}'s wall clock is {got} s off ours, not {want} s: libfaketime did not take",
                node.vantage
            );
        }
    }
    (a, b, epoch)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_follower_whose_clock_runs_ahead_does_not_take_a_live_lease() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = common::fresh_pg_database("clock_ahead").await;
    let store = ha::open_store(&db.url).await;
    let (a, b, epoch) = cluster(&dir, &db, None, Some(SKEW_SECS)).await;

    let held = renewed_three_times(&db, &*store, "a", epoch).await;
    assert_eq!(ha::role(&b).await.map(|r| r.0).as_deref(), Some("follower"));
    assert_eq!(ha::role(&a).await.map(|r| r.0).as_deref(), Some("leader"));

    // Once the leader is gone for good, its lease runs out on the store's clock and the
    // skewed follower takes it then, not earlier.
    ha::signal(a.mx.child.id(), "-KILL");
    let next = ha::wait_role(&b, "leader", LONG).await.expect("new epoch");
    assert!(next > epoch, "a new epoch after the takeover");
    let lease = store.lease().await.expect("lease");
    assert_eq!(lease.vantage, "b");
    assert!(
        lease.acquired_at >= held.expires_at,
        "taken at {} before the old lease ran out at {}",
        lease.acquired_at,
        held.expires_at
    );
    drop((a, b));
    store.close().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_whose_clock_runs_behind_writes_no_stale_expiry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = common::fresh_pg_database("clock_behind").await;
    let store = ha::open_store(&db.url).await;
    let (a, b, epoch) = cluster(&dir, &db, Some(-SKEW_SECS), None).await;

    renewed_three_times(&db, &*store, "a", epoch).await;
    assert_eq!(ha::role(&a).await.map(|r| r.0).as_deref(), Some("leader"));
    assert_eq!(ha::role(&b).await.map(|r| r.0).as_deref(), Some("follower"));
    drop((a, b));
    store.close().await;
    db.drop_db().await;
}
