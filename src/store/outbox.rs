//! What build status reports and notifications share: rows delivered to somewhere outside,
//! claimed by one server at a time, retried with backoff and settled with their outcome
//! (`outcome`, `attempts`, `last_error`, `next_attempt_at`, `claimed_by`, `claimed_until`,
//! `finished_at` in each table).

use std::time::Duration;

use super::{Store, StoreResult};

/// A table of deliveries.
#[derive(Debug, Clone, Copy)]
pub enum Outbox {
    BuildReports,
    Notifications,
}

impl Outbox {
    fn table(self) -> &'static str {
        match self {
            Outbox::BuildReports => "build_reports",
            Outbox::Notifications => "notifications",
        }
    }
}

impl Store {
    /// Settles a claimed delivery with `outcome`; `error` (when given) is its last failed
    /// attempt's.
    pub async fn settle_delivery(
        &self,
        outbox: Outbox,
        id: i64,
        outcome: &str,
        error: Option<&str>,
    ) -> StoreResult<()> {
        self.client()
            .await?
            .execute(
                &format!(
                    "UPDATE {} SET outcome = $2, last_error = coalesce($3, last_error), finished_at = now(),
                         attempts = attempts + CASE WHEN $3::text IS NULL THEN 0 ELSE 1 END,
                         claimed_by = NULL, claimed_until = NULL
                     WHERE id = $1",
                    outbox.table()
                ),
                &[&id, &outcome, &error],
            )
            .await?;
        Ok(())
    }

    /// Records a failed attempt of a claimed delivery, to be tried again after `retry_after`.
    pub async fn retry_delivery(
        &self,
        outbox: Outbox,
        id: i64,
        error: &str,
        retry_after: Duration,
    ) -> StoreResult<()> {
        self.client()
            .await?
            .execute(
                &format!(
                    "UPDATE {} SET attempts = attempts + 1, last_error = $2,
                         next_attempt_at = now() + make_interval(secs => $3),
                         claimed_by = NULL, claimed_until = NULL
                     WHERE id = $1",
                    outbox.table()
                ),
                &[&id, &error, &retry_after.as_secs_f64()],
            )
            .await?;
        Ok(())
    }
}
