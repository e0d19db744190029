//! The `mxguard` binary, run as a user would: serve on embedded defaults, signals, config check,
//! migrate.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_mxguard");

fn mxguard(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(dir)
        .env_remove("MXGUARD_CONFIG")
        .env_remove("MXGUARD_STORE_URL")
        .env_remove("MXGUARD_LISTEN")
        .env("RUST_LOG", "info");
    cmd
}

fn run(dir: &Path, args: &[&str]) -> Output {
    mxguard(dir, args).output().expect("run mxguard")
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// Waits for the child to exit within `deadline`; kills it and fails otherwise.
fn wait_exit(child: &mut Child, deadline: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            panic!("mxguard did not exit within {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill {sig} failed");
}

async fn get(url: &str) -> Option<(u16, serde_json::Value)> {
    let resp = reqwest::get(url).await.ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.json().await.ok()?))
}

async fn serve_until_signal(sig: &str) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let log_path = dir.path().join("serve.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut child = mxguard(dir.path(), &["serve", "--listen", &listen])
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("spawn mxguard serve");
    let base = format!("http://{listen}");
    let health = format!("{base}/healthz");
    let (status, body) =
        common::poll("GET /healthz", Duration::from_secs(60), || get(&health)).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ok");
    // Embedded defaults (no config file, no tokens) leave readiness open; see docs/OPERATIONS.md.
    let (status, body) = get(&format!("{base}/readyz"))
        .await
        .expect("readyz answers");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["store"], "sqlite");
    // Alone on its SQLite file, it leads (epoch 1 on a fresh store).
    let (_, body) = common::poll("the lease", Duration::from_secs(30), || async {
        let (s, b) = get(&format!("{base}/readyz")).await?;
        (s == 200 && b["role"] == "leader").then_some((s, b))
    })
    .await;
    assert_eq!(
        (body["vantage"].as_str(), body["epoch"].as_i64()),
        (Some("default"), Some(1))
    );

    // A second instance on the same file is refused before it touches the store.
    let second = mxguard(
        dir.path(),
        &["serve", "--listen", &format!("127.0.0.1:{}", free_port())],
    )
    .output()
    .expect("run a second mxguard serve");
    assert_eq!(second.status.code(), Some(1));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("another mxguard instance is serving from mxguard.db")
            && err.contains("SQLite is single-instance"),
        "{err}"
    );
    assert!(
        dir.path().join("mxguard.db").exists(),
        "embedded default store is ./mxguard.db"
    );

    signal(&child, sig);
    let status = wait_exit(&mut child, Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "exit status after {sig}");
    // Logged to a file: plain text, no terminal colour codes around the fields.
    let logged = std::fs::read_to_string(&log_path).expect("read the log");
    assert!(logged.contains("mxguard serving"), "{logged}");
    assert!(
        !logged.contains('\u{1b}'),
        "ANSI codes in a log file:\n{logged}"
    );
}

#[tokio::test]
async fn serve_on_embedded_defaults_and_exit_on_sigterm() {
    serve_until_signal("-TERM").await;
}

#[tokio::test]
async fn serve_exits_on_sigint() {
    serve_until_signal("-INT").await;
}

#[test]
fn config_check_reports_three_mistakes_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mxguard.toml"),
        r#"
[providers.ns1]
kind = "rfc2136"
server = "127.0.0.1:5353"
tsig_name = "mxguard"
tsig_secret_env = "TSIG"

[checks]
resolvers = ["127.0.0.1"]
resolver_quorum = 2

[[domains]]
name = "example.com"
provider = "cloudflare"
primary = ["10 mx1.example.com."]
backup = ["10 mx2.example.com."]
failover_ttl = "abc"
"#,
    )
    .unwrap();
    let out = run(dir.path(), &["config", "check", "mxguard.toml"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "mxguard.toml: checks.resolver_quorum: resolver_quorum is 2 but only 1 resolver(s) are configured",
        "mxguard.toml: domains[0].provider: unknown provider \"cloudflare\"; defined providers: ns1",
        "mxguard.toml: domains[0].failover_ttl: expected seconds 1..=86400, got \"abc\"",
        "3 problem(s) found",
    ] {
        assert!(stderr.contains(expected), "missing {expected:?} in:\n{stderr}");
    }
}

#[test]
fn config_check_suggests_one_mode_a_domain_when_many_share_a_primary_host() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::from(
        "[providers.ns1]\nkind = \"rfc2136\"\nserver = \"127.0.0.1:5353\"\ntsig_name = \"mxguard\"\ntsig_secret_env = \"TSIG\"\n",
    );
    for i in 0..25 {
        text.push_str(&format!(
            "\n[[domains]]\nname = \"customer{i}.example\"\nprovider = \"ns1\"\nprimary = [\"10 mx.hoster.example.\"]\nbackup = [\"10 mx.backup.example.\"]\n"
        ));
    }
    std::fs::write(dir.path().join("mxguard.toml"), text).unwrap();
    let out = run(dir.path(), &["config", "check", "mxguard.toml"]);
    assert_eq!(out.status.code(), Some(0), "advice is not an error");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("note: 25 domains (e.g. customer0.example.) fail over from primary MX host mx.hoster.example.: when it fails, that is 25 provider writes"),
        "{stdout}"
    );
}

