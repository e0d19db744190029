//! Several `mxguard serve` processes on one PostgreSQL, each with its own vantage name and
//! config (derived from a [`Lab`]'s), for the leader lease, fencing and vantage quorum tests.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use mxguard::config::StoreUrl;
use mxguard::store::Store;

use super::lab::{mxguard_bin, Lab, Mxguard, SECRET};

/// How one instance differs from the lab's config.
pub struct Instance {
    pub vantage: &'static str,
    /// Replaces the `resolvers = [...]` line (a vantage cut off from DNS).
    pub resolvers: Option<Vec<String>>,
    pub failpoint: Option<&'static str>,
    /// `[cluster] canaries`.
    pub canaries: Vec<String>,
}

impl Instance {
    pub fn new(vantage: &'static str) -> Self {
        Instance {
            vantage,
            resolvers: None,
            failpoint: None,
            canaries: Vec::new(),
        }
    }
}

/// One running instance: the process and its API address.
pub struct Node {
    pub vantage: &'static str,
    pub api: String,
    pub mx: Mxguard,
}

/// The API token every instance accepts (scopes read, operate, admin).
pub const TOKEN: &str = "ha-test-operator-token";

impl Drop for Node {
    /// A failing test shows what every instance logged (the last lines), so a timeout says why.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let lines = self.mx.lines.lock().map(|l| l.clone()).unwrap_or_default();
            let tail = &lines[lines.len().saturating_sub(60)..];
            eprintln!(
                "--- mxguard {} ({}) log, last {} lines ---",
                self.vantage,
                self.api,
                tail.len()
            );
            for l in tail {
                eprintln!("{l}");
            }
        }
    }
}

/// The lease TTL the cluster tests run with (the default is 15 s).
pub const LEASE_TTL_SECS: u64 = 3;

/// Starts `mxguard serve` for `inst` against `store` (PostgreSQL), with `[cluster]` set.
pub fn serve(lab: &Lab, store: &StoreUrl, inst: &Instance) -> Node {
    let port = mxguard_testpeers::free_port().expect("port");
    let api = format!("http://127.0.0.1:{port}");
    let mut text = std::fs::read_to_string(&lab.config).expect("lab config");
    if let Some(list) = &inst.resolvers {
        let quoted: Vec<String> = list.iter().map(|r| format!("\"{r}\"")).collect();
        text = text
            .lines()
            .map(|l| {
                if l.starts_with("resolvers = ") {
                    format!("resolvers = [{}]", quoted.join(", "))
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
    }
    text.push_str(&format!(
        "\n[[tokens]]\nname = \"ops\"\nenv = \"MXGUARD_TEST_TOKEN\"\nscopes = [\"read\", \"operate\", \"admin\"]\n\n[server]\nopen_readyz = true\n\n[cluster]\nvantage = \"{v}\"\nlease_ttl = \"{LEASE_TTL_SECS}s\"\nadvertise_url = \"{api}\"\n",
        v = inst.vantage
    ));
    if !inst.canaries.is_empty() {
        let quoted: Vec<String> = inst.canaries.iter().map(|c| format!("\"{c}\"")).collect();
        text.push_str(&format!("canaries = [{}]\n", quoted.join(", ")));
    }
    let config = lab
        .dir
        .path()
        .join(format!("mxguard-{}.toml", inst.vantage));
    std::fs::write(&config, text).expect("write config");

    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut cmd = Command::new(mxguard_bin());
    cmd.args([
        "--config",
        &config.display().to_string(),
        "serve",
        "--listen",
        &listen.to_string(),
    ])
    .current_dir(lab.dir.path())
    .env("MXGUARD_TEST_TSIG", SECRET)
    .env("MXGUARD_TEST_TOKEN", TOKEN)
    .env("MXGUARD_STORE_URL", store.expose())
    .env_remove("MXGUARD_FAILPOINT");
    if let Some(f) = inst.failpoint {
        cmd.env("MXGUARD_FAILPOINT", f);
    }
    Node {
        vantage: inst.vantage,
        api,
        mx: Mxguard::spawn(cmd, listen),
    }
}

/// `/readyz` of `node`: (role, epoch), or `None` while it does not answer.
pub async fn role(node: &Node) -> Option<(String, Option<i64>)> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .ok()?;
    let body: serde_json::Value = client
        .get(format!("{}/readyz", node.api))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    Some((body["role"].as_str()?.to_string(), body["epoch"].as_i64()))
}

/// Waits until `node` answers `/readyz` with `want` and returns its epoch.
pub async fn wait_role(node: &Node, want: &str, deadline: Duration) -> Option<i64> {
    super::poll(
        &format!("{} to be {want}", node.vantage),
        deadline,
        || async {
            match role(node).await {
                Some((r, epoch)) if r == want => Some(epoch),
                _ => None,
            }
        },
    )
    .await
}

pub async fn open_store(url: &StoreUrl) -> Arc<dyn Store> {
    mxguard::store::open(url).await.expect("open store")
}

/// The process state letter from /proc (`T` when stopped).
pub fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ..." — the state follows the last ')'.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill {sig} {pid} failed");
}
