//! Notification receivers on loopback, and one domain's real actor (in-memory zone, SQLite
//! store) with the notifier on its event bus. Included by `tests/notify.rs` with `#[path]`.
#![allow(dead_code)]

use std::future::IntoFuture;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use chrono::Utc;
use mxguard::actor::{Actor, ActorHandle};
use mxguard::config::{Config, StoreUrl};
use mxguard::engine::Engine;
use mxguard::events::EventBus;
use mxguard::health::{Health, SideHealth, TargetVerdict};
use mxguard::machine::DomainState;
use mxguard::model::{Fqdn, Side};
use mxguard::monitor::RoundReport;
use mxguard::notify::{Notifier, NotifyHandle};
use mxguard::store::{Event, Store};
use mxguard::vantage::{VantageReport, Verdict};
use mxguard_core::{Clock, Jitter};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::common::api::{
    lab_dns, memory_deps, sole_leader, MemoryDns, MxView, BACKUP_MX, DOMAIN, PRIMARY_MX,
};
use crate::common::poll;

/// A request a receiver got.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{} {}: body not JSON ({e})", self.method, self.path))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// How a receiver answers: status, extra headers, body.
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl Answer {
    pub fn status(status: u16, body: &str) -> Answer {
        Answer {
            status,
            headers: Vec::new(),
            body: body.to_string(),
        }
    }
}

type Respond = dyn Fn(&Recorded, usize) -> Answer + Send + Sync;

/// An HTTP server on 127.0.0.1 that records every request and answers through `respond`
/// (given the request and how many came before it).
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    seen: Arc<Mutex<Vec<Recorded>>>,
}

#[derive(Clone)]
struct RxState {
    seen: Arc<Mutex<Vec<Recorded>>>,
    respond: Arc<Respond>,
}

async fn record(State(st): State<RxState>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let rec = Recorded {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        headers: parts.headers,
        body,
    };
    let n = {
        let mut seen = st.seen.lock().expect("seen");
        seen.push(rec.clone());
        seen.len() - 1
    };
    let a = (st.respond)(&rec, n);
    let mut resp = (
        StatusCode::from_u16(a.status).expect("status"),
        [("content-type", "application/json")],
        a.body,
    )
        .into_response();
    for (k, v) in a.headers {
        resp.headers_mut()
            .insert(k, v.parse().expect("header value"));
    }
    resp
}

impl Receiver {
    pub async fn start(
        respond: impl Fn(&Recorded, usize) -> Answer + Send + Sync + 'static,
    ) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new().fallback(record).with_state(RxState {
            seen: seen.clone(),
            respond: Arc::new(respond),
        });
        tokio::spawn(axum::serve(listener, app).into_future());
        Receiver { url, seen }
    }

    /// A URL no server of ours answers at (e.g. [`hung`]'s); it records nothing.
    pub fn at(url: &str) -> Receiver {
        Receiver {
            url: url.to_string(),
            seen: Arc::default(),
        }
    }

    /// Answers 202 with `{"status":"success"}` (PagerDuty's answer) to everything.
    pub async fn accepting() -> Receiver {
        Receiver::start(|_, _| Answer::status(202, r#"{"status":"success"}"#)).await
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.seen.lock().expect("seen").clone()
    }

    /// Waits (generously) until at least `n` requests came, and returns them all.
    pub async fn wait_for(&self, n: usize) -> Vec<Recorded> {
        poll(
            &format!("{n} request(s) at {}", self.url),
            Duration::from_secs(30),
            || async {
                let r = self.requests();
                (r.len() >= n).then_some(r)
            },
        )
        .await
    }
}

/// A statuspage-like receiver: creates answer an id, lists answer `unresolved`.
pub async fn statuspage(unresolved: Value) -> Receiver {
    Receiver::start(move |req, _| match req.method.as_str() {
        "POST" => Answer::status(201, r#"{"id":"inc42","status":"investigating"}"#),
        "GET" => Answer::status(200, &unresolved.to_string()),
        _ => Answer::status(200, r#"{"id":"patched"}"#),
    })
    .await
}

/// Accepts TCP connections, holds them open and never answers.
pub struct Hung {
    pub url: String,
    pub accepted: Arc<AtomicUsize>,
}

pub async fn hung() -> Hung {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(stream);
        }
    });
    Hung { url, accepted }
}

/// The domain (`example.test`, primary and backup MX as in `api`) with a failback hold of 0,
/// then `notify` (a `[notify]` section).
pub fn config_text(notify: &str) -> String {
    format!(
        r#"
[providers.mem]
kind = "rfc2136"
server = "127.0.0.1:9"
tsig_name = "unused"
tsig_secret_env = "MXGUARD_TEST_UNUSED"

[[domains]]
name = "{DOMAIN}"
provider = "mem"
primary = ["{PRIMARY_MX}"]
backup = ["{BACKUP_MX}"]
failover_ttl = 30
failback = {{ hold = "0s" }}

{notify}
"#
    )
}

/// One domain's real actor on an in-memory zone, with the notifier subscribed to its bus
/// before the actor starts (so it sees every event).
pub struct NotifyLab {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub dns: Arc<MemoryDns>,
    pub handle: ActorHandle,
    pub bus: EventBus,
    pub notify: NotifyHandle,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    dir: Arc<tempfile::TempDir>,
}

