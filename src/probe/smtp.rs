//! SMTP probe of one address of one MX host: connect → 220 banner → EHLO → STARTTLS (per
//! policy) → TLS (rustls: SNI, name and chain checked, days to expiry) → EHLO → optional RCPT
//! checks → QUIT. **Never DATA.** Every phase runs under its own timeout, so a server that
//! trickles bytes cannot hold a probe longer than the phase timeout.
//!
//! A small client on tokio rather than a mail crate: the probe needs per-phase timing, the raw
//! reply of each phase, 4xx kept apart from 5xx, and a STARTTLS upgrade it controls; mail
//! *sending* libraries hide exactly those.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rustls::pki_types::ServerName;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::tls::{certificate_info, CertificateInfo};
use crate::config::StartTls;
use crate::model::Fqdn;

/// What to check beyond the greeting.
#[derive(Clone)]
pub struct SmtpPolicy {
    pub port: u16,
    /// Per phase.
    pub timeout: Duration,
    pub starttls: StartTls,
    pub ehlo_name: Fqdn,
    pub cert_min_days: u32,
    pub tls: Arc<rustls::ClientConfig>,
    /// RCPT checks; `None` skips them.
    pub rcpt: Option<RcptCheck>,
}

#[derive(Clone, Debug)]
pub struct RcptCheck {
    /// `postmaster@domain` must be accepted.
    pub domain: Fqdn,
    /// For backups: a recipient in a foreign domain must be refused (no open relay).
    pub refuse_relay: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Connect,
    Banner,
    Ehlo,
    Starttls,
    Tls,
    EhloTls,
    MailFrom,
    RcptPostmaster,
    RcptRelay,
    Quit,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Connect => "connect",
            Phase::Banner => "banner",
            Phase::Ehlo => "ehlo",
            Phase::Starttls => "starttls",
            Phase::Tls => "tls",
            Phase::EhloTls => "ehlo_tls",
            Phase::MailFrom => "mail_from",
            Phase::RcptPostmaster => "rcpt_postmaster",
            Phase::RcptRelay => "rcpt_relay",
            Phase::Quit => "quit",
        }
    }
}

/// Why a probe failed. 4xx (senders queue and retry) is kept apart from 5xx (senders bounce).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    Timeout,
    Network,
    TempReject,
    PermReject,
    Protocol,
    NoStarttls,
    Tls,
    Certificate,
    OpenRelay,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    pub phase: Phase,
    pub kind: FailureKind,
    pub detail: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} in {}: {}",
            kind_label(&self.kind),
            self.phase.as_str(),
            self.detail
        )
    }
}

fn kind_label(k: &FailureKind) -> &'static str {
    match k {
        FailureKind::Timeout => "timeout",
        FailureKind::Network => "network error",
        FailureKind::TempReject => "temporary rejection (4xx)",
        FailureKind::PermReject => "permanent rejection (5xx)",
        FailureKind::Protocol => "protocol error",
        FailureKind::NoStarttls => "STARTTLS not offered",
        FailureKind::Tls => "TLS handshake failed",
        FailureKind::Certificate => "certificate problem",
        FailureKind::OpenRelay => "open relay",
    }
}

/// One phase as it happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PhaseRecord {
    pub phase: Phase,
    pub latency_ms: u64,
    pub code: Option<u16>,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SmtpReport {
    pub host: Fqdn,
    pub address: SocketAddr,
    pub pass: bool,
    pub failure: Option<Failure>,
    /// Problems that do not fail the probe (opportunistic TLS that failed, cert near expiry
    /// under `opportunistic`…).
    pub warnings: Vec<String>,
    pub phases: Vec<PhaseRecord>,
    pub starttls_offered: Option<bool>,
    pub certificate: Option<CertificateInfo>,
    pub latency_ms: u64,
}

impl SmtpReport {
    /// One line for verdict reasons: `250 ok` or the failure.
    pub fn summary(&self) -> String {
        match &self.failure {
            Some(f) => f.to_string(),
            None => {
                let tls = if self.certificate.is_some() {
                    ", TLS ok"
                } else {
                    ""
                };
                format!("SMTP ok{tls} in {} ms", self.latency_ms)
            }
        }
    }
}

