//! The admin listener: plain HTTP on its own address (never the QUIC one), for Prometheus and
//! orchestrators. `/metrics` (Prometheus text), `/healthz` (the process is up), `/readyz` (the
//! store is open and takes deposits and the QUIC endpoint is accepting; 503 with the reason
//! while starting or shutting down, while the store's disk is below its free-space reserve,
//! or after a store write failed).

use crate::store::Store;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use std::net::SocketAddr;
use std::sync::Arc;
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

/// What `/readyz` asks: whether the relay accepts connections, and whether its store takes
/// deposits.
#[derive(Clone)]
pub struct Readiness {
    accepting: Arc<AtomicBool>,
    store: Arc<dyn Store>,
}

impl Readiness {
    /// Ready while `accepting` is set and `store` is healthy.
    pub fn new(accepting: Arc<AtomicBool>, store: Arc<dyn Store>) -> Self {
        Self { accepting, store }
    }

    /// `Ok` when ready; otherwise why not, in a sentence.
    pub fn check(&self) -> Result<(), String> {
        if !self.accepting.load(Ordering::Relaxed) {
            return Err("not accepting connections (starting or shutting down)".into());
        }
        self.store.health().accepting()
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
    let app = Router::new()
        .route(
            "/metrics",
            get(move || std::future::ready(metrics.render())),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                // A statvfs call at most: cheap enough to answer on the request's task.
                std::future::ready(match ready.check() {
                    Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
                    Err(why) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("not ready: {why}\n"),
                    ),
                })
            }),
        );
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "admin listener stopped");
        }
    });
    Ok((bound, task))
}
