//! Losing the lease stops the change in flight where it waits: a publish held at the provider
//! is dropped, not left to write when the provider answers, and the timeline says why.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::api::{HeldApplies, MemoryDomain, MxView, PRIMARY_MX};
use mxguard::actor::ActorError;
use mxguard::events::EventKind;
use mxguard::lease::Leadership;
use mxguard::machine::Command;

#[tokio::test(flavor = "multi_thread")]
async fn a_publish_waiting_at_the_provider_stops_when_the_lease_is_lost() {
    let m = MemoryDomain::new().await;
    let dns = &m.dns;
    let held = Arc::new(HeldApplies::new(dns.clone(), true));
    // The store's lease stays this instance's: only the local role is lost, so the provider's
    // fence would let a write through; stopping the change is what keeps it out.
    let epoch = m.leadership.epoch().expect("leads");
    let (leadership, switch) = Leadership::switchable("test", epoch);
    let mut deps = m.deps();
    deps.fence = leadership;
    deps.provider = held.clone();
    let (handle, _stop) = m.run(deps).await;

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
        let m = &m;
        async move {
            m.events()
                .await
                .into_iter()
                .find(|e| e.kind == EventKind::Fenced)
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
