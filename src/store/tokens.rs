//! API tokens: only their SHA-256 is stored; the token itself is shown once, when made. Each
//! token has scopes saying what it may do, and may be revoked.

use std::fmt;

use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::{Serialize, Serializer};
use sha2::{Digest, Sha256};

use super::{Store, StoreResult};

/// The longest token name, in characters.
pub const MAX_NAME_CHARS: usize = 100;
/// The most scopes one token may have (there are few distinct ones worth giving).
pub const MAX_SCOPES: usize = 32;

/// What a token may do. Every scope includes reading.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Every `GET` under `/api/v1` but the token list and the audit trail.
    Read,
    /// Cancel builds and queue them again.
    Build,
    /// Promote and roll back in the environment of that name (of any project); `None` for
    /// every environment.
    Deploy(Option<String>),
    /// Everything: tokens, rebakes, the audit trail.
    Admin,
    /// Register build agents, and nothing else (not even reads): what agents' machines hold.
    Agent,
}

impl Scope {
    /// Parses `read`, `build`, `deploy` (or `deploy:*`), `deploy:<environment>`, `admin`;
    /// the error says what is accepted.
    pub fn parse(text: &str) -> Result<Scope, String> {
        match text {
            "read" => Ok(Scope::Read),
            "build" => Ok(Scope::Build),
            "admin" => Ok(Scope::Admin),
            "agent" => Ok(Scope::Agent),
            "deploy" | "deploy:*" => Ok(Scope::Deploy(None)),
            _ => match text.strip_prefix("deploy:") {
                Some(environment) if !environment.is_empty() => {
                    Ok(Scope::Deploy(Some(environment.to_owned())))
                }
                _ => Err(format!(
                    "unknown scope {:?}; scopes: read, build, deploy:<environment>, deploy (every environment), admin, agent",
                    shorten(text)
                )),
            },
        }
    }

    /// Whether a token with this scope may do what `needed` names.
    pub fn allows(&self, needed: &Scope) -> bool {
        match (self, needed) {
            (Scope::Admin, _) => true,
            (Scope::Agent, needed) => *needed == Scope::Agent,
            (_, Scope::Read) => true,
            (Scope::Build, Scope::Build) => true,
            (Scope::Deploy(None), Scope::Deploy(_)) => true,
            (Scope::Deploy(Some(mine)), Scope::Deploy(Some(wanted))) => mine == wanted,
            _ => false,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Read => f.write_str("read"),
            Scope::Build => f.write_str("build"),
            Scope::Admin => f.write_str("admin"),
            Scope::Agent => f.write_str("agent"),
            Scope::Deploy(None) => f.write_str("deploy:*"),
            Scope::Deploy(Some(environment)) => write!(f, "deploy:{environment}"),
        }
    }
}