/// Longest reply we read (lines × bytes), so a hostile server cannot grow our memory.
const MAX_REPLY_LINES: usize = 100;
const MAX_LINE: usize = 2048;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

struct Reply {
    code: u16,
    lines: Vec<String>,
}

impl Reply {
    fn text(&self) -> String {
        self.lines.join(" / ")
    }
}

struct Session<'a> {
    policy: &'a SmtpPolicy,
    report: SmtpReport,
}

/// Probes `address` as MX host `host`. Never fails: every failure is in the report.
pub async fn probe(
    host: &Fqdn,
    address: IpAddr,
    policy: &SmtpPolicy,
    now: DateTime<Utc>,
) -> SmtpReport {
    let started = Instant::now();
    let mut s = Session {
        policy,
        report: SmtpReport {
            host: host.clone(),
            address: SocketAddr::new(address, policy.port),
            pass: false,
            failure: None,
            warnings: Vec::new(),
            phases: Vec::new(),
            starttls_offered: None,
            certificate: None,
            latency_ms: 0,
        },
    };
    let outcome = s.dialogue(now, false).await;
    s.report.latency_ms = started.elapsed().as_millis() as u64;
    match outcome {
        Ok(()) => s.report.pass = true,
        Err(f) => s.report.failure = Some(f),
    }
    s.report
}

