//! Cases about what ends up in the zone.

use super::{
    apply, at, converge, ctx, expect_absent, expect_exactly, fail, read, rrset, show, CaseResult,
    Peer,
};
use crate::{diff, Change, ChangeSet, RecordSet, RecordType, RrsetKey};

use RecordType::{Aaaa, Mx, Txt, A};

/// An MX set (in-zone targets with their addresses, plus an out-of-zone one) is created with
/// its TTL and read back exactly.
pub async fn create_mx_set(peer: &dyn Peer) -> CaseResult {
    let f = peer.fresh().await.map_err(super::Failure)?;
    let z = &f.zone;
    let mx1 = at(z, "mxg-mx1")?;
    let mx2 = at(z, "mxg-mx2")?;
    converge(
        &f,
        &[
            rrset(&mx1, A, 300, &["192.0.2.1"])?,
            rrset(&mx2, Aaaa, 300, &["2001:db8::2"])?,
        ],
        "addresses",
    )
    .await?;
    let mx = rrset(
        z,
        Mx,
        300,
        &[
            &format!("10 {mx1}"),
            &format!("20 {mx2}"),
            "30 mx.backup.example.net.",
        ],
    )?;
    let actual = read(&f, &[RrsetKey::of(&mx)], "read before create").await?;
    if !actual.is_empty() {
        return fail(format!("fresh zone already holds\n{}", show(&actual)));
    }
    let cs = diff(std::slice::from_ref(&mx), &actual);
    apply(&f, &cs, "create MX").await?;
    expect_exactly(&f, &[mx], "after create").await
}

/// An MX set is replaced: first a preference changes, then a target.
pub async fn replace_mx_set(peer: &dyn Peer) -> CaseResult {
    let f = peer.fresh().await.map_err(super::Failure)?;
    let z = &f.zone;
    let (m1, m2, m3) = (at(z, "mxg-mx1")?, at(z, "mxg-mx2")?, at(z, "mxg-mx3")?);
    let addrs = [
        rrset(&m1, A, 300, &["192.0.2.1"])?,
        rrset(&m2, A, 300, &["192.0.2.2"])?,
        rrset(&m3, A, 300, &["192.0.2.3"])?,
    ];
    converge(&f, &addrs, "addresses").await?;
    let first = rrset(z, Mx, 300, &[&format!("10 {m1}"), &format!("20 {m2}")])?;
    converge(&f, &[first], "initial MX").await?;
    let preference = rrset(z, Mx, 300, &[&format!("5 {m1}"), &format!("20 {m2}")])?;
    converge(&f, &[preference], "preference change").await?;
    let target = rrset(z, Mx, 300, &[&format!("5 {m1}"), &format!("20 {m3}")])?;
    converge(&f, std::slice::from_ref(&target), "target change").await?;
    let sets = read(&f, &[RrsetKey::of(&target)], "final read").await?;
    if sets.len() != 1 {
        return fail(format!(
            "one MX RRset expected at the apex, read\n{}",
            show(&sets)
        ));
    }
    Ok(())
}

/// An A set is replaced: two addresses → one → three.
pub async fn replace_a_set(peer: &dyn Peer) -> CaseResult {
    let f = peer.fresh().await.map_err(super::Failure)?;
    let www = at(&f.zone, "mxg-www")?;
    converge(
        &f,
        &[rrset(&www, A, 120, &["192.0.2.10", "192.0.2.11"])?],
        "two addresses",
    )
    .await?;
    converge(
        &f,
        &[rrset(&www, A, 120, &["198.51.100.20"])?],
        "one address",
    )
    .await?;
    let three = ["203.0.113.1", "203.0.113.2", "203.0.113.3"];
    converge(&f, &[rrset(&www, A, 120, &three)?], "three addresses").await
}

/// An MX naming a new in-zone host goes in the same change as that host's addresses, listed
/// before them: the provider must order the writes so the server accepts them.
pub async fn mx_and_its_target_address_in_one_change(peer: &dyn Peer) -> CaseResult {
    let f = peer.fresh().await.map_err(super::Failure)?;
    let host = at(&f.zone, "mxg-new")?;
    let mx = rrset(&f.zone, Mx, 60, &[&format!("10 {host}")])?;
    let a = rrset(&host, A, 60, &["192.0.2.44"])?;
    let aaaa = rrset(&host, Aaaa, 60, &["2001:db8::44"])?;
    let cs = ChangeSet {
        changes: [&mx, &a, &aaaa]
            .into_iter()
            .map(|s| Change::Upsert {
                set: s.clone(),
                expected: None,
            })
            .collect(),
    };
    apply(&f, &cs, "MX with its target in one change").await?;
    expect_exactly(&f, &[mx, a, aaaa], "after the change").await
}

