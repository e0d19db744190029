//! A failover lab on loopback: `named` (TSIG) serving example.test, two Unbound resolvers
//! stubbed to it, Postfix MX hosts (primary 127.0.0.20, backup 127.0.0.21, one port), a test CA,
//! and a config for the real `mxguard serve` binary pointing at all of it.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mxguard_testpeers::{
    ca::Ca,
    free_port_on,
    named::{Named, TsigKey, Zone},
    postfix::{Postfix, PostfixConfig},
    unbound::{Unbound, UnboundOptions},
};

pub const PRIMARY_IP: &str = "127.0.0.20";
pub const BACKUP_IP: &str = "127.0.0.21";
pub const SECRET: &str = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldCE=";

pub struct Lab {
    pub dir: tempfile::TempDir,
    pub named: Named,
    pub resolvers: Vec<Unbound>,
    pub primary: Postfix,
    pub backup: Postfix,
    pub ca: Ca,
    pub config: PathBuf,
    pub db: PathBuf,
}

pub struct LabOptions {
    pub hold: &'static str,
    pub mx_ttl: u32,
}

impl Lab {
    pub async fn start(opts: LabOptions) -> Lab {
        let dir = tempfile::tempdir().expect("tempdir");
        let tsig = TsigKey {
            name: "mxguard-test.".into(),
            algorithm: "hmac-sha256".into(),
            secret_b64: SECRET.into(),
        };
        let records = format!(
            "@ {ttl} IN MX 10 mx1\nmx1 300 IN A {PRIMARY_IP}\nbackup 300 IN A {BACKUP_IP}\n",
            ttl = opts.mx_ttl
        );
        let named = Named::start(&[Zone::new("example.test", &records)], Some(&tsig))
            .await
            .expect("named");
        let mut resolvers = Vec::new();
        for _ in 0..2 {
            resolvers.push(
                Unbound::start("example.test", named.addr(), UnboundOptions::default())
                    .await
                    .expect("unbound"),
            );
        }
        let ca = Ca::new().expect("ca");
        let ips: Vec<IpAddr> = [PRIMARY_IP, BACKUP_IP]
            .iter()
            .map(|s| s.parse().expect("ip"))
            .collect();
        let port = free_port_on(&ips).expect("port");
        let primary_cfg = PostfixConfig::mx(&ca, "mx1.example.test", SocketAddr::new(ips[0], port))
            .expect("cfg")
            .with_domain("example.test");
        let backup_cfg =
            PostfixConfig::mx(&ca, "backup.example.test", SocketAddr::new(ips[1], port))
                .expect("cfg")
                .with_domain("example.test");
        let mut mtas = Postfix::start_all(vec![primary_cfg, backup_cfg])
            .await
            .expect("postfix");
        let backup = mtas.pop().expect("backup");
        let primary = mtas.pop().expect("primary");
        let db = dir.path().join("mxguard.db");
        let config = dir.path().join("mxguard.toml");
        let resolver_list: Vec<String> = resolvers
            .iter()
            .map(|r| format!("\"{}\"", r.addr()))
            .collect();
        std::fs::write(
            &config,
            format!(
                r#"
[providers.lab]
kind = "rfc2136"
server = "{named}"
tsig_name = "mxguard-test"
tsig_algorithm = "hmac-sha256"
tsig_secret_env = "MXGUARD_TEST_TSIG"

[checks]
interval = "1s"
timeout = "800ms"
fail_after = 2
recover_after = 2
confirm_interval = "200ms"
resolvers = [{resolvers}]
resolver_quorum = 2
smtp_port = {port}
starttls = "require"
ca_file = "{ca}"
ehlo_name = "mxguard.test"
rcpt_checks = "backup"

[[domains]]
name = "example.test"
provider = "lab"
primary = ["10 mx1.example.test."]
backup = ["10 backup.example.test."]
failover_ttl = 30
failback = {{ hold = "{hold}" }}
authoritative = ["{named}"]
"#,
                named = named.addr(),
                resolvers = resolver_list.join(", "),
                ca = ca.cert_path().display(),
                hold = opts.hold,
            ),
        )
        .expect("write config");
        Lab {
            dir,
            named,
            resolvers,
            primary,
            backup,
            ca,
            config,
            db,
        }
    }

