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
use sealpost_core::invitation::Invitation;
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
const CLIENT_MAX_FRAME: u32 = MAX_BODY + 1024;

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
    /// restarting (QUIC close code [`crate::server::CLOSE_SHUTDOWN`], or `ERROR
    /// SHUTTING_DOWN`): reconnect ([`Client::reconnect`]) and resend what was not answered.
    pub fn is_relay_shutdown(&self) -> bool {
        match self {
            Self::Connection(quinn::ConnectionError::ApplicationClosed(c)) => {
                c.error_code == quinn::VarInt::from_u32(crate::server::CLOSE_SHUTDOWN)
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

/// A connection to a relay.
pub struct Client {
    endpoint: Endpoint,
    conn: Connection,
    addr: String,
    pin: [u8; 32],
    trust: Trust,
}

impl Client {
    /// Connects to `addr` (`host:port`), trusting the relay as `trust` says.
    pub async fn connect(addr: &str, trust: Trust) -> Result<Self, ClientError> {
        Self::connect_from(addr, trust, None).await
    }

    /// [`Client::connect`] from a chosen local address (for example a second loopback
    /// address, 127.0.0.2, to appear as another source); `None` lets the system choose.
    pub async fn connect_from(
        addr: &str,
        trust: Trust,
        local: Option<SocketAddr>,
    ) -> Result<Self, ClientError> {
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
        let mut cfg = quinn::ClientConfig::new(Arc::new(tls::client_crypto(&trust)?));
        let trust_kept = trust.clone();
        let mut transport = quinn::TransportConfig::default();
        transport.keep_alive_interval(Some(Duration::from_secs(10)));
        transport.max_concurrent_uni_streams(0u32.into());
        cfg.transport_config(Arc::new(transport));
        endpoint.set_default_client_config(cfg);
        let host = split_host(addr);
        let server_name = if host.is_empty() { "localhost" } else { host };
        let conn = endpoint
            .connect(resolved, server_name)
            .map_err(|e| ClientError::Connect(e.to_string()))?
            .await
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        let pin = conn
            .peer_identity()
            .and_then(|id| {
                id.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                    .ok()
            })
            .and_then(|chain| chain.first().map(tls::pin_of))
            .ok_or_else(|| ClientError::Protocol("relay presented no certificate".into()))?;
        Ok(Self {
            endpoint,
            conn,
            addr: addr.to_owned(),
            pin,
            trust: trust_kept,
        })
    }

    /// Whether the relay closed this connection because it is shutting down or restarting
    /// (close code [`crate::server::CLOSE_SHUTDOWN`]); a stream error seen then means
    /// "reconnect", whatever the stream itself reported.
    pub fn relay_shut_down(&self) -> bool {
        matches!(
            self.conn.close_reason(),
            Some(quinn::ConnectionError::ApplicationClosed(c))
                if c.error_code == quinn::VarInt::from_u32(crate::server::CLOSE_SHUTDOWN)
        )
    }

    /// A new connection to the same relay with the same trust, retried every 200 ms until it
    /// succeeds or `within` has passed (a restarting relay is back within seconds).
    pub async fn reconnect(&self, within: Duration) -> Result<Self, ClientError> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match Self::connect(&self.addr, self.trust.clone()).await {
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

    /// The underlying QUIC connection.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The relay's certificate pin, as seen on this connection.
    pub fn pin(&self) -> [u8; 32] {
        self.pin
    }

    /// The address this client connected to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Closes the connection and waits briefly for the relay to learn of it.
    pub async fn close(self) {
        self.conn.close(0u32.into(), b"done");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }

    fn exporter(&self) -> Result<[u8; EXPORTER_LEN], ClientError> {
        let mut out = [0u8; EXPORTER_LEN];
        self.conn
            .export_keying_material(&mut out, EXPORTER_LABEL, b"")
            .map_err(|_| ClientError::Protocol("TLS exporter unavailable".into()))?;
        Ok(out)
    }

    /// Opens a stream, sends `frame`, finishes, and returns the reply frame of type `expect`.
    async fn request(&self, frame: Bytes, expect: FrameType) -> Result<Frame, ClientError> {
        let (mut send, recv) = self.conn.open_bi().await?;
        send.write_all(&frame).await?;
        let _ = send.finish();
        let mut reader = FrameReader::new(recv, CLIENT_MAX_FRAME);
        let reply = reader
            .next_frame()
            .await?
            .ok_or_else(|| ClientError::Protocol("stream ended without a reply".into()))?;
        expect_frame(reply, expect)
    }

    /// Asks for the relay's version and limits.
    pub async fn info(&self) -> Result<InfoReply, ClientError> {
        let f = self
            .request(
                frame::encode_to_bytes(FrameType::Info, &[]),
                FrameType::InfoReply,
            )
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
        Ok(Mailbox {
            relay: self.addr.clone(),
            pin: self.pin,
            suite,
            recipient_id: created.recipient_id,
            deposit_id: created.deposit_id,
            deposit_key,
            recipient_secret,
            e2e_secret,
            sizes: created.limits.sizes,
        })
    }

    /// Opens a deposit stream: send envelopes on one half, read results on the other.
    pub async fn open_deposit(&self) -> Result<(DepositSender, DepositResults), ClientError> {
        let (send, recv) = self.conn.open_bi().await?;
        Ok((
            DepositSender { send },
            DepositResults {
                reader: FrameReader::new(recv, CLIENT_MAX_FRAME),
                retry_after: None,
            },
        ))
    }

    /// Deposits one envelope on its own stream and waits for its status.
    pub async fn deposit(&self, envelope: Bytes) -> Result<DepositStatus, ClientError> {
        Ok(self.deposit_once(&envelope).await?.0)
    }

    /// The status of one envelope and, when it is `RATE_LIMITED`, the relay's retry hint.
    async fn deposit_once(
        &self,
        envelope: &Bytes,
    ) -> Result<(DepositStatus, Option<Duration>), ClientError> {
        let (mut tx, mut rx) = self.open_deposit().await?;
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
    pub async fn subscribe(
        &self,
        access: &MailboxAccess,
        window: u32,
    ) -> Result<Subscription, ClientError> {
        let exp = self.exporter()?;
        let proof = access
            .keys
            .auth
            .proof(ProofPurpose::Subscribe, &access.recipient_id, &exp);
        let req = Subscribe {
            recipient_id: access.recipient_id,
            proof,
            window,
        };
        let (mut send, recv) = self.conn.open_bi().await?;
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
        let exp = self.exporter()?;
        let req = Delete {
            recipient_id: access.recipient_id,
            proof: access
                .keys
                .auth
                .proof(ProofPurpose::Delete, &access.recipient_id, &exp),
        };
        self.request(
            frame_with(FrameType::Delete, |b| req.encode(b)),
            FrameType::Deleted,
        )
        .await?;
        Ok(())
    }
}

fn expect_frame(f: Frame, expect: FrameType) -> Result<Frame, ClientError> {
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

/// A recipient's complete mailbox credentials, as kept in its mailbox file.
#[derive(Debug)]
pub struct Mailbox {
    /// The relay address.
    pub relay: String,
    /// The relay's certificate pin.
    pub pin: [u8; 32],
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
}

impl Mailbox {
    /// The invitation senders need.
    pub fn invitation(&self) -> Invitation {
        Invitation {
            relay: self.relay.clone(),
            pin: self.pin,
            deposit_id: self.deposit_id,
            deposit_key: self.deposit_key.clone(),
            e2e_public: self.e2e_secret.public_key(),
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
