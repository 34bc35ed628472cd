//! One subscriber per mailbox: registering a new one evicts the old.

use sealpost_core::RecipientId;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::oneshot;

/// Why a subscription was ended by the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    /// A newer subscription for the same mailbox took over.
    Replaced,
    /// The mailbox was deleted.
    Deleted,
}

struct Entry {
    generation: u64,
    kick: oneshot::Sender<Kick>,
}

/// Active subscriptions by mailbox.
#[derive(Default)]
pub struct Registry {
    next: AtomicU64,
    map: Mutex<HashMap<RecipientId, Entry>>,
}

/// Removes its registration when dropped, unless a newer one replaced it.
pub struct Registration<'a> {
    registry: &'a Registry,
    recipient_id: RecipientId,
    generation: u64,
}

impl Registry {
    /// Registers a subscriber, evicting any previous one for the mailbox.
    pub fn register(
        &self,
        recipient_id: RecipientId,
    ) -> (Registration<'_>, oneshot::Receiver<Kick>) {
        let generation = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let old = self.map.lock().unwrap_or_else(|p| p.into_inner()).insert(
            recipient_id,
            Entry {
                generation,
                kick: tx,
            },
        );
        if let Some(old) = old {
            let _ = old.kick.send(Kick::Replaced);
        }
        (
            Registration {
                registry: self,
                recipient_id,
                generation,
            },
            rx,
        )
    }

    /// Ends the subscription of a deleted mailbox.
    pub fn kick_deleted(&self, recipient_id: &RecipientId) {
        let old = self
            .map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(recipient_id);
        if let Some(old) = old {
            let _ = old.kick.send(Kick::Deleted);
        }
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut map = self.registry.map.lock().unwrap_or_else(|p| p.into_inner());
        if map
            .get(&self.recipient_id)
            .is_some_and(|e| e.generation == self.generation)
        {
            map.remove(&self.recipient_id);
        }
    }
}
