//! The QUIC relay server: accepts connections, dispatches each stream by its first frame, and
//! runs the deposit, subscribe and control handlers over the store.

mod control;
mod deposit;
mod forwarded;
mod forwarding;
pub mod limits;
mod pipeline;
pub(crate) mod proto;
mod registry;
pub mod reset_key;
mod subscribe;

use crate::config::{RelayConfig, RelayLimits, RetryPolicy};
use crate::store::Store;
use crate::stream::{frame_error_reply, refuse};
use crate::tls;
use quinn::{Connection, Endpoint, RecvStream, SendStream};
use sealpost_client::stream::{FrameReader, ReadError};
use sealpost_client::tls::TlsError;
use sealpost_core::CLOSE_SHUTDOWN;
use sealpost_core::frame::FrameType;
use sealpost_core::status::ErrorCode;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The time a begun frame gets while half-received frames hold more than
/// `partial_frame_budget_bytes`: enough for a maximum-size frame at any useful speed, too
/// little for a trickle to hold memory.
const PRESSURE_FRAME_TIMEOUT: Duration = Duration::from_secs(1);

/// QUIC application close code for a connection whose source committed more faults (rejected
/// deposits, malformed or timed-out frames, requests over a rate limit) than the relay
/// allows; its new connections are refused for a while.
pub const CLOSE_ABUSE: u32 = 3;
/// The reason sent with [`CLOSE_ABUSE`].
const ABUSE_REASON: &[u8] =
    b"too many faults (rejected deposits, bad or slow frames, requests over a limit) from this address; wait before reconnecting";

/// QUIC application close code reserved for "relay busy". Unused: a relay at a connection
/// limit refuses before the handshake, with the transport error `CONNECTION_REFUSED`.
pub const CLOSE_BUSY: u32 = 2;

