//! What the service passes to build a provider. The TSIG secret is wrapped so it never shows
//! in `Debug`, logs or errors.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use base64::Engine;
use mxguard_core::Fqdn;
use secrecy::{ExposeSecret, SecretBox};

/// The TSIG algorithms mxguard signs with (RFC 8945 §6; HMAC-MD5 and SHA-1 are refused).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TsigAlgorithm {
    HmacSha256,
    HmacSha512,
}

impl TsigAlgorithm {
    /// The name BIND, Knot and PowerDNS use in their key configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            TsigAlgorithm::HmacSha256 => "hmac-sha256",
            TsigAlgorithm::HmacSha512 => "hmac-sha512",
        }
    }

    pub(crate) fn to_hickory(self) -> hickory_proto::rr::rdata::tsig::TsigAlgorithm {
        use hickory_proto::rr::rdata::tsig::TsigAlgorithm as H;
        match self {
            TsigAlgorithm::HmacSha256 => H::HmacSha256,
            TsigAlgorithm::HmacSha512 => H::HmacSha512,
        }
    }
}

impl fmt::Display for TsigAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TsigAlgorithm {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().trim_end_matches('.').to_ascii_lowercase().as_str() {
            "hmac-sha256" => Ok(TsigAlgorithm::HmacSha256),
            "hmac-sha512" => Ok(TsigAlgorithm::HmacSha512),
            _ => Err(ConfigError::Algorithm(s.to_string())),
        }
    }
}

/// A TSIG shared secret (the decoded bytes). `Debug` prints `[redacted]`; the bytes are
/// zeroed on drop.
pub struct TsigSecret(SecretBox<[u8]>);

impl TsigSecret {
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, ConfigError> {
        if bytes.is_empty() {
            return Err(ConfigError::EmptySecret);
        }
        Ok(TsigSecret(SecretBox::new(bytes.into_boxed_slice())))
    }

    /// Decodes the base64 `secret` of a BIND/Knot key file. The error never echoes the input.
    pub fn from_base64(encoded: &str) -> Result<Self, ConfigError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| ConfigError::SecretEncoding)?;
        TsigSecret::from_bytes(bytes)
    }

    pub(crate) fn expose(&self) -> &[u8] {
        self.0.expose_secret()
    }
}

impl Clone for TsigSecret {
    fn clone(&self) -> Self {
        TsigSecret(SecretBox::new(self.expose().to_vec().into_boxed_slice()))
    }
}

impl fmt::Debug for TsigSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TsigSecret([redacted])")
    }
}

/// Everything needed to talk to one primary server with one TSIG key.
#[derive(Clone, Debug)]
pub struct Rfc2136Config {
    /// The provider's name in mxguard's config (`[providers.NAME]`), for logs and events.
    pub name: String,
    /// The primary server that accepts UPDATE, queries and AXFR (e.g. `192.0.2.53:53`).
    pub server: SocketAddr,
    pub key_name: Fqdn,
    pub algorithm: TsigAlgorithm,
    pub secret: TsigSecret,
    /// How long one exchange (a query, an UPDATE, a whole AXFR) may take.
    pub timeout: Duration,
}

impl Rfc2136Config {
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

    pub fn new(
        name: impl Into<String>,
        server: SocketAddr,
        key_name: Fqdn,
        algorithm: TsigAlgorithm,
        secret: TsigSecret,
    ) -> Self {
        Rfc2136Config {
            name: name.into(),
            server,
            key_name,
            algorithm,
            secret,
            timeout: Self::DEFAULT_TIMEOUT,
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("unsupported TSIG algorithm {0:?}: expected hmac-sha256 or hmac-sha512")]
    Algorithm(String),
    #[error("the TSIG secret is not valid base64")]
    SecretEncoding,
    #[error("the TSIG secret is empty")]
    EmptySecret,
    #[error("the TSIG key name cannot be used: {0}")]
    KeyName(String),
    #[error("the exchange timeout must be more than zero")]
    Timeout,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithms_parse_as_servers_spell_them() {
        assert_eq!("hmac-sha256".parse(), Ok(TsigAlgorithm::HmacSha256));
        assert_eq!("HMAC-SHA512.".parse(), Ok(TsigAlgorithm::HmacSha512));
        assert!("hmac-md5".parse::<TsigAlgorithm>().is_err());
    }

    #[test]
    fn the_secret_never_shows() {
        let encoded = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0IQ==";
        let secret = TsigSecret::from_base64(encoded).unwrap();
        assert_eq!(secret.expose(), b"secret-secret-secret-secret!");
        let config = Rfc2136Config::new(
            "ns1",
            "192.0.2.53:53".parse().unwrap(),
            Fqdn::parse("mxguard").unwrap(),
            TsigAlgorithm::HmacSha256,
            secret,
        );
        let shown = format!("{config:?} {:?}", config.clone());
        assert!(!shown.contains(encoded), "{shown}");
        assert!(!shown.contains("secret-secret"), "{shown}");
        assert!(
            !shown.contains("115, 101, 99"),
            "bytes of \"sec\" leaked: {shown}"
        );
        assert!(shown.contains("[redacted]"));
    }

    #[test]
    fn bad_secrets_are_refused_without_echoing_them() {
        let err = TsigSecret::from_base64("not base64 !!").unwrap_err();
        assert!(!err.to_string().contains("not base64 !!"));
        assert_eq!(
            TsigSecret::from_base64("").unwrap_err(),
            ConfigError::EmptySecret
        );
    }
}
