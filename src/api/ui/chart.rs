//! A domain's timeline drawn as an SVG chart, from its events alone (pure: the same events and
//! window draw the same chart).
//!
//! Rows, top to bottom: each side's combined health, then each vantage's vote on it (from the
//! `health` events' evidence); the machine's phase (from `transition` events); one row per
//! resolver with the moment it served a published change (a `propagation` event's `after_ms`,
//! counted from the `change` event it follows); and a row of markers: changes, operator actions
//! (pins, pauses, approvals, reverts, commanded moves) and alerts. Every mark has a `<title>`,
//! so hovering says what it is; the rows' names are text, so the chart reads without colour.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use maud::{html, Markup, PreEscaped};
use serde_json::Value;

use crate::events::EventKind;
use crate::store::Event;

const WIDTH: f64 = 960.0;
const LABEL: f64 = 170.0;
const ROW: f64 = 20.0;
const AXIS: f64 = 22.0;

/// A stretch of one row with one state.
#[derive(Debug, Clone, PartialEq)]
pub struct Band {
    pub row: String,
    pub state: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

/// A moment on a row.
#[derive(Debug, Clone, PartialEq)]
pub struct Mark {
    pub row: String,
    pub kind: &'static str,
    pub at: DateTime<Utc>,
    pub title: String,
}

/// What the chart draws: bands and marks in `[from, to]`, rows in drawing order.
#[derive(Debug, Default, PartialEq)]
pub struct Layout {
    pub rows: Vec<String>,
    pub bands: Vec<Band>,
    pub marks: Vec<Mark>,
}

/// Open bands by row: state and start.
type Open = BTreeMap<String, (String, DateTime<Utc>)>;

fn switch(open: &mut Open, bands: &mut Vec<Band>, row: &str, state: &str, at: DateTime<Utc>) {
    if let Some((was, since)) = open.get(row) {
        if was == state {
            return;
        }
        bands.push(Band {
            row: row.to_string(),
            state: was.clone(),
            from: *since,
            to: at,
        });
    }
    open.insert(row.to_string(), (state.to_string(), at));
}

fn text(v: &Value) -> Option<String> {
    v.as_str().map(str::to_string)
}

fn operator_action(e: &Event) -> bool {
    matches!(
        e.kind,
        EventKind::Override | EventKind::Operator | EventKind::Revert
    ) || (e.kind == EventKind::Transition && e.actor != "automation")
}

/// Lays out `events` (oldest first; earlier ones set the state the window opens with) over
/// `[from, to]`.
pub fn layout(events: &[Event], from: DateTime<Utc>, to: DateTime<Utc>) -> Layout {
    let mut open = Open::new();
    let mut bands = Vec::new();
    let mut marks = Vec::new();
    let mut vantages: BTreeMap<String, ()> = BTreeMap::new();
    let mut resolvers: BTreeMap<String, ()> = BTreeMap::new();
    let mut last_change: Option<DateTime<Utc>> = None;
    for e in events.iter().filter(|e| e.at <= to) {
        match e.kind {
            EventKind::Health => {
                let side = text(&e.evidence["side"]).unwrap_or_default();
                let combined = &e.evidence["combined"];
                if let Some(h) = text(&combined["health"]) {
                    switch(&mut open, &mut bands, &side, &h, e.at);
                }
                for vote in combined["votes"].as_array().into_iter().flatten() {
                    let (Some(v), Some(h)) = (text(&vote["vantage"]), text(&vote["health"])) else {
                        continue;
                    };
                    vantages.insert(v.clone(), ());
                    switch(&mut open, &mut bands, &format!("{side} · {v}"), &h, e.at);
                }
            }
            EventKind::Transition => {
                if let Some(to_phase) = text(&e.evidence["to"]) {
                    switch(&mut open, &mut bands, "phase", &to_phase, e.at);
                }
            }
            EventKind::Change => last_change = Some(e.at),
            EventKind::Propagation => {
                let base = last_change.unwrap_or(e.at);
                for r in e.evidence["resolvers"].as_array().into_iter().flatten() {
                    let (Some(server), Some(ms)) = (text(&r["server"]), r["after_ms"].as_i64())
                    else {
                        continue;
                    };
                    resolvers.insert(server.clone(), ());
                    marks.push(Mark {
                        row: format!("resolver {server}"),
                        kind: "seen",
                        at: base + Duration::milliseconds(ms),
                        title: format!(
                            "{server} served the change after {:.1} s",
                            ms as f64 / 1000.0
                        ),
                    });
                }
            }
            _ => {}
        }
        let kind = if e.kind == EventKind::Change {
            Some("change")
        } else if operator_action(e) {
            Some("operator")
        } else if e.kind.is_alert() {
            Some("alert")
        } else {
            None
        };
        if let Some(kind) = kind {
            let who = if e.actor == "automation" {
                String::new()
            } else {
                format!(
                    " (by {}{})",
                    e.actor,
                    e.reason
                        .as_ref()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default()
                )
            };
            marks.push(Mark {
                row: "actions".into(),
                kind,
                at: e.at,
                title: format!("{} {}{who}", e.at.format("%H:%M:%S"), e.message),
            });
        }
    }
    for (row, (state, since)) in open {
        bands.push(Band {
            row,
            state,
            from: since,
            to,
        });
    }
    // Only what shows in the window, clipped to it.
    let bands = bands
        .into_iter()
        .filter(|b| b.to > from && b.from < to)
        .map(|b| Band {
            from: b.from.max(from),
            to: b.to.min(to),
            ..b
        })
        .collect();
    let marks = marks
        .into_iter()
        .filter(|m| m.at >= from && m.at <= to)
        .collect();
    let mut rows = Vec::new();
    for side in ["primary", "backup"] {
        rows.push(side.to_string());
        rows.extend(vantages.keys().map(|v| format!("{side} · {v}")));
    }
    rows.push("phase".into());
    rows.extend(resolvers.keys().map(|r| format!("resolver {r}")));
    rows.push("actions".into());
    Layout { rows, bands, marks }
}

/// The CSS class of a band's state (health and phase names share one palette).
fn class(state: &str) -> &'static str {
    match state {
        "up" | "primary" => "ok",
        "down" | "both_down" => "down",
        "on_backup" | "failback_pending" => "backup",
        "failing_over" | "failing_back" => "moving",
        _ => "unknown",
    }
}

