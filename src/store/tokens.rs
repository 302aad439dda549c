//! API tokens: only their SHA-256 is stored; the token itself is shown once, when made.

use rand::RngCore;
use sha2::{Digest, Sha256};

use super::{Store, StoreResult};

/// Tokens are 32 random bytes, hex-encoded, with a prefix that makes them easy to spot.
pub fn generate_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("slw_{}", hex::encode(bytes))
}

fn digest(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

impl Store {
    pub async fn token_count(&self) -> StoreResult<i64> {
        let row = self
            .client()
            .await?
            .query_one("SELECT count(*) FROM api_tokens", &[])
            .await?;
        Ok(row.get(0))
    }

    pub async fn insert_token(&self, name: &str, token: &str) -> StoreResult<()> {
        self.client()
            .await?
            .execute(
                "INSERT INTO api_tokens (name, token_sha256) VALUES ($1, $2)",
                &[&name, &digest(token)],
            )
            .await?;
        Ok(())
    }

    /// The name of the token, when it is a valid one.
    pub async fn check_token(&self, token: &str) -> StoreResult<Option<String>> {
        let row = self
            .client()
            .await?
            .query_opt(
                "UPDATE api_tokens SET last_used_at = now() WHERE token_sha256 = $1 RETURNING name",
                &[&digest(token)],
            )
            .await?;
        Ok(row.map(|r| r.get(0)))
    }
}
