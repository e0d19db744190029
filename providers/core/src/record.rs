//! Records and record sets: the values mxguard reads from and writes to DNS providers.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Fqdn, ModelError};

/// A record TTL in seconds. RFC 2181 §8 caps TTLs at 2^31 − 1.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct Ttl(u32);

impl Ttl {
    pub const MAX: u32 = 2_147_483_647;

    pub fn new(secs: u32) -> Result<Self, ModelError> {
        if secs > Self::MAX {
            return Err(ModelError::InvalidTtl(secs.to_string()));
        }
        Ok(Ttl(secs))
    }

    pub fn secs(self) -> u32 {
        self.0
    }
}

impl TryFrom<u32> for Ttl {
    type Error = ModelError;
    fn try_from(v: u32) -> Result<Self, Self::Error> {
        Ttl::new(v)
    }
}

impl From<Ttl> for u32 {
    fn from(t: Ttl) -> u32 {
        t.0
    }
}

impl fmt::Display for Ttl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// MX preference (lower is preferred).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub struct Preference(pub u16);

impl fmt::Display for Preference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One MX record: preference and exchange. `0 .` is the Null MX of RFC 7505
/// ("this domain accepts no mail").
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct MxRecord {
    pub preference: Preference,
    pub exchange: Fqdn,
}

impl MxRecord {
    pub fn new(preference: u16, exchange: Fqdn) -> Self {
        MxRecord {
            preference: Preference(preference),
            exchange,
        }
    }

    pub fn null() -> Self {
        MxRecord::new(0, Fqdn::root())
    }

    pub fn is_null(&self) -> bool {
        self.exchange.is_root()
    }

    /// Parses `10 mx1.example.com.` (the exchange may omit its trailing dot).
    pub fn parse(input: &str) -> Result<Self, ModelError> {
        let bad = |why: &str| ModelError::InvalidRecord {
            rtype: RecordType::Mx,
            input: input.to_string(),
            reason: why.to_string(),
        };
        let mut parts = input.split_whitespace();
        let (Some(pref), Some(host), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad(
                "expected \"PREFERENCE EXCHANGE\", e.g. \"10 mx1.example.com.\"",
            ));
        };
        let preference: u16 = pref
            .parse()
            .map_err(|_| bad("preference must be a number 0..=65535"))?;
        let exchange = Fqdn::parse(host).map_err(|e| bad(&e.to_string()))?;
        if exchange.is_root() && preference != 0 {
            return Err(bad("a Null MX (RFC 7505) must have preference 0"));
        }
        Ok(MxRecord::new(preference, exchange))
    }
}

impl fmt::Display for MxRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.preference, self.exchange)
    }
}

/// The record types mxguard manages.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum RecordType {
    Mx,
    A,
    Aaaa,
    Txt,
}

impl RecordType {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordType::Mx => "MX",
            RecordType::A => "A",
            RecordType::Aaaa => "AAAA",
            RecordType::Txt => "TXT",
        }
    }
}

impl fmt::Display for RecordType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RecordType {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "MX" => Ok(RecordType::Mx),
            "A" => Ok(RecordType::A),
            "AAAA" => Ok(RecordType::Aaaa),
            "TXT" => Ok(RecordType::Txt),
            _ => Err(ModelError::UnsupportedType(s.to_string())),
        }
    }
}

/// The data of one record. TXT holds the logical (concatenated) text; splitting into
/// 255-byte character-strings is the wire format's business.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub enum RData {
    Mx(MxRecord),
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Txt(String),
}

impl RData {
    pub fn rtype(&self) -> RecordType {
        match self {
            RData::Mx(_) => RecordType::Mx,
            RData::A(_) => RecordType::A,
            RData::Aaaa(_) => RecordType::Aaaa,
            RData::Txt(_) => RecordType::Txt,
        }
    }

    /// Parses presentation format for `rtype`: `10 mx.example.com.`, `192.0.2.1`, `2001:db8::1`,
    /// and for TXT either bare text or one or more quoted strings (`"v=spf1 " "-all"`).
    pub fn parse(rtype: RecordType, input: &str) -> Result<Self, ModelError> {
        let bad = |why: &str| ModelError::InvalidRecord {
            rtype,
            input: input.to_string(),
            reason: why.to_string(),
        };
        match rtype {
            RecordType::Mx => MxRecord::parse(input).map(RData::Mx),
            RecordType::A => input
                .trim()
                .parse::<Ipv4Addr>()
                .map(RData::A)
                .map_err(|_| bad("expected an IPv4 address")),
            RecordType::Aaaa => input
                .trim()
                .parse::<Ipv6Addr>()
                .map(RData::Aaaa)
                .map_err(|_| bad("expected an IPv6 address")),
            RecordType::Txt => parse_txt(input).map(RData::Txt).map_err(bad),
        }
    }
}

