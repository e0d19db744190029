//! Leadership: a domain's automation starts when this instance takes the lease (loading the
//! persisted state and resuming an unfinished change) and stops when it is lost.

use serde_json::json;

use crate::events::EventKind;
use crate::model::BySide;
use crate::store::StoreError;

use super::Actor;

impl Actor {
    /// Takes up automation when this instance has become the leader (loading the state and
    /// resuming what the previous leader or a crash left unfinished), and drops it when the
    /// lease is gone.
    pub(super) async fn follow_leadership(&mut self) {
        let leader = self.deps.fence.is_leader();
        if leader && !self.leading {
            self.leading = true;
            // Every actor may ask at once: the loader reads their states in a few batched
            // queries (every actor reading on its own timed out the store's read pool: 2,111
            // failed loads at 5,000 domains). Waiting for the batch loses nothing: the inbox
            // keeps the newest rounds meanwhile.
            match self.recover().await {
                Ok(()) => {}
                Err(e) => {
                    self.leading = false;
                    tracing::error!(domain = %self.cfg.name, error = %e, "cannot load the domain's state; automation waits (retried at the next round)")
                }
            }
            // The steps after the load are boxed: every actor waits in the load at once at
            // start, and inline they would size that wait (1.8 KB a domain).
            if self.leading {
                Box::pin(self.sync_mta_sts()).await;
            }
            if self.leading && self.own.present().next().is_some() {
                // A takeover decides on the votes known now rather than at the next health
                // change. Right after a start (no round of its own yet) it waits for its first
                // round: deciding on no votes would feed Unknown and restart a failback hold.
                Box::pin(self.decide()).await;
            }
        } else if !leader && self.leading {
            self.leading = false;
            self.retry_at = None;
            // The next leader's reconcile read finds the providers behind again.
            self.behind = None;
            self.combined = BySide::default();
            self.stop_publishing();
            tracing::warn!(domain = %self.cfg.name, "not the leader any more; automation stops here (followers probe and store their vantage's verdicts)");
        }
    }

    /// Loads the persisted state and resumes what a crash interrupted.
    pub(super) async fn recover(&mut self) -> Result<(), StoreError> {
        let loaded = self.loader.recovery(&self.cfg.name).await?;
        Box::pin(self.resume(loaded)).await
    }

    /// Takes up the loaded state and resumes an unfinished change.
    async fn resume(&mut self, loaded: super::Loaded) -> Result<(), StoreError> {
        let epoch = self.deps.fence.epoch().unwrap_or_default();
        if let Some(row) = loaded.state {
            self.state = serde_json::from_value(row.state)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            self.version = Some(row.version);
            tracing::info!(domain = %self.cfg.name, phase = ?self.state.machine.phase, "state restored");
        }
        let unfinished = loaded.unfinished;
        // A TTL write in flight (early TTL lowering or its restore) is resumed like a move.
        match self.state.machine.writing() {
            Some(side) => {
                // What is live decides how the resumed change is planned: read it first.
                self.observe().await;
                // Each provider resumes its own (a zone served by several has one per provider).
                if let Some(c) = unfinished.last() {
                    self.event(
                        EventKind::Change,
                        format!(
                            "resuming change {} ({}, epoch {}) left unfinished by a restart or a leader takeover",
                            c.id, c.status, c.epoch
                        ),
                        json!({"change": c.id}),
                    )
                    .await;
                }
                self.start_change(side, unfinished).await;
            }
            None => {
                for c in unfinished {
                    let why = "abandoned: no change was in flight at restart";
                    let _ = self
                        .store()
                        .set_change_status(
                            c.id,
                            crate::store::ChangeStatus::Failed,
                            Some(why),
                            epoch,
                            self.deps.clock.utc(),
                        )
                        .await;
                }
                // Read in the background: the actor takes rounds meanwhile.
                self.start_observe();
            }
        }
        Ok(())
    }
}
