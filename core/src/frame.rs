//! Stream framing.
//!
//! Every sealpost stream carries frames of the form `len: u32 BE | type: u8 | payload`, where
//! `len` counts the type byte and the payload. [`FrameDecoder`] turns the chunks a QUIC stream
//! hands out into frames. A frame that lies wholly inside one received chunk is sliced out of it
//! without a copy; only frames that straddle chunks are assembled in a buffer, and that buffer is
//! sized from a length prefix that has already been checked against the limit.

use crate::wire_enum::wire_enum;
use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Bytes of the length prefix.
pub const LEN_PREFIX: usize = 4;
/// Bytes of the length prefix plus the type byte.
pub const HEADER_LEN: usize = LEN_PREFIX + 1;

wire_enum! {
    /// The type byte of a frame. Values and names are fixed by docs/PROTOCOL.md.
    pub enum FrameType: u8 [from_u8, to_u8] {
        /// Client → relay: create a mailbox.
        Create = 0x01 => "CREATE",
        /// Relay → client: the mailbox was created.
        Created = 0x02 => "CREATED",
        /// Client → relay: one deposit envelope.
        Deposit = 0x03 => "DEPOSIT",
        /// Relay → client: statuses for the next deposits on this stream, in order.
        DepositResult = 0x04 => "DEPOSIT_RESULT",
        /// Client → relay: subscribe to a mailbox.
        Subscribe = 0x05 => "SUBSCRIBE",
        /// Relay → client: the subscription is accepted.
        Subscribed = 0x06 => "SUBSCRIBED",
        /// Relay → client: one re-sealed envelope.
        Deliver = 0x07 => "DELIVER",
        /// Client → relay: cumulative acknowledgement.
        Ack = 0x08 => "ACK",
        /// Client → relay: delete a mailbox.
        Delete = 0x09 => "DELETE",
        /// Relay → client: the mailbox was deleted.
        Deleted = 0x0A => "DELETED",
        /// Client → relay: ask for the relay's version and limits.
        Info = 0x0B => "INFO",
        /// Relay → client: the relay's version and limits.
        InfoReply = 0x0C => "INFO_REPLY",
        /// Client → forwarding relay: a request sealed for another relay, and that relay's
        /// address (two-hop forwarding, docs/PROTOCOL.md §9).
        Forward = 0x0D => "FORWARD",
        /// Relay → relay → client: the destination relay's answer, sealed for the client.
        ForwardResult = 0x0E => "FORWARD_RESULT",
        /// Either direction: a request was refused; the stream ends after it.
        Error = 0x0F => "ERROR",
        /// Forwarding relay → destination relay: the sealed request of a FORWARD.
        Forwarded = 0x10 => "FORWARDED",
    }
}

/// One decoded frame. The payload shares memory with the received data where possible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The frame's type.
    pub ty: FrameType,
    /// The bytes after the type byte.
    pub payload: Bytes,
}

/// Why a byte stream is not a valid sequence of frames.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length prefix exceeds the configured maximum; nothing was allocated for it.
    #[error("frame length {len} exceeds the limit of {max} bytes")]
    TooLarge {
        /// The length the prefix announced.
        len: u32,
        /// The decoder's limit.
        max: u32,
    },
    /// A length prefix of zero: a frame needs at least its type byte.
    #[error("frame length 0 is invalid: a frame carries at least its type byte")]
    Empty,
    /// The type byte names no frame.
    #[error("unknown frame type 0x{0:02x}")]
    UnknownType(u8),
    /// A frame that had begun did not arrive in full within the receiver's time limit (a
    /// sender trickling bytes to hold the receiver's buffers).
    #[error("a frame did not arrive in full within {secs} s")]
    TimedOut {
        /// The limit, in seconds.
        secs: u64,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame ({buffered} bytes of an unfinished frame)")]
    Truncated {
        /// How many bytes of the unfinished frame had arrived.
        buffered: usize,
    },
}

