//! The CLI's API commands (failover … events, snapshot and revert with --api): every API action has one, and they
//! work through the real binaries, `mxguard serve` in the lab and `mxguard pause` etc. beside it.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use clap::CommandFactory;
use common::lab::{mxguard_bin, Lab, LabOptions};
use mxguard::cli::remote::ACTIONS;
use mxguard::cli::Cli;

/// The operator's token, written into the lab's config by its digest.
const OPERATOR_TOKEN: &str = "lab-operator-token-5f1c0e7a";
const WRONG_TOKEN: &str = "not-the-token-9d2b44e1";

#[test]
fn every_api_action_has_a_cli_command_and_back() {
    let routes = mxguard::api::routes(&mxguard::config::Config::embedded());
    let cli = Cli::command();
    let in_table = |method: &str, path: &str| {
        ACTIONS
            .iter()
            .filter(|a| a.method == method && a.path == path)
            .count()
    };
    // Route → command: every mutation, the events timeline and the incidents.
    for r in &routes {
        let mutation = !matches!(r.method.as_str(), "GET" | "HEAD" | "OPTIONS");
        if mutation
            || r.path == "/v1/domains/{domain}/events"
            || r.path.starts_with("/v1/domains/{domain}/incidents")
        {
            assert_eq!(
                in_table(r.method.as_str(), r.path),
                1,
                "{} {} has no CLI command in mxguard::cli::remote::ACTIONS",
                r.method,
                r.path
            );
        }
    }
    // Command → route, and the command exists in the CLI.
    for a in ACTIONS {
        assert!(
            routes
                .iter()
                .any(|r| r.method.as_str() == a.method && r.path == a.path),
            "ACTIONS names {} {}, which is not in the route table",
            a.method,
            a.path
        );
        let sub = cli
            .find_subcommand(a.command)
            .unwrap_or_else(|| panic!("no `mxguard {}` subcommand", a.command));
        let has = |id: &str| sub.get_arguments().any(|arg| arg.get_id() == id);
        assert!(
            has("api") && has("token_file"),
            "`mxguard {}` has no --api / --token-file",
            a.command
        );
        // A command may send several routes (`incidents`: the list and one), each once.
        assert_eq!(
            ACTIONS
                .iter()
                .filter(|b| b.command == a.command && b.path == a.path)
                .count(),
            1,
            "`mxguard {}` is listed twice for {}",
            a.command,
            a.path
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

/// `mxguard ARGS` with nothing of the caller's environment that would steer it.
fn mxguard(args: &[&str]) -> Command {
    let mut cmd = Command::new(mxguard_bin());
    cmd.args(args)
        .env_remove("MXGUARD_API")
        .env_remove("MXGUARD_TOKEN")
        .env_remove("MXGUARD_CONFIG")
        .env("RUST_LOG", "warn");
    cmd
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn operator_commands_go_through_the_running_service() {
    let lab = Lab::start(LabOptions {
        hold: "1h",
        mx_ttl: 300,
    })
    .await;
    // A snapshot to revert to, taken before the service holds the store.
    let o = lab.cli(&["migrate"]);
    assert!(o.status.success(), "{:?}", text(&o));
    let o = lab.cli(&["snapshot", "example.test", "--label", "before"]);
    assert!(o.status.success(), "{:?}", text(&o));
    let mut config = std::fs::read_to_string(&lab.config).expect("read the lab config");
    config.push_str(&format!(
        "\n[[tokens]]\nname = \"operator\"\nsha256 = \"{}\"\nscopes = [\"read\", \"operate\", \"admin\"]\n",
        sha256_hex(OPERATOR_TOKEN)
    ));
    std::fs::write(&lab.config, config).expect("write the lab config");

    let mx = lab.serve(None);
    mx.wait_for_log("first verdicts", Duration::from_secs(90))
        .await;
    let api = format!("http://{}", mx.listen);
    let op = |args: &[&str]| {
        mxguard(args)
            .args(["--api", &api])
            .env("MXGUARD_TOKEN", OPERATOR_TOKEN)
            .output()
            .expect("run mxguard")
    };

    // pause: exit 0 and the chatops line.
    let o = op(&["pause", "example.test", "--reason", "maintenance"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    assert_eq!(
        out.trim(),
        "example.test automation paused by operator: maintenance"
    );

    // events: the pause with its reason, and who leads.
    let o = op(&["events", "example.test"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    let line = out
        .lines()
        .find(|l| l.contains("automation paused"))
        .unwrap_or_else(|| panic!("no pause in the events:\n{out}"));
    assert!(
        line.contains("override") && line.contains("operator") && line.contains("maintenance"),
        "{line}"
    );
    assert!(out.contains("lease: led by"), "{out}");
    let o = op(&["events", "example.test", "--json", "--limit", "1000"]);
    let body: serde_json::Value = serde_json::from_slice(&o.stdout).expect("events --json");
    assert!(
        body["events"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["reason"] == "maintenance")),
        "{body}"
    );

    // resume: exit 0.
    let o = op(&["resume", "example.test", "--reason", "maintenance over"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    assert_eq!(
        out.trim(),
        "example.test automation resumed by operator: maintenance over"
    );

    // Refused by the controller (nothing to fail back): exit 1 with the problem's detail.
    let o = op(&["failback", "example.test", "--reason", "test"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    assert_eq!(
        err.trim(),
        "mxguard: Refused; nothing was changed: the primary records are already published"
    );

    // Invalid input (a pin that ended yesterday): exit 2.
    let past = (chrono::Utc::now() - chrono::Duration::days(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let o = op(&[
        "pin",
        "example.test",
        "--side",
        "backup",
        "--until",
        &past,
        "--reason",
        "test",
    ]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}{err}");
    assert!(err.contains("is not in the future"), "{err}");

    // An unknown domain: exit 2.
    let o = op(&["approve", "nowhere.test", "--reason", "test"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}{err}");
    assert!(err.contains("Unknown domain"), "{err}");

    // A wrong token, from the environment and from a file: exit 2, the token never shown.
    let o = mxguard(&["pause", "example.test", "--reason", "x", "--api", &api])
        .env("MXGUARD_TOKEN", WRONG_TOKEN)
        .output()
        .expect("run mxguard");
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}{err}");
    assert!(err.contains("A valid bearer token is required"), "{err}");
    assert!(!out.contains(WRONG_TOKEN) && !err.contains(WRONG_TOKEN));
    let file = lab.dir.path().join("token");
    std::fs::write(&file, format!("{WRONG_TOKEN}\n")).expect("write the token file");
    let file = file.display().to_string();
    let o = mxguard(&["resume", "example.test", "--reason", "x", "--api", &api])
        .args(["--token-file", &file])
        .env("MXGUARD_TOKEN", OPERATOR_TOKEN)
        .output()
        .expect("run mxguard");
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "--token-file wins: {out}{err}");
    assert!(!out.contains(WRONG_TOKEN) && !err.contains(WRONG_TOKEN));

    // No service there: exit 1, naming the URL.
    let nowhere = format!(
        "http://127.0.0.1:{}",
        mxguard_testpeers::free_port().expect("port")
    );
    let o = mxguard(&["pause", "example.test", "--reason", "x", "--api", &nowhere])
        .env("MXGUARD_TOKEN", OPERATOR_TOKEN)
        .output()
        .expect("run mxguard");
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    assert!(
        err.contains(&format!("cannot reach the mxguard API at {nowhere}/")),
        "{err}"
    );
    assert!(!err.contains(OPERATOR_TOKEN));

    // revert: with MXGUARD_API the service answers; without, the offline path refuses while
    // the service holds the store, as before.
    let o = mxguard(&["revert", "1", "--dry-run", "--reason", "check"])
        .env("MXGUARD_API", &api)
        .env("MXGUARD_TOKEN", OPERATOR_TOKEN)
        .output()
        .expect("run mxguard");
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    assert!(out.trim().starts_with("dry run: "), "{out}");
    assert!(out.trim().ends_with("; nothing was changed"), "{out}");
    let o = op(&["revert", "999", "--reason", "check"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}{err}");
    assert!(err.contains("Unknown snapshot"), "{err}");
    let o = op(&[
        "snapshot",
        "example.test",
        "--label",
        "via-api",
        "--reason",
        "check",
    ]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    assert_eq!(
        out.trim(),
        "snapshot 2 of example.test (1 RRset(s)) taken by operator: check"
    );
    let o = lab.cli(&["revert", "1", "--reason", "offline"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    assert!(err.contains("revert through its API instead"), "{err}");

    // What the CLI did is in the service's timeline, by the token's name.
    let events = lab.events().await;
    assert!(
        events.iter().any(|e| e.actor == "operator"
            && e.reason.as_deref() == Some("maintenance")
            && e.message.contains("paused")),
        "{events:?}"
    );
}
