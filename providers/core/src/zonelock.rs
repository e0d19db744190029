//! One change in flight per zone: a map of async mutexes keyed by zone name.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

use crate::Fqdn;

/// Hands out one async lock per zone. Zones are few (one per managed domain), so entries are
/// kept for the life of the map.
#[derive(Debug, Default)]
pub struct ZoneLocks {
    locks: Mutex<HashMap<Fqdn, Arc<AsyncMutex<()>>>>,
}

/// Held while a change to one zone is in flight; dropping it lets the next one go.
pub type ZoneGuard = OwnedMutexGuard<()>;

impl ZoneLocks {
    pub fn new() -> Self {
        ZoneLocks::default()
    }

    /// Waits until no other change to `zone` is in flight, then holds the zone.
    pub async fn lock(&self, zone: &Fqdn) -> ZoneGuard {
        let lock = {
            let mut map = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(map.entry(zone.clone()).or_default())
        };
        lock.lock_owned().await
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use super::*;

    fn zone(s: &str) -> Fqdn {
        Fqdn::parse(s).unwrap()
    }

    #[tokio::test]
    async fn same_zone_waits_other_zones_do_not() {
        let locks = ZoneLocks::new();
        let held = locks.lock(&zone("example.com")).await;
        // another zone is free
        let other = locks.lock(&zone("example.net")).await;
        drop(other);
        // the same zone (any spelling) is not
        let same = zone("EXAMPLE.com");
        let mut waiting = Box::pin(locks.lock(&same));
        let polled = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(waiting.as_mut().poll(cx).is_pending())
        })
        .await;
        assert!(polled, "second lock on the same zone must wait");
        drop(held);
        let _now_ours = waiting.await;
    }
}
