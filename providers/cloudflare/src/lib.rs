//! mxguard's Cloudflare provider: a small typed client for API v4 (bearer token, zone id by
//! name, DNS records listed page by page) that applies each change set as **one** request to
//! the batch endpoint (`POST /zones/{id}/dns_records/batch`: deletes → patches → puts → posts
//! in one transaction), after checking every change's `expected` against a fresh read.
//! README.md has the configuration, the token permissions and the error mapping.
#![forbid(unsafe_code)]

mod access;
mod client;
mod config;
mod errors;
mod plan;
mod provider;
mod wire;

pub use config::{
    parse_account_id, ApiToken, CloudflareConfig, ConfigError, Plan, DEFAULT_BASE_URL, MAX_TTL,
    RATE_WINDOW_ENV,
};
pub use mxguard_core::{AccessCheck, AccessReport, Missing, Outcome};
pub use provider::{CloudflareProvider, BATCH_REPROBE_EVERY};
