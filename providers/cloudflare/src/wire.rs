//! Cloudflare's JSON shapes (private to this crate) and the conversions between Cloudflare's
//! one-object-per-record model and mxguard's RRsets.

use std::collections::BTreeMap;

use mxguard_core::txt::{self, Escapes};
use mxguard_core::{Fqdn, MxRecord, RData, RecordSet, RecordType, RrsetKey, Ttl};
use serde::{Deserialize, Serialize};

/// The envelope every endpoint answers with. Unknown fields are ignored.
#[derive(Debug, Deserialize)]
pub(crate) struct Envelope<T> {
    #[serde(default)]
    pub success: bool,
    #[serde(default)]
    pub errors: Vec<ApiMessage>,
    pub result: Option<T>,
    pub result_info: Option<ResultInfo>,
}

/// One entry of `errors[]` / `messages[]`; live errors carry the cause in `error_chain`.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct ApiMessage {
    #[serde(default)]
    pub code: i64,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub error_chain: Vec<ApiMessage>,
}

impl std::fmt::Display for ApiMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.message)?;
        for cause in &self.error_chain {
            write!(f, " ({cause})")?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize)]
pub(crate) struct ResultInfo {
    #[serde(default)]
    pub total_pages: Option<u32>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Zone {
    pub id: String,
    pub name: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct TokenStatus {
    #[serde(default)]
    pub status: String,
}

/// A record as Cloudflare returns it (the fields mxguard reads).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub(crate) struct DnsRecord {
    pub id: String,
    #[serde(rename = "type")]
    pub rtype: String,
    pub name: String,
    #[serde(default)]
    pub content: String,
    #[serde(default)]
    pub priority: Option<u16>,
    pub ttl: u32,
    #[serde(default)]
    pub proxied: Option<bool>,
}

/// A record as mxguard writes it: always type, name, content, ttl (and priority for MX);
/// A/AAAA always `proxied: false` — an address behind an MX must be the real one.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub(crate) struct RecordBody {
    #[serde(rename = "type")]
    pub rtype: &'static str,
    pub name: String,
    pub content: String,
    pub ttl: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxied: Option<bool>,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct WithId {
    pub id: String,
    #[serde(flatten)]
    pub body: RecordBody,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct IdOnly {
    pub id: String,
}

/// `POST /zones/{zone_id}/dns_records/batch`: applied deletes → patches → puts → posts.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct BatchRequest {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deletes: Vec<IdOnly>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub patches: Vec<WithId>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub puts: Vec<WithId>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub posts: Vec<RecordBody>,
}

impl BatchRequest {
    pub fn len(&self) -> usize {
        self.deletes.len() + self.patches.len() + self.puts.len() + self.posts.len()
    }
}

/// Cloudflare's "automatic" TTL, and what it means for DNS-only records (seconds).
pub(crate) const AUTO_TTL: u32 = 1;
pub(crate) const AUTO_TTL_SECS: u32 = 300;
/// Most characters in one TXT record's content.
pub(crate) const MAX_TXT_CONTENT: usize = 2_048;

pub(crate) fn parse_type(s: &str) -> Option<RecordType> {
    match s {
        "MX" => Some(RecordType::Mx),
        "A" => Some(RecordType::A),
        "AAAA" => Some(RecordType::Aaaa),
        "TXT" => Some(RecordType::Txt),
        _ => None,
    }
}

/// The body of one record of `set`, with `ttl` (already raised to the zone's minimum).
pub(crate) fn body(name: &Fqdn, data: &RData, ttl: u32) -> RecordBody {
    let (content, priority, proxied) = match data {
        RData::Mx(mx) => (
            mx.exchange.without_dot().to_string(),
            Some(mx.preference.0),
            None,
        ),
        RData::A(ip) => (ip.to_string(), None, Some(false)),
        RData::Aaaa(ip) => (ip.to_string(), None, Some(false)),
        RData::Txt(text) => (encode_txt(text), None, None),
    };
    RecordBody {
        rtype: data.rtype().as_str(),
        name: name.without_dot().to_string(),
        content,
        ttl,
        priority,
        proxied,
    }
}

/// The record's data in mxguard's model.
pub(crate) fn rdata(r: &DnsRecord) -> Result<RData, String> {
    let rtype = parse_type(&r.rtype).ok_or_else(|| format!("unmanaged type {}", r.rtype))?;
    let text = match rtype {
        RecordType::Mx => {
            let pref = r.priority.ok_or("an MX record without a priority")?;
            let exchange = Fqdn::parse(&r.content).map_err(|e| e.to_string())?;
            return Ok(RData::Mx(MxRecord::new(pref, exchange)));
        }
        RecordType::Txt => return Ok(RData::Txt(decode_txt(&r.content)?)),
        _ => r.content.as_str(),
    };
    RData::parse(rtype, text).map_err(|e| e.to_string())
}

/// Groups records into RRsets at the keys `wanted` accepts. Records of other types are left
/// out; an RRset mxguard cannot hold is returned as a problem, by key and reason. An RRset
/// whose records disagree on TTL reports the longest (what the last resolver may cache);
/// "automatic" counts as 300 s.
pub(crate) fn group(
    records: &[DnsRecord],
    wanted: impl Fn(&RrsetKey) -> bool,
) -> (Vec<RecordSet>, Vec<(String, String)>) {
    let mut by_key: BTreeMap<RrsetKey, Vec<&DnsRecord>> = BTreeMap::new();
    let mut problems = Vec::new();
    for r in records {
        let Some(rtype) = parse_type(&r.rtype) else {
            continue;
        };
        match Fqdn::parse(&r.name) {
            Ok(name) => {
                let key = RrsetKey::new(name, rtype);
                if wanted(&key) {
                    by_key.entry(key).or_default().push(r);
                }
            }
            Err(e) => problems.push((format!("{} {}", r.name, r.rtype), e.to_string())),
        }
    }
    let mut sets = Vec::with_capacity(by_key.len());
    for (key, recs) in by_key {
        match to_set(&key, &recs) {
            Ok(set) => sets.push(set),
            Err(e) => problems.push((format!("{} {}", key.name, key.rtype), e)),
        }
    }
    (sets, problems)
}

pub(crate) fn to_set(key: &RrsetKey, records: &[&DnsRecord]) -> Result<RecordSet, String> {
    let data = records
        .iter()
        .map(|r| rdata(r))
        .collect::<Result<Vec<_>, _>>()?;
    let ttl = records
        .iter()
        .map(|r| effective_ttl(r.ttl))
        .max()
        .unwrap_or(AUTO_TTL_SECS);
    let ttl = Ttl::new(ttl).map_err(|e| e.to_string())?;
    RecordSet::new(key.name.clone(), key.rtype, ttl, data).map_err(|e| e.to_string())
}

pub(crate) fn effective_ttl(ttl: u32) -> u32 {
    if ttl == AUTO_TTL {
        AUTO_TTL_SECS
    } else {
        ttl
    }
}

/// TXT text → Cloudflare content: quoted character-strings of at most 255 bytes each, split
/// on character boundaries, with `"` and `\` escaped.
pub(crate) fn encode_txt(text: &str) -> String {
    txt::encode_presentation(text, Escapes::Decimal)
}

/// Cloudflare content → TXT text: quoted strings are unescaped (`\"`, `\\`, `\DDD`) and joined;
/// unquoted content (records made in the dashboard) is taken as it is.
pub(crate) fn decode_txt(content: &str) -> Result<String, String> {
    txt::decode_presentation(content, Escapes::Decimal)
        .map_err(|e| format!("TXT content {content:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txt_round_trips_through_quoted_chunks() {
        let long = format!("v=spf1 {} -all", "ip4:192.0.2.0/24 ".repeat(20));
        for text in [
            long.as_str(),
            r#"quoted "text" with \ spaces"#,
            "",
            "é".repeat(200).as_str(),
        ] {
            let content = encode_txt(text);
            assert_eq!(decode_txt(&content).unwrap(), text, "{content}");
            for chunk in content.split("\" \"") {
                assert!(chunk.len() <= 255 + 4, "{chunk}");
            }
        }
        assert_eq!(decode_txt("v=spf1 -all").unwrap(), "v=spf1 -all");
        assert_eq!(decode_txt(r#""a\059b""#).unwrap(), "a;b");
        assert!(decode_txt(r#""open"#).is_err());
    }

    #[test]
    fn records_group_into_sets_with_the_longest_ttl_and_auto_as_300() {
        let rec = |id: &str, content: &str, ttl: u32| DnsRecord {
            id: id.into(),
            rtype: "A".into(),
            name: "WWW.example.com".into(),
            content: content.into(),
            priority: None,
            ttl,
            proxied: Some(false),
        };
        let records = [rec("1", "192.0.2.1", 60), rec("2", "192.0.2.2", 1)];
        let (sets, problems) = group(&records, |_| true);
        assert!(problems.is_empty());
        assert_eq!(sets.len(), 1);
        assert_eq!(sets[0].ttl().secs(), 300);
        assert_eq!(sets[0].name().as_str(), "www.example.com.");
    }

    #[test]
    fn null_mx_is_a_dot_with_priority_zero() {
        let name = Fqdn::parse("example.com").unwrap();
        let b = body(&name, &RData::Mx(MxRecord::null()), 300);
        assert_eq!((b.content.as_str(), b.priority), (".", Some(0)));
    }
}
