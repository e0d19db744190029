use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Semaphore;

use super::*;
use crate::{ManualClock, RecordType};

const WINDOW: Duration = Duration::from_millis(10);

/// Reads pass `Counting::read_hold` while a test holds none of its permits.
const READ_PERMITS: u32 = 1_000_000;

/// A zone in memory that counts reads and listings; listings can be held at a semaphore, and
/// a listing costs a request per `page` RRsets.
struct Counting {
    sets: Mutex<BTreeMap<RrsetKey, RecordSet>>,
    reads: AtomicUsize,
    listings: AtomicUsize,
    hold: Semaphore,
    /// Reads wait here (many permits: they pass).
    read_hold: Semaphore,
    page: usize,
    fail: Option<ProviderError>,
}

impl Counting {
    fn new(domains: usize, page: usize) -> Arc<Counting> {
        let sets = (0..domains)
            .map(|i| {
                let set = mx(i, "mx1");
                (RrsetKey::of(&set), set)
            })
            .collect();
        Arc::new(Counting {
            sets: Mutex::new(sets),
            reads: AtomicUsize::new(0),
            listings: AtomicUsize::new(0),
            hold: Semaphore::new(1),
            read_hold: Semaphore::new(READ_PERMITS as usize),
            page,
            fail: None,
        })
    }
}

fn zone() -> Fqdn {
    Fqdn::parse("example.test").expect("zone")
}

fn key(i: usize) -> RrsetKey {
    RrsetKey::new(
        Fqdn::parse(&format!("d{i}.example.test")).expect("name"),
        RecordType::Mx,
    )
}

fn mx(i: usize, host: &str) -> RecordSet {
    let record = crate::MxRecord::parse(&format!("10 {host}.example.test.")).expect("mx");
    RecordSet::new(
        Fqdn::parse(&format!("d{i}.example.test")).expect("name"),
        RecordType::Mx,
        crate::Ttl::new(300).expect("ttl"),
        [crate::RData::Mx(record)],
    )
    .expect("set")
}

#[async_trait]
impl DnsProvider for Counting {
    fn name(&self) -> &str {
        "counting"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            min_ttl: 0,
            max_ttl: crate::Ttl::MAX,
            max_changes_per_request: 50,
            atomic: true,
            zone_listing: true,
        }
    }

    fn list_cost(&self, rrsets: usize) -> u32 {
        rrsets.div_ceil(self.page).max(1) as u32
    }

    async fn read(&self, _: &Fqdn, keys: &[RrsetKey]) -> Result<Vec<RecordSet>, ProviderError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        let _held = self.read_hold.acquire().await;
        let sets = self.sets.lock().expect("sets");
        Ok(keys.iter().filter_map(|k| sets.get(k).cloned()).collect())
    }

    async fn list_zone(&self, _: &Fqdn) -> Result<Vec<RecordSet>, ProviderError> {
        self.listings.fetch_add(1, Ordering::SeqCst);
        let snapshot: Vec<RecordSet> = self.sets.lock().expect("sets").values().cloned().collect();
        let _held = self.hold.acquire().await;
        if let Some(e) = &self.fail {
            return Err(e.clone());
        }
        Ok(snapshot)
    }

    async fn apply(&self, _: &Fqdn, _: &ChangeSet) -> Result<(), ProviderError> {
        Ok(())
    }
}

async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

/// Asks for `keys` (each a read of its own) and lets windows pass until all are answered;
/// returns the answers.
async fn ask_together(
    provider: &Arc<Coalescing>,
    clock: &ManualClock,
    keys: impl IntoIterator<Item = usize>,
) -> Vec<Result<Vec<RecordSet>, ProviderError>> {
    let asks = ask(provider, keys);
    for _ in 0..1_000 {
        settle().await;
        clock.advance(WINDOW);
        settle().await;
        if asks.iter().all(|a| a.is_finished()) {
            break;
        }
    }
    let mut out = Vec::new();
    for a in asks {
        out.push(a.await.expect("joined"));
    }
    out
}

