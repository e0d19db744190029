//! Packaging, driven through the real binary and the real tools: the systemd unit passes
//! `systemd-analyze verify` and an offline security review, `serve` tells systemd when it is
//! ready, `mxguard health` follows /readyz (the Docker HEALTHCHECK), the compose file has the
//! essentials and configurations `config check` accepts, and completions and the man page
//! name every subcommand.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use clap::CommandFactory;
use common::lab::{mxguard_bin, Mxguard};
use mxguard::cli::Cli;

const READ_TOKEN: &str = "packaging-read-token-81d2f0";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// `mxguard ARGS` with nothing of the caller's environment that would steer it.
fn mxguard(args: &[&str]) -> Command {
    let mut cmd = Command::new(mxguard_bin());
    cmd.args(args)
        .env_remove("MXGUARD_API")
        .env_remove("MXGUARD_TOKEN")
        .env_remove("MXGUARD_TOKEN_FILE")
        .env_remove("MXGUARD_CONFIG")
        .env_remove("MXGUARD_LISTEN")
        .env_remove("NOTIFY_SOCKET")
        .env("RUST_LOG", "warn");
    cmd
}

fn run(cmd: &mut Command) -> (Option<i32>, String, String) {
    let o: Output = cmd.output().expect("run mxguard");
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Runs a tool the test needs; a missing tool fails the test and says how to get it.
fn tool(name: &str, args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(name);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap_or_else(|e| {
        panic!(
            "cannot run {name}: {e}. Install it with scripts/peers.sh (ensure_packaging_tools: \
             Debian's systemd and man-db), as scripts/test does"
        )
    })
}

fn subcommands() -> Vec<String> {
    Cli::command()
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .collect()
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let unit = read("contrib/systemd/mxguard.service");
    let has = |line: &str| unit.lines().any(|l| l.trim() == line);
    for line in [
        "Type=notify",
        "DynamicUser=yes",
        "StateDirectory=mxguard",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service",
        "Restart=on-failure",
    ] {
        assert!(has(line), "the unit has no `{line}` line");
    }
    // Secrets come in as credentials, and the comment shows the config pointing at them.
    assert!(unit.contains("\nLoadCredential=cf-token:/etc/mxguard/cf-token\n"));
    assert!(unit.contains("api_token_file = \"/run/credentials/mxguard.service/cf-token\""));
    assert!(
        !unit.contains("\nEnvironment=CF_API_TOKEN"),
        "a secret in the environment"
    );

    // verify checks ExecStart's binary exists: point it at this build, the one thing changed.
    const INSTALLED: &str = "/usr/bin/mxguard ";
    let exec = unit
        .lines()
        .find(|l| l.starts_with("ExecStart="))
        .expect("an ExecStart= line");
    assert!(
        exec.starts_with(&format!("ExecStart={INSTALLED}")),
        "{exec}"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = format!("{} ", mxguard_bin().display());
    let path = dir.path().join("mxguard.service");
    std::fs::write(&path, unit.replace(INSTALLED, &bin)).expect("write the unit");

    // Documentation=man:mxguard(1): verify runs `man` on it, so the generated pages are
    // installed where man looks.
    let man1 = dir.path().join("man/man1");
    std::fs::create_dir_all(&man1).expect("man dir");
    let (code, _, err) = run(&mut mxguard(&[
        "man",
        "--out-dir",
        man1.to_str().expect("utf-8 path"),
    ]));
    assert_eq!(code, Some(0), "{err}");
    let manpath = dir.path().join("man");

    let unit_arg = path.to_str().expect("utf-8 path");
    let o = tool(
        "systemd-analyze",
        &["verify", unit_arg],
        &[("MANPATH", &manpath)],
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    // Unknown or misspelt keys are only warned about: none is allowed.
    assert!(
        stderr.trim().is_empty(),
        "systemd-analyze verify warns:\n{stderr}"
    );

    // The offline review scores exposure 0.0 (locked down) to 10.0; 2.0 is its "OK" band.
    let o = tool(
        "systemd-analyze",
        &["security", "--offline=true", "--threshold=20", unit_arg],
        &[],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "exposure above 2.0:\n{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.contains("Overall exposure level for mxguard.service"),
        "{out}"
    );
}

#[test]
fn completions_name_every_subcommand() {
    let (code, script, err) = run(&mut mxguard(&["completions", "bash"]));
    assert_eq!(code, Some(0), "{err}");
    assert!(
        script.contains("complete -F"),
        "not a bash completion script"
    );
    for sub in subcommands() {
        assert!(
            script.contains(&format!("mxguard,{sub})")),
            "bash completion lacks `{sub}`"
        );
    }
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let (code, script, err) = run(&mut mxguard(&["completions", shell]));
        assert_eq!(code, Some(0), "{shell}: {err}");
        assert!(
            script.contains("failover"),
            "{shell} completion lacks failover"
        );
    }
    let (code, _, err) = run(&mut mxguard(&["completions", "tcsh"]));
    assert_eq!(code, Some(2), "an unknown shell is a usage error");
    assert!(err.contains("bash"), "the error lists the shells: {err}");
}

#[test]
fn the_man_page_has_name_synopsis_and_every_subcommand() {
    let (code, page, err) = run(&mut mxguard(&["man"]));
    assert_eq!(code, Some(0), "{err}");
    assert!(
        page.starts_with(".ie") || page.contains(".TH mxguard 1"),
        "not roff"
    );
    for section in [
        ".SH NAME",
        ".SH SYNOPSIS",
        ".SH DESCRIPTION",
        ".SH SUBCOMMANDS",
    ] {
        assert!(page.contains(section), "no {section}");
    }
    for sub in subcommands() {
        assert!(
            page.contains(&format!("mxguard\\-{}(1)", sub.replace('-', "\\-"))),
            "the man page lacks `{sub}`"
        );
    }
    // The pages it names, each rendered by man itself.
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, _, err) = run(&mut mxguard(&[
        "man",
        "--out-dir",
        dir.path().to_str().expect("utf-8 path"),
    ]));
    assert_eq!(code, Some(0), "{err}");
    for page in std::iter::once("mxguard".to_string())
        .chain(subcommands().iter().map(|s| format!("mxguard-{s}")))
    {
        let path = dir.path().join(format!("{page}.1"));
        assert!(path.exists(), "no {page}.1");
        let o = tool("man", &["-l", path.to_str().expect("path")], &[]);
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "man -l {page}.1 failed");
        assert!(
            text.contains("NAME") && text.contains("SYNOPSIS"),
            "{page}: {text}"
        );
    }
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The next datagram on `socket`, within a generous deadline.
fn receive(socket: &UnixDatagram, what: &str, log: impl Fn() -> String) -> String {
    socket
        .set_read_timeout(Some(Duration::from_secs(120)))
        .expect("timeout");
    let mut buf = [0u8; 256];
    match socket.recv(&mut buf) {
        Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        Err(e) => panic!("no {what} from mxguard serve: {e}\n{}", log()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_tells_systemd_it_is_ready_and_health_follows_readyz() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = mxguard_testpeers::free_port().expect("port");
    let api = format!("http://127.0.0.1:{port}");
    let config = dir.path().join("mxguard.toml");
    // /readyz needs a read token here (open_readyz is off by default with a config file).
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n\n[store]\nurl = \"sqlite://{}\"\n\n[[tokens]]\nname = \"monitor\"\nsha256 = \"{}\"\nscopes = [\"read\"]\n",
            dir.path().join("mxguard.db").display(),
            sha256_hex(READ_TOKEN)
        ),
    )
    .expect("write config");
    let config_arg = config.to_str().expect("utf-8 path");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{READ_TOKEN}\n")).expect("token file");
    let health = |extra: &[&str]| {
        let mut cmd = mxguard(&["--config", config_arg, "health"]);
        cmd.args(extra);
        cmd
    };

    // No service yet: not healthy.
    let (code, _, err) = run(&mut health(&[]));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot reach the mxguard API"), "{err}");

    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).expect("bind the notify socket");
    let mut cmd = mxguard(&["--config", config_arg, "serve"]);
    cmd.env("NOTIFY_SOCKET", &notify_path)
        .current_dir(dir.path());
    let mut mx = Mxguard::spawn(cmd, format!("127.0.0.1:{port}").parse().expect("addr"));
    let ready = receive(&notify, "READY=1", || mx.log());
    assert_eq!(ready, "READY=1");

    // Ready means ready: the first health check after READY=1 passes (no waiting).
    let (code, out, err) = run(&mut health(&[
        "--token-file",
        token_file.to_str().expect("path"),
    ]));
    assert_eq!(code, Some(0), "{out}{err}\n{}", mx.log());
    // Leader or follower (the lease may not be taken yet): both are ready.
    assert!(
        out.starts_with("ready: ") && out.contains("store sqlite"),
        "{out}"
    );
    // The token from MXGUARD_TOKEN_FILE (the container's way) and from MXGUARD_TOKEN.
    let (code, _, err) = run(health(&[]).env("MXGUARD_TOKEN_FILE", &token_file));
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = run(health(&["--api", &api]).env("MXGUARD_TOKEN", READ_TOKEN));
    assert_eq!(code, Some(0), "{err}");
    // Without the token the answer is 401: unhealthy (1, never 2: Docker reserves it).
    let (code, _, err) = run(&mut health(&[]));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("MXGUARD_TOKEN"), "{err}");
    assert!(!err.contains(READ_TOKEN));
    let (code, _, err) = run(health(&[]).env("MXGUARD_TOKEN", "wrong-token"));
    assert_eq!(code, Some(1), "{err}");

    // SIGTERM: systemd hears that the service is stopping, and it exits 0.
    let _ = Command::new("kill")
        .args(["-TERM", &mx.child.id().to_string()])
        .status();
    let stopping = receive(&notify, "STOPPING=1", || mx.log());
    assert_eq!(stopping, "STOPPING=1");
    let status = mx.child.wait().expect("wait for mxguard");
    assert_eq!(status.code(), Some(0), "{}", mx.log());
    let (code, _, _) = run(health(&[]).env("MXGUARD_TOKEN", READ_TOKEN));
    assert_eq!(code, Some(1), "healthy after exit");
}

