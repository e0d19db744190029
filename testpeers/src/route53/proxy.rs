//! A small HTTP layer between the provider and moto. It forwards every request, and on
//! demand answers in moto's place what moto never says: `Throttling` and
//! `PriorRequestNotComplete`, a change still `PENDING`, a 5xx, a slow answer. It also stands in
//! for Route 53's authentication, which moto 5.2 cannot do for GET requests (see README.md):
//! an access key it does not know gets `InvalidClientTokenId`, a key denied an operation gets
//! `AccessDenied`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::extract::State;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    ListZonesByName,
    GetZone,
    ListRecordSets,
    ChangeRecordSets,
    GetChange,
    Other,
}

fn op_of(method: &Method, path: &str) -> Op {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    match (method, parts.as_slice()) {
        (_, [_, "hostedzonesbyname"]) => Op::ListZonesByName,
        (&Method::GET, [_, "hostedzone", _]) => Op::GetZone,
        (&Method::GET, [_, "hostedzone", _, "rrset"]) => Op::ListRecordSets,
        (&Method::POST, [_, "hostedzone", _, "rrset"]) => Op::ChangeRecordSets,
        (_, [_, "change", _]) => Op::GetChange,
        _ => Op::Other,
    }
}

#[derive(Clone, Debug)]
pub enum Fault {
    /// 400 `Throttling` "Rate exceeded".
    Throttling,
    /// 400 `PriorRequestNotComplete`.
    PriorRequestNotComplete,
    /// For `ChangeRecordSets`: forward, but report the change `PENDING`. For `GetChange`:
    /// answer `PENDING` without asking moto.
    Pending,
    /// That status with a `ServiceUnavailable` error.
    Status(u16),
    /// Answer only after this long.
    Delay(Duration),
    /// 400 `InvalidChangeBatch`, as Route 53 words it.
    InvalidChangeBatch(String),
}

#[derive(Default)]
pub struct ProxyState {
    /// When set, only these access key ids get through.
    pub allowed_keys: Option<HashSet<String>>,
    /// Operations each access key is denied (`AccessDenied`).
    pub denied: HashMap<String, HashSet<Op>>,
    faults: Vec<(Op, Fault, usize)>,
    /// Every request that reached the proxy, in order.
    pub log: Vec<Op>,
    /// Every request forwarded to moto with a 2xx answer, in order (what Route 53 did).
    pub done: Vec<Op>,
}

pub struct Proxy {
    pub url: String,
    state: Arc<Mutex<ProxyState>>,
    served: crate::served::Served,
}

struct Shared {
    upstream: String,
    http: reqwest::Client,
    state: Arc<Mutex<ProxyState>>,
}

impl Proxy {
    pub async fn start(upstream: &str) -> Proxy {
        let state = Arc::new(Mutex::new(ProxyState::default()));
        let shared = Arc::new(Shared {
            upstream: upstream.to_string(),
            http: reqwest::Client::new(),
            state: Arc::clone(&state),
        });
        let app = axum::Router::new().fallback(handle).with_state(shared);
        let served = crate::served::Served::start(app, "the Route 53 proxy")
            .await
            .unwrap_or_else(|e| panic!("starting the Route 53 proxy: {e}"));
        Proxy {
            url: format!("http://{}", served.addr),
            state,
            served,
        }
    }

    pub fn state(&self) -> MutexGuard<'_, ProxyState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Answers the next `times` requests for `op` with `fault`.
    pub fn inject(&self, op: Op, fault: Fault, times: usize) {
        self.state().faults.push((op, fault, times));
    }

    /// Drops every fault not yet used up.
    pub fn clear_faults(&self) {
        self.state().faults.clear();
    }

    pub fn count(&self, op: Op) -> usize {
        self.state().log.iter().filter(|o| **o == op).count()
    }

    /// How many `op` requests moto carried out (2xx), faults and refusals not counted.
    pub fn done(&self, op: Op) -> usize {
        self.state().done.iter().filter(|o| **o == op).count()
    }

    pub async fn stop(&self) {
        self.served.stop().await;
    }
}

fn access_key(headers: &HeaderMap) -> Option<String> {
    let auth = headers.get("authorization")?.to_str().ok()?;
    let cred = auth.split("Credential=").nth(1)?;
    Some(cred.split('/').next()?.to_string())
}

