//! Where the cluster store keeps things: every key of one mailbox under the hash tag
//! `{m:<hex recipient id>}`, so a mailbox lives in one slot and one function call on its
//! primary changes it atomically.
//!
//! | key                | type   | holds                                                        |
//! |--------------------|--------|--------------------------------------------------------------|
//! | `{m:<rid>}`        | hash   | `rec` (the sealed record), `seq`, `n` (envelopes), `b` (bytes), `sub` (subscriber epoch), `dups` (DUPLICATE answers), `lt` (last stamp) |
//! | `{m:<rid>}:q`      | stream | held envelopes, id `<seq>-0`: stored at, nonce, digest, body  |
//! | `{m:<rid>}:d`      | hash   | the dedupe window: nonce -> digest ‖ seq                      |
//! | `{m:<rid>}:w`      | list   | removed `seq:nonce` in order, to forget beyond the window    |
//! | `{m:<rid>}:c`      | channel| wake-ups (the new sequence number), kicks (`k<epoch>`), `d` on deletion |
//! | `{s<n>}:stats`     | hash   | per slot: `m` mailboxes, `e` envelopes, `b` bytes (below)     |
//! | `{s<n>}:alive`     | string | the health probe's write on the slot's primary, expiring in 10 s |
//! | `{d:<deposit id>}` | string | the recipient id of the mailbox with this deposit id          |
//! | `sealpost:prf`     | string | the deposit-id PRF key, sealed under the master key           |
//! | `sealpost:mailboxes` | string | the mailbox count, for `max_mailboxes`                      |
//! | `sealpost:at-rest:settle` | string | the at-rest settle grace (ms) every relay uses, set by the first |
//!
//! The per-slot counters let `stats` read 16 384 small hashes instead of every mailbox: the
//! functions keep them, each in the slot of the mailbox it changes, under a tag `s<n>` picked
//! (at first use, by trying n = 0, 1, ...) to hash to that slot.
//!
//! The deposit-id lookup key lives in another slot than its mailbox, so no function can change
//! both. It stays consistent because its value never changes: a deposit id is a keyed PRF of
//! the recipient id, so the lookup key of a deposit id can only ever name that one mailbox.
//! Creation writes it before the mailbox, deletion removes it after the mailbox; a crash in
//! between leaves a lookup key without a mailbox, which every reader treats as "no mailbox"
//! (the deposit function itself checks that the mailbox exists) and the next creation or
//! deletion of that mailbox overwrites or removes.

use sealpost_core::{DepositId, RecipientId};

/// The key holding the sealed deposit-id PRF key (no hash tag: read once at start-up).
pub const PRF_KEY: &str = "sealpost:prf";
/// The AAD the PRF key is sealed with.
pub const PRF_AAD: &[u8] = b"sealpost/1 cluster prf key";
/// The cluster-wide mailbox count.
pub const MAILBOX_COUNT: &str = "sealpost:mailboxes";
/// The at-rest settle grace in milliseconds that every relay of the cluster uses
/// ([`super::ClusterStore::agreed_settle`]).
pub const SETTLE_KEY: &str = "sealpost:at-rest:settle";
/// The `SCAN MATCH` pattern of the mailboxes' envelope streams (`{m:<rid>}:q`): a mailbox
/// that never held an envelope has none, so the retention sweep does not visit it.
pub const STREAM_PATTERN: &str = "{m:*}:q";

/// Keys one SCAN step asks a node for when a sweep walks its mailboxes: one page in memory
/// and one pipeline per page.
pub const SCAN_PAGE: usize = 500;

/// The keys of type `kind` matching `pattern` on one node, a SCAN page at a time: for a sweep
/// that makes one pipeline of calls per page on the same connection, holding one page.
pub struct ScanPages {
    pattern: &'static str,
    kind: &'static str,
    cursor: u64,
    done: bool,
}

impl ScanPages {
    /// A walk from the start.
    pub fn new(pattern: &'static str, kind: &'static str) -> Self {
        Self {
            pattern,
            kind,
            cursor: 0,
            done: false,
        }
    }

    /// The next page (possibly empty: SCAN may answer none on a step), or `None` at the end.
    pub async fn next(
        &mut self,
        c: &mut redis::aio::MultiplexedConnection,
    ) -> redis::RedisResult<Option<Vec<Vec<u8>>>> {
        if self.done {
            return Ok(None);
        }
        let (next, found): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(self.cursor)
            .arg("MATCH")
            .arg(self.pattern)
            .arg("TYPE")
            .arg(self.kind)
            .arg("COUNT")
            .arg(SCAN_PAGE)
            .query_async(c)
            .await?;
        self.cursor = next;
        self.done = next == 0;
        Ok(Some(found))
    }
}

