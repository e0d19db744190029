use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse("mxguard.toml", text)
}

fn errors(text: &str) -> Vec<String> {
    match parse(text) {
        Err(ConfigError::Invalid { errors, .. }) => errors.iter().map(|e| e.to_string()).collect(),
        other => panic!("expected validation errors, got {other:?}"),
    }
}

const PROVIDER: &str = r#"
[providers.ns1]
kind = "rfc2136"
server = "127.0.0.1:5353"
tsig_name = "mxguard"
tsig_secret_env = "TSIG"
"#;

#[test]
fn example_is_valid() {
    let cfg = parse(EXAMPLE).expect("the shipped example must pass config check");
    assert_eq!(cfg.domains.len(), 2);
    assert_eq!(cfg.providers.len(), 3);
    assert_eq!(cfg.tokens.len(), 2);
    let org = &cfg.domains[1];
    assert_eq!(org.targets.mode(), Mode::A);
    assert_eq!(org.checks.fail_after, 2, "per-domain override");
    assert_eq!(org.checks.recover_after, 6, "inherited from [checks]");
    assert_eq!(
        org.zone.as_str(),
        "example.org.",
        "zone defaults to the domain"
    );
    assert_eq!(cfg.domains[0].failback.hold, Some(Duration::from_secs(600)));
    assert_eq!(cfg.domains[0].mta_sts, crate::machine::MtaStsAction::Block);
    assert_eq!(
        cfg.domains[1].mta_sts,
        crate::machine::MtaStsAction::Warn,
        "the default"
    );
    assert!(!cfg.domains[0].early_ttl, "turned off in the example");
    assert_eq!(
        cfg.domains[0].drill,
        DrillSettings {
            every: Some(Duration::from_secs(90 * 86400)),
            drillable: false,
            dkim_selectors: vec!["s1".into()],
        }
    );
    assert_eq!(
        cfg.domains[1].drill,
        DrillSettings::default(),
        "no drills by default"
    );
    assert!(cfg.domains[1].early_ttl, "the default: on");
    assert!(cfg.server.open_readyz);
    assert!(!cfg.server.open_metrics);
    assert_eq!(cfg.cluster.vantage, "eu-west");
    assert_eq!(
        cfg.cluster.advertise_url.as_deref(),
        Some("https://mxguard-eu.example.net:8053")
    );
}

#[test]
fn readyz_and_metrics_need_a_token_unless_opened() {
    let cfg = parse("").unwrap();
    assert!(
        !cfg.server.open_readyz && !cfg.server.open_metrics,
        "a config file keeps them closed"
    );
    let embedded = Config::embedded();
    assert!(
        embedded.server.open_readyz,
        "zero-config mode has no token to present"
    );
    assert!(!embedded.server.open_metrics);
    let cfg = parse("[server]\nopen_readyz = true\nopen_metrics = true\n").unwrap();
    assert!(cfg.server.open_readyz && cfg.server.open_metrics);
    let errs = errors("[server]\nopen_metrics = \"yes\"\n");
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].starts_with("server.open_metrics: "), "{errs:?}");
}

#[test]
fn empty_file_gives_embedded_defaults() {
    let cfg = parse("").unwrap();
    let d = Config::embedded();
    assert_eq!(cfg.server.listen, d.server.listen);
    assert_eq!(cfg.store.url, d.store.url);
    assert_eq!(cfg.store.url.kind(), StoreKind::Sqlite);
    assert!(cfg.domains.is_empty());
}