#[test]
fn example_config_passes_config_check() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &["config", "example"]);
    assert!(out.status.success());
    std::fs::write(dir.path().join("example.toml"), &out.stdout).unwrap();
    let out = run(dir.path(), &["config", "check", "example.toml"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("example.toml: OK (2 domain(s)"));
}

#[test]
fn config_check_on_a_missing_file_exits_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &["config", "check", "nope.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("nope.toml: cannot read"));
}

#[test]
fn serve_refuses_a_bad_config_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.toml"),
        "[server]\nlisten = \"nowhere\"\n",
    )
    .unwrap();
    let out = run(dir.path(), &["--config", "bad.toml", "serve"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bad.toml: server.listen: expected IP:PORT")
    );
    assert!(
        !dir.path().join("mxguard.db").exists(),
        "nothing created on bad input"
    );
}

#[test]
fn unreachable_store_fails_without_leaking_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let out = mxguard(dir.path(), &["migrate"])
        .env(
            "MXGUARD_STORE_URL",
            format!("postgres://mx:s3cr3t-pw@127.0.0.1:{port}/mxguard"),
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("postgres://mx:***@127.0.0.1:{port}/mxguard")),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cr3t-pw"), "{stderr}");
    // the password as a query parameter, as libpq also accepts it
    let out = mxguard(dir.path(), &["migrate"])
        .env(
            "MXGUARD_STORE_URL",
            format!("postgres://mx@127.0.0.1:{port}/mxguard?password=s3cr3t-pw"),
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("?password=***"), "{stderr}");
    assert!(!stderr.contains("s3cr3t-pw"), "{stderr}");
}

#[tokio::test]
async fn migrate_applies_the_postgres_schema() {
    let db = common::fresh_pg_database("migrate").await;
    let dir = tempfile::tempdir().unwrap();
    let out = mxguard(dir.path(), &["migrate"])
        .env("MXGUARD_STORE_URL", db.url.expose())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pool = sqlx::PgPool::connect(db.url.expose()).await.unwrap();
    let tables: Vec<(String,)> = sqlx::query_as(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let names: Vec<&str> = tables.iter().map(|t| t.0.as_str()).collect();
    for t in [
        "changes",
        "domain_state",
        "events",
        "idempotency_keys",
        "observations",
        "snapshots",
    ] {
        assert!(names.contains(&t), "{t} missing from {names:?}");
    }
    pool.close().await;
    db.drop_db().await;
}

#[test]
fn help_and_version_work_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let v = run(dir.path(), &["--version"]);
    assert!(v.status.success());
    assert!(String::from_utf8_lossy(&v.stdout).starts_with("mxguard "));
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["migrate", "--help"],
        &["config", "--help"],
        &["config", "check", "--help"],
        &["config", "example", "--help"],
    ] {
        let out = run(dir.path(), args);
        assert!(out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage:"),
            "{args:?}"
        );
    }
    let bad = run(dir.path(), &["frobnicate"]);
    assert_eq!(bad.status.code(), Some(2));
}

/// Connections that send half a request head are closed once `header_read_timeout` has passed,
/// and while 2,000 of them are open the service still answers.
#[tokio::test]
async fn half_open_connections_are_closed_after_the_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mxguard.toml"),
        "[server]\nheader_read_timeout = \"2s\"\n",
    )
    .unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let log = std::fs::File::create(dir.path().join("serve.log")).expect("log file");
    let mut child = mxguard(
        dir.path(),
        &["--config", "mxguard.toml", "serve", "--listen", &listen],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::from(log))
    .spawn()
    .expect("spawn mxguard serve");
    let health = format!("http://{listen}/healthz");
    common::poll("GET /healthz", Duration::from_secs(60), || get(&health)).await;

    let mut open = Vec::new();
    for _ in 0..2000 {
        let mut s = tokio::net::TcpStream::connect(&listen)
            .await
            .expect("connect");
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: mxguard\r\n")
            .await
            .expect("half a head");
        open.push(s);
    }
    let (status, _) = tokio::time::timeout(Duration::from_secs(10), get(&health))
        .await
        .expect("/healthz answers while 2,000 connections hold half a head")
        .expect("an answer");
    assert_eq!(status, 200);
    // Every one of them is closed by the server (at most a 408 first), none kept: within
    // 20 s, well after the 2 s configured and before hyper's own 30 s default would.
    let closed = futures::future::join_all(open.into_iter().map(|mut s| async move {
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut rest))
            .await
            .is_ok()
    }))
    .await;
    let kept = closed.iter().filter(|c| !**c).count();
    assert_eq!(kept, 0, "{kept} of 2,000 half-open connections still open");
    signal(&child, "-TERM");
    assert!(wait_exit(&mut child, Duration::from_secs(10)).success());
}
