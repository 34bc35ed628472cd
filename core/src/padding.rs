//! Size classes and padding, so that a body's length reveals only its class.
//!
//! A padded plaintext is `content_len: u32 BE | content | zeros`, exactly as long as asked.

/// The body sizes a relay accepts when the operator does not choose others.
pub const DEFAULT_SIZES: [u32; 5] = [256, 1024, 4096, 16384, 65536];

/// Bytes of the content-length prefix inside a padded plaintext.
pub const PAD_PREFIX: usize = 4;

/// Why a set of sizes or a padded plaintext was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaddingError {
    /// No size classes were given.
    #[error("at least one allowed body size is required")]
    NoSizes,
    /// A size class is zero or larger than sealpost allows.
    #[error("body size {0} is out of range (1..={max})", max = MAX_BODY)]
    SizeOutOfRange(u32),
    /// The content does not fit in the largest class.
    #[error("content of {len} bytes does not fit the largest body size ({max} bytes of content)")]
    TooLong {
        /// Content length.
        len: usize,
        /// Largest content that fits.
        max: usize,
    },
    /// The padded buffer is shorter than its length prefix.
    #[error("padded plaintext of {0} bytes is shorter than its 4-byte length prefix")]
    TooShort(usize),
    /// The length prefix points past the end of the buffer.
    #[error("padding length prefix {len} exceeds the {room} bytes available")]
    BadLength {
        /// The announced content length.
        len: u32,
        /// Bytes available after the prefix.
        room: usize,
    },
    /// Bytes after the content are not all zero.
    #[error("padding bytes after the content are not all zero")]
    NonZeroPadding,
}

/// The largest body size sealpost allows (16 MiB): frames stay far below u32 range.
pub const MAX_BODY: u32 = 16 * 1024 * 1024;

/// A sorted, de-duplicated, non-empty set of allowed body sizes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeClasses(Vec<u32>);

impl Default for SizeClasses {
    fn default() -> Self {
        Self(DEFAULT_SIZES.to_vec())
    }
}

impl SizeClasses {
    /// Validates and normalises a list of sizes.
    pub fn new(mut sizes: Vec<u32>) -> Result<Self, PaddingError> {
        if sizes.is_empty() {
            return Err(PaddingError::NoSizes);
        }
        if let Some(&bad) = sizes.iter().find(|&&s| s == 0 || s > MAX_BODY) {
            return Err(PaddingError::SizeOutOfRange(bad));
        }
        sizes.sort_unstable();
        sizes.dedup();
        Ok(Self(sizes))
    }

    /// A single allowed size: every body has the same length.
    pub fn single(size: u32) -> Result<Self, PaddingError> {
        Self::new(vec![size])
    }

    /// The sizes, ascending.
    pub fn as_slice(&self) -> &[u32] {
        &self.0
    }

    /// Whether `len` is an allowed size.
    pub fn contains(&self, len: u32) -> bool {
        self.0.binary_search(&len).is_ok()
    }

    /// The largest allowed size.
    pub fn max(&self) -> u32 {
        *self.0.last().expect("SizeClasses is never empty")
    }

    /// The smallest allowed size of at least `len` bytes.
    pub fn smallest_at_least(&self, len: usize) -> Option<u32> {
        self.0.iter().copied().find(|&s| s as usize >= len)
    }
}

/// Pads `content` to exactly `padded_len` bytes.
pub fn pad(content: &[u8], padded_len: usize) -> Result<Vec<u8>, PaddingError> {
    let room = padded_len.saturating_sub(PAD_PREFIX);
    if content.len() > room || padded_len < PAD_PREFIX {
        return Err(PaddingError::TooLong {
            len: content.len(),
            max: room,
        });
    }
    let mut out = vec![0u8; padded_len];
    out[..PAD_PREFIX].copy_from_slice(&(content.len() as u32).to_be_bytes());
    out[PAD_PREFIX..PAD_PREFIX + content.len()].copy_from_slice(content);
    Ok(out)
}

/// The content inside a padded plaintext, checking the prefix and that every padding byte is 0.
pub fn unpad(padded: &[u8]) -> Result<&[u8], PaddingError> {
    if padded.len() < PAD_PREFIX {
        return Err(PaddingError::TooShort(padded.len()));
    }
    let len = u32::from_be_bytes([padded[0], padded[1], padded[2], padded[3]]);
    let room = padded.len() - PAD_PREFIX;
    if len as usize > room {
        return Err(PaddingError::BadLength { len, room });
    }
    let end = PAD_PREFIX + len as usize;
    // OR all padding bytes together rather than stopping at the first non-zero one.
    let acc = padded[end..].iter().fold(0u8, |a, b| a | b);
    if acc != 0 {
        return Err(PaddingError::NonZeroPadding);
    }
    Ok(&padded[PAD_PREFIX..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn classes_normalise_and_choose() {
        let s = SizeClasses::new(vec![4096, 256, 256, 1024]).unwrap();
        assert_eq!(s.as_slice(), &[256, 1024, 4096]);
        assert_eq!(s.smallest_at_least(0), Some(256));
        assert_eq!(s.smallest_at_least(257), Some(1024));
        assert_eq!(s.smallest_at_least(4097), None);
        assert_eq!(SizeClasses::new(vec![]), Err(PaddingError::NoSizes));
        assert_eq!(
            SizeClasses::new(vec![0]),
            Err(PaddingError::SizeOutOfRange(0))
        );
        assert_eq!(SizeClasses::single(512).unwrap().as_slice(), &[512]);
    }

    #[test]
    fn malformed_padding_is_rejected() {
        assert_eq!(unpad(&[0, 0]), Err(PaddingError::TooShort(2)));
        assert_eq!(
            unpad(&[0, 0, 0, 5, 1, 2]),
            Err(PaddingError::BadLength { len: 5, room: 2 })
        );
        assert_eq!(
            unpad(&[0, 0, 0, 1, 7, 0, 1]),
            Err(PaddingError::NonZeroPadding)
        );
        assert_eq!(unpad(&[0, 0, 0, 1, 7, 0, 0]), Ok(&[7u8][..]));
        assert!(matches!(
            pad(&[1; 10], 13),
            Err(PaddingError::TooLong { len: 10, max: 9 })
        ));
    }

    proptest! {
        #[test]
        fn pad_round_trips(content in prop::collection::vec(any::<u8>(), 0..2000), extra in 0usize..500) {
            let padded = pad(&content, content.len() + PAD_PREFIX + extra).unwrap();
            prop_assert_eq!(padded.len(), content.len() + PAD_PREFIX + extra);
            prop_assert_eq!(unpad(&padded).unwrap(), &content[..]);
        }

        #[test]
        fn any_other_length_prefix_is_rejected_or_changes_content(
            content in prop::collection::vec(1u8..=255, 0..300),
            extra in 0usize..50,
            new_len in any::<u32>(),
        ) {
            let mut padded = pad(&content, content.len() + PAD_PREFIX + extra).unwrap();
            prop_assume!(new_len as usize != content.len());
            padded[..4].copy_from_slice(&new_len.to_be_bytes());
            // Content bytes are non-zero, so a shorter prefix leaves non-zero "padding" and a
            // longer one either overruns or swallows padding: never the original content.
            match unpad(&padded) {
                Err(_) => {}
                Ok(got) => prop_assert!(got.len() > content.len()),
            }
        }
    }
}