#[test]
fn reports_every_error_with_its_path() {
    let text = format!(
        r#"{PROVIDER}
[checks]
resolvers = ["127.0.0.1:53", "nonsense"]
resolver_quorum = 3
[[domains]]
name = "example.com"
provider = "ns1"
primary = ["10 mx1.example.com."]
backup = ["10 mx1.example.com."]
failover_ttl = "abc"
[[domains]]
name = "example.net"
provider = "cloudfare"
primary = ["10 mx1.example.net."]
backup = ["10 mx2.example.net."]
colour = "blue"
mta_sts = "enforce"
early_ttl = "yes"
"#
    );
    let errs = errors(&text);
    let expect = [
        r#"checks.resolvers[1]: expected "ip" or "ip:port", got "nonsense""#,
        "checks.resolver_quorum: resolver_quorum is 3 but only 1 resolver(s) are configured",
        "domains[0].backup: is identical to primary",
        r#"domains[0].failover_ttl: expected seconds 1..=86400, got "abc""#,
        r#"domains[1].provider: unknown provider "cloudfare"; defined providers: ns1"#,
        "domains[1].colour: unknown field",
        r#"domains[1].mta_sts: expected warn, block or off, got "enforce""#,
        r#"domains[1].early_ttl: expected true or false, got "yes""#,
    ];
    for e in expect {
        assert!(
            errs.iter().any(|got| got.starts_with(e)),
            "missing {e:?} in {errs:#?}"
        );
    }
    assert_eq!(errs.len(), expect.len(), "{errs:#?}");
}

#[test]
fn drill_settings_are_checked_and_their_errors_name_the_field_and_the_file() {
    let domain = |extra: &str| {
        format!(
            "{PROVIDER}\n[[domains]]\nname = \"example.com\"\nprovider = \"ns1\"\nprimary = [\"10 mx1.example.com.\"]\nbackup = [\"10 mx2.example.com.\"]\n{extra}"
        )
    };
    let cfg = parse(&domain(
        "drill_every = \"2h\"\ndrillable = true\ndkim_selectors = [\"s1\", \"2024.mail\"]\n",
    ))
    .expect("valid");
    let d = &cfg.domains[0].drill;
    assert_eq!(d.every, Some(Duration::from_secs(7200)));
    assert!(d.drillable);
    assert_eq!(d.dkim_selectors, ["s1", "2024.mail"]);
    let errs = errors(&domain(
        "drill_every = \"sometimes\"\ndrillable = \"yes\"\ndkim_selectors = [\"\", \"a b\"]\n",
    ));
    let expect = [
        r#"domains[0].drill_every: expected a duration between 1s and 1year"#,
        r#"domains[0].drillable: expected true or false, got "yes""#,
        r#"domains[0].dkim_selectors[0]: expected a DKIM selector"#,
        r#"domains[0].dkim_selectors[1]: expected a DKIM selector"#,
    ];
    for e in expect {
        assert!(
            errs.iter().any(|got| got.starts_with(e)),
            "missing {e:?} in {errs:#?}"
        );
    }
    assert_eq!(errs.len(), expect.len(), "{errs:#?}");
    let rendered = parse(&domain("drill_every = \"0s\"\n"))
        .expect_err("too short")
        .to_string();
    assert!(
        rendered.starts_with("mxguard.toml: domains[0].drill_every: "),
        "{rendered}"
    );
}

#[test]
fn rendered_errors_name_the_file() {
    let err = parse("[server]\nlisten = 8053\n").unwrap_err().to_string();
    assert_eq!(
        err,
        "mxguard.toml: server.listen: expected a string, got 8053"
    );
}

#[test]
fn syntax_errors_are_reported_with_the_file() {
    let err = parse("[server\nlisten=").unwrap_err();
    assert!(matches!(err, ConfigError::Syntax { .. }));
    assert!(err.to_string().starts_with("mxguard.toml: not valid TOML"));
}

#[test]
fn secrets_cannot_be_written_inline() {
    let errs = errors(
        r#"
[providers.cf]
kind = "cloudflare"
api_token = "abcd"
"#,
    );
    assert!(errs
        .iter()
        .any(|e| e.starts_with("providers.cf.api_token_env: missing")));
    assert!(errs
        .iter()
        .any(|e| e.starts_with("providers.cf.api_token: unknown field")));
    assert!(
        errs.iter().all(|e| !e.contains("abcd")),
        "the value must not be echoed: {errs:?}"
    );
}

