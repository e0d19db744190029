//! What the service passes to build a provider. The API token is wrapped so it never shows in
//! `Debug`, logs or errors.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use mxguard_core::{RateLimit, RateLimitError};
use secrecy::{ExposeSecret, SecretString};
use url::Url;

/// Cloudflare's API, as published.
pub const DEFAULT_BASE_URL: &str = "https://api.cloudflare.com/client/v4";

/// Cloudflare's ceiling on TTLs (seconds); `1` means "automatic".
pub const MAX_TTL: u32 = 86_400;

/// For benchmarks against a fake only: whole seconds (1..=300) that replace the 5 minutes the
/// client spreads its 1,200 requests over, so that a run against a fake enforcing the same
/// shorter window takes minutes instead of hours. [`CloudflareProvider::new`] applies it; it is
/// refused when the base URL is Cloudflare's own API, which would answer the faster pace with
/// 429s and a 5-minute lockout.
///
/// [`CloudflareProvider::new`]: crate::CloudflareProvider::new
pub const RATE_WINDOW_ENV: &str = "MXGUARD_CLOUDFLARE_RATE_WINDOW_SECS";

/// A Cloudflare API token (`Authorization: Bearer …`). `Debug` prints `[redacted]`; the string
/// is zeroed on drop.
#[derive(Clone)]
pub struct ApiToken(SecretString);

impl ApiToken {
    /// Refuses an empty token or one that cannot travel in an HTTP header. The error never
    /// echoes the input.
    pub fn new(token: impl Into<String>) -> Result<Self, ConfigError> {
        let token: String = token.into();
        let token = token.trim().to_string();
        if token.is_empty() {
            return Err(ConfigError::EmptyToken);
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError::TokenCharacters);
        }
        Ok(ApiToken(SecretString::from(token)))
    }

    pub(crate) fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiToken([redacted])")
    }
}

/// The zone's Cloudflare plan: it sets the batch size and the lowest TTL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    Free,
    Pro,
    Business,
    Enterprise,
}

impl Plan {
    /// Records per batch request (Free 200; Pro, Business, Enterprise 3,500).
    pub fn batch_size(self) -> usize {
        match self {
            Plan::Free => 200,
            Plan::Pro | Plan::Business | Plan::Enterprise => 3_500,
        }
    }

    /// The lowest TTL other than "automatic" (60 s; 30 s on Enterprise).
    pub fn min_ttl(self) -> u32 {
        match self {
            Plan::Enterprise => 30,
            _ => 60,
        }
    }
}

impl FromStr for Plan {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "free" => Ok(Plan::Free),
            "pro" => Ok(Plan::Pro),
            "business" => Ok(Plan::Business),
            "enterprise" => Ok(Plan::Enterprise),
            _ => Err(ConfigError::Plan(s.to_string())),
        }
    }
}

/// Everything needed to talk to Cloudflare with one token.
#[derive(Clone, Debug)]
pub struct CloudflareConfig {
    /// The provider's name in mxguard's config (`[providers.NAME]`), for logs and events.
    pub name: String,
    pub api_token: ApiToken,
    /// `https://api.cloudflare.com/client/v4` unless pointed elsewhere (tests, a proxy).
    pub base_url: Url,
    /// Record operations (deletes + patches + puts + posts) in one batch request.
    pub batch_size: usize,
    /// The lowest TTL the zone accepts; lower TTLs are raised to it on write.
    pub min_ttl: u32,
    /// Records per page when listing (Cloudflare's default is 100).
    pub per_page: u32,
    /// How long one HTTP request may take, connect included.
    pub timeout: Duration,
    /// The client-side budget for this token (see [`CloudflareConfig::DEFAULT_RATE`]).
    pub rate_limit: RateLimit,
    /// The account that owns the token, for an account-owned token (32 hex characters):
    /// such a token verifies at `/accounts/{account_id}/tokens/verify`, not at the user's
    /// endpoint, which refuses it (reference §12). `None`: a user-owned token.
    pub account_id: Option<String>,
}

impl CloudflareConfig {
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
    pub const DEFAULT_PER_PAGE: u32 = 500;
    /// Cloudflare allows 1,200 requests per 5 minutes per token. A bucket of 60 refilled at
    /// 1,140 per 5 minutes can never spend more than 60 + 1,140 = 1,200 in any 5-minute window.
    pub const DEFAULT_BURST: u32 = 60;
    pub const DEFAULT_REQUESTS_PER_5_MIN: u32 = 1_140;

