//! A chaos run as a section of a page: the verdict, the configuration, the run on a timeline
//! with every kill and recovery marked, and the per-cycle table.

use super::Page;
use super::charts::{self, Axes, Band, Mark, Series};
use super::reports::{RenderError, command_of, machine_rows, seconds};
use crate::chaos::{ChaosReport, KillKind};

// Palette indices (see `charts::colour`): series and events stay apart.
const ACKED: usize = 0;
const DELIVERED: usize = 2;
const FAILED: usize = 6;
const RELAY_KILL: usize = 1;
const PRIMARY_KILL: usize = 3;
const PROMOTED: usize = 4;
const BACK: usize = 5;
const FIRST_ACK: usize = 7;

/// Renders `c` (named `name`) onto `page`.
pub(super) fn section(page: &mut Page, name: &str, c: &ChaosReport) -> Result<(), RenderError> {
    page.heading(&format!("Chaos: {name}"));
    if c.passed() {
        page.paragraph(&format!(
            "PASS: {} kill cycles, {} envelopes acknowledged, none lost, corrupted or stored twice.",
            c.cycles, c.acked
        ));
    } else {
        page.paragraph(&format!("FAIL: {}", c.failures.join("; ")));
    }
    command_of(page, c.command.as_deref());
    let kinds: Vec<&str> = c.kinds.iter().map(|k| k.plural()).collect();
    let mut rows: Vec<(&str, String)> = vec![
        ("store", c.store.clone()),
        (
            "relays",
            format!(
                "{}{}",
                c.relays,
                if c.cross_relay {
                    ", deposits and subscriptions on different relays"
                } else {
                    ""
                }
            ),
        ),
        ("killed", kinds.join(", ")),
        (
            "kill cycles",
            format!(
                "{} run of {} planned per kind (relay {}, primary {})",
                c.cycles, c.planned_per_kind, c.relay_kills, c.primary_kills
            ),
        ),
        ("mailboxes", c.mailboxes.to_string()),
        ("body size", format!("{} B", c.size)),
        ("duration", format!("{:.1} s", c.duration_s)),
    ];
    if !c.cluster_nodes.is_empty() {
        rows.push(("Valkey nodes", c.cluster_nodes.join(" ")));
    }
    rows.extend(machine_rows(&c.machine));
    page.pairs(&rows);
    if c.timeline.is_empty() {
        page.paragraph("(no timeline: the file was written before chaos recorded one)");
    } else {
        page.chart(
            &timeline_chart(c)?,
            "Deposit answers and first deliveries in each second, with each cycle's kill (numbered, solid), the replica's promotion, the killed part back, and the first acknowledgement of a deposit sent after the kill (dashed); the failover window, from the kill until the part is back, is shaded.",
        );
    }
    page.table(
        &[
            "cycle",
            "kind",
            "target",
            "kill s",
            "acked at kill",
            "promoted",
            "back",
            "first ack",
            "acked at back",
            "ok/dup/unavail/other/no answer in window",
            "lost",
            "error",
        ],
        &cycle_rows(c),
    );
    let a = &c.attempts;
    let d = &c.ack_to_delivery_ms;
    page.pairs(&[
        ("deposited", c.deposited.to_string()),
        ("acknowledged", c.acked.to_string()),
        ("delivered", c.delivered.to_string()),
        (
            "acknowledged and lost / stalled / corrupted / stored twice",
            format!(
                "{} / {} / {} / {}",
                c.acked_lost,
                c.found_by_new_subscription,
                c.corrupted,
                c.duplicated_after_seq_dedupe
            ),
        ),
        (
            "attempts: ok/dup/unavail/other/no answer",
            format!(
                "{}/{}/{}/{}/{}",
                a.ok, a.duplicate, a.unavailable, a.rejected, a.unanswered
            ),
        ),
        (
            "retried: ok/dup/unanswered",
            format!(
                "{} ({}/{}/{})",
                c.retried, c.retried_ok, c.retried_duplicate, c.retried_unanswered
            ),
        ),
        (
            "acknowledgement to delivery, ms: p50/p99/p99.9/max",
            format!("{:.1}/{:.1}/{:.1}/{:.1}", d.p50, d.p99, d.p999, d.max),
        ),
        ("resubscribed", c.resubscribed.to_string()),
    ]);
    Ok(())
}

/// The per-cycle table: times after the kill, as the text summary prints them.
fn cycle_rows(c: &ChaosReport) -> Vec<Vec<String>> {
    let after = |t: Option<f64>, kill: f64| {
        t.map_or_else(|| "-".to_owned(), |t| format!("+{:.2}s", t - kill))
    };
    c.per_cycle
        .iter()
        .map(|r| {
            let w = &r.window;
            vec![
                r.cycle.to_string(),
                r.kind.singular().to_owned(),
                r.target.clone(),
                format!("{:.2}", r.kill_s),
                r.acked_at_kill.to_string(),
                after(r.promoted_s, r.kill_s),
                after(r.restarted_s, r.kill_s),
                after(r.first_ack_after_kill_s, r.kill_s),
                r.acked_at_restart.to_string(),
                format!(
                    "{}/{}/{}/{}/{}",
                    w.ok, w.duplicate, w.unavailable, w.rejected, w.unanswered
                ),
                r.window_acked_lost.to_string(),
                r.error.clone().unwrap_or_default(),
            ]
        })
        .collect()
}

