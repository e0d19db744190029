//! Incidents end to end: `mxguard serve` against BIND, two Unbound resolvers and two Postfix MX
//! hosts. The primary MTA stops (failover), comes back (failback after the hold); the API then
//! shows one closed incident with its milestones in order, `mxguard incidents --markdown`
//! prints the postmortem draft's timeline, and an unknown incident id is a 404 problem.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::lab::{mxguard_bin, Lab, LabOptions, Layout, READ_TOKEN};
use serde_json::Value;

const PRIMARY_MX: &str = "10 mx1.example.test.";
const BACKUP_MX: &str = "10 backup.example.test.";
const LIST: &str = "/v1/domains/example.test/incidents";

fn at(m: &Value) -> chrono::DateTime<chrono::Utc> {
    m["at"]
        .as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
        .unwrap_or_else(|| panic!("a milestone without a time: {m}"))
}

fn milestone<'a>(incident: &'a Value, step: &str) -> &'a Value {
    incident["milestones"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["step"] == step))
        .unwrap_or_else(|| panic!("no {step} milestone in {incident:#}"))
}

/// `mxguard ARGS --api URL` with the lab's read token.
fn incidents_cli(api: &str, args: &[&str]) -> std::process::Output {
    Command::new(mxguard_bin())
        .arg("incidents")
        .args(args)
        .args(["--api", api])
        .env_remove("MXGUARD_API")
        .env_remove("MXGUARD_CONFIG")
        .env("MXGUARD_TOKEN", READ_TOKEN)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run mxguard incidents")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failover_and_failback_is_one_closed_incident_with_its_durations() {
    let mut lab = Lab::start_with(
        LabOptions {
            hold: "4s",
            mx_ttl: 300,
        },
        Layout {
            read_token: true,
            ..Layout::default()
        },
    )
    .await;
    let mut mx = lab.serve(None);
    lab.settle(&mx, Duration::from_secs(90)).await;
    let (status, body) = lab.api_get(&mx, LIST).await.expect("the API answers");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["incidents"], serde_json::json!([]), "{body}");

    lab.primary.stop().await.expect("stop the primary MTA");
    lab.wait_for_mx(&mx, BACKUP_MX, Duration::from_secs(90))
        .await;
    // While on the backup: one open incident.
    let (_, body) = lab.api_get(&mx, LIST).await.expect("the API answers");
    assert_eq!(body["incidents"][0]["status"], "open", "{body:#}");

    lab.primary
        .restart()
        .await
        .expect("restart the primary MTA");
    lab.wait_for_mx(&mx, PRIMARY_MX, Duration::from_secs(90))
        .await;
    lab.wait_verified(&mx, 2, Duration::from_secs(90)).await;

    // The closing transition is recorded a moment after the change is verified.
    let start = Instant::now();
    let body = loop {
        if let Some((200, body)) = lab.api_get(&mx, LIST).await {
            if body["incidents"][0]["status"] == "closed" {
                break body;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no closed incident:\n{}",
            mx.plain_log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let list = body["incidents"].as_array().expect("incidents");
    assert_eq!(list.len(), 1, "{body:#}");
    assert_eq!(body["next_before"], Value::Null);
    let incident = &list[0];
    assert!(
        incident["cause"]
            .as_str()
            .is_some_and(|c| c.starts_with("primary") && c.contains("Down")),
        "starts at the primary's Down verdict: {incident:#}"
    );

    // The failover's and the failback's milestones, in order.
    let chain = [
        "outage",
        "decision",
        "accepted",
        "authoritative",
        "recovery",
        "failback_decision",
        "failback_accepted",
        "failback_authoritative",
        "failback_verified",
    ];
    let times: Vec<_> = chain.iter().map(|s| at(milestone(incident, s))).collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "{chain:?} out of order: {times:?}"
    );
    let d = &incident["durations"];
    for key in [
        "outage_to_decision_ms",
        "decision_to_accepted_ms",
        "accepted_to_authoritative_ms",
        "recovery_to_failback_ms",
        "failback_decision_to_verified_ms",
        "total_ms",
    ] {
        assert!(
            d[key].as_i64().is_some_and(|ms| ms >= 0),
            "{key} missing: {d:#}"
        );
    }
    // The failback waited for the hold after the primary came back.
    assert!(
        d["recovery_to_failback_ms"]
            .as_i64()
            .is_some_and(|ms| ms >= 4_000),
        "{d:#}"
    );
    assert_eq!(
        incident["end"],
        milestone(incident, "failback_verified")["at"]
    );
    let id = incident["id"].as_i64().expect("id");
    assert!(
        incident["evidence"]
            .as_array()
            .is_some_and(|e| e.first() == Some(&Value::from(id))),
        "{incident:#}"
    );

    // One incident by its id; an unknown id is a 404 problem.
    let (status, one) = lab
        .api_get(&mx, &format!("{LIST}/{id}"))
        .await
        .expect("the API answers");
    assert_eq!(status, 200, "{one}");
    assert_eq!(&one["incident"], incident);
    let (status, problem) = lab
        .api_get(&mx, &format!("{LIST}/999999"))
        .await
        .expect("the API answers");
    assert_eq!(status, 404, "{problem}");
    assert_eq!(
        problem["type"],
        "https://mxguard.dev/problems/unknown-incident"
    );
    let (status, _) = lab
        .api_get(&mx, "/v1/domains/nowhere.test/incidents")
        .await
        .expect("the API answers");
    assert_eq!(status, 404);
    // Pages: one incident fits a page of one; a bad limit is a 400 naming it.
    let (status, page) = lab
        .api_get(&mx, &format!("{LIST}?limit=1"))
        .await
        .expect("the API answers");
    assert_eq!((status, page["next_before"].clone()), (200, Value::Null));
    assert_eq!(page["incidents"][0]["id"], id);
    let (status, page) = lab
        .api_get(&mx, &format!("{LIST}?before={id}"))
        .await
        .expect("the API answers");
    assert_eq!(
        (status, page["incidents"].clone()),
        (200, serde_json::json!([]))
    );
    let (status, problem) = lab
        .api_get(&mx, &format!("{LIST}?limit=0"))
        .await
        .expect("the API answers");
    assert_eq!(status, 400, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("limit")),
        "{problem}"
    );

    // The postmortem draft through the CLI.
    let api = format!("http://{}", mx.listen);
    let o = incidents_cli(&api, &["example.test", "--markdown"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.starts_with(&format!("# Postmortem draft: example.test, incident {id}")),
        "{out}"
    );
    assert!(out.contains("- Status: closed"), "{out}");
    assert!(
        out.contains("| time (UTC) | step | since start | since previous | event |"),
        "{out}"
    );
    for step in [
        "| decision: failover |",
        "| accepted by the provider |",
        "| visible at the authoritative servers |",
        "| failback verified |",
    ] {
        assert!(out.contains(step), "no {step} row:\n{out}");
    }
    assert!(out.contains("## Open questions"), "{out}");
    // The list, and an unknown id: exit 2 with the problem.
    let o = incidents_cli(&api, &["example.test"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(
        out.starts_with(&id.to_string()) && out.contains("closed"),
        "{out}"
    );
    let o = incidents_cli(&api, &["example.test", "--id", "999999"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("Unknown incident"), "{err}");
    assert_eq!(mx.terminate(), Some(0));
}
