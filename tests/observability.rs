//! The metrics an operator watches, scraped from the real `mxguard serve` in the lab (BIND,
//! Unbound, two Postfix MX hosts): probe latency by phase and outcome, probe failure kinds,
//! certificate days left per target, the last successful round per domain and `build_info`
//! carry what the rounds measured; and every metric the Grafana dashboard and the Prometheus
//! alert rules in `contrib/` use is exported.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use common::lab::{Lab, LabOptions, Layout, READ_TOKEN};
use common::poll;

/// A scrape: each family's TYPE and each sample (name with labels as written → value).
struct Scrape {
    types: BTreeMap<String, String>,
    samples: Vec<(String, String, f64)>,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut types = BTreeMap::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                    types.insert(name.to_string(), kind.to_string());
                }
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let end = line.find(['{', ' ']).expect("a sample line");
            let name = &line[..end];
            let (labels, value) = match line[end..].strip_prefix('{') {
                Some(rest) => {
                    let close = rest.rfind('}').expect("labels close");
                    (&rest[..close], rest[close + 1..].trim())
                }
                None => ("", line[end..].trim()),
            };
            let value: f64 = value
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no value in {line:?}"));
            samples.push((name.to_string(), labels.to_string(), value));
        }
        Scrape { types, samples }
    }

    /// Samples of `name` whose labels contain every one of `labels` (`k="v"` each).
    fn find(&self, name: &str, labels: &[&str]) -> Vec<f64> {
        self.samples
            .iter()
            .filter(|(n, l, _)| n == name && labels.iter().all(|want| l.contains(want)))
            .map(|(_, _, v)| *v)
            .collect()
    }

    /// Whether a name used in PromQL is exported: a family with samples, or a histogram's
    /// `_bucket` / `_sum` / `_count` series (a summary's `_sum` / `_count`).
    fn exports(&self, name: &str) -> bool {
        let sampled = |n: &str| self.samples.iter().any(|(s, _, _)| s == n);
        if self.types.contains_key(name) {
            return sampled(name);
        }
        for (suffix, kinds) in [
            ("_bucket", &["histogram"][..]),
            ("_sum", &["histogram", "summary"][..]),
            ("_count", &["histogram", "summary"][..]),
        ] {
            if let Some(base) = name.strip_suffix(suffix) {
                if self
                    .types
                    .get(base)
                    .is_some_and(|t| kinds.contains(&t.as_str()))
                {
                    return sampled(name);
                }
            }
        }
        false
    }
}

const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset", "atan2"];
/// Followed by a list of label names, not of expressions.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names a PromQL expression selects: label matchers, ranges, strings, label lists,
/// functions, aggregations and keywords taken out.
fn promql_metrics(expr: &str) -> BTreeSet<String> {
    // Strings, then `{…}` and `[…]` (which cannot nest once strings are gone).
    let mut plain = String::new();
    let mut chars = expr.chars().peekable();
    while let Some(c) = chars.next() {
        let close = match c {
            '"' | '\'' | '`' => Some(c),
            '{' => Some('}'),
            '[' => Some(']'),
            _ => None,
        };
        match close {
            Some(close) => {
                let mut escaped = false;
                for d in chars.by_ref() {
                    if escaped {
                        escaped = false;
                    } else if d == '\\' {
                        escaped = true;
                    } else if d == close {
                        break;
                    }
                }
                plain.push(' ');
            }
            None => plain.push(c),
        }
    }
    let bytes: Vec<char> = plain.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_digit() || c == '.' {
            // a number (1, 0.95, 1e3): its letters are not a name
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == '.') {
                i += 1;
            }
            continue;
        }
        if !(c.is_ascii_alphabetic() || c == '_' || c == ':' || c == '$') {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len()
            && (bytes[i].is_ascii_alphanumeric() || matches!(bytes[i], '_' | ':' | '$'))
        {
            i += 1;
        }
        let word: String = bytes[start..i].iter().collect();
        let mut j = i;
        while j < bytes.len() && bytes[j].is_whitespace() {
            j += 1;
        }
        let call = bytes.get(j) == Some(&'(');
        if LABEL_LISTS.contains(&word.as_str()) {
            if call {
                // skip the label list
                while j < bytes.len() && bytes[j] != ')' {
                    j += 1;
                }
                i = j + 1;
            }
            continue;
        }
        if call
            || word.starts_with('$')
            || AGGREGATIONS.contains(&word.as_str())
            || KEYWORDS.contains(&word.as_str())
        {
            continue;
        }
        names.insert(word);
    }
    names
}

