//! Deposit status codes and stream error codes, as numbered on the wire.

/// The outcome of one deposited envelope, one byte on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DepositStatus {
    /// Stored durably (as durable as the relay's store is).
    Ok = 0,
    /// Already stored under the same (deposit_id, nonce); not stored again. Counts as success.
    Duplicate = 1,
    /// No mailbox has this deposit id.
    UnknownMailbox = 2,
    /// The deposit tag does not verify: a forgery, a wrong key or a corrupted envelope.
    BadTag = 3,
    /// body_len is not one of the relay's allowed sizes.
    BadSize = 4,
    /// Not an envelope: too short, wrong length, reserved bytes set.
    Malformed = 5,
    /// The mailbox's envelope or byte quota is reached.
    MailboxFull = 6,
    /// The sender is depositing faster than the relay allows; retry later.
    RateLimited = 7,
    /// A version or suite the relay or the mailbox does not accept.
    Unsupported = 8,
    /// The relay could not store the envelope now; retry later.
    Unavailable = 9,
}

impl DepositStatus {
    /// The status for a wire byte.
    pub fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            0 => Self::Ok,
            1 => Self::Duplicate,
            2 => Self::UnknownMailbox,
            3 => Self::BadTag,
            4 => Self::BadSize,
            5 => Self::Malformed,
            6 => Self::MailboxFull,
            7 => Self::RateLimited,
            8 => Self::Unsupported,
            9 => Self::Unavailable,
            _ => return None,
        })
    }

    /// Whether the envelope is stored (OK or DUPLICATE).
    pub fn is_success(self) -> bool {
        matches!(self, Self::Ok | Self::Duplicate)
    }

    /// Whether retrying the same envelope later may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Self::RateLimited | Self::Unavailable | Self::MailboxFull
        )
    }

    /// The upper-case name used in docs and logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ok => "OK",
            Self::Duplicate => "DUPLICATE",
            Self::UnknownMailbox => "UNKNOWN_MAILBOX",
            Self::BadTag => "BAD_TAG",
            Self::BadSize => "BAD_SIZE",
            Self::Malformed => "MALFORMED",
            Self::MailboxFull => "MAILBOX_FULL",
            Self::RateLimited => "RATE_LIMITED",
            Self::Unsupported => "UNSUPPORTED",
            Self::Unavailable => "UNAVAILABLE",
        }
    }
}

impl std::fmt::Display for DepositStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The code of an ERROR frame. After sending one, the sender finishes the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// A frame's payload does not have the layout its type requires.
    MalformedFrame = 1,
    /// A length prefix above the receiver's frame limit.
    FrameTooLarge = 2,
    /// A type byte that names no frame.
    UnknownFrameType = 3,
    /// A known frame where this stream does not allow it.
    UnexpectedFrame = 4,
    /// The stream ended in the middle of a frame.
    Truncated = 5,
    /// A subscribe or delete proof does not verify for this connection.
    BadProof = 6,
    /// No mailbox has this recipient id.
    UnknownMailbox = 7,
    /// A suite or version the relay does not accept.
    Unsupported = 8,
    /// Another subscriber took over this mailbox.
    Replaced = 9,
    /// The relay cannot serve the request now; retry later.
    Unavailable = 10,
    /// A relay limit was reached (for example the number of mailboxes).
    LimitReached = 11,
    /// An ACK for a sequence number that was never delivered on this stream.
    BadAck = 12,
    /// The relay is shutting down; reconnect.
    ShuttingDown = 13,
    /// The peer is sending requests faster than the relay allows (for example, opening
    /// streams); the message says when to retry.
    RateLimited = 14,
    /// A request or a frame did not arrive in full within the relay's time limit.
    Timeout = 15,
}

impl ErrorCode {
    /// The code for a wire value.
    pub fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            1 => Self::MalformedFrame,
            2 => Self::FrameTooLarge,
            3 => Self::UnknownFrameType,
            4 => Self::UnexpectedFrame,
            5 => Self::Truncated,
            6 => Self::BadProof,
            7 => Self::UnknownMailbox,
            8 => Self::Unsupported,
            9 => Self::Replaced,
            10 => Self::Unavailable,
            11 => Self::LimitReached,
            12 => Self::BadAck,
            13 => Self::ShuttingDown,
            14 => Self::RateLimited,
            15 => Self::Timeout,
            _ => return None,
        })
    }

    /// The upper-case name used in docs and logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::MalformedFrame => "MALFORMED_FRAME",
            Self::FrameTooLarge => "FRAME_TOO_LARGE",
            Self::UnknownFrameType => "UNKNOWN_FRAME_TYPE",
            Self::UnexpectedFrame => "UNEXPECTED_FRAME",
            Self::Truncated => "TRUNCATED",
            Self::BadProof => "BAD_PROOF",
            Self::UnknownMailbox => "UNKNOWN_MAILBOX",
            Self::Unsupported => "UNSUPPORTED",
            Self::Replaced => "REPLACED",
            Self::Unavailable => "UNAVAILABLE",
            Self::LimitReached => "LIMIT_REACHED",
            Self::BadAck => "BAD_ACK",
            Self::ShuttingDown => "SHUTTING_DOWN",
            Self::RateLimited => "RATE_LIMITED",
            Self::Timeout => "TIMEOUT",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl From<&crate::frame::FrameError> for ErrorCode {
    fn from(e: &crate::frame::FrameError) -> Self {
        use crate::frame::FrameError;
        match e {
            FrameError::TooLarge { .. } => Self::FrameTooLarge,
            FrameError::Empty => Self::MalformedFrame,
            FrameError::UnknownType(_) => Self::UnknownFrameType,
            FrameError::Truncated { .. } => Self::Truncated,
            FrameError::TimedOut { .. } => Self::Timeout,
        }
    }
}
