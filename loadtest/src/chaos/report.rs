//! What a chaos run found: the totals, one record per kill cycle (enough to draw the run on a
//! timeline: when each kill landed, when the killed part was back, how the deposits sent
//! meanwhile were answered), the verdict, and how they are printed.

use super::ledger::{ChaosSecond, OutcomeCounts};
use crate::report::Machine;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// What is killed in a cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KillKind {
    /// A relay process: SIGKILL, then started again on the same address (and data directory).
    Relay,
    /// A Valkey primary: SIGKILL, its replica takes over, then the node is started again and
    /// rejoins as a replica.
    Primary,
}

impl KillKind {
    /// As written on the command line (`--kill relays,primaries`).
    pub fn plural(self) -> &'static str {
        match self {
            Self::Relay => "relays",
            Self::Primary => "primaries",
        }
    }

    /// One of them.
    pub fn singular(self) -> &'static str {
        match self {
            Self::Relay => "relay",
            Self::Primary => "primary",
        }
    }
}

impl std::str::FromStr for KillKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "relay" | "relays" => Ok(Self::Relay),
            "primary" | "primaries" => Ok(Self::Primary),
            other => Err(format!(
                "unknown kind {other:?} to kill: expected relays or primaries"
            )),
        }
    }
}

/// One kill cycle. Times are seconds since the load started.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CycleRecord {
    /// 1-based.
    pub cycle: usize,
    /// What was killed.
    pub kind: KillKind,
    /// Which one: `#N HOST:PORT` (relay N, its address) or the Valkey node's `HOST:PORT`.
    pub target: String,
    /// When the SIGKILL was sent.
    pub kill_s: f64,
    /// Envelopes acknowledged before the kill.
    pub acked_at_kill: u64,
    /// A primary's replica answering as primary (failover done).
    pub promoted_s: Option<f64>,
    /// The promoted replica.
    pub promoted: Option<String>,
    /// The killed part back: the relay accepting connections again, or the Valkey node
    /// restarted, rejoined as a replica, every node at `cluster_state:ok` and in sync. The end
    /// of this cycle's failover window.
    pub restarted_s: Option<f64>,
    /// The first OK or DUPLICATE to a deposit sent after the kill (service through the
    /// surviving parts or the restarted one): the system recovered. The next cycle's kill
    /// waits for it.
    pub first_ack_after_kill_s: Option<f64>,
    /// Envelopes acknowledged when the killed part was back.
    pub acked_at_restart: u64,
    /// Deposit attempts sent in the window (from the kill until the part is back), by answer.
    pub window: OutcomeCounts,
    /// Of the envelopes acknowledged in the window, how many were never delivered (a false
    /// OK): must be 0.
    pub window_acked_lost: u64,
    /// What went wrong when the killed part did not come back (the run stops there).
    pub error: Option<String>,
}

