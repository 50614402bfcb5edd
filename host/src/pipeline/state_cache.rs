//! The states a worker committed last, kept so a key's next batch does not
//! read its state back from the store — and, for many more keys, the
//! version the plugin instance gave each state, so a state read back from
//! the store is still known to the instance by its version (contract 0.2.0:
//! the plugin then uses the decoded state it kept instead of decoding the
//! bytes again).

use std::collections::HashMap;
use std::sync::Arc;

use crate::store::Change;

/// The states this worker committed last, bounded by bytes: when full, a
/// quarter of them go (arbitrary ones), not all, so the next batch still
/// finds most of what it needs. Dropped whole when something else changed
/// the pipeline's states (a replay swapping in rebuilt states moves the
/// change numbers on). Its changes are the ones the SSE history holds,
/// shared, not copied.
#[derive(Default)]
pub struct StateCache {
    states: HashMap<String, Arc<Change>, foldhash::fast::RandomState>,
    bytes: usize,
    /// Per key, the change number of its last committed state and the
    /// version the plugin instance gave that state (kept for far more keys
    /// than the states themselves: a few dozen bytes each).
    versions: HashMap<String, (u64, u64), foldhash::fast::RandomState>,
    /// The store's state epoch the entries belong to.
    pub epoch: u64,
}

impl StateCache {
    const MAX_BYTES: usize = 64 << 20;
    const MAX_VERSIONS: usize = 2_000_000;

    /// An empty cache of the states of store epoch `epoch`.
    pub fn at(epoch: u64) -> Self {
        StateCache {
            epoch,
            ..StateCache::default()
        }
    }

    /// The state committed last for `key`, if kept.
    pub fn get(&self, key: &str) -> Option<Arc<Change>> {
        self.states.get(key).cloned()
    }

    /// The version of `key`'s state at change `seq`, if the instance gave
    /// it one and it is still the key's last change; 0 otherwise.
    pub fn version(&self, key: &str, seq: u64) -> u64 {
        match self.versions.get(key) {
            Some((s, v)) if *s == seq => *v,
            _ => 0,
        }
    }

    /// Keeps `change` as its key's state.
    pub fn put(&mut self, change: Arc<Change>) {
        if change.version != 0 {
            if self.versions.len() >= Self::MAX_VERSIONS {
                self.versions.clear();
            }
            self.versions
                .insert(change.key.clone(), (change.seq, change.version));
        } else {
            self.versions.remove(&change.key);
        }
        let size = Self::size(&change);
        if self.bytes + size > Self::MAX_BYTES {
            self.shed();
        }
        self.bytes += size;
        if let Some(old) = self.states.insert(change.key.clone(), change) {
            // The key was already counted with the entry it replaces.
            self.bytes = self.bytes.saturating_sub(Self::size(&old));
        }
    }

    fn size(change: &Change) -> usize {
        change.key.len() + change.state.len() + 64
    }

    /// Drops a quarter of the bytes held.
    fn shed(&mut self) {
        let goal = Self::MAX_BYTES / 4 * 3;
        let mut drop = Vec::new();
        let mut bytes = self.bytes;
        for (key, change) in &self.states {
            if bytes <= goal {
                break;
            }
            bytes = bytes.saturating_sub(Self::size(change));
            drop.push(key.clone());
        }
        for key in drop {
            self.states.remove(&key);
        }
        self.bytes = bytes;
    }

    /// Drops everything.
    pub fn clear(&mut self) {
        self.states.clear();
        self.versions.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::State;

    fn change(key: &str, seq: u64, version: u64, size: usize) -> Arc<Change> {
        Arc::new(Change {
            partition: 0,
            seq,
            stamp_us: seq,
            key: key.into(),
            state: State::json(format!("\"{}\"", "x".repeat(size))),
            version,
        })
    }

    #[test]
    fn a_full_cache_sheds_a_quarter_and_versions_outlive_their_states() {
        let mut c = StateCache::default();
        let n = 3 * StateCache::MAX_BYTES / (1 << 16);
        for i in 0..n {
            c.put(change(&format!("k{i}"), 1, i as u64 + 1, 1 << 16));
            assert!(c.bytes <= StateCache::MAX_BYTES);
        }
        let kept = (0..n).filter(|i| c.get(&format!("k{i}")).is_some()).count();
        // Never all dropped at once: well over half of what fits is kept.
        assert!(
            kept > StateCache::MAX_BYTES / (1 << 16) / 2,
            "{kept} of {n}"
        );
        // Every key's version is still known, at its change number only.
        assert_eq!(c.version("k0", 1), 1);
        assert_eq!(c.version("k0", 2), 0);
        assert_eq!(c.version(&format!("k{}", n - 1), 1), n as u64);
        // A state without a version (a 0.1.0 plugin) forgets the old one.
        c.put(change("k0", 2, 0, 1));
        assert_eq!(c.version("k0", 1), 0);
        c.clear();
        assert_eq!(c.version("k1", 1), 0);
    }
}
