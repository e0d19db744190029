//! A fake Cloudflare API v4 (DNS records), written from
//! `shared/reference/cloudflare-dns-api.md`: stateful, strict about request shapes, paginated,
//! answering with the real envelope, and able to fail on demand (429 with `retry-after`, 5xx,
//! slow answers, a batch failing as a whole). Served by axum on a loopback port.
#![allow(dead_code)]

mod batch;
mod handlers;
mod query;
pub mod records;
mod rules;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use records::{ApiError, Record};

/// What a token may do.
#[derive(Clone, Copy, Debug)]
pub struct Perms {
    pub zone_read: bool,
    pub dns_read: bool,
    pub dns_write: bool,
    pub active: bool,
}

impl Perms {
    /// Zone:Read + DNS:Edit, what mxguard needs.
    pub const FULL: Perms = Perms {
        zone_read: true,
        dns_read: true,
        dns_write: true,
        active: true,
    };
    pub const READ_ONLY: Perms = Perms {
        dns_write: false,
        ..Perms::FULL
    };
}

/// Which requests a fault applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Any,
    Verify,
    Zones,
    List,
    Batch,
    /// The single-record endpoints (create, get, patch, put, delete).
    Record,
}

#[derive(Clone, Debug)]
pub enum Fault {
    /// 429, code 10100, `retry-after` in seconds, `Ratelimit` / `Ratelimit-Policy` headers.
    RateLimit { retry_after: u64 },
    /// That status with a generic envelope (for 5xx).
    Status(u16),
    /// Answer only after this long (to exercise client timeouts).
    Delay(Duration),
    /// A batch that fails as a whole with this error, after validating and applying its
    /// operations to a copy: nothing is applied.
    FailBatch(ApiError),
}

pub struct Zone {
    pub id: String,
    pub name: String,
    pub records: Vec<Record>,
}

pub struct State {
    pub tokens: HashMap<String, Perms>,
    pub zones: Vec<Zone>,
    pub next_id: u64,
    faults: Vec<(Route, Fault, usize)>,
    pub min_ttl: u32,
    pub batch_limit: usize,
    pub max_per_page: u32,
    /// `METHOD /path?query` of every request that passed authentication.
    pub requests: Vec<String>,
    /// Answer the batch endpoint with 404 / 7000 "No route for that URI".
    pub batch_disabled: bool,
}

impl State {
    pub fn new_id(&mut self) -> String {
        self.next_id += 1;
        format!("{:032x}", self.next_id)
    }

    pub fn zone_mut(&mut self, id: &str) -> Result<&mut Zone, ApiError> {
        self.zones
            .iter_mut()
            .find(|z| z.id == id)
            .ok_or_else(|| ApiError::new(404, 7003, format!("Could not route to /zones/{id}/dns_records, perhaps your object identifier is invalid?")))
    }

    fn take_fault(&mut self, route: Route) -> Option<Fault> {
        let i = self
            .faults
            .iter()
            .position(|(r, _, n)| *n > 0 && (*r == Route::Any || *r == route))?;
        self.faults[i].2 -= 1;
        Some(self.faults[i].1.clone())
    }
}

/// Options the fake starts with.
#[derive(Clone, Debug)]
pub struct FakeConfig {
    pub enterprise: bool,
    pub batch_limit: usize,
    pub max_per_page: u32,
}

impl Default for FakeConfig {
    fn default() -> Self {
        FakeConfig {
            enterprise: false,
            batch_limit: 200,
            max_per_page: 5_000,
        }
    }
}

pub type Shared = Arc<Mutex<State>>;

pub struct FakeCloudflare {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT/client/v4`
    pub base_url: String,
    state: Shared,
    shutdown: Mutex<Option<(oneshot::Sender<()>, JoinHandle<()>)>>,
}

impl FakeCloudflare {
    pub async fn start(config: FakeConfig) -> FakeCloudflare {
        let state: Shared = Arc::new(Mutex::new(State {
            tokens: HashMap::new(),
            zones: Vec::new(),
            next_id: 0x5eed_0000,
            faults: Vec::new(),
            min_ttl: if config.enterprise { 30 } else { 60 },
            batch_limit: config.batch_limit,
            max_per_page: config.max_per_page,
            requests: Vec::new(),
            batch_disabled: false,
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding a loopback port");
        let addr = listener.local_addr().expect("local address");
        let app = axum::Router::new()
            .fallback(handlers::handle)
            .with_state(Arc::clone(&state));
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        FakeCloudflare {
            addr,
            base_url: format!("http://{addr}/client/v4"),
            state,
            shutdown: Mutex::new(Some((tx, task))),
        }
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn add_token(&self, token: &str, perms: Perms) {
        self.state().tokens.insert(token.to_string(), perms);
    }

    /// Adds a zone and returns its id.
    pub fn add_zone(&self, name: &str) -> String {
        let mut s = self.state();
        let id = s.new_id();
        s.zones.push(Zone {
            id: id.clone(),
            name: name.trim_end_matches('.').to_ascii_lowercase(),
            records: Vec::new(),
        });
        id
    }

    /// Fails the next `times` requests to `route` with `fault`.
    pub fn inject(&self, route: Route, fault: Fault, times: usize) {
        self.state().faults.push((route, fault, times));
    }

    pub fn requests(&self) -> Vec<String> {
        self.state().requests.clone()
    }

    pub fn records(&self, zone: &str) -> Vec<Record> {
        let s = self.state();
        s.zones
            .iter()
            .find(|z| z.name == zone.trim_end_matches('.'))
            .map(|z| z.records.clone())
            .unwrap_or_default()
    }

    /// Edits a zone behind the provider's back (someone in the dashboard).
    pub fn edit(&self, zone: &str, f: impl FnOnce(&mut Vec<Record>, &mut dyn FnMut() -> String)) {
        let mut s = self.state();
        let mut next = s.next_id;
        let zone = zone.trim_end_matches('.').to_string();
        if let Some(z) = s.zones.iter_mut().find(|z| z.name == zone) {
            let mut new_id = || {
                next += 1;
                format!("{next:032x}")
            };
            f(&mut z.records, &mut new_id);
        }
        s.next_id = next;
    }

    /// Stops serving: later connections are refused.
    pub async fn stop(&self) {
        let taken = self
            .shutdown
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some((tx, task)) = taken {
            let _ = tx.send(());
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}

// ---- the envelope ----

pub fn ok(result: Value, info: Option<Value>) -> Response {
    let mut body = json!({"success": true, "errors": [], "messages": [], "result": result});
    if let Some(info) = info {
        body["result_info"] = info;
    }
    (StatusCode::OK, axum::Json(body)).into_response()
}

pub fn fail(e: &ApiError) -> Response {
    let body = json!({"success": false, "errors": [e.to_json()], "messages": [], "result": null});
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    (status, axum::Json(body)).into_response()
}

pub fn rate_limited(retry_after: u64) -> Response {
    let e = ApiError::new(429, 10100, "More than 1200 requests per 300 seconds reached. Please wait and consider throttling your request speed");
    let mut r = fail(&e);
    let h = r.headers_mut();
    for (name, value) in [
        ("retry-after", retry_after.to_string()),
        ("ratelimit", format!("\"default\";r=0;t={retry_after}")),
        ("ratelimit-policy", "\"burst\";q=1200;w=300".to_string()),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    }
    r
}
