//! A thousand domains' actors taking up automation together read their state in a handful of
//! batched queries, through the loader they share: no per-domain `load_state`, no read of
//! every domain's unfinished changes per domain. Each actor still gets its own answer: the one
//! domain with an unfinished change (and nothing in flight) abandons it, and no other does.
//! Their writes go the same way: a thousand saves and events at once through the shared
//! writer are a few store writes, each answered on its own.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mxguard::actor::{Actor, Batching, Persisted, Writer};
use mxguard::config::{Config, StoreKind, StoreUrl};
use mxguard::model::Fqdn;
use mxguard::store::*;
use mxguard_core::ChangeSet;
use tokio_util::sync::CancellationToken;

const DOMAINS: usize = 1_000;

#[derive(Default)]
struct Counts {
    load_state: AtomicUsize,
    load_states: AtomicUsize,
    /// Names asked for through `load_states`, over all calls.
    names: AtomicUsize,
    unfinished_changes: AtomicUsize,
    unfinished_changes_for: AtomicUsize,
    save_state: AtomicUsize,
    save_states: AtomicUsize,
    append_event: AtomicUsize,
    append_events: AtomicUsize,
}

/// The store, counting the reads that load a domain's state and its unfinished changes, and
/// the writes of states and events.
struct Counting {
    inner: Arc<dyn Store>,
    counts: Arc<Counts>,
}

fn bump(c: &AtomicUsize, n: usize) {
    c.fetch_add(n, Ordering::SeqCst);
}

