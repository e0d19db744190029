//! Desired vs actual RRsets → the [`ChangeSet`] that makes actual desired.

use std::collections::BTreeMap;

use crate::{Change, ChangeSet, RecordSet, RecordType, RrsetKey};

/// The changes that turn `actual` into `desired`, each carrying the RRset it replaces as
/// `expected` (`None` when there was none), so a concurrent edit is detected.
///
/// `actual` defines the scope: pass what the provider returned for the keys you manage.
/// An RRset in `actual` whose key is not in `desired` is deleted; one in `desired` that is
/// equal in `actual` (same records, same TTL) produces nothing. RRsets are canonical
/// (lower-case names, sorted records), so case and record order never show up as changes.
///
/// Order: address and TXT upserts, then MX upserts (an MX target's address goes in first),
/// then deletes, MX first. Within a group, by name. Equal inputs give equal change sets.
/// If `desired` repeats a key, the last one wins.
pub fn diff(desired: &[RecordSet], actual: &[RecordSet]) -> ChangeSet {
    let want: BTreeMap<RrsetKey, &RecordSet> =
        desired.iter().map(|s| (RrsetKey::of(s), s)).collect();
    let have: BTreeMap<RrsetKey, &RecordSet> =
        actual.iter().map(|s| (RrsetKey::of(s), s)).collect();

    let mut upserts: Vec<Change> = want
        .iter()
        .filter(|(key, set)| have.get(*key) != Some(*set))
        .map(|(key, set)| Change::Upsert {
            set: (*set).clone(),
            expected: have.get(key).map(|s| (*s).clone()),
        })
        .collect();
    let mut deletes: Vec<Change> = have
        .iter()
        .filter(|(key, _)| !want.contains_key(*key))
        .map(|(key, set)| Change::Delete {
            key: key.clone(),
            expected: Some((*set).clone()),
        })
        .collect();

    upserts.sort_by_key(|c| {
        let k = c.key();
        (write_rank(k.rtype), k)
    });
    deletes.sort_by_key(|c| {
        let k = c.key();
        (std::cmp::Reverse(write_rank(k.rtype)), k)
    });
    upserts.extend(deletes);
    ChangeSet { changes: upserts }
}

/// Writes of lower rank go first: addresses before the MX records that name them.
pub fn write_rank(rtype: RecordType) -> u8 {
    match rtype {
        RecordType::A | RecordType::Aaaa => 0,
        RecordType::Txt => 1,
        RecordType::Mx => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Fqdn, Ttl};

    fn set(name: &str, rtype: RecordType, ttl: u32, records: &[&str]) -> RecordSet {
        RecordSet::parse(
            Fqdn::parse(name).unwrap(),
            rtype,
            Ttl::new(ttl).unwrap(),
            records,
        )
        .unwrap()
    }

    #[test]
    fn equal_state_is_an_empty_diff_whatever_the_case_and_order() {
        let desired = vec![
            set(
                "Example.com",
                RecordType::Mx,
                300,
                &["10 MX1.example.com", "20 mx2.example.com."],
            ),
            set("mx1.example.com", RecordType::A, 60, &["192.0.2.1"]),
        ];
        let actual = vec![
            set("mx1.EXAMPLE.com.", RecordType::A, 60, &["192.0.2.1"]),
            set(
                "example.com.",
                RecordType::Mx,
                300,
                &["20 mx2.example.com.", "10 mx1.example.com."],
            ),
        ];
        assert!(diff(&desired, &actual).is_empty());
    }

    #[test]
    fn ttl_only_change_is_an_upsert_with_expected() {
        let old = set("example.com", RecordType::Mx, 300, &["10 mx1.example.com."]);
        let new = old.with_ttl(Ttl::new(60).unwrap());
        let cs = diff(std::slice::from_ref(&new), std::slice::from_ref(&old));
        assert_eq!(
            cs.changes,
            vec![Change::Upsert {
                set: new,
                expected: Some(old)
            }]
        );
    }

    #[test]
    fn creates_deletes_and_orders_addresses_before_mx() {
        let mx = set("example.com", RecordType::Mx, 60, &["10 mx9.example.com."]);
        let addr = set("mx9.example.com", RecordType::A, 60, &["192.0.2.9"]);
        let stale = set("old.example.com", RecordType::Txt, 60, &["gone"]);
        let stale_mx = set("sub.example.com", RecordType::Mx, 60, &["0 ."]);
        let cs = diff(
            &[mx.clone(), addr.clone()],
            &[stale.clone(), stale_mx.clone()],
        );
        let keys: Vec<(RecordType, &str)> = cs
            .changes
            .iter()
            .map(|c| match c {
                Change::Upsert { set, expected } => {
                    assert_eq!(expected, &None);
                    (set.rtype(), "upsert")
                }
                Change::Delete { key, expected } => {
                    assert!(expected.is_some());
                    (key.rtype, "delete")
                }
            })
            .collect();
        assert_eq!(
            keys,
            vec![
                (RecordType::A, "upsert"),
                (RecordType::Mx, "upsert"),
                (RecordType::Mx, "delete"),
                (RecordType::Txt, "delete"),
            ]
        );
    }
}
