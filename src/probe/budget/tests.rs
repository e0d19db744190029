//! The budget and reuse against a counting resolver on loopback, on a manual clock.

use std::net::Ipv4Addr;

use mxguard_core::{FixedJitter, ManualClock};
use mxguard_testpeers::dns::CountingResolver;

use super::*;

const MINUTE: Rules = Rules {
    dns_interval: Duration::from_secs(60),
    interval: Duration::from_secs(5),
};

fn fqdn(s: &str) -> Fqdn {
    Fqdn::parse(s).expect("name")
}

fn resolver() -> (CountingResolver, DnsClient) {
    let r = CountingResolver::start([("mx.example.test".to_string(), Ipv4Addr::LOCALHOST)], 300)
        .expect("counting resolver");
    let client = DnsClient::resolver(r.addr(), Duration::from_secs(2));
    (r, client)
}

/// One round's ask of `host`, with up to 10 s for the budget, on `clock`.
async fn ask_for(
    clock: &ManualClock,
    dns: &SharedDns,
    client: &DnsClient,
    host: &Fqdn,
    confirmation: bool,
) -> Option<Resolution> {
    let long = Duration::from_secs(10);
    clock
        .drive(dns.resolve(client, host, &MINUTE, confirmation, long))
        .await
}

#[tokio::test]
async fn good_answers_are_reused_until_their_lifetime_and_bad_ones_never() {
    let (r, client) = resolver();
    let clock = ManualClock::new();
    // a first answer lives its whole lifetime (fraction 0 → spread 1)
    let dns = SharedDns::new(10, Arc::new(clock.clone()), Arc::new(FixedJitter(0.0)));
    let host = fqdn("mx.example.test");
    let ask = |confirmation| ask_for(&clock, &dns, &client, &host, confirmation);

    let (addrs, answers) = ask(false).await.expect("asked");
    assert_eq!(addrs, vec![IpAddr::from(Ipv4Addr::LOCALHOST)]);
    assert!(answers.iter().all(|a| !a.reused));
    assert_eq!(r.answered(), 2, "A and AAAA");

    clock.advance(Duration::from_secs(30));
    let (addrs, answers) = ask(false).await.expect("reused");
    assert_eq!(addrs, vec![IpAddr::from(Ipv4Addr::LOCALHOST)]);
    assert!(answers.iter().all(|a| a.reused), "{answers:?}");
    assert_eq!(r.answered(), 2, "nothing asked within the lifetime");

    ask(true).await.expect("asked");
    assert_eq!(r.answered(), 4, "a confirmation round asks at once");

    clock.advance(Duration::from_secs(58));
    ask(false).await.expect("asked");
    assert_eq!(
        r.answered(),
        6,
        "the round nearest to dns_interval asks again"
    );

    // NXDOMAIN: asked every round
    let gone = fqdn("gone.example.test");
    for n in [8, 10] {
        let (addrs, _) = ask_for(&clock, &dns, &client, &gone, false)
            .await
            .expect("asked");
        assert!(addrs.is_empty());
        assert_eq!(r.answered(), n, "a bad answer is never reused");
    }
}

#[tokio::test]
async fn over_the_budget_a_round_reuses_the_last_good_answer_or_has_no_evidence() {
    let (r, client) = resolver();
    let clock = ManualClock::new();
    let dns = SharedDns::new(10, Arc::new(clock.clone()), Arc::new(FixedJitter(0.0)));
    let (host, gone) = (fqdn("mx.example.test"), fqdn("gone.example.test"));
    let long = Duration::from_secs(10);
    let short = Duration::from_millis(150);

    // 10 queries/s, burst 1: a pair waits 0.1 s for its second token, on the clock
    let t0 = clock.elapsed();
    clock
        .drive(dns.resolve(&client, &host, &MINUTE, true, long))
        .await
        .expect("asked");
    assert_eq!(clock.elapsed() - t0, Duration::from_millis(100));
    clock
        .drive(dns.resolve(&client, &gone, &MINUTE, true, long))
        .await
        .expect("asked");
    assert_eq!(
        clock.elapsed() - t0,
        Duration::from_millis(300),
        "pairs 0.2 s apart"
    );
    assert_eq!(r.answered(), 4);

    // the next pair would wait 0.2 s, more than this round may: not asked
    let (_, answers) = dns
        .resolve(&client, &host, &MINUTE, true, short)
        .await
        .expect("the last good answer stands in");
    assert!(answers.iter().all(|a| a.reused));
    assert_eq!(
        dns.resolve(&client, &gone, &MINUTE, true, short).await,
        None,
        "no good answer to stand in: no evidence"
    );
    assert_eq!(r.answered(), 4, "nothing sent over the budget");
    // and refusing spent nothing: the pair after 0.2 s fits
    clock.advance(Duration::from_millis(200));
    clock
        .drive(dns.resolve(&client, &gone, &MINUTE, true, short))
        .await
        .expect("asked");
    assert_eq!(r.answered(), 6);
}

