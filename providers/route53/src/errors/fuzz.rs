//! Fuzz target (proptest) for Route 53's answers as the client sees them: the SDK client of
//! [`Api`] against a loopback server that answers each call with a drawn status and body
//! (Route 53's XML error document with any code and message, one cut short, record sets,
//! change infos, an HTML page, any bytes). The SDK parses; [`from_sdk`] and [`classify`] map.
//! Bounded case count, so it runs in a few seconds in `cargo test` (CI).

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use aws_sdk_route53::types::{Change, ChangeAction, ResourceRecord, ResourceRecordSet, RrType};
use axum::body::Body;
use axum::http::Response;
use axum::Router;
use mxguard_core::{Fqdn, RateLimit, TokenBucket, TokioClock};
use proptest::collection::vec;
use proptest::prelude::*;

use super::*;
use crate::client::Api;
use crate::wire::{key_of, to_set};
use crate::{Credentials, Route53Config};

/// What the server answers next.
#[derive(Clone, Debug, Default)]
struct Answer {
    status: u16,
    body: Vec<u8>,
}

/// One SDK client and one server for every case: building the client (its configuration
/// loader, its connection pool) costs more than a case.
struct Lab {
    runtime: tokio::runtime::Runtime,
    api: Api,
    answer: Arc<Mutex<Answer>>,
}

fn lab() -> &'static Lab {
    static LAB: OnceLock<Lab> = OnceLock::new();
    LAB.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let answer = Arc::new(Mutex::new(Answer::default()));
        let serving = answer.clone();
        let api = runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("a loopback port");
            let url = format!("http://{}", listener.local_addr().expect("its address"));
            let app = Router::new().fallback(move || {
                let a = serving.lock().expect("not poisoned").clone();
                async move {
                    Response::builder()
                        .status(a.status)
                        .header("content-type", "text/xml")
                        .body(Body::from(a.body))
                        .expect("a response")
                }
            });
            tokio::spawn(async move { axum::serve(listener, app).await });
            let config = Route53Config::new("fuzz")
                .with_credentials(Credentials::static_keys("AKIDFUZZ", "fuzz-secret"))
                .with_endpoint_url(url)
                .with_timeout(Duration::from_secs(5))
                .with_rate_limit(RateLimit::new(1e6, 1_000_000).expect("a valid rate"));
            let bucket = TokenBucket::new(config.rate_limit, Arc::new(TokioClock));
            Api::new(&config, Arc::new(bucket)).await
        });
        Lab {
            runtime,
            api,
            answer,
        }
    })
}

