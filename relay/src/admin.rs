//! The admin listener: plain HTTP on its own address (never the QUIC one), for Prometheus and
//! orchestrators. It starts before the store opens, so that a long start (recovering a big
//! store, sealing secrets into a fresh copy) answers `/healthz` instead of looking dead.
//!
//! - `/metrics`: Prometheus text.
//! - `/healthz`: the process is up (200 from the start; for liveness and startup probes).
//! - `/servingz`: the relay serves its clients: subscriptions, deliveries, ACKs, and deposits
//!   unless the disk is below its reserve. 200 also below the reserve, since recipients
//!   draining their mailboxes is what frees the space; 503 with the reason while starting,
//!   once shutting down, after a store write failed, and while the store cannot be reached at
//!   all (cluster store: no Valkey primary confirms a write; clears by itself). For
//!   load-balancer readiness (a Kubernetes readinessProbe).
//! - `/readyz`: the relay takes deposits: as `/servingz`, and 503 with the reason while the
//!   store's disk is below its free-space reserve or the store cannot confirm deposits durable
//!   (cluster store: any primary unreachable or without a replica confirming its writes).
//!   For people and alerts that ask whether deposits work.
//!
//! Both only read state the store keeps up to date (the cluster store probes its nodes in
//! the background): a probe never waits for the store.

use crate::store::Store;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::task::JoinHandle;

/// Failures starting the admin listener.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The TCP address could not be bound.
    #[error("cannot listen for admin HTTP on {addr}: {source} (set `admin` to a free address)")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The Prometheus recorder could not be installed.
    #[error("cannot install the metrics recorder: {0}")]
    Recorder(String),
}

/// What `/servingz` and `/readyz` ask: whether the relay has started and accepts
/// connections, and what its store takes. Clones share one state, so a listener started
/// before the relay ([`Readiness::starting`]) follows it once it is up ([`Readiness::started`]).
#[derive(Clone, Default)]
pub struct Readiness {
    relay: Arc<OnceLock<Started>>,
}

/// The parts of a started relay the probes look at.
#[derive(Clone)]
struct Started {
    accepting: Arc<AtomicBool>,
    store: Arc<dyn Store>,
}

impl Readiness {
    /// A started relay: serving while `accepting` is set and `store` has not failed, ready
    /// while `store` takes deposits as well.
    pub fn new(accepting: Arc<AtomicBool>, store: Arc<dyn Store>) -> Self {
        let me = Self::default();
        let _ = me.relay.set(Started { accepting, store });
        me
    }

    /// A relay still starting (opening its store): neither serving nor ready.
    pub fn starting() -> Self {
        Self::default()
    }

    /// From now on answers for `relay` (the first call counts; later ones are ignored).
    pub fn started(&self, relay: &Readiness) {
        if let Some(r) = relay.relay.get() {
            let _ = self.relay.set(r.clone());
        }
    }

    /// `Ok` while the relay serves its clients (also below the disk reserve); otherwise why
    /// not, in a sentence.
    pub fn serving(&self) -> Result<(), String> {
        let Some(r) = self.relay.get() else {
            return Err("starting (opening the store)".into());
        };
        if !r.accepting.load(Ordering::Relaxed) {
            return Err("not accepting connections (shutting down)".into());
        }
        let health = r.store.health();
        if let Some(why) = health.failed {
            return Err(format!("store failed: {why}"));
        }
        match health.unavailable {
            Some(u) if u.serves_nothing => Err(format!("store unreachable: {}", u.why)),
            _ => Ok(()),
        }
    }

    /// `Ok` when ready, that is serving and taking deposits; otherwise why not, in a sentence.
    pub fn check(&self) -> Result<(), String> {
        self.serving()?;
        match self.relay.get() {
            Some(r) => r.store.health().accepting(),
            None => Err("starting (opening the store)".into()),
        }
    }
}

/// A probe's answer: 200 with `ok`, or 503 with the reason.
fn answer(result: Result<(), String>, ok: &str, not: &str) -> (StatusCode, String) {
    match result {
        Ok(()) => (StatusCode::OK, format!("{ok}\n")),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{not}: {why}\n")),
    }
}

/// Installs the Prometheus recorder for this process (once) and describes the relay's
/// metrics. The histogram buckets suit sub-millisecond to second timings and batch sizes.
pub fn install_recorder() -> Result<PrometheusHandle, AdminError> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    let seconds = [
        0.00001, 0.00003, 0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0,
    ];
    let counts = [
        1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_envelopes".into()), &counts))
        .map_err(|e| AdminError::Recorder(e.to_string()))?
        .install_recorder()
        .map_err(|e| AdminError::Recorder(e.to_string()))?;
    crate::metrics::describe();
    Ok(handle)
}

/// Serves the admin endpoints on `addr`; returns the bound address and the server task.
pub async fn serve(
    addr: SocketAddr,
    metrics: PrometheusHandle,
    ready: Readiness,
) -> Result<(SocketAddr, JoinHandle<()>), AdminError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| AdminError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| AdminError::Bind { addr, source })?;
    let serving = ready.clone();
    let app = Router::new()
        .route(
            "/metrics",
            get(move || std::future::ready(metrics.render())),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        // A statvfs call at most (the cluster store answers from its background probe):
        // cheap enough to answer on the request's task.
        .route(
            "/readyz",
            get(move || std::future::ready(answer(ready.check(), "ready", "not ready"))),
        )
        .route(
            "/servingz",
            get(move || std::future::ready(answer(serving.serving(), "serving", "not serving"))),
        );
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "admin listener stopped");
        }
    });
    Ok((bound, task))
}
