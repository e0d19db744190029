//! `verify_access`: what the credentials can and cannot do for one zone, without changing
//! anything.

use aws_credential_types::provider::ProvideCredentials;
use aws_sdk_route53::types::{Change, ChangeAction, ResourceRecord, ResourceRecordSet, RrType};
use mxguard_core::{AccessCheck, AccessReport, Fqdn, Missing, Outcome, ProviderError};

use crate::provider::Route53Provider;

/// An error of a call the credentials may not be allowed to make: AWS says `AccessDenied`
/// for a missing IAM permission, something else for credentials it refuses.
fn failed(e: &ProviderError) -> Outcome {
    let auth = match e {
        ProviderError::Auth(m) if m.contains("AccessDenied") => Missing::Permission,
        _ => Missing::Credentials,
    };
    Outcome::failed(e, auth)
}

/// The answer to a probe that must fail *after* authorisation: refused for a reason other
/// than permissions means the permission is there.
fn probe(e: Result<(), ProviderError>, passed: &str) -> Outcome {
    match e {
        Ok(()) | Err(ProviderError::NotFound(_) | ProviderError::Rejected { .. }) => {
            Outcome::Passed {
                detail: passed.to_string(),
            }
        }
        Err(e) => failed(&e),
    }
}

impl Route53Provider {
    /// Checks, read-only and in order: credentials are found, the hosted zone is found
    /// (ListHostedZonesByName, or GetHostedZone for a configured id), its records can be listed
    /// (ListResourceRecordSets), and changes can be followed (GetChange of a made-up id:
    /// "no such change" means allowed). Writing is not checked: see [`Self::verify_write_access`].
    pub async fn verify_access(&self, zone: &Fqdn) -> AccessReport {
        self.verify(zone, false).await
    }

    /// [`Self::verify_access`], then a DELETE of a TXT record that cannot exist (a random
    /// value at `_mxguard-access-check.ZONE`): Route 53 refuses it as an invalid batch when
    /// the permission is there, and changes nothing either way.
    pub async fn verify_write_access(&self, zone: &Fqdn) -> AccessReport {
        self.verify(zone, true).await
    }

    async fn verify(&self, zone: &Fqdn, write: bool) -> AccessReport {
        let mut checks = Vec::new();
        let mut blocked: Option<&'static str> = None;
        let skipped = |b: Option<&str>| Outcome::Skipped {
            detail: format!("{} failed", b.unwrap_or("an earlier check")),
        };

        let creds = match self.api.credentials() {
            Some(p) => p
                .provide_credentials()
                .await
                .map(|c| c.access_key_id().to_string())
                .map_err(|e| e.to_string()),
            None => Err("no credentials provider is configured".to_string()),
        };
        let outcome = match creds {
            Ok(id) => Outcome::Passed {
                detail: format!("access key {id} (not yet checked by AWS)"),
            },
            Err(why) => {
                blocked = Some("credentials");
                Outcome::Failed {
                    missing: Missing::Credentials,
                    detail: why,
                }
            }
        };
        checks.push(AccessCheck {
            check: "credentials",
            needs: "AWS credentials (default chain, profile or static keys)".into(),
            outcome,
        });

        let needs =
            "route53:ListHostedZonesByName (or GetHostedZone for a configured id)".to_string();
        let zone_id = match blocked {
            Some(_) => {
                checks.push(AccessCheck {
                    check: "zone",
                    needs,
                    outcome: skipped(blocked),
                });
                None
            }
            None => match self.zone_id(zone).await {
                Ok(id) => {
                    checks.push(AccessCheck {
                        check: "zone",
                        needs,
                        outcome: Outcome::Passed {
                            detail: format!("hosted zone {id}"),
                        },
                    });
                    Some(id)
                }
                Err(e) => {
                    blocked = Some("zone");
                    checks.push(AccessCheck {
                        check: "zone",
                        needs,
                        outcome: failed(&e),
                    });
                    None
                }
            },
        };

        let needs = "route53:ListResourceRecordSets".to_string();
        let outcome = match &zone_id {
            Some(id) => match self
                .api
                .list(id, None, 1, &format!("listing one record set of {zone}"))
                .await
            {
                Ok(_) => Outcome::Passed {
                    detail: "the zone's record sets can be listed".into(),
                },
                Err(e) => failed(&e),
            },
            None => skipped(blocked),
        };
        checks.push(AccessCheck {
            check: "dns_read",
            needs,
            outcome,
        });

        let needs = "route53:GetChange".to_string();
        let outcome = match (&zone_id, blocked) {
            (Some(_), None) => probe(
                self.api
                    .get_change("C0MXGUARDACCESSCHECK")
                    .await
                    .map(|_| ()),
                "changes can be followed",
            ),
            _ => skipped(blocked),
        };
        checks.push(AccessCheck {
            check: "change_status",
            needs,
            outcome,
        });

        let needs = "route53:ChangeResourceRecordSets".to_string();
        let outcome = match (&zone_id, blocked, write) {
            (Some(id), None, true) => probe(self.write_probe(zone, id).await, "a change was authorised (and refused as invalid, changing nothing)"),
            (Some(_), None, false) => Outcome::Skipped { detail: "not visible without writing (verify_write_access sends a DELETE that cannot succeed)".into() },
            _ => skipped(blocked),
        };
        checks.push(AccessCheck {
            check: "dns_write",
            needs,
            outcome,
        });

        AccessReport {
            provider: self.name.clone(),
            kind: "route53",
            zone: zone.clone(),
            checks,
        }
    }

    async fn write_probe(&self, zone: &Fqdn, zone_id: &str) -> Result<(), ProviderError> {
        let nonce = format!(
            "\"mxguard-access-check-{:x}\"",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        );
        let record = ResourceRecord::builder()
            .value(nonce)
            .build()
            .map_err(|e| ProviderError::Rejected {
                reason: e.to_string(),
            })?;
        let rrset = ResourceRecordSet::builder()
            .name(format!("_mxguard-access-check.{}", zone.without_dot()))
            .r#type(RrType::Txt)
            .ttl(60)
            .resource_records(record)
            .build()
            .map_err(|e| ProviderError::Rejected {
                reason: e.to_string(),
            })?;
        let change = Change::builder()
            .action(ChangeAction::Delete)
            .resource_record_set(rrset)
            .build()
            .map_err(|e| ProviderError::Rejected {
                reason: e.to_string(),
            })?;
        self.api
            .change(
                zone_id,
                vec![change],
                &format!("probing write access to {zone}"),
            )
            .await
            .map(|_| ())
    }
}
