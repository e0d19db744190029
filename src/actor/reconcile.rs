//! Reading what the provider serves: at recovery, periodically in the background, and for dry
//! runs; what it finds goes to the machine (drift included).

use serde_json::json;
use tokio::sync::oneshot;

use crate::config::Drift;
use crate::events::EventKind;
use crate::machine::Input;
use crate::model::{RecordSet, Side};
use crate::plan::Plan;

use super::change::desired_records;
use super::{Actor, Msg};

/// How long a dry run may wait for the provider.
pub const DRY_RUN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

impl Actor {
    /// A read of the published records failed. One that retries will not fix (credentials, a
    /// zone the credentials cannot see, a zone id naming another zone) is alerted once per
    /// episode: until it is fixed nothing can be published, and an outage would find it.
    pub(super) async fn on_read_failed(&mut self, e: &mxguard_core::ProviderError) {
        tracing::warn!(domain = %self.cfg.name, error = %e, "cannot read the published records");
        if e.is_retryable() || self.read_alerted {
            return;
        }
        self.read_alerted = true;
        let message = format!(
            "cannot read {}'s records at provider {}: {e}; nothing can be published until this is fixed",
            self.cfg.name, self.cfg.provider
        );
        self.event(
            EventKind::ProviderReadFailed,
            message,
            json!({"provider": self.cfg.provider, "kind": e.kind()}),
        )
        .await;
    }

    /// Reads what the provider serves, waiting for it (at recovery), and tells the machine.
    pub(super) async fn observe(&mut self) {
        if !self.leading {
            return;
        }
        let reads = self.read_all(false).await;
        self.on_read_all(reads).await;
    }

    /// The periodic reconcile: reads in a child task at background priority (after any
    /// change's requests at the provider) and reports back, so the actor keeps handling
    /// rounds and commands while the read waits for the provider's budget.
    pub(super) fn start_observe(&mut self) {
        if !self.leading || self.observing || self.change_running {
            return;
        }
        self.observing = true;
        // Not knowing what is published, automation cannot act: that read is as urgent as a
        // change's. Otherwise it is a check, and waits behind the changes of other domains.
        let background = self.state.machine.published.is_some();
        let (read, tx, changes) = (
            self.read_all(background),
            self.tx.clone(),
            self.changes_started,
        );
        tokio::spawn(async move {
            let reads = read.await;
            let _ = tx.send(Msg::Observed { changes, reads }).await;
        });
    }

    /// What the provider serves: tells the machine; reports drift once per episode.
    pub(super) async fn on_observed(&mut self, live: Vec<RecordSet>) {
        self.read_alerted = false;
        let published = self.managed.which_side(&live);
        let ttl = self.managed.ttl_of(&live);
        let drift = published.is_none() && !self.change_running;
        if drift && !self.drift {
            let shown: Vec<String> = live.iter().map(|s| s.to_string()).collect();
            self.event(
                EventKind::Drift,
                format!(
                    "published records match neither side ({}); {}",
                    if shown.is_empty() {
                        "none".into()
                    } else {
                        shown.join(" | ")
                    },
                    if self.cfg.drift == Drift::Correct {
                        "the controller decides whether to restore the published side"
                    } else {
                        "left alone (drift = \"report\")"
                    }
                ),
                json!({"live": live}),
            )
            .await;
        }
        self.drift = drift;
        if published != self.state.machine.published || ttl != self.state.machine.published_ttl {
            let _ = self
                .input(Input::Observed { published, ttl }, "automation", None)
                .await;
        }
    }

    /// A dry run, answered from a task of its own: its provider read waits behind changes at
    /// background priority and may take long, and the actor keeps handling rounds and commands
    /// meanwhile (a read token asking for plans must not stall a failover).
    pub(super) fn start_dry_run(
        &self,
        side: Option<Side>,
        reply: oneshot::Sender<Result<Plan, String>>,
    ) {
        let m = &self.state.machine;
        let side = side
            .or(m.in_flight)
            .or(m.published)
            .unwrap_or(Side::Primary);
        let (store, managed, state) = (
            self.deps.store.clone(),
            self.managed.clone(),
            self.state.clone(),
        );
        let (provider, failover_ttl) = (self.deps.background.clone(), self.cfg.failover_ttl);
        tokio::spawn(async move {
            let work = async {
                let live_ttl = state.machine.published_ttl;
                let desired =
                    desired_records(&*store, &managed, failover_ttl, &state, side, live_ttl)
                        .await
                        .map_err(|e| e.to_string())?;
                let actual = provider
                    .read(&managed.zone, &managed.keys())
                    .await
                    .map_err(|e| e.to_string())?;
                managed.plan(desired, actual).map_err(|e| e.to_string())
            };
            let answer = tokio::time::timeout(DRY_RUN_TIMEOUT, work)
                .await
                .unwrap_or_else(|_| {
                    Err(format!(
                        "the provider did not answer within {}s; nothing was changed",
                        DRY_RUN_TIMEOUT.as_secs()
                    ))
                });
            let _ = reply.send(answer);
        });
    }
}
