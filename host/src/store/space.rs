//! The store's free disk space, guarded: below `[store] min_free_mb` a
//! host stops taking input (pipelines poll nothing, the producer endpoint
//! answers 507) until space returns, so the store never meets a full disk
//! — fjall treats a failed journal write as fatal, and a store that met
//! one must be reopened.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The store's disk has less free space than the configured reserve.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "the store's disk ({path}) has {free_mb} MiB free, under [store] min_free_mb = {min_mb}: \
     input is paused until space returns",
    path = path.display(),
    free_mb = free / (1 << 20),
    min_mb = min / (1 << 20)
)]
pub struct LowSpace {
    /// The store's directory.
    pub path: PathBuf,
    /// Bytes free for the store (available to unprivileged writers).
    pub free: u64,
    /// The reserve, in bytes.
    pub min: u64,
}

/// The guard: the reserve and the last free space seen.
#[derive(Debug)]
pub(super) struct Space {
    path: PathBuf,
    min: AtomicU64,
}

impl Space {
    /// A guard of the file system holding `path`, off (no reserve).
    pub(super) fn new(path: &Path) -> Self {
        Space {
            path: path.to_owned(),
            min: AtomicU64::new(0),
        }
    }

    pub(super) fn set_min(&self, bytes: u64) {
        self.min.store(bytes, Ordering::Relaxed);
    }

    /// Bytes free for the store now, when the file system says.
    pub(super) fn free_now(&self) -> Option<u64> {
        let st = rustix::fs::statvfs(&self.path).ok()?;
        Some(st.f_bavail.saturating_mul(st.f_frsize))
    }

    /// Whether the free space is under the reserve. Asked of the file
    /// system every time (a `statvfs`, about a microsecond): a batch or a
    /// request of the producer endpoint can write megabytes.
    pub(super) fn low(&self) -> Option<LowSpace> {
        let min = self.min.load(Ordering::Relaxed);
        if min == 0 {
            return None;
        }
        let Some(free) = self.free_now() else {
            tracing::debug!(path = %self.path.display(), "cannot read the store's free space");
            return None;
        };
        (free < min).then(|| LowSpace {
            path: self.path.clone(),
            free,
            min,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserve_over_the_free_space_is_low_and_none_is_never() {
        let dir = tempfile::tempdir().expect("tempdir");
        let space = Space::new(dir.path());
        assert!(space.low().is_none(), "no reserve");
        let free = space.free_now().expect("statvfs");
        space.set_min(free.saturating_add(1 << 40));
        let low = space.low().expect("low");
        assert!(low.free <= free.saturating_add(1 << 30));
        assert!(low.to_string().contains("min_free_mb"), "{low}");
        space.set_min(1);
        assert!(space.low().is_none());
    }
}
