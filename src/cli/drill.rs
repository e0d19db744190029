//! `mxguard drill DOMAIN [--live]`: a drill through the running service (`POST
//! /v1/domains/{domain}/drill`), its report printed readably (`--json`: the whole answer).
//! Exit 0 when the drill passed, 1 when it failed (or was refused: 409, 5xx), 2 on usage.

use std::process::ExitCode;

use super::remote::{fail, route, ApiArgs, Client};
use crate::drill::DrillReport;

#[derive(clap::Args, Debug)]
pub struct DrillArgs {
    /// The configured mail domain, e.g. example.com
    pub domain: String,
    /// A real failover to the backup and failback, each verified, through the state machine
    /// (only for a domain configured with `drillable = true`). Without it nothing is changed.
    #[arg(long)]
    pub live: bool,
    /// Why, in one line: recorded with the drill in the domain's events.
    #[arg(
        long,
        value_name = "TEXT",
        default_value = "drill from the command line"
    )]
    pub reason: String,
    /// Print the API's JSON answer (with the report) instead of the readable report.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

pub(super) async fn drill(args: &DrillArgs) -> ExitCode {
    let client = match Client::new(&args.api) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let body = serde_json::json!({"reason": args.reason, "live": args.live});
    let key = args.api.idempotency_key.as_deref();
    let (status, answer) = match client
        .send(route("drill"), &[&args.domain], &[], Some(body), key)
        .await
    {
        Ok(r) => r,
        Err(code) => return code,
    };
    if !status.is_success() {
        return client.problem(status, &answer);
    }
    let report: DrillReport = match serde_json::from_value(answer["report"].clone()) {
        Ok(r) => r,
        Err(e) => return fail(1, format!("the API's answer holds no drill report: {e}")),
    };
    if args.json {
        match serde_json::to_string_pretty(&answer) {
            Ok(text) => println!("{text}"),
            Err(e) => return fail(1, e),
        }
    } else {
        print!("{}", crate::drill::render(&report));
    }
    if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
