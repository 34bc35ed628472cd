//! Depositing through another relay (two-hop forwarding, docs/PROTOCOL.md §9): the request is
//! sealed for the destination relay's forwarding key and sent to a forwarding relay of the
//! sender's choosing in a FORWARD frame; the answer comes back sealed for the sender. The
//! forwarding relay learns the sender's address, the destination and the size class; the
//! destination learns the mailbox, but only the forwarding relay's address.

use crate::client::{CLIENT_MAX_FRAME, Client, ClientError, expect_frame};
use bytes::{Bytes, BytesMut};
use sealpost_core::forward::{self, FORWARD_KEY_LEN, Forward, ResponseKey};
use sealpost_core::frame::{self, Frame, FrameDecoder, FrameType};
use sealpost_core::invitation::Invitation;
use sealpost_core::msg::{
    ErrorMsg, INFO_WANTS_FORWARD_KEY, InfoReply, decode_deposit_result, frame_with,
};
use sealpost_core::status::{DepositStatus, ErrorCode};
use std::time::Duration;

/// The destination of forwarded requests: a relay's address and its forwarding key.
#[derive(Clone, Debug)]
pub struct ForwardTarget {
    /// The destination relay, `host:port`, as the forwarding relay will resolve it.
    pub destination: String,
    /// The destination relay's forwarding public key.
    pub forward_key: [u8; FORWARD_KEY_LEN],
    /// The destination's frame limit, which bounds one request; the default limit until
    /// [`Client::forward_info`] learns it.
    pub max_frame: u32,
}

/// The frame limit of a relay with the default body sizes (1 + 52 + 65 536).
const DEFAULT_MAX_FRAME: u32 = 65_589;

impl ForwardTarget {
    /// The invitation's first relay and its forwarding key. An invitation without a key
    /// (version 1 to 3) cannot be forwarded to: the error says so.
    pub fn from_invitation(inv: &Invitation) -> Result<Self, ClientError> {
        let forward_key = inv.forward_key.ok_or_else(|| {
            ClientError::Protocol(
                "this invitation carries no forwarding key (it predates forwarding, version 1 \
                 to 3): deposit directly, or ask the mailbox owner for a new invitation"
                    .into(),
            )
        })?;
        let destination = inv
            .relays
            .first()
            .cloned()
            .ok_or_else(|| ClientError::Protocol("the invitation names no relay".into()))?;
        Ok(Self {
            destination,
            forward_key,
            max_frame: DEFAULT_MAX_FRAME,
        })
    }
}

/// The statuses of one forwarded batch of envelopes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwardedDeposit {
    /// One per envelope, in the order given.
    pub statuses: Vec<DepositStatus>,
    /// How long to wait before resending the `RATE_LIMITED` ones.
    pub retry_after: Option<Duration>,
}

/// The frames of a decrypted answer.
fn frames_of(answer: Vec<u8>) -> Result<Vec<Frame>, ClientError> {
    let mut dec = FrameDecoder::new(CLIENT_MAX_FRAME);
    dec.push(Bytes::from(answer));
    let mut frames = Vec::new();
    while let Some(f) = dec
        .next_frame()
        .map_err(|e| ClientError::Protocol(format!("forwarded answer: {e}")))?
    {
        frames.push(f);
    }
    dec.finish()
        .map_err(|e| ClientError::Protocol(format!("forwarded answer: {e}")))?;
    Ok(frames)
}

/// The one frame of type `expect` an answer must consist of; a sealed ERROR becomes
/// [`ClientError::Relay`].
fn only_frame(frames: Vec<Frame>, expect: FrameType) -> Result<Frame, ClientError> {
    let mut it = frames.into_iter();
    match (it.next(), it.next()) {
        (Some(f), None) => expect_frame(f, expect),
        (n, _) => Err(ClientError::Protocol(format!(
            "a forwarded answer holds one frame, this one {}",
            if n.is_none() { "none" } else { "several" }
        ))),
    }
}

