//! The game's view of the key-value store: four operations over bytes.
//!
//! [`Store`] is implemented by the real client ([`replica_node::client::Client`]) and by
//! [`MemStore`], a map in memory for tests and experiments. The game needs nothing else: no
//! transactions, no compare-and-set; concurrent sessions stay correct because each writes only
//! its own keys (see [`Ledger`](crate::Ledger)).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use replica_node::client::{Client, ClientError};

/// A store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// No server could be reached. The operation may or may not have taken effect.
    #[error("no server answered ({0})")]
    Unavailable(String),
    /// A server answered with an error or with something the client did not understand.
    #[error("the store refused the request ({0})")]
    Failed(String),
}

/// Keys and values as the game uses them: UTF-8 keys (the schema is ASCII), byte values.
pub trait Store {
    /// The value of `key`, if it is present.
    fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError>;
    /// Writes `value` under `key`.
    fn put(&self, key: &str, value: &[u8]) -> Result<(), StoreError>;
    /// Deletes `key` (nothing happens if it is absent).
    fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// Every pair whose key starts with `prefix`, sorted by key. Keys that are not UTF-8
    /// (written by some other program) are left out.
    fn list(&self, prefix: &str) -> Result<BTreeMap<String, Bytes>, StoreError>;
}

impl<S: Store + ?Sized> Store for &S {
    fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        (**self).get(key)
    }
    fn put(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        (**self).put(key, value)
    }
    fn delete(&self, key: &str) -> Result<(), StoreError> {
        (**self).delete(key)
    }
    fn list(&self, prefix: &str) -> Result<BTreeMap<String, Bytes>, StoreError> {
        (**self).list(prefix)
    }
}

impl<S: Store + ?Sized> Store for Arc<S> {
    fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        (**self).get(key)
    }
    fn put(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        (**self).put(key, value)
    }
    fn delete(&self, key: &str) -> Result<(), StoreError> {
        (**self).delete(key)
    }
    fn list(&self, prefix: &str) -> Result<BTreeMap<String, Bytes>, StoreError> {
        (**self).list(prefix)
    }
}

impl From<ClientError> for StoreError {
    fn from(e: ClientError) -> Self {
        if let ClientError::Unavailable { attempts } = &e {
            // Only the details: the variant already says that no server answered.
            let tried: Vec<String> = attempts.iter().map(|(addr, e)| format!("{addr}: {e}")).collect();
            StoreError::Unavailable(format!("tried {}", tried.join(", ")))
        } else if e.is_unavailable() {
            StoreError::Unavailable(e.to_string())
        } else {
            StoreError::Failed(e.to_string())
        }
    }
}

impl Store for Client {
    fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        Ok(Client::get(self, key)?)
    }
    fn put(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        Ok(Client::put(self, key, value)?)
    }
    fn delete(&self, key: &str) -> Result<(), StoreError> {
        Client::delete(self, key)?;
        Ok(())
    }
    fn list(&self, prefix: &str) -> Result<BTreeMap<String, Bytes>, StoreError> {
        let pairs = Client::list(self, prefix)?;
        Ok(pairs.into_iter().filter_map(|(k, v)| Some((String::from_utf8(k.to_vec()).ok()?, v))).collect())
    }
}

/// A store in memory: one map behind a lock, shared by every clone of an `Arc<MemStore>`.
///
/// [`set_offline`](MemStore::set_offline) makes every operation fail as an unreachable server
/// would, to show how the game copes.
#[derive(Debug, Default)]
pub struct MemStore {
    map: Mutex<BTreeMap<String, Bytes>>,
    offline: AtomicBool,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> MemStore {
        MemStore::default()
    }

    /// While `offline`, every operation fails with [`StoreError::Unavailable`].
    pub fn set_offline(&self, offline: bool) {
        self.offline.store(offline, Ordering::SeqCst);
    }

    /// How many keys are stored.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.map().is_empty()
    }

    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Bytes>> {
        // The map is consistent between operations, so a panic elsewhere leaves it usable.
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.offline.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("the in-memory store is set offline".into()));
        }
        Ok(())
    }
}

impl Store for MemStore {
    fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        self.check()?;
        Ok(self.map().get(key).cloned())
    }
    fn put(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.check()?;
        self.map().insert(key.to_owned(), Bytes::copy_from_slice(value));
        Ok(())
    }
    fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.check()?;
        self.map().remove(key);
        Ok(())
    }
    fn list(&self, prefix: &str) -> Result<BTreeMap<String, Bytes>, StoreError> {
        self.check()?;
        let map = self.map();
        Ok(map
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_store_basics() {
        let s = MemStore::new();
        s.put("a/1", b"x").unwrap();
        s.put("a/2", b"y").unwrap();
        s.put("b", b"z").unwrap();
        assert_eq!(s.get("a/1").unwrap().as_deref(), Some(&b"x"[..]));
        assert_eq!(s.list("a/").unwrap().len(), 2);
        assert_eq!(s.list("").unwrap().len(), 3);
        s.delete("a/1").unwrap();
        assert_eq!(s.get("a/1").unwrap(), None);
        s.set_offline(true);
        assert!(matches!(s.get("b"), Err(StoreError::Unavailable(_))));
        s.set_offline(false);
        assert_eq!(s.len(), 2);
    }
}
