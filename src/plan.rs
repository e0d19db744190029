//! Desired vs actual → a [`Plan`], with safety limits. Only managed RRsets are ever touched, a
//! plan never leaves a managed name without records, and a plan larger than the change budget
//! is refused. The plan is a value: logged, stored with the change intent, returned by dry runs.

use std::net::IpAddr;

use mxguard_core::{diff, ChangeSet, RData, RrsetKey};
use serde::{Deserialize, Serialize};

use crate::config::{DomainConfig, Targets};
use crate::model::{Fqdn, MxRecord, RecordSet, RecordType, Side, Ttl};

/// The RRsets one domain manages, and what each side publishes in them.
#[derive(Debug, Clone)]
pub struct Managed {
    pub domain: Fqdn,
    pub zone: Fqdn,
    targets: Targets,
    name: Fqdn,
}

/// Most RRset changes one plan may make (mx mode needs 1, a mode 2; reverts may need more).
pub const CHANGE_BUDGET: usize = 4;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
pub enum PlanError {
    #[error("refused: the plan would leave {name} without records")]
    WouldEmpty { name: String },
    #[error("refused: the plan touches {key}, which this domain does not manage")]
    Unmanaged { key: String },
    #[error("refused: the plan has {count} changes; the budget is {budget}")]
    OverBudget { count: usize, budget: usize },
    #[error("cannot build the records: {0}")]
    Model(String),
    #[error("refused: a TTL-only write, but the live records are not the {side}'s (edited since); the records are left as they are")]
    ContentWouldChange { side: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub desired: Vec<RecordSet>,
    pub actual: Vec<RecordSet>,
    pub changes: ChangeSet,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

impl Managed {
    pub fn new(cfg: &DomainConfig) -> Self {
        let name = match &cfg.targets {
            Targets::Mx { .. } => cfg.name.clone(),
            Targets::A { host, .. } => host.clone(),
        };
        Managed {
            domain: cfg.name.clone(),
            zone: cfg.zone.clone(),
            targets: cfg.targets.clone(),
            name,
        }
    }

    /// The RRsets mxguard reads and writes for this domain.
    pub fn keys(&self) -> Vec<RrsetKey> {
        match self.targets {
            Targets::Mx { .. } => vec![RrsetKey::new(self.name.clone(), RecordType::Mx)],
            Targets::A { .. } => vec![
                RrsetKey::new(self.name.clone(), RecordType::A),
                RrsetKey::new(self.name.clone(), RecordType::Aaaa),
            ],
        }
    }

    /// The MX hosts (mx mode) or the one MX host (a mode) whose health decides `side`.
    pub fn hosts(&self, side: Side) -> Vec<Fqdn> {
        match &self.targets {
            Targets::Mx { primary, backup } => {
                let list = if side == Side::Primary {
                    primary
                } else {
                    backup
                };
                list.iter().map(|m| m.exchange.clone()).collect()
            }
            Targets::A { host, .. } => vec![host.clone()],
        }
    }

    /// The addresses `side` publishes for the host (mode `a`); empty in mode `mx`, where each
    /// side is a list of names.
    pub fn addresses(&self, side: Side) -> Vec<IpAddr> {
        match &self.targets {
            Targets::Mx { .. } => Vec::new(),
            Targets::A {
                primary, backup, ..
            } => match side {
                Side::Primary => primary.clone(),
                Side::Backup => backup.clone(),
            },
        }
    }

    /// `side`'s records with `ttl`.
    pub fn desired(&self, side: Side, ttl: Ttl) -> Result<Vec<RecordSet>, PlanError> {
        let model = |e: mxguard_core::ModelError| PlanError::Model(e.to_string());
        match &self.targets {
            Targets::Mx { primary, backup } => {
                let list: &Vec<MxRecord> = if side == Side::Primary {
                    primary
                } else {
                    backup
                };
                let set = RecordSet::new(
                    self.name.clone(),
                    RecordType::Mx,
                    ttl,
                    list.iter().cloned().map(RData::Mx),
                )
                .map_err(model)?;
                Ok(vec![set])
            }
            Targets::A {
                primary, backup, ..
            } => {
                let list: &Vec<IpAddr> = if side == Side::Primary {
                    primary
                } else {
                    backup
                };
                let v4: Vec<RData> = list
                    .iter()
                    .filter_map(|ip| match ip {
                        IpAddr::V4(a) => Some(RData::A(*a)),
                        _ => None,
                    })
                    .collect();
                let v6: Vec<RData> = list
                    .iter()
                    .filter_map(|ip| match ip {
                        IpAddr::V6(a) => Some(RData::Aaaa(*a)),
                        _ => None,
                    })
                    .collect();
                let mut out = Vec::new();
                if !v4.is_empty() {
                    out.push(
                        RecordSet::new(self.name.clone(), RecordType::A, ttl, v4).map_err(model)?,
                    );
                }
                if !v6.is_empty() {
                    out.push(
                        RecordSet::new(self.name.clone(), RecordType::Aaaa, ttl, v6)
                            .map_err(model)?,
                    );
                }
                Ok(out)
            }
        }
    }

    /// Which side's records `actual` holds (records compared, TTLs ignored), if either.
    pub fn which_side(&self, actual: &[RecordSet]) -> Option<Side> {
        let ttl = Ttl::new(0).ok()?;
        let strip = |sets: &[RecordSet]| {
            let mut v: Vec<RecordSet> = sets
                .iter()
                .filter(|s| self.is_managed(s))
                .map(|s| s.with_ttl(ttl))
                .collect();
            v.sort_by_key(RrsetKey::of);
            v
        };
        let live = strip(actual);
        [Side::Primary, Side::Backup].into_iter().find(|side| {
            self.desired(*side, ttl)
                .map(|d| strip(&d) == live)
                .unwrap_or(false)
        })
    }

    /// The smallest TTL among the managed RRsets in `actual`.
    pub fn ttl_of(&self, actual: &[RecordSet]) -> Option<u32> {
        actual
            .iter()
            .filter(|s| self.is_managed(s))
            .map(|s| s.ttl().secs())
            .min()
    }

    fn is_managed(&self, set: &RecordSet) -> bool {
        self.keys().contains(&RrsetKey::of(set))
    }

    /// Plans `desired` over `actual`, refusing what the safety limits forbid.
    pub fn plan(&self, desired: Vec<RecordSet>, actual: Vec<RecordSet>) -> Result<Plan, PlanError> {
        let keys = self.keys();
        let actual: Vec<RecordSet> = actual.into_iter().filter(|s| self.is_managed(s)).collect();
        if let Some(s) = desired.iter().find(|s| !keys.contains(&RrsetKey::of(s))) {
            return Err(PlanError::Unmanaged {
                key: format!("{} {}", s.name(), s.rtype()),
            });
        }
        // mx mode: the MX set must stay; a mode: the host keeps at least one address.
        if desired.is_empty() {
            return Err(PlanError::WouldEmpty {
                name: self.name.to_string(),
            });
        }
        let changes = diff(&desired, &actual);
        if changes.changes.len() > CHANGE_BUDGET {
            return Err(PlanError::OverBudget {
                count: changes.changes.len(),
                budget: CHANGE_BUDGET,
            });
        }
        Ok(Plan {
            desired,
            actual,
            changes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use mxguard_core::Change;

    const CFG: &str = r#"
[providers.ns1]
kind = "rfc2136"
server = "127.0.0.1:5353"
tsig_name = "k"
tsig_secret_env = "X"
[[domains]]
name = "example.test"
provider = "ns1"
primary = ["10 mx1.example.test.", "20 mx2.example.test."]
backup = ["10 backup.example.net."]
[[domains]]
name = "example.org"
provider = "ns1"
mode = "a"
host = "mx.example.org"
primary = ["192.0.2.10"]
backup = ["198.51.100.10", "2001:db8::10"]
"#;

    fn managed(i: usize) -> Managed {
        let cfg = Config::parse("t.toml", CFG).expect("config");
        Managed::new(&cfg.domains[i])
    }

    fn ttl(s: u32) -> Ttl {
        Ttl::new(s).unwrap()
    }

    #[test]
    fn mx_mode_moves_the_apex_mx_set() {
        let m = managed(0);
        let live = m.desired(Side::Primary, ttl(3600)).unwrap();
        assert_eq!(m.which_side(&live), Some(Side::Primary));
        let plan = m
            .plan(m.desired(Side::Backup, ttl(60)).unwrap(), live.clone())
            .unwrap();
        assert_eq!(plan.changes.changes.len(), 1);
        match &plan.changes.changes[0] {
            Change::Upsert { set, expected } => {
                assert_eq!(
                    set.to_string(),
                    "example.test. 60 IN MX 10 backup.example.net."
                );
                assert_eq!(
                    expected.as_ref(),
                    live.first(),
                    "the change carries what it replaces"
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        // converged: a second plan is empty
        let after = m.desired(Side::Backup, ttl(60)).unwrap();
        assert!(m.plan(after.clone(), after.clone()).unwrap().is_empty());
        assert_eq!(m.which_side(&after), Some(Side::Backup));
        assert_eq!(m.ttl_of(&live), Some(3600));
    }

    #[test]
    fn a_mode_moves_addresses_and_drops_the_family_the_side_lacks() {
        let m = managed(1);
        let backup = m.desired(Side::Backup, ttl(60)).unwrap();
        let plan = m
            .plan(m.desired(Side::Primary, ttl(300)).unwrap(), backup.clone())
            .unwrap();
        let ops: Vec<String> = plan
            .changes
            .changes
            .iter()
            .map(|c| match c {
                Change::Upsert { set, .. } => format!("upsert {} {}", set.name(), set.rtype()),
                Change::Delete { key, .. } => format!("delete {} {}", key.name, key.rtype),
            })
            .collect();
        assert_eq!(
            ops,
            vec!["upsert mx.example.org. A", "delete mx.example.org. AAAA"]
        );
        assert_eq!(m.which_side(&backup), Some(Side::Backup));
    }

    #[test]
    fn unmanaged_records_are_never_touched() {
        let m = managed(0);
        let other = RecordSet::parse(
            Fqdn::parse("www.example.test").unwrap(),
            RecordType::A,
            ttl(60),
            &["192.0.2.1"],
        )
        .unwrap();
        let mut live = m.desired(Side::Primary, ttl(300)).unwrap();
        live.push(other.clone());
        let plan = m
            .plan(m.desired(Side::Backup, ttl(60)).unwrap(), live)
            .unwrap();
        assert!(
            plan.changes
                .changes
                .iter()
                .all(|c| c.key() != RrsetKey::of(&other)),
            "www is not ours"
        );
        assert!(matches!(
            m.plan(vec![other], vec![]),
            Err(PlanError::Unmanaged { .. })
        ));
        assert!(matches!(
            m.plan(vec![], vec![]),
            Err(PlanError::WouldEmpty { .. })
        ));
    }

    #[test]
    fn drift_matches_neither_side() {
        let m = managed(0);
        let hand_edited = RecordSet::parse(
            m.name.clone(),
            RecordType::Mx,
            ttl(60),
            &["10 emergency.example.net."],
        )
        .unwrap();
        assert_eq!(m.which_side(&[hand_edited]), None);
        assert_eq!(m.which_side(&[]), None);
    }
}
