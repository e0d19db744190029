//! A fake Cloudflare API v4 (DNS records), written from
//! `shared/reference/cloudflare-dns-api.md`: stateful, strict about request shapes, paginated,
//! answering with the real envelope, and able to fail on demand (429 with `retry-after`, 5xx,
//! slow answers, a batch failing as a whole). Every token has an [`Owner`], a user or an
//! account: optionally the fake enforces Cloudflare's global rate limit per owner, across all
//! its tokens ([`FakeConfig::rate_limit`]), and account-owned tokens verify only at their
//! account's endpoint. Served by axum on a loopback port.
//!
//! The one mock among the test peers: Cloudflare cannot be run locally. It is shared by the
//! Cloudflare provider's tests and the failover benchmark (mass outage).

mod batch;
mod dns;
mod handlers;
mod query;
pub mod records;
mod rules;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

pub use dns::FakeNameserver;
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

/// Who a token belongs to. Cloudflare counts its global rate limit per owner: per user for
/// user-owned tokens (all of that user's tokens together), per account for account-owned ones
/// (reference §9, §12).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Owner {
    User(String),
    /// The account's id (32 hex characters, as in `/accounts/{account_id}/…`).
    Account(String),
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
    /// That status with a plain-text body and no envelope, as a proxy in between answers.
    Bare(u16),
    /// 409, a lock timeout: another change to the zone held its lock (nothing applied).
    LockTimeout,
    /// That status with `x-should-retry: <retry>` (nothing applied).
    ShouldRetry { status: u16, retry: bool },
}

pub struct Zone {
    pub id: String,
    pub name: String,
    pub records: Vec<Record>,
}

pub struct State {
    pub tokens: HashMap<String, Perms>,
    /// Each token's owner; a token missing here is its own user.
    owners: HashMap<String, Owner>,
    pub zones: Vec<Zone>,
    pub next_id: u64,
    faults: Vec<(Route, Fault, usize)>,
    pub min_ttl: u32,
    pub batch_limit: usize,
    pub max_per_page: u32,
    /// `METHOD /path?query` of every request that passed authentication.
    pub requests: Vec<String>,
    /// Requests that changed something and succeeded (faults and refusals not counted).
    pub writes: usize,
    /// Answer the batch endpoint with 404 / 7000 "No route for that URI".
    pub batch_disabled: bool,
    /// The global rate limit, when enforced.
    pub rate_limit: Option<RateLimitPolicy>,
    /// Per owner: when its requests in the current window arrived, and a lockout.
    windows: HashMap<Owner, OwnerWindow>,
    /// What the rate limit did so far.
    pub limit_stats: LimitStats,
}

/// Cloudflare's global API limit: at most `quota` requests of one owner (all its tokens) in
/// any `window`. The request over it gets 429 (code 10100, `retry-after`), and so does every
/// request of any token of that owner for the next `window` ("all API calls blocked for the
/// next five minutes"). Every answer carries `Ratelimit` and `Ratelimit-Policy` headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimitPolicy {
    pub quota: u32,
    pub window: Duration,
}

impl RateLimitPolicy {
    /// What Cloudflare enforces: 1,200 requests per 5 minutes.
    pub const CLOUDFLARE: RateLimitPolicy = RateLimitPolicy {
        quota: 1_200,
        window: Duration::from_secs(300),
    };
}

/// Counters of the rate limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimitStats {
    /// Authenticated requests counted against the limit.
    pub counted: u64,
    /// 429s the limit sent (the first over the quota and every one during a lockout).
    pub refused: u64,
    /// Times an owner was locked out.
    pub lockouts: u64,
    /// The most requests of one owner seen inside one window.
    pub peak_in_window: u32,
}

#[derive(Debug, Default)]
struct OwnerWindow {
    arrivals: VecDeque<Instant>,
    blocked_until: Option<Instant>,
}