#[test]
fn the_dockerfile_checks_readiness_without_curl_and_keeps_the_store_on_a_volume() {
    let dockerfile = read("Dockerfile");
    let runtime = dockerfile.split("\nFROM ").last().expect("a runtime stage");
    let instructions: Vec<&str> = runtime
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    assert!(
        !instructions.iter().any(|l| l.contains("curl")),
        "curl in the runtime image"
    );
    assert!(runtime.contains("\nVOLUME /var/lib/mxguard\n"));
    assert!(runtime.contains("MXGUARD_STORE_URL=sqlite:///var/lib/mxguard/mxguard.db"));
    assert!(runtime.contains("CMD [\"mxguard\", \"health\"]"));
    assert!(runtime.contains("\nUSER mxguard\n"));
}

#[test]
fn the_compose_file_runs_two_instances_on_postgres_with_secrets_in_files() {
    let text = read("contrib/compose.yaml");
    let compose: serde_json::Value = serde_norway::from_str(&text).expect("compose.yaml is YAML");
    let services = compose["services"].as_object().expect("services");
    let pg = &services["postgres"];
    assert!(pg["image"]
        .as_str()
        .is_some_and(|i| i.starts_with("postgres:")));
    assert_eq!(
        pg["environment"]["POSTGRES_PASSWORD_FILE"],
        "/run/secrets/postgres_password"
    );
    assert!(
        pg["healthcheck"]["test"].is_array(),
        "postgres has no healthcheck"
    );

    let instances: Vec<(&String, &serde_json::Value)> = services
        .iter()
        .filter(|(_, s)| s["image"].as_str() == Some("mxguard:latest"))
        .collect();
    assert_eq!(instances.len(), 2, "two mxguard instances");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut vantages = Vec::new();
    for (name, svc) in &instances {
        let env = &svc["environment"];
        let url = env["MXGUARD_STORE_URL"]
            .as_str()
            .expect("MXGUARD_STORE_URL");
        assert!(
            url.starts_with("postgres://mxguard@postgres:"),
            "{name}: {url}"
        );
        assert_eq!(env["PGPASSFILE"], "/run/secrets/pgpass", "{name}");
        for (key, value) in env.as_object().expect("environment map") {
            let upper = key.to_uppercase();
            if ["PASSWORD", "TOKEN", "SECRET"]
                .iter()
                .any(|s| upper.contains(s))
            {
                assert!(
                    value
                        .as_str()
                        .is_some_and(|v| v.starts_with("/run/secrets/")),
                    "{name}: {key} carries a secret in the environment"
                );
            }
        }
        assert_eq!(
            svc["depends_on"]["postgres"]["condition"], "service_healthy",
            "{name} starts before PostgreSQL is ready"
        );
        let secrets: Vec<&str> = svc["secrets"]
            .as_array()
            .expect("secrets")
            .iter()
            .filter_map(|s| s.as_str())
            .collect();
        for s in &secrets {
            assert!(
                compose["secrets"][s]["file"].as_str().is_some(),
                "secret {s} is not a file"
            );
        }
        // Its configuration: what `mxguard config check` accepts, every secret a file.
        let source = svc["configs"][0]["source"].as_str().expect("a config");
        assert_eq!(svc["configs"][0]["target"], "/etc/mxguard/mxguard.toml");
        assert_eq!(env["MXGUARD_CONFIG"], "/etc/mxguard/mxguard.toml");
        let content = compose["configs"][source]["content"]
            .as_str()
            .expect("inline config content");
        let path = dir.path().join(format!("{source}.toml"));
        std::fs::write(&path, content).expect("write config");
        let (code, out, err) = run(&mut mxguard(&[
            "config",
            "check",
            path.to_str().expect("path"),
        ]));
        assert_eq!(code, Some(0), "{name}'s config: {out}{err}");
        let toml: toml::Table = content.parse().expect("TOML");
        assert!(!content.contains("_env"), "{name}: secrets by environment");
        for (provider, p) in toml["providers"].as_table().expect("providers") {
            let file = p["api_token_file"].as_str().expect("a token file");
            let secret = file
                .strip_prefix("/run/secrets/")
                .expect("a mounted secret");
            assert!(
                secrets.contains(&secret),
                "{provider}: {secret} not mounted"
            );
        }
        assert_eq!(
            toml["server"]["open_readyz"].as_bool(),
            Some(true),
            "{name}"
        );
        let cluster = &toml["cluster"];
        vantages.push((
            cluster["vantage"].as_str().expect("vantage").to_string(),
            cluster["advertise_url"]
                .as_str()
                .expect("advertise_url")
                .to_string(),
        ));
    }
    assert_ne!(vantages[0], vantages[1], "two instances, one vantage each");
    assert_ne!(vantages[0].0, vantages[1].0);
}
