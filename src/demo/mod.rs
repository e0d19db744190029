//! `mxguard demo`: the real service — store, engine, probes, state machine, RFC 2136 provider
//! with TSIG — against a lab built in this process on loopback: an authoritative DNS server
//! for `demo.test.` that takes signed dynamic updates ([`dns`]), and two SMTP listeners as the
//! primary and backup MX ([`smtp`]). The script stops the primary, watches mxguard fail over,
//! restarts it, and watches the guarded failback, printing a timeline ([`timeline`]).
//!
//! The MX hosts live on 127.0.0.2 and 127.0.0.3 (Linux routes all of 127/8 to `lo`), both on
//! one port, because mxguard probes every MX host on one `smtp_port`.

mod dns;
mod lab;
mod smtp;
#[cfg(test)]
mod tests;
mod timeline;
mod zone;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use self::lab::Lab;
use self::timeline::Timeline;
use crate::machine::Phase;
use crate::model::Fqdn;
use crate::probe::dns::DnsClient;
use crate::RunError;

pub const DOMAIN: &str = "demo.test.";
pub const PRIMARY_MX: &str = "10 mx1.demo.test.";
pub const BACKUP_MX: &str = "10 backup.demo.test.";
/// The API token the demo configures (read, operate, admin), for trying the API by hand.
pub const DEMO_TOKEN: &str = "mxguard-demo-token";

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// After the incident, keep the lab and the API running (and print curl lines to try)
    /// until Ctrl-C.
    #[arg(long)]
    pub keep_running: bool,
    /// Address for the HTTP API; when it is taken, a free port on the same address is used.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8053")]
    pub listen: SocketAddr,
    /// Give up (exit 1) when the incident has not completed within this long, e.g. "90s".
    #[arg(long, default_value = "90s", value_parser = humantime::parse_duration)]
    pub deadline: Duration,
}

/// Runs the demo; exit 0 when the incident completed, 1 otherwise.
pub async fn run(args: DemoArgs) -> ExitCode {
    let mut lab = match Lab::start(args.listen).await {
        Ok(lab) => lab,
        Err(e) => {
            eprintln!("mxguard demo: cannot build the lab: {e}");
            return ExitCode::FAILURE;
        }
    };
    lab.describe();
    let store = match crate::open_store(&lab.config).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("mxguard demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = CancellationToken::new();
    let Some(listener) = lab.take_listener() else {
        eprintln!("mxguard demo: the API listener is gone");
        return ExitCode::FAILURE;
    };
    let service: JoinHandle<Result<(), RunError>> =
        tokio::spawn(crate::run(lab.config.clone(), listener, shutdown.clone()));
    let domain = match Fqdn::parse(DOMAIN) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("mxguard demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    let client = DnsClient::authoritative(lab.dns.addr(), Duration::from_secs(2));
    let mut timeline = Timeline::new(store.clone(), domain, client);

    let outcome = tokio::select! {
        r = incident(&mut lab, &mut timeline, &service, args.deadline) => r,
        _ = interrupted() => Err("interrupted".to_string()),
    };
    let code = match &outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            timeline.say(format_args!("FAILED: {e}"));
            eprintln!("mxguard demo: {e}");
            ExitCode::FAILURE
        }
    };
    if outcome.is_ok() && args.keep_running {
        lab.print_try_it();
        tokio::select! {
            _ = follow(&mut timeline) => {}
            _ = interrupted() => {}
        }
        timeline.say("stopping");
    }

    shutdown.cancel();
    match tokio::time::timeout(crate::SHUTDOWN_GRACE * 3, service).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => eprintln!("mxguard demo: mxguard: {e}"),
        Ok(Err(e)) => eprintln!("mxguard demo: mxguard task: {e}"),
        Err(_) => eprintln!("mxguard demo: mxguard did not stop in time"),
    }
    store.close().await;
    code
}

/// The script: healthy → primary stopped → failover → primary back → hold → failback.
async fn incident(
    lab: &mut Lab,
    tl: &mut Timeline,
    service: &JoinHandle<Result<(), RunError>>,
    limit: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    let stopped = || service.is_finished();
    tl.say(format_args!(
        "lab up; mxguard started; MX = {}",
        tl.served().await
    ));

    let served = tl
        .wait_for("the first verdicts", deadline, &stopped, |t, s| {
            t.transitioned(None, Phase::Primary) && s.is(&[PRIMARY_MX])
        })
        .await?;
    tl.say(format_args!(
        "primary healthy; MX = {served}; SOA serial {}",
        lab.serial()
    ));

    lab.primary.stop().await;
    let down_at = tl.elapsed();
    tl.say(format_args!(
        "primary SMTP stopped: mx1.demo.test. ({}) refuses connections",
        lab.primary.addr()
    ));
    let served = tl
        .wait_for("the failover", deadline, &stopped, |_, s| {
            s.is(&[BACKUP_MX])
        })
        .await?;
    let failover_after = tl.elapsed().saturating_sub(down_at);
    tl.say(format_args!(
        "failover: MX = {served}; SOA serial {} ({:.1}s after the primary stopped)",
        lab.serial(),
        failover_after.as_secs_f64()
    ));
    tl.wait_for("the failover to be verified", deadline, &stopped, |t, _| {
        t.transitioned(None, Phase::OnBackup)
    })
    .await?;

    lab.primary
        .resume()
        .await
        .map_err(|e| format!("cannot restart the primary's SMTP listener: {e}"))?;
    let up_at = tl.elapsed();
    tl.say(format_args!(
        "primary SMTP restarted; failback waits for {} passing rounds and the {} hold",
        lab::RECOVER_AFTER,
        lab::HOLD
    ));
    let served = tl
        .wait_for("the failback", deadline, &stopped, |_, s| {
            s.is(&[PRIMARY_MX])
        })
        .await?;
    let failback_after = tl.elapsed().saturating_sub(up_at);
    tl.say(format_args!(
        "failback: MX = {served}; SOA serial {} ({:.1}s after the primary came back)",
        lab.serial(),
        failback_after.as_secs_f64()
    ));
    tl.wait_for("the failback to be verified", deadline, &stopped, |t, _| {
        t.transitioned(Some(Phase::FailingBack), Phase::Primary)
    })
    .await?;
    tl.say(format_args!(
        "incident complete: failover {:.1}s after the outage, failback {:.1}s after recovery",
        failover_after.as_secs_f64(),
        failback_after.as_secs_f64()
    ));
    Ok(())
}

/// With `--keep-running`: keeps printing what mxguard records (API commands included).
async fn follow(tl: &mut Timeline) {
    let mut last = tl.served().await;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        tl.drain_events().await;
        let now = tl.served().await;
        if now != last {
            tl.say(format_args!("MX = {now}"));
            last = now;
        }
    }
}

/// Ctrl-C, or SIGTERM on Unix.
async fn interrupted() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
