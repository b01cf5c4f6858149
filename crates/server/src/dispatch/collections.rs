//! The collections' configurations as this process applies them: read
//! from the store at start, changed here by `configure_collection`, and
//! refreshed from the store for the changes other processes make. Behind a
//! lock of its own, a leaf: nothing else is locked while it is held.

use crate::resolve::CollectionConfig;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use tracing::info;

pub(super) struct Collections {
    configured: RwLock<HashMap<String, Arc<CollectionConfig>>>,
    /// What a collection never configured decides with.
    default: Arc<CollectionConfig>,
    /// Bumped by every local change: a refresh read from the store before
    /// the change must not undo it.
    changed: AtomicU64,
}

/// Where a refresh stands: what `Collections::changes` said before the store
/// was read.
pub(super) struct Mark(u64);

impl Collections {
    pub(super) fn new(
        configured: HashMap<String, Arc<CollectionConfig>>,
        default: CollectionConfig,
    ) -> Collections {
        Collections {
            configured: RwLock::new(configured),
            default: Arc::new(default),
            changed: AtomicU64::new(0),
        }
    }

    /// The collection's configuration, or the default one.
    pub(super) fn get(&self, name: &str) -> Arc<CollectionConfig> {
        let configured = self.configured.read().unwrap_or_else(|p| p.into_inner());
        configured.get(name).unwrap_or(&self.default).clone()
    }

    /// Applies a configuration this process stored.
    pub(super) fn set(&self, name: &str, config: CollectionConfig) {
        let mut configured = self.configured.write().unwrap_or_else(|p| p.into_inner());
        configured.insert(name.to_owned(), Arc::new(config));
        self.changed.fetch_add(1, Ordering::SeqCst);
    }

    /// Taken before reading the store for a refresh.
    pub(super) fn mark(&self) -> Mark {
        Mark(self.changed.load(Ordering::SeqCst))
    }

    /// Applies what the store listed since `mark`, unless this process
    /// changed a configuration meanwhile (the list may predate it; the next
    /// refresh reads it again).
    pub(super) fn refresh(&self, mark: Mark, listed: Vec<(String, CollectionConfig)>) {
        let mut configured = self.configured.write().unwrap_or_else(|p| p.into_inner());
        if self.changed.load(Ordering::SeqCst) != mark.0 {
            return;
        }
        for (name, config) in listed {
            if configured.get(&name).map(|c| &**c) != Some(&config) {
                info!(collection = %name, "collection setting changed in the store");
                configured.insert(name, Arc::new(config));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolve::Handler;

    #[test]
    fn a_refresh_never_undoes_a_change_made_while_the_store_was_read() {
        let collections = Collections::new(
            HashMap::new(),
            CollectionConfig::with_handler(Handler::Optimistic),
        );
        assert_eq!(collections.get("notes").handler, Handler::Optimistic);
        let mark = collections.mark();
        collections.set("notes", CollectionConfig::with_handler(Handler::Automerge));
        let stale = vec![(
            "notes".to_owned(),
            CollectionConfig::with_handler(Handler::Optimistic),
        )];
        collections.refresh(mark, stale.clone());
        assert_eq!(collections.get("notes").handler, Handler::Automerge);
        collections.refresh(collections.mark(), stale);
        assert_eq!(
            collections.get("notes").handler,
            Handler::Optimistic,
            "a later refresh applies what the store says"
        );
    }
}
