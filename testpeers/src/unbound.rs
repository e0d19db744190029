//! A caching Unbound resolver on 127.0.0.1:<free port> with a `stub-zone` pointing at an
//! authoritative server (the tests' `named`), or at a closed port so that it answers SERVFAIL.
//!
//! Iterator only (no trust anchor, so no DNSSEC validation), `local-zone: "<tld>." nodefault`
//! for the stub zone's top-level domain (Unbound answers NXDOMAIN for `.test`, `.invalid`…
//! otherwise), `do-not-query-localhost: no`, no remote control, no chroot, no user switch.
//! Record TTLs are honoured as published unless [`UnboundOptions`] says otherwise.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{DNSClass, RecordType};

use crate::daemon::Daemon;
use crate::dns::{self, RcodeServer};
use crate::util::{free_port, require_binary, write_file};
use crate::workdir::Workdir;
use crate::{Error, Result};

/// Knobs for [`Unbound`]. `Default` leaves Unbound's own TTL behaviour alone.
#[derive(Clone, Debug)]
pub struct UnboundOptions {
    /// `cache-max-ttl`: cap on how long any record is cached.
    pub cache_max_ttl: Option<u32>,
    /// `cache-min-ttl`: floor on how long any record is cached.
    pub cache_min_ttl: Option<u32>,
    /// `cache-max-negative-ttl`: cap on NXDOMAIN/NODATA caching.
    pub cache_max_negative_ttl: Option<u32>,
    /// Whether [`Unbound::start`] waits until the stub zone's SOA resolves (NOERROR). Turn off
    /// to start a resolver whose authoritative server is not up yet. Default: true.
    pub wait_for_zone: bool,
    /// Extra lines for the `server:` clause, written as given.
    pub extra: Vec<String>,
}

impl Default for UnboundOptions {
    fn default() -> Self {
        UnboundOptions {
            cache_max_ttl: None,
            cache_min_ttl: None,
            cache_max_negative_ttl: None,
            wait_for_zone: true,
            extra: Vec::new(),
        }
    }
}

/// A running Unbound; killed on drop.
#[derive(Debug)]
pub struct Unbound {
    addr: SocketAddr,
    stub_zone: String,
    servfail: bool,
    /// The SERVFAIL upstream of [`Unbound::start_servfail`].
    _broken: Option<RcodeServer>,
    wait_for_zone: bool,
    daemon: Daemon,
    workdir: Workdir,
}

impl Unbound {
    /// A caching resolver for `stub_zone` (e.g. `example.test`), asking `upstream`.
    /// Waits until it answers; see [`UnboundOptions::wait_for_zone`].
    pub async fn start(
        stub_zone: &str,
        upstream: SocketAddr,
        opts: UnboundOptions,
    ) -> Result<Unbound> {
        Unbound::start_inner(stub_zone, Some(upstream), opts).await
    }

    /// A resolver that answers SERVFAIL for `stub_zone`: its stub points at an
    /// [`RcodeServer`] that answers SERVFAIL to everything (a closed port would not do: Unbound
    /// then keeps retrying for ~13 s before it says SERVFAIL). Waits until it does.
    pub async fn start_servfail(stub_zone: &str, opts: UnboundOptions) -> Result<Unbound> {
        Unbound::start_inner(stub_zone, None, opts).await
    }

