//! Frame I/O on one QUIC stream, for server and client alike: the decoder fed by
//! `read_chunk`, and ERROR replies.

use bytes::Bytes;
use quinn::{RecvStream, SendStream};
use sealpost_core::frame::{Frame, FrameDecoder, FrameError, FrameType};
use sealpost_core::msg::{ErrorMsg, frame_with};
use sealpost_core::status::ErrorCode;
use std::collections::VecDeque;

/// Why reading the next frame stopped.
#[derive(Debug)]
pub enum ReadError {
    /// The bytes are not valid frames; the peer gets an ERROR.
    Frame(FrameError),
    /// The stream or connection failed; nobody to answer.
    Stream,
}

/// Chunks taken from the QUIC stream per read.
const CHUNKS_PER_READ: usize = 32;

/// The receiving half of a stream with its frame decoder.
///
/// A read takes every chunk quinn has buffered at once (`read_chunks`), not one packet's worth,
/// so that a deposit batch holds everything that arrived while the previous batch was being
/// committed: one fsync covers many envelopes instead of one or two.
pub struct FrameReader {
    recv: RecvStream,
    decoder: FrameDecoder,
    /// Frames decoded but not yet taken.
    ready: VecDeque<Frame>,
    /// A framing fault found after the frames in `ready`.
    fault: Option<FrameError>,
    chunks: Vec<Bytes>,
    /// How long a begun frame may take to arrive in full (`None`: as long as it likes).
    frame_timeout: Option<std::time::Duration>,
    /// When the frame now half-read began arriving.
    partial_since: Option<tokio::time::Instant>,
}

impl FrameReader {
    /// Wraps a receive stream with a decoder limited to `max_frame`.
    pub fn new(recv: RecvStream, max_frame: u32) -> Self {
        Self {
            recv,
            decoder: FrameDecoder::new(max_frame),
            ready: VecDeque::new(),
            fault: None,
            chunks: vec![Bytes::new(); CHUNKS_PER_READ],
            frame_timeout: None,
            partial_since: None,
        }
    }

    /// Limits how long a frame that has begun may take to arrive in full; past that the
    /// reader reports [`FrameError::TimedOut`]. A peer trickling a large frame a byte at a
    /// time would otherwise hold its buffer for as long as the connection lives.
    pub fn with_frame_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.frame_timeout = Some(timeout);
        self
    }

    /// The next frame already received, without waiting for the network.
    pub fn buffered_frame(&mut self) -> Result<Option<Frame>, ReadError> {
        if let Some(f) = self.ready.pop_front() {
            return Ok(Some(f));
        }
        match self.fault.take() {
            Some(e) => Err(ReadError::Frame(e)),
            None => Ok(None),
        }
    }

    /// The next frame; `Ok(None)` at a clean end of stream.
    pub async fn next_frame(&mut self) -> Result<Option<Frame>, ReadError> {
        loop {
            if let Some(f) = self.buffered_frame()? {
                return Ok(Some(f));
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }

    /// Waits for data and takes everything buffered; `false` at a clean end of stream. After a
    /// framing fault nothing more is read; the fault comes out of `buffered_frame` once the
    /// frames before it have.
    pub async fn fill(&mut self) -> Result<bool, ReadError> {
        if self.fault.is_some() {
            return Ok(true);
        }
        let read = self.recv.read_chunks(&mut self.chunks);
        let got = match (self.frame_timeout, self.partial_since) {
            // A timer only while a frame is half-read: the common case (whole frames per
            // read) pays nothing for it.
            (Some(limit), Some(since)) => {
                match tokio::time::timeout_at(since + limit, read).await {
                    Ok(r) => r,
                    Err(_) => {
                        ::metrics::counter!(crate::metrics::FRAME_TIMEOUTS).increment(1);
                        self.fault = Some(FrameError::TimedOut {
                            secs: limit.as_secs(),
                        });
                        return Ok(true);
                    }
                }
            }
            _ => read.await,
        };
        let r = self.take_chunks(got);
        if self.frame_timeout.is_some() {
            self.partial_since = match (self.decoder.is_idle(), self.partial_since) {
                (true, _) => None,
                (false, Some(t)) => Some(t),
                (false, None) => Some(tokio::time::Instant::now()),
            };
        }
        r
    }

    fn take_chunks(
        &mut self,
        got: Result<Option<usize>, quinn::ReadError>,
    ) -> Result<bool, ReadError> {
        match got {
            Ok(Some(n)) => {
                for c in self.chunks.iter_mut().take(n) {
                    self.decoder.push(std::mem::take(c));
                    loop {
                        match self.decoder.next_frame() {
                            Ok(Some(f)) => self.ready.push_back(f),
                            Ok(None) => break,
                            Err(e) => {
                                self.fault = Some(e);
                                return Ok(true);
                            }
                        }
                    }
                }
                Ok(true)
            }
            Ok(None) => {
                if let Err(e) = self.decoder.finish() {
                    self.fault = Some(e);
                    return Ok(true);
                }
                Ok(false)
            }
            Err(_) => Err(ReadError::Stream),
        }
    }

    /// Tells the peer to stop sending; used after refusing a stream.
    pub fn stop(&mut self) {
        let _ = self.recv.stop(0u32.into());
    }
}

/// An ERROR frame.
pub fn error_frame(code: ErrorCode, message: impl Into<String>) -> Bytes {
    let e = ErrorMsg::new(code, message);
    frame_with(FrameType::Error, |b| e.encode(b))
}

/// Sends an ERROR, finishes the stream and stops reading from it.
pub async fn refuse(
    send: &mut SendStream,
    reader: Option<&mut FrameReader>,
    code: ErrorCode,
    message: impl Into<String>,
) {
    let message = message.into();
    tracing::debug!(code = %code, %message, "refusing stream");
    let _ = send.write_all(&error_frame(code, message)).await;
    let _ = send.finish();
    if let Some(r) = reader {
        r.stop();
    }
}

/// The ERROR to send for a framing fault.
pub fn frame_error_reply(e: &FrameError) -> (ErrorCode, String) {
    (ErrorCode::from(e), e.to_string())
}
