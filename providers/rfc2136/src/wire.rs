//! mxguard's record model ↔ hickory's wire types. Nothing here leaves the crate.

use std::collections::{BTreeMap, BTreeSet};

use hickory_proto::rr::rdata::{A as HA, AAAA as HAAAA, MX as HMX, TXT as HTXT};
use hickory_proto::rr::{Name, RData as HRData, Record, RecordType as HType};
use mxguard_core::txt;
use mxguard_core::{Fqdn, MxRecord, ProviderError, RData, RecordSet, RecordType, Ttl};

pub(crate) fn name(fqdn: &Fqdn) -> Result<Name, ProviderError> {
    Name::from_ascii(fqdn.as_str()).map_err(|e| ProviderError::Rejected {
        reason: format!("{fqdn} cannot be written as a DNS name: {e}"),
    })
}

/// A name read from the server, in mxguard's canonical form.
pub(crate) fn fqdn(name: &Name) -> Result<Fqdn, String> {
    let mut text = name.to_ascii();
    if !text.ends_with('.') {
        text.push('.');
    }
    Fqdn::parse(&text).map_err(|e| e.to_string())
}

pub(crate) fn rtype(t: RecordType) -> HType {
    match t {
        RecordType::Mx => HType::MX,
        RecordType::A => HType::A,
        RecordType::Aaaa => HType::AAAA,
        RecordType::Txt => HType::TXT,
    }
}

pub(crate) fn managed(t: HType) -> Option<RecordType> {
    match t {
        HType::MX => Some(RecordType::Mx),
        HType::A => Some(RecordType::A),
        HType::AAAA => Some(RecordType::Aaaa),
        HType::TXT => Some(RecordType::Txt),
        _ => None,
    }
}

pub(crate) fn rdata(r: &RData) -> Result<HRData, ProviderError> {
    Ok(match r {
        RData::Mx(mx) => HRData::MX(HMX::new(mx.preference.0, name(&mx.exchange)?)),
        RData::A(ip) => HRData::A(HA(*ip)),
        RData::Aaaa(ip) => HRData::AAAA(HAAAA(*ip)),
        RData::Txt(text) => HRData::TXT(HTXT::from_bytes(txt::character_strings(text))),
    })
}

/// The records of `set` as they go on the wire, with `ttl` (0 for prerequisites).
pub(crate) fn records(set: &RecordSet, ttl: u32) -> Result<Vec<Record>, ProviderError> {
    let owner = name(set.name())?;
    set.records()
        .iter()
        .map(|r| Ok(Record::from_rdata(owner.clone(), ttl, rdata(r)?)))
        .collect()
}

fn from_rdata(r: &HRData) -> Result<Option<RData>, String> {
    Ok(Some(match r {
        HRData::MX(mx) => RData::Mx(MxRecord::new(mx.preference, fqdn(&mx.exchange)?)),
        HRData::A(a) => RData::A(a.0),
        HRData::AAAA(a) => RData::Aaaa(a.0),
        HRData::TXT(t) => {
            let bytes: Vec<u8> = t.txt_data.iter().flat_map(|s| s.iter().copied()).collect();
            RData::Txt(String::from_utf8_lossy(&bytes).into_owned())
        }
        _ => return Ok(None),
    }))
}

/// Groups records into RRsets, keeping only the managed types and only names for which
/// `keep` is true. RRsets the model cannot hold (a Null MX beside other MX records, a name
/// that is not a host name) are returned as errors, one string each, so the caller decides.
pub(crate) fn group<'a>(
    records: impl IntoIterator<Item = &'a Record>,
    keep: impl Fn(&Fqdn, RecordType) -> bool,
) -> (Vec<RecordSet>, Vec<String>) {
    type Acc = BTreeMap<(Fqdn, RecordType), (u32, BTreeSet<RData>)>;
    let mut acc: Acc = BTreeMap::new();
    let mut problems = Vec::new();
    for record in records {
        let Some(rt) = managed(record.record_type()) else {
            continue;
        };
        let owner = match fqdn(&record.name) {
            Ok(owner) => owner,
            Err(e) => {
                problems.push(format!("{} {rt}: {e}", record.name));
                continue;
            }
        };
        if !keep(&owner, rt) {
            continue;
        }
        match from_rdata(&record.data) {
            Ok(Some(data)) => {
                let entry = acc
                    .entry((owner, rt))
                    .or_insert((record.ttl, BTreeSet::new()));
                // an RRset has one TTL (RFC 2181 §5.2); should a server mix them, the lowest wins
                entry.0 = entry.0.min(record.ttl);
                entry.1.insert(data);
            }
            Ok(None) => {}
            Err(e) => problems.push(format!("{owner} {rt}: {e}")),
        }
    }
    let mut sets = Vec::new();
    for ((owner, rt), (ttl, data)) in acc {
        let built = Ttl::new(ttl).and_then(|ttl| RecordSet::new(owner.clone(), rt, ttl, data));
        match built {
            Ok(set) => sets.push(set),
            Err(e) => problems.push(format!("{owner} {rt}: {e}")),
        }
    }
    (sets, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(name: &str, rtype: RecordType, records: &[&str]) -> RecordSet {
        let name = Fqdn::parse(name).unwrap();
        RecordSet::parse(name, rtype, Ttl::new(300).unwrap(), records).unwrap()
    }

    #[test]
    fn round_trips_every_managed_type() {
        let long = "x".repeat(600);
        let sets = [
            set(
                "example.test",
                RecordType::Mx,
                &["10 mx1.example.test.", "20 mx.example.net."],
            ),
            set("example.test", RecordType::Mx, &["0 ."]),
            set(
                "mx1.example.test",
                RecordType::A,
                &["192.0.2.1", "192.0.2.2"],
            ),
            set("mx1.example.test", RecordType::Aaaa, &["2001:db8::1"]),
            set(
                "example.test",
                RecordType::Txt,
                &[long.as_str(), "v=spf1 -all", ""],
            ),
        ];
        for s in sets {
            let wire = records(&s, s.ttl().secs()).unwrap();
            assert_eq!(wire.len(), s.records().len());
            let (back, problems) = group(&wire, |_, _| true);
            assert!(problems.is_empty(), "{problems:?}");
            assert_eq!(back, vec![s]);
        }
    }

    #[test]
    fn long_txt_is_split_into_255_byte_strings() {
        let s = set("example.test", RecordType::Txt, &[&"y".repeat(600)]);
        let wire = records(&s, 60).unwrap();
        let HRData::TXT(txt) = &wire[0].data else {
            panic!("not TXT: {:?}", wire[0].data);
        };
        let lens: Vec<usize> = txt.txt_data.iter().map(|c| c.len()).collect();
        assert_eq!(lens, vec![255, 255, 90]);
    }

    #[test]
    fn names_come_back_lower_case_and_unmodelled_sets_are_reported() {
        let upper = Name::from_ascii("MX1.Example.TEST.").unwrap();
        let a = Record::from_rdata(
            upper.clone(),
            60,
            HRData::A(HA("192.0.2.1".parse().unwrap())),
        );
        let null = Record::from_rdata(upper.clone(), 60, HRData::MX(HMX::new(0, Name::root())));
        let other = Record::from_rdata(
            upper,
            60,
            HRData::MX(HMX::new(10, Name::from_ascii("mx.example.net.").unwrap())),
        );
        let (sets, problems) = group(&[a, null, other], |_, _| true);
        assert_eq!(sets.len(), 1);
        assert_eq!(sets[0].name().as_str(), "mx1.example.test.");
        assert_eq!(problems.len(), 1, "{problems:?}");
    }
}
