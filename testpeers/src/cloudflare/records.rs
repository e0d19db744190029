//! The fake's record rules, from `shared/reference/cloudflare-dns-api.md` §5–§7 and §10:
//! strict request bodies, per-type validation, identical-record refusal, and the batch applied
//! deletes → patches → puts → posts on a copy, all or nothing.

use serde::Deserialize;
use serde_json::{json, Value};

/// An error the fake answers with: HTTP status, code, message, and an `error_chain` cause.
#[derive(Clone, Debug)]
pub struct ApiError {
    pub status: u16,
    pub code: i64,
    pub message: String,
    pub chain: Option<(i64, String)>,
    /// More entries of `errors[]` after the first (Cloudflare sends 7003 with 7000).
    pub also: Vec<(i64, String)>,
}

impl ApiError {
    pub fn new(status: u16, code: i64, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            chain: None,
            also: Vec::new(),
        }
    }

    /// 400 / 7003 + 7000, Cloudflare's answer for a zone or record id it cannot route to
    /// (unknown, malformed, or not the token's).
    pub fn unroutable(path: &str) -> Self {
        ApiError {
            also: vec![(7000, "No route for that URI".into())],
            ..ApiError::new(
                400,
                7003,
                format!("Could not route to {path}, perhaps your object identifier is invalid?"),
            )
        }
    }

    /// Every entry of `errors[]`.
    pub fn errors_json(&self) -> Vec<Value> {
        let mut out = vec![self.to_json()];
        out.extend(
            self.also
                .iter()
                .map(|(code, message)| json!({"code": code, "message": message})),
        );
        out
    }

    /// 400 / 1004 "DNS Validation Error" with the specific cause in `error_chain`.
    pub fn validation(code: i64, message: impl Into<String>) -> Self {
        ApiError {
            chain: Some((code, message.into())),
            ..ApiError::new(400, 1004, "DNS Validation Error")
        }
    }

    pub fn to_json(&self) -> Value {
        let mut e = json!({"code": self.code, "message": self.message});
        if let Some((code, message)) = &self.chain {
            e["error_chain"] = json!([{"code": code, "message": message}]);
        }
        e
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub id: String,
    pub rtype: String,
    pub name: String,
    pub content: String,
    pub priority: Option<u16>,
    pub ttl: u32,
    pub proxied: bool,
}

impl Record {
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "id": self.id, "type": self.rtype, "name": self.name, "content": self.content,
            "ttl": self.ttl, "proxied": self.proxied,
            "proxiable": matches!(self.rtype.as_str(), "A" | "AAAA"),
            "comment": null, "tags": [], "settings": {}, "meta": {},
            "created_on": "2026-01-01T00:00:00Z", "modified_on": "2026-01-01T00:00:00Z",
        });
        if let Some(p) = self.priority {
            v["priority"] = json!(p);
        }
        v
    }
}

/// A create / put body. Unknown fields and wrong types are refused by serde.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordIn {
    #[serde(rename = "type")]
    pub rtype: String,
    pub name: String,
    pub content: String,
    pub ttl: Option<u32>,
    pub priority: Option<u32>,
    pub proxied: Option<bool>,
    pub comment: Option<String>,
    pub tags: Option<Vec<String>>,
}

/// A patch body: every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchIn {
    #[serde(rename = "type")]
    pub rtype: Option<String>,
    pub name: Option<String>,
    pub content: Option<String>,
    pub ttl: Option<u32>,
    pub priority: Option<u32>,
    pub proxied: Option<bool>,
    pub comment: Option<String>,
    pub tags: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdIn {
    pub id: String,
}

/// (serde cannot deny unknown fields of a flattened struct, so the fields are repeated.)
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchWithId {
    pub id: String,
    #[serde(rename = "type")]
    pub rtype: Option<String>,
    pub name: Option<String>,
    pub content: Option<String>,
    pub ttl: Option<u32>,
    pub priority: Option<u32>,
    pub proxied: Option<bool>,
    pub comment: Option<String>,
    pub tags: Option<Vec<String>>,
}

impl PatchWithId {
    pub fn split(self) -> (String, PatchIn) {
        let p = PatchIn {
            rtype: self.rtype,
            name: self.name,
            content: self.content,
            ttl: self.ttl,
            priority: self.priority,
            proxied: self.proxied,
            comment: self.comment,
            tags: self.tags,
        };
        (self.id, p)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutWithId {
    pub id: String,
    #[serde(rename = "type")]
    pub rtype: String,
    pub name: String,
    pub content: String,
    pub ttl: Option<u32>,
    pub priority: Option<u32>,
    pub proxied: Option<bool>,
    pub comment: Option<String>,
    pub tags: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchIn {
    #[serde(default)]
    pub deletes: Vec<IdIn>,
    #[serde(default)]
    pub patches: Vec<PatchWithId>,
    #[serde(default)]
    pub puts: Vec<PutWithId>,
    #[serde(default)]
    pub posts: Vec<RecordIn>,
}

impl BatchIn {
    /// Record operations in the batch, the four lists together.
    pub fn len(&self) -> usize {
        self.deletes.len() + self.patches.len() + self.puts.len() + self.posts.len()
    }

    /// An empty batch (`{}`): valid, and changes nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Parses a JSON body strictly; a bad body is 400 with the serde message as the cause.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let mut err = ApiError::new(400, 9207, "Request body is invalid.");
        err.chain = Some((9207, e.to_string()));
        err
    })
}

/// The fields of a full record: a create or put body, or a patch applied to a record.
pub struct Fields<'a> {
    pub rtype: &'a str,
    pub name: &'a str,
    pub content: &'a str,
    pub ttl: Option<u32>,
    pub priority: Option<u32>,
    pub proxied: Option<bool>,
}

macro_rules! fields_of {
    ($t:ty) => {
        impl $t {
            pub fn fields(&self) -> Fields<'_> {
                Fields {
                    rtype: &self.rtype,
                    name: &self.name,
                    content: &self.content,
                    ttl: self.ttl,
                    priority: self.priority,
                    proxied: self.proxied,
                }
            }
        }
    };
}

fields_of!(RecordIn);
fields_of!(PutWithId);
