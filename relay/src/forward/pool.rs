//! The forwarding relay's connections to destination relays: opened on first use from the
//! relay's own QUIC endpoint (so they leave from its listen address), kept for later requests
//! while in use, closed by QUIC after the idle timeout, and bounded in number (the least
//! recently used goes first).

use bytes::Bytes;
use quinn::{Connection, Endpoint};
use sealpost_client::stream::FrameReader;
use sealpost_core::frame::Frame;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why a destination could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The address does not resolve.
    #[error("the destination {0} does not resolve")]
    Resolve(String),
    /// The connection could not be made.
    #[error("cannot connect to the destination: {0}")]
    Connect(String),
    /// The connection or the stream failed before the answer.
    #[error("the destination's connection failed before its answer: {0}")]
    Lost(String),
    /// The destination ended the stream without an answer.
    #[error("the destination ended the stream without an answer")]
    NoAnswer,
    /// The pool could not be set up.
    #[error("forwarding set-up failed: {0}")]
    Setup(String),
}

struct Slot {
    conn: Connection,
    used: Instant,
}

/// Connections to destination relays, by the address senders name them with.
pub struct Pool {
    endpoint: Endpoint,
    client: quinn::ClientConfig,
    slots: std::sync::Mutex<HashMap<String, Slot>>,
    max: usize,
    /// Largest answer frame read from a destination.
    max_answer: u32,
}

impl Pool {
    /// A pool on `endpoint` (the relay's own), at most `max` connections, each closed after
    /// `idle` without traffic.
    pub fn new(
        endpoint: Endpoint,
        max: usize,
        idle: Duration,
        max_answer: u32,
    ) -> Result<Self, PoolError> {
        let crypto = sealpost_client::tls::client_crypto_any_key()
            .map_err(|e| PoolError::Setup(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        transport.max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(idle).map_err(|e| PoolError::Setup(e.to_string()))?,
        ));
        transport.max_concurrent_uni_streams(0u32.into());
        transport.max_concurrent_bidi_streams(0u32.into());
        transport.datagram_receive_buffer_size(None);
        client.transport_config(Arc::new(transport));
        Ok(Self {
            endpoint,
            client,
            slots: std::sync::Mutex::new(HashMap::new()),
            max: max.max(1),
            max_answer,
        })
    }

    /// Connections held now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no connection is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A live pooled connection to `dest`, if there is one.
    fn pooled(&self, dest: &str) -> Option<Connection> {
        let mut slots = self.lock();
        let slot = slots.get_mut(dest)?;
        if slot.conn.close_reason().is_some() {
            slots.remove(dest);
            return None;
        }
        slot.used = Instant::now();
        Some(slot.conn.clone())
    }

    async fn connect(&self, dest: &str) -> Result<Connection, PoolError> {
        let local = self.endpoint.local_addr().ok();
        let resolved: Vec<SocketAddr> = tokio::net::lookup_host(dest)
            .await
            .map_err(|_| PoolError::Resolve(dest.to_owned()))?
            .collect();
        // The endpoint's socket has one address family: pick an address of it.
        let addr = resolved
            .iter()
            .find(|a| local.is_none_or(|l| l.is_ipv6() == a.is_ipv6()))
            .or(resolved.first())
            .copied()
            .ok_or_else(|| PoolError::Resolve(dest.to_owned()))?;
        let host = dest.rsplit_once(':').map_or(dest, |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let conn = self
            .endpoint
            .connect_with(
                self.client.clone(),
                addr,
                if host.is_empty() { "localhost" } else { host },
            )
            .map_err(|e| PoolError::Connect(e.to_string()))?
            .await
            .map_err(|e| PoolError::Connect(e.to_string()))?;
        let mut slots = self.lock();
        if let Some(other) = slots.get(dest).filter(|s| s.conn.close_reason().is_none()) {
            // Another request connected meanwhile: use that one, and let this one go.
            let keep = other.conn.clone();
            conn.close(0u32.into(), b"");
            return Ok(keep);
        }
        while slots.len() >= self.max {
            let Some(oldest) = slots
                .iter()
                .min_by_key(|(_, s)| s.used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(s) = slots.remove(&oldest) {
                // Requests still running on it keep it until they end.
                drop(s);
            }
        }
        slots.insert(
            dest.to_owned(),
            Slot {
                conn: conn.clone(),
                used: Instant::now(),
            },
        );
        Ok(conn)
    }

    /// Sends `frame` to `dest` on a new stream and returns the one frame it answers. A pooled
    /// connection that turns out dead is replaced once.
    pub async fn ask(&self, dest: &str, frame: Bytes) -> Result<Frame, PoolError> {
        let pooled = self.pooled(dest);
        let had_pooled = pooled.is_some();
        let conn = match pooled {
            Some(c) => c,
            None => self.connect(dest).await?,
        };
        match self.ask_on(&conn, &frame).await {
            Err(PoolError::Lost(_)) if had_pooled => {
                self.lock().remove(dest);
                let conn = self.connect(dest).await?;
                self.ask_on(&conn, &frame).await
            }
            other => other,
        }
    }

    async fn ask_on(&self, conn: &Connection, frame: &Bytes) -> Result<Frame, PoolError> {
        let lost = |e: &dyn std::fmt::Display| PoolError::Lost(e.to_string());
        let (mut send, recv) = conn.open_bi().await.map_err(|e| lost(&e))?;
        send.write_all(frame).await.map_err(|e| lost(&e))?;
        let _ = send.finish();
        let mut reader = FrameReader::new(recv, self.max_answer);
        match reader.next_frame().await {
            Ok(Some(f)) => {
                // The destination finishes its side right after its one frame: reading up to
                // that end closes the stream on both sides, so that its stream credit comes
                // back at once.
                let _ = reader.next_frame().await;
                Ok(f)
            }
            Ok(None) => Err(PoolError::NoAnswer),
            Err(e) => Err(lost(&format!("{e:?}"))),
        }
    }
}