/// What a chaos run found. Fields missing from a saved file (one written before they were
/// added) read as their defaults.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ChaosReport {
    /// The command line, as typed (set by the command-line tool).
    pub command: Option<String>,
    /// The machine the run was on.
    pub machine: Machine,
    /// `disk` or `cluster`.
    pub store: String,
    /// Relay processes.
    pub relays: usize,
    /// Whether deposits went to another relay than the subscriptions at the start.
    pub cross_relay: bool,
    /// The Valkey nodes (cluster store).
    pub cluster_nodes: Vec<String>,
    /// Mailboxes under load.
    pub mailboxes: usize,
    /// Body size.
    pub size: u32,
    /// What was to be killed.
    pub kinds: Vec<KillKind>,
    /// Kill cycles planned per kind.
    pub planned_per_kind: usize,
    /// Kill cycles run (every kind).
    pub cycles: usize,
    /// Relay kill cycles run.
    pub relay_kills: usize,
    /// Primary kill cycles run.
    pub primary_kills: usize,
    /// Seconds from the start of the load to the end of the check.
    pub duration_s: f64,
    /// Distinct envelopes sent.
    pub deposited: u64,
    /// Distinct envelopes the relays answered OK or DUPLICATE.
    pub acked: u64,
    /// Distinct envelopes delivered and verified.
    pub delivered: u64,
    /// Acknowledged, never delivered, not even to a new subscription at the end: must be 0.
    pub acked_lost: u64,
    /// Acknowledged, not delivered by the live subscriptions (which had every chance: they
    /// were given time after the load stopped), but delivered to a new subscription at the
    /// end: stored, yet the subscriber was never woken for them. Must be 0.
    pub found_by_new_subscription: u64,
    /// Deliveries that failed to open or check: must be 0.
    pub corrupted: u64,
    /// An envelope delivered under a second sequence number (stored twice): must be 0.
    pub duplicated_after_seq_dedupe: u64,
    /// Deliveries repeated under the same sequence number (allowed: at-least-once).
    pub redelivered_same_seq: u64,
    /// Envelopes sent again after no answer or UNAVAILABLE.
    pub retried: u64,
    /// How the resent envelopes ended: OK.
    pub retried_ok: u64,
    /// How they ended: DUPLICATE (an earlier attempt had been stored).
    pub retried_duplicate: u64,
    /// Resent and still without OK or DUPLICATE at the end: must be 0.
    pub retried_unanswered: u64,
    /// Sent and still without OK or DUPLICATE at the end (resent or not): must be 0.
    pub unsettled: u64,
    /// Envelopes refused for good (a status other than OK, DUPLICATE, UNAVAILABLE): must be 0.
    pub rejected: u64,
    /// Every deposit attempt, by answer.
    pub attempts: OutcomeCounts,
    /// The attempts sent in the failover windows of all cycles, by answer.
    pub in_windows: OutcomeCounts,
    /// Subscriptions started again after the client library gave one up.
    pub resubscribed: u64,
    /// From acknowledgement to delivery, over every delivered envelope, in milliseconds
    /// (0 when the delivery came before the answer). Includes queueing when the depositors
    /// outpace the recipients, and the time a subscription takes to move after its relay is
    /// killed; a subscription that stalls and recovers later shows in the maximum.
    pub ack_to_delivery_ms: DelayMs,
    /// One record per cycle, in order.
    pub per_cycle: Vec<CycleRecord>,
    /// Each second of the run: answers and first deliveries (the cycles' times are on the
    /// same clock).
    pub timeline: Vec<ChaosSecond>,
    /// The lost envelopes, as (mailbox, message id, was resent), for diagnosis.
    pub lost: Vec<(u32, u64, bool)>,
    /// `PASS` or `FAIL`.
    pub verdict: String,
    /// Why it failed (empty on a pass).
    pub failures: Vec<String>,
}

impl ChaosReport {
    /// Judges the run: sets `verdict` and `failures`.
    pub fn judge(&mut self) {
        let mut f = Vec::new();
        for kind in &self.kinds {
            let ran = match kind {
                KillKind::Relay => self.relay_kills,
                KillKind::Primary => self.primary_kills,
            };
            if ran < self.planned_per_kind {
                f.push(format!(
                    "{ran} of {} {} kill cycles completed",
                    self.planned_per_kind,
                    kind.singular()
                ));
            }
        }
        if let Some(c) = self.per_cycle.iter().find(|c| c.error.is_some()) {
            f.push(format!(
                "cycle {}: {}",
                c.cycle,
                c.error.as_deref().unwrap_or_default()
            ));
        }
        for (n, what) in [
            (self.acked_lost, "acknowledged envelopes lost"),
            (
                self.found_by_new_subscription,
                "acknowledged envelopes stored but never delivered to the live subscription (a new subscription got them)",
            ),
            (self.corrupted, "deliveries corrupted"),
            (self.duplicated_after_seq_dedupe, "envelopes stored twice"),
            (self.rejected, "envelopes refused"),
            (self.unsettled, "envelopes never acknowledged"),
        ] {
            if n > 0 {
                f.push(format!("{n} {what}"));
            }
        }
        if self.acked == 0 {
            f.push("nothing was acknowledged".into());
        }
        self.verdict = if f.is_empty() { "PASS" } else { "FAIL" }.into();
        self.failures = f;
    }