/// Error codes Route 53 sends (each list `classify` knows, and others) and any word.
fn code() -> impl Strategy<Value = String> {
    let known = [
        RATE_CODES,
        AUTH_CODES,
        NOT_FOUND_CODES,
        REJECT_CODES,
        &[
            "ServiceUnavailable",
            "InternalFailure",
            "InvalidDomainName",
            "ConcurrentModification",
        ][..],
    ]
    .concat();
    prop_oneof![
        4 => prop::sample::select(known).prop_map(str::to_string),
        1 => "[A-Za-z]{1,24}",
    ]
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Route 53's error document (`ErrorResponse/Error/Code`), its message escaped.
fn error_xml(code: &str, message: &str) -> String {
    format!(
        r#"<?xml version="1.0"?>
<ErrorResponse xmlns="https://route53.amazonaws.com/doc/2013-04-01/"><Error><Type>Sender</Type><Code>{}</Code><Message>{}</Message></Error><RequestId>5d1b7bd0-fuzz</RequestId></ErrorResponse>"#,
        escape(code),
        escape(message)
    )
}

/// `ListResourceRecordSets` answering with record sets of any type, name, TTL and values.
fn list_xml() -> impl Strategy<Value = String> {
    let rrset = (
        prop::sample::select(&["example.com.", "\\052.example.com.", "mx.example.com", "bad..example.com.", "\\999.example.com."][..]),
        prop::sample::select(&["MX", "A", "AAAA", "TXT", "CNAME", "SOA"][..]),
        proptest::option::of(prop_oneof![0i64..100_000, any::<i64>()]),
        vec(
            prop_oneof![
                Just("10 mx.example.com.".to_string()),
                Just("0 .".to_string()),
                any::<[u8; 4]>().prop_map(|a| std::net::Ipv4Addr::from(a).to_string()),
                Just("2001:db8::1".to_string()),
                "\"[ -~]{0,30}\"",
                "[ -~]{0,30}",
            ],
            0..4,
        ),
        any::<bool>(),
    )
        .prop_map(|(name, rtype, ttl, values, routed)| {
            let ttl = ttl.map(|t| format!("<TTL>{t}</TTL>")).unwrap_or_default();
            let routed = if routed { "<SetIdentifier>eu</SetIdentifier><Weight>1</Weight>" } else { "" };
            let values: String = values
                .iter()
                .map(|v| format!("<ResourceRecord><Value>{}</Value></ResourceRecord>", escape(v)))
                .collect();
            format!(
                "<ResourceRecordSet><Name>{name}</Name><Type>{rtype}</Type>{routed}{ttl}<ResourceRecords>{values}</ResourceRecords></ResourceRecordSet>"
            )
        });
    vec(rrset, 0..5).prop_map(|sets| {
        format!(
            r#"<?xml version="1.0"?>
<ListResourceRecordSetsResponse xmlns="https://route53.amazonaws.com/doc/2013-04-01/"><ResourceRecordSets>{}</ResourceRecordSets><IsTruncated>false</IsTruncated><MaxItems>100</MaxItems></ListResourceRecordSetsResponse>"#,
            sets.concat()
        )
    })
}

/// A `ChangeInfo` answer under either operation's root element, any status.
fn change_xml() -> impl Strategy<Value = String> {
    (
        prop::sample::select(&["ChangeResourceRecordSetsResponse", "GetChangeResponse"][..]),
        prop::sample::select(&["PENDING", "INSYNC", "LOST"][..]),
    )
        .prop_map(|(root, status)| {
            format!(
                r#"<?xml version="1.0"?>
<{root} xmlns="https://route53.amazonaws.com/doc/2013-04-01/"><ChangeInfo><Id>/change/C2682N5HXP0BZ4</Id><Status>{status}</Status><SubmittedAt>2024-01-01T00:00:00.000Z</SubmittedAt></ChangeInfo></{root}>"#
            )
        })
}

/// A body, and the error code in it when it is a complete error document.
fn body() -> impl Strategy<Value = (Vec<u8>, Option<String>)> {
    let error = (code(), "\\PC{0,40}").prop_map(|(c, m)| (error_xml(&c, &m).into_bytes(), Some(c)));
    prop_oneof![
        6 => error,
        1 => (code(), any::<usize>()).prop_map(|(c, at)| {
            let mut b = error_xml(&c, "cut short").into_bytes();
            b.truncate(at % b.len());
            (b, None)
        }),
        3 => list_xml().prop_map(|b| (b.into_bytes(), None)),
        2 => change_xml().prop_map(|b| (b.into_bytes(), None)),
        1 => Just((b"<html><body>502 Bad Gateway</body></html>".to_vec(), None)),
        1 => vec(any::<u8>(), 0..100).prop_map(|b| (b, None)),
    ]
}

/// Statuses that may carry a body (no 1xx, 204, 205 or 304).
fn status() -> impl Strategy<Value = u16> {
    prop_oneof![
        4 => prop::sample::select(&[400u16, 401, 403, 404, 409, 429, 500, 502, 503][..]),
        3 => Just(200u16),
        1 => (200u16..600).prop_filter("a status with a body", |s| ![204, 205, 304].contains(s)),
    ]
}

fn change() -> Change {
    let record = ResourceRecord::builder()
        .value("10 mx.example.com.")
        .build()
        .expect("a record");
    let rrset = ResourceRecordSet::builder()
        .name("example.com.")
        .r#type(RrType::Mx)
        .ttl(300)
        .resource_records(record)
        .build()
        .expect("a record set");
    Change::builder()
        .action(ChangeAction::Upsert)
        .resource_record_set(rrset)
        .build()
        .expect("a change")
}

/// One of the five calls mxguard makes; a listing's record sets go through the conversion to
/// RRsets, which must not panic and keeps only records of the set's type.
async fn call(api: &Api, op: usize) -> Result<(), ProviderError> {
    let zone = Fqdn::parse("example.com").expect("a name");
    match op {
        0 => api.zone_id_by_name(&zone).await.map(|_| ()),
        1 => api.zone_name("Z1FUZZ").await.map(|_| ()),
        2 => {
            let page = api.list("Z1FUZZ", None, 100, "fuzzing").await?;
            for rrset in &page.sets {
                if let Ok(Some(key)) = key_of(rrset) {
                    if let Ok(set) = to_set(&key, rrset) {
                        assert!(set.records().iter().all(|r| r.rtype() == key.rtype));
                    }
                }
            }
            Ok(())
        }
        3 => api
            .change("Z1FUZZ", vec![change()], "fuzzing")
            .await
            .map(|_| ()),
        _ => api.get_change("/change/C1FUZZ").await.map(|_| ()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    /// Any answer to any call: no panic; a status outside 2xx is never a success; and a
    /// complete error document is classified by its code and the status exactly as
    /// [`classify`] says for them (the code reaches the mapping intact, and is named in the
    /// error unless it is a rate limit, which carries no text).
    #[test]
    fn any_answer_is_classified_by_its_code_and_status(
        op in 0usize..5,
        status in status(),
        (body, code) in body(),
    ) {
        let lab = lab();
        *lab.answer.lock().expect("not poisoned") = Answer { status, body };
        let result = lab.runtime.block_on(call(&lab.api, op));
        let success = (200..300).contains(&status);
        match (&result, code) {
            (Ok(()), _) => prop_assert!(success, "HTTP {} read as a success", status),
            (Err(e), Some(code)) if !success => {
                let want = classify(Some(&code), Some("m"), status, "fuzzing");
                prop_assert_eq!(e.kind(), want.kind(), "{} for HTTP {} {}", e, status, code);
                if !matches!(e, ProviderError::RateLimited { .. }) {
                    prop_assert!(e.to_string().contains(&code), "{}", e);
                }
            }
            (Err(_), _) => {}
        }
    }
}
