//! Group commit on the primaries: one batch's appends go to each primary as one pipeline of
//! function calls, followed by WAITAOF on the same connection, and count as stored only once
//! WAITAOF confirms the primary and at least one replica fsynced them.
//!
//! Why the same connection, and one no one else uses: WAITAOF waits for the writes *of the
//! connection it is sent on* (the server remembers each client's last write offset), so it
//! must follow the writes on their own connection; and it blocks that connection while it
//! waits, so a connection shared with reads would stall them. Each primary gets a few
//! dedicated connections; a batch holds one from its pipeline to its WAITAOF.
//!
//! Why WAITAOF is sent in short slices: a replica reports its fsynced offset when asked
//! (a GETACK, sent when a WAITAOF starts to block) and otherwise once a second. A large
//! pipeline reaches the replica in pieces, so the answer to the first GETACK often predates
//! the last piece, and a single long WAITAOF then waits for the once-a-second report. Asking
//! again after a few milliseconds asks the replica again (measured: docs/CLUSTER.md).

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Pipeline, Value};
use std::collections::HashMap;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

/// Dedicated connections per primary: batches beyond this many wait (and commit together).
const CONNS_PER_PRIMARY: usize = 4;
/// One WAITAOF slice, in milliseconds.
const SLICE_MS: u64 = 5;

/// A slot range and the address of its primary.
#[derive(Debug, Clone)]
struct Range {
    first: u16,
    last: u16,
    primary: String,
    replicas: Vec<String>,
}

type Conn = tokio::sync::Mutex<Option<MultiplexedConnection>>;

/// The slot map and the dedicated connections.
pub struct Committer {
    seeds: Vec<String>,
    ranges: RwLock<Vec<Range>>,
    conns: Mutex<HashMap<String, std::sync::Arc<[Conn]>>>,
    timeout: Duration,
}

/// Why a group was not confirmed durable: its appends are answered UNAVAILABLE.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// The connection or a command failed.
    #[error("{primary}: {why}")]
    Failed {
        /// The primary.
        primary: String,
        /// What failed.
        why: String,
    },
    /// WAITAOF did not confirm in time.
    #[error(
        "{primary}: WAITAOF confirmed fsync on {local} local and {replicas} replica(s) within {timeout:?}, needs 1 and 1"
    )]
    NotDurable {
        /// The primary.
        primary: String,
        /// Local fsync confirmations.
        local: i64,
        /// Replica fsync confirmations.
        replicas: i64,
        /// The deadline.
        timeout: Duration,
    },
}

impl Committer {
    /// A committer that learns the slot map from `seeds` and waits `timeout` for WAITAOF.
    pub fn new(seeds: Vec<String>, timeout: Duration) -> Self {
        Self {
            seeds,
            ranges: RwLock::new(Vec::new()),
            conns: Mutex::new(HashMap::new()),
            timeout,
        }
    }

