//! SMTP DANE (RFC 7672): would a DANE sender deliver to the backup? Pure: the TLSA records
//! found at `_25._tcp.<host>` (`lookup` asks the configured resolvers) and what the host
//! presented in the SMTP probe (`probe::smtp`: STARTTLS offered, the peer's DER chain) go in,
//! a verdict per host and the domain's problems and notes come out. Reported by
//! `mxguard check` and the drill's `dane` step; `serve` looks at it with each MTA-STS look
//! (`watch`) and decides failovers on [`Evaluation::backup_refused`].
//!
//! Rules:
//! - **No TLSA** (NXDOMAIN / NODATA) at the host: DANE senders fall back to opportunistic
//!   TLS, nothing is refused ([`Verdict::NoTlsa`]). When the domain's primaries publish TLSA
//!   and a backup does not, that backup is a **downgrade**: a note, not a problem.
//! - **Usable records** are usage 3 (DANE-EE) and 2 (DANE-TA) with selector 0/1 and matching
//!   0/1/2; usages 0/1 (PKIX-TA/EE) and unknown parameters are unusable for SMTP (§3.1.3).
//! - TLSA present (any record) but **no STARTTLS**: every DANE sender defers
//!   ([`Verdict::NoStartTls`]).
//! - Usable records present: the presented chain must match one of them, DANE-EE against the
//!   leaf, DANE-TA against a certificate after the leaf (a server must send its TA, §3.2.2);
//!   else every DANE sender defers ([`Verdict::Mismatch`]).
//! - Only unusable records: DANE senders require TLS but authenticate nothing (§2.2), so mail
//!   flows with STARTTLS ([`Verdict::Unusable`]).
//! - A lookup that failed (SERVFAIL, timeout) or a host whose TLS session was not seen is
//!   [`Verdict::NotChecked`]: not known, never passed.
//! - Records not DNSSEC-validated (no AD bit from the resolver) are still evaluated (the lab
//!   zone is not signed) but noted: real DANE senders ignore insecure TLSA.
//!
//! Not judged here: DANE-TA's chain signatures and the leaf's name (§3.2.2–3.2.3); only the
//! presence of the trust anchor in the chain is.

pub mod lookup;
#[cfg(test)]
mod tests;
pub mod watch;

use std::fmt;

use serde::Serialize;
use sha2::{Digest, Sha256, Sha512};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::model::{Fqdn, Side};

/// One TLSA record (RFC 6698 §2.1), its three parameters as published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tlsa {
    pub usage: u8,
    pub selector: u8,
    pub matching: u8,
    #[serde(serialize_with = "as_hex")]
    pub data: Vec<u8>,
}

fn as_hex<S: serde::Serializer>(data: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex(data))
}

fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

impl fmt::Display for Tlsa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = hex(&self.data);
        let shown = if h.len() > 16 {
            format!("{}…", &h[..16])
        } else {
            h
        };
        write!(
            f,
            "{} {} {} {shown}",
            self.usage, self.selector, self.matching
        )
    }
}

/// DANE-TA and DANE-EE (RFC 7672 §3.1).
const DANE_TA: u8 = 2;
const DANE_EE: u8 = 3;

impl Tlsa {
    /// From RDATA as on the wire: usage, selector, matching type, association data.
    pub fn from_rdata(rdata: &[u8]) -> Result<Tlsa, String> {
        match rdata {
            [usage, selector, matching, data @ ..] => Ok(Tlsa {
                usage: *usage,
                selector: *selector,
                matching: *matching,
                data: data.to_vec(),
            }),
            _ => Err(format!(
                "TLSA RDATA of {} byte(s): at least 3 needed",
                rdata.len()
            )),
        }
    }

    /// Why an SMTP client may not use this record, or `None` when it may.
    pub fn unusable(&self) -> Option<String> {
        if self.usage != DANE_TA && self.usage != DANE_EE {
            return Some(format!(
                "usage {} (only 2 DANE-TA and 3 DANE-EE are usable for SMTP, RFC 7672 §3.1.3)",
                self.usage
            ));
        }
        if self.selector > 1 {
            return Some(format!("unknown selector {}", self.selector));
        }
        match self.matching {
            0 => None,
            1 if self.data.len() != 32 => Some("SHA-256 data that is not 32 bytes".into()),
            2 if self.data.len() != 64 => Some("SHA-512 data that is not 64 bytes".into()),
            1 | 2 => None,
            m => Some(format!("unknown matching type {m}")),
        }
    }

