//! sealpost-loadtest: the load generator's library, used by the `sealpost-loadtest` binary
//! and its tests.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod abuse;
pub mod baseline;
pub mod chaos;
pub mod child;
pub mod cluster_nodes;
pub mod compare;
pub mod cpus;
pub mod cputime;
pub mod ctcheck;
pub mod fast;
pub mod fleet;
pub mod histogram;
pub mod html;
pub mod load;
pub mod many;
pub mod message;
pub mod overhead;
pub mod report;
pub mod run;
pub mod speed;
pub mod sweep;
pub mod usage;

use sealpost_core::engine::{BACKEND_ENV, Backend, Engine};

/// The crypto engine `SEALPOST_BACKEND` names (`auto` or unset: the fastest this CPU runs), for
/// the relays this program spawns and for `speed`. A name the CPU cannot run is an error.
pub fn engine_from_env() -> anyhow::Result<Engine> {
    match std::env::var(BACKEND_ENV) {
        Ok(v) if !v.trim().is_empty() && !v.trim().eq_ignore_ascii_case("auto") => {
            let b: Backend = v
                .parse()
                .map_err(|e| anyhow::anyhow!("{BACKEND_ENV}: {e}"))?;
            Engine::new(b).map_err(|e| anyhow::anyhow!("{BACKEND_ENV}: {e}"))
        }
        _ => Ok(Engine::detect()),
    }
}
