//! `mxguard demo`, the real binary: with nothing installed it runs the whole incident —
//! failover, then failback after the hold — and the MX set changes at the demo's DNS server,
//! as its printed timeline shows. With `--keep-running` the API stays up until SIGINT.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Generous: the demo itself takes about 10 s; a loaded 2-core machine may be much slower.
const DEADLINE: Duration = Duration::from_secs(180);

fn demo(extra: &[&str]) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mxguard"))
        .args(["demo", "--listen", "127.0.0.1:0"])
        .args(extra)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn mxguard demo");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (child, rx)
}

/// Collects lines until one contains `needle` (returns them all) or the deadline passes.
fn read_until(rx: &mpsc::Receiver<String>, needle: &str, deadline: Instant) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let done = line.contains(needle);
                lines.push(line);
                if done {
                    return lines;
                }
            }
            Err(_) => panic!(
                "no line with {needle:?} within {DEADLINE:?}; output:\n{}",
                lines.join("\n")
            ),
        }
    }
}

fn wait_exit(child: &mut Child, deadline: Instant) -> Option<i32> {
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status.code();
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("mxguard demo did not exit in time");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A timeline line `+  2.3s  text` → (2.3, "text").
fn timeline(lines: &[String]) -> Vec<(f64, String)> {
    lines
        .iter()
        .filter_map(|l| {
            let rest = l.strip_prefix('+')?;
            let (secs, text) = rest.split_once("s  ")?;
            Some((secs.trim().parse().ok()?, text.to_string()))
        })
        .collect()
}

/// The first timeline entry starting with `prefix`: its index, time and text.
fn find(tl: &[(f64, String)], prefix: &str) -> (usize, f64, String) {
    tl.iter()
        .enumerate()
        .find(|(_, (_, t))| t.starts_with(prefix))
        .map(|(i, (s, t))| (i, *s, t.clone()))
        .unwrap_or_else(|| panic!("no {prefix:?} in the timeline: {tl:#?}"))
}

#[test]
fn demo_fails_over_and_back_and_the_demo_dns_serves_each_mx_set() {
    let deadline = Instant::now() + DEADLINE;
    let (mut child, rx) = demo(&[]);
    let mut lines = read_until(&rx, "incident complete", deadline);
    assert_eq!(
        wait_exit(&mut child, deadline),
        Some(0),
        "{}",
        lines.join("\n")
    );
    lines.extend(rx.try_iter());
    let tl = timeline(&lines);
    let all = lines.join("\n");

    let healthy = find(&tl, "primary healthy; MX = ");
    let stopped = find(&tl, "primary SMTP stopped");
    let failover = find(&tl, "failover: MX = ");
    let restarted = find(&tl, "primary SMTP restarted");
    let failback = find(&tl, "failback: MX = ");
    let complete = find(&tl, "incident complete");
    let steps = [
        &healthy, &stopped, &failover, &restarted, &failback, &complete,
    ];
    assert!(
        steps
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
        "steps out of order:\n{all}"
    );

    // the MX set as the demo DNS served it at each step, with the TTLs and SOA serials
    assert!(
        healthy
            .2
            .contains("MX = 10 mx1.demo.test. (ttl 300); SOA serial 1"),
        "{all}"
    );
    assert!(
        failover
            .2
            .contains("MX = 10 backup.demo.test. (ttl 30); SOA serial 2"),
        "{all}"
    );
    assert!(
        failback
            .2
            .contains("MX = 10 mx1.demo.test. (ttl 300); SOA serial 3"),
        "{all}"
    );

    // mxguard's own events, read from its store: the transitions in order
    let order = [
        "· transition: Unknown → Primary",
        "· transition: Primary → FailingOver",
        "· transition: FailingOver → OnBackup",
        "· transition: OnBackup → FailbackPending",
        "· transition: FailbackPending → FailingBack",
        "· transition: FailingBack → Primary",
    ];
    let at: Vec<usize> = order.iter().map(|p| find(&tl, p).0).collect();
    assert!(
        at.windows(2).all(|w| w[0] < w[1]),
        "transitions out of order:\n{all}"
    );
    assert!(at[1] > stopped.0 && at[3] > restarted.0, "{all}");

    // the failback waited for the 5 s hold after the primary came back
    assert!(
        failback.1 - restarted.1 >= 5.0,
        "failback {:.1}s after the restart, before the 5 s hold:\n{all}",
        failback.1 - restarted.1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn keep_running_leaves_the_api_up_until_sigint() {
    let deadline = Instant::now() + DEADLINE;
    let (mut child, rx) = demo(&["--keep-running"]);
    let lines = tokio::task::spawn_blocking(move || {
        let lines = read_until(&rx, "/healthz", deadline);
        (lines, rx)
    })
    .await
    .expect("reader");
    let (lines, rx) = lines;
    let healthz = lines
        .iter()
        .find_map(|l| l.trim().strip_prefix("curl -s "))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("a curl line for /healthz")
        .to_string();
    let answer = reqwest::get(&healthz).await.expect("GET /healthz");
    assert!(
        answer.status().is_success(),
        "{healthz}: {}",
        answer.status()
    );
    let status_url = healthz.replace("/healthz", "/v1/domains/demo.test");
    let status = reqwest::Client::new()
        .get(&status_url)
        .bearer_auth("mxguard-demo-token")
        .send()
        .await
        .expect("GET status");
    assert!(
        status.status().is_success(),
        "{status_url}: {}",
        status.status()
    );

    let pid = child.id().to_string();
    let sent = Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill");
    assert!(sent.success());
    let code = tokio::task::spawn_blocking(move || {
        let code = wait_exit(&mut child, deadline);
        drop(rx);
        code
    })
    .await
    .expect("waiter");
    assert_eq!(code, Some(0), "SIGINT after the incident is a clean exit");
}
