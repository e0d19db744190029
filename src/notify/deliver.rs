//! One worker per target: takes items off the target's queue in order and delivers each with
//! retries (mxguard-core's `Retrier`: exponential backoff with jitter, `Retry-After` honoured,
//! bounded attempts and time). Connection failures, timeouts, 408, 429 and 5xx are retried;
//! other answers are final. A notification given up is counted and recorded as a
//! `notify_failed` event in its domain's timeline.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use mxguard_core::{Clock, Jitter, ProviderError, Retrier, RetryPolicy};
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::classify::{truncate, Item};
use super::{count_outcome, describe_metrics, pagerduty, slack, statuspage, webhook, Stats};
use crate::config::{Delivery, NotifyTarget, SecretSource, TargetKind};
use crate::store::{NewEvent, Store};

pub fn http_client(d: &Delivery) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(d.timeout)
        .connect_timeout(d.timeout)
        // A redirect could carry a signed body or a credential somewhere else: never follow.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("mxguard/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// What every worker shares.
#[derive(Clone)]
pub struct Context {
    pub http: reqwest::Client,
    pub store: Arc<dyn Store>,
    pub delivery: Delivery,
    pub clock: Arc<dyn Clock>,
    pub jitter: Arc<dyn Jitter>,
    /// When this notifier started: incidents older than this may have Statuspage incidents
    /// this process does not know the id of.
    pub started: DateTime<Utc>,
}

/// Why a notification was not delivered. Never holds a secret or a secret URL.
#[derive(Debug)]
struct Failed {
    attempts: u32,
    error: String,
}

enum Outcome {
    Delivered,
    /// Nothing to send for this item (e.g. the Statuspage status did not change).
    Skipped(&'static str),
}

/// A Statuspage incident this worker created or found.
struct Tracked {
    id: String,
    last: statuspage::Public,
}

pub struct Worker {
    name: String,
    target: NotifyTarget,
    cx: Context,
    retrier: Retrier,
    stats: Arc<Stats>,
    /// Statuspage incidents by incident key.
    statuspage: HashMap<String, Tracked>,
    /// Incidents older than this process whose Statuspage incident was looked up (once).
    looked_up: HashSet<String>,
}

/// One HTTP request to make (built again for each attempt).
struct Request {
    method: Method,
    url: String,
    body: Option<Vec<u8>>,
    headers: Vec<(&'static str, String)>,
    /// Webhooks sign each attempt with a fresh timestamp.
    sign_with: Option<Vec<u8>>,
    /// The secret this request carries, blanked out of any error text (a receiver may echo it).
    secret: Option<String>,
}

impl Request {
    fn json(method: Method, url: String, body: &Value) -> Request {
        Request {
            method,
            url,
            body: Some(serde_json::to_vec(body).unwrap_or_default()),
            headers: Vec::new(),
            sign_with: None,
            secret: None,
        }
    }
}

impl Worker {
    pub fn new(name: String, target: NotifyTarget, cx: Context, stats: Arc<Stats>) -> Worker {
        let retrier = Retrier::new(
            retry_policy(&cx.delivery),
            cx.clock.clone(),
            cx.jitter.clone(),
        );
        Worker {
            name,
            target,
            cx,
            retrier,
            stats,
            statuspage: HashMap::new(),
            looked_up: HashSet::new(),
        }
    }

    fn kind(&self) -> &'static str {
        self.target.kind.as_str()
    }

    pub async fn run(mut self, mut rx: mpsc::Receiver<Arc<Item>>, shutdown: CancellationToken) {
        loop {
            let item = tokio::select! {
                _ = shutdown.cancelled() => break,
                item = rx.recv() => match item {
                    Some(i) => i,
                    None => break,
                },
            };
            tokio::select! {
                // A delivery still retrying at shutdown is abandoned: the event is in the timeline.
                _ = shutdown.cancelled() => break,
                _ = self.handle(&item) => {}
            }
        }
        tracing::debug!(target = %self.name, "notification worker stopped");
    }

