//! A failover lab on loopback: `named` (TSIG) serving example.test, two Unbound resolvers
//! stubbed to it, Postfix MX hosts (primary 127.0.0.20, backup 127.0.0.21, one port), a test CA,
//! and a config for the real `mxguard serve` binary pointing at all of it.
//!
//! [`Lab::start_with`] varies it ([`Layout`]): more resolvers, the primary MX host in a zone of
//! its own (each resolver then has a second stub zone, which can be pointed at a SERVFAIL
//! server one resolver at a time), other probe timings, a read token for the HTTP API.
//! Also included by the failover benchmark (`benches/failover`), which is why the binary comes
//! from [`mxguard_bin`].

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mxguard_testpeers::{
    ca::{Ca, CertKind},
    cloudflare::{FakeCloudflare, FakeConfig, Perms, Record},
    dns::RcodeServer,
    free_port_on,
    hickory_proto::op::ResponseCode,
    named::{Named, TsigKey, Zone},
    postfix::{Postfix, PostfixConfig},
    route53::{Moto, Op, Proxy},
    unbound::{Stub, Unbound, UnboundOptions},
};

pub const PRIMARY_IP: &str = "127.0.0.20";
pub const BACKUP_IP: &str = "127.0.0.21";
pub const SECRET: &str = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldCE=";
/// The mode-`a` MX host: its A record moves between the two MTAs' addresses.
pub const A_HOST: &str = "mx.example.test";
/// The Cloudflare API token the lab's fake accepts (handed to mxguard by env).
pub const CF_TOKEN: &str = "lab-cloudflare-token-0123456789abcdef";
/// The AWS keys handed to mxguard for moto (which accepts any).
pub const AWS_KEY_ID: &str = "AKIAMXGUARDLAB000001";
pub const AWS_SECRET: &str = "mxguard/lab/secret/0123456789abcdefghijkl";
/// The bearer token of [`Layout::read_token`].
pub const READ_TOKEN: &str = "lab-read-token";
/// The token with the operate scope, configured by [`Layout::operate_token`].
pub const OPERATE_TOKEN: &str = "lab-operate-token";

/// The `mxguard` binary the lab runs: `$MXGUARD_BIN` when set (e.g. a benchmark of another
/// build), else Cargo's (`CARGO_BIN_EXE_mxguard`, set when building integration tests and
/// benchmarks; examples have neither and must set `MXGUARD_BIN`).
pub fn mxguard_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("MXGUARD_BIN") {
        return PathBuf::from(path);
    }
    match option_env!("CARGO_BIN_EXE_mxguard") {
        Some(path) => PathBuf::from(path),
        None => panic!(
            "no mxguard binary: set MXGUARD_BIN (Cargo sets CARGO_BIN_EXE_mxguard only for \
             tests and benchmarks)"
        ),
    }
}

/// Which DNS provider holds the managed records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabProvider {
    /// `named` itself, by RFC 2136 with TSIG (verification at `named`).
    Rfc2136,
    /// The strict Cloudflare fake (verification by read-back).
    Cloudflare,
    /// moto's Route 53 behind the counting proxy (verification by read-back).
    Route53,
}

/// What moves on failover.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabMode {
    /// The apex MX set: `10 mx1.example.test.` ↔ `10 backup.example.test.`.
    Mx,
    /// The A record of [`A_HOST`]: `127.0.0.20` ↔ `127.0.0.21`.
    A,
}

/// The provider peer the lab started.
pub enum Peer {
    Rfc2136,
    Cloudflare(FakeCloudflare),
    Route53 {
        moto: Moto,
        proxy: Proxy,
        zone_id: String,
    },
}

pub struct Lab {
    pub dir: tempfile::TempDir,
    /// The provider holding the managed records (`named` itself for RFC 2136).
    pub peer: Peer,
    /// The TTL mxguard publishes on failover (the provider's minimum where it has one).
    pub failover_ttl: u32,
    /// The TTL the lab starts with on the managed records.
    pub live_ttl: u32,
    pub named: Named,
    pub resolvers: Vec<Unbound>,
    pub primary: Postfix,
    pub backup: Postfix,
    pub ca: Ca,
    pub config: PathBuf,
    pub db: PathBuf,
    /// The primary MX host, e.g. `mx1.example.test` (no trailing dot).
    pub mx_host: String,
    /// The zone of the primary MX host when it has its own ([`Layout::mx_zone`]).
    pub mx_zone: Option<String>,
    /// Answers SERVFAIL to everything: where [`Lab::fail_mx_zone_at`] points a resolver.
    pub servfail: RcodeServer,
    /// The layout it was started with.
    pub layout: Layout,
    /// The Cloudflare fake's nameserver ([`Layout::cloudflare_nameserver`]).
    pub cf_nameserver: Option<mxguard_testpeers::cloudflare::FakeNameserver>,
    /// The second provider serving the zone ([`Layout::mirror`]), `mirror` in the config.
    pub mirror: Option<Peer>,
}

