//! Several instances on one PostgreSQL, against BIND + Unbound + Postfix and the real binary:
//! the leader's SIGKILL and SIGSTOP mid-failover (another instance finishes the change exactly
//! once; the resumed old leader is fenced), a follower's API, and vantages cut off from DNS or
//! from their canaries that cannot fail a domain over.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::ha::{self, Instance, Node, LEASE_TTL_SECS};
use common::lab::{Lab, LabOptions};
use common::{poll, PgDb};
use mxguard::model::Fqdn;
use mxguard::store::{ChangeStatus, Event, Store};

const BACKUP_MX: &str = "10 backup.example.test.";
const LONG: Duration = Duration::from_secs(90);

fn domain() -> Fqdn {
    Fqdn::parse("example.test").expect("name")
}

/// The lab, a fresh database, the instances (the first one leads) and the zone's SOA serial
/// before anything happened.
struct Cluster {
    lab: Lab,
    db: Option<PgDb>,
    nodes: Vec<Node>,
    /// The first leader's epoch.
    epoch: i64,
    store: Arc<dyn Store>,
    serial: u32,
}

impl Cluster {
    /// Starts the first instance and waits until it leads, then the others as followers.
    async fn start(tag: &str, instances: Vec<Instance>) -> Cluster {
        let lab = Lab::start(LabOptions {
            hold: "1h",
            mx_ttl: 300,
        })
        .await;
        let db = common::fresh_pg_database(tag).await;
        let mut it = instances.into_iter();
        let first = ha::serve(&lab, &db.url, &it.next().expect("one instance"));
        let epoch = ha::wait_role(&first, "leader", LONG)
            .await
            .expect("leader epoch");
        let mut nodes = vec![first];
        for inst in it {
            let n = ha::serve(&lab, &db.url, &inst);
            ha::wait_role(&n, "follower", LONG).await;
            nodes.push(n);
        }
        let store = ha::open_store(&db.url).await;
        let serial = lab.serial().await;
        Cluster {
            lab,
            db: Some(db),
            nodes,
            epoch,
            store,
            serial,
        }
    }

    async fn settled(&self) {
        poll("the leader to settle on the primary", LONG, || async {
            self.nodes[0].mx.saw("first verdicts").then_some(())
        })
        .await;
    }

    /// Waits for an event of the domain that `matches`.
    async fn event(&self, what: &str, matches: impl Fn(&Event) -> bool) -> Event {
        poll(what, LONG, || async {
            let events = self.store.events(&domain(), None, 1000).await.ok()?;
            events.into_iter().find(|e| matches(e))
        })
        .await
    }

    async fn backup_published(&self) {
        poll("named to serve the backup MX", LONG, || async {
            let mx = self.lab.served_mx().await;
            (mx.len() == 1 && mx[0].starts_with(BACKUP_MX)).then_some(())
        })
        .await;
    }

    /// The change rows, once every one is verified: (id, status, epoch).
    async fn verified_changes(&self) -> Vec<(i64, ChangeStatus, i64)> {
        poll("every change to be verified", LONG, || async {
            let rows = self.store.recent_changes(&domain(), 10).await.ok()?;
            let done = !rows.is_empty() && rows.iter().all(|c| c.status == ChangeStatus::Verified);
            done.then(|| rows.iter().map(|c| (c.id, c.status, c.epoch)).collect())
        })
        .await
    }

    /// Nothing was published: no change row, no transition to FailingOver, the same serial.
    async fn nothing_published(&self) {
        let events = self
            .store
            .events(&domain(), None, 1000)
            .await
            .expect("events");
        let shown: Vec<(&str, &str)> = events
            .iter()
            .map(|e| (e.kind.as_str(), e.message.as_str()))
            .collect();
        assert!(
            !events.iter().any(|e| e.message.contains("FailingOver")),
            "{shown:#?}"
        );
        let changes = self
            .store
            .recent_changes(&domain(), 10)
            .await
            .expect("changes");
        assert!(changes.is_empty(), "{changes:?}");
        assert_eq!(self.lab.serial().await, self.serial, "named was updated");
    }

    /// The new leader among the nodes other than `old`, with its epoch.
    async fn new_leader(&self, old: usize) -> (usize, i64) {
        poll("another instance to take the lease", LONG, || async {
            for (i, n) in self.nodes.iter().enumerate() {
                if i == old {
                    continue;
                }
                if let Some((role, Some(epoch))) = ha::role(n).await {
                    if role == "leader" {
                        return Some((i, epoch));
                    }
                }
            }
            None
        })
        .await
    }

