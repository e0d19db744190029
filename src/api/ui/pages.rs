//! The dashboard's pages as HTML (maud escapes every value). Parts that change while a page is
//! open carry `data-live` and an `id`: the script swaps them from a fresh copy of the page.

use chrono::{DateTime, Utc};
use maud::{html, Markup, DOCTYPE};
use serde::Serialize;

use super::chart;
use crate::actor::Status;
use crate::api::auth::Caller;
use crate::config::{DomainConfig, Scope};
use crate::incidents::Timeline;
use crate::machine::Override;
use crate::model::{Side, Ttl};
use crate::plan::Managed;
use crate::store::Event;

/// A value's serde name ("on_backup", "up"): the names the API and the timeline use.
fn name<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => "?".into(),
    }
}

fn ago(now: DateTime<Utc>, t: DateTime<Utc>) -> String {
    let s = (now - t).num_seconds().max(0) as u64;
    format!("{} ago", short(s))
}

fn short(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m {}s", secs / 60, secs % 60),
        _ => format!("{}h {}m", secs / 3600, secs % 3600 / 60),
    }
}

fn page(title: &str, who: Option<&Caller>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · mxguard" }
                link rel="stylesheet" href="/ui/assets/ui.css";
                script src="/ui/assets/ui.js" defer {}
                // Without the script the page still refreshes, as a whole.
                noscript { meta http-equiv="refresh" content="30"; }
            }
            body {
                header {
                    a.brand href="/ui" { "mxguard" }
                    @if let Some(who) = who {
                        span.who { "token " strong { (who.name) } " · " (scope(who.scope)) }
                        form.logout method="post" action="/ui/logout" { button type="submit" { "Log out" } }
                    }
                }
                main { (body) }
            }
        }
    }
}

fn scope(s: Scope) -> &'static str {
    match s {
        Scope::Read => "read",
        Scope::Operate => "operate",
        Scope::Admin => "admin",
    }
}

pub fn login(error: Option<&str>, no_tokens: bool) -> Markup {
    page(
        "Log in",
        None,
        html! {
            h1 { "Log in" }
            @if no_tokens {
                p.error { "This server has no API token configured: add a [[tokens]] section to its configuration (name, sha256 or env, scopes) and restart." }
            }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            form.login method="post" action="/ui/login" {
                label for="token" { "API token" }
                input #token type="password" name="token" autocomplete="current-password" required;
                button type="submit" { "Log in" }
            }
            p.hint { "A read token shows the domains; an operate token also shows the actions. The token is kept in a cookie for this dashboard only." }
        },
    )
}

pub fn not_found(who: &Caller, message: &str) -> Markup {
    page(
        "Not here",
        Some(who),
        html! { p.error role="alert" { (message) } p { a href="/ui" { "All domains" } } },
    )
}

fn badge(text: &str) -> Markup {
    html! { span class={ "badge " (chart_class(text)) } { (text) } }
}

fn chart_class(state: &str) -> &'static str {
    match state {
        "up" | "primary" => "ok",
        "down" | "both_down" => "down",
        "on_backup" | "failback_pending" | "backup" => "backup",
        "failing_over" | "failing_back" => "moving",
        _ => "unknown",
    }
}

/// Each vantage's vote on a side: "eu up, us down".
fn votes(s: &Status, side: Side) -> Markup {
    html! {
        @for c in s.vantages.iter().filter(|c| c.side == side) {
            @for v in &c.votes {
                span.vote title=(v.note.clone().unwrap_or_default()) {
                    (v.vantage) " " (badge(&name(&v.health)))
                    @if !v.counted { " (not counted)" }
                }
            }
        }
    }
}

/// The latest look at the domain's MTA-STS policy, in one line.
fn mta_sts_text(s: &crate::actor::Status) -> String {
    let Some(v) = &s.mta_sts else {
        return "not checked".into();
    };
    let policy = match &v.report.policy {
        Some(p) => {
            let mx: Vec<&str> = p.mx.iter().map(|x| x.as_str()).collect();
            format!(
                "mode {}, mx {}, max_age {} s",
                p.mode,
                mx.join(", "),
                p.max_age
            )
        }
        None => v.report.error.clone().unwrap_or_else(|| "no policy".into()),
    };
    match v.refused() {
        Some(why) => format!("{policy} — {why}"),
        None => policy,
    }
}

fn override_text(o: &Option<Override>) -> Option<String> {
    match o.as_ref()? {
        Override::Paused { by, reason, .. } => Some(format!("paused by {}: {reason}", name(by))),
        Override::Pinned {
            side,
            until,
            by,
            reason,
            ..
        } => Some(format!(
            "pinned to {side} until {} by {by}: {reason}",
            until.format("%Y-%m-%d %H:%M UTC")
        )),
    }
}

