//! Turns at changing the apt repository in a bucket: servers that share no directory (so no
//! `flock`) publish and remove one at a time under a database advisory lock.

use std::future::Future;

use super::{Store, StoreResult};

/// The advisory lock a server holds while it changes the repository in the bucket.
pub(crate) const APT_BUCKET_LOCK: i64 = 4242003;

impl Store {
    /// Runs `work` once no other server (nor task of this one) is changing the repository, and
    /// holds the others off until it ends. The lock is the transaction's, so it is let go when
    /// `work` ends, fails, or its server dies.
    pub async fn in_apt_turn<T, Fut>(&self, work: impl FnOnce() -> Fut) -> StoreResult<T>
    where
        Fut: Future<Output = T>,
    {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&APT_BUCKET_LOCK])
            .await?;
        let done = work().await;
        // The work is done whatever the rollback says: a connection that cannot roll back is
        // gone, and its lock with it.
        if let Err(error) = tx.rollback().await {
            tracing::warn!(%error, "cannot end the apt repository's turn cleanly");
        }
        Ok(done)
    }
}
