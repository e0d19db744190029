//! A caching Unbound resolver on 127.0.0.1:<free port> with a `stub-zone` pointing at an
//! authoritative server (the tests' `named`), or at a server answering SERVFAIL. More stub zones
//! can be added ([`UnboundOptions::extra_stubs`]) and re-pointed later ([`Unbound::set_stub`]):
//! a resolver that can reach one zone's servers but not another's (a regional DNS outage).
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
    /// More `stub-zone`s besides the one [`Unbound::start`] is given (e.g. the zone of the MX
    /// hosts, pointing at its own server or at an [`RcodeServer`] answering SERVFAIL).
    pub extra_stubs: Vec<Stub>,
}

/// One extra `stub-zone`: queries for `zone` and below go to `upstream`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stub {
    /// The zone, e.g. `mx.test` (a trailing dot is accepted).
    pub zone: String,
    pub upstream: SocketAddr,
}

impl Stub {
    pub fn new(zone: &str, upstream: SocketAddr) -> Stub {
        Stub {
            zone: zone.trim_end_matches('.').to_ascii_lowercase(),
            upstream,
        }
    }
}

impl Default for UnboundOptions {
    fn default() -> Self {
        UnboundOptions {
            cache_max_ttl: None,
            cache_min_ttl: None,
            cache_max_negative_ttl: None,
            wait_for_zone: true,
            extra: Vec::new(),
            extra_stubs: Vec::new(),
        }
    }
}

/// A running Unbound; killed on drop.
#[derive(Debug)]
pub struct Unbound {
    addr: SocketAddr,
    stub_zone: String,
    /// Where the main stub zone points (the SERVFAIL server for [`Unbound::start_servfail`]).
    upstream: SocketAddr,
    opts: UnboundOptions,
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
            upstream,
            opts: opts.clone(),
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

    /// Points the extra stub zone `zone` at `upstream` (adding it when it is not there yet),
    /// then restarts Unbound on the same port with an empty cache, as [`Unbound::restart`]
    /// does. The main stub zone (the one given to [`Unbound::start`]) cannot be re-pointed.
    pub async fn set_stub(&mut self, zone: &str, upstream: SocketAddr) -> Result<()> {
        let stub = Stub::new(zone, upstream);
        if format!("{}.", stub.zone) == self.stub_zone {
            return Err(Error::peer(
                "unbound",
                format!("{zone} is the main stub zone; only extra stub zones can be re-pointed"),
            ));
        }
        match self
            .opts
            .extra_stubs
            .iter_mut()
            .find(|s| s.zone == stub.zone)
        {
            Some(existing) => existing.upstream = upstream,
            None => self.opts.extra_stubs.push(stub),
        }
        let dir = self.workdir.path().to_path_buf();
        let zone = self.stub_zone.trim_end_matches('.').to_string();
        write_file(
            &dir.join("unbound.conf"),
            config_text(&dir, self.addr.port(), &zone, self.upstream, &self.opts),
        )?;
        self.restart().await
    }

    /// The extra stub zones and where each points now.
    pub fn extra_stubs(&self) -> &[Stub] {
        &self.opts.extra_stubs
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
    let mut conf = format!(
        "server:\n  verbosity: 1\n  use-syslog: no\n  logfile: \"\"\n  log-time-ascii: yes\n  \
         username: \"\"\n  chroot: \"\"\n  directory: \"{d}\"\n  pidfile: \"{d}/unbound.pid\"\n  \
         interface: 127.0.0.1\n  port: {port}\n  do-ip6: no\n  num-threads: 1\n  so-reuseport: no\n  \
         access-control: 127.0.0.0/8 allow\n  module-config: \"iterator\"\n  \
         do-not-query-localhost: no\n"
    );
    // Special-use top-level domains (.test, .invalid…) answer NXDOMAIN unless `nodefault`.
    let mut stubs: Vec<(&str, SocketAddr)> = vec![(zone, upstream)];
    stubs.extend(
        opts.extra_stubs
            .iter()
            .map(|s| (s.zone.as_str(), s.upstream)),
    );
    let mut tlds: Vec<&str> = stubs
        .iter()
        .map(|(z, _)| z.rsplit('.').next().unwrap_or(z))
        .collect();
    tlds.sort_unstable();
    tlds.dedup();
    for tld in tlds {
        let _ = writeln!(conf, "  local-zone: \"{tld}.\" nodefault");
    }
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
    conf.push_str("remote-control:\n  control-enable: no\n");
    for (name, addr) in stubs {
        let _ = write!(
            conf,
            "stub-zone:\n  name: \"{name}.\"\n  stub-addr: {}@{}\n",
            addr.ip(),
            addr.port()
        );
    }
    conf
}
