//! Side namespaces: a replay rebuilds a pipeline's states, dead letters,
//! quarantine, parked events and timers under `{pipeline}@replay` (the
//! same keyspaces, another name), then swaps them in with one atomic write.

use super::codec::join;
use super::state::{decode_latest, latest_key, latest_value, seq_meta_key, state_key, state_value};
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
    /// The stamp the rebuilt states' stamps count on from (later than any
    /// live change's).
    pub stamp_us: u64,
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
        self.clear_numbers(&mut b, ns)?;
        self.clear_timers(&mut b, ns)?;
        fj("clear", b.commit())
    }

    /// Replaces a pipeline's states, and the dead letters, parked events
    /// and quarantine counts `swap` names, with those rebuilt under
    /// `swap.ns`, in one atomic write: the rebuilt keys take fresh change
    /// numbers in their partitions, after each partition's last, and stamps
    /// from `swap.stamp_us` on, in their rebuilt order; the namespace is
    /// emptied.
    ///
    /// # Errors
    /// On an I/O error or a corrupt entry; nothing changes then.
    pub fn swap_rebuilt(&self, swap: &Swap) -> Result<()> {
        let (pipeline, ns) = (swap.pipeline.as_str(), swap.ns.as_str());
        let live = join(&[pipeline.as_bytes(), b""]);
        let rebuilt = join(&[ns.as_bytes(), b""]);
        let mut b = self.batch();
        // Rebuilt keys in their rebuilt order (the latest index by stamp).
        let mut keys: Vec<(u64, u32, String)> = Vec::new();
        for item in self.latest.prefix(&rebuilt) {
            let (k, v) = fj("swap", item.into_inner())?;
            let partition = k
                .get(rebuilt.len()..rebuilt.len() + 4)
                .and_then(|p| <[u8; 4]>::try_from(p).ok())
                .map(u32::from_be_bytes)
                .ok_or_else(|| super::StoreError::Corrupt {
                    what: "rebuilt latest key".into(),
                })?;
            let (stamp, key) = decode_latest(&v)?;
            b.remove(&self.latest, k);
            keys.push((stamp, partition, key));
        }
        keys.sort_unstable();
        // A key is written once per batch: a remove and an insert of the same
        // key in one batch would race, so only keys the rebuild lacks are removed.
        let kept: std::collections::HashSet<Vec<u8>> = keys
            .iter()
            .map(|(_, p, k)| state_key(pipeline, *p, k))
            .collect();
        for item in self.state.prefix(&live) {
            let k = fj("swap", item.key())?;
            if !kept.contains(k.as_ref()) {
                b.remove(&self.state, k);
            }
        }
        for item in self.latest.prefix(&live) {
            b.remove(&self.latest, fj("swap", item.key())?);
        }
        let mut seqs: std::collections::BTreeMap<u32, u64> = std::collections::BTreeMap::new();
        let mut stamp = swap.stamp_us;
        for (_, p, key) in keys {
            let Some(st) = self.state(ns, p, &key)? else {
                continue;
            };
            let seq = match seqs.get_mut(&p) {
                Some(s) => s,
                None => seqs.entry(p).or_insert(self.last_seq(pipeline, p)?),
            };
            *seq += 1;
            stamp += 1;
            b.insert(
                &self.state,
                state_key(pipeline, p, &key),
                state_value(*seq, stamp, &st.plugin_version, &st.state)?,
            );
            b.insert(
                &self.latest,
                latest_key(pipeline, p, *seq),
                latest_value(stamp, &key),
            );
        }
        for (p, seq) in seqs {
            b.insert(
                &self.meta,
                seq_meta_key(pipeline, p),
                seq.to_be_bytes().to_vec(),
            );
        }
        self.write_dead_letters(
            &mut b,
            pipeline,
            &swap.add_dead,
            (swap.last_dead_id, &[]),
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
        self.swap_timers(&mut b, pipeline, ns)?;
        // The namespace, emptied (its latest entries are removed above).
        for ks in [&self.state, &self.dead, &self.quarantine, &self.parked] {
            for item in ks.prefix(&rebuilt) {
                b.remove(ks, fj("swap", item.key())?);
            }
        }
        self.clear_numbers(&mut b, ns)?;
        fj("swap", b.commit())?;
        self.epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// Removes a namespace's numbers from `meta`: its last dead-letter id,
    /// park number and every partition's change number.
    fn clear_numbers(&self, b: &mut fjall::OwnedWriteBatch, ns: &str) -> Result<()> {
        for kind in [&b"dead"[..], b"park"] {
            b.remove(&self.meta, join(&[kind, ns.as_bytes()]));
        }
        for item in self.meta.prefix(join(&[b"seq", ns.as_bytes(), b""])) {
            b.remove(&self.meta, fj("clear", item.key())?);
        }
        Ok(())
    }
}