/// Incremental frame decoder with a maximum frame size enforced before any allocation.
#[derive(Debug)]
pub struct FrameDecoder {
    max_frame: u32,
    /// Bytes of a frame that straddles chunks.
    partial: BytesMut,
    /// The unconsumed rest of the last pushed chunk.
    chunk: Bytes,
    /// Set once an error was returned; the stream is not resynchronisable after that.
    failed: bool,
    /// A larger limit for frames of these types (FORWARD and FORWARDED carry a sealed
    /// request a little larger than the largest envelope).
    larger: Option<(u32, &'static [FrameType])>,
}

impl FrameDecoder {
    /// A decoder accepting frames whose length prefix is at most `max_frame`.
    pub fn new(max_frame: u32) -> Self {
        Self {
            max_frame,
            partial: BytesMut::new(),
            chunk: Bytes::new(),
            failed: false,
            larger: None,
        }
    }

    /// Accepts frames of `types` up to `max` (instead of the decoder's limit). A length
    /// between the two limits is judged when the type byte arrives: a frame of another type
    /// is then `TooLarge`.
    pub fn allow_larger(&mut self, max: u32, types: &'static [FrameType]) {
        self.larger = Some((max, types));
    }

    /// The configured limit.
    pub fn max_frame(&self) -> u32 {
        self.max_frame
    }

    /// Hands the decoder the next chunk of the stream. Call [`next_frame`](Self::next_frame)
    /// until it returns `Ok(None)` before pushing another chunk.
    pub fn push(&mut self, chunk: Bytes) {
        if self.chunk.is_empty() {
            self.chunk = chunk;
        } else {
            // The caller pushed without draining; keep correctness by joining the two.
            let mut joined = BytesMut::with_capacity(self.chunk.len() + chunk.len());
            joined.extend_from_slice(&self.chunk);
            joined.extend_from_slice(&chunk);
            self.chunk = joined.freeze();
        }
    }

    /// Whether all pushed bytes have been consumed and no frame is half-read.
    pub fn is_idle(&self) -> bool {
        self.partial.is_empty() && self.chunk.is_empty()
    }

    /// Checks a length prefix and the type byte that follows it.
    fn check_header(&self, len: u32, ty: Option<u8>) -> Result<(), FrameError> {
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if len > self.max_frame {
            let too_large = FrameError::TooLarge {
                len,
                max: self.max_frame,
            };
            match (self.larger, ty) {
                (Some((max, _)), None) if len <= max => {}
                (Some((max, types)), Some(b))
                    if len <= max && types.iter().any(|t| t.to_u8() == b) => {}
                _ => return Err(too_large),
            }
        }
        if let Some(b) = ty
            && FrameType::from_u8(b).is_none()
        {
            return Err(FrameError::UnknownType(b));
        }
        Ok(())
    }

    /// Returns the next complete frame, `Ok(None)` when more bytes are needed, or an error
    /// (after which the decoder keeps returning that the stream is unusable).
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.failed {
            return Err(FrameError::Truncated { buffered: 0 });
        }
        let r = self.next_inner();
        if r.is_err() {
            self.failed = true;
            self.partial = BytesMut::new();
            self.chunk = Bytes::new();
        }
        r
    }

