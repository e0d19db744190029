//! `mxguard check`, the real binary, against a lab: named (MX, SPF, DMARC, DKIM), two Unbound
//! resolvers, and Postfix as the primary MX and the backup. Exit 0 and full evidence when all
//! is well; exit 1 naming the problem for an open-relay backup, a stopped primary, a backup
//! outside SPF; exit 2 on a usage error.

#[path = "common/check_lab.rs"]
mod check_lab;

use check_lab::*;
use mxguard_testpeers::Profile;
use serde_json::Value;

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
        .collect()
}

fn phases(smtp: &Value) -> Vec<String> {
    smtp["phases"]
        .as_array()
        .expect("phases")
        .iter()
        .map(|p| p["phase"].as_str().expect("phase name").to_string())
        .collect()
}

fn target<'a>(report: &'a Value, host: &str) -> &'a Value {
    report["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .find(|t| t["host"] == host)
        .unwrap_or_else(|| panic!("no target {host}: {report:#}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn healthy_domain_exits_0_with_per_resolver_and_per_phase_evidence() {
    let lab = CheckLab::start(SPF_WITH_BACKUP, Profile::Mx).await;
    let (code, r) = lab.check_json().await;
    assert_eq!((code, &r["ok"]), (0, &Value::Bool(true)), "{r:#}");
    assert_eq!(problems(&r), Vec::<String>::new());
    assert_eq!(r["domain"], "example.test.");
    assert_eq!(r["resolver_quorum"], 2);

    // MX per resolver: each resolver's own answer, status and TTL.
    let mx = r["mx"].as_array().expect("mx");
    assert_eq!(mx.len(), 2);
    for (view, u) in mx.iter().zip(&lab.resolvers) {
        assert_eq!(view["resolver"], u.addr().to_string());
        assert_eq!(view["answer"]["status"], "noerror", "{view:#}");
        assert_eq!(strs(&view["answer"]["records"]), ["10 mx1.example.test."]);
        assert!(view["answer"]["ttl"]
            .as_u64()
            .is_some_and(|t| t > 0 && t <= 300));
    }
    assert_eq!(r["mx_agree"], true);

    // The primary: resolved by both, every phase, the certificate.
    let primary = target(&r, "mx1.example.test.");
    assert_eq!(
        (&primary["role"], &primary["up"]),
        (&"primary".into(), &true.into())
    );
    assert_eq!(primary["preference"], 10);
    for res in primary["resolvers"].as_array().expect("resolvers") {
        assert_eq!(strs(&res["addresses"]), [PRIMARY_IP], "{res:#}");
    }
    let smtp = &primary["smtp"][0];
    assert_eq!(smtp["address"], format!("{PRIMARY_IP}:{}", lab.port));
    assert_eq!(smtp["pass"], true);
    assert_eq!(
        phases(smtp),
        [
            "connect",
            "banner",
            "ehlo",
            "starttls",
            "tls",
            "ehlo_tls",
            "mail_from",
            "rcpt_postmaster",
            "quit"
        ]
    );
    let days = smtp["certificate"]["days_left"]
        .as_i64()
        .expect("days_left");
    assert!((88..=90).contains(&days), "{days}");
    assert_eq!(strs(&smtp["certificate"]["names"]), ["mx1.example.test"]);

    // The backup: relay refused, SPF passes.
    let backup = target(&r, "backup.example.test.");
    assert_eq!(
        (&backup["role"], &backup["up"]),
        (&"backup".into(), &true.into())
    );
    let relay = backup["smtp"][0]["phases"]
        .as_array()
        .expect("phases")
        .iter()
        .find(|p| p["phase"] == "rcpt_relay")
        .unwrap_or_else(|| panic!("no relay check: {backup:#}"));
    assert_eq!(relay["code"], 554, "{relay:#}");
    let spf = r["backup_spf"].as_array().expect("backup_spf");
    assert_eq!(spf.len(), 1, "{spf:?}");
    assert_eq!(spf[0]["host"], "backup.example.test.");
    assert_eq!(spf[0]["address"], BACKUP_IP);
    assert_eq!(
        (&spf[0]["result"], &spf[0]["pass"]),
        (&"Pass".into(), &true.into())
    );

    for (kind, rec) in [
        ("spf", &r["spf"]),
        ("dmarc", &r["dmarc"]),
        ("dkim", &r["dkim"][0]),
    ] {
        assert_eq!(
            (&rec["present"], &rec["error"]),
            (&true.into(), &Value::Null),
            "{kind}: {rec:#}"
        );
    }
    assert_eq!(r["dkim"][0]["name"], "sel._domainkey.example.test.");
    assert_eq!(r["dkim"][0]["record"], DKIM);
    assert_eq!(r["spf"]["record"], SPF_WITH_BACKUP);

    // The table says the same in words.
    let out = run(&lab.args(&[])).await;
    let table = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{table}");
    assert!(table.contains("OK: no problem found"), "{table}");
    assert!(
        table.contains("primary mx1.example.test. (preference 10): UP"),
        "{table}"
    );
    assert!(table.contains("rcpt_relay"), "{table}");
}

#[tokio::test(flavor = "multi_thread")]
async fn open_relay_backup_exits_1_named_as_an_open_relay() {
    let lab = CheckLab::start(SPF_WITH_BACKUP, Profile::OpenRelay).await;
    let (code, r) = lab.check_json().await;
    assert_eq!((code, &r["ok"]), (1, &Value::Bool(false)), "{r:#}");
    let relay = format!(
        "backup backup.example.test. at {BACKUP_IP}:{} is an open relay: \
         accepted RCPT TO:<mxguard-relay-probe@example.net> from a stranger: 250",
        lab.port
    );
    let problems = problems(&r);
    assert!(
        problems.iter().any(|p| p.starts_with(&relay)),
        "{problems:#?}"
    );
    assert!(
        problems
            .iter()
            .all(|p| p.starts_with("backup backup.example.test.")),
        "only the backup is at fault: {problems:#?}"
    );
    assert_eq!(target(&r, "mx1.example.test.")["up"], true);
    let failure = &target(&r, "backup.example.test.")["smtp"][0]["failure"];
    assert_eq!(
        (&failure["phase"], &failure["kind"]),
        (&"rcpt_relay".into(), &"open_relay".into())
    );

    let out = run(&lab.args(&[])).await;
    let table = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{table}");
    assert!(table.contains(" problem(s):"), "{table}");
    assert!(table.contains(&format!("  - {relay}")), "{table}");
    assert!(!table.contains("OK: no problem found"), "{table}");
}

#[tokio::test(flavor = "multi_thread")]
async fn stopped_primary_exits_1_naming_the_primary_and_the_reason() {
    let mut lab = CheckLab::start(SPF_WITH_BACKUP, Profile::Mx).await;
    lab.primary.stop().await.expect("stop the primary MTA");
    let (code, r) = lab.check_json().await;
    assert_eq!((code, &r["ok"]), (1, &Value::Bool(false)), "{r:#}");
    let want =
        format!("primary mx1.example.test. is down: {PRIMARY_IP}: network error in connect: ");
    assert_eq!(problems(&r).len(), 1, "{:#?}", problems(&r));
    let p = &problems(&r)[0];
    assert!(p.starts_with(&want) && p.contains("refused"), "{p}");
    assert_eq!(target(&r, "backup.example.test.")["up"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn backup_outside_spf_exits_1() {
    let lab = CheckLab::start("v=spf1 ip4:127.0.0.20 -all", Profile::Mx).await;
    let (code, r) = lab.check_json().await;
    assert_eq!((code, &r["ok"]), (1, &Value::Bool(false)), "{r:#}");
    assert_eq!(
        problems(&r),
        [format!(
            "backup backup.example.test. at {BACKUP_IP} is not allowed by example.test.'s SPF (Fail)"
        )]
    );
    assert_eq!(r["backup_spf"][0]["pass"], false);
    assert_eq!(
        target(&r, "backup.example.test.")["up"],
        true,
        "up, yet outside SPF"
    );
}

#[tokio::test]
async fn bad_resolver_is_a_usage_error_exit_2() {
    let args: Vec<String> = [
        "check",
        "example.test",
        "--resolver",
        "not-an-address",
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = run(&args).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--resolver: expected \"ip\" or \"ip:port\", got \"not-an-address\""),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "no report on a usage error");
}