/// The Null MX (`0 .`, RFC 7505) can be published, replaced, and published again.
pub async fn null_mx(peer: &dyn Peer) -> CaseResult {
    let f = peer.fresh().await.map_err(super::Failure)?;
    let null = rrset(&f.zone, Mx, 300, &["0 ."])?;
    converge(&f, std::slice::from_ref(&null), "publish Null MX").await?;
    let got = read(&f, &[RrsetKey::of(&null)], "read Null MX").await?;
    if !got.iter().all(|s| s.mx_records().all(|m| m.is_null())) {
        return fail(format!("Null MX read back as\n{}", show(&got)));
    }
    let real = rrset(&f.zone, Mx, 300, &["10 mx.backup.example.net."])?;
    converge(&f, &[real], "replace Null MX").await?;
    converge(&f, &[null], "Null MX again").await
}

/// TTLs are written and read back exactly, from the provider's minimum up; a TTL-only
/// change is a change.
pub async fn ttl_kept_exactly(peer: &dyn Peer) -> CaseResult {
    let f = peer.fresh().await.map_err(super::Failure)?;
    let caps = f.provider.capabilities();
    let (min, max) = (caps.min_ttl, caps.max_ttl);
    let mut sets = Vec::new();
    // From the floor to a week, or to the provider's ceiling when that is lower.
    for (i, ttl) in [min, min.max(61), 3600, 86_400.min(max), 604_800.min(max)]
        .into_iter()
        .enumerate()
    {
        let name = at(&f.zone, &format!("mxg-ttl{i}"))?;
        sets.push(rrset(&name, A, ttl, &["192.0.2.61"])?);
    }
    sets.push(rrset(&f.zone, Mx, 3599, &["10 mx.backup.example.net."])?);
    converge(&f, &sets, "TTLs").await?;
    let low = crate::Ttl::new(min.max(60))?;
    let lowered: Vec<RecordSet> = sets.iter().map(|s| s.with_ttl(low)).collect();
    let changed = lowered.iter().filter(|l| !sets.contains(l)).count();
    if changed == 0 || diff(&lowered, &sets).changes.len() != changed {
        return fail("diff missed a TTL-only change");
    }
    converge(&f, &lowered, "TTL-only change").await
}