pub struct LabOptions {
    pub hold: &'static str,
    pub mx_ttl: u32,
}

/// Probe timings written to `[checks]`.
#[derive(Clone, Copy, Debug)]
pub struct Checks {
    pub interval: &'static str,
    pub timeout: &'static str,
    pub fail_after: u32,
    pub recover_after: u32,
    pub confirm_interval: &'static str,
    /// How long a side answering only 4xx may do so before it is Down.
    pub soft_fail_after: &'static str,
    /// How often the published records are read back (drift).
    pub reconcile_interval: &'static str,
}

impl Checks {
    /// What the end-to-end tests use: a failover within a few seconds.
    pub const FAST: Checks = Checks {
        interval: "1s",
        timeout: "800ms",
        fail_after: 2,
        recover_after: 2,
        confirm_interval: "200ms",
        soft_fail_after: "10m",
        reconcile_interval: "60s",
    };
    /// mxguard's defaults (what a config that says nothing gets).
    pub const DEFAULTS: Checks = Checks {
        interval: "5s",
        timeout: "3s",
        fail_after: 3,
        recover_after: 6,
        confirm_interval: "500ms",
        soft_fail_after: "10m",
        reconcile_interval: "60s",
    };
}

/// How the lab is laid out beyond [`LabOptions`]. `Layout::default()` is the lab of
/// [`Lab::start`].
#[derive(Clone, Debug)]
pub struct Layout {
    /// Unbound resolvers in front of `named`, all in mxguard's `checks.resolvers`.
    pub resolvers: usize,
    /// `checks.resolver_quorum`.
    pub resolver_quorum: u32,
    /// A zone of its own for the primary MX host (`mx1.<zone>`), served by the same `named`
    /// and reached through a second stub zone in every resolver. `None`: `mx1.example.test`.
    pub mx_zone: Option<&'static str>,
    pub checks: Checks,
    /// Adds a token with the read scope ([`READ_TOKEN`]) for [`Lab::api_get`].
    pub read_token: bool,
    /// Adds a token named `lab-operator` with the read and operate scopes ([`OPERATE_TOKEN`]).
    pub operate_token: bool,
    /// Where the managed records live.
    pub provider: LabProvider,
    /// What moves.
    pub mode: LabMode,
    /// Route 53: the `hosted_zone_id` written on the domain instead of the lab zone's own id.
    pub hosted_zone_id: Option<&'static str>,
    /// More domains whose MX point at the same two MTAs, as a provider's customers' do:
    /// `d0000.example.test` … in the example.test zone (RFC 2136, mode mx only), each with the
    /// primary published ([`shared_domain`]).
    pub shared_domains: usize,
    /// The lab domain's `drift` policy: `report` or `correct`.
    pub drift: &'static str,
    /// Cloudflare: the fake's nameserver serves the zone and is the domain's `authoritative`
    /// (changes verified by DNS, not by reading back through the API).
    pub cloudflare_nameserver: bool,
    /// An MTA-STS policy for example.test (RFC 2136, mode mx, no `mx_zone`): the zone gets
    /// `_mta-sts` and `_smtp._tls` TXT records and `mta-sts.example.test` at 127.0.0.1, the
    /// domain `mta_sts = setting`, and `serve` fetches the policy from `port` (the test serves
    /// it there over HTTPS with a certificate of the lab's CA).
    pub mta_sts: Option<LabMtaSts>,
    /// The lab domain's `early_ttl`. Off by default here, though on by default in mxguard:
    /// the other tests count writes exactly, and a lowering on a blip of a loaded machine
    /// would add one (`tests/early_ttl.rs` tests it).
    pub early_ttl: bool,
    /// The failover TTL instead of the provider's usual one (30 s; 60 at Cloudflare).
    pub failover_ttl: Option<u32>,
    /// SPF (allowing both MTAs), DMARC and an ed25519 DKIM key at `lab._domainkey` in
    /// example.test (no `mx_zone`), and `dkim_selectors = ["lab"]` on the domain: what a
    /// drill's `mail_auth` step reads.
    pub mail_auth: bool,
    /// More lines for the lab domain's `[[domains]]` entry, e.g. `drill_every = "3s"`.
    pub domain_extra: String,
    /// More example.test zone lines (no `mx_zone`) made from the backup's certificate (PEM),
    /// which is issued before the zone is served: `tests/dane.rs` publishes its TLSA.
    pub backup_zone_extra: Option<fn(&str) -> String>,
    /// A second provider serving the same zone (Cloudflare or Route 53, not the one of
    /// `provider`): the domain says `providers = ["lab", "mirror"]`.
    pub mirror: Option<LabProvider>,
}

