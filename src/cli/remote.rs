//! Commands sent to a running service's HTTP API: failover, failback, pin, unpin, pause, resume,
//! approve, events, incidents (`cli::incidents`), health (its readiness, for container health
//! checks), and snapshot and revert when `--api` is given. The service's actor does the work and
//! writes the events, exactly as for a chatops bot: the CLI only carries the request.
//!
//! The token comes from `MXGUARD_TOKEN` or `--token-file`, never from a flag value (argv shows in
//! `ps`), and is never printed. Exit codes: 0 done; 1 refused or unavailable (409, 429, 5xx, no
//! connection); 2 usage (400, 401, 403, 404, 422 and other 4xx, a bad URL or token file).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::header::{HeaderValue, AUTHORIZATION};
use reqwest::{Method, StatusCode, Url};
use serde_json::{json, Value};

/// Where the API listens when neither `--api` nor `MXGUARD_API` says (the embedded default
/// `server.listen`).
pub const DEFAULT_API: &str = "http://127.0.0.1:8053";

/// One API action and the subcommand that sends it.
#[derive(Debug, Clone, Copy)]
pub struct Action {
    pub method: &'static str,
    /// The route as written in `mxguard::api::routes`.
    pub path: &'static str,
    /// The `mxguard` subcommand.
    pub command: &'static str,
}

const fn action(method: &'static str, path: &'static str, command: &'static str) -> Action {
    Action {
        method,
        path,
        command,
    }
}

/// Every API action with its subcommand. A test compares it with the route table both ways, so
/// a route added without a command fails.
pub const ACTIONS: &[Action] = &[
    action("POST", "/v1/domains/{domain}/failover", "failover"),
    action("POST", "/v1/domains/{domain}/failback", "failback"),
    action("PUT", "/v1/domains/{domain}/pin", "pin"),
    action("DELETE", "/v1/domains/{domain}/pin", "unpin"),
    action("POST", "/v1/domains/{domain}/maintenance", "maintenance"),
    action(
        "DELETE",
        "/v1/domains/{domain}/maintenance",
        "cancel-maintenance",
    ),
    action("POST", "/v1/domains/{domain}/pause", "pause"),
    action("POST", "/v1/domains/{domain}/resume", "resume"),
    action("POST", "/v1/domains/{domain}/approve", "approve"),
    action("POST", "/v1/domains/{domain}/drill", "drill"),
    action("GET", "/v1/domains/{domain}/events", "events"),
    action("GET", "/v1/domains/{domain}/incidents", "incidents"),
    action(
        "GET",
        "/v1/domains/{domain}/incidents/{incident}",
        "incidents",
    ),
    action("POST", "/v1/snapshots", "snapshot"),
    action("POST", "/v1/snapshots/{id}/revert", "revert"),
    action("GET", "/readyz", "health"),
];

/// The (first) action of `command`.
pub(super) fn route(command: &str) -> &'static Action {
    ACTIONS
        .iter()
        .find(|a| a.command == command)
        .unwrap_or_else(|| panic!("ACTIONS has no row for {command}"))
}

/// The action at `path`, for a command that sends more than one route.
pub(super) fn route_at(path: &str) -> &'static Action {
    ACTIONS
        .iter()
        .find(|a| a.path == path)
        .unwrap_or_else(|| panic!("ACTIONS has no row for {path}"))
}

/// Where the service is and how to prove who we are.
#[derive(clap::Args, Debug, Clone)]
pub struct ApiArgs {
    /// URL of the running service's HTTP API [env: MXGUARD_API] [default: http://127.0.0.1:8053].
    #[arg(long = "api", env = "MXGUARD_API", value_name = "URL", hide_env = true)]
    pub api: Option<String>,
    /// File whose first line is the API token. Without it the token is read from the
    /// MXGUARD_TOKEN environment variable; it is never taken from the command line, where `ps`
    /// would show it.
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// Makes a retry of the same request answer the first one's result instead of acting twice
    /// (1-255 visible ASCII characters).
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
}

