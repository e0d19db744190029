//! `mxguard incidents DOMAIN`: a domain's incidents from a running service's API — a line each,
//! one in full with `--id`, the JSON with `--json`, or a postmortem draft with `--markdown`
//! (`--id`'s incident, else the newest).

use std::process::ExitCode;

use serde_json::Value;

use super::remote::{fail, route_at, ApiArgs, Client};
use crate::incidents::{postmortem, Incident, Status, Step};

const LIST: &str = "/v1/domains/{domain}/incidents";
const ONE: &str = "/v1/domains/{domain}/incidents/{incident}";

#[derive(clap::Args, Debug)]
pub struct IncidentsArgs {
    /// The configured mail domain, e.g. example.com
    pub domain: String,
    /// One incident, by its id (the list shows them).
    #[arg(long, value_name = "ID")]
    pub id: Option<i64>,
    /// Only incidents older than this id (the "more:" line of a previous page gives it).
    #[arg(long, value_name = "ID", conflicts_with = "id")]
    pub before: Option<i64>,
    /// At most N incidents (1-100; the service's default is 20).
    #[arg(long, value_name = "N", conflicts_with = "id")]
    pub limit: Option<u32>,
    /// Print the API's JSON answer.
    #[arg(long, conflicts_with = "markdown")]
    pub json: bool,
    /// Print a postmortem draft in Markdown: of --id's incident, else of the newest.
    #[arg(long)]
    pub markdown: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

pub async fn incidents(args: &IncidentsArgs) -> ExitCode {
    let client = match Client::new(&args.api) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let id = args.id.map(|i| i.to_string());
    let read = match &id {
        Some(id) => {
            client
                .read(route_at(ONE), &[&args.domain, id], &[], args.json)
                .await
        }
        None => {
            let mut query = Vec::new();
            if let Some(b) = args.before {
                query.push(("before", b.to_string()));
            }
            // A draft of the newest needs only the newest.
            match (args.limit, args.markdown) {
                (Some(l), _) => query.push(("limit", l.to_string())),
                (None, true) => query.push(("limit", "1".to_string())),
                (None, false) => {}
            }
            client
                .read(route_at(LIST), &[&args.domain], &query, args.json)
                .await
        }
    };
    let body = match read {
        Ok(b) => b,
        Err(code) => return code,
    };
    let domain = body["domain"].as_str().unwrap_or(&args.domain).to_string();
    let list: Vec<Value> = match &id {
        Some(_) => vec![body["incident"].clone()],
        None => body["incidents"].as_array().cloned().unwrap_or_default(),
    };
    let parsed: Result<Vec<Incident>, _> = list.into_iter().map(serde_json::from_value).collect();
    let incidents = match parsed {
        Ok(list) => list,
        Err(e) => return fail(1, format!("the API's incidents do not read: {e}")),
    };
    if args.markdown {
        return match incidents.first() {
            Some(i) => {
                print!("{}", postmortem(&domain, i));
                ExitCode::SUCCESS
            }
            None => fail(1, format!("{domain} has no incident to write up")),
        };
    }
    if incidents.is_empty() {
        println!("no incidents");
    }
    for i in &incidents {
        println!("{}", line(i));
    }
    if id.is_some() {
        if let Some(i) = incidents.first() {
            for m in &i.milestones {
                let server = m.server.as_deref().unwrap_or("");
                println!(
                    "  {}  +{:<10} {:?} {server}",
                    m.at.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
                    crate::incidents::markdown::human(m.since_start_ms),
                    m.step
                );
            }
        }
    }
    if let Some(next) = body["next_before"].as_i64() {
        println!("more: mxguard incidents {} --before {next}", args.domain);
    }
    ExitCode::SUCCESS
}

/// `ID  STATUS  START  DURATION  failover Xs, failback Ys  CAUSE`.
fn line(i: &Incident) -> String {
    let d = &i.durations;
    let status = match i.status {
        Status::Open => "open",
        Status::Closed => "closed",
    };
    let human = crate::incidents::markdown::human;
    let visible = i
        .milestones
        .iter()
        .find(|m| m.step == Step::Authoritative)
        .map(|m| format!("backup published after {}", human(m.since_start_ms)));
    let total = d.total_ms.map_or("ongoing".to_string(), human);
    format!(
        "{:<6} {status:<6} {}  {total:<12} {}  {}",
        i.id,
        i.start.format("%Y-%m-%dT%H:%M:%SZ"),
        visible.unwrap_or_else(|| "no failover change".into()),
        i.cause
    )
}
