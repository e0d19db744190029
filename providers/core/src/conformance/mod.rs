//! The provider conformance kit: one async function per behaviour every [`DnsProvider`] must
//! have, run against a real (or faithfully faked) peer. See `CONFORMANCE.md` for how a new
//! provider runs it; in short:
//!
//! ```text
//! mxguard_core::conformance_tests!(my_peer::start());   // one #[tokio::test] per case
//! ```
//!
//! The kit writes only at the zone apex and at names whose first label starts with `mxg`.
//! [`support`] has what provider tests share besides the cases (the `Guarded` stack, a
//! recording clock, log capture).

mod failures;
pub mod memory;
mod records;
pub mod support;

use std::sync::Arc;

use async_trait::async_trait;

use crate::{
    diff, ChangeSet, DnsProvider, Fqdn, ModelError, ProviderError, RecordSet, RecordType, RrsetKey,
    Ttl,
};

pub use failures::{
    bad_credentials_are_auth, concurrent_applies_are_serialised, server_down_is_transient,
    stale_expected_is_rejected, unknown_zone_is_not_found,
};
pub use records::{
    create_mx_set, delete_rrset, mixed_case_names, more_than_one_page,
    mx_and_its_target_address_in_one_change, null_mx, reapply_is_an_empty_diff, replace_a_set,
    replace_mx_set, ttl_kept_exactly,
};

/// A provider and the zone it may use for one case.
#[derive(Clone)]
pub struct Fixture {
    pub provider: Arc<dyn DnsProvider>,
    pub zone: Fqdn,
}

/// What the kit needs from the peer a provider is tested against.
#[async_trait]
pub trait Peer: Send + Sync {
    /// A provider and a zone no other case has used, holding no MX, A, AAAA or TXT RRsets at
    /// the apex or at names whose first label starts with `mxg`.
    async fn fresh(&self) -> Result<Fixture, String>;

    /// A provider for the same peer and zone whose credentials the peer refuses.
    async fn bad_credentials(&self, fixture: &Fixture) -> Result<Arc<dyn DnsProvider>, String>;

    /// Makes the peer unreachable (stops the server). Only `server_down_is_transient` calls
    /// it, and [`run_all`] runs that case last.
    async fn stop(&self) -> Result<(), String>;
}

/// Why a case failed, in words a provider author can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Failure(pub String);

pub type CaseResult = Result<(), Failure>;

impl From<ModelError> for Failure {
    fn from(e: ModelError) -> Self {
        Failure(format!("the kit built an invalid record: {e}"))
    }
}

/// Every case, in the order [`run_all`] runs them (the destructive one last).
pub const CASES: &[&str] = &[
    "create_mx_set",
    "replace_mx_set",
    "replace_a_set",
    "mx_and_its_target_address_in_one_change",
    "null_mx",
    "ttl_kept_exactly",
    "reapply_is_an_empty_diff",
    "delete_rrset",
    "mixed_case_names",
    "more_than_one_page",
    "unknown_zone_is_not_found",
    "bad_credentials_are_auth",
    "concurrent_applies_are_serialised",
    "stale_expected_is_rejected",
    "server_down_is_transient",
];

/// Runs one case by name.
pub async fn run_case(name: &str, peer: &dyn Peer) -> CaseResult {
    match name {
        "create_mx_set" => create_mx_set(peer).await,
        "replace_mx_set" => replace_mx_set(peer).await,
        "replace_a_set" => replace_a_set(peer).await,
        "mx_and_its_target_address_in_one_change" => {
            mx_and_its_target_address_in_one_change(peer).await
        }
        "null_mx" => null_mx(peer).await,
        "ttl_kept_exactly" => ttl_kept_exactly(peer).await,
        "reapply_is_an_empty_diff" => reapply_is_an_empty_diff(peer).await,
        "delete_rrset" => delete_rrset(peer).await,
        "mixed_case_names" => mixed_case_names(peer).await,
        "more_than_one_page" => more_than_one_page(peer).await,
        "unknown_zone_is_not_found" => unknown_zone_is_not_found(peer).await,
        "bad_credentials_are_auth" => bad_credentials_are_auth(peer).await,
        "concurrent_applies_are_serialised" => concurrent_applies_are_serialised(peer).await,
        "stale_expected_is_rejected" => stale_expected_is_rejected(peer).await,
        "server_down_is_transient" => server_down_is_transient(peer).await,
        other => Err(Failure(format!("no conformance case named {other:?}"))),
    }
}

/// Runs every case against one peer and reports every failure, not just the first.
pub async fn run_all(peer: &dyn Peer) -> Result<(), Vec<(&'static str, Failure)>> {
    let mut failed = Vec::new();
    for name in CASES {
        tracing::info!(case = name, "conformance case");
        if let Err(e) = run_case(name, peer).await {
            failed.push((*name, e));
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed)
    }
}

