//! The dashboard in a real browser: headless Chromium (over chromedriver) against `mxguard
//! serve` in the lab (BIND with TSIG, two Unbound resolvers, two Postfix MX hosts).
//!
//! A read token sees the domain and no actions; an operate token fails the domain over through
//! the page's form, and the page — refreshing itself, never reloaded — shows the move, the
//! backup's records published, the change on the timeline chart; `named` serves the backup MX.
//! Then the primary MTA stops and the page shows it down: the screenshot of that page is
//! `docs/img/dashboard-domain.png` (written there when `MXGUARD_SCREENSHOTS=1`, else under the
//! target directory).

mod common;

use std::time::Duration;

use common::browser::Browser;
use common::lab::{Lab, LabOptions, Layout, OPERATE_TOKEN, READ_TOKEN};

const BACKUP_MX: &str = "10 backup.example.test.";
const WAIT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_fails_over_from_the_dashboard_and_watches_it_land() {
    let mut lab = Lab::start_with(
        // A long hold: after the operator's failover the domain stays on the backup.
        LabOptions {
            hold: "10m",
            mx_ttl: 300,
        },
        Layout {
            read_token: true,
            operate_token: true,
            ..Layout::default()
        },
    )
    .await;
    let mx = lab.serve(None);
    lab.settle(&mx, WAIT).await;
    let base = format!("http://{}", mx.listen);
    let browser = Browser::start().await;
    let b = &browser;

    // Without a token: the login page, nothing about the domains.
    b.goto(&format!("{base}/ui")).await;
    browser.wait_text("h1", "Log in", WAIT).await;
    assert!(!b.source().await.contains("example.test"));
    // A wrong token is refused on the page.
    browser
        .submit("form.login", &[("token", "not-a-token")])
        .await;
    browser
        .wait_text("p.error", "not one of the configured API tokens", WAIT)
        .await;

    // A read token: the list and the domain page, no action forms.
    browser.submit("form.login", &[("token", READ_TOKEN)]).await;
    browser.wait_text("h1", "Domains", WAIT).await;
    browser
        .wait_text("tr[data-domain='example.test'] td.phase", "primary", WAIT)
        .await;
    b.goto(&format!("{base}/ui/domains/example.test")).await;
    browser.wait_text("dd.phase", "primary", WAIT).await;
    assert!(
        b.find_all("form.action").await.is_empty(),
        "a read token sees no actions"
    );
    assert!(browser.text("p.hint").await.contains("operate scope"));
    browser.submit("form.logout", &[]).await;
    browser.wait_text("h1", "Log in", WAIT).await;

    // An operate token fails the domain over from the page.
    browser
        .submit("form.login", &[("token", OPERATE_TOKEN)])
        .await;
    browser.wait_text("h1", "Domains", WAIT).await;
    b.goto(&format!("{base}/ui/domains/example.test")).await;
    browser
        .submit(
            "form[data-action='failover']",
            &[("reason", "browser drill: provider maintenance")],
        )
        .await;
    let flash = browser
        .wait_text("#flash", "failing over to backup", WAIT)
        .await;
    assert!(
        flash.contains("by lab-operator: browser drill: provider maintenance"),
        "{flash}"
    );
    // The provider really moved.
    lab.wait_for_mx(&mx, BACKUP_MX, WAIT).await;
    // The page follows by itself: phase, published records, the change on the chart.
    // On the backup (the primary is still Up, so the failback hold starts at once).
    browser.wait_text("dd.active", "backup", WAIT).await;
    browser.wait_text("dd.hold", "failback in", WAIT).await;
    browser.wait_text("dd.records", "backup", WAIT).await;
    b.wait_for("svg.timeline [data-kind='change']", WAIT).await;
    let events = browser.text("#events").await;
    assert!(
        events.contains("lab-operator: browser drill"),
        "the operator and reason in the events: {events}"
    );

    // The primary fails: the page shows it down, an incident on the chart.
    lab.primary.stop().await.expect("stop the primary MTA");
    browser.wait_text("#status", "down", WAIT).await;
    b.wait_for(
        "svg.timeline rect[data-row='primary'][data-state='down']",
        WAIT,
    )
    .await;
    let png = b.screenshot().await;
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "a real screenshot ({} bytes)",
        png.len()
    );
    let dir = if std::env::var("MXGUARD_SCREENSHOTS").is_ok_and(|v| v == "1") {
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/img")
    } else {
        std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
    };
    std::fs::create_dir_all(&dir).expect("screenshot directory");
    std::fs::write(dir.join("dashboard-domain.png"), &png).expect("write the screenshot");

    // A form posted from another site is refused and changes nothing.
    let resp = reqwest::Client::new()
        .post(format!("{base}/ui/domains/example.test/failback"))
        .header("Origin", "https://evil.example")
        .header(
            "Cookie",
            format!(
                "mxguard_ui={}",
                OPERATE_TOKEN
                    .bytes()
                    .map(|x| format!("{x:02x}"))
                    .collect::<String>()
            ),
        )
        .form(&[("reason", "csrf")])
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status().as_u16(), 403);
    browser.close().await;
    lab.wait_for_mx(&mx, BACKUP_MX, WAIT).await;
}
