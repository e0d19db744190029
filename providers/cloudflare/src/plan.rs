//! A [`ChangeSet`] plus the live records at its keys → one batch of record operations.
//!
//! Cloudflare keeps one object per record, so replacing an RRset means: keep the records that
//! stay (patching their TTL or `proxied` when those differ), patch leftover old records into
//! new content, delete what remains of the old, post what remains of the new.

use std::collections::BTreeMap;

use mxguard_core::{Change, ChangeSet, ProviderError, RData, RecordSet, RrsetKey};

use crate::wire::{self, BatchRequest, DnsRecord, IdOnly, WithId};

/// Live records by RRset key (only the keys the change set touches).
pub(crate) type Live = BTreeMap<RrsetKey, Vec<DnsRecord>>;

/// Checks each change's `expected` against the live records: a difference means someone
/// changed the RRset after the planner read it.
pub(crate) fn check_expected(changes: &ChangeSet, live: &Live) -> Result<(), ProviderError> {
    for change in &changes.changes {
        let key = change.key();
        let current = match live.get(&key) {
            Some(records) if !records.is_empty() => {
                let refs: Vec<&DnsRecord> = records.iter().collect();
                Some(
                    wire::to_set(&key, &refs).map_err(|e| ProviderError::Rejected {
                        reason: format!(
                            "{} {} holds records mxguard cannot represent: {e}",
                            key.name, key.rtype
                        ),
                    })?,
                )
            }
            _ => None,
        };
        change.check_expected(current.as_ref())?;
    }
    Ok(())
}

/// The batch that makes the live records what `changes` asks for, with TTLs below `min_ttl`
/// raised to it. Record data that cannot be read is `Rejected` (it was checked before).
pub(crate) fn batch(
    changes: &ChangeSet,
    live: &Live,
    min_ttl: u32,
) -> Result<BatchRequest, ProviderError> {
    let mut out = BatchRequest::default();
    for change in &changes.changes {
        let key = change.key();
        let current: &[DnsRecord] = live.get(&key).map(Vec::as_slice).unwrap_or(&[]);
        match change {
            Change::Delete { .. } => {
                out.deletes
                    .extend(current.iter().map(|r| IdOnly { id: r.id.clone() }));
            }
            Change::Upsert { set, .. } => replace(set, current, min_ttl, &mut out)?,
        }
    }
    Ok(out)
}

fn replace(
    set: &RecordSet,
    current: &[DnsRecord],
    min_ttl: u32,
    out: &mut BatchRequest,
) -> Result<(), ProviderError> {
    let ttl = set.ttl().secs().max(min_ttl);
    let mut unused: Vec<(&DnsRecord, RData)> = Vec::with_capacity(current.len());
    for r in current {
        let data = wire::rdata(r).map_err(|e| ProviderError::Rejected {
            reason: format!("{} {}: {e}", set.name(), set.rtype()),
        })?;
        unused.push((r, data));
    }
    let mut missing: Vec<&RData> = Vec::new();
    for data in set.records() {
        match unused.iter().position(|(_, d)| d == data) {
            Some(i) => {
                let (record, _) = unused.swap_remove(i);
                let body = wire::body(set.name(), data, ttl);
                let proxied_differs = body.proxied.is_some() && record.proxied != body.proxied;
                if record.ttl != ttl || proxied_differs {
                    out.patches.push(WithId {
                        id: record.id.clone(),
                        body,
                    });
                }
            }
            None => missing.push(data),
        }
    }
    let mut leftovers = unused.into_iter();
    for data in missing {
        let body = wire::body(set.name(), data, ttl);
        match leftovers.next() {
            Some((record, _)) => out.patches.push(WithId {
                id: record.id.clone(),
                body,
            }),
            None => out.posts.push(body),
        }
    }
    out.deletes
        .extend(leftovers.map(|(r, _)| IdOnly { id: r.id.clone() }));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mxguard_core::{Fqdn, RecordType, Ttl};

    fn rec(id: &str, content: &str, ttl: u32) -> DnsRecord {
        DnsRecord {
            id: id.into(),
            rtype: "A".into(),
            name: "www.example.com".into(),
            content: content.into(),
            priority: None,
            ttl,
            proxied: Some(false),
        }
    }

    fn a_set(ttl: u32, ips: &[&str]) -> RecordSet {
        RecordSet::parse(
            Fqdn::parse("www.example.com").unwrap(),
            RecordType::A,
            Ttl::new(ttl).unwrap(),
            ips,
        )
        .unwrap()
    }

    #[test]
    fn keeps_patches_deletes_and_posts_as_little_as_needed() {
        let live_records = vec![
            rec("1", "192.0.2.1", 300),
            rec("2", "192.0.2.2", 300),
            rec("3", "192.0.2.3", 300),
        ];
        let old = a_set(300, &["192.0.2.1", "192.0.2.2", "192.0.2.3"]);
        let key = RrsetKey::of(&old);
        let live: Live = [(key, live_records)].into_iter().collect();
        // keep .1 as is, .2 → .9 by patch, delete .3
        let new = a_set(300, &["192.0.2.1", "192.0.2.9"]);
        let cs = ChangeSet {
            changes: vec![Change::Upsert {
                set: new,
                expected: Some(old.clone()),
            }],
        };
        check_expected(&cs, &live).unwrap();
        let b = batch(&cs, &live, 60).unwrap();
        assert_eq!(b.patches.len(), 1);
        assert_eq!(b.patches[0].body.content, "192.0.2.9");
        assert_eq!(b.deletes.len(), 1);
        assert!(b.posts.is_empty());
        // a TTL-only change patches every record
        let cs = ChangeSet {
            changes: vec![Change::Upsert {
                set: old.with_ttl(Ttl::new(60).unwrap()),
                expected: Some(old.clone()),
            }],
        };
        assert_eq!(batch(&cs, &live, 60).unwrap().patches.len(), 3);
        // the same state is no operation at all
        let cs = ChangeSet {
            changes: vec![Change::Upsert {
                set: old.clone(),
                expected: Some(old.clone()),
            }],
        };
        assert_eq!(batch(&cs, &live, 60).unwrap().len(), 0);
    }

    #[test]
    fn a_stale_expectation_is_rejected() {
        let live_records = vec![rec("1", "192.0.2.1", 300)];
        let key = RrsetKey::of(&a_set(300, &["192.0.2.1"]));
        let live: Live = [(key, live_records)].into_iter().collect();
        let cs = ChangeSet {
            changes: vec![Change::Upsert {
                set: a_set(300, &["192.0.2.5"]),
                expected: None,
            }],
        };
        assert!(matches!(
            check_expected(&cs, &live),
            Err(ProviderError::Rejected { .. })
        ));
    }

    #[test]
    fn ttls_are_raised_to_the_minimum() {
        let cs = ChangeSet {
            changes: vec![Change::Upsert {
                set: a_set(5, &["192.0.2.1"]),
                expected: None,
            }],
        };
        let b = batch(&cs, &Live::new(), 60).unwrap();
        assert_eq!(b.posts[0].ttl, 60);
        assert_eq!(b.posts[0].proxied, Some(false));
    }
}
