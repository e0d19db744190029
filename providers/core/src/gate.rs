//! [`Gate`]: admission to a provider account, so that when many domains want the provider at
//! once (a mass outage) a few operations run at a time and each finishes well inside its
//! deadline, instead of all of them starting together and queuing on the rate limit until
//! their deadlines pass with their outcome unknown. Operations for a change ([`Priority::Change`])
//! are admitted before background reads ([`Priority::Background`]); within a priority, first
//! come, first served. The wait at the gate sends nothing, so it is not part of any deadline.
//!
//! A gate can be closed until a moment ([`Gate::close_until`]): a provider that locked the
//! account out (Cloudflare: every call refused for five minutes after a 429) would refuse
//! anything sent before then. Waiters stay in their queues while it is closed, so when it opens
//! the changes that queued meanwhile go first and background reads follow them.
//!
//! A gate can hold background reads back for a quiet period after each change it admits
//! ([`Gate::set_quiet`]): in a mass outage changes arrive as a stream with gaps of a few
//! milliseconds between them, and a periodic read slipped into each gap spends the budget the
//! next changes need. Reads resume once no change has been admitted for that long.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::clock::{Clock, TokioClock};

/// Who is asking: a change in progress (its plan read, apply, read-back) or a periodic check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    Change,
    Background,
}

/// At most `limit` operations inside at once; `Change` waiters go first. A place that frees
/// wakes only the waiter next in line (each waiter has its own `Notify`), not every waiter.
pub struct Gate {
    limit: usize,
    state: Mutex<State>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("limit", &self.limit)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// A waiter: its ticket and how to wake it.
type Waiter = (u64, Arc<Notify>);

#[derive(Debug, Default)]
struct State {
    inside: usize,
    next: u64,
    change: VecDeque<Waiter>,
    background: VecDeque<Waiter>,
    /// Nobody is admitted before this moment (the provider's lockout).
    closed_until: Option<Instant>,
    /// Background reads wait this long after the last change admitted.
    quiet: Duration,
    last_change: Option<Instant>,
}

impl State {
    fn queue(&mut self, p: Priority) -> &mut VecDeque<Waiter> {
        match p {
            Priority::Change => &mut self.change,
            Priority::Background => &mut self.background,
        }
    }

    /// The waiter to admit next: the first change, else the first background read.
    fn head(&self) -> Option<&Waiter> {
        self.change.front().or(self.background.front())
    }

    fn is_next(&self, ticket: u64) -> bool {
        self.head().is_some_and(|(id, _)| *id == ticket)
    }

    /// How long the head of the line must still wait at `now`: the lockout, and for a
    /// background read the quiet period after the last change.
    fn hold(&self, priority: Priority, now: Instant) -> Option<Duration> {
        let quiet_until = match priority {
            Priority::Background => self.last_change.map(|t| t + self.quiet),
            Priority::Change => None,
        };
        self.closed_until
            .max(quiet_until)
            .map(|t| t.saturating_duration_since(now))
            .filter(|left| !left.is_zero())
    }

    /// Wakes the waiter next in line if a place is free (its `Notify` keeps the permit until
    /// it looks, so the wake-up cannot be lost).
    fn wake_next(&self, limit: usize) {
        if self.inside < limit {
            if let Some((_, wake)) = self.head() {
                wake.notify_one();
            }
        }
    }
}

/// Held while an operation runs; leaving lets the next waiter in.
#[derive(Debug)]
pub struct Pass {
    gate: Arc<Gate>,
}

impl Drop for Pass {
    fn drop(&mut self) {
        let mut s = self.gate.lock();
        s.inside -= 1;
        s.wake_next(self.gate.limit);
    }
}

/// A place in a queue; dropped before admission (the caller gave up), it leaves the queue.
struct Ticket<'a> {
    gate: &'a Gate,
    priority: Priority,
    id: u64,
    admitted: bool,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if !self.admitted {
            let mut s = self.gate.lock();
            s.queue(self.priority).retain(|(t, _)| *t != self.id);
            // It may have been next in line (and even woken): pass the turn on.
            s.wake_next(self.gate.limit);
        }
    }
}

impl Gate {
    /// `limit` operations at once (at least 1), on the real clock.
    pub fn new(limit: usize) -> Arc<Gate> {
        Gate::with_clock(limit, Arc::new(TokioClock))
    }

    /// As [`Gate::new`], timing a closed gate on `clock`.
    pub fn with_clock(limit: usize, clock: Arc<dyn Clock>) -> Arc<Gate> {
        Arc::new(Gate {
            limit: limit.max(1),
            state: Mutex::new(State::default()),
            clock,
        })
    }