impl Session<'_> {
    /// `plaintext`: the retry after opportunistic TLS failed, which does not use STARTTLS.
    async fn dialogue(&mut self, now: DateTime<Utc>, plaintext: bool) -> Result<(), Failure> {
        let t = Instant::now();
        let addr = self.report.address;
        let tcp = match tokio::time::timeout(self.policy.timeout, TcpStream::connect(addr)).await {
            Err(_) => {
                return Err(fail(
                    Phase::Connect,
                    FailureKind::Timeout,
                    format!("no answer within {:?}", self.policy.timeout),
                ))
            }
            Ok(Err(e)) => return Err(fail(Phase::Connect, FailureKind::Network, e.to_string())),
            Ok(Ok(s)) => s,
        };
        self.record(Phase::Connect, t, None, String::new());
        let _ = tcp.set_nodelay(true);
        let mut conn: BufReader<Box<dyn Io>> = BufReader::new(Box::new(tcp));

        self.expect(&mut conn, Phase::Banner, None, &[220]).await?;
        let ehlo = format!("EHLO {}\r\n", self.policy.ehlo_name.without_dot());
        let caps = self
            .expect(&mut conn, Phase::Ehlo, Some(&ehlo), &[250])
            .await?;
        let offered = caps.lines.iter().skip(1).any(|l| {
            l.eq_ignore_ascii_case("STARTTLS") || l.to_ascii_uppercase().starts_with("STARTTLS ")
        });
        self.report.starttls_offered = Some(offered);

        let use_tls = match (self.policy.starttls, offered) {
            (StartTls::Off, _) => false,
            (StartTls::Require, false) => {
                return Err(fail(
                    Phase::Ehlo,
                    FailureKind::NoStarttls,
                    "EHLO reply does not list STARTTLS (policy: require)".into(),
                ))
            }
            (StartTls::Opportunistic, false) => {
                self.report.warnings.push("STARTTLS not offered".into());
                false
            }
            (_, true) => !plaintext,
        };
        if use_tls {
            match self.upgrade(conn, now).await {
                Ok(c) => conn = c,
                Err(f) if self.policy.starttls == StartTls::Opportunistic => {
                    // Senders fall back to plaintext on a new connection, and so does the probe:
                    // the host must take mail there, and the RCPT checks (the relay check above
                    // all) must not be skipped.
                    self.report
                        .warnings
                        .push(format!("opportunistic TLS failed: {f}"));
                    return Box::pin(self.dialogue(now, true)).await;
                }
                Err(f) => return Err(f),
            }
            self.expect(&mut conn, Phase::EhloTls, Some(&ehlo), &[250])
                .await?;
        }

        if let Some(rcpt) = self.policy.rcpt.clone() {
            self.expect(&mut conn, Phase::MailFrom, Some("MAIL FROM:<>\r\n"), &[250])
                .await?;
            let postmaster = format!("RCPT TO:<postmaster@{}>\r\n", rcpt.domain.without_dot());
            self.expect(
                &mut conn,
                Phase::RcptPostmaster,
                Some(&postmaster),
                &[250, 251],
            )
            .await?;
            if rcpt.refuse_relay {
                let foreign = foreign_recipient(&rcpt.domain);
                let reply = self
                    .exchange(
                        &mut conn,
                        Phase::RcptRelay,
                        Some(&format!("RCPT TO:<{foreign}>\r\n")),
                    )
                    .await?;
                if (200..300).contains(&reply.code) {
                    return Err(fail(
                        Phase::RcptRelay,
                        FailureKind::OpenRelay,
                        format!(
                            "accepted RCPT TO:<{foreign}> from a stranger: {} {}",
                            reply.code,
                            reply.text()
                        ),
                    ));
                }
            }
        }
        // QUIT is a courtesy: its failure does not fail a probe that got this far.
        if self
            .exchange(&mut conn, Phase::Quit, Some("QUIT\r\n"))
            .await
            .is_err()
        {
            self.report.warnings.push("no reply to QUIT".into());
        }
        Ok(())
    }

    async fn upgrade(
        &mut self,
        mut conn: BufReader<Box<dyn Io>>,
        now: DateTime<Utc>,
    ) -> Result<BufReader<Box<dyn Io>>, Failure> {
        self.expect(&mut conn, Phase::Starttls, Some("STARTTLS\r\n"), &[220])
            .await?;
        if !conn.buffer().is_empty() {
            // Bytes after the 220 would be processed as if protected by TLS (CVE-2011-0411 class).
            return Err(fail(
                Phase::Starttls,
                FailureKind::Protocol,
                "server sent data after its STARTTLS reply".into(),
            ));
        }
        let name =
            ServerName::try_from(self.report.host.without_dot().to_string()).map_err(|e| {
                fail(
                    Phase::Tls,
                    FailureKind::Tls,
                    format!("invalid SNI name: {e}"),
                )
            })?;
        let t = Instant::now();
        let connector = TlsConnector::from(self.policy.tls.clone());
        let tls = match tokio::time::timeout(
            self.policy.timeout,
            connector.connect(name, conn.into_inner()),
        )
        .await
        {
            Err(_) => {
                return Err(fail(
                    Phase::Tls,
                    FailureKind::Timeout,
                    format!("handshake not done within {:?}", self.policy.timeout),
                ))
            }
            Ok(Err(e)) => {
                let detail = e.to_string();
                let kind = if detail.contains("certificate") {
                    FailureKind::Certificate
                } else {
                    FailureKind::Tls
                };
                return Err(fail(Phase::Tls, kind, detail));
            }
            Ok(Ok(s)) => s,
        };
        let (_, session) = tls.get_ref();
        let version = session
            .protocol_version()
            .map(|v| format!("{v:?}"))
            .unwrap_or_default();
        let cert = session
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|der| certificate_info(der.as_ref(), now));
        self.record(Phase::Tls, t, None, version);
        match cert {
            Some(Ok(info)) => {
                let days = info.days_left;
                let min = i64::from(self.policy.cert_min_days);
                self.report.certificate = Some(info);
                if days < min {
                    return Err(fail(
                        Phase::Tls,
                        FailureKind::Certificate,
                        format!("certificate expires in {days} day(s); minimum is {min}"),
                    ));
                }
            }
            Some(Err(e)) => self
                .report
                .warnings
                .push(format!("certificate not parsed: {e}")),
            None => self.report.warnings.push("no peer certificate".into()),
        }
        Ok(BufReader::new(Box::new(tls)))
    }

    /// Sends `cmd` (if any), reads the reply, and requires one of `ok` codes.
    async fn expect(
        &mut self,
        conn: &mut BufReader<Box<dyn Io>>,
        phase: Phase,
        cmd: Option<&str>,
        ok: &[u16],
    ) -> Result<Reply, Failure> {
        let reply = self.exchange(conn, phase, cmd).await?;
        if ok.contains(&reply.code) {
            return Ok(reply);
        }
        let kind = match reply.code {
            400..=499 => FailureKind::TempReject,
            500..=599 => FailureKind::PermReject,
            _ => FailureKind::Protocol,
        };
        Err(fail(
            phase,
            kind,
            format!("{} {}", reply.code, reply.text()),
        ))
    }

    async fn exchange(
        &mut self,
        conn: &mut BufReader<Box<dyn Io>>,
        phase: Phase,
        cmd: Option<&str>,
    ) -> Result<Reply, Failure> {
        let t = Instant::now();
        let io = async {
            if let Some(cmd) = cmd {
                conn.get_mut()
                    .write_all(cmd.as_bytes())
                    .await
                    .map_err(|e| (FailureKind::Network, e.to_string()))?;
                conn.get_mut()
                    .flush()
                    .await
                    .map_err(|e| (FailureKind::Network, e.to_string()))?;
            }
            read_reply(conn).await
        };
        match tokio::time::timeout(self.policy.timeout, io).await {
            Err(_) => Err(fail(
                phase,
                FailureKind::Timeout,
                format!("no complete reply within {:?}", self.policy.timeout),
            )),
            Ok(Err((kind, detail))) => Err(fail(phase, kind, detail)),
            Ok(Ok(reply)) => {
                self.record(phase, t, Some(reply.code), reply.text());
                Ok(reply)
            }
        }
    }

    fn record(&mut self, phase: Phase, since: Instant, code: Option<u16>, text: String) {
        self.report.phases.push(PhaseRecord {
            phase,
            latency_ms: since.elapsed().as_millis() as u64,
            code,
            text,
        });
    }
}