type Answer = tokio::task::JoinHandle<Result<Vec<RecordSet>, ProviderError>>;

/// Asks for `keys`, each a read of its own, without waiting for the answers.
fn ask(provider: &Arc<Coalescing>, keys: impl IntoIterator<Item = usize>) -> Vec<Answer> {
    keys.into_iter()
        .map(|i| {
            let p = provider.clone();
            tokio::spawn(async move { p.read(&zone(), &[key(i)]).await })
        })
        .collect()
}

fn coalescing(inner: &Arc<Counting>, clock: &ManualClock) -> Arc<Coalescing> {
    Arc::new(Coalescing::new(
        inner.clone(),
        Arc::new(clock.clone()),
        WINDOW,
    ))
}

#[tokio::test]
async fn many_asks_in_one_window_are_one_listing_and_each_gets_its_own_records() {
    let (inner, clock) = (Counting::new(100, 1_000), ManualClock::new());
    let p = coalescing(&inner, &clock);
    // 40 domains that exist and one that has no MX
    let answers = ask_together(&p, &clock, (0..40).chain([500])).await;
    assert_eq!(inner.listings.load(Ordering::SeqCst), 1);
    assert_eq!(inner.reads.load(Ordering::SeqCst), 0);
    for (i, a) in answers.iter().take(40).enumerate() {
        assert_eq!(a.as_ref().expect("answer"), &vec![mx(i, "mx1")]);
    }
    assert_eq!(
        answers[40].as_ref().expect("answer"),
        &Vec::<RecordSet>::new()
    );
}

#[tokio::test]
async fn a_few_asks_are_reads_of_their_own() {
    let (inner, clock) = (Counting::new(100, 1_000), ManualClock::new());
    let p = coalescing(&inner, &clock);
    let answers = ask_together(&p, &clock, 0..3).await;
    assert_eq!(inner.listings.load(Ordering::SeqCst), 0);
    assert_eq!(inner.reads.load(Ordering::SeqCst), 3);
    assert_eq!(answers[2].as_ref().expect("answer"), &vec![mx(2, "mx1")]);
}

#[tokio::test]
async fn once_the_zone_size_is_known_a_listing_is_chosen_only_when_it_costs_less() {
    // 100 RRsets, a page per 25: a listing costs 4 requests
    let (inner, clock) = (Counting::new(100, 25), ManualClock::new());
    let p = coalescing(&inner, &clock);
    ask_together(&p, &clock, 0..20).await;
    assert_eq!(
        inner.listings.load(Ordering::SeqCst),
        1,
        "the first: 20 asks"
    );
    ask_together(&p, &clock, 0..4).await;
    assert_eq!(
        (
            inner.listings.load(Ordering::SeqCst),
            inner.reads.load(Ordering::SeqCst)
        ),
        (1, 4),
        "4 reads cost what a listing does: reads"
    );
    ask_together(&p, &clock, 0..5).await;
    assert_eq!(
        (
            inner.listings.load(Ordering::SeqCst),
            inner.reads.load(Ordering::SeqCst)
        ),
        (2, 4),
        "5 reads cost more: a listing"
    );
}

#[tokio::test]
async fn asks_piling_up_behind_reads_in_flight_become_a_listing() {
    // 1,000 RRsets, a page per 100: a listing costs 10 requests
    let (inner, clock) = (Counting::new(1_000, 100), ManualClock::new());
    let p = coalescing(&inner, &clock);
    ask_together(&p, &clock, 0..20).await;
    assert_eq!(
        inner.listings.load(Ordering::SeqCst),
        1,
        "the first listing"
    );
    // The provider is slow (its rate limit, say): reads wait.
    let slow = inner
        .read_hold
        .acquire_many(READ_PERMITS)
        .await
        .expect("held");
    let mut answers = Vec::new();
    for window in 0..4 {
        // 5 asks a window, each window's fewer than a listing is worth
        answers.extend(ask(&p, window * 5..window * 5 + 5));
        settle().await;
        clock.advance(WINDOW);
        settle().await;
    }
    assert_eq!(
        (
            inner.reads.load(Ordering::SeqCst),
            inner.listings.load(Ordering::SeqCst)
        ),
        (READS_IN_FLIGHT, 2),
        "8 reads in flight; the 12 asks waiting behind them cost more than a listing"
    );
    drop(slow);
    for (i, a) in answers.into_iter().enumerate() {
        assert_eq!(
            a.await.expect("joined").expect("answer"),
            vec![mx(i, "mx1")]
        );
    }
}

