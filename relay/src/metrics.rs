//! The relay's metrics, recorded through the `metrics` facade (the binary installs the
//! Prometheus exporter; a library user may install any recorder, or none). No label carries a
//! mailbox id or an address: labels are only statuses, shard numbers and the backend name.
//! docs/METRICS.md lists every metric with its meaning.

use ::metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

/// Current connections.
pub const CONNECTIONS: &str = "sealpost_connections";
/// Connections accepted.
pub const CONNECTIONS_ACCEPTED: &str = "sealpost_connections_accepted_total";
/// Connections refused before their handshake, labelled by `reason`: `connection_limit`
/// (the relay's), `source_connections` or `source_rate` (one source address's).
pub const CONNECTIONS_REFUSED: &str = "sealpost_connections_refused_total";
/// Handshakes in progress.
pub const HANDSHAKES: &str = "sealpost_handshakes_in_progress";
/// QUIC Retry packets sent (address validation demanded of a new connection).
pub const RETRIES: &str = "sealpost_retries_sent_total";
/// Source addresses the connection limits are tracking (open connections or recent ones).
pub const SOURCES: &str = "sealpost_sources_tracked";
/// Request streams refused with `ERROR RATE_LIMITED` (the connection opens them too fast).
pub const STREAMS_RATE_LIMITED: &str = "sealpost_streams_rate_limited_total";
/// CREATE requests answered `ERROR RATE_LIMITED` (their source creates mailboxes too fast).
pub const CREATES_RATE_LIMITED: &str = "sealpost_creates_rate_limited_total";
/// Envelope bytes queued at or being processed by the deposit shards (at most
/// `deposit_buffer_bytes`).
pub const DEPOSIT_BYTES_QUEUED: &str = "sealpost_deposit_bytes_queued";
/// Bytes held by half-received frames, relay-wide (above `partial_frame_budget_bytes`,
/// begun frames get 1 s instead of `frame_timeout_secs`).
pub const PARTIAL_FRAME_BYTES: &str = "sealpost_partial_frame_bytes";
/// Connections closed because their source sent more rejected deposits than it may (the
/// source is then refused until its penalty is over: `connections_refused{reason="source_penalty"}`).
pub const ABUSE_CLOSES: &str = "sealpost_connections_closed_for_abuse_total";
/// Streams cut off because a frame did not arrive in full within the frame timeout.
pub const FRAME_TIMEOUTS: &str = "sealpost_frame_timeouts_total";
/// Deposits answered, labelled by `status`.
pub const DEPOSITS: &str = "sealpost_deposits_total";
/// Envelopes delivered (re-sealed and written to a subscriber).
pub const DELIVERIES: &str = "sealpost_deliveries_total";
/// ACK frames applied.
pub const ACKS: &str = "sealpost_acks_total";
/// Envelope bytes received in deposits.
pub const BYTES_IN: &str = "sealpost_bytes_in_total";
/// DELIVER frame bytes sent.
pub const BYTES_OUT: &str = "sealpost_bytes_out_total";
/// Envelopes per shard batch.
pub const BATCH_SIZE: &str = "sealpost_batch_envelopes";
/// Time to verify one shard batch's tags.
pub const BATCH_VERIFY: &str = "sealpost_batch_verify_seconds";
/// Time to re-seal one delivery batch.
pub const BATCH_SEAL: &str = "sealpost_batch_seal_seconds";
/// Time for the store to make one append batch durable.
pub const STORE_COMMIT: &str = "sealpost_store_commit_seconds";
/// Mailboxes in the store.
pub const MAILBOXES: &str = "sealpost_mailboxes";
/// Envelopes held.
pub const ENVELOPES_STORED: &str = "sealpost_envelopes_stored";
/// Envelope bytes held.
pub const BYTES_STORED: &str = "sealpost_bytes_stored";
/// Work items waiting in a shard's queue, labelled by `shard`.
pub const SHARD_QUEUE: &str = "sealpost_shard_queue_depth";
/// Envelopes removed by retention expiry.
pub const EXPIRED: &str = "sealpost_expired_total";
/// Always 1, labelled by the crypto `backend` in use and the `version`.
pub const BUILD_INFO: &str = "sealpost_build_info";
/// 1 while the relay accepts connections and deposits; 0 while shutting down, while the
/// store's disk is below its free-space reserve, or after a store write failed.
pub const READY: &str = "sealpost_ready";
/// Bytes free on the disk store's filesystem (for unprivileged writers), sampled each second.
pub const STORE_FREE_BYTES: &str = "sealpost_store_free_bytes";
/// The free-space reserve (`min_free_disk_bytes`).
pub const STORE_RESERVE_BYTES: &str = "sealpost_store_reserve_bytes";
/// 1 while the disk store's free space is below its reserve (deposits and CREATE refused
/// with STORAGE_FULL), else 0.
pub const STORE_SPACE_LOW: &str = "sealpost_store_space_low";
/// 1 once a write to the store failed (the relay then stops and must be restarted), else 0.
pub const STORE_FAILED: &str = "sealpost_store_failed";
/// 1 while the store cannot take deposits for now (cluster store: Valkey unreachable or not
/// confirming writes durable); clears by itself, the relay keeps running.
pub const STORE_UNAVAILABLE: &str = "sealpost_store_unavailable";
/// Envelopes acknowledged to senders (by the store's checkpoint) that the store did not
/// recover at start-up; 0 when all were recovered.
pub const STORE_RECOVERY_SHORTFALL: &str = "sealpost_store_recovery_shortfall_envelopes";
/// When (Unix seconds) a store failure stopped the previous run, from the marker that run
/// left; 0 when it did not end so. Unlike [`STORE_FAILED`] a scrape gets to see it: the
/// failing run exits at once.
pub const STORE_PREVIOUS_FAILURE: &str = "sealpost_store_previous_failure_timestamp_seconds";
/// FORWARD requests of clients at this (forwarding) relay, by result.
pub const FORWARDS: &str = "sealpost_forwards_total";
/// FORWARDED requests other relays passed to this (destination) relay, by result.
pub const FORWARDED: &str = "sealpost_forwarded_total";
/// FORWARDED requests that opened under a previous forwarding key (senders whose invitation
/// predates the last rotation); when it stays at 0, the overlap can end without harm.
pub const FORWARDED_PREVIOUS_KEY: &str = "sealpost_forwarded_previous_key_total";
/// Connections to destination relays held by the forwarding pool.
pub const FORWARD_POOL: &str = "sealpost_forward_pool_connections";

