//! Frame reading on one QUIC stream, for client and relay alike: the decoder fed by
//! `read_chunks`, with the relay's optional deadline for half-received frames. (The relay's
//! ERROR replies are in its own `stream` module.)

use bytes::Bytes;
use quinn::RecvStream;
use sealpost_core::frame::{Frame, FrameDecoder, FrameError, FrameType};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Why reading the next frame stopped.
#[derive(Debug)]
pub enum ReadError {
    /// The bytes are not valid frames; the peer gets an ERROR.
    Frame(FrameError),
    /// The stream or connection failed; nobody to answer.
    Stream,
}

/// Told what a reader found wrong with what the peer sent: the relay counts it against the
/// peer's source (clients set none).
pub trait PeerFaults: Send + Sync {
    /// The peer sent bytes that are not valid frames, or let a frame time out.
    fn fault(&self);
    /// A begun frame did not arrive in full within its time (reported before
    /// [`PeerFaults::fault`] for it).
    fn frame_timed_out(&self) {}
}

/// The relay's policy for half-received frames, shared by all its streams: how long a begun
/// frame may take, and how many bytes half-received frames may hold before that time is cut.
#[derive(Debug)]
pub struct FrameDeadline {
    timeout: Duration,
    /// Above `budget` bytes held, frames get this much time instead (senders trickling
    /// frames to hold the relay's memory are cut off quickly; a frame sent at any useful
    /// speed still arrives).
    pressure_timeout: Duration,
    budget: usize,
    held: AtomicUsize,
}

impl FrameDeadline {
    /// Frames get `timeout`, or `pressure_timeout` while half-received frames hold more
    /// than `budget` bytes relay-wide.
    pub fn new(timeout: Duration, pressure_timeout: Duration, budget: usize) -> Arc<Self> {
        Arc::new(Self {
            timeout,
            pressure_timeout: pressure_timeout.min(timeout),
            budget,
            held: AtomicUsize::new(0),
        })
    }

    /// Bytes half-received frames hold now, over every stream.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    fn limit_now(&self) -> Duration {
        if self.held() > self.budget {
            self.pressure_timeout
        } else {
            self.timeout
        }
    }
}

/// Chunks taken from the QUIC stream per read.
const CHUNKS_PER_READ: usize = 32;
/// Chunk slots a new reader starts with: most streams carry one small request, and an
/// attacker's thousands of idle streams should cost little. A read that fills every slot
/// doubles them, up to [`CHUNKS_PER_READ`].
const FIRST_CHUNKS: usize = 4;

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
    /// The deadline for begun frames and the relay-wide count of their bytes (`None`: no
    /// deadline, nothing counted; clients).
    deadline: Option<Arc<FrameDeadline>>,
    /// How long this reader has waited on the peer for the frame now half-read. Only waiting
    /// counts: time the relay spends not reading (its own back-pressure) is not the peer's.
    waited: Duration,
    /// This reader's share of `deadline.held`.
    counted: usize,
    /// Frames decoded so far (a read that completes one restarts the clock).
    decoded: u64,
    /// Where a framing fault or a timed-out frame is counted against the peer's source.
    peer: Option<Arc<dyn PeerFaults>>,
}

impl FrameReader {
    /// Wraps a receive stream with a decoder limited to `max_frame`.
    pub fn new(recv: RecvStream, max_frame: u32) -> Self {
        Self {
            recv,
            decoder: FrameDecoder::new(max_frame),
            ready: VecDeque::new(),
            fault: None,
            chunks: vec![Bytes::new(); FIRST_CHUNKS],
            deadline: None,
            waited: Duration::ZERO,
            counted: 0,
            decoded: 0,
            peer: None,
        }
    }

    /// Accepts frames of `types` up to `max`, beyond the reader's limit
    /// ([`FrameDecoder::allow_larger`]).
    pub fn allow_larger(mut self, max: u32, types: &'static [FrameType]) -> Self {
        self.decoder.allow_larger(max, types);
        self
    }

