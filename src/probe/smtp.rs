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
    /// For the whole session (`None`: only the phase timeouts bound it). A [`Prober`] treats
    /// it as the budget of a whole target probe, DNS included (`vantage::probe_deadline`):
    /// a round's verdict must be in before the previous one stops being fresh.
    ///
    /// [`Prober`]: crate::probe::target::Prober
    pub deadline: Option<Duration>,
    pub starttls: StartTls,
    pub ehlo_name: Fqdn,
    pub cert_min_days: u32,
    pub tls: Arc<rustls::ClientConfig>,
    /// RCPT checks; `None` skips them.
    pub rcpt: Option<RcptCheck>,
    /// Keep the peer's DER chain in the report (`SmtpReport::chain`) for DANE: `check`,
    /// drills and `serve`'s DANE look (`dane::watch`) do; `serve`'s health rounds do not, since
    /// their reports are cloned per domain every round.
    pub keep_chain: bool,
}

/// RCPT checks: one session carries those of every domain that shares the host, in
/// transactions of at most [`RCPT_BATCH`] recipients (`MAIL FROM:<>`, the RCPTs, `RSET`).
#[derive(Clone, Debug)]
pub struct RcptCheck {
    /// `postmaster@domain` must be accepted, for each of these.
    pub domains: Vec<Fqdn>,
    /// For backups: a recipient in a foreign domain must be refused (no open relay). A property
    /// of the host, checked once per session.
    pub refuse_relay: bool,
}

impl RcptCheck {
    /// The checks of one domain.
    pub fn one(domain: Fqdn, refuse_relay: bool) -> Self {
        RcptCheck {
            domains: vec![domain],
            refuse_relay,
        }
    }
}

/// Recipients per transaction: well under Postfix's `smtpd_recipient_limit` (1,000) and the
/// 100 that RFC 5321 (4.5.3.1.8) requires servers to accept.
pub const RCPT_BATCH: usize = 100;

/// What the host answered to `RCPT TO:<postmaster@domain>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Recipient {
    pub domain: Fqdn,
    pub latency_ms: u64,
    pub code: u16,
    pub text: String,
    /// `None`: accepted.
    pub failure: Option<Failure>,
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
    Rset,
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
            Phase::Rset => "rset",
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

impl FailureKind {
    /// A 4xx: the host answered and asks to be tried again later (senders queue).
    pub fn is_soft(&self) -> bool {
        *self == FailureKind::TempReject
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
    /// The peer's chain as presented (DER, leaf first), for DANE (`crate::dane`), when
    /// [`SmtpPolicy::keep_chain`]: not serialized (the `certificate` facts are what reports
    /// show).
    #[serde(skip)]
    pub chain: Vec<Vec<u8>>,
    pub latency_ms: u64,
    /// The postmaster RCPT of each domain checked in this session. `pass` and `failure` are
    /// the host's alone (a host that refuses one domain's postmaster still serves the others);
    /// [`SmtpReport::for_domain`] folds in one domain's answer. Sorted by domain.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<Recipient>,
}

impl SmtpReport {
    /// The report as one domain sees it: the host's outcome, then (if the host passed) whether
    /// it accepted that domain's postmaster, which also appears among the phases after
    /// `MAIL FROM`. Other domains' recipients are left out.
    pub fn for_domain(&self, domain: &Fqdn) -> SmtpReport {
        let mine = self.recipient(domain);
        let mut phases = self.phases.clone();
        if let Some(r) = mine {
            let at = phases
                .iter()
                .position(|p| p.phase == Phase::MailFrom)
                .map_or(phases.len(), |i| i + 1);
            phases.insert(
                at,
                PhaseRecord {
                    phase: Phase::RcptPostmaster,
                    latency_ms: r.latency_ms,
                    code: Some(r.code),
                    text: r.text.clone(),
                },
            );
        }
        let failure = self
            .failure
            .clone()
            .or_else(|| mine.and_then(|r| r.failure.clone()));
        SmtpReport {
            host: self.host.clone(),
            address: self.address,
            pass: failure.is_none() && self.pass,
            failure,
            warnings: self.warnings.clone(),
            phases,
            starttls_offered: self.starttls_offered,
            certificate: self.certificate.clone(),
            chain: self.chain.clone(),
            latency_ms: self.latency_ms,
            recipients: mine.cloned().into_iter().collect(),
        }
    }

