//! The route table against `openapi.yaml` (both ways), and the auth matrix: every route ×
//! no token / a bad token / read / operate / admin → the expected status, through `oneshot`.

mod common;

use std::collections::BTreeSet;

use axum::http::{Method, StatusCode};
use common::api::{self, Call, ADMIN, OPERATOR, READER};
use mxguard::api::{routes, Access, OPENAPI};
use mxguard::config::Config;
use serde_json::json;

/// The scope each route needs: the specification the router is checked against.
const MATRIX: &[(&str, &str, &str)] = &[
    ("GET", "/healthz", "open"),
    ("GET", "/readyz", "read"),
    ("GET", "/metrics", "read"),
    ("GET", "/openapi.yaml", "open"),
    ("GET", "/v1/domains", "read"),
    ("GET", "/v1/domains/{domain}", "read"),
    ("GET", "/v1/domains/{domain}/plan", "read"),
    ("GET", "/v1/domains/{domain}/events", "read"),
    ("GET", "/v1/domains/{domain}/incidents", "read"),
    ("GET", "/v1/domains/{domain}/incidents/{incident}", "read"),
    ("POST", "/v1/domains/{domain}/failover", "operate"),
    ("POST", "/v1/domains/{domain}/failback", "operate"),
    ("PUT", "/v1/domains/{domain}/pin", "operate"),
    ("DELETE", "/v1/domains/{domain}/pin", "operate"),
    ("POST", "/v1/domains/{domain}/maintenance", "operate"),
    ("DELETE", "/v1/domains/{domain}/maintenance", "operate"),
    ("POST", "/v1/domains/{domain}/pause", "operate"),
    ("POST", "/v1/domains/{domain}/resume", "operate"),
    ("POST", "/v1/domains/{domain}/approve", "operate"),
    ("POST", "/v1/domains/{domain}/drill", "operate"),
    ("GET", "/v1/snapshots", "read"),
    ("POST", "/v1/snapshots", "operate"),
    ("GET", "/v1/snapshots/{id}", "read"),
    ("GET", "/v1/snapshots/{id}/diff", "read"),
    ("POST", "/v1/snapshots/{id}/revert", "admin"),
];

fn table(config: &Config) -> BTreeSet<(String, String, String)> {
    routes(config)
        .iter()
        .map(|r| {
            (
                r.method.to_string(),
                r.path.to_string(),
                r.access.as_str().to_string(),
            )
        })
        .collect()
}

/// (METHOD, path, x-mxguard-scope) of every operation in `openapi.yaml`.
fn documented() -> (BTreeSet<(String, String, String)>, serde_json::Value) {
    let doc: serde_json::Value = serde_norway::from_str(OPENAPI).expect("openapi.yaml parses");
    let mut ops = BTreeSet::new();
    let paths = doc["paths"].as_object().expect("paths");
    for (path, item) in paths {
        for (method, op) in item.as_object().expect("path item") {
            if !["get", "put", "post", "delete", "patch", "head", "options"]
                .contains(&method.as_str())
            {
                continue;
            }
            let scope = op["x-mxguard-scope"]
                .as_str()
                .unwrap_or_else(|| panic!("{method} {path}: no x-mxguard-scope"));
            ops.insert((method.to_uppercase(), path.clone(), scope.to_string()));
        }
    }
    (ops, doc)
}

#[test]
fn router_and_openapi_document_agree() {
    let config = Config::parse("t.toml", "").expect("config");
    let code = table(&config);
    let (doc_ops, doc) = documented();
    let missing_in_doc: Vec<_> = code.difference(&doc_ops).collect();
    let missing_in_code: Vec<_> = doc_ops.difference(&code).collect();
    assert!(
        missing_in_doc.is_empty() && missing_in_code.is_empty(),
        "routed but not documented (or another scope): {missing_in_doc:?}\n\
         documented but not routed (or another scope): {missing_in_code:?}"
    );
    let spec: BTreeSet<_> = MATRIX
        .iter()
        .map(|(m, p, s)| (m.to_string(), p.to_string(), s.to_string()))
        .collect();
    assert_eq!(
        code, spec,
        "the route table and this test's matrix disagree"
    );

    for (method, path, scope) in &code {
        let op = &doc["paths"][path][method.to_lowercase()];
        let responses = op["responses"].as_object().expect("responses");
        let has = |s: &str| responses.contains_key(s);
        if scope != "open" {
            assert!(
                has("401") && has("403"),
                "{method} {path}: 401/403 not documented"
            );
        }
        if method != "GET" {
            // 503: not-leader on a follower (or the request timeout); 500: the store failed.
            for s in ["400", "401", "403", "413", "415", "422", "500", "503"] {
                assert!(has(s), "{method} {path}: {s} not documented");
            }
            assert!(
                op["requestBody"].is_object(),
                "{method} {path}: no requestBody"
            );
            let params = op["parameters"].to_string();
            assert!(
                params.contains("IdempotencyKey"),
                "{method} {path}: Idempotency-Key not documented"
            );
        }
        // every {param} in the path is documented
        for seg in path.split('/').filter(|s| s.starts_with('{')) {
            let name = seg.trim_matches(|c| c == '{' || c == '}');
            let params = op["parameters"].to_string();
            let by_ref = match name {
                "domain" => "#/components/parameters/Domain",
                "id" => "#/components/parameters/SnapshotId",
                "incident" => "#/components/parameters/IncidentId",
                other => panic!("undocumented path parameter {other}"),
            };
            assert!(
                params.contains(by_ref),
                "{method} {path}: {{{name}}} not documented"
            );
        }
    }
    // opening /readyz and /metrics makes them open in the table
    let open = Config::parse(
        "t.toml",
        "[server]\nopen_readyz = true\nopen_metrics = true\n",
    )
    .expect("config");
    for r in routes(&open) {
        if r.path == "/readyz" || r.path == "/metrics" {
            assert_eq!(r.access, Access::Open);
        }
    }
}