    /// Whether `der` (one certificate) is what this record associates. An unparseable
    /// certificate matches nothing.
    pub fn matches_cert(&self, der: &[u8]) -> bool {
        let selected: Vec<u8> = match self.selector {
            0 => der.to_vec(),
            1 => match X509Certificate::from_der(der) {
                Ok((_, cert)) => cert.public_key().raw.to_vec(),
                Err(_) => return false,
            },
            _ => return false,
        };
        match self.matching {
            0 => selected == self.data,
            1 => Sha256::digest(&selected).as_slice() == self.data.as_slice(),
            2 => Sha512::digest(&selected).as_slice() == self.data.as_slice(),
            _ => false,
        }
    }
}

/// What the TLSA lookup at `_25._tcp.<host>` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum TlsaFound {
    /// NXDOMAIN or NODATA.
    None,
    Records {
        records: Vec<Tlsa>,
        /// The resolver set the AD bit: the answer was DNSSEC-validated.
        authenticated: bool,
    },
    /// No resolver gave an answer to trust: SERVFAIL, timeout, a record that does not parse.
    Failed { why: String },
}

/// What the host presented at one address, from the SMTP probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presented {
    /// STARTTLS was not offered in EHLO.
    NoStartTls,
    /// The TLS handshake completed: the peer's chain, leaf first (DER).
    Chain(Vec<Vec<u8>>),
    /// The session never got to see a certificate (connection refused, handshake failed…).
    NotSeen(String),
}

/// What a DANE sender would do with one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "result", content = "detail")]
pub enum Verdict {
    /// A usable record matched the presented chain (the record, as text).
    Matches(String),
    NoTlsa,
    Mismatch(String),
    NoStartTls,
    /// TLSA published, none usable: TLS is required but nothing is authenticated.
    Unusable(String),
    NotChecked(String),
}

impl Verdict {
    /// Whether every DANE sender would defer the mail.
    pub fn refused(&self) -> bool {
        matches!(self, Verdict::Mismatch(_) | Verdict::NoStartTls)
    }

    /// Worse verdicts sort later: a host is as bad as its worst address.
    fn rank(&self) -> u8 {
        match self {
            Verdict::NoTlsa => 0,
            Verdict::Matches(_) => 1,
            Verdict::Unusable(_) => 2,
            Verdict::NotChecked(_) => 3,
            Verdict::Mismatch(_) => 4,
            Verdict::NoStartTls => 5,
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Matches(r) => write!(f, "TLSA {r} matches the certificate"),
            Verdict::NoTlsa => f.write_str("no TLSA record"),
            Verdict::Mismatch(why) => write!(f, "MISMATCH: {why}"),
            Verdict::NoStartTls => f.write_str("TLSA published but STARTTLS not offered"),
            Verdict::Unusable(why) => write!(f, "no usable TLSA record ({why})"),
            Verdict::NotChecked(why) => write!(f, "not checked: {why}"),
        }
    }
}

/// One host's verdict at one address, as a DANE sender connecting there would see it.
pub fn judge(found: &TlsaFound, presented: &Presented) -> Verdict {
    let records = match found {
        TlsaFound::None => return Verdict::NoTlsa,
        TlsaFound::Failed { why } => return Verdict::NotChecked(format!("TLSA lookup: {why}")),
        TlsaFound::Records { records, .. } => records,
    };
    let chain = match presented {
        Presented::NoStartTls => return Verdict::NoStartTls,
        Presented::NotSeen(why) => return Verdict::NotChecked(format!("no TLS session: {why}")),
        Presented::Chain(chain) => chain,
    };
    let usable: Vec<&Tlsa> = records.iter().filter(|r| r.unusable().is_none()).collect();
    if usable.is_empty() {
        let why: Vec<String> = records
            .iter()
            .filter_map(|r| r.unusable().map(|u| format!("{r}: {u}")))
            .collect();
        return Verdict::Unusable(why.join("; "));
    }
    let Some(leaf) = chain.first() else {
        return Verdict::Mismatch("the server presented no certificate".into());
    };
    for r in &usable {
        let hit = if r.usage == DANE_EE {
            r.matches_cert(leaf)
        } else {
            chain.iter().skip(1).any(|c| r.matches_cert(c))
        };
        if hit {
            return Verdict::Matches(r.to_string());
        }
    }
    let shown: Vec<String> = usable.iter().map(|r| r.to_string()).collect();
    Verdict::Mismatch(format!(
        "no usable TLSA record ({}) matches the presented chain of {} certificate(s); the leaf's SPKI SHA-256 is {}",
        shown.join(", "),
        chain.len(),
        spki_sha256(leaf).unwrap_or_else(|e| format!("unknown ({e})"))
    ))
}

/// The SHA-256 of a certificate's SubjectPublicKeyInfo, in hex: the data of its `3 1 1`
/// record, shown so an operator can compare with what is published.
pub fn spki_sha256(der: &[u8]) -> Result<String, String> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
    Ok(hex(&Sha256::digest(cert.public_key().raw)))
}

/// The verdict at one probed address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AtAddress {
    pub address: String,
    pub verdict: Verdict,
}