    /// Waits until `vantage`'s own verdict on the primary is Down and it has reported 3 s of
    /// rounds since (1 s interval): the leader had every chance to act on that verdict.
    async fn seen_down_for_a_while(&self, vantage: &str) {
        let report = |want_down: bool| async move {
            let rows = self.store.vantage_reports(&domain()).await.ok()?;
            rows.into_iter()
                .find(|r| r.vantage == vantage && r.side == "primary")
                .filter(|r| !want_down || r.report["health"] == "down")
                .map(|r| r.at)
        };
        let since = poll(&format!("{vantage} to see the primary Down"), LONG, || {
            report(true)
        })
        .await;
        poll(&format!("3 s more of {vantage}'s rounds"), LONG, || async {
            report(false)
                .await
                .filter(|at| *at >= since + chrono::Duration::seconds(3))
        })
        .await;
    }

    /// The lease is held by `node` at `epoch`.
    async fn leads(&self, node: usize, epoch: i64) {
        let lease = self.store.lease().await.expect("lease");
        assert_eq!(
            (lease.vantage.as_str(), lease.epoch),
            (self.nodes[node].vantage, epoch)
        );
    }

    fn store_url(&self) -> mxguard::config::StoreUrl {
        self.db.as_ref().expect("database").url.clone()
    }