/// What the rate limit says about one request.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Admission {
    /// No limit configured: nothing is counted.
    Unlimited,
    /// Counted: `remaining` requests left in the window, which frees a slot in `reset`.
    Admitted { remaining: u32, reset: Duration },
    /// Refused: the owner is locked out for `retry_after`.
    Refused { retry_after: Duration },
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
            .ok_or_else(|| ApiError::unroutable(&format!("/zones/{id}/dns_records")))
    }

    /// Who owns `token` (a token added without an owner is its own user).
    pub fn owner_of(&self, token: &str) -> Owner {
        self.owners
            .get(token)
            .cloned()
            .unwrap_or_else(|| Owner::User(token.to_string()))
    }

    /// Counts a request of `owner` arriving `now` against the rate limit.
    pub(crate) fn admit(&mut self, owner: &Owner, now: Instant) -> Admission {
        let Some(policy) = self.rate_limit else {
            return Admission::Unlimited;
        };
        let w = self.windows.entry(owner.clone()).or_default();
        self.limit_stats.counted += 1;
        if let Some(until) = w.blocked_until {
            if now < until {
                self.limit_stats.refused += 1;
                return Admission::Refused {
                    retry_after: until - now,
                };
            }
            w.blocked_until = None;
            w.arrivals.clear();
        }
        while w
            .arrivals
            .front()
            .is_some_and(|t| now.duration_since(*t) >= policy.window)
        {
            w.arrivals.pop_front();
        }
        if w.arrivals.len() >= policy.quota as usize {
            w.blocked_until = Some(now + policy.window);
            self.limit_stats.refused += 1;
            self.limit_stats.lockouts += 1;
            return Admission::Refused {
                retry_after: policy.window,
            };
        }
        w.arrivals.push_back(now);
        let used = u32::try_from(w.arrivals.len()).unwrap_or(u32::MAX);
        self.limit_stats.peak_in_window = self.limit_stats.peak_in_window.max(used);
        let reset = w.arrivals.front().map_or(Duration::ZERO, |t| {
            (*t + policy.window).saturating_duration_since(now)
        });
        Admission::Admitted {
            remaining: policy.quota.saturating_sub(used),
            reset,
        }
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
    /// Enforce a global rate limit per owner (default: none; see [`RateLimitPolicy`]).
    pub rate_limit: Option<RateLimitPolicy>,
}

impl Default for FakeConfig {
    fn default() -> Self {
        FakeConfig {
            enterprise: false,
            batch_limit: 200,
            max_per_page: 5_000,
            rate_limit: None,
        }
    }
}

pub type Shared = Arc<Mutex<State>>;