    async fn handle(&mut self, item: &Item) {
        let kind = self.kind();
        match self.deliver(item).await {
            Ok(Outcome::Delivered) => {
                Stats::bump(&self.stats.delivered);
                count_outcome(&self.name, kind, "delivered");
                tracing::debug!(target = %self.name, kind, event = item.notice.event.id, "notification delivered");
            }
            Ok(Outcome::Skipped(why)) => {
                Stats::bump(&self.stats.skipped);
                count_outcome(&self.name, kind, "skipped");
                tracing::debug!(target = %self.name, kind, event = item.notice.event.id, why, "nothing to send");
            }
            Err(f) => {
                Stats::bump(&self.stats.failed);
                count_outcome(&self.name, kind, "failed");
                self.record_failure(item, &f).await;
            }
        }
    }

    /// The timeline entry for a notification given up. Written to the store only: publishing
    /// it on the bus would notify about notifications.
    async fn record_failure(&self, item: &Item, f: &Failed) {
        let e = &item.notice.event;
        let message = format!(
            "notification to {} ({}) about event {} ({}) failed after {} attempt(s): {}",
            self.name,
            self.kind(),
            e.id,
            e.kind,
            f.attempts,
            f.error
        );
        tracing::warn!(target = %self.name, kind = self.kind(), domain = %e.domain, event = e.id, attempts = f.attempts, error = %f.error, "notification given up");
        let ev = NewEvent {
            domain: e.domain.clone(),
            at: Utc::now(),
            kind: crate::events::EventKind::NotifyFailed,
            actor: "notify".into(),
            reason: None,
            message,
            evidence: json!({
                "target": self.name,
                "target_kind": self.kind(),
                "event_id": e.id,
                "event_kind": e.kind,
                "attempts": f.attempts,
                "error": f.error,
            })
            .into(),
        };
        if let Err(err) = self.cx.store.append_event(&ev).await {
            tracing::error!(target = %self.name, error = %err, "notify_failed event not recorded");
        }
    }

    async fn deliver(&mut self, item: &Item) -> Result<Outcome, Failed> {
        match self.target.kind.clone() {
            TargetKind::Webhook { url, secret } => {
                let secret = read_secret(&secret)?;
                let body = webhook::payload(item);
                let mut req = Request::json(Method::POST, url, &body);
                req.headers = vec![
                    (webhook::EVENT_HEADER, item.notice.event.kind.to_string()),
                    (webhook::DELIVERY_HEADER, item.notice.event.id.to_string()),
                ];
                req.sign_with = Some(secret.clone().into_bytes());
                req.secret = Some(secret);
                self.send(req).await.map(|_| Outcome::Delivered)
            }
            TargetKind::Slack { url } => {
                let url = read_secret(&url)?;
                let mut req = Request::json(Method::POST, url.clone(), &slack::message(item));
                req.secret = Some(url);
                self.send(req).await.map(|_| Outcome::Delivered)
            }
            TargetKind::PagerDuty {
                routing_key,
                api_url,
            } => {
                let key = read_secret(&routing_key)?;
                let Some(body) = pagerduty::event(item, &key) else {
                    return Ok(Outcome::Skipped("no incident"));
                };
                let mut req = Request::json(Method::POST, format!("{api_url}/v2/enqueue"), &body);
                req.secret = Some(key);
                self.send(req).await.map(|_| Outcome::Delivered)
            }
            TargetKind::Statuspage {
                page_id,
                component_id,
                api_key,
                api_url,
            } => {
                let key = read_secret(&api_key)?;
                let base = format!("{api_url}/v1/pages/{page_id}/incidents");
                self.statuspage(item, &base, &component_id, &key).await
            }
        }
    }

