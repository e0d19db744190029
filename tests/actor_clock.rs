//! A domain's actor waits on the injected clock: a failback hold of an hour passes when the
//! test moves a `ManualClock` by an hour, not before, and with no real hour spent. The actor's
//! decisions (and the status it reports) are stamped with the same clock.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::DateTime;
use common::api::{round, MemoryDomain, MxView, BACKUP_MX, PRIMARY_MX};
use mxguard::actor::ActorHandle;
use mxguard::clock::WallClock;
use mxguard::health::Health;
use mxguard::machine::Phase;
use mxguard::model::Side;
use mxguard_core::ManualClock;

async fn feed(handle: &ActorHandle, wall: &WallClock, primary: Health, backup: Health) {
    for (side, health) in [(Side::Primary, primary), (Side::Backup, backup)] {
        let (r, own) = round(side, health, wall.utc());
        assert!(handle.round(r, own).await, "the actor takes rounds");
    }
}

async fn wait_for(handle: &ActorHandle, what: &str, want: impl Fn(Phase) -> bool) {
    common::poll(what, Duration::from_secs(20), || {
        let handle = handle.clone();
        let want = &want;
        async move {
            let s = handle.status().await.ok()?;
            (want(s.state.phase) && s.state.in_flight.is_none()).then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failback_hold_passes_on_the_injected_clock() {
    let m = MemoryDomain::new().await;
    assert_eq!(m.domain.failback.hold, Some(Duration::from_secs(3600)));
    let manual = Arc::new(ManualClock::new());
    let start = DateTime::from_timestamp(1_900_000_000, 0).expect("valid time");
    let wall = WallClock::new(manual.clone(), start);
    let mut deps = m.deps();
    deps.clock = wall.clone();
    let (handle, _stop) = m.run(deps).await;
    let dns = &m.dns;

    // Settled on the primary, then the primary fails: failover, verified.
    feed(&handle, &wall, Health::Up, Health::Up).await;
    wait_for(&handle, "settled on the primary", |p| p == Phase::Primary).await;
    feed(&handle, &wall, Health::Down, Health::Up).await;
    wait_for(&handle, "failed over", |p| p == Phase::OnBackup).await;
    assert_eq!(dns.mx(), vec![format!("{BACKUP_MX} 30")]);

    // The primary is back: the hold starts, on the injected clock.
    manual.advance(Duration::from_secs(60));
    feed(&handle, &wall, Health::Up, Health::Up).await;
    wait_for(&handle, "the failback held", |p| {
        p == Phase::FailbackPending
    })
    .await;
    let s = handle.status().await.expect("status");
    let guard = s.guard.expect("a failback guard");
    assert_eq!(
        (guard.hold_secs, guard.elapsed_secs),
        (3600, 0),
        "{guard:?}"
    );
    assert_eq!(s.state.since, Some(start + chrono::Duration::seconds(60)));

    // 59 minutes on: still held, and the status counts the time the clock says.
    manual.advance(Duration::from_secs(59 * 60));
    let s = handle.status().await.expect("status");
    assert_eq!(s.state.phase, Phase::FailbackPending);
    assert_eq!(s.guard.expect("guard").elapsed_secs, 59 * 60);
    assert_eq!(
        dns.mx(),
        vec![format!("{BACKUP_MX} 30")],
        "failed back early"
    );

    // The last minute: the actor's deadline fires on the injected clock and it fails back.
    manual.advance(Duration::from_secs(60));
    wait_for(&handle, "failed back", |p| p == Phase::Primary).await;
    assert_eq!(dns.mx(), vec![format!("{PRIMARY_MX} 300")]);
    let timeline = m.events().await;
    let back = timeline
        .iter()
        .find(|e| {
            mxguard::events::transition(e) == Some((Phase::FailbackPending, Phase::FailingBack))
        })
        .expect("the failback transition");
    assert_eq!(
        back.at,
        start + chrono::Duration::seconds(3660),
        "stamped by the injected clock"
    );
}

/// An actor late to its rounds (its store slow, say) decides on them as of when they were
/// probed: a round it takes long after its monitor made it does not make the other side's
/// report look stale. A side whose rounds stop coming still goes Unknown.
#[tokio::test(flavor = "multi_thread")]
async fn an_actor_behind_its_rounds_does_not_judge_its_own_reports_stale() {
    let m = MemoryDomain::new().await;
    let manual = Arc::new(ManualClock::new());
    let start = DateTime::from_timestamp(1_900_000_000, 0).expect("valid time");
    let wall = WallClock::new(manual.clone(), start);
    let mut deps = m.deps();
    deps.clock = wall.clone();
    let (handle, _stop) = m.run(deps).await;
    feed(&handle, &wall, Health::Up, Health::Up).await;
    wait_for(&handle, "settled on the primary", |p| p == Phase::Primary).await;
    let backup_health = |s: &mxguard::actor::Status| {
        s.vantages
            .iter()
            .find(|c| c.side == Side::Backup)
            .map(|c| c.health)
    };
    let health_events = || async {
        m.events()
            .await
            .iter()
            .filter(|e| e.kind == mxguard::events::EventKind::Health)
            .count()
    };
    // The primary's round alone may settle the phase: wait for the backup's verdict too, so
    // that the count below holds both sides' first health events.
    common::poll("both sides Up", Duration::from_secs(20), || {
        let handle = handle.clone();
        async move {
            let s = handle.status().await.ok()?;
            let up = |side: Side| {
                s.vantages
                    .iter()
                    .any(|c| c.side == side && c.health == Health::Up)
            };
            (up(Side::Primary) && up(Side::Backup)).then_some(())
        }
    })
    .await;
    let before = health_events().await;
    assert_eq!(before, 2, "one health event per side");

    // Ten minutes late, the actor takes a primary round probed 5 s after the backup's last.
    manual.advance(Duration::from_secs(600));
    let (r, own) = round(
        Side::Primary,
        Health::Up,
        start + chrono::Duration::seconds(5),
    );
    assert!(handle.round(r, own).await);
    common::poll("the late round taken", Duration::from_secs(20), || {
        let handle = handle.clone();
        async move {
            let s = handle.status().await.ok()?;
            let at = s.rounds.iter().find(|r| r.side == Side::Primary)?.at;
            (at == start + chrono::Duration::seconds(5)).then_some(())
        }
    })
    .await;
    let s = handle.status().await.expect("status");
    assert_eq!(backup_health(&s), Some(Health::Up), "{:?}", s.vantages);
    assert_eq!(s.state.phase, Phase::Primary);
    assert_eq!(health_events().await, before, "no health flip from the lag");

    // A primary round probed now: the backup's last round is ten minutes older, its probes
    // stopped coming, and it is Unknown.
    let (r, own) = round(Side::Primary, Health::Up, wall.utc());
    assert!(handle.round(r, own).await);
    common::poll("the backup judged stale", Duration::from_secs(20), || {
        let handle = handle.clone();
        async move {
            let s = handle.status().await.ok()?;
            (backup_health(&s) == Some(Health::Unknown)).then_some(())
        }
    })
    .await;
}
