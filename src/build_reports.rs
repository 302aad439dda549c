//! Delivers build statuses to each project's Bitbucket, off the build's path.
//!
//! The database records a report whenever a build's status changes (see
//! `store::build_reports`), so nothing a build does waits for Bitbucket, and a report survives
//! a restart. Every second each server claims the reports that are due (in order per build)
//! and sends them; a failed call is tried again after 1, 2, 4, ... 60 s, and abandoned after
//! [`ATTEMPTS`] attempts, its error kept on the build. A project without `[projects.bitbucket]`
//! (or without its token) reports nothing: its reports end `unreported`.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::bitbucket::{self, BuildStatus};
use crate::config::Config;
use crate::outage::Outage;
use crate::store::build_reports::PendingReport;
use crate::store::outbox::Outbox;
use crate::store::Store;

/// Where the reports wait.
const OUTBOX: Outbox = Outbox::BuildReports;
/// How often each server looks for reports to deliver.
const POLL: Duration = Duration::from_secs(1);
/// Reports claimed at once (one per build, sent concurrently).
const BATCH: i64 = 20;
/// Attempts before a report is abandoned.
pub const ATTEMPTS: i32 = 8;
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Delivers reports until `stop` is cancelled.
pub async fn run(config: Arc<Config>, store: Store, stop: CancellationToken) {
    let http = reqwest::Client::new();
    let mut outage = Outage::new("the database", "build statuses wait");
    loop {
        let wait = match deliver_due(&config, &store, &http).await {
            Ok(_) => {
                outage.recovered();
                POLL
            }
            Err(error) => outage.failed(&error),
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Claims the reports due now and delivers them; how many it handled.
async fn deliver_due(
    config: &Config,
    store: &Store,
    http: &reqwest::Client,
) -> crate::store::StoreResult<usize> {
    let due = store.claim_build_reports(BATCH).await?;
    let handled = due.len();
    let results =
        futures::future::join_all(due.iter().map(|report| deliver(config, http, report))).await;
    for (report, result) in due.iter().zip(results) {
        match result {
            Delivery::Sent => {
                store
                    .settle_delivery(OUTBOX, report.id, "delivered", None)
                    .await?
            }
            Delivery::Unreported => {
                store
                    .settle_delivery(OUTBOX, report.id, "unreported", None)
                    .await?
            }
            Delivery::Failed(error) if report.attempts + 1 >= ATTEMPTS => {
                tracing::warn!(project = %report.project, build = report.number, %error, "gave up reporting the build's status to Bitbucket");
                store
                    .settle_delivery(OUTBOX, report.id, "abandoned", Some(&error))
                    .await?
            }
            Delivery::Failed(error) => {
                tracing::info!(project = %report.project, build = report.number, %error, "reporting the build's status to Bitbucket failed; retrying");
                store
                    .retry_delivery(OUTBOX, report.id, &error, backoff(report.attempts))
                    .await?
            }
        }
    }
    Ok(handled)
}

enum Delivery {
    Sent,
    Unreported,
    Failed(String),
}

async fn deliver(config: &Config, http: &reqwest::Client, report: &PendingReport) -> Delivery {
    let Some(project) = config.projects.iter().find(|p| p.name == report.project) else {
        return Delivery::Unreported;
    };
    let Some(bitbucket) = project.bitbucket.as_ref().filter(|b| b.token.is_some()) else {
        return Delivery::Unreported;
    };
    let status = BuildStatus {
        project: project.name.clone(),
        repository: project.repository.clone(),
        commit: report.commit.clone(),
        branch: report.branch.clone(),
        number: report.number,
        status: report.status.clone(),
        reason: report.reason.clone(),
        duration_ms: report.duration_ms,
        url: format!(
            "{}/api/v1/projects/{}/builds/{}",
            config.public_url, project.name, report.number
        ),
    };
    match bitbucket::send(http, bitbucket, &status).await {
        Ok(()) => Delivery::Sent,
        Err(error) => Delivery::Failed(error),
    }
}

/// The wait after the `failed`-th failure (counting from 0): 1, 2, 4, ... at most 60 s. Shared
/// with notifications.
pub fn backoff(failed: i32) -> Duration {
    let seconds = 1u64 << failed.clamp(0, 6);
    Duration::from_secs(seconds).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_doubling_to_a_minute() {
        let waits: Vec<u64> = (0..ATTEMPTS).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
    }
}
