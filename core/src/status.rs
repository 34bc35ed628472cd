//! Deposit status codes and stream error codes, as numbered on the wire.

use crate::wire_enum::wire_enum;

wire_enum! {
    /// The outcome of one deposited envelope, one byte on the wire.
    pub enum DepositStatus: u8 [from_u8, to_u8] {
        /// Stored durably (as durable as the relay's store is).
        Ok = 0 => "OK",
        /// Already stored under the same (deposit_id, nonce); not stored again. Counts as success.
        Duplicate = 1 => "DUPLICATE",
        /// No mailbox has this deposit id.
        UnknownMailbox = 2 => "UNKNOWN_MAILBOX",
        /// The deposit tag does not verify: a forgery, a wrong key or a corrupted envelope.
        BadTag = 3 => "BAD_TAG",
        /// body_len is not one of the relay's allowed sizes.
        BadSize = 4 => "BAD_SIZE",
        /// Not an envelope: too short, wrong length, reserved bytes set.
        Malformed = 5 => "MALFORMED",
        /// The mailbox's envelope or byte quota is reached.
        MailboxFull = 6 => "MAILBOX_FULL",
        /// The sender is depositing faster than the relay allows; retry later.
        RateLimited = 7 => "RATE_LIMITED",
        /// A version or suite the relay or the mailbox does not accept.
        Unsupported = 8 => "UNSUPPORTED",
        /// The relay could not store the envelope now; retry later.
        Unavailable = 9 => "UNAVAILABLE",
        /// The relay's disk is nearly full: it refuses new envelopes (and mailboxes) until an
        /// operator frees space or recipients drain their mailboxes; retry later.
        StorageFull = 10 => "STORAGE_FULL",
        /// A different envelope was already deposited under the same (deposit_id, nonce): the
        /// sender reused a nonce, so its random source is broken. Not stored.
        IdReused = 11 => "ID_REUSED",
    }
}

impl DepositStatus {
    /// Whether the envelope is stored (OK or DUPLICATE).
    pub fn is_success(self) -> bool {
        matches!(self, Self::Ok | Self::Duplicate)
    }

    /// What the status means for the person who sent the envelope, in a sentence (for
    /// clients and CLIs to show beside the name).
    pub fn explain(self) -> &'static str {
        match self {
            Self::Ok => "stored",
            Self::Duplicate => "already stored (a retry of the same envelope)",
            Self::UnknownMailbox => "no such mailbox: it was deleted, or the invitation is wrong",
            Self::BadTag => {
                "the relay could not verify the envelope: wrong deposit key or damaged envelope"
            }
            Self::BadSize => "the envelope's body size is not one the relay accepts",
            Self::Malformed => "the envelope is malformed",
            Self::MailboxFull => "the mailbox is full; try again once the recipient has read it",
            Self::RateLimited => "the mailbox receives more than the relay allows; try again later",
            Self::Unsupported => "the relay or the mailbox does not accept this version or suite",
            Self::Unavailable => "the relay could not store it now; try again later",
            Self::StorageFull => {
                "the relay's disk is nearly full; it is refusing new envelopes, try later or tell the operator"
            }
            Self::IdReused => {
                "the sender reused a deposit id and nonce with different content: its random number generator is broken; the envelope was not stored (fix or replace the sending software)"
            }
        }
    }

    /// Whether retrying the same envelope later may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Self::RateLimited | Self::Unavailable | Self::MailboxFull | Self::StorageFull
        )
    }
}

wire_enum! {
    /// The code of an ERROR frame. After sending one, the sender finishes the stream.
    pub enum ErrorCode: u16 [from_u16, to_u16] {
        /// A frame's payload does not have the layout its type requires.
        MalformedFrame = 1 => "MALFORMED_FRAME",
        /// A length prefix above the receiver's frame limit.
        FrameTooLarge = 2 => "FRAME_TOO_LARGE",
        /// A type byte that names no frame.
        UnknownFrameType = 3 => "UNKNOWN_FRAME_TYPE",
        /// A known frame where this stream does not allow it.
        UnexpectedFrame = 4 => "UNEXPECTED_FRAME",
        /// The stream ended in the middle of a frame.
        Truncated = 5 => "TRUNCATED",
        /// A subscribe or delete proof does not verify for this connection.
        BadProof = 6 => "BAD_PROOF",
        /// No mailbox has this recipient id.
        UnknownMailbox = 7 => "UNKNOWN_MAILBOX",
        /// A suite or version the relay does not accept.
        Unsupported = 8 => "UNSUPPORTED",
        /// Another subscriber took over this mailbox.
        Replaced = 9 => "REPLACED",
        /// The relay cannot serve the request now; retry later.
        Unavailable = 10 => "UNAVAILABLE",
        /// A relay limit was reached (for example the number of mailboxes).
        LimitReached = 11 => "LIMIT_REACHED",
        /// An ACK for a sequence number that was never delivered on this stream.
        BadAck = 12 => "BAD_ACK",
        /// The relay is shutting down; reconnect.
        ShuttingDown = 13 => "SHUTTING_DOWN",
        /// The peer is sending requests faster than the relay allows (for example, opening
        /// streams); the message says when to retry.
        RateLimited = 14 => "RATE_LIMITED",
        /// A request or a frame did not arrive in full within the relay's time limit.
        Timeout = 15 => "TIMEOUT",
        /// The relay's disk is nearly full and it accepts no new mailboxes now; retry later.
        StorageFull = 16 => "STORAGE_FULL",
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