    async fn statuspage(
        &mut self,
        item: &Item,
        base: &str,
        component_id: &str,
        key: &str,
    ) -> Result<Outcome, Failed> {
        let Some(incident) = item.incident.clone() else {
            return Ok(Outcome::Skipped("no incident"));
        };
        let auth = vec![("authorization", format!("OAuth {key}"))];
        let wanted = statuspage::public(item);
        let mut known = self.statuspage.remove(&incident.key);
        if known.is_none()
            && incident.since < self.cx.started
            && self.looked_up.insert(incident.key.clone())
        {
            // Begun before this process: a Statuspage incident may exist that we lost the id of.
            let name = statuspage::incident_name(item).unwrap_or_default();
            let req = Request {
                method: Method::GET,
                url: format!("{base}/unresolved"),
                body: None,
                headers: auth.clone(),
                sign_with: None,
                secret: Some(key.to_string()),
            };
            let list = self.send(req).await?;
            known = statuspage::find(&list, &name).map(|id| Tracked {
                id,
                last: statuspage::Public {
                    incident: "",
                    component: "",
                },
            });
        }
        match known {
            None if item.resolves => Ok(Outcome::Skipped("no Statuspage incident to resolve")),
            None if item.severity < self.target.min_severity => Ok(Outcome::Skipped(
                "below the severity that opens an incident",
            )),
            None => {
                let Some(body) = statuspage::create(item, component_id) else {
                    return Ok(Outcome::Skipped("no incident"));
                };
                let mut req = Request::json(Method::POST, base.to_string(), &body);
                req.headers = auth;
                req.secret = Some(key.to_string());
                let created = self.send(req).await?;
                match created["id"].as_str() {
                    Some(id) => {
                        self.statuspage.insert(
                            incident.key.clone(),
                            Tracked {
                                id: id.to_string(),
                                last: wanted,
                            },
                        );
                        Ok(Outcome::Delivered)
                    }
                    None => Err(Failed {
                        attempts: 1,
                        error: "Statuspage created an incident but its answer has no id".into(),
                    }),
                }
            }
            Some(t) if t.last == wanted => {
                self.statuspage.insert(incident.key.clone(), t);
                Ok(Outcome::Skipped("Statuspage status unchanged"))
            }
            Some(t) => {
                let mut req = Request::json(
                    Method::PATCH,
                    format!("{base}/{}", t.id),
                    &statuspage::update(item, component_id),
                );
                req.headers = auth;
                req.secret = Some(key.to_string());
                let sent = self.send(req).await;
                // Resolved incidents are forgotten; a failed update keeps the id for the next.
                if !(item.resolves && sent.is_ok()) {
                    let last = if sent.is_ok() { wanted } else { t.last };
                    self.statuspage
                        .insert(incident.key.clone(), Tracked { id: t.id, last });
                }
                sent.map(|_| Outcome::Delivered)
            }
        }
    }

    /// Makes `req` with retries; the answer's body as JSON (`Null` when empty or not JSON).
    async fn send(&self, req: Request) -> Result<Value, Failed> {
        let attempts = AtomicU32::new(0);
        let last_error = Mutex::new(String::new());
        let what = format!("notification to {}", self.name);
        let outcome = self
            .retrier
            .run(&what, || {
                attempts.fetch_add(1, Ordering::SeqCst);
                Stats::bump(&self.stats.attempts);
                let fut = self.attempt(&req);
                let last_error = &last_error;
                async move {
                    let r = fut.await;
                    describe_metrics();
                    let outcome = if r.is_ok() { "ok" } else { "error" };
                    metrics::counter!("mxguard_notify_attempts_total", "target" => self.name.clone(), "kind" => self.kind(), "outcome" => outcome).increment(1);
                    r.map_err(|(why, err)| {
                        tracing::info!(target = %self.name, kind = self.kind(), error = %why, "notification attempt failed");
                        *last_error.lock().unwrap_or_else(|p| p.into_inner()) = why;
                        err
                    })
                }
            })
            .await;
        outcome.map_err(|e| {
            let mut error = last_error.into_inner().unwrap_or_else(|p| p.into_inner());
            if error.is_empty() {
                // The retrier cut an attempt at the deadline.
                error = e.to_string();
            }
            Failed {
                attempts: attempts.load(Ordering::SeqCst),
                error,
            }
        })
    }

