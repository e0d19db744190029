//! Fuzz target (proptest) for the `Retry-After` a notification endpoint answers with: read
//! from any header value, then waited out by a worker's retrier with the default delivery
//! policy on a manual clock. Bounded case count, so it runs in a few seconds in `cargo test`.

use std::sync::atomic::AtomicUsize;

use mxguard_core::retry::MAX_RETRY_AFTER;
use mxguard_core::{FixedJitter, ManualClock};
use proptest::collection::vec;
use proptest::prelude::*;

use super::*;

/// A `Retry-After` value: seconds (padded, huge, negative, fractional), a date in the past or
/// the future in the forms senders use (RFC 2822 with an offset, IMF-fixdate, RFC 850,
/// asctime), or any bytes.
fn retry_after_value() -> impl Strategy<Value = Vec<u8>> {
    let now = Utc::now().timestamp();
    let date = (now - 86_400..now + 10 * 86_400, 0usize..4).prop_map(|(secs, form)| {
        let at = DateTime::from_timestamp(secs, 0).expect("a time in range");
        let text = match form {
            0 => at.to_rfc2822(),
            1 => at.format("%a, %d %b %Y %H:%M:%S GMT").to_string(),
            2 => at.format("%A, %d-%b-%y %H:%M:%S GMT").to_string(),
            _ => at.format("%a %b %e %H:%M:%S %Y").to_string(),
        };
        text.into_bytes()
    });
    prop_oneof![
        3 => (any::<u64>(), " {0,2}", " {0,2}").prop_map(|(n, a, b)| format!("{a}{n}{b}").into_bytes()),
        2 => (0u64..100_000).prop_map(|n| n.to_string().into_bytes()),
        1 => prop::sample::select(&["-1", "1.5", "99999999999999999999999", "", "0x10"][..])
            .prop_map(|s| s.as_bytes().to_vec()),
        3 => date,
        1 => vec(any::<u8>(), 0..40),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    /// Any value: no panic; seconds are taken exactly, a date as the time left until it (none
    /// once past), anything else not at all. The worker then waits the longer of its backoff
    /// and that (at most [`MAX_RETRY_AFTER`]) and tries again, or gives up at once when the
    /// wait would end past `give_up_after`: it never sleeps past its deadline.
    #[test]
    fn any_retry_after_is_read_and_waited_within_the_deadline(
        value in retry_after_value(),
        fraction in 0.0..1.0f64,
    ) {
        let Ok(header) = HeaderValue::from_bytes(&value) else {
            // not a value HTTP can carry: never handed to the parser
            return Ok(());
        };
        let before = Utc::now();
        let parsed = retry_after(&header);
        let after = Utc::now();
        let text = header.to_str().ok().map(str::trim);
        if let Some(secs) = text.and_then(|v| v.parse::<u64>().ok()) {
            prop_assert_eq!(parsed, Some(Duration::from_secs(secs)));
        } else if let Some(at) = text.and_then(|v| DateTime::parse_from_rfc2822(v).ok()) {
            let most = (at.with_timezone(&Utc) - before).to_std().ok();
            let least = (at.with_timezone(&Utc) - after).to_std().unwrap_or(Duration::ZERO);
            match most {
                Some(most) => {
                    let got = parsed.unwrap_or(Duration::ZERO);
                    prop_assert!(least <= got && got <= most, "{:?} not in {:?}..{:?}", parsed, least, most);
                }
                None => prop_assert_eq!(parsed, None, "a date in the past: no wait"),
            }
        } else {
            prop_assert_eq!(parsed, None);
        }

        let policy = retry_policy(&Delivery::default());
        let limited = ProviderError::RateLimited { retry_after: parsed };
        let delay = policy.delay_after(1, &limited, fraction);
        prop_assert!(delay >= policy.backoff(1, fraction));
        prop_assert!(delay <= MAX_RETRY_AFTER.max(policy.max_backoff));

        let clock = ManualClock::new();
        let retrier = Retrier::new(policy.clone(), Arc::new(clock.clone()), Arc::new(FixedJitter(fraction)));
        let attempts = AtomicUsize::new(0);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let out = runtime.block_on(clock.drive(retrier.run("fuzzing", || {
            let first = attempts.fetch_add(1, Ordering::SeqCst) == 0;
            let limited = limited.clone();
            async move { if first { Err(limited) } else { Ok(()) } }
        })));
        if delay < policy.deadline {
            prop_assert_eq!(out, Ok(()));
            prop_assert_eq!(clock.elapsed(), delay);
        } else {
            prop_assert_eq!(out, Err(limited));
            prop_assert_eq!(clock.elapsed(), Duration::ZERO, "gave up without waiting");
        }
    }
}