    /// A Free-plan configuration against Cloudflare's public API.
    pub fn new(name: impl Into<String>, api_token: ApiToken) -> Self {
        let plan = Plan::Free;
        CloudflareConfig {
            name: name.into(),
            api_token,
            base_url: Url::parse(DEFAULT_BASE_URL).unwrap_or_else(|_| unreachable!()),
            batch_size: plan.batch_size(),
            min_ttl: plan.min_ttl(),
            per_page: Self::DEFAULT_PER_PAGE,
            timeout: Self::DEFAULT_TIMEOUT,
            rate_limit: Self::default_rate_limit(),
            account_id: None,
        }
    }

    /// 1,200 requests per 5 minutes, never more in any 5-minute window (see the constants).
    pub fn default_rate_limit() -> RateLimit {
        RateLimit::per_period(
            Self::DEFAULT_REQUESTS_PER_5_MIN,
            Duration::from_secs(300),
            Self::DEFAULT_BURST,
        )
        .unwrap_or_else(|_| unreachable!("constant, valid rate"))
    }

    /// Batch size and minimum TTL of the zone's plan.
    pub fn with_plan(mut self, plan: Plan) -> Self {
        self.batch_size = plan.batch_size();
        self.min_ttl = plan.min_ttl();
        self
    }

    pub fn with_base_url(mut self, base_url: &str) -> Result<Self, ConfigError> {
        let url = Url::parse(base_url).map_err(|e| ConfigError::BaseUrl(e.to_string()))?;
        if !matches!(url.scheme(), "https" | "http") || url.cannot_be_a_base() {
            return Err(ConfigError::BaseUrl(format!(
                "{base_url}: expected an http(s) URL such as {DEFAULT_BASE_URL}"
            )));
        }
        self.base_url = url;
        Ok(self)
    }

    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size;
        self
    }

    pub fn with_min_ttl(mut self, min_ttl: u32) -> Self {
        self.min_ttl = min_ttl;
        self
    }

    /// The token is account-owned, by `account_id` (32 hex characters, as in the dashboard's
    /// URL and the account's API paths).
    pub fn with_account_id(mut self, account_id: &str) -> Result<Self, ConfigError> {
        self.account_id = Some(parse_account_id(account_id)?);
        Ok(self)
    }

    pub fn with_per_page(mut self, per_page: u32) -> Self {
        self.per_page = per_page;
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

    /// The default budget (a burst of 60 plus 1,140 per window: never more than 1,200 in any
    /// window) spread over `window` instead of 5 minutes.
    pub fn with_rate_window(self, window: Duration) -> Result<Self, ConfigError> {
        let limit = RateLimit::per_period(
            Self::DEFAULT_REQUESTS_PER_5_MIN,
            window,
            Self::DEFAULT_BURST,
        )?;
        Ok(self.with_rate_limit(limit))
    }

    /// Applies a value of [`RATE_WINDOW_ENV`] (`None`: unset, nothing changes).
    pub(crate) fn with_window_override(self, value: Option<&str>) -> Result<Self, ConfigError> {
        let Some(value) = value else {
            return Ok(self);
        };
        let secs = value
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|s| (1..=300).contains(s))
            .ok_or_else(|| {
                ConfigError::RateWindow(format!(
                    "{RATE_WINDOW_ENV}={value:?}: expected whole seconds, 1 to 300"
                ))
            })?;
        if self.base_url.host_str() == Some("api.cloudflare.com") {
            return Err(ConfigError::RateWindow(format!(
                "{RATE_WINDOW_ENV} is set but the API is Cloudflare's own ({}): a window shorter \
                 than 5 minutes would exceed its limit and lock the token out; unset it",
                self.base_url
            )));
        }
        tracing::warn!(
            provider = %self.name,
            window_secs = secs,
            "{RATE_WINDOW_ENV}: the Cloudflare client paces 1,200 requests per {secs} s instead of per 300 s (benchmarks against a fake only)"
        );
        self.with_rate_window(Duration::from_secs(secs))
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.batch_size < 2 {
            return Err(ConfigError::BatchSize(self.batch_size));
        }
        if !(30..=MAX_TTL).contains(&self.min_ttl) {
            return Err(ConfigError::MinTtl(self.min_ttl));
        }
        if self.per_page == 0 {
            return Err(ConfigError::PerPage);
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::Timeout);
        }
        Ok(())
    }
}