#[tokio::test]
async fn each_resolver_has_its_own_budget_and_reservations_queue_in_order() {
    let clock = ManualClock::new();
    let dns = SharedDns::new(4, Arc::new(clock.clone()), Arc::new(FixedJitter(0.0)));
    let server = SocketAddr::from((Ipv4Addr::LOCALHOST, 53));
    let second = Duration::from_secs(1);
    let t0 = clock.elapsed();
    for _ in 0..3 {
        assert!(clock.drive(dns.reserve(server, 1, second)).await);
    }
    assert_eq!(
        clock.elapsed() - t0,
        Duration::from_millis(500),
        "1 at once, then 4/s"
    );
    // another resolver has its own budget
    let other = SocketAddr::from((Ipv4Addr::LOCALHOST, 54));
    assert!(clock.drive(dns.reserve(other, 1, Duration::ZERO)).await);
    assert_eq!(clock.elapsed() - t0, Duration::from_millis(500));
    // five more at once: four fit within a second, the fifth would wait 1.25 s
    let waits: Vec<bool> = clock
        .drive(futures::future::join_all(
            (0..5).map(|_| dns.reserve(server, 1, second)),
        ))
        .await;
    assert_eq!(waits, [true, true, true, true, false]);
}

#[tokio::test]
async fn background_lookups_take_only_free_tokens_within_their_share() {
    let clock = ManualClock::new();
    let dns = SharedDns::new(4, Arc::new(clock.clone()), Arc::new(FixedJitter(0.0)));
    let server = SocketAddr::from((Ipv4Addr::LOCALHOST, 53));
    let t0 = clock.elapsed();
    let at = || clock.elapsed() - t0;
    // A probe round promises the next two seconds' tokens (8 at 4/s, the first now) while a
    // background lookup asks at the same moment, and a second round asks at 1 s.
    let round =
        futures::future::join_all((0..8).map(|_| dns.reserve(server, 1, Duration::from_secs(2))));
    let background = async {
        dns.background(server, 1).await;
        at()
    };
    let later_round = async {
        clock.sleep(Duration::from_secs(1)).await;
        let ok = dns.reserve(server, 1, Duration::from_secs(2)).await;
        (ok, at())
    };
    let (round, background_at, (later_ok, later_at)) = clock
        .drive(async { tokio::join!(round, background, later_round) })
        .await;
    assert!(round.iter().all(|ok| *ok));
    // the lookup waited while every token was promised to rounds, and promised none itself:
    // the second round's token is the first after the first round's (2.0 s)
    assert!(later_ok);
    assert_eq!(later_at, Duration::from_secs(2));
    assert!(
        background_at > later_at,
        "the background lookup went at {background_at:?}, before the rounds' tokens ran out"
    );
    // With the budget idle, background lookups take at most their share: a quarter of 4/s.
    let start = at();
    clock
        .drive(futures::future::join_all(
            (0..5).map(|_| dns.background(server, 1)),
        ))
        .await;
    let took = at() - start;
    assert!(
        took >= Duration::from_secs(4),
        "5 background lookups in {took:?}: more than their share of 1/s"
    );
    // with no budget a background lookup goes at once
    SharedDns::unlimited().background(server, 3).await;
}