/// The SPF record [`Layout::mail_auth`] publishes: both MTAs may send for example.test.
pub const LAB_SPF: &str = "v=spf1 ip4:127.0.0.20 ip4:127.0.0.21 -all";

/// [`Layout::mta_sts`].
#[derive(Clone, Debug)]
pub struct LabMtaSts {
    /// `warn`, `block` or `off`.
    pub setting: &'static str,
    /// The loopback port of the policy's HTTPS server.
    pub port: u16,
}

/// The TLS-RPT address the lab's `_smtp._tls` record names.
pub const LAB_TLSRPT: &str = "mailto:tls-reports@example.test";

/// The name of the lab's `i`th shared domain ([`Layout::shared_domains`]).
pub fn shared_domain(i: usize) -> String {
    format!("d{i:04}.example.test")
}

impl Default for Layout {
    fn default() -> Self {
        Layout {
            resolvers: 2,
            resolver_quorum: 2,
            mx_zone: None,
            checks: Checks::FAST,
            read_token: false,
            operate_token: false,
            provider: LabProvider::Rfc2136,
            mode: LabMode::Mx,
            hosted_zone_id: None,
            shared_domains: 0,
            drift: "report",
            cloudflare_nameserver: false,
            mta_sts: None,
            early_ttl: false,
            failover_ttl: None,
            mail_auth: false,
            domain_extra: String::new(),
            backup_zone_extra: None,
            mirror: None,
        }
    }
}

impl Lab {
    pub async fn start(opts: LabOptions) -> Lab {
        Lab::start_with(opts, Layout::default()).await
    }

