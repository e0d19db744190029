//! Who leads. Several instances may share one PostgreSQL; exactly one holds the **leader lease**
//! (a row with an expiry and an `epoch` that grows at every change of holder). The leader steps
//! the domains' machines and writes to providers; followers keep probing and store what their
//! vantage sees. Every write a leader makes carries its epoch and the store refuses a stale one
//! (fencing), so a leader that was paused past its lease cannot apply anything when it resumes:
//! locally it stops trusting its lease at `renewed + ttl × 4/5` (monotonic clock), and the
//! store checks the epoch in the same transaction as each write.
//!
//! The lease's expiry is written and judged on the store's clock ([`LeaseClock::STORE`]), never
//! on an instance's: instances whose wall clocks disagree still agree on when it runs out. The
//! local trust above uses only this instance's monotonic clock, started before the request that
//! took or renewed the lease, so it ends before the store's expiry whatever the wall clocks say.
//!
//! SQLite is single-instance: `serve` holds an exclusive lock on `<db>.lock` and takes the lease
//! at once (no other live process can hold it).

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use mxguard_core::Clock;
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{ClusterConfig, StoreKind, StoreUrl};
use crate::store::{Lease, LeaseClaim, LeaseClock, Store, Takeover};

/// This instance's view of the lease.
#[derive(Debug, Clone, PartialEq)]
struct View {
    /// `Some(epoch)` while this instance holds the lease.
    epoch: Option<i64>,
    /// Until when the lease may be trusted locally (monotonic).
    valid_until: Option<Instant>,
    /// The lease as last read (who leads, for followers' answers).
    lease: Option<Lease>,
}

/// The role, for `/readyz`, the API and the actors. Cheap to clone.
#[derive(Clone)]
pub struct Leadership {
    vantage: Arc<str>,
    rx: watch::Receiver<View>,
    clock: Arc<dyn Clock>,
}

/// Takes a [`Leadership::switchable`] leadership's lease away.
pub struct RoleSwitch(watch::Sender<View>);

impl RoleSwitch {
    /// From now on the leadership is a follower's, and its holders are told.
    pub fn lose(&self) {
        self.0.send_modify(|v| v.epoch = None);
    }
}

/// What `/readyz` and refused mutations say about leadership.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RoleReport {
    /// `leader` or `follower`.
    pub role: &'static str,
    pub vantage: String,
    /// The epoch this instance writes with (leader) or the leader's (follower), if known.
    pub epoch: Option<i64>,
    /// The leader's vantage and advertised API URL, as the lease says.
    pub leader: Option<String>,
    pub leader_url: Option<String>,
}

impl Default for Leadership {
    /// A follower that never leads (no lease keeper): nothing it holds can write.
    fn default() -> Self {
        let (_tx, rx) = watch::channel(View {
            epoch: None,
            valid_until: None,
            lease: None,
        });
        Leadership {
            vantage: "default".into(),
            rx,
            clock: Arc::new(mxguard_core::TokioClock),
        }
    }
}

impl Leadership {
    /// Always the leader at `epoch` (tests and in-process harnesses without a lease keeper).
    pub fn fixed(vantage: &str, epoch: i64) -> Leadership {
        let (_tx, rx) = watch::channel(View {
            epoch: Some(epoch),
            valid_until: None,
            lease: None,
        });
        Leadership {
            vantage: vantage.into(),
            rx,
            clock: Arc::new(mxguard_core::TokioClock),
        }
    }

    /// The leader at `epoch` until the returned [`RoleSwitch`] takes the lease away (tests and
    /// in-process harnesses that play a lease loss without a store).
    pub fn switchable(vantage: &str, epoch: i64) -> (Leadership, RoleSwitch) {
        let (tx, rx) = watch::channel(View {
            epoch: Some(epoch),
            valid_until: None,
            lease: None,
        });
        let leadership = Leadership {
            vantage: vantage.into(),
            rx,
            clock: Arc::new(mxguard_core::TokioClock),
        };
        (leadership, RoleSwitch(tx))
    }

    pub fn vantage(&self) -> &str {
        &self.vantage
    }

    /// The epoch to write with, if this instance leads and its lease is still trustworthy.
    pub fn epoch(&self) -> Option<i64> {
        let v = self.rx.borrow();
        let valid = v.valid_until.is_none_or(|t| self.clock.now() < t);
        v.epoch.filter(|_| valid)
    }

    pub fn is_leader(&self) -> bool {
        self.epoch().is_some()
    }