/// One `#[tokio::test]` per case, each with its own peer: `conformance_tests!(start())` where
/// `start()` is an expression giving a future of a [`Peer`]. The calling crate needs `tokio`
/// (with `macros` and `rt-multi-thread`) in its dev-dependencies.
#[macro_export]
macro_rules! conformance_tests {
    ($peer:expr) => {
        $crate::__conformance_tests!($peer;
            create_mx_set, replace_mx_set, replace_a_set, mx_and_its_target_address_in_one_change,
            null_mx, ttl_kept_exactly, reapply_is_an_empty_diff, delete_rrset, mixed_case_names,
            more_than_one_page, unknown_zone_is_not_found, bad_credentials_are_auth,
            concurrent_applies_are_serialised, stale_expected_is_rejected, server_down_is_transient);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_tests {
    ($peer:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let peer = $peer.await;
                if let Err(failure) = $crate::conformance::$case(&peer).await {
                    panic!("conformance case {} failed: {failure}", stringify!($case));
                }
            }
        )*
    };
}

// ---- helpers shared by the cases ----

pub(crate) fn fail<T>(message: impl Into<String>) -> Result<T, Failure> {
    Err(Failure(message.into()))
}

pub(crate) fn ctx<T>(what: &str, r: Result<T, ProviderError>) -> Result<T, Failure> {
    r.map_err(|e| Failure(format!("{what}: unexpected {} error: {e}", e.kind())))
}

/// `label.zone`, or the zone itself for `""`.
pub(crate) fn at(zone: &Fqdn, label: &str) -> Result<Fqdn, Failure> {
    if label.is_empty() {
        return Ok(zone.clone());
    }
    Ok(Fqdn::parse(&format!("{label}.{zone}"))?)
}

pub(crate) fn rrset(
    name: &Fqdn,
    rtype: RecordType,
    ttl: u32,
    records: &[&str],
) -> Result<RecordSet, Failure> {
    Ok(RecordSet::parse(
        name.clone(),
        rtype,
        Ttl::new(ttl)?,
        records,
    )?)
}

/// Applies `cs` in requests no larger than the provider accepts.
pub(crate) async fn apply(f: &Fixture, cs: &ChangeSet, what: &str) -> CaseResult {
    let max = f.provider.capabilities().max_changes_per_request.max(1);
    for chunk in cs.changes.chunks(max) {
        let part = ChangeSet {
            changes: chunk.to_vec(),
        };
        ctx(what, f.provider.apply(&f.zone, &part).await)?;
    }
    Ok(())
}

pub(crate) async fn read(
    f: &Fixture,
    keys: &[RrsetKey],
    what: &str,
) -> Result<Vec<RecordSet>, Failure> {
    ctx(what, f.provider.read(&f.zone, keys).await)
}

fn keys_of(sets: &[RecordSet]) -> Vec<RrsetKey> {
    sets.iter().map(RrsetKey::of).collect()
}

/// Reads the RRsets at `desired`'s keys, applies the diff, and checks the provider now holds
/// exactly `desired` there.
pub(crate) async fn converge(f: &Fixture, desired: &[RecordSet], what: &str) -> CaseResult {
    let actual = read(f, &keys_of(desired), what).await?;
    apply(f, &diff(desired, &actual), what).await?;
    expect_exactly(f, desired, what).await
}

/// Checks that reading `expected`'s keys returns exactly `expected` (records and TTLs).
pub(crate) async fn expect_exactly(f: &Fixture, expected: &[RecordSet], what: &str) -> CaseResult {
    let mut got = read(f, &keys_of(expected), what).await?;
    let mut want = expected.to_vec();
    got.sort_by_key(RrsetKey::of);
    want.sort_by_key(RrsetKey::of);
    if got != want {
        return fail(format!(
            "{what}: read back\n{}\nbut expected\n{}",
            show(&got),
            show(&want)
        ));
    }
    Ok(())
}

pub(crate) async fn expect_absent(f: &Fixture, keys: &[RrsetKey], what: &str) -> CaseResult {
    let got = read(f, keys, what).await?;
    if !got.is_empty() {
        return fail(format!("{what}: expected no RRsets, read\n{}", show(&got)));
    }
    Ok(())
}

pub(crate) fn show(sets: &[RecordSet]) -> String {
    if sets.is_empty() {
        return "  (nothing)".into();
    }
    sets.iter()
        .map(|s| format!("  {}", s.to_string().replace('\n', "\n  ")))
        .collect::<Vec<_>>()
        .join("\n")
}
