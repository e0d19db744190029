//! SPF, DMARC and DKIM records (present, parseable) and SPF evaluation of backup addresses,
//! through mail-auth.

use std::net::{IpAddr, SocketAddr};

use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::dmarc::Dmarc;
use mail_auth::hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use mail_auth::spf::verify::SpfParameters;
use mail_auth::spf::Spf;
use mail_auth::MessageAuthenticator;
use serde::Serialize;

use crate::model::{Fqdn, RData, RecordType};
use crate::probe::dns::DnsClient;

/// One policy record: where it was looked for, what was found, whether it parses.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyRecord {
    pub kind: &'static str,
    pub name: String,
    pub present: bool,
    pub record: Option<String>,
    pub error: Option<String>,
}

/// Whether one backup address may send for the domain by its SPF.
#[derive(Debug, Clone, Serialize)]
pub struct BackupSpf {
    pub host: Fqdn,
    pub address: IpAddr,
    pub result: String,
    pub pass: bool,
}

async fn txt_starting(client: &DnsClient, name: &str, prefix: &str) -> Option<String> {
    let name = Fqdn::parse(name).ok()?;
    let answer = client.query(&name, RecordType::Txt).await;
    answer.records.into_iter().find_map(|r| match r {
        RData::Txt(t)
            if t.to_ascii_lowercase()
                .starts_with(&prefix.to_ascii_lowercase()) =>
        {
            Some(t)
        }
        _ => None,
    })
}

fn policy<T: TxtRecordParser>(
    kind: &'static str,
    name: String,
    found: Option<String>,
) -> PolicyRecord {
    let error = found
        .as_ref()
        .and_then(|t| T::parse(t.as_bytes()).err().map(|e| e.to_string()));
    PolicyRecord {
        kind,
        name,
        present: found.is_some(),
        record: found,
        error,
    }
}

pub async fn spf_record(client: &DnsClient, domain: &Fqdn) -> PolicyRecord {
    let found = txt_starting(client, domain.as_str(), "v=spf1").await;
    policy::<Spf>("SPF", domain.to_string(), found)
}

pub async fn dmarc_record(client: &DnsClient, domain: &Fqdn) -> PolicyRecord {
    let name = format!("_dmarc.{domain}");
    let found = txt_starting(client, &name, "v=DMARC1").await;
    policy::<Dmarc>("DMARC", name, found)
}

pub async fn dkim_record(client: &DnsClient, domain: &Fqdn, selector: &str) -> PolicyRecord {
    let name = format!("{selector}._domainkey.{domain}");
    // DKIM keys need not start with v=DKIM1; take any TXT there.
    let found = txt_starting(client, &name, "").await;
    policy::<DomainKey>("DKIM", name, found)
}

/// Evaluates the domain's SPF (as `MAIL FROM:<postmaster@domain>`) for each backup address,
/// with mail-auth resolving through `resolver`.
pub async fn backups_in_spf(
    resolver: SocketAddr,
    domain: &Fqdn,
    backups: &[(Fqdn, IpAddr)],
    ehlo_name: &Fqdn,
) -> Vec<BackupSpf> {
    let mut ns = NameServerConfig::udp_and_tcp(resolver.ip());
    for c in &mut ns.connections {
        c.port = resolver.port();
    }
    let auth = match MessageAuthenticator::new(
        ResolverConfig::from_name_servers(vec![ns]),
        ResolverOpts::default(),
    ) {
        Ok(a) => a,
        Err(e) => {
            return backups
                .iter()
                .map(|(h, a)| BackupSpf {
                    host: h.clone(),
                    address: *a,
                    result: format!("not evaluated: {e}"),
                    pass: false,
                })
                .collect()
        }
    };
    let sender = format!("postmaster@{}", domain.without_dot());
    let mut out = Vec::new();
    for (host, address) in backups {
        let params = SpfParameters::verify_mail_from(
            *address,
            host.without_dot(),
            ehlo_name.without_dot(),
            &sender,
        );
        let output = auth.verify_spf(params).await;
        let result = output.result();
        out.push(BackupSpf {
            host: host.clone(),
            address: *address,
            result: result.to_string(),
            pass: result == mail_auth::SpfResult::Pass,
        });
    }
    out
}
