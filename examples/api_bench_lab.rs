//! The lab `scripts/bench-api` loads the HTTP API in: `named` (TSIG) serving example.test with
//! DOMAINS MX names (d1.example.test … dN.example.test → mx1.example.test), two Unbound
//! resolvers in front of it, a test CA and two Postfix MX hosts (primary 127.0.0.20, backup
//! 127.0.0.21). Writes an `mxguard` config for all of it (probing every domain every 2 s, one
//! `bench` token with the read scope) to the path given as the first argument, prints
//! `READY`, and serves until its standard input reaches end of file. Everything on loopback.
//!
//! `cargo run -p mxguard --example api_bench_lab -- CONFIG [DOMAINS] < some-fifo`

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};

use mxguard_testpeers::named::TsigKey;
use mxguard_testpeers::{
    free_port_on, Ca, Named, Postfix, PostfixConfig, Unbound, UnboundOptions, Zone,
};
use sha2::Digest;

const PRIMARY_IP: &str = "127.0.0.20";
const BACKUP_IP: &str = "127.0.0.21";
const SECRET: &str = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldCE=";
/// The bearer token the load generator sends.
const TOKEN: &str = "bench-token";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let config = args.next().ok_or("usage: api_bench_lab CONFIG [DOMAINS]")?;
    let domains: usize = args.next().map_or(Ok(10), |n| n.parse())?;

    let mut records = format!("mx1 300 IN A {PRIMARY_IP}\nbackup 300 IN A {BACKUP_IP}\n");
    for i in 1..=domains {
        records.push_str(&format!("d{i} 300 IN MX 10 mx1\n"));
    }
    let tsig = TsigKey {
        name: "mxguard-bench.".into(),
        algorithm: "hmac-sha256".into(),
        secret_b64: SECRET.into(),
    };
    let named = Named::start(&[Zone::new("example.test", &records)], Some(&tsig)).await?;
    let mut resolvers = Vec::new();
    for _ in 0..2 {
        resolvers
            .push(Unbound::start("example.test", named.addr(), UnboundOptions::default()).await?);
    }
    let ca = Ca::new()?;
    let ips: Vec<IpAddr> = vec![PRIMARY_IP.parse()?, BACKUP_IP.parse()?];
    let port = free_port_on(&ips)?;
    let mtas = Postfix::start_all(vec![
        PostfixConfig::mx(&ca, "mx1.example.test", SocketAddr::new(ips[0], port))?
            .with_domain("example.test"),
        PostfixConfig::mx(&ca, "backup.example.test", SocketAddr::new(ips[1], port))?
            .with_domain("example.test"),
    ])
    .await?;

    let digest: String = sha2::Sha256::digest(TOKEN.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let list: Vec<String> = resolvers
        .iter()
        .map(|r| format!("\"{}\"", r.addr()))
        .collect();
    let mut text = format!(
        r#"[[tokens]]
name = "bench"
sha256 = "{digest}"
scopes = ["read"]

[providers.lab]
kind = "rfc2136"
server = "{named}"
tsig_name = "mxguard-bench"
tsig_algorithm = "hmac-sha256"
tsig_secret_env = "MXGUARD_BENCH_TSIG"

[checks]
interval = "2s"
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
"#,
        named = named.addr(),
        resolvers = list.join(", "),
        ca = ca.cert_path().display(),
    );
    for i in 1..=domains {
        text.push_str(&format!(
            "\n[[domains]]\nname = \"d{i}.example.test\"\nzone = \"example.test\"\nprovider = \"lab\"\n\
             primary = [\"10 mx1.example.test.\"]\nbackup = [\"10 backup.example.test.\"]\n\
             failover_ttl = 30\nauthoritative = [\"{}\"]\n",
            named.addr()
        ));
    }
    std::fs::write(&config, text)?;

    let mut out = std::io::stdout().lock();
    writeln!(out, "TSIG={SECRET}")?;
    writeln!(out, "TOKEN={TOKEN}")?;
    writeln!(out, "READY")?;
    out.flush()?;
    drop(out);

    // Serve until stdin closes, then drop (stop) every peer.
    tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
    })
    .await?;
    drop(mtas);
    drop(resolvers);
    drop(named);
    Ok(())
}
