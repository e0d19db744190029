//! A lab for `mxguard check` (used by `tests/check.rs`): named serving example.test with MX,
//! SPF, DMARC and a DKIM selector, two Unbound resolvers, a test CA, and two Postfix MX hosts
//! on one port: the primary mx1 (127.0.0.20) and a backup (127.0.0.21) whose profile the test
//! picks. Included with `#[path]`, so it does not pull in the rest of `tests/common`.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::process::Output;

use mxguard_testpeers::{
    free_port_on, Ca, Named, Postfix, PostfixConfig, Profile, Unbound, UnboundOptions, Zone,
};

pub const PRIMARY_IP: &str = "127.0.0.20";
pub const BACKUP_IP: &str = "127.0.0.21";
/// SPF that lets the backup (and only it) send for the domain.
pub const SPF_WITH_BACKUP: &str = "v=spf1 ip4:127.0.0.21 -all";
/// An ed25519 DKIM key (RFC 8463's example).
pub const DKIM: &str = "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";

pub struct CheckLab {
    pub ca: Ca,
    pub named: Named,
    pub resolvers: Vec<Unbound>,
    pub primary: Postfix,
    pub backup: Postfix,
    pub port: u16,
}

impl CheckLab {
    /// Starts everything; `spf` is the domain's SPF record, `backup` the backup's profile.
    pub async fn start(spf: &str, backup: Profile) -> CheckLab {
        CheckLab::start_with_tlsa(spf, backup, |_| String::new(), true).await
    }

    /// As [`CheckLab::start`], with more zone lines made from the backup's certificate (PEM),
    /// issued before the zone is served: `tests/dane.rs` publishes TLSA for it. Without
    /// `backup_starttls` the backup offers no STARTTLS.
    pub async fn start_with_tlsa(
        spf: &str,
        backup: Profile,
        zone_extra: impl Fn(&str) -> String,
        backup_starttls: bool,
    ) -> CheckLab {
        let ca = Ca::new().expect("CA");
        let backup_cert = ca
            .leaf(&["backup.example.test"], mxguard_testpeers::CertKind::Valid)
            .expect("backup certificate");
        let records = format!(
            "@ 300 IN MX 10 mx1\n@ 300 IN TXT \"{spf}\"\n\
             _dmarc 300 IN TXT \"v=DMARC1; p=reject; rua=mailto:dmarc@example.test\"\n\
             sel._domainkey 300 IN TXT \"{DKIM}\"\n\
             mx1 300 IN A {PRIMARY_IP}\nbackup 300 IN A {BACKUP_IP}\n{}",
            zone_extra(&backup_cert.cert_pem)
        );
        let named = Named::start(&[Zone::new("example.test", &records)], None)
            .await
            .expect("named (package bind9) must start");
        let (u1, u2) = tokio::join!(
            Unbound::start("example.test", named.addr(), UnboundOptions::default()),
            Unbound::start("example.test", named.addr(), UnboundOptions::default())
        );
        let resolvers = vec![u1.expect("unbound"), u2.expect("unbound")];
        let ips: Vec<IpAddr> = [PRIMARY_IP, BACKUP_IP]
            .iter()
            .map(|s| s.parse().expect("ip"))
            .collect();
        let port = free_port_on(&ips).expect("a port free on both addresses");
        let primary = PostfixConfig::mx(&ca, "mx1.example.test", SocketAddr::new(ips[0], port))
            .expect("config")
            .with_domain("example.test");
        let backup_addr = SocketAddr::new(ips[1], port);
        let backup = match backup {
            Profile::Mx => PostfixConfig::mx(&ca, "backup.example.test", backup_addr),
            Profile::OpenRelay => {
                PostfixConfig::open_relay(&ca, "backup.example.test", backup_addr)
            }
        }
        .expect("config")
        .with_cert(backup_cert)
        .with_domain("example.test");
        let backup = if backup_starttls {
            backup
        } else {
            backup.without_starttls()
        };
        let mut mtas = Postfix::start_all(vec![primary, backup])
            .await
            .expect("postfix must start");
        let backup = mtas.pop().expect("backup");
        let primary = mtas.pop().expect("primary");
        CheckLab {
            ca,
            named,
            resolvers,
            primary,
            backup,
            port,
        }
    }

    /// The arguments of `mxguard check` for this lab (`extra` appended).
    pub fn args(&self, extra: &[&str]) -> Vec<String> {
        let mut args = vec!["check".to_string(), "example.test".to_string()];
        for r in &self.resolvers {
            args.push("--resolver".into());
            args.push(r.addr().to_string());
        }
        for a in [
            "--port",
            &self.port.to_string(),
            "--ca-file",
            &self.ca.cert_path().display().to_string(),
            "--backup",
            "backup.example.test",
            "--dkim-selector",
            "sel",
            "--ehlo-name",
            "probe.mxguard.test",
            "--timeout",
            "3s",
        ] {
            args.push(a.to_string());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    /// Runs `mxguard check` for this lab with `--json`; returns the exit code and the report.
    pub async fn check_json(&self) -> (i32, serde_json::Value) {
        let out = run(&self.args(&["--json"])).await;
        let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not one JSON document ({e}): {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code().expect("an exit code"), json)
    }
}

/// Runs the real binary with `args`.
pub async fn run(args: &[String]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_mxguard"))
        .args(args)
        .env_remove("MXGUARD_CONFIG")
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("run mxguard")
}

/// The report's `problems`, as strings.
pub fn problems(report: &serde_json::Value) -> Vec<String> {
    report["problems"]
        .as_array()
        .expect("problems is an array")
        .iter()
        .map(|p| p.as_str().expect("a problem is a string").to_string())
        .collect()
}
