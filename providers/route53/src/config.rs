//! What the service passes to build a provider. Static credentials, when given, are wrapped so
//! they never show in `Debug`, logs or errors; normally the default AWS credential chain is used.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use mxguard_core::{Fqdn, RateLimit};
use secrecy::{ExposeSecret, SecretString};

/// Where the credentials come from.
#[derive(Clone, Default)]
pub enum Credentials {
    /// The AWS default chain: environment, shared config/credentials files (optionally a named
    /// profile), SSO, web identity, ECS/EC2 instance roles.
    #[default]
    DefaultChain,
    /// The default chain, reading the named profile of the shared config files.
    Profile(String),
    /// An access key given in mxguard's config (the secret read from an env var or a file).
    Static {
        access_key_id: String,
        secret_access_key: SecretString,
        session_token: Option<SecretString>,
    },
}

impl Credentials {
    pub fn static_keys(
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
    ) -> Self {
        Credentials::Static {
            access_key_id: access_key_id.into(),
            secret_access_key: SecretString::from(secret_access_key.into()),
            session_token: None,
        }
    }

    pub(crate) fn secret(&self) -> Option<(&str, &str, Option<&str>)> {
        match self {
            Credentials::Static {
                access_key_id,
                secret_access_key,
                session_token,
            } => Some((
                access_key_id,
                secret_access_key.expose_secret(),
                session_token.as_ref().map(|t| t.expose_secret()),
            )),
            _ => None,
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::DefaultChain => f.write_str("DefaultChain"),
            Credentials::Profile(p) => write!(f, "Profile({p:?})"),
            Credentials::Static {
                access_key_id,
                session_token,
                ..
            } => {
                write!(
                f,
                "Static {{ access_key_id: {access_key_id:?}, secret_access_key: [redacted]{} }}",
                if session_token.is_some() { ", session_token: [redacted]" } else { "" }
            )
            }
        }
    }
}

/// How long to follow a change until Route 53 reports it `INSYNC` on its name servers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncPolicy {
    /// Wait between two `GetChange` calls.
    pub poll_interval: Duration,
    /// Give up following after this long (the change still completes at Route 53; `apply`
    /// returns `Ok` and reports `SyncStatus::TimedOut`). Zero: do not follow at all.
    pub max_wait: Duration,
}

impl Default for SyncPolicy {
    /// Route 53 usually reports INSYNC within 60 s.
    fn default() -> Self {
        SyncPolicy {
            poll_interval: Duration::from_secs(5),
            max_wait: Duration::from_secs(120),
        }
    }
}

/// Everything needed to talk to Route 53 with one set of credentials.
#[derive(Clone, Debug)]
pub struct Route53Config {
    /// The provider's name in mxguard's config (`[providers.NAME]`), for logs and events.
    pub name: String,
    pub credentials: Credentials,
    /// Signing region; Route 53 is global and signs in `us-east-1` unless told otherwise.
    pub region: String,
    /// Another endpoint than Route 53's (tests, a VPC endpoint, a proxy).
    pub endpoint_url: Option<String>,
    /// Hosted zone ids by zone name; zones not listed are found with `ListHostedZonesByName`.
    pub hosted_zone_ids: BTreeMap<Fqdn, String>,
    /// How long one HTTP request may take, connect included.
    pub timeout: Duration,
    /// The client-side budget for the account (Route 53 allows 5 requests per second).
    pub rate_limit: RateLimit,
    pub sync: SyncPolicy,
    /// `apply` returns once Route 53 has accepted the change and follows it to `INSYNC` in a
    /// task of its own, so a caller's zone lock and admission place are not held for the
    /// minute Route 53 takes to sync (the service verifies at the authoritative servers or by
    /// reading back). Off: `apply` follows the change before it returns.
    pub follow_in_background: bool,
}

impl Route53Config {
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
    pub const DEFAULT_REGION: &'static str = "us-east-1";

    pub fn new(name: impl Into<String>) -> Self {
        Route53Config {
            name: name.into(),
            credentials: Credentials::DefaultChain,
            region: Self::DEFAULT_REGION.to_string(),
            endpoint_url: None,
            hosted_zone_ids: BTreeMap::new(),
            timeout: Self::DEFAULT_TIMEOUT,
            rate_limit: Self::default_rate_limit(),
            sync: SyncPolicy::default(),
            follow_in_background: false,
        }
    }

    /// 5 requests per second, one at a time: never more than Route 53's per-account limit.
    pub fn default_rate_limit() -> RateLimit {
        RateLimit::new(5.0, 1).unwrap_or_else(|_| unreachable!("constant, valid rate"))
    }

    pub fn with_credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = credentials;
        self
    }

    pub fn with_region(mut self, region: impl Into<String>) -> Self {
        self.region = region.into();
        self
    }

    pub fn with_endpoint_url(mut self, url: impl Into<String>) -> Self {
        self.endpoint_url = Some(url.into());
        self
    }

    pub fn with_hosted_zone_id(mut self, zone: Fqdn, id: impl Into<String>) -> Self {
        self.hosted_zone_ids.insert(zone, id.into());
        self
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn with_rate_limit(mut self, rate_limit: RateLimit) -> Self {
        self.rate_limit = rate_limit;
        self
    }

    pub fn with_sync(mut self, sync: SyncPolicy) -> Self {
        self.sync = sync;
        self
    }

    /// See [`Route53Config::follow_in_background`].
    pub fn with_background_follow(mut self) -> Self {
        self.follow_in_background = true;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.timeout.is_zero() {
            return Err(ConfigError::Timeout);
        }
        if self.region.trim().is_empty() {
            return Err(ConfigError::Region);
        }
        if let Some(url) = &self.endpoint_url {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(ConfigError::EndpointUrl(url.clone()));
            }
        }
        if let Some((id, _, _)) = self.credentials.secret() {
            if id.trim().is_empty() {
                return Err(ConfigError::AccessKeyId);
            }
        }
        if !self.sync.max_wait.is_zero() && self.sync.poll_interval.is_zero() {
            return Err(ConfigError::PollInterval);
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("the request timeout must be more than zero")]
    Timeout,
    #[error("the region must not be empty (Route 53 signs in us-east-1)")]
    Region,
    #[error("endpoint_url {0:?}: expected an http:// or https:// URL")]
    EndpointUrl(String),
    #[error("the access key id is empty")]
    AccessKeyId,
    #[error("sync.poll_interval must be more than zero when sync.max_wait is")]
    PollInterval,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_secrets_never_show() {
        let c = Route53Config::new("aws").with_credentials(Credentials::Static {
            access_key_id: "AKIAEXAMPLE".into(),
            secret_access_key: SecretString::from(
                "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".to_string(),
            ),
            session_token: Some(SecretString::from("session-token-secret".to_string())),
        });
        let shown = format!("{c:?}");
        assert!(!shown.contains("wJalrXUtnFEMI"), "{shown}");
        assert!(!shown.contains("session-token-secret"), "{shown}");
        assert!(
            shown.contains("AKIAEXAMPLE") && shown.contains("[redacted]"),
            "{shown}"
        );
    }

    #[test]
    fn invalid_settings_are_refused() {
        assert_eq!(
            Route53Config::new("aws")
                .with_timeout(Duration::ZERO)
                .validate(),
            Err(ConfigError::Timeout)
        );
        assert!(Route53Config::new("aws")
            .with_endpoint_url("localhost:5000")
            .validate()
            .is_err());
        assert_eq!(Route53Config::new("aws").validate(), Ok(()));
    }
}
