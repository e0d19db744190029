//! [`Gate`]: admission to a provider account, so that when many domains want the provider at
//! once (a mass outage) a few operations run at a time and each finishes well inside its
//! deadline, instead of all of them starting together and queuing on the rate limit until
//! their deadlines pass with their outcome unknown. Operations for a change ([`Priority::Change`])
//! are admitted before background reads ([`Priority::Background`]); within a priority, first
//! come, first served. The wait at the gate sends nothing, so it is not part of any deadline.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

/// Who is asking: a change in progress (its plan read, apply, read-back) or a periodic check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    Change,
    Background,
}

/// At most `limit` operations inside at once; `Change` waiters go first. A place that frees
/// wakes only the waiter next in line (each waiter has its own `Notify`), not every waiter.
#[derive(Debug)]
pub struct Gate {
    limit: usize,
    state: Mutex<State>,
}

/// A waiter: its ticket and how to wake it.
type Waiter = (u64, Arc<Notify>);

#[derive(Debug, Default)]
struct State {
    inside: usize,
    next: u64,
    change: VecDeque<Waiter>,
    background: VecDeque<Waiter>,
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
    /// `limit` operations at once (at least 1).
    pub fn new(limit: usize) -> Arc<Gate> {
        Arc::new(Gate {
            limit: limit.max(1),
            state: Mutex::new(State::default()),
        })
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
            {
                let mut s = self.lock();
                if s.inside < self.limit && s.is_next(ticket.id) {
                    s.queue(priority).pop_front();
                    s.inside += 1;
                    ticket.admitted = true;
                    // Several places may be free at once: the next in line may fit too.
                    s.wake_next(self.limit);
                    return Pass { gate: self.clone() };
                }
            }
            wake.notified().await;
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