    fn next_inner(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.partial.is_empty() {
            // Fast path: the frame may lie wholly within the current chunk.
            if self.chunk.len() < LEN_PREFIX {
                if !self.chunk.is_empty() {
                    self.partial.extend_from_slice(&self.chunk);
                    self.chunk = Bytes::new();
                }
                return Ok(None);
            }
            let len =
                u32::from_be_bytes([self.chunk[0], self.chunk[1], self.chunk[2], self.chunk[3]]);
            self.check_header(len, self.chunk.get(LEN_PREFIX).copied())?;
            let total = LEN_PREFIX + len as usize;
            if self.chunk.len() >= total {
                let mut frame = self.chunk.split_to(total);
                frame.advance(LEN_PREFIX);
                return Ok(Some(Self::finish_frame(frame)));
            }
            // Not `reserve(total)`: a sender could announce a maximum-size frame with five
            // bytes and make the receiver hold the whole frame's memory. The buffer grows
            // with what arrives (see `append`).
            let chunk = std::mem::take(&mut self.chunk);
            Self::append(&mut self.partial, &chunk, total);
            return Ok(None);
        }

        // Slow path: complete the straddling frame, copying only what it still needs so that
        // the rest of the chunk can take the fast path again.
        if self.partial.len() < LEN_PREFIX {
            let need = LEN_PREFIX - self.partial.len();
            let take = need.min(self.chunk.len());
            self.partial.extend_from_slice(&self.chunk.split_to(take));
            if self.partial.len() < LEN_PREFIX {
                return Ok(None);
            }
        }
        let len = u32::from_be_bytes([
            self.partial[0],
            self.partial[1],
            self.partial[2],
            self.partial[3],
        ]);
        let ty = self
            .partial
            .get(LEN_PREFIX)
            .or_else(|| self.chunk.first())
            .copied();
        self.check_header(len, ty)?;
        let total = LEN_PREFIX + len as usize;
        let take = (total - self.partial.len()).min(self.chunk.len());
        let more = self.chunk.split_to(take);
        Self::append(&mut self.partial, &more, total);
        if self.partial.len() < total {
            return Ok(None);
        }
        let mut frame = self.partial.split().freeze();
        frame.advance(LEN_PREFIX);
        Ok(Some(Self::finish_frame(frame)))
    }

    /// Appends part of a frame of `total` bytes (prefix included). The buffer doubles while
    /// less than half the frame is there, so its memory follows what arrived; from half-way
    /// on it is sized to the frame exactly, so that it never holds more than the frame.
    fn append(partial: &mut BytesMut, bytes: &[u8], total: usize) {
        let want = partial.len() + bytes.len();
        if want > partial.capacity() && want.saturating_mul(2) >= total {
            let mut exact = BytesMut::with_capacity(total.max(want));
            exact.extend_from_slice(partial);
            *partial = exact;
        }
        partial.extend_from_slice(bytes);
    }

    /// Bytes of memory the decoder holds for a frame not yet complete (a receiver adds them
    /// up to bound what half-received frames cost it).
    pub fn held_bytes(&self) -> usize {
        self.partial.capacity() + self.chunk.len()
    }

    /// `frame` starts at the type byte, which `check_header` has already validated.
    fn finish_frame(mut frame: Bytes) -> Frame {
        let ty = FrameType::from_u8(frame[0]).unwrap_or(FrameType::Error);
        frame.advance(1);
        Frame { ty, payload: frame }
    }

    /// Declares the end of the stream: an error if a frame was left unfinished.
    pub fn finish(&self) -> Result<(), FrameError> {
        let buffered = self.partial.len() + self.chunk.len();
        if buffered == 0 {
            Ok(())
        } else {
            Err(FrameError::Truncated { buffered })
        }
    }
}

/// The five header bytes for a frame of type `ty` with `payload_len` bytes of payload.
///
/// # Panics
/// If `payload_len + 1` does not fit in a u32; payloads are bounded far below that.
pub fn header(ty: FrameType, payload_len: usize) -> [u8; HEADER_LEN] {
    let len = u32::try_from(payload_len + 1).expect("frame payload fits in u32");
    let l = len.to_be_bytes();
    [l[0], l[1], l[2], l[3], ty as u8]
}

/// Appends one whole frame to `out`.
pub fn encode(ty: FrameType, payload: &[u8], out: &mut BytesMut) {
    out.reserve(HEADER_LEN + payload.len());
    out.put_slice(&header(ty, payload.len()));
    out.put_slice(payload);
}

