//! The transport baseline: an in-process QUIC forwarder that speaks sealpost's framing with
//! no crypto and no store, so a relay can be measured as a fraction of what quinn itself
//! moves on the same machine with the same traffic.
//!
//! It answers CREATE with counter-derived ids, INFO with the default limits, accepts any
//! SUBSCRIBE (no proof check), and hands each DEPOSIT frame's envelope straight to the
//! subscriber's stream as a DELIVER frame whose "sealed" part is the envelope followed by 16
//! zero bytes: the same frame sizes, the same window and ACK traffic, and the same
//! `read_chunks`/`write_all_chunks` zero-copy path as the relay, minus verify, store and
//! re-seal. Queues between deposit and subscriber streams are bounded; a full queue holds the
//! depositor back through QUIC flow control, as the relay's pipeline does.

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use quinn::{Endpoint, SendStream};
use sealpost_client::stream::FrameReader;
use sealpost_core::envelope::{DEPOSIT_ID_LEN, DepositId};
use sealpost_core::frame::{self, FrameType, HEADER_LEN};
use sealpost_core::msg::{
    Create, Created, DELIVER_PREFIX, InfoReply, Subscribe, Subscribed, decode_ack,
    encode_deposit_result, frame_with,
};
use sealpost_core::status::{DepositStatus, ErrorCode};
use sealpost_core::suite::TAG_LEN;
use sealpost_relay::RelayLimits;
use sealpost_relay::stream::refuse;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Envelopes queued per mailbox between its depositors and its subscriber.
const QUEUE: usize = 4096;
/// Most deposits answered with one DEPOSIT_RESULT (the relay's default batch limit).
const MAX_BATCH: usize = 256;

/// One mailbox: the queue's sending end for depositors, its receiving end for the subscriber.
struct Slot {
    tx: mpsc::Sender<Bytes>,
    rx: Mutex<Option<mpsc::Receiver<Bytes>>>,
}

struct Forwarder {
    limits: RelayLimits,
    next_id: AtomicU64,
    /// By deposit id (the recipient id is the same bytes here: the baseline has no secrets).
    slots: Mutex<HashMap<DepositId, Arc<Slot>>>,
}

/// A running baseline forwarder.
pub struct Baseline {
    endpoint: Endpoint,
    addr: SocketAddr,
    pin: [u8; 32],
    _dir: tempfile::TempDir,
}