    /// Admits nobody before `until`. A later moment extends the closure; an earlier one never
    /// shortens it (two 429s answered out of order must not open the gate early).
    pub fn close_until(&self, until: Instant) {
        let mut s = self.lock();
        if s.closed_until.is_none_or(|t| t < until) {
            s.closed_until = Some(until);
        }
    }

    /// Closes the gate for `duration` from now (see [`Gate::close_until`]).
    pub fn close_for(&self, duration: Duration) {
        self.close_until(self.clock.now() + duration);
    }

    /// Holds background reads back until no change has been admitted for `quiet` (zero, the
    /// default: no hold).
    pub fn set_quiet(&self, quiet: Duration) {
        self.lock().quiet = quiet;
    }

    /// How long the gate stays closed, if it is.
    pub fn closed_for(&self) -> Option<Duration> {
        let until = self.lock().closed_until?;
        let left = until.saturating_duration_since(self.clock.now());
        (!left.is_zero()).then_some(left)
    }

    /// The clock the gate times its closures on.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Operations inside and waiting at each priority (for logs and tests).
    pub fn occupancy(&self) -> (usize, usize, usize) {
        let s = self.lock();
        (s.inside, s.change.len(), s.background.len())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a few counters, consistent after every statement: a panic elsewhere
        // while it was held leaves nothing half-done.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits for a place; cancel-safe (a dropped wait leaves the queue).
    pub async fn enter(self: &Arc<Self>, priority: Priority) -> Pass {
        let wake = Arc::new(Notify::new());
        let mut ticket = {
            let mut s = self.lock();
            let id = s.next;
            s.next += 1;
            s.queue(priority).push_back((id, wake.clone()));
            Ticket {
                gate: self,
                priority,
                id,
                admitted: false,
            }
        };
        loop {
            let closed = {
                let mut s = self.lock();
                let now = self.clock.now();
                if s.inside < self.limit && s.is_next(ticket.id) {
                    match s.hold(priority, now) {
                        // Only the head of the line watches the clock; the rest wait their turn
                        // (a change arriving meanwhile goes before a held read: it is the head).
                        Some(left) => Some(left),
                        None => {
                            s.queue(priority).pop_front();
                            s.inside += 1;
                            if priority == Priority::Change && !s.quiet.is_zero() {
                                s.last_change = Some(now);
                            }
                            ticket.admitted = true;
                            // Several places may be free at once: the next in line may fit too.
                            s.wake_next(self.limit);
                            return Pass { gate: self.clone() };
                        }
                    }
                } else {
                    None
                }
            };
            match closed {
                Some(left) => {
                    tokio::select! {
                        () = self.clock.sleep(left) => {}
                        () = wake.notified() => {}
                    }
                }
                None => wake.notified().await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn settle() {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn no_more_than_the_limit_are_inside() {
        let gate = Gate::new(2);
        let a = gate.enter(Priority::Change).await;
        let _b = gate.enter(Priority::Background).await;
        let g = gate.clone();
        let third = tokio::spawn(async move { g.enter(Priority::Change).await });
        settle().await;
        assert_eq!(gate.occupancy(), (2, 1, 0));
        assert!(!third.is_finished());
        drop(a);
        let _c = tokio::time::timeout(Duration::from_secs(5), third)
            .await
            .expect("admitted after a place freed")
            .expect("task");
        assert_eq!(gate.occupancy(), (2, 0, 0));
    }

    #[tokio::test]
    async fn changes_go_before_background_reads_that_waited_longer() {
        let gate = Gate::new(1);
        let first = gate.enter(Priority::Background).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (name, p) in [
            ("read-1", Priority::Background),
            ("read-2", Priority::Background),
            ("change-1", Priority::Change),
            ("change-2", Priority::Change),
        ] {
            let (g, order) = (gate.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _pass = g.enter(p).await;
                order.lock().unwrap().push(name);
                settle().await;
            }));
            settle().await; // queue in this order
        }
        assert_eq!(gate.occupancy(), (1, 2, 2));
        drop(first);
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(5), t)
                .await
                .expect("every waiter gets in")
                .expect("task");
        }
        assert_eq!(
            *order.lock().unwrap(),
            vec!["change-1", "change-2", "read-1", "read-2"]
        );
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_leaves_the_queue_and_lets_the_next_in() {
        let gate = Gate::new(1);
        let inside = gate.enter(Priority::Change).await;
        let g = gate.clone();
        let impatient = tokio::spawn(async move { g.enter(Priority::Change).await });
        settle().await;
        let g = gate.clone();
        let patient = tokio::spawn(async move { g.enter(Priority::Background).await });
        settle().await;
        assert_eq!(gate.occupancy(), (1, 1, 1));
        impatient.abort();
        let _ = impatient.await;
        assert_eq!(
            gate.occupancy(),
            (1, 0, 1),
            "the aborted wait left its queue"
        );
        drop(inside);
        let _pass = tokio::time::timeout(Duration::from_secs(5), patient)
            .await
            .expect("the background read is admitted once nothing is ahead of it")
            .expect("task");
        assert_eq!(gate.occupancy(), (1, 0, 0));
    }

    #[tokio::test]
    async fn background_reads_wait_until_no_change_was_admitted_for_the_quiet_period() {
        let clock = crate::clock::ManualClock::new();
        let gate = Gate::with_clock(4, Arc::new(clock.clone()));
        gate.set_quiet(Duration::from_secs(5));
        drop(gate.enter(Priority::Change).await);
        let g = gate.clone();
        let read = tokio::spawn(async move { g.enter(Priority::Background).await });
        settle().await;
        assert_eq!(
            gate.occupancy(),
            (0, 0, 1),
            "free places, yet the read waits"
        );
        clock.advance(Duration::from_secs(4));
        settle().await;
        assert!(!read.is_finished());
        // A change a moment before the quiet period ends goes in at once and starts it again.
        let change = tokio::time::timeout(Duration::from_secs(5), gate.enter(Priority::Change))
            .await
            .expect("a change is not held back");
        drop(change);
        clock.advance(Duration::from_secs(4));
        settle().await;
        assert!(!read.is_finished(), "4 s after the last change");
        clock.advance(Duration::from_secs(1));
        let _pass = tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .expect("admitted 5 s after the last change")
            .expect("task");
        // Without a quiet period nothing is held back.
        let plain = Gate::with_clock(4, Arc::new(clock.clone()));
        drop(plain.enter(Priority::Change).await);
        let _read = tokio::time::timeout(Duration::from_secs(5), plain.enter(Priority::Background))
            .await
            .expect("no hold by default");
    }

    #[tokio::test]
    async fn a_closed_gate_admits_nobody_until_it_opens_and_then_the_changes_go_first() {
        let clock = crate::clock::ManualClock::new();
        let gate = Gate::with_clock(1, Arc::new(clock.clone()));
        gate.close_for(Duration::from_secs(300));
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        // The background read queued first, the changes during the lockout.
        for (name, p) in [
            ("read", Priority::Background),
            ("change-1", Priority::Change),
            ("change-2", Priority::Change),
        ] {
            let (g, order) = (gate.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _pass = g.enter(p).await;
                order.lock().unwrap().push(name);
                settle().await;
            }));
            settle().await;
        }
        assert_eq!(gate.occupancy(), (0, 2, 1));
        clock.advance(Duration::from_secs(299));
        settle().await;
        assert!(order.lock().unwrap().is_empty(), "admitted while closed");
        assert_eq!(gate.closed_for(), Some(Duration::from_secs(1)));
        clock.advance(Duration::from_secs(1));
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(5), t)
                .await
                .expect("every waiter gets in once the gate opens")
                .expect("task");
        }
        assert_eq!(*order.lock().unwrap(), vec!["change-1", "change-2", "read"]);
        assert_eq!(gate.closed_for(), None);
    }

    #[tokio::test]
    async fn a_closure_is_extended_never_shortened() {
        let clock = crate::clock::ManualClock::new();
        let gate = Gate::with_clock(4, Arc::new(clock.clone()));
        gate.close_for(Duration::from_secs(300));
        gate.close_for(Duration::from_secs(10));
        assert_eq!(gate.closed_for(), Some(Duration::from_secs(300)));
        gate.close_for(Duration::from_secs(400));
        assert_eq!(gate.closed_for(), Some(Duration::from_secs(400)));
        clock.advance(Duration::from_secs(400));
        assert_eq!(gate.closed_for(), None);
        let _pass = tokio::time::timeout(Duration::from_secs(5), gate.enter(Priority::Background))
            .await
            .expect("open again");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn under_contention_everyone_gets_in_and_the_limit_holds() {
        let gate = Gate::new(3);
        let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let now = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for i in 0..200 {
            let (g, peak, now) = (gate.clone(), peak.clone(), now.clone());
            tasks.push(tokio::spawn(async move {
                let p = if i % 3 == 0 {
                    Priority::Change
                } else {
                    Priority::Background
                };
                let _pass = g.enter(p).await;
                let n = now.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                peak.fetch_max(n, std::sync::atomic::Ordering::SeqCst);
                tokio::task::yield_now().await;
                now.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            }));
        }
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("no waiter is left behind")
                .expect("task");
        }
        let peak = peak.load(std::sync::atomic::Ordering::SeqCst);
        assert!((1..=3).contains(&peak), "{peak} inside at once");
        assert_eq!(gate.occupancy(), (0, 0, 0));
    }
}