impl Drop for NotifyLab {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl NotifyLab {
    pub async fn start(notify: &str) -> NotifyLab {
        let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
        let dns = Arc::new(lab_dns());
        dns.hand_edit_mx(PRIMARY_MX, 300);
        NotifyLab::boot(notify, dir, dns, None).await
    }

    /// The same store and zone, a new process: the old one is shut down first.
    pub async fn restart(self, notify: &str) -> NotifyLab {
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        self.store.close().await;
        let (dir, dns) = (self.dir.clone(), self.dns.clone());
        drop(self);
        NotifyLab::boot(notify, dir, dns, None).await
    }

    pub async fn boot(
        notify: &str,
        dir: Arc<tempfile::TempDir>,
        dns: Arc<MemoryDns>,
        clock: Option<(Arc<dyn Clock>, Arc<dyn Jitter>)>,
    ) -> NotifyLab {
        let config = Config::parse("notify-test.toml", &config_text(notify)).expect("config");
        let url = StoreUrl::parse(&format!(
            "sqlite://{}",
            dir.path().join("notify.db").display()
        ))
        .expect("url");
        let store = mxguard::store::open(&url).await.expect("store");
        store.migrate().await.expect("migrate");
        let leadership = sole_leader(&*store).await;
        let engine = Engine {
            leadership: leadership.clone(),
            ..Engine::default()
        };
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let mut notifier = Notifier::new(config.notify.clone(), store.clone());
        if let Some((clock, jitter)) = clock {
            notifier = notifier.with_clock(clock, jitter);
        }
        let notify = notifier.start(&engine.events, shutdown.clone(), &tasks);
        let d = config.domains[0].clone();
        let deps = memory_deps(&store, &dns, &leadership, &engine.events, &d.provider);
        let (actor, handle) = Actor::new(d, deps);
        tasks.spawn(actor.run(shutdown.clone()));
        let lab = NotifyLab {
            config,
            store,
            dns,
            handle,
            bus: engine.events.clone(),
            notify,
            shutdown,
            tasks,
            dir,
        };
        let h = lab.handle.clone();
        poll(
            "the actor's first read of the zone",
            Duration::from_secs(10),
            || {
                let h = h.clone();
                async move {
                    let s = h.status().await.ok()?;
                    s.state.published.is_some().then_some(())
                }
            },
        )
        .await;
        lab
    }

    pub fn domain(&self) -> Fqdn {
        Fqdn::parse(DOMAIN).expect("name")
    }

    /// One probe round of `side` as this (only) vantage saw it.
    pub async fn round(&self, side: Side, health: Health, reason: &str) {
        let now = Utc::now();
        let up = health == Health::Up;
        let target = match side {
            Side::Primary => "mx1.example.test.",
            Side::Backup => "backup.example.test.",
        };
        let verdict = TargetVerdict {
            target: Fqdn::parse(target).expect("target"),
            up,
            soft: false,
            reason: reason.into(),
        };
        let report = RoundReport {
            domain: self.domain(),
            side,
            at: now,
            pass: up,
            verdicts: vec![verdict.clone()],
            health: SideHealth {
                side,
                health,
                since: Some(now),
                failures: u32::from(!up),
                hard_failures: u32::from(!up),
                failing_since: (!up).then_some(now),
                soft: false,
                passes: u32::from(up),
                rounds: 1,
            },
            change: None,
            confirmation: false,
            evidence: Vec::new(),
        };
        let own = VantageReport {
            vantage: "test".into(),
            side,
            at: now,
            health,
            pass: up,
            partitioned: None,
            verdicts: vec![Verdict::from(&verdict)].into(),
        };
        assert!(self.handle.round(report, own).await, "actor gone");
    }

    /// Waits until the machine's persisted-and-running state satisfies `want`.
    pub async fn until(&self, what: &str, want: impl Fn(&DomainState) -> bool) -> DomainState {
        let h = self.handle.clone();
        poll(what, Duration::from_secs(30), || {
            let h = h.clone();
            let want = &want;
            async move {
                let s = h.status().await.ok()?.state;
                want(&s).then_some(s)
            }
        })
        .await
    }

    /// The stored machine state (what a restart reads).
    pub async fn persisted(&self) -> DomainState {
        let row = self
            .store
            .load_state(&self.domain())
            .await
            .expect("load")
            .expect("a state row");
        serde_json::from_value(row.state["machine"].clone()).expect("machine state")
    }

    pub async fn events(&self) -> Vec<Event> {
        self.store
            .events(&self.domain(), None, 1000)
            .await
            .expect("events")
    }

    /// Waits until every target has handled everything queued for it.
    pub async fn settled(&self) {
        let handle = self.notify.clone();
        poll(
            "notification queues drained",
            Duration::from_secs(30),
            || {
                let handle = handle.clone();
                async move {
                    handle
                        .targets()
                        .all(|t| {
                            let s = handle.stats(t).expect("stats");
                            s.queued == s.delivered + s.skipped + s.failed
                        })
                        .then_some(())
                }
            },
        )
        .await;
    }
}