impl Serialize for Scope {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A text from a client, cut short enough to quote back in an error.
pub fn shorten(text: &str) -> String {
    const SHOWN: usize = 40;
    match text.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Checks a token name: 1 to [`MAX_NAME_CHARS`] characters, none of them control characters,
/// not only spaces. The error does not quote the name back (it may be megabytes long).
pub fn check_name(name: &str) -> Result<(), String> {
    let chars = name.chars().count();
    if name.trim().is_empty() || chars > MAX_NAME_CHARS {
        return Err(format!(
            "a token name has 1 to {MAX_NAME_CHARS} characters, not only spaces; this one has {chars}"
        ));
    }
    if let Some(position) = name.chars().position(char::is_control) {
        return Err(format!(
            "a token name has printable characters only; character {} is a control character",
            position + 1
        ));
    }
    Ok(())
}

/// A token as listed: never its secret or hash.
#[derive(Debug, Clone, Serialize)]
pub struct TokenRecord {
    pub id: i64,
    pub name: String,
    pub scopes: Vec<Scope>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// What a presented token turned out to be.
pub enum Presented {
    Valid(TokenRecord),
    Revoked(TokenRecord),
    Unknown,
}

/// Why a revocation was refused.
pub enum RevokeRefusal {
    NoSuchToken,
    /// Revoking it would leave no token able to make new ones.
    LastAdmin,
}

/// Tokens are 32 random bytes, hex-encoded, with a prefix that makes them easy to spot.
pub fn generate_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("slw_{}", hex::encode(bytes))
}

pub(super) fn digest(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

pub(super) const TOKEN_COLUMNS: &str = "id, name, scopes, created_at, last_used_at, revoked_at";

pub(super) fn token_from_row(row: &tokio_postgres::Row) -> TokenRecord {
    let scopes: Vec<String> = row.get("scopes");
    TokenRecord {
        id: row.get("id"),
        name: row.get("name"),
        // Only parsed scopes are ever written; an unknown one would grant nothing anyway.
        scopes: scopes.iter().filter_map(|s| Scope::parse(s).ok()).collect(),
        created_at: row.get("created_at"),
        last_used_at: row.get("last_used_at"),
        revoked_at: row.get("revoked_at"),
    }
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

    /// Stores the hash of `token` with its name and scopes (checked by the caller).
    pub async fn insert_token(
        &self,
        name: &str,
        scopes: &[Scope],
        token: &str,
    ) -> StoreResult<TokenRecord> {
        let scopes: Vec<String> = scopes.iter().map(Scope::to_string).collect();
        let row = self
            .client()
            .await?
            .query_one(
                &format!(
                    "INSERT INTO api_tokens (name, scopes, token_sha256) VALUES ($1, $2, $3)
                     RETURNING {TOKEN_COLUMNS}"
                ),
                &[&name, &scopes, &digest(token)],
            )
            .await?;
        Ok(token_from_row(&row))
    }

    /// What `token` is; a valid one is marked as used now.
    pub async fn check_token(&self, token: &str) -> StoreResult<Presented> {
        let row = self
            .client()
            .await?
            .query_opt(
                &format!(
                    "UPDATE api_tokens
                     SET last_used_at = CASE WHEN revoked_at IS NULL THEN now() ELSE last_used_at END
                     WHERE token_sha256 = $1 RETURNING {TOKEN_COLUMNS}"
                ),
                &[&digest(token)],
            )
            .await?;
        Ok(match row.as_ref().map(token_from_row) {
            Some(record) if record.revoked_at.is_some() => Presented::Revoked(record),
            Some(record) => Presented::Valid(record),
            None => Presented::Unknown,
        })
    }

    /// Every token, revoked ones included, oldest first.
    pub async fn list_tokens(&self) -> StoreResult<Vec<TokenRecord>> {
        let rows = self
            .client()
            .await?
            .query(
                &format!("SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY id"),
                &[],
            )
            .await?;
        Ok(rows.iter().map(token_from_row).collect())
    }

    /// Revokes token `id` (again, if it was: the first time is kept), unless it is the last
    /// admin token that is not revoked.
    pub async fn revoke_token(&self, id: i64) -> StoreResult<Result<TokenRecord, RevokeRefusal>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Serializes concurrent revocations, so two of them cannot each leave the other's
        // admin token as the last one and then both go through.
        tx.execute("LOCK TABLE api_tokens IN SHARE ROW EXCLUSIVE MODE", &[])
            .await?;
        let Some(row) = tx
            .query_opt(
                &format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE id = $1"),
                &[&id],
            )
            .await?
        else {
            return Ok(Err(RevokeRefusal::NoSuchToken));
        };
        let token = token_from_row(&row);
        if token.revoked_at.is_some() {
            return Ok(Ok(token));
        }
        let other_admins: i64 = tx
            .query_one(
                "SELECT count(*) FROM api_tokens
                 WHERE id <> $1 AND revoked_at IS NULL AND 'admin' = ANY (scopes)",
                &[&id],
            )
            .await?
            .get(0);
        if token.scopes.contains(&Scope::Admin) && other_admins == 0 {
            return Ok(Err(RevokeRefusal::LastAdmin));
        }
        let row = tx
            .query_one(
                &format!(
                    "UPDATE api_tokens SET revoked_at = now() WHERE id = $1 RETURNING {TOKEN_COLUMNS}"
                ),
                &[&id],
            )
            .await?;
        tx.commit().await?;
        Ok(Ok(token_from_row(&row)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_and_print_back() {
        for (text, printed) in [
            ("read", "read"),
            ("build", "build"),
            ("admin", "admin"),
            ("deploy", "deploy:*"),
            ("deploy:*", "deploy:*"),
            ("deploy:dev", "deploy:dev"),
        ] {
            assert_eq!(Scope::parse(text).unwrap().to_string(), printed);
        }
        for bad in ["", "write", "deploy:", "Admin", "read "] {
            let error = Scope::parse(bad).unwrap_err();
            assert!(error.starts_with("unknown scope"), "{bad:?}: {error}");
        }
    }

    #[test]
    fn a_deploy_scope_allows_its_environment_only() {
        let dev = Scope::Deploy(Some("dev".into()));
        let prod = Scope::Deploy(Some("prod".into()));
        assert!(dev.allows(&dev));
        assert!(!dev.allows(&prod));
        assert!(!dev.allows(&Scope::Build));
        assert!(dev.allows(&Scope::Read));
        assert!(Scope::Deploy(None).allows(&prod));
        assert!(!Scope::Read.allows(&dev));
        assert!(!Scope::Build.allows(&Scope::Admin));
        assert!(Scope::Admin.allows(&prod));
    }

    #[test]
    fn names_are_bounded_and_printable() {
        assert!(check_name("ci deploys").is_ok());
        assert!(check_name(&"é".repeat(MAX_NAME_CHARS)).is_ok());
        let long = check_name(&"x".repeat(2_000_000)).unwrap_err();
        assert!(long.contains("this one has 2000000"), "{long}");
        assert!(long.len() < 200, "the name is not quoted back");
        assert!(check_name("").is_err());
        assert!(check_name("   ").is_err());
        assert!(check_name("a\u{0}b")
            .unwrap_err()
            .contains("character 2 is a control"));
        assert!(check_name("a\nb").is_err());
    }

    #[test]
    fn unknown_scopes_are_quoted_short() {
        let error = Scope::parse(&"x".repeat(10_000)).unwrap_err();
        assert!(error.len() < 200, "{error}");
    }
}
