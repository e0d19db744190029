//! The router on one domain (`example.test`) whose actor is real and whose DNS provider is an
//! in-memory zone; requests go through `oneshot`, no socket. Three tokens: `reader` (read),
//! `operator` (read + operate), `admin` (admin). [`TestApi::fingerprint`] captures everything a
//! request could change, so a test can assert that a refused request changed nothing.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::Router;
use mxguard::actor::change::ChangeDeps;
use mxguard::actor::Actor;
use mxguard::api::{router, AppState, Providers};
use mxguard::config::{Config, StoreUrl};
use mxguard::engine::Engine;
use mxguard::model::{Fqdn, RecordSet, RecordType, Side, Ttl};
use mxguard::store::Store;
use mxguard::verify::Verifier;
use mxguard_core::conformance::memory::MemoryProvider;
use mxguard_core::RrsetKey;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

pub const READER: &str = "reader-secret-token";
pub const OPERATOR: &str = "operator-secret-token";
pub const ADMIN: &str = "admin-secret-token";
pub const DOMAIN: &str = "example.test";
pub const PRIMARY_MX: &str = "10 mx1.example.test.";
pub const BACKUP_MX: &str = "10 backup.example.test.";

pub fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The lab zone in memory: `mxguard_core`'s reference provider (the one the conformance kit
/// is checked against), holding [`DOMAIN`].
pub type MemoryDns = MemoryProvider;

/// A [`MemoryDns`] holding the empty lab zone.
pub fn lab_dns() -> MemoryDns {
    MemoryProvider::with_zones([&Fqdn::parse(DOMAIN).expect("name")])
}

/// The lab zone's MX set, seen and edited the way the tests need it.
pub trait MxView {
    /// The MX set as "PREF HOST TTL" strings.
    fn mx(&self) -> Vec<String>;
    /// Replaces the MX set behind mxguard's back (a hand edit in a console).
    fn hand_edit_mx(&self, record: &str, ttl: u32);
}