/// A Cloudflare account id: 32 hexadecimal characters, kept lowercase.
pub fn parse_account_id(id: &str) -> Result<String, ConfigError> {
    let id = id.trim();
    if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(id.to_ascii_lowercase())
    } else {
        Err(ConfigError::AccountId(id.chars().take(64).collect()))
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("the Cloudflare API token is empty")]
    EmptyToken,
    #[error("the Cloudflare API token holds characters a token cannot have (whitespace or control characters inside it)")]
    TokenCharacters,
    #[error("unknown Cloudflare plan {0:?}: expected free, pro, business or enterprise")]
    Plan(String),
    #[error("account id {0:?}: expected the 32 hexadecimal characters of a Cloudflare account id")]
    AccountId(String),
    #[error("invalid Cloudflare base URL: {0}")]
    BaseUrl(String),
    #[error("batch size {0}: at least 2 record operations per batch")]
    BatchSize(usize),
    #[error("minimum TTL {0}: Cloudflare accepts 30 (Enterprise) or 60 up to 86400")]
    MinTtl(u32),
    #[error("per_page must be at least 1")]
    PerPage,
    #[error("the request timeout must be more than zero")]
    Timeout,
    #[error("invalid rate limit: {0}")]
    RateLimit(#[from] RateLimitError),
    #[error("{0}")]
    RateWindow(String),
    #[error("cannot build the HTTP client: {0}")]
    Http(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_never_shows() {
        let token = ApiToken::new("cf-secret-token-0123456789").unwrap();
        let config = CloudflareConfig::new("cf", token);
        let shown = format!("{config:?}");
        assert!(!shown.contains("cf-secret-token"), "{shown}");
        assert!(shown.contains("[redacted]"));
    }

    #[test]
    fn bad_tokens_are_refused_without_echoing_them() {
        assert_eq!(ApiToken::new("  ").unwrap_err(), ConfigError::EmptyToken);
        let err = ApiToken::new("abc\ndef-secret").unwrap_err();
        assert!(!err.to_string().contains("def-secret"));
    }

    #[test]
    fn account_ids_are_32_hex_characters() {
        let token = ApiToken::new("t").unwrap();
        let c = CloudflareConfig::new("cf", token);
        assert_eq!(c.account_id, None);
        let id = "0A0B0C0D0E0F00112233445566778899";
        let c = c.with_account_id(id).unwrap();
        assert_eq!(
            c.account_id.as_deref(),
            Some(id.to_ascii_lowercase().as_str())
        );
        for bad in [
            "",
            "abc",
            "0a0b0c0d0e0f0011223344556677889",
            "0a0b0c0d0e0f00112233445566778899ff",
            "zz0b0c0d0e0f00112233445566778899",
        ] {
            let err = c.clone().with_account_id(bad).unwrap_err();
            assert!(matches!(err, ConfigError::AccountId(_)), "{bad}: {err}");
        }
    }

    #[test]
    fn plans_set_batch_size_and_min_ttl() {
        let token = ApiToken::new("t").unwrap();
        let c = CloudflareConfig::new("cf", token).with_plan("Enterprise".parse().unwrap());
        assert_eq!((c.batch_size, c.min_ttl), (3_500, 30));
        assert!("gold".parse::<Plan>().is_err());
    }

    #[test]
    fn a_shorter_window_keeps_the_budget_of_1200_per_window() {
        let token = ApiToken::new("t").unwrap();
        let fake = CloudflareConfig::new("cf", token)
            .with_base_url("http://127.0.0.1:9/client/v4")
            .unwrap();
        let c = fake.clone().with_window_override(Some("15")).unwrap();
        let window = f64::from(c.rate_limit.burst()) + c.rate_limit.per_second() * 15.0;
        assert!((window - 1_200.0).abs() < 1e-6, "{window}");
        assert!((c.rate_limit.per_second() - 76.0).abs() < 1e-9);
        // unset: the default pace
        let c = fake.clone().with_window_override(None).unwrap();
        assert!((c.rate_limit.per_second() - 3.8).abs() < 1e-9);
        for bad in ["0", "301", "abc", "-5", ""] {
            let err = fake.clone().with_window_override(Some(bad)).unwrap_err();
            assert!(matches!(err, ConfigError::RateWindow(_)), "{bad}: {err}");
        }
    }

    #[test]
    fn a_shorter_window_is_refused_against_cloudflare_itself() {
        let token = ApiToken::new("t").unwrap();
        let real = CloudflareConfig::new("cf", token);
        let err = real.with_window_override(Some("15")).unwrap_err();
        assert!(err.to_string().contains("Cloudflare's own"), "{err}");
    }

    #[test]
    fn the_default_budget_never_exceeds_1200_per_5_minutes() {
        let limit = CloudflareConfig::default_rate_limit();
        let window = f64::from(limit.burst()) + limit.per_second() * 300.0;
        assert!(window <= 1_200.0 + 1e-9, "{window}");
    }
}
