//! End to end, early TTL lowering: the real `mxguard serve` against BIND (RFC 2136 + TSIG), two
//! Unbound resolvers and two Postfix MX hosts. The primary's MX TTL is 60 s, the failover TTL
//! 5 s. A primary answering `421` (soft: senders queue) gets its TTL lowered at once — same
//! records, one write — and restored when it answers normally again for the hold. Lowered again
//! at a second soft spell that lasts longer than the old TTL, then hard down: after the failover
//! every resolver (asked throughout, as senders do) serves the backup within the failover TTL,
//! not the old 60 s. The failback publishes the primary at its original 60 s.
//!
//! The second test is the same outage with `early_ttl = false`, for the comparison: resolvers
//! then keep the dead primary for up to the old TTL. Both print their figures
//! (`cargo test --test early_ttl -- --nocapture`; recorded in docs/BENCHMARKS.md).
//!
//! The third is a planned maintenance window, scheduled with `mxguard maintenance` through the
//! API (`early_ttl` off: the window lowers anyway): the TTL is lowered one old TTL before the
//! start, so every resolver holds the short TTL when the move comes at the start and follows it
//! within the failover TTL; after the end the guarded failback restores the records at their
//! old TTL.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::lab::{Lab, LabOptions, Layout, Mxguard, OPERATE_TOKEN};
use mxguard::model::{Fqdn, RecordType};

const OLD_TTL: u32 = 60;
const FAILOVER_TTL: u32 = 5;
const PRIMARY: &str = "10 mx1.example.test.";
const BACKUP: &str = "10 backup.example.test.";

/// One answer of one resolver: when, which resolver, the first MX, its TTL.
#[derive(Clone, Debug)]
struct Seen {
    at: Instant,
    resolver: usize,
    mx: String,
    ttl: u32,
}

