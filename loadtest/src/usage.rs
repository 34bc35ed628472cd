//! What a run cost the relay processes and the Valkey nodes: CPU seconds (from /proc) and the
//! Valkey write-path commands, from just before the load starts to the end of the drain.

use crate::cputime::{self, CommandCalls};
use crate::fleet::Fleet;
use serde::Serialize;

/// The processes and nodes one run measures.
pub struct Probe {
    relay_pids: Vec<u32>,
    valkey_pids: Vec<u32>,
    nodes: Vec<String>,
    active: bool,
}

/// One reading.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    relay_cpu_s: f64,
    valkey_cpu_s: f64,
    calls: Option<CommandCalls>,
}

/// CPU and Valkey commands of a run (relays run as child processes only).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Usage {
    /// Relay processes measured.
    pub relay_processes: usize,
    /// Valkey processes measured (found on this machine; 0 on the disk store).
    pub valkey_processes: usize,
    /// Distinct deliveries in the measured span (warm-up included, as the CPU is).
    pub deliveries: u64,
    /// User + system CPU seconds of all relay processes.
    pub relay_cpu_s: f64,
    /// The same per 100 000 deliveries.
    pub relay_cpu_s_per_100k_deliveries: f64,
    /// User + system CPU seconds of all Valkey processes.
    pub valkey_cpu_s: Option<f64>,
    /// The same per 100 000 deliveries.
    pub valkey_cpu_s_per_100k_deliveries: Option<f64>,
    /// WAITAOF calls per acknowledged deposit, over all nodes: a group commit's wait for the
    /// primary's and a replica's fsync, sent in short slices (one or more per commit); the
    /// closest count of fsync waits Valkey's counters give.
    pub waitaof_per_deposit: Option<f64>,
    /// FCALL / FCALL_RO calls (server-side functions) per acknowledged deposit.
    pub fcall_per_deposit: Option<f64>,
}

impl Probe {
    /// Measures `fleet`'s processes; measures nothing without one (an in-process relay's CPU
    /// would include the generator's).
    pub fn new(fleet: Option<&Fleet>) -> Self {
        match fleet {
            Some(f) => Self {
                relay_pids: f.relay_pids(),
                valkey_pids: f.valkey_pids.clone(),
                nodes: f.cluster_nodes.clone(),
                active: true,
            },
            None => Self {
                relay_pids: Vec::new(),
                valkey_pids: Vec::new(),
                nodes: Vec::new(),
                active: false,
            },
        }
    }

    /// Reads the counters now.
    pub fn sample(&self) -> Sample {
        if !self.active {
            return Sample::default();
        }
        Sample {
            relay_cpu_s: cputime::total_cpu_seconds(&self.relay_pids),
            valkey_cpu_s: cputime::total_cpu_seconds(&self.valkey_pids),
            calls: if self.nodes.is_empty() {
                None
            } else {
                cputime::command_calls(&self.nodes)
            },
        }
    }

    /// What was used between two samples, for `deliveries` deliveries and `deposits`
    /// acknowledged deposits.
    pub fn usage(
        &self,
        before: Sample,
        after: Sample,
        deliveries: u64,
        deposits: u64,
    ) -> Option<Usage> {
        if !self.active {
            return None;
        }
        let per_100k = |s: f64| {
            if deliveries == 0 {
                0.0
            } else {
                s * 100_000.0 / deliveries as f64
            }
        };
        let per_deposit = |n: u64| {
            if deposits == 0 {
                0.0
            } else {
                n as f64 / deposits as f64
            }
        };
        let relay = after.relay_cpu_s - before.relay_cpu_s;
        let has_valkey = !self.valkey_pids.is_empty();
        let valkey = has_valkey.then_some(after.valkey_cpu_s - before.valkey_cpu_s);
        let calls = after.calls.zip(before.calls).map(|(a, b)| a.since(b));
        Some(Usage {
            relay_processes: self.relay_pids.len(),
            valkey_processes: self.valkey_pids.len(),
            deliveries,
            relay_cpu_s: relay,
            relay_cpu_s_per_100k_deliveries: per_100k(relay),
            valkey_cpu_s: valkey,
            valkey_cpu_s_per_100k_deliveries: valkey.map(per_100k),
            waitaof_per_deposit: calls.map(|c| per_deposit(c.waitaof)),
            fcall_per_deposit: calls.map(|c| per_deposit(c.fcall)),
        })
    }
}
