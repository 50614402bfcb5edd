//! Side namespaces: a replay rebuilds a pipeline's states, dead letters,
//! quarantine and parked events under `{pipeline}@replay` (the same
//! keyspaces, another name), then swaps them in with one atomic write.

use super::codec::{join, seq_key};
use super::state::state_value;
use super::{Result, Store, fj};

/// What a replay's switch-over changes besides the states (see
/// [`Store::swap_rebuilt`]): the pipeline's dead letters, parked events and
/// quarantine counts of the rebuilt range give way to the rebuild's.
#[derive(Debug, Default)]
pub struct Swap {
    /// The pipeline.
    pub pipeline: String,
    /// The namespace the rebuild wrote to.
    pub ns: String,
    /// Live dead letters to remove.
    pub remove_dead: Vec<u64>,
    /// Dead letters to add (JSON), with their new ids.
    pub add_dead: Vec<(u64, String)>,
    /// The pipeline's last dead-letter id afterwards.
    pub last_dead_id: u64,
    /// Live parked events to remove: (key, park seq).
    pub remove_parked: Vec<(String, u64)>,
    /// Parked events to add: (key, park seq, record).
    pub add_parked: Vec<(String, u64, Vec<u8>)>,
    /// The pipeline's last park number afterwards.
    pub last_park_seq: u64,
    /// New open-dead-letter counts per key (0 lifts the quarantine).
    pub quarantine: Vec<(String, u64)>,
}

impl Store {
    /// Deletes everything a namespace holds: states, the latest index, dead
    /// letters, quarantined keys, parked events and its numbers.
    ///
    /// # Errors
    /// On an I/O error.
    pub fn clear_namespace(&self, ns: &str) -> Result<()> {
        let prefix = join(&[ns.as_bytes(), b""]);
        let mut b = self.batch();
        for ks in [
            &self.state,
            &self.latest,
            &self.dead,
            &self.quarantine,
            &self.parked,
        ] {
            for item in ks.prefix(&prefix) {
                b.remove(ks, fj("clear", item.key())?);
            }
        }
        for kind in [&b"seq"[..], b"dead", b"park"] {
            b.remove(&self.meta, join(&[kind, ns.as_bytes()]));
        }
        fj("clear", b.commit())
    }

    /// Replaces a pipeline's states, and the dead letters, parked events
    /// and quarantine counts `swap` names, with those rebuilt under
    /// `swap.ns`, in one atomic write: the rebuilt keys take fresh change
    /// numbers after the pipeline's last in their rebuilt order; the
    /// namespace is emptied. Returns the pipeline's new last change number.
    ///
    /// # Errors
    /// On an I/O error or a corrupt entry; nothing changes then.
    pub fn swap_rebuilt(&self, swap: &Swap) -> Result<u64> {
        let (pipeline, ns) = (swap.pipeline.as_str(), swap.ns.as_str());
        let p = pipeline.as_bytes();
        let live = join(&[p, b""]);
        let rebuilt = join(&[ns.as_bytes(), b""]);
        let mut b = self.batch();
        // A key is written once per batch: a remove and an insert of the same
        // key in one batch would race, so only keys the rebuild lacks are removed.
        let mut keys = Vec::new();
        for item in self.latest.prefix(&rebuilt) {
            let (k, key) = fj("swap", item.into_inner())?;
            b.remove(&self.latest, k);
            keys.push(String::from_utf8_lossy(&key).into_owned());
        }
        let kept: std::collections::HashSet<Vec<u8>> =
            keys.iter().map(|k| join(&[p, k.as_bytes()])).collect();
        for item in self.state.prefix(&live) {
            let k = fj("swap", item.key())?;
            if !kept.contains(k.as_ref()) {
                b.remove(&self.state, k);
            }
        }
        for item in self.latest.prefix(&live) {
            b.remove(&self.latest, fj("swap", item.key())?);
        }
        let mut seq = self.last_seq(pipeline)?;
        for key in keys {
            let Some(st) = self.state(ns, &key)? else {
                continue;
            };
            seq += 1;
            b.insert(
                &self.state,
                join(&[p, key.as_bytes()]),
                state_value(seq, &st.plugin_version, &st.json)?,
            );
            b.insert(
                &self.latest,
                seq_key(pipeline, seq),
                key.as_bytes().to_vec(),
            );
        }
        b.insert(&self.meta, join(&[b"seq", p]), seq.to_be_bytes().to_vec());
        self.write_dead_letters(
            &mut b,
            pipeline,
            &swap.add_dead,
            swap.last_dead_id,
            &swap.remove_dead,
        );
        self.write_parked(
            &mut b,
            pipeline,
            &swap.add_parked,
            swap.last_park_seq,
            &swap.remove_parked,
        );
        self.write_quarantine(&mut b, pipeline, &swap.quarantine);
        // The namespace, emptied (its latest entries are removed above).
        for ks in [&self.state, &self.dead, &self.quarantine, &self.parked] {
            for item in ks.prefix(&rebuilt) {
                b.remove(ks, fj("swap", item.key())?);
            }
        }
        for kind in [&b"seq"[..], b"dead", b"park"] {
            b.remove(&self.meta, join(&[kind, ns.as_bytes()]));
        }
        fj("swap", b.commit())?;
        self.epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(seq)
    }
}