impl MxView for MemoryDns {
    fn mx(&self) -> Vec<String> {
        let zone = Fqdn::parse(DOMAIN).expect("name");
        let key = RrsetKey::new(zone.clone(), RecordType::Mx);
        self.get(&zone, &key)
            .map(|s| {
                s.records()
                    .iter()
                    .map(|r| format!("{r} {}", s.ttl().secs()))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn hand_edit_mx(&self, record: &str, ttl: u32) {
        self.put(&Fqdn::parse(DOMAIN).expect("name"), mx_set(record, ttl));
    }
}

pub fn mx_set(record: &str, ttl: u32) -> RecordSet {
    RecordSet::parse(
        Fqdn::parse(DOMAIN).expect("name"),
        RecordType::Mx,
        Ttl::new(ttl).expect("ttl"),
        &[record],
    )
    .expect("mx set")
}

pub struct TestApi {
    pub app: Router,
    pub engine: Engine,
    pub store: Arc<dyn Store>,
    pub dns: Arc<MemoryDns>,
    pub config: Arc<Config>,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for TestApi {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The configuration: tokens (unless `tokens` is false), a provider entry for validation (the
/// in-memory zone stands in for it), one domain.
pub fn config_text(tokens: bool) -> String {
    let mut text = String::new();
    if tokens {
        for (name, secret, scopes) in [
            ("reader", READER, r#"["read"]"#),
            ("operator", OPERATOR, r#"["read", "operate"]"#),
            ("admin", ADMIN, r#"["admin"]"#),
        ] {
            text.push_str(&format!(
                "[[tokens]]\nname = \"{name}\"\nsha256 = \"{}\"\nscopes = {scopes}\n\n",
                sha256_hex(secret)
            ));
        }
    }
    text.push_str(&format!(
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
failback = {{ hold = "1h" }}
"#
    ));
    text
}

/// The only instance: it takes the lease so its writes pass the store's fence.
pub async fn sole_leader(store: &dyn mxguard::store::Store) -> mxguard::lease::Leadership {
    let claim = mxguard::store::LeaseClaim {
        holder: "test/1".into(),
        vantage: "test".into(),
        api_url: None,
        ttl: Duration::from_secs(3600),
        takeover: mxguard::store::Takeover::Always,
    };
    let epoch = store
        .acquire_lease(&claim, mxguard::store::LeaseClock::STORE)
        .await
        .expect("lease")
        .epoch;
    mxguard::lease::Leadership::fixed("test", epoch)
}

/// A domain actor's dependencies on the in-memory zone: no servers to verify at (the provider
/// is read back), the given leadership and event bus.
pub fn memory_deps(
    store: &Arc<dyn mxguard::store::Store>,
    dns: &Arc<MemoryDns>,
    leadership: &mxguard::lease::Leadership,
    events: &mxguard::events::EventBus,
    provider: &str,
) -> ChangeDeps {
    ChangeDeps {
        store: store.clone(),
        provider: dns.clone(),
        observer: dns.clone(),
        background: dns.clone(),
        reconcile: Duration::from_secs(60),
        verifier: Verifier {
            authoritative: vec![],
            resolvers: vec![],
            query_timeout: Duration::from_secs(1),
            dns: mxguard::probe::budget::SharedDns::unlimited(),
            bound: Duration::from_secs(5),
            poll: Duration::from_millis(50),
        },
        fence: leadership.clone(),
        vantage_quorum: None,
        board: Default::default(),
        provider_name: provider.to_string(),
        mirrors: Vec::new(),
        events: events.clone(),
        clock: Default::default(),
    }
}

/// The domain of [`config_text`] on a SQLite store in a temporary directory, with the in-memory
/// zone publishing the primary (TTL 300) and this process holding the lease: what a test needs
/// to run one domain's actor without servers.
pub struct MemoryDomain {
    pub domain: mxguard::config::DomainConfig,
    pub store: Arc<dyn Store>,
    pub dns: Arc<MemoryDns>,
    pub leadership: mxguard::lease::Leadership,
    pub events: mxguard::events::EventBus,
    _dir: tempfile::TempDir,
}

impl MemoryDomain {
    pub async fn new() -> Self {
        let config = Config::parse("memory.toml", &config_text(false)).expect("config");
        let dir = tempfile::tempdir().expect("tempdir");
        let url = StoreUrl::parse(&format!("sqlite://{}", dir.path().join("m.db").display()))
            .expect("url");
        let store = mxguard::store::open(&url).await.expect("store");
        store.migrate().await.expect("migrate");
        let dns = Arc::new(lab_dns());
        dns.hand_edit_mx(PRIMARY_MX, 300);
        let leadership = sole_leader(&*store).await;
        MemoryDomain {
            domain: (*config.domains[0]).clone(),
            store,
            dns,
            leadership,
            events: mxguard::events::EventBus::default(),
            _dir: dir,
        }
    }

    /// The actor's dependencies ([`memory_deps`]), for the test to adjust.
    pub fn deps(&self) -> ChangeDeps {
        memory_deps(
            &self.store,
            &self.dns,
            &self.leadership,
            &self.events,
            &self.domain.provider,
        )
    }

    /// Runs the domain's actor on `deps` until the guard is dropped; answers once it has read
    /// the zone.
    pub async fn run(
        &self,
        deps: ChangeDeps,
    ) -> (mxguard::actor::ActorHandle, tokio_util::sync::DropGuard) {
        let (actor, handle) = Actor::new(self.domain.clone(), deps);
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone().drop_guard();
        tokio::spawn(actor.run(shutdown));
        first_read(&handle).await;
        (handle, stop)
    }

    /// The domain's timeline.
    pub async fn events(&self) -> Vec<mxguard::store::Event> {
        self.store
            .events(&self.domain.name, None, 10_000)
            .await
            .expect("events")
    }
}

/// The actor reads the zone when it starts: waits until it knows the primary is published.
pub async fn first_read(handle: &mxguard::actor::ActorHandle) {
    super::poll(
        "the actor's first read of the zone",
        Duration::from_secs(10),
        || {
            let handle = handle.clone();
            async move {
                let s = handle.status().await.ok()?;
                (s.state.published == Some(Side::Primary)).then_some(())
            }
        },
    )
    .await;
}

/// A provider in front of the in-memory zone whose applies wait while `hold` is set (a change
/// held at the provider for as long as a test needs), and whose reads wait while `hold_reads`
/// is (a provider that is slow to answer).
pub struct HeldApplies {
    pub inner: Arc<MemoryDns>,
    pub hold: std::sync::atomic::AtomicBool,
    /// Applies waiting now.
    pub waiting: std::sync::atomic::AtomicUsize,
    release: tokio::sync::Notify,
    pub hold_reads: std::sync::atomic::AtomicBool,
    /// Reads waiting now.
    pub reads_waiting: std::sync::atomic::AtomicUsize,
    release_reads: tokio::sync::Notify,
}

/// Counts a call as waiting until it goes on or is dropped (a cancelled change).
struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a std::sync::atomic::AtomicUsize) -> Self {
        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl HeldApplies {
    /// In front of `inner`, holding applies from the start when `hold`.
    pub fn new(inner: Arc<MemoryDns>, hold: bool) -> Self {
        HeldApplies {
            inner,
            hold: hold.into(),
            waiting: Default::default(),
            release: Default::default(),
            hold_reads: Default::default(),
            reads_waiting: Default::default(),
            release_reads: Default::default(),
        }
    }

    pub fn release_reads(&self) {
        self.hold_reads
            .store(false, std::sync::atomic::Ordering::SeqCst);
        self.release_reads.notify_waiters();
    }

    pub fn reads_waiting(&self) -> usize {
        self.reads_waiting.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn release(&self) {
        self.hold.store(false, std::sync::atomic::Ordering::SeqCst);
        self.release.notify_waiters();
    }

    pub fn waiting(&self) -> usize {
        self.waiting.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl mxguard_core::DnsProvider for HeldApplies {
    fn name(&self) -> &str {
        "held"
    }
    fn capabilities(&self) -> mxguard_core::Capabilities {
        self.inner.capabilities()
    }
    async fn read(
        &self,
        zone: &Fqdn,
        keys: &[RrsetKey],
    ) -> Result<Vec<RecordSet>, mxguard_core::ProviderError> {
        use std::sync::atomic::Ordering;
        while self.hold_reads.load(Ordering::SeqCst) {
            let released = self.release_reads.notified();
            let _waiting = Waiting::new(&self.reads_waiting);
            if self.hold_reads.load(Ordering::SeqCst) {
                released.await;
            }
        }
        self.inner.read(zone, keys).await
    }
    async fn list_zone(&self, zone: &Fqdn) -> Result<Vec<RecordSet>, mxguard_core::ProviderError> {
        self.inner.list_zone(zone).await
    }
    async fn apply(
        &self,
        zone: &Fqdn,
        changes: &mxguard_core::ChangeSet,
    ) -> Result<(), mxguard_core::ProviderError> {
        use std::sync::atomic::Ordering;
        while self.hold.load(Ordering::SeqCst) {
            let released = self.release.notified();
            let _waiting = Waiting::new(&self.waiting);
            if self.hold.load(Ordering::SeqCst) {
                released.await;
            }
        }
        self.inner.apply(zone, changes).await
    }
}

pub async fn start(tokens: bool) -> TestApi {
    start_with(tokens).await.0
}

/// [`start`], with the actor's and the API's provider holding applies on demand.
pub async fn start_with(tokens: bool) -> (TestApi, Arc<HeldApplies>) {
    start_with_text(&config_text(tokens)).await
}

/// [`start_with`] on a configuration of the test's own (e.g. [`config_text`] plus settings).
pub async fn start_with_text(text: &str) -> (TestApi, Arc<HeldApplies>) {
    let config = Config::parse("api-test.toml", text).expect("config");
    let config = Arc::new(config);
    let dir = tempfile::tempdir().expect("tempdir");
    let url =
        StoreUrl::parse(&format!("sqlite://{}", dir.path().join("api.db").display())).expect("url");
    let store = mxguard::store::open(&url).await.expect("store");
    store.migrate().await.expect("migrate");
    let dns = Arc::new(lab_dns());
    dns.hand_edit_mx(PRIMARY_MX, 300);
    let held = Arc::new(HeldApplies::new(dns.clone(), false));
    let shutdown = CancellationToken::new();
    let leadership = sole_leader(&*store).await;
    let mut engine = Engine {
        leadership: leadership.clone(),
        ..Engine::default()
    };
    for d in &config.domains {
        let mut deps = memory_deps(&store, &dns, &leadership, &engine.events, &d.provider);
        deps.provider = held.clone();
        deps.background = held.clone();
        let (actor, handle) = Actor::new(d.clone(), deps);
        tokio::spawn(actor.run(shutdown.clone()));
        engine.domains.insert(d.name.clone(), handle);
    }
    let providers = Providers::default();
    providers.insert("mem", held.clone()).await;
    let app = router(AppState {
        store: store.clone(),
        engine: engine.clone(),
        config: config.clone(),
        providers,
    });
    first_read(engine.domains.values().next().expect("a domain")).await;
    let api = TestApi {
        app,
        engine,
        store,
        dns,
        config,
        shutdown,
        _dir: dir,
    };
    (api, held)
}

/// A response, read whole.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    /// The problem `type` slug of an error response.
    pub fn problem(&self) -> String {
        let ct = self
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert_eq!(ct, "application/problem+json", "{}", self.text);
        let v = self.json();
        for field in ["type", "title", "status", "detail"] {
            assert!(v.get(field).is_some(), "problem without {field}: {v}");
        }
        assert_eq!(v["status"], self.status.as_u16());
        v["type"]
            .as_str()
            .and_then(|t| t.strip_prefix(mxguard::api::PROBLEM_BASE))
            .unwrap_or_else(|| panic!("problem type is not under PROBLEM_BASE: {v}"))
            .to_string()
    }
}

/// A request: method, path, token, optional JSON body (sent as application/json).
pub struct Call<'a> {
    pub method: Method,
    pub path: &'a str,
    pub token: Option<&'a str>,
    pub body: Option<String>,
    pub content_type: Option<&'a str>,
    pub headers: Vec<(&'a str, String)>,
}

impl<'a> Call<'a> {
    pub fn new(method: Method, path: &'a str) -> Self {
        Call {
            method,
            path,
            token: None,
            body: None,
            content_type: None,
            headers: vec![],
        }
    }
    pub fn token(mut self, t: &'a str) -> Self {
        self.token = Some(t);
        self
    }
    pub fn json(mut self, v: Value) -> Self {
        self.body = Some(v.to_string());
        self.content_type = Some("application/json");
        self
    }
    pub fn raw(mut self, body: &str, content_type: Option<&'a str>) -> Self {
        self.body = Some(body.to_string());
        self.content_type = content_type;
        self
    }
    pub fn header(mut self, name: &'a str, value: &str) -> Self {
        self.headers.push((name, value.to_string()));
        self
    }
}

impl TestApi {
    pub async fn call(&self, c: Call<'_>) -> Reply {
        send(&self.app, c).await
    }

    /// Everything a request could change: the domain's stored state, its events, snapshots,
    /// change intents, and the zone's records and apply count.
    pub async fn fingerprint(&self) -> String {
        let domain = Fqdn::parse(DOMAIN).expect("name");
        let state = self.store.load_state(&domain).await.expect("state");
        let events = self
            .store
            .events(&domain, None, 1000)
            .await
            .expect("events");
        let snaps = self.store.snapshots(None, 1000).await.expect("snapshots");
        let changes = self
            .store
            .recent_changes(&domain, 1000)
            .await
            .expect("changes");
        let sets = self.dns.sets(&domain);
        format!(
            "state={:?}\nevents={:?}\nsnapshots={}\nchanges={}\nzone={:?}\napplies={}",
            state.map(|s| (s.version, s.state)),
            events
                .iter()
                .map(|e| (e.id, e.message.clone()))
                .collect::<Vec<_>>(),
            snaps.len(),
            changes.len(),
            sets,
            self.dns.applies()
        )
    }
}

pub async fn send(app: &Router, c: Call<'_>) -> Reply {
    let mut req = Request::builder().method(c.method).uri(c.path);
    if let Some(t) = c.token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if let Some(ct) = c.content_type {
        req = req.header("content-type", ct);
    }
    for (k, v) in &c.headers {
        req = req.header(*k, v);
    }
    let body = c.body.map_or_else(Body::empty, Body::from);
    let resp = app
        .clone()
        .oneshot(req.body(body).expect("request"))
        .await
        .expect("infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 22)
        .await
        .expect("body");
    Reply {
        status,
        headers,
        text: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

/// One probe round of this vantage ("test") for [`DOMAIN`]'s `side`, stamped `at`: what the
/// monitor hands an actor, with no verdicts behind it.
pub fn round(
    side: mxguard::model::Side,
    health: mxguard::health::Health,
    at: chrono::DateTime<chrono::Utc>,
) -> (
    mxguard::monitor::RoundReport,
    mxguard::vantage::VantageReport,
) {
    use mxguard::health::{Health, SideHealth};
    let report = mxguard::monitor::RoundReport {
        domain: mxguard::model::Fqdn::parse(DOMAIN).expect("name"),
        side,
        at,
        pass: health == Health::Up,
        verdicts: vec![],
        health: SideHealth {
            health,
            ..SideHealth::new(side)
        },
        change: None,
        confirmation: false,
        evidence: vec![],
    };
    let own = mxguard::vantage::VantageReport {
        vantage: "test".into(),
        side,
        at,
        health,
        pass: health == Health::Up,
        partitioned: None,
        verdicts: Vec::new().into(),
    };
    (report, own)
}
