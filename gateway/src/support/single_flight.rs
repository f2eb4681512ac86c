//! One piece of work per key at a time: callers that ask for a key while its work is in flight wait for
//! that work and share its result (backend API-key lookups, on-demand TLS asks). Only slow paths (cache
//! misses) come here; the map is locked briefly, never across the work.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

/// Work in flight, by key.
pub struct SingleFlight<T> {
    pending: Mutex<HashMap<String, Arc<OnceCell<T>>>>,
}

impl<T> Default for SingleFlight<T> {
    fn default() -> Self {
        SingleFlight {
            pending: Mutex::new(HashMap::new()),
        }
    }
}

impl<T: Clone> SingleFlight<T> {
    /// Runs `work` for `key`, or waits for the run already in flight and returns its result.
    pub async fn run<F, Fut>(&self, key: &str, work: F) -> T
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T>,
    {
        let cell = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(pending.entry(key.to_string()).or_default())
        };
        let result = cell.get_or_init(work).await.clone();
        // The next call after this one does the work again (the callers cache results themselves).
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.get(key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            pending.remove(key);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_calls_share_one_run_and_later_calls_run_again() {
        let flight = SingleFlight::<usize>::default();
        let runs = AtomicUsize::new(0);
        let work = || async {
            runs.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            7
        };
        let (a, b, c) = tokio::join!(
            flight.run("k", work),
            flight.run("k", work),
            flight.run("k", work)
        );
        assert_eq!((a, b, c), (7, 7, 7));
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(flight.run("k", work).await, 7);
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert_eq!(flight.run("other", work).await, 7);
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }
}
