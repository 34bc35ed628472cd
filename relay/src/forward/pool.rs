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
    /// The destination resolves only to addresses this relay does not forward to.
    /// (The message names no address: what an inner name resolves to is not the sender's
    /// business.)
    #[error(
        "the destination {0} does not resolve to a public address; this relay forwards to loopback, private and link-local addresses only when its operator allows them (forward_private_destinations, or the destination on forward_allow)"
    )]
    NotPublic(String),
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

    async fn connect(&self, dest: &str, any_address: bool) -> Result<Connection, PoolError> {
        let local = self.endpoint.local_addr().ok();
        let mut resolved: Vec<SocketAddr> = tokio::net::lookup_host(dest)
            .await
            .map_err(|_| PoolError::Resolve(dest.to_owned()))?
            .collect();
        // Checked on the addresses actually connected to, not on the name, so that a name
        // resolving to an inner address (or changing to one) is caught as well.
        if !any_address {
            let any = !resolved.is_empty();
            resolved.retain(|a| is_public(a.ip()));
            if any && resolved.is_empty() {
                return Err(PoolError::NotPublic(dest.to_owned()));
            }
        }
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
    /// connection that turns out dead is replaced once. `any_address`: connect whatever `dest`
    /// resolves to; otherwise only to public addresses ([`is_public`]).
    pub async fn ask(
        &self,
        dest: &str,
        frame: Bytes,
        any_address: bool,
    ) -> Result<Frame, PoolError> {
        let pooled = self.pooled(dest);
        let had_pooled = pooled.is_some();
        let conn = match pooled {
            Some(c) => c,
            None => self.connect(dest, any_address).await?,
        };
        match self.ask_on(&conn, &frame).await {
            Err(PoolError::Lost(_)) if had_pooled => {
                self.lock().remove(dest);
                let conn = self.connect(dest, any_address).await?;
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

/// Whether `ip` is an address of the public internet: not loopback, unspecified, private
/// (RFC 1918, IPv6 unique local), link-local, shared (RFC 6598, carrier-grade NAT),
/// multicast, broadcast, documentation or otherwise reserved. An IPv6 address that carries an
/// IPv4 one a gateway would reach (IPv4-mapped, IPv4-compatible, NAT64's well-known prefix
/// 64:ff9b::/96, 6to4 2002::/16) is judged as that IPv4 address; local-use NAT64
/// (64:ff9b:1::/48) and Teredo (2001::/32), which hide one, are not public.
pub fn is_public(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_unspecified()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                // 0.0.0.0/8 ("this network"), 100.64.0.0/10 (shared), 192.0.0.0/24
                // (protocol assignments), 198.18.0.0/15 (benchmarking), 240.0.0.0/4
                // (reserved).
                || a == 0
                || (a == 192 && b == 0 && v4.octets()[2] == 0)
                || (a == 100 && (b & 0xC0) == 64)
                || (a == 198 && (b & 0xFE) == 18)
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let o = v6.octets();
            let embedded = |at: usize| {
                IpAddr::V4(std::net::Ipv4Addr::new(
                    o[at],
                    o[at + 1],
                    o[at + 2],
                    o[at + 3],
                ))
            };
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            if v6.is_loopback() || v6.is_unspecified() {
                return false;
            }
            // ::a.b.c.d (IPv4-compatible, deprecated) and 64:ff9b::a.b.c.d (NAT64).
            if s[..6] == [0; 6] || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return is_public(embedded(12));
            }
            // 2002:aabb:ccdd::/48 (6to4) carries a.b.c.d in its second and third groups.
            if s[0] == 0x2002 {
                return is_public(embedded(2));
            }
            !(v6.is_multicast()
                || v6.is_unique_local()
                || v6.is_unicast_link_local()
                // fec0::/10, site-local (deprecated, still routed inside some networks).
                || (s[0] & 0xffc0) == 0xfec0
                // 64:ff9b:1::/48, local-use NAT64.
                || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1)
                // 100::/64, discard.
                || s[..4] == [0x100, 0, 0, 0]
                // 2001::/32 (Teredo) and 2001:db8::/32 (documentation).
                || (s[0] == 0x2001 && (s[1] == 0 || s[1] == 0x0db8)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_public;

    #[test]
    fn inner_addresses_are_not_public() {
        for inner in [
            "127.0.0.1",
            "127.0.0.3",
            "0.0.0.0",
            "0.1.2.3",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "198.18.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "192.0.2.1",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "192.0.0.8",
            "64:ff9b::10.0.0.5",
            "64:ff9b::127.0.0.1",
            "64:ff9b:1::1.2.3.4",
            "2002:0a00:0001::1",
            "2002:7f00:0001::1",
            "::10.0.0.1",
            "fec0::1",
            "100::1",
            "2001:0:4136:e378::1",
        ] {
            assert!(!is_public(inner.parse().unwrap()), "{inner}");
        }
        for public in [
            "1.1.1.1",
            "100.63.255.255",
            "100.128.0.1",
            "172.32.0.1",
            "198.20.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::8.8.8.8",
            "2002:0808:0808::1",
            "192.0.1.1",
        ] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }
}