    /// Waits until the role may have changed.
    pub async fn changed(&mut self) -> bool {
        self.rx.changed().await.is_ok()
    }

    pub fn report(&self) -> RoleReport {
        let epoch = self.epoch();
        let v = self.rx.borrow();
        let lease = v.lease.as_ref().filter(|l| !l.holder.is_empty());
        RoleReport {
            role: if epoch.is_some() {
                "leader"
            } else {
                "follower"
            },
            vantage: self.vantage.to_string(),
            epoch: epoch.or(lease.map(|l| l.epoch)),
            leader: lease.map(|l| l.vantage.clone()),
            leader_url: lease.and_then(|l| l.api_url.clone()),
        }
    }
}

/// Holds the SQLite single-instance lock for as long as it lives.
pub struct InstanceLock {
    _file: File,
    pub path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another mxguard instance is serving from {db} (lock {lock} is held); SQLite is single-instance: stop the other one, or use PostgreSQL for several instances")]
    Held { db: String, lock: String },
    #[error("cannot open the instance lock {lock}: {source}")]
    Io {
        lock: String,
        source: std::io::Error,
    },
    #[error("another live mxguard instance uses the vantage name {vantage:?} (it holds the leader lease as {holder} and renewed it just now); give each instance its own [cluster] vantage")]
    Twin { vantage: String, holder: String },
}

/// Several instances on PostgreSQL: refuses to start beside a live instance with the same
/// vantage name. A holder of the lease under this name is either this instance's previous
/// process (crashed or restarted: it renews no more, and the lease is taken over at once) or a
/// misconfigured twin (it renews every third of the TTL); one and a half renewal periods tell
/// them apart, by whether the lease's expiry moved — the store's record, not this clock.
pub async fn refuse_live_twin(store: &dyn Store, cluster: &ClusterConfig) -> Result<(), LockError> {
    let Ok(first) = store.lease().await else {
        return Ok(()); // the store is checked, and reported, by whatever uses it next
    };
    if first.holder.is_empty() || first.vantage != cluster.vantage {
        return Ok(());
    }
    let wait = (cluster.lease_ttl / 3).max(Duration::from_millis(200)) * 3 / 2;
    tracing::info!(vantage = %cluster.vantage, holder = %first.holder, ?wait, "the leader lease is held under this instance's vantage name: waiting to see whether that instance is still alive");
    tokio::time::sleep(wait).await;
    match store.lease().await {
        Ok(again) if again.holder == first.holder && again.expires_at > first.expires_at => {
            Err(LockError::Twin {
                vantage: cluster.vantage.clone(),
                holder: again.holder,
            })
        }
        _ => Ok(()),
    }
}

/// The file of a `sqlite://PATH` URL (`None` for in-memory databases and other backends).
pub fn sqlite_path(url: &StoreUrl) -> Option<PathBuf> {
    if url.kind() != StoreKind::Sqlite {
        return None;
    }
    let raw = url.expose();
    let rest = raw
        .strip_prefix("sqlite://")
        .or_else(|| raw.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && !path.contains(":memory:")).then(|| PathBuf::from(path))
}