/// Live at-rest epoch keys (docs/AT-REST.md).
pub const AT_REST_KEYS: &str = "sealpost_at_rest_epoch_keys";
/// At-rest epoch keys destroyed (their envelopes all acknowledged, expired or deleted).
pub const AT_REST_DESTROYED: &str = "sealpost_at_rest_keys_destroyed_total";
/// Envelopes found sealed under an epoch key that no longer exists, skipped unread.
pub const AT_REST_UNREADABLE: &str = "sealpost_at_rest_unreadable_envelopes_total";
/// Envelopes a shared store refused as sealed under an epoch past its settle grace, sealed
/// again under the next epoch.
pub const AT_REST_RESEALED: &str = "sealpost_at_rest_resealed_envelopes_total";

/// Registers every metric's help text and unit with the installed recorder.
pub fn describe() {
    describe_gauge!(CONNECTIONS, "QUIC connections open now");
    describe_counter!(CONNECTIONS_ACCEPTED, "QUIC connections accepted");
    describe_counter!(
        CONNECTIONS_REFUSED,
        "QUIC connections refused before the handshake, by reason (connection_limit, source_connections, source_rate)"
    );
    describe_gauge!(HANDSHAKES, "QUIC handshakes in progress");
    describe_counter!(
        FORWARDS,
        "FORWARD requests of clients, by result (answered, destination_error, unreachable, refused, rate_limited, malformed)"
    );
    describe_counter!(
        FORWARDED,
        "FORWARDED requests from forwarding relays, by result (answered, bad_seal, malformed, error)"
    );
    describe_counter!(
        FORWARDED_PREVIOUS_KEY,
        "FORWARDED requests opened under a previous forwarding key, inside its overlap after a rotation"
    );
    describe_gauge!(
        FORWARD_POOL,
        "connections to destination relays held for forwarding"
    );
    describe_counter!(
        RETRIES,
        "QUIC Retry packets sent to validate a new connection's address"
    );
    describe_gauge!(
        SOURCES,
        "source addresses tracked by the per-source connection limits"
    );
    describe_counter!(
        STREAMS_RATE_LIMITED,
        "request streams refused because their connection opened them too fast"
    );
    describe_counter!(
        CREATES_RATE_LIMITED,
        "mailbox creations refused because their source address creates them too fast"
    );
    describe_gauge!(
        DEPOSIT_BYTES_QUEUED,
        Unit::Bytes,
        "envelope bytes queued at or being processed by the deposit shards"
    );
    describe_gauge!(
        PARTIAL_FRAME_BYTES,
        Unit::Bytes,
        "bytes held by half-received frames"
    );
    describe_counter!(
        ABUSE_CLOSES,
        "connections closed because their source sent too many rejected deposits"
    );
    describe_counter!(
        FRAME_TIMEOUTS,
        "streams cut off because a frame did not arrive in full within the frame timeout"
    );
    describe_counter!(DEPOSITS, "deposits answered, by status");
    describe_counter!(DELIVERIES, "envelopes re-sealed and delivered");
    describe_counter!(ACKS, "cumulative ACKs applied");
    describe_counter!(BYTES_IN, Unit::Bytes, "envelope bytes received in deposits");
    describe_counter!(BYTES_OUT, Unit::Bytes, "DELIVER frame bytes sent");
    describe_histogram!(BATCH_SIZE, Unit::Count, "envelopes per shard batch");
    describe_histogram!(
        BATCH_VERIFY,
        Unit::Seconds,
        "time to verify one shard batch's deposit tags"
    );
    describe_histogram!(
        BATCH_SEAL,
        Unit::Seconds,
        "time to re-seal one delivery batch"
    );
    describe_histogram!(
        STORE_COMMIT,
        Unit::Seconds,
        "time for the store to make one append batch durable"
    );
    describe_gauge!(MAILBOXES, "mailboxes in the store");
    describe_gauge!(ENVELOPES_STORED, "envelopes held in the store");
    describe_gauge!(
        BYTES_STORED,
        Unit::Bytes,
        "envelope bytes held in the store"
    );
    describe_gauge!(SHARD_QUEUE, "work items waiting in a deposit shard's queue");
    describe_counter!(EXPIRED, "envelopes removed by retention expiry");
    describe_gauge!(
        AT_REST_KEYS,
        "at-rest epoch keys alive (each destroyed once its envelopes are all gone)"
    );
    describe_counter!(
        AT_REST_DESTROYED,
        "at-rest epoch keys destroyed (crypto-shredding)"
    );
    describe_counter!(
        AT_REST_UNREADABLE,
        "envelopes sealed under an epoch key that no longer exists, skipped unread (a lost keyring)"
    );
    describe_counter!(
        AT_REST_RESEALED,
        "envelopes the cluster refused as sealed under an epoch past its settle grace, sealed again under the next (a relay clock behind the cluster's)"
    );
    describe_gauge!(BUILD_INFO, "always 1; labels: version, crypto backend");
    describe_gauge!(
        READY,
        "1 while accepting connections and deposits; 0 when shutting down, below the disk reserve or after a store failure"
    );
    describe_gauge!(
        STORE_FREE_BYTES,
        Unit::Bytes,
        "bytes free on the disk store's filesystem"
    );
    describe_gauge!(
        STORE_RESERVE_BYTES,
        Unit::Bytes,
        "free-space reserve below which deposits are refused (min_free_disk_bytes)"
    );
    describe_gauge!(
        STORE_SPACE_LOW,
        "1 while the store's disk is below its free-space reserve (deposits refused)"
    );
    describe_gauge!(
        STORE_RECOVERY_SHORTFALL,
        "envelopes acknowledged to senders that the store did not recover at start-up"
    );
    describe_gauge!(
        STORE_PREVIOUS_FAILURE,
        "when (Unix seconds) a store write failure stopped the previous run; 0 if none did"
    );
    describe_gauge!(
        STORE_FAILED,
        "1 once a store write failed (the relay stops and must restart)"
    );
    describe_gauge!(
        STORE_UNAVAILABLE,
        "1 while the store cannot take deposits for now (Valkey unreachable or not confirming writes); clears by itself"
    );
}

