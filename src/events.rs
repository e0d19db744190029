//! The engine's event bus: every event an actor records in the store's timeline is also
//! published here, with the domain's machine state at that moment, for listeners that act on
//! events (notifications). Publishing never blocks or fails the actor: a listener that falls
//! behind loses the oldest notices and is told how many (`RecvError::Lagged`).

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::machine::DomainState;
use crate::store::Event;

/// Notices kept for a slow listener before the oldest are dropped.
pub const BUS_CAPACITY: usize = 4096;

/// One recorded event and the state of its domain's machine when it was recorded.
#[derive(Debug, Clone)]
pub struct Notice {
    pub event: Event,
    pub state: DomainState,
}

/// Cheap to clone; every clone publishes to the same listeners.
#[derive(Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Arc<Notice>>,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus::new()
    }
}

impl EventBus {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(BUS_CAPACITY);
        EventBus { tx }
    }

    /// A new listener; it sees notices published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Notice>> {
        self.tx.subscribe()
    }

    /// Publishes without waiting; with no listener the notice is simply dropped.
    pub fn publish(&self, event: Event, state: DomainState) {
        let _ = self.tx.send(Arc::new(Notice { event, state }));
    }
}
