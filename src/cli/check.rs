//! `mxguard check`: argument handling and output.

use std::net::SocketAddr;
use std::process::ExitCode;

use super::{CheckArgs, StartTlsArg};

pub(super) async fn check(args: CheckArgs) -> ExitCode {
    let usage = |msg: String| {
        eprintln!("mxguard check: {msg}");
        ExitCode::from(2)
    };
    let domain = match crate::model::Fqdn::parse(&args.domain) {
        Ok(d) => d,
        Err(e) => return usage(e.to_string()),
    };
    let resolvers = if args.resolvers.is_empty() {
        match system_resolvers() {
            Ok(r) => r,
            Err(e) => return usage(e),
        }
    } else {
        let mut out = Vec::new();
        for r in &args.resolvers {
            match crate::config::parse_server_addr(r) {
                Some(a) => out.push(a),
                None => {
                    return usage(format!(
                        "--resolver: expected \"ip\" or \"ip:port\", got {r:?}"
                    ))
                }
            }
        }
        out
    };
    let mut backups = Vec::new();
    for b in &args.backups {
        match crate::model::Fqdn::parse(b) {
            Ok(h) => backups.push(h),
            Err(e) => return usage(format!("--backup: {e}")),
        }
    }
    let ehlo_name = match crate::model::Fqdn::parse(&args.ehlo_name) {
        Ok(n) => n,
        Err(e) => return usage(format!("--ehlo-name: {e}")),
    };
    let req = crate::check::CheckRequest {
        domain,
        resolvers,
        port: args.port,
        backups,
        ca_file: args.ca_file,
        starttls: match args.starttls {
            StartTlsArg::Require => crate::config::StartTls::Require,
            StartTlsArg::Opportunistic => crate::config::StartTls::Opportunistic,
            StartTlsArg::Off => crate::config::StartTls::Off,
        },
        dkim_selectors: args.dkim_selectors,
        timeout: args.timeout,
        ehlo_name,
        cert_min_days: args.cert_min_days,
    };
    let report = match crate::check::run(&req, chrono::Utc::now()).await {
        Ok(r) => r,
        Err(e) => return usage(e),
    };
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(j) => println!("{j}"),
            Err(e) => {
                eprintln!("mxguard check: cannot encode the report: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        print!("{}", crate::check::render_table(&report));
    }
    if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The nameservers of /etc/resolv.conf, on port 53.
fn system_resolvers() -> Result<Vec<SocketAddr>, String> {
    let text = std::fs::read_to_string("/etc/resolv.conf")
        .map_err(|e| format!("no --resolver given and /etc/resolv.conf is unreadable: {e}"))?;
    let found: Vec<SocketAddr> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|ip| ip.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect();
    if found.is_empty() {
        return Err("no --resolver given and /etc/resolv.conf lists no nameserver".into());
    }
    Ok(found)
}