pub fn aws_error(status: u16, code: &str, message: &str) -> Response {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ErrorResponse xmlns=\"https://route53.amazonaws.com/doc/2013-04-01/\"><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error><RequestId>00000000-0000-0000-0000-000000000000</RequestId></ErrorResponse>"
    );
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    (status, [("content-type", "text/xml")], body).into_response()
}

/// Route 53's current shape for a refused batch: the standard error envelope, every reason in
/// one bracketed `Message` (it used to be an `<InvalidChangeBatch><Messages>` root; SDKs
/// dropped their customisations for it in 2024).
fn invalid_change_batch(message: &str) -> Response {
    aws_error(400, "InvalidChangeBatch", &format!("[{message}]"))
}

fn pending_change(path: &str) -> Response {
    let id = path.rsplit('/').next().unwrap_or("C0");
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<GetChangeResponse xmlns=\"https://route53.amazonaws.com/doc/2013-04-01/\"><ChangeInfo><Id>/change/{id}</Id><Status>PENDING</Status><SubmittedAt>2026-01-01T00:00:00.000Z</SubmittedAt></ChangeInfo></GetChangeResponse>"
    );
    (StatusCode::OK, [("content-type", "text/xml")], body).into_response()
}

async fn handle(State(shared): State<Arc<Shared>>, req: Request<Body>) -> Response {
    let (head, body) = req.into_parts();
    let op = op_of(&head.method, head.uri.path());
    let key = access_key(&head.headers).unwrap_or_default();
    let fault = {
        let mut s = shared.state.lock().unwrap_or_else(|p| p.into_inner());
        s.log.push(op);
        if s.allowed_keys.as_ref().is_some_and(|k| !k.contains(&key)) {
            return aws_error(
                403,
                "InvalidClientTokenId",
                "The security token included in the request is invalid.",
            );
        }
        if s.denied.get(&key).is_some_and(|ops| ops.contains(&op)) {
            let msg = format!("User: arn:aws:iam::123456789012:user/test is not authorized to perform: route53:{op:?}");
            return aws_error(403, "AccessDenied", &msg);
        }
        let i = s.faults.iter().position(|(o, _, n)| *o == op && *n > 0);
        i.map(|i| {
            s.faults[i].2 -= 1;
            s.faults[i].1.clone()
        })
    };
    let mut pending = false;
    match fault {
        Some(Fault::Throttling) => return aws_error(400, "Throttling", "Rate exceeded"),
        Some(Fault::PriorRequestNotComplete) => {
            return aws_error(
                400,
                "PriorRequestNotComplete",
                "The request was rejected because Route 53 was still processing a prior request.",
            )
        }
        Some(Fault::Status(code)) => {
            return aws_error(code, "ServiceUnavailable", "Service unavailable")
        }
        Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
        Some(Fault::InvalidChangeBatch(message)) => return invalid_change_batch(&message),
        Some(Fault::Pending) if op == Op::GetChange => return pending_change(head.uri.path()),
        Some(Fault::Pending) => pending = true,
        None => {}
    }
    let Ok(bytes) = to_bytes(body, 16 << 20).await else {
        return aws_error(400, "InvalidInput", "body too large");
    };
    let path_q = head.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut forward = shared
        .http
        .request(head.method.clone(), format!("{}{path_q}", shared.upstream))
        .body(bytes);
    for (name, value) in &head.headers {
        if name != "host" && name != "content-length" {
            forward = forward.header(name, value);
        }
    }
    let resp = match forward.send().await {
        Ok(r) => r,
        Err(e) => {
            return aws_error(
                502,
                "ServiceUnavailable",
                &format!("the proxy could not reach moto: {e}"),
            )
        }
    };
    let status = resp.status().as_u16();
    if (200..300).contains(&status) {
        shared
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .done
            .push(op);
    }
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("text/xml")
        .to_string();
    let mut text = resp.text().await.unwrap_or_default();
    if pending {
        text = text.replace("<Status>INSYNC</Status>", "<Status>PENDING</Status>");
    }
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    (status, [("content-type", content_type)], text).into_response()
}
