//! CPU placement for runs where an attacker and its target share one machine: the attacker
//! on CPUs of its own, everything else on the rest. On a real network the attacker's CPU is
//! not the relay's; on a 2-core test machine it would be, and the attack would be measured by
//! what the attacker itself burns rather than by what it makes the relay do.

use nix::sched::{CpuSet, sched_setaffinity};
use nix::unistd::Pid;

/// Which CPUs each side gets.
#[derive(Debug, Clone, Copy)]
pub struct Placement {
    /// The attacker's threads.
    pub attacker: CpuSet,
    /// The relay and the well-behaved client.
    pub rest: CpuSet,
    /// How many CPUs the rest has (the attacker has the last one).
    pub rest_cpus: usize,
}

impl Placement {
    /// The last CPU for the attacker, the others for the rest; `None` on a machine with one
    /// CPU (nothing to split).
    pub fn split() -> anyhow::Result<Option<Self>> {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        if n < 2 {
            return Ok(None);
        }
        let mut attacker = CpuSet::new();
        attacker.set(n - 1)?;
        let mut rest = CpuSet::new();
        for cpu in 0..n - 1 {
            rest.set(cpu)?;
        }
        Ok(Some(Self {
            attacker,
            rest,
            rest_cpus: n - 1,
        }))
    }

    /// How it is said in a report.
    pub fn describe(&self) -> String {
        let last = self.rest_cpus;
        let rest = if self.rest_cpus == 1 {
            "CPU 0".to_owned()
        } else {
            format!("CPUs 0-{}", self.rest_cpus - 1)
        };
        format!("attacker on CPU {last}; relay and well-behaved client on {rest}")
    }
}

/// Moves every thread of process `pid` onto `cpus` (threads it starts later inherit the
/// placement of the thread that starts them). Returns how many threads were moved.
pub fn pin_process(pid: u32, cpus: &CpuSet) -> anyhow::Result<usize> {
    let mut moved = 0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let Some(tid) = entry?
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        // A thread that ended meanwhile is not an error.
        if sched_setaffinity(Pid::from_raw(tid), cpus).is_ok() {
            moved += 1;
        }
    }
    Ok(moved)
}

/// Moves the calling thread onto `cpus`.
pub fn pin_this_thread(cpus: &CpuSet) -> nix::Result<()> {
    sched_setaffinity(Pid::from_raw(0), cpus)
}