    /// One HTTP request. Errors as (what to tell the operator, how the retrier should treat
    /// it), the request's secret blanked out of both.
    async fn attempt(&self, req: &Request) -> Result<Value, (String, ProviderError)> {
        self.attempt_once(req).await.map_err(|(why, retry)| {
            let why = match &req.secret {
                Some(secret) if !secret.is_empty() => why.replace(secret.as_str(), "***"),
                _ => why,
            };
            let err = match retry {
                Retry::Yes => ProviderError::Transient(why.clone()),
                Retry::After(retry_after) => ProviderError::RateLimited { retry_after },
                Retry::NoAuth => ProviderError::Auth(why.clone()),
                Retry::No => ProviderError::Rejected {
                    reason: why.clone(),
                },
            };
            (why, err)
        })
    }

    async fn attempt_once(&self, req: &Request) -> Result<Value, (String, Retry)> {
        let mut builder = self.cx.http.request(req.method.clone(), &req.url);
        for (k, v) in &req.headers {
            let Ok(mut value) = HeaderValue::from_str(v) else {
                return Err((
                    format!("header {k} holds characters HTTP does not allow"),
                    Retry::No,
                ));
            };
            if *k == AUTHORIZATION.as_str() {
                value.set_sensitive(true);
            }
            builder = builder.header(*k, value);
        }
        if let Some(body) = &req.body {
            builder = builder
                .header(CONTENT_TYPE, "application/json")
                .body(body.clone());
            if let Some(secret) = &req.sign_with {
                let ts = Utc::now().timestamp();
                builder = builder
                    .header(webhook::TIMESTAMP_HEADER, ts.to_string())
                    .header(webhook::SIGNATURE_HEADER, webhook::sign(secret, ts, body));
            }
        }
        let resp = match builder.send().await {
            Ok(r) => r,
            // `without_url`: a Slack webhook URL is a credential.
            Err(e) => return Err((describe_send_error(&e.without_url()), Retry::Yes)),
        };
        let status = resp.status();
        let retry_after = resp.headers().get(RETRY_AFTER).and_then(retry_after);
        let text = resp.text().await.unwrap_or_default();
        if status.is_success() {
            return Ok(serde_json::from_str(&text).unwrap_or(Value::Null));
        }
        let why = format!("HTTP {status}: {}", truncate(text.trim(), 200));
        let retry = match status {
            StatusCode::TOO_MANY_REQUESTS => Retry::After(retry_after),
            StatusCode::REQUEST_TIMEOUT => Retry::Yes,
            s if s.is_server_error() => Retry::Yes,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Retry::NoAuth,
            _ => Retry::No,
        };
        Err((why, retry))
    }
}

/// The retries of one target's deliveries, as configured.
fn retry_policy(d: &Delivery) -> RetryPolicy {
    RetryPolicy {
        max_attempts: d.max_attempts,
        initial_backoff: d.initial_backoff,
        max_backoff: d.max_backoff,
        deadline: d.give_up_after,
    }
}

/// How a failed attempt is treated: connection errors, timeouts, 408 and 5xx are retried,
/// 429 after its `Retry-After` (or the backoff, whichever is longer), the rest are final.
enum Retry {
    Yes,
    After(Option<Duration>),
    NoAuth,
    No,
}

fn describe_send_error(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    // The source chain says why (connection refused, reset…); the URL was stripped by the caller.
    let mut why = format!("{what}: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        why.push_str(&format!(": {s}"));
        source = s.source();
    }
    truncate(&why, 300)
}

/// Reads a secret for one delivery. The error names the variable or file, never the value.
fn read_secret(source: &SecretSource) -> Result<String, Failed> {
    source
        .resolve()
        .map(|s| s.expose_secret().to_string())
        .map_err(|why| Failed {
            attempts: 0,
            error: format!("secret unreadable: {why}"),
        })
}

/// `Retry-After`: seconds, or an HTTP date.
pub fn retry_after(v: &HeaderValue) -> Option<Duration> {
    let s = v.to_str().ok()?.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(s).ok()?;
    (at.with_timezone(&Utc) - Utc::now()).to_std().ok()
}

#[cfg(test)]
mod fuzz;
