//! The periodic reconcile read of a domain's actor (the read-back of what the provider
//! serves): it runs beside the actor, never in its loop, and a read that began before a
//! change is thrown away rather than taken for the truth.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::api::{MemoryDns, MemoryDomain, MxView, BACKUP_MX};
use mxguard::machine::Command;
use mxguard::model::Side;
use mxguard_core::{
    Capabilities, ChangeSet, DnsProvider, Fqdn, ProviderError, RecordSet, RrsetKey,
};
use tokio::sync::Notify;

/// Reads the zone at once but, while `hold` is set, answers only when released: the answer a
/// slow provider gives is what was live when the request was made.
struct SlowReads {
    inner: Arc<MemoryDns>,
    hold: AtomicBool,
    waiting: AtomicUsize,
    release: Notify,
}

#[async_trait]
impl DnsProvider for SlowReads {
    fn name(&self) -> &str {
        "slow"
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn read(&self, zone: &Fqdn, keys: &[RrsetKey]) -> Result<Vec<RecordSet>, ProviderError> {
        let answer = self.inner.read(zone, keys).await;
        if self.hold.load(Ordering::SeqCst) {
            let released = self.release.notified();
            self.waiting.fetch_add(1, Ordering::SeqCst);
            released.await;
            self.waiting.fetch_sub(1, Ordering::SeqCst);
        }
        answer
    }
    async fn list_zone(&self, zone: &Fqdn) -> Result<Vec<RecordSet>, ProviderError> {
        self.inner.list_zone(zone).await
    }
    async fn apply(&self, zone: &Fqdn, changes: &ChangeSet) -> Result<(), ProviderError> {
        self.inner.apply(zone, changes).await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_reconcile_read_neither_blocks_the_actor_nor_overrules_a_later_change() {
    let m = MemoryDomain::new().await;
    let (store, dns) = (m.store.clone(), m.dns.clone());
    let slow = Arc::new(SlowReads {
        inner: dns.clone(),
        hold: AtomicBool::new(false),
        waiting: AtomicUsize::new(0),
        release: Notify::new(),
    });
    let mut deps = m.deps();
    // changes go to the zone directly; the periodic read goes through the slow path, often
    deps.background = slow.clone();
    deps.reconcile = Duration::from_secs(1);
    let (handle, _stop) = m.run(deps).await;

    // A reconcile read goes out and hangs, holding "the primary is published".
    slow.hold.store(true, Ordering::SeqCst);
    common::poll("a reconcile read waiting", Duration::from_secs(10), || {
        let n = slow.waiting.load(Ordering::SeqCst);
        async move { (n > 0).then_some(()) }
    })
    .await;

    // The actor still answers, and an operator's failover goes through meanwhile.
    let status = tokio::time::timeout(Duration::from_secs(5), handle.status())
        .await
        .expect("the actor answers while its reconcile read waits")
        .expect("status");
    assert_eq!(status.state.published, Some(Side::Primary));
    tokio::time::timeout(
        Duration::from_secs(15),
        handle.command(Command::Failover, "ops", "provider maintenance"),
    )
    .await
    .expect("the command is handled while the read waits")
    .expect("failover accepted");
    common::poll("the backup published", Duration::from_secs(15), || {
        let handle = handle.clone();
        async move {
            let s = handle.status().await.ok()?;
            (s.state.published == Some(Side::Backup) && s.state.in_flight.is_none()).then_some(())
        }
    })
    .await;
    assert_eq!(dns.mx(), vec![format!("{BACKUP_MX} 30")]);

    // The stale answer arrives: it must not be taken for what is live now.
    slow.hold.store(false, Ordering::SeqCst);
    slow.release.notify_waiters();
    common::poll("the stale read answered", Duration::from_secs(10), || {
        let n = slow.waiting.load(Ordering::SeqCst);
        async move { (n == 0).then_some(()) }
    })
    .await;
    // Through its arrival and the next reconciles, the state must still say backup.
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        let s = handle.status().await.expect("status");
        assert_eq!(
            s.state.published,
            Some(Side::Backup),
            "a read made before the failover overruled it"
        );
        assert!(!s.drift, "no drift: the zone serves the backup");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let timeline = store
        .events(&Fqdn::parse("example.test").expect("name"), None, 100)
        .await
        .expect("events");
    assert!(
        !timeline.iter().any(|e| e.kind == "drift"),
        "{:?}",
        timeline.iter().map(|e| &e.message).collect::<Vec<_>>()
    );
}

/// Applies through the in-memory zone, but panics on the first `apply` (a provider client's bug).
struct PanicsOnce {
    inner: Arc<MemoryDns>,
    panicked: AtomicBool,
}

#[async_trait]
impl DnsProvider for PanicsOnce {
    fn name(&self) -> &str {
        "panics-once"
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn read(&self, zone: &Fqdn, keys: &[RrsetKey]) -> Result<Vec<RecordSet>, ProviderError> {
        self.inner.read(zone, keys).await
    }
    async fn list_zone(&self, zone: &Fqdn) -> Result<Vec<RecordSet>, ProviderError> {
        self.inner.list_zone(zone).await
    }
    async fn apply(&self, zone: &Fqdn, changes: &ChangeSet) -> Result<(), ProviderError> {
        if !self.panicked.swap(true, Ordering::SeqCst) {
            panic!("a provider client bug");
        }
        self.inner.apply(zone, changes).await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_publish_that_panics_is_reported_and_retried() {
    let m = MemoryDomain::new().await;
    let (store, dns) = (m.store.clone(), m.dns.clone());
    let mut deps = m.deps();
    deps.provider = Arc::new(PanicsOnce {
        inner: dns.clone(),
        panicked: AtomicBool::new(false),
    });
    let (handle, _stop) = m.run(deps).await;

    handle
        .command(Command::Failover, "ops", "drill")
        .await
        .expect("failover accepted");
    // The first attempt panics inside the provider call: reported as a failure, retried after
    // the transient backoff (10 s), and the second attempt publishes.
    common::poll("the backup published", Duration::from_secs(40), || {
        let handle = handle.clone();
        async move {
            let s = handle.status().await.ok()?;
            (s.state.published == Some(Side::Backup) && s.state.in_flight.is_none()).then_some(())
        }
    })
    .await;
    assert_eq!(dns.mx(), vec![format!("{BACKUP_MX} 30")]);
    let timeline = store
        .events(&Fqdn::parse("example.test").expect("name"), None, 100)
        .await
        .expect("events");
    let failed = timeline
        .iter()
        .find(|e| e.kind == "alert.change_failed")
        .expect("the panic reported as a failed change");
    assert!(
        failed.message.contains("the publish task failed"),
        "{}",
        failed.message
    );
}
