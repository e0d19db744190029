//! What the three parts share: statistics, /proc readings, the machine's description, and
//! running the release `mxguard serve` on a config of its own.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

pub type Res<T> = Result<T, String>;

/// Nearest-rank percentile (`p` in 0..=100) of `values`; NaN when empty.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

pub fn ms_between(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0
}

/// A number in [0, 1) that differs between calls (no rand dependency needed for this).
pub fn random_fraction() -> f64 {
    use std::hash::BuildHasher;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let bits = std::collections::hash_map::RandomState::new().hash_one(seed);
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// A `/proc/PID/status` field in kB (`VmHWM`, `VmRSS`).
pub fn proc_status_kb(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(&format!("{key}:")))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU seconds (user + system) a process has used, from `/proc/PID/stat` (USER_HZ = 100 on
/// Linux).
pub fn proc_cpu_secs(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // the command name may hold spaces: fields are counted after its closing parenthesis
    let rest = text.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// "2 cores, AMD EPYC …, 24 GiB RAM, Linux 6.1" from /proc.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU", |(_, m)| m.trim())
        .to_string();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cores} cores, {model}, {mem_gib:.0} GiB RAM, Linux {}",
        kernel.trim()
    )
}

/// Polls `check` every `every` until it returns `Some`, or fails after `deadline`.
pub async fn wait_for<T, F, Fut>(
    what: &str,
    deadline: Duration,
    every: Duration,
    mut check: F,
) -> Res<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if start.elapsed() > deadline {
            return Err(format!("timed out after {deadline:?} waiting for {what}"));
        }
        tokio::time::sleep(every).await;
    }
}

pub fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .fold(String::new(), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

/// `mxguard serve` (the binary of [`crate::lab::mxguard_bin`]) on `config`, in `dir`, with a
/// SQLite store there; stderr goes to `dir/mxguard.log`. Killed on drop.
pub struct Service {
    pub child: Child,
    pub listen: SocketAddr,
    pub store_url: String,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Service {
    pub fn start(dir: &Path, config: &Path, env: &[(&str, &str)]) -> Res<Service> {
        let port = mxguard_testpeers::free_port().map_err(|e| e.to_string())?;
        let listen = SocketAddr::from(([127, 0, 0, 1], port));
        let store_url = format!("sqlite://{}", dir.join("mxguard.db").display());
        let mut cmd = Command::new(crate::lab::mxguard_bin());
        cmd.args([
            "--config",
            &config.display().to_string(),
            "serve",
            "--listen",
        ])
        .arg(listen.to_string())
        .current_dir(dir)
        .env("MXGUARD_STORE_URL", &store_url)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().map_err(|e| format!("spawning mxguard: {e}"))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        if let Some(stderr) = child.stderr.take() {
            let sink = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Ok(mut l) = sink.lock() {
                        l.push(line);
                    }
                }
            });
        }
        Ok(Service {
            child,
            listen,
            store_url,
            lines,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last `n` lines it logged.
    pub fn tail(&self, n: usize) -> String {
        let lines = self.lines.lock().map(|l| l.clone()).unwrap_or_default();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The distinct WARN/ERROR messages it logged (ANSI colours, timestamps and `domain=`
    /// fields removed), most frequent first, with their counts.
    pub fn warnings(&self) -> Vec<(usize, String)> {
        let lines = self.lines.lock().map(|l| l.clone()).unwrap_or_default();
        let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
        for line in lines {
            let plain = crate::lab::strip_ansi(&line);
            if !(plain.contains(" WARN ") || plain.contains(" ERROR ")) {
                continue;
            }
            let text: Vec<&str> = plain
                .split_whitespace()
                .skip(1)
                .filter(|w| !w.starts_with("domain="))
                .collect();
            *counts.entry(text.join(" ")).or_default() += 1;
        }
        let mut out: Vec<(usize, String)> = counts.into_iter().map(|(m, n)| (n, m)).collect();
        out.sort_by_key(|a| std::cmp::Reverse(a.0));
        out
    }

    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub async fn store(&self) -> Res<std::sync::Arc<dyn mxguard::store::Store>> {
        let url = mxguard::config::StoreUrl::parse(&self.store_url).map_err(|e| e.to_string())?;
        mxguard::store::open(&url).await.map_err(|e| e.to_string())
    }

    /// `GET path` with a bearer token; status and JSON body.
    pub async fn get(
        &self,
        path: &str,
        token: &str,
        timeout: Duration,
    ) -> Option<(u16, serde_json::Value)> {
        let resp = reqwest::Client::new()
            .get(format!("http://{}{path}", self.listen))
            .bearer_auth(token)
            .timeout(timeout)
            .send()
            .await
            .ok()?;
        let status = resp.status().as_u16();
        Some((status, resp.json().await.ok()?))
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        // Already exited and reaped: its pid may belong to another process by now.
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..200 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The phase in a stored domain state (`{"machine": {"phase": …}}` or wherever it sits).
pub fn phase_of(state: &serde_json::Value) -> Option<String> {
    match state {
        serde_json::Value::Object(map) => {
            if let Some(serde_json::Value::String(p)) = map.get("phase") {
                return Some(p.clone());
            }
            map.values().find_map(phase_of)
        }
        _ => None,
    }
}

/// A duration in ms for a table cell: "1,234 ms" or "12.3 s".
pub fn show_ms(ms: f64) -> String {
    // a value within half a millisecond of zero prints as "0 ms", not "-0 ms"
    let ms = if ms.abs() < 0.5 { 0.0 } else { ms };
    if !ms.is_finite() {
        "—".into()
    } else if ms.abs() >= 10_000.0 {
        format!("{:.1} s", ms / 1000.0)
    } else {
        format!("{ms:.0} ms")
    }
}

/// Under a result's table row of `columns` columns: the warnings mxguard logged in that run
/// (`warnings_logged`, `top_warnings`), when there were any.
pub fn print_warnings_row(r: &serde_json::Value, columns: usize) {
    let Some(w) = r["top_warnings"].as_array().filter(|w| !w.is_empty()) else {
        return;
    };
    let top: Vec<&str> = w.iter().filter_map(|x| x.as_str()).collect();
    println!(
        "|  | warnings logged: {} — {} |{}",
        r["warnings_logged"],
        top.join(" · "),
        " |".repeat(columns.saturating_sub(2))
    );
}