    /// Starts `mxguard serve` on this lab; stderr lines are collected.
    pub fn serve(&self, failpoint: Option<&str>) -> Mxguard {
        let port = mxguard_testpeers::free_port().expect("port");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mxguard"));
        cmd.args([
            "--config",
            &self.config.display().to_string(),
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .current_dir(self.dir.path())
        .env("MXGUARD_TEST_TSIG", SECRET)
        .env(
            "MXGUARD_STORE_URL",
            format!("sqlite://{}", self.db.display()),
        )
        .env("RUST_LOG", "info,mxguard=debug")
        .env_remove("MXGUARD_FAILPOINT")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        if let Some(f) = failpoint {
            cmd.env("MXGUARD_FAILPOINT", f);
        }
        let mut child = cmd.spawn().expect("spawn mxguard");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().expect("lines").push(line);
            }
        });
        Mxguard { child, lines }
    }

    /// Runs a one-shot `mxguard` command against this lab's config and store.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_mxguard"))
            .args(["--config", &self.config.display().to_string()])
            .args(args)
            .current_dir(self.dir.path())
            .env("MXGUARD_TEST_TSIG", SECRET)
            .env(
                "MXGUARD_STORE_URL",
                format!("sqlite://{}", self.db.display()),
            )
            .env("RUST_LOG", "warn")
            .env_remove("MXGUARD_FAILPOINT")
            .output()
            .expect("run mxguard")
    }

    /// An RFC 2136 client for editing the zone behind mxguard's back (an operator's console).
    pub fn console(&self) -> mxguard_rfc2136::Rfc2136Provider {
        let secret = mxguard_rfc2136::TsigSecret::from_base64(SECRET).expect("secret");
        let cfg = mxguard_rfc2136::Rfc2136Config::new(
            "console",
            self.named.addr(),
            mxguard::model::Fqdn::parse("mxguard-test").expect("key name"),
            mxguard_rfc2136::TsigAlgorithm::HmacSha256,
            secret,
        );
        mxguard_rfc2136::Rfc2136Provider::new(cfg).expect("provider")
    }

    /// The MX set `named` serves now, as "PREF HOST TTL" strings.
    pub async fn served_mx(&self) -> Vec<String> {
        let client = mxguard::probe::dns::DnsClient::authoritative(
            self.named.addr(),
            Duration::from_secs(2),
        );
        let name = mxguard::model::Fqdn::parse("example.test").expect("name");
        let a = client.query(&name, mxguard::model::RecordType::Mx).await;
        a.records
            .iter()
            .map(|r| format!("{r} {}", a.ttl.unwrap_or(0)))
            .collect()
    }

    /// The zone's SOA serial (each accepted UPDATE bumps it).
    pub async fn serial(&self) -> u32 {
        let msg = mxguard_testpeers::dns::query(
            self.named.addr(),
            "example.test.",
            mxguard_testpeers::hickory_proto::rr::RecordType::SOA,
        )
        .await
        .expect("soa");
        msg.answers
            .iter()
            .find_map(|r| match &r.data {
                mxguard_testpeers::hickory_proto::rr::RData::SOA(soa) => Some(soa.serial),
                _ => None,
            })
            .expect("an SOA")
    }
}

pub struct Mxguard {
    pub child: Child,
    pub lines: Arc<Mutex<Vec<String>>>,
}

impl Mxguard {
    pub fn saw(&self, needle: &str) -> bool {
        self.lines
            .lock()
            .expect("lines")
            .iter()
            .any(|l| l.contains(needle))
    }

    pub fn log(&self) -> String {
        self.lines.lock().expect("lines").join("\n")
    }

    pub fn kill9(&mut self) {
        let _ = Command::new("kill")
            .args(["-9", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }

    pub fn terminate(&mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..200 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = self.child.kill();
        None
    }
}

impl Drop for Mxguard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