#[test]
fn a_cloudflare_account_id_is_32_hex_characters() {
    let provider = |id: &str| {
        format!(
            "[providers.cf]\nkind = \"cloudflare\"\napi_token_env = \"CF\"\naccount_id = \"{id}\"\n"
        )
    };
    let cfg = parse(&provider("0A0B0C0D0E0F00112233445566778899")).expect("valid");
    match cfg.providers.get("cf") {
        Some(ProviderConfig::Cloudflare { account_id, .. }) => assert_eq!(
            account_id.as_deref(),
            Some("0a0b0c0d0e0f00112233445566778899")
        ),
        other => panic!("{other:?}"),
    }
    let err = parse(&provider("my-account")).unwrap_err().to_string();
    assert!(
        err.contains("mxguard.toml: providers.cf.account_id: account id \"my-account\": expected the 32 hexadecimal characters"),
        "{err}"
    );
}

#[test]
fn mode_a_needs_a_host_inside_the_zone_and_addresses() {
    let text = format!(
        r#"{PROVIDER}
[[domains]]
name = "example.com"
provider = "ns1"
mode = "a"
host = "mx.example.net"
primary = ["192.0.2.1"]
backup = ["mx2.example.com"]
"#
    );
    let errs = errors(&text);
    assert!(
        errs.iter()
            .any(|e| e
                .starts_with("domains[0].host: mx.example.net. is not inside zone example.com.")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("domains[0].backup[0]: expected an IPv4 or IPv6 address")),
        "{errs:?}"
    );
}

const ROUTE53: &str = r#"
[providers.aws]
kind = "route53"
profile = "prod-dns"
[providers.ns1]
kind = "rfc2136"
server = "127.0.0.1:5353"
tsig_name = "mxguard"
tsig_secret_env = "TSIG"
"#;

#[test]
fn route53_domains_may_name_their_hosted_zone() {
    let text = format!(
        r#"{ROUTE53}
[[domains]]
name = "example.com"
provider = "aws"
hosted_zone_id = "/hostedzone/Z0123456789ABC"
primary = ["10 mx1.example.com."]
backup = ["10 mx2.example.net."]
"#
    );
    let cfg = parse(&text).expect("valid");
    assert_eq!(
        cfg.domains[0].hosted_zone_id.as_deref(),
        Some("Z0123456789ABC")
    );
    assert!(matches!(
        &cfg.providers["aws"],
        ProviderConfig::Route53 { profile: Some(p), .. } if p == "prod-dns"
    ));
}

#[test]
fn a_hosted_zone_id_is_checked_and_only_for_route53() {
    let text = format!(
        r#"{ROUTE53}
[[domains]]
name = "example.com"
provider = "aws"
hosted_zone_id = "z-lower-case"
primary = ["10 mx1.example.com."]
backup = ["10 mx2.example.net."]

[[domains]]
name = "example.org"
provider = "ns1"
hosted_zone_id = "Z0123456789ABC"
primary = ["10 mx1.example.org."]
backup = ["10 mx2.example.net."]

[[domains]]
name = "a.example.net"
zone = "example.net"
provider = "aws"
hosted_zone_id = "Z1111"
primary = ["10 mx1.example.org."]
backup = ["10 mx2.example.org."]

[[domains]]
name = "b.example.net"
zone = "example.net"
provider = "aws"
hosted_zone_id = "Z2222"
primary = ["10 mx1.example.org."]
backup = ["10 mx2.example.org."]
"#
    );
    let errs = errors(&text);
    assert!(
        errs.iter().any(|e| e.starts_with(
            "domains[0].hosted_zone_id: expected a Route 53 hosted zone id"
        )),
        "{errs:?}"
    );
    assert!(
        errs.iter().any(|e| e.starts_with(
            "domains[1].hosted_zone_id: only used with a provider of kind = \"route53\""
        )),
        "{errs:?}"
    );
    assert!(
        errs.iter().any(|e| e.starts_with("domains[") && e.contains(".hosted_zone_id: zone example.net. of provider \"aws\" is already hosted zone Z1111")),
        "{errs:?}"
    );
}

#[test]
fn null_mx_and_empty_sides_are_refused() {
    let text = format!(
        r#"{PROVIDER}
[[domains]]
name = "example.com"
provider = "ns1"
primary = ["0 ."]
backup = []
"#
    );
    let errs = errors(&text);
    assert!(
        errs.iter()
            .any(|e| e.starts_with("domains[0].primary[0]: a Null MX")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("domains[0].backup: expected at least one MX record")),
        "{errs:?}"
    );
}

