//! mxguard's Amazon Route 53 provider, on `aws-sdk-route53` with the default AWS credential
//! chain. Each change set is **one** `ChangeResourceRecordSets` batch (atomic at Route 53),
//! after checking every change's `expected` against a read made just before (Route 53 has no
//! compare-and-swap for UPSERT); then `GetChange` is polled until `INSYNC`, within a bounded
//! wait on the injected clock, reporting `PENDING` to an observer. README.md has the
//! configuration, the IAM permissions and the error mapping.
#![forbid(unsafe_code)]

mod access;
mod client;
mod config;
mod errors;
mod provider;
mod sync;
mod wire;

pub use config::{ConfigError, Credentials, Route53Config, SyncPolicy};
pub use mxguard_core::{AccessCheck, AccessReport, Missing, Outcome};
pub use provider::Route53Provider;
pub use sync::{ApplyOutcome, ChangeEvent, ChangeObserver, SyncStatus};
