//! The generic webhook: one JSON document per event, signed.
//!
//! Signature: `X-Mxguard-Signature: sha256=HEX` where HEX is the HMAC-SHA256, keyed with the
//! target's secret, of `TIMESTAMP + "." + BODY` — the `X-Mxguard-Timestamp` header (Unix
//! seconds) and the raw body bytes. Signing the timestamp lets a receiver refuse replays (reject
//! one more than a few minutes old); each retry is signed again with a fresh timestamp, the body
//! staying byte for byte the same.

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use super::classify::{time, Item};

pub const SIGNATURE_HEADER: &str = "x-mxguard-signature";
pub const TIMESTAMP_HEADER: &str = "x-mxguard-timestamp";
pub const EVENT_HEADER: &str = "x-mxguard-event";
pub const DELIVERY_HEADER: &str = "x-mxguard-delivery";

/// `sha256=` + hex HMAC-SHA256(secret, `{timestamp}.{body}`).
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    // HMAC takes a key of any length; `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

/// The document: the event, the machine's state, the incident, the severity and the links.
pub fn payload(item: &Item) -> Value {
    let e = &item.notice.event;
    json!({
        "version": 1,
        "domain": item.domain(),
        "severity": item.severity,
        "resolves_incident": item.resolves,
        "event": {
            "id": e.id,
            "kind": e.kind,
            "at": time(e.at),
            "actor": e.actor,
            "reason": e.reason,
            "message": e.message,
            "evidence": e.evidence,
        },
        "state": item.state_json(),
        "incident": item.incident_json(),
        "links": item.links.json(),
    })
}