#[test]
fn domain_checks_override_is_validated_against_its_own_values() {
    let text = format!(
        r#"{PROVIDER}
[checks]
resolvers = ["127.0.0.1:53", "127.0.0.2:53"]
[[domains]]
name = "example.com"
provider = "ns1"
primary = ["10 mx1.example.com."]
backup = ["10 mx2.example.com."]
checks = {{ resolver_quorum = 3, interval = "2s", timeout = "2s" }}
"#
    );
    let errs = errors(&text);
    assert!(
        errs.iter()
            .any(|e| e
                .starts_with("domains[0].checks.resolver_quorum: resolver_quorum is 3 but only 2")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("domains[0].checks.timeout: must be shorter than interval")),
        "{errs:?}"
    );
}

#[test]
fn env_overrides_store_and_listen() {
    let mut cfg = parse("").unwrap();
    cfg.apply_env(|k| match k {
        "MXGUARD_STORE_URL" => Some("postgres://mx:hunter2@db/mxguard".to_string()),
        "MXGUARD_LISTEN" => Some("0.0.0.0:9000".to_string()),
        _ => None,
    })
    .unwrap();
    assert_eq!(cfg.store.url.kind(), StoreKind::Postgres);
    assert_eq!(cfg.server.listen.to_string(), "0.0.0.0:9000");
    assert_eq!(cfg.store.url.to_string(), "postgres://mx:***@db/mxguard");
    assert!(!format!("{cfg:?}").contains("hunter2"));

    let err = cfg
        .apply_env(|k| (k == "MXGUARD_LISTEN").then(|| "nope".to_string()))
        .unwrap_err();
    assert!(err
        .to_string()
        .starts_with("environment: MXGUARD_LISTEN: expected IP:PORT"));
}

#[test]
fn store_url_scheme_is_checked_and_password_redacted() {
    let errs = errors("[store]\nurl = \"mysql://u:pw@h/db\"\n");
    assert_eq!(errs.len(), 1);
    assert!(errs[0].starts_with("store.url: expected sqlite://PATH or postgres://"));
    assert!(!errs[0].contains("pw@"), "{errs:?}");
}

#[test]
fn passwords_are_redacted_whatever_form_they_take() {
    use crate::config::redact_password;
    for (url, want) in [
        ("postgres://u:pw@h/db", "postgres://u:***@h/db"),
        ("postgres://u:p@ss@h:5432/db", "postgres://u:***@h:5432/db"),
        (
            "postgres://h/db?user=u&password=pw&sslmode=require",
            "postgres://h/db?user=u&password=***&sslmode=require",
        ),
        (
            "postgresql://u@h/db?PASSWORD=pw&sslpassword=key-pw",
            "postgresql://u@h/db?PASSWORD=***&sslpassword=***",
        ),
        (
            "postgres://u:pw@h/db?password=pw",
            "postgres://u:***@h/db?password=***",
        ),
        (
            "sqlite:///var/lib/mxguard.db?mode=rwc",
            "sqlite:///var/lib/mxguard.db?mode=rwc",
        ),
    ] {
        assert_eq!(redact_password(url), want, "{url}");
        assert!(!redact_password(url).contains("pw"), "{url}");
    }
}

