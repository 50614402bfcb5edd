//! The states a worker committed last, kept so a key's next batch does not
//! read its state back from the store.

use std::collections::HashMap;
use std::sync::Arc;

use crate::store::Change;

/// The states this worker committed last, so a key's next batch does not
/// read its state back from the store. Bounded by bytes (dropped whole when
/// full) and dropped whole when something else changed the pipeline's states
/// (a replay swapping in rebuilt states moves the change numbers on). Its
/// changes are the ones the SSE history holds, shared, not copied.
#[derive(Default)]
pub struct StateCache {
    states: HashMap<String, Arc<Change>>,
    bytes: usize,
    /// The store's state epoch the entries belong to.
    pub epoch: u64,
}

impl StateCache {
    const MAX_BYTES: usize = 64 << 20;

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

    /// Keeps `change` as its key's state (dropping everything when full).
    pub fn put(&mut self, change: Arc<Change>) {
        let size = change.key.len() + change.state.len();
        if self.bytes + size > Self::MAX_BYTES {
            self.clear();
        }
        self.bytes += size;
        if let Some(old) = self.states.insert(change.key.clone(), change) {
            // The key was already counted with the entry it replaces.
            self.bytes = self.bytes.saturating_sub(old.key.len() + old.state.len());
        }
    }

    /// Drops everything.
    pub fn clear(&mut self) {
        self.states.clear();
        self.bytes = 0;
    }
}