    /// `domain`'s postmaster RCPT in this session, if it was checked (or carried forward).
    pub fn recipient(&self, domain: &Fqdn) -> Option<&Recipient> {
        self.recipients
            .binary_search_by(|r| r.domain.cmp(domain))
            .ok()
            .map(|i| &self.recipients[i])
    }

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

/// The most of a reply's text that is kept: it is stored in observations, events and
/// webhooks, once per domain of a shared host, so a hostile server's 200 KB reply must not be.
pub const MAX_REPLY_TEXT: usize = 512;

impl Reply {
    /// The reply's lines joined, cut to [`MAX_REPLY_TEXT`] bytes.
    fn text(&self) -> String {
        cut_reply_text(self.lines.join(" / "))
    }
}

/// `text` cut to [`MAX_REPLY_TEXT`] bytes at a character boundary, `…` marking the cut.
fn cut_reply_text(mut text: String) -> String {
    if text.len() > MAX_REPLY_TEXT {
        let mut cut = MAX_REPLY_TEXT - "…".len();
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

struct Session<'a> {
    policy: &'a SmtpPolicy,
    report: SmtpReport,
    /// The phase under way (named when the session deadline cuts it short).
    current: Phase,
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
            chain: Vec::new(),
            latency_ms: 0,
            recipients: Vec::new(),
        },
        current: Phase::Connect,
    };
    let outcome = match policy.deadline {
        None => s.dialogue(now, false).await,
        Some(limit) => match tokio::time::timeout(limit, s.dialogue(now, false)).await {
            Ok(outcome) => outcome,
            // A server slow in every reply, each within the phase timeout, still fails here:
            // a session that outlives the vote's freshness would leave its side Unknown.
            Err(_) => Err(fail(
                s.current,
                FailureKind::Timeout,
                format!(
                    "session not done within {limit:?} (every reply slow, each within the phase timeout)"
                ),
            )),
        },
    };
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
        let offered = has_extension(&caps, "STARTTLS");
        let mut pipelining = has_extension(&caps, "PIPELINING");
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
            let caps = self
                .expect(&mut conn, Phase::EhloTls, Some(&ehlo), &[250])
                .await?;
            pipelining = has_extension(&caps, "PIPELINING");
        }