#[test]
fn tokens_are_validated() {
    let errs = errors(
        r#"
[[tokens]]
name = "a"
sha256 = "xyz"
scopes = ["read", "root"]
[[tokens]]
name = "b"
scopes = ["read"]
"#,
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("tokens[0].sha256: expected 64 hexadecimal")),
        "{errs:?}"
    );
    assert!(
        errs.iter().any(|e| e
            .starts_with(r#"tokens[0].scopes[1]: expected read, operate or admin, got "root""#)),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("tokens[1]: missing sha256 or env")),
        "{errs:?}"
    );
}

#[test]
fn durations_accept_units_and_reject_out_of_range() {
    let cfg = parse("[checks]\ninterval = \"1m\"\ntimeout = \"1500ms\"\n").unwrap();
    assert_eq!(cfg.checks.interval, Duration::from_secs(60));
    assert_eq!(cfg.checks.timeout, Duration::from_millis(1500));
    let errs = errors("[checks]\nconfirm_interval = \"1ms\"\n");
    assert!(
        errs[0].starts_with("checks.confirm_interval: expected a duration between 50ms and 10m"),
        "{errs:?}"
    );
    assert!(errs[0].ends_with(r#"got "1ms""#), "{errs:?}");
}

#[test]
fn store_retention_has_defaults_takes_values_and_names_each_mistake_with_the_file() {
    let day = |n: u64| Duration::from_secs(n * 86_400);
    let store = parse("").unwrap().store;
    assert_eq!(store.observation_retention, day(7));
    assert_eq!(store.event_retention, day(90));
    assert_eq!(store.change_retention, day(90));
    assert_eq!(store.idempotency_retention, day(1));
    assert_eq!(store.snapshot_keep, 50);
    assert_eq!(
        Config::embedded().store,
        store,
        "zero-config mode prunes the same"
    );

    let store = parse(
        "[store]\nobservation_retention = \"2d\"\nevent_retention = \"365d\"\nchange_retention = \"30d\"\nidempotency_retention = \"48h\"\nsnapshot_keep = 10\n",
    )
    .unwrap()
    .store;
    assert_eq!(
        store.retention(),
        crate::store::Retention {
            observations: day(2),
            events: day(365),
            changes: day(30),
            idempotency_keys: day(2),
            snapshot_keep: 10,
        }
    );

    let err = parse(
        "[store]\nevent_retention = \"soon\"\nchange_retention = \"10m\"\nidempotency_retention = \"90d\"\nsnapshot_keep = 0\nsnapshot_retention = \"1d\"\n",
    )
    .unwrap_err()
    .to_string();
    let lines: Vec<&str> = err.lines().collect();
    let fields: Vec<&str> = lines
        .iter()
        .map(|l| l.split(": ").nth(1).unwrap_or_default())
        .collect();
    assert_eq!(
        fields,
        vec![
            "store.event_retention",
            "store.change_retention",
            "store.idempotency_retention",
            "store.snapshot_keep",
            "store.snapshot_retention"
        ],
        "{err}"
    );
    assert!(
        lines.iter().all(|l| l.starts_with("mxguard.toml: ")),
        "{err}"
    );
    assert!(
        lines[0].starts_with(
            "mxguard.toml: store.event_retention: expected a duration between 1h and 10years"
        ) && lines[0].ends_with(r#"got "soon""#),
        "{err}"
    );
    assert!(lines[2].contains("between 1h and 30days"), "{err}");
    assert!(
        lines[3].ends_with("expected a number of snapshots 1..=1000000, got 0"),
        "{err}"
    );
}

#[test]
fn cluster_defaults_and_every_mistake_named() {
    let cfg = parse("").unwrap();
    assert_eq!(cfg.cluster, ClusterConfig::default());
    assert_eq!(cfg.cluster.lease_ttl, Duration::from_secs(15));
    assert_eq!(cfg.cluster.vantage_quorum, None, "a majority by default");

    let cfg = parse(
        "[cluster]\nvantage = \"eu-west.1\"\nlease_ttl = \"5s\"\nvantage_quorum = 2\nadvertise_url = \"https://mxguard-eu.example.net:8053\"\ncanaries = [\"192.0.2.53:53\"]\n",
    )
    .unwrap();
    assert_eq!(cfg.cluster.vantage, "eu-west.1");
    assert_eq!(cfg.cluster.lease_ttl, Duration::from_secs(5));
    assert_eq!(cfg.cluster.vantage_quorum, Some(2));
    assert_eq!(cfg.cluster.canaries.len(), 1);

    let errs = errors(
        "[cluster]\nvantage = \"eu west\"\nlease_ttl = \"1s\"\nvantage_quorum = 0\nadvertise_url = \"mxguard:8053\"\ncanaries = [\"192.0.2.53\"]\nleader = \"a\"\n",
    );
    let fields: Vec<&str> = errs
        .iter()
        .map(|e| e.split(':').next().unwrap_or_default())
        .collect();
    assert_eq!(
        fields,
        vec![
            "cluster.vantage",
            "cluster.lease_ttl",
            "cluster.vantage_quorum",
            "cluster.advertise_url",
            "cluster.canaries[0]",
            "cluster.leader"
        ],
        "{errs:?}"
    );
}

#[test]
fn many_domains_on_one_primary_host_get_the_mode_a_advice() {
    let domain = |i: usize, host: &str| {
        format!(
            "[[domains]]\nname = \"d{i}.example.com\"\nprovider = \"ns1\"\nprimary = [\"10 {host}.\"]\nbackup = [\"10 backup.example.net.\"]\n"
        )
    };
    let head = "[providers.ns1]\nkind = \"rfc2136\"\nserver = \"127.0.0.1:53\"\ntsig_name = \"k\"\ntsig_secret_env = \"K\"\n\n";
    let mut text = head.to_string();
    for i in 0..super::SHARED_PRIMARY_ADVICE {
        text.push_str(&domain(i, "mx.hoster.example"));
    }
    text.push_str(&domain(99, "mx.own.example"));
    let cfg = parse(&text).expect("valid");
    let advice = cfg.advice();
    assert_eq!(advice.len(), 1, "{advice:?}");
    assert!(
        advice[0].starts_with(
            "20 domains (e.g. d0.example.com.) fail over from primary MX host mx.hoster.example."
        ),
        "{}",
        advice[0]
    );
    assert!(advice[0].contains("mode = \"a\" and host = \"mx.hoster.example.\""));
    // one fewer: nothing to say
    let mut text = head.to_string();
    for i in 1..super::SHARED_PRIMARY_ADVICE {
        text.push_str(&domain(i, "mx.hoster.example"));
    }
    assert!(parse(&text).expect("valid").advice().is_empty());
}

#[test]
fn request_limits_default_and_are_bounded() {
    let cfg = parse(PROVIDER).expect("config");
    assert_eq!(cfg.server.request_timeout, Duration::from_secs(120));
    assert_eq!(cfg.server.expensive_per_token, 4);
    let errs = errors(&format!(
        "[server]\nrequest_timeout = \"0s\"\nexpensive_per_token = 0\n{PROVIDER}"
    ));
    assert!(
        errs.iter().any(|e| e.contains("server.request_timeout")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.contains("server.expensive_per_token")),
        "{errs:?}"
    );
}

#[test]
fn provider_entries_name_a_shared_budget_of_their_own_kind() {
    let two_cf = r#"
[providers.cf-a]
kind = "cloudflare"
api_token_env = "A"
budget = "ops-user"

[providers.cf-b]
kind = "cloudflare"
api_token_env = "B"
budget = "ops-user"

[providers.cf-c]
kind = "cloudflare"
api_token_env = "C"
"#;
    let cfg = parse(two_cf).expect("valid");
    assert_eq!(cfg.budgets["cf-a"], "ops-user");
    assert_eq!(cfg.budgets["cf-b"], "ops-user");
    assert_eq!(cfg.budgets["cf-c"], "cf-c", "its own budget by default");

    let mixed = format!("{PROVIDER}budget = \"ops-user\"\n{two_cf}");
    let errs = errors(&mixed);
    assert!(
        errs.iter().any(|e| e.contains("providers.ns1.budget")
            || (e.contains(".budget") && e.contains("rfc2136"))),
        "{errs:#?}"
    );
    let bad = errors(
        r#"
[providers.cf]
kind = "cloudflare"
api_token_env = "A"
budget = "ops user!"
"#,
    );
    assert!(
        bad.iter()
            .any(|e| e.contains("providers.cf.budget") && e.contains("\"ops user!\"")),
        "{bad:#?}"
    );
}

#[test]
fn dns_budget_settings_have_defaults_and_name_each_mistake_with_the_file() {
    let checks = parse("").unwrap().checks;
    assert_eq!(checks.max_qps, 20);
    assert_eq!(checks.dns_interval, Duration::from_secs(60));
    let checks = parse("[checks]\nmax_qps = 5\ndns_interval = \"2m\"\n")
        .unwrap()
        .checks;
    assert_eq!(
        (checks.max_qps, checks.dns_interval),
        (5, Duration::from_secs(120))
    );
    // unset, it is never shorter than the interval
    let checks = parse("[checks]\ninterval = \"2m\"\ntimeout = \"10s\"\n")
        .unwrap()
        .checks;
    assert_eq!(checks.dns_interval, Duration::from_secs(120));

    let err = parse("[checks]\nmax_qps = 0\ninterval = \"10s\"\ndns_interval = \"5s\"\n")
        .unwrap_err()
        .to_string();
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert_eq!(
        lines[0],
        "mxguard.toml: checks.max_qps: expected queries per second 1..=1000000, got 0"
    );
    assert!(
        lines[1].starts_with("mxguard.toml: checks.dns_interval: must be at least interval (10s)"),
        "{err}"
    );

    let errs = errors(&format!(
        "{PROVIDER}\n[[domains]]\nname = \"example.com\"\nprovider = \"ns1\"\nprimary = [\"10 mx1.example.com.\"]\nbackup = [\"10 mx2.example.com.\"]\n[domains.checks]\nmax_qps = 100\n"
    ));
    assert!(
        errs.iter().any(|e| e.starts_with(
            "domains[0].checks.max_qps: is a budget per resolver for the whole process"
        )),
        "{errs:?}"
    );
}

#[test]
fn a_zone_served_by_two_providers_names_both_and_each_ones_servers() {
    let text = format!(
        r#"{ROUTE53}
[[domains]]
name = "example.com"
providers = ["ns1", "aws"]
hosted_zone_id = "Z0123456789ABC"
authoritative_at = {{ ns1 = ["127.0.0.1:5353"] }}
primary = ["10 mx1.example.com."]
backup = ["10 mx2.example.net."]
"#
    );
    let cfg = parse(&text).expect("valid");
    let d = &cfg.domains[0];
    assert_eq!(d.provider, "ns1");
    assert_eq!(d.mirrors, ["aws"]);
    assert!(d.uses("aws") && d.uses("ns1") && !d.uses("cf"));
    assert_eq!(
        d.authoritative_for("ns1"),
        ["127.0.0.1:5353".parse::<std::net::SocketAddr>().unwrap()]
    );
    assert!(d.authoritative_for("aws").is_empty());
    assert_eq!(d.hosted_zone_id.as_deref(), Some("Z0123456789ABC"));
}

#[test]
fn two_providers_are_checked_and_errors_name_the_field() {
    let domain = |lines: &str| {
        format!(
            "{ROUTE53}\n[[domains]]\nname = \"example.com\"\n{lines}\nprimary = [\"10 mx1.example.com.\"]\nbackup = [\"10 mx2.example.net.\"]\n"
        )
    };
    let cases = [
        (
            "provider = \"ns1\"\nproviders = [\"ns1\", \"aws\"]",
            "domains[0].providers: set provider (one) or providers (several), not both",
        ),
        (
            "providers = [\"ns1\"]",
            "domains[0].providers: lists at least two providers",
        ),
        (
            "providers = [\"ns1\", \"ns1\"]",
            "domains[0].providers: names \"ns1\" twice",
        ),
        (
            "providers = [\"ns1\", \"cf\"]",
            "domains[0].providers[1]: unknown provider \"cf\"; defined providers: aws, ns1",
        ),
        (
            "providers = [\"ns1\", \"aws\"]\nauthoritative = [\"127.0.0.1\"]",
            "domains[0].authoritative: a domain served by several providers names each provider's servers in authoritative_at",
        ),
        (
            "providers = [\"ns1\", \"aws\"]\nauthoritative_at = { cf = [\"127.0.0.1\"] }",
            "domains[0].authoritative_at.cf: unknown field; expected one of: ns1, aws",
        ),
        (
            "providers = [\"ns1\", \"aws\"]\nauthoritative_at = { aws = [\"nowhere\"] }",
            "domains[0].authoritative_at.aws[0]: expected \"ip\" or \"ip:port\"",
        ),
        (
            "",
            "domains[0].provider: missing; this field is required (or providers",
        ),
    ];
    for (lines, want) in cases {
        let errs = errors(&domain(lines));
        assert!(
            errs.iter().any(|e| e.starts_with(want)),
            "{lines:?}: missing {want:?} in {errs:#?}"
        );
    }
}
