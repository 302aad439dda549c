//! Notifications (V17): events the triggers record, turned into one delivery per target
//! ("fanned out") by whichever server gets to them first, then claimed, delivered and
//! settled like build status reports.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use super::{Store, StoreResult};

/// How long a server may take over the deliveries it claimed before another may claim them.
const CLAIM_SECONDS: f64 = 60.0;
/// How old a deployment's event must be before it is fanned out: the API records who asked
/// for a deployment just after the deployment starts, and the message names them.
const DEPLOYMENT_SETTLE_SECONDS: f64 = 2.0;

/// An event to tell the project's targets about.
#[derive(Debug, Clone)]
pub struct NotificationEvent {
    pub id: i64,
    pub project: String,
    /// One of `config::notify::EVENTS`.
    pub event: String,
    pub facts: Value,
    /// For a deployment: the name of the token that asked for it, and what it asked
    /// (`promote`, `rollback`); none for one Slipway started itself.
    pub asked_by: Option<(String, String)>,
}

/// One delivery a fanned-out event makes.
#[derive(Debug, Clone)]
pub struct NewNotification {
    /// The target's place in the project's `[[projects.notify]]`.
    pub target: i32,
    pub kind: String,
    pub body: Value,
}

/// A delivery to make now.
#[derive(Debug, Clone)]
pub struct PendingNotification {
    pub id: i64,
    pub project: String,
    pub event: String,
    pub target: i32,
    pub kind: String,
    pub body: Value,
    pub attempts: i32,
}

/// One delivery as the API lists it.
#[derive(Debug, Clone, Serialize)]
pub struct NotificationRecord {
    pub id: i64,
    pub event: String,
    pub target: i32,
    pub kind: String,
    /// `null` while being delivered; `delivered` or `abandoned`.
    pub outcome: Option<String>,
    pub attempts: i32,
    pub error: Option<String>,
    pub body: Value,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl Store {
    /// Fans out up to `limit` events due now: `plan` gives each one's deliveries (none when no
    /// target wants it). One server handles each event; its deliveries are made at once.
    pub async fn fan_out_notifications(
        &self,
        limit: i64,
        plan: impl Fn(&NotificationEvent) -> Vec<NewNotification>,
    ) -> StoreResult<usize> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let rows = tx
            .query(
                "SELECT e.id, e.project, e.event, e.facts, a.token_name, a.action
                 FROM notification_events e
                 LEFT JOIN LATERAL (SELECT token_name, action FROM audit_events
                                    WHERE deployment_id = e.facts->>'deployment'
                                    ORDER BY id LIMIT 1) a ON true
                 WHERE e.fanned_out_at IS NULL
                   AND (NOT e.facts ? 'deployment'
                        OR e.created_at < now() - make_interval(secs => $2))
                 ORDER BY e.id LIMIT $1
                 FOR UPDATE OF e SKIP LOCKED",
                &[&limit, &DEPLOYMENT_SETTLE_SECONDS],
            )
            .await?;
        for row in &rows {
            let token: Option<String> = row.get(4);
            let action: Option<String> = row.get(5);
            let event = NotificationEvent {
                id: row.get(0),
                project: row.get(1),
                event: row.get(2),
                facts: row.get(3),
                asked_by: token.zip(action),
            };
            for delivery in plan(&event) {
                tx.execute(
                    "INSERT INTO notifications (event_id, target, kind, body) VALUES ($1, $2, $3, $4)",
                    &[&event.id, &delivery.target, &delivery.kind, &delivery.body],
                )
                .await?;
            }
            tx.execute(
                "UPDATE notification_events SET fanned_out_at = now() WHERE id = $1",
                &[&event.id],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(rows.len())
    }

    /// Claims up to `limit` deliveries due now, oldest first.
    pub async fn claim_notifications(&self, limit: i64) -> StoreResult<Vec<PendingNotification>> {
        let rows = self
            .client()
            .await?
            .query(
                "UPDATE notifications n
                 SET claimed_by = $1, claimed_until = now() + make_interval(secs => $3)
                 FROM (SELECT p.id FROM notifications p
                       WHERE p.outcome IS NULL AND p.next_attempt_at <= now()
                         AND (p.claimed_until IS NULL OR p.claimed_until < now())
                       ORDER BY p.id LIMIT $2 FOR UPDATE SKIP LOCKED) due,
                      notification_events e
                 WHERE n.id = due.id AND e.id = n.event_id
                 RETURNING n.id, e.project, e.event, n.target, n.kind, n.body, n.attempts",
                &[&self.owner(), &limit, &CLAIM_SECONDS],
            )
            .await?;
        let mut pending: Vec<PendingNotification> = rows
            .iter()
            .map(|row| PendingNotification {
                id: row.get(0),
                project: row.get(1),
                event: row.get(2),
                target: row.get(3),
                kind: row.get(4),
                body: row.get(5),
                attempts: row.get(6),
            })
            .collect();
        pending.sort_by_key(|n| n.id);
        Ok(pending)
    }

    /// The project's most recent deliveries, newest first.
    pub async fn list_notifications(
        &self,
        project: &str,
        limit: i64,
    ) -> StoreResult<Vec<NotificationRecord>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT n.id, e.event, n.target, n.kind, n.outcome, n.attempts, n.last_error,
                        n.body, n.created_at, n.finished_at
                 FROM notifications n JOIN notification_events e ON e.id = n.event_id
                 WHERE e.project = $1 ORDER BY n.id DESC LIMIT $2",
                &[&project, &limit],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| NotificationRecord {
                id: row.get(0),
                event: row.get(1),
                target: row.get(2),
                kind: row.get(3),
                outcome: row.get(4),
                attempts: row.get(5),
                error: row.get(6),
                body: row.get(7),
                created_at: row.get(8),
                finished_at: row.get(9),
            })
            .collect())
    }
}
