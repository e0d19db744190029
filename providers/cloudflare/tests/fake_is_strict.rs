//! The fake itself, spoken to over raw HTTP: it must refuse what Cloudflare refuses, or the
//! provider's tests would prove nothing (reference §10).

use mxguard_testpeers::cloudflare as fake;

use fake::{FakeCloudflare, FakeConfig, Perms};
use serde_json::{json, Value};

const TOKEN: &str = "fake-strictness-token";

struct Api {
    fake: FakeCloudflare,
    http: reqwest::Client,
    zone_id: String,
}

impl Api {
    async fn start() -> Api {
        let fake = FakeCloudflare::start(FakeConfig {
            batch_limit: 3,
            ..FakeConfig::default()
        })
        .await;
        fake.add_token(TOKEN, Perms::FULL);
        let zone_id = fake.add_zone("strict.test");
        Api {
            fake,
            http: reqwest::Client::new(),
            zone_id,
        }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        auth: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.fake.base_url));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("the fake answers");
        let status = resp.status().as_u16();
        (status, resp.json().await.expect("a JSON envelope"))
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(
            reqwest::Method::POST,
            path,
            Some(&format!("Bearer {TOKEN}")),
            Some(body),
        )
        .await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.send(
            reqwest::Method::GET,
            path,
            Some(&format!("Bearer {TOKEN}")),
            None,
        )
        .await
    }

    fn records(&self) -> String {
        format!("/zones/{}/dns_records", self.zone_id)
    }
}

fn code(v: &Value) -> (i64, Option<i64>) {
    let e = &v["errors"][0];
    (
        e["code"].as_i64().unwrap_or(0),
        e["error_chain"][0]["code"].as_i64(),
    )
}

fn a(name: &str, ip: &str) -> Value {
    json!({"type": "A", "name": name, "content": ip, "ttl": 300, "proxied": false})
}

#[tokio::test]
async fn authentication_is_required_and_checked() {
    let api = Api::start().await;
    let (s, v) = api.send(reqwest::Method::GET, "/zones", None, None).await;
    assert_eq!(
        (s, code(&v).0, v["success"].clone()),
        (403, 10000, json!(false))
    );
    let (s, v) = api
        .send(reqwest::Method::GET, "/zones", Some("Token abc"), None)
        .await;
    assert_eq!((s, code(&v)), (400, (6003, Some(6111))));
    let (s, _) = api
        .send(
            reqwest::Method::GET,
            "/zones",
            Some("Bearer not-a-token"),
            None,
        )
        .await;
    assert_eq!(s, 403);
    let (s, v) = api.get("/zones?name=strict.test").await;
    assert_eq!(
        (s, v["result"][0]["name"].as_str()),
        (200, Some("strict.test"))
    );
}

#[tokio::test]
async fn bodies_are_checked_strictly() {
    let api = Api::start().await;
    let path = api.records();
    let mut unknown = a("x.strict.test", "192.0.2.1");
    unknown["colour"] = json!("blue");
    let mut wrong_type = a("x.strict.test", "192.0.2.1");
    wrong_type["ttl"] = json!("300");
    let cases = [
        (unknown, (9207, Some(9207))),
        (wrong_type, (9207, Some(9207))),
        (
            json!({"type": "A", "name": "x.strict.test", "content": "192.0.2.1", "ttl": 59}),
            (1004, Some(9021)),
        ),
        (
            json!({"type": "A", "name": "x.strict.test", "content": "1.1", "ttl": 60}),
            (1004, Some(9005)),
        ),
        (
            json!({"type": "A", "name": "x.elsewhere.test", "content": "192.0.2.1", "ttl": 60}),
            (1004, Some(9007)),
        ),
        (
            json!({"type": "MX", "name": "strict.test", "content": "mx.strict.test", "ttl": 60}),
            (1004, Some(9100)),
        ),
        (
            json!({"type": "MX", "name": "strict.test", "content": "mx.strict.test", "priority": 10, "ttl": 60, "proxied": true}),
            (1004, Some(9004)),
        ),
        (
            json!({"type": "TXT", "name": "strict.test", "content": format!("\"{}\"", "x".repeat(256)), "ttl": 60}),
            (1004, Some(9106)),
        ),
        (
            json!({"type": "TXT", "name": "strict.test", "content": "x".repeat(2049), "ttl": 60}),
            (1004, Some(9104)),
        ),
        (
            json!({"type": "CNAME", "name": "c.strict.test", "content": "strict.test", "ttl": 60}),
            (1004, Some(9000)),
        ),
    ];
    for (body, want) in cases {
        let (s, v) = api.post(&path, body.clone()).await;
        assert_eq!((s, code(&v)), (400, want), "{body}");
    }
    let (s, v) = api
        .post(
            &path,
            json!({"type": "A", "name": "x.strict.test.", "content": "192.0.2.1", "ttl": 1}),
        )
        .await;
    assert_eq!(
        (s, v["result"]["name"].as_str(), v["result"]["ttl"].as_i64()),
        (200, Some("x.strict.test"), Some(1))
    );
    let (s, v) = api.post(&path, a("x.strict.test", "192.0.2.1")).await;
    assert_eq!((s, code(&v).0), (400, 81058), "identical record");
}