/// The events of the cycles as marks on the timeline, and their failover windows as bands.
fn marks(c: &ChaosReport) -> (Vec<Mark>, Vec<Band>) {
    let mut marks = Vec::new();
    let mut bands = Vec::new();
    for r in &c.per_cycle {
        let kill = match r.kind {
            KillKind::Relay => RELAY_KILL,
            KillKind::Primary => PRIMARY_KILL,
        };
        marks.push(Mark {
            x: r.kill_s,
            kind: format!("{} killed", r.kind.singular()),
            colour: kill,
            dashed: false,
            label: Some(r.cycle.to_string()),
        });
        let after = [
            (r.promoted_s, "replica promoted", PROMOTED),
            (r.restarted_s, "back (restarted / rejoined)", BACK),
            (
                r.first_ack_after_kill_s,
                "first ack after the kill",
                FIRST_ACK,
            ),
        ];
        for (t, kind, colour) in after {
            if let Some(x) = t {
                marks.push(Mark {
                    x,
                    kind: kind.to_owned(),
                    colour,
                    dashed: true,
                    label: None,
                });
            }
        }
        let end = r.restarted_s.unwrap_or(c.duration_s);
        bands.push(Band {
            from: r.kill_s,
            to: end.max(r.kill_s),
            colour: kill,
        });
    }
    (marks, bands)
}

fn timeline_chart(c: &ChaosReport) -> Result<String, RenderError> {
    // Each count covers one second: drawn at the middle of it.
    let per_second = |f: fn(&crate::chaos::ChaosSecond) -> u64| {
        c.timeline
            .iter()
            .map(|s| (s.t_s as f64 + 0.5, f(s) as f64))
            .collect::<Vec<_>>()
    };
    let series = [
        ("acknowledged", per_second(|s| s.acked), ACKED),
        ("delivered", per_second(|s| s.delivered), DELIVERED),
        ("unavailable / no answer", per_second(|s| s.failed), FAILED),
    ]
    .into_iter()
    .map(|(name, points, colour)| Series {
        name: name.to_owned(),
        points,
        colour: Some(colour),
        dashed: false,
    })
    .collect::<Vec<_>>();
    let (marks, bands) = marks(c);
    let end = c
        .duration_s
        .max(c.timeline.last().map_or(0.0, |s| s.t_s as f64 + 1.0));
    Ok(charts::timeline(
        &Axes {
            title: "Chaos cycles on a timeline",
            x: "seconds since the load started",
            y: "per second",
            x_label: &seconds,
            x_range: Some(0.0..end.max(1.0)),
            markers: false,
        },
        &series,
        &marks,
        &bands,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::{ChaosSecond, CycleRecord};

    /// A run of two cycles, a relay kill and a primary kill, with a timeline.
    fn sample() -> ChaosReport {
        let cycle = |n: usize, kind: KillKind, kill_s: f64| CycleRecord {
            cycle: n,
            kind,
            target: format!("target-{n}"),
            kill_s,
            acked_at_kill: 100 * n as u64,
            promoted_s: (kind == KillKind::Primary).then_some(kill_s + 2.5),
            promoted: (kind == KillKind::Primary).then(|| "127.0.0.1:7001".to_owned()),
            restarted_s: Some(kill_s + 4.0),
            first_ack_after_kill_s: Some(kill_s + 0.5),
            acked_at_restart: 100 * n as u64 + 50,
            window: Default::default(),
            window_acked_lost: 0,
            error: None,
        };
        let mut r = ChaosReport {
            store: "cluster".into(),
            relays: 2,
            kinds: vec![KillKind::Relay, KillKind::Primary],
            planned_per_kind: 1,
            per_cycle: vec![
                cycle(1, KillKind::Relay, 2.0),
                cycle(2, KillKind::Primary, 8.0),
            ],
            cycles: 2,
            relay_kills: 1,
            primary_kills: 1,
            acked: 900,
            delivered: 900,
            duration_s: 14.0,
            command: Some("sealpost-loadtest chaos --store cluster --cycles 1".into()),
            timeline: (0..14)
                .map(|t| ChaosSecond {
                    t_s: t,
                    acked: 60 + t,
                    failed: t % 3,
                    delivered: 58 + t,
                })
                .collect(),
            ..ChaosReport::default()
        };
        r.judge();
        r
    }

    #[test]
    fn kills_and_recoveries_are_marked_on_the_timeline() {
        let r = sample();
        assert!(r.passed(), "{:?}", r.failures);
        let (marks, bands) = marks(&r);
        // Relay cycle: kill, back, first ack; primary cycle: kill, promoted, back, first ack.
        assert_eq!(marks.len(), 7);
        assert_eq!(bands.len(), 2);
        assert_eq!((bands[1].from, bands[1].to), (8.0, 12.0));
        let svg = timeline_chart(&r).expect("draws");
        for text in [
            "Chaos cycles on a timeline",
            "relay killed",
            "primary killed",
            "replica promoted",
            "first ack after the kill",
            "acknowledged",
        ] {
            assert!(svg.contains(text), "{text} missing");
        }
        // Three series, seven marks: a line each (plotters writes a polyline per line).
        assert!(svg.matches("<polyline").count() >= 3 + 7, "{svg}");
    }
}