#[async_trait]
impl Store for Counting {
    fn kind(&self) -> StoreKind {
        self.inner.kind()
    }
    async fn migrate(&self) -> Result<(), StoreError> {
        self.inner.migrate().await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
    async fn close(&self) {
        self.inner.close().await
    }
    async fn load_state(&self, domain: &Fqdn) -> Result<Option<DomainStateRow>, StoreError> {
        bump(&self.counts.load_state, 1);
        self.inner.load_state(domain).await
    }
    async fn load_states(
        &self,
        domains: &[Fqdn],
    ) -> Result<HashMap<Fqdn, DomainStateRow>, StoreError> {
        bump(&self.counts.load_states, 1);
        bump(&self.counts.names, domains.len());
        self.inner.load_states(domains).await
    }
    async fn save_state(
        &self,
        domain: &Fqdn,
        state: &serde_json::Value,
        expected_version: Option<i64>,
        epoch: i64,
        at: DateTime<Utc>,
    ) -> Result<i64, StoreError> {
        bump(&self.counts.save_state, 1);
        self.inner
            .save_state(domain, state, expected_version, epoch, at)
            .await
    }
    async fn save_states(&self, saves: Vec<StateSave>, epoch: i64) -> Vec<Result<i64, StoreError>> {
        bump(&self.counts.save_states, 1);
        self.inner.save_states(saves, epoch).await
    }
    async fn record_observations(&self, obs: &[Observation]) -> Result<(), StoreError> {
        self.inner.record_observations(obs).await
    }
    async fn recent_observations(
        &self,
        domain: &Fqdn,
        limit: u32,
    ) -> Result<Vec<Observation>, StoreError> {
        self.inner.recent_observations(domain, limit).await
    }
    async fn prune_observations(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        self.inner.prune_observations(before).await
    }
    async fn append_event(&self, event: &NewEvent) -> Result<Event, StoreError> {
        bump(&self.counts.append_event, 1);
        self.inner.append_event(event).await
    }
    async fn append_events(&self, events: Vec<NewEvent>) -> Vec<Result<Event, StoreError>> {
        bump(&self.counts.append_events, 1);
        self.inner.append_events(events).await
    }
    async fn events(
        &self,
        domain: &Fqdn,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Vec<Event>, StoreError> {
        self.inner.events(domain, after, limit).await
    }
    async fn save_snapshot(&self, snapshot: &NewSnapshot) -> Result<Snapshot, StoreError> {
        self.inner.save_snapshot(snapshot).await
    }
    async fn snapshot(&self, id: i64) -> Result<Option<Snapshot>, StoreError> {
        self.inner.snapshot(id).await
    }
    async fn snapshots(
        &self,
        domain: Option<&Fqdn>,
        limit: u32,
    ) -> Result<Vec<Snapshot>, StoreError> {
        self.inner.snapshots(domain, limit).await
    }
    async fn begin_change(
        &self,
        snapshot: &NewSnapshot,
        change: &NewChange,
    ) -> Result<(Snapshot, ChangeIntent), StoreError> {
        self.inner.begin_change(snapshot, change).await
    }
    async fn set_change_status(
        &self,
        id: i64,
        status: ChangeStatus,
        error: Option<&str>,
        epoch: i64,
        at: DateTime<Utc>,
    ) -> Result<ChangeIntent, StoreError> {
        self.inner
            .set_change_status(id, status, error, epoch, at)
            .await
    }
    async fn change(&self, id: i64) -> Result<Option<ChangeIntent>, StoreError> {
        self.inner.change(id).await
    }
    async fn recent_changes(
        &self,
        domain: &Fqdn,
        limit: u32,
    ) -> Result<Vec<ChangeIntent>, StoreError> {
        self.inner.recent_changes(domain, limit).await
    }
    async fn unfinished_changes(&self) -> Result<Vec<ChangeIntent>, StoreError> {
        bump(&self.counts.unfinished_changes, 1);
        self.inner.unfinished_changes().await
    }
    async fn unfinished_changes_for(
        &self,
        domains: &[Fqdn],
    ) -> Result<Vec<ChangeIntent>, StoreError> {
        bump(&self.counts.unfinished_changes_for, 1);
        self.inner.unfinished_changes_for(domains).await
    }
    async fn acquire_lease(
        &self,
        claim: &LeaseClaim,
        clock: LeaseClock,
    ) -> Result<Lease, StoreError> {
        self.inner.acquire_lease(claim, clock).await
    }
    async fn renew_lease(
        &self,
        holder: &str,
        epoch: i64,
        ttl: Duration,
        clock: LeaseClock,
    ) -> Result<bool, StoreError> {
        self.inner.renew_lease(holder, epoch, ttl, clock).await
    }
    async fn release_lease(&self, holder: &str, epoch: i64) -> Result<(), StoreError> {
        self.inner.release_lease(holder, epoch).await
    }
    async fn lease(&self) -> Result<Lease, StoreError> {
        self.inner.lease().await
    }
    async fn put_vantage_reports(&self, rows: &[VantageRow]) -> Result<(), StoreError> {
        self.inner.put_vantage_reports(rows).await
    }
    async fn vantage_reports(&self, domain: &Fqdn) -> Result<Vec<VantageRow>, StoreError> {
        self.inner.vantage_reports(domain).await
    }
    async fn other_vantage_reports(
        &self,
        except: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<VantageRow>, StoreError> {
        self.inner.other_vantage_reports(except, since).await
    }
    async fn idempotency_get(
        &self,
        scope: &str,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        self.inner.idempotency_get(scope, key).await
    }
    async fn idempotency_claim(
        &self,
        claim: &IdempotencyClaim,
    ) -> Result<ClaimOutcome, StoreError> {
        self.inner.idempotency_claim(claim).await
    }
    async fn idempotency_answer(
        &self,
        claim: &IdempotencyClaim,
        answer: &IdempotentAnswer,
    ) -> Result<bool, StoreError> {
        self.inner.idempotency_answer(claim, answer).await
    }
    async fn idempotency_release(&self, claim: &IdempotencyClaim) -> Result<(), StoreError> {
        self.inner.idempotency_release(claim).await
    }
    async fn prune(&self, retention: &Retention, now: DateTime<Utc>) -> Result<Pruned, StoreError> {
        self.inner.prune(retention, now).await
    }
}

fn name(i: usize) -> Fqdn {
    Fqdn::parse(&format!("d{i}.example.test")).expect("name")
}

/// A `pending` change of `d`, as a crash between the intent and the apply leaves it.
async fn unfinished(s: &dyn Store, d: &Fqdn, epoch: i64) -> i64 {
    let snap = NewSnapshot {
        domain: d.clone(),
        provider: "memory".into(),
        zone: d.clone(),
        label: None,
        reason: "failover".into(),
        taken_at: Utc::now(),
        taken_by: "automation".into(),
        records: vec![],
    };
    let change = NewChange {
        domain: d.clone(),
        provider: "memory".into(),
        zone: d.clone(),
        epoch,
        before: vec![],
        after: ChangeSet::default(),
        at: Utc::now(),
    };
    s.begin_change(&snap, &change).await.expect("intent").1.id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actors_recovering_together_load_in_batches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url =
        StoreUrl::parse(&format!("sqlite://{}", dir.path().join("b.db").display())).expect("url");
    let inner = mxguard::store::open(&url).await.expect("store");
    inner.migrate().await.expect("migrate");
    let leadership = common::api::sole_leader(&*inner).await;
    let epoch = leadership.epoch().expect("epoch");

    // Half the domains have a stored state (nothing in flight); d7 also has an unfinished
    // change, which its actor abandons; d8's change is finished and stays as it is.
    let persisted = serde_json::to_value(Persisted::default()).expect("state");
    for i in (0..DOMAINS).step_by(2) {
        inner
            .save_state(&name(i), &persisted, None, epoch, Utc::now())
            .await
            .expect("state");
    }
    let left = unfinished(&*inner, &name(7), epoch).await;
    let done = unfinished(&*inner, &name(8), epoch).await;
    inner
        .set_change_status(done, ChangeStatus::Failed, Some("test"), epoch, Utc::now())
        .await
        .expect("finished");
    let outside = unfinished(&*inner, &name(DOMAINS + 1), epoch).await;

    let counts = Arc::new(Counts::default());
    let store: Arc<dyn Store> = Arc::new(Counting {
        inner: inner.clone(),
        counts: counts.clone(),
    });
    let config = Config::parse("memory.toml", &common::api::config_text(false)).expect("config");
    let dns = Arc::new(common::api::lab_dns());
    let events = mxguard::events::EventBus::default();
    let template = (*config.domains[0]).clone();
    let deps = common::api::memory_deps(&store, &dns, &leadership, &events, &template.provider);
    let batching = Batching::new(store.clone());
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    for i in 0..DOMAINS {
        let mut cfg = template.clone();
        cfg.name = name(i);
        let (actor, _handle) = Actor::batched(cfg, deps.clone(), &batching);
        tokio::spawn(actor.run(shutdown.clone()));
    }

    // Every actor has asked for its state, one way or the other.
    common::poll(
        "every domain's state asked for",
        Duration::from_secs(60),
        || {
            let asked =
                counts.names.load(Ordering::SeqCst) + counts.load_state.load(Ordering::SeqCst);
            async move { (asked >= DOMAINS).then_some(()) }
        },
    )
    .await;
    common::poll(
        "d7's unfinished change abandoned",
        Duration::from_secs(60),
        || {
            let inner = inner.clone();
            async move {
                let c = inner.change(left).await.expect("change")?;
                (c.status == ChangeStatus::Failed).then_some(())
            }
        },
    )
    .await;

    let load_state = counts.load_state.load(Ordering::SeqCst);
    let load_states = counts.load_states.load(Ordering::SeqCst);
    let every = counts.unfinished_changes.load(Ordering::SeqCst);
    let some = counts.unfinished_changes_for.load(Ordering::SeqCst);
    eprintln!(
        "{DOMAINS} actors: {load_state} load_state, {load_states} load_states, \
         {every} unfinished_changes, {some} unfinished_changes_for"
    );
    assert_eq!(load_state, 0, "no state is read one domain at a time");
    assert_eq!(every, 0, "no actor reads every domain's unfinished changes");
    assert!(
        (1..=10).contains(&load_states),
        "{DOMAINS} states in a handful of batches, not {load_states}"
    );
    assert!(
        (1..=10).contains(&some),
        "unfinished changes in a handful of batches, not {some}"
    );
    // Each actor got its own answer: only d7's change was abandoned.
    let status = |id| {
        let inner = inner.clone();
        async move { inner.change(id).await.expect("change").expect("row").status }
    };
    assert_eq!(status(done).await, ChangeStatus::Failed);
    assert_eq!(
        status(outside).await,
        ChangeStatus::Pending,
        "a domain no actor runs keeps its unfinished change"
    );
}

/// A thousand actors saving their state and recording an event at the same moment, as at a
/// start: a handful of store writes, not one each, and every caller its own answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saves_and_events_at_once_are_written_in_batches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url =
        StoreUrl::parse(&format!("sqlite://{}", dir.path().join("w.db").display())).expect("url");
    let inner = mxguard::store::open(&url).await.expect("store");
    inner.migrate().await.expect("migrate");
    let leadership = common::api::sole_leader(&*inner).await;
    let epoch = leadership.epoch().expect("epoch");
    // d3 already has a row at version 1, which its saver does not know about: a conflict.
    inner
        .save_state(&name(3), &serde_json::json!({}), None, epoch, Utc::now())
        .await
        .expect("state");
    let counts = Arc::new(Counts::default());
    let store: Arc<dyn Store> = Arc::new(Counting {
        inner: inner.clone(),
        counts: counts.clone(),
    });
    let writer = Writer::new(store);
    let tasks: Vec<_> = (0..DOMAINS)
        .map(|i| {
            let writer = writer.clone();
            tokio::spawn(async move {
                let save = StateSave {
                    domain: name(i),
                    state: serde_json::json!({"n": i}).into(),
                    expected_version: None,
                    at: Utc::now(),
                };
                let version = writer.save_state(save, epoch).await;
                let event = writer
                    .append_event(NewEvent {
                        domain: name(i),
                        at: Utc::now(),
                        kind: mxguard::events::EventKind::Health,
                        actor: "automation".into(),
                        reason: None,
                        message: format!("event of {i}"),
                        evidence: serde_json::json!({"n": i}).into(),
                    })
                    .await;
                (i, version, event)
            })
        })
        .collect();
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        let (i, version, event) = t.await.expect("task");
        if i == 3 {
            assert!(
                matches!(version, Err(StoreError::Conflict(_))),
                "{version:?}"
            );
        } else {
            assert_eq!(version.expect("saved"), 1, "d{i}");
        }
        let event = event.expect("recorded");
        assert_eq!(
            (event.domain, event.message),
            (name(i), format!("event of {i}"))
        );
        assert!(ids.insert(event.id), "an id each");
    }
    let stored = inner
        .load_states(&(0..DOMAINS).map(name).collect::<Vec<_>>())
        .await
        .expect("states");
    assert_eq!(stored.len(), DOMAINS);
    assert_eq!(stored[&name(7)].state["n"], 7);
    assert_eq!(
        stored[&name(3)].state,
        serde_json::json!({}),
        "the conflict wrote nothing"
    );

    let (one, many) = (
        counts.save_state.load(Ordering::SeqCst),
        counts.save_states.load(Ordering::SeqCst),
    );
    let (one_ev, many_ev) = (
        counts.append_event.load(Ordering::SeqCst),
        counts.append_events.load(Ordering::SeqCst),
    );
    eprintln!("{DOMAINS} saves: {many} batched writes; {DOMAINS} events: {many_ev} batched writes");
    assert_eq!((one, one_ev), (0, 0), "nothing written one at a time");
    assert!(
        (1..=DOMAINS / 10).contains(&many),
        "{DOMAINS} saves in batches, not {many} writes"
    );
    assert!(
        (1..=DOMAINS / 10).contains(&many_ev),
        "{DOMAINS} events in batches, not {many_ev} writes"
    );
}
