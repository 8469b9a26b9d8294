//! Updates held in memory from their arrival until their round is aggregated, up to a byte
//! budget (`update_memory_mb`), so the aggregation reads them from memory the process already
//! owns instead of back from disk or the page cache. A held update is still written to disk
//! (it is the durable copy, and what a restarted coordinator reads), but past the page cache
//! (`direct_io`), since that copy is not read while the memory one exists. Updates that do not
//! fit take the old path: written through the page cache and read from there.
//!
//! Why: on the VM we measure on, page-cache pages are handed back to the hypervisor a couple
//! of seconds after they are freed and fault in slowly when touched again, so every round
//! paid ~1 s of CPU to copy its updates into the cache; memory the process keeps stays fast.
//! The budget is fixed, so memory does not grow with the number of sites.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

/// Size of the buffers updates are copied into (the network's chunks each keep a whole
/// receive buffer alive, several times their size, so they are not held themselves).
const BUFFER: usize = 4 << 20;

/// The updates held now, by digest, and the bytes reserved for them and for uploads under way.
pub struct HeldUpdates {
    budget: u64,
    state: Mutex<State>,
    /// Buffers of released updates, reused: memory the process keeps stays fast to touch.
    pool: Mutex<Vec<Vec<u8>>>,
}

#[derive(Default)]
struct State {
    reserved: u64,
    by_digest: HashMap<String, Arc<HeldBytes>>,
}

/// An update's bytes, in `BUFFER`-sized pieces (the last one shorter).
pub struct HeldBytes {
    buffers: Vec<Vec<u8>>,
    size: u64,
    /// Where the buffers go back to when the last reader is done.
    pool: Weak<HeldUpdates>,
}

impl HeldBytes {
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Copies the bytes from `offset` on into `out`.
    pub fn read_at(&self, offset: u64, out: &mut [u8]) -> Result<(), String> {
        let end = offset + out.len() as u64;
        if end > self.size {
            return Err(format!(
                "bytes {offset}..{end} run past the end of the {} byte update",
                self.size
            ));
        }
        let mut done = 0;
        while done < out.len() {
            let at = offset as usize + done;
            let buf = &self.buffers[at / BUFFER];
            let from = at % BUFFER;
            let n = (buf.len() - from).min(out.len() - done);
            out[done..done + n].copy_from_slice(&buf[from..from + n]);
            done += n;
        }
        Ok(())
    }
}

impl Drop for HeldBytes {
    fn drop(&mut self) {
        if let Some(owner) = self.pool.upgrade() {
            owner.give_back(std::mem::take(&mut self.buffers));
        }
    }
}

/// An upload being held: its reservation and the bytes so far. Dropped without `keep` (a
/// broken or refused upload), it gives its reservation and buffers back.
pub struct Holding {
    owner: Arc<HeldUpdates>,
    reserved: u64,
    buffers: Vec<Vec<u8>>,
    size: u64,
}