/// A command with the operator's reason.
#[derive(clap::Args, Debug)]
pub struct ReasonArgs {
    /// The configured mail domain, e.g. example.com
    pub domain: String,
    /// Why, in one line: recorded in the domain's events and shown to the team.
    #[arg(long, value_name = "TEXT")]
    pub reason: String,
    /// Print the API's JSON answer instead of its message.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// Failover or failback.
#[derive(clap::Args, Debug)]
pub struct MoveArgs {
    #[command(flatten)]
    pub common: ReasonArgs,
    /// Say what would change and whether it would be refused; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum SideArg {
    Primary,
    Backup,
}

#[derive(clap::Args, Debug)]
pub struct PinArgs {
    #[command(flatten)]
    pub common: ReasonArgs,
    /// The side to keep published whatever the health checks say.
    #[arg(long, value_enum)]
    pub side: SideArg,
    /// When the pin ends, RFC 3339, e.g. 2026-12-04T18:00:00Z (at most 366 days ahead).
    #[arg(long, value_name = "RFC3339", value_parser = parse_until)]
    pub until: DateTime<Utc>,
}

#[derive(clap::Args, Debug)]
pub struct MaintenanceArgs {
    #[command(flatten)]
    pub common: ReasonArgs,
    /// The side to use during the window (usually the backup, while the primary is worked on).
    #[arg(long, value_enum)]
    pub side: SideArg,
    /// When the move happens, RFC 3339, e.g. 2026-12-04T18:00:00Z. The TTL is lowered one TTL
    /// before it.
    #[arg(long, value_name = "RFC3339", value_parser = parse_until)]
    pub start: DateTime<Utc>,
    /// When the window ends and the guarded failback may begin, RFC 3339.
    #[arg(long, value_name = "RFC3339", value_parser = parse_until)]
    pub end: DateTime<Utc>,
}

fn parse_until(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("{e}: write e.g. 2026-12-04T18:00:00Z"))
}

#[derive(clap::Args, Debug)]
pub struct EventsArgs {
    /// The configured mail domain, e.g. example.com
    pub domain: String,
    /// Only events after this id (the "more:" line of a previous page gives it).
    #[arg(long, value_name = "ID")]
    pub after: Option<i64>,
    /// At most N events (1-1000; the service's default is 100).
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,
    /// Print the API's JSON answer.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// `mxguard health`: the service's readiness, for container and supervisor health checks.
#[derive(clap::Args, Debug)]
pub struct HealthArgs {
    /// URL of the service's HTTP API [env: MXGUARD_API]. Default: the `[server] listen` of the
    /// configuration (`--config`, `MXGUARD_LISTEN`), on loopback when it listens on every
    /// address.
    #[arg(long = "api", env = "MXGUARD_API", value_name = "URL", hide_env = true)]
    pub api: Option<String>,
    /// File whose first line is a read token, for a service whose /readyz is not open [env:
    /// MXGUARD_TOKEN_FILE]. Without it the token is read from MXGUARD_TOKEN, if set.
    #[arg(long, env = "MXGUARD_TOKEN_FILE", value_name = "PATH", hide_env = true)]
    pub token_file: Option<PathBuf>,
    /// Give up after this long, e.g. "5s" (a store that does not answer makes /readyz wait 2 s).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// The subcommands of this module, as `cli::Command` carries them.
pub enum Request<'a> {
    Move(&'a str, &'a MoveArgs),
    Pin(&'a PinArgs),
    Maintenance(&'a MaintenanceArgs),
    Simple(&'a str, &'a ReasonArgs),
}

pub(super) fn fail(code: u8, msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("mxguard: {msg}");
    ExitCode::from(code)
}

/// A client for one service; errors are already printed.
pub(super) struct Client {
    base: Url,
    token: Option<HeaderValue>,
    http: reqwest::Client,
}

impl Client {
    pub(super) fn new(args: &ApiArgs) -> Result<Client, ExitCode> {
        // The service answers within its [server] request_timeout (503 after); this only gives
        // up on a peer that never answers at all.
        Client::with_timeout(args, Duration::from_secs(30 * 60))
    }

    fn with_timeout(args: &ApiArgs, timeout: Duration) -> Result<Client, ExitCode> {
        let text = args.api.as_deref().unwrap_or(DEFAULT_API);
        let base = Url::parse(text)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && !u.cannot_be_a_base())
            .ok_or_else(|| fail(2, format!("--api {text:?} is not an http(s) URL")))?;
        let token = token(args)?;
        let http = reqwest::Client::builder()
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .timeout(timeout)
            .build()
            .map_err(|e| fail(1, format!("cannot build the HTTP client: {e}")))?;
        Ok(Client { base, token, http })
    }

    /// The URL of `action` with its `{…}` segments filled from `args` in order; each segment
    /// percent-encoded, so an argument cannot reach another path.
    fn url(&self, action: &Action, args: &[&str]) -> Url {
        let mut url = self.base.clone();
        let mut args = args.iter();
        if let Ok(mut segs) = url.path_segments_mut() {
            segs.pop_if_empty();
            for seg in action.path.split('/').filter(|s| !s.is_empty()) {
                if seg.starts_with('{') {
                    segs.push(args.next().copied().unwrap_or_default());
                } else {
                    segs.push(seg);
                }
            }
        }
        url
    }

    /// Sends the request; the answer's status and JSON body (`Null` when it has none).
    pub(super) async fn send(
        &self,
        action: &Action,
        args: &[&str],
        query: &[(&str, String)],
        body: Option<Value>,
        key: Option<&str>,
    ) -> Result<(StatusCode, Value), ExitCode> {
        let url = self.url(action, args);
        let method = Method::from_bytes(action.method.as_bytes())
            .map_err(|e| fail(1, format!("bad method in the action table: {e}")))?;
        let mut req = self.http.request(method, url.clone()).query(query);
        if let Some(t) = &self.token {
            req = req.header(AUTHORIZATION, t.clone());
        }
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let shown = printable(&url);
        let resp = req.send().await.map_err(|e| {
            fail(
                1,
                format!(
                    "cannot reach the mxguard API at {shown}: {} (is `mxguard serve` running there? set --api or MXGUARD_API)",
                    chain(&e)
                ),
            )
        })?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| {
            fail(
                1,
                format!("the answer from {shown} was cut off: {}", chain(&e)),
            )
        })?;
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        Ok((status, value))
    }

