//! The failover benchmark (not a timed test): `scripts/bench-failover`, or
//! `cargo bench --bench failover -- [stages] [scale] [mass] [--trials N] [--ttl S]
//! [--provider rfc2136,cloudflare,route53] [--mode mx,a] [--targets 1000,10000]
//! [--per-domain K] [--shared-domains 20000,100000] [--hosts H] [--secs S] [--domains N]
//! [--window S]`.
//!
//! 1. `stages`: where the time of one failover goes, from the primary MTA stopping to the
//!    backup being held by the provider (for RFC 2136: served by `named`) and, for RFC 2136,
//!    visible at each resolver — for each provider × mode cell of the production matrix (N
//!    trials per cell, each a fresh loopback lab and a fresh release `mxguard serve`).
//!    `--provider rfc2136 --mode mx` is the single cell this part measured before the matrix.
//! 2. `scale`: probe rounds/s, CPU and peak RSS of `mxguard serve` with 1,000 and 10,000
//!    targets configured (each domain with hosts of its own); with `--shared-domains`, N
//!    domains on H shared hosts (`shared.rs`): start → settled, RSS, SMTP sessions/s, and one
//!    shared host's outage → its domains decided → verified.
//! 3. `mass`: 1,000 domains failing over at once through the fake Cloudflare API and its rate
//!    limit (scaled window): total time against the rate-limit bound, 429s received.
//!
//! Prints a table per part and, last, one JSON line with every figure. The `mxguard` binary is
//! Cargo's build of this package in the bench profile (release).

#[allow(dead_code)]
#[path = "../../tests/common/lab.rs"]
mod lab;
mod mass;
mod scale;
mod shared;
mod stages;
mod util;

use lab::{LabMode, LabProvider};
use serde_json::json;

struct Args {
    parts: Vec<String>,
    trials: usize,
    ttl: u32,
    providers: Vec<LabProvider>,
    modes: Vec<LabMode>,
    targets: Vec<usize>,
    targets_given: bool,
    shared_domains: Vec<usize>,
    hosts: usize,
    per_domain: usize,
    /// `[checks] max_qps` of the own-hosts lab (its 2 resolvers are the lab's own Unbounds).
    max_qps: u32,
    secs: u64,
    domains: usize,
    window: u64,
    verify: mass::Verify,
    entries: usize,
    inject_429: Option<u64>,
}

fn list(s: &str) -> Result<Vec<usize>, String> {
    s.split(',')
        .map(|s| s.trim().parse::<usize>().map_err(|e| format!("{s}: {e}")))
        .collect()
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        parts: Vec::new(),
        trials: 7,
        ttl: 10,
        providers: vec![
            LabProvider::Rfc2136,
            LabProvider::Cloudflare,
            LabProvider::Route53,
        ],
        modes: vec![LabMode::Mx, LabMode::A],
        targets: vec![1_000, 10_000],
        targets_given: false,
        shared_domains: Vec::new(),
        hosts: 200,
        per_domain: 2,
        max_qps: 2_000,
        secs: 30,
        domains: 1_000,
        window: 30,
        verify: mass::Verify::Dns,
        entries: 1,
        inject_429: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        let num = |s: String| s.parse::<u64>().map_err(|e| format!("{s}: {e}"));
        match arg.as_str() {
            "--bench" => {} // what `cargo bench` passes
            "--trials" => a.trials = num(value("--trials")?)? as usize,
            "--ttl" => a.ttl = u32::try_from(num(value("--ttl")?)?).map_err(|e| e.to_string())?,
            "--provider" => a.providers = stages::parse_providers(&value("--provider")?)?,
            "--mode" => a.modes = stages::parse_modes(&value("--mode")?)?,
            "--targets" => {
                a.targets = list(&value("--targets")?)?;
                a.targets_given = true;
            }
            "--shared-domains" => a.shared_domains = list(&value("--shared-domains")?)?,
            "--hosts" => a.hosts = (num(value("--hosts")?)? as usize).max(2),
            "--per-domain" => a.per_domain = num(value("--per-domain")?)? as usize,
            "--max-qps" => a.max_qps = (num(value("--max-qps")?)? as u32).max(1),
            "--secs" => a.secs = num(value("--secs")?)?,
            "--domains" => a.domains = num(value("--domains")?)? as usize,
            "--window" => a.window = num(value("--window")?)?.clamp(1, 300),
            "--verify" => {
                a.verify = match value("--verify")?.as_str() {
                    "dns" => mass::Verify::Dns,
                    "api" => mass::Verify::Api,
                    other => return Err(format!("--verify: expected dns or api, got {other:?}")),
                }
            }
            "--entries" => a.entries = (num(value("--entries")?)? as usize).max(1),
            "--inject-429" => a.inject_429 = Some(num(value("--inject-429")?)?),
            "stages" | "scale" | "mass" => a.parts.push(arg),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if a.parts.is_empty() {
        a.parts = vec!["stages".into(), "scale".into(), "mass".into()];
    }
    Ok(a)
}

#[tokio::main]
async fn main() {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench failover: {e}");
            std::process::exit(2);
        }
    };
    let machine = util::machine();
    let bin = lab::mxguard_bin();
    println!("mxguard failover benchmark — {machine}");
    println!("binary: {}", bin.display());
    let mut report = serde_json::Map::new();
    report.insert("bench".into(), json!("failover"));
    report.insert("machine".into(), json!(machine));
    let mut failed = false;
    for part in &args.parts {
        eprintln!("== {part}");
        let result = match part.as_str() {
            "stages" => {
                stages::run(&stages::Opts {
                    trials: args.trials,
                    ttl: args.ttl,
                    providers: args.providers.clone(),
                    modes: args.modes.clone(),
                })
                .await
            }
            "scale" => {
                let mut parts = serde_json::Map::new();
                let mut outcome = Ok(());
                // `--shared-domains` alone measures only the shared shape
                if args.shared_domains.is_empty() || args.targets_given {
                    match scale::run(&scale::Opts {
                        targets: args.targets.clone(),
                        per_domain: args.per_domain,
                        max_qps: args.max_qps,
                        secs: args.secs,
                    })
                    .await
                    {
                        Ok(v) => {
                            parts.insert("own_hosts".into(), v);
                        }
                        Err(e) => outcome = Err(e),
                    }
                }
                if !args.shared_domains.is_empty() {
                    match shared::run(&shared::Opts {
                        domains: args.shared_domains.clone(),
                        hosts: args.hosts,
                        secs: args.secs,
                    })
                    .await
                    {
                        Ok(v) => {
                            parts.insert("shared_hosts".into(), v);
                        }
                        Err(e) => outcome = Err(e),
                    }
                }
                outcome.map(|()| serde_json::Value::Object(parts))
            }
            _ => {
                mass::run(&mass::Opts {
                    domains: args.domains,
                    window: args.window,
                    verify: args.verify,
                    entries: args.entries,
                    inject_429: args.inject_429,
                })
                .await
            }
        };
        match result {
            Ok(v) => {
                // a part that measured what it could and lists what failed still fails the run
                if v["errors"].as_array().is_some_and(|e| !e.is_empty()) {
                    eprintln!("bench failover: {part} had failures: {}", v["errors"]);
                    failed = true;
                }
                report.insert(part.clone(), v);
            }
            Err(e) => {
                eprintln!("bench failover: {part} failed: {e}");
                report.insert(part.clone(), json!({"error": e}));
                failed = true;
            }
        }
    }
    println!();
    println!("{}", serde_json::Value::Object(report));
    if failed {
        std::process::exit(1);
    }
}
