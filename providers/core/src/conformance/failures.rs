//! Cases about errors, concurrency and preconditions.

use super::{
    apply, at, converge, ctx, expect_absent, expect_exactly, fail, read, rrset, show, CaseResult,
    Failure, Peer,
};
use crate::{Change, ChangeSet, Fqdn, ProviderError, RecordSet, RecordType, RrsetKey};

use RecordType::{Mx, Txt, A};

/// A zone the kit assumes no peer holds.
pub const ABSENT_ZONE: &str = "mxguard-conformance-absent.invalid.";

fn upsert(set: &RecordSet, expected: Option<&RecordSet>) -> ChangeSet {
    ChangeSet {
        changes: vec![Change::Upsert {
            set: set.clone(),
            expected: expected.cloned(),
        }],
    }
}

fn expect_kind<T: std::fmt::Debug>(
    what: &str,
    want: &str,
    got: Result<T, ProviderError>,
) -> CaseResult {
    match got {
        Err(e) if e.kind() == want => Ok(()),
        Err(e) => fail(format!(
            "{what}: expected a {want} error, got {} ({e})",
            e.kind()
        )),
        Ok(v) => fail(format!("{what}: expected a {want} error, got Ok({v:?})")),
    }
}

/// Reads, listings and changes for a zone the account does not hold fail `NotFound`.
pub async fn unknown_zone_is_not_found(peer: &dyn Peer) -> CaseResult {
    let f = peer.fresh().await.map_err(Failure)?;
    let zone = Fqdn::parse(ABSENT_ZONE)?;
    let set = rrset(&at(&zone, "mxg-a")?, A, 300, &["192.0.2.1"])?;
    let p = &f.provider;
    expect_kind(
        "read",
        "not_found",
        p.read(&zone, &[RrsetKey::of(&set)]).await,
    )?;
    expect_kind(
        "apply",
        "not_found",
        p.apply(&zone, &upsert(&set, None)).await,
    )?;
    if p.capabilities().zone_listing {
        expect_kind("list_zone", "not_found", p.list_zone(&zone).await)?;
    }
    Ok(())
}

/// Wrong credentials fail `Auth` on every call, and change nothing.
pub async fn bad_credentials_are_auth(peer: &dyn Peer) -> CaseResult {
    let f = peer.fresh().await.map_err(Failure)?;
    let bad = peer.bad_credentials(&f).await.map_err(Failure)?;
    let set = rrset(&at(&f.zone, "mxg-auth")?, A, 300, &["192.0.2.9"])?;
    let key = RrsetKey::of(&set);
    expect_kind(
        "apply",
        "auth",
        bad.apply(&f.zone, &upsert(&set, None)).await,
    )?;
    expect_kind(
        "read",
        "auth",
        bad.read(&f.zone, std::slice::from_ref(&key)).await,
    )?;
    if bad.capabilities().zone_listing {
        expect_kind("list_zone", "auth", bad.list_zone(&f.zone).await)?;
    }
    expect_absent(&f, &[key], "after the refused apply").await
}

/// Concurrent applies to one zone: changes to different RRsets all land; two changes made
/// from the same reading of one RRset cannot both win — exactly one lands, the other is
/// `Rejected`.
pub async fn concurrent_applies_are_serialised(peer: &dyn Peer) -> CaseResult {
    let f = peer.fresh().await.map_err(Failure)?;
    let mut sets = Vec::new();
    for i in 0..4 {
        let name = at(&f.zone, &format!("mxg-c{i}"))?;
        sets.push(rrset(&name, A, 300, &[&format!("192.0.2.{}", 100 + i)])?);
    }
    let p = &f.provider;
    let z = &f.zone;
    let cs: Vec<ChangeSet> = sets.iter().map(|s| upsert(s, None)).collect();
    let (a, b, c, d) = tokio::join!(
        p.apply(z, &cs[0]),
        p.apply(z, &cs[1]),
        p.apply(z, &cs[2]),
        p.apply(z, &cs[3])
    );
    for (i, r) in [a, b, c, d].into_iter().enumerate() {
        ctx(&format!("concurrent apply {i}"), r)?;
    }
    expect_exactly(&f, &sets, "every concurrent change landed").await?;

    let one = rrset(z, Txt, 300, &["writer one"])?;
    let two = rrset(z, Txt, 300, &["writer two"])?;
    let (first, second) = (upsert(&one, None), upsert(&two, None));
    let (r1, r2) = tokio::join!(p.apply(z, &first), p.apply(z, &second));
    let winner = match (&r1, &r2) {
        (Ok(()), Err(ProviderError::Rejected { .. })) => one,
        (Err(ProviderError::Rejected { .. }), Ok(())) => two,
        _ => {
            return fail(format!(
            "two writers from one reading: expected one Ok and one Rejected, got {r1:?} and {r2:?}"
        ))
        }
    };
    expect_exactly(&f, &[winner], "the winner's RRset").await
}

