//! The async client library: connect to a relay (by pin or CA roots), create mailboxes,
//! deposit pipelined, subscribe to a stream of opened deliveries and acknowledge them.

use crate::stream::{FrameReader, ReadError};
use crate::tls::{self, TlsError, Trust};
use bytes::Bytes;
use quinn::{Connection, Endpoint, SendStream};
use sealpost_core::e2e::{self, E2eError, E2eSecretKey};
use sealpost_core::engine::Engine;
use sealpost_core::envelope::{Envelope, EnvelopeError};
use sealpost_core::frame::{self, Frame, FrameType};
use sealpost_core::invitation::{Invitation, RelayTrust};
use sealpost_core::keys::{
    DeliveryError, EXPORTER_LABEL, EXPORTER_LEN, MailboxKeys, ProofPurpose, RecipientSecret,
    open_delivery,
};
use sealpost_core::msg::{
    Create, Created, Delete, Deliver, ErrorMsg, InfoReply, MsgError, Subscribe, Subscribed,
    decode_deposit_result, encode_ack, frame_with,
};
use sealpost_core::padding::{MAX_BODY, SizeClasses};
use sealpost_core::status::DepositStatus;
use sealpost_core::{AeadKey, DepositId, RecipientId, Suite};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The largest frame a client accepts from a relay.
pub(crate) const CLIENT_MAX_FRAME: u32 = MAX_BODY + 1024;