    /// A read: the body of a 2xx answer; otherwise the exit code once the problem is printed,
    /// and with `json` the exit code once the body is printed as it came.
    pub(super) async fn read(
        &self,
        action: &Action,
        args: &[&str],
        query: &[(&str, String)],
        json: bool,
    ) -> Result<Value, ExitCode> {
        let (status, body) = self.send(action, args, query, None, None).await?;
        if !status.is_success() {
            return Err(self.problem(status, &body));
        }
        if json {
            return Err(print_json(&body));
        }
        Ok(body)
    }

    /// Prints a problem answer and returns its exit code.
    pub(super) fn problem(&self, status: StatusCode, body: &Value) -> ExitCode {
        let code = exit_code(status);
        let title = body["title"].as_str();
        let detail = body["detail"].as_str();
        let mut line = match (title, detail) {
            (Some(t), Some(d)) => format!("{t}: {d}"),
            (Some(t), None) => t.to_string(),
            _ => format!("the API at {} answered {status}", printable(&self.base)),
        };
        if status == StatusCode::UNAUTHORIZED && self.token.is_none() {
            line.push_str(" (no token given: set MXGUARD_TOKEN or --token-file PATH)");
        }
        fail(code, line)
    }
}

/// 1 for what may succeed later or was refused as such (409, 429, 5xx); 2 for a request that
/// will not succeed as written (other 4xx: bad token, unknown domain, invalid input).
pub fn exit_code(status: StatusCode) -> u8 {
    match status.as_u16() {
        409 | 429 => 1,
        400..=499 => 2,
        _ => 1,
    }
}

/// The URL without user information, which may hold a password.
fn printable(url: &Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.to_string()
}

/// What went wrong, from the error's causes ("connection refused" is in one): the error's own
/// text repeats the URL, which the message already names.
fn chain(e: &reqwest::Error) -> String {
    let mut causes = Vec::new();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        causes.push(c.to_string());
        cause = c.source();
    }
    if causes.is_empty() {
        return e.to_string();
    }
    causes.join(": ")
}

/// The bearer header from `--token-file` or `MXGUARD_TOKEN`; `None` when neither is set.
fn token(args: &ApiArgs) -> Result<Option<HeaderValue>, ExitCode> {
    let text = match &args.token_file {
        Some(path) => {
            let content = std::fs::read_to_string(path).map_err(|e| {
                fail(
                    2,
                    format!("cannot read the token file {}: {e}", path.display()),
                )
            })?;
            let first = content.lines().next().unwrap_or("").trim().to_string();
            if first.is_empty() {
                return Err(fail(
                    2,
                    format!("the token file {} is empty", path.display()),
                ));
            }
            first
        }
        None => match std::env::var("MXGUARD_TOKEN") {
            Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
            _ => return Ok(None),
        },
    };
    let mut value = HeaderValue::from_str(&format!("Bearer {text}")).map_err(|_| {
        fail(
            2,
            "the token has characters an HTTP header cannot carry (it is not shown)",
        )
    })?;
    // Keeps it out of any debug output of the request.
    value.set_sensitive(true);
    Ok(Some(value))
}