/// Failures starting the relay.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// TLS set-up failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The relay's certificate or key could not be loaded or generated.
    #[error(transparent)]
    Cert(#[from] tls::CertError),
    /// The UDP socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A setting is out of range.
    #[error("invalid setting: {0}")]
    Config(String),
    /// The stateless-reset secret in the data directory could not be read or created.
    #[error(transparent)]
    ResetKey(#[from] reset_key::ResetKeyError),
    /// The forwarding key could not be read or created.
    #[error(transparent)]
    ForwardKey(#[from] crate::forward::ForwardKeyError),
    /// The forwarding pool could not be set up.
    #[error(transparent)]
    ForwardPool(#[from] crate::forward::pool::PoolError),
}

/// State every connection and stream task shares.
pub(crate) struct Shared {
    /// Deposit streams running (a shutdown waits for them to answer what they read).
    pub depositing: AtomicUsize,
    /// Connection addresses in logs (debugging only).
    pub log_sensitive: bool,
    pub store: Arc<dyn Store>,
    pub pipeline: pipeline::Pipeline,
    pub limits: RelayLimits,
    pub subscribers: registry::Registry,
    pub connections: AtomicUsize,
    /// Handshakes in progress (for `RetryPolicy::Auto`).
    pub handshakes: AtomicUsize,
    /// Open and recent connections per source address.
    pub sources: Arc<limits::SourceTable>,
    /// The deadline for begun frames, and what half-received frames hold relay-wide.
    pub frames: Arc<sealpost_client::stream::FrameDeadline>,
    /// Mailbox creations per source address.
    pub creates: std::sync::Mutex<limits::Buckets<limits::SourceKey>>,
    pub shutdown: watch::Receiver<bool>,
    /// Verifies deposit tags and seals deliveries.
    pub engine: sealpost_core::engine::Engine,
    /// Opens FORWARDED requests (the current key, and previous ones for their overlap).
    pub forward_key: Arc<crate::forward::ForwardKeys>,
    /// What this relay forwards.
    pub forward: crate::config::ForwardConfig,
    /// FORWARD requests per source address.
    pub forwards: std::sync::Mutex<limits::Buckets<limits::SourceKey>>,
    /// Connections to destination relays; `None` while forwarding is off.
    pub pool: Option<crate::forward::pool::Pool>,
}

/// A running relay.
pub struct RelayHandle {
    local_addr: SocketAddr,
    pin: [u8; 32],
    generated_cert: bool,
    udp: crate::udp::UdpInfo,
    endpoint: Endpoint,
    shutdown: watch::Sender<bool>,
    accept: JoinHandle<()>,
    expiry: JoinHandle<()>,
    sampler: JoinHandle<()>,
    shared: Arc<Shared>,
    ready: Arc<AtomicBool>,
    certs: Arc<tls::CertSlot>,
    cert_paths: (std::path::PathBuf, std::path::PathBuf),
}

impl RelayHandle {
    /// The bound UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The SHA-256 pin of the relay's certificate (as it was at start).
    pub fn pin(&self) -> [u8; 32] {
        self.pin
    }

    /// The SHA-256 of the SubjectPublicKeyInfo of the certificate in use: the key pin new
    /// invitations carry, unchanged by renewals that keep the key.
    pub fn key_pin(&self) -> Result<[u8; 32], TlsError> {
        self.certs.key_pin()
    }

    /// What the UDP socket got from the kernel (buffers, GSO, GRO).
    pub fn udp(&self) -> crate::udp::UdpInfo {
        self.udp
    }

    /// The relay's forwarding public key, as INFO announces it and version 4 invitations
    /// carry it.
    pub fn forward_key(&self) -> [u8; 32] {
        self.shared.forward_key.public()
    }

    /// The previous forwarding public keys still accepted after a rotation, newest first,
    /// with the Unix second each stops being accepted.
    pub fn previous_forward_keys(&self) -> Vec<([u8; 32], u64)> {
        self.shared.forward_key.previous()
    }

    /// The staged forwarding public key (accepted, not announced yet), if any.
    pub fn staged_forward_key(&self) -> Option<[u8; 32]> {
        self.shared.forward_key.staged()
    }

    /// Whether a self-signed certificate was generated at this start.
    pub fn generated_cert(&self) -> bool {
        self.generated_cert
    }

    /// Reads the certificate and key files again and uses them for new connections (the
    /// operator's files, or the generated ones in DATA_DIR/tls). Returns the new pin; on an
    /// error the old certificate stays in use.
    pub fn reload_certificate(&self) -> Result<[u8; 32], tls::CertError> {
        let id = tls::load_identity(&self.cert_paths.0, &self.cert_paths.1)?;
        self.certs.replace(id)?;
        Ok(self.certs.pin())
    }

    /// True while the relay accepts connections: cleared when a shutdown begins.
    pub fn ready(&self) -> Arc<AtomicBool> {
        self.ready.clone()
    }

    /// What a readiness probe asks: the relay accepts connections and its store takes
    /// deposits (see [`crate::admin::Readiness`]).
    pub fn readiness(&self) -> crate::admin::Readiness {
        crate::admin::Readiness::new(self.ready.clone(), self.shared.store.clone())
    }

    /// Returns, with the reason, once the store has failed for good (a write failed: it
    /// refuses writes until the relay restarts). The binary then stops with an error, so
    /// that its supervisor restarts it and the restart recovers from disk.
    pub async fn store_failed(&self) -> String {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            if let Some(why) = self.shared.store.health().failed {
                return why;
            }
        }
    }

    /// Shuts down within about `timeout`: stops accepting connections, ends subscriptions
    /// with `ERROR SHUTTING_DOWN`, lets deposit streams answer what they already read (their
    /// envelopes are stored and acknowledged; nothing read is left unanswered), then closes
    /// every connection with [`CLOSE_SHUTDOWN`], on which clients reconnect.
    pub async fn shutdown_within(self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        self.ready.store(false, Ordering::SeqCst);
        metrics::gauge!(crate::metrics::READY).set(0.0);
        self.accept.abort();
        let _ = self.shutdown.send(true);
        // Deposit streams stop reading and drain their batches in flight; subscriptions send
        // their ERROR SHUTTING_DOWN. Closing the connection discards what is unsent, so give
        // those frames a moment to leave first.
        tokio::time::sleep(Duration::from_millis(100).min(timeout)).await;
        while self.shared.depositing.load(Ordering::Relaxed) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.endpoint
            .close(CLOSE_SHUTDOWN.into(), b"relay shutting down; reconnect");
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let _ = tokio::time::timeout(
            left.max(Duration::from_millis(200)),
            self.endpoint.wait_idle(),
        )
        .await;
        self.expiry.abort();
        self.sampler.abort();
    }

    /// [`RelayHandle::shutdown_within`] three seconds.
    pub async fn shutdown(self) {
        self.shutdown_within(Duration::from_secs(3)).await
    }

    /// Waits until the accept loop ends (it runs until shutdown).
    pub async fn wait(&mut self) {
        let _ = (&mut self.accept).await;
    }
}

fn transport(limits: &RelayLimits) -> Result<quinn::TransportConfig, RelayError> {
    let mut t = quinn::TransportConfig::default();
    // More than max_streams, so that quinn's batched credit updates never leave a client
    // short of max_streams (see `stream_credit`).
    t.max_concurrent_bidi_streams(crate::config::stream_credit(limits.max_streams).into());
    t.max_concurrent_uni_streams(0u32.into());
    let idle = quinn::IdleTimeout::try_from(limits.idle_timeout).map_err(|_| {
        RelayError::Config(format!(
            "idle timeout {:?} is out of range",
            limits.idle_timeout
        ))
    })?;
    t.max_idle_timeout(Some(idle));
    // sealpost uses no QUIC datagrams; quinn would otherwise accept and queue up to 1.25 MB
    // of them per connection that nothing reads.
    t.datagram_receive_buffer_size(None);
    // Bounded flow-control windows: what a client may send ahead of what the relay has read,
    // and what the relay queues for it, are the relay's memory. quinn's defaults leave the
    // connection window unbounded.
    t.stream_receive_window(limits.stream_receive_window.into());
    t.receive_window(limits.connection_receive_window.into());
    t.send_window(u64::from(limits.connection_send_window));
    Ok(t)
}

/// The certificate and key files a relay with `config` uses: the operator's, or the
/// generated pair in `DATA_DIR/tls/`.
fn tls_files(config: &RelayConfig) -> Result<(PathBuf, PathBuf), RelayError> {
    match (&config.cert, &config.key) {
        (Some(c), Some(k)) => Ok((c.clone(), k.clone())),
        (None, None) => {
            let dir = config.data_dir.join("tls");
            Ok((dir.join("cert.pem"), dir.join("key.pem")))
        }
        _ => Err(RelayError::Config("--cert and --key go together".into())),
    }
}

/// What `check-config` verifies of the TLS files without starting anything: the operator's
/// certificate and key exist, load and belong together (or, without them, the generated pair
/// in `DATA_DIR/tls/` does, when it exists). Returns the pin of the certificate the relay
/// would serve, or `None` when it would generate one at its first start.
pub fn check_tls(config: &RelayConfig) -> Result<Option<[u8; 32]>, RelayError> {
    let (cert, key) = tls_files(config)?;
    if config.cert.is_none() && !tls::generated_pair_present(&config.data_dir.join("tls"))? {
        return Ok(None);
    }
    Ok(Some(tls::load_identity(&cert, &key)?.pin()))
}

/// The frame limit of a stream's first frame: room for a FORWARD of the largest request.
fn forward_reader_limit(limits: &RelayLimits) -> u32 {
    sealpost_core::forward::max_forward_frame(limits.frame_limit()).max(limits.frame_limit())
}

/// Starts a relay on `config.listen` over `store`.
pub async fn start(config: RelayConfig, store: Arc<dyn Store>) -> Result<RelayHandle, RelayError> {
    let cert_paths = tls_files(&config)?;
    let (identity, generated) = match &config.cert {
        Some(_) => (tls::load_identity(&cert_paths.0, &cert_paths.1)?, false),
        None => tls::load_or_generate(&config.data_dir.join("tls"))?,
    };
    if config.limits.max_batch == 0 || config.limits.max_batch > u16::MAX as usize {
        return Err(RelayError::Config(
            "max batch must be between 1 and 65535".into(),
        ));
    }
    let pin = identity.pin();
    let certs = tls::CertSlot::new(identity)?;
    let crypto = tls::server_crypto_reloadable(certs.clone())?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(transport(&config.limits)?));
    let bind_err = |source| RelayError::Bind {
        addr: config.listen,
        source,
    };
    let (socket, udp) =
        crate::udp::bind(config.listen, config.limits.udp_buffer).map_err(bind_err)?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| RelayError::Config("the relay needs a tokio runtime".into()))?;
    // Keyed from a secret kept in the data directory: after a crash and restart, clients of
    // the old process get a stateless reset at their next packet instead of waiting out the
    // idle timeout.
    let reset = reset_key::ResetSecret::load_or_create(&config.data_dir)?;
    let forward_key = {
        let (path, create) = match &config.forward.key_file {
            Some(f) => (f.clone(), false),
            None => (config.data_dir.join(crate::forward::key::FILE_NAME), true),
        };
        let master = config.forward.master_key.as_ref().map(|m| &**m.0);
        crate::forward::ForwardKeys::load_or_create(
            &path,
            create,
            master,
            config.forward.key_overlap,
        )?
    };
    let endpoint =
        Endpoint::new(reset.endpoint_config(), Some(server), socket, runtime).map_err(bind_err)?;
    let local_addr = endpoint.local_addr().map_err(|source| RelayError::Bind {
        addr: config.listen,
        source,
    })?;
    let (tx, rx) = watch::channel(false);
    let shards = match config.limits.shards {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let pipeline = pipeline::Pipeline::start(
        store.clone(),
        shards,
        config.limits.max_batch,
        config.engine,
        config.limits.mailbox_deposit_rate,
        config.limits.deposit_buffer_bytes,
    );
    let sources = limits::SourceTable::new(limits::SourceRates {
        max_live: config.limits.max_connections_per_source,
        connections: config.limits.source_connection_rate,
        streams: config.limits.source_stream_rate,
        faults: config.limits.source_fault_rate,
    });
    let creates = std::sync::Mutex::new(limits::Buckets::new(config.limits.source_create_rate));
    let forwards = std::sync::Mutex::new(limits::Buckets::new(config.forward.source_rate));
    let pool = if config.forward.enabled {
        Some(crate::forward::pool::Pool::new(
            endpoint.clone(),
            config.forward.max_destinations,
            config.forward.idle_timeout,
            forward_reader_limit(&config.limits),
        )?)
    } else {
        None
    };
    let frames = sealpost_client::stream::FrameDeadline::new(
        config.limits.frame_timeout,
        PRESSURE_FRAME_TIMEOUT,
        config.limits.partial_frame_budget_bytes,
    );
    let shared = Arc::new(Shared {
        depositing: AtomicUsize::new(0),
        log_sensitive: config.log_sensitive,
        store,
        pipeline,
        limits: config.limits,
        subscribers: registry::Registry::default(),
        connections: AtomicUsize::new(0),
        handshakes: AtomicUsize::new(0),
        sources,
        creates,
        frames,
        shutdown: rx,
        engine: config.engine,
        forward_key: Arc::new(forward_key),
        forward: config.forward,
        forwards,
        pool,
    });
    let accept = tokio::spawn(accept_loop(endpoint.clone(), shared.clone()));
    let expiry = tokio::spawn(expiry_loop(shared.clone()));
    crate::metrics::register_all();
    let ready = Arc::new(AtomicBool::new(true));
    let sampler = tokio::spawn(sample_gauges(shared.clone(), ready.clone()));
    metrics::gauge!(
        crate::metrics::BUILD_INFO,
        "version" => env!("CARGO_PKG_VERSION"),
        "backend" => config.engine.describe()
    )
    .set(1.0);
    Ok(RelayHandle {
        local_addr,
        pin,
        generated_cert: generated,
        udp,
        endpoint,
        shutdown: tx,
        accept,
        expiry,
        sampler,
        shared,
        ready,
        certs,
        cert_paths,
    })
}

/// Once a second, the gauges that are states rather than events.
async fn sample_gauges(shared: Arc<Shared>, ready: Arc<AtomicBool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let health = shared.store.health();
        // Never "ready" over a store that refuses deposits; the shutdown clears it for good.
        let up = ready.load(Ordering::SeqCst) && health.accepting().is_ok();
        metrics::gauge!(crate::metrics::READY).set(if up { 1.0 } else { 0.0 });
        // A shutdown that began meanwhile has set the gauge to 0 already; do not undo it.
        if up && !ready.load(Ordering::SeqCst) {
            metrics::gauge!(crate::metrics::READY).set(0.0);
        }
        if let Some(space) = health.space {
            if let Some(free) = space.free {
                metrics::gauge!(crate::metrics::STORE_FREE_BYTES).set(free as f64);
            }
            metrics::gauge!(crate::metrics::STORE_RESERVE_BYTES).set(space.reserve as f64);
            metrics::gauge!(crate::metrics::STORE_SPACE_LOW).set(f64::from(u8::from(space.low())));
        }
        metrics::gauge!(crate::metrics::STORE_FAILED)
            .set(f64::from(u8::from(health.failed.is_some())));
        metrics::gauge!(crate::metrics::STORE_UNAVAILABLE)
            .set(f64::from(u8::from(health.unavailable.is_some())));
        metrics::gauge!(crate::metrics::STORE_RECOVERY_SHORTFALL)
            .set(health.recovery_shortfall as f64);
        metrics::gauge!(crate::metrics::STORE_PREVIOUS_FAILURE)
            .set(health.previous_failure_at.unwrap_or(0) as f64);
        let s = shared.store.stats().await;
        metrics::gauge!(crate::metrics::MAILBOXES).set(s.mailboxes as f64);
        metrics::gauge!(crate::metrics::ENVELOPES_STORED).set(s.envelopes as f64);
        metrics::gauge!(crate::metrics::BYTES_STORED).set(s.bytes as f64);
        metrics::gauge!(crate::metrics::SOURCES).set(shared.sources.sources() as f64);
        metrics::gauge!(crate::metrics::PARTIAL_FRAME_BYTES).set(shared.frames.held() as f64);
        if let Some(pool) = &shared.pool {
            metrics::gauge!(crate::metrics::FORWARD_POOL).set(pool.len() as f64);
        }
        metrics::gauge!(crate::metrics::DEPOSIT_BYTES_QUEUED)
            .set(shared.pipeline.queued_bytes() as f64);
        for (i, d) in shared.pipeline.queue_depths().enumerate() {
            metrics::gauge!(crate::metrics::SHARD_QUEUE, "shard" => i.to_string()).set(d as f64);
        }
    }
}

