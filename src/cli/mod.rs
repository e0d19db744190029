//! The command line. Exit codes: 0 success, 1 runtime failure, 2 bad usage or bad config.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

mod check;
mod drill;
mod generate;
mod incidents;
mod ops;
mod providers;
pub mod remote;

use self::remote::Request;
use crate::config::{Config, ConfigError};
use crate::logging::{self, LogFormat};

#[derive(Parser, Debug)]
#[command(
    name = "mxguard",
    version,
    about = "DNS failover controller for email",
    long_about = "mxguard health-checks a domain's MX hosts from several resolvers, moves the MX \
                  (or the MX host's A/AAAA) records to a backup when the primary is down, verifies \
                  the change, and fails back only when the primary has been healthy long enough."
)]
pub struct Cli {
    /// Configuration file (TOML). Without one, embedded defaults are used:
    /// SQLite store ./mxguard.db, API on 127.0.0.1:8053, no domains.
    #[arg(
        short,
        long,
        global = true,
        env = "MXGUARD_CONFIG",
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,

    /// Log line format on stderr (filter with RUST_LOG, default "info").
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the controller and its HTTP API until SIGTERM or SIGINT.
    Serve {
        /// Address for the HTTP API (overrides server.listen and MXGUARD_LISTEN).
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
    },
    /// Apply the store's schema migrations and exit.
    Migrate,
    /// Check a domain's mail setup now, as the runbook does by hand: MX per resolver, A/AAAA,
    /// SMTP + STARTTLS + certificate per address, relay refusal of backups, SPF/DMARC/DKIM.
    /// Needs no configuration. Exit 0: all good; 1: a problem was found; 2: usage error.
    Check(CheckArgs),
    /// Show each configured domain's state from the store: phase, active side, since when,
    /// override, failback guard progress, latest events.
    Status {
        /// Only this domain.
        domain: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// What the controller would change now for DOMAIN (dry run; changes nothing).
    Plan {
        domain: String,
        #[arg(long)]
        json: bool,
    },
    /// Snapshot DOMAIN's managed records (or, with --zone, every MX/A/AAAA/TXT RRset of its zone).
    /// With --api (or MXGUARD_API) the running service takes it; without, it is taken here.
    Snapshot {
        domain: String,
        #[arg(long)]
        zone: bool,
        #[arg(long, value_name = "L")]
        label: Option<String>,
        #[arg(long, default_value = "manual snapshot")]
        reason: String,
        #[command(flatten)]
        api: remote::ApiArgs,
    },
    /// List snapshots, newest first.
    Snapshots {
        domain: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
    /// Compare a snapshot with what is live now.
    Diff {
        snapshot: i64,
        #[arg(long)]
        json: bool,
    },
    /// Make the live records equal to a snapshot (records and TTLs). Refuses when the live
    /// records were changed outside mxguard since its last change, unless --force.
    /// With --api (or MXGUARD_API) the running service does it, with an admin token; without,
    /// it is done here on the store and the provider, and refused while a service serves from
    /// the same store.
    Revert {
        snapshot: i64,
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        force: bool,
        #[arg(long, default_value = "manual revert")]
        reason: String,
        #[command(flatten)]
        api: remote::ApiArgs,
    },
    /// Move DOMAIN's mail to the backup MX now, through the running service's API. The
    /// service refuses when the backup is unhealthy or a pin says otherwise.
    Failover(remote::MoveArgs),
    /// Move DOMAIN's mail back to the primary MX now, through the running service's API.
    Failback(remote::MoveArgs),
    /// Keep DOMAIN on one side until a time, whatever the health checks say (through the API).
    Pin(remote::PinArgs),
    /// End DOMAIN's pin (through the API).
    Unpin(remote::ReasonArgs),
    /// Schedule a maintenance window for DOMAIN (through the API): the TTL is lowered one TTL
    /// before --start, --side is pinned and published from --start to --end, then the guarded
    /// failback restores the records and their TTL.
    Maintenance(remote::MaintenanceArgs),
    /// Cancel DOMAIN's maintenance window, or end it early (through the API).
    CancelMaintenance(remote::ReasonArgs),
    /// Stop automatic failover and failback for DOMAIN, e.g. during maintenance (through the
    /// API). Health checks go on; manual commands still work.
    Pause(remote::ReasonArgs),
    /// Restart automation for DOMAIN after a pause (through the API).
    Resume(remote::ReasonArgs),
    /// Allow a failback that waits for an operator's approval (through the API).
    Approve(remote::ReasonArgs),
    /// DOMAIN's recent events from the running service's API: time, kind, who, what.
    Events(remote::EventsArgs),
    /// DOMAIN's incidents from the running service's API: when each began and ended, how long
    /// each step took, who did what; `--markdown` prints a postmortem draft.
    Incidents(incidents::IncidentsArgs),
    /// Drill DOMAIN through the running service's API: every check a failover needs (the
    /// backup's postmaster RCPT and relay refusal, SPF/DMARC/DKIM, MTA-STS, the provider's write
    /// permission, the plan) without changing live records, or `--live` a real failover and
    /// failback; prints the report; exit 1 when the drill fails.
    Drill(drill::DrillArgs),
    /// Check or print configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Check provider credentials and zone access (read-only, or with --write a write that
    /// changes nothing).
    #[command(subcommand)]
    Providers(ProvidersCommand),
    /// Exit 0 when the running service is ready (its /readyz answers 200), else 1 with the
    /// reason on stderr: for container health checks (Docker's HEALTHCHECK) and supervisors.
    Health(remote::HealthArgs),
    /// Print a shell completion script, e.g. `mxguard completions bash > /etc/bash_completion.d/mxguard`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. `mxguard man | gzip > /usr/share/man/man1/mxguard.1.gz`;
    /// with --out-dir, write it and one page per subcommand (mxguard-serve.1 …) there.
    Man {
        /// Write mxguard.1 and a page per subcommand into this directory instead.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
    /// Run a mail outage drill on loopback with nothing installed: an in-process DNS server
    /// (RFC 2136 + TSIG) and two SMTP hosts; the real controller fails over and back.
    Demo(crate::demo::DemoArgs),
}

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// The mail domain to check, e.g. example.com
    pub domain: String,
    /// Resolver to ask, "ip" or "ip:port" (repeatable). Default: the system resolvers
    /// (nameserver lines of /etc/resolv.conf).
    #[arg(long = "resolver", value_name = "ADDR")]
    pub resolvers: Vec<String>,
    /// SMTP port of the MX hosts.
    #[arg(long, default_value_t = 25)]
    pub port: u16,
    /// Also probe HOST as a backup MX, relay check included (repeatable).
    #[arg(long = "backup", value_name = "HOST")]
    pub backups: Vec<String>,
    /// Extra trust anchors (PEM) besides the system roots.
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// STARTTLS policy.
    #[arg(long, value_enum, default_value = "require")]
    pub starttls: StartTlsArg,
    /// DKIM selector to look up (repeatable).
    #[arg(long = "dkim-selector", value_name = "S")]
    pub dkim_selectors: Vec<String>,
    /// Print one JSON document instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Timeout per DNS query and per SMTP phase, e.g. "5s".
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
    /// Name sent in EHLO.
    #[arg(long, default_value = "mxguard.invalid")]
    pub ehlo_name: String,
    /// A certificate expiring in fewer days is a problem.
    #[arg(long, default_value_t = 7)]
    pub cert_min_days: u32,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum StartTlsArg {
    Require,
    Opportunistic,
    Off,
}

#[derive(Subcommand, Debug)]
pub enum ProvidersCommand {
    /// For every configured domain, read its managed records through its provider and run
    /// the provider's access checks, saying exactly what is missing: credentials or
    /// permission, the zone, or the network. Changes nothing. Exit 0 when every check passed,
    /// 1 when one failed, 2 on a configuration error.
    Check {
        /// Also prove the credentials can write, without changing any record: Cloudflare an
        /// empty batch, Route 53 a DELETE of a record that cannot exist (refused as invalid
        /// only when authorised), RFC 2136 an UPDATE deleting a record that does not exist
        /// (a no-op the server still authorises by key, name and type).
        #[arg(long)]
        write: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Validate FILE; prints every problem with its field path and exits 2 if there is any.
    Check {
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Also fetch each domain's MTA-STS policy (through its resolvers, over HTTPS), look up
        /// its backup's TLSA (probing a backup that publishes it, for DANE) and report a backup
        /// that compliant senders would refuse. Off by default: the plain check needs no
        /// network.
        #[arg(long)]
        mta_sts: bool,
    },
    /// Print a commented example configuration.
    Example,
}

/// Entry point used by `main.rs`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo prints its own timeline on stdout; info lines would bury it (RUST_LOG wins).
    // Health checks run every few seconds: only their one line, not the log's.
    let default_filter = match cli.command {
        Command::Demo(_)
        | Command::Health(_)
        | Command::Completions { .. }
        | Command::Man { .. } => "warn",
        _ => "info",
    };
    logging::init_with_default(cli.log_format, default_filter);
    match cli.command {
        Command::Config(ConfigCommand::Example) => {
            print!("{}", crate::config::EXAMPLE);
            ExitCode::SUCCESS
        }
        Command::Config(ConfigCommand::Check { file, mta_sts }) => config_check(&file, mta_sts),
        Command::Serve { listen } => with_runtime(serve(cli.config, listen)),
        Command::Migrate => with_runtime(migrate(cli.config)),
        Command::Check(args) => with_runtime(check::check(args)),
        Command::Providers(ProvidersCommand::Check { write }) => {
            with_runtime(providers::providers_check(cli.config, write))
        }
        Command::Status { domain, json } => with_runtime(ops::status(cli.config, domain, json)),
        Command::Plan { domain, json } => with_runtime(ops::plan(cli.config, domain, json)),
        Command::Snapshot {
            domain,
            zone,
            label,
            reason,
            api,
        } if api.api.is_some() => with_runtime(remote::snapshot(
            &api,
            &domain,
            zone,
            label.as_deref(),
            &reason,
        )),
        Command::Snapshot {
            domain,
            zone,
            label,
            reason,
            api: _,
        } => with_runtime(ops::snapshot(cli.config, domain, zone, label, reason)),
        Command::Snapshots {
            domain,
            limit,
            json,
        } => with_runtime(ops::snapshots(cli.config, domain, limit, json)),
        Command::Diff { snapshot, json } => with_runtime(ops::diff(cli.config, snapshot, json)),
        // Given an API, the service does it: a revert from here would race its controller.
        Command::Revert {
            snapshot,
            dry_run,
            force,
            reason,
            api,
        } if api.api.is_some() => {
            with_runtime(remote::revert(&api, snapshot, dry_run, force, &reason))
        }
        Command::Revert {
            snapshot,
            dry_run,
            force,
            reason,
            api: _,
        } => with_runtime(ops::revert(cli.config, snapshot, dry_run, force, reason)),
        Command::Failover(ref m) => with_runtime(remote::command(Request::Move("failover", m))),
        Command::Failback(ref m) => with_runtime(remote::command(Request::Move("failback", m))),
        Command::Pin(ref p) => with_runtime(remote::command(Request::Pin(p))),
        Command::Unpin(ref r) => with_runtime(remote::command(Request::Simple("unpin", r))),
        Command::Maintenance(ref m) => with_runtime(remote::command(Request::Maintenance(m))),
        Command::CancelMaintenance(ref r) => {
            with_runtime(remote::command(Request::Simple("cancel-maintenance", r)))
        }
        Command::Pause(ref r) => with_runtime(remote::command(Request::Simple("pause", r))),
        Command::Resume(ref r) => with_runtime(remote::command(Request::Simple("resume", r))),
        Command::Approve(ref r) => with_runtime(remote::command(Request::Simple("approve", r))),
        Command::Events(ref e) => with_runtime(remote::events(e)),
        Command::Incidents(ref i) => with_runtime(incidents::incidents(i)),
        Command::Drill(ref d) => with_runtime(drill::drill(d)),
        Command::Health(ref h) => match health_url(h, cli.config) {
            Ok(url) => with_runtime(remote::health(h, url)),
            Err(code) => code,
        },
        Command::Completions { shell } => generate::completions(shell),
        Command::Man { out_dir } => generate::man(out_dir.as_deref()),
        Command::Demo(args) => with_runtime(crate::demo::run(args)),
    }
}

/// Where `mxguard health` asks: `--api` / `MXGUARD_API`, else the configuration's listen address.
fn health_url(args: &remote::HealthArgs, file: Option<PathBuf>) -> Result<String, ExitCode> {
    if let Some(url) = &args.api {
        return Ok(url.clone());
    }
    match load_config(file) {
        Ok(cfg) => Ok(remote::local_url(cfg.server.listen)),
        Err(e) => {
            eprintln!("{e}");
            // A health check knows only healthy (0) and not (1).
            Err(ExitCode::FAILURE)
        }
    }
}

fn config_check(file: &Path, mta_sts: bool) -> ExitCode {
    match Config::load(file) {
        Ok(cfg) => {
            println!(
                "{}: OK ({} domain(s), {} provider(s), {} token(s))",
                file.display(),
                cfg.domains.len(),
                cfg.providers.len(),
                cfg.tokens.len()
            );
            for note in cfg.advice() {
                println!("note: {note}");
            }
            if mta_sts {
                with_runtime(config_check_mta_sts(cfg))
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("{e}");
            if let ConfigError::Invalid { errors, .. } = &e {
                eprintln!("{} problem(s) found", errors.len());
            }
            ExitCode::from(2)
        }
    }
}

/// `config check --mta-sts`: each domain's policy and its backup's DANE (the look `serve`
/// makes, `mtasts::watch`), and what they say of the backup. Findings are printed, not
/// errors: the exit stays 0 (the configuration is valid).
async fn config_check_mta_sts(cfg: Config) -> ExitCode {
    use crate::machine::MtaStsAction;
    use crate::mtasts::{fetch::Fetcher, watch::MtaStsView};
    for d in &cfg.domains {
        if d.mta_sts == MtaStsAction::Off {
            println!(
                "{}: MTA-STS not checked (mta_sts = \"off\")",
                d.name.without_dot()
            );
            continue;
        }
        let fetcher =
            match Fetcher::for_checks(&d.checks, crate::probe::budget::SharedDns::unlimited()) {
                Ok(f) => f,
                Err(e) => {
                    println!("{}: MTA-STS not checked: {e}", d.name.without_dot());
                    continue;
                }
            };
        let mut view = MtaStsView::look(&fetcher, d).await;
        view.dane = Some(crate::dane::watch::look(d, &fetcher).await);
        match (&view.report.policy, &view.report.record) {
            (Some(p), _) => {
                let mx: Vec<&str> = p.mx.iter().map(|x| x.as_str()).collect();
                println!(
                    "{}: MTA-STS mode {} ; max_age {} s ; mx {}",
                    d.name.without_dot(),
                    p.mode,
                    p.max_age,
                    mx.join(", ")
                );
            }
            (None, None) => println!("{}: no MTA-STS policy", d.name.without_dot()),
            (None, Some(_)) => {}
        }
        if let Some(e) = &view.report.error {
            println!("{}: MTA-STS: {e}", d.name.without_dot());
        }
        if let Some(t) = &view.report.tlsrpt {
            println!("{}: TLS-RPT rua {}", d.name.without_dot(), t.rua.join(", "));
        }
        for note in view.evaluation.iter().flat_map(|e| e.notes.iter()) {
            println!("{}: note: {note}", d.name.without_dot());
        }
        if let Some(dane) = &view.dane {
            for h in dane.backups() {
                println!(
                    "{}: DANE backup {}: {}",
                    d.name.without_dot(),
                    h.host.without_dot(),
                    h.verdict
                );
            }
            for note in &dane.notes {
                println!("{}: note: {note}", d.name.without_dot());
            }
        }
        if let Some(why) = view.refused() {
            let then = match d.mta_sts {
                MtaStsAction::Block => "automated failovers to it will be refused",
                _ => "a failover to it will be made with a critical warning",
            };
            println!("{}: warning: {why}; {then}", d.name.without_dot());
        }
    }
    ExitCode::SUCCESS
}

/// Loads the file (or embedded defaults) and applies environment overrides.
pub(super) fn load_config(file: Option<PathBuf>) -> Result<Config, ConfigError> {
    let mut cfg = match file {
        Some(path) => Config::load(&path)?,
        None => Config::embedded(),
    };
    cfg.apply_env(|k| std::env::var(k).ok())?;
    Ok(cfg)
}

fn with_runtime(fut: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(fut),
        Err(e) => {
            eprintln!("mxguard: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(file: Option<PathBuf>, listen: Option<SocketAddr>) -> ExitCode {
    let mut cfg = match load_config(file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if let Some(addr) = listen {
        cfg.server.listen = addr;
    }
    if cfg.file.is_none() {
        tracing::info!("no --config given: running on embedded defaults (no domains)");
    }
    let listener = match tokio::net::TcpListener::bind(cfg.server.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("mxguard: cannot listen on {}: {e}", cfg.server.listen);
            return ExitCode::FAILURE;
        }
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    match crate::run(cfg, listener, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "mxguard failed");
            eprintln!("mxguard: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn migrate(file: Option<PathBuf>) -> ExitCode {
    let cfg = match load_config(file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match crate::open_store(&cfg).await {
        Ok(store) => {
            store.close().await;
            println!("migrations applied to {}", cfg.store.url);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mxguard: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Cancels `token` on SIGTERM or SIGINT.
async fn cancel_on_signal(token: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; only SIGINT stops mxguard");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    token.cancel();
}
