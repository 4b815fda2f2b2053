//! One async lock per instance, so that the networks of different pods are
//! set up in parallel while two operations on the same pod (its two
//! containers starting at once, an attach and a detach) never interleave.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use tokio::sync::OwnedMutexGuard;

/// Locks by instance id; an entry lives as long as someone holds or waits
/// for its lock.
#[derive(Debug, Default)]
pub(crate) struct InstanceLocks {
    locks: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

impl InstanceLocks {
    /// Waits for the lock of `id`.
    pub(crate) async fn lock(&self, id: &str) -> OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(PoisonError::into_inner);
            // Forget the locks nobody holds any more: the map stays as small
            // as the number of operations in flight.
            locks.retain(|_, l| l.strong_count() > 0);
            match locks.get(id).and_then(Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    let lock = Arc::new(tokio::sync::Mutex::new(()));
                    locks.insert(id.to_string(), Arc::downgrade(&lock));
                    lock
                }
            }
        };
        lock.lock_owned().await
    }

    /// How many instances have a lock held or awaited.
    #[cfg(test)]
    fn len(&self) -> usize {
        let mut locks = self.locks.lock().unwrap_or_else(PoisonError::into_inner);
        locks.retain(|_, l| l.strong_count() > 0);
        locks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_instance_waits_others_do_not() {
        let locks = InstanceLocks::default();
        let a = locks.lock("a").await;
        // Another instance is not held up.
        let b = locks.lock("b").await;
        drop(b);
        // The same instance waits for the holder.
        let again = tokio::time::timeout(std::time::Duration::from_millis(50), locks.lock("a"));
        assert!(again.await.is_err(), "a second lock of a must wait");
        drop(a);
        let a = locks.lock("a").await;
        assert_eq!(locks.len(), 1);
        drop(a);
        assert_eq!(locks.len(), 0, "released locks are forgotten");
    }
}
