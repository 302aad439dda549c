//! The audit trail: which token asked for which action, on what, and when.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use super::{Store, StoreResult};

/// The token that asked, as recorded (its name is copied: the trail outlives revocation).
#[derive(Debug, Clone, Serialize)]
pub struct Actor {
    pub id: i64,
    pub name: String,
}

/// An action to record; `subject` names what it acted on in user terms (`build 4`, `v3`,
/// `token 7`).
#[derive(Debug, Clone)]
pub struct NewAuditEvent<'a> {
    pub action: &'a str,
    pub project: Option<&'a str>,
    pub environment: Option<&'a str>,
    pub subject: String,
    pub deployment_id: Option<&'a str>,
    pub detail: Value,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditEvent {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub token: Actor,
    pub action: String,
    pub project: Option<String>,
    pub environment: Option<String>,
    pub subject: String,
    pub deployment: Option<String>,
    pub detail: Value,
}

/// Which audit events to list, newest first.
pub struct AuditQuery<'a> {
    pub project: Option<&'a str>,
    /// Only events older than this id (the `id` of the last event of the previous page).
    pub before: Option<i64>,
    pub limit: i64,
}

impl Store {
    pub async fn record_audit(&self, actor: &Actor, event: &NewAuditEvent<'_>) -> StoreResult<()> {
        self.client()
            .await?
            .execute(
                "INSERT INTO audit_events
                     (token_id, token_name, action, project, environment, subject, deployment_id, detail)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                &[
                    &actor.id,
                    &actor.name,
                    &event.action,
                    &event.project,
                    &event.environment,
                    &event.subject,
                    &event.deployment_id,
                    &event.detail,
                ],
            )
            .await?;
        Ok(())
    }

    pub async fn audit_events(&self, query: &AuditQuery<'_>) -> StoreResult<Vec<AuditEvent>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT id, at, token_id, token_name, action, project, environment, subject,
                        deployment_id, detail
                 FROM audit_events
                 WHERE ($1::text IS NULL OR project = $1) AND ($2::bigint IS NULL OR id < $2)
                 ORDER BY id DESC LIMIT $3",
                &[&query.project, &query.before, &query.limit],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| AuditEvent {
                id: row.get("id"),
                at: row.get("at"),
                token: Actor {
                    id: row.get("token_id"),
                    name: row.get("token_name"),
                },
                action: row.get("action"),
                project: row.get("project"),
                environment: row.get("environment"),
                subject: row.get("subject"),
                deployment: row.get("deployment_id"),
                detail: row.get("detail"),
            })
            .collect())
    }

    /// The token that asked for deployment `id`, when one did (the server deploys new
    /// releases to each project's first environment by itself).
    pub async fn deployment_requester(&self, id: &str) -> StoreResult<Option<Actor>> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT token_id, token_name FROM audit_events WHERE deployment_id = $1
                 ORDER BY id LIMIT 1",
                &[&id],
            )
            .await?;
        Ok(row.map(|row| Actor {
            id: row.get(0),
            name: row.get(1),
        }))
    }
}