impl Client {
    /// The relay's forwarding public key, from the extended INFO; `None` from a relay that
    /// predates forwarding (it refuses the extended INFO as malformed).
    pub async fn forward_key(&self) -> Result<Option<[u8; FORWARD_KEY_LEN]>, ClientError> {
        let got = self
            .retrying(|link| async move {
                let req = frame::encode_to_bytes(FrameType::Info, &[INFO_WANTS_FORWARD_KEY]);
                Self::request_on(&link.conn, req, FrameType::InfoReply).await
            })
            .await;
        match got {
            Ok(f) => Ok(Some(InfoReply::decode_with_forward_key(&f.payload)?.1)),
            Err(ClientError::Relay(e)) if e.known_code() == Some(ErrorCode::MalformedFrame) => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Sends `request` (the frames of one request) through this client's relay to `target`
    /// and returns the frames the destination answered, opened. Sent again on a new
    /// connection if the forwarding relay restarts: forwarded requests are as safe to repeat
    /// as direct ones (a deposit stored already is answered `DUPLICATE`).
    pub async fn forward_request(
        &self,
        target: &ForwardTarget,
        request: &[u8],
    ) -> Result<Vec<Frame>, ClientError> {
        let max = forward::max_request(target.max_frame);
        let answer = self
            .retrying(|link| async move {
                // Sealed afresh for each attempt: one HPKE context answers one request.
                let sealed = forward::seal_request(&target.forward_key, request, max)?;
                let fw = Forward {
                    destination: target.destination.clone(),
                    sealed: sealed.sealed,
                };
                let req = frame_with(FrameType::Forward, |b| fw.encode(b));
                let f = Self::request_on(&link.conn, req, FrameType::ForwardResult).await?;
                Ok::<_, ClientError>((f, sealed.response_key))
            })
            .await?;
        let (f, key): (Frame, ResponseKey) = answer;
        frames_of(key.open(&f.payload)?)
    }

    /// The destination relay's version and limits, asked through this client's relay; also
    /// sets `target.max_frame` from them.
    pub async fn forward_info(&self, target: &mut ForwardTarget) -> Result<InfoReply, ClientError> {
        let req = frame::encode_to_bytes(FrameType::Info, &[]);
        let f = only_frame(
            self.forward_request(target, &req).await?,
            FrameType::InfoReply,
        )?;
        let info = InfoReply::decode(&f.payload)?;
        target.max_frame = info.limits.max_frame;
        Ok(info)
    }

    /// Deposits `envelopes` into the destination relay through this client's relay, as one
    /// forwarded request; the statuses are those the destination gave (OK only once the
    /// envelope is durable there).
    pub async fn forward_deposit(
        &self,
        target: &ForwardTarget,
        envelopes: &[Bytes],
    ) -> Result<ForwardedDeposit, ClientError> {
        let mut req = BytesMut::new();
        for e in envelopes {
            frame::encode(FrameType::Deposit, e, &mut req);
        }
        let frames = self.forward_request(target, &req).await?;
        let f = only_frame(frames, FrameType::DepositResult)?;
        let r = decode_deposit_result(&f.payload)?;
        if r.statuses.len() != envelopes.len() {
            return Err(ClientError::Protocol(format!(
                "{} statuses for {} forwarded envelopes",
                r.statuses.len(),
                envelopes.len()
            )));
        }
        Ok(ForwardedDeposit {
            statuses: r.statuses,
            retry_after: r.retry_after_ms.map(|ms| Duration::from_millis(ms.into())),
        })
    }

    /// [`Client::forward_deposit`] of one envelope, sent again while the destination answers
    /// `RATE_LIMITED` (after the wait it names), a relay refuses the request with
    /// `ERROR RATE_LIMITED` (after 100 ms) or the forwarding relay answers
    /// `ERROR UNREACHABLE` (after 200 ms), for at most `patience`. Returns the last status and
    /// how many times the envelope was sent.
    pub async fn forward_deposit_patiently(
        &self,
        target: &ForwardTarget,
        envelope: Bytes,
        patience: Duration,
    ) -> Result<(DepositStatus, u32), ClientError> {
        let deadline = tokio::time::Instant::now() + patience;
        let mut sent = 0;
        loop {
            sent += 1;
            let got = self
                .forward_deposit(target, std::slice::from_ref(&envelope))
                .await;
            let wait = match &got {
                Ok(r) if r.statuses[0] == DepositStatus::RateLimited => {
                    r.retry_after.unwrap_or(Duration::from_millis(100))
                }
                Ok(r) => return Ok((r.statuses[0], sent)),
                Err(ClientError::Relay(e)) if unreachable(e) => Duration::from_millis(200),
                // The destination (or the forwarding relay) refused the request as a whole
                // for a rate: the message names the wait; a short pause stands in for it.
                Err(ClientError::Relay(e)) if e.known_code() == Some(ErrorCode::RateLimited) => {
                    Duration::from_millis(100)
                }
                Err(_) => return got.map(|r| (r.statuses[0], sent)),
            };
            let wait = wait.max(Duration::from_millis(1));
            if tokio::time::Instant::now() + wait > deadline {
                // The last answer: RATE_LIMITED, or the forwarder's UNREACHABLE.
                return got.map(|r| (r.statuses[0], sent));
            }
            tokio::time::sleep(wait).await;
        }
    }
}

fn unreachable(e: &ErrorMsg) -> bool {
    e.known_code() == Some(ErrorCode::Unreachable)
}
