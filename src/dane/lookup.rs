//! The TLSA lookup at `_25._tcp.<host>` (RFC 7672 §2.2) through the configured resolvers,
//! and the presented chains taken from the SMTP probe's reports.

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData as WireData, RecordType as WireType};

use super::{Presented, Tlsa, TlsaFound};
use crate::model::Fqdn;
use crate::probe::budget::SharedDns;
use crate::probe::dns::DnsClient;
use crate::probe::smtp::SmtpReport;

/// The TLSA owner name of an SMTP server on port 25.
pub fn tlsa_name(host: &Fqdn) -> Result<Fqdn, String> {
    Fqdn::parse(&format!("_25._tcp.{}", host.as_str())).map_err(|e| e.to_string())
}

/// Asks each resolver in turn until one answers NOERROR or NXDOMAIN; the failures of all of
/// them otherwise (a sender that cannot look its TLSA up defers, so this is not "no TLSA").
/// Each query takes the spare part of its resolver's budget in `dns`.
pub async fn tlsa(dns: &SharedDns, resolvers: &[DnsClient], host: &Fqdn) -> TlsaFound {
    let name = match tlsa_name(host) {
        Ok(n) => n,
        Err(e) => return TlsaFound::Failed { why: e },
    };
    let mut errors = Vec::new();
    for r in resolvers {
        dns.background(r.server, 1).await;
        match r.query_message(&name, WireType::TLSA).await {
            Err(e) => errors.push(format!("{}: {e}", r.server)),
            Ok(msg) => match msg.metadata.response_code {
                ResponseCode::NXDomain => return TlsaFound::None,
                ResponseCode::NoError => {
                    let records: Vec<Tlsa> = msg
                        .answers
                        .iter()
                        .filter_map(|rec| match &rec.data {
                            WireData::TLSA(t) => Some(Tlsa {
                                usage: u8::from(t.cert_usage),
                                selector: u8::from(t.selector),
                                matching: u8::from(t.matching),
                                data: t.cert_data.clone(),
                            }),
                            _ => None,
                        })
                        .collect();
                    if records.is_empty() {
                        return TlsaFound::None;
                    }
                    return TlsaFound::Records {
                        records,
                        authenticated: msg.metadata.authentic_data,
                    };
                }
                other => errors.push(format!("{}: {other:?}", r.server)),
            },
        }
    }
    if errors.is_empty() {
        errors.push("no resolver configured".into());
    }
    TlsaFound::Failed {
        why: errors.join("; "),
    }
}

/// What one probed address presented, from its SMTP report.
pub fn presented(report: &SmtpReport) -> Presented {
    if report.starttls_offered == Some(false) {
        return Presented::NoStartTls;
    }
    if !report.chain.is_empty() {
        return Presented::Chain(report.chain.clone());
    }
    let why = match (&report.failure, report.starttls_offered) {
        (Some(f), _) => f.to_string(),
        (None, None) => "STARTTLS was not reached".to_string(),
        (None, Some(_)) => "STARTTLS not used (starttls = \"off\"?)".to_string(),
    };
    Presented::NotSeen(why)
}
