//! Fair share: each identity runs at most its share of calls at once, and
//! its other calls wait, in arrival order, for one of them to end.
//!
//! Why this keeps a flood from starving others: a call that waits here has
//! been read and parked, and costs nothing more until its turn. The calls
//! that run, and compete for the server's CPU with everyone else's, are at
//! most one share per identity; a second identity's call finds at most a
//! share of the flood ahead of it, not the whole flood. One identity alone
//! still has its share to keep the server busy (the default, 64 calls at
//! once, is far above what the CPUs can run in parallel).
//!
//! The table holds an entry per identity with calls running or waiting,
//! plus a bounded number of idle ones that are swept when it grows
//! (amortised, never on the hot path of every call).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// An identity's share: its semaphore, and the number of permits it was
/// made with (changed when a reload changes the share).
#[derive(Debug)]
struct Slot {
    permits: Arc<Semaphore>,
    size: u32,
}

/// The shares of every identity.
#[derive(Debug)]
pub struct Shares {
    table: Mutex<Table>,
}

#[derive(Debug)]
struct Table {
    slots: HashMap<Arc<str>, Slot>,
    /// Sweep idle entries when the table reaches this size.
    sweep_at: usize,
}

/// Idle entries kept at most (besides those in use) before a sweep.
const MIN_SWEEP_AT: usize = 1024;

impl Default for Shares {
    fn default() -> Self {
        Self {
            table: Mutex::new(Table {
                slots: HashMap::new(),
                sweep_at: MIN_SWEEP_AT,
            }),
        }
    }
}

/// What a call gets from [`Shares::enter`].
pub enum Entry {
    /// Its share had room: run now.
    Now(OwnedSemaphorePermit),
    /// Wait on this semaphore for a permit.
    Wait(Arc<Semaphore>),
}

impl Shares {
    /// A permit for `identity` if its share of `size` has room; otherwise
    /// the semaphore to wait on.
    pub fn enter(&self, identity: &str, size: u32) -> Entry {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if table.slots.len() >= table.sweep_at && !table.slots.contains_key(identity) {
            // An entry no call holds (no permit, no waiter) is idle: its
            // semaphore is referenced by the table alone.
            table
                .slots
                .retain(|_, slot| Arc::strong_count(&slot.permits) > 1);
            table.sweep_at = (table.slots.len() * 2).max(MIN_SWEEP_AT);
        }
        if let Some(slot) = table.slots.get_mut(identity) {
            return take(slot, size);
        }
        let slot = table.slots.entry(Arc::from(identity)).or_insert(Slot {
            permits: Arc::new(Semaphore::new(size as usize)),
            size,
        });
        take(slot, size)
    }

    /// Identities in the table now (running, waiting or idle).
    pub fn tracked(&self) -> usize {
        let table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        table.slots.len()
    }
}

/// A permit from `slot` (resized to `size` first) if one is free, or the
/// semaphore to wait on.
fn take(slot: &mut Slot, size: u32) -> Entry {
    resize(slot, size);
    match slot.permits.clone().try_acquire_owned() {
        Ok(permit) => Entry::Now(permit),
        Err(_) => Entry::Wait(slot.permits.clone()),
    }
}

/// Moves a slot towards `size` permits after a reload changed the share. A
/// smaller share takes back only the permits free now; the rest are taken
/// back on later calls, as the running ones end.
fn resize(slot: &mut Slot, size: u32) {
    if slot.size < size {
        slot.permits.add_permits((size - slot.size) as usize);
        slot.size = size;
    } else if slot.size > size {
        let taken = slot.permits.forget_permits((slot.size - size) as usize);
        slot.size -= taken as u32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[tokio::test]
    async fn a_share_runs_its_size_and_the_rest_wait_in_order() {
        let shares = Shares::default();
        let a = id("a");
        let held: Vec<_> = (0..2)
            .map(|_| match shares.enter(&a, 2) {
                Entry::Now(p) => p,
                Entry::Wait(_) => panic!("the share has room"),
            })
            .collect();
        let Entry::Wait(sem) = shares.enter(&a, 2) else {
            panic!("a third call must wait");
        };
        // Another identity is not held back by a's share.
        assert!(matches!(shares.enter(&id("b"), 2), Entry::Now(_)));
        let waiter = tokio::spawn(async move { sem.acquire_owned().await.is_ok() });
        drop(held);
        assert!(waiter.await.unwrap(), "the waiter gets a freed permit");
    }

    #[test]
    fn idle_entries_are_swept_and_busy_ones_kept() {
        let shares = Shares::default();
        let busy = match shares.enter(&id("busy"), 1) {
            Entry::Now(p) => p,
            Entry::Wait(_) => panic!(),
        };
        for n in 0..MIN_SWEEP_AT * 3 {
            // Each call's permit is dropped at once: the entry goes idle.
            drop(shares.enter(&id(&n.to_string()), 1));
        }
        assert!(shares.tracked() <= MIN_SWEEP_AT + 1, "{}", shares.tracked());
        // The busy identity kept its entry: its share is still taken.
        assert!(matches!(shares.enter(&id("busy"), 1), Entry::Wait(_)));
        drop(busy);
    }

    #[test]
    fn a_reload_resizes_shares() {
        let shares = Shares::default();
        let a = id("a");
        let now = |e: Entry| match e {
            Entry::Now(p) => p,
            Entry::Wait(_) => panic!("expected room in the share"),
        };
        let first = now(shares.enter(&a, 1));
        assert!(matches!(shares.enter(&a, 1), Entry::Wait(_)));
        let second = now(shares.enter(&a, 2));
        drop(first);
        // Shrunk back to 1 while `second` runs: the permit just freed is
        // taken back, so the next call waits.
        assert!(matches!(shares.enter(&a, 1), Entry::Wait(_)));
        drop(second);
        assert!(matches!(shares.enter(&a, 1), Entry::Now(_)));
    }
}
