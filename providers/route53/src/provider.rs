//! [`Route53Provider`]: the [`DnsProvider`] port over Route 53's record-set API.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use aws_sdk_route53::types::{Change as AwsChange, ChangeAction, ResourceRecordSet};
use mxguard_core::{
    Capabilities, Change, ChangeSet, Clock, DnsProvider, Fqdn, ProviderError, RecordSet, RrsetKey,
    TokenBucket,
};

use crate::client::Api;
use crate::config::{ConfigError, Route53Config, SyncPolicy};
use crate::sync::{ApplyOutcome, ChangeObserver, Follower, SyncStatus};
use crate::wire;

/// Changes followed to INSYNC in the background at once (8 at one `GetChange` per 5 s take
/// under a third of the account's 5 requests/s); more are not followed, only verified.
const MAX_FOLLOWED: usize = 8;
/// Reads of at most this many RRsets fetch each one; more list the whole zone.
const READ_BY_KEY_MAX: usize = 4;
/// Record sets per `ListResourceRecordSets` page (Route 53's maximum).
const PAGE: i32 = 300;
/// RRset changes per apply: with an UPSERT counting twice, 100 small RRsets stay far below
/// the 1,000-record limit; `apply` checks the real limits and refuses what exceeds them.
const MAX_CHANGES: usize = 100;

pub struct Route53Provider {
    pub(crate) name: String,
    pub(crate) api: Api,
    clock: Arc<dyn Clock>,
    sync: SyncPolicy,
    background: bool,
    /// Changes followed in the background at once: each polls `GetChange` every
    /// `sync.poll_interval` from the account's 5 requests/s, which the changes need too.
    following: Arc<tokio::sync::Semaphore>,
    observer: Option<Arc<dyn ChangeObserver>>,
    configured: BTreeMap<Fqdn, String>,
    zones: Mutex<HashMap<Fqdn, String>>,
}

impl std::fmt::Debug for Route53Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route53Provider")
            .field("name", &self.name)
            .field("sync", &self.sync)
            .finish_non_exhaustive()
    }
}

impl Route53Provider {
    /// A provider with its own token bucket (`config.rate_limit`) on `clock`.
    pub async fn new(config: Route53Config, clock: Arc<dyn Clock>) -> Result<Self, ConfigError> {
        let bucket = Arc::new(TokenBucket::new(config.rate_limit, Arc::clone(&clock)));
        Route53Provider::with_bucket(config, clock, bucket).await
    }

