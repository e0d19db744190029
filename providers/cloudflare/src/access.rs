//! `verify_access`: what the token can and cannot do for one zone, without changing anything.

use std::sync::atomic::Ordering;

use mxguard_core::{AccessCheck, AccessReport, Fqdn, Missing, Outcome};
use reqwest::Method;

use crate::client::CallError;

use crate::provider::CloudflareProvider;
use crate::wire::{BatchRequest, DnsRecord, ResultInfo, TokenStatus};

impl CloudflareProvider {
    /// Checks, read-only and in order: the token is active (`GET /user/tokens/verify`, or
    /// `GET /accounts/{account_id}/tokens/verify` for an account-owned token), it can see
    /// `zone` (Zone:Read), and it can list the zone's DNS records (DNS:Read). Whether it may
    /// write (DNS:Edit) cannot be seen without writing: see [`Self::verify_write_access`].
    pub async fn verify_access(&self, zone: &Fqdn) -> AccessReport {
        self.verify(zone, false).await
    }

    /// [`Self::verify_access`], then an empty batch (`{}`) to the zone: it changes nothing,
    /// but Cloudflare refuses it without DNS:Edit.
    pub async fn verify_write_access(&self, zone: &Fqdn) -> AccessReport {
        self.verify(zone, true).await
    }

    async fn verify(&self, zone: &Fqdn, write: bool) -> AccessReport {
        let mut checks = Vec::new();
        let mut blocked: Option<&'static str> = None;
        let mut push = |check: &'static str, needs: String, outcome: Outcome| {
            checks.push(AccessCheck {
                check,
                needs,
                outcome,
            });
        };

        // An account-owned token verifies at its account; the user endpoint refuses it with
        // 401 (reference §12), which is also what it says to a wrong token.
        let (path, needs) = match &self.account_id {
            Some(id) => (
                vec!["accounts", id.as_str(), "tokens", "verify"],
                format!("an active API token owned by account {id}"),
            ),
            None => (
                vec!["user", "tokens", "verify"],
                "an active user-owned API token".to_string(),
            ),
        };
        // A token verified active once is taken as active while this client's checks pass:
        // checking each of many zones (serve's start check) must not spend a request per zone
        // on it. A token revoked since then fails the zone or record check, and the next check
        // verifies it again.
        if self.token_active.load(Ordering::Relaxed) {
            push(
                "credentials",
                needs,
                Outcome::Passed {
                    detail: "the token is active (verified earlier by this client)".into(),
                },
            );
        } else {
            let token = self
                .client
                .call::<TokenStatus, ()>(Method::GET, &path, &[], None, "verifying the API token")
                .await;
            self.note_token(token, needs, &mut blocked, &mut push);
        }

        let needs = format!("Zone:Read on {zone}");
        let zone_id = match blocked {
            Some(b) => {
                push(
                    "zone",
                    needs,
                    Outcome::Skipped {
                        detail: format!("{b} failed"),
                    },
                );
                None
            }
            None => match self.zone_id(zone).await {
                Ok(id) => {
                    push(
                        "zone",
                        needs,
                        Outcome::Passed {
                            detail: format!("zone id {id}"),
                        },
                    );
                    Some(id)
                }
                Err(e) => {
                    blocked = Some("zone");
                    push("zone", needs, Outcome::failed(&e, Missing::Permission));
                    None
                }
            },
        };

        let needs = format!("DNS:Read (or DNS:Edit) on {zone}");
        match (&zone_id, blocked) {
            (Some(id), None) => {
                let what = format!("listing one DNS record of zone {zone}");
                let path = ["zones", id.as_str(), "dns_records"];
                let query = [("per_page", "1".to_string())];
                match self
                    .client
                    .call::<Vec<DnsRecord>, ()>(Method::GET, &path, &query, None, &what)
                    .await
                {
                    Ok(_) => push(
                        "dns_read",
                        needs,
                        Outcome::Passed {
                            detail: "the zone's records can be listed".into(),
                        },
                    ),
                    Err(e) => {
                        blocked = Some("dns_read");
                        push(
                            "dns_read",
                            needs,
                            Outcome::failed(&e.error, Missing::Permission),
                        );
                    }
                }
            }
            (_, b) => push(
                "dns_read",
                needs,
                Outcome::Skipped {
                    detail: format!("{} failed", b.unwrap_or("zone")),
                },
            ),
        }

        let needs = format!("DNS:Edit on {zone}");
        match (&zone_id, blocked, write) {
            (Some(id), None, true) => {
                let what = format!("sending an empty batch to zone {zone}");
                let path = ["zones", id.as_str(), "dns_records", "batch"];
                let empty = BatchRequest::default();
                match self
                    .client
                    .call::<serde_json::Value, _>(Method::POST, &path, &[], Some(&empty), &what)
                    .await
                {
                    Ok(_) => push(
                        "dns_write",
                        needs,
                        Outcome::Passed {
                            detail: "an empty batch was accepted".into(),
                        },
                    ),
                    Err(e) => push(
                        "dns_write",
                        needs,
                        Outcome::failed(&e.error, Missing::Permission),
                    ),
                }
            }
            (_, None, false) => push(
                "dns_write",
                needs,
                Outcome::Skipped {
                    detail:
                        "not visible without writing (verify_write_access sends an empty batch)"
                            .into(),
                },
            ),
            (_, b, _) => push(
                "dns_write",
                needs,
                Outcome::Skipped {
                    detail: format!("{} failed", b.unwrap_or("zone")),
                },
            ),
        }

        if blocked.is_some() {
            // The next check asks again: what failed may have been the token.
            self.token_active.store(false, Ordering::Relaxed);
        }
        AccessReport {
            provider: self.name.clone(),
            kind: "cloudflare",
            zone: zone.clone(),
            checks,
        }
    }

    /// The credentials check from the verify endpoint's answer.
    fn note_token(
        &self,
        token: Result<(TokenStatus, Option<ResultInfo>), CallError>,
        needs: String,
        blocked: &mut Option<&'static str>,
        push: &mut impl FnMut(&'static str, String, Outcome),
    ) {
        match token {
            Ok((t, _)) if t.status == "active" => {
                self.token_active.store(true, Ordering::Relaxed);
                push(
                    "credentials",
                    needs,
                    Outcome::Passed {
                        detail: "the token is active".into(),
                    },
                )
            }
            Ok((t, _)) => {
                *blocked = Some("credentials");
                push(
                    "credentials",
                    needs,
                    Outcome::Failed {
                        missing: Missing::Credentials,
                        detail: format!("the token's status is {:?}", t.status),
                    },
                );
            }
            Err(e) => {
                *blocked = Some("credentials");
                let mut outcome = Outcome::failed(&e.error, Missing::Credentials);
                if let (Outcome::Failed { detail, .. }, Some(401), None) =
                    (&mut outcome, e.status, &self.account_id)
                {
                    detail.push_str(&format!(
                        " (an account-owned token? set providers.{}.account_id)",
                        self.name
                    ));
                }
                push("credentials", needs, outcome);
            }
        }
    }
}
