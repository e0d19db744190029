//! Real peers on loopback for mxguard's tests.
//!
//! - [`ca`]: a test CA (rcgen) issuing valid, expired, expiring-soon and wrong-name leaf certs.
//! - [`named`]: an authoritative BIND `named` serving zones from a temp dir.
//! - [`unbound`]: a caching Unbound resolver with a stub zone pointing at that `named`,
//!   or one that answers SERVFAIL for it; more stub zones, each re-pointable.
//! - [`postfix`]: real Postfix instances as MX hosts (accepting MX, open relay).
//! - [`faults`]: small SMTP listeners that misbehave in one specific way each.
//! - [`cloudflare`]: a strict fake of Cloudflare's DNS API (the one mock: Cloudflare cannot
//!   run locally), with Cloudflare's rate limit on demand.
//! - [`route53`]: a `moto_server` (Route 53) on a free port, and a proxy in front of it that
//!   answers what moto never says (throttling, `PENDING`, 5xx) and counts what reached moto.
//! - [`poll_until`], [`free_port`], [`free_port_on`]: waiting and port helpers.
//!
//! Every peer lives in its own directory under [`peers_dir`] and is stopped on `Drop`. Peers
//! left behind by a test process that was killed (`SIGKILL`, Ctrl-C for daemonised Postfix)
//! are stopped and removed the next time any test process creates a peer.
//! A missing binary is an error naming the Debian package to install; nothing is skipped.
#![forbid(unsafe_code)]

pub mod ca;
pub mod cloudflare;
mod daemon;
pub mod dns;
pub mod faults;
pub mod named;
pub mod postfix;
pub mod route53;
mod served;
pub mod unbound;
mod util;
mod workdir;

pub use hickory_proto;

pub use ca::{Ca, CertKind, LeafCert};
pub use faults::{Fault, FaultListener};
pub use named::{LimitedKey, Named, TsigKey, Zone};
pub use postfix::{Postfix, PostfixConfig, Profile};
pub use unbound::{Stub, Unbound, UnboundOptions};
pub use util::{free_port, free_port_on, poll_until, require_binary};
pub use workdir::{peers_dir, reap_orphans};

use std::time::Duration;

/// How long a peer may take to start or stop before it is reported as failed.
pub const START_DEADLINE: Duration = Duration::from_secs(60);

/// Everything that can go wrong while starting, driving or stopping a peer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A program the peer needs is not installed.
    #[error(
        "`{binary}` is not installed (looked in $PATH and /usr/sbin, /sbin, /usr/local/sbin); \
         install the Debian package: apt-get install -y {package}"
    )]
    MissingBinary {
        binary: &'static str,
        package: &'static str,
    },
    /// A file or socket operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A condition polled for did not hold before the deadline.
    #[error("timed out after {waited:?} waiting for {what}; last attempt: {last}")]
    Timeout {
        what: String,
        waited: Duration,
        last: String,
    },
    /// A peer refused its configuration, exited, or did not behave.
    #[error("{peer}: {detail}")]
    Peer { peer: String, detail: String },
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Cert(#[from] rcgen::Error),
    /// TLS configuration failed.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// A DNS message could not be built, sent or parsed.
    #[error("DNS: {0}")]
    Dns(String),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn peer(peer: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Peer {
            peer: peer.into(),
            detail: detail.into(),
        }
    }
}

/// This crate's result type.
pub type Result<T> = std::result::Result<T, Error>;
