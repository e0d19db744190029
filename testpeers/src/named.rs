//! An authoritative BIND `named` on 127.0.0.1:<free port>, serving zones from its directory.
//!
//! `named -g -u root -c CONF` with `controls { };` (else it reads /etc/bind/rndc.key),
//! `recursion no`, no DNSSEC validation. With a [`TsigKey`], every zone accepts dynamic
//! updates (RFC 2136) signed with it; the journal stays in the directory across restarts.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use crate::daemon::Daemon;
use crate::util::{free_port, require_binary, write_file};
use crate::workdir::Workdir;
use crate::{dns, Error, Result};

/// One zone served by [`Named`].
#[derive(Clone, Debug)]
pub struct Zone {
    /// The zone's name, e.g. `example.test` (a trailing dot is accepted).
    pub name: String,
    /// Zone-file lines added after the SOA and NS (relative names are under the zone), e.g.
    /// `"@ 300 IN MX 10 mx1\nmx1 300 IN A 127.0.0.20\n"`.
    pub records: String,
    /// `$TTL` for lines without one. Default 300.
    pub default_ttl: u32,
    /// SOA minimum, i.e. how long resolvers cache NXDOMAIN/NODATA. Default 10.
    pub negative_ttl: u32,
}

impl Zone {
    pub fn new(name: &str, records: &str) -> Zone {
        Zone {
            name: name.trim_end_matches('.').to_string(),
            records: records.to_string(),
            default_ttl: 300,
            negative_ttl: 10,
        }
    }

    fn file_text(&self) -> String {
        format!(
            "$ORIGIN {z}.\n$TTL {ttl}\n\
             @ IN SOA ns1.{z}. hostmaster.{z}. 1 3600 600 86400 {neg}\n\
             @ IN NS ns1.{z}.\nns1 IN A 127.0.0.1\n{records}\n",
            z = self.name,
            ttl = self.default_ttl,
            neg = self.negative_ttl,
            records = self.records,
        )
    }
}

/// A TSIG key that may update every zone of a [`Named`].
#[derive(Clone, Debug)]
pub struct TsigKey {
    /// Key name, e.g. `mxguard-test.`
    pub name: String,
    /// BIND's algorithm name, e.g. `hmac-sha256`.
    pub algorithm: String,
    /// The secret, base64.
    pub secret_b64: String,
}

/// A further TSIG key that may update only records of `types` (e.g. `"TXT"`), by BIND's
/// `update-policy { grant KEY zonesub TYPES; }`: a key the server knows but refuses (REFUSED)
/// for any other type.
#[derive(Clone, Debug)]
pub struct LimitedKey {
    pub key: TsigKey,
    /// Space-separated record types, as `update-policy` writes them.
    pub types: String,
}

/// A running `named`; killed on drop.
#[derive(Debug)]
pub struct Named {
    addr: SocketAddr,
    zones: Vec<Zone>,
    daemon: Daemon,
    workdir: Workdir,
}

impl Named {
    /// Writes the config and zone files and starts `named`, waiting until every zone answers
    /// its SOA. Error if `named` is missing (package `bind9`) or does not come up.
    pub async fn start(zones: &[Zone], tsig: Option<&TsigKey>) -> Result<Named> {
        Named::start_with_limited(zones, tsig, &[]).await
    }

