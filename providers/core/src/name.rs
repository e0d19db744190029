//! Domain names. `Fqdn` is the only way a name enters mxguard: parsed once, lower-cased,
//! stored with its trailing dot, and trusted after that.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::ModelError;

/// A fully-qualified domain name in canonical form: ASCII lower case with a trailing dot
/// (`example.com.`). The root is `.`. Comparison is therefore case-insensitive.
///
/// The text is immutable and shared: a clone is a reference count, not a copy. A name is held
/// in many places (the configuration, the monitors' hosts, every round's verdicts, the actors,
/// the API's index), and at 100,000 domains a copy each was megabytes.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Fqdn(Arc<str>);

/// A domain name as users write it in config and API calls; same type, named for intent.
pub type DomainName = Fqdn;

const MAX_NAME_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

impl Fqdn {
    /// Parses `example.com`, `Example.COM.` or `.` (the root).
    pub fn parse(input: &str) -> Result<Self, ModelError> {
        let bad = |why: &str| ModelError::InvalidName {
            input: input.to_string(),
            reason: why.to_string(),
        };
        let trimmed = input.trim();
        if trimmed != input {
            return Err(bad("surrounding whitespace"));
        }
        if input == "." {
            return Ok(Fqdn::root());
        }
        let body = input.strip_suffix('.').unwrap_or(input);
        if body.is_empty() {
            return Err(bad("empty name"));
        }
        if body.len() > MAX_NAME_LEN {
            return Err(bad("longer than 253 characters"));
        }
        for (i, label) in body.split('.').enumerate() {
            if label.is_empty() {
                return Err(bad("empty label (two dots in a row?)"));
            }
            if label.len() > MAX_LABEL_LEN {
                return Err(bad("a label is longer than 63 characters"));
            }
            if label == "*" && i == 0 {
                continue;
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(bad(
                    "only letters, digits, '-' and '_' are allowed in a label (use punycode for IDNs)",
                ));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(bad("a label may not start or end with '-'"));
            }
        }
        Ok(Fqdn(format!("{}.", body.to_ascii_lowercase()).into()))
    }

    /// The root name `.` (used by Null MX, RFC 7505).
    pub fn root() -> Self {
        Fqdn(Arc::from("."))
    }

    pub fn is_root(&self) -> bool {
        &*self.0 == "."
    }

    /// Canonical text, with the trailing dot.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name without its trailing dot (`example.com`), as most HTTP APIs want it.
    pub fn without_dot(&self) -> &str {
        if self.is_root() {
            "."
        } else {
            &self.0[..self.0.len() - 1]
        }
    }

    /// True when `self` equals `zone` or lies below it.
    pub fn is_within(&self, zone: &Fqdn) -> bool {
        zone.is_root()
            || self == zone
            || self
                .0
                .strip_suffix(&*zone.0)
                .is_some_and(|above| above.ends_with('.'))
    }
}

impl fmt::Display for Fqdn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Fqdn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fqdn({})", self.0)
    }
}

impl FromStr for Fqdn {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Fqdn::parse(s)
    }
}

impl TryFrom<String> for Fqdn {
    type Error = ModelError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Fqdn::parse(&s)
    }
}

impl From<Fqdn> for String {
    fn from(n: Fqdn) -> String {
        n.0.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_form_is_lowercase_with_trailing_dot() {
        let a = Fqdn::parse("Mx1.Example.COM").unwrap();
        let b = Fqdn::parse("mx1.example.com.").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.as_str(), "mx1.example.com.");
        assert_eq!(a.without_dot(), "mx1.example.com");
    }

    #[test]
    fn root_is_a_name() {
        let r = Fqdn::parse(".").unwrap();
        assert!(r.is_root());
        assert_eq!(r, Fqdn::root());
    }

    #[test]
    fn rejects_malformed_names() {
        for bad in [
            "",
            "..",
            "a..b",
            " example.com",
            "exa mple.com",
            "-a.com",
            "a-.com",
            "ex@mple.com",
        ] {
            assert!(Fqdn::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        let long_label = format!("{}.com", "a".repeat(64));
        assert!(Fqdn::parse(&long_label).is_err());
        let long_name = vec!["abcdefghi"; 26].join(".");
        assert!(long_name.len() > 253);
        assert!(Fqdn::parse(&long_name).is_err());
    }

    #[test]
    fn accepts_service_labels_and_leading_wildcard() {
        assert!(Fqdn::parse("_dmarc.example.com").is_ok());
        assert!(Fqdn::parse("sel1._domainkey.example.com").is_ok());
        assert!(Fqdn::parse("*.example.com").is_ok());
        assert!(Fqdn::parse("a.*.example.com").is_err());
    }

    #[test]
    fn within_zone() {
        let zone = Fqdn::parse("example.com").unwrap();
        assert!(Fqdn::parse("example.com").unwrap().is_within(&zone));
        assert!(Fqdn::parse("mx.EXAMPLE.com").unwrap().is_within(&zone));
        assert!(!Fqdn::parse("badexample.com").unwrap().is_within(&zone));
        assert!(!Fqdn::parse("example.net").unwrap().is_within(&zone));
    }
}