impl Baseline {
    /// Starts the forwarder on a free loopback port, with a fresh self-signed certificate and
    /// `max_streams` concurrent streams per connection.
    pub async fn start(max_streams: u32) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("creating a temporary directory")?;
        let (identity, _) = sealpost_relay::tls::load_or_generate(&dir.path().join("tls"))?;
        let pin = identity.pin();
        let crypto = sealpost_relay::tls::server_crypto(identity)?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let mut t = quinn::TransportConfig::default();
        // As the relay does, so that both can hold the same number of streams.
        t.max_concurrent_bidi_streams(sealpost_relay::stream_credit(max_streams).into());
        t.max_concurrent_uni_streams(0u32.into());
        server.transport_config(Arc::new(t));
        let endpoint = Endpoint::server(server, "127.0.0.1:0".parse().expect("literal address"))
            .context("binding the baseline forwarder")?;
        let addr = endpoint.local_addr()?;
        let fwd = Arc::new(Forwarder {
            limits: RelayLimits::default(),
            next_id: AtomicU64::new(1),
            slots: Mutex::new(HashMap::new()),
        });
        let ep = endpoint.clone();
        tokio::spawn(async move {
            while let Some(incoming) = ep.accept().await {
                let fwd = fwd.clone();
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    while let Ok((send, recv)) = conn.accept_bi().await {
                        let fwd = fwd.clone();
                        tokio::spawn(async move { fwd.serve(send, recv).await });
                    }
                });
            }
        });
        Ok(Self {
            endpoint,
            addr,
            pin,
            _dir: dir,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The certificate pin.
    pub fn pin(&self) -> [u8; 32] {
        self.pin
    }

    /// Closes every connection and stops.
    pub async fn shutdown(self) {
        self.endpoint.close(1u32.into(), b"baseline done");
        let _ = tokio::time::timeout(std::time::Duration::from_secs(3), self.endpoint.wait_idle())
            .await;
    }
}

impl Forwarder {
    fn slot(&self, id: &DepositId) -> Option<Arc<Slot>> {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    async fn serve(self: Arc<Self>, mut send: SendStream, recv: quinn::RecvStream) {
        let mut reader = FrameReader::new(recv, self.limits.frame_limit());
        let Ok(Some(first)) = reader.next_frame().await else {
            return;
        };
        match first.ty {
            FrameType::Info => {
                let reply = InfoReply {
                    version: "sealpost-loadtest baseline forwarder".into(),
                    suites: self.limits.suites.clone(),
                    limits: self.limits.wire(),
                };
                let _ = send
                    .write_all(&frame_with(FrameType::InfoReply, |b| reply.encode(b)))
                    .await;
                let _ = send.finish();
            }
            FrameType::Create => {
                if Create::decode(&first.payload).is_err() {
                    return refuse(
                        &mut send,
                        Some(&mut reader),
                        ErrorCode::MalformedFrame,
                        "bad CREATE",
                    )
                    .await;
                }
                let n = self.next_id.fetch_add(1, Ordering::Relaxed);
                let mut id = [0u8; DEPOSIT_ID_LEN];
                id[..8].copy_from_slice(&n.to_be_bytes());
                let (tx, rx) = mpsc::channel(QUEUE);
                self.slots.lock().unwrap_or_else(|p| p.into_inner()).insert(
                    id,
                    Arc::new(Slot {
                        tx,
                        rx: Mutex::new(Some(rx)),
                    }),
                );
                let created = Created {
                    recipient_id: id,
                    deposit_id: id,
                    limits: self.limits.wire(),
                };
                let _ = send
                    .write_all(&frame_with(FrameType::Created, |b| created.encode(b)))
                    .await;
                let _ = send.finish();
            }
            FrameType::Deposit => self.deposit(first, reader, send).await,
            FrameType::Subscribe => self.subscribe(first, reader, send).await,
            _ => {
                refuse(
                    &mut send,
                    Some(&mut reader),
                    ErrorCode::UnexpectedFrame,
                    "the baseline forwarder speaks CREATE, INFO, DEPOSIT and SUBSCRIBE",
                )
                .await
            }
        }
    }

    async fn deposit(&self, first: frame::Frame, mut reader: FrameReader, mut send: SendStream) {
        let mut batch = vec![first];
        let mut statuses = Vec::with_capacity(MAX_BATCH);
        loop {
            while batch.len() < MAX_BATCH {
                match reader.buffered_frame() {
                    Ok(Some(f)) => batch.push(f),
                    _ => break,
                }
            }
            statuses.clear();
            for f in batch.drain(..) {
                let id: Option<DepositId> = f
                    .payload
                    .get(8..8 + DEPOSIT_ID_LEN)
                    .and_then(|s| s.try_into().ok());
                let status = match id.and_then(|id| self.slot(&id)) {
                    Some(slot) => match slot.tx.send(f.payload).await {
                        Ok(()) => DepositStatus::Ok,
                        Err(_) => DepositStatus::Unavailable,
                    },
                    None => DepositStatus::UnknownMailbox,
                };
                statuses.push(status);
            }
            if !statuses.is_empty() {
                let frame = frame_with(FrameType::DepositResult, |b| {
                    encode_deposit_result(&statuses, None, b)
                });
                if send.write_all(&frame).await.is_err() {
                    return;
                }
            }
            match reader.fill().await {
                Ok(true) => {}
                _ => {
                    let _ = send.finish();
                    return;
                }
            }
        }
    }

    async fn subscribe(&self, first: frame::Frame, mut reader: FrameReader, mut send: SendStream) {
        let Ok(req) = Subscribe::decode(&first.payload) else {
            return refuse(
                &mut send,
                Some(&mut reader),
                ErrorCode::MalformedFrame,
                "bad SUBSCRIBE",
            )
            .await;
        };
        let Some(slot) = self.slot(&req.recipient_id) else {
            return refuse(
                &mut send,
                Some(&mut reader),
                ErrorCode::UnknownMailbox,
                "no such mailbox",
            )
            .await;
        };
        let Some(mut queue) = slot.rx.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return refuse(
                &mut send,
                Some(&mut reader),
                ErrorCode::Replaced,
                "the baseline allows one subscription per mailbox",
            )
            .await;
        };
        let window = req.window.min(self.limits.max_window) as u64;
        let hello = Subscribed {
            pending: 0,
            window: window as u32,
        };
        if send
            .write_all(&frame_with(FrameType::Subscribed, |b| hello.encode(b)))
            .await
            .is_err()
        {
            return;
        }
        let (ack_tx, mut acks) = mpsc::channel::<u64>(64);
        tokio::spawn(async move {
            while let Ok(Some(f)) = reader.next_frame().await {
                let Ok(seq) = decode_ack(&f.payload) else {
                    return;
                };
                if ack_tx.send(seq).await.is_err() {
                    return;
                }
            }
        });
        let tag = Bytes::from_static(&[0u8; TAG_LEN]);
        let mut sent = 0u64;
        let mut acked = 0u64;
        let mut chunks: Vec<Bytes> = Vec::with_capacity(3 * MAX_BATCH);
        let mut batch: Vec<Bytes> = Vec::with_capacity(MAX_BATCH);
        loop {
            if sent - acked >= window {
                match acks.recv().await {
                    Some(s) => acked = acked.max(s.min(sent)),
                    None => return,
                }
                continue;
            }
            tokio::select! {
                e = queue.recv() => {
                    let Some(e) = e else { return };
                    // Like the relay: every DELIVER head of a batch in one buffer.
                    batch.clear();
                    batch.push(e);
                    while sent + (batch.len() as u64) - acked < window {
                        match queue.try_recv() {
                            Ok(e) => batch.push(e),
                            Err(_) => break,
                        }
                    }
                    let head_len = HEADER_LEN + DELIVER_PREFIX;
                    let mut heads = BytesMut::with_capacity(head_len * batch.len());
                    for e in &batch {
                        sent += 1;
                        heads.extend_from_slice(&frame::header(
                            FrameType::Deliver,
                            DELIVER_PREFIX + e.len() + TAG_LEN,
                        ));
                        heads.extend_from_slice(&sent.to_be_bytes());
                        heads.extend_from_slice(&[0u8; 12]);
                    }
                    let mut heads = heads.freeze();
                    chunks.clear();
                    for e in batch.drain(..) {
                        chunks.push(heads.split_to(head_len));
                        chunks.push(e);
                        chunks.push(tag.clone());
                    }
                    if send.write_all_chunks(&mut chunks).await.is_err() {
                        return;
                    }
                }
                a = acks.recv() => match a {
                    Some(s) => acked = acked.max(s.min(sent)),
                    None => return,
                },
            }
        }
    }
}