    async fn start_inner(
        stub_zone: &str,
        upstream: Option<SocketAddr>,
        opts: UnboundOptions,
    ) -> Result<Unbound> {
        let bin = require_binary("unbound", "unbound")?;
        let mut last = None;
        // The port is picked free, then bound by unbound: another process may win the race, and
        // unbound exits. Only that is retried.
        for _ in 0..3 {
            match Unbound::try_start(&bin, stub_zone, upstream, &opts).await {
                Ok(u) => return Ok(u),
                Err(e @ Error::Peer { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::peer("unbound", "not started")))
    }

    async fn try_start(
        bin: &std::path::Path,
        stub_zone: &str,
        upstream: Option<SocketAddr>,
        opts: &UnboundOptions,
    ) -> Result<Unbound> {
        let workdir = Workdir::new("unbound")?;
        let dir = workdir.path().to_path_buf();
        let port = free_port()?;
        let zone = stub_zone.trim_end_matches('.').to_string();
        let servfail = upstream.is_none();
        let (upstream, broken) = match upstream {
            Some(u) => (u, None),
            None => {
                let broken = RcodeServer::start(ResponseCode::ServFail)?;
                (broken.addr(), Some(broken))
            }
        };
        let conf = dir.join("unbound.conf");
        write_file(&conf, config_text(&dir, port, &zone, upstream, opts))?;
        let args: Vec<OsString> = vec!["-d".into(), "-c".into(), conf.into()];
        let daemon = Daemon::new("unbound", bin.to_path_buf(), args, dir.join("unbound.log"));
        let mut unbound = Unbound {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            stub_zone: format!("{zone}."),
            servfail,
            _broken: broken,
            wait_for_zone: opts.wait_for_zone,
            daemon,
            workdir,
        };
        unbound.start_daemon().await?;
        Ok(unbound)
    }

    async fn start_daemon(&mut self) -> Result<()> {
        let (addr, zone, servfail, wait_zone) = (
            self.addr,
            self.stub_zone.clone(),
            self.servfail,
            self.wait_for_zone,
        );
        self.daemon
            .start(&self.workdir, || {
                let zone = zone.clone();
                async move { ready(addr, &zone, servfail, wait_zone).await }
            })
            .await
    }

    /// Where it listens (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Everything Unbound logged so far.
    pub fn log(&self) -> String {
        self.daemon.log()
    }

    /// Kills Unbound (a resolver outage): queries to [`Unbound::addr`] go unanswered.
    pub fn stop(&mut self) {
        self.daemon.kill();
    }

    /// Starts Unbound again on the same port with the same config and an empty cache.
    pub async fn restart(&mut self) -> Result<()> {
        self.daemon.kill();
        self.start_daemon().await
    }

    pub fn is_running(&mut self) -> bool {
        self.daemon.is_running()
    }
}

/// Up means: answers `version.server CH TXT` (local, touches no upstream); then, as asked,
/// SERVFAIL or NOERROR for the stub zone's SOA.
async fn ready(
    addr: SocketAddr,
    zone: &str,
    servfail: bool,
    wait_zone: bool,
) -> std::result::Result<(), String> {
    dns::query_class(addr, "version.server.", RecordType::TXT, DNSClass::CH)
        .await
        .map_err(|e| e.to_string())?;
    if !servfail && !wait_zone {
        return Ok(());
    }
    let reply = dns::query(addr, zone, RecordType::SOA)
        .await
        .map_err(|e| e.to_string())?;
    let code = reply.metadata.response_code;
    let wanted = if servfail {
        ResponseCode::ServFail
    } else {
        ResponseCode::NoError
    };
    if code == wanted && (servfail || !reply.answers.is_empty()) {
        Ok(())
    } else {
        Err(format!(
            "SOA {zone}: {code} with {} answers",
            reply.answers.len()
        ))
    }
}

fn config_text(
    dir: &std::path::Path,
    port: u16,
    zone: &str,
    upstream: SocketAddr,
    opts: &UnboundOptions,
) -> String {
    let d = dir.display();
    let tld = zone.rsplit('.').next().unwrap_or(zone);
    let mut conf = format!(
        "server:\n  verbosity: 1\n  use-syslog: no\n  logfile: \"\"\n  log-time-ascii: yes\n  \
         username: \"\"\n  chroot: \"\"\n  directory: \"{d}\"\n  pidfile: \"{d}/unbound.pid\"\n  \
         interface: 127.0.0.1\n  port: {port}\n  do-ip6: no\n  num-threads: 1\n  so-reuseport: no\n  \
         access-control: 127.0.0.0/8 allow\n  module-config: \"iterator\"\n  \
         do-not-query-localhost: no\n  local-zone: \"{tld}.\" nodefault\n"
    );
    let knobs = [
        ("cache-max-ttl", opts.cache_max_ttl),
        ("cache-min-ttl", opts.cache_min_ttl),
        ("cache-max-negative-ttl", opts.cache_max_negative_ttl),
    ];
    for (key, value) in knobs {
        if let Some(v) = value {
            let _ = writeln!(conf, "  {key}: {v}");
        }
    }
    for line in &opts.extra {
        let _ = writeln!(conf, "  {line}");
    }
    let _ = write!(
        conf,
        "remote-control:\n  control-enable: no\nstub-zone:\n  name: \"{zone}.\"\n  \
         stub-addr: {}@{}\n",
        upstream.ip(),
        upstream.port()
    );
    conf
}