/// Everything that can go wrong talking to a relay.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The address does not resolve or is malformed.
    #[error("cannot resolve relay address {addr:?}: {why}")]
    Address {
        /// The address given.
        addr: String,
        /// Why it failed.
        why: String,
    },
    /// TLS set-up failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The local UDP socket could not be opened.
    #[error("cannot open a UDP socket: {0}")]
    Socket(std::io::Error),
    /// Connecting failed.
    #[error("cannot connect to the relay: {0}")]
    Connect(String),
    /// The relay's certificate does not match the pin the client was given: the relay's key
    /// (or, for a pin of the whole certificate, its certificate) changed, or this is not the
    /// relay the pin belongs to.
    #[error(
        "the relay at {addr} presents a different {} than the invitation pins; ask the relay's \
         operator or the mailbox owner for a new invitation",
        if *.key { "key" } else { "certificate" }
    )]
    PinMismatch {
        /// The relay address.
        addr: String,
        /// Whether the pin was of the key (else of the whole certificate).
        key: bool,
    },
    /// No handshake completed in time: nothing answers at the address, or the network drops
    /// the packets.
    #[error("could not reach the relay at {addr} within {secs} s: is the relay running?")]
    Unreachable {
        /// The address tried.
        addr: String,
        /// How long the attempt waited.
        secs: f64,
    },
    /// The connection failed or was closed.
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// Writing to a stream failed.
    #[error("stream write failed: {0}")]
    Write(#[from] quinn::WriteError),
    /// The stream failed while reading.
    #[error("stream closed by the relay or the network")]
    Stream,
    /// The relay refused with an ERROR frame.
    #[error("{}", refusal(.0))]
    Relay(ErrorMsg),
    /// The relay sent something the protocol does not allow here.
    #[error("protocol violation by the relay: {0}")]
    Protocol(String),
    /// A control payload was malformed.
    #[error("malformed reply: {0}")]
    Msg(#[from] MsgError),
    /// A delivery did not authenticate.
    #[error(transparent)]
    Delivery(#[from] DeliveryError),
    /// A delivered envelope is malformed.
    #[error("delivered envelope is malformed: {0}")]
    Envelope(#[from] EnvelopeError),
    /// End-to-end sealing or opening failed.
    #[error(transparent)]
    E2e(#[from] E2eError),
    /// Sealing a forwarded request or opening its answer failed.
    #[error(transparent)]
    Forward(#[from] sealpost_core::forward::ForwardError),
    /// The operating system's random source failed.
    #[error("random source failed")]
    Rng,
}

/// An ERROR frame as a person reads it: `relay refused: CODE: advice (the relay said: ...)`,
/// the same wording as a refused deposit's status (`send` prints those with
/// [`DepositStatus::advice`](sealpost_core::status::DepositStatus::advice)).
fn refusal(e: &ErrorMsg) -> String {
    match e.known_code() {
        Some(code) => format!(
            "relay refused: {code}: {} (the relay said: {})",
            code.advice(),
            e.message
        ),
        None => format!("relay refused: {e}"),
    }
}

impl ClientError {
    /// Whether the relay ended the connection or stream because it is shutting down or
    /// restarting (QUIC close code [`sealpost_core::CLOSE_SHUTDOWN`], or `ERROR
    /// SHUTTING_DOWN`): reconnect ([`Client::reconnect`]) and resend what was not answered.
    pub fn is_relay_shutdown(&self) -> bool {
        match self {
            Self::Connection(quinn::ConnectionError::ApplicationClosed(c)) => {
                c.error_code == quinn::VarInt::from_u32(sealpost_core::CLOSE_SHUTDOWN)
            }
            Self::Relay(e) => {
                e.known_code() == Some(sealpost_core::status::ErrorCode::ShuttingDown)
            }
            _ => false,
        }
    }
}

impl From<ReadError> for ClientError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Frame(f) => Self::Protocol(f.to_string()),
            ReadError::Stream => Self::Stream,
        }
    }
}

fn split_host(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// How long a connection attempt may take before the relay counts as unreachable. Without it
/// a handshake to an address where nothing listens waits for the whole QUIC idle timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How often an otherwise quiet connection sends a QUIC PING. A relay that restarted learns
/// of a connection only when a packet of it arrives, and answers it with a stateless reset;
/// so this bounds how long a client waiting for a reply takes to notice a restart.
pub const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// How long [`Client::deposit`] and [`Client::info`] keep trying to reach a relay again after
/// their connection was lost to a restart.
pub const RESUME_WITHIN: Duration = Duration::from_secs(10);

/// A loss noticed this soon after reconnecting continues the previous loss's time limit
/// instead of starting a new one (see [`ResumeClock`]).
const SETTLED_AFTER: Duration = Duration::from_secs(1);

/// The time limit for reconnecting after a lost connection. It starts when the loss is
/// noticed, not when the request or `next()` began: a request may wait for hours (a
/// subscription on a quiet mailbox) or long on a stalled relay before its connection is lost.
/// A loss noticed within [`SETTLED_AFTER`] of reconnecting belongs to the same outage, so a
/// relay that takes connections and drops them at once is not tried forever; and a wait that
/// is cancelled and taken up again keeps its limit.
struct ResumeClock {
    within: Duration,
    /// When the outage being resumed from was noticed.
    lost_at: Option<tokio::time::Instant>,
    /// When a new connection last served again.
    resumed_at: Option<tokio::time::Instant>,
}

impl ResumeClock {
    fn new(within: Duration) -> Self {
        Self {
            within,
            lost_at: None,
            resumed_at: None,
        }
    }

    /// A loss was noticed now: the moment to give up reconnecting by, or `None` when that
    /// has passed.
    fn lost(&mut self) -> Option<tokio::time::Instant> {
        let now = tokio::time::Instant::now();
        let new_outage = match (self.lost_at, self.resumed_at) {
            (None, _) => true,
            (Some(lost), Some(resumed)) => {
                resumed > lost && now.duration_since(resumed) >= SETTLED_AFTER
            }
            (Some(_), None) => false,
        };
        if new_outage {
            self.lost_at = Some(now);
        }
        self.lost_at
            .map(|lost| lost + self.within)
            .filter(|deadline| now < *deadline)
    }

    /// A new connection serves again.
    fn resumed(&mut self) {
        self.resumed_at = Some(tokio::time::Instant::now());
    }
}

/// One QUIC connection and the endpoint it runs on.
pub(crate) struct Link {
    endpoint: Endpoint,
    pub(crate) conn: Connection,
    /// The relay's certificate pin as seen on this connection.
    pin: [u8; 32],
    /// The relay's key pin as seen on this connection.
    key_pin: [u8; 32],
    /// Counts reconnections, so that concurrent requests that lost the same connection
    /// reconnect once.
    generation: u64,
    /// Which of the client's relay addresses this connection goes to.
    addr: usize,
}

impl Link {
    /// Whether `err`, seen on this connection, means the connection is gone in a way a new
    /// connection may cure: the relay closed it to restart, or it was reset (the relay
    /// restarted and no longer knows it), or the relay fell silent for the idle timeout.
    /// Not: a close for abuse, a TLS or protocol failure, or our own close.
    fn lost_by(&self, err: &ClientError) -> bool {
        if err.is_relay_shutdown() {
            return true;
        }
        let reason = match err {
            ClientError::Connection(e)
            | ClientError::Write(quinn::WriteError::ConnectionLost(e)) => Some(e.clone()),
            ClientError::Stream | ClientError::Write(_) => self.conn.close_reason(),
            _ => None,
        };
        match reason {
            Some(quinn::ConnectionError::Reset | quinn::ConnectionError::TimedOut) => true,
            Some(quinn::ConnectionError::ApplicationClosed(c)) => {
                c.error_code == quinn::VarInt::from_u32(sealpost_core::CLOSE_SHUTDOWN)
            }
            _ => false,
        }
    }
}

/// Opens an endpoint and connects it to `addr` within `timeout`.
async fn open_link(
    addr: &str,
    trust: &Trust,
    local: Option<SocketAddr>,
    timeout: Duration,
    generation: u64,
) -> Result<Link, ClientError> {
    let resolved: SocketAddr = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| ClientError::Address {
            addr: addr.to_owned(),
            why: e.to_string(),
        })?
        .next()
        .ok_or_else(|| ClientError::Address {
            addr: addr.to_owned(),
            why: "no addresses".into(),
        })?;
    let bind: SocketAddr = match local {
        Some(l) => l,
        None if resolved.is_ipv6() => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        None => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
    };
    let mut endpoint = Endpoint::client(bind).map_err(ClientError::Socket)?;
    let (crypto, pin_check) = tls::client_crypto_checked(trust)?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(KEEP_ALIVE));
    transport.max_concurrent_uni_streams(0u32.into());
    transport.datagram_receive_buffer_size(None);
    cfg.transport_config(Arc::new(transport));
    endpoint.set_default_client_config(cfg);
    let host = split_host(addr);
    let server_name = if host.is_empty() { "localhost" } else { host };
    let connecting = endpoint
        .connect(resolved, server_name)
        .map_err(|e| ClientError::Connect(e.to_string()))?;
    let conn = match tokio::time::timeout(timeout, connecting).await {
        Err(_) => {
            return Err(ClientError::Unreachable {
                addr: addr.to_owned(),
                secs: timeout.as_secs_f64(),
            });
        }
        Ok(Err(_)) if pin_check.mismatched() => {
            return Err(ClientError::PinMismatch {
                addr: addr.to_owned(),
                key: matches!(trust, Trust::KeyPin(_)),
            });
        }
        Ok(r) => r.map_err(|e| ClientError::Connect(e.to_string()))?,
    };
    let cert = conn
        .peer_identity()
        .and_then(|id| {
            id.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .and_then(|chain| chain.first().cloned())
        .ok_or_else(|| ClientError::Protocol("relay presented no certificate".into()))?;
    let key_pin = tls::key_pin_of(&cert)
        .map_err(|e| ClientError::Protocol(format!("relay certificate does not parse: {e}")))?;
    Ok(Link {
        endpoint,
        conn,
        pin: tls::pin_of(&cert),
        key_pin,
        generation,
        addr: 0,
    })
}

/// How long a connection attempt to one relay address has before the next address is tried
/// alongside it (the "connection attempt delay" of RFC 8305's Happy Eyeballs): long enough
/// that a relay that answers at all usually wins, short enough that a dead address costs a
/// fraction of a second rather than [`CONNECT_TIMEOUT`]. An attempt that fails outright
/// starts the next at once.
pub const ATTEMPT_STAGGER: Duration = Duration::from_millis(250);

/// Connects to one of `addrs`, trying them in turn from index `start` (wrapping around),
/// each [`ATTEMPT_STAGGER`] after the previous one unless that failed sooner; attempts run
/// side by side and the first handshake to complete wins (the others are dropped). Gives up
/// after `timeout` in all. With one address this is [`open_link`].
async fn open_any(
    addrs: &[String],
    start: usize,
    trust: &Trust,
    local: Option<SocketAddr>,
    timeout: Duration,
    generation: u64,
) -> Result<Link, ClientError> {
    if let [addr] = addrs {
        return open_link(addr, trust, local, timeout, generation).await;
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let mut attempts = tokio::task::JoinSet::new();
    let launch = |attempts: &mut tokio::task::JoinSet<_>, i: usize| {
        let (addr, trust) = (addrs[i].clone(), trust.clone());
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        attempts.spawn(async move { (i, open_link(&addr, &trust, local, left, generation).await) });
    };
    let mut order = (0..addrs.len()).map(|i| (start + i) % addrs.len());
    let mut waiting = true;
    let mut errors = Vec::with_capacity(addrs.len());
    loop {
        // Nothing under way (at the start, or every attempt so far failed): the next now.
        if attempts.is_empty() {
            match order.next() {
                Some(i) => launch(&mut attempts, i),
                None => return Err(most_telling(addrs, errors, timeout)),
            }
        }
        tokio::select! {
            Some(done) = attempts.join_next() => match done {
                Ok((i, Ok(mut link))) => {
                    link.addr = i;
                    return Ok(link);
                }
                Ok((_, Err(e))) => errors.push(e),
                // A panicked attempt is a bug there; the other addresses may still answer.
                Err(e) => errors.push(ClientError::Connect(e.to_string())),
            },
            () = tokio::time::sleep(ATTEMPT_STAGGER), if waiting => match order.next() {
                Some(i) => launch(&mut attempts, i),
                None => waiting = false,
            },
            () = tokio::time::sleep_until(deadline) => {
                return Err(most_telling(addrs, errors, timeout));
            }
        }
    }
}

/// Of the errors of the attempts to several relays, the one that tells a person most: a pin
/// mismatch (the trust is wrong, or the address is not the deployment's), then any failure
/// other than not reaching a relay, then a refused connection; when no relay answered, one
/// [`ClientError::Unreachable`] naming them all.
fn most_telling(addrs: &[String], errors: Vec<ClientError>, timeout: Duration) -> ClientError {
    let rank = |e: &ClientError| match e {
        ClientError::PinMismatch { .. } => 0,
        ClientError::Connect(_) => 2,
        ClientError::Unreachable { .. } | ClientError::Address { .. } => 3,
        _ => 1,
    };
    match errors.into_iter().min_by_key(rank) {
        Some(e) if rank(&e) < 3 => e,
        _ => ClientError::Unreachable {
            addr: addrs.join(", "),
            secs: timeout.as_secs_f64(),
        },
    }
}

/// A starting index among `n` relay addresses, chosen at random so that the clients of a
/// deployment spread over its relays without a load balancer in front of them.
fn random_start(n: usize) -> usize {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 4];
    // Without randomness, starting at the first address is still correct, only less even.
    match ring::rand::SystemRandom::new().fill(&mut b) {
        Ok(()) => u32::from_le_bytes(b) as usize % n.max(1),
        Err(_) => 0,
    }
}

/// A connection to a relay, one of several of the same deployment when it was given
/// several addresses ([`Client::connect_any`]). When the connection is lost to a relay
/// restart or shutdown, [`Client::deposit`], [`Client::info`] and a [`ResumingSubscription`]
/// reconnect by themselves, to the next address that answers; the other requests report the
/// loss.
pub struct Client {
    link: std::sync::Mutex<Arc<Link>>,
    /// Held while reconnecting, so that one reconnection serves every request that lost the
    /// connection.
    renewing: tokio::sync::Mutex<()>,
    /// The relays' addresses; `Link::addr` indexes it.
    addrs: Vec<String>,
    trust: Trust,
    local: Option<SocketAddr>,
}

impl Client {
    /// Connects to `addr` (`host:port`), trusting the relay as `trust` says.
    pub async fn connect(addr: &str, trust: Trust) -> Result<Self, ClientError> {
        Self::connect_from(addr, trust, None).await
    }

    /// Connects to one of `addrs`, the relays of one deployment (sharing one store and one
    /// certificate or CA, so any of them serves every mailbox), trusting them as `trust`
    /// says. The first address tried is chosen at random, so that the clients of a
    /// deployment spread over its relays; the others follow [`ATTEMPT_STAGGER`] apart (or
    /// at once when an attempt fails), and the first to answer wins. A lost connection is
    /// replaced the same way, starting from the address after the lost one.
    ///
    /// Fails when `addrs` is empty, or when no relay answers within [`CONNECT_TIMEOUT`]
    /// ([`ClientError::Unreachable`] naming them all).
    pub async fn connect_any(addrs: &[String], trust: Trust) -> Result<Self, ClientError> {
        Self::connect_any_from(addrs, trust, None).await
    }

    /// [`Client::connect_any`] from a chosen local address (`None` lets the system choose).
    pub async fn connect_any_from(
        addrs: &[String],
        trust: Trust,
        local: Option<SocketAddr>,
    ) -> Result<Self, ClientError> {
        Self::connect_any_starting(addrs, random_start(addrs.len()), trust, local).await
    }

    /// [`Client::connect_any`], trying `addrs[first]` first instead of an address chosen at
    /// random (for a client that should use a particular relay while it is up, such as a load
    /// generator that deposits through one relay and receives through another). A lost
    /// connection is replaced as with [`Client::connect_any`]. `first` past the end wraps.
    pub async fn connect_any_first(
        addrs: &[String],
        first: usize,
        trust: Trust,
    ) -> Result<Self, ClientError> {
        Self::connect_any_starting(addrs, first % addrs.len().max(1), trust, None).await
    }

    async fn connect_any_starting(
        addrs: &[String],
        start: usize,
        trust: Trust,
        local: Option<SocketAddr>,
    ) -> Result<Self, ClientError> {
        if addrs.is_empty() {
            return Err(ClientError::Address {
                addr: String::new(),
                why: "no relay address given".into(),
            });
        }
        let link = open_any(addrs, start, &trust, local, CONNECT_TIMEOUT, 0).await?;
        Ok(Self {
            link: std::sync::Mutex::new(Arc::new(link)),
            renewing: tokio::sync::Mutex::new(()),
            addrs: addrs.to_vec(),
            trust,
            local,
        })
    }

    /// [`Client::connect`] from a chosen local address (for example a second loopback
    /// address, 127.0.0.2, to appear as another source); `None` lets the system choose.
    /// Fails with [`ClientError::Unreachable`] when no handshake completes within
    /// [`CONNECT_TIMEOUT`].
    pub async fn connect_from(
        addr: &str,
        trust: Trust,
        local: Option<SocketAddr>,
    ) -> Result<Self, ClientError> {
        Self::connect_any_from(&[addr.to_owned()], trust, local).await
    }

    /// The connection in use.
    fn link(&self) -> Arc<Link> {
        self.link.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces `failed` by a new connection, trying for at most `within` (the wait for
    /// another request's reconnection included); when another request already replaced it,
    /// returns that one. With several relay addresses, the one after `failed`'s is tried
    /// first, then the others (the failed one last), as [`open_any`] does.
    ///
    /// The replaced connection is not closed here: it may still be alive (a relay that
    /// answered `SHUTTING_DOWN` on one stream drains the others), and requests still running
    /// on it finish there. It closes when the last of them lets go of it.
    async fn renew(&self, failed: &Link, within: Duration) -> Result<Arc<Link>, ClientError> {
        let deadline = tokio::time::Instant::now() + within;
        // Another request may be reconnecting with a longer time limit than ours.
        let one = tokio::time::timeout_at(deadline, self.renewing.lock()).await;
        let current = self.link();
        if current.generation != failed.generation {
            return Ok(current);
        }
        let Ok(_one) = one else {
            return Err(self.unreachable_for(within));
        };
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let timeout = left.clamp(Duration::from_millis(200), CONNECT_TIMEOUT);
            let attempt = open_any(
                &self.addrs,
                failed.addr + 1,
                &self.trust,
                self.local,
                timeout,
                failed.generation + 1,
            )
            .await;
            match attempt {
                Ok(link) => {
                    if link.addr != failed.addr {
                        tracing::debug!("moved to another relay of the deployment");
                    }
                    let link = Arc::new(link);
                    *self.link.lock().unwrap_or_else(|p| p.into_inner()) = link.clone();
                    return Ok(link);
                }
                // A connection refused or unreachable may be a relay still starting; a
                // certificate or address problem will not cure itself.
                Err(e @ (ClientError::Connect(_) | ClientError::Unreachable { .. }))
                    if tokio::time::Instant::now() + Duration::from_millis(100) < deadline =>
                {
                    tracing::debug!(error = %e, "relay not back yet");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                // Name the whole wait, not the last attempt's share of it.
                Err(ClientError::Unreachable { .. }) => return Err(self.unreachable_for(within)),
                Err(e) => return Err(e),
            }
        }
    }

    /// The relay could not be reached again within `within`.
    fn unreachable_for(&self, within: Duration) -> ClientError {
        ClientError::Unreachable {
            addr: self.addrs.join(", "),
            secs: (within.as_secs_f64() * 10.0).round() / 10.0,
        }
    }

    /// Runs `op` on the connection, and once more on a new one each time the connection is
    /// lost to a relay restart, for at most [`RESUME_WITHIN`] from when the loss is noticed
    /// (see [`ResumeClock`]). Only for requests that are safe to send twice.
    pub(crate) async fn retrying<'a, T, F, Fut>(&'a self, op: F) -> Result<T, ClientError>
    where
        F: Fn(Arc<Link>) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>> + 'a,
    {
        let mut clock = ResumeClock::new(RESUME_WITHIN);
        let mut link = self.link();
        loop {
            match op(link.clone()).await {
                Err(e) if link.lost_by(&e) => {
                    let Some(deadline) = clock.lost() else {
                        return Err(e);
                    };
                    tracing::debug!(error = %e, "connection lost; reconnecting");
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    link = self.renew(&link, left).await?;
                    clock.resumed();
                }
                other => return other,
            }
        }
    }

    /// Whether the relay closed this connection because it is shutting down or restarting
    /// (close code [`sealpost_core::CLOSE_SHUTDOWN`]); a stream error seen then means
    /// "reconnect", whatever the stream itself reported.
    pub fn relay_shut_down(&self) -> bool {
        matches!(
            self.link().conn.close_reason(),
            Some(quinn::ConnectionError::ApplicationClosed(c))
                if c.error_code == quinn::VarInt::from_u32(sealpost_core::CLOSE_SHUTDOWN)
        )
    }

    /// A new connection to the same relays with the same trust, retried every 200 ms until
    /// it succeeds or `within` has passed (a restarting relay is back within seconds).
    pub async fn reconnect(&self, within: Duration) -> Result<Self, ClientError> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match Self::connect_any_from(&self.addrs, self.trust.clone(), self.local).await {
                Ok(c) => return Ok(c),
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// Connects with a pinned certificate.
    pub async fn connect_pinned(addr: &str, pin: [u8; 32]) -> Result<Self, ClientError> {
        Self::connect(addr, Trust::Pin(pin)).await
    }

    /// Connects to a relay as an invitation or mailbox file says to trust it, with the
    /// built-in CA roots ([`tls::default_roots`]) when it asks for CA trust.
    pub async fn connect_trusting(addr: &str, trust: RelayTrust) -> Result<Self, ClientError> {
        Self::connect(addr, Trust::from_relay_trust(trust, tls::default_roots)).await
    }

    /// [`Client::connect_any`] to the relays an invitation or mailbox file names, trusting
    /// them as it says (with the built-in CA roots when it asks for CA trust).
    pub async fn connect_trusting_any(
        addrs: &[String],
        trust: RelayTrust,
    ) -> Result<Self, ClientError> {
        Self::connect_any(addrs, Trust::from_relay_trust(trust, tls::default_roots)).await
    }

    /// The relay's key pin (SHA-256 of its certificate's SubjectPublicKeyInfo), as seen on
    /// the connection in use.
    pub fn key_pin(&self) -> [u8; 32] {
        self.link().key_pin
    }

    /// The QUIC connection in use (a new one after a reconnection).
    pub fn connection(&self) -> Connection {
        self.link().conn.clone()
    }

    /// The relay's certificate pin, as seen on the connection in use.
    pub fn pin(&self) -> [u8; 32] {
        self.link().pin
    }

    /// The address of the relay the connection in use goes to.
    pub fn addr(&self) -> &str {
        &self.addrs[self.link().addr]
    }

    /// Every relay address this client may use, in the order given.
    pub fn addrs(&self) -> &[String] {
        &self.addrs
    }

    /// Closes the connection and waits briefly for the relay to learn of it.
    pub async fn close(self) {
        let link = self.link();
        link.conn.close(0u32.into(), b"done");
        let _ = tokio::time::timeout(Duration::from_secs(1), link.endpoint.wait_idle()).await;
    }

    /// Opens a stream on `conn`, sends `frame`, finishes, and returns the reply frame of type
    /// `expect`.
    pub(crate) async fn request_on(
        conn: &Connection,
        frame: Bytes,
        expect: FrameType,
    ) -> Result<Frame, ClientError> {
        let (mut send, recv) = conn.open_bi().await?;
        send.write_all(&frame).await?;
        let _ = send.finish();
        let mut reader = FrameReader::new(recv, CLIENT_MAX_FRAME);
        let reply = reader
            .next_frame()
            .await?
            .ok_or_else(|| ClientError::Protocol("stream ended without a reply".into()))?;
        expect_frame(reply, expect)
    }

    /// [`Client::request_on`] the connection in use.
    async fn request(&self, frame: Bytes, expect: FrameType) -> Result<Frame, ClientError> {
        Self::request_on(&self.link().conn, frame, expect).await
    }

    /// Asks for the relay's version and limits (again on a new connection if the relay
    /// restarts meanwhile).
    pub async fn info(&self) -> Result<InfoReply, ClientError> {
        let f = self
            .retrying(|link| async move {
                let req = frame::encode_to_bytes(FrameType::Info, &[]);
                Self::request_on(&link.conn, req, FrameType::InfoReply).await
            })
            .await?;
        Ok(InfoReply::decode(&f.payload)?)
    }

    /// [`Client::create`], trying again every 100 ms while the relay answers
    /// `ERROR RATE_LIMITED` (it limits how fast one address creates mailboxes), for at most
    /// `patience`.
    pub async fn create_patiently(
        &self,
        suite: Suite,
        patience: Duration,
    ) -> Result<Mailbox, ClientError> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            match self.create(suite).await {
                Err(ClientError::Relay(m))
                    if m.known_code() == Some(sealpost_core::status::ErrorCode::RateLimited)
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => return other,
            }
        }
    }

    /// Creates a mailbox. The deposit key, the recipient secret and the end-to-end key pair are
    /// generated here; only the first two go to the relay.
    pub async fn create(&self, suite: Suite) -> Result<Mailbox, ClientError> {
        let deposit_key = AeadKey::generate(suite).map_err(|_| ClientError::Rng)?;
        let recipient_secret = RecipientSecret::generate().map_err(|_| ClientError::Rng)?;
        let req = Create {
            suite,
            deposit_key: *deposit_key.expose(),
            recipient_secret: recipient_secret.0,
        };
        let f = self
            .request(
                frame_with(FrameType::Create, |b| req.encode(b)),
                FrameType::Created,
            )
            .await?;
        let created = Created::decode(&f.payload)?;
        let (e2e_secret, _) = e2e::generate_keypair();
        // Invitations trust the relay as this client did, but pin the key rather than the
        // certificate, so that they survive renewals.
        let trust = match self.trust {
            Trust::Roots(_) => RelayTrust::CaForHost,
            Trust::Pin(_) | Trust::KeyPin(_) => RelayTrust::KeyPin(self.key_pin()),
        };
        Ok(Mailbox {
            relays: self.addrs.clone(),
            trust,
            suite,
            recipient_id: created.recipient_id,
            deposit_id: created.deposit_id,
            deposit_key,
            recipient_secret,
            e2e_secret,
            sizes: created.limits.sizes,
            forward_key: None,
        })
    }

    /// Opens a deposit stream: send envelopes on one half, read results on the other.
    pub async fn open_deposit(&self) -> Result<(DepositSender, DepositResults), ClientError> {
        Self::open_deposit_on(&self.link().conn).await
    }

    async fn open_deposit_on(
        conn: &Connection,
    ) -> Result<(DepositSender, DepositResults), ClientError> {
        let (send, recv) = conn.open_bi().await?;
        Ok((
            DepositSender { send },
            DepositResults {
                reader: FrameReader::new(recv, CLIENT_MAX_FRAME),
                retry_after: None,
            },
        ))
    }

    /// Deposits one envelope on its own stream and waits for its status. If the relay
    /// restarts before answering, the envelope is sent again on a new connection (for at most
    /// [`RESUME_WITHIN`]): safe, since an envelope the relay stored before comes back
    /// `DUPLICATE`, which is a success.
    pub async fn deposit(&self, envelope: Bytes) -> Result<DepositStatus, ClientError> {
        Ok(self.deposit_once(&envelope).await?.0)
    }

    /// The status of one envelope and, when it is `RATE_LIMITED`, the relay's retry hint.
    async fn deposit_once(
        &self,
        envelope: &Bytes,
    ) -> Result<(DepositStatus, Option<Duration>), ClientError> {
        self.retrying(|link| async move { Self::deposit_on(&link.conn, envelope).await })
            .await
    }

    async fn deposit_on(
        conn: &Connection,
        envelope: &Bytes,
    ) -> Result<(DepositStatus, Option<Duration>), ClientError> {
        let (mut tx, mut rx) = Self::open_deposit_on(conn).await?;
        tx.send(envelope).await?;
        tx.finish();
        let statuses = rx
            .next()
            .await?
            .ok_or_else(|| ClientError::Protocol("deposit stream ended without a result".into()))?;
        let status = statuses
            .first()
            .copied()
            .ok_or_else(|| ClientError::Protocol("empty DEPOSIT_RESULT".into()))?;
        Ok((status, rx.retry_after()))
    }

    /// [`Client::deposit`], sending the envelope again while the relay answers
    /// `RATE_LIMITED`, after the wait it names, for at most `patience` in all. Resending is
    /// safe: an envelope stored meanwhile comes back `DUPLICATE`. Returns the last status
    /// and how many times the envelope was sent.
    pub async fn deposit_patiently(
        &self,
        envelope: Bytes,
        patience: Duration,
    ) -> Result<(DepositStatus, u32), ClientError> {
        let deadline = tokio::time::Instant::now() + patience;
        let mut sent = 0;
        loop {
            let (status, hint) = self.deposit_once(&envelope).await?;
            sent += 1;
            if status != DepositStatus::RateLimited {
                return Ok((status, sent));
            }
            // A relay that sends no hint gets a modest pause rather than a busy loop.
            let wait = hint
                .unwrap_or(Duration::from_millis(100))
                .max(Duration::from_millis(1));
            if tokio::time::Instant::now() + wait > deadline {
                return Ok((status, sent));
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Subscribes to a mailbox; at most `window` deliveries are unacknowledged at a time.
    /// The subscription ends with the connection; [`Client::subscribe_resuming`] outlives
    /// relay restarts.
    pub async fn subscribe(
        &self,
        access: &MailboxAccess,
        window: u32,
    ) -> Result<Subscription, ClientError> {
        Self::subscribe_on(&self.link().conn, access, window).await
    }

    /// A subscription that survives relay restarts: when the connection is lost to one, it
    /// reconnects (trying for at most `patience` from when the loss is noticed, however long
    /// [`ResumingSubscription::next`] had been waiting before), subscribes again, and carries
    /// on from the acknowledged position, passing on no delivery twice.
    pub async fn subscribe_resuming(
        &self,
        access: &MailboxAccess,
        window: u32,
        patience: Duration,
    ) -> Result<ResumingSubscription<'_>, ClientError> {
        let link = self.link();
        let inner = Self::subscribe_on(&link.conn, access, window).await?;
        Ok(ResumingSubscription {
            client: self,
            link,
            window,
            clock: ResumeClock::new(patience),
            pending: inner.pending_at_start(),
            inner,
            returned: 0,
            acked: 0,
            seen_here: 0,
            acked_here: 0,
        })
    }

    async fn subscribe_on(
        conn: &Connection,
        access: &MailboxAccess,
        window: u32,
    ) -> Result<Subscription, ClientError> {
        let exp = exporter(conn)?;
        let proof = access
            .keys
            .auth
            .proof(ProofPurpose::Subscribe, &access.recipient_id, &exp);
        let req = Subscribe {
            recipient_id: access.recipient_id,
            proof,
            window,
        };
        let (mut send, recv) = conn.open_bi().await?;
        send.write_all(&frame_with(FrameType::Subscribe, |b| req.encode(b)))
            .await?;
        let mut reader = FrameReader::new(recv, CLIENT_MAX_FRAME);
        let first = reader.next_frame().await?.ok_or_else(|| {
            ClientError::Protocol("subscribe stream ended without a reply".into())
        })?;
        let hello = Subscribed::decode(&expect_frame(first, FrameType::Subscribed)?.payload)?;
        Ok(Subscription {
            send,
            reader,
            access: access.clone(),
            pending: hello.pending,
            window: hello.window,
        })
    }

    /// Deletes a mailbox and everything in it.
    pub async fn delete(&self, access: &MailboxAccess) -> Result<(), ClientError> {
        let link = self.link();
        let exp = exporter(&link.conn)?;
        let req = Delete {
            recipient_id: access.recipient_id,
            proof: access
                .keys
                .auth
                .proof(ProofPurpose::Delete, &access.recipient_id, &exp),
        };
        Self::request_on(
            &link.conn,
            frame_with(FrameType::Delete, |b| req.encode(b)),
            FrameType::Deleted,
        )
        .await?;
        Ok(())
    }
}

/// The TLS exporter value of `conn`, which proofs of mailbox ownership are bound to.
fn exporter(conn: &Connection) -> Result<[u8; EXPORTER_LEN], ClientError> {
    let mut out = [0u8; EXPORTER_LEN];
    conn.export_keying_material(&mut out, EXPORTER_LABEL, b"")
        .map_err(|_| ClientError::Protocol("TLS exporter unavailable".into()))?;
    Ok(out)
}

pub(crate) fn expect_frame(f: Frame, expect: FrameType) -> Result<Frame, ClientError> {
    if f.ty == FrameType::Error {
        return Err(ClientError::Relay(ErrorMsg::decode(&f.payload)?));
    }
    if f.ty != expect {
        return Err(ClientError::Protocol(format!(
            "expected {expect:?}, got {:?}",
            f.ty
        )));
    }
    Ok(f)
}

/// The sending half of a deposit stream.
pub struct DepositSender {
    send: SendStream,
}

impl DepositSender {
    /// Sends one envelope without waiting for its result.
    pub async fn send(&mut self, envelope: &Bytes) -> Result<(), ClientError> {
        let header = Bytes::copy_from_slice(&frame::header(FrameType::Deposit, envelope.len()));
        self.send
            .write_all_chunks(&mut [header, envelope.clone()])
            .await?;
        Ok(())
    }

    /// Sends raw bytes as they are (for tests of malformed input).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.send.write_all(bytes).await?;
        Ok(())
    }

    /// Ends the stream: the relay answers what it has and closes.
    pub fn finish(&mut self) {
        let _ = self.send.finish();
    }
}

/// The receiving half of a deposit stream.
pub struct DepositResults {
    reader: FrameReader,
    retry_after: Option<std::time::Duration>,
}

impl DepositResults {
    /// The statuses of the next envelopes, in the order they were sent; `None` at the end of
    /// the stream. An ERROR from the relay is returned as [`ClientError::Relay`].
    pub async fn next(&mut self) -> Result<Option<Vec<DepositStatus>>, ClientError> {
        let Some(f) = self.reader.next_frame().await? else {
            return Ok(None);
        };
        let f = expect_frame(f, FrameType::DepositResult)?;
        let r = decode_deposit_result(&f.payload)?;
        self.retry_after = r
            .retry_after_ms
            .map(|ms| std::time::Duration::from_millis(ms.into()));
        Ok(Some(r.statuses))
    }

    /// For the statuses [`next`](Self::next) returned last: how long to wait before sending
    /// the `RATE_LIMITED` ones again (`None` when none was rate-limited).
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        self.retry_after
    }
}

/// What a recipient needs to subscribe and open deliveries.
#[derive(Clone, Debug)]
pub struct MailboxAccess {
    /// The mailbox.
    pub recipient_id: RecipientId,
    /// Its deposit id (the end-to-end AAD).
    pub deposit_id: DepositId,
    /// Delivery and auth keys derived from the recipient secret.
    pub keys: MailboxKeys,
}

/// One delivered envelope, opened from the delivery layer (still end-to-end sealed).
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Its sequence number; acknowledge it when processed.
    pub seq: u64,
    /// The envelope as the sender built it.
    pub envelope: Envelope,
}

/// A live subscription.
pub struct Subscription {
    send: SendStream,
    reader: FrameReader,
    access: MailboxAccess,
    pending: u64,
    window: u32,
}

impl Subscription {
    /// Envelopes waiting when the subscription started.
    pub fn pending_at_start(&self) -> u64 {
        self.pending
    }

    /// The window the relay honours.
    pub fn window(&self) -> u32 {
        self.window
    }

    /// The next delivery; `None` when the relay ends the stream cleanly.
    pub async fn next(&mut self) -> Result<Option<Delivery>, ClientError> {
        let Some(d) = self.next_unopened().await? else {
            return Ok(None);
        };
        // One delivery at a time: ring's single-message code is the fastest engine for that.
        let plain = open_delivery(
            &Engine::ring(),
            &self.access.keys.deliver,
            &self.access.recipient_id,
            d.seq,
            &d.nonce,
            &d.sealed,
        )?;
        let envelope = Envelope::parse_any_size(Bytes::from(plain))?;
        Ok(Some(Delivery {
            seq: d.seq,
            envelope,
        }))
    }

    /// The next DELIVER frame as it arrived, without opening its delivery layer. Only for
    /// tools that measure the transport (the load generator's baseline forwarder sends
    /// unsealed frames); recipients use [`Subscription::next`].
    pub async fn next_unopened(&mut self) -> Result<Option<Deliver>, ClientError> {
        let Some(f) = self.reader.next_frame().await? else {
            return Ok(None);
        };
        let f = expect_frame(f, FrameType::Deliver)?;
        Ok(Some(Deliver::decode(f.payload)?))
    }

    /// Acknowledges every delivery up to and including `seq`.
    pub async fn ack(&mut self, seq: u64) -> Result<(), ClientError> {
        let f = frame_with(FrameType::Ack, |b| encode_ack(seq, b));
        self.send.write_all(&f).await?;
        Ok(())
    }

    /// Ends the subscription from the client side.
    pub fn finish(&mut self) {
        let _ = self.send.finish();
    }
}

/// A subscription that reconnects and subscribes again when a relay restart ends its
/// connection (see [`Client::subscribe_resuming`]).
///
/// Acknowledgements are cumulative and a restarted relay delivers again everything not
/// acknowledged, with the same sequence numbers. So after resuming, deliveries up to the last
/// one returned are not returned again: those already acknowledged are acknowledged once more
/// (the acknowledgement may have been lost with the connection), the others wait for the
/// caller's acknowledgement as before. An acknowledgement is only sent for sequence numbers
/// delivered on the current stream (the relay refuses others), the rest is sent as they come.
pub struct ResumingSubscription<'c> {
    client: &'c Client,
    /// The connection `inner` runs on: the two change together, since a stream's error is
    /// judged by its own connection.
    link: Arc<Link>,
    window: u32,
    /// Counts the reconnection time limit from the loss.
    clock: ResumeClock,
    pending: u64,
    inner: Subscription,
    /// Highest sequence number returned to the caller.
    returned: u64,
    /// Highest sequence number the caller acknowledged.
    acked: u64,
    /// Highest sequence number delivered on the current stream.
    seen_here: u64,
    /// Highest acknowledgement sent on the current stream.
    acked_here: u64,
}

impl ResumingSubscription<'_> {
    /// Envelopes waiting when the subscription first started.
    pub fn pending_at_start(&self) -> u64 {
        self.pending
    }

    /// The next delivery; `None` when the relay ends the stream cleanly.
    ///
    /// Cancel-safe: a call cancelled while resuming (for example by a timeout) leaves the
    /// subscription as it was or resumed, and the next call carries on, within the same time
    /// limit.
    pub async fn next(&mut self) -> Result<Option<Delivery>, ClientError> {
        loop {
            let d = match self.inner.next().await {
                Err(e) if self.link.lost_by(&e) => {
                    let Some(deadline) = self.clock.lost() else {
                        return Err(e);
                    };
                    self.resume(deadline).await?;
                    continue;
                }
                other => other?,
            };
            let Some(d) = d else { return Ok(None) };
            self.seen_here = self.seen_here.max(d.seq);
            if d.seq <= self.returned {
                // Returned before the restart: the caller has it.
                self.flush_ack().await?;
                continue;
            }
            self.returned = d.seq;
            return Ok(Some(d));
        }
    }

    /// Acknowledges every delivery up to and including `seq`.
    pub async fn ack(&mut self, seq: u64) -> Result<(), ClientError> {
        self.acked = self.acked.max(seq);
        self.flush_ack().await
    }

    /// Sends what the caller acknowledged and the current stream allows. A loss of the
    /// connection is not an error here: the next [`next`](Self::next) resumes, and the
    /// acknowledgement goes out on the new stream.
    async fn flush_ack(&mut self) -> Result<(), ClientError> {
        let seq = self.acked.min(self.seen_here);
        if seq <= self.acked_here {
            return Ok(());
        }
        match self.inner.ack(seq).await {
            Ok(()) => {
                self.acked_here = seq;
                Ok(())
            }
            Err(e) if self.link.lost_by(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// A new connection and subscription after the old connection was lost.
    ///
    /// Nothing in `self` changes before the new subscription is in hand, and then everything
    /// at once (no await in between): cancelled at any await, the old stream and its
    /// connection stay paired, and the next call notices the loss again.
    async fn resume(&mut self, deadline: tokio::time::Instant) -> Result<(), ClientError> {
        let access = self.inner.access.clone();
        let mut link = self.link.clone();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            link = self.client.renew(&link, left).await?;
            match Client::subscribe_on(&link.conn, &access, self.window).await {
                Ok(sub) => {
                    tracing::debug!("subscription resumed after a lost connection");
                    self.link = link;
                    self.inner = sub;
                    self.seen_here = 0;
                    self.acked_here = 0;
                    self.clock.resumed();
                    return Ok(());
                }
                Err(e) if link.lost_by(&e) && tokio::time::Instant::now() < deadline => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Ends the subscription from the client side.
    pub fn finish(&mut self) {
        self.inner.finish()
    }
}

/// A recipient's complete mailbox credentials, as kept in its mailbox file.
#[derive(Debug)]
pub struct Mailbox {
    /// The relays' addresses (1 to [`MAX_RELAYS`](sealpost_core::invitation::MAX_RELAYS)),
    /// any of which serves the mailbox.
    pub relays: Vec<String>,
    /// How to authenticate the relay.
    pub trust: RelayTrust,
    /// The mailbox's suite.
    pub suite: Suite,
    /// The recipient id.
    pub recipient_id: RecipientId,
    /// The deposit id.
    pub deposit_id: DepositId,
    /// The deposit key (shared with senders through the invitation).
    pub deposit_key: AeadKey,
    /// The recipient secret (shared with the relay at CREATE).
    pub recipient_secret: RecipientSecret,
    /// The end-to-end secret key (never leaves the recipient).
    pub e2e_secret: E2eSecretKey,
    /// The body sizes the relay allowed at creation.
    pub sizes: SizeClasses,
    /// The relays' forwarding public key, when known ([`Client::forward_key`]): invitations
    /// then carry it (version 4), so that senders may deposit through another relay.
    pub forward_key: Option<[u8; 32]>,
}

impl Mailbox {
    /// The invitation senders need.
    pub fn invitation(&self) -> Invitation {
        Invitation {
            relays: self.relays.clone(),
            trust: self.trust,
            deposit_id: self.deposit_id,
            deposit_key: self.deposit_key.clone(),
            e2e_public: self.e2e_secret.public_key(),
            forward_key: self.forward_key,
        }
    }

    /// What subscribing needs.
    pub fn access(&self) -> MailboxAccess {
        MailboxAccess {
            recipient_id: self.recipient_id,
            deposit_id: self.deposit_id,
            keys: MailboxKeys::derive(self.suite, &self.recipient_secret),
        }
    }

    /// Opens a delivery's end-to-end layer.
    pub fn open(&self, delivery: &Delivery) -> Result<zeroize::Zeroizing<Vec<u8>>, ClientError> {
        Ok(e2e::open_envelope(
            &self.e2e_secret,
            &self.deposit_id,
            &delivery.envelope,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sealpost_relay::store::memory::MemoryStore;
    use sealpost_relay::{RelayConfig, RelayLimits};

    /// An in-process relay on loopback and a client pinned to it.
    async fn relay_and_client(dir: &std::path::Path) -> (sealpost_relay::RelayHandle, Client) {
        let cfg = RelayConfig::new("127.0.0.1:0".parse().unwrap(), dir.to_owned());
        let store = Arc::new(MemoryStore::new(RelayLimits::default().quotas()));
        let relay = sealpost_relay::start(cfg, store).await.unwrap();
        let addr = relay.local_addr().to_string();
        let client = Client::connect_pinned(&addr, relay.pin()).await.unwrap();
        (relay, client)
    }

    /// A request that needs a new connection while another request holds the reconnection
    /// lock waits no longer than its own time limit.
    #[tokio::test]
    async fn waiting_for_another_reconnection_keeps_to_the_time_limit() {
        let dir = tempfile::tempdir().unwrap();
        let (relay, client) = relay_and_client(dir.path()).await;
        let failed = client.link();
        let _held = client.renewing.lock().await;
        let waited = tokio::time::timeout(
            Duration::from_secs(10),
            client.renew(&failed, Duration::from_millis(100)),
        )
        .await
        .expect("renew gave up at its own time limit");
        assert!(
            matches!(waited, Err(ClientError::Unreachable { .. })),
            "{:?}",
            waited.map(|l| l.generation)
        );
        relay.shutdown().await;
    }

    /// The connection a reconnection replaces stays open for the requests still on it.
    #[tokio::test]
    async fn a_replaced_connection_still_serves_its_requests() {
        let dir = tempfile::tempdir().unwrap();
        let (relay, client) = relay_and_client(dir.path()).await;
        let old = client.link();
        let new = client.renew(&old, Duration::from_secs(5)).await.unwrap();
        assert_eq!(new.generation, old.generation + 1);
        assert!(
            old.conn.close_reason().is_none(),
            "not closed by the client"
        );
        let req = frame::encode_to_bytes(FrameType::Info, &[]);
        Client::request_on(&old.conn, req, FrameType::InfoReply)
            .await
            .expect("the old connection still answers");
        relay.shutdown().await;
    }

    /// Tried in order from the first address, a dead one is passed over after the stagger,
    /// long before its handshake would time out; with none answering, the error names all.
    #[tokio::test]
    async fn attempts_move_on_from_a_dead_address() {
        let dir = tempfile::tempdir().unwrap();
        let (relay, client) = relay_and_client(dir.path()).await;
        let hole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let dead = hole.local_addr().unwrap().to_string();
        let addrs = [dead.clone(), relay.local_addr().to_string()];
        let trust = Trust::Pin(relay.pin());
        let link = tokio::time::timeout(
            Duration::from_secs(10),
            open_any(&addrs, 0, &trust, None, Duration::from_secs(30), 7),
        )
        .await
        .expect("not held up by the dead address")
        .unwrap();
        assert_eq!((link.addr, link.generation), (1, 7));
        let hole2 = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let both_dead = [dead.clone(), hole2.local_addr().unwrap().to_string()];
        let err = open_any(&both_dead, 1, &trust, None, Duration::from_millis(600), 0)
            .await
            .err()
            .unwrap();
        match err {
            ClientError::Unreachable { addr, .. } => assert_eq!(addr, both_dead.join(", ")),
            other => panic!("{other}"),
        }
        client.close().await;
        relay.shutdown().await;
    }
}