        if let Some(rcpt) = self.policy.rcpt.clone() {
            self.recipients(&mut conn, &rcpt, pipelining).await?;
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

    /// The RCPT checks: every domain's postmaster, [`RCPT_BATCH`] per transaction, and in the
    /// first transaction the stranger's recipient a backup must refuse. A domain's refusal is
    /// that domain's (in `recipients`); with `pipelining` (the server offers it) each
    /// transaction's RCPTs go out in one write. A refused `MAIL FROM`, a `421` (the server is closing
    /// the session) or a broken connection is the host's, and ends the session.
    async fn recipients(
        &mut self,
        conn: &mut BufReader<Box<dyn Io>>,
        rcpt: &RcptCheck,
        pipelining: bool,
    ) -> Result<(), Failure> {
        if rcpt.domains.is_empty() && !rcpt.refuse_relay {
            return Ok(());
        }
        let mut batches: Vec<&[Fqdn]> = rcpt.domains.chunks(RCPT_BATCH).collect();
        if batches.is_empty() {
            batches.push(&[]);
        }
        for (i, batch) in batches.iter().enumerate() {
            if i > 0 {
                let reply = self
                    .reply_quiet(conn, Phase::Rset, Some("RSET\r\n"))
                    .await?;
                host_refusal(Phase::Rset, &reply, &[250])?;
                let reply = self
                    .reply_quiet(conn, Phase::MailFrom, Some("MAIL FROM:<>\r\n"))
                    .await?;
                host_refusal(Phase::MailFrom, &reply, &[250])?;
            } else {
                self.expect(conn, Phase::MailFrom, Some("MAIL FROM:<>\r\n"), &[250])
                    .await?;
            }
            let commands: Vec<String> = batch
                .iter()
                .map(|d| format!("RCPT TO:<postmaster@{}>\r\n", d.without_dot()))
                .collect();
            let t = Instant::now();
            if pipelining {
                // RFC 2920: the whole batch in one write, then the replies in order; a session
                // of thousands of recipients costs a round trip per batch, not per domain.
                self.send(conn, Phase::RcptPostmaster, &commands.concat())
                    .await?;
            }
            for (domain, cmd) in batch.iter().zip(&commands) {
                let sent = (!pipelining).then_some(cmd.as_str());
                let reply = self.reply_quiet(conn, Phase::RcptPostmaster, sent).await?;
                if reply.code == 421 {
                    return Err(rejection(Phase::RcptPostmaster, &reply));
                }
                let failure = (!matches!(reply.code, 250 | 251))
                    .then(|| rejection(Phase::RcptPostmaster, &reply));
                self.report.recipients.push(Recipient {
                    domain: domain.clone(),
                    latency_ms: t.elapsed().as_millis() as u64,
                    code: reply.code,
                    text: reply.text(),
                    failure,
                });
            }
            if i == 0 && rcpt.refuse_relay {
                let foreign = foreign_recipient(&rcpt.domains);
                let reply = self
                    .exchange(
                        conn,
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
                if reply.code == 421 {
                    return Err(rejection(Phase::RcptRelay, &reply));
                }
            }
        }
        // sorted, so that each of thousands of domains finds its answer by binary search
        self.report
            .recipients
            .sort_by(|a, b| a.domain.cmp(&b.domain));
        Ok(())
    }

    /// Like [`Session::exchange`], without a phase record: the per-recipient answers are kept
    /// in `recipients`, not as thousands of phases.
    async fn reply_quiet(
        &mut self,
        conn: &mut BufReader<Box<dyn Io>>,
        phase: Phase,
        cmd: Option<&str>,
    ) -> Result<Reply, Failure> {
        let before = self.report.phases.len();
        let reply = self.exchange(conn, phase, cmd).await;
        self.report.phases.truncate(before);
        reply
    }

    /// Writes `text` (pipelined commands) under the phase timeout.
    async fn send(
        &mut self,
        conn: &mut BufReader<Box<dyn Io>>,
        phase: Phase,
        text: &str,
    ) -> Result<(), Failure> {
        self.current = phase;
        let io = async {
            conn.get_mut().write_all(text.as_bytes()).await?;
            conn.get_mut().flush().await
        };
        match tokio::time::timeout(self.policy.timeout, io).await {
            Err(_) => Err(fail(
                phase,
                FailureKind::Timeout,
                format!("could not send within {:?}", self.policy.timeout),
            )),
            Ok(Err(e)) => Err(fail(phase, FailureKind::Network, e.to_string())),
            Ok(Ok(())) => Ok(()),
        }
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
        self.current = Phase::Tls;
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
        if self.policy.keep_chain {
            self.report.chain = session
                .peer_certificates()
                .map(|c| c.iter().map(|der| der.as_ref().to_vec()).collect())
                .unwrap_or_default();
        }
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
        host_refusal(phase, &reply, ok)?;
        Ok(reply)
    }

    async fn exchange(
        &mut self,
        conn: &mut BufReader<Box<dyn Io>>,
        phase: Phase,
        cmd: Option<&str>,
    ) -> Result<Reply, Failure> {
        self.current = phase;
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

/// Whether an EHLO reply lists `extension` (its first word on a line after the greeting).
fn has_extension(ehlo: &Reply, extension: &str) -> bool {
    ehlo.lines.iter().skip(1).any(|l| {
        l.split_ascii_whitespace()
            .next()
            .is_some_and(|w| w.eq_ignore_ascii_case(extension))
    })
}

/// A refusal as a failure: 4xx temporary, 5xx permanent.
fn rejection(phase: Phase, reply: &Reply) -> Failure {
    let kind = match reply.code {
        400..=499 => FailureKind::TempReject,
        500..=599 => FailureKind::PermReject,
        _ => FailureKind::Protocol,
    };
    fail(phase, kind, format!("{} {}", reply.code, reply.text()))
}

fn host_refusal(phase: Phase, reply: &Reply, ok: &[u16]) -> Result<(), Failure> {
    if ok.contains(&reply.code) {
        Ok(())
    } else {
        Err(rejection(phase, reply))
    }
}

/// A recipient that no MX of the checked `domains` should accept from a stranger.
fn foreign_recipient(domains: &[Fqdn]) -> String {
    let foreign = ["example.net", "example.org", "example.com"]
        .into_iter()
        .find(|f| !domains.iter().any(|d| d.without_dot() == *f))
        .unwrap_or("example.com");
    format!("mxguard-relay-probe@{foreign}")
}

/// A line quoted for a failure's detail, which is stored like a reply's text and is cut the
/// same way: a line may be [`MAX_LINE`] bytes, and escaping can make it six times longer.
fn quote(line: &str) -> String {
    cut_reply_text(format!("{line:?}"))
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
                    format!("not an SMTP reply: {}", quote(&line)),
                )
            })?;
        if *code.get_or_insert(this) != this {
            return Err((
                FailureKind::Protocol,
                format!("reply code changed mid-reply: {}", quote(&line)),
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

#[cfg(test)]
mod fuzz;