    /// Counts this stream's framing faults and timed-out frames against `peer`'s source.
    pub fn with_peer(mut self, peer: Arc<dyn PeerFaults>) -> Self {
        self.peer = Some(peer);
        self
    }

    /// Records a fault found in what the peer sent.
    fn set_fault(&mut self, e: FrameError) {
        self.fault = Some(e);
        if let Some(p) = &self.peer {
            p.fault();
        }
    }

    /// Limits how long a frame that has begun may take to arrive in full (the time spent
    /// waiting for its bytes); past that the reader reports [`FrameError::TimedOut`]. A peer
    /// trickling a large frame a byte at a time would otherwise hold its buffer for as long
    /// as the connection lives. The bytes of this reader's half-received frame count in
    /// `deadline`'s relay-wide total.
    pub fn with_deadline(mut self, deadline: Arc<FrameDeadline>) -> Self {
        self.deadline = Some(deadline);
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
        let got = match &self.deadline {
            // A timer only while a frame is half-read: the common case (whole frames per
            // read) pays nothing for it.
            Some(d) if !self.decoder.is_idle() => {
                let limit = d.limit_now();
                let started = tokio::time::Instant::now();
                match tokio::time::timeout(limit.saturating_sub(self.waited), read).await {
                    Ok(r) => {
                        self.waited += started.elapsed();
                        r
                    }
                    Err(_) => {
                        if let Some(p) = &self.peer {
                            p.frame_timed_out();
                        }
                        self.set_fault(FrameError::TimedOut {
                            secs: limit.as_secs().max(1),
                        });
                        self.release();
                        return Ok(true);
                    }
                }
            }
            _ => read.await,
        };
        let before = self.decoded;
        let r = self.take_chunks(got);
        if self.deadline.is_some() {
            // Each frame has its own time: one completed in this read starts the clock again
            // for the next.
            if self.decoder.is_idle() || self.decoded != before {
                self.waited = Duration::ZERO;
            }
            self.recount();
        }
        r
    }

    /// Brings this reader's share of the relay-wide count up to date.
    fn recount(&mut self) {
        if let Some(d) = &self.deadline {
            let now = if self.fault.is_some() {
                0
            } else {
                self.decoder.held_bytes()
            };
            if now >= self.counted {
                d.held.fetch_add(now - self.counted, Ordering::Relaxed);
            } else {
                d.held.fetch_sub(self.counted - now, Ordering::Relaxed);
            }
            self.counted = now;
        }
    }

    /// Gives up this reader's share of the relay-wide count (the stream is done with).
    fn release(&mut self) {
        if let Some(d) = &self.deadline {
            d.held.fetch_sub(self.counted, Ordering::Relaxed);
            self.counted = 0;
        }
    }

    fn take_chunks(
        &mut self,
        got: Result<Option<usize>, quinn::ReadError>,
    ) -> Result<bool, ReadError> {
        match got {
            Ok(Some(n)) => {
                let full = n == self.chunks.len();
                for c in self.chunks.iter_mut().take(n) {
                    self.decoder.push(std::mem::take(c));
                    loop {
                        match self.decoder.next_frame() {
                            Ok(Some(f)) => {
                                self.decoded += 1;
                                self.ready.push_back(f);
                            }
                            Ok(None) => break,
                            Err(e) => {
                                self.set_fault(e);
                                return Ok(true);
                            }
                        }
                    }
                }
                if full && self.chunks.len() < CHUNKS_PER_READ {
                    let more = (self.chunks.len() * 2).min(CHUNKS_PER_READ);
                    self.chunks.resize(more, Bytes::new());
                }
                Ok(true)
            }
            Ok(None) => {
                if let Err(e) = self.decoder.finish() {
                    self.set_fault(e);
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

impl Drop for FrameReader {
    fn drop(&mut self) {
        self.release();
    }
}
