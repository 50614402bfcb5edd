//! The embedded schema registry's document, one entry of `meta`.

use fjall::PersistMode;

use super::{Result, Store, StoreError, fj};

impl Store {
    /// The embedded schema registry's document, if one was saved.
    ///
    /// # Errors
    /// On an I/O error or a document that is not UTF-8.
    pub fn schema_registry(&self) -> Result<Option<String>> {
        fj("read schema registry", self.meta.get(b"schema-registry"))?
            .map(|v| {
                String::from_utf8(v.to_vec()).map_err(|_| StoreError::Corrupt {
                    what: "schema registry".into(),
                })
            })
            .transpose()
    }

    /// Replaces the embedded schema registry's document (durably: the
    /// registry acknowledges a change only after this returns).
    ///
    /// # Errors
    /// On an I/O error; the previous document stays then.
    pub fn save_schema_registry(&self, json: &str) -> Result<()> {
        let mut b = self.db.batch().durability(Some(PersistMode::SyncData));
        b.insert(
            &self.meta,
            b"schema-registry".to_vec(),
            json.as_bytes().to_vec(),
        );
        fj("save schema registry", b.commit())
    }
}