    /// A provider spending `bucket`: share one bucket between every provider on the same AWS
    /// account, since Route 53's limit is per account.
    pub async fn with_bucket(
        config: Route53Config,
        clock: Arc<dyn Clock>,
        bucket: Arc<TokenBucket>,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Route53Provider {
            api: Api::new(&config, bucket).await,
            name: config.name,
            clock,
            sync: config.sync,
            background: config.follow_in_background,
            following: Arc::new(tokio::sync::Semaphore::new(MAX_FOLLOWED)),
            observer: None,
            configured: config.hosted_zone_ids,
            zones: Mutex::new(HashMap::new()),
        })
    }

    /// Reports every change's progress (PENDING … INSYNC) to `observer`.
    pub fn with_observer(mut self, observer: Arc<dyn ChangeObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    fn lock_zones(&self) -> std::sync::MutexGuard<'_, HashMap<Fqdn, String>> {
        self.zones.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The hosted zone id: configured (checked once with `GetHostedZone`), or found by name
    /// (`ListHostedZonesByName`); cached either way.
    pub(crate) async fn zone_id(&self, zone: &Fqdn) -> Result<String, ProviderError> {
        if let Some(id) = self.lock_zones().get(zone) {
            return Ok(id.clone());
        }
        let id = match self.configured.get(zone) {
            Some(id) => {
                let name = self.api.zone_name(id).await?;
                if &name != zone {
                    return Err(ProviderError::Rejected {
                        reason: format!(
                            "hosted zone {id} is {name}, not {zone}: check the hosted_zone_id configured for zone {zone}"
                        ),
                    });
                }
                id.clone()
            }
            None => self.api.zone_id_by_name(zone).await?.ok_or_else(|| {
                ProviderError::NotFound(format!("no hosted zone named {zone} in this AWS account"))
            })?,
        };
        self.lock_zones().insert(zone.clone(), id.clone());
        Ok(id)
    }

    fn forget_on_not_found<T>(
        &self,
        zone: &Fqdn,
        r: Result<T, ProviderError>,
    ) -> Result<T, ProviderError> {
        if matches!(r, Err(ProviderError::NotFound(_))) {
            self.lock_zones().remove(zone);
        }
        r
    }

    /// Every record set of the zone, page by page (NextRecordName / NextRecordType).
    async fn list_all(
        &self,
        zone: &Fqdn,
        zone_id: &str,
    ) -> Result<Vec<ResourceRecordSet>, ProviderError> {
        let what = format!("listing hosted zone {zone}");
        let mut out = Vec::new();
        let mut start = None;
        loop {
            let page = self.api.list(zone_id, start, PAGE, &what).await;
            let page = self.forget_on_not_found(zone, page)?;
            out.extend(page.sets);
            match page.next {
                Some(next) => start = Some(next),
                None => return Ok(out),
            }
        }
    }

    /// The live record sets at `keys`, as Route 53 holds them.
    async fn live(
        &self,
        zone: &Fqdn,
        zone_id: &str,
        keys: &[RrsetKey],
    ) -> Result<BTreeMap<RrsetKey, Vec<ResourceRecordSet>>, ProviderError> {
        let wanted: BTreeSet<&RrsetKey> = keys.iter().collect();
        let sets = if wanted.len() <= READ_BY_KEY_MAX {
            let mut sets = Vec::new();
            for key in &wanted {
                let what = format!("reading {} {} in zone {zone}", key.name, key.rtype);
                let start = (
                    key.name.as_str().to_string(),
                    wire::rr_type(key.rtype),
                    None,
                );
                // two items: a second set at the same key means a routing policy
                let page = self.api.list(zone_id, Some(start), 2, &what).await;
                let page = self.forget_on_not_found(zone, page)?;
                sets.extend(
                    page.sets
                        .into_iter()
                        .filter(|s| wire::key_of(s).ok().flatten().as_ref() == Some(*key)),
                );
            }
            sets
        } else {
            self.list_all(zone, zone_id).await?
        };
        let mut live: BTreeMap<RrsetKey, Vec<ResourceRecordSet>> = BTreeMap::new();
        for s in sets {
            if let Ok(Some(key)) = wire::key_of(&s) {
                if wanted.contains(&key) {
                    live.entry(key).or_default().push(s);
                }
            }
        }
        Ok(live)
    }

    fn representable(
        zone: &Fqdn,
        key: &RrsetKey,
        sets: &[ResourceRecordSet],
    ) -> Result<RecordSet, ProviderError> {
        let bad = |why: String| ProviderError::Rejected {
            reason: format!(
                "zone {zone} holds an RRset mxguard cannot represent: {} {}: {why}",
                key.name, key.rtype
            ),
        };
        match sets {
            [one] => wire::to_set(key, one).map_err(bad),
            _ => Err(bad(format!(
                "{} record sets share this name and type (a routing policy)",
                sets.len()
            ))),
        }
    }

    /// Checks `expected` and sends the change set as one batch: the change id and its first
    /// status, or `None` when nothing needed changing (no request was sent).
    async fn submit(
        &self,
        zone: &Fqdn,
        changes: &ChangeSet,
    ) -> Result<Option<(String, aws_sdk_route53::types::ChangeStatus)>, ProviderError> {
        changes.validate_for(zone)?;
        if changes.is_empty() {
            return Ok(None);
        }
        let zone_id = self.zone_id(zone).await?;
        let keys: Vec<RrsetKey> = changes.changes.iter().map(Change::key).collect();
        let live = self.live(zone, &zone_id, &keys).await?;
        // Route 53 has no conditional UPSERT: `expected` is checked against this read, just
        // before the batch. CREATE (nothing expected) and DELETE (exact values) are checked
        // again by Route 53 itself, atomically with the batch.
        let mut batch: Vec<(ChangeAction, ResourceRecordSet)> = Vec::new();
        for change in &changes.changes {
            let key = change.key();
            let raw = live.get(&key).map(Vec::as_slice).unwrap_or(&[]);
            let current = if raw.is_empty() {
                None
            } else {
                Some(Self::representable(zone, &key, raw)?)
            };
            change.check_expected(current.as_ref())?;
            match (change, current) {
                (Change::Upsert { set, .. }, Some(c)) if &c == set => {}
                (Change::Upsert { set, .. }, current) => {
                    let action = if current.is_some() {
                        ChangeAction::Upsert
                    } else {
                        ChangeAction::Create
                    };
                    let rrset = wire::to_rrset(set).map_err(|e| ProviderError::Rejected {
                        reason: format!("{} {}: {e}", key.name, key.rtype),
                    })?;
                    batch.push((action, rrset));
                }
                (Change::Delete { .. }, Some(_)) => {
                    batch.extend(raw.iter().map(|r| (ChangeAction::Delete, r.clone())))
                }
                (Change::Delete { .. }, None) => {}
            }
        }
        if batch.is_empty() {
            return Ok(None);
        }
        let (records, chars) = batch
            .iter()
            .map(|(a, r)| wire::cost(a, r))
            .fold((0, 0), |(r, c), (r2, c2)| (r + r2, c + c2));
        if records > wire::MAX_RECORDS || chars > wire::MAX_VALUE_CHARS {
            return Err(ProviderError::Rejected {
                reason: format!(
                    "the change to zone {zone} counts {records} records and {chars} value characters (UPSERTs twice); Route 53 takes at most {} and {} per request: apply it in smaller parts",
                    wire::MAX_RECORDS, wire::MAX_VALUE_CHARS
                ),
            });
        }
        let mut aws_changes = Vec::with_capacity(batch.len());
        for (action, rrset) in batch {
            let c = AwsChange::builder()
                .action(action)
                .resource_record_set(rrset)
                .build();
            aws_changes.push(c.map_err(|e| ProviderError::Rejected {
                reason: e.to_string(),
            })?);
        }
        let what = format!("changing {} record sets in zone {zone}", aws_changes.len());
        let sent = self.api.change(&zone_id, aws_changes, &what).await;
        let (change_id, status) = self.forget_on_not_found(zone, sent)?;
        tracing::info!(provider = %self.name, %zone, change_id, ?status, "change accepted");
        Ok(Some((change_id, status)))
    }

    /// [`DnsProvider::apply`], returning how far the change got: the change id and whether
    /// Route 53 reported it `INSYNC` within `sync.max_wait`.
    pub async fn apply_and_follow(
        &self,
        zone: &Fqdn,
        changes: &ChangeSet,
    ) -> Result<ApplyOutcome, ProviderError> {
        let Some((change_id, status)) = self.submit(zone, changes).await? else {
            return Ok(ApplyOutcome {
                change_id: None,
                status: SyncStatus::InSync,
            });
        };
        let follower = Follower {
            api: &self.api,
            clock: &self.clock,
            policy: self.sync,
            observer: self.observer.as_ref(),
            provider: &self.name,
            zone,
        };
        let status = follower.follow(&change_id, status).await;
        Ok(ApplyOutcome {
            change_id: Some(change_id),
            status,
        })
    }

    /// Submits the change and follows it to `INSYNC` in a task of its own (reported to the
    /// observer and the log as usual): Route 53 refuses only a second change *processed* at
    /// once (`PriorRequestNotComplete`, retried), so nothing needs to wait here.
    async fn apply_following_in_background(
        &self,
        zone: &Fqdn,
        changes: &ChangeSet,
    ) -> Result<(), ProviderError> {
        let Some((change_id, status)) = self.submit(zone, changes).await? else {
            return Ok(());
        };
        let Ok(place) = Arc::clone(&self.following).try_acquire_owned() else {
            tracing::info!(provider = %self.name, %zone, change_id, "not following this change to INSYNC: {MAX_FOLLOWED} changes are followed already (verification still checks it)");
            return Ok(());
        };
        let (api, clock, policy, observer, provider, zone) = (
            self.api.clone(),
            Arc::clone(&self.clock),
            self.sync,
            self.observer.clone(),
            self.name.clone(),
            zone.clone(),
        );
        tokio::spawn(async move {
            let follower = Follower {
                api: &api,
                clock: &clock,
                policy,
                observer: observer.as_ref(),
                provider: &provider,
                zone: &zone,
            };
            follower.follow(&change_id, status).await;
            drop(place);
        });
        Ok(())
    }
}