async fn expiry_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(shared.limits.expire_interval);
    loop {
        tick.tick().await;
        let Some(cutoff) = SystemTime::now().checked_sub(shared.limits.retention) else {
            continue;
        };
        match shared.store.expire(cutoff).await {
            Ok(0) => {}
            Ok(n) => {
                metrics::counter!(crate::metrics::EXPIRED).increment(n);
                tracing::info!(expired = n, "expired envelopes past retention")
            }
            Err(e) => tracing::warn!(error = %e, "expiry sweep failed"),
        }
    }
}

async fn accept_loop(endpoint: Endpoint, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i { Some(i) => i, None => return },
            _ = shutdown.changed() => return,
        };
        // Everything here runs before any cryptography: refusing costs one small packet.
        // Handshakes under way count: each becomes a connection.
        let open =
            shared.connections.load(Ordering::Relaxed) + shared.handshakes.load(Ordering::Relaxed);
        if open >= shared.limits.max_connections {
            refused("connection_limit");
            incoming.refuse();
            continue;
        }
        if !incoming.remote_address_validated() && incoming.may_retry() {
            let busy =
                shared.handshakes.load(Ordering::Relaxed) >= shared.limits.retry_above_handshakes;
            let retry = match shared.limits.retry {
                RetryPolicy::Always => true,
                RetryPolicy::Auto => busy,
                RetryPolicy::Never => false,
            };
            if retry {
                // The client comes back with a token proving it receives at its address;
                // until then the relay keeps no state for it.
                match incoming.retry() {
                    Ok(()) => metrics::counter!(crate::metrics::RETRIES).increment(1),
                    Err(e) => e.into_incoming().ignore(),
                }
                continue;
            }
        }
        let source = match shared
            .sources
            .admit(incoming.remote_address().ip(), std::time::Instant::now())
        {
            Ok(g) => g,
            Err(why) => {
                if !incoming.remote_address_validated() && incoming.may_retry() {
                    // The address is not proven: it may be spoofed to use up a real
                    // source's share. Ask for proof instead of refusing in its name; a real
                    // client over the limit comes back validated and is refused then.
                    match incoming.retry() {
                        Ok(()) => metrics::counter!(crate::metrics::RETRIES).increment(1),
                        Err(e) => e.into_incoming().ignore(),
                    }
                } else {
                    refused(why.label());
                    incoming.refuse();
                }
                continue;
            }
        };
        let shared = shared.clone();
        let now = shared.handshakes.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!(crate::metrics::HANDSHAKES).set(now as f64);
        tokio::spawn(async move {
            let conn = incoming.await;
            let now = shared.handshakes.fetch_sub(1, Ordering::Relaxed) - 1;
            metrics::gauge!(crate::metrics::HANDSHAKES).set(now as f64);
            let conn = match conn {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "handshake failed");
                    return;
                }
            };
            if shared.log_sensitive {
                tracing::info!(remote = %conn.remote_address(), "connection accepted (log_sensitive_debug)");
            }
            metrics::counter!(crate::metrics::CONNECTIONS_ACCEPTED).increment(1);
            let now = shared.connections.fetch_add(1, Ordering::Relaxed) + 1;
            metrics::gauge!(crate::metrics::CONNECTIONS).set(now as f64);
            let peer = Arc::new(Peer { conn, source });
            serve_connection(&peer, &shared).await;
            let now = shared.connections.fetch_sub(1, Ordering::Relaxed) - 1;
            metrics::gauge!(crate::metrics::CONNECTIONS).set(now as f64);
        });
    }
}

