//! The batch endpoint: deletes → patches → puts → posts applied to a copy of the zone, all or
//! nothing (reference §7).

use serde_json::{json, Value};

use super::records::{ApiError, BatchIn};
use super::rules::{self, Rules};
use super::State;

/// deletes → patches → puts → posts on a copy; the first error is the answer and nothing is
/// applied. Over the plan's limit is refused before anything is looked at.
pub fn apply(
    s: &mut State,
    zone_id: &str,
    batch: BatchIn,
    fail_batch: Option<ApiError>,
) -> Result<(Value, Option<Value>), ApiError> {
    if batch.len() > s.batch_limit {
        return Err(ApiError::validation(
            9108,
            format!(
                "A batch holds at most {} record operations; this one holds {}.",
                s.batch_limit,
                batch.len()
            ),
        ));
    }
    let min_ttl = s.min_ttl;
    let mut ids: Vec<String> = (0..batch.posts.len()).map(|_| s.new_id()).collect();
    let zone = s.zone_mut(zone_id)?;
    let rules = Rules {
        zone: &zone.name,
        min_ttl,
    };
    let mut copy = zone.records.clone();
    let mut out = json!({"deletes": [], "patches": [], "puts": [], "posts": []});
    let mut push = |list: &str, v: Value| {
        if let Some(a) = out[list].as_array_mut() {
            a.push(v);
        }
    };
    for d in batch.deletes {
        let i = rules::find(&copy, &d.id)?;
        push("deletes", copy.remove(i).to_json());
    }
    for p in batch.patches {
        let (id, patch) = p.split();
        let i = rules::find(&copy, &id)?;
        let new = rules::patched(&rules, &copy[i], patch)?;
        rules::refuse_identical(&copy, &new)?;
        copy[i] = new.clone();
        push("patches", new.to_json());
    }
    for p in batch.puts {
        let i = rules::find(&copy, &p.id)?;
        let new = rules.record(p.id.clone(), p.fields())?;
        rules::refuse_identical(&copy, &new)?;
        copy[i] = new.clone();
        push("puts", new.to_json());
    }
    for p in batch.posts {
        let id = ids.pop().unwrap_or_default();
        let new = rules.record(id, p.fields())?;
        rules::refuse_identical(&copy, &new)?;
        copy.push(new.clone());
        push("posts", new.to_json());
    }
    if let Some(e) = fail_batch {
        return Err(e);
    }
    zone.records = copy;
    Ok((out, None))
}
