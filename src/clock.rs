//! Wall-clock time from the injected clock. The machine decides on `DateTime<Utc>` (holds,
//! pins, flap windows); the monitor and the actors read it here, from the same monotonic
//! [`Clock`] they sleep on, so a test's `ManualClock` moves both and nothing reads the system
//! clock behind its back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use mxguard_core::clock::Sleep;
use mxguard_core::{Clock, TokioClock};

/// A monotonic clock and the UTC time at one of its instants.
#[derive(Clone)]
pub struct WallClock {
    clock: Arc<dyn Clock>,
    epoch: (Instant, DateTime<Utc>),
}

impl Default for WallClock {
    /// The system's clock.
    fn default() -> Self {
        WallClock::new(Arc::new(TokioClock), Utc::now())
    }
}

impl std::fmt::Debug for WallClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WallClock")
            .field("utc", &self.utc())
            .finish()
    }
}

impl WallClock {
    /// `clock`, with `utc_now` as the UTC time of its current instant.
    pub fn new(clock: Arc<dyn Clock>, utc_now: DateTime<Utc>) -> Self {
        let epoch = (clock.now(), utc_now);
        WallClock { clock, epoch }
    }

    pub fn now(&self) -> Instant {
        self.clock.now()
    }

    /// UTC now, as the injected clock has moved since the epoch.
    pub fn utc(&self) -> DateTime<Utc> {
        let since = self.clock.now().saturating_duration_since(self.epoch.0);
        self.epoch.1 + chrono::Duration::from_std(since).unwrap_or_default()
    }

    pub fn sleep(&self, duration: Duration) -> Sleep {
        self.clock.sleep(duration)
    }

    /// Sleeps until `at` (at once when it is past).
    pub fn sleep_until(&self, at: Instant) -> Sleep {
        self.clock
            .sleep(at.saturating_duration_since(self.clock.now()))
    }

    /// Sleeps until the UTC time `at` (at once when it is past).
    pub fn sleep_until_utc(&self, at: DateTime<Utc>) -> Sleep {
        self.clock
            .sleep((at - self.utc()).to_std().unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mxguard_core::ManualClock;

    #[test]
    fn utc_moves_with_the_injected_clock_only() {
        let manual = Arc::new(ManualClock::new());
        let start = DateTime::from_timestamp(1_800_000_000, 0).expect("valid time");
        let wall = WallClock::new(manual.clone(), start);
        assert_eq!(wall.utc(), start);
        manual.advance(Duration::from_secs(90));
        assert_eq!(wall.utc(), start + chrono::Duration::seconds(90));
    }
}
