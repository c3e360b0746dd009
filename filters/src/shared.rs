//! Long-lived resources that outlive a config reload.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// What the engine keeps across reloads and hands to every filter factory: the Prometheus
/// registry it serves, and resources a filter must not create twice (an audit writer and its
/// hash chain, in-process rate-limit buckets, metric families).
///
/// A reload builds new filters; they find the old resources here by key, so an audit chain
/// continues and rate-limit state is kept.
pub struct Shared {
    registry: prometheus::Registry,
    items: Mutex<HashMap<String, Arc<dyn Any + Send + Sync>>>,
}

impl Shared {
    pub fn new(registry: prometheus::Registry) -> Shared {
        Shared {
            registry,
            items: Mutex::new(HashMap::new()),
        }
    }

    /// The registry served on the admin listener's `/metrics`.
    pub fn registry(&self) -> &prometheus::Registry {
        &self.registry
    }

    /// The resource stored under `key`, created by `init` the first time.
    ///
    /// A resource of another type under the same key is replaced.
    pub fn get_or_try_init<T, E>(
        &self,
        key: &str,
        init: impl FnOnce() -> Result<T, E>,
    ) -> Result<Arc<T>, E>
    where
        T: Any + Send + Sync,
    {
        let mut items = self.items.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(found) = items.get(key).and_then(|a| a.clone().downcast::<T>().ok()) {
            return Ok(found);
        }
        let made = Arc::new(init()?);
        items.insert(key.to_string(), made.clone());
        Ok(made)
    }

    /// Every resource of type `T` (e.g. to flush all audit writers at shutdown).
    pub fn all<T: Any + Send + Sync>(&self) -> Vec<Arc<T>> {
        let items = self.items.lock().unwrap_or_else(|p| p.into_inner());
        items
            .values()
            .filter_map(|a| a.clone().downcast::<T>().ok())
            .collect()
    }

    /// Registers a metric collector once; later calls (after a reload) get the first one back.
    pub fn metric<T>(
        &self,
        key: &str,
        make: impl FnOnce() -> prometheus::Result<T>,
    ) -> prometheus::Result<Arc<T>>
    where
        T: prometheus::core::Collector + Clone + Any + Send + Sync + 'static,
    {
        self.get_or_try_init(&format!("metric:{key}"), || -> prometheus::Result<T> {
            let m = make()?;
            self.registry.register(Box::new(m.clone()))?;
            Ok(m)
        })
    }
}