/// One whole frame as a fresh buffer.
pub fn encode_to_bytes(ty: FrameType, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(HEADER_LEN + payload.len());
    encode(ty, payload, &mut out);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FORWARD frames may be larger than the limit, other types not, whether the type byte
    /// arrives with the length or after it.
    #[test]
    fn a_larger_limit_holds_for_its_types_only() {
        let big = encode_to_bytes(FrameType::Forward, &[7; 150]);
        let other = encode_to_bytes(FrameType::Deposit, &[7; 150]);
        for split in [3usize, 4, 5, 60] {
            let mut dec = FrameDecoder::new(100);
            dec.allow_larger(200, &[FrameType::Forward]);
            let got = decode_all(&mut dec, &[big.slice(..split), big.slice(split..)]).unwrap();
            assert_eq!(got[0].payload.len(), 150, "split {split}");
            let mut dec = FrameDecoder::new(100);
            dec.allow_larger(200, &[FrameType::Forward]);
            let e = decode_all(&mut dec, &[other.slice(..split), other.slice(split..)]);
            assert_eq!(
                e,
                Err(FrameError::TooLarge { len: 151, max: 100 }),
                "split {split}"
            );
        }
        let mut dec = FrameDecoder::new(100);
        dec.allow_larger(200, &[FrameType::Forward]);
        let huge = encode_to_bytes(FrameType::Forward, &[7; 250]);
        assert!(matches!(
            decode_all(&mut dec, &[huge]),
            Err(FrameError::TooLarge { .. })
        ));
    }

    fn decode_all(dec: &mut FrameDecoder, chunks: &[Bytes]) -> Result<Vec<Frame>, FrameError> {
        let mut out = Vec::new();
        for c in chunks {
            dec.push(c.clone());
            while let Some(f) = dec.next_frame()? {
                out.push(f);
            }
        }
        dec.finish()?;
        Ok(out)
    }

    #[test]
    fn an_announced_frame_costs_only_the_bytes_that_arrived() {
        // A header announcing the largest frame, then a trickle: the decoder must not hold
        // the announced size (a few bytes per stream would otherwise pin 64 KiB each).
        let mut dec = FrameDecoder::new(70_000);
        let mut head = Vec::from(65_000u32.to_be_bytes());
        head.push(FrameType::Deposit as u8);
        dec.push(Bytes::from(head));
        assert!(dec.next_frame().unwrap().is_none());
        for _ in 0..100 {
            dec.push(Bytes::from_static(&[0]));
            assert!(dec.next_frame().unwrap().is_none());
        }
        assert!(
            dec.held_bytes() < 1024,
            "{} bytes held for 105 received",
            dec.held_bytes()
        );
    }

    #[test]
    fn a_frame_arriving_a_byte_at_a_time_never_costs_more_than_itself() {
        let mut buf = BytesMut::new();
        encode(FrameType::Deposit, &[7u8; 5000], &mut buf);
        let total = buf.len();
        let mut dec = FrameDecoder::new(70_000);
        let mut most = 0;
        for (i, b) in buf.iter().enumerate() {
            dec.push(Bytes::copy_from_slice(&[*b]));
            let f = dec.next_frame().unwrap();
            most = most.max(dec.held_bytes());
            assert_eq!(f.is_some(), i + 1 == total);
            if let Some(f) = f {
                assert_eq!(&f.payload[..], &[7u8; 5000][..]);
            }
        }
        assert!(most <= total, "held {most} for a frame of {total}");
    }

    #[test]
    fn single_chunk_frames_are_sliced_without_copy() {
        let mut buf = BytesMut::new();
        encode(FrameType::Deposit, b"hello", &mut buf);
        encode(FrameType::Ack, &7u64.to_be_bytes(), &mut buf);
        let chunk = buf.freeze();
        let base = chunk.as_ptr() as usize;
        let mut dec = FrameDecoder::new(1024);
        dec.push(chunk.clone());
        let f1 = dec.next_frame().unwrap().unwrap();
        assert_eq!(f1.ty, FrameType::Deposit);
        assert_eq!(&f1.payload[..], b"hello");
        assert_eq!(
            f1.payload.as_ptr() as usize,
            base + HEADER_LEN,
            "payload must alias the chunk"
        );
        let f2 = dec.next_frame().unwrap().unwrap();
        assert_eq!(f2.ty, FrameType::Ack);
        assert!(dec.next_frame().unwrap().is_none());
        assert!(dec.finish().is_ok());
    }

    #[test]
    fn byte_by_byte_feeding_reassembles() {
        let mut buf = BytesMut::new();
        encode(FrameType::Subscribe, &[9u8; 100], &mut buf);
        encode(FrameType::Info, &[], &mut buf);
        let chunks: Vec<Bytes> = buf.iter().map(|b| Bytes::copy_from_slice(&[*b])).collect();
        let frames = decode_all(&mut FrameDecoder::new(1024), &chunks).unwrap();
        assert_eq!(frames.len(), 2);
        assert_eq!(&frames[0].payload[..], &[9u8; 100][..]);
        assert_eq!(frames[1].ty, FrameType::Info);
        assert!(frames[1].payload.is_empty());
    }

    #[test]
    fn oversized_prefix_is_rejected_before_payload_arrives() {
        let mut dec = FrameDecoder::new(100);
        dec.push(Bytes::from_static(&[0, 0, 0, 101]));
        assert_eq!(
            dec.next_frame(),
            Err(FrameError::TooLarge { len: 101, max: 100 })
        );
        // A later push cannot resurrect the stream.
        dec.push(Bytes::from_static(&[0, 0, 0, 1, 0x0B]));
        assert!(dec.next_frame().is_err());
    }

    #[test]
    fn huge_prefix_in_straddling_header() {
        let mut dec = FrameDecoder::new(100);
        dec.push(Bytes::from_static(&[0xff, 0xff]));
        assert_eq!(dec.next_frame(), Ok(None));
        dec.push(Bytes::from_static(&[0xff, 0xff, 1]));
        assert_eq!(
            dec.next_frame(),
            Err(FrameError::TooLarge {
                len: u32::MAX,
                max: 100
            })
        );
    }

    #[test]
    fn zero_length_and_unknown_type_are_errors() {
        let mut dec = FrameDecoder::new(100);
        dec.push(Bytes::from_static(&[0, 0, 0, 0]));
        assert_eq!(dec.next_frame(), Err(FrameError::Empty));
        let mut dec = FrameDecoder::new(100);
        dec.push(Bytes::from_static(&[0, 0, 0, 50, 0x77]));
        assert_eq!(dec.next_frame(), Err(FrameError::UnknownType(0x77)));
    }

    #[test]
    fn truncated_stream_is_reported() {
        let mut dec = FrameDecoder::new(100);
        dec.push(Bytes::from_static(&[0, 0, 0, 10, 0x03, 1, 2]));
        assert_eq!(dec.next_frame(), Ok(None));
        assert_eq!(dec.finish(), Err(FrameError::Truncated { buffered: 7 }));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn round_trip_any_chunking(
                frames in prop::collection::vec((0..FrameType::ALL.len(), prop::collection::vec(any::<u8>(), 0..300)), 0..20),
                cuts in prop::collection::vec(0usize..10_000, 0..30),
            ) {
                let mut wire = BytesMut::new();
                for (t, p) in &frames {
                    encode(FrameType::ALL[*t], p, &mut wire);
                }
                let wire = wire.freeze();
                let mut points: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
                points.push(0);
                points.push(wire.len());
                points.sort_unstable();
                let chunks: Vec<Bytes> = points.windows(2).map(|w| wire.slice(w[0]..w[1])).collect();
                let got = decode_all(&mut FrameDecoder::new(400), &chunks).unwrap();
                prop_assert_eq!(got.len(), frames.len());
                for (g, (t, p)) in got.iter().zip(&frames) {
                    prop_assert_eq!(g.ty, FrameType::ALL[*t]);
                    prop_assert_eq!(&g.payload[..], &p[..]);
                }
            }

            /// Changing a length prefix never yields the original frames: the decoder reports
            /// an error, or ends with a truncated stream, or yields different frames.
            #[test]
            fn mutated_length_prefix_is_detected(
                payload in prop::collection::vec(any::<u8>(), 0..200),
                new_len in any::<u32>(),
            ) {
                let mut wire = BytesMut::new();
                encode(FrameType::Deposit, &payload, &mut wire);
                let orig_len = payload.len() as u32 + 1;
                prop_assume!(new_len != orig_len);
                wire[..4].copy_from_slice(&new_len.to_be_bytes());
                let res = decode_all(&mut FrameDecoder::new(300), &[wire.freeze()]);
                match res {
                    Err(_) => {}
                    Ok(frames) => {
                        prop_assert!(frames.len() != 1 || frames[0].payload[..] != payload[..]);
                    }
                }
            }
        }
    }
}