/// Takes `<db>.lock` exclusively (released by the kernel when the process dies, so a crash
/// never leaves it behind).
pub fn lock_sqlite(url: &StoreUrl) -> Result<Option<InstanceLock>, LockError> {
    let Some(db) = sqlite_path(url) else {
        return Ok(None);
    };
    let mut lock = db.clone().into_os_string();
    lock.push(".lock");
    let path = PathBuf::from(lock);
    let shown = path.display().to_string();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| LockError::Io {
            lock: shown.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(Some(InstanceLock { _file: file, path })),
        Err(std::fs::TryLockError::WouldBlock) => Err(LockError::Held {
            db: db.display().to_string(),
            lock: shown,
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(LockError::Io {
            lock: shown,
            source,
        }),
    }
}

/// Keeps (or waits for) the lease in the background.
pub struct LeaseKeeper {
    store: Arc<dyn Store>,
    claim: LeaseClaim,
    single_instance: bool,
    clock: Arc<dyn Clock>,
    tx: watch::Sender<View>,
}

impl LeaseKeeper {
    pub fn new(
        store: Arc<dyn Store>,
        cluster: &ClusterConfig,
        clock: Arc<dyn Clock>,
    ) -> (LeaseKeeper, Leadership) {
        let single_instance = store.kind() == StoreKind::Sqlite;
        let holder = format!(
            "{}/{}-{}",
            cluster.vantage,
            std::process::id(),
            Utc::now().timestamp_millis()
        );
        let claim = LeaseClaim {
            holder,
            vantage: cluster.vantage.clone(),
            api_url: cluster.advertise_url.clone(),
            ttl: cluster.lease_ttl,
            takeover: if single_instance {
                Takeover::Always
            } else {
                Takeover::IfExpiredOrSameVantage
            },
        };
        let (tx, rx) = watch::channel(View {
            epoch: None,
            valid_until: None,
            lease: None,
        });
        let leadership = Leadership {
            vantage: cluster.vantage.as_str().into(),
            rx,
            clock: clock.clone(),
        };
        let keeper = LeaseKeeper {
            store,
            claim,
            single_instance,
            clock,
            tx,
        };
        (keeper, leadership)
    }

    /// One attempt: take the lease (follower) or renew it (leader). Public so tests can step it.
    pub async fn tick(&mut self) {
        let sent = self.clock.now();
        // Trusted locally for 4/5 of the TTL: a follower takes over only after all of it.
        // SQLite: the instance lock already excludes every other writer, so no expiry.
        let valid_until = (!self.single_instance).then(|| sent + self.claim.ttl * 4 / 5);
        let current = self.tx.borrow().clone();
        match current.epoch {
            None => match self
                .store
                .acquire_lease(&self.claim, LeaseClock::STORE)
                .await
            {
                Ok(lease) if lease.holder == self.claim.holder => {
                    tracing::info!(
                        vantage = %self.claim.vantage,
                        epoch = lease.epoch,
                        "leader lease taken; this instance now decides and writes"
                    );
                    self.tx.send_replace(View {
                        epoch: Some(lease.epoch),
                        valid_until,
                        lease: Some(lease),
                    });
                }
                Ok(lease) => {
                    if current.lease.as_ref().map(|l| l.epoch) != Some(lease.epoch) {
                        tracing::info!(
                            leader = %lease.vantage,
                            epoch = lease.epoch,
                            "following: another instance holds the leader lease"
                        );
                    }
                    self.tx.send_replace(View {
                        epoch: None,
                        valid_until: None,
                        lease: Some(lease),
                    });
                }
                Err(e) => tracing::warn!(error = %e, "cannot read or take the leader lease"),
            },
            Some(epoch) => {
                let renewed = self
                    .store
                    .renew_lease(&self.claim.holder, epoch, self.claim.ttl, LeaseClock::STORE)
                    .await;
                match renewed {
                    Ok(true) => {
                        self.tx.send_modify(|v| v.valid_until = valid_until);
                    }
                    Ok(false) => {
                        let lease = self.store.lease().await.ok();
                        tracing::warn!(
                            epoch,
                            now_held_by = lease.as_ref().map(|l| l.vantage.as_str()).unwrap_or("?"),
                            "leader lease lost (it ran out and another instance took it); stepping down"
                        );
                        self.tx.send_replace(View {
                            epoch: None,
                            valid_until: None,
                            lease,
                        });
                    }
                    Err(e) => {
                        let expired = current.valid_until.is_some_and(|t| self.clock.now() >= t);
                        tracing::warn!(error = %e, epoch, expired, "cannot renew the leader lease");
                        if expired {
                            self.tx.send_replace(View {
                                epoch: None,
                                valid_until: None,
                                lease: current.lease,
                            });
                        }
                    }
                }
            }
        }
        let seen = self.tx.borrow().clone();
        metrics::gauge!("mxguard_leader").set(if seen.epoch.is_some() { 1.0 } else { 0.0 });
        if let Some(l) = &seen.lease {
            metrics::gauge!("mxguard_lease_epoch").set(l.epoch as f64);
        }
        // After the first attempt a restarted twin no longer steals: it waits like the others.
        if !self.single_instance {
            self.claim.takeover = Takeover::IfExpired;
        }
    }

    /// Renews every third of the TTL until `shutdown`, then lets the lease go so a follower
    /// takes over at once.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let every = (self.claim.ttl / 3).max(Duration::from_millis(200));
        loop {
            self.tick().await;
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.clock.sleep(every) => {}
            }
        }
        let epoch = self.tx.borrow().epoch;
        if let Some(epoch) = epoch {
            self.tx.send_replace(View {
                epoch: None,
                valid_until: None,
                lease: None,
            });
            match self.store.release_lease(&self.claim.holder, epoch).await {
                Ok(()) => tracing::info!(epoch, "leader lease released"),
                Err(e) => {
                    tracing::warn!(error = %e, "leader lease not released; it runs out by itself")
                }
            }
        }
    }
}