    /// Whether the run passed.
    pub fn passed(&self) -> bool {
        self.verdict == "PASS"
    }

    /// The summary printed after the run: a table of the cycles, the totals, and the verdict
    /// on the last line.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "chaos on the {} store: {} relay(s){}, {} mailboxes, {} B bodies, {:.1} s",
            self.store,
            self.relays,
            if self.cross_relay {
                ", deposits and subscriptions on different relays"
            } else {
                ""
            },
            self.mailboxes,
            self.size,
            self.duration_s
        );
        let _ = writeln!(
            s,
            "{:>5} {:<8} {:<24} {:>7} {:>8} {:>9} {:>8} {:>9}  {:>6} {:>4} {:>6} {:>5} {:>6} {:>4}",
            "cycle",
            "kind",
            "target",
            "kill_s",
            "acked",
            "failover",
            "back",
            "first_ack",
            "ok",
            "dup",
            "unavl",
            "other",
            "no_ans",
            "lost"
        );
        let after = |t: Option<f64>, kill: f64| {
            t.map_or_else(|| "-".to_owned(), |t| format!("+{:.2}s", t - kill))
        };
        for c in &self.per_cycle {
            let w = &c.window;
            let _ = writeln!(
                s,
                "{:>5} {:<8} {:<24} {:>7.2} {:>8} {:>9} {:>8} {:>9}  {:>6} {:>4} {:>6} {:>5} {:>6} {:>4}",
                c.cycle,
                c.kind.singular(),
                c.target,
                c.kill_s,
                c.acked_at_kill,
                after(c.promoted_s, c.kill_s),
                after(c.restarted_s, c.kill_s),
                after(c.first_ack_after_kill_s, c.kill_s),
                w.ok,
                w.duplicate,
                w.unavailable,
                w.rejected,
                w.unanswered,
                c.window_acked_lost
            );
        }
        let _ = writeln!(
            s,
            "(failover: replica promoted; back: relay accepting again, or node rejoined and cluster ok; window = kill..back; answers are to deposits sent in the window)"
        );
        let a = &self.attempts;
        let _ = writeln!(
            s,
            "cycles {} (relay {}, primary {})  deposited {}  acked {}  delivered {}  rejected {}",
            self.cycles,
            self.relay_kills,
            self.primary_kills,
            self.deposited,
            self.acked,
            self.delivered,
            self.rejected
        );
        let _ = writeln!(
            s,
            "attempts {}: ok {} duplicate {} unavailable {} unanswered {} other {}; in failover windows: ok {} duplicate {} unavailable {} unanswered {} other {}",
            a.total(),
            a.ok,
            a.duplicate,
            a.unavailable,
            a.unanswered,
            a.rejected,
            self.in_windows.ok,
            self.in_windows.duplicate,
            self.in_windows.unavailable,
            self.in_windows.unanswered,
            self.in_windows.rejected
        );
        let _ = writeln!(
            s,
            "acked_lost {}  stalled (found by a new subscription) {}  corrupted {}  duplicated_after_seq_dedupe {}  redelivered_same_seq {}  resubscribed {}",
            self.acked_lost,
            self.found_by_new_subscription,
            self.corrupted,
            self.duplicated_after_seq_dedupe,
            self.redelivered_same_seq,
            self.resubscribed
        );
        let d = &self.ack_to_delivery_ms;
        let _ = writeln!(
            s,
            "acknowledgement to delivery: p50 {:.1} ms  p99 {:.1} ms  p99.9 {:.1} ms  max {:.1} ms",
            d.p50, d.p99, d.p999, d.max
        );
        let _ = writeln!(
            s,
            "retried {} (ok {}, duplicate {}, unanswered {})  unsettled {}",
            self.retried,
            self.retried_ok,
            self.retried_duplicate,
            self.retried_unanswered,
            self.unsettled
        );
        if self.passed() {
            let _ = writeln!(
                s,
                "PASS: {} kill cycles, {} acknowledged, 0 lost, 0 corrupted, 0 stored twice",
                self.cycles, self.acked
            );
        } else {
            let _ = writeln!(s, "FAIL: {}", self.failures.join("; "));
        }
        s
    }
}