    /// A plain (not cluster-aware) connection to one node.
    pub async fn connect(
        addr: &str,
        timeout: Duration,
    ) -> redis::RedisResult<MultiplexedConnection> {
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(timeout + Duration::from_secs(2)));
        redis::Client::open(format!("redis://{addr}/"))?
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
    }

    /// Reads the slot map (CLUSTER SLOTS) from the first seed that answers; returns the
    /// primaries' addresses and their replicas'.
    pub async fn refresh_all(&self) -> Result<(Vec<String>, Vec<String>), String> {
        let primaries = self.refresh().await?;
        let mut replicas: Vec<String> = self
            .ranges
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .flat_map(|r| r.replicas.iter().cloned())
            .collect();
        replicas.sort();
        replicas.dedup();
        Ok((primaries, replicas))
    }

    /// Reads the slot map (CLUSTER SLOTS) from the first seed that answers; returns the
    /// primaries' addresses.
    pub async fn refresh(&self) -> Result<Vec<String>, String> {
        let mut last = String::from("no nodes given");
        for seed in &self.seeds {
            let slots: redis::RedisResult<Value> = async {
                let mut c = Self::connect(seed, Duration::from_secs(2)).await?;
                redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut c).await
            }
            .await;
            match slots
                .map_err(|e| e.to_string())
                .and_then(|v| parse_slots(v, seed))
            {
                Ok(ranges) => {
                    let mut primaries: Vec<String> =
                        ranges.iter().map(|r| r.primary.clone()).collect();
                    primaries.sort();
                    primaries.dedup();
                    *self.ranges.write().unwrap_or_else(|p| p.into_inner()) = ranges;
                    return Ok(primaries);
                }
                Err(e) => last = format!("{seed}: {e}"),
            }
        }
        Err(last)
    }

    /// Each primary's slots, as last learnt.
    pub fn slots_by_primary(&self) -> HashMap<String, Vec<u16>> {
        let mut out: HashMap<String, Vec<u16>> = HashMap::new();
        for r in self.ranges.read().unwrap_or_else(|p| p.into_inner()).iter() {
            out.entry(r.primary.clone())
                .or_default()
                .extend(r.first..=r.last);
        }
        out
    }

    /// The slot ranges and their primaries, as last learnt: equal before and after something
    /// if no slot changed primary in between (or the map was not learnt again).
    pub fn slot_map(&self) -> Vec<(u16, u16, String)> {
        let mut map: Vec<(u16, u16, String)> = self
            .ranges
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|r| (r.first, r.last, r.primary.clone()))
            .collect();
        map.sort();
        map
    }

    /// The primary serving `slot`, as last learnt.
    pub fn primary_of(&self, slot: u16) -> Option<String> {
        self.ranges
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|r| r.first <= slot && slot <= r.last)
            .map(|r| r.primary.clone())
    }

    fn pool(&self, primary: &str) -> std::sync::Arc<[Conn]> {
        let mut g = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        g.entry(primary.to_owned())
            .or_insert_with(|| {
                (0..CONNS_PER_PRIMARY)
                    .map(|_| tokio::sync::Mutex::new(None))
                    .collect()
            })
            .clone()
    }

    /// Runs `pipe` (`n` commands) on `primary` and confirms it durable; the commands' answers.
    pub async fn commit(
        &self,
        primary: &str,
        pipe: &mut Pipeline,
        n: usize,
    ) -> Result<Vec<Value>, CommitError> {
        let failed = |why: String| CommitError::Failed {
            primary: primary.to_owned(),
            why,
        };
        let pool = self.pool(primary);
        // A free connection if there is one, else wait for one chosen by the batch size.
        let mut guard = match pool.iter().find_map(|c| c.try_lock().ok()) {
            Some(g) => g,
            None => pool[n % pool.len()].lock().await,
        };
        if guard.is_none() {
            *guard = Some(
                Self::connect(primary, self.timeout)
                    .await
                    .map_err(|e| failed(e.to_string()))?,
            );
        }
        let Some(conn) = guard.as_mut() else {
            return Err(failed("no connection".into()));
        };
        pipe.cmd("WAITAOF").arg(1).arg(1).arg(SLICE_MS);
        let started = Instant::now();
        let mut answers: Vec<Value> = match pipe.query_async(conn).await {
            Ok(a) => a,
            Err(e) => {
                if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() {
                    *guard = None;
                }
                return Err(failed(e.to_string()));
            }
        };
        let mut counts = answers.pop();
        loop {
            let (local, replicas) = match &counts {
                Some(Value::Array(v)) => match v.as_slice() {
                    [Value::Int(l), Value::Int(r)] => (*l, *r),
                    _ => (0, 0),
                },
                _ => (0, 0),
            };
            if local >= 1 && replicas >= 1 {
                break;
            }
            if started.elapsed() >= self.timeout {
                return Err(CommitError::NotDurable {
                    primary: primary.to_owned(),
                    local,
                    replicas,
                    timeout: self.timeout,
                });
            }
            counts = match redis::cmd("WAITAOF")
                .arg(1)
                .arg(1)
                .arg(SLICE_MS)
                .query_async(conn)
                .await
            {
                Ok(v) => Some(v),
                Err(e) => {
                    *guard = None;
                    return Err(failed(e.to_string()));
                }
            };
        }
        if answers.len() != n {
            return Err(failed(format!("{} answers to {n} commands", answers.len())));
        }
        Ok(answers)
    }
}

/// The ranges of a CLUSTER SLOTS answer from `seed`: `[[first, last, [host, port, id, ...],
/// replicas...]]`.
fn parse_slots(v: Value, seed: &str) -> Result<Vec<Range>, String> {
    // A node that does not know its own address (no `cluster-announce-ip`, alone in its
    // cluster) answers an empty host, meaning "the address you reached me at".
    let seed_host = seed.rsplit_once(':').map_or(seed, |(h, _)| h);
    let Value::Array(entries) = v else {
        return Err(format!("CLUSTER SLOTS answered {v:?}"));
    };
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let Value::Array(e) = e else {
            return Err("CLUSTER SLOTS: an entry is not an array".into());
        };
        let (Some(Value::Int(first)), Some(Value::Int(last)), Some(Value::Array(node))) =
            (e.first(), e.get(1), e.get(2))
        else {
            return Err("CLUSTER SLOTS: malformed entry".into());
        };
        let replicas = e[3..]
            .iter()
            .map(|r| match r {
                Value::Array(r) => address(r, seed_host),
                _ => Err("CLUSTER SLOTS: a replica is not an array".into()),
            })
            .collect::<Result<_, String>>()?;
        out.push(Range {
            first: u16::try_from(*first).map_err(|e| e.to_string())?,
            last: u16::try_from(*last).map_err(|e| e.to_string())?,
            primary: address(node, seed_host)?,
            replicas,
        });
    }
    Ok(out)
}

/// `HOST:PORT` of a CLUSTER SLOTS node entry (`[host, port, id, ...]`); an empty host is
/// `seed_host`.
fn address(node: &[Value], seed_host: &str) -> Result<String, String> {
    let host = match node.first() {
        Some(Value::BulkString(h)) => String::from_utf8_lossy(h).into_owned(),
        Some(Value::SimpleString(h)) => h.clone(),
        _ => return Err("CLUSTER SLOTS: node without a host".into()),
    };
    let host = if host.is_empty() {
        seed_host.to_owned()
    } else {
        host
    };
    let Some(Value::Int(port)) = node.get(1) else {
        return Err("CLUSTER SLOTS: node without a port".into());
    };
    Ok(format!("{host}:{port}"))
}
