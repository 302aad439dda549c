//! The installation's apt signing key, kept in the database so that every server signs with
//! the one key, which is made once (under an advisory lock) and never served.

use std::future::Future;

use super::{Store, StoreResult};

/// The advisory lock under which the first server makes the key while others wait.
pub(crate) const SIGNING_KEY_LOCK: i64 = 4242002;

/// A signing key as the installation keeps it.
pub struct StoredKey {
    pub fingerprint: String,
    /// ASCII-armored secret key: never logged or shown.
    pub secret_key: String,
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredKey")
            .field("fingerprint", &self.fingerprint)
            .field("secret_key", &"<redacted>")
            .finish()
    }
}

impl Store {
    /// The installation's signing key; when none is kept yet, the key `make` gives (the one
    /// this server has, or a new one) is kept and returned. Servers starting at once wait for
    /// each other, so one key is made.
    pub async fn signing_key_or_else<E, Fut>(
        &self,
        make: impl FnOnce() -> Fut,
    ) -> StoreResult<Result<StoredKey, E>>
    where
        Fut: Future<Output = Result<StoredKey, E>>,
    {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SIGNING_KEY_LOCK])
            .await?;
        let kept = tx
            .query_opt("SELECT fingerprint, secret_key FROM signing_key", &[])
            .await?;
        if let Some(row) = kept {
            return Ok(Ok(StoredKey {
                fingerprint: row.get(0),
                secret_key: row.get(1),
            }));
        }
        let key = match make().await {
            Ok(key) => key,
            Err(error) => return Ok(Err(error)),
        };
        tx.execute(
            "INSERT INTO signing_key (fingerprint, secret_key) VALUES ($1, $2)",
            &[&key.fingerprint, &key.secret_key],
        )
        .await?;
        tx.commit().await?;
        Ok(Ok(key))
    }
}