/// The chart as inline SVG.
pub fn svg(l: &Layout, from: DateTime<Utc>, to: DateTime<Utc>) -> Markup {
    let span = (to - from).num_milliseconds().max(1) as f64;
    let x =
        |t: DateTime<Utc>| LABEL + (t - from).num_milliseconds() as f64 / span * (WIDTH - LABEL);
    let y = |row: &str| AXIS + l.rows.iter().position(|r| r == row).unwrap_or(0) as f64 * ROW;
    let height = AXIS + l.rows.len() as f64 * ROW + 4.0;
    let ticks = 6;
    let tick_format = if span < 30.0 * 60_000.0 {
        "%H:%M:%S"
    } else {
        "%H:%M"
    };
    html! {
        svg class="timeline" role="img" viewBox={ "0 0 " (WIDTH) " " (height) } width="100%"
            aria-label={ "Timeline from " (from.format("%Y-%m-%d %H:%M")) " to " (to.format("%H:%M")) " UTC" } {
            @for i in 0..=ticks {
                @let t = from + Duration::milliseconds((span * f64::from(i) / f64::from(ticks)) as i64);
                line class="grid" x1=(x(t)) x2=(x(t)) y1=(AXIS - 4.0) y2=(height) {}
                text class="tick" x=(x(t)) y="12" text-anchor="middle" { (t.format(tick_format)) }
            }
            @for row in &l.rows {
                text class="row" x="4" y=(y(row) + 14.0) { (row) }
            }
            @for b in &l.bands {
                rect class={ "band " (class(&b.state)) } x=(x(b.from)) y=(y(&b.row) + 3.0)
                    width=((x(b.to) - x(b.from)).max(1.0)) height=(ROW - 6.0)
                    data-row=(b.row) data-state=(b.state) {
                    title { (b.row) ": " (b.state) " from " (b.from.format("%H:%M:%S")) " to " (b.to.format("%H:%M:%S")) }
                }
            }
            @for m in &l.marks {
                @let (cx, cy) = (x(m.at), y(&m.row) + ROW / 2.0);
                @match m.kind {
                    "change" => {
                        path class="mark change" data-kind="change" d=(PreEscaped(format!("M{cx:.1} {:.1} l6 6 l-6 6 l-6 -6 z", cy - 6.0))) {
                            title { (m.title) }
                        }
                    }
                    "operator" => {
                        path class="mark operator" data-kind="operator" d=(PreEscaped(format!("M{cx:.1} {:.1} l6 11 l-12 0 z", cy - 6.0))) {
                            title { (m.title) }
                        }
                    }
                    "alert" => {
                        circle class="mark alert" data-kind="alert" cx=(cx) cy=(cy) r="5" {
                            title { (m.title) }
                        }
                    }
                    _ => {
                        circle class="mark seen" data-kind="seen" cx=(cx) cy=(cy) r="3.5" {
                            title { (m.title) }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Fqdn;
    use serde_json::json;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).expect("time")
    }

    fn ev(id: i64, s: i64, kind: EventKind, actor: &str, evidence: Value) -> Event {
        Event {
            id,
            domain: Fqdn::parse("example.org").expect("name"),
            at: at(s),
            kind,
            actor: actor.into(),
            reason: (actor != "automation").then(|| "maintenance".into()),
            message: format!("{kind:?}"),
            evidence,
        }
    }

    fn health(id: i64, s: i64, side: &str, h: &str, votes: &[(&str, &str)]) -> Event {
        let votes: Vec<Value> = votes
            .iter()
            .map(|(v, h)| json!({"vantage": v, "health": h}))
            .collect();
        ev(
            id,
            s,
            EventKind::Health,
            "automation",
            json!({"side": side, "combined": {"health": h, "votes": votes}}),
        )
    }

    #[test]
    fn an_outage_draws_bands_per_side_and_vantage_and_marks_the_change_and_resolvers() {
        let events = vec![
            health(1, 0, "primary", "up", &[("eu", "up"), ("us", "up")]),
            health(2, 0, "backup", "up", &[("eu", "up"), ("us", "up")]),
            ev(
                3,
                0,
                EventKind::Transition,
                "automation",
                json!({"from": "unknown", "to": "primary"}),
            ),
            health(4, 100, "primary", "down", &[("eu", "down"), ("us", "down")]),
            ev(
                5,
                100,
                EventKind::Transition,
                "automation",
                json!({"from": "primary", "to": "failing_over"}),
            ),
            ev(6, 103, EventKind::Change, "automation", json!({})),
            ev(
                7,
                103,
                EventKind::Transition,
                "automation",
                json!({"from": "failing_over", "to": "on_backup"}),
            ),
            ev(
                8,
                140,
                EventKind::Propagation,
                "automation",
                json!({"resolvers": [{"server": "127.0.0.1:53", "after_ms": 30_000}]}),
            ),
            ev(9, 150, EventKind::Override, "alice", json!({})),
        ];
        let l = layout(&events, at(50), at(200));
        assert_eq!(
            l.rows,
            [
                "primary",
                "primary · eu",
                "primary · us",
                "backup",
                "backup · eu",
                "backup · us",
                "phase",
                "resolver 127.0.0.1:53",
                "actions"
            ]
        );
        let primary: Vec<(&str, i64, i64)> = l
            .bands
            .iter()
            .filter(|b| b.row == "primary · eu")
            .map(|b| {
                (
                    b.state.as_str(),
                    b.from.timestamp() - at(0).timestamp(),
                    b.to.timestamp() - at(0).timestamp(),
                )
            })
            .collect();
        assert_eq!(
            primary,
            [("up", 50, 100), ("down", 100, 200)],
            "clipped to the window"
        );
        let phases: Vec<&str> = l
            .bands
            .iter()
            .filter(|b| b.row == "phase")
            .map(|b| b.state.as_str())
            .collect();
        assert_eq!(phases, ["primary", "failing_over", "on_backup"]);
        let seen = l
            .marks
            .iter()
            .find(|m| m.kind == "seen")
            .expect("a resolver mark");
        assert_eq!(
            seen.at,
            at(133),
            "30 s after the change, not after the propagation event"
        );
        let kinds: Vec<&str> = l
            .marks
            .iter()
            .filter(|m| m.row == "actions")
            .map(|m| m.kind)
            .collect();
        assert_eq!(kinds, ["change", "operator"]);
        let svg = svg(&l, at(50), at(200)).into_string();
        assert!(svg.contains("data-state=\"down\""));
        assert!(svg.contains("by alice: maintenance"), "{svg}");
    }

    #[test]
    fn events_after_the_window_and_marks_before_it_are_left_out() {
        let events = vec![
            ev(1, 10, EventKind::Change, "automation", json!({})),
            health(2, 20, "primary", "up", &[]),
            health(3, 500, "primary", "down", &[]),
        ];
        let l = layout(&events, at(100), at(200));
        assert!(l.marks.is_empty());
        assert_eq!(l.bands.len(), 1);
        assert_eq!(l.bands[0].state, "up");
        assert_eq!((l.bands[0].from, l.bands[0].to), (at(100), at(200)));
    }
}
