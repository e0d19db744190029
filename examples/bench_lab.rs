//! The lab `scripts/bench-check` times `mxguard check` in: named serving example.test (three
//! MX hosts, SPF, DMARC, a DKIM selector), three Unbound resolvers in front of it, a test CA,
//! and four Postfix instances on one port: mx1..mx3 (127.0.0.20-22) and a backup (127.0.0.23).
//!
//! Prints shell assignments (`RESOLVERS=…`, `PORT=…`, `CA=…`), then `READY`, then serves until
//! its standard input reaches end of file; then every peer is stopped. Everything on loopback.
//!
//! `cargo run -p mxguard --example bench_lab < some-fifo`

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};

use mxguard_testpeers::{
    free_port_on, Ca, Named, Postfix, PostfixConfig, Unbound, UnboundOptions, Zone,
};

const MX_IPS: [&str; 3] = ["127.0.0.20", "127.0.0.21", "127.0.0.22"];
const BACKUP_IP: &str = "127.0.0.23";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let records = format!(
        "@ 300 IN MX 10 mx1\n@ 300 IN MX 20 mx2\n@ 300 IN MX 30 mx3\n\
         @ 300 IN TXT \"v=spf1 ip4:{BACKUP_IP} -all\"\n\
         _dmarc 300 IN TXT \"v=DMARC1; p=reject\"\n\
         sel._domainkey 300 IN TXT \"v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=\"\n\
         mx1 300 IN A {}\nmx2 300 IN A {}\nmx3 300 IN A {}\nbackup 300 IN A {BACKUP_IP}\n",
        MX_IPS[0], MX_IPS[1], MX_IPS[2]
    );
    let named = Named::start(&[Zone::new("example.test", &records)], None).await?;
    let mut resolvers = Vec::new();
    for _ in 0..3 {
        resolvers
            .push(Unbound::start("example.test", named.addr(), UnboundOptions::default()).await?);
    }
    let ca = Ca::new()?;
    let ips: Vec<IpAddr> = MX_IPS
        .iter()
        .chain(std::iter::once(&BACKUP_IP))
        .map(|s| s.parse())
        .collect::<Result<_, _>>()?;
    let port = free_port_on(&ips)?;
    let mut configs = Vec::new();
    for (i, ip) in ips.iter().enumerate() {
        let host = if i < MX_IPS.len() {
            format!("mx{}.example.test", i + 1)
        } else {
            "backup.example.test".to_string()
        };
        configs.push(PostfixConfig::mx(&ca, &host, SocketAddr::new(*ip, port))?);
    }
    let mtas = Postfix::start_all(configs).await?;

    let list: Vec<String> = resolvers.iter().map(|r| r.addr().to_string()).collect();
    let mut out = std::io::stdout().lock();
    writeln!(out, "RESOLVERS=\"{}\"", list.join(" "))?;
    writeln!(out, "PORT={port}")?;
    writeln!(out, "CA={}", ca.cert_path().display())?;
    writeln!(out, "NAMED={}", named.addr())?;
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