    /// As [`Named::start`], with `limited` keys beside `tsig`: the zones then take an
    /// `update-policy` (`tsig` may update any record, each limited key only its types) instead
    /// of `allow-update`.
    pub async fn start_with_limited(
        zones: &[Zone],
        tsig: Option<&TsigKey>,
        limited: &[LimitedKey],
    ) -> Result<Named> {
        let bin = require_binary("named", "bind9")?;
        let mut last = None;
        // The port is picked free, then bound by named: another process may win the race, and
        // named exits. Only that is retried.
        for _ in 0..3 {
            match Named::try_start(&bin, zones, tsig, limited).await {
                Ok(named) => return Ok(named),
                Err(e @ Error::Peer { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::peer("named", "not started")))
    }

    async fn try_start(
        bin: &std::path::Path,
        zones: &[Zone],
        tsig: Option<&TsigKey>,
        limited: &[LimitedKey],
    ) -> Result<Named> {
        let workdir = Workdir::new("named")?;
        let dir = workdir.path().to_path_buf();
        let port = free_port()?;
        let conf = dir.join("named.conf");
        write_file(&conf, config_text(&dir, port, zones, tsig, limited))?;
        for z in zones {
            write_file(&dir.join(format!("{}.zone", z.name)), z.file_text())?;
        }
        let args: Vec<OsString> = vec![
            "-g".into(),
            "-u".into(),
            "root".into(),
            "-c".into(),
            conf.into(),
        ];
        let daemon = Daemon::new("named", bin.to_path_buf(), args, dir.join("named.log"));
        let mut named = Named {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            zones: zones.to_vec(),
            daemon,
            workdir,
        };
        named.start_daemon().await?;
        Ok(named)
    }

    async fn start_daemon(&mut self) -> Result<()> {
        let addr = self.addr;
        let zones: Vec<String> = self.zones.iter().map(|z| format!("{}.", z.name)).collect();
        self.daemon
            .start(&self.workdir, || {
                let zones = zones.clone();
                async move { all_soa_answer(addr, &zones).await }
            })
            .await
    }

    /// Where it listens (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The directory holding `named.conf`, the zone files (`<zone>.zone`) and `named.log`.
    pub fn dir(&self) -> PathBuf {
        self.workdir.path().to_path_buf()
    }

    /// Everything `named` logged so far.
    pub fn log(&self) -> String {
        self.daemon.log()
    }

    /// Kills `named` (an authoritative outage). The port stays reserved for [`Named::restart`]
    /// only by convention: nothing else is told about it.
    pub fn stop(&mut self) {
        self.daemon.kill();
    }

    /// Starts `named` again on the same port with the same files (and update journals).
    pub async fn restart(&mut self) -> Result<()> {
        self.daemon.kill();
        self.start_daemon().await
    }

    pub fn is_running(&mut self) -> bool {
        self.daemon.is_running()
    }
}

fn config_text(
    dir: &std::path::Path,
    port: u16,
    zones: &[Zone],
    tsig: Option<&TsigKey>,
    limited: &[LimitedKey],
) -> String {
    let d = dir.display();
    let mut conf = format!(
        "options {{\n  directory \"{d}\";\n  pid-file none;\n  listen-on port {port} {{ 127.0.0.1; }};\n  \
         listen-on-v6 {{ none; }};\n  recursion no;\n  dnssec-validation no;\n  notify no;\n  \
         allow-query {{ any; }};\n  session-keyfile \"{d}/session.key\";\n  \
         managed-keys-directory \"{d}\";\n}};\ncontrols {{ }};\n"
    );
    for k in tsig.into_iter().chain(limited.iter().map(|l| &l.key)) {
        let _ = writeln!(
            conf,
            "key \"{}\" {{ algorithm {}; secret \"{}\"; }};",
            k.name.trim_end_matches('.'),
            k.algorithm,
            k.secret_b64
        );
    }
    let update = match tsig {
        Some(k) if !limited.is_empty() => {
            let name = k.name.trim_end_matches('.');
            let mut grants = format!("grant \"{name}\" zonesub ANY;");
            for l in limited {
                let _ = write!(
                    grants,
                    " grant \"{}\" zonesub {};",
                    l.key.name.trim_end_matches('.'),
                    l.types
                );
            }
            format!("update-policy {{ {grants} }}; allow-transfer {{ key \"{name}\"; }};")
        }
        Some(k) => {
            let name = k.name.trim_end_matches('.');
            format!("allow-update {{ key \"{name}\"; }}; allow-transfer {{ key \"{name}\"; }};")
        }
        None => "allow-update { none; };".to_string(),
    };
    for z in zones {
        let _ = writeln!(
            conf,
            "zone \"{0}\" {{ type primary; file \"{d}/{0}.zone\"; {update} }};",
            z.name
        );
    }
    conf
}

async fn all_soa_answer(addr: SocketAddr, zones: &[String]) -> std::result::Result<(), String> {
    for zone in zones {
        let reply = dns::query(addr, zone, RecordType::SOA)
            .await
            .map_err(|e| e.to_string())?;
        if reply.metadata.response_code != ResponseCode::NoError || reply.answers.is_empty() {
            return Err(format!("SOA {zone}: {}", reply.metadata.response_code));
        }
    }
    Ok(())
}
