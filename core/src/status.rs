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

    /// Whether retrying the same envelope later may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Self::RateLimited | Self::Unavailable | Self::MailboxFull | Self::StorageFull
        )
    }

    /// What the status means for the person who sent the envelope and what they can do, for
    /// messages such as `relay refused the envelope: NAME: advice`. A status that is also an
    /// ERROR code reads the same as [`ErrorCode::advice`].
    pub fn advice(self) -> &'static str {
        match self {
            Self::Ok => "stored",
            Self::Duplicate => {
                "already stored (a retry of an envelope the relay has); nothing to do"
            }
            Self::UnknownMailbox => advice::UNKNOWN_MAILBOX,
            Self::BadTag => {
                "the deposit tag does not verify: the invitation is damaged or belongs to \
                 another mailbox; ask the recipient for a new invitation"
            }
            Self::BadSize => {
                "the relay does not accept this envelope's size: its size classes changed \
                 since this client asked; try again"
            }
            Self::Malformed => advice::CLIENT_BUG,
            Self::MailboxFull => {
                "the mailbox is full: more fits once the recipient receives what is waiting; \
                 try again later"
            }
            Self::RateLimited => {
                "the mailbox receives more than the relay allows; try again in a few seconds"
            }
            Self::Unsupported => advice::UNSUPPORTED,
            Self::Unavailable => advice::UNAVAILABLE,
            Self::StorageFull => advice::STORAGE_FULL,
            Self::IdReused => {
                "the sender reused a deposit id and nonce with different content: its random \
                 number generator is broken; the envelope was not stored (fix or replace the \
                 sending software)"
            }
        }
    }
}

/// Advice shared by a deposit status and an ERROR code of the same meaning, so both read
/// alike wherever a person sees them.
mod advice {
    pub(super) const UNKNOWN_MAILBOX: &str = "the relay has no such mailbox: it was deleted, or \
        the invitation or mailbox file is for another relay; the recipient can create a new \
        mailbox and share its invitation";
    pub(super) const UNSUPPORTED: &str = "the relay or the mailbox does not accept this \
        version or suite; update this program, or ask the recipient for a new invitation";
    pub(super) const UNAVAILABLE: &str = "the relay cannot do this just now (storage trouble \
        or overload); try again later, and tell the relay's operator if it persists";
    pub(super) const STORAGE_FULL: &str = "the relay's disk is nearly full: it refuses new \
        envelopes and mailboxes until space is freed; try again later, or tell the relay's \
        operator";
    pub(super) const CLIENT_BUG: &str = "the relay could not read what this program sent: a \
        bug or a version mismatch; update this program or report the bug";
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
        /// A forwarding relay could not reach the destination relay of a FORWARD, or lost
        /// it before its answer; retry later (a deposit resent is answered DUPLICATE if it
        /// was stored).
        Unreachable = 17 => "UNREACHABLE",
        /// The relay does not forward to this destination (forwarding is off, or the
        /// destination is not on its allow-list).
        ForwardRefused = 18 => "FORWARD_REFUSED",
        /// A forwarded request does not open under this relay's forwarding key.
        BadSeal = 19 => "BAD_SEAL",
    }
}

impl ErrorCode {
    /// What the code means for a person and what they can do, for messages such as
    /// `relay refused: NAME: the relay's message; advice`.
    pub fn advice(self) -> &'static str {
        match self {
            Self::MalformedFrame
            | Self::FrameTooLarge
            | Self::UnknownFrameType
            | Self::UnexpectedFrame
            | Self::Truncated
            | Self::BadAck => advice::CLIENT_BUG,
            Self::BadProof => {
                "the relay does not accept this mailbox file's proof: the file is damaged or \
                 belongs to a mailbox of another relay"
            }
            Self::UnknownMailbox => advice::UNKNOWN_MAILBOX,
            Self::Unsupported => advice::UNSUPPORTED,
            Self::Replaced => {
                "another client subscribed to this mailbox and took over: only one receives \
                 at a time"
            }
            Self::Unavailable => advice::UNAVAILABLE,
            Self::LimitReached => {
                "the relay reached one of its limits (for example its number of mailboxes); \
                 ask its operator"
            }
            Self::ShuttingDown => "the relay is restarting; try again in a moment",
            Self::RateLimited => {
                "this program sends requests faster than the relay allows; wait and try again"
            }
            Self::Timeout => {
                "a request did not arrive in full in time (a slow or broken network); try again"
            }
            Self::StorageFull => advice::STORAGE_FULL,
            Self::Unreachable => {
                "the forwarding relay could not reach the destination relay; try again later \
                 (resending a deposit that arrived meanwhile is harmless)"
            }
            Self::ForwardRefused => {
                "the forwarding relay does not forward to this destination; deposit through \
                 another relay, or directly"
            }
            Self::BadSeal => {
                "the destination relay cannot open the forwarded request: the invitation's \
                 forwarding key is not this relay's; ask for a new invitation"
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_refusal_reads_the_same_as_a_status_and_as_an_error() {
        let pairs = [
            (DepositStatus::UnknownMailbox, ErrorCode::UnknownMailbox),
            (DepositStatus::Unsupported, ErrorCode::Unsupported),
            (DepositStatus::Unavailable, ErrorCode::Unavailable),
            (DepositStatus::StorageFull, ErrorCode::StorageFull),
        ];
        for (status, code) in pairs {
            assert_eq!(status.to_string(), code.to_string());
            assert_eq!(status.advice(), code.advice());
        }
        for status in DepositStatus::ALL {
            assert!(!status.advice().is_empty());
        }
    }
}
