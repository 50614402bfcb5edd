//! Operators' switches on a pipeline, kept across restarts (in `meta`:
//! `paused \0 pipeline` → empty, present while the pipeline is paused).

use fjall::PersistMode;

use super::codec::join;
use super::{Result, Store, fj};

fn paused_key(pipeline: &str) -> Vec<u8> {
    join(&[b"paused", pipeline.as_bytes()])
}

impl Store {
    /// Whether the pipeline was paused (and not resumed since).
    ///
    /// # Errors
    /// On an I/O error.
    pub fn paused(&self, pipeline: &str) -> Result<bool> {
        Ok(fj("read paused", self.meta.get(paused_key(pipeline)))?.is_some())
    }

    /// Pauses or resumes the pipeline, durably.
    ///
    /// # Errors
    /// On an I/O error; the switch stays as it was then.
    pub fn set_paused(&self, pipeline: &str, paused: bool) -> Result<()> {
        let mut b = self.db.batch().durability(Some(PersistMode::SyncData));
        if paused {
            b.insert(&self.meta, paused_key(pipeline), Vec::new());
        } else {
            b.remove(&self.meta, paused_key(pipeline));
        }
        fj("save paused", b.commit())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Durability;

    #[test]
    fn a_pause_is_kept_until_resumed() -> std::result::Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        {
            let s = Store::open(dir.path(), Durability::Process)?;
            assert!(!s.paused("p")?);
            s.set_paused("p", true)?;
            assert!(s.paused("p")?);
            assert!(!s.paused("q")?);
        }
        let s = Store::open(dir.path(), Durability::Process)?;
        assert!(s.paused("p")?);
        s.set_paused("p", false)?;
        assert!(!s.paused("p")?);
        Ok(())
    }
}