fn concrete(path: &str) -> String {
    path.replace("{domain}", api::DOMAIN)
        .replace("{id}", "1")
        .replace("{incident}", "1")
}

#[tokio::test]
async fn auth_matrix() {
    let t = api::start(true).await;
    // a snapshot to read, diff and revert
    let r = t
        .call(
            Call::new(Method::POST, "/v1/snapshots")
                .token(OPERATOR)
                .json(json!({"domain": api::DOMAIN, "reason": "matrix fixture"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);

    let tokens: [(&str, Option<&str>, u8); 5] = [
        ("none", None, 0),
        ("bad", Some("not-a-configured-token"), 0),
        ("read", Some(READER), 1),
        ("operate", Some(OPERATOR), 2),
        ("admin", Some(ADMIN), 3),
    ];
    let before = t.fingerprint().await;
    let mut failures = Vec::new();
    for (method, path, scope) in MATRIX {
        let needed = match *scope {
            "open" => 0,
            "read" => 1,
            "operate" => 2,
            _ => 3,
        };
        let url = concrete(path);
        for (who, token, level) in tokens {
            let method: Method = method.parse().expect("method");
            let mut call = Call::new(method.clone(), &url);
            if let Some(tok) = token {
                call = call.token(tok);
            }
            // Mutations get a body without a reason: past auth it is a 422 and changes nothing.
            if method != Method::GET {
                call = call.json(json!({}));
            }
            let got = t.call(call).await;
            let want = if needed == 0 {
                StatusCode::OK
            } else if level == 0 {
                StatusCode::UNAUTHORIZED
            } else if level < needed {
                StatusCode::FORBIDDEN
            } else if method == Method::GET && path.contains("{incident}") {
                // The fixture has no incident: past auth, the route answers that.
                StatusCode::NOT_FOUND
            } else if method == Method::GET {
                StatusCode::OK
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            if got.status != want {
                failures.push(format!(
                    "{method} {url} as {who}: {} (want {want}): {}",
                    got.status, got.text
                ));
                continue;
            }
            match got.status {
                StatusCode::UNAUTHORIZED => {
                    assert_eq!(got.problem(), "unauthorized");
                    let challenge = got.headers["www-authenticate"].to_str().expect("ascii");
                    assert!(challenge.starts_with("Bearer"), "{challenge}");
                    assert_eq!(
                        challenge.contains("invalid_token"),
                        who == "bad",
                        "{challenge}"
                    );
                }
                StatusCode::FORBIDDEN => assert_eq!(got.problem(), "forbidden"),
                StatusCode::UNPROCESSABLE_ENTITY => assert_eq!(got.problem(), "validation"),
                StatusCode::NOT_FOUND => assert_eq!(got.problem(), "unknown-incident"),
                _ => {}
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(
        t.fingerprint().await,
        before,
        "the matrix changed something"
    );
}

#[tokio::test]
async fn without_tokens_every_protected_route_explains_how_to_configure_one() {
    let t = api::start(false).await;
    for (method, path, scope) in MATRIX {
        let method: Method = method.parse().expect("method");
        let url = concrete(path);
        let mut call = Call::new(method.clone(), &url).token(ADMIN);
        if method != Method::GET {
            call = call.json(json!({"reason": "x"}));
        }
        let got = t.call(call).await;
        if *scope == "open" {
            assert_eq!(got.status, StatusCode::OK, "{method} {url}");
            continue;
        }
        assert_eq!(
            got.status,
            StatusCode::UNAUTHORIZED,
            "{method} {url}: {}",
            got.text
        );
        assert_eq!(got.problem(), "no-tokens-configured");
        assert!(got.json()["detail"]
            .as_str()
            .is_some_and(|d| d.contains("[[tokens]]")));
    }
}

#[tokio::test]
async fn unknown_paths_and_methods_are_problems() {
    let t = api::start(true).await;
    let r = t
        .call(Call::new(Method::GET, "/v1/nope").token(ADMIN))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.problem(), "not-found");
    // HEAD is answered by the GET handler, so it needs GET's scope
    for path in ["/v1/domains", "/v1/domains/example.test", "/metrics"] {
        let r = t.call(Call::new(Method::HEAD, path)).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "HEAD {path}");
        let r = t.call(Call::new(Method::HEAD, path).token(READER)).await;
        assert_eq!(r.status, StatusCode::OK, "HEAD {path}");
    }
    let r = t
        .call(Call::new(Method::PATCH, "/v1/domains").token(ADMIN))
        .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.problem(), "method-not-allowed");

    // Made-up methods are answered and counted under one label: a client inventing methods
    // cannot grow the metrics (and the memory behind them) without bound.
    for i in 0..50 {
        let method = Method::from_bytes(format!("MADEUP{i}").as_bytes()).expect("method");
        let r = t.call(Call::new(method, "/v1/domains")).await;
        assert!(r.status.is_client_error(), "{}", r.status);
    }
    let metrics = t
        .call(Call::new(Method::GET, "/metrics").token(READER))
        .await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(!metrics.text.contains("MADEUP"), "{}", metrics.text);
    assert!(
        metrics.text.contains("method=\"OTHER\""),
        "{}",
        metrics.text
    );
}
