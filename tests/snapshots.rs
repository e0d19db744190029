//! `mxguard snapshot / snapshots / diff / revert / status / plan` against a real `named`.

mod common;

use common::lab::{Lab, LabOptions};
use mxguard::model::{Fqdn, RecordSet, RecordType, Ttl};
use mxguard_core::{Change, ChangeSet, DnsProvider};

fn out(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshot_diff_and_revert_with_the_ttl() {
    let lab = Lab::start(LabOptions {
        hold: "1h",
        mx_ttl: 300,
    })
    .await;
    let o = lab.cli(&["migrate"]);
    assert!(o.status.success(), "{}", out(&o));
    let o = lab.cli(&["snapshot", "example.test", "--label", "before-maintenance"]);
    assert!(o.status.success(), "{}", out(&o));
    assert!(
        out(&o).contains("snapshot 1 of example.test. (1 RRset(s)) taken"),
        "{}",
        out(&o)
    );

    // live equals the snapshot
    let o = lab.cli(&["diff", "1"]);
    assert!(out(&o).contains("identical"), "{}", out(&o));

    // someone edits the MX by hand, with another TTL
    let zone = Fqdn::parse("example.test").unwrap();
    let original = RecordSet::parse(
        zone.clone(),
        RecordType::Mx,
        Ttl::new(300).unwrap(),
        &["10 mx1.example.test."],
    )
    .unwrap();
    let edited = RecordSet::parse(
        zone.clone(),
        RecordType::Mx,
        Ttl::new(60).unwrap(),
        &["10 backup.example.test."],
    )
    .unwrap();
    lab.console()
        .apply(
            &zone,
            &ChangeSet {
                changes: vec![Change::Upsert {
                    set: edited,
                    expected: Some(original),
                }],
            },
        )
        .await
        .expect("hand edit");
    assert_eq!(
        lab.served_mx().await,
        vec!["10 backup.example.test. 60".to_string()]
    );

    let o = lab.cli(&["diff", "1", "--json"]);
    assert!(o.status.success(), "{}", out(&o));
    let diff: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(diff["changes"]["changes"].as_array().map(Vec::len), Some(1));

    // the live records changed outside mxguard: refused without --force, nothing changes
    let o = lab.cli(&["revert", "1"]);
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert!(out(&o).contains("changed outside mxguard"), "{}", out(&o));
    let o = lab.cli(&["revert", "1", "--force", "--dry-run"]);
    assert!(o.status.success(), "{}", out(&o));
    assert!(out(&o).contains("would make 1 change(s)"), "{}", out(&o));
    assert_eq!(
        lab.served_mx().await,
        vec!["10 backup.example.test. 60".to_string()],
        "dry run changes nothing"
    );

    let o = lab.cli(&["revert", "1", "--force", "--reason", "undo hand edit"]);
    assert!(o.status.success(), "{}", out(&o));
    assert!(
        out(&o).contains("reverted to snapshot 1 by cli: undo hand edit"),
        "{}",
        out(&o)
    );
    assert_eq!(
        lab.served_mx().await,
        vec!["10 mx1.example.test. 300".to_string()],
        "records and TTL restored"
    );

    // the revert snapshotted what it replaced; a second revert has nothing to do
    let o = lab.cli(&["snapshots", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(list.as_array().map(Vec::len), Some(2));
    assert_eq!(list[0]["reason"], "before revert to snapshot 1");
    let o = lab.cli(&["revert", "1"]);
    assert!(out(&o).contains("nothing to do"), "{}", out(&o));

    let o = lab.cli(&["status", "example.test"]);
    assert!(o.status.success(), "{}", out(&o));
    assert!(
        out(&o).starts_with("lease: "),
        "the status says who holds the lease: {}",
        out(&o)
    );
    assert!(
        out(&o).contains("revert"),
        "the revert event is on the timeline: {}",
        out(&o)
    );
    let o = lab.cli(&["plan", "example.test"]);
    assert!(o.status.success(), "{}", out(&o));
    assert!(out(&o).contains("converged"), "{}", out(&o));

    let o = lab.cli(&["providers", "check"]);
    assert!(o.status.success(), "{}", out(&o));
    assert!(
        out(&o).contains(
            "provider lab: OK, zone example.test. readable, publishes the primary records"
        ),
        "{}",
        out(&o)
    );

    // bad input: exit 2, nothing changed
    assert_eq!(lab.cli(&["diff", "99"]).status.code(), Some(2));
    assert_eq!(lab.cli(&["snapshot", "nope.test"]).status.code(), Some(2));
    assert_eq!(
        lab.served_mx().await,
        vec!["10 mx1.example.test. 300".to_string()]
    );
}