fn fail(phase: Phase, kind: FailureKind, detail: String) -> Failure {
    Failure {
        phase,
        kind,
        detail,
    }
}

/// A recipient no MX of `domain` should accept from a stranger.
fn foreign_recipient(domain: &Fqdn) -> String {
    let foreign = if domain.as_str() == "example.net." {
        "example.org"
    } else {
        "example.net"
    };
    format!("mxguard-relay-probe@{foreign}")
}

/// Reads one (possibly multi-line) reply: `250-first`, …, `250 last`.
async fn read_reply(conn: &mut BufReader<Box<dyn Io>>) -> Result<Reply, (FailureKind, String)> {
    let mut lines = Vec::new();
    let mut code = None;
    loop {
        let mut raw = Vec::new();
        let n = (&mut *conn)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut raw)
            .await
            .map_err(|e| (FailureKind::Network, e.to_string()))?;
        if n == 0 {
            return Err((
                FailureKind::Network,
                "connection closed by the server".into(),
            ));
        }
        if !raw.ends_with(b"\n") {
            return Err((
                FailureKind::Protocol,
                format!("reply line longer than {MAX_LINE} bytes"),
            ));
        }
        let line = String::from_utf8_lossy(&raw).trim_end().to_string();
        // By `get`, not `split_at`: lossy decoding can put a multi-byte character across
        // byte 3, and slicing inside it would panic on a hostile or garbled reply.
        let (num, rest) = match line.get(..3) {
            Some(num) => (num, line.get(3..).unwrap_or_default()),
            None => (line.as_str(), ""),
        };
        let this: u16 = num
            .parse()
            .ok()
            .filter(|c| (200..600).contains(c))
            .ok_or_else(|| {
                (
                    FailureKind::Protocol,
                    format!("not an SMTP reply: {line:?}"),
                )
            })?;
        if *code.get_or_insert(this) != this {
            return Err((
                FailureKind::Protocol,
                format!("reply code changed mid-reply: {line:?}"),
            ));
        }
        let (sep, text) = match rest.chars().next() {
            Some(c) => (c, rest[c.len_utf8()..].to_string()),
            None => (' ', String::new()),
        };
        lines.push(text);
        if sep != '-' {
            return Ok(Reply { code: this, lines });
        }
        if lines.len() >= MAX_REPLY_LINES {
            return Err((
                FailureKind::Protocol,
                format!("reply longer than {MAX_REPLY_LINES} lines"),
            ));
        }
    }
}