#[tokio::test]
async fn an_ask_made_while_a_listing_runs_is_answered_by_a_listing_that_starts_after_it() {
    let (inner, clock) = (Counting::new(100, 1_000), ManualClock::new());
    let held = inner.hold.acquire().await;
    let p = coalescing(&inner, &clock);
    let first: Vec<_> = (0..20)
        .map(|i| {
            let p = p.clone();
            tokio::spawn(async move { p.read(&zone(), &[key(i)]).await })
        })
        .collect();
    settle().await;
    clock.advance(WINDOW);
    settle().await;
    assert_eq!(
        inner.listings.load(Ordering::SeqCst),
        1,
        "the listing started"
    );
    // d0 changes, then asks come while the listing is held
    inner
        .sets
        .lock()
        .expect("sets")
        .insert(key(0), mx(0, "backup"));
    let late: Vec<_> = (0..20)
        .map(|i| {
            let p = p.clone();
            tokio::spawn(async move { p.read(&zone(), &[key(i)]).await })
        })
        .collect();
    settle().await;
    clock.advance(WINDOW);
    settle().await;
    assert_eq!(
        inner.listings.load(Ordering::SeqCst),
        1,
        "no second listing while the first is in flight"
    );
    drop(held);
    for a in first {
        let answer = a.await.expect("joined").expect("answer");
        assert!(answer.is_empty() || answer[0] != mx(0, "backup"));
    }
    settle().await;
    clock.advance(WINDOW);
    let answer = late
        .into_iter()
        .next()
        .expect("one")
        .await
        .expect("joined")
        .expect("answer");
    assert_eq!(
        answer,
        vec![mx(0, "backup")],
        "the late ask sees the change"
    );
    assert_eq!(inner.listings.load(Ordering::SeqCst), 2);
}

fn failing(e: ProviderError) -> Arc<Counting> {
    let mut p = Counting::new(100, 1_000);
    Arc::get_mut(&mut p).expect("alone").fail = Some(e);
    p
}

#[tokio::test]
async fn a_listing_failing_for_a_passing_reason_is_read_instead_and_not_tried_again_for_a_while() {
    let (inner, clock) = (
        failing(ProviderError::Transient("timeout".into())),
        ManualClock::new(),
    );
    let p = coalescing(&inner, &clock);
    let answers = ask_together(&p, &clock, 0..20).await;
    assert_eq!(
        answers[3].as_ref().expect("read instead"),
        &vec![mx(3, "mx1")]
    );
    ask_together(&p, &clock, 0..20).await;
    assert_eq!(
        (
            inner.listings.load(Ordering::SeqCst),
            inner.reads.load(Ordering::SeqCst)
        ),
        (1, 40),
        "backing off: reads"
    );
    clock.advance(LIST_BACKOFF);
    ask_together(&p, &clock, 0..20).await;
    assert_eq!(inner.listings.load(Ordering::SeqCst), 2, "listed again");
}

#[tokio::test]
async fn a_listing_the_provider_refuses_is_never_tried_again_and_its_asks_are_read() {
    let (inner, clock) = (
        failing(ProviderError::Auth("transfer refused".into())),
        ManualClock::new(),
    );
    let p = coalescing(&inner, &clock);
    let answers = ask_together(&p, &clock, 0..20).await;
    assert_eq!(
        answers[7].as_ref().expect("read instead"),
        &vec![mx(7, "mx1")]
    );
    ask_together(&p, &clock, 0..20).await;
    assert_eq!(inner.listings.load(Ordering::SeqCst), 1);
    assert_eq!(inner.reads.load(Ordering::SeqCst), 40);
}