pub(super) fn print_json(v: &Value) -> ExitCode {
    match serde_json::to_string_pretty(v) {
        Ok(s) => {
            println!("{s}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(1, e),
    }
}

/// Prints a mutation's answer: its `message`, or the JSON.
fn answer(client: &Client, (status, body): (StatusCode, Value), json_out: bool) -> ExitCode {
    if !status.is_success() {
        return client.problem(status, &body);
    }
    if json_out {
        return print_json(&body);
    }
    match body["message"].as_str() {
        Some(m) => {
            println!("{m}");
            ExitCode::SUCCESS
        }
        None => fail(1, format!("the API answered {status} without a message")),
    }
}

/// failover, failback, pin, unpin, maintenance, cancel-maintenance, pause, resume, approve.
pub async fn command(req: Request<'_>) -> ExitCode {
    let (name, common, body) = match req {
        Request::Move(name, m) => (
            name,
            &m.common,
            json!({"reason": m.common.reason, "dry_run": m.dry_run}),
        ),
        Request::Pin(p) => (
            "pin",
            &p.common,
            json!({
                "side": match p.side { SideArg::Primary => "primary", SideArg::Backup => "backup" },
                "until": p.until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "reason": p.common.reason,
            }),
        ),
        Request::Maintenance(m) => (
            "maintenance",
            &m.common,
            json!({
                "side": match m.side { SideArg::Primary => "primary", SideArg::Backup => "backup" },
                "start": m.start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "end": m.end.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "reason": m.common.reason,
            }),
        ),
        Request::Simple(name, r) => (name, r, json!({"reason": r.reason})),
    };
    let client = match Client::new(&common.api) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let key = common.api.idempotency_key.as_deref();
    match client
        .send(route(name), &[&common.domain], &[], Some(body), key)
        .await
    {
        Ok(reply) => answer(&client, reply, common.json),
        Err(code) => code,
    }
}

/// `revert SNAPSHOT` through the API.
pub async fn revert(
    api: &ApiArgs,
    snapshot: i64,
    dry_run: bool,
    force: bool,
    reason: &str,
) -> ExitCode {
    let client = match Client::new(api) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let body = json!({"reason": reason, "dry_run": dry_run, "force": force});
    let key = api.idempotency_key.as_deref();
    match client
        .send(
            route("revert"),
            &[&snapshot.to_string()],
            &[],
            Some(body),
            key,
        )
        .await
    {
        Ok(reply) => answer(&client, reply, false),
        Err(code) => code,
    }
}

/// `snapshot DOMAIN` through the API.
pub async fn snapshot(
    api: &ApiArgs,
    domain: &str,
    zone: bool,
    label: Option<&str>,
    reason: &str,
) -> ExitCode {
    let client = match Client::new(api) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let body = json!({"domain": domain, "zone": zone, "label": label, "reason": reason});
    let key = api.idempotency_key.as_deref();
    match client
        .send(route("snapshot"), &[], &[], Some(body), key)
        .await
    {
        Ok(reply) => answer(&client, reply, false),
        Err(code) => code,
    }
}

/// `health`: exit 0 when `/readyz` answers 200, else 1 — whatever the reason (not ready, no
/// answer, a refused token), since health checkers (Docker's HEALTHCHECK, supervisors) read
/// every other code as failure or reserve it. The reason goes to stderr.
pub async fn health(args: &HealthArgs, api: String) -> ExitCode {
    let api_args = ApiArgs {
        api: Some(api),
        token_file: args.token_file.clone(),
        idempotency_key: None,
    };
    let client = match Client::with_timeout(&api_args, args.timeout) {
        Ok(c) => c,
        Err(_) => return ExitCode::FAILURE,
    };
    let (status, body) = match client.send(route("health"), &[], &[], None, None).await {
        Ok(r) => r,
        Err(_) => return ExitCode::FAILURE,
    };
    if status == StatusCode::SERVICE_UNAVAILABLE && body["status"] == "unavailable" {
        let why = body["reason"].as_str().unwrap_or("no reason given");
        return fail(1, format!("not ready: {why}"));
    }
    if status != StatusCode::OK {
        let _ = client.problem(status, &body);
        return ExitCode::FAILURE;
    }
    let s = |k: &str| body[k].as_str().unwrap_or("?").to_string();
    println!(
        "ready: {} (vantage {}, store {})",
        s("role"),
        s("vantage"),
        s("store")
    );
    ExitCode::SUCCESS
}

/// The API's URL from a listen address: a wildcard address is reached on loopback.
pub fn local_url(listen: std::net::SocketAddr) -> String {
    let ip = match listen.ip() {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => {
            std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
        }
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => {
            std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
        }
        ip => ip,
    };
    format!("http://{}", std::net::SocketAddr::new(ip, listen.port()))
}

/// `events DOMAIN`: one line per event, then who holds the lease.
pub async fn events(args: &EventsArgs) -> ExitCode {
    let client = match Client::new(&args.api) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut query = Vec::new();
    if let Some(a) = args.after {
        query.push(("after", a.to_string()));
    }
    if let Some(l) = args.limit {
        query.push(("limit", l.to_string()));
    }
    let body = match client
        .read(route("events"), &[&args.domain], &query, args.json)
        .await
    {
        Ok(b) => b,
        Err(code) => return code,
    };
    let empty = Vec::new();
    let list = body["events"].as_array().unwrap_or(&empty);
    if list.is_empty() {
        println!("no events");
    }
    for e in list {
        println!("{}", event_line(e));
    }
    if let Some(next) = body["next_after"].as_i64() {
        println!("more: mxguard events {} --after {next}", args.domain);
    }
    println!("lease: {}", lease_line(&body["lease"]));
    ExitCode::SUCCESS
}

/// `AT  KIND  ACTOR  MESSAGE`, with the reason when the message does not already carry it.
fn event_line(e: &Value) -> String {
    let s = |k: &str| e[k].as_str().unwrap_or("-").to_string();
    let message = s("message");
    let reason = e["reason"].as_str().filter(|r| !message.contains(r));
    format!(
        "{}  {:<12} {:<10} {message}{}",
        s("at"),
        s("kind"),
        s("actor"),
        reason
            .map(|r| format!(" (reason: {r})"))
            .unwrap_or_default()
    )
}

/// The events answer's `lease` object, in the words of `mxguard status`.
fn lease_line(l: &Value) -> String {
    let s = |k: &str| l[k].as_str().unwrap_or("?").to_string();
    let Some(holder) = l["holder"].as_str() else {
        return "no instance has held the lease yet: nothing is automated".into();
    };
    let epoch = l["epoch"].as_i64().unwrap_or(0);
    if l["held"].as_bool() == Some(true) {
        format!(
            "led by {holder} (vantage {}, epoch {epoch}) since {}",
            s("vantage"),
            s("since")
        )
    } else {
        format!(
            "no leader: the lease of {holder} (vantage {}, epoch {epoch}) expired at {}; nothing is automated until an instance takes it",
            s("vantage"),
            s("expires_at")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_exit_1_and_bad_requests_exit_2() {
        for (status, code) in [
            (409, 1),
            (429, 1),
            (500, 1),
            (502, 1),
            (503, 1),
            (400, 2),
            (401, 2),
            (403, 2),
            (404, 2),
            (422, 2),
        ] {
            let s = StatusCode::from_u16(status).expect("status");
            assert_eq!(exit_code(s), code, "{status}");
        }
    }

    #[test]
    fn a_wildcard_listen_address_is_reached_on_loopback() {
        let url = |a: &str| local_url(a.parse().expect("address"));
        assert_eq!(url("0.0.0.0:8053"), "http://127.0.0.1:8053");
        assert_eq!(url("[::]:9000"), "http://[::1]:9000");
        assert_eq!(url("192.0.2.7:8053"), "http://192.0.2.7:8053");
    }

    #[test]
    fn arguments_stay_in_their_path_segment() {
        let client = Client {
            base: Url::parse("http://127.0.0.1:8053/base/").expect("url"),
            token: None,
            http: reqwest::Client::new(),
        };
        let url = client.url(route("pause"), &["../../v1/snapshots"]);
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:8053/base/v1/domains/..%2F..%2Fv1%2Fsnapshots/pause"
        );
        let url = client.url(
            route_at("/v1/domains/{domain}/incidents/{incident}"),
            &["example.test", "7/../9"],
        );
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:8053/base/v1/domains/example.test/incidents/7%2F..%2F9"
        );
    }
}
