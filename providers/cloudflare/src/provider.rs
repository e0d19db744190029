//! [`CloudflareProvider`]: the [`DnsProvider`] port over Cloudflare's DNS records API.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use mxguard_core::{
    Budget, Capabilities, Change, ChangeSet, Clock, DnsProvider, Fqdn, ProviderError, RData,
    RecordSet, RrsetKey,
};
use reqwest::Method;

use crate::client::Client;
use crate::config::{CloudflareConfig, ConfigError, MAX_TTL};
use crate::errors::{has_code, NO_ROUTE, NO_ROUTE_FOR_ID};
use crate::plan::{self, Live};
use crate::wire::{self, BatchRequest, DnsRecord, Zone};

/// Operations admitted at once when the provider is used alone (not wrapped by the service,
/// whose budgets admit a few at a time).
const STANDALONE_PLACES: usize = 64;

/// Reads touching at most this many names query each name (`name.exact`); more list the zone.
const READ_BY_NAME_MAX: usize = 3;

pub struct CloudflareProvider {
    pub(crate) name: String,
    pub(crate) client: Client,
    zones: Mutex<HashMap<Fqdn, String>>,
    batch_size: usize,
    min_ttl: u32,
    pub(crate) per_page: u32,
    /// False once the batch endpoint answered "no route": then per-record calls, not atomic.
    batch_available: AtomicBool,
    /// Applies made one record at a time since the batch endpoint said "no route".
    per_record_applies: std::sync::atomic::AtomicU32,
    /// The records the last read of each zone returned, with their ids: the next apply to
    /// those keys plans on them instead of reading again.
    last_read: Mutex<HashMap<Fqdn, LastRead>>,
    /// The account owning the token, for an account-owned token (verified there).
    pub(crate) account_id: Option<String>,
    /// The token verified active once: access checks of further zones skip that request.
    pub(crate) token_active: AtomicBool,
}

/// A read kept for the apply that follows it.
struct LastRead {
    at: std::time::Instant,
    keys: BTreeSet<RrsetKey>,
    records: Vec<DnsRecord>,
}

/// How long a read stands in for the read `apply` would make. The service reads, writes the
/// change intent (whose `before` is that read) and applies; in a mass outage the apply waits
/// its turn at the account's admission behind the other domains' reads (1,000 domains at
/// Cloudflare's pace: minutes). The batch names the read's record ids, so a record deleted or
/// replaced since makes Cloudflare refuse the whole batch (81044), and a record added since
/// shows in the verification; a read older than this is made again all the same.
pub const READ_REUSED_FOR: std::time::Duration = std::time::Duration::from_secs(900);

/// The batch endpoint is tried again after this many per-record applies: its absence may have
/// been a passing fault of Cloudflare's routing, and per-record calls give up atomicity.
pub const BATCH_REPROBE_EVERY: u32 = 20;

impl std::fmt::Debug for CloudflareProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudflareProvider")
            .field("name", &self.name)
            .field("batch_size", &self.batch_size)
            .field("min_ttl", &self.min_ttl)
            .finish_non_exhaustive()
    }
}

impl CloudflareProvider {
    /// A provider with its own token bucket (`config.rate_limit`) on `clock`. When
    /// [`RATE_WINDOW_ENV`](crate::RATE_WINDOW_ENV) is set (benchmarks against a fake), the
    /// bucket spreads the same budget over that shorter window.
    pub fn new(config: CloudflareConfig, clock: Arc<dyn Clock>) -> Result<Self, ConfigError> {
        let window = std::env::var(crate::RATE_WINDOW_ENV).ok();
        let config = config.with_window_override(window.as_deref())?;
        let budget = Budget::new(&config.name, config.rate_limit, STANDALONE_PLACES, clock);
        CloudflareProvider::with_budget(config, budget)
    }

    /// [`CloudflareProvider::new`]'s budget for `config` (its pacing, with the benchmark
    /// window applied), admitting `places` operations at once: share it between every provider
    /// entry that spends the same user's or account's quota — Cloudflare counts per user (or
    /// per account for account-owned tokens), not per token (reference §9, §12).
    pub fn budget_for(
        config: &CloudflareConfig,
        places: usize,
        clock: Arc<dyn Clock>,
    ) -> Result<Budget, ConfigError> {
        let window = std::env::var(crate::RATE_WINDOW_ENV).ok();
        let config = config.clone().with_window_override(window.as_deref())?;
        Ok(Budget::new(&config.name, config.rate_limit, places, clock))
    }

