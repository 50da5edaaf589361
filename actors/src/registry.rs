//! The sled-backed store of server records and broker metadata (the generated admin key).
//!
//! Durability rule: a write the admin API acknowledges is flushed (`fsync`) before the reply, so
//! it survives `kill -9`. Health-state updates are written without waiting for a flush (sled
//! flushes in the background every 500 ms): losing the last half second of health history in a
//! crash is harmless, blocking every check on an fsync is not.

use std::path::Path;

use uuid::Uuid;

use crate::record::ServerRecord;

const SERVERS_TREE: &str = "servers";
/// sled's page cache bound. Its default (1 GiB) would let stored sessions (SPEC §4.4) grow the
/// broker's memory far past its idle target; records and session copies are read rarely
/// (startup, resume), so a small cache costs nothing on the hot path.
const SLED_CACHE_BYTES: u64 = 64 * 1024 * 1024;
const META_TREE: &str = "meta";
const ADMIN_KEY: &[u8] = b"admin_key";

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("storage error: {0}")]
    Storage(#[from] sled::Error),
    #[error("corrupt record {key}: {source}")]
    Corrupt {
        key: String,
        source: serde_json::Error,
    },
    #[error("cannot encode record: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Handle to the database; cheap to clone (sled trees are reference counted) and `Send + Sync`,
/// so the supervisor and every backend actor can hold one.
#[derive(Clone)]
pub struct Registry {
    db: sled::Db,
    servers: sled::Tree,
    meta: sled::Tree,
}

impl Registry {
    /// Opens (or creates) the database under `dir`.
    pub fn open(dir: &Path) -> Result<Self, RegistryError> {
        let db = sled::Config::new()
            .path(dir.join("sled"))
            .cache_capacity(SLED_CACHE_BYTES)
            .open()?;
        let servers = db.open_tree(SERVERS_TREE)?;
        let meta = db.open_tree(META_TREE)?;
        Ok(Self { db, servers, meta })
    }

    /// Every stored record. A record that no longer decodes is skipped with a log line rather
    /// than refusing to start: one bad entry must not take the gateway down.
    pub fn load_all(&self) -> Result<Vec<ServerRecord>, RegistryError> {
        let mut out = Vec::new();
        for item in self.servers.iter() {
            let (key, value) = item?;
            match serde_json::from_slice::<ServerRecord>(&value) {
                Ok(record) => out.push(record),
                Err(source) => {
                    let err = RegistryError::Corrupt {
                        key: String::from_utf8_lossy(&key).into_owned(),
                        source,
                    };
                    log::error!("skipping stored server: {err}");
                }
            }
        }
        out.sort_by_key(|r| r.registered_at);
        Ok(out)
    }

    /// Stores a record and waits until it is on disk (an acknowledged admin write).
    pub fn put_durable(&self, record: &ServerRecord) -> Result<(), RegistryError> {
        self.put(record)?;
        self.db.flush()?;
        Ok(())
    }

    /// Stores a record; durable within sled's background flush interval.
    pub fn put(&self, record: &ServerRecord) -> Result<(), RegistryError> {
        let value = serde_json::to_vec(record)?;
        self.servers
            .insert(record.registration_id.as_bytes(), value)?;
        Ok(())
    }

    /// Stores several records in one sled batch (all or none) and waits until they are on
    /// disk: an import is one acknowledged write.
    pub fn put_all_durable(&self, records: &[ServerRecord]) -> Result<(), RegistryError> {
        let mut batch = sled::Batch::default();
        for record in records {
            batch.insert(
                record.registration_id.as_bytes().as_slice(),
                serde_json::to_vec(record)?,
            );
        }
        self.servers.apply_batch(batch)?;
        self.db.flush()?;
        Ok(())
    }

    /// Removes a record and waits until the removal is on disk.
    pub fn remove_durable(&self, id: Uuid) -> Result<bool, RegistryError> {
        let existed = self.servers.remove(id.as_bytes())?.is_some();
        self.db.flush()?;
        Ok(existed)
    }

    /// The stored admin key, if one was generated earlier.
    pub fn admin_key(&self) -> Result<Option<String>, RegistryError> {
        Ok(self
            .meta
            .get(ADMIN_KEY)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Stores a generated admin key durably.
    pub fn set_admin_key(&self, key: &str) -> Result<(), RegistryError> {
        self.meta.insert(ADMIN_KEY, key.as_bytes())?;
        self.db.flush()?;
        Ok(())
    }

    /// The database, for other stores that live beside the registry (stored sessions).
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Flushes everything (shutdown).
    pub fn flush(&self) -> Result<(), RegistryError> {
        self.db.flush()?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let record = ServerRecord::new("m".into(), "http://a".into(), Some("k".into()));
        {
            let reg = Registry::open(dir.path()).unwrap();
            reg.put_durable(&record).unwrap();
            reg.set_admin_key("admin").unwrap();
        }
        let reg = Registry::open(dir.path()).unwrap();
        assert_eq!(reg.load_all().unwrap(), vec![record.clone()]);
        assert_eq!(reg.admin_key().unwrap().as_deref(), Some("admin"));
        assert!(reg.remove_durable(record.registration_id).unwrap());
        assert!(reg.load_all().unwrap().is_empty());
    }
}