/// A delay distribution in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct DelayMs {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

impl DelayMs {
    /// From a histogram of microseconds.
    pub fn from_us(h: &hdrhistogram::Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |v: u64| v as f64 / 1000.0;
        Self {
            p50: ms(h.value_at_quantile(0.5)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// The progress line of a finished cycle (`of` cycles planned).
pub fn progress_line(c: &CycleRecord, of: usize) -> String {
    let mut s = format!(
        "cycle {}/{}: {} {} killed at {:.2} s (acked so far {})",
        c.cycle,
        of,
        c.kind.singular(),
        c.target,
        c.kill_s,
        c.acked_at_kill
    );
    if let (Some(p), Some(node)) = (c.promoted_s, &c.promoted) {
        let _ = write!(s, "; replica {node} promoted after {:.2} s", p - c.kill_s);
    }
    if let Some(r) = c.restarted_s {
        let what = match c.kind {
            KillKind::Relay => "restarted",
            KillKind::Primary => "rejoined, cluster ok",
        };
        let _ = write!(
            s,
            "; {what} after {:.2} s (acked {})",
            r - c.kill_s,
            c.acked_at_restart
        );
    }
    match c.first_ack_after_kill_s {
        Some(t) => {
            let _ = write!(
                s,
                "; deposits acknowledged again after {:.2} s",
                t - c.kill_s
            );
        }
        None => s.push_str("; no ack since the kill"),
    }
    if let Some(e) = &c.error {
        let _ = write!(s, "; ERROR: {e}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cycle(kind: KillKind) -> CycleRecord {
        CycleRecord {
            cycle: 1,
            kind,
            target: "127.0.0.1:22000".into(),
            kill_s: 1.0,
            acked_at_kill: 10,
            promoted_s: Some(3.5),
            promoted: Some("127.0.0.1:22004".into()),
            restarted_s: Some(5.0),
            first_ack_after_kill_s: Some(1.25),
            acked_at_restart: 20,
            window: OutcomeCounts::default(),
            window_acked_lost: 0,
            error: None,
        }
    }

    #[test]
    fn verdict_names_what_failed() {
        let mut r = ChaosReport {
            kinds: vec![KillKind::Relay, KillKind::Primary],
            planned_per_kind: 2,
            per_cycle: vec![cycle(KillKind::Primary), cycle(KillKind::Relay)],
            relay_kills: 2,
            primary_kills: 1,
            acked: 5,
            ..ChaosReport::default()
        };
        r.judge();
        assert!(!r.passed());
        assert_eq!(r.failures, ["1 of 2 primary kill cycles completed"]);
        r.primary_kills = 2;
        r.acked_lost = 3;
        r.judge();
        assert_eq!(r.failures, ["3 acknowledged envelopes lost"]);
        assert!(r.text().ends_with("FAIL: 3 acknowledged envelopes lost\n"));
        r.acked_lost = 0;
        r.judge();
        assert!(r.passed());
        let text = r.text();
        assert!(text.lines().last().unwrap().starts_with("PASS: "), "{text}");
        assert!(text.contains("primary "), "{text}");
    }

    #[test]
    fn progress_says_what_was_killed_and_when_it_was_back() {
        let line = progress_line(&cycle(KillKind::Primary), 6);
        assert_eq!(
            line,
            "cycle 1/6: primary 127.0.0.1:22000 killed at 1.00 s (acked so far 10); replica 127.0.0.1:22004 promoted after 2.50 s; rejoined, cluster ok after 4.00 s (acked 20); deposits acknowledged again after 0.25 s"
        );
        assert_eq!("primaries".parse(), Ok(KillKind::Primary));
        assert_eq!("relay".parse(), Ok(KillKind::Relay));
        assert!("nodes".parse::<KillKind>().is_err());
    }
}
