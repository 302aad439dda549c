//! Web UI sign-ins: sessions made from an API token, held by the browser as a cookie. Only the
//! secret's SHA-256 is stored; a session acts with its token's scopes and ends with the token.

use rand::RngCore;

use super::tokens::{digest, token_from_row, TokenRecord, TOKEN_COLUMNS};
use super::{Store, StoreResult};

/// A session that is valid now: who it acts as, and the CSRF token its changes must carry.
#[derive(Debug, Clone)]
pub struct Session {
    pub token: TokenRecord,
    pub csrf: String,
}

/// A new session's secrets, shown once: the cookie's value and the CSRF token.
pub struct NewSession {
    pub secret: String,
    pub csrf: String,
}

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

impl Store {
    /// Opens a session for token `token_id` lasting `hours`; expired sessions go meanwhile.
    pub async fn open_session(&self, token_id: i64, hours: u64) -> StoreResult<NewSession> {
        let session = NewSession {
            secret: random_hex(),
            csrf: random_hex(),
        };
        let client = self.client().await?;
        client
            .execute("DELETE FROM ui_sessions WHERE expires_at < now()", &[])
            .await?;
        client
            .execute(
                "INSERT INTO ui_sessions (secret_sha256, token_id, csrf, expires_at)
                 VALUES ($1, $2, $3, now() + make_interval(hours => $4))",
                &[
                    &digest(&session.secret),
                    &token_id,
                    &session.csrf,
                    &(hours as i32),
                ],
            )
            .await?;
        Ok(session)
    }

    /// The session whose cookie holds `secret`, if it is unexpired and its token unrevoked; the
    /// token is marked as used now.
    pub async fn session(&self, secret: &str) -> StoreResult<Option<Session>> {
        let row = self
            .client()
            .await?
            .query_opt(
                &format!(
                    "WITH s AS (
                         SELECT token_id, csrf FROM ui_sessions
                         WHERE secret_sha256 = $1 AND expires_at > now()
                     )
                     UPDATE api_tokens SET last_used_at = now()
                     FROM s
                     WHERE api_tokens.id = s.token_id AND api_tokens.revoked_at IS NULL
                     RETURNING s.csrf, {}",
                    TOKEN_COLUMNS
                        .split(", ")
                        .map(|column| format!("api_tokens.{column}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                &[&digest(secret)],
            )
            .await?;
        Ok(row.map(|row| Session {
            token: token_from_row(&row),
            csrf: row.get("csrf"),
        }))
    }

    /// Ends the session whose cookie holds `secret` (sign-out); nothing when there is none.
    pub async fn close_session(&self, secret: &str) -> StoreResult<()> {
        self.client()
            .await?
            .execute(
                "DELETE FROM ui_sessions WHERE secret_sha256 = $1",
                &[&digest(secret)],
            )
            .await?;
        Ok(())
    }
}
