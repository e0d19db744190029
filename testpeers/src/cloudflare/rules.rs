//! The fake's validation rules (reference §6 and §10): per-type content, TTL bounds, names
//! inside the zone, proxying, and the identical-record refusal.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::records::{ApiError, Fields, PatchIn, Record};

/// The zone a record lives in, and the rules that depend on it.
pub struct Rules<'a> {
    pub zone: &'a str,
    pub min_ttl: u32,
}

impl Rules<'_> {
    /// Validates a full record (create / put / patched result) into its stored form.
    pub fn record(&self, id: String, fields: Fields<'_>) -> Result<Record, ApiError> {
        let Fields {
            rtype,
            name,
            content,
            ttl,
            priority,
            proxied,
        } = fields;
        if !matches!(rtype, "A" | "AAAA" | "MX" | "TXT") {
            return Err(ApiError::validation(
                9000,
                format!("The fake does not serve record type {rtype:?}."),
            ));
        }
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        if name.is_empty()
            || name.len() > 255
            || !(name == self.zone || name.ends_with(&format!(".{}", self.zone)))
        {
            return Err(ApiError::validation(
                9007,
                format!("Record name {name:?} is not in zone {}.", self.zone),
            ));
        }
        let ttl = ttl.unwrap_or(1);
        if ttl != 1 && !(self.min_ttl..=86_400).contains(&ttl) {
            return Err(ApiError::validation(
                9021,
                format!(
                    "Invalid TTL. Must be between {} and 86400 seconds, or 1 for Automatic.",
                    self.min_ttl
                ),
            ));
        }
        let proxied = proxied.unwrap_or(false);
        if proxied && !matches!(rtype, "A" | "AAAA") {
            return Err(ApiError::validation(
                9004,
                "This kind of record cannot be proxied.",
            ));
        }
        let mut priority_out = None;
        let content = match rtype {
            "A" => content
                .parse::<Ipv4Addr>()
                .map(|ip| ip.to_string())
                .map_err(|_| {
                    ApiError::validation(9005, "Content for A record must be a valid IPv4 address.")
                })?,
            "AAAA" => content
                .parse::<Ipv6Addr>()
                .map(|ip| ip.to_string())
                .map_err(|_| {
                    ApiError::validation(
                        9006,
                        "Content for AAAA record must be a valid IPv6 address.",
                    )
                })?,
            "MX" => {
                let p = priority.ok_or_else(|| {
                    ApiError::validation(9100, "Priority is required for MX records.")
                })?;
                priority_out = Some(u16::try_from(p).map_err(|_| {
                    ApiError::validation(9101, "Priority must be between 0 and 65535.")
                })?);
                mx_target(content)?
            }
            _ => {
                txt(content)?;
                content.to_string()
            }
        };
        if rtype != "MX" && priority.is_some() {
            return Err(ApiError::validation(
                9102,
                format!("priority is not a field of {rtype} records"),
            ));
        }
        Ok(Record {
            id,
            rtype: rtype.to_string(),
            name,
            content,
            priority: priority_out,
            ttl,
            proxied,
        })
    }
}

fn mx_target(content: &str) -> Result<String, ApiError> {
    if content == "." {
        return Ok(".".into());
    }
    let host = content
        .strip_suffix('.')
        .unwrap_or(content)
        .to_ascii_lowercase();
    let ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !ok {
        return Err(ApiError::validation(
            9103,
            format!("MX content {content:?} is not a valid hostname."),
        ));
    }
    Ok(host)
}

/// TXT content: at most 2,048 characters; when quoted, every character-string ≤ 255 bytes.
fn txt(content: &str) -> Result<(), ApiError> {
    if content.chars().count() > 2_048 {
        return Err(ApiError::validation(
            9104,
            "TXT content is longer than 2048 characters.",
        ));
    }
    if !content.starts_with('"') {
        return Ok(());
    }
    let bytes = content.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b' ' => i += 1,
            b'"' => {
                i += 1;
                let mut len = 0;
                loop {
                    match bytes.get(i) {
                        None => {
                            return Err(ApiError::validation(
                                9105,
                                "Unterminated quoted string in TXT content.",
                            ))
                        }
                        Some(b'"') => break,
                        Some(b'\\') => i += 2,
                        Some(_) => i += 1,
                    }
                    len += 1;
                }
                i += 1;
                if len > 255 {
                    return Err(ApiError::validation(
                        9106,
                        "A TXT character-string is longer than 255 bytes.",
                    ));
                }
            }
            _ => {
                return Err(ApiError::validation(
                    9105,
                    "Text between quoted strings in TXT content.",
                ))
            }
        }
    }
    Ok(())
}

/// 81058: an identical record (type, name, content, priority) already exists.
pub fn refuse_identical(records: &[Record], r: &Record) -> Result<(), ApiError> {
    let same = |o: &Record| {
        o.id != r.id
            && o.rtype == r.rtype
            && o.name == r.name
            && o.content == r.content
            && o.priority == r.priority
    };
    if records.iter().any(same) {
        return Err(ApiError::new(
            400,
            81058,
            "An identical record already exists.",
        ));
    }
    Ok(())
}

pub fn find(records: &[Record], id: &str) -> Result<usize, ApiError> {
    records
        .iter()
        .position(|r| r.id == id)
        .ok_or_else(|| ApiError::new(404, 81044, "Record does not exist."))
}

/// Applies a patch onto `old` and validates the result.
pub fn patched(rules: &Rules<'_>, old: &Record, p: PatchIn) -> Result<Record, ApiError> {
    let rtype = p.rtype.unwrap_or_else(|| old.rtype.clone());
    let name = p.name.unwrap_or_else(|| old.name.clone());
    let content = p.content.unwrap_or_else(|| old.content.clone());
    let priority = p.priority.or(old.priority.map(u32::from));
    let fields = Fields {
        rtype: &rtype,
        name: &name,
        content: &content,
        ttl: p.ttl.or(Some(old.ttl)),
        priority,
        proxied: p.proxied.or(Some(old.proxied)),
    };
    rules.record(old.id.clone(), fields)
}
