//! One story, told to every store backend: the same code runs against SQLite and PostgreSQL.
//! It covers every table, concurrent writers, and a restart (close + reopen) in the middle.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use mxguard::config::StoreUrl;
use mxguard::model::{Fqdn, RecordSet, RecordType, Ttl};
use mxguard::store::{
    self, ChangeStatus, ClaimOutcome, IdempotencyClaim, IdempotentAnswer, LeaseClaim, LeaseClock,
    NewChange, NewEvent, NewSnapshot, Observation, Retention, Store, StoreError, Takeover,
    VantageRow,
};
use mxguard_core::{Change, ChangeSet};
use serde_json::json;

fn t(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_800_000_000 + secs, 0)
        .single()
        .expect("valid time")
}

fn domain() -> Fqdn {
    Fqdn::parse("Example.TEST").expect("name")
}

fn mx(ttl: u32, records: &[&str]) -> RecordSet {
    RecordSet::parse(
        domain(),
        RecordType::Mx,
        Ttl::new(ttl).expect("ttl"),
        records,
    )
    .expect("mx set")
}

async fn open(url: &StoreUrl) -> Arc<dyn Store> {
    let s = store::open(url).await.expect("open store");
    s.migrate().await.expect("migrate");
    s
}

async fn story(url: StoreUrl) {
    let s = open(&url).await;
    s.migrate().await.expect("migrations are idempotent");
    s.ping().await.expect("ping");

    // Writes are fenced: they carry the epoch of the lease this story takes first.
    let e = s
        .acquire_lease(&claim("story", Takeover::IfExpired), LeaseClock::STORE)
        .await
        .unwrap()
        .epoch;
    assert_eq!(e, 1, "the first lease is epoch 1");

    // --- runtime state: compare-and-swap, and concurrent writers that retry on conflict ---
    let d = domain();
    assert!(s.load_state(&d).await.unwrap().is_none());
    let v1 = s
        .save_state(&d, &json!({"n": 0}), None, e, t(0))
        .await
        .unwrap();
    assert_eq!(v1, 1);
    assert!(matches!(
        s.save_state(&d, &json!({"n": 99}), None, e, t(0)).await,
        Err(StoreError::Conflict(_))
    ));
    let mut writers = Vec::new();
    for _ in 0..4 {
        let s = s.clone();
        let d = d.clone();
        writers.push(tokio::spawn(async move {
            for _ in 0..5 {
                loop {
                    let row = s.load_state(&d).await.unwrap().unwrap();
                    let n = row.state["n"].as_i64().unwrap();
                    match s
                        .save_state(&d, &json!({"n": n + 1}), Some(row.version), e, t(1))
                        .await
                    {
                        Ok(_) => break,
                        Err(StoreError::Conflict(_)) => continue,
                        Err(e) => panic!("unexpected store error: {e}"),
                    }
                }
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let row = s.load_state(&d).await.unwrap().unwrap();
    assert_eq!(
        row.state["n"], 20,
        "no increment lost under concurrent writers"
    );
    assert_eq!(row.version, 21);
    assert_eq!(row.domain.as_str(), "example.test.");

    // --- events appended concurrently keep distinct, increasing ids ---
    let mut appenders = Vec::new();
    for w in 0..4 {
        let s = s.clone();
        appenders.push(tokio::spawn(async move {
            for i in 0..25 {
                s.append_event(&NewEvent {
                    domain: domain(),
                    at: t(10 + i),
                    kind: mxguard::events::EventKind::Health,
                    actor: "automation".into(),
                    reason: None,
                    message: format!("writer {w} event {i}"),
                    evidence: json!({"writer": w, "i": i}).into(),
                })
                .await
                .unwrap();
            }
        }));
    }
    for a in appenders {
        a.await.unwrap();
    }
    let first = s.events(&d, None, 60).await.unwrap();
    let rest = s.events(&d, first.last().map(|e| e.id), 60).await.unwrap();
    assert_eq!(first.len(), 60);
    assert_eq!(rest.len(), 40);
    let ids: Vec<i64> = first.iter().chain(&rest).map(|e| e.id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
    let op = s
        .append_event(&NewEvent {
            domain: d.clone(),
            at: t(100),
            kind: mxguard::events::EventKind::Operator,
            actor: "chatops".into(),
            reason: Some("provider incident #123".into()),
            message: "pinned to backup".into(),
            evidence: json!({"pin": "backup"}).into(),
        })
        .await
        .unwrap();
    assert_eq!(op.reason.as_deref(), Some("provider incident #123"));
    assert_eq!(op.at, t(100));

    // --- observations: bulk insert across chunks, newest first, pruned by age ---
    let obs: Vec<Observation> = (0..1200)
        .map(|i| Observation {
            domain: d.clone(),
            vantage: "local".into(),
            side: if i % 2 == 0 { "primary" } else { "backup" }.into(),
            target: "mx1.example.test.".into(),
            resolver: "127.0.0.1:53".into(),
            address: Some("192.0.2.1".into()),
            outcome: "pass".into(),
            phase: None,
            latency_ms: Some(i),
            detail: "250 OK".into(),
            observed_at: t(i),
        })
        .collect();
    s.record_observations(&obs).await.unwrap();
    let recent = s.recent_observations(&d, 3).await.unwrap();
    assert_eq!(
        recent.iter().map(|o| o.latency_ms).collect::<Vec<_>>(),
        vec![Some(1199), Some(1198), Some(1197)]
    );
    assert_eq!(s.prune_observations(t(1000)).await.unwrap(), 1000);
    assert_eq!(s.recent_observations(&d, 5000).await.unwrap().len(), 200);

    // --- a write-ahead change: snapshot + pending intent in one transaction ---
    let before = vec![mx(3600, &["10 mx1.example.test.", "20 mx2.example.test."])];
    let after = ChangeSet {
        changes: vec![Change::Upsert {
            set: mx(60, &["10 backup.example.net."]),
            expected: Some(before[0].clone()),
        }],
    };
    let (snap, change) = s
        .begin_change(
            &NewSnapshot {
                domain: d.clone(),
                provider: "ns1".into(),
                zone: d.clone(),
                label: None,
                reason: "failover".into(),
                taken_at: t(2000),
                taken_by: "automation".into(),
                records: before.clone(),
            },
            &NewChange {
                domain: d.clone(),
                provider: "ns1".into(),
                zone: d.clone(),
                epoch: e,
                before: before.clone(),
                after: after.clone(),
                at: t(2000),
            },
        )
        .await
        .unwrap();
    assert_eq!(change.status, ChangeStatus::Pending);
    assert_eq!(change.snapshot_id, Some(snap.id));
    assert_eq!(change.epoch, e);

    // --- restart in the middle: everything written so far is still there ---
    s.close().await;
    assert!(s.ping().await.is_err(), "a closed store is unavailable");
    let s = open(&url).await;
    let unfinished = s.unfinished_changes().await.unwrap();
    assert_eq!(unfinished.len(), 1);
    assert_eq!(unfinished[0].id, change.id);
    assert_eq!(
        unfinished[0].after, after,
        "the change set survives the restart"
    );
    let snap_back = s.snapshot(snap.id).await.unwrap().expect("snapshot kept");
    assert_eq!(snap_back.records, before);
    assert_eq!(snap_back.records[0].ttl().secs(), 3600, "TTL kept exactly");
    assert_eq!(s.load_state(&d).await.unwrap().unwrap().version, 21);
    assert_eq!(s.events(&d, None, 1000).await.unwrap().len(), 101);

    // --- the intent moves forward only ---
    let applied = s
        .set_change_status(change.id, ChangeStatus::Applied, None, e, t(2001))
        .await
        .unwrap();
    assert_eq!(applied.status, ChangeStatus::Applied);
    assert!(matches!(
        s.set_change_status(change.id, ChangeStatus::Applied, None, e, t(2002))
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.set_change_status(change.id, ChangeStatus::Pending, None, e, t(2002))
            .await,
        Err(StoreError::Conflict(_))
    ));
    let verified = s
        .set_change_status(change.id, ChangeStatus::Verified, None, e, t(2003))
        .await
        .unwrap();
    assert_eq!(verified.updated_at, t(2003));
    assert!(matches!(
        s.set_change_status(change.id, ChangeStatus::Failed, Some("x"), e, t(2004))
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.set_change_status(999_999, ChangeStatus::Applied, None, e, t(2004))
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert!(s.unfinished_changes().await.unwrap().is_empty());

    // --- concurrent snapshots, listed newest first ---
    let mut takers = Vec::new();
    for i in 0..6 {
        let s = s.clone();
        let rec = before.clone();
        takers.push(tokio::spawn(async move {
            s.save_snapshot(&NewSnapshot {
                domain: domain(),
                provider: "ns1".into(),
                zone: domain(),
                label: Some(format!("manual-{i}")),
                reason: "before maintenance".into(),
                taken_at: t(3000 + i),
                taken_by: "chatops".into(),
                records: rec,
            })
            .await
            .unwrap()
        }));
    }
    for tk in takers {
        tk.await.unwrap();
    }
    let listed = s.snapshots(Some(&d), 100).await.unwrap();
    assert_eq!(listed.len(), 7);
    assert!(listed.windows(2).all(|w| w[0].id > w[1].id));
    let other = Fqdn::parse("other.test").unwrap();
    assert!(s.snapshots(Some(&other), 100).await.unwrap().is_empty());
    assert_eq!(s.snapshots(None, 3).await.unwrap().len(), 3);

    // --- idempotency keys: claimed before the work; of concurrent claims, exactly one wins ---
    let claim = |hash: &str, at: i64| IdempotencyClaim {
        scope: "chatops".into(),
        key: "k-1".into(),
        request_hash: hash.into(),
        at: t(at),
        stale_before: t(at - 300),
    };
    let mut racers = Vec::new();
    for i in 0..6 {
        let s = s.clone();
        let c = claim("h", 4000 + i);
        racers.push(tokio::spawn(async move {
            (s.idempotency_claim(&c).await.unwrap(), c)
        }));
    }
    let mut winners = Vec::new();
    for r in racers {
        match r.await.unwrap() {
            (ClaimOutcome::Claimed, c) => winners.push(c),
            (ClaimOutcome::Held(rec), _) => {
                assert_eq!(rec.answer, None, "in flight: no answer yet");
                assert_eq!(rec.request_hash, "h");
            }
        }
    }
    assert_eq!(winners.len(), 1, "one claim wins");
    let won = winners.remove(0);
    let in_flight = s.idempotency_get("chatops", "k-1").await.unwrap().unwrap();
    assert_eq!((in_flight.answer, in_flight.created_at), (None, won.at));
    // a claim in flight for less than the expiry is not taken over, whoever asks
    assert!(matches!(
        s.idempotency_claim(&claim("h", 4200)).await.unwrap(),
        ClaimOutcome::Held(_)
    ));
    let answer = IdempotentAnswer {
        status: 201,
        body: json!({"message": "done"}),
    };
    assert!(s.idempotency_answer(&won, &answer).await.unwrap());
    assert!(
        !s.idempotency_answer(&claim("h", 4001), &answer)
            .await
            .unwrap(),
        "only the claim that holds the key answers it"
    );
    let stored = s.idempotency_get("chatops", "k-1").await.unwrap().unwrap();
    assert_eq!(stored.answer, Some(answer.clone()));
    // an answered key is never taken over, however old
    match s.idempotency_claim(&claim("h", 99_000)).await.unwrap() {
        ClaimOutcome::Held(rec) => assert_eq!(rec.answer, Some(answer)),
        other => panic!("an answered key was claimed again: {other:?}"),
    }
    // releasing an answered key does nothing
    s.idempotency_release(&won).await.unwrap();
    assert!(s.idempotency_get("chatops", "k-1").await.unwrap().is_some());
    assert!(s.idempotency_get("other", "k-1").await.unwrap().is_none());
    // a claim abandoned by a crash is taken over once stale (by the same request only)
    let crashed = IdempotencyClaim {
        key: "k-2".into(),
        ..claim("h2", 5000)
    };
    assert_eq!(
        s.idempotency_claim(&crashed).await.unwrap(),
        ClaimOutcome::Claimed
    );
    let retry = |hash: &str, at: i64| IdempotencyClaim {
        key: "k-2".into(),
        ..claim(hash, at)
    };
    assert!(matches!(
        s.idempotency_claim(&retry("h2", 5299)).await.unwrap(),
        ClaimOutcome::Held(_)
    ));
    assert!(matches!(
        s.idempotency_claim(&retry("other", 5301)).await.unwrap(),
        ClaimOutcome::Held(_)
    ));
    let retry = retry("h2", 5301);
    assert_eq!(
        s.idempotency_claim(&retry).await.unwrap(),
        ClaimOutcome::Claimed
    );
    assert!(
        !s.idempotency_answer(
            &crashed,
            &IdempotentAnswer {
                status: 200,
                body: json!({})
            }
        )
        .await
        .unwrap(),
        "the abandoned claim no longer answers"
    );
    // a refusal releases the claim: the key is free again
    s.idempotency_release(&retry).await.unwrap();
    assert!(s.idempotency_get("chatops", "k-2").await.unwrap().is_none());

    // a failed change is not unfinished
    let (_, c2) = s
        .begin_change(
            &NewSnapshot {
                domain: d.clone(),
                provider: "ns1".into(),
                zone: d.clone(),
                label: None,
                reason: "failback".into(),
                taken_at: t(5000),
                taken_by: "automation".into(),
                records: vec![mx(60, &["10 backup.example.net."])],
            },
            &NewChange {
                domain: d.clone(),
                provider: "ns1".into(),
                zone: d.clone(),
                epoch: e,
                before: vec![],
                after: ChangeSet::default(),
                at: t(5000),
            },
        )
        .await
        .unwrap();
    let failed = s
        .set_change_status(c2.id, ChangeStatus::Failed, Some("REFUSED"), e, t(5001))
        .await
        .unwrap();
    assert_eq!(failed.error.as_deref(), Some("REFUSED"));
    assert!(s.unfinished_changes().await.unwrap().is_empty());
    let recent = s.recent_changes(&d, 10).await.unwrap();
    assert_eq!(
        recent.iter().map(|c| c.id).collect::<Vec<_>>(),
        vec![c2.id, change.id],
        "newest first"
    );
    assert!(s.recent_changes(&other, 10).await.unwrap().is_empty());
    s.close().await;
}

/// What the store keeps and what it prunes: by age (observations in several batches, events,
/// changes that ended, idempotency keys) and, per domain, the snapshots beyond the newest
/// `snapshot_keep` that no remaining change and no domain's state refers to.
async fn prune_story(url: StoreUrl) {
    let s = open(&url).await;
    let e = s
        .acquire_lease(&claim("story", Takeover::IfExpired), LeaseClock::STORE)
        .await
        .unwrap()
        .epoch;
    let d = domain();
    let other = Fqdn::parse("other.test").unwrap();
    const DAY: i64 = 86_400;
    let now = t(100 * DAY);
    let ago = |days: i64| 100 * DAY - days * DAY;
    let retention = Retention {
        observations: Duration::from_secs(7 * 86_400),
        events: Duration::from_secs(30 * 86_400),
        changes: Duration::from_secs(30 * 86_400),
        idempotency_keys: Duration::from_secs(86_400),
        snapshot_keep: 3,
    };

    // observations: 2,500 past retention (three batches), 10 within
    let obs = |n: i64, at: i64| -> Vec<Observation> {
        (0..n)
            .map(|i| Observation {
                domain: d.clone(),
                vantage: "local".into(),
                side: "primary".into(),
                target: "mx1.example.test.".into(),
                resolver: "127.0.0.1:53".into(),
                address: None,
                outcome: "pass".into(),
                phase: None,
                latency_ms: Some(i),
                detail: "250 OK".into(),
                observed_at: t(at),
            })
            .collect()
    };
    s.record_observations(&obs(2500, ago(8))).await.unwrap();
    s.record_observations(&obs(10, ago(1))).await.unwrap();

    // events: two past retention, one within
    for (days, message) in [(40, "old 1"), (31, "old 2"), (10, "recent")] {
        s.append_event(&NewEvent {
            domain: d.clone(),
            at: t(ago(days)),
            kind: mxguard::events::EventKind::Operator,
            actor: "chatops".into(),
            reason: None,
            message: message.into(),
            evidence: json!({}).into(),
        })
        .await
        .unwrap();
    }

    // changes, each with its snapshot: verified and failed long ago (pruned, and their
    // snapshots with them), pending and applied long ago (kept: a restart resumes them),
    // verified recently (kept)
    let change = |at: i64| intent(&d, e, at);
    let (s_verified, c_verified) = s
        .begin_change(&change(ago(60)).0, &change(ago(60)).1)
        .await
        .unwrap();
    s.set_change_status(c_verified.id, ChangeStatus::Applied, None, e, t(ago(60)))
        .await
        .unwrap();
    s.set_change_status(c_verified.id, ChangeStatus::Verified, None, e, t(ago(60)))
        .await
        .unwrap();
    let (s_failed, c_failed) = s
        .begin_change(&change(ago(50)).0, &change(ago(50)).1)
        .await
        .unwrap();
    s.set_change_status(
        c_failed.id,
        ChangeStatus::Failed,
        Some("REFUSED"),
        e,
        t(ago(50)),
    )
    .await
    .unwrap();
    let (s_pending, c_pending) = s
        .begin_change(&change(ago(45)).0, &change(ago(45)).1)
        .await
        .unwrap();
    let (s_applied, c_applied) = s
        .begin_change(&change(ago(44)).0, &change(ago(44)).1)
        .await
        .unwrap();
    s.set_change_status(c_applied.id, ChangeStatus::Applied, None, e, t(ago(44)))
        .await
        .unwrap();
    let (s_recent, c_recent) = s
        .begin_change(&change(ago(40)).0, &change(ago(40)).1)
        .await
        .unwrap();
    s.set_change_status(c_recent.id, ChangeStatus::Applied, None, e, t(ago(2)))
        .await
        .unwrap();
    s.set_change_status(c_recent.id, ChangeStatus::Verified, None, e, t(ago(2)))
        .await
        .unwrap();

    // plain snapshots: the failover's that the domain's state refers to (failback restores
    // it), two nobody refers to, then the newest three; another domain's two
    let plain = |dom: &Fqdn, at: i64, label: &str| NewSnapshot {
        domain: dom.clone(),
        provider: "ns1".into(),
        zone: dom.clone(),
        label: Some(label.into()),
        reason: "test".into(),
        taken_at: t(at),
        taken_by: "chatops".into(),
        records: vec![mx(300, &["10 mx1.example.test."])],
    };
    let s_state = s
        .save_snapshot(&plain(&d, ago(39), "failover"))
        .await
        .unwrap();
    let persisted = mxguard::actor::Persisted {
        failover_snapshot: Some(s_state.id),
        ..Default::default()
    };
    s.save_state(
        &d,
        &serde_json::to_value(&persisted).unwrap(),
        None,
        e,
        t(ago(39)),
    )
    .await
    .unwrap();
    let s_old1 = s.save_snapshot(&plain(&d, ago(38), "old 1")).await.unwrap();
    let s_old2 = s.save_snapshot(&plain(&d, ago(37), "old 2")).await.unwrap();
    let mut newest = Vec::new();
    for i in 0..3 {
        newest.push(
            s.save_snapshot(&plain(&d, ago(3 - i), "new"))
                .await
                .unwrap()
                .id,
        );
    }
    let o1 = s
        .save_snapshot(&plain(&other, ago(90), "o1"))
        .await
        .unwrap();
    let o2 = s
        .save_snapshot(&plain(&other, ago(80), "o2"))
        .await
        .unwrap();
    let other_state = mxguard::actor::Persisted::default();
    s.save_state(
        &other,
        &serde_json::to_value(&other_state).unwrap(),
        None,
        e,
        t(ago(1)),
    )
    .await
    .unwrap();

    // idempotency keys: one answered two days ago, one claimed an hour ago (in flight)
    let key = |k: &str, at: i64| IdempotencyClaim {
        scope: "chatops".into(),
        key: k.into(),
        request_hash: "h".into(),
        at: t(at),
        stale_before: t(at - 300),
    };
    let old_key = key("old", ago(2));
    assert_eq!(
        s.idempotency_claim(&old_key).await.unwrap(),
        ClaimOutcome::Claimed
    );
    let answer = IdempotentAnswer {
        status: 200,
        body: json!({"message": "paused"}),
    };
    assert!(s.idempotency_answer(&old_key, &answer).await.unwrap());
    let new_key = key("new", 100 * DAY - 3600);
    assert_eq!(
        s.idempotency_claim(&new_key).await.unwrap(),
        ClaimOutcome::Claimed
    );

    let pruned = s.prune(&retention, now).await.unwrap();
    assert_eq!(
        pruned,
        store::Pruned {
            observations: 2500,
            events: 2,
            changes: 2,
            snapshots: 4,
            idempotency_keys: 1,
        }
    );

    assert_eq!(s.recent_observations(&d, 5000).await.unwrap().len(), 10);
    let events = s.events(&d, None, 100).await.unwrap();
    assert_eq!(
        events
            .iter()
            .map(|e| e.message.as_str())
            .collect::<Vec<_>>(),
        vec!["recent"]
    );
    let mut changes: Vec<i64> = s
        .recent_changes(&d, 100)
        .await
        .unwrap()
        .iter()
        .map(|c| c.id)
        .collect();
    changes.sort_unstable();
    assert_eq!(changes, vec![c_pending.id, c_applied.id, c_recent.id]);
    assert_eq!(
        s.unfinished_changes().await.unwrap().len(),
        2,
        "a restart still resumes them"
    );
    let mut kept: Vec<i64> = s
        .snapshots(Some(&d), 100)
        .await
        .unwrap()
        .iter()
        .map(|s| s.id)
        .collect();
    kept.sort_unstable();
    let mut want = vec![s_pending.id, s_applied.id, s_recent.id, s_state.id];
    want.extend(&newest);
    want.sort_unstable();
    assert_eq!(
        kept, want,
        "the newest 3, the remaining changes' and the state's failover snapshot stay"
    );
    for gone in [s_verified.id, s_failed.id, s_old1.id, s_old2.id] {
        assert!(
            s.snapshot(gone).await.unwrap().is_none(),
            "snapshot {gone} pruned"
        );
    }
    assert_eq!(
        s.snapshots(Some(&other), 100).await.unwrap().len(),
        2,
        "a domain with no more than snapshot_keep keeps them all ({}, {})",
        o1.id,
        o2.id
    );
    assert!(s.idempotency_get("chatops", "old").await.unwrap().is_none());
    assert!(s.idempotency_get("chatops", "new").await.unwrap().is_some());

    // a second prune finds nothing more
    assert_eq!(
        s.prune(&retention, now).await.unwrap(),
        store::Pruned::default()
    );
    s.close().await;
}

fn claim(vantage: &str, takeover: Takeover) -> LeaseClaim {
    LeaseClaim {
        holder: format!("{vantage}/1"),
        vantage: vantage.into(),
        api_url: Some(format!("http://{vantage}.example.test:8053")),
        ttl: Duration::from_secs(15),
        takeover,
    }
}

fn intent(d: &Fqdn, epoch: i64, at: i64) -> (NewSnapshot, NewChange) {
    let snap = NewSnapshot {
        domain: d.clone(),
        provider: "ns1".into(),
        zone: d.clone(),
        label: None,
        reason: "failover".into(),
        taken_at: t(at),
        taken_by: "automation".into(),
        records: vec![mx(300, &["10 mx1.example.test."])],
    };
    let change = NewChange {
        domain: d.clone(),
        provider: "ns1".into(),
        zone: d.clone(),
        epoch,
        before: vec![],
        after: ChangeSet::default(),
        at: t(at),
    };
    (snap, change)
}

/// The store's clock `secs` seconds on: the lease story lets leases age without waiting.
fn later(secs: u64) -> LeaseClock {
    LeaseClock::store_ahead_by(Duration::from_secs(secs))
}

/// Leader lease and fencing: one holder at a time, a new epoch at each change of holder, and
/// every write of a stale epoch refused — state, change intents and their status moves. Lease
/// times are the store's clock, put forward by `later(secs)`; each refusal is judged at least
/// 5 s (of the store's clock) before the expiry it tests, so a slow call cannot cross it.
async fn lease_story(url: StoreUrl) {
    let s = open(&url).await;
    let d = domain();
    let fresh = s.lease().await.unwrap();
    assert_eq!(
        (fresh.epoch, fresh.holder.as_str()),
        (0, ""),
        "nobody leads yet"
    );
    assert!(!fresh.is_live());

    let a = claim("eu", Takeover::IfExpired);
    let b = claim("us", Takeover::IfExpired);
    let la = s.acquire_lease(&a, later(0)).await.unwrap();
    assert_eq!((la.holder.as_str(), la.epoch), ("eu/1", 1));
    assert_eq!(
        la.expires_at - la.acquired_at,
        chrono::Duration::seconds(15)
    );
    assert!(la.read_at >= la.acquired_at, "read back after it was taken");
    assert!(la.is_live());
    assert_eq!(la.api_url.as_deref(), Some("http://eu.example.test:8053"));
    // A live lease is not taken, and the answer says who holds it.
    let seen = s.acquire_lease(&b, later(10)).await.unwrap();
    assert_eq!((seen.holder.as_str(), seen.epoch), ("eu/1", 1));
    assert_eq!(
        seen.expires_at, la.expires_at,
        "a refused claim changes nothing"
    );
    assert!(s
        .renew_lease("eu/1", 1, Duration::from_secs(15), later(10))
        .await
        .unwrap());
    assert!(!s
        .renew_lease("us/1", 1, Duration::from_secs(15), later(10))
        .await
        .unwrap());
    let renewed = s.lease().await.unwrap();
    assert!(
        renewed.expires_at >= la.acquired_at + chrono::Duration::seconds(25),
        "renewed to 25 s after it was taken: {renewed:?}"
    );
    assert_eq!(
        s.acquire_lease(&b, later(20)).await.unwrap().holder,
        "eu/1",
        "renewed to 25 s"
    );

    // The leader writes with epoch 1.
    let v = s
        .save_state(&d, &json!({"n": 1}), None, 1, t(20))
        .await
        .unwrap();
    let (snap, change) = intent(&d, 1, 20);
    let (_, c1) = s.begin_change(&snap, &change).await.unwrap();

    // It pauses past its lease; us takes over with epoch 2, once the lease has run out.
    let lb = s.acquire_lease(&b, later(26)).await.unwrap();
    assert_eq!((lb.holder.as_str(), lb.epoch), ("us/1", 2));
    assert!(lb.acquired_at >= renewed.expires_at);
    assert!(!s
        .renew_lease("eu/1", 1, Duration::from_secs(15), later(27))
        .await
        .unwrap());

    // Every write of the old leader is refused; nothing it tried is stored.
    assert!(matches!(
        s.save_state(&d, &json!({"n": 666}), Some(v), 1, t(27))
            .await,
        Err(StoreError::Fenced(_))
    ));
    let (snap, change) = intent(&d, 1, 27);
    assert!(matches!(
        s.begin_change(&snap, &change).await,
        Err(StoreError::Fenced(_))
    ));
    assert!(matches!(
        s.set_change_status(c1.id, ChangeStatus::Applied, None, 1, t(27))
            .await,
        Err(StoreError::Fenced(_))
    ));
    assert_eq!(
        s.load_state(&d).await.unwrap().unwrap().state,
        json!({"n": 1})
    );
    assert_eq!(
        s.change(c1.id).await.unwrap().unwrap().status,
        ChangeStatus::Pending
    );
    assert_eq!(s.recent_changes(&d, 10).await.unwrap().len(), 1);
    // The new leader finishes the old leader's intent under its own epoch.
    s.set_change_status(c1.id, ChangeStatus::Applied, None, 2, t(28))
        .await
        .unwrap();
    s.save_state(&d, &json!({"n": 2}), Some(v), 2, t(28))
        .await
        .unwrap();

    // A restarted instance with the same vantage name takes its lease back at once...
    let again = s
        .acquire_lease(
            &LeaseClaim {
                holder: "us/2".into(),
                ..claim("us", Takeover::IfExpiredOrSameVantage)
            },
            later(29),
        )
        .await
        .unwrap();
    assert_eq!((again.holder.as_str(), again.epoch), ("us/2", 3));
    // ...but another vantage does not, until the lease is released.
    let c = claim("ap", Takeover::IfExpiredOrSameVantage);
    assert_eq!(s.acquire_lease(&c, later(30)).await.unwrap().holder, "us/2");
    s.release_lease("us/1", 3).await.unwrap(); // not the holder: no effect
    assert_eq!(s.acquire_lease(&c, later(30)).await.unwrap().holder, "us/2");
    s.release_lease("us/2", 3).await.unwrap();
    assert!(!s.lease().await.unwrap().is_live(), "released: run out");
    let lc = s.acquire_lease(&c, later(30)).await.unwrap();
    assert_eq!((lc.holder.as_str(), lc.epoch), ("ap/1", 4));

    // Racing followers after expiry: exactly one wins, with exactly one new epoch.
    let mut racers = Vec::new();
    for i in 0..8 {
        let s = s.clone();
        racers.push(tokio::spawn(async move {
            let mut c = claim(&format!("r{i}"), Takeover::IfExpired);
            c.holder = format!("r{i}/1");
            let l = s.acquire_lease(&c, later(100)).await.unwrap();
            (l.holder == c.holder, l.epoch)
        }));
    }
    let mut winners = 0;
    for r in racers {
        let (won, epoch) = r.await.unwrap();
        winners += usize::from(won);
        assert_eq!(epoch, 5, "everyone sees the winner's epoch");
    }
    assert_eq!(winners, 1);

    // Vantage reports: the latest per (domain, vantage, side).
    let row = |vantage: &str, side: &str, at: i64, n: i64| VantageRow {
        domain: d.clone(),
        vantage: vantage.into(),
        side: side.into(),
        at: t(at),
        report: json!({"n": n}),
    };
    s.put_vantage_reports(&[row("eu", "primary", 1, 1), row("us", "primary", 2, 3)])
        .await
        .unwrap();
    // one batch may hold a key twice (the later wins, as a statement per row would)
    s.put_vantage_reports(&[
        row("eu", "primary", 2, 9),
        row("eu", "primary", 2, 2),
        row("eu", "backup", 2, 4),
    ])
    .await
    .unwrap();
    let rows = s.vantage_reports(&d).await.unwrap();
    let seen: Vec<(&str, &str, i64)> = rows
        .iter()
        .map(|r| {
            (
                r.vantage.as_str(),
                r.side.as_str(),
                r.report["n"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("eu", "backup", 4),
            ("eu", "primary", 2),
            ("us", "primary", 3)
        ]
    );
    let others: Vec<(String, String)> = s
        .other_vantage_reports("eu", t(1))
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.vantage, r.side))
        .collect();
    assert_eq!(others, vec![("us".to_string(), "primary".to_string())]);
    assert!(
        s.other_vantage_reports("eu", t(2))
            .await
            .unwrap()
            .is_empty(),
        "newer than `since` only"
    );
    assert!(s
        .vantage_reports(&Fqdn::parse("other.test").unwrap())
        .await
        .unwrap()
        .is_empty());
    s.close().await;
}

/// The store's clock as it is (what production runs on), with real time passing: a lease
/// renewed for a moment runs out by itself, and a follower takes it then, not before.
async fn lease_runs_out(url: StoreUrl) {
    let s = open(&url).await;
    let a = claim("eu", Takeover::IfExpired);
    let b = claim("us", Takeover::IfExpired);
    let la = s.acquire_lease(&a, LeaseClock::STORE).await.unwrap();
    assert_eq!((la.holder.as_str(), la.epoch), ("eu/1", 1));
    assert_eq!(
        la.expires_at - la.acquired_at,
        chrono::Duration::seconds(15)
    );
    assert_eq!(
        s.acquire_lease(&b, LeaseClock::STORE).await.unwrap().holder,
        "eu/1"
    );

    assert!(s
        .renew_lease("eu/1", 1, Duration::from_millis(300), LeaseClock::STORE)
        .await
        .unwrap());
    let short = s.lease().await.unwrap();
    let lb = common::poll(
        "the renewed lease to run out",
        Duration::from_secs(30),
        || {
            let (s, b) = (s.clone(), b.clone());
            async move {
                let l = s.acquire_lease(&b, LeaseClock::STORE).await.unwrap();
                (l.holder == "us/1").then_some(l)
            }
        },
    )
    .await;
    assert_eq!(lb.epoch, 2);
    assert!(
        lb.acquired_at >= short.expires_at,
        "taken at {} before the lease ran out at {}",
        lb.acquired_at,
        short.expires_at
    );
    assert!(!s
        .renew_lease("eu/1", 1, Duration::from_secs(15), LeaseClock::STORE)
        .await
        .unwrap());
    s.close().await;
}

#[tokio::test]
async fn lease_runs_out_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = StoreUrl::parse(&format!(
        "sqlite://{}",
        dir.path().join("lease.db").display()
    ))
    .unwrap();
    lease_runs_out(url).await;
}

#[tokio::test]
async fn lease_runs_out_postgres() {
    let db = common::fresh_pg_database("lease_out").await;
    lease_runs_out(db.url.clone()).await;
    db.drop_db().await;
}

#[tokio::test]
async fn lease_story_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = StoreUrl::parse(&format!(
        "sqlite://{}",
        dir.path().join("lease.db").display()
    ))
    .unwrap();
    lease_story(url).await;
}

#[tokio::test]
async fn lease_story_postgres() {
    let db = common::fresh_pg_database("lease").await;
    lease_story(db.url.clone()).await;
    db.drop_db().await;
}

#[tokio::test]
async fn store_story_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = StoreUrl::parse(&format!(
        "sqlite://{}",
        dir.path().join("mxguard.db").display()
    ))
    .unwrap();
    story(url).await;
}

#[tokio::test]
async fn store_story_postgres() {
    let db = common::fresh_pg_database("story").await;
    story(db.url.clone()).await;
    db.drop_db().await;
}

/// Loading in batches: 2,500 domains (more than one chunk of names) in one call, a name with
/// no state left out, every state as it was written; unfinished changes of the asked domains
/// only, oldest first, across chunks.
async fn batch_story(url: StoreUrl) {
    use futures::StreamExt;
    const N: usize = 2_500;
    let s = open(&url).await;
    let e = s
        .acquire_lease(&claim("batch", Takeover::IfExpired), LeaseClock::STORE)
        .await
        .unwrap()
        .epoch;
    let name = |i: usize| Fqdn::parse(&format!("d{i}.Batch.test")).unwrap();
    // Written concurrently, so SQLite's writer commits them in groups.
    let written: Vec<i64> = futures::stream::iter(0..N)
        .map(|i| {
            let s = s.clone();
            async move {
                s.save_state(&name(i), &json!({"n": i}), None, e, t(0))
                    .await
                    .unwrap()
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    assert!(written.iter().all(|v| *v == 1));
    let v = s
        .save_state(&name(5), &json!({"n": 5, "again": true}), Some(1), e, t(1))
        .await
        .unwrap();
    assert_eq!(v, 2);

    let missing = Fqdn::parse("missing.batch.test").unwrap();
    let mut asked: Vec<Fqdn> = (0..N).map(name).collect();
    asked.insert(1_000, missing.clone());
    let states = s.load_states(&asked).await.unwrap();
    assert_eq!(
        states.len(),
        N,
        "every stored state, and no row for the missing name"
    );
    assert!(!states.contains_key(&missing));
    for i in 0..N {
        let row = &states[&name(i)];
        assert_eq!(row.domain, name(i));
        assert_eq!(row.state["n"], json!(i));
        if i == 5 {
            assert_eq!((row.version, row.state["again"].clone()), (2, json!(true)));
            assert_eq!(row.updated_at, t(1));
        } else {
            assert_eq!((row.version, row.updated_at), (1, t(0)));
        }
    }
    assert_eq!(
        s.load_states(&[name(42)]).await.unwrap()[&name(42)],
        s.load_state(&name(42)).await.unwrap().unwrap(),
        "the batched read returns what the single one does"
    );
    assert!(s.load_states(&[]).await.unwrap().is_empty());
    assert!(s
        .load_states(std::slice::from_ref(&missing))
        .await
        .unwrap()
        .is_empty());

    // Unfinished changes: pending and applied ones of the asked domains, in id order.
    let mut ids = Vec::new();
    for i in [2_400, 3, 1_500, 2_200, 9] {
        let (snap, change) = intent(&name(i), e, 10);
        ids.push((i, s.begin_change(&snap, &change).await.unwrap().1.id));
    }
    let id = |want: usize| ids.iter().find(|(i, _)| *i == want).unwrap().1;
    s.set_change_status(id(1_500), ChangeStatus::Applied, None, e, t(11))
        .await
        .unwrap();
    s.set_change_status(id(9), ChangeStatus::Failed, Some("gave up"), e, t(11))
        .await
        .unwrap();
    let of = |changes: Vec<store::ChangeIntent>| {
        changes
            .into_iter()
            .map(|c| (c.domain, c.id))
            .collect::<Vec<_>>()
    };
    let asked_few = [name(3), name(9), name(1_500), name(2_400), missing.clone()];
    assert_eq!(
        of(s.unfinished_changes_for(&asked_few).await.unwrap()),
        vec![
            (name(2_400), id(2_400)),
            (name(3), id(3)),
            (name(1_500), id(1_500)),
        ],
        "d2200 was not asked for, d9's change ended"
    );
    assert_eq!(
        of(s.unfinished_changes_for(&asked).await.unwrap()),
        of(s.unfinished_changes().await.unwrap()),
        "all of them, across chunks, as the unbatched read"
    );
    assert!(s.unfinished_changes_for(&[]).await.unwrap().is_empty());
    s.close().await;
}

#[tokio::test]
async fn batch_story_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = StoreUrl::parse(&format!(
        "sqlite://{}",
        dir.path().join("batch.db").display()
    ))
    .unwrap();
    batch_story(url).await;
}

#[tokio::test]
async fn batch_story_postgres() {
    let db = common::fresh_pg_database("batch").await;
    batch_story(db.url.clone()).await;
    db.drop_db().await;
}

/// Writing in batches: states saved and events appended many at a call, as the actors' shared
/// writer does. Each save keeps its own compare-and-swap answer, a stale epoch writes nothing,
/// and each event gets its own id and reads back as appended.
async fn batch_write_story(url: StoreUrl) {
    use store::StateSave;
    const N: usize = 1_500;
    let s = open(&url).await;
    let e = s
        .acquire_lease(&claim("writes", Takeover::IfExpired), LeaseClock::STORE)
        .await
        .unwrap()
        .epoch;
    let name = |i: usize| Fqdn::parse(&format!("w{i}.Batch.test")).unwrap();
    let save = |i: usize, version: Option<i64>, at: i64| StateSave {
        domain: name(i),
        state: json!({"n": i, "at": at}).into(),
        expected_version: version,
        at: t(at),
    };
    assert!(s.save_states(Vec::new(), e).await.is_empty());

    // First saves, more than a statement's worth: every one is version 1.
    let first = s
        .save_states((0..N).map(|i| save(i, None, 0)).collect(), e)
        .await;
    assert_eq!(first.len(), N);
    assert!(
        first.iter().all(|r| matches!(r, Ok(1))),
        "{:?}",
        first.iter().find(|r| !matches!(r, Ok(1)))
    );

    // Then: updates at the version read, one stale update, one first save of a domain that
    // has a row, and a new domain; each answered on its own, in order.
    let mut next: Vec<StateSave> = (0..1_200).map(|i| save(i, Some(1), 5)).collect();
    next.push(save(1_300, Some(7), 5));
    next.push(save(1_301, None, 5));
    next.push(save(N, None, 5));
    let answers = s.save_states(next, e).await;
    assert_eq!(answers.len(), 1_203);
    assert!(answers[..1_200].iter().all(|r| matches!(r, Ok(2))));
    assert!(
        matches!(&answers[1_200], Err(StoreError::Conflict(m)) if m.contains("w1300.batch.test")),
        "a stale version is a conflict: {:?}",
        answers[1_200]
    );
    assert!(
        matches!(&answers[1_201], Err(StoreError::Conflict(_))),
        "{:?}",
        answers[1_201]
    );
    assert!(matches!(answers[1_202], Ok(1)));
    let states = s
        .load_states(&(0..=N).map(name).collect::<Vec<_>>())
        .await
        .unwrap();
    assert_eq!(states.len(), N + 1);
    for i in [0, 999, 1_000, 1_199] {
        let row = &states[&name(i)];
        assert_eq!(
            (row.version, row.updated_at, row.state["at"].clone()),
            (2, t(5), json!(5))
        );
    }
    for i in [1_200, 1_300, 1_301] {
        let row = &states[&name(i)];
        assert_eq!(
            (row.version, row.state["at"].clone()),
            (1, json!(0)),
            "{i} is as it was"
        );
    }

    // A stale epoch: every save is fenced and none is written.
    let fenced = s
        .save_states(vec![save(0, Some(2), 9), save(N + 1, None, 9)], e + 1)
        .await;
    assert!(
        fenced
            .iter()
            .all(|r| matches!(r, Err(StoreError::Fenced(_)))),
        "{fenced:?}"
    );
    assert_eq!(s.load_state(&name(0)).await.unwrap().unwrap().version, 2);
    assert!(s.load_state(&name(N + 1)).await.unwrap().is_none());

    // Events: more than a statement's worth, two of them alike in every field.
    assert!(s.append_events(Vec::new()).await.is_empty());
    let event = |i: usize| NewEvent {
        domain: name(i % 7),
        at: t(20 + (i % 3) as i64),
        kind: mxguard::events::EventKind::Health,
        actor: "automation".into(),
        reason: i.is_multiple_of(2).then(|| format!("reason {i}")),
        message: format!("event {i}"),
        evidence: json!({"i": i}).into(),
    };
    let mut events: Vec<NewEvent> = (0..1_100).map(event).collect();
    let alike = NewEvent {
        message: "alike".into(),
        evidence: json!({}).into(),
        ..event(3)
    };
    events.push(alike.clone());
    events.push(alike);
    let stored: Vec<store::Event> = s
        .append_events(events.clone())
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(stored.len(), events.len());
    let mut ids: Vec<i64> = stored.iter().map(|e| e.id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), events.len(), "an id each");
    for (asked, got) in events.iter().zip(&stored) {
        assert_eq!(
            (
                &got.domain,
                got.at,
                got.kind,
                &got.actor,
                &got.reason,
                &got.message,
                &got.evidence
            ),
            (
                &asked.domain,
                asked.at,
                asked.kind,
                &asked.actor,
                &asked.reason,
                &asked.message,
                &asked.evidence.value()
            )
        );
    }
    // What is read back by id is what each answer said.
    for got in stored.iter().step_by(97).chain(stored.last()) {
        let read = s.events(&got.domain, Some(got.id - 1), 1).await.unwrap();
        assert_eq!(
            read.first(),
            Some(got),
            "event {} reads back as answered",
            got.id
        );
    }
    s.close().await;
}

#[tokio::test]
async fn batch_write_story_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = StoreUrl::parse(&format!(
        "sqlite://{}",
        dir.path().join("writes.db").display()
    ))
    .unwrap();
    batch_write_story(url).await;
}

#[tokio::test]
async fn batch_write_story_postgres() {
    let db = common::fresh_pg_database("batchw").await;
    batch_write_story(db.url.clone()).await;
    db.drop_db().await;
}

#[tokio::test]
async fn sqlite_store_uses_wal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wal.db");
    let url = StoreUrl::parse(&format!("sqlite://{}", path.display())).unwrap();
    let s = open(&url).await;
    s.ping().await.unwrap();
    s.close().await;
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&format!(
        "sqlite://{}",
        path.display()
    ))
    .await
    .unwrap();
    let mode: (String,) = sqlx::query_as("PRAGMA journal_mode")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(mode.0.to_lowercase(), "wal");
}

#[tokio::test]
async fn prune_story_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = StoreUrl::parse(&format!(
        "sqlite://{}",
        dir.path().join("prune.db").display()
    ))
    .unwrap();
    prune_story(url).await;
}

#[tokio::test]
async fn prune_story_postgres() {
    let db = common::fresh_pg_database("prune").await;
    prune_story(db.url.clone()).await;
    db.drop_db().await;
}