fn maintenance_text(m: &Option<crate::machine::Maintenance>) -> Option<String> {
    use crate::machine::MaintenanceStage;
    let m = m.as_ref()?;
    let at = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%d %H:%M UTC").to_string();
    Some(match m.stage {
        MaintenanceStage::Scheduled => format!(
            "the {} from {} to {} (by {}: {}); the TTL is lowered one TTL before",
            m.side,
            at(m.start),
            at(m.end),
            m.by,
            m.reason
        ),
        MaintenanceStage::Started => format!(
            "under way: the {} until {} (by {}: {})",
            m.side,
            at(m.end),
            m.by,
            m.reason
        ),
        MaintenanceStage::Ended => format!(
            "over at {}: waiting for the primary's records{} to be back",
            at(m.end),
            m.ttl.map(|t| format!(" at TTL {t} s")).unwrap_or_default()
        ),
    })
}

fn hold_text(s: &Status) -> Option<String> {
    let g = s.guard.as_ref()?;
    let left = g.hold_secs.saturating_sub(g.elapsed_secs);
    Some(if left > 0 {
        format!("failback in {} (hold {})", short(left), short(g.hold_secs))
    } else if g.approval_required && !g.approved {
        "hold done: waiting for an operator's approval".into()
    } else {
        "hold done".into()
    })
}

/// "primary" or "primary → backup" while a change publishes the other side.
fn records_text(s: &Status) -> String {
    let m = &s.state;
    let published = m
        .published
        .map_or("neither side".to_string(), |p| p.to_string());
    let ttl = m
        .published_ttl
        .map(|t| format!(" (TTL {t})"))
        .unwrap_or_default();
    match m.in_flight {
        Some(to) if Some(to) != m.published => format!("{published}{ttl} → {to}"),
        _ => format!("{published}{ttl}"),
    }
}

