//! One deployment per environment: a lock with an owner, a heartbeat and a time to live.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{DeployError, StoreError};

/// Who holds an environment's lock, and since when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockHolder {
    pub owner: String,
    pub acquired_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
}

/// Environment locks; the root crate implements it over Postgres.
///
/// A lock whose last heartbeat is older than `ttl` belongs to a dead holder and may be
/// taken over. The same owner acquiring again (a restarted server with a stable owner id)
/// succeeds and keeps `acquired_at`.
#[async_trait]
pub trait LockStore: Send + Sync {
    /// Takes the lock for `owner`, or returns the live holder that refuses it.
    async fn try_acquire(
        &self,
        environment: &str,
        owner: &str,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> Result<Result<LockHolder, LockHolder>, StoreError>;

    /// Refreshes the heartbeat; `false` when `owner` no longer holds the lock.
    async fn heartbeat(
        &self,
        environment: &str,
        owner: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Releases the lock if `owner` holds it.
    async fn release(&self, environment: &str, owner: &str) -> Result<(), StoreError>;
}

/// A held lock: heartbeats run in the background until it is released or dropped. Dropping
/// it without release (a crash, an aborted task) stops the heartbeats, so the lock expires.
pub struct Lease {
    store: Arc<dyn LockStore>,
    environment: String,
    owner: String,
    lost: Arc<AtomicBool>,
    heartbeats: tokio::task::JoinHandle<()>,
}

impl Lease {
    /// Acquires the environment's lock and starts heartbeats every third of `ttl`.
    pub async fn acquire(
        store: Arc<dyn LockStore>,
        environment: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Lease, DeployError> {
        if let Err(holder) = store
            .try_acquire(environment, owner, ttl, Utc::now())
            .await?
        {
            return Err(DeployError::Locked {
                environment: environment.to_owned(),
                owner: holder.owner,
                acquired_at: holder.acquired_at,
                heartbeat_at: holder.heartbeat_at,
            });
        }
        let lost = Arc::new(AtomicBool::new(false));
        let heartbeats = tokio::spawn(beat(
            store.clone(),
            environment.to_owned(),
            owner.to_owned(),
            ttl / 3,
            lost.clone(),
        ));
        Ok(Lease {
            store,
            environment: environment.to_owned(),
            owner: owner.to_owned(),
            lost,
            heartbeats,
        })
    }

    /// Fails once a heartbeat found the lock held by someone else.
    pub fn check(&self) -> Result<(), DeployError> {
        if self.lost.load(Ordering::SeqCst) {
            return Err(DeployError::LockLost {
                environment: self.environment.clone(),
            });
        }
        Ok(())
    }

    /// Stops heartbeats and releases the lock.
    pub async fn release(self) -> Result<(), DeployError> {
        self.heartbeats.abort();
        self.store.release(&self.environment, &self.owner).await?;
        Ok(())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.heartbeats.abort();
    }
}

async fn beat(
    store: Arc<dyn LockStore>,
    environment: String,
    owner: String,
    every: Duration,
    lost: Arc<AtomicBool>,
) {
    loop {
        tokio::time::sleep(every).await;
        match store.heartbeat(&environment, &owner, Utc::now()).await {
            Ok(true) => {}
            Ok(false) => {
                lost.store(true, Ordering::SeqCst);
                return;
            }
            // A database hiccup is not a lost lock; the next beat tries again.
            Err(error) => tracing::warn!(%environment, %error, "lock heartbeat failed"),
        }
    }
}

/// A [`LockStore`] in memory, for tests.
#[derive(Default)]
pub struct MemoryLockStore {
    locks: Mutex<HashMap<String, (LockHolder, Duration)>>,
}

impl MemoryLockStore {
    /// The environment's holder, expired or not.
    pub fn holder(&self, environment: &str) -> Option<LockHolder> {
        self.lock_table()
            .get(environment)
            .map(|(holder, _)| holder.clone())
    }

    fn lock_table(&self) -> std::sync::MutexGuard<'_, HashMap<String, (LockHolder, Duration)>> {
        self.locks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl LockStore for MemoryLockStore {
    async fn try_acquire(
        &self,
        environment: &str,
        owner: &str,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> Result<Result<LockHolder, LockHolder>, StoreError> {
        let mut locks = self.lock_table();
        if let Some((holder, held_ttl)) = locks.get(environment) {
            let expired = now - holder.heartbeat_at > chrono_duration(*held_ttl);
            if holder.owner != owner && !expired {
                return Ok(Err(holder.clone()));
            }
        }
        let acquired_at = match locks.get(environment) {
            Some((holder, _)) if holder.owner == owner => holder.acquired_at,
            _ => now,
        };
        let holder = LockHolder {
            owner: owner.to_owned(),
            acquired_at,
            heartbeat_at: now,
        };
        locks.insert(environment.to_owned(), (holder.clone(), ttl));
        Ok(Ok(holder))
    }

    async fn heartbeat(
        &self,
        environment: &str,
        owner: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        match self.lock_table().get_mut(environment) {
            Some((holder, _)) if holder.owner == owner => {
                holder.heartbeat_at = now;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn release(&self, environment: &str, owner: &str) -> Result<(), StoreError> {
        let mut locks = self.lock_table();
        if locks
            .get(environment)
            .is_some_and(|(holder, _)| holder.owner == owner)
        {
            locks.remove(environment);
        }
        Ok(())
    }
}

/// `duration` as chrono's, saturating on absurd values.
pub(crate) fn chrono_duration(duration: Duration) -> chrono::Duration {
    chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn second_owner_is_refused_until_the_holder_expires() {
        let store = MemoryLockStore::default();
        let ttl = Duration::from_secs(30);
        let start = Utc::now();
        let first = store.try_acquire("dev", "a", ttl, start).await.unwrap();
        assert!(first.is_ok());
        let refused = store.try_acquire("dev", "b", ttl, start).await.unwrap();
        let holder = refused.unwrap_err();
        assert_eq!(holder.owner, "a");
        assert_eq!(holder.acquired_at, start);
        let later = start + chrono::Duration::seconds(31);
        let taken = store.try_acquire("dev", "b", ttl, later).await.unwrap();
        assert_eq!(taken.unwrap().owner, "b");
        assert!(!store.heartbeat("dev", "a", later).await.unwrap());
    }

    #[tokio::test]
    async fn same_owner_reacquires_and_release_frees() {
        let store = MemoryLockStore::default();
        let ttl = Duration::from_secs(30);
        let start = Utc::now();
        store
            .try_acquire("dev", "a", ttl, start)
            .await
            .unwrap()
            .unwrap();
        let again = store.try_acquire("dev", "a", ttl, start + chrono::Duration::seconds(5));
        assert_eq!(again.await.unwrap().unwrap().acquired_at, start);
        store.release("dev", "b").await.unwrap();
        assert!(store.holder("dev").is_some());
        store.release("dev", "a").await.unwrap();
        assert!(store.holder("dev").is_none());
    }

    #[tokio::test]
    async fn lease_notices_a_takeover() {
        let store: Arc<MemoryLockStore> = Arc::default();
        let ttl = Duration::from_millis(90);
        let lease = Lease::acquire(store.clone(), "dev", "a", ttl)
            .await
            .unwrap();
        store.release("dev", "a").await.unwrap();
        store
            .try_acquire("dev", "b", ttl, Utc::now())
            .await
            .unwrap()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert!(matches!(lease.check(), Err(DeployError::LockLost { .. })));
    }
}
