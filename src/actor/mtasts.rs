//! The domain's MTA-STS finding in: kept for the status, and (on the leader) handed to the
//! machine, which alerts and decides failovers on it (`machine.rs`, `mta_sts`).

use std::sync::Arc;

use crate::machine::{Input, MtaStsAction};
use crate::mtasts::watch::MtaStsView;

use super::Actor;

impl Actor {
    pub(super) async fn on_mta_sts(&mut self, view: MtaStsView) {
        self.mta_sts = Some(Arc::new(view));
        if self.leading {
            self.sync_mta_sts().await;
        }
    }

    /// Tells the machine the latest finding when it differs from what it was last told (a
    /// takeover tells it what this instance found). With `mta_sts = "off"` a finding persisted
    /// under an earlier setting is cleared.
    pub(super) async fn sync_mta_sts(&mut self) {
        let refused = if self.cfg.mta_sts == MtaStsAction::Off {
            None
        } else {
            match &self.mta_sts {
                Some(view) => view.refused(),
                None => return,
            }
        };
        if refused == self.state.machine.mta_sts_refused {
            return;
        }
        if let Err(e) = self
            .input(Input::MtaSts { refused }, "automation", None)
            .await
        {
            tracing::warn!(domain = %self.cfg.name, error = %e, "MTA-STS finding not recorded; told again at the next look");
        }
    }
}
