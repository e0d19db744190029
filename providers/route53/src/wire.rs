//! Route 53's record sets (SDK types, private to this crate) ↔ mxguard's RRsets: names with
//! `\DDD` escapes and trailing dots, MX as `PREF HOST.`, TXT as quoted strings; and the batch
//! limits of `ChangeResourceRecordSets`.

use aws_sdk_route53::types::{ChangeAction, ResourceRecord, ResourceRecordSet, RrType};
use mxguard_core::txt::{self, Escapes};
use mxguard_core::{Fqdn, RData, RecordSet, RecordType, RrsetKey, Ttl};

/// Most `ResourceRecord` elements in one request (an UPSERT counts twice).
pub(crate) const MAX_RECORDS: usize = 1_000;
/// Most characters over all `Value` elements in one request (an UPSERT counts twice).
pub(crate) const MAX_VALUE_CHARS: usize = 32_000;

pub(crate) fn rr_type(t: RecordType) -> RrType {
    match t {
        RecordType::Mx => RrType::Mx,
        RecordType::A => RrType::A,
        RecordType::Aaaa => RrType::Aaaa,
        RecordType::Txt => RrType::Txt,
    }
}

pub(crate) fn record_type(t: &RrType) -> Option<RecordType> {
    match t {
        RrType::Mx => Some(RecordType::Mx),
        RrType::A => Some(RecordType::A),
        RrType::Aaaa => Some(RecordType::Aaaa),
        RrType::Txt => Some(RecordType::Txt),
        _ => None,
    }
}

/// A name as Route 53 returns it (`\052.example.com.`) → text (`*.example.com.`).
pub(crate) fn unescape(name: &str) -> Result<String, String> {
    txt::unescape(name, Escapes::Octal).map_err(|e| format!("name {name:?}: {e}"))
}

pub(crate) fn fqdn(name: &str) -> Result<Fqdn, String> {
    Fqdn::parse(&unescape(name)?).map_err(|e| e.to_string())
}

/// The key of a Route 53 record set, when it is of a type mxguard manages.
pub(crate) fn key_of(rrset: &ResourceRecordSet) -> Result<Option<RrsetKey>, String> {
    let Some(rtype) = record_type(rrset.r#type()) else {
        return Ok(None);
    };
    Ok(Some(RrsetKey::new(fqdn(rrset.name())?, rtype)))
}

/// A Route 53 record set → an RRset; alias and routing-policy sets are not representable.
pub(crate) fn to_set(key: &RrsetKey, rrset: &ResourceRecordSet) -> Result<RecordSet, String> {
    if rrset.alias_target().is_some() {
        return Err("an alias record (mxguard manages plain records only)".into());
    }
    if let Some(id) = rrset.set_identifier() {
        return Err(format!(
            "a routing-policy record (SetIdentifier {id:?}); mxguard manages simple routing only"
        ));
    }
    let ttl = rrset.ttl().ok_or("a record set without a TTL")?;
    let ttl = u32::try_from(ttl)
        .ok()
        .and_then(|t| Ttl::new(t).ok())
        .ok_or_else(|| format!("TTL {ttl} out of range"))?;
    let data = rrset
        .resource_records()
        .iter()
        .map(|r| match key.rtype {
            RecordType::Txt => decode_txt(r.value()).map(RData::Txt),
            t => RData::parse(t, r.value()).map_err(|e| e.to_string()),
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordSet::new(key.name.clone(), key.rtype, ttl, data).map_err(|e| e.to_string())
}

/// An RRset → the record set mxguard sends (names without the trailing dot, as written in
/// Route 53's console; either form is the same name to Route 53).
pub(crate) fn to_rrset(set: &RecordSet) -> Result<ResourceRecordSet, String> {
    let records = set
        .records()
        .iter()
        .map(|r| {
            ResourceRecord::builder()
                .value(value(r))
                .build()
                .map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, _>>()?;
    ResourceRecordSet::builder()
        .name(set.name().without_dot())
        .r#type(rr_type(set.rtype()))
        .ttl(i64::from(set.ttl().secs()))
        .set_resource_records(Some(records))
        .build()
        .map_err(|e| e.to_string())
}

fn value(r: &RData) -> String {
    match r {
        RData::Mx(mx) => format!("{} {}", mx.preference, mx.exchange),
        RData::A(ip) => ip.to_string(),
        RData::Aaaa(ip) => ip.to_string(),
        RData::Txt(t) => encode_txt(t),
    }
}

/// TXT text → `"…" "…"`: character-strings of at most 255 bytes, `"` and `\` escaped, bytes
/// outside printable ASCII as `\OOO` (three octal digits, Route 53's TXT escape).
pub(crate) fn encode_txt(text: &str) -> String {
    txt::encode_presentation(text, Escapes::Octal)
}

/// Route 53 TXT value → text: quoted strings unescaped (`\"`, `\\`, `\OOO` octal) and joined; an
/// unquoted value (Route 53 accepts them) is taken as it is.
pub(crate) fn decode_txt(value: &str) -> Result<String, String> {
    txt::decode_presentation(value, Escapes::Octal).map_err(|e| format!("TXT value {value:?}: {e}"))
}

/// What one change costs against the request limits: (records, value characters).
pub(crate) fn cost(action: &ChangeAction, rrset: &ResourceRecordSet) -> (usize, usize) {
    let records = rrset.resource_records().len();
    let chars: usize = rrset
        .resource_records()
        .iter()
        .map(|r| r.value().chars().count())
        .sum();
    let factor = if *action == ChangeAction::Upsert {
        2
    } else {
        1
    };
    (records * factor, chars * factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_lose_their_escapes_and_dots() {
        assert_eq!(
            fqdn("\\052.Example.com.").unwrap().as_str(),
            "*.example.com."
        );
        assert_eq!(unescape("a\\.b").unwrap(), "a.b");
        assert!(unescape("x\\").is_err());
    }

    #[test]
    fn txt_round_trips() {
        let long = format!("v=spf1 {} -all", "ip4:192.0.2.0/24 ".repeat(20));
        for text in [
            long.as_str(),
            r#"quoted "text" with \ spaces"#,
            "",
            "non-ASCII é ✓",
        ] {
            let v = encode_txt(text);
            assert!(v.is_ascii(), "{v}");
            assert_eq!(decode_txt(&v).unwrap(), text, "{v}");
        }
        assert_eq!(decode_txt("bare words").unwrap(), "bare words");
        assert_eq!(decode_txt(r#""a" "b""#).unwrap(), "ab");
    }

    #[test]
    fn sets_round_trip_and_null_mx_is_written_as_zero_dot() {
        let name = Fqdn::parse("example.com").unwrap();
        let set = RecordSet::parse(
            name.clone(),
            RecordType::Mx,
            Ttl::new(60).unwrap(),
            &["0 ."],
        )
        .unwrap();
        let rrset = to_rrset(&set).unwrap();
        assert_eq!(rrset.name(), "example.com");
        assert_eq!(rrset.resource_records()[0].value(), "0 .");
        let key = key_of(&rrset).unwrap().unwrap();
        assert_eq!(to_set(&key, &rrset).unwrap(), set);
        assert_eq!(cost(&ChangeAction::Upsert, &rrset), (2, 6));
    }
}