/// One host's DANE picture: its TLSA and the verdict at each probed address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostDane {
    pub host: Fqdn,
    pub role: Side,
    pub tlsa: TlsaFound,
    pub addresses: Vec<AtAddress>,
    /// The worst of the addresses' verdicts (a sender may connect to any of them).
    pub verdict: Verdict,
}

impl HostDane {
    /// Judges every address; a host with no address probed is judged on the TLSA alone.
    pub fn judge(
        host: Fqdn,
        role: Side,
        tlsa: TlsaFound,
        presented: Vec<(String, Presented)>,
    ) -> HostDane {
        let addresses: Vec<AtAddress> = presented
            .into_iter()
            .map(|(address, p)| AtAddress {
                address,
                verdict: judge(&tlsa, &p),
            })
            .collect();
        let verdict = addresses
            .iter()
            .map(|a| a.verdict.clone())
            .max_by_key(Verdict::rank)
            .unwrap_or_else(|| judge(&tlsa, &Presented::NotSeen("no address probed".into())));
        HostDane {
            host,
            role,
            tlsa,
            addresses,
            verdict,
        }
    }

    /// Whether the host publishes TLSA (what makes a domain "use DANE").
    pub fn publishes(&self) -> bool {
        matches!(self.tlsa, TlsaFound::Records { .. })
    }
}

/// The domain's DANE evaluation: every host, what would be refused, what is worth a note.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Evaluation {
    pub hosts: Vec<HostDane>,
    /// Whether a primary host publishes TLSA.
    pub primary_uses_dane: bool,
    /// Hosts every DANE sender would defer mail to, one line each.
    pub problems: Vec<String>,
    /// Downgrades, unvalidated records, hosts not checked.
    pub notes: Vec<String>,
}

impl Evaluation {
    pub fn new(hosts: Vec<HostDane>) -> Evaluation {
        let primary_uses_dane = hosts
            .iter()
            .any(|h| h.role == Side::Primary && h.publishes());
        let mut problems = Vec::new();
        let mut notes = Vec::new();
        for h in &hosts {
            let role = h.role.as_str();
            for a in h.addresses.iter().filter(|a| a.verdict.refused()) {
                problems.push(format!(
                    "{role} {} at {}: DANE senders would defer mail to it: {}",
                    h.host, a.address, a.verdict
                ));
            }
            if h.addresses.is_empty() && h.verdict.refused() {
                problems.push(format!(
                    "{role} {}: DANE senders would defer mail to it: {}",
                    h.host, h.verdict
                ));
            }
            if let TlsaFound::Records {
                authenticated: false,
                ..
            } = h.tlsa
            {
                notes.push(format!(
                    "{role} {}: TLSA not DNSSEC-validated (no AD bit): senders would ignore these records",
                    h.host
                ));
            }
            // A host judged on its TLSA alone (a drill's primaries) was not meant to be probed.
            let looked = !h.addresses.is_empty() || matches!(h.tlsa, TlsaFound::Failed { .. });
            if let (Verdict::NotChecked(why), true) = (&h.verdict, looked) {
                notes.push(format!("{role} {}: DANE not checked: {why}", h.host));
            }
            if h.role == Side::Backup && primary_uses_dane && h.tlsa == TlsaFound::None {
                notes.push(format!(
                    "backup {} publishes no TLSA while the primaries do: a failover downgrades DANE senders to opportunistic TLS",
                    h.host
                ));
            }
        }
        Evaluation {
            hosts,
            primary_uses_dane,
            problems,
            notes,
        }
    }

    /// The backups' hosts.
    pub fn backups(&self) -> impl Iterator<Item = &HostDane> {
        self.hosts.iter().filter(|h| h.role == Side::Backup)
    }

    /// Why every DANE sender would defer mail to the backup side, or `None` (what `serve`'s
    /// failover decision uses). A DANE sender that fails one address tries the host's others
    /// and then the side's other hosts (RFC 7672), so the side is refused only when
    /// every backup address it could reach is refused: each probed address, or a host's own
    /// verdict when none was probed. A backup not checked, or with no TLSA, is not refused.
    pub fn backup_refused(&self) -> Option<String> {
        let backups: Vec<&HostDane> = self.backups().collect();
        let refused = |h: &&HostDane| {
            if h.addresses.is_empty() {
                h.verdict.refused()
            } else {
                h.addresses.iter().all(|a| a.verdict.refused())
            }
        };
        if backups.is_empty() || !backups.iter().all(refused) {
            return None;
        }
        let each: Vec<String> = backups
            .iter()
            .map(|h| format!("{} ({})", h.host.without_dot(), h.verdict))
            .collect();
        Some(format!(
            "DANE: the backup MX {}: every DANE sender (RFC 7672) would defer mail to it",
            each.join("; ")
        ))
    }
}
