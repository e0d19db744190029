//! [`Rfc2136Provider`]: the [`DnsProvider`] port over RFC 2136 UPDATE, direct queries and AXFR.

use async_trait::async_trait;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData as HRData, RecordType as HType, TSigner};
use mxguard_core::{
    Capabilities, ChangeSet, DnsProvider, Fqdn, ProviderError, RecordSet, RrsetKey,
};

use crate::config::{ConfigError, Rfc2136Config};
use crate::exchange::Exchange;
use crate::rcode::{classify, Op};
use crate::{update, wire};

/// TSIG fudge: how far apart the clocks of mxguard and the server may be (RFC 8945 §10).
const FUDGE_SECS: u16 = 300;

/// Changes per UPDATE. Far below the 64 KiB a message holds for MX/A/AAAA sets; a change
/// set of large TXT records may still be refused before sending, as too big.
const MAX_CHANGES: usize = 200;

pub struct Rfc2136Provider {
    pub(crate) name: String,
    pub(crate) key_name: Fqdn,
    pub(crate) exchange: Exchange,
}

impl std::fmt::Debug for Rfc2136Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rfc2136Provider")
            .field("name", &self.name)
            .field("key_name", &self.key_name)
            .finish_non_exhaustive()
    }
}

impl Rfc2136Provider {
    pub fn new(config: Rfc2136Config) -> Result<Self, ConfigError> {
        if config.timeout.is_zero() {
            return Err(ConfigError::Timeout);
        }
        let key_name =
            wire::name(&config.key_name).map_err(|e| ConfigError::KeyName(e.to_string()))?;
        let signer = TSigner::new(
            config.secret.expose().to_vec(),
            config.algorithm.to_hickory(),
            key_name,
            FUDGE_SECS,
        )
        .map_err(|_| ConfigError::Algorithm(config.algorithm.to_string()))?;
        Ok(Rfc2136Provider {
            name: config.name,
            key_name: config.key_name,
            exchange: Exchange::new(config.server, signer, config.timeout),
        })
    }

    /// The server the provider speaks to.
    pub fn server(&self) -> std::net::SocketAddr {
        self.exchange.server()
    }

    /// Fails `NotFound` unless the server answers authoritatively with `zone`'s SOA.
    pub(crate) async fn ensure_zone(&self, zone: &Fqdn) -> Result<(), ProviderError> {
        let answer = self.exchange.query(&wire::name(zone)?, HType::SOA).await?;
        classify(Op::Query, answer.metadata.response_code, zone)?;
        let apex = answer
            .answers
            .iter()
            .any(|r| matches!(r.data, HRData::SOA(_)) && wire::fqdn(&r.name).as_ref() == Ok(zone));
        if answer.metadata.response_code == ResponseCode::NoError
            && answer.metadata.authoritative
            && apex
        {
            return Ok(());
        }
        Err(ProviderError::NotFound(format!(
            "{zone} is not a zone the server is authoritative for (no authoritative SOA at its apex)"
        )))
    }

    async fn read_one(
        &self,
        zone: &Fqdn,
        key: &RrsetKey,
    ) -> Result<Option<RecordSet>, ProviderError> {
        let answer: Message = self
            .exchange
            .query(&wire::name(&key.name)?, wire::rtype(key.rtype))
            .await?;
        classify(Op::Query, answer.metadata.response_code, zone)?;
        let (mut sets, problems) = wire::group(&answer.answers, |name, rt| {
            name == &key.name && rt == key.rtype
        });
        if let Some(problem) = problems.into_iter().next() {
            return Err(ProviderError::Rejected {
                reason: format!("the server holds an RRset mxguard cannot represent: {problem}"),
            });
        }
        Ok(sets.pop())
    }
}

/// RRsets of a zone transfer that cost about one read (`list_cost`).
const AXFR_RRSETS_PER_READ: usize = 100;

#[async_trait]
impl DnsProvider for Rfc2136Provider {
    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            min_ttl: 0,
            max_ttl: mxguard_core::Ttl::MAX,
            max_changes_per_request: MAX_CHANGES,
            atomic: true,
            zone_listing: true,
        }
    }

    /// An AXFR is one request, but it carries the whole zone and every record of it is parsed
    /// and grouped here: a read per hundred RRsets is about what it costs on both ends.
    fn list_cost(&self, rrsets: usize) -> u32 {
        u32::try_from(rrsets.div_ceil(AXFR_RRSETS_PER_READ).max(1)).unwrap_or(u32::MAX)
    }

    async fn read(&self, zone: &Fqdn, keys: &[RrsetKey]) -> Result<Vec<RecordSet>, ProviderError> {
        keys.iter().try_for_each(|k| k.check_within(zone))?;
        self.ensure_zone(zone).await?;
        let mut sets = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(set) = self.read_one(zone, key).await? {
                sets.push(set);
            }
        }
        Ok(sets)
    }

    async fn list_zone(&self, zone: &Fqdn) -> Result<Vec<RecordSet>, ProviderError> {
        let (code, records) = self.exchange.axfr(&wire::name(zone)?).await?;
        classify(Op::Transfer, code, zone)?;
        let (sets, problems) = wire::group(&records, |name, _| name.is_within(zone));
        for problem in problems {
            tracing::warn!(provider = %self.name, %zone, %problem, "skipping an RRset mxguard cannot represent");
        }
        Ok(sets)
    }

    async fn apply(&self, zone: &Fqdn, changes: &ChangeSet) -> Result<(), ProviderError> {
        changes.validate_for(zone)?;
        if changes.is_empty() {
            return Ok(());
        }
        if changes.changes.len() > MAX_CHANGES {
            return Err(ProviderError::Rejected {
                reason: format!(
                    "{} changes in one UPDATE; at most {MAX_CHANGES}",
                    changes.changes.len()
                ),
            });
        }
        let msg = update::build(zone, changes)?;
        let answer = self.exchange.update(msg).await?;
        let code = answer.metadata.response_code;
        let outcome = classify(Op::Update, code, zone);
        match &outcome {
            Ok(()) => {
                tracing::info!(provider = %self.name, %zone, changes = changes.changes.len(), "UPDATE applied")
            }
            Err(e) => {
                tracing::warn!(provider = %self.name, %zone, %code, error = %e, "UPDATE refused")
            }
        }
        outcome
    }
}
