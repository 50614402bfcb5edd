//! Stage 6, notify: tell SSE subscribers about committed state changes.
//!
//! Each pipeline has a broadcast channel. Workers publish only after the
//! commit, so a client never sees a state that a crash could roll back. A
//! subscriber that falls behind loses its place in the channel, not data:
//! it catches up from the store's change history (see `http::sse`).

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::broadcast;

use crate::store::Change;

/// Per-pipeline broadcast of committed changes.
#[derive(Clone, Default)]
pub struct Hub {
    channels: Arc<HashMap<String, broadcast::Sender<Arc<Change>>>>,
}

/// Live changes buffered per pipeline before slow subscribers fall back to
/// the store.
const CHANNEL_CAPACITY: usize = 1024;

impl Hub {
    /// A hub with one channel per pipeline.
    pub fn new<'a>(pipelines: impl IntoIterator<Item = &'a str>) -> Self {
        let channels = pipelines
            .into_iter()
            .map(|p| (p.to_owned(), broadcast::channel(CHANNEL_CAPACITY).0))
            .collect();
        Hub {
            channels: Arc::new(channels),
        }
    }

    /// Publishes committed changes (no-op without subscribers).
    pub fn publish(&self, pipeline: &str, changes: Vec<Change>) {
        if let Some(tx) = self.channels.get(pipeline) {
            if tx.receiver_count() == 0 {
                return;
            }
            for c in changes {
                let _ = tx.send(Arc::new(c));
            }
        }
    }

    /// Subscribes to a pipeline's changes.
    pub fn subscribe(&self, pipeline: &str) -> Option<broadcast::Receiver<Arc<Change>>> {
        self.channels
            .get(pipeline)
            .map(broadcast::Sender::subscribe)
    }
}
