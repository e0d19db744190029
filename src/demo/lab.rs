//! Builds the demo lab: a private work directory (SQLite store, TSIG key file), the DNS
//! server, the two MX hosts, the API listener, and the mxguard configuration naming them.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hickory_proto::rr::Name;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

use super::dns::{Authority, DnsServer};
use super::smtp::{bind_pair, SmtpHost};
use super::zone::{DemoHosts, Zone};
use super::{DEMO_TOKEN, DOMAIN};
use crate::config::Config;

const DNS_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const PRIMARY_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const BACKUP_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const KEY_NAME: &str = "mxguard-demo.";
pub const HOLD: &str = "5s";
pub const RECOVER_AFTER: u32 = 2;

pub struct Lab {
    pub dns: DnsServer,
    pub primary: SmtpHost,
    pub backup: SmtpHost,
    pub config: Config,
    api: SocketAddr,
    listener: Option<TcpListener>,
    workdir: WorkDir,
}

impl Lab {
    pub async fn start(listen: SocketAddr) -> Result<Lab, String> {
        let workdir = WorkDir::create()?;
        let secret = random_bytes(32)?;
        let key_file = workdir.path().join("tsig.key");
        write_private(&key_file, base64(&secret).as_bytes())?;

        let origin = Name::from_ascii(DOMAIN).map_err(|e| e.to_string())?;
        let hosts = DemoHosts {
            ns: DNS_IP,
            primary: PRIMARY_IP,
            backup: BACKUP_IP,
        };
        let key_name = Name::from_ascii(KEY_NAME).map_err(|e| e.to_string())?;
        let authority = Authority::new(Zone::demo(&origin, &hosts)?, key_name, secret)?;
        let dns = DnsServer::start(IpAddr::V4(DNS_IP), Arc::new(authority))
            .await
            .map_err(|e| format!("DNS server on {DNS_IP}: {e}"))?;

        let (p, b) = bind_pair(IpAddr::V4(PRIMARY_IP), IpAddr::V4(BACKUP_IP))
            .await
            .map_err(|e| {
                format!(
                    "SMTP listeners on {PRIMARY_IP} and {BACKUP_IP}: {e} (the demo needs the \
                     loopback addresses 127.0.0.2 and 127.0.0.3, which Linux routes to lo; \
                     elsewhere add them as aliases of the loopback interface)"
                )
            })?;
        let smtp_port = p.local_addr().map_err(|e| e.to_string())?.port();
        let domain = DOMAIN.trim_end_matches('.');
        let primary = SmtpHost::start(p, &format!("mx1.{domain}"), domain)
            .map_err(|e| format!("primary SMTP: {e}"))?;
        let backup = SmtpHost::start(b, &format!("backup.{domain}"), domain)
            .map_err(|e| format!("backup SMTP: {e}"))?;

        let listener = match TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => {
                let l = TcpListener::bind(SocketAddr::new(listen.ip(), 0))
                    .await
                    .map_err(|e| format!("API listener on {}: {e}", listen.ip()))?;
                if let Ok(addr) = l.local_addr() {
                    println!("note: cannot listen on {listen} ({e}); the API uses {addr} instead");
                }
                l
            }
        };
        let api = listener.local_addr().map_err(|e| e.to_string())?;
        let text = config_text(api, dns.addr(), smtp_port, workdir.path(), &key_file);
        let config = Config::parse("(demo configuration)", &text).map_err(|e| e.to_string())?;
        Ok(Lab {
            dns,
            primary,
            backup,
            config,
            api,
            listener: Some(listener),
            workdir,
        })
    }

    pub fn take_listener(&mut self) -> Option<TcpListener> {
        self.listener.take()
    }

    /// The zone's SOA serial now (every applied UPDATE bumps it).
    pub fn serial(&self) -> u32 {
        self.dns.authority().zone().serial()
    }

    pub fn describe(&self) {
        let c = &self.config;
        let checks = &c.checks;
        println!("mxguard demo: a mail outage on loopback, handled by the real controller");
        println!(
            "  DNS      {DOMAIN} at {} (in-process: queries, RFC 2136 UPDATE, TSIG hmac-sha256)",
            self.dns.addr()
        );
        println!(
            "  primary  {} -> mx1 at {} (in-process SMTP)",
            super::PRIMARY_MX,
            self.primary.addr()
        );
        println!(
            "  backup   {} -> backup at {} (in-process SMTP, refuses relaying)",
            super::BACKUP_MX,
            self.backup.addr()
        );
        println!(
            "  mxguard  API http://{}, store {}, probes every {:?}, fail_after {}, recover_after {}, failback hold {HOLD}",
            self.api, c.store.url, checks.interval, checks.fail_after, checks.recover_after
        );
        println!(
            "  (mxguard's own log: warnings on stderr, more with RUST_LOG=info; work dir {})",
            self.workdir.path().display()
        );
    }

    /// With `--keep-running`: what to try against the running API and DNS.
    pub fn print_try_it(&self) {
        let base = format!("http://{}", self.api);
        let auth = format!("-H 'Authorization: Bearer {DEMO_TOKEN}'");
        let domain = DOMAIN.trim_end_matches('.');
        println!("The lab and the API keep running; try (Ctrl-C stops everything):");
        println!("  curl -s {base}/healthz");
        println!("  curl -s {base}/readyz");
        println!("  curl -s {base}/openapi.yaml | head -20");
        println!("  curl -s {auth} {base}/v1/domains/{domain}");
        println!("  curl -s {auth} {base}/v1/domains/{domain}/events");
        let until = (chrono::Utc::now() + chrono::Duration::minutes(10))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        println!(
            "  curl -s {auth} -X PUT -H 'Content-Type: application/json' -d '{{\"side\":\"backup\",\"until\":\"{until}\",\"reason\":\"drill\"}}' {base}/v1/domains/{domain}/pin"
        );
        println!(
            "  curl -s {auth} -X DELETE -H 'Content-Type: application/json' -d '{{\"reason\":\"drill over\"}}' {base}/v1/domains/{domain}/pin"
        );
        println!(
            "  dig @{} -p {} {domain} MX +norec",
            self.dns.addr().ip(),
            self.dns.addr().port()
        );
    }
}