/// The number of hash slots.
pub const SLOTS: usize = 16_384;

/// The per-slot counter key of `slot`.
pub fn stats_key(slot: u16) -> &'static str {
    static TABLE: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut table = vec![String::new(); SLOTS];
        let mut missing = SLOTS;
        let mut n = 0u64;
        while missing > 0 {
            let tag = format!("s{n}");
            let t = &mut table[usize::from(slot_of_tag(tag.as_bytes()))];
            if t.is_empty() {
                *t = format!("{{{tag}}}:stats");
                missing -= 1;
            }
            n += 1;
        }
        table
    });
    &table[usize::from(slot) % SLOTS]
}

/// When the primary that serves `slot` was last swept for expiry, by any relay (under the
/// slot's counter tag).
pub fn expiry_mark_key(slot: u16) -> String {
    let stats = stats_key(slot);
    format!(
        "{}:expired-at",
        stats.strip_suffix(":stats").unwrap_or(stats)
    )
}

/// The key the health probe writes in `slot` (under the slot's counter tag).
pub fn probe_key(slot: u16) -> String {
    let stats = stats_key(slot);
    format!("{}:alive", stats.strip_suffix(":stats").unwrap_or(stats))
}

/// The keys of one mailbox, in the order the functions take them.
#[derive(Debug, Clone)]
pub struct MailboxKeys {
    /// Main hash, stream, dedupe hash, window list, wake-up channel, and the counters of the
    /// mailbox's slot.
    pub keys: [String; 6],
}

impl MailboxKeys {
    /// The keys of the mailbox `rid`.
    pub fn new(rid: &RecipientId) -> Self {
        let tag = format!("{{m:{}}}", hex::encode(rid));
        let stats = stats_key(slot(tag.as_bytes())).to_owned();
        Self {
            keys: [
                tag.clone(),
                format!("{tag}:q"),
                format!("{tag}:d"),
                format!("{tag}:w"),
                format!("{tag}:c"),
                stats,
            ],
        }
    }

    /// The wake-up channel.
    pub fn channel(&self) -> &str {
        &self.keys[4]
    }

    /// The hash slot of every key of this mailbox.
    pub fn slot(&self) -> u16 {
        slot(self.keys[0].as_bytes())
    }
}

/// The recipient id named by a mailbox's main key or channel (`{m:<hex>}`…), if it is one.
pub fn recipient_of(key: &[u8]) -> Option<RecipientId> {
    let rest = key.strip_prefix(b"{m:")?;
    let hex_id = rest.get(..32)?;
    if rest.get(32) != Some(&b'}') {
        return None;
    }
    let mut rid = [0u8; 16];
    hex::decode_to_slice(hex_id, &mut rid).ok()?;
    Some(rid)
}

/// The lookup key of a deposit id.
pub fn deposit_key(id: &DepositId) -> String {
    format!("{{d:{}}}", hex::encode(id))
}

/// The cluster hash slot of `key` (CRC16/XMODEM of its hash tag, modulo 16384), as the
/// servers compute it, to group a batch's appends by primary before sending them.
pub fn slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    slot_of_tag(tagged)
}

fn slot_of_tag(tag: &[u8]) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(tag) % 16384
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_the_servers() {
        // From CLUSTER KEYSLOT on Valkey 8.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(slot(b"foo{}{bar}"), 8363);
        assert_eq!(slot(b"{m:bench}"), 15339);
    }

    #[test]
    fn a_mailbox_is_one_slot_and_its_keys_name_it() {
        let rid = [0xab; 16];
        let k = MailboxKeys::new(&rid);
        for key in &k.keys {
            assert_eq!(slot(key.as_bytes()), k.slot());
        }
        for key in &k.keys[..5] {
            assert_eq!(recipient_of(key.as_bytes()), Some(rid));
        }
    }

    #[test]
    fn every_slot_has_its_counter_key() {
        for s in [0u16, 1, 8363, 16383] {
            assert_eq!(slot(stats_key(s).as_bytes()), s, "{}", stats_key(s));
        }
        assert!((0..16384u16).all(|s| slot(stats_key(s).as_bytes()) == s));
        assert!((0..16384u16).all(|s| slot(probe_key(s).as_bytes()) == s));
        assert_eq!(recipient_of(b"{d:abab}"), None);
        assert_eq!(recipient_of(b"{m:zz}"), None);
    }
}