#[test]
fn the_promql_reader_finds_metric_names_only() {
    let got = promql_metrics(
        r#"histogram_quantile(0.95, sum by (le, phase) (rate(a_seconds_bucket{outcome="pass",x=~"$d"}[$__rate_interval]))) / on (domain) group_left (kind) b_total offset 5m or max without (le) (c) > 1e3 unless vector(0) and time() - d"#,
    );
    let want: BTreeSet<String> = ["a_seconds_bucket", "b_total", "c", "d"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(got, want);
}

/// Every PromQL expression in the Grafana dashboard: panel targets (rows included) and the
/// template variables' `label_values(METRIC, LABEL)` queries (as metric selectors).
fn dashboard_exprs(dash: &serde_json::Value) -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(e) = m.get("expr").and_then(|e| e.as_str()) {
                    out.push(e.to_string());
                }
                for (k, x) in m {
                    if k != "expr" {
                        walk(x, out);
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&dash["panels"], &mut out);
    for var in dash["templating"]["list"].as_array().expect("templating") {
        let q = var["query"]["query"]
            .as_str()
            .or_else(|| var["query"].as_str())
            .unwrap_or("");
        if let Some(args) = q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
        {
            let metric = args.split(',').next().expect("a metric").trim();
            out.push(metric.to_string());
        }
    }
    out
}

fn contrib(path: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("contrib")
        .join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

async fn scrape(mx: &common::lab::Mxguard) -> Option<String> {
    let resp = reqwest::Client::new()
        .get(format!("http://{}/metrics", mx.listen))
        .bearer_auth(READ_TOKEN)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    resp.text().await.ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_carry_the_rounds_and_cover_the_dashboard_and_alerts() {
    let mut lab = Lab::start_with(
        LabOptions {
            hold: "1h",
            mx_ttl: 300,
        },
        Layout {
            read_token: true,
            ..Layout::default()
        },
    )
    .await;
    let started = chrono::Utc::now().timestamp() as f64;
    let mx = lab.serve(None);
    lab.settle(&mx, Duration::from_secs(120)).await;

    // The primary's MTA stops: its probes fail at connect.
    lab.primary.stop().await.expect("stop the primary MTA");
    let text = poll(
        "a connect failure in mxguard_probe_failures_total",
        Duration::from_secs(120),
        || async {
            let text = scrape(&mx).await?;
            let s = Scrape::parse(&text);
            let failed = s
                .find("mxguard_probe_failures_total", &["phase=\"connect\""])
                .iter()
                .any(|v| *v >= 1.0);
            // A request is counted when its answer is sent: the scrape that sees the first
            // failure may be the first request, so the HTTP series come with a later one.
            (failed && s.exports("mxguard_http_requests_total")).then_some(text)
        },
    )
    .await;
    let s = Scrape::parse(&text);

    // build_info: this build's version, value 1.
    let version = format!("version=\"{}\"", env!("CARGO_PKG_VERSION"));
    assert_eq!(s.find("mxguard_build_info", &[&version]), vec![1.0]);
    // Probe latency: a histogram by phase and outcome, passing sessions and connects counted,
    // failed connects apart from them.
    assert_eq!(
        s.types
            .get("mxguard_probe_duration_seconds")
            .map(String::as_str),
        Some("histogram")
    );
    for labels in [
        ["phase=\"session\"", "outcome=\"pass\""],
        ["phase=\"connect\"", "outcome=\"pass\""],
        ["phase=\"tls\"", "outcome=\"pass\""],
        ["phase=\"dns\"", "outcome=\"pass\""],
        ["phase=\"session\"", "outcome=\"fail\""],
    ] {
        let count = s.find("mxguard_probe_duration_seconds_count", &labels);
        assert!(
            count.iter().sum::<f64>() >= 1.0,
            "no {labels:?} probes counted:\n{text}"
        );
    }
    let kinds: Vec<&str> = s
        .samples
        .iter()
        .filter(|(n, l, _)| n == "mxguard_probe_failures_total" && l.contains("phase=\"connect\""))
        .map(|(_, l, _)| l.as_str())
        .collect();
    assert!(
        kinds
            .iter()
            .all(|l| l.contains("kind=\"network\"") || l.contains("kind=\"timeout\"")),
        "a stopped MTA fails as network or timeout: {kinds:?}"
    );
    // Certificate days left, per MX target (the lab CA's certificates are valid for years).
    for target in ["mx1.example.test", "backup.example.test"] {
        let days = s.find(
            "mxguard_certificate_days_left",
            &[&format!("target=\"{target}\"")],
        );
        assert_eq!(days.len(), 1, "{target}: {days:?}\n{text}");
        assert!(days[0] > 7.0, "{target}: {days:?}");
    }
    // The last successful round: example.test's, from this run.
    let last = s.find(
        "mxguard_last_successful_round_timestamp_seconds",
        &["domain=\"example.test\""],
    );
    assert_eq!(last.len(), 1, "{text}");
    assert!(
        last[0] >= started,
        "{} is before the start {started}",
        last[0]
    );
    // The change counters exist before the first change: increase() sees the first one.
    assert_eq!(
        s.find("mxguard_change_failures_total", &["kind=\"auth\""]),
        vec![0.0]
    );

    // Everything the dashboard and the alert rules use is exported.
    let dash: serde_json::Value =
        serde_json::from_str(&contrib("grafana/mxguard.json")).expect("dashboard JSON");
    let exprs = dashboard_exprs(&dash);
    assert!(exprs.len() >= 20, "only {} expressions found", exprs.len());
    let rules: serde_json::Value =
        serde_norway::from_str(&contrib("prometheus/alerts.yaml")).expect("alerts YAML");
    let mut alerts = BTreeMap::new();
    for group in rules["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let name = rule["alert"].as_str().expect("alert name").to_string();
            let expr = rule["expr"].as_str().expect("expr").to_string();
            alerts.insert(name, expr);
        }
    }
    for want in [
        "MxguardDomainFailedOver",
        "MxguardBothSidesDown",
        "MxguardNoSuccessfulRound",
        "MxguardChangeFailures",
        "MxguardNotLeaderAnywhere",
        "MxguardCertificateExpiring",
    ] {
        assert!(alerts.contains_key(want), "no alert {want}");
    }
    let mut used = BTreeMap::new();
    for (origin, expr) in exprs
        .iter()
        .map(|e| ("contrib/grafana/mxguard.json", e))
        .chain(
            alerts
                .values()
                .map(|e| ("contrib/prometheus/alerts.yaml", e)),
        )
    {
        let names = promql_metrics(expr);
        assert!(!names.is_empty(), "{origin}: no metric in {expr:?}");
        for n in names {
            used.entry(n).or_insert_with(Vec::new).push(origin);
        }
    }
    let missing: Vec<(&String, &Vec<&str>)> = used.iter().filter(|(n, _)| !s.exports(n)).collect();
    assert!(
        missing.is_empty(),
        "used but not exported by mxguard serve: {missing:?}\nscrape:\n{text}"
    );
    // The alert rules' metrics, as the reader found them.
    let in_alerts: BTreeSet<String> = alerts.values().flat_map(|e| promql_metrics(e)).collect();
    for want in [
        "mxguard_domain_published",
        "mxguard_domain_phase",
        "mxguard_last_successful_round_timestamp_seconds",
        "mxguard_change_failures_total",
        "mxguard_leader",
        "mxguard_certificate_days_left",
    ] {
        assert!(
            in_alerts.contains(want),
            "alerts do not use {want}: {in_alerts:?}"
        );
    }
}