/// A change whose `expected` no longer matches (someone changed the RRset in between) is
/// `Rejected` and overwrites nothing — for upserts and deletes alike.
pub async fn stale_expected_is_rejected(peer: &dyn Peer) -> CaseResult {
    let f = peer.fresh().await.map_err(Failure)?;
    let name = at(&f.zone, "mxg-cas")?;
    let planned_from = rrset(&name, A, 300, &["192.0.2.1"])?;
    let theirs = rrset(&name, A, 300, &["192.0.2.2"])?;
    let ours = rrset(&name, A, 300, &["192.0.2.3"])?;
    converge(
        &f,
        std::slice::from_ref(&planned_from),
        "the state we plan from",
    )
    .await?;
    converge(&f, std::slice::from_ref(&theirs), "someone else's edit").await?;
    let p = &f.provider;
    let stale = [
        (
            "upsert over a changed RRset",
            upsert(&ours, Some(&planned_from)),
        ),
        ("upsert where none was expected", upsert(&ours, None)),
        (
            "delete of a changed RRset",
            ChangeSet {
                changes: vec![Change::Delete {
                    key: RrsetKey::of(&ours),
                    expected: Some(planned_from.clone()),
                }],
            },
        ),
    ];
    for (what, cs) in stale {
        expect_kind(what, "rejected", p.apply(&f.zone, &cs).await)?;
        expect_exactly(&f, std::slice::from_ref(&theirs), what).await?;
    }
    let mx = rrset(&f.zone, Mx, 300, &["10 mx.backup.example.net."])?;
    let mixed = ChangeSet {
        changes: vec![
            Change::Upsert {
                set: mx.clone(),
                expected: None,
            },
            Change::Upsert {
                set: ours.clone(),
                expected: Some(planned_from),
            },
        ],
    };
    expect_kind(
        "a change set with one stale change",
        "rejected",
        p.apply(&f.zone, &mixed).await,
    )?;
    if p.capabilities().atomic {
        expect_absent(
            &f,
            &[RrsetKey::of(&mx)],
            "atomic: nothing of a rejected change set",
        )
        .await?;
    }
    apply(
        &f,
        &upsert(&ours, Some(&theirs)),
        "with the current expectation",
    )
    .await?;
    expect_exactly(&f, &[ours], "after the up-to-date change").await
}

/// With the peer down, every call fails `Transient` (retryable), never hangs.
pub async fn server_down_is_transient(peer: &dyn Peer) -> CaseResult {
    let f = peer.fresh().await.map_err(Failure)?;
    let set = rrset(&at(&f.zone, "mxg-down")?, A, 300, &["192.0.2.5"])?;
    let key = RrsetKey::of(&set);
    let before = read(&f, std::slice::from_ref(&key), "read while up").await?;
    if !before.is_empty() {
        return fail(format!("fresh zone holds\n{}", show(&before)));
    }
    peer.stop().await.map_err(Failure)?;
    let p = &f.provider;
    expect_kind(
        "read",
        "transient",
        p.read(&f.zone, std::slice::from_ref(&key)).await,
    )?;
    expect_kind(
        "apply",
        "transient",
        p.apply(&f.zone, &upsert(&set, None)).await,
    )?;
    if p.capabilities().zone_listing {
        expect_kind("list_zone", "transient", p.list_zone(&f.zone).await)?;
    }
    Ok(())
}