    pub async fn start_with(opts: LabOptions, layout: Layout) -> Lab {
        let dir = tempfile::tempdir().expect("tempdir");
        let tsig = TsigKey {
            name: "mxguard-test.".into(),
            algorithm: "hmac-sha256".into(),
            secret_b64: SECRET.into(),
        };
        let ca = Ca::new().expect("ca");
        let backup_cert = ca
            .leaf(&["backup.example.test", A_HOST], CertKind::Valid)
            .expect("cert");
        let mut zones = Vec::new();
        let mx_host = match layout.mx_zone {
            None => {
                let records = match layout.mode {
                    LabMode::Mx => format!(
                        "@ {ttl} IN MX 10 mx1\nmx1 300 IN A {PRIMARY_IP}\nbackup 300 IN A {BACKUP_IP}\n",
                        ttl = opts.mx_ttl
                    ),
                    // mode a: the MX names one host, whose address is what moves
                    LabMode::A => format!(
                        "@ 300 IN MX 10 mx\nmx {ttl} IN A {PRIMARY_IP}\nmx1 300 IN A {PRIMARY_IP}\nbackup 300 IN A {BACKUP_IP}\n",
                        ttl = opts.mx_ttl
                    ),
                };
                let mut records = records;
                for i in 0..layout.shared_domains {
                    assert!(
                        layout.mode == LabMode::Mx && layout.provider == LabProvider::Rfc2136,
                        "shared domains: RFC 2136, mode mx"
                    );
                    let name = shared_domain(i);
                    let label = name.trim_end_matches(".example.test");
                    records.push_str(&format!("{label} {} IN MX 10 mx1\n", opts.mx_ttl));
                }
                if layout.mail_auth {
                    records.push_str(&format!(
                        "@ 300 IN TXT \"{LAB_SPF}\"\n_dmarc 300 IN TXT \"v=DMARC1; p=reject; rua=mailto:dmarc@example.test\"\nlab._domainkey 300 IN TXT \"v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=\"\n"
                    ));
                }
                if layout.mta_sts.is_some() {
                    records.push_str(&format!(
                        "mta-sts 300 IN A 127.0.0.1\n_mta-sts 300 IN TXT \"v=STSv1; id=lab1\"\n_smtp._tls 300 IN TXT \"v=TLSRPTv1; rua={LAB_TLSRPT}\"\n"
                    ));
                }
                if let Some(extra) = layout.backup_zone_extra {
                    records.push_str(&extra(&backup_cert.cert_pem));
                }
                zones.push(Zone::new("example.test", &records));
                "mx1.example.test".to_string()
            }
            Some(mx_zone) => {
                let mx_zone = mx_zone.trim_end_matches('.');
                let records = format!(
                    "@ {ttl} IN MX 10 mx1.{mx_zone}.\nbackup 300 IN A {BACKUP_IP}\n",
                    ttl = opts.mx_ttl
                );
                zones.push(Zone::new("example.test", &records));
                zones.push(Zone::new(mx_zone, &format!("mx1 300 IN A {PRIMARY_IP}\n")));
                format!("mx1.{mx_zone}")
            }
        };
        let named = Named::start(&zones, Some(&tsig)).await.expect("named");
        let unbound_opts = UnboundOptions {
            extra_stubs: layout
                .mx_zone
                .iter()
                .map(|z| Stub::new(z, named.addr()))
                .collect(),
            ..UnboundOptions::default()
        };
        let mut resolvers = Vec::new();
        for _ in 0..layout.resolvers {
            resolvers.push(
                Unbound::start("example.test", named.addr(), unbound_opts.clone())
                    .await
                    .expect("unbound"),
            );
        }
        let servfail = RcodeServer::start(ResponseCode::ServFail).expect("SERVFAIL server");
        let ips: Vec<IpAddr> = [PRIMARY_IP, BACKUP_IP]
            .iter()
            .map(|s| s.parse().expect("ip"))
            .collect();
        let port = free_port_on(&ips).expect("port");
        // Both MTAs also answer as the mode-a host: senders reach either under that name.
        let primary_cfg = PostfixConfig::mx(&ca, &mx_host, SocketAddr::new(ips[0], port))
            .expect("cfg")
            .with_cert(ca.leaf(&[&mx_host, A_HOST], CertKind::Valid).expect("cert"))
            .with_domain("example.test");
        let backup_cfg =
            PostfixConfig::mx(&ca, "backup.example.test", SocketAddr::new(ips[1], port))
                .expect("cfg")
                .with_cert(backup_cert)
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
        let (peer, failover_ttl) = start_peer(&layout, &mx_host, opts.mx_ttl).await;
        let failover_ttl = layout.failover_ttl.unwrap_or(failover_ttl);
        let cf_nameserver = match &peer {
            Peer::Cloudflare(fake) if layout.cloudflare_nameserver => {
                Some(fake.serve_dns().expect("the fake's nameserver"))
            }
            _ => None,
        };
        let c = layout.checks;
        let mirror = match layout.mirror {
            Some(kind) => {
                assert!(
                    kind != layout.provider && kind != LabProvider::Rfc2136,
                    "a mirror: Cloudflare or Route 53, not the lab's own provider"
                );
                let as_lab = Layout {
                    provider: kind,
                    ..layout.clone()
                };
                Some(start_peer(&as_lab, &mx_host, opts.mx_ttl).await.0)
            }
            None => None,
        };
        let mut provider_section = provider_section(&peer, named.addr());
        if let Some(m) = &mirror {
            provider_section.push_str(&format!(
                "\n[providers.mirror]\n{}",
                self::provider_section(m, named.addr())
            ));
        }
        let targets = match layout.mode {
            LabMode::Mx => format!(
                "primary = [\"10 {mx_host}.\"]\nbackup = [\"10 backup.example.test.\"]\n"
            ),
            LabMode::A => format!(
                "mode = \"a\"\nhost = \"{A_HOST}\"\nprimary = [\"{PRIMARY_IP}\"]\nbackup = [\"{BACKUP_IP}\"]\n"
            ),
        };
        // named serves the records only when it is the provider; otherwise mxguard verifies
        // by reading them back from the provider.
        let mut authoritative = match &peer {
            Peer::Rfc2136 => format!("authoritative = [\"{}\"]\n", named.addr()),
            // Route 53: the domain names its hosted zone, as operators with a public and a
            // private zone of one name must
            Peer::Route53 { zone_id, .. } => format!(
                "hosted_zone_id = \"{}\"\n",
                layout.hosted_zone_id.unwrap_or(zone_id)
            ),
            Peer::Cloudflare(_) => match &cf_nameserver {
                Some(ns) => format!("authoritative = [\"{}\"]\n", ns.addr()),
                None => String::new(),
            },
        };
        let mut providers_line = "provider = \"lab\"\n".to_string();
        if let Some(m) = &mirror {
            providers_line = "providers = [\"lab\", \"mirror\"]\n".to_string();
            // each provider's own servers: the fake's nameserver for Cloudflare, a read-back
            // through the API for Route 53 (moto serves no DNS)
            authoritative = authoritative
                .replace("authoritative = ", "authoritative_at = { lab = ")
                .replace("]\n", "] }\n");
            if let Peer::Route53 { zone_id, .. } = m {
                authoritative.push_str(&format!("hosted_zone_id = \"{zone_id}\"\n"));
            }
        }
        let mut text = format!(
            r#"
[providers.lab]
{provider_section}
[checks]
interval = "{interval}"
dns_interval = "{interval}"
timeout = "{timeout}"
fail_after = {fail_after}
recover_after = {recover_after}
soft_fail_after = "{soft}"
reconcile_interval = "{reconcile}"
confirm_interval = "{confirm}"
resolvers = [{resolvers}]
resolver_quorum = {quorum}
smtp_port = {port}
starttls = "require"
ca_file = "{ca}"
ehlo_name = "mxguard.test"

[[domains]]
name = "example.test"
{providers_line}{targets}failover_ttl = {failover_ttl}
failback = {{ hold = "{hold}" }}
drift = "{drift}"
mta_sts = "{mta_sts}"
early_ttl = {early_ttl}
{authoritative}{dkim}{domain_extra}
"#,
            resolvers = resolver_list.join(", "),
            ca = ca.cert_path().display(),
            hold = opts.hold,
            interval = c.interval,
            timeout = c.timeout,
            fail_after = c.fail_after,
            recover_after = c.recover_after,
            confirm = c.confirm_interval,
            soft = c.soft_fail_after,
            reconcile = c.reconcile_interval,
            drift = layout.drift,
            mta_sts = layout.mta_sts.as_ref().map_or("off", |m| m.setting),
            quorum = layout.resolver_quorum,
            early_ttl = layout.early_ttl,
            dkim = if layout.mail_auth {
                "dkim_selectors = [\"lab\"]\n"
            } else {
                ""
            },
            domain_extra = layout.domain_extra,
        );
        for i in 0..layout.shared_domains {
            text.push_str(&format!(
                "\n[[domains]]\nname = \"{name}\"\nzone = \"example.test\"\nprovider = \"lab\"\n{targets}failover_ttl = {failover_ttl}\nfailback = {{ hold = \"{hold}\" }}\nmta_sts = \"off\"\nearly_ttl = {early_ttl}\n{authoritative}",
                name = shared_domain(i),
                hold = opts.hold,
                early_ttl = layout.early_ttl,
            ));
        }
        if layout.operate_token {
            use sha2::Digest;
            let digest: String = sha2::Sha256::digest(OPERATE_TOKEN.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            text.push_str(&format!(
                "\n[[tokens]]\nname = \"lab-operator\"\nsha256 = \"{digest}\"\nscopes = [\"read\", \"operate\"]\n"
            ));
        }
        if layout.read_token {
            use sha2::Digest;
            let digest: String = sha2::Sha256::digest(READ_TOKEN.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            text.push_str(&format!(
                "\n[[tokens]]\nname = \"lab\"\nsha256 = \"{digest}\"\nscopes = [\"read\"]\n"
            ));
        }
        std::fs::write(&config, text).expect("write config");
        Lab {
            dir,
            peer,
            failover_ttl,
            live_ttl: opts.mx_ttl,
            named,
            resolvers,
            primary,
            backup,
            ca,
            config,
            db,
            mx_host,
            mx_zone: layout.mx_zone.map(|z| z.trim_end_matches('.').to_string()),
            servfail,
            layout,
            cf_nameserver,
            mirror,
        }
    }

    /// The primary MX record as configured, e.g. `10 mx1.example.test.`.
    pub fn primary_mx(&self) -> String {
        format!("10 {}.", self.mx_host)
    }

    /// Points resolver `i`'s stub zone for the MX hosts' zone at the SERVFAIL server (and
    /// restarts it with an empty cache): the primary MX host no longer resolves there.
    pub async fn fail_mx_zone_at(&mut self, i: usize) {
        let zone = self.mx_zone.clone().expect("a lab with Layout::mx_zone");
        let to = self.servfail.addr();
        self.resolvers[i]
            .set_stub(&zone, to)
            .await
            .expect("re-point the stub zone");
    }

    /// Points resolver `i`'s stub zone for the MX hosts' zone back at `named`.
    pub async fn heal_mx_zone_at(&mut self, i: usize) {
        let zone = self.mx_zone.clone().expect("a lab with Layout::mx_zone");
        let to = self.named.addr();
        self.resolvers[i]
            .set_stub(&zone, to)
            .await
            .expect("re-point the stub zone");
    }

    /// `GET path` on `mx`'s API with [`READ_TOKEN`]: status and JSON body, or `None` while it
    /// does not answer. Needs [`Layout::read_token`].
    pub async fn api_get(&self, mx: &Mxguard, path: &str) -> Option<(u16, serde_json::Value)> {
        let resp = reqwest::Client::new()
            .get(format!("http://{}{path}", mx.listen))
            .bearer_auth(READ_TOKEN)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?;
        let status = resp.status().as_u16();
        let body = resp.json().await.ok()?;
        Some((status, body))
    }

    /// Starts `mxguard serve` on this lab; stderr lines are collected.
    pub fn serve(&self, failpoint: Option<&str>) -> Mxguard {
        let port = mxguard_testpeers::free_port().expect("port");
        let listen = SocketAddr::from(([127, 0, 0, 1], port));
        let mut cmd = Command::new(mxguard_bin());
        cmd.args([
            "--config",
            &self.config.display().to_string(),
            "serve",
            "--listen",
            &listen.to_string(),
        ])
        .current_dir(self.dir.path())
        .env(
            "MXGUARD_STORE_URL",
            format!("sqlite://{}", self.db.display()),
        )
        .env_remove("MXGUARD_FAILPOINT");
        provider_env(&mut cmd);
        if let Some(m) = &self.layout.mta_sts {
            cmd.env(mxguard::mtasts::fetch::TEST_PORT_ENV, m.port.to_string());
        }
        if let Some(f) = failpoint {
            cmd.env("MXGUARD_FAILPOINT", f);
        }
        Mxguard::spawn(cmd, listen)
    }

    /// Runs a one-shot `mxguard` command against this lab's config and store.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(mxguard_bin());
        provider_env(&mut cmd);
        if let Some(m) = &self.layout.mta_sts {
            cmd.env(mxguard::mtasts::fetch::TEST_PORT_ENV, m.port.to_string());
        }
        cmd.args(["--config", &self.config.display().to_string()])
            .args(args)
            .current_dir(self.dir.path())
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

    /// Until `named` serves exactly one MX starting with `want`; panics with `mx`'s log after
    /// `deadline`.
    pub async fn wait_for_mx(&self, mx: &Mxguard, want: &str, deadline: Duration) {
        let start = std::time::Instant::now();
        loop {
            let got = self.served_mx().await;
            if got.len() == 1 && got[0].starts_with(want) {
                return;
            }
            assert!(
                start.elapsed() < deadline,
                "named still serves {got:?}, waited {deadline:?} for {want}; mxguard's log:\n{}",
                mx.plain_log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
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

/// Starts the provider peer `layout` asks for, holding the managed records as `named` does
/// (the primary's, with `ttl`), and returns it with the failover TTL to configure.
/// The `[providers.NAME]` lines that reach `peer`.
fn provider_section(peer: &Peer, named: SocketAddr) -> String {
    match peer {
        Peer::Rfc2136 => format!(
            "kind = \"rfc2136\"\nserver = \"{named}\"\ntsig_name = \"mxguard-test\"\ntsig_algorithm = \"hmac-sha256\"\ntsig_secret_env = \"MXGUARD_TEST_TSIG\"\n"
        ),
        Peer::Cloudflare(fake) => format!(
            "kind = \"cloudflare\"\napi_token_env = \"MXGUARD_TEST_CF_TOKEN\"\napi_url = \"{}\"\n",
            fake.base_url
        ),
        Peer::Route53 { proxy, .. } => format!(
            "kind = \"route53\"\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n",
            proxy.url
        ),
    }
}

async fn start_peer(layout: &Layout, mx_host: &str, ttl: u32) -> (Peer, u32) {
    match layout.provider {
        LabProvider::Rfc2136 => (Peer::Rfc2136, 30),
        LabProvider::Cloudflare => {
            let fake = FakeCloudflare::start(FakeConfig::default()).await;
            fake.add_token(CF_TOKEN, Perms::FULL);
            fake.add_zone("example.test");
            let (rtype, name, content, priority) = match layout.mode {
                LabMode::Mx => ("MX", "example.test", mx_host.to_string(), Some(10)),
                LabMode::A => ("A", A_HOST, PRIMARY_IP.to_string(), None),
            };
            fake.edit("example.test", |records, new_id| {
                records.push(Record {
                    id: new_id(),
                    rtype: rtype.into(),
                    name: name.into(),
                    content,
                    priority,
                    ttl,
                    proxied: false,
                })
            });
            // Cloudflare's smallest TTL outside Enterprise
            (Peer::Cloudflare(fake), 60)
        }
        LabProvider::Route53 => {
            let moto = Moto::start().await;
            let proxy = Proxy::start(&moto.url).await;
            let zone_id = moto.create_zone("example.test.").await;
            match layout.mode {
                LabMode::Mx => {
                    let value = format!("10 {mx_host}.");
                    moto.create_rrset(&zone_id, "example.test.", "MX", ttl, &[&value])
                        .await
                }
                LabMode::A => {
                    moto.create_rrset(&zone_id, &format!("{A_HOST}."), "A", ttl, &[PRIMARY_IP])
                        .await
                }
            }
            (
                Peer::Route53 {
                    moto,
                    proxy,
                    zone_id,
                },
                30,
            )
        }
    }
}

/// The secrets every provider of the lab needs, by env as mxguard reads them; no AWS setting
/// of the machine leaks in.
fn provider_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("MXGUARD_TEST_TSIG", SECRET)
        .env("MXGUARD_TEST_CF_TOKEN", CF_TOKEN)
        .env("AWS_ACCESS_KEY_ID", AWS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null");
}

impl Lab {
    /// The domain's timeline in the lab's store (empty before the first migration).
    pub async fn events(&self) -> Vec<mxguard::store::Event> {
        let url = mxguard::config::StoreUrl::parse(&format!("sqlite://{}", self.db.display()))
            .expect("url");
        let Ok(store) = mxguard::store::open(&url).await else {
            return Vec::new();
        };
        let ev = store
            .events(
                &mxguard::model::Fqdn::parse("example.test").expect("name"),
                None,
                10_000,
            )
            .await
            .unwrap_or_default();
        store.close().await;
        ev
    }

    /// The change intents in the lab's store: (id, status), oldest first.
    pub async fn changes(&self) -> Vec<(i64, String)> {
        let url = format!("sqlite://{}", self.db.display());
        let pool = sqlx::SqlitePool::connect(&url).await.expect("db");
        let rows: Vec<(i64, String)> = sqlx::query_as("SELECT id, status FROM changes ORDER BY id")
            .fetch_all(&pool)
            .await
            .expect("changes");
        pool.close().await;
        rows
    }

    /// Until at least `count` change intents exist and every one is `verified` (the status is
    /// written a moment after the records are served); returns them.
    pub async fn wait_verified(
        &self,
        mx: &Mxguard,
        count: usize,
        deadline: Duration,
    ) -> Vec<(i64, String)> {
        let start = std::time::Instant::now();
        loop {
            let rows = self.changes().await;
            if rows.len() >= count && rows.iter().all(|(_, s)| s == "verified") {
                return rows;
            }
            assert!(
                start.elapsed() < deadline,
                "intents {rows:?} not verified after {deadline:?}\nmxguard's log:\n{}",
                mx.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Until `mx` settled on the primary and has seen both sides Up (so the resolvers have
    /// cached both MX hosts' addresses).
    pub async fn settle(&self, mx: &Mxguard, deadline: Duration) {
        let start = std::time::Instant::now();
        loop {
            let ev = self.events().await;
            let up = |side: &str| {
                ev.iter().any(|e| {
                    e.kind == "health" && e.message.starts_with(&format!("{side} Unknown → Up"))
                })
            };
            if mx.saw("first verdicts") && up("primary") && up("backup") {
                return;
            }
            assert!(start.elapsed() < deadline, "never settled:\n{}", mx.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The managed RRset: (owner name, type).
    pub fn managed(&self) -> (&'static str, mxguard::model::RecordType) {
        match self.layout.mode {
            LabMode::Mx => ("example.test.", mxguard::model::RecordType::Mx),
            LabMode::A => ("mx.example.test.", mxguard::model::RecordType::A),
        }
    }

    /// The primary's records as [`Lab::published`] shows them, at `ttl`.
    pub fn primary_at(&self, ttl: u32) -> Vec<String> {
        match self.layout.mode {
            LabMode::Mx => vec![format!("{} {ttl}", self.primary_mx())],
            LabMode::A => vec![format!("{PRIMARY_IP} {ttl}")],
        }
    }

    /// The backup's records as [`Lab::published`] shows them, at `ttl`.
    pub fn backup_at(&self, ttl: u32) -> Vec<String> {
        match self.layout.mode {
            LabMode::Mx => vec![format!("10 backup.example.test. {ttl}")],
            LabMode::A => vec![format!("{BACKUP_IP} {ttl}")],
        }
    }

    /// The managed RRset as the provider holds it now, as sorted "RDATA TTL" strings (empty
    /// while it cannot be read): `named`'s answer, the fake's records, moto's record sets.
    pub async fn published(&self) -> Vec<String> {
        self.published_at(&self.peer).await
    }

    /// What the second provider ([`Layout::mirror`]) holds, as [`Lab::published`] shows it.
    pub async fn mirror_published(&self) -> Vec<String> {
        self.published_at(self.mirror.as_ref().expect("the lab has a mirror"))
            .await
    }

    async fn published_at(&self, peer: &Peer) -> Vec<String> {
        let (name, rtype) = self.managed();
        let mut out: Vec<String> = match peer {
            Peer::Rfc2136 => {
                let client = mxguard::probe::dns::DnsClient::authoritative(
                    self.named.addr(),
                    Duration::from_secs(2),
                );
                let a = client
                    .query(&mxguard::model::Fqdn::parse(name).expect("name"), rtype)
                    .await;
                a.records
                    .iter()
                    .map(|r| format!("{r} {}", a.ttl.unwrap_or(0)))
                    .collect()
            }
            Peer::Cloudflare(fake) => fake
                .records("example.test")
                .into_iter()
                .filter(|r| r.name == name.trim_end_matches('.') && r.rtype == rtype.to_string())
                .map(|r| match r.priority {
                    Some(p) => format!("{p} {}. {}", r.content, r.ttl),
                    None => format!("{} {}", r.content, r.ttl),
                })
                .collect(),
            Peer::Route53 { moto, zone_id, .. } => moto
                .rrsets(zone_id)
                .await
                .into_iter()
                .filter(|(n, t, _, _)| n == name && *t == rtype.to_string())
                .flat_map(|(_, _, ttl, values)| {
                    values.into_iter().map(move |v| format!("{v} {ttl}"))
                })
                .collect(),
        };
        out.sort();
        out
    }

    /// Writes the provider carried out so far: `named`'s SOA serial (one per UPDATE), the
    /// fake's successful changes, the change batches moto applied.
    pub async fn writes(&self) -> u64 {
        writes_at(&self.peer, self).await
    }

    /// Writes the second provider ([`Layout::mirror`]) carried out so far.
    pub async fn mirror_writes(&self) -> u64 {
        writes_at(self.mirror.as_ref().expect("the lab has a mirror"), self).await
    }
}

async fn writes_at(peer: &Peer, lab: &Lab) -> u64 {
    {
        match peer {
            Peer::Rfc2136 => u64::from(lab.serial().await),
            Peer::Cloudflare(fake) => fake.writes() as u64,
            Peer::Route53 { proxy, .. } => proxy.done(Op::ChangeRecordSets) as u64,
        }
    }
}

impl Lab {
    /// The provider's API starts failing every change: `named` stops; the fake answers the
    /// batch endpoint 503; the proxy answers `ChangeResourceRecordSets` 503 in moto's place.
    pub async fn provider_outage(&mut self) {
        match &mut self.peer {
            Peer::Rfc2136 => self.named.stop(),
            Peer::Cloudflare(fake) => {
                fake.inject(
                    mxguard_testpeers::cloudflare::Route::Batch,
                    mxguard_testpeers::cloudflare::Fault::Status(503),
                    usize::MAX,
                );
            }
            Peer::Route53 { proxy, .. } => proxy.inject(
                Op::ChangeRecordSets,
                mxguard_testpeers::route53::Fault::Status(503),
                usize::MAX,
            ),
        }
    }

    /// The Cloudflare fake refuses the next `count` batches with 403 (the token lost its
    /// permission); panics on another provider.
    pub fn cloudflare_refuses_writes(&mut self, count: usize) {
        match &mut self.peer {
            Peer::Cloudflare(fake) => fake.inject(
                mxguard_testpeers::cloudflare::Route::Batch,
                mxguard_testpeers::cloudflare::Fault::Status(403),
                count,
            ),
            _ => panic!("cloudflare_refuses_writes needs the Cloudflare lab"),
        }
    }

    /// The Cloudflare fake answers the next `count` requests to `route` with 429 and
    /// `retry-after: secs`.
    pub fn cloudflare_rate_limits(
        &mut self,
        route: mxguard_testpeers::cloudflare::Route,
        secs: u64,
        count: usize,
    ) {
        match &mut self.peer {
            Peer::Cloudflare(fake) => fake.inject(
                route,
                mxguard_testpeers::cloudflare::Fault::RateLimit { retry_after: secs },
                count,
            ),
            _ => panic!("cloudflare_rate_limits needs the Cloudflare lab"),
        }
    }

    /// The Cloudflare fake's requests so far (`METHOD /path?query`).
    pub fn cloudflare_requests(&self) -> Vec<String> {
        match &self.peer {
            Peer::Cloudflare(fake) => fake.requests(),
            _ => panic!("cloudflare_requests needs the Cloudflare lab"),
        }
    }

    /// Ends [`Lab::provider_outage`].
    pub async fn provider_recovers(&mut self) {
        match &mut self.peer {
            Peer::Rfc2136 => self.named.restart().await.expect("restart named"),
            Peer::Cloudflare(fake) => fake.clear_faults(),
            Peer::Route53 { proxy, .. } => proxy.clear_faults(),
        }
    }
}

pub struct Mxguard {
    pub child: Child,
    pub lines: Arc<Mutex<Vec<String>>>,
    /// Where its HTTP API listens.
    pub listen: SocketAddr,
}

impl Mxguard {
    /// Starts `cmd` (an `mxguard serve` listening on `listen`) at debug level, collecting its
    /// stderr lines.
    pub fn spawn(mut cmd: Command, listen: SocketAddr) -> Mxguard {
        cmd.env("RUST_LOG", "info,mxguard=debug")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn mxguard");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().expect("lines").push(line);
            }
        });
        Mxguard {
            child,
            lines,
            listen,
        }
    }

    /// Until the log shows `needle`; panics with the log after `deadline`.
    pub async fn wait_for_log(&self, needle: &str, deadline: Duration) {
        let start = std::time::Instant::now();
        while !self.saw(needle) {
            assert!(
                start.elapsed() < deadline,
                "never saw {needle:?} in mxguard's log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

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

    /// [`Mxguard::log`] without ANSI colour codes, for matching `field=value` pairs.
    pub fn plain_log(&self) -> String {
        strip_ansi(&self.log())
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

/// `text` without ANSI escape sequences (`ESC [ … letter`).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
