//! Losing the lease stops the change in flight where it waits: a publish held at the provider
//! is dropped, not left to write when the provider answers, and the timeline says why.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::api::{lab_dns, memory_deps, sole_leader, HeldApplies, MxView, DOMAIN, PRIMARY_MX};
use mxguard::actor::{Actor, ActorError};
use mxguard::config::{Config, StoreUrl};
use mxguard::events::EventKind;
use mxguard::lease::Leadership;
use mxguard::machine::Command;
use mxguard::model::Fqdn;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread")]
async fn a_publish_waiting_at_the_provider_stops_when_the_lease_is_lost() {
    let config = Config::parse("lease.toml", &common::api::config_text(false)).expect("config");
    let domain = config.domains[0].clone();
    let dir = tempfile::tempdir().expect("tempdir");
    let url =
        StoreUrl::parse(&format!("sqlite://{}", dir.path().join("l.db").display())).expect("url");
    let store = mxguard::store::open(&url).await.expect("store");
    store.migrate().await.expect("migrate");
    let dns = Arc::new(lab_dns());
    dns.hand_edit_mx(PRIMARY_MX, 300);
    let held = Arc::new(HeldApplies::new(dns.clone(), true));
    // The store's lease stays this instance's: only the local role is lost, so the provider's
    // fence would let a write through; stopping the change is what keeps it out.
    let epoch = sole_leader(&*store).await.epoch().expect("leads");
    let (leadership, switch) = Leadership::switchable("test", epoch);
    let events = mxguard::events::EventBus::default();
    let mut deps = memory_deps(&store, &dns, &leadership, &events, &domain.provider);
    deps.provider = held.clone();
    let (actor, handle) = Actor::new(domain, deps);
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    tokio::spawn(actor.run(shutdown));
    common::api::first_read(&handle).await;

    handle
        .command(Command::Failover, "ops", "provider maintenance")
        .await
        .expect("failover accepted");
    common::poll(
        "the publish held at the provider",
        Duration::from_secs(20),
        || {
            let n = held.waiting();
            async move { (n == 1).then_some(()) }
        },
    )
    .await;

    switch.lose();
    common::poll("the held publish dropped", Duration::from_secs(20), || {
        let n = held.waiting();
        async move { (n == 0).then_some(()) }
    })
    .await;
    held.release();
    assert_eq!(
        dns.mx(),
        vec![format!("{PRIMARY_MX} 300")],
        "nothing written"
    );

    let fenced = common::poll("the fenced event", Duration::from_secs(20), || {
        let store = store.clone();
        async move {
            let timeline = store
                .events(&Fqdn::parse(DOMAIN).expect("name"), None, 1000)
                .await
                .ok()?;
            timeline.into_iter().find(|e| e.kind == EventKind::Fenced)
        }
    })
    .await;
    assert!(
        fenced
            .message
            .contains("did not apply its change publishing the backup records")
            && fenced.message.contains("lost the lease"),
        "{}",
        fenced.message
    );
    assert!(matches!(
        handle.command(Command::Failback, "ops", "x").await,
        Err(ActorError::NotLeader(_))
    ));
    // The intent stays in the state for whoever leads next.
    let s = handle.status().await.expect("status");
    assert_eq!(s.state.in_flight, Some(mxguard::model::Side::Backup));
    assert_eq!(
        dns.mx(),
        vec![format!("{PRIMARY_MX} 300")],
        "still nothing written"
    );
}