pub fn list(
    who: &Caller,
    rows: &[(&DomainConfig, std::sync::Arc<Status>)],
    now: DateTime<Utc>,
) -> Markup {
    let not_primary = rows
        .iter()
        .filter(|(_, s)| name(&s.state.phase) != "primary")
        .count();
    page(
        "Domains",
        Some(who),
        html! {
            h1 { "Domains" }
            div #summary data-live {
                p.summary {
                    (rows.len()) " domains · "
                    @if not_primary == 0 { "all on their primary" } @else { strong { (not_primary) " not on their primary" } }
                    " · " (now.format("%H:%M:%S UTC"))
                }
            }
            div #domains data-live {
                table.domains {
                    thead { tr {
                        th { "Domain" } th { "Phase" } th { "Active" } th { "Primary" } th { "Backup" }
                        th { "Published records" } th { "Failback" } th { "Override" } th { "Last round" }
                    } }
                    tbody {
                        @for (cfg, s) in rows {
                            @let d = cfg.name.without_dot();
                            tr data-domain=(d) {
                                td { a href={ "/ui/domains/" (d) } { (d) } }
                                td.phase { (badge(&name(&s.state.phase))) }
                                td.active { (s.active.map_or("none".into(), |a| a.to_string())) }
                                td.health { (badge(&name(&s.state.primary))) " " (votes(s, Side::Primary)) }
                                td.health { (badge(&name(&s.state.backup))) " " (votes(s, Side::Backup)) }
                                td.records { (records_text(s)) @if s.drift { " " span.badge.down { "drift" } } }
                                td.hold { (hold_text(s).unwrap_or_default()) }
                                td.override { (override_text(&s.state.overrides).unwrap_or_default()) }
                                td.round { (s.rounds.iter().map(|r| r.at).max().map(|t| ago(now, t)).unwrap_or_else(|| "none yet".into())) }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// What the domain page shows.
pub struct DomainPage<'a> {
    pub who: &'a Caller,
    pub cfg: &'a DomainConfig,
    pub status: &'a Status,
    pub events: &'a [Event],
    pub from: DateTime<Utc>,
    pub now: DateTime<Utc>,
    pub hours: u32,
    pub flash: Option<&'a str>,
}

fn sets(managed: &Managed, side: Side, ttl: Ttl) -> Markup {
    match managed.desired(side, ttl) {
        Ok(sets) => html! { ul.records { @for s in sets { li { code { (s.to_string()) } } } } },
        Err(e) => html! { p.error { (e.to_string()) } },
    }
}

pub fn domain(p: &DomainPage<'_>) -> Markup {
    let (s, cfg) = (p.status, p.cfg);
    let d = cfg.name.without_dot();
    let m = &s.state;
    let managed = Managed::new(cfg);
    let layout = chart::layout(p.events, p.from, p.now);
    let mut incidents = Timeline::default();
    for e in p.events {
        incidents.push(e);
    }
    let incidents = incidents.finish();
    let can_operate = p.who.scope >= Scope::Operate;
    let published_ttl = m
        .published_ttl
        .and_then(|t| Ttl::new(t).ok())
        .unwrap_or(cfg.failover_ttl);
    let desired_side = m.in_flight.or(m.published);
    page(
        d,
        Some(p.who),
        html! {
            p { a href="/ui" { "← all domains" } }
            h1 { (d) }
            @if let Some(f) = p.flash {
                @let (ok, text) = match f.split_once(' ') { Some(("ok", t)) => (true, t), Some((_, t)) => (false, t), None => (false, f) };
                p #flash class=(if ok { "flash ok" } else { "flash error" }) role="status" { (text) }
            }
            div #status data-live {
                dl.status {
                    dt { "Phase" } dd.phase { (badge(&name(&m.phase))) @if let Some(t) = m.since { " since " (t.format("%H:%M:%S UTC")) } }
                    dt { "Active side" } dd.active { (s.active.map_or("none".into(), |a| a.to_string())) }
                    dt { "Primary" } dd { (badge(&name(&m.primary))) " " (votes(s, Side::Primary)) }
                    dt { "Backup" } dd { (badge(&name(&m.backup))) " " (votes(s, Side::Backup)) }
                    dt { "Published records" } dd.records { (records_text(s)) @if s.drift { " " span.badge.down { "drift" } } }
                    dt { "Failback" } dd.hold { (hold_text(s).unwrap_or_else(|| "—".into())) }
                    dt { "Override" } dd.override { (override_text(&m.overrides).unwrap_or_else(|| "none".into())) }
                    dt { "Maintenance" } dd.maintenance { (maintenance_text(&m.maintenance).unwrap_or_else(|| "none scheduled".into())) }
                    dt { "MTA-STS" } dd.mtasts { (mta_sts_text(s)) @if m.mta_sts_refused.is_some() { " " span.badge.down { "backup refused" } } }
                    dt { "Zone · provider · mode" } dd { (cfg.zone.without_dot()) " · " (cfg.provider) " · " (cfg.targets.mode().to_string()) }
                }
                div.records2 {
                    div {
                        h3 { "Published" }
                        @match m.published {
                            Some(side) => (sets(&managed, side, published_ttl)),
                            None => p { "matching neither side, or not read yet" },
                        }
                    }
                    div {
                        h3 { "Desired" }
                        @match desired_side {
                            Some(side) => (sets(&managed, side, crate::actor::change::ttl_for(side, cfg.failover_ttl, m.ttl_before_failover, m.published_ttl))),
                            None => p { "—" },
                        }
                    }
                }
            }
            h2 { "Timeline" }
            p.window {
                "The last " (p.hours) " h: "
                @for h in [1u32, 6, 24, 168] {
                    a href={ "/ui/domains/" (d) "?hours=" (h) } class=(if h == p.hours { "on" } else { "" }) { (h) " h" } " "
                }
            }
            div #chart data-live {
                (chart::svg(&layout, p.from, p.now))
                p.legend {
                    span.key.ok {} "up / primary " span.key.down {} "down " span.key.backup {} "on backup " span.key.moving {} "moving "
                    "· ◆ change · ▲ operator · ● alert · • resolver served the change"
                }
            }
            @if can_operate {
                h2 { "Actions" }
                div.actions {
                    @for (action, label) in [("failover", "Fail over to backup"), ("failback", "Fail back to primary"), ("pause", "Pause automation"), ("resume", "Resume automation"), ("approve", "Approve failback"), ("unpin", "Unpin")] {
                        form.action method="post" action={ "/ui/domains/" (d) "/" (action) } data-action=(action) {
                            input type="text" name="reason" placeholder="reason (recorded)" required maxlength="500";
                            button type="submit" { (label) }
                        }
                    }
                    form.action method="post" action={ "/ui/domains/" (d) "/pin" } data-action="pin" {
                        select name="side" { option value="primary" { "primary" } option value="backup" { "backup" } }
                        input type="number" name="hours" value="4" min="1" max="744" title="hours";
                        input type="text" name="reason" placeholder="reason (recorded)" required maxlength="500";
                        button type="submit" { "Pin" }
                    }
                }
            } @else {
                p.hint { "This token may read only: the actions need a token with the operate scope." }
            }
            div #events data-live {
                h2 { "Incidents" }
                @if incidents.is_empty() { p { "none recorded" } } @else {
                    table.incidents {
                        thead { tr { th { "#" } th { "Status" } th { "Start" } th { "End" } th { "Cause" } } }
                        tbody {
                            @for i in incidents.iter().rev().take(10) {
                                tr {
                                    td { (i.id) }
                                    td { (name(&i.status)) }
                                    td { (i.start.format("%Y-%m-%d %H:%M:%S")) }
                                    td { (i.end.map(|t| t.format("%H:%M:%S").to_string()).unwrap_or_else(|| "open".into())) }
                                    td { (i.cause) }
                                }
                            }
                        }
                    }
                }
                h2 { "Recent events" }
                table.events {
                    thead { tr { th { "At (UTC)" } th { "Kind" } th { "By" } th { "What" } } }
                    tbody {
                        @for e in p.events.iter().rev().take(40) {
                            tr class=(if e.kind.is_alert() { "alert" } else { "" }) {
                                td { (e.at.format("%m-%d %H:%M:%S")) }
                                td { (e.kind.as_str()) }
                                td { (e.actor) @if let Some(r) = &e.reason { ": " (r) } }
                                td { (e.message) }
                            }
                        }
                    }
                }
            }
        },
    )
}