/// Asks every resolver for the domain's MX every 250 ms in a task of its own, keeping every
/// answer: the resolvers' caches turn over as a sender's would see them.
struct Askers {
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Askers {
    fn start(lab: &Lab) -> Askers {
        let addrs: Vec<_> = lab.resolvers.iter().map(|r| r.addr()).collect();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let task = tokio::spawn(async move {
            let domain = Fqdn::parse("example.test").expect("name");
            loop {
                for (i, addr) in addrs.iter().enumerate() {
                    let client =
                        mxguard::probe::dns::DnsClient::resolver(*addr, Duration::from_secs(2));
                    let a = client.query(&domain, RecordType::Mx).await;
                    if let Some(r) = a.records.first() {
                        sink.lock().expect("seen").push(Seen {
                            at: Instant::now(),
                            resolver: i,
                            mx: r.to_string(),
                            ttl: a.ttl.unwrap_or(0),
                        });
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
        Askers { seen, task }
    }

    /// Each resolver's latest answer.
    fn latest(&self, resolvers: usize) -> Vec<Option<Seen>> {
        let seen = self.seen.lock().expect("seen");
        (0..resolvers)
            .map(|i| seen.iter().rev().find(|s| s.resolver == i).cloned())
            .collect()
    }

    /// Each resolver's first answer naming the backup after `since`.
    fn first_backup_after(&self, resolvers: usize, since: Instant) -> Vec<Option<Seen>> {
        let seen = self.seen.lock().expect("seen");
        (0..resolvers)
            .map(|i| {
                seen.iter()
                    .find(|s| s.resolver == i && s.at >= since && s.mx.starts_with(BACKUP))
                    .cloned()
            })
            .collect()
    }
}

impl Drop for Askers {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Until `named` serves exactly `want` ("RDATA TTL"); panics with the log after `deadline`.
async fn until_served(lab: &Lab, mx: &Mxguard, want: &str, deadline: Duration) -> Instant {
    let start = Instant::now();
    loop {
        let got = lab.served_mx().await;
        if got == vec![want.to_string()] {
            return Instant::now();
        }
        assert!(
            start.elapsed() < deadline,
            "named serves {got:?}, waited {deadline:?} for {want}; mxguard's log:\n{}",
            mx.plain_log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The latest event of `kind` in the timeline, once there is one.
async fn event(lab: &Lab, kind: &str, after: usize) -> mxguard::store::Event {
    common::poll(kind, Duration::from_secs(30), || async {
        let ev = lab.events().await;
        let of_kind: Vec<_> = ev.into_iter().filter(|e| e.kind == kind).collect();
        (of_kind.len() > after)
            .then(|| of_kind.last().cloned())
            .flatten()
    })
    .await
}

/// The primary answers `421` to the postmaster RCPT, as a host that asks senders to come back
/// later (reloaded: its port never closes).
async fn defer(lab: &mut Lab) {
    let serving = lab.primary.config().clone();
    lab.primary
        .reconfigure(
            serving
                .with_setting("smtpd_recipient_restrictions = defer")
                .with_setting("defer_code = 421"),
        )
        .await
        .expect("reload the primary deferring");
}

/// The soft spell goes on until it has lasted longer than the old TTL and `ready` holds; the
/// primary stays published all along (421 is not an outage within the soft window).
async fn soft_spell<F>(lab: &Lab, mx: &Mxguard, since: Instant, ready: F)
where
    F: Fn() -> bool,
{
    let long_enough = Duration::from_secs(u64::from(OLD_TTL) + 2);
    loop {
        let served = lab.served_mx().await;
        assert!(
            served.len() == 1 && served[0].starts_with(PRIMARY),
            "moved during the soft spell: named serves {served:?}\n{}",
            mx.plain_log()
        );
        if since.elapsed() >= long_enough && ready() {
            return;
        }
        assert!(
            since.elapsed() < long_enough + Duration::from_secs(90),
            "the resolvers never turned over to the lowered TTL; mxguard's log:\n{}",
            mx.plain_log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The failover and what the resolvers do after it: the time from the moment `named` serves
/// the backup (the accepted change) until each resolver does, and the TTL each had left on the
/// primary then.
struct Figures {
    delays: Vec<f64>,
    left: Vec<u32>,
}

impl Figures {
    fn max(&self) -> f64 {
        self.delays.iter().copied().fold(0.0, f64::max)
    }

    fn print(&self, label: &str) {
        let delays: Vec<String> = self.delays.iter().map(|d| format!("{d:.1} s")).collect();
        let left: Vec<String> = self.left.iter().map(|t| format!("{t} s")).collect();
        println!(
            "FIGURES {label}: accepted failover → every resolver serving the backup: {:.1} s (per resolver: {}); primary TTL left in their caches at the failover: {}",
            self.max(),
            delays.join(", "),
            left.join(", ")
        );
    }
}

/// Stops the primary MTA (hard down) and measures until every resolver serves the backup.
async fn hard_down(lab: &mut Lab, mx: &Mxguard, askers: &Askers) -> Figures {
    let n = lab.resolvers.len();
    lab.primary.stop().await.expect("stop the primary MTA");
    let accepted = until_served(
        lab,
        mx,
        &format!("{BACKUP} {}", lab.failover_ttl),
        Duration::from_secs(60),
    )
    .await;
    let left: Vec<u32> = askers
        .latest(n)
        .into_iter()
        .map(|s| s.filter(|s| s.mx.starts_with(PRIMARY)).map_or(0, |s| s.ttl))
        .collect();
    let seen = common::poll(
        "every resolver serving the backup",
        Duration::from_secs(u64::from(OLD_TTL) + 60),
        || async {
            let first = askers.first_backup_after(n, accepted);
            first.iter().all(Option::is_some).then_some(first)
        },
    )
    .await;
    Figures {
        delays: seen
            .into_iter()
            .map(|s| {
                let s = s.expect("seen");
                s.at.saturating_duration_since(accepted).as_secs_f64()
            })
            .collect(),
        left,
    }
}

/// The lab with the primary's MX at the old TTL, mxguard serving and settled, and the
/// resolvers asked throughout.
async fn started(early_ttl: bool) -> (Lab, Mxguard, Askers) {
    let lab = Lab::start_with(
        LabOptions {
            hold: "5s",
            mx_ttl: OLD_TTL,
        },
        Layout {
            early_ttl,
            failover_ttl: Some(FAILOVER_TTL),
            ..Layout::default()
        },
    )
    .await;
    let mx = lab.serve(None);
    lab.settle(&mx, Duration::from_secs(60)).await;
    let askers = Askers::start(&lab);
    (lab, mx, askers)
}

#[tokio::test(flavor = "multi_thread")]
async fn soft_answers_lower_the_ttl_early_so_resolvers_follow_a_failover_within_the_failover_ttl() {
    let (mut lab, mx, askers) = started(true).await;
    let serving = lab.primary.config().clone();
    let primary_at = |ttl: u32| format!("{PRIMARY} {ttl}");
    let serial = lab.serial().await;

    // --- a first soft spell: lowered at once, one write, the records unchanged ---
    defer(&mut lab).await;
    until_served(
        &lab,
        &mx,
        &primary_at(FAILOVER_TTL),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(lab.serial().await, serial + 1, "one UPDATE lowers the TTL");
    let lowered = event(&lab, "ttl_lowered", 0).await;
    assert_eq!(lowered.evidence["old_ttl"], OLD_TTL, "{lowered:?}");
    assert_eq!(lowered.evidence["new_ttl"], FAILOVER_TTL, "{lowered:?}");
    let why = lowered.evidence["why"].as_str().unwrap_or_default();
    assert!(why.contains("4xx") && why.contains("421"), "{why}");

    // --- it answers normally again: after recover_after quiet rounds and the hold (5 s), the
    //     original TTL comes back, also in one write ---
    lab.primary
        .reconfigure(serving.clone())
        .await
        .expect("reload the primary serving");
    until_served(&lab, &mx, &primary_at(OLD_TTL), Duration::from_secs(60)).await;
    assert_eq!(lab.serial().await, serial + 2, "one UPDATE restores it");
    let restored = event(&lab, "ttl_restored", 0).await;
    assert_eq!(restored.evidence["old_ttl"], FAILOVER_TTL, "{restored:?}");
    assert_eq!(restored.evidence["new_ttl"], OLD_TTL, "{restored:?}");

    // --- a second soft spell, longer than the old TTL: lowered again, and every resolver's
    //     cache turns over to the lowered TTL meanwhile ---
    defer(&mut lab).await;
    let soft_since = Instant::now();
    until_served(
        &lab,
        &mx,
        &primary_at(FAILOVER_TTL),
        Duration::from_secs(60),
    )
    .await;
    let n = lab.resolvers.len();
    soft_spell(&lab, &mx, soft_since, || {
        askers
            .latest(n)
            .iter()
            .all(|s| s.as_ref().is_some_and(|s| s.ttl <= FAILOVER_TTL))
    })
    .await;
    assert_eq!(lab.serial().await, serial + 3, "the second lowering");

    // --- hard down: the failover, and every resolver follows within the failover TTL ---
    let figures = hard_down(&mut lab, &mx, &askers).await;
    figures.print("early_ttl = true");
    assert!(
        figures.max() <= f64::from(FAILOVER_TTL) + 2.0,
        "a resolver served the dead primary for {:.1} s after the failover (failover TTL {FAILOVER_TTL} s)",
        figures.max()
    );
    assert!(figures.left.iter().all(|t| *t <= FAILOVER_TTL));

    // --- back: the failback publishes the primary at its original TTL, not the lowered one ---
    lab.primary
        .reconfigure(serving)
        .await
        .expect("start the primary again");
    until_served(&lab, &mx, &primary_at(OLD_TTL), Duration::from_secs(60)).await;
    let rows = lab.wait_verified(&mx, 5, Duration::from_secs(30)).await;
    assert_eq!(
        rows.len(),
        5,
        "lower, restore, lower, failover, failback: {rows:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_early_ttl_resolvers_keep_the_dead_primary_up_to_the_old_ttl() {
    let (mut lab, mx, askers) = started(false).await;
    let serial = lab.serial().await;

    // the same soft spell, longer than the old TTL: nothing is written
    defer(&mut lab).await;
    soft_spell(&lab, &mx, Instant::now(), || true).await;
    assert_eq!(
        lab.serial().await,
        serial,
        "early_ttl = false writes nothing"
    );
    assert!(lab.events().await.iter().all(|e| e.kind != "ttl_lowered"));

    let figures = hard_down(&mut lab, &mx, &askers).await;
    figures.print("early_ttl = false");
    assert!(
        figures.max() <= f64::from(OLD_TTL) + 2.0,
        "{:.1} s is longer than the old TTL allows",
        figures.max()
    );
    assert!(figures.left.iter().all(|t| *t <= OLD_TTL));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_maintenance_window_lowers_the_ttl_one_ttl_ahead_moves_at_its_start_and_restores_after() {
    let lab = Lab::start_with(
        LabOptions {
            hold: "5s",
            mx_ttl: OLD_TTL,
        },
        Layout {
            early_ttl: false,
            failover_ttl: Some(FAILOVER_TTL),
            operate_token: true,
            ..Layout::default()
        },
    )
    .await;
    let mx = lab.serve(None);
    lab.settle(&mx, Duration::from_secs(60)).await;
    let askers = Askers::start(&lab);
    let n = lab.resolvers.len();
    let serial = lab.serial().await;
    let token = lab.dir.path().join("operate.token");
    std::fs::write(&token, format!("{OPERATE_TOKEN}\n")).expect("write the token file");
    let api = format!("http://{}", mx.listen);
    let at =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let schedule = |start: chrono::DateTime<chrono::Utc>, end: chrono::DateTime<chrono::Utc>| {
        let (start, end) = (at(start), at(end));
        lab.cli(&[
            "maintenance",
            "example.test",
            "--side",
            "backup",
            "--start",
            &start,
            "--end",
            &end,
            "--reason",
            "primary MTA upgrade",
            "--api",
            &api,
            "--token-file",
            &token.display().to_string(),
        ])
    };

    // A window that ends before it starts is refused, and changes nothing.
    let now = chrono::Utc::now();
    let o = schedule(
        now + chrono::Duration::seconds(90),
        now + chrono::Duration::seconds(60),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("is not after start"),
        "{err}"
    );

    // The window: the move 90 s from now, 15 s long. The TTL (60 s) is lowered one TTL (and
    // the 10 s margin) before the start: about 20 s from now.
    let (wall, clock) = (chrono::Utc::now(), Instant::now());
    let start = wall + chrono::Duration::seconds(90);
    let end = start + chrono::Duration::seconds(15);
    let o = schedule(start, end);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("maintenance window scheduled"), "{out}");
    let start_at = clock + Duration::from_secs(90);
    let lower_at = start_at - Duration::from_secs(u64::from(OLD_TTL) + 10);

    // Lowered at its time, not before, in one write of the same records.
    let lowered = until_served(
        &lab,
        &mx,
        &format!("{PRIMARY} {FAILOVER_TTL}"),
        Duration::from_secs(60),
    )
    .await;
    assert!(
        lowered + Duration::from_secs(1) >= lower_at,
        "lowered {:.1} s early",
        lower_at.saturating_duration_since(lowered).as_secs_f64()
    );
    assert!(
        lowered <= lower_at + Duration::from_secs(10),
        "lowered {:.1} s late; mxguard's log:\n{}",
        lowered.saturating_duration_since(lower_at).as_secs_f64(),
        mx.plain_log()
    );
    assert_eq!(lab.serial().await, serial + 1, "one UPDATE lowers the TTL");

    // The move at the start, not before; by then every resolver holds the short TTL.
    let moved = until_served(
        &lab,
        &mx,
        &format!("{BACKUP} {FAILOVER_TTL}"),
        Duration::from_secs(120),
    )
    .await;
    assert!(
        moved + Duration::from_secs(1) >= start_at,
        "moved {:.1} s before the start",
        start_at.saturating_duration_since(moved).as_secs_f64()
    );
    let held: Vec<u32> = askers
        .latest(n)
        .into_iter()
        .map(|s| s.map_or(u32::MAX, |s| s.ttl))
        .collect();
    assert!(
        held.iter().all(|t| *t <= FAILOVER_TTL),
        "resolvers' TTLs at the move: {held:?}"
    );
    let seen = common::poll(
        "every resolver serving the backup",
        Duration::from_secs(u64::from(OLD_TTL) + 60),
        || async {
            let first = askers.first_backup_after(n, moved);
            first.iter().all(Option::is_some).then_some(first)
        },
    )
    .await;
    let delays: Vec<f64> = seen
        .into_iter()
        .map(|s| {
            s.expect("seen")
                .at
                .saturating_duration_since(moved)
                .as_secs_f64()
        })
        .collect();
    println!(
        "FIGURES maintenance: lowered {:.1} s before the start; move → every resolver serving the backup: {delays:.1?} s",
        start_at.saturating_duration_since(lowered).as_secs_f64()
    );
    assert!(
        delays.iter().all(|d| *d <= f64::from(FAILOVER_TTL) + 2.0),
        "{delays:?}"
    );

    // After the end: the guarded failback publishes the primary at its old TTL, and the
    // timeline says the window is over with the records back.
    let back = until_served(
        &lab,
        &mx,
        &format!("{PRIMARY} {OLD_TTL}"),
        Duration::from_secs(90),
    )
    .await;
    // (The CLI sends whole seconds: the window may begin up to 1 s before `start_at`.)
    assert!(
        back + Duration::from_secs(1) >= start_at + Duration::from_secs(15),
        "failed back before the end"
    );
    let done = common::poll("the window closed", Duration::from_secs(60), || async {
        let ev = lab.events().await;
        ev.iter()
            .any(|e| e.kind == "maintenance" && e.message.contains("back at TTL 60"))
            .then_some(ev)
    })
    .await;
    let messages: Vec<&str> = done
        .iter()
        .filter(|e| e.kind == "maintenance")
        .map(|e| e.message.as_str())
        .collect();
    assert_eq!(
        messages.len(),
        4,
        "scheduled, started, over, back: {messages:?}"
    );
    assert!(done.iter().all(|e| e.kind != "alert.maintenance"));
    let rows = lab.wait_verified(&mx, 3, Duration::from_secs(30)).await;
    assert_eq!(rows.len(), 3, "lower, move, failback: {rows:?}");
}
