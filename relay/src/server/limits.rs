//! Abuse limits: token buckets, and the table of connections per source address.
//!
//! Everything here takes the time as an argument instead of reading a clock, so the tests
//! drive it with made-up instants and nothing sleeps.

pub use crate::config::Rate;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A token bucket. It starts full; each event takes one token; tokens come back at the rate.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket for `rate` at `now`.
    pub fn new(rate: Rate, now: Instant) -> Self {
        Self {
            tokens: f64::from(rate.burst.max(1)),
            last: now,
        }
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens =
            (self.tokens + elapsed * f64::from(rate.per_sec)).min(f64::from(rate.burst.max(1)));
    }

    /// Takes a token, or says how long until one is there.
    pub fn try_take(&mut self, rate: Rate, now: Instant) -> Result<(), Duration> {
        if !rate.is_limited() {
            return Ok(());
        }
        self.refill(rate, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let missing = 1.0 - self.tokens;
            Err(Duration::from_secs_f64(missing / f64::from(rate.per_sec)))
        }
    }

    /// How long until the bucket holds `n` tokens (at most the burst: more never fit at
    /// once).
    pub fn wait_for(&self, rate: Rate, n: u32, now: Instant) -> Duration {
        if !rate.is_limited() {
            return Duration::ZERO;
        }
        let mut probe = self.clone();
        probe.refill(rate, now);
        let want = f64::from(n.min(rate.burst.max(1)));
        Duration::from_secs_f64((want - probe.tokens).max(0.0) / f64::from(rate.per_sec))
    }

    /// Takes `n` tokens whether or not they are there, going into debt; true while the bucket
    /// is not in debt afterwards. A bucket in debt refills to zero before it allows anything:
    /// a penalty. Going into debt costs at least `min_debt` (so that the penalty is not over
    /// in a moment and the offender back at once) and at most `max_debt`.
    pub fn charge(
        &mut self,
        rate: Rate,
        n: u32,
        min_debt: f64,
        max_debt: f64,
        now: Instant,
    ) -> bool {
        if !rate.is_limited() {
            return true;
        }
        self.refill(rate, now);
        self.tokens -= f64::from(n);
        if self.tokens < 0.0 {
            self.tokens = self.tokens.min(-min_debt).max(-max_debt);
        }
        self.tokens >= 0.0
    }

    /// Whether the bucket is in debt (see [`TokenBucket::charge`]).
    pub fn in_debt(&self, rate: Rate, now: Instant) -> bool {
        if !rate.is_limited() {
            return false;
        }
        let mut probe = self.clone();
        probe.refill(rate, now);
        probe.tokens < 0.0
    }

    /// Whether the bucket has refilled completely (it then behaves as a new one and need not
    /// be kept).
    pub fn is_full(&self, rate: Rate, now: Instant) -> bool {
        let mut probe = self.clone();
        probe.refill(rate, now);
        probe.tokens >= f64::from(rate.burst.max(1))
    }
}

/// Token buckets by key, for keys that come and go (mailboxes, sources). Buckets that have
/// refilled are forgotten, since a new bucket is full too, so the table holds only keys that
/// were busy within the last `burst / per_sec` seconds.
#[derive(Debug)]
pub struct Buckets<K> {
    rate: Rate,
    map: HashMap<K, TokenBucket>,
    /// Sweep for full buckets when the table reaches this size.
    sweep_at: usize,
}

impl<K: std::hash::Hash + Eq + Copy> Buckets<K> {
    /// An empty table for `rate`.
    pub fn new(rate: Rate) -> Self {
        Self {
            rate,
            map: HashMap::new(),
            sweep_at: 1024,
        }
    }

    /// Takes a token from `key`'s bucket, or says how long until one is there.
    pub fn try_take(&mut self, key: K, now: Instant) -> Result<(), Duration> {
        if !self.rate.is_limited() {
            return Ok(());
        }
        if self.map.len() >= self.sweep_at {
            let rate = self.rate;
            self.map.retain(|_, b| !b.is_full(rate, now));
            // Sweep again only once the table has doubled: amortised O(1) per event.
            self.sweep_at = (self.map.len() * 2).max(1024);
        }
        let rate = self.rate;
        self.map
            .entry(key)
            .or_insert_with(|| TokenBucket::new(rate, now))
            .try_take(rate, now)
    }

    /// How long until `key`'s bucket holds `n` tokens (at most the burst).
    pub fn wait_for(&self, key: K, n: u32, now: Instant) -> Duration {
        match self.map.get(&key) {
            Some(b) => b.wait_for(self.rate, n, now),
            None => Duration::ZERO,
        }
    }

