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
/// Times are the store's own clock (the database's), never a caller's: servers on several
/// hosts agree on when a lock expires. A lock whose last heartbeat is older than `ttl` belongs
/// to a dead holder and may be taken over; a store may also know a holder to be dead sooner
/// (its process stopped) and let it be taken over at once. The same owner acquiring again
/// succeeds and keeps `acquired_at`.
#[async_trait]
pub trait LockStore: Send + Sync {
    /// Takes the lock for `owner`, or returns the live holder that refuses it.
    async fn try_acquire(
        &self,
        environment: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Result<LockHolder, LockHolder>, StoreError>;

    /// Refreshes the heartbeat; `false` when `owner` no longer holds the lock, or held it
    /// past its time to live (it may have been taken over meanwhile): the lease is lost.
    async fn heartbeat(&self, environment: &str, owner: &str) -> Result<bool, StoreError>;

    /// Releases the lock if `owner` holds it.
    async fn release(&self, environment: &str, owner: &str) -> Result<(), StoreError>;
}

/// A held lock: heartbeats run in the background until it is released or dropped. Dropping
/// it without release (a crash, an aborted task) stops the heartbeats, so the lock expires.
///
/// The lease is lost when a heartbeat finds the lock gone or expired, or when no heartbeat
/// succeeded for a whole time to live (the store may have let another owner take it). A step
/// that changes what serves traffic first [`Lease::confirm`]s it: a heartbeat that succeeds
/// there gives the step the whole time to live before anyone else may act.
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
        if let Err(holder) = store.try_acquire(environment, owner, ttl).await? {
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
            ttl,
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

    /// Fails once the lease was found lost.
    pub fn check(&self) -> Result<(), DeployError> {
        if self.lost.load(Ordering::SeqCst) {
            return Err(self.lost_error());
        }
        Ok(())
    }

    /// Fences a step that changes traffic: renews the lock now and fails when that does not
    /// succeed (the lock was taken over or expired, or the store does not answer), so the
    /// step is not run by an owner that may no longer hold the environment.
    pub async fn confirm(&self) -> Result<(), DeployError> {
        self.check()?;
        match self.store.heartbeat(&self.environment, &self.owner).await {
            Ok(true) => Ok(()),
            Ok(false) => {
                self.lost.store(true, Ordering::SeqCst);
                Err(self.lost_error())
            }
            Err(error) => Err(error.into()),
        }
    }

    fn lost_error(&self) -> DeployError {
        DeployError::LockLost {
            environment: self.environment.clone(),
        }
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
    ttl: Duration,
    lost: Arc<AtomicBool>,
) {
    let mut renewed = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(ttl / 3).await;
        match store.heartbeat(&environment, &owner).await {
            Ok(true) => renewed = tokio::time::Instant::now(),
            Ok(false) => {
                lost.store(true, Ordering::SeqCst);
                return;
            }
            // A database hiccup is not a lost lock, unless it outlasts the time to live.
            Err(error) if renewed.elapsed() < ttl => {
                tracing::warn!(%environment, %error, "lock heartbeat failed")
            }
            Err(error) => {
                tracing::error!(%environment, %error, "no lock heartbeat succeeded for a whole time to live: the lease is lost");
                lost.store(true, Ordering::SeqCst);
                return;
            }
        }
    }
}

/// A [`LockStore`] in memory, for tests; its clock is the system's plus what
/// [`MemoryLockStore::advance`] added.
#[derive(Default)]
pub struct MemoryLockStore {
    locks: Mutex<HashMap<String, (LockHolder, Duration)>>,
    offset: Mutex<chrono::Duration>,
}

impl MemoryLockStore {
    /// The environment's holder, expired or not.
    pub fn holder(&self, environment: &str) -> Option<LockHolder> {
        self.lock_table()
            .get(environment)
            .map(|(holder, _)| holder.clone())
    }

    /// Moves the store's clock forward.
    pub fn advance(&self, by: Duration) {
        *self.offset.lock().unwrap_or_else(|p| p.into_inner()) += chrono_duration(by);
    }

    fn now(&self) -> DateTime<Utc> {
        Utc::now() + *self.offset.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_table(&self) -> std::sync::MutexGuard<'_, HashMap<String, (LockHolder, Duration)>> {
        self.locks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn expired(holder: &LockHolder, ttl: Duration, now: DateTime<Utc>) -> bool {
    now - holder.heartbeat_at > chrono_duration(ttl)
}

#[async_trait]
impl LockStore for MemoryLockStore {
    async fn try_acquire(
        &self,
        environment: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Result<LockHolder, LockHolder>, StoreError> {
        let now = self.now();
        let mut locks = self.lock_table();
        if let Some((holder, held_ttl)) = locks.get(environment) {
            if holder.owner != owner && !expired(holder, *held_ttl, now) {
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

    async fn heartbeat(&self, environment: &str, owner: &str) -> Result<bool, StoreError> {
        let now = self.now();
        match self.lock_table().get_mut(environment) {
            Some((holder, ttl)) if holder.owner == owner && !expired(holder, *ttl, now) => {
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
        let first = store.try_acquire("dev", "a", ttl).await.unwrap().unwrap();
        let refused = store.try_acquire("dev", "b", ttl).await.unwrap();
        let holder = refused.unwrap_err();
        assert_eq!(holder.owner, "a");
        assert_eq!(holder.acquired_at, first.acquired_at);
        store.advance(Duration::from_secs(31));
        let taken = store.try_acquire("dev", "b", ttl).await.unwrap();
        assert_eq!(taken.unwrap().owner, "b");
        assert!(!store.heartbeat("dev", "a").await.unwrap());
    }

    #[tokio::test]
    async fn an_expired_lock_cannot_be_renewed_even_when_no_one_took_it() {
        let store = MemoryLockStore::default();
        let ttl = Duration::from_secs(30);
        store.try_acquire("dev", "a", ttl).await.unwrap().unwrap();
        store.advance(Duration::from_secs(20));
        assert!(store.heartbeat("dev", "a").await.unwrap());
        store.advance(Duration::from_secs(31));
        assert!(!store.heartbeat("dev", "a").await.unwrap());
    }

    #[tokio::test]
    async fn same_owner_reacquires_and_release_frees() {
        let store = MemoryLockStore::default();
        let ttl = Duration::from_secs(30);
        let first = store.try_acquire("dev", "a", ttl).await.unwrap().unwrap();
        store.advance(Duration::from_secs(5));
        let again = store.try_acquire("dev", "a", ttl);
        assert_eq!(again.await.unwrap().unwrap().acquired_at, first.acquired_at);
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
        store.try_acquire("dev", "b", ttl).await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert!(matches!(lease.check(), Err(DeployError::LockLost { .. })));
    }

    #[tokio::test]
    async fn confirm_fences_an_owner_whose_lock_was_taken_over() {
        let store: Arc<MemoryLockStore> = Arc::default();
        let ttl = Duration::from_secs(30);
        let lease = Lease::acquire(store.clone(), "dev", "a", ttl)
            .await
            .unwrap();
        lease.confirm().await.unwrap();
        store.advance(Duration::from_secs(31));
        store.try_acquire("dev", "b", ttl).await.unwrap().unwrap();
        assert!(matches!(
            lease.confirm().await,
            Err(DeployError::LockLost { .. })
        ));
        assert!(matches!(lease.check(), Err(DeployError::LockLost { .. })));
        assert_eq!(store.holder("dev").unwrap().owner, "b");
    }
}
