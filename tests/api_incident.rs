//! End to end over a real port: the `mxguard serve` binary against BIND (RFC 2136 + TSIG), two
//! Unbound resolvers and two Postfix MX hosts, driven as a chatops bot would through an
//! incident: read status, snapshot, pin the backup (named then serves the backup MX), read the
//! events, unpin, and revert to the snapshot with an admin token.

mod common;

use std::time::Duration;

use chrono::Utc;
use common::api::sha256_hex;
use common::lab::{Lab, LabOptions};
use serde_json::{json, Value};

const BOT: &str = "bot-token-0123456789";
const OPS: &str = "ops-token-9876543210";

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v)
    }

    async fn get(&self, path: &str) -> Value {
        let (status, v) = self.send(reqwest::Method::GET, path, BOT, None).await;
        assert_eq!(status, 200, "GET {path}: {v}");
        v
    }
}

/// `text` without ANSI colour sequences (`ESC [ … m`).
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The address `mxguard serve` logged it listens on.
async fn listen_addr(mx: &common::lab::Mxguard) -> String {
    common::poll("mxguard serving", Duration::from_secs(60), || async {
        let log = plain(&mx.log());
        let line = log.lines().find(|l| l.contains("mxguard serving"))?;
        let at = line.find("listen=")? + "listen=".len();
        let addr: String = line[at..]
            .chars()
            .take_while(|c| !c.is_whitespace())
            .collect();
        Some(addr)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_incident_driven_by_a_bot() {
    let lab = Lab::start(LabOptions {
        hold: "1h",
        mx_ttl: 300,
    })
    .await;
    let mut text = std::fs::read_to_string(&lab.config).expect("config");
    text.push_str(&format!(
        "\n[[tokens]]\nname = \"bot\"\nsha256 = \"{}\"\nscopes = [\"read\", \"operate\"]\n\
         \n[[tokens]]\nname = \"ops\"\nsha256 = \"{}\"\nscopes = [\"admin\"]\n",
        sha256_hex(BOT),
        sha256_hex(OPS)
    ));
    std::fs::write(&lab.config, text).expect("write config");
    let mut mx = lab.serve(None);
    let c = Client {
        http: reqwest::Client::new(),
        base: format!("http://{}", listen_addr(&mx).await),
    };
    let d = "/v1/domains/example.test";

    // read status until the controller has settled on the primary
    let status = common::poll("phase primary", Duration::from_secs(60), || async {
        let (code, v) = c.send(reqwest::Method::GET, d, BOT, None).await;
        (code == 200 && v["phase"] == "primary").then_some(v)
    })
    .await;
    assert_eq!(status["health"]["primary"], "up", "{status}");
    assert_eq!(status["active"], "primary");
    assert_eq!(lab.served_mx().await, vec!["10 mx1.example.test. 300"]);

    // a snapshot before touching anything (operate is enough)
    let (code, snap) = c
        .send(
            reqwest::Method::POST,
            "/v1/snapshots",
            BOT,
            Some(json!({"domain": "example.test", "label": "before incident", "reason": "incident #123"})),
        )
        .await;
    assert_eq!(code, 201, "{snap}");
    let id = snap["snapshot"]["id"].as_i64().expect("id");

    // pin the backup: named serves the backup MX with the failover TTL
    let until = (Utc::now() + chrono::Duration::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (code, v) = c
        .send(
            reqwest::Method::PUT,
            &format!("{d}/pin"),
            BOT,
            Some(json!({"side": "backup", "until": until, "reason": "provider incident #123"})),
        )
        .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        v["message"],
        format!("example.test pinned to backup until {until} by bot: provider incident #123")
    );
    common::poll(
        "named serves the backup MX",
        Duration::from_secs(30),
        || async {
            (lab.served_mx().await == vec!["10 backup.example.test. 30".to_string()]).then_some(())
        },
    )
    .await;
    common::poll("phase on_backup", Duration::from_secs(30), || async {
        (c.get(d).await["phase"] == "on_backup").then_some(())
    })
    .await;

    // the events say who and why
    let events = c.get(&format!("{d}/events")).await;
    let list = events["events"].as_array().expect("events");
    assert!(
        list.iter().any(|e| e["kind"] == "override"
            && e["actor"] == "bot"
            && e["reason"] == "provider incident #123"),
        "{events}"
    );
    assert!(
        list.iter().any(|e| e["kind"] == "change"),
        "the change is on the timeline: {events}"
    );

    // unpin: the hold (1 h) keeps the backup published
    let (code, v) = c
        .send(
            reqwest::Method::DELETE,
            &format!("{d}/pin"),
            BOT,
            Some(json!({"reason": "provider recovered"})),
        )
        .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        v["message"],
        "example.test unpinned by bot: provider recovered"
    );

    // the bot may not revert; ops (admin) reverts to the snapshot: the primary with its TTL
    let revert = format!("/v1/snapshots/{id}/revert");
    let body = json!({"reason": "restore pre-incident records"});
    let (code, v) = c
        .send(reqwest::Method::POST, &revert, BOT, Some(body.clone()))
        .await;
    assert_eq!(code, 403, "{v}");
    let (code, v) = c
        .send(reqwest::Method::POST, &revert, OPS, Some(body))
        .await;
    assert_eq!(code, 200, "{v}");
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with(&format!(
                "example.test: reverted to snapshot {id} by ops: restore pre-incident records"
            ))),
        "{v}"
    );
    assert_eq!(lab.served_mx().await, vec!["10 mx1.example.test. 300"]);
    let events = c.get(&format!("{d}/events?limit=1000")).await;
    assert!(
        events["events"]
            .as_array()
            .expect("events")
            .iter()
            .any(|e| e["kind"] == "revert" && e["actor"] == "ops"),
        "{events}"
    );
    assert!(
        !mx.log().contains(BOT) && !mx.log().contains(OPS),
        "a token was logged"
    );
    assert_eq!(mx.terminate(), Some(0), "{}", mx.log());
}
