//! The relay's side of frame I/O on a stream: ERROR replies, and how a reader's faults are
//! counted against a peer. The reader itself is `sealpost_client::stream::FrameReader`,
//! shared with clients.

use bytes::Bytes;
use quinn::SendStream;
use sealpost_client::stream::{FrameReader, PeerFaults};
use sealpost_core::frame::{FrameError, FrameType};
use sealpost_core::msg::{ErrorMsg, frame_with};
use sealpost_core::status::ErrorCode;

impl PeerFaults for crate::server::Peer {
    fn fault(&self) {
        self.charge_faults(1, std::time::Instant::now());
    }

    fn frame_timed_out(&self) {
        ::metrics::counter!(crate::metrics::FRAME_TIMEOUTS).increment(1);
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