#[tokio::test]
async fn lists_paginate_with_all_five_result_info_fields() {
    let api = Api::start().await;
    for i in 1..=5 {
        let (s, _) = api
            .post(&api.records(), a("p.strict.test", &format!("192.0.2.{i}")))
            .await;
        assert_eq!(s, 200);
    }
    let (_, v) = api
        .get(&format!(
            "{}?name.exact=P.strict.test&type=A&page=2&per_page=2",
            api.records()
        ))
        .await;
    assert_eq!(v["result"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        v["result_info"],
        json!({"page": 2, "per_page": 2, "count": 2, "total_count": 5, "total_pages": 3})
    );
    let (s, v) = api
        .get(&format!("{}?page=9&per_page=2", api.records()))
        .await;
    assert_eq!(
        (s, v["result"].clone()),
        (200, json!([])),
        "past the last page: an empty page"
    );
    let (s, _) = api
        .get(&format!("{}?name=p.strict.test", api.records()))
        .await;
    assert_eq!(s, 400, "only name.exact filters by name");
    let (s, _) = api.get(&format!("{}?per_page=0", api.records())).await;
    assert_eq!(s, 400);
}

#[tokio::test]
async fn a_batch_is_all_or_nothing_and_limited_in_size() {
    let api = Api::start().await;
    let (_, v) = api
        .post(&api.records(), a("b.strict.test", "192.0.2.1"))
        .await;
    let id = v["result"]["id"].as_str().expect("an id").to_string();
    let batch = format!("{}/batch", api.records());
    // a valid delete, then a post the fake refuses: the delete must not happen
    let (s, v) = api.post(&batch, json!({"deletes": [{"id": id}], "posts": [{"type": "A", "name": "b.strict.test", "content": "nope", "ttl": 60}]})).await;
    assert_eq!((s, code(&v)), (400, (1004, Some(9005))));
    let (_, v) = api.get(&api.records()).await;
    assert_eq!(
        v["result"][0]["id"].as_str(),
        Some(id.as_str()),
        "nothing applied"
    );
    // deletes run before posts: replacing a record with an identical one is fine
    let (s, v) = api
        .post(
            &batch,
            json!({"deletes": [{"id": id}], "posts": [a("b.strict.test", "192.0.2.1")]}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["result"]["deletes"][0]["id"].as_str(), Some(id.as_str()));
    let (s, v) = api.post(&batch, json!({"posts": [a("c.strict.test", "192.0.2.1"), a("c.strict.test", "192.0.2.2"), a("c.strict.test", "192.0.2.3"), a("c.strict.test", "192.0.2.4")]})).await;
    assert_eq!(
        (s, code(&v)),
        (400, (1004, Some(9108))),
        "over the batch limit of 3"
    );
    let (s, v) = api
        .post(
            &batch,
            json!({"deletes": [{"id": "ffffffffffffffffffffffffffffffff"}]}),
        )
        .await;
    assert_eq!((s, code(&v).0), (404, 81044));
    let (s, v) = api.post(&batch, json!({"upserts": []})).await;
    assert_eq!((s, code(&v).0), (400, 9207));
}

/// With a rate limit, the fake counts every authenticated request of a token: the quota passes
/// (each answer says how much is left), the request over it gets 429 + `retry-after`, and the
/// token stays locked out for the whole window, as Cloudflare does. Other tokens are not
/// affected; the lockout ends with the window.
#[tokio::test]
async fn the_rate_limit_locks_a_token_out_for_the_window() {
    use mxguard_testpeers::cloudflare::RateLimitPolicy;
    let window = std::time::Duration::from_secs(2);
    let fake = FakeCloudflare::start(FakeConfig {
        rate_limit: Some(RateLimitPolicy { quota: 5, window }),
        ..FakeConfig::default()
    })
    .await;
    fake.add_token(TOKEN, Perms::FULL);
    fake.add_token("other-token", Perms::FULL);
    fake.add_zone("strict.test");
    let http = reqwest::Client::new();
    let get = |token: &'static str| {
        let req = http
            .get(format!("{}/zones?name=strict.test", fake.base_url))
            .header("authorization", format!("Bearer {token}"));
        async move {
            let resp = req.send().await.expect("the fake answers");
            let header = |name: &str| {
                resp.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            let seen = (
                resp.status().as_u16(),
                header("ratelimit"),
                header("ratelimit-policy"),
                header("retry-after"),
            );
            let body: Value = resp.json().await.expect("a JSON envelope");
            (seen, body)
        }
    };
    for left in (0..5).rev() {
        let ((status, limit, policy, _), _) = get(TOKEN).await;
        assert_eq!(status, 200);
        let limit = limit.expect("a Ratelimit header");
        assert!(
            limit.starts_with(&format!("\"default\";r={left};t=")),
            "{limit}"
        );
        assert_eq!(policy.as_deref(), Some("\"burst\";q=5;w=2"));
    }
    let ((status, _, _, retry), body) = get(TOKEN).await;
    assert_eq!(status, 429);
    assert_eq!(retry.as_deref(), Some("2"));
    assert_eq!(code(&body).0, 10100, "{body}");
    // locked out: even after the first requests left the window
    let ((status, _, _, _), _) = get(TOKEN).await;
    assert_eq!(status, 429);
    let ((status, _, _, _), _) = get("other-token").await;
    assert_eq!(status, 200, "the limit is per token");
    let stats = fake.limit_stats();
    assert_eq!(
        (stats.refused, stats.lockouts, stats.peak_in_window),
        (2, 1, 5)
    );
    tokio::time::sleep(window + std::time::Duration::from_millis(100)).await;
    let ((status, _, _, _), _) = get(TOKEN).await;
    assert_eq!(status, 200, "the lockout ends with the window");
}

/// One GET with `token`: status, the `Ratelimit` header, `retry-after`, and the body.
async fn get_as(
    fake: &FakeCloudflare,
    path: &str,
    token: &str,
) -> (u16, Option<String>, Option<String>, Value) {
    let resp = reqwest::Client::new()
        .get(format!("{}{path}", fake.base_url))
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .expect("the fake answers");
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (limit, retry) = (header("ratelimit"), header("retry-after"));
    let status = resp.status().as_u16();
    (
        status,
        limit,
        retry,
        resp.json().await.expect("a JSON envelope"),
    )
}

/// Cloudflare counts the global limit per user across all the user's tokens, and per account
/// for account-owned tokens (reference §9, §12): two tokens of one user spend one budget,
/// going over it locks out every token of that user, and other owners are not affected.
#[tokio::test]
async fn the_rate_limit_counts_per_owner_across_its_tokens() {
    use mxguard_testpeers::cloudflare::RateLimitPolicy;
    const ACCOUNT: &str = "0a0b0c0d0e0f00112233445566778899";
    let window = std::time::Duration::from_secs(600);
    let fake = FakeCloudflare::start(FakeConfig {
        rate_limit: Some(RateLimitPolicy { quota: 4, window }),
        ..FakeConfig::default()
    })
    .await;
    fake.user("ops")
        .token("ops-a", Perms::FULL)
        .token("ops-b", Perms::READ_ONLY);
    fake.account(ACCOUNT)
        .token("acct-a", Perms::FULL)
        .token("acct-b", Perms::FULL);
    fake.add_token("loner", Perms::FULL);
    fake.add_zone("strict.test");
    let zones = "/zones?name=strict.test";

    // four requests of the user, alternating tokens: one budget counting down
    for (i, token) in ["ops-a", "ops-b", "ops-a", "ops-b"].into_iter().enumerate() {
        let (status, limit, _, _) = get_as(&fake, zones, token).await;
        assert_eq!(status, 200, "{token}");
        let limit = limit.expect("a Ratelimit header");
        assert!(
            limit.starts_with(&format!("\"default\";r={};t=", 3 - i)),
            "{token}: {limit}"
        );
    }
    // the fifth, whichever token sends it, is over: 429 / 10100, and both are locked out
    let (status, limit, retry, body) = get_as(&fake, zones, "ops-b").await;
    assert_eq!((status, code(&body).0), (429, 10100), "{body}");
    assert_eq!(retry.as_deref(), Some("600"));
    assert!(limit.is_some_and(|l| l.starts_with("\"default\";r=0;")));
    let (status, _, retry, _) = get_as(&fake, zones, "ops-a").await;
    assert_eq!(status, 429, "every token of the user is locked out");
    assert!(retry.is_some());

    // the account's tokens share another budget, untouched by the user's lockout
    for (i, token) in ["acct-a", "acct-b"].into_iter().enumerate() {
        let (status, limit, _, _) = get_as(&fake, zones, token).await;
        assert_eq!(status, 200, "{token}");
        assert!(
            limit.is_some_and(|l| l.starts_with(&format!("\"default\";r={};", 3 - i))),
            "{token}"
        );
    }
    let (status, limit, _, _) = get_as(&fake, zones, "loner").await;
    assert_eq!(status, 200, "a token added alone is its own user");
    assert!(limit.is_some_and(|l| l.starts_with("\"default\";r=3;")));

    let stats = fake.limit_stats();
    assert_eq!(
        (stats.refused, stats.lockouts, stats.peak_in_window),
        (2, 1, 4)
    );
}

/// `Ratelimit` and `Ratelimit-Policy` are on every answer (reference §9): successes, refusals
/// and injected failures, with Cloudflare's quota when the fake enforces no limit.
#[tokio::test]
async fn every_answer_carries_the_rate_limit_headers() {
    let api = Api::start().await;
    let fresh = "\"default\";r=1200;t=300";
    let check = |what: &str, resp: &reqwest::Response, want: &str| {
        let h = |n: &str| {
            resp.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        assert_eq!(h("ratelimit").as_deref(), Some(want), "{what}");
        assert_eq!(
            h("ratelimit-policy").as_deref(),
            Some("\"burst\";q=1200;w=300"),
            "{what}"
        );
    };
    let http = reqwest::Client::new();
    let send = |path: &str, auth: Option<&str>| {
        let mut req = http.get(format!("{}{path}", api.fake.base_url));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        req.send()
    };
    let bearer = format!("Bearer {TOKEN}");
    let resp = send("/zones?name=strict.test", Some(&bearer))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    check("a success", &resp, fresh);
    let resp = send("/zones", Some("Bearer nobody")).await.unwrap();
    assert_eq!(resp.status(), 403);
    check("an unknown token", &resp, fresh);
    let resp = send(&format!("{}?bogus=1", api.records()), Some(&bearer))
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    check("a refused query", &resp, fresh);
    api.fake
        .inject(fake::Route::Any, fake::Fault::Status(503), 1);
    let resp = send("/zones", Some(&bearer)).await.unwrap();
    assert_eq!(resp.status(), 503);
    check("an injected 5xx", &resp, fresh);
    api.fake.inject(
        fake::Route::Any,
        fake::Fault::RateLimit { retry_after: 7 },
        1,
    );
    let resp = send("/zones", Some(&bearer)).await.unwrap();
    assert_eq!(resp.status(), 429);
    check("an injected 429", &resp, "\"default\";r=0;t=7");
}

/// Account-owned tokens (reference §12, cloudflare-docs #29486): the user endpoint answers
/// 401 for them; `/accounts/{account_id}/tokens/verify` verifies them, and only them.
#[tokio::test]
async fn account_owned_tokens_verify_at_their_account_only() {
    const ACCOUNT: &str = "0a0b0c0d0e0f00112233445566778899";
    const OTHER: &str = "ffeeddccbbaa99887766554433221100";
    let fake = FakeCloudflare::start(FakeConfig::default()).await;
    fake.account(ACCOUNT).token("acct-token", Perms::FULL);
    fake.add_token("user-token", Perms::FULL);
    let at = |account: &str| format!("/accounts/{account}/tokens/verify");

    let (status, _, _, body) = get_as(&fake, "/user/tokens/verify", "acct-token").await;
    assert_eq!((status, code(&body).0), (401, 1000), "{body}");
    let (status, _, _, body) = get_as(&fake, &at(ACCOUNT), "acct-token").await;
    assert_eq!(
        (status, body["result"]["status"].as_str()),
        (200, Some("active")),
        "{body}"
    );
    let (status, _, _, body) = get_as(&fake, &at(OTHER), "acct-token").await;
    assert_eq!((status, code(&body).0), (401, 1000), "another account");
    let (status, _, _, body) = get_as(&fake, &at(ACCOUNT), "user-token").await;
    assert_eq!((status, code(&body).0), (401, 1000), "a user's token");
    let (status, _, _, body) = get_as(&fake, "/user/tokens/verify", "user-token").await;
    assert_eq!(
        (status, body["result"]["status"].as_str()),
        (200, Some("active"))
    );
    let (status, _, _, body) = get_as(&fake, &at("not-an-id"), "acct-token").await;
    assert_eq!((status, code(&body).0), (400, 7003), "{body}");
    let (status, _, _, body) = get_as(&fake, &at(ACCOUNT), "nobody").await;
    assert_eq!((status, code(&body).0), (401, 1000), "an unknown token");
}