fn config_text(
    api: SocketAddr,
    dns: SocketAddr,
    smtp_port: u16,
    dir: &Path,
    key_file: &Path,
) -> String {
    let quote = |s: String| toml::Value::String(s).to_string();
    let store = quote(format!("sqlite://{}", dir.join("mxguard.db").display()));
    let key_file = quote(key_file.display().to_string());
    let token: String = Sha256::digest(DEMO_TOKEN.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let domain = DOMAIN.trim_end_matches('.');
    let key = KEY_NAME.trim_end_matches('.');
    format!(
        r#"[server]
listen = "{api}"
open_readyz = true

[store]
url = {store}

[[tokens]]
name = "demo"
sha256 = "{token}"
scopes = ["read", "operate", "admin"]

[providers.demo]
kind = "rfc2136"
server = "{dns}"
tsig_name = "{key}"
tsig_algorithm = "hmac-sha256"
tsig_secret_file = {key_file}

[checks]
interval = "1s"
# ask the resolver every round: the demo's DNS changes are seen within a round
dns_interval = "1s"
timeout = "800ms"
fail_after = 2
recover_after = {RECOVER_AFTER}
confirm_interval = "250ms"
resolvers = ["{dns}"]
resolver_quorum = 1
smtp_port = {smtp_port}
starttls = "off"
ehlo_name = "mxguard.{domain}"
rcpt_checks = "backup"

[[domains]]
name = "{domain}"
provider = "demo"
zone = "{domain}"
mode = "mx"
primary = ["{primary}"]
backup = ["{backup}"]
failover_ttl = 30
failback = {{ hold = "{HOLD}" }}
authoritative = ["{dns}"]
"#,
        primary = super::PRIMARY_MX,
        backup = super::BACKUP_MX,
    )
}

/// A private directory under the system temp dir, removed on drop.
struct WorkDir(PathBuf);

impl WorkDir {
    fn create() -> Result<WorkDir, String> {
        let nonce = random_bytes(6)?;
        let name: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
        let path = std::env::temp_dir().join(format!("mxguard-demo-{name}"));
        let mut builder = std::fs::DirBuilder::new();
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder
            .create(&path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        Ok(WorkDir(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn random_bytes(n: usize) -> Result<Vec<u8>, String> {
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| format!("cannot read /dev/urandom for a fresh TSIG key: {e}"))?;
    Ok(buf)
}

/// Standard base64 with padding (the form BIND's key files and mxguard's secret files use).
pub(super) fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = (b(0) << 16) | (b(1) << 8) | b(2);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}
