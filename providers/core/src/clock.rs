//! Time, injected. The retry and rate-limit machinery never reads the system clock or sleeps
//! on its own: it asks a [`Clock`]. Production uses [`TokioClock`]; tests use [`ManualClock`],
//! whose time only moves when the test says so, so backoff and deadlines are tested without
//! real sleeping.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

/// A future that completes when a [`Clock`] says the time has come.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A source of monotonic time that can also wait.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Instant;
    fn sleep(&self, duration: Duration) -> Sleep;
}

/// The real clock: `Instant::now()` and `tokio::time::sleep`.
#[derive(Clone, Copy, Debug, Default)]
pub struct TokioClock;

impl Clock for TokioClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn sleep(&self, duration: Duration) -> Sleep {
        Box::pin(tokio::time::sleep(duration))
    }
}

/// A clock for tests. Time starts at the moment of creation and moves only through
/// [`advance`](ManualClock::advance) (or [`drive`](ManualClock::drive), which advances it to
/// the next pending sleep whenever the driven future has nothing else to do).
#[derive(Clone, Debug)]
pub struct ManualClock {
    shared: Arc<Mutex<Shared>>,
}

#[derive(Debug)]
struct Shared {
    origin: Instant,
    elapsed: Duration,
    next_id: u64,
    waiters: Vec<Waiter>,
}

#[derive(Debug)]
struct Waiter {
    id: u64,
    deadline: Duration,
    waker: Waker,
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock::new()
    }
}

impl ManualClock {
    pub fn new() -> Self {
        ManualClock {
            shared: Arc::new(Mutex::new(Shared {
                origin: Instant::now(),
                elapsed: Duration::ZERO,
                next_id: 0,
                waiters: Vec::new(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// How much virtual time has passed since the clock was created.
    pub fn elapsed(&self) -> Duration {
        self.lock().elapsed
    }

    /// Moves time forward by `by` and wakes every sleep that is now due.
    pub fn advance(&self, by: Duration) {
        let due: Vec<Waker> = {
            let mut s = self.lock();
            s.elapsed += by;
            let now = s.elapsed;
            let (due, pending): (Vec<Waiter>, Vec<Waiter>) =
                s.waiters.drain(..).partition(|w| w.deadline <= now);
            s.waiters = pending;
            due.into_iter().map(|w| w.waker).collect()
        };
        due.into_iter().for_each(Waker::wake);
    }

    /// The time until the earliest pending sleep ends, if any sleep is pending.
    pub fn next_wake(&self) -> Option<Duration> {
        let s = self.lock();
        s.waiters
            .iter()
            .map(|w| w.deadline.saturating_sub(s.elapsed))
            .min()
    }

    /// Runs `fut` to completion, jumping time to the next pending sleep whenever `fut` is
    /// idle: pending, not woken, and still not woken after other tasks had a few turns. Only
    /// for futures that wait on this clock or on in-process work; a future waiting on real
    /// I/O would see its sleeps end early.
    pub async fn drive<F: Future>(&self, fut: F) -> F::Output {
        let mut fut = std::pin::pin!(fut);
        loop {
            let flag = Arc::new(WokenFlag::default());
            let polled = std::future::poll_fn(|cx| {
                flag.set_inner(cx.waker());
                let waker = Waker::from(Arc::clone(&flag));
                let mut inner_cx = Context::from_waker(&waker);
                Poll::Ready(fut.as_mut().poll(&mut inner_cx))
            })
            .await;
            if let Poll::Ready(out) = polled {
                return out;
            }
            for _ in 0..16 {
                if flag.woken.load(Ordering::SeqCst) {
                    break;
                }
                tokio::task::yield_now().await;
            }
            if flag.woken.load(Ordering::SeqCst) {
                continue;
            }
            match self.next_wake() {
                Some(wait) => self.advance(wait),
                None => tokio::task::yield_now().await,
            }
        }
    }
}

/// Records whether the driven future asked to be polled again, and passes the wake on.
#[derive(Default)]
struct WokenFlag {
    woken: AtomicBool,
    inner: Mutex<Option<Waker>>,
}

impl WokenFlag {
    fn set_inner(&self, waker: &Waker) {
        *self.inner.lock().unwrap_or_else(|p| p.into_inner()) = Some(waker.clone());
    }
}

impl Wake for WokenFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::SeqCst);
        if let Some(w) = self
            .inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            w.wake_by_ref();
        }
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        let s = self.lock();
        s.origin + s.elapsed
    }

    fn sleep(&self, duration: Duration) -> Sleep {
        let mut s = self.lock();
        let id = s.next_id;
        s.next_id += 1;
        let deadline = s.elapsed.saturating_add(duration);
        drop(s);
        Box::pin(ManualSleep {
            clock: self.clone(),
            id,
            deadline,
        })
    }
}

struct ManualSleep {
    clock: ManualClock,
    id: u64,
    deadline: Duration,
}

impl Future for ManualSleep {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut s = self.clock.lock();
        if s.elapsed >= self.deadline {
            s.waiters.retain(|w| w.id != self.id);
            return Poll::Ready(());
        }
        match s.waiters.iter_mut().find(|w| w.id == self.id) {
            Some(w) => w.waker.clone_from(cx.waker()),
            None => s.waiters.push(Waiter {
                id: self.id,
                deadline: self.deadline,
                waker: cx.waker().clone(),
            }),
        }
        Poll::Pending
    }
}

impl Drop for ManualSleep {
    fn drop(&mut self) {
        self.clock.lock().waiters.retain(|w| w.id != self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn manual_sleep_ends_only_when_time_is_advanced() {
        let clock = ManualClock::new();
        let start = clock.now();
        let mut sleep = clock.sleep(Duration::from_secs(10));
        let pending = std::future::poll_fn(|cx| Poll::Ready(sleep.as_mut().poll(cx))).await;
        assert!(pending.is_pending());
        assert_eq!(clock.next_wake(), Some(Duration::from_secs(10)));
        clock.advance(Duration::from_secs(9));
        let still = std::future::poll_fn(|cx| Poll::Ready(sleep.as_mut().poll(cx))).await;
        assert!(still.is_pending());
        clock.advance(Duration::from_secs(1));
        sleep.await;
        assert_eq!(clock.now() - start, Duration::from_secs(10));
        assert_eq!(clock.next_wake(), None);
    }

    #[tokio::test]
    async fn drive_jumps_to_each_sleep_in_turn() {
        let clock = ManualClock::new();
        let c = clock.clone();
        let out = clock
            .drive(async move {
                c.sleep(Duration::from_millis(250)).await;
                c.sleep(Duration::from_secs(3)).await;
                7
            })
            .await;
        assert_eq!(out, 7);
        assert_eq!(clock.elapsed(), Duration::from_millis(3250));
    }

    #[tokio::test]
    async fn a_dropped_sleep_no_longer_counts_as_pending() {
        let clock = ManualClock::new();
        let sleep = clock.sleep(Duration::from_secs(5));
        let mut sleep = sleep;
        let _ = std::future::poll_fn(|cx| Poll::Ready(sleep.as_mut().poll(cx))).await;
        assert!(clock.next_wake().is_some());
        drop(sleep);
        assert_eq!(clock.next_wake(), None);
    }
}