pub struct FakeCloudflare {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT/client/v4`
    pub base_url: String,
    state: Shared,
    served: crate::served::Served,
}

impl FakeCloudflare {
    /// Starts the fake on a loopback port; panics when no port can be bound (see
    /// [`FakeCloudflare::try_start`]).
    pub async fn start(config: FakeConfig) -> FakeCloudflare {
        match FakeCloudflare::try_start(config).await {
            Ok(fake) => fake,
            Err(e) => panic!("starting the fake Cloudflare API: {e}"),
        }
    }

    /// Starts the fake on a loopback port (in the calling tokio runtime).
    pub async fn try_start(config: FakeConfig) -> crate::Result<FakeCloudflare> {
        let state: Shared = Arc::new(Mutex::new(State {
            tokens: HashMap::new(),
            owners: HashMap::new(),
            zones: Vec::new(),
            next_id: 0x5eed_0000,
            faults: Vec::new(),
            min_ttl: if config.enterprise { 30 } else { 60 },
            batch_limit: config.batch_limit,
            max_per_page: config.max_per_page,
            requests: Vec::new(),
            writes: 0,
            batch_disabled: false,
            rate_limit: config.rate_limit,
            windows: HashMap::new(),
            limit_stats: LimitStats::default(),
        }));
        let app = axum::Router::new()
            .fallback(handlers::handle)
            .with_state(Arc::clone(&state));
        let served = crate::served::Served::start(app, "the fake Cloudflare API").await?;
        let addr = served.addr;
        Ok(FakeCloudflare {
            addr,
            base_url: format!("http://{addr}/client/v4"),
            state,
            served,
        })
    }

    /// Starts an authoritative nameserver for the fake's zones on a loopback UDP port: what
    /// Cloudflare's nameservers would serve, from the same records the API changes.
    pub fn serve_dns(&self) -> crate::Result<FakeNameserver> {
        FakeNameserver::start(Arc::clone(&self.state))
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a token that is its own user (its rate limit shared with no other token).
    pub fn add_token(&self, token: &str, perms: Perms) {
        self.state().tokens.insert(token.to_string(), perms);
    }

    /// Tokens owned by user `user`: they share one rate-limit budget.
    /// `fake.user("ops").token("a", Perms::FULL).token("b", Perms::READ_ONLY);`
    pub fn user(&self, user: &str) -> OwnedTokens<'_> {
        OwnedTokens {
            fake: self,
            owner: Owner::User(user.to_string()),
        }
    }

    /// Account-owned tokens of account `account_id` (32 hex characters): they share the
    /// account's budget, and verify at `/accounts/{account_id}/tokens/verify` only.
    pub fn account(&self, account_id: &str) -> OwnedTokens<'_> {
        OwnedTokens {
            fake: self,
            owner: Owner::Account(account_id.to_string()),
        }
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

    /// Drops every fault not yet used up.
    pub fn clear_faults(&self) {
        self.state().faults.clear();
    }

    pub fn requests(&self) -> Vec<String> {
        self.state().requests.clone()
    }

    /// How many requests changed something and succeeded so far.
    pub fn writes(&self) -> usize {
        self.state().writes
    }

    /// How many requests passed authentication so far.
    pub fn request_count(&self) -> usize {
        self.state().requests.len()
    }

    /// What the rate limit did so far (all zero when none is enforced).
    pub fn limit_stats(&self) -> LimitStats {
        self.state().limit_stats
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
        self.served.stop().await;
    }
}

/// Adds tokens under one owner (see [`FakeCloudflare::user`], [`FakeCloudflare::account`]).
pub struct OwnedTokens<'a> {
    fake: &'a FakeCloudflare,
    owner: Owner,
}

impl OwnedTokens<'_> {
    pub fn token(self, token: &str, perms: Perms) -> Self {
        let mut s = self.fake.state();
        s.tokens.insert(token.to_string(), perms);
        s.owners.insert(token.to_string(), self.owner.clone());
        drop(s);
        self
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
    let body = json!({"success": false, "errors": e.errors_json(), "messages": [], "result": null});
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    (status, axum::Json(body)).into_response()
}

/// A 429 as Cloudflare sends it, under Cloudflare's policy (injected faults).
pub fn rate_limited(retry_after: u64) -> Response {
    rate_limited_by(RateLimitPolicy::CLOUDFLARE, retry_after)
}

/// A 429 under `policy`: code 10100, `retry-after` in whole seconds (rounded up), the
/// `Ratelimit` / `Ratelimit-Policy` headers.
pub fn rate_limited_by(policy: RateLimitPolicy, retry_after: u64) -> Response {
    let e = ApiError::new(
        429,
        10100,
        format!(
            "More than {} requests per {} seconds reached. Please wait and consider throttling your request speed",
            policy.quota,
            policy.window.as_secs()
        ),
    );
    let mut r = fail(&e);
    set_limit_headers(&mut r, policy, 0, retry_after);
    if let Ok(v) = HeaderValue::from_str(&retry_after.to_string()) {
        r.headers_mut().insert("retry-after", v);
    }
    r
}

/// `Ratelimit: "default";r=<remaining>;t=<secs to reset>` and
/// `Ratelimit-Policy: "burst";q=<quota>;w=<window secs>`, as on every Cloudflare answer
/// (reference §9).
pub(crate) fn set_limit_headers(
    r: &mut Response,
    policy: RateLimitPolicy,
    remaining: u32,
    reset_secs: u64,
) {
    let h = r.headers_mut();
    for (name, value) in [
        (
            "ratelimit",
            format!("\"default\";r={remaining};t={reset_secs}"),
        ),
        (
            "ratelimit-policy",
            format!("\"burst\";q={};w={}", policy.quota, policy.window.as_secs()),
        ),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    }
}

/// Whole seconds, rounded up (`retry-after` never says to come back too early).
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}