impl HeldUpdates {
    pub fn new(budget: u64) -> Arc<Self> {
        Arc::new(Self {
            budget,
            state: Mutex::default(),
            pool: Mutex::default(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent across a panic elsewhere (plain counters and a map).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn buffer(&self) -> Vec<u8> {
        let pooled = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut buf = pooled.unwrap_or_else(|| Vec::with_capacity(BUFFER));
        buf.clear();
        buf
    }

    fn give_back(&self, buffers: Vec<Vec<u8>>) {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        // Never more pooled than the budget could fill.
        let room = (self.budget as usize / BUFFER).saturating_sub(pool.len());
        pool.extend(buffers.into_iter().take(room));
    }

    /// Room for an upload of `size` bytes, if the budget has it.
    pub fn reserve(self: &Arc<Self>, size: u64) -> Option<Holding> {
        let mut state = self.state();
        if size == 0 || state.reserved + size > self.budget {
            return None;
        }
        state.reserved += size;
        Some(Holding {
            owner: Arc::clone(self),
            reserved: size,
            buffers: Vec::new(),
            size: 0,
        })
    }

    pub fn get(&self, digest: &str) -> Option<Arc<HeldBytes>> {
        self.state().by_digest.get(digest).cloned()
    }

    /// Lets go of an update (its round was aggregated, or it was refused). A reader that
    /// still has it keeps the bytes alive until it is done; the budget is free at once.
    pub fn release(&self, digest: &str) {
        let held = {
            let mut state = self.state();
            let held = state.by_digest.remove(digest);
            if let Some(h) = &held {
                state.reserved -= h.size;
            }
            held
        };
        // Dropped outside the lock: the buffers go back to the pool.
        drop(held);
    }

    /// Bytes reserved or held now.
    #[cfg(test)]
    fn reserved(&self) -> u64 {
        self.state().reserved
    }
}

impl Holding {
    /// Appends a chunk; past the reservation, nothing more is copied and `keep` will not
    /// hold the update.
    pub fn push(&mut self, mut chunk: &[u8]) {
        self.size += chunk.len() as u64;
        if self.size > self.reserved {
            return;
        }
        while !chunk.is_empty() {
            if self.buffers.last().is_none_or(|b| b.len() == BUFFER) {
                self.buffers.push(self.owner.buffer());
            }
            let Some(buf) = self.buffers.last_mut() else {
                return;
            };
            let n = (BUFFER - buf.len()).min(chunk.len());
            buf.extend_from_slice(&chunk[..n]);
            chunk = &chunk[n..];
        }
    }

    /// The upload arrived whole with this digest: hold it until `release`. If the same bytes
    /// are held already (two sites sent identical updates), those stay and these go.
    pub fn keep(mut self, digest: &str) {
        if self.size != self.reserved {
            return; // dropped: a size the header did not announce is not held
        }
        let mut state = self.owner.state();
        if state.by_digest.contains_key(digest) {
            return;
        }
        let held = HeldBytes {
            buffers: std::mem::take(&mut self.buffers),
            size: self.size,
            pool: Arc::downgrade(&self.owner),
        };
        state.by_digest.insert(digest.to_string(), Arc::new(held));
        // Now accounted for by the held entry, which `release` frees.
        self.reserved = 0;
    }
}

impl Drop for Holding {
    fn drop(&mut self) {
        if self.reserved > 0 {
            self.owner.state().reserved -= self.reserved;
        }
        self.owner.give_back(std::mem::take(&mut self.buffers));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(owner: &Arc<HeldUpdates>, digest: &str, sizes: &[usize]) -> Vec<u8> {
        let all: Vec<u8> = (0..sizes.iter().sum::<usize>())
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let mut h = owner.reserve(all.len() as u64).expect("room");
        let mut at = 0;
        for &n in sizes {
            h.push(&all[at..at + n]);
            at += n;
        }
        h.keep(digest);
        all
    }

    #[test]
    fn any_range_reads_back_across_chunk_and_buffer_boundaries() {
        let owner = HeldUpdates::new(1 << 30);
        // Chunks of uneven sizes, straddling the 4 MiB buffers.
        let all = held(&owner, "d", &[10, BUFFER - 3, 1, 300, BUFFER + 7]);
        let h = owner.get("d").expect("held");
        assert_eq!(h.size(), all.len() as u64);
        let b = BUFFER;
        for (offset, n) in [
            (0, all.len()),
            (9, 3),
            (b - 2, 5),
            (b, 1),
            (b - 1, b + 2),
            (all.len() - 1, 1),
            (5, 0),
        ] {
            let mut out = vec![0u8; n];
            h.read_at(offset as u64, &mut out).expect("read");
            assert!(out == all[offset..offset + n], "{offset}+{n}");
        }
        let mut out = [0u8; 2];
        assert!(
            h.read_at(all.len() as u64 - 1, &mut out).is_err(),
            "one byte past the end"
        );
    }

    #[test]
    fn the_budget_counts_uploads_under_way_and_held_ones_until_released() {
        let owner = HeldUpdates::new(100);
        held(&owner, "a", &[60]);
        assert!(owner.reserve(41).is_none(), "60 held + 41 > 100");
        let pending = owner.reserve(40).expect("60 + 40 fits");
        assert_eq!(owner.reserved(), 100);
        drop(pending); // a broken upload gives its room back
        assert_eq!(owner.reserved(), 60);
        // Identical bytes kept twice are held once.
        held(&owner, "a", &[20, 20]);
        assert_eq!(owner.reserved(), 60);
        owner.release("a");
        assert_eq!(owner.reserved(), 0);
        assert!(owner.get("a").is_none());
        // A stream shorter than its reservation is not held.
        let mut short = owner.reserve(10).expect("room");
        short.push(b"abc");
        short.keep("s");
        assert!(owner.get("s").is_none());
        assert_eq!(owner.reserved(), 0);
    }
}
