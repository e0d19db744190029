//! A [`ChangeSet`] → one RFC 2136 UPDATE message: all-or-nothing, with each change's
//! `expected` as a prerequisite.

use hickory_proto::op::{Message, OpCode, Query};
use hickory_proto::rr::{DNSClass, Record, RecordType as HType};
use mxguard_core::{write_rank, Change, ChangeSet, Fqdn, ProviderError, RecordSet, RrsetKey};

use crate::wire;

/// Builds the UPDATE for `changes` to `zone` (already validated with `validate_for`).
///
/// - Zone section: `zone IN SOA`.
/// - Prerequisites (§2.4): `expected = Some(set)` → "RRset exists (value dependent)", the
///   set's records with TTL 0; `expected = None` → "RRset does not exist" (class NONE).
///   Value-dependent prerequisites compare records, not TTLs.
/// - Updates (§2.5): an upsert deletes the RRset (class ANY) and adds the new records; a
///   delete deletes the RRset. Address records go before the MX records that name them.
pub(crate) fn build(zone: &Fqdn, changes: &ChangeSet) -> Result<Message, ProviderError> {
    let mut msg = Message::query();
    msg.metadata.op_code = OpCode::Update;
    msg.metadata.recursion_desired = false;
    let mut zone_query = Query::query(wire::name(zone)?, HType::SOA);
    zone_query.set_query_class(DNSClass::IN);
    msg.add_query(zone_query);

    let mut ordered: Vec<&Change> = changes.changes.iter().collect();
    ordered.sort_by_key(|c| match c {
        Change::Upsert { set, .. } => (0, write_rank(set.rtype())),
        Change::Delete { key, .. } => (1, u8::MAX - write_rank(key.rtype)),
    });

    for change in ordered {
        let key = change.key();
        msg.add_answers(prerequisite(&key, change.expected())?);
        msg.add_authority(delete_rrset(&key)?);
        if let Change::Upsert { set, .. } = change {
            msg.add_authorities(wire::records(set, set.ttl().secs())?);
        }
    }
    Ok(msg)
}

fn prerequisite(
    key: &RrsetKey,
    expected: Option<&RecordSet>,
) -> Result<Vec<Record>, ProviderError> {
    match expected {
        Some(set) => wire::records(set, 0),
        None => {
            let mut absent = Record::update0(wire::name(&key.name)?, 0, wire::rtype(key.rtype));
            absent.dns_class = DNSClass::NONE;
            Ok(vec![absent])
        }
    }
}

fn delete_rrset(key: &RrsetKey) -> Result<Record, ProviderError> {
    let mut delete = Record::update0(wire::name(&key.name)?, 0, wire::rtype(key.rtype));
    delete.dns_class = DNSClass::ANY;
    Ok(delete)
}

#[cfg(test)]
mod tests {
    use hickory_proto::rr::RData as HRData;
    use mxguard_core::{RecordType, Ttl};

    use super::*;

    fn set(name: &str, rtype: RecordType, records: &[&str]) -> RecordSet {
        let name = Fqdn::parse(name).unwrap();
        RecordSet::parse(name, rtype, Ttl::new(60).unwrap(), records).unwrap()
    }

    #[test]
    fn upsert_with_expectations_becomes_prerequisites_delete_and_add() {
        let zone = Fqdn::parse("example.test").unwrap();
        let old = set("example.test", RecordType::Mx, &["10 mx1.example.test."]);
        let new_mx = set("example.test", RecordType::Mx, &["10 mx2.example.test."]);
        let addr = set("mx2.example.test", RecordType::A, &["192.0.2.2"]);
        let cs = ChangeSet {
            changes: vec![
                Change::Upsert {
                    set: new_mx,
                    expected: Some(old),
                },
                Change::Upsert {
                    set: addr,
                    expected: None,
                },
            ],
        };
        let msg = build(&zone, &cs).unwrap();
        assert_eq!(msg.metadata.op_code, OpCode::Update);
        assert_eq!(msg.queries.len(), 1);
        assert_eq!(msg.queries[0].query_type(), HType::SOA);

        // prerequisites: the A must not exist (NONE), the MX must hold exactly the old record
        let pre: Vec<(HType, DNSClass, u32)> = msg
            .answers
            .iter()
            .map(|r| (r.record_type(), r.dns_class, r.ttl))
            .collect();
        assert_eq!(
            pre,
            vec![(HType::A, DNSClass::NONE, 0), (HType::MX, DNSClass::IN, 0)]
        );
        assert!(matches!(msg.answers[0].data, HRData::Update0(HType::A)));

        // updates: address first — delete RRset (ANY), add; then the MX
        let ups: Vec<(HType, DNSClass, u32)> = msg
            .authorities
            .iter()
            .map(|r| (r.record_type(), r.dns_class, r.ttl))
            .collect();
        assert_eq!(
            ups,
            vec![
                (HType::A, DNSClass::ANY, 0),
                (HType::A, DNSClass::IN, 60),
                (HType::MX, DNSClass::ANY, 0),
                (HType::MX, DNSClass::IN, 60),
            ]
        );
    }

    #[test]
    fn delete_deletes_the_whole_rrset_after_the_upserts() {
        let zone = Fqdn::parse("example.test").unwrap();
        let gone = set("old.example.test", RecordType::Txt, &["bye"]);
        let cs = ChangeSet {
            changes: vec![
                Change::Delete {
                    key: RrsetKey::of(&gone),
                    expected: Some(gone.clone()),
                },
                Change::Upsert {
                    set: set("a.example.test", RecordType::A, &["192.0.2.1"]),
                    expected: None,
                },
            ],
        };
        let msg = build(&zone, &cs).unwrap();
        let last = msg.authorities.last().unwrap();
        assert_eq!(
            (last.record_type(), last.dns_class),
            (HType::TXT, DNSClass::ANY)
        );
        assert_eq!(msg.authorities.len(), 3);
    }
}
