//! A small walker over a parsed TOML table that takes typed fields out one by one and collects
//! every problem (with its field path) instead of stopping at the first. Whatever is left in a
//! table when its section is finished is an unknown field.

use std::fmt;
use std::ops::RangeInclusive;
use std::time::Duration;

use toml::{Table, Value};

/// One configuration problem: where, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Collects errors across the whole file.
#[derive(Default)]
pub struct Errors(pub Vec<FieldError>);

impl Errors {
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }
}

/// Renders a TOML value the way a user wrote it, for "got ..." in messages.
pub fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Table(_) => "a table".to_string(),
        Value::Array(_) => "an array".to_string(),
        other => other.to_string(),
    }
}

/// One table of the file, at `path` (e.g. `domains[0]`).
pub struct Section {
    path: String,
    table: Table,
}

impl Section {
    pub fn new(path: impl Into<String>, table: Table) -> Self {
        Section {
            path: path.into(),
            table,
        }
    }

    /// A section from an optional sub-table; a non-table value is an error and gives an empty section.
    pub fn child(&mut self, key: &str, errs: &mut Errors) -> Section {
        let path = self.field(key);
        match self.table.remove(key) {
            None => Section::new(path, Table::new()),
            Some(Value::Table(t)) => Section::new(path, t),
            Some(v) => {
                errs.push(&path, format!("expected a table, got {}", shown(&v)));
                Section::new(path, Table::new())
            }
        }
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn field(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{}", self.path, key)
        }
    }

    pub fn has(&self, key: &str) -> bool {
        self.table.contains_key(key)
    }

    pub fn take(&mut self, key: &str) -> Option<Value> {
        self.table.remove(key)
    }

    /// Reports every key not taken so far as unknown.
    pub fn finish(self, errs: &mut Errors, known: &[&str]) {
        for key in self.table.keys() {
            errs.push(
                self.field(key),
                format!("unknown field; expected one of: {}", known.join(", ")),
            );
        }
    }

    pub fn string(&mut self, key: &str, errs: &mut Errors) -> Option<String> {
        match self.take(key)? {
            Value::String(s) => Some(s),
            v => {
                errs.push(
                    self.field(key),
                    format!("expected a string, got {}", shown(&v)),
                );
                None
            }
        }
    }

    pub fn required_string(&mut self, key: &str, errs: &mut Errors) -> Option<String> {
        if !self.has(key) {
            errs.push(self.field(key), "missing; this field is required");
            return None;
        }
        self.string(key, errs)
    }

    pub fn bool(&mut self, key: &str, default: bool, errs: &mut Errors) -> bool {
        match self.take(key) {
            None => default,
            Some(Value::Boolean(b)) => b,
            Some(v) => {
                errs.push(
                    self.field(key),
                    format!("expected true or false, got {}", shown(&v)),
                );
                default
            }
        }
    }

    /// An integer in `range`; `what` describes the unit in the message (e.g. "seconds").
    pub fn int(
        &mut self,
        key: &str,
        what: &str,
        range: RangeInclusive<i64>,
        default: i64,
        errs: &mut Errors,
    ) -> i64 {
        let expected = format!("expected {what} {}..={}", range.start(), range.end());
        match self.take(key) {
            None => default,
            Some(Value::Integer(i)) if range.contains(&i) => i,
            Some(v) => {
                errs.push(self.field(key), format!("{expected}, got {}", shown(&v)));
                default
            }
        }
    }

    /// A duration written as `"5s"`, `"500ms"`, `"10m"` (or an integer number of seconds),
    /// between `min` and `max`.
    pub fn duration(
        &mut self,
        key: &str,
        min: Duration,
        max: Duration,
        default: Duration,
        errs: &mut Errors,
    ) -> Duration {
        let expected = format!(
            "expected a duration between {} and {} such as \"5s\", \"500ms\" or \"10m\"",
            humantime::format_duration(min),
            humantime::format_duration(max)
        );
        let Some(v) = self.take(key) else {
            return default;
        };
        let parsed = match &v {
            Value::String(s) => humantime::parse_duration(s).ok(),
            Value::Integer(i) if *i >= 0 => Some(Duration::from_secs(*i as u64)),
            _ => None,
        };
        match parsed {
            Some(d) if d >= min && d <= max => d,
            _ => {
                errs.push(self.field(key), format!("{expected}, got {}", shown(&v)));
                default
            }
        }
    }

    /// An array of strings; `None` when absent.
    pub fn strings(&mut self, key: &str, errs: &mut Errors) -> Option<Vec<String>> {
        let path = self.field(key);
        match self.take(key)? {
            Value::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.into_iter().enumerate() {
                    match item {
                        Value::String(s) => out.push(s),
                        v => errs.push(
                            format!("{path}[{i}]"),
                            format!("expected a string, got {}", shown(&v)),
                        ),
                    }
                }
                Some(out)
            }
            v => {
                errs.push(
                    path,
                    format!("expected an array of strings, got {}", shown(&v)),
                );
                None
            }
        }
    }

    /// An array of tables (`[[domains]]`), each as a section named `key[i]`.
    pub fn tables(&mut self, key: &str, errs: &mut Errors) -> Vec<Section> {
        let path = self.field(key);
        match self.take(key) {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .into_iter()
                .enumerate()
                .filter_map(|(i, item)| match item {
                    Value::Table(t) => Some(Section::new(format!("{path}[{i}]"), t)),
                    v => {
                        errs.push(
                            format!("{path}[{i}]"),
                            format!("expected a table, got {}", shown(&v)),
                        );
                        None
                    }
                })
                .collect(),
            Some(v) => {
                errs.push(
                    path,
                    format!("expected an array of tables, got {}", shown(&v)),
                );
                Vec::new()
            }
        }
    }

    /// Every key of a table of tables (`[providers.NAME]`), each as a section.
    pub fn named_tables(&mut self, key: &str, errs: &mut Errors) -> Vec<(String, Section)> {
        let mut parent = self.child(key, errs);
        let names: Vec<String> = parent.table.keys().cloned().collect();
        names
            .into_iter()
            .filter_map(|name| {
                let path = parent.field(&name);
                match parent.table.remove(&name) {
                    Some(Value::Table(t)) => Some((name, Section::new(path, t))),
                    Some(v) => {
                        errs.push(path, format!("expected a table, got {}", shown(&v)));
                        None
                    }
                    None => None,
                }
            })
            .collect()
    }
}