    async fn finish(mut self) {
        self.store.close().await;
        self.nodes.clear();
        if let Some(db) = self.db.take() {
            db.drop_db().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn three_instances_survive_the_leaders_sigkill_mid_failover() {
    let mut a = Instance::new("a");
    a.failpoint = Some("after_intent");
    let mut c = Cluster::start("ha_kill", vec![a, Instance::new("b"), Instance::new("c")]).await;
    c.settled().await;
    c.lab.primary.stop().await.expect("stop primary MTA");
    poll("the leader to write its intent and pause", LONG, || async {
        c.nodes[0]
            .mx
            .saw("FAILPOINT after_intent reached")
            .then_some(())
    })
    .await;
    let pending = c
        .store
        .recent_changes(&domain(), 10)
        .await
        .expect("changes");
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(
        (pending[0].status, pending[0].epoch),
        (ChangeStatus::Pending, c.epoch)
    );

    let killed = Instant::now();
    c.nodes[0].mx.kill9();
    let (leader, epoch) = c.new_leader(0).await;
    eprintln!(
        "lease taken by {} (epoch {epoch}) {:.1} s after the SIGKILL (lease_ttl {LEASE_TTL_SECS} s)",
        c.nodes[leader].vantage,
        killed.elapsed().as_secs_f64()
    );
    assert!(epoch > c.epoch, "a new epoch: {epoch} after {}", c.epoch);

    c.backup_published().await;
    assert_eq!(
        c.verified_changes().await,
        vec![(pending[0].id, ChangeStatus::Verified, c.epoch)],
        "the killed leader's intent was finished, and no second one written"
    );
    assert_eq!(
        c.lab.serial().await,
        c.serial + 1,
        "exactly one UPDATE reached named"
    );
    assert!(
        c.nodes[leader].mx.saw("resuming change"),
        "the new leader resumed the intent:\n{}",
        c.nodes[leader].mx.log()
    );
    c.leads(leader, epoch).await;
    c.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_paused_past_its_lease_is_fenced_when_it_resumes() {
    paused_leader_is_fenced("after_intent:stop", "ha_pause").await;
}

/// Paused at the provider call itself — after its intent and after the lease checks that come
/// before the call, as a long queue at admission or a VM pause would hold it: the fence inside
/// the provider client still refuses the write when it resumes.
#[tokio::test(flavor = "multi_thread")]
async fn a_leader_paused_at_the_provider_call_writes_nothing_when_it_resumes() {
    paused_leader_is_fenced("before_apply:stop", "ha_pause_apply").await;
}

async fn paused_leader_is_fenced(failpoint: &'static str, tag: &str) {
    let mut a = Instance::new("a");
    a.failpoint = Some(failpoint);
    let mut c = Cluster::start(tag, vec![a, Instance::new("b"), Instance::new("c")]).await;
    c.settled().await;
    follower_serves_reads_and_refuses_mutations(&c.nodes[1], &c.nodes[0]).await;
    let pid = c.nodes[0].mx.child.id();

    c.lab.primary.stop().await.expect("stop primary MTA");
    poll(
        "the leader to stop itself after its intent",
        LONG,
        || async { (ha::proc_state(pid) == Some('T')).then_some(()) },
    )
    .await;

    // Another instance takes the lease once it runs out and finishes the change.
    let (leader, epoch) = c.new_leader(0).await;
    assert!(epoch > c.epoch);
    c.backup_published().await;
    assert_eq!(c.verified_changes().await.len(), 1);
    assert_eq!(c.lab.serial().await, c.serial + 1);

    // The primary is back and an operator pins it at the new leader: the primary's records
    // go back (a second write), which the paused leader's stale change must not undo.
    c.lab.primary.restart().await.expect("restart primary MTA");
    let http = reqwest::Client::new();
    let until = (chrono::Utc::now() + chrono::Duration::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let pinned = poll("the pin to the primary to be accepted", LONG, || async {
        let r = http
            .put(format!("{}/v1/domains/example.test/pin", c.nodes[leader].api))
            .bearer_auth(ha::TOKEN)
            .json(&serde_json::json!({"side": "primary", "until": until, "reason": "provider says fixed"}))
            .send()
            .await
            .ok()?;
        (r.status() == reqwest::StatusCode::OK).then_some(())
    })
    .await;
    let () = pinned;
    poll("named to serve the primary again", LONG, || async {
        let served = c.lab.served_mx().await;
        (served.len() == 1 && served[0].starts_with("10 mx1.example.test.")).then_some(())
    })
    .await;
    assert_eq!(c.verified_changes().await.len(), 2);
    assert_eq!(c.lab.serial().await, c.serial + 2);

    // The old leader resumes, still believing it leads at its epoch: its write is refused.
    ha::signal(pid, "-CONT");
    poll("the resumed leader to be fenced", LONG, || async {
        fenced_or_stopped(&c.nodes[0].mx).then_some(())
    })
    .await;
    ha::wait_role(&c.nodes[0], "follower", LONG).await;
    assert_eq!(
        c.lab.serial().await,
        c.serial + 2,
        "the fenced leader applied nothing:\n{}",
        c.nodes[0].mx.log()
    );
    let after = c
        .store
        .recent_changes(&domain(), 10)
        .await
        .expect("changes");
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(after.iter().all(|c| c.status == ChangeStatus::Verified));
    let mx = c.lab.served_mx().await;
    assert!(
        mx[0].starts_with("10 mx1.example.test."),
        "the pin stands: {mx:?}"
    );
    // The timeline says why the old leader's change was not applied by it.
    let fenced = c.event("the fenced event", |e| e.kind == "fenced").await;
    assert_eq!(fenced.actor, "a");
    assert!(
        fenced.message.contains(&format!("epoch {}", c.epoch)),
        "{}",
        fenced.message
    );
    c.leads(leader, epoch).await;
    c.finish().await;
}

/// An operator's revert goes through the leader's actor and the one publish, fenced at the
/// provider call like the controller's own changes: a leader paused there past its lease writes
/// nothing when it resumes, and the operator is told the revert did not happen there.
#[tokio::test(flavor = "multi_thread")]
async fn a_revert_on_a_leader_that_loses_its_lease_writes_nothing() {
    let mut a = Instance::new("a");
    a.failpoint = Some("before_apply:stop");
    let c = Cluster::start("ha_revert", vec![a, Instance::new("b")]).await;
    c.settled().await;
    let http = reqwest::Client::new();
    let api = c.nodes[0].api.clone();
    let r = http
        .post(format!("{api}/v1/snapshots"))
        .bearer_auth(ha::TOKEN)
        .json(&serde_json::json!({"domain": "example.test", "reason": "before the edit"}))
        .send()
        .await
        .expect("snapshot");
    assert_eq!(r.status(), reqwest::StatusCode::CREATED);
    // Someone puts the backup's records in by hand; the operator reverts to the snapshot.
    let zone = domain();
    let mx = |record: &str, ttl: u32| {
        mxguard::model::RecordSet::parse(
            zone.clone(),
            mxguard::model::RecordType::Mx,
            mxguard::model::Ttl::new(ttl).expect("ttl"),
            &[record],
        )
        .expect("set")
    };
    mxguard_core::DnsProvider::apply(
        &c.lab.console(),
        &zone,
        &mxguard_core::ChangeSet {
            changes: vec![mxguard_core::Change::Upsert {
                set: mx(BACKUP_MX, 30),
                expected: Some(mx("10 mx1.example.test.", 300)),
            }],
        },
    )
    .await
    .expect("hand edit");
    let edited = c.lab.serial().await;
    let revert = tokio::spawn({
        let http = http.clone();
        async move {
            http.post(format!("{api}/v1/snapshots/1/revert"))
                .bearer_auth(ha::TOKEN)
                .json(&serde_json::json!({"reason": "undo the hand edit", "force": true}))
                .send()
                .await
        }
    });
    let pid = c.nodes[0].mx.child.id();
    poll("the leader to stop at the provider call", LONG, || async {
        (ha::proc_state(pid) == Some('T')).then_some(())
    })
    .await;

    // The other instance takes the lease once it runs out and finishes the change in flight.
    let (leader, epoch) = c.new_leader(0).await;
    assert!(epoch > c.epoch);
    poll("named to serve the primary again", LONG, || async {
        let served = c.lab.served_mx().await;
        (served.len() == 1 && served[0].starts_with("10 mx1.example.test.")).then_some(())
    })
    .await;
    let finished = c.lab.serial().await;
    assert_eq!(finished, edited + 1, "one write, by the new leader");

    // The old leader resumes: its revert is fenced, nothing reaches named, the operator hears.
    ha::signal(pid, "-CONT");
    let answer = revert
        .await
        .expect("the request task")
        .expect("an answer from the resumed leader");
    let status = answer.status();
    let body = answer.text().await.unwrap_or_default();
    assert_eq!(status, reqwest::StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("nothing was written"), "{body}");
    assert!(fenced_or_stopped(&c.nodes[0].mx), "{}", c.nodes[0].mx.log());
    assert_eq!(
        c.lab.serial().await,
        finished,
        "the fenced leader applied nothing:\n{}",
        c.nodes[0].mx.log()
    );
    let events = c.store.events(&domain(), None, 1000).await.expect("events");
    assert!(
        !events.iter().any(|e| e.kind == "revert"),
        "no revert recorded as done: {events:#?}"
    );
    c.leads(leader, epoch).await;
    c.finish().await;
}

/// Two live instances with one vantage name would vote twice and read each other's reports
/// as their own: the second is refused at start. The same instance restarted (its process
/// gone) leads again.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_live_instance_with_the_same_vantage_name_is_refused() {
    let mut c = Cluster::start("ha_twin", vec![Instance::new("a")]).await;
    let mut twin = ha::serve(&c.lab, &c.store_url(), &Instance::new("a"));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = twin.mx.child.try_wait().expect("the twin's status") {
            break status;
        }
        assert!(
            start.elapsed() < LONG,
            "the twin still runs:\n{}",
            twin.mx.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status.code(), Some(1), "{}", twin.mx.log());
    assert!(
        twin.mx
            .saw("another live mxguard instance uses the vantage name \"a\""),
        "{}",
        twin.mx.log()
    );
    c.leads(0, c.epoch).await;

    // The first one dies; started again under its name, it leads again at once.
    c.nodes[0].mx.kill9();
    let again = ha::serve(&c.lab, &c.store_url(), &Instance::new("a"));
    let epoch = ha::wait_role(&again, "leader", LONG)
        .await
        .expect("leader epoch");
    assert!(epoch > c.epoch);
    c.nodes.push(again);
    c.finish().await;
}

/// A follower answers reads from the shared store and refuses mutations, naming the leader.
async fn follower_serves_reads_and_refuses_mutations(follower: &Node, leader: &Node) {
    let http = reqwest::Client::new();
    let url = format!("{}/v1/domains/example.test", follower.api);
    let status: serde_json::Value =
        poll("the follower to show the leader's state", LONG, || async {
            let r = http.get(&url).bearer_auth(ha::TOKEN).send().await.ok()?;
            let v: serde_json::Value = r.json().await.ok()?;
            (v["phase"] == "primary").then_some(v)
        })
        .await;
    assert_eq!(status["active"], "primary", "{status}");
    let r = http
        .post(format!("{url}/pause"))
        .bearer_auth(ha::TOKEN)
        .json(&serde_json::json!({"reason": "maintenance"}))
        .send()
        .await
        .expect("pause on the follower");
    assert_eq!(r.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap_or_default(),
        "application/problem+json"
    );
    let problem: serde_json::Value = r.json().await.expect("problem");
    assert_eq!(problem["type"], "https://mxguard.dev/problems/not-leader");
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(&format!(
            "the leader is {} at {}",
            leader.vantage, leader.api
        )),
        "{detail}"
    );
    // Nothing changed: the leader's state is not paused.
    let r = http
        .get(format!("{}/v1/domains/example.test", leader.api))
        .bearer_auth(ha::TOKEN)
        .send()
        .await
        .expect("status at the leader");
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["override"], serde_json::Value::Null, "{v}");
    // The follower's timeline names the instance that decides, however quiet it is.
    let events: serde_json::Value = http
        .get(format!("{url}/events"))
        .bearer_auth(ha::TOKEN)
        .send()
        .await
        .expect("events at the follower")
        .json()
        .await
        .expect("json");
    assert_eq!(events["lease"]["held"], true, "{events}");
    assert_eq!(events["lease"]["vantage"], leader.vantage, "{events}");
    assert_eq!(events["lease"]["api_url"], leader.api.as_str(), "{events}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partitioned_vantage_cannot_trigger_a_failover() {
    // b leads but is cut off from DNS: its resolvers are sockets that never answer. They are
    // held bound for the whole test: a port merely found free can be taken by a peer another
    // test starts meanwhile, and then b's "dead" resolver answers.
    let silent: Vec<std::net::UdpSocket> = (0..2)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a silent resolver"))
        .collect();
    let dead: Vec<String> = silent
        .iter()
        .map(|s| s.local_addr().expect("address").to_string())
        .collect();
    let mut b = Instance::new("b");
    b.resolvers = Some(dead);
    let mut c = Cluster::start("ha_partition", vec![b, Instance::new("a")]).await;

    // b sees everything fail, says it is partitioned, and settles on a's vote.
    c.event("b to report itself partitioned", |e| {
        e.kind == "alert.vantage_partitioned" && e.message.contains("vantage b")
    })
    .await;
    c.settled().await;

    // a goes away: b is alone, partitioned, and sees both sides down. It must not act.
    c.nodes[1].mx.kill9();
    c.event("a's vote to go stale", |e| {
        e.kind == "health" && e.message.contains("a Up (stale")
    })
    .await;
    c.seen_down_for_a_while("b").await;
    c.nothing_published().await;

    // A healthy vantage comes back and sees the primary really down: b acts on its vote.
    c.nodes[1] = ha::serve(&c.lab, &c.store_url(), &Instance::new("a"));
    ha::wait_role(&c.nodes[1], "follower", LONG).await;
    c.lab.primary.stop().await.expect("stop primary MTA");
    c.backup_published().await;
    let down = c
        .event("a health event for the primary going Down", |e| {
            e.kind == "health" && e.message.starts_with("primary") && e.message.contains("→ Down")
        })
        .await;
    assert!(
        down.message.contains("a Down") && down.message.contains("b Down (partitioned"),
        "{}",
        down.message
    );
    assert_eq!(c.lab.serial().await, c.serial + 1);
    c.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vantage_that_cannot_reach_its_canaries_does_not_vote() {
    let port = mxguard_testpeers::free_port().expect("port");
    let canary = format!("127.0.0.1:{port}");
    let mut only = Instance::new("solo");
    only.canaries = vec![canary.clone()];
    let mut c = Cluster::start("ha_canary", vec![only]).await;

    // Nothing listens on the canary: the vantage is partitioned and, alone, cannot decide.
    c.event("the canary to mark the vantage partitioned", |e| {
        e.kind == "alert.vantage_partitioned" && e.message.contains("canaries unreachable")
    })
    .await;
    c.lab.primary.stop().await.expect("stop primary MTA");
    c.seen_down_for_a_while("solo").await;
    c.nothing_published().await;

    // The canary answers again: the vantage votes, sees the primary down, fails over.
    let _canary = std::net::TcpListener::bind(&canary).expect("canary listener");
    c.backup_published().await;
    c.event("the vantage to vote again", |e| {
        e.kind == "vantage_reachable"
    })
    .await;
    assert_eq!(c.lab.serial().await, c.serial + 1);
    c.finish().await;
}

/// A resumed leader writes nothing either way: its fence check refuses the write, or it sees
/// the lease gone first and stops the change where it waits.
fn fenced_or_stopped(mx: &common::lab::Mxguard) -> bool {
    mx.saw("fenced: not applying the change") || mx.saw("lease lost: stopping the change in flight")
}
