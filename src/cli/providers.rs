//! `mxguard providers check [--write]`: for every configured domain, what its provider's
//! credentials can do for its zone — read its managed records, and the provider's access checks
//! (read-only; with `--write`, a write that changes nothing). Exit 0 all passed, 1 a check
//! failed, 2 a configuration error (the file, or a provider that cannot be built from it).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use super::load_config;
use crate::plan::Managed;
use crate::providers::{BuiltProvider, ProviderRegistry};

pub(super) async fn providers_check(file: Option<PathBuf>, write: bool) -> ExitCode {
    let config = match load_config(file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mxguard: {e}");
            return ExitCode::from(2);
        }
    };
    if config.domains.is_empty() {
        println!("no domains configured: nothing to check");
        return ExitCode::SUCCESS;
    }
    // One client per provider, as `serve` builds it (one budget for all its domains).
    let mut built: BTreeMap<String, Result<BuiltProvider, String>> = BTreeMap::new();
    let (mut failed, mut misconfigured) = (false, false);
    // A zone served by several providers is checked at each.
    for (d, name) in config
        .domains
        .iter()
        .flat_map(|d| d.providers().map(move |p| (d, p)))
    {
        if !built.contains_key(name) {
            let b = ProviderRegistry::one(&config, name)
                .await
                .map_err(|e| e.to_string());
            built.insert(name.clone(), b);
        }
        let provider = match built.get(name) {
            Some(Ok(p)) => p,
            Some(Err(e)) => {
                misconfigured = true;
                println!("{}  provider {}: FAIL (configuration): {e}", d.name, name);
                continue;
            }
            None => continue,
        };
        let managed = Managed::new(d);
        let keys = managed.keys();
        match provider.client.read(&d.zone, &keys).await {
            Ok(live) => {
                let side = managed
                    .which_side(&live)
                    .map_or("neither side's records".to_string(), |s| {
                        format!("the {s} records")
                    });
                println!(
                    "{}  provider {}: OK, zone {} readable, publishes {side}",
                    d.name, name, d.zone
                );
            }
            Err(e) => {
                failed = true;
                println!("{}  provider {}: FAIL ({}): {e}", d.name, name, missing(&e));
            }
        }
        let report = if write {
            provider.access.verify_write_access(&d.zone, &keys).await
        } else {
            provider.access.verify_access(&d.zone).await
        };
        failed |= !report.is_ok();
        for line in report.to_string().lines() {
            println!("  {line}");
        }
    }
    if misconfigured {
        ExitCode::from(2)
    } else if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// What a failed read says is missing.
fn missing(e: &mxguard_core::ProviderError) -> &'static str {
    use mxguard_core::ProviderError as E;
    match e {
        E::Auth(_) => "credentials or permission refused",
        E::NotFound(_) => "zone not found for these credentials",
        E::Transient(_) | E::RateLimited { .. } => "provider unreachable (network) or failing",
        E::Rejected { .. } | E::Fenced(_) => "request refused",
    }
}