fn refused(reason: &'static str) {
    metrics::counter!(crate::metrics::CONNECTIONS_REFUSED, "reason" => reason).increment(1);
}

/// One connection and its source's place in the limits, shared by the connection's streams.
pub(crate) struct Peer {
    pub conn: Connection,
    /// Released when the connection and all its streams are gone.
    pub source: limits::SourceGuard,
}

impl Peer {
    /// Counts `n` faults against the source; once it is over its allowance,
    /// closes the connection (its source is then refused for a while) and returns false.
    pub(crate) fn charge_faults(&self, n: usize, now: std::time::Instant) -> bool {
        if self
            .source
            .charge_faults(u32::try_from(n).unwrap_or(u32::MAX), now)
        {
            return true;
        }
        metrics::counter!(crate::metrics::ABUSE_CLOSES).increment(1);
        self.conn.close(CLOSE_ABUSE.into(), ABUSE_REASON);
        false
    }
}

async fn serve_connection(peer: &Arc<Peer>, shared: &Arc<Shared>) {
    let rate = shared.limits.connection_stream_rate;
    let mut streams = limits::TokenBucket::new(rate, std::time::Instant::now());
    loop {
        let (mut send, recv) = match peer.conn.accept_bi().await {
            Ok(s) => s,
            Err(_) => return,
        };
        let now = std::time::Instant::now();
        if peer.source.penalized(now) {
            // Another connection of this source earned it a penalty.
            metrics::counter!(crate::metrics::ABUSE_CLOSES).increment(1);
            peer.conn.close(CLOSE_ABUSE.into(), ABUSE_REASON);
            return;
        }
        let over = match streams.try_take(rate, now) {
            Err(wait) => Some((wait, "connection", rate.per_sec)),
            Ok(()) => peer
                .source
                .take_stream(now)
                .err()
                .map(|wait| (wait, "address", shared.limits.source_stream_rate.per_sec)),
        };
        if let Some((wait, who, per_sec)) = over {
            // A client that keeps asking after being told to wait is at fault.
            if !peer.charge_faults(1, now) {
                return;
            }
            // Answered, not dropped: the client learns why and when to come back. The
            // stream is not read; at most the QUIC stream limit of these run at once.
            metrics::counter!(crate::metrics::STREAMS_RATE_LIMITED).increment(1);
            let ms = wait.as_millis().max(1);
            tokio::spawn(async move {
                let mut recv = recv;
                let _ = recv.stop(0u32.into());
                refuse(
                    &mut send,
                    None,
                    ErrorCode::RateLimited,
                    format!(
                        "this {who} opens request streams faster than {per_sec} a second; retry in {ms} ms"
                    ),
                )
                .await;
            });
            continue;
        }
        let shared = shared.clone();
        let peer = peer.clone();
        tokio::spawn(async move { serve_stream(shared, peer, send, recv).await });
    }
}

