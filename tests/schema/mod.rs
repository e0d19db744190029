//! Checks real answers of the router against `openapi.yaml`: the status is one the operation
//! documents, the Content-Type is one of that response's media types, the body validates against
//! its schema (JSON Schema 2020-12, `$ref`s resolved inside the document, formats checked) and
//! the headers it marks `required` are there. Paths that are no route and methods a route does
//! not serve are checked against `components/responses/NoRoute` and `MethodNotAllowed`.

use std::collections::{BTreeSet, HashMap};

use axum::http::StatusCode;
use jsonschema::{Draft, Validator};
use mxguard::api::OPENAPI;
use serde_json::Value;

use crate::common::api::Reply;

pub const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

/// The document, its compiled schemas, what was seen and what failed.
pub struct Doc {
    pub doc: Value,
    validators: HashMap<String, Validator>,
    /// (METHOD, path template, status) of every answer checked.
    pub seen: BTreeSet<(String, String, u16)>,
    pub failures: Vec<String>,
}

/// `#/a/b` of a JSON pointer's parts, escaped.
pub fn pointer(parts: &[&str]) -> String {
    let mut p = String::from("#");
    for part in parts {
        p.push('/');
        p.push_str(&part.replace('~', "~0").replace('/', "~1"));
    }
    p
}

/// The media type without its parameters, lower case.
pub fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

impl Doc {
    pub fn load() -> Doc {
        let doc: Value = serde_norway::from_str(OPENAPI).expect("openapi.yaml parses");
        Doc {
            doc,
            validators: HashMap::new(),
            seen: BTreeSet::new(),
            failures: Vec::new(),
        }
    }

    /// The value at a `#/…` pointer of the document.
    pub fn at(&self, ptr: &str) -> Option<&Value> {
        self.doc.pointer(ptr.strip_prefix('#').unwrap_or(ptr))
    }

    /// The schema at `ptr`, compiled with the whole document as its root so that its `$ref`s
    /// resolve; compiled once.
    pub fn validator(&mut self, ptr: &str) -> &Validator {
        if !self.validators.contains_key(ptr) {
            assert!(self.at(ptr).is_some(), "no schema at {ptr}");
            let mut root = self.doc.clone();
            let map = root.as_object_mut().expect("the document is an object");
            map.insert(
                "$schema".into(),
                "https://json-schema.org/draft/2020-12/schema".into(),
            );
            // A URI fragment: the braces of path templates are percent-encoded.
            let fragment = ptr.replace('{', "%7B").replace('}', "%7D");
            map.insert("$ref".into(), fragment.into());
            let v = jsonschema::options()
                .with_draft(Draft::Draft202012)
                .should_validate_formats(true)
                .build(&root)
                .unwrap_or_else(|e| panic!("the schema at {ptr} compiles: {e}"));
            self.validators.insert(ptr.to_string(), v);
        }
        &self.validators[ptr]
    }

    /// What is wrong with `instance` under the schema at `ptr` (empty: valid).
    pub fn errors(&mut self, ptr: &str, instance: &Value) -> Vec<String> {
        self.validator(ptr)
            .iter_errors(instance)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect()
    }

    /// The path template of the document that `path` (no query) is an instance of.
    pub fn template(&self, path: &str) -> Option<String> {
        let segs: Vec<&str> = path.split('/').collect();
        let paths = self.doc["paths"].as_object()?;
        paths
            .keys()
            .find(|t| {
                let ts: Vec<&str> = t.split('/').collect();
                ts.len() == segs.len()
                    && ts
                        .iter()
                        .zip(&segs)
                        .all(|(t, s)| t == s || (t.starts_with('{') && !s.is_empty()))
            })
            .cloned()
    }

    /// A response object's pointer, following one `$ref`.
    fn resolve(&self, ptr: String) -> String {
        match self.at(&ptr).and_then(|r| r["$ref"].as_str()) {
            Some(target) => target.to_string(),
            None => ptr,
        }
    }

