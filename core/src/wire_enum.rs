//! One macro for the enums that are numbered on the wire.
//!
//! Each such enum is written down once, as a list of `Variant = value => "NAME"` lines, and
//! [`wire_enum!`] derives everything that has to agree with that list: the enum itself with
//! its `#[repr]`, the decoder from the wire value, the encoder back to it, the name used in
//! docs and logs, `Display`, and `ALL`, every variant in the order listed. A variant added to
//! the list is therefore known to all of these at once; behaviour that is a judgement call
//! (which statuses are retryable, say) stays hand-written beside the enum, and those `match`es
//! are exhaustive, so the compiler names every place a new variant has to be considered.

/// Declares a wire enum; see the module documentation.
///
/// ```text
/// wire_enum! {
///     /// What the enum is.
///     pub enum Name: u8 [from_u8, to_u8] {
///         /// What this variant means.
///         First = 1 => "FIRST",
///     }
/// }
/// ```
///
/// The two names in brackets are the decoder (`fn(u8) -> Option<Self>`) and the encoder
/// (`fn(Self) -> u8`), spelt out because a `macro_rules!` macro cannot build identifiers.
/// Two variants with the same value do not compile (the enum's discriminants clash).
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident : $repr:ident [$from:ident, $to:ident] {
            $(
                $(#[$vmeta:meta])*
                $variant:ident = $value:literal => $label:literal
            ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr($repr)]
        $vis enum $name {
            $(
                $(#[$vmeta])*
                $variant = $value,
            )+
        }

        impl $name {
            /// Every variant, in the order the declaration lists them.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            #[doc = concat!(
                "The variant whose wire value is `v`, or `None` if no `",
                stringify!($name),
                "` has that value."
            )]
            pub const fn $from(v: $repr) -> Option<Self> {
                match v {
                    $($value => Some(Self::$variant),)+
                    _ => None,
                }
            }

            #[doc = concat!("The wire value, a `", stringify!($repr), "`.")]
            pub const fn $to(self) -> $repr {
                self as $repr
            }

            /// The name used in docs and logs.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $label,)+
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

pub(crate) use wire_enum;

#[cfg(test)]
mod tests {
    use crate::frame::FrameType;
    use crate::status::{DepositStatus, ErrorCode};
    use crate::suite::Suite;
    use std::collections::HashSet;
    use std::fmt::Debug;

    /// Checks one wire enum against every value its repr can hold (`max` is the repr's
    /// largest value): each listed variant round-trips through the decoder, the encoder and
    /// `Display`; every value no variant has decodes to `None`; names and values are unique.
    fn check<T: Copy + Eq + Debug + std::fmt::Display>(
        all: &[T],
        from: impl Fn(u32) -> Option<T>,
        to: impl Fn(T) -> u32,
        name: impl Fn(T) -> &'static str,
        max: u32,
    ) {
        assert!(!all.is_empty());
        let mut values = HashSet::new();
        let mut names = HashSet::new();
        for &v in all {
            let wire = to(v);
            assert!(values.insert(wire), "{v:?}: value {wire} used twice");
            assert!(names.insert(name(v)), "{v:?}: name {} used twice", name(v));
            assert!(!name(v).is_empty(), "{v:?} has an empty name");
            assert_eq!(from(wire), Some(v), "{v:?} does not round-trip");
            assert_eq!(v.to_string(), name(v), "{v:?}: Display is not the name");
        }
        for wire in 0..=max {
            if !values.contains(&wire) {
                assert_eq!(from(wire), None, "value {wire} decodes but is not in ALL");
            }
        }
    }

    fn narrow<R: TryFrom<u32>>(v: u32) -> R {
        R::try_from(v).unwrap_or_else(|_| panic!("{v} is out of the repr's range"))
    }

    #[test]
    fn deposit_status() {
        check(
            DepositStatus::ALL,
            |v| DepositStatus::from_u8(narrow(v)),
            |s| s.to_u8().into(),
            DepositStatus::name,
            u8::MAX.into(),
        );
        assert_eq!(DepositStatus::ALL.len(), 12);
        assert_eq!(DepositStatus::Unavailable.to_u8(), 9);
        assert_eq!(DepositStatus::UnknownMailbox.name(), "UNKNOWN_MAILBOX");
    }

    #[test]
    fn error_code() {
        check(
            ErrorCode::ALL,
            |v| ErrorCode::from_u16(narrow(v)),
            |c| c.to_u16().into(),
            ErrorCode::name,
            u16::MAX.into(),
        );
        assert_eq!(ErrorCode::from_u16(0), None);
        assert_eq!(ErrorCode::ShuttingDown.to_u16(), 13);
    }

    #[test]
    fn frame_type() {
        check(
            FrameType::ALL,
            |v| FrameType::from_u8(narrow(v)),
            |t| t.to_u8().into(),
            FrameType::name,
            u8::MAX.into(),
        );
        assert_eq!(FrameType::from_u8(0x0F), Some(FrameType::Error));
        assert_eq!(FrameType::from_u8(0x11), None);
        assert_eq!(FrameType::InfoReply.name(), "INFO_REPLY");
    }

    #[test]
    fn suite() {
        check(
            Suite::ALL,
            |v| Suite::from_u8(narrow(v)),
            |s| s.to_u8().into(),
            Suite::name,
            u8::MAX.into(),
        );
        for &s in Suite::ALL {
            assert_eq!(s.name().parse::<Suite>(), Ok(s), "FromStr takes the name");
        }
    }
}
