//! Frame I/O on one QUIC stream, for server and client alike: the decoder fed by
//! `read_chunk`, and ERROR replies.

use bytes::Bytes;
use quinn::{RecvStream, SendStream};
use sealpost_core::frame::{Frame, FrameDecoder, FrameError, FrameType};
use sealpost_core::msg::{ErrorMsg, frame_with};
use sealpost_core::status::ErrorCode;

/// Why reading the next frame stopped.
#[derive(Debug)]
pub enum ReadError {
    /// The bytes are not valid frames; the peer gets an ERROR.
    Frame(FrameError),
    /// The stream or connection failed; nobody to answer.
    Stream,
}

/// The receiving half of a stream with its frame decoder.
pub struct FrameReader {
    recv: RecvStream,
    decoder: FrameDecoder,
}

impl FrameReader {
    /// Wraps a receive stream with a decoder limited to `max_frame`.
    pub fn new(recv: RecvStream, max_frame: u32) -> Self {
        Self {
            recv,
            decoder: FrameDecoder::new(max_frame),
        }
    }

    /// The next frame already received, without waiting for the network.
    pub fn buffered_frame(&mut self) -> Result<Option<Frame>, ReadError> {
        self.decoder.next_frame().map_err(ReadError::Frame)
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

    /// Reads one more chunk into the decoder; `false` at a clean end of stream.
    pub async fn fill(&mut self) -> Result<bool, ReadError> {
        match self.recv.read_chunk(usize::MAX, true).await {
            Ok(Some(chunk)) => {
                self.decoder.push(chunk.bytes);
                Ok(true)
            }
            Ok(None) => {
                self.decoder.finish().map_err(ReadError::Frame)?;
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