    /// A provider spending `budget` (see [`CloudflareProvider::budget_for`]).
    pub fn with_budget(config: CloudflareConfig, budget: Budget) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(CloudflareProvider {
            client: Client::new(&config, budget)?,
            name: config.name,
            zones: Mutex::new(HashMap::new()),
            batch_size: config.batch_size,
            min_ttl: config.min_ttl,
            per_page: config.per_page,
            batch_available: AtomicBool::new(true),
            per_record_applies: std::sync::atomic::AtomicU32::new(0),
            last_read: Mutex::new(HashMap::new()),
            account_id: config.account_id,
            token_active: AtomicBool::new(false),
        })
    }

    /// The zone's id, looked up by name once (`GET /zones?name=`) and cached.
    pub(crate) async fn zone_id(&self, zone: &Fqdn) -> Result<String, ProviderError> {
        if let Some(id) = self.lock_zones().get(zone) {
            return Ok(id.clone());
        }
        let what = format!("looking up zone {zone}");
        let query = [("name", zone.without_dot().to_string())];
        let zones: Vec<Zone> = self.client.list_all(&["zones"], &query, 50, &what).await?;
        let mut matching = zones
            .into_iter()
            .filter(|z| Fqdn::parse(&z.name).is_ok_and(|n| &n == zone));
        let id = match (matching.next(), matching.next()) {
            (Some(z), None) => z.id,
            (None, _) => {
                return Err(ProviderError::NotFound(format!(
                    "zone {zone}: the API token sees no such zone (wrong name, or the token's zone resources leave it out)"
                )))
            }
            (Some(_), Some(_)) => {
                return Err(ProviderError::Rejected {
                    reason: format!("zone {zone}: the token sees more than one zone by that name"),
                })
            }
        };
        self.lock_zones().insert(zone.clone(), id.clone());
        Ok(id)
    }

    fn lock_zones(&self) -> std::sync::MutexGuard<'_, HashMap<Fqdn, String>> {
        self.zones.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now(&self) -> std::time::Instant {
        self.client.budget().gate().clock().now()
    }

    fn keep_read(&self, zone: &Fqdn, keys: &[RrsetKey], records: &[DnsRecord]) {
        let kept = LastRead {
            at: self.now(),
            keys: keys.iter().cloned().collect(),
            records: records.to_vec(),
        };
        self.last_read
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(zone.clone(), kept);
    }

    /// The last read of `zone`, once, when it covered `keys` and is recent enough.
    fn take_read(&self, zone: &Fqdn, keys: &[RrsetKey]) -> Option<Vec<DnsRecord>> {
        let kept = self
            .last_read
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(zone)?;
        let fresh = self.now().saturating_duration_since(kept.at) <= READ_REUSED_FOR;
        (fresh && keys.iter().all(|k| kept.keys.contains(k))).then_some(kept.records)
    }

    /// The records at `keys`' names: by name (`name.exact`, and `type` when the name has one
    /// key) for a few names, else the whole zone. A zone id Cloudflare no longer routes is
    /// forgotten, so the next call looks the zone up again.
    async fn records_at(
        &self,
        zone: &Fqdn,
        zone_id: &str,
        keys: &[RrsetKey],
    ) -> Result<Vec<DnsRecord>, ProviderError> {
        let names: BTreeSet<&Fqdn> = keys.iter().map(|k| &k.name).collect();
        let path = ["zones", zone_id, "dns_records"];
        let result = if names.len() <= READ_BY_NAME_MAX {
            self.read_by_name(zone, &path, names, keys).await
        } else {
            let what = format!("listing DNS records of zone {zone}");
            self.client.list_all(&path, &[], self.per_page, &what).await
        };
        self.forget_zone_on_failure(zone, result)
    }

    /// One list call per name (with its type when the name has one key).
    async fn read_by_name(
        &self,
        zone: &Fqdn,
        path: &[&str],
        names: BTreeSet<&Fqdn>,
        keys: &[RrsetKey],
    ) -> Result<Vec<DnsRecord>, ProviderError> {
        let mut out = Vec::new();
        for name in names {
            let types: BTreeSet<&str> = keys
                .iter()
                .filter(|k| &k.name == name)
                .map(|k| k.rtype.as_str())
                .collect();
            let mut query = vec![("name.exact", name.without_dot().to_string())];
            if let [only] = types.iter().collect::<Vec<_>>().as_slice() {
                query.push(("type", (*only).to_string()));
            }
            let what = format!("reading {name} in zone {zone}");
            out.extend(
                self.client
                    .list_all::<DnsRecord>(path, &query, self.per_page, &what)
                    .await?,
            );
        }
        Ok(out)
    }

    fn forget_zone_on_failure<T>(
        &self,
        zone: &Fqdn,
        r: Result<T, ProviderError>,
    ) -> Result<T, ProviderError> {
        // A zone id that stops working (the zone deleted and added again, or moved out of the
        // token's scope) is looked up again next time, which then says what is wrong.
        if matches!(r, Err(ProviderError::NotFound(_) | ProviderError::Auth(_))) {
            self.lock_zones().remove(zone);
        }
        r
    }

    /// What Cloudflare would refuse, refused before anything is sent.
    fn check_content(&self, changes: &ChangeSet) -> Result<(), ProviderError> {
        for change in &changes.changes {
            let Change::Upsert { set, .. } = change else {
                continue;
            };
            if set.ttl().secs() > MAX_TTL {
                return Err(ProviderError::Rejected {
                    reason: format!(
                        "{} {}: TTL {} is above Cloudflare's maximum of {MAX_TTL} s",
                        set.name(),
                        set.rtype(),
                        set.ttl()
                    ),
                });
            }
            for data in set.records() {
                if let RData::Txt(text) = data {
                    if wire::encode_txt(text).chars().count() > wire::MAX_TXT_CONTENT {
                        return Err(ProviderError::Rejected {
                            reason: format!(
                                "{} TXT: a record longer than Cloudflare's {} characters",
                                set.name(),
                                wire::MAX_TXT_CONTENT
                            ),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    async fn send_batch(
        &self,
        zone: &Fqdn,
        zone_id: &str,
        batch: &BatchRequest,
    ) -> Result<(), ProviderError> {
        if self.batch_available.load(Ordering::SeqCst) {
            let what = format!(
                "applying a batch of {} record changes to zone {zone}",
                batch.len()
            );
            let path = ["zones", zone_id, "dns_records", "batch"];
            let sent = self
                .client
                .call::<serde_json::Value, _>(Method::POST, &path, &[], Some(batch), &what)
                .await;
            match sent {
                Ok(_) => return Ok(()),
                // Only Cloudflare's own "no route" answer (an envelope with 7000, or a 405 with
                // errors) means the endpoint is missing; a bare 404/405 from something in
                // between is an error like any other.
                Err(e)
                    if (e.status == Some(405) && !e.errors.is_empty())
                        || (e.status == Some(404) && has_code(&e.errors, NO_ROUTE)) =>
                {
                    tracing::warn!(provider = %self.name, %zone, "the batch endpoint is not available: per-record calls (not atomic), trying the batch again after {BATCH_REPROBE_EVERY} applies");
                    self.batch_available.store(false, Ordering::SeqCst);
                    self.per_record_applies.store(0, Ordering::SeqCst);
                }
                Err(e) => {
                    if has_code(&e.errors, NO_ROUTE_FOR_ID)
                        || matches!(e.error, ProviderError::Auth(_))
                    {
                        self.lock_zones().remove(zone);
                    }
                    return Err(e.error);
                }
            }
        }
        let sent = self.send_one_by_one(zone, zone_id, batch).await;
        if self.per_record_applies.fetch_add(1, Ordering::SeqCst) + 1 >= BATCH_REPROBE_EVERY {
            tracing::info!(provider = %self.name, "trying the batch endpoint again at the next apply");
            self.batch_available.store(true, Ordering::SeqCst);
        }
        sent
    }

    /// The fallback: the batch's operations one request each, in the batch's order.
    async fn send_one_by_one(
        &self,
        zone: &Fqdn,
        zone_id: &str,
        b: &BatchRequest,
    ) -> Result<(), ProviderError> {
        let what = format!("changing a record in zone {zone} (per-record fallback)");
        let records = ["zones", zone_id, "dns_records"];
        for d in &b.deletes {
            let path = ["zones", zone_id, "dns_records", d.id.as_str()];
            self.client
                .call::<serde_json::Value, ()>(Method::DELETE, &path, &[], None, &what)
                .await?;
        }
        for p in &b.patches {
            let path = ["zones", zone_id, "dns_records", p.id.as_str()];
            self.client
                .call::<serde_json::Value, _>(Method::PATCH, &path, &[], Some(&p.body), &what)
                .await?;
        }
        for p in &b.puts {
            let path = ["zones", zone_id, "dns_records", p.id.as_str()];
            self.client
                .call::<serde_json::Value, _>(Method::PUT, &path, &[], Some(&p.body), &what)
                .await?;
        }
        for p in &b.posts {
            self.client
                .call::<serde_json::Value, _>(Method::POST, &records, &[], Some(p), &what)
                .await?;
        }
        Ok(())
    }
}

#[async_trait]
impl DnsProvider for CloudflareProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn request_rate(&self) -> Option<f64> {
        Some(self.client.rate())
    }

    /// One request per name when it reads by name, else a listing (one page, usually).
    fn read_cost(&self, keys: &[RrsetKey]) -> u32 {
        let names: BTreeSet<&Fqdn> = keys.iter().map(|k| &k.name).collect();
        if names.len() <= READ_BY_NAME_MAX {
            names.len().max(1) as u32
        } else {
            1
        }
    }

    /// A page per `per_page` records (an RRset of several records spans several).
    fn list_cost(&self, rrsets: usize) -> u32 {
        let per_page = (self.per_page as usize).max(1);
        u32::try_from(rrsets.div_ceil(per_page).max(1)).unwrap_or(u32::MAX)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            min_ttl: self.min_ttl,
            max_ttl: 86_400,
            // An RRset change is one or two record operations in the common case; apply
            // refuses (Rejected) a change set whose operations still exceed the batch size.
            max_changes_per_request: (self.batch_size / 2).max(1),
            atomic: self.batch_available.load(Ordering::SeqCst),
            zone_listing: true,
        }
    }

    async fn read(&self, zone: &Fqdn, keys: &[RrsetKey]) -> Result<Vec<RecordSet>, ProviderError> {
        keys.iter().try_for_each(|k| k.check_within(zone))?;
        let zone_id = self.zone_id(zone).await?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let records = self.records_at(zone, &zone_id, keys).await?;
        self.keep_read(zone, keys, &records);
        let wanted: BTreeSet<&RrsetKey> = keys.iter().collect();
        let (sets, problems) = wire::group(&records, |k| wanted.contains(k));
        if let Some((key, why)) = problems.into_iter().next() {
            return Err(ProviderError::Rejected {
                reason: format!(
                    "zone {zone} holds an RRset mxguard cannot represent: {key}: {why}"
                ),
            });
        }
        Ok(sets)
    }

    async fn list_zone(&self, zone: &Fqdn) -> Result<Vec<RecordSet>, ProviderError> {
        let zone_id = self.zone_id(zone).await?;
        let what = format!("listing DNS records of zone {zone}");
        let path = ["zones", zone_id.as_str(), "dns_records"];
        let listed = self
            .client
            .list_all::<DnsRecord>(&path, &[], self.per_page, &what)
            .await;
        let records = self.forget_zone_on_failure(zone, listed)?;
        let (sets, problems) = wire::group(&records, |k| k.name.is_within(zone));
        for (key, problem) in problems {
            tracing::warn!(provider = %self.name, %zone, %key, %problem, "skipping an RRset mxguard cannot represent");
        }
        Ok(sets)
    }

    /// Reads the live records at the change set's keys, checks every `expected` against them
    /// (best effort: a change made between this read and the batch is not seen, unless it
    /// deleted a record the batch names, which fails the whole batch), then sends one batch.
    async fn apply(&self, zone: &Fqdn, changes: &ChangeSet) -> Result<(), ProviderError> {
        changes.validate_for(zone)?;
        self.check_content(changes)?;
        if changes.is_empty() {
            return Ok(());
        }
        let zone_id = self.zone_id(zone).await?;
        let keys: Vec<RrsetKey> = changes.changes.iter().map(Change::key).collect();
        let reused = self.take_read(zone, &keys);
        let fresh_read = reused.is_none();
        let records = match reused {
            Some(records) => records,
            None => self.records_at(zone, &zone_id, &keys).await?,
        };
        let mut live: Live = BTreeMap::new();
        for r in records {
            let (Some(rtype), Ok(name)) = (wire::parse_type(&r.rtype), Fqdn::parse(&r.name)) else {
                continue;
            };
            let key = RrsetKey::new(name, rtype);
            if keys.contains(&key) {
                live.entry(key).or_default().push(r);
            }
        }
        if let Err(e) = plan::check_expected(changes, &live) {
            if fresh_read {
                return Err(e);
            }
            // The kept read is not what the change expects: ask Cloudflare what is live.
            tracing::debug!(provider = %self.name, %zone, "the last read does not match the change's expectation: reading again");
            return self.apply(zone, changes).await;
        }
        let batch = plan::batch(changes, &live, self.min_ttl)?;
        if batch.len() == 0 {
            tracing::debug!(provider = %self.name, %zone, "nothing to change");
            return Ok(());
        }
        if batch.len() > self.batch_size {
            return Err(ProviderError::Rejected {
                reason: format!(
                    "{} record operations for zone {zone} exceed the batch size of {} (the zone plan's limit): apply the change set in smaller parts",
                    batch.len(),
                    self.batch_size
                ),
            });
        }
        self.send_batch(zone, &zone_id, &batch).await?;
        tracing::info!(
            provider = %self.name, %zone,
            deletes = batch.deletes.len(), patches = batch.patches.len(), posts = batch.posts.len(),
            "changes applied"
        );
        Ok(())
    }
}
