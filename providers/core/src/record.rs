//! Records and record sets: the values mxguard reads from and writes to DNS providers.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::txt::{self, Escapes};
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
    /// and for TXT either bare text or one or more quoted strings (`"v=spf1 " "-all"`, with
    /// `\"`, `\\` and `\DDD` escapes: see [`txt::decode_presentation`]).
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
            RecordType::Txt => txt::decode_presentation(input, Escapes::Decimal)
                .map(RData::Txt)
                .map_err(|e| bad(&e.to_string())),
        }
    }
}

impl fmt::Display for RData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RData::Mx(mx) => write!(f, "{mx}"),
            RData::A(ip) => write!(f, "{ip}"),
            RData::Aaaa(ip) => write!(f, "{ip}"),
            RData::Txt(t) => f.write_str(&txt::quote(t)),
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
mod tests;