fn parse_txt(input: &str) -> Result<String, &'static str> {
    let s = input.trim();
    if !s.starts_with('"') {
        return Ok(s.to_string());
    }
    let mut out = String::new();
    let mut chars = s.chars();
    loop {
        match chars.next() {
            None => return Ok(out),
            Some(c) if c.is_whitespace() => continue,
            Some('"') => loop {
                match chars.next() {
                    None => return Err("unterminated quoted string"),
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some(c) => out.push(c),
                        None => return Err("dangling backslash"),
                    },
                    Some(c) => out.push(c),
                }
            },
            Some(_) => return Err("text between quoted strings must be quoted"),
        }
    }
}

impl fmt::Display for RData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RData::Mx(mx) => write!(f, "{mx}"),
            RData::A(ip) => write!(f, "{ip}"),
            RData::Aaaa(ip) => write!(f, "{ip}"),
            RData::Txt(t) => write!(f, "\"{}\"", t.replace('\\', "\\\\").replace('"', "\\\"")),
        }
    }
}

/// An RRset: every record of one type at one name, with one TTL.
///
/// Invariants, enforced by [`RecordSet::new`]: at least one record, all of `rtype`, no
/// duplicates, and a Null MX stands alone. Records are kept in canonical (sorted) order, so
/// equality ignores the order they were given in.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(try_from = "RecordSetWire", into = "RecordSetWire")]
pub struct RecordSet {
    name: Fqdn,
    rtype: RecordType,
    ttl: Ttl,
    records: Vec<RData>,
}

impl RecordSet {
    pub fn new(
        name: Fqdn,
        rtype: RecordType,
        ttl: Ttl,
        records: impl IntoIterator<Item = RData>,
    ) -> Result<Self, ModelError> {
        let mut records: Vec<RData> = records.into_iter().collect();
        if records.is_empty() {
            return Err(ModelError::EmptyRecordSet {
                name: name.to_string(),
                rtype,
            });
        }
        if let Some(other) = records.iter().find(|r| r.rtype() != rtype) {
            return Err(ModelError::MixedTypes {
                name: name.to_string(),
                expected: rtype,
                found: other.rtype(),
            });
        }
        records.sort();
        if let Some(w) = records.windows(2).find(|w| w[0] == w[1]) {
            return Err(ModelError::DuplicateRecord {
                name: name.to_string(),
                record: w[0].to_string(),
            });
        }
        let has_null = records
            .iter()
            .any(|r| matches!(r, RData::Mx(mx) if mx.is_null()));
        if has_null && records.len() > 1 {
            return Err(ModelError::NullMxNotAlone {
                name: name.to_string(),
            });
        }
        Ok(RecordSet {
            name,
            rtype,
            ttl,
            records,
        })
    }

    /// Parses each record in presentation format (see [`RData::parse`]).
    pub fn parse<S: AsRef<str>>(
        name: Fqdn,
        rtype: RecordType,
        ttl: Ttl,
        records: &[S],
    ) -> Result<Self, ModelError> {
        let data = records
            .iter()
            .map(|r| RData::parse(rtype, r.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        RecordSet::new(name, rtype, ttl, data)
    }

    pub fn name(&self) -> &Fqdn {
        &self.name
    }
    pub fn rtype(&self) -> RecordType {
        self.rtype
    }
    pub fn ttl(&self) -> Ttl {
        self.ttl
    }
    pub fn records(&self) -> &[RData] {
        &self.records
    }

    /// The same records with another TTL.
    pub fn with_ttl(&self, ttl: Ttl) -> RecordSet {
        RecordSet {
            ttl,
            ..self.clone()
        }
    }

    /// Same records at the same name and type, whatever the TTL.
    pub fn same_records(&self, other: &RecordSet) -> bool {
        self.name == other.name && self.rtype == other.rtype && self.records == other.records
    }

    /// The MX records, when this is an MX set.
    pub fn mx_records(&self) -> impl Iterator<Item = &MxRecord> {
        self.records.iter().filter_map(|r| match r {
            RData::Mx(mx) => Some(mx),
            _ => None,
        })
    }
}

impl fmt::Display for RecordSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.records.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{} {} IN {} {}", self.name, self.ttl, self.rtype, r)?;
        }
        Ok(())
    }
}

/// Serialized shape: `{"name": "example.com.", "type": "MX", "ttl": 300, "records": ["10 mx1.example.com."]}`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordSetWire {
    name: Fqdn,
    #[serde(rename = "type")]
    rtype: RecordType,
    ttl: Ttl,
    records: Vec<String>,
}

impl TryFrom<RecordSetWire> for RecordSet {
    type Error = ModelError;
    fn try_from(w: RecordSetWire) -> Result<Self, Self::Error> {
        RecordSet::parse(w.name, w.rtype, w.ttl, &w.records)
    }
}