/// Re-applying the same desired state changes nothing: the diff is empty, and an empty
/// change set is accepted.
pub async fn reapply_is_an_empty_diff(peer: &dyn Peer) -> CaseResult {
    let f = peer.fresh().await.map_err(super::Failure)?;
    let host = at(&f.zone, "mxg-mail")?;
    let long_txt = format!("v=spf1 {} -all", "ip4:192.0.2.0/24 ".repeat(20));
    let desired = vec![
        rrset(
            &f.zone,
            Mx,
            300,
            &[&format!("10 {host}"), "20 mx.backup.example.net."],
        )?,
        rrset(&host, A, 300, &["192.0.2.25"])?,
        rrset(&host, Aaaa, 300, &["2001:db8::25"])?,
        rrset(
            &f.zone,
            Txt,
            300,
            &[&long_txt, r#""quoted \"text\" with spaces""#],
        )?,
    ];
    converge(&f, &desired, "first apply").await?;
    for round in 1..=2 {
        let keys: Vec<RrsetKey> = desired.iter().map(RrsetKey::of).collect();
        let actual = read(&f, &keys, "re-read").await?;
        let cs = diff(&desired, &actual);
        if !cs.is_empty() {
            return fail(format!(
                "round {round}: re-applying the same state plans {:?}",
                cs.changes
            ));
        }
        ctx(
            "applying an empty change set",
            f.provider.apply(&f.zone, &cs).await,
        )?;
    }
    Ok(())
}

/// An RRset is deleted, the one next to it stays; deleting what is gone is a no-op.
pub async fn delete_rrset(peer: &dyn Peer) -> CaseResult {
    let f = peer.fresh().await.map_err(super::Failure)?;
    let name = at(&f.zone, "mxg-del")?;
    let a = rrset(&name, A, 300, &["192.0.2.7"])?;
    let txt = rrset(&name, Txt, 300, &["keep me"])?;
    converge(&f, &[a.clone(), txt.clone()], "create").await?;
    let cs = diff(std::slice::from_ref(&txt), &[a.clone(), txt.clone()]);
    if !matches!(cs.changes.as_slice(), [Change::Delete { .. }]) {
        return fail(format!(
            "diff should plan one delete, planned {:?}",
            cs.changes
        ));
    }
    apply(&f, &cs, "delete A").await?;
    expect_absent(&f, &[RrsetKey::of(&a)], "after delete").await?;
    expect_exactly(&f, std::slice::from_ref(&txt), "the neighbour").await?;
    let again = ChangeSet {
        changes: vec![Change::Delete {
            key: RrsetKey::of(&a),
            expected: None,
        }],
    };
    apply(&f, &again, "deleting an absent RRset").await?;
    expect_absent(&f, &[RrsetKey::of(&a)], "after the second delete").await
}

/// Names written and read in mixed case are one name: reads, listings and diffs see the
/// canonical lower-case form.
pub async fn mixed_case_names(peer: &dyn Peer) -> CaseResult {
    let f = peer.fresh().await.map_err(super::Failure)?;
    let upper_zone = f.zone.as_str().to_ascii_uppercase();
    let host = crate::Fqdn::parse(&format!("MXG-Mixed.CaSe.{upper_zone}"))?;
    let lower = crate::Fqdn::parse(&format!("mxg-mixed.case.{}", f.zone))?;
    let desired = vec![
        rrset(&host, A, 300, &["192.0.2.77"])?,
        rrset(
            &f.zone,
            Mx,
            300,
            &[&format!("10 MXG-MIXED.case.{upper_zone}")],
        )?,
    ];
    converge(&f, &desired, "mixed-case write").await?;
    let got = read(&f, &[RrsetKey::new(lower.clone(), A)], "lower-case read").await?;
    if got.len() != 1 || got[0].name().as_str() != lower.as_str() {
        return fail(format!("lower-case read of {lower} gave\n{}", show(&got)));
    }
    if f.provider.capabilities().zone_listing {
        let all = ctx("list_zone", f.provider.list_zone(&f.zone).await)?;
        if !all.iter().any(|s| s.name() == &lower && s.rtype() == A) {
            return fail(format!("list_zone lacks {lower} A:\n{}", show(&all)));
        }
    }
    Ok(())
}

/// More RRsets than any provider returns in one page (150), and one RRset too large for a
/// plain UDP answer (90 addresses, ~1.5 KB), are written, read and listed completely.
/// (90, not more: BIND refuses over 100 records in one RRset by default.)
pub async fn more_than_one_page(peer: &dyn Peer) -> CaseResult {
    let f = peer.fresh().await.map_err(super::Failure)?;
    let mut sets = Vec::new();
    for i in 0..150u32 {
        let name = at(&f.zone, &format!("mxg-h{i:03}"))?;
        let ip = format!("198.51.100.{}", i + 1);
        sets.push(rrset(&name, A, 300, &[&ip])?);
    }
    let big_name = at(&f.zone, "mxg-big")?;
    let ips: Vec<String> = (1..=90).map(|i| format!("192.0.2.{i}")).collect();
    let ip_refs: Vec<&str> = ips.iter().map(String::as_str).collect();
    sets.push(rrset(&big_name, A, 300, &ip_refs)?);
    apply(&f, &diff(&sets, &[]), "write 151 RRsets").await?;
    expect_exactly(&f, &sets, "read 151 RRsets").await?;
    if f.provider.capabilities().zone_listing {
        let all = ctx("list_zone", f.provider.list_zone(&f.zone).await)?;
        let missing: Vec<&RecordSet> = sets.iter().filter(|s| !all.contains(s)).collect();
        if !missing.is_empty() {
            return fail(format!(
                "list_zone returned {} RRsets and lacks {} of ours, e.g. {}",
                all.len(),
                missing.len(),
                missing[0]
            ));
        }
    }
    Ok(())
}
