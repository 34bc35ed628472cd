//! Latency histograms as reports keep them: the whole HdrHistogram, so that any percentile or
//! plot can be recomputed later, beside a percentile table a person or a plotting tool reads
//! without a decoder.

use base64::Engine as _;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use serde::{Deserialize, Serialize};

/// Quantile iteration steps per halving of the distance to 100 % (HdrHistogram's
/// `outputPercentileDistribution` default): about 100 points down to the 99.999th percentile.
const TICKS_PER_HALF_DISTANCE: u32 = 5;

/// What can go wrong reading a saved histogram back.
#[derive(Debug, thiserror::Error)]
pub enum HistogramError {
    /// The text is not base64.
    #[error("the saved latency histogram is not base64 ({0}); the report file is damaged")]
    Base64(#[from] base64::DecodeError),
    /// The bytes are not an HdrHistogram V2 (deflate) histogram.
    #[error(
        "the saved latency histogram does not decode as HdrHistogram V2 ({0:?}); the report file is damaged"
    )]
    Decode(hdrhistogram::serialization::DeserializeError),
    /// Serializing failed (out of memory or a histogram too large for the format).
    #[error("the latency histogram could not be serialized: {0:?}")]
    Encode(hdrhistogram::serialization::V2DeflateSerializeError),
}

/// One point of the percentile distribution.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Percentile {
    /// Fraction of the deliveries at or below `latency_us` (0 to 1).
    pub quantile: f64,
    /// Latency in microseconds.
    pub latency_us: u64,
}

/// A whole latency histogram, microseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SavedHistogram {
    /// Deliveries recorded.
    pub count: u64,
    /// Smallest, microseconds.
    pub min_us: u64,
    /// Mean, microseconds.
    pub mean_us: f64,
    /// Largest, microseconds.
    pub max_us: u64,
    /// The histogram in HdrHistogram's V2 deflate format, base64 (the text HdrHistogram's
    /// own tools and libraries read, starting `HISTF`); values in microseconds.
    pub hdr_v2_base64: String,
    /// The percentile distribution, HdrHistogram style (five steps per halving of the
    /// distance to 100 %), for plotting straight from the JSON.
    pub percentiles: Vec<Percentile>,
}

impl SavedHistogram {
    /// Saves `h` (values in microseconds).
    pub fn of(h: &Histogram<u64>) -> Result<Self, HistogramError> {
        let mut bytes = Vec::new();
        V2DeflateSerializer::new()
            .serialize(h, &mut bytes)
            .map_err(HistogramError::Encode)?;
        let percentiles = if h.is_empty() {
            Vec::new()
        } else {
            h.iter_quantiles(TICKS_PER_HALF_DISTANCE)
                .map(|v| Percentile {
                    quantile: v.quantile_iterated_to(),
                    latency_us: h.highest_equivalent(v.value_iterated_to()),
                })
                .collect()
        };
        Ok(Self {
            count: h.len(),
            min_us: if h.is_empty() { 0 } else { h.min() },
            mean_us: h.mean(),
            max_us: h.max(),
            hdr_v2_base64: base64::engine::general_purpose::STANDARD.encode(bytes),
            percentiles,
        })
    }

    /// The histogram back, to compute any percentile from.
    pub fn decode(&self) -> Result<Histogram<u64>, HistogramError> {
        let bytes = base64::engine::general_purpose::STANDARD.decode(&self.hdr_v2_base64)?;
        Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .map_err(HistogramError::Decode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_histogram_decodes_to_the_same_counts() {
        let mut h = crate::load::tally::new_histogram();
        for v in 1..=10_000u64 {
            h.record(v * 7).unwrap();
        }
        h.record(3_000_000).unwrap();
        let saved = SavedHistogram::of(&h).unwrap();
        assert_eq!(saved.count, 10_001);
        assert!(
            saved.hdr_v2_base64.starts_with("HISTF"),
            "{}",
            &saved.hdr_v2_base64[..8]
        );
        let back = saved.decode().unwrap();
        assert_eq!(back.len(), h.len());
        for q in [0.5, 0.9, 0.99, 0.999, 1.0] {
            assert_eq!(back.value_at_quantile(q), h.value_at_quantile(q), "q {q}");
        }
        // The table climbs to the maximum, in order.
        let p = &saved.percentiles;
        assert!(p.len() > 20, "{}", p.len());
        assert!(
            p.windows(2)
                .all(|w| w[0].quantile <= w[1].quantile && w[0].latency_us <= w[1].latency_us)
        );
        assert_eq!(p.last().unwrap().quantile, 1.0);
        assert_eq!(p.last().unwrap().latency_us, h.highest_equivalent(h.max()));
        let json = serde_json::to_string(&saved).unwrap();
        let again: SavedHistogram = serde_json::from_str(&json).unwrap();
        assert_eq!(again.hdr_v2_base64, saved.hdr_v2_base64);
        assert_eq!(again.percentiles.len(), saved.percentiles.len());
        // JSON keeps floats to within their last digit.
        for (a, b) in again.percentiles.iter().zip(&saved.percentiles) {
            assert_eq!(a.latency_us, b.latency_us);
            assert!((a.quantile - b.quantile).abs() < 1e-12);
        }
    }

    #[test]
    fn an_empty_histogram_saves_and_a_damaged_one_is_an_error() {
        let saved = SavedHistogram::of(&crate::load::tally::new_histogram()).unwrap();
        assert_eq!(saved.count, 0);
        assert!(saved.percentiles.is_empty());
        assert_eq!(saved.decode().unwrap().len(), 0);
        let bad = SavedHistogram {
            hdr_v2_base64: "not base64!".into(),
            ..saved.clone()
        };
        assert!(matches!(bad.decode(), Err(HistogramError::Base64(_))));
        let bad = SavedHistogram {
            hdr_v2_base64: "AAAA".into(),
            ..saved
        };
        assert!(matches!(bad.decode(), Err(HistogramError::Decode(_))));
    }
}