async fn serve_stream(
    shared: Arc<Shared>,
    peer: Arc<Peer>,
    mut send: SendStream,
    recv: RecvStream,
) {
    let conn = &peer.conn;
    // FORWARD and FORWARDED frames may be a little larger than any other
    // (sealpost_core::forward::max_forward_frame).
    let mut reader = FrameReader::new(recv, shared.limits.frame_limit())
        .allow_larger(
            forward_reader_limit(&shared.limits),
            &[FrameType::Forward, FrameType::Forwarded],
        )
        .with_deadline(shared.frames.clone())
        .with_peer(peer.clone());
    let first =
        match tokio::time::timeout(shared.limits.first_frame_timeout, reader.next_frame()).await {
            Err(_) => {
                metrics::counter!(crate::metrics::FRAME_TIMEOUTS).increment(1);
                peer.charge_faults(1, std::time::Instant::now());
                refuse(
                    &mut send,
                    Some(&mut reader),
                    ErrorCode::Timeout,
                    format!(
                        "no request frame within {} s",
                        shared.limits.first_frame_timeout.as_secs()
                    ),
                )
                .await;
                return;
            }
            Ok(Ok(Some(f))) => f,
            Ok(Ok(None)) => {
                let _ = send.finish();
                return;
            }
            Ok(Err(ReadError::Frame(e))) => {
                let (code, msg) = frame_error_reply(&e);
                refuse(&mut send, Some(&mut reader), code, msg).await;
                return;
            }
            Ok(Err(ReadError::Stream)) => return,
        };
    // Each handler is boxed: the task of a stream still waiting for its first frame then
    // stays small instead of being as large as the largest handler's state (thousands of
    // half-open streams are what an attacker holds).
    match first.ty {
        FrameType::Deposit => {
            shared.depositing.fetch_add(1, Ordering::Relaxed);
            Box::pin(deposit::run(&shared, &peer, first, reader, send)).await;
            shared.depositing.fetch_sub(1, Ordering::Relaxed);
        }
        FrameType::Subscribe => Box::pin(subscribe::run(&shared, conn, first, reader, send)).await,
        FrameType::Create => {
            let source = conn.remote_address().ip();
            Box::pin(control::create(&shared, source, first, reader, send)).await
        }
        FrameType::Delete => Box::pin(control::delete(&shared, conn, first, reader, send)).await,
        FrameType::Info => Box::pin(control::info(&shared, first, reader, send)).await,
        FrameType::Forward => Box::pin(forwarding::run(&shared, &peer, first, reader, send)).await,
        FrameType::Forwarded => {
            shared.depositing.fetch_add(1, Ordering::Relaxed);
            Box::pin(forwarded::run(&shared, first, reader, send)).await;
            shared.depositing.fetch_sub(1, Ordering::Relaxed);
        }
        other => {
            peer.charge_faults(1, std::time::Instant::now());
            refuse(
            &mut send,
            Some(&mut reader),
            ErrorCode::UnexpectedFrame,
            format!(
                "a stream must begin with CREATE, DEPOSIT, SUBSCRIBE, DELETE, INFO, FORWARD or FORWARDED, not {other:?}"
            ),
        )
        .await
        }
    }
}
