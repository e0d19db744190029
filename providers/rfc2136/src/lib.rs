//! mxguard's RFC 2136 provider: dynamic UPDATE (one atomic message per apply, with the
//! planner's view of each RRset as a prerequisite), TSIG-signed with hmac-sha256 or
//! hmac-sha512; reads by direct queries to the primary, whole-zone listing by AXFR.
//! For BIND, Knot and PowerDNS (Windows DNS speaks only GSS-TSIG); README.md has the
//! server configuration and the error mapping.
#![forbid(unsafe_code)]

mod access;
mod config;
mod exchange;
mod provider;
mod rcode;
mod update;
mod wire;

pub use config::{ConfigError, Rfc2136Config, TsigAlgorithm, TsigSecret};
pub use mxguard_core::{AccessCheck, AccessReport, Missing, Outcome};
pub use provider::Rfc2136Provider;