/// Creates every counter and gauge at zero, so that dashboards and alerts see them before
/// the first event (a counter that does not exist yet reads as "no data", not 0).
pub fn register_all() {
    for c in [
        CONNECTIONS_ACCEPTED,
        RETRIES,
        STREAMS_RATE_LIMITED,
        CREATES_RATE_LIMITED,
        ABUSE_CLOSES,
        FRAME_TIMEOUTS,
        DELIVERIES,
        ACKS,
        BYTES_IN,
        BYTES_OUT,
        EXPIRED,
        AT_REST_DESTROYED,
        AT_REST_UNREADABLE,
        AT_REST_RESEALED,
        FORWARDED_PREVIOUS_KEY,
    ] {
        ::metrics::counter!(c).increment(0);
    }
    ::metrics::counter!(DEPOSITS, "status" => "ok").increment(0);
    ::metrics::counter!(DEPOSITS, "status" => "rate_limited").increment(0);
    for reason in [
        "connection_limit",
        "source_connections",
        "source_rate",
        "source_penalty",
    ] {
        ::metrics::counter!(CONNECTIONS_REFUSED, "reason" => reason).increment(0);
    }
    for g in [
        CONNECTIONS,
        HANDSHAKES,
        SOURCES,
        DEPOSIT_BYTES_QUEUED,
        PARTIAL_FRAME_BYTES,
        MAILBOXES,
        ENVELOPES_STORED,
        BYTES_STORED,
        STORE_SPACE_LOW,
        STORE_FAILED,
        STORE_UNAVAILABLE,
        STORE_PREVIOUS_FAILURE,
        AT_REST_KEYS,
    ] {
        ::metrics::gauge!(g).set(0.0);
    }
}

/// The label value of a deposit status.
pub fn status_label(s: sealpost_core::status::DepositStatus) -> &'static str {
    use sealpost_core::status::DepositStatus as S;
    match s {
        S::Ok => "ok",
        S::Duplicate => "duplicate",
        S::UnknownMailbox => "unknown_mailbox",
        S::BadTag => "bad_tag",
        S::BadSize => "bad_size",
        S::Malformed => "malformed",
        S::MailboxFull => "mailbox_full",
        S::RateLimited => "rate_limited",
        S::Unsupported => "unsupported",
        S::Unavailable => "unavailable",
        S::StorageFull => "storage_full",
        S::IdReused => "id_reused",
    }
}