    /// Checks `reply` to `method path` (the path as sent, query included); records what is
    /// wrong in `failures` and the answer in `seen`.
    pub fn check(&mut self, method: &str, path: &str, reply: &Reply) {
        let path = path.split('?').next().unwrap_or(path);
        let status = reply.status.as_u16();
        let what = format!("{method} {path} → {status}");
        let m = method.to_ascii_lowercase();
        let operation = self
            .template(path)
            .filter(|t| self.doc["paths"][t][&m].is_object());
        let response = match &operation {
            Some(t) => {
                self.seen.insert((method.to_string(), t.clone(), status));
                let ptr = pointer(&["paths", t, &m, "responses", &status.to_string()]);
                if self.at(&ptr).is_none() {
                    self.failures.push(format!(
                        "{what}: status {status} is not documented for {method} {t}: {}",
                        reply.text
                    ));
                    return;
                }
                self.resolve(ptr)
            }
            // Not an operation: the answers every path and method may get.
            None => {
                let (name, want) = if self.template(path).is_some() {
                    ("MethodNotAllowed", StatusCode::METHOD_NOT_ALLOWED)
                } else {
                    ("NoRoute", StatusCode::NOT_FOUND)
                };
                if reply.status != want {
                    self.failures
                        .push(format!("{what}: not an operation, so {want} is the answer"));
                    return;
                }
                pointer(&["components", "responses", name])
            }
        };
        self.check_response(&what, &response, reply);
    }

    /// Checks `reply` against the response object at `ptr`.
    pub fn check_response(&mut self, what: &str, ptr: &str, reply: &Reply) {
        let response = self.at(ptr).cloned().unwrap_or(Value::Null);
        if let Some(headers) = response["headers"].as_object() {
            for (name, h) in headers {
                if h["required"] == Value::Bool(true) && !reply.headers.contains_key(name.as_str())
                {
                    self.failures
                        .push(format!("{what}: the required header {name} is missing"));
                }
            }
        }
        let ct = reply
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(essence);
        let Some(content) = response["content"].as_object() else {
            if !reply.text.is_empty() || ct.is_some() {
                self.failures.push(format!(
                    "{what}: documented without a body, answered {ct:?}: {}",
                    reply.text
                ));
            }
            return;
        };
        let Some(ct) = ct.clone().filter(|ct| content.contains_key(ct)) else {
            self.failures.push(format!(
                "{what}: Content-Type {ct:?} is not one of {:?}",
                content.keys().collect::<Vec<_>>()
            ));
            return;
        };
        let schema = format!("{ptr}/content/{}/schema", ct.replace('/', "~1"));
        let instance = if ct.ends_with("json") {
            match serde_json::from_str(&reply.text) {
                Ok(v) => v,
                Err(e) => {
                    self.failures.push(format!(
                        "{what}: {ct} body is not JSON ({e}): {}",
                        reply.text
                    ));
                    return;
                }
            }
        } else {
            Value::String(reply.text.clone())
        };
        let errors = self.errors(&schema, &instance);
        if !errors.is_empty() {
            self.failures.push(format!(
                "{what}: the body does not match {schema}:\n  {}\n  body: {}",
                errors.join("\n  "),
                reply.text
            ));
        }
    }

    /// Every documented 2xx that was not seen, as (METHOD, path, status).
    pub fn unseen_successes(&self) -> Vec<(String, String, u16)> {
        let mut missing = Vec::new();
        for (path, item) in self.doc["paths"].as_object().expect("paths") {
            for m in METHODS {
                let Some(responses) = item[m]["responses"].as_object() else {
                    continue;
                };
                for code in responses.keys() {
                    let Ok(code) = code.parse::<u16>() else {
                        continue;
                    };
                    let key = (m.to_uppercase(), path.clone(), code);
                    if (200..300).contains(&code) && !self.seen.contains(&key) {
                        missing.push(key);
                    }
                }
            }
        }
        missing
    }
}
