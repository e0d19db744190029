//! `verify_access` and `verify_write_access`: whether the TSIG key can do, for one zone, what
//! mxguard needs — the first without changing anything, the second with an UPDATE that changes
//! nothing but still needs the key's update permission.

use std::net::{Ipv4Addr, Ipv6Addr};

use hickory_proto::op::{Message, OpCode, Query};
use hickory_proto::rr::{DNSClass, Record, RecordType as HType};
use mxguard_core::{
    AccessCheck, AccessReport, Fqdn, Missing, MxRecord, Outcome, ProviderError, RData, RecordType,
    RrsetKey,
};

use crate::provider::Rfc2136Provider;
use crate::rcode::{classify, Op};
use crate::wire;

/// The exchange host of the MX record the write check deletes: under `.invalid` (RFC 2606), so
/// no zone can hold it.
const PROBE_HOST: &str = "mxguard-access-check.invalid.";

impl Rfc2136Provider {
    /// Checks, read-only and in order: the server accepts the TSIG key (a signed query answered
    /// with a valid signature), it is authoritative for `zone` (its SOA at the apex), and the
    /// zone's records can be queried. Whether the key may update cannot be seen without an
    /// UPDATE: see [`Self::verify_write_access`].
    pub async fn verify_access(&self, zone: &Fqdn) -> AccessReport {
        self.verify(zone, None).await
    }

    /// [`Self::verify_access`], then one UPDATE that deletes, in each RRset of `probes` (those
    /// mxguard writes, so `update-policy` rules per name and type are what is checked), a
    /// record which cannot exist: RFC 2136 §3.4.2.4 makes deleting an absent record a no-op,
    /// so the zone is unchanged (its serial too), but the server refuses the UPDATE (REFUSED)
    /// when the key may not change one of those RRsets.
    pub async fn verify_write_access(&self, zone: &Fqdn, probes: &[RrsetKey]) -> AccessReport {
        self.verify(zone, Some(probes)).await
    }

    async fn verify(&self, zone: &Fqdn, probes: Option<&[RrsetKey]>) -> AccessReport {
        let mut checks = Vec::new();
        let mut check = |check: &'static str, needs: String, outcome: Outcome| {
            checks.push(AccessCheck {
                check,
                needs,
                outcome,
            });
        };
        let skipped = |what: &str| Outcome::Skipped {
            detail: format!("{what} failed"),
        };
        let key = &self.key_name;
        let server = self.server();

        // One signed SOA query answers the first two: a signature the server refuses fails it
        // (BADKEY / BADSIG), a server that is not authoritative answers it but not for the zone.
        let zone_found = self.ensure_zone(zone).await;
        let needs = format!("TSIG key {key} known to {server}");
        let blocked = match &zone_found {
            Err(e @ (ProviderError::Auth(_) | ProviderError::Transient(_))) => {
                check(
                    "credentials",
                    needs,
                    Outcome::failed(e, Missing::Credentials),
                );
                Some("credentials")
            }
            _ => {
                check(
                    "credentials",
                    needs,
                    Outcome::Passed {
                        detail: "a signed query was answered with a valid signature".into(),
                    },
                );
                None
            }
        };
        let needs = format!("{server} authoritative for {zone}");
        let blocked = match (blocked, &zone_found) {
            (Some(b), _) => {
                check("zone", needs, skipped(b));
                Some(b)
            }
            (None, Ok(())) => {
                check(
                    "zone",
                    needs,
                    Outcome::Passed {
                        detail: "its SOA is served authoritatively".into(),
                    },
                );
                None
            }
            (None, Err(e)) => {
                check("zone", needs, Outcome::failed(e, Missing::Zone));
                Some("zone")
            }
        };

        let needs = format!("queries in {zone} signed with {key}");
        let blocked = match blocked {
            Some(b) => {
                check("dns_read", needs, skipped(b));
                Some(b)
            }
            None => match self.query_apex_mx(zone).await {
                Ok(()) => {
                    check(
                        "dns_read",
                        needs,
                        Outcome::Passed {
                            detail: "the zone's MX RRset can be queried".into(),
                        },
                    );
                    None
                }
                Err(e) => {
                    check("dns_read", needs, Outcome::failed(&e, Missing::Permission));
                    Some("dns_read")
                }
            },
        };

        let needs = match probes {
            Some(p) if !p.is_empty() => format!(
                "UPDATE of {} by key {key} (allow-update / update-policy)",
                p.iter()
                    .map(|k| format!("{} {}", k.name, k.rtype))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            _ => format!("UPDATE in {zone} by key {key} (allow-update / update-policy)"),
        };
        match (blocked, probes) {
            (Some(b), _) => check("dns_write", needs, skipped(b)),
            (None, None) => check(
                "dns_write",
                needs,
                Outcome::Skipped {
                    detail: "not visible without an UPDATE (verify_write_access deletes a record that cannot exist)".into(),
                },
            ),
            (None, Some(p)) => {
                let outcome = match self.write_probe(zone, p).await {
                    Ok(()) => Outcome::Passed {
                        detail: "an UPDATE deleting a record that does not exist was accepted (nothing changed)".into(),
                    },
                    Err(e) => Outcome::failed(&e, Missing::Permission),
                };
                check("dns_write", needs, outcome);
            }
        }

        AccessReport {
            provider: self.name.clone(),
            kind: "rfc2136",
            zone: zone.clone(),
            checks,
        }
    }

    async fn query_apex_mx(&self, zone: &Fqdn) -> Result<(), ProviderError> {
        let answer = self.exchange.query(&wire::name(zone)?, HType::MX).await?;
        classify(Op::Query, answer.metadata.response_code, zone)
    }

    /// An UPDATE of `zone` deleting, at each of `probes`, one record (class NONE, RFC 2136
    /// §2.5.4) that cannot exist; no prerequisites. With no probe, the zone's apex MX.
    async fn write_probe(&self, zone: &Fqdn, probes: &[RrsetKey]) -> Result<(), ProviderError> {
        let apex = [RrsetKey::new(zone.clone(), RecordType::Mx)];
        let probes = if probes.is_empty() { &apex[..] } else { probes };
        let mut msg = Message::query();
        msg.metadata.op_code = OpCode::Update;
        let mut zone_query = Query::query(wire::name(zone)?, HType::SOA);
        zone_query.set_query_class(DNSClass::IN);
        msg.add_query(zone_query);
        for probe in probes {
            probe.check_within(zone)?;
            let mut delete = Record::from_rdata(
                wire::name(&probe.name)?,
                0,
                wire::rdata(&absent(probe.rtype)?)?,
            );
            delete.dns_class = DNSClass::NONE;
            msg.add_authority(delete);
        }
        let answer = self.exchange.update(msg).await?;
        classify(Op::Update, answer.metadata.response_code, zone)
    }
}

/// A record of `rtype` that no zone holds.
fn absent(rtype: RecordType) -> Result<RData, ProviderError> {
    Ok(match rtype {
        RecordType::Mx => {
            let host = Fqdn::parse(PROBE_HOST).map_err(|e| ProviderError::Rejected {
                reason: e.to_string(),
            })?;
            RData::Mx(MxRecord::new(0, host))
        }
        RecordType::A => RData::A(Ipv4Addr::UNSPECIFIED),
        // 100::/64 is the discard-only prefix (RFC 6666): never an MX host's address.
        RecordType::Aaaa => RData::Aaaa(Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0)),
        RecordType::Txt => RData::Txt("mxguard-access-check".into()),
    })
}