#[async_trait]
impl DnsProvider for Route53Provider {
    fn name(&self) -> &str {
        &self.name
    }

    /// A page of `ListResourceRecordSets` per 300 record sets.
    fn list_cost(&self, rrsets: usize) -> u32 {
        u32::try_from(rrsets.div_ceil(PAGE as usize).max(1)).unwrap_or(u32::MAX)
    }

    fn request_rate(&self) -> Option<f64> {
        Some(self.api.rate())
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

    async fn read(&self, zone: &Fqdn, keys: &[RrsetKey]) -> Result<Vec<RecordSet>, ProviderError> {
        keys.iter().try_for_each(|k| k.check_within(zone))?;
        let zone_id = self.zone_id(zone).await?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let live = self.live(zone, &zone_id, keys).await?;
        live.iter()
            .map(|(key, raw)| Self::representable(zone, key, raw))
            .collect()
    }

    async fn list_zone(&self, zone: &Fqdn) -> Result<Vec<RecordSet>, ProviderError> {
        let zone_id = self.zone_id(zone).await?;
        let mut by_key: BTreeMap<RrsetKey, Vec<ResourceRecordSet>> = BTreeMap::new();
        for s in self.list_all(zone, &zone_id).await? {
            match wire::key_of(&s) {
                Ok(Some(key)) => by_key.entry(key).or_default().push(s),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(provider = %self.name, %zone, name = s.name(), problem = %e, "skipping a record set")
                }
            }
        }
        let mut sets = Vec::with_capacity(by_key.len());
        for (key, raw) in by_key {
            match Self::representable(zone, &key, &raw) {
                Ok(set) => sets.push(set),
                Err(e) => {
                    tracing::warn!(provider = %self.name, %zone, problem = %e, "skipping an RRset")
                }
            }
        }
        Ok(sets)
    }

    async fn apply(&self, zone: &Fqdn, changes: &ChangeSet) -> Result<(), ProviderError> {
        if self.background {
            self.apply_following_in_background(zone, changes).await
        } else {
            self.apply_and_follow(zone, changes).await.map(|_| ())
        }
    }
}