impl From<RecordSet> for RecordSetWire {
    fn from(s: RecordSet) -> Self {
        RecordSetWire {
            records: s.records.iter().map(|r| r.to_string()).collect(),
            name: s.name,
            rtype: s.rtype,
            ttl: s.ttl,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn name(s: &str) -> Fqdn {
        Fqdn::parse(s).unwrap()
    }

    fn mx_set(records: &[&str]) -> Result<RecordSet, ModelError> {
        RecordSet::parse(
            name("example.com"),
            RecordType::Mx,
            Ttl::new(300).unwrap(),
            records,
        )
    }

    #[test]
    fn mx_parses_and_prints_canonically() {
        let mx = MxRecord::parse("10 MX1.Example.com").unwrap();
        assert_eq!(mx.to_string(), "10 mx1.example.com.");
        assert!(MxRecord::parse("mx1.example.com").is_err());
        assert!(MxRecord::parse("70000 mx1.example.com").is_err());
        assert!(MxRecord::parse("10 mx1.example.com extra").is_err());
    }

    #[test]
    fn null_mx_is_representable_and_stands_alone() {
        let set = mx_set(&["0 ."]).unwrap();
        assert!(set.mx_records().all(|m| m.is_null()));
        assert_eq!(set.to_string(), "example.com. 300 IN MX 0 .");
        assert!(matches!(
            mx_set(&["0 .", "10 mx.example.com."]),
            Err(ModelError::NullMxNotAlone { .. })
        ));
        assert!(MxRecord::parse("10 .").is_err());
    }

    #[test]
    fn set_equality_ignores_order_and_case() {
        let a = mx_set(&["10 mx1.example.com.", "20 mx2.example.com."]).unwrap();
        let b = mx_set(&["20 MX2.example.com", "10 mx1.example.com."]).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn ttl_is_part_of_equality_but_not_of_same_records() {
        let a = mx_set(&["10 mx1.example.com."]).unwrap();
        let b = a.with_ttl(Ttl::new(60).unwrap());
        assert_ne!(a, b);
        assert!(a.same_records(&b));
    }

    #[test]
    fn rejects_empty_duplicate_and_mixed_sets() {
        assert!(matches!(
            mx_set(&[]),
            Err(ModelError::EmptyRecordSet { .. })
        ));
        assert!(matches!(
            mx_set(&["10 mx1.example.com.", "10 MX1.example.com"]),
            Err(ModelError::DuplicateRecord { .. })
        ));
        let mixed = RecordSet::new(
            name("example.com"),
            RecordType::A,
            Ttl::new(60).unwrap(),
            [RData::Aaaa("2001:db8::1".parse().unwrap())],
        );
        assert!(matches!(mixed, Err(ModelError::MixedTypes { .. })));
    }

    #[test]
    fn ttl_bounds() {
        assert!(Ttl::new(Ttl::MAX).is_ok());
        assert!(Ttl::new(Ttl::MAX + 1).is_err());
    }

    #[test]
    fn txt_quoted_and_bare() {
        let q = RData::parse(RecordType::Txt, r#""v=spf1 " "ip4:192.0.2.1 -all""#).unwrap();
        let b = RData::parse(RecordType::Txt, "v=spf1 ip4:192.0.2.1 -all").unwrap();
        assert_eq!(q, b);
        assert!(RData::parse(RecordType::Txt, r#""unterminated"#).is_err());
        let esc = RData::Txt(r#"a "quoted" \ word"#.to_string());
        assert_eq!(
            RData::parse(RecordType::Txt, &esc.to_string()).unwrap(),
            esc
        );
    }

    #[test]
    fn serde_round_trip_and_validation() {
        let set = mx_set(&["20 mx2.example.com.", "10 mx1.example.com."]).unwrap();
        let json = serde_json::to_string(&set).unwrap();
        assert_eq!(
            json,
            r#"{"name":"example.com.","type":"MX","ttl":300,"records":["10 mx1.example.com.","20 mx2.example.com."]}"#
        );
        let back: RecordSet = serde_json::from_str(&json).unwrap();
        assert_eq!(back, set);
        let dup = r#"{"name":"example.com.","type":"MX","ttl":300,"records":["10 a.example.","10 A.example."]}"#;
        assert!(serde_json::from_str::<RecordSet>(dup).is_err());
        let empty = r#"{"name":"example.com.","type":"A","ttl":300,"records":[]}"#;
        assert!(serde_json::from_str::<RecordSet>(empty).is_err());
    }

    fn arb_mx() -> impl Strategy<Value = RData> {
        (0u16..100, "[a-z]{1,8}(\\.[a-z]{1,8}){1,2}")
            .prop_map(|(p, h)| RData::Mx(MxRecord::new(p, Fqdn::parse(&h).unwrap())))
    }

    proptest! {
        #[test]
        fn any_permutation_gives_the_same_set(recs in proptest::collection::btree_set(arb_mx(), 1..6), seed in any::<u64>()) {
            let mut shuffled: Vec<RData> = recs.iter().cloned().collect();
            // deterministic shuffle from the seed
            let n = shuffled.len();
            for i in 0..n {
                let j = (seed.wrapping_mul(i as u64 + 7) % n as u64) as usize;
                shuffled.swap(i, j);
            }
            let ttl = Ttl::new(60).unwrap();
            let a = RecordSet::new(name("example.com"), RecordType::Mx, ttl, recs.iter().cloned()).unwrap();
            let b = RecordSet::new(name("example.com"), RecordType::Mx, ttl, shuffled).unwrap();
            prop_assert_eq!(&a, &b);
            let json = serde_json::to_string(&a).unwrap();
            let back: RecordSet = serde_json::from_str(&json).unwrap();
            prop_assert_eq!(back, a);
        }
    }
}
