//! Writing the store's journal back to disk in the background.

use std::path::Path;

/// Writes the store's journal back to disk in the background.
///
/// With `process` durability a commit only hands its bytes to the OS; they
/// reach the disk when the kernel gets to them, or when fjall switches to a
/// new journal — and then fjall fsyncs the whole old journal (hundreds of MB
/// under load) while holding the journal lock, stalling every commit for tens
/// of milliseconds. This thread fdatasyncs the active journal every interval
/// through a file handle of its own, without fjall's lock, so the data goes
/// out in small steps while commits go on, and a journal switch finds little
/// left to write. It stops when dropped.
pub struct Writeback {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Writeback {
    /// Starts writing back the journal of the store in `dir` every `every`.
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub fn start(dir: &Path, every: std::time::Duration) -> std::io::Result<Self> {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, dir) = (stop.clone(), dir.to_path_buf());
        std::thread::Builder::new()
            .name("eddy-writeback".into())
            .spawn(move || {
                // The journal being synced: its number and an open handle.
                let mut open: Option<(u64, std::fs::File)> = None;
                while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(every);
                    let Some(newest) = newest_journal(&dir) else {
                        continue;
                    };
                    if open.as_ref().is_none_or(|(n, _)| *n != newest) {
                        let path = dir.join(format!("{newest}.jnl"));
                        open = std::fs::File::open(&path).ok().map(|f| (newest, f));
                    }
                    if let Some((n, f)) = &open
                        && let Err(e) = f.sync_data()
                    {
                        tracing::debug!(journal = n, error = %e, "journal write-back failed");
                    }
                }
            })?;
        Ok(Writeback { stop })
    }
}

impl Drop for Writeback {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The number of the newest journal file (`{n}.jnl`) in a store directory.
fn newest_journal(dir: &Path) -> Option<u64> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| {
            let name = e.ok()?.file_name();
            name.to_str()?.strip_suffix(".jnl")?.parse::<u64>().ok()
        })
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Durability;
    use crate::store::Store;

    #[test]
    fn the_newest_journal_is_the_highest_number() -> Result<(), Box<dyn std::error::Error>> {
        let names = tempfile::tempdir()?;
        assert_eq!(newest_journal(names.path()), None);
        for name in ["0.jnl", "2.jnl", "10.jnl", "11.tmp", "x.jnl"] {
            std::fs::write(names.path().join(name), b"")?;
        }
        assert_eq!(newest_journal(names.path()), Some(10));
        let dir = tempfile::tempdir()?;
        // A store written with write-back running reopens with everything.
        {
            let s = Store::open(dir.path(), Durability::Process)?;
            let _wb = Writeback::start(dir.path(), std::time::Duration::from_millis(1))?;
            s.create_topic("t", 1)?;
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(
            Store::open(dir.path(), Durability::Process)?.topics()?,
            vec![("t".to_owned(), 1)]
        );
        Ok(())
    }
}