    /// Keys with a bucket (busy recently).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no key has a bucket.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// The key connections are counted under: an IPv4 address, or an IPv6 /64 (one host
/// usually has a whole /64, so counting single IPv6 addresses would limit nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKey {
    /// One IPv4 address (IPv4-mapped IPv6 addresses count as IPv4).
    V4(u32),
    /// The upper 64 bits of an IPv6 address.
    V6(u64),
}

impl SourceKey {
    /// The key of a peer address.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::V4(u32::from(v4)),
                None => Self::V6((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

/// Why a connection from a source was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceRefusal {
    /// The source holds as many connections as it may.
    TooMany,
    /// The source opens connections faster than it may.
    TooFast,
    /// The source committed more faults than it may and is waiting out the penalty.
    Penalty,
}

impl SourceRefusal {
    /// The label in `/metrics`.
    pub fn label(self) -> &'static str {
        match self {
            Self::TooMany => "source_connections",
            Self::TooFast => "source_rate",
            Self::Penalty => "source_penalty",
        }
    }
}

/// The rates a [`SourceTable`] applies to each source.
#[derive(Debug, Clone, Copy)]
pub struct SourceRates {
    /// Open connections a source may hold (0: any number).
    pub max_live: usize,
    /// New connections.
    pub connections: Rate,
    /// Request streams, over all the source's connections.
    pub streams: Rate,
    /// Faults: rejected deposits (bad tag, unknown mailbox, malformed, ...), malformed or
    /// timed-out frames, requests over a rate limit. Beyond the burst the source goes into
    /// debt (at least one burst, at most ten) and its connections are closed and refused
    /// until the debt is paid back at the rate.
    pub faults: Rate,
}

/// How many bursts of faults a source can owe: the longest penalty is this many
/// times `burst / per_sec`.
const MAX_DEBT_BURSTS: f64 = 10.0;
/// A source that goes over its allowance owes at least one burst: its penalty lasts at least
/// `burst / per_sec` (10 s by default). A shorter one would let a flooder reconnect at once,
/// and every reconnection is a handshake the relay pays for.
const MIN_DEBT_BURSTS: f64 = 1.0;

#[derive(Debug)]
struct SourceEntry {
    live: usize,
    bucket: TokenBucket,
    streams: TokenBucket,
    faults: TokenBucket,
}

impl SourceEntry {
    /// Whether nothing about this source needs remembering: a new entry would be the same.
    fn is_idle(&self, rates: &SourceRates, now: Instant) -> bool {
        self.live == 0
            && self.bucket.is_full(rates.connections, now)
            && self.streams.is_full(rates.streams, now)
            && self.faults.is_full(rates.faults, now)
    }
}

#[derive(Debug)]
struct SourceState {
    map: HashMap<SourceKey, SourceEntry>,
    sweep_at: usize,
}

/// Connections per source: how many are open and how fast new ones come, and what the
/// source's connections together may do.
#[derive(Debug)]
pub struct SourceTable {
    rates: SourceRates,
    state: Mutex<SourceState>,
}

/// Holds one connection's place in its source's count; dropping it gives the place back.
#[derive(Debug)]
pub struct SourceGuard {
    table: Arc<SourceTable>,
    key: SourceKey,
}

impl SourceTable {
    /// A table applying `rates` to every source.
    pub fn new(rates: SourceRates) -> Arc<Self> {
        Arc::new(Self {
            rates,
            state: Mutex::new(SourceState {
                map: HashMap::new(),
                sweep_at: 1024,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SourceState> {
        // Nothing here panics while holding the lock; if something did, the counts are
        // still usable, so carry on rather than refuse every connection from now on.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a new connection from `ip`, or refuses it.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<SourceGuard, SourceRefusal> {
        let key = SourceKey::of(ip);
        let rates = self.rates;
        let mut st = self.lock();
        if st.map.len() >= st.sweep_at {
            st.map.retain(|_, e| !e.is_idle(&rates, now));
            st.sweep_at = (st.map.len() * 2).max(1024);
        }
        let entry = st.map.entry(key).or_insert_with(|| SourceEntry {
            live: 0,
            bucket: TokenBucket::new(rates.connections, now),
            streams: TokenBucket::new(rates.streams, now),
            faults: TokenBucket::new(rates.faults, now),
        });
        if entry.faults.in_debt(rates.faults, now) {
            return Err(SourceRefusal::Penalty);
        }
        if rates.max_live > 0 && entry.live >= rates.max_live {
            return Err(SourceRefusal::TooMany);
        }
        if entry.bucket.try_take(rates.connections, now).is_err() {
            return Err(SourceRefusal::TooFast);
        }
        entry.live += 1;
        Ok(SourceGuard {
            table: self.clone(),
            key,
        })
    }

    /// Sources the table remembers (with open connections or recent new ones).
    pub fn sources(&self) -> usize {
        self.lock().map.len()
    }

    /// Open connections counted for `ip`'s source.
    pub fn live(&self, ip: IpAddr) -> usize {
        self.lock()
            .map
            .get(&SourceKey::of(ip))
            .map_or(0, |e| e.live)
    }
}

impl SourceGuard {
    /// Takes a request stream from the source's allowance, or says how long until one is
    /// there.
    pub fn take_stream(&self, now: Instant) -> Result<(), Duration> {
        let rate = self.table.rates.streams;
        if !rate.is_limited() {
            return Ok(());
        }
        let mut st = self.table.lock();
        match st.map.get_mut(&self.key) {
            Some(e) => e.streams.try_take(rate, now),
            None => Ok(()),
        }
    }

    /// Counts `n` faults against the source; false once it is over its allowance
    /// (its connections should then be closed: it is refused until the penalty is over).
    pub fn charge_faults(&self, n: u32, now: Instant) -> bool {
        let rate = self.table.rates.faults;
        if n == 0 || !rate.is_limited() {
            return true;
        }
        let burst = f64::from(rate.burst.max(1));
        let mut st = self.table.lock();
        match st.map.get_mut(&self.key) {
            Some(e) => e.faults.charge(
                rate,
                n,
                burst * MIN_DEBT_BURSTS,
                burst * MAX_DEBT_BURSTS,
                now,
            ),
            None => true,
        }
    }

    /// Whether the source is serving a penalty (checked by its other connections).
    pub fn penalized(&self, now: Instant) -> bool {
        let rate = self.table.rates.faults;
        let st = self.table.lock();
        st.map
            .get(&self.key)
            .is_some_and(|e| e.faults.in_debt(rate, now))
    }
}

impl Drop for SourceGuard {
    fn drop(&mut self) {
        let mut st = self.table.lock();
        if let Some(e) = st.map.get_mut(&self.key) {
            e.live = e.live.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: Rate = Rate {
        per_sec: 10,
        burst: 3,
    };

    #[test]
    fn bucket_allows_the_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(R, t0);
        for _ in 0..3 {
            assert!(b.try_take(R, t0).is_ok());
        }
        let wait = b.try_take(R, t0).unwrap_err();
        assert!(wait > Duration::from_millis(99) && wait <= Duration::from_millis(100));
        // Half a token later: still refused, and the wait is shorter.
        let w2 = b.try_take(R, t0 + Duration::from_millis(50)).unwrap_err();
        assert!(w2 < wait);
        assert!(b.try_take(R, t0 + Duration::from_millis(100)).is_ok());
        assert!(b.try_take(R, t0 + Duration::from_millis(100)).is_err());
        // A long pause refills only up to the burst.
        let later = t0 + Duration::from_secs(60);
        assert!(b.is_full(R, later));
        for _ in 0..3 {
            assert!(b.try_take(R, later).is_ok());
        }
        assert!(b.try_take(R, later).is_err());
    }

    #[test]
    fn wait_for_n_tokens_is_capped_at_the_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(R, t0);
        for _ in 0..3 {
            b.try_take(R, t0).unwrap();
        }
        assert_eq!(b.wait_for(R, 1, t0), Duration::from_millis(100));
        assert_eq!(b.wait_for(R, 2, t0), Duration::from_millis(200));
        // Never more than the burst can be waited for.
        assert_eq!(b.wait_for(R, 50, t0), Duration::from_millis(300));
        assert_eq!(
            b.wait_for(R, 1, t0 + Duration::from_millis(150)),
            Duration::ZERO
        );
    }

    #[test]
    fn unlimited_never_refuses() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(Rate::UNLIMITED, t0);
        for _ in 0..10_000 {
            assert!(b.try_take(Rate::UNLIMITED, t0).is_ok());
        }
        let mut m = Buckets::new(Rate::UNLIMITED);
        assert!(m.try_take(1u32, t0).is_ok());
        assert!(m.is_empty(), "no state kept without a limit");
    }

    #[test]
    fn buckets_are_per_key_and_forgotten_once_full() {
        let t0 = Instant::now();
        let mut m = Buckets::new(R);
        for _ in 0..3 {
            assert!(m.try_take(1u32, t0).is_ok());
        }
        assert!(m.try_take(1u32, t0).is_err());
        assert!(
            m.try_take(2u32, t0).is_ok(),
            "another key has its own bucket"
        );
        // Thousands of keys busy once, long ago, are swept when the table grows.
        for k in 3..2000u32 {
            m.try_take(k, t0).unwrap();
        }
        let later = t0 + Duration::from_secs(10);
        for k in 10_000..10_100u32 {
            m.try_take(k, later).unwrap();
        }
        assert!(m.len() <= 100, "full buckets are forgotten: {}", m.len());
    }

    #[test]
    fn source_table_counts_live_connections_and_new_ones() {
        let t0 = Instant::now();
        let table = SourceTable::new(SourceRates {
            max_live: 2,
            connections: Rate::new(1, 3),
            streams: Rate::UNLIMITED,
            faults: Rate::UNLIMITED,
        });
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let g1 = table.admit(a, t0).unwrap();
        let g2 = table.admit(a, t0).unwrap();
        assert_eq!(table.admit(a, t0).unwrap_err(), SourceRefusal::TooMany);
        let _gb = table.admit(b, t0).unwrap();
        assert_eq!(table.live(a), 2);
        drop(g1);
        assert_eq!(table.live(a), 1);
        // A place is free, but the burst of 3 is spent (the refused attempt took no token).
        let g3 = table.admit(a, t0).unwrap();
        drop(g3);
        assert_eq!(table.admit(a, t0).unwrap_err(), SourceRefusal::TooFast);
        assert!(table.admit(a, t0 + Duration::from_secs(1)).is_ok());
        drop(g2);
    }

    #[test]
    fn a_source_over_its_faults_is_refused_until_it_has_paid() {
        let t0 = Instant::now();
        let table = SourceTable::new(SourceRates {
            max_live: 0,
            connections: Rate::UNLIMITED,
            streams: Rate::new(10, 2),
            faults: Rate::new(10, 20),
        });
        let a: IpAddr = "127.0.0.7".parse().unwrap();
        let g = table.admit(a, t0).unwrap();
        // Streams are counted over the source, not per connection.
        let g2 = table.admit(a, t0).unwrap();
        assert!(g.take_stream(t0).is_ok());
        assert!(g2.take_stream(t0).is_ok());
        assert!(g.take_stream(t0).is_err());
        // Twenty faults are within the allowance; thirty more are not.
        assert!(g.charge_faults(20, t0));
        assert!(!g2.charge_faults(30, t0));
        assert!(g.penalized(t0));
        assert_eq!(table.admit(a, t0).unwrap_err(), SourceRefusal::Penalty);
        // The debt of 30 is paid back at 10 a second.
        let t1 = t0 + Duration::from_millis(2900);
        assert_eq!(table.admit(a, t1).unwrap_err(), SourceRefusal::Penalty);
        assert!(table.admit(a, t0 + Duration::from_millis(3100)).is_ok());
        // One rejection too many still costs a whole burst: 2 s here.
        let t2 = t0 + Duration::from_secs(10);
        assert!(g.charge_faults(20, t2));
        assert!(!g.charge_faults(1, t2));
        assert_eq!(
            table
                .admit(a, t2 + Duration::from_millis(1900))
                .unwrap_err(),
            SourceRefusal::Penalty
        );
        assert!(table.admit(a, t2 + Duration::from_millis(2100)).is_ok());
        // The debt is capped at ten bursts, so no penalty lasts longer than 20 s here.
        let t3 = t2 + Duration::from_secs(3);
        assert!(!g.charge_faults(1_000_000, t3));
        assert_eq!(
            table.admit(a, t3 + Duration::from_secs(19)).unwrap_err(),
            SourceRefusal::Penalty
        );
        assert!(table.admit(a, t3 + Duration::from_secs(21)).is_ok());

        // Another source is not affected.
        assert!(table.admit("127.0.0.8".parse().unwrap(), t1).is_ok());
    }

    #[test]
    fn ipv6_sources_count_per_64() {
        let x = SourceKey::of("2001:db8:1:2:aaaa::1".parse().unwrap());
        let y = SourceKey::of("2001:db8:1:2:bbbb::7".parse().unwrap());
        let z = SourceKey::of("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(x, y);
        assert_ne!(x, z);
        let v4 = SourceKey::of("192.0.2.1".parse().unwrap());
        let mapped = SourceKey::of("::ffff:192.0.2.1".parse().unwrap());
        assert_eq!(v4, mapped);
    }
}
