//! What a provider's `verify_access` answers: whether its credentials can do, for one zone,
//! what mxguard needs, one check at a time, without changing anything. Each provider crate
//! runs its own checks and re-exports these types.

use std::fmt;

use serde::Serialize;

use crate::{Fqdn, ProviderError};

/// Why a check failed: what the operator has to fix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Missing {
    /// The provider's API cannot be reached (DNS, firewall, proxy, outage).
    Network,
    /// No credentials were found, or the provider refuses them outright (wrong, expired,
    /// revoked).
    Credentials,
    /// The credentials work but lack a permission.
    Permission,
    /// The credentials cannot see the zone (wrong name, another account, or left out of what
    /// the credentials may see).
    Zone,
    /// The provider answered something else (throttling, a rejection).
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    Passed {
        detail: String,
    },
    Failed {
        missing: Missing,
        detail: String,
    },
    /// Not checked: an earlier check failed, or it cannot be checked without writing.
    Skipped {
        detail: String,
    },
}

impl Outcome {
    /// A check whose call failed with `e`: unreachable → `Network`, not found → `Zone`,
    /// throttled or rejected → `Other`, and refused credentials → `auth` (only the provider
    /// can tell wrong credentials from a missing permission).
    pub fn failed(e: &ProviderError, auth: Missing) -> Outcome {
        let missing = match e {
            ProviderError::Transient(_) => Missing::Network,
            ProviderError::Auth(_) => auth,
            ProviderError::NotFound(_) => Missing::Zone,
            ProviderError::RateLimited { .. }
            | ProviderError::Rejected { .. }
            | ProviderError::Fenced(_) => Missing::Other,
        };
        Outcome::Failed {
            missing,
            detail: e.to_string(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AccessCheck {
    /// The check's name: `credentials`, `zone`, `dns_read`, `dns_write`, and whatever else
    /// the provider checks (e.g. `change_status`).
    pub check: &'static str,
    /// What is needed, in the provider's terms (a permission, an API call).
    pub needs: String,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// The result of `verify_access`: one line per check, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AccessReport {
    /// The provider's configured name.
    pub provider: String,
    /// The provider's kind (`cloudflare`, `route53`), shown beside its name; not serialised.
    #[serde(skip)]
    pub kind: &'static str,
    pub zone: Fqdn,
    pub checks: Vec<AccessCheck>,
}

impl AccessReport {
    /// True when no check failed (a skipped write check does not count as failed).
    pub fn is_ok(&self) -> bool {
        self.failures().next().is_none()
    }

    pub fn failures(&self) -> impl Iterator<Item = &AccessCheck> {
        self.checks
            .iter()
            .filter(|c| matches!(c.outcome, Outcome::Failed { .. }))
    }
}

impl fmt::Display for AccessReport {
    /// A header line, then one line per check with the check names in one column.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} ({}) for zone {}:",
            self.provider, self.kind, self.zone
        )?;
        let width = self.checks.iter().map(|c| c.check.len()).max().unwrap_or(0);
        for c in &self.checks {
            let (mark, detail) = match &c.outcome {
                Outcome::Passed { detail } => ("ok     ", detail.clone()),
                Outcome::Failed { missing, detail } => {
                    ("MISSING", format!("{missing:?}: {detail}"))
                }
                Outcome::Skipped { detail } => ("skipped", detail.clone()),
            };
            writeln!(f, "  {mark} {:<width$} {} — {detail}", c.check, c.needs)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_call_says_what_is_missing() {
        let missing = |e: ProviderError| match Outcome::failed(&e, Missing::Permission) {
            Outcome::Failed { missing, detail } => {
                assert_eq!(detail, e.to_string());
                missing
            }
            other => panic!("not a failure: {other:?}"),
        };
        assert_eq!(
            missing(ProviderError::Transient("x".into())),
            Missing::Network
        );
        assert_eq!(
            missing(ProviderError::Auth("x".into())),
            Missing::Permission
        );
        assert_eq!(missing(ProviderError::NotFound("x".into())), Missing::Zone);
        assert_eq!(
            missing(ProviderError::RateLimited { retry_after: None }),
            Missing::Other
        );
        assert_eq!(
            missing(ProviderError::Rejected { reason: "x".into() }),
            Missing::Other
        );
    }

    #[test]
    fn report_lines_up_its_checks_and_counts_only_failures() {
        let check = |check, outcome| AccessCheck {
            check,
            needs: format!("{check} access"),
            outcome,
        };
        let report = AccessReport {
            provider: "dns".into(),
            kind: "test",
            zone: Fqdn::parse("example.com").unwrap(),
            checks: vec![
                check(
                    "zone",
                    Outcome::Passed {
                        detail: "found".into(),
                    },
                ),
                check(
                    "change_status",
                    Outcome::Skipped {
                        detail: "later".into(),
                    },
                ),
            ],
        };
        assert!(report.is_ok());
        assert_eq!(
            report.to_string(),
            "dns (test) for zone example.com.:\n  \
             ok      zone          zone access — found\n  \
             skipped change_status change_status access — later\n"
        );
        let mut failing = report.clone();
        failing.checks[0].outcome = Outcome::Failed {
            missing: Missing::Permission,
            detail: "denied".into(),
        };
        assert!(!failing.is_ok());
        assert_eq!(failing.failures().count(), 1);
        assert!(failing.to_string().contains("MISSING zone "));
        let json = serde_json::to_value(&failing.checks[0]).unwrap();
        assert_eq!(json["status"], "failed");
        assert_eq!(json["missing"], "permission");
        assert!(serde_json::to_value(&failing)
            .unwrap()
            .get("kind")
            .is_none());
    }
}
