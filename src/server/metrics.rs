//! `GET /metrics`: the installation's builds, queue, bakes, deployments and locks in
//! Prometheus' text exposition format 0.0.4, read with a token of any scope (or none, with
//! `[metrics] anonymous = true`). The numbers come from the shared database, so every server
//! answers the same, except the per-server refusal counter (see docs/configuration.md).

use std::collections::BTreeSet;
use std::fmt::Write;

use axum::extract::State;
use axum::http::{header, HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::auth::{authenticate, missing_credentials};
use super::{ApiError, AppState};
use crate::store::metrics::{Histogram, Sample, BUCKETS, BUILD_STATUSES};
use crate::store::StoreResult;

/// The exposition format's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub fn routes() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(refused) = authorize(&state, &headers).await {
        return refused;
    }
    match render(&state).await {
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(error) => ApiError::from(error).into_response(),
    }
}

/// A valid, unrevoked token of any scope (as a bearer, or a web UI session's); or nothing,
/// when the config says so (a token that is presented is checked all the same).
async fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), Response> {
    match authenticate(state, &Method::GET, headers).await? {
        Some(_) => Ok(()),
        None if state.config.metrics_anonymous => Ok(()),
        None => Err(missing_credentials()),
    }
}

/// Every family, one query each, in a fixed order.
async fn render(state: &AppState) -> StoreResult<String> {
    let store = &state.store;
    let configured: Vec<&str> = state
        .config
        .projects
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    let mut out = Exposition::default();

    let builds = store.metric_builds_by_status().await?;
    out.family(
        "slipway_builds",
        "gauge",
        "Builds in the database by project and status.",
    );
    for sample in with_every_status(&configured, builds) {
        out.sample("slipway_builds", &["project", "status"], &sample);
    }

    let queue = store.metric_build_queue().await?;
    let queued = |project: &str| queue.iter().find(|q| q.project == project);
    let projects: BTreeSet<&str> = configured
        .iter()
        .copied()
        .chain(queue.iter().map(|q| q.project.as_str()))
        .collect();
    out.family(
        "slipway_build_queue_length",
        "gauge",
        "Builds waiting queued, by project.",
    );
    for project in &projects {
        let length = queued(project).map_or(0, |q| q.length);
        out.value(
            "slipway_build_queue_length",
            &[("project", project)],
            length as f64,
        );
    }
    out.family(
        "slipway_build_queue_oldest_seconds",
        "gauge",
        "How long the oldest queued build of the project has waited (0 with none).",
    );
    for project in &projects {
        let oldest = queued(project).map_or(0.0, |q| q.oldest_seconds);
        out.value(
            "slipway_build_queue_oldest_seconds",
            &[("project", project)],
            oldest,
        );
    }

    let histograms: [(&str, &str, &[&str], Vec<Histogram>); 5] = [
        (
            "slipway_build_queue_wait_seconds",
            "From queued to started, over the builds that started.",
            &["project"],
            store.metric_build_queue_waits().await?,
        ),
        (
            "slipway_build_duration_seconds",
            "From started to finished, over the builds that ended after they started.",
            &["project", "status"],
            store.metric_build_durations().await?,
        ),
        (
            "slipway_step_duration_seconds",
            "From started to finished, over build steps that ran and ended (step names of the project's newest 100 builds, at most 50).",
            &["project", "step"],
            store.metric_step_durations().await?,
        ),
        (
            "slipway_bake_duration_seconds",
            "From start to end of release image bakes, baked or failed (a failed bake ends at its last log line).",
            &["project", "kind", "status"],
            store.metric_bake_durations().await?,
        ),
        (
            "slipway_deployment_time_to_healthy_seconds",
            "How long a deployment's new fleet took to pass its health checks (waiting_healthy steps that succeeded).",
            &["project", "environment"],
            store.metric_times_to_healthy().await?,
        ),
    ];
    for (name, help, labels, histograms) in &histograms {
        out.family(name, "histogram", help);
        for histogram in histograms {
            out.histogram(name, labels, histogram);
        }
    }

    out.family(
        "slipway_deployments_total",
        "counter",
        "Deployments that ended, by kind (deploy, switch_back) and outcome (succeeded, failed, rolled_back).",
    );
    for sample in store.metric_deployments_finished().await? {
        out.sample(
            "slipway_deployments_total",
            &["project", "environment", "kind", "outcome"],
            &sample,
        );
    }
    out.family(
        "slipway_deployments_in_progress",
        "gauge",
        "Deployments not ended, by the state they are in (retaining_blue: serving, the old fleet kept warm).",
    );
    for sample in store.metric_deployments_unfinished().await? {
        out.sample(
            "slipway_deployments_in_progress",
            &["project", "environment", "state"],
            &sample,
        );
    }

    out.family(
        "slipway_environment_lock_held_seconds",
        "gauge",
        "How long the live holder of an environment's lock has held it: what another operation on the environment waits behind.",
    );
    for sample in store.metric_environment_locks_held().await? {
        out.sample(
            "slipway_environment_lock_held_seconds",
            &["project", "environment", "owner"],
            &sample,
        );
    }
    out.family(
        "slipway_environment_lock_refusals_total",
        "counter",
        "Operations on the environment (promotions, rollbacks, automatic deploys) this server refused since it started because the environment was busy or locked.",
    );
    for project in &configured {
        for environment in state.deploys.environments(project) {
            out.value(
                "slipway_environment_lock_refusals_total",
                &[
                    ("project", project),
                    ("environment", &environment.config.name),
                ],
                environment.refused() as f64,
            );
        }
    }

    let waiters = store.metric_advisory_lock_waiters().await?;
    out.family(
        "slipway_advisory_lock_waiters",
        "gauge",
        "Database sessions waiting now for one of Slipway's advisory locks.",
    );
    for lock in &waiters {
        out.value(
            "slipway_advisory_lock_waiters",
            &[("lock", &lock.lock)],
            lock.waiting as f64,
        );
    }
    out.family(
        "slipway_advisory_lock_wait_longest_seconds",
        "gauge",
        "How long the longest waiting session has waited for the advisory lock (0 with none).",
    );
    for lock in &waiters {
        out.value(
            "slipway_advisory_lock_wait_longest_seconds",
            &[("lock", &lock.lock)],
            lock.longest_seconds,
        );
    }
    Ok(out.text)
}

/// The builds by status, with a 0 for every status a project (configured, or with builds)
/// has no build in, so a status that appears later is a change rather than a new series.
fn with_every_status(configured: &[&str], counted: Vec<Sample>) -> Vec<Sample> {
    let projects: BTreeSet<&str> = configured
        .iter()
        .copied()
        .chain(counted.iter().map(|s| s.labels[0].as_str()))
        .collect();
    let mut all = Vec::new();
    for project in projects {
        for status in BUILD_STATUSES {
            let value = counted
                .iter()
                .find(|s| s.labels[0] == project && s.labels[1] == status)
                .map_or(0.0, |s| s.value);
            all.push(Sample {
                labels: vec![project.to_owned(), status.to_owned()],
                value,
            });
        }
    }
    // A status the schema gained that this list lacks still shows.
    for sample in counted {
        if !BUILD_STATUSES.contains(&sample.labels[1].as_str()) {
            all.push(sample);
        }
    }
    all
}

/// The text being written: families in order, each `# HELP` and `# TYPE` then its samples.
#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, label_names: &[&str], sample: &Sample) {
        let labels: Vec<(&str, &str)> = label_names
            .iter()
            .copied()
            .zip(sample.labels.iter().map(String::as_str))
            .collect();
        self.value(name, &labels, sample.value);
    }

    fn histogram(&mut self, name: &str, label_names: &[&str], histogram: &Histogram) {
        let mut labels: Vec<(&str, &str)> = label_names
            .iter()
            .copied()
            .zip(histogram.labels.iter().map(String::as_str))
            .collect();
        let bucket = format!("{name}_bucket");
        let bounds: Vec<String> = BUCKETS.iter().map(f64::to_string).collect();
        for (le, count) in bounds.iter().zip(&histogram.buckets) {
            labels.push(("le", le));
            self.value(&bucket, &labels, *count as f64);
            labels.pop();
        }
        labels.push(("le", "+Inf"));
        self.value(&bucket, &labels, histogram.count as f64);
        labels.pop();
        self.value(&format!("{name}_sum"), &labels, histogram.sum);
        self.value(&format!("{name}_count"), &labels, histogram.count as f64);
    }

    fn value(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{label}=\"{}\"", escape_label(value));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", format_value(value));
    }
}

/// A label value as the format wants it: `\`, `"` and line feeds escaped.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_owned()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label("one\ntwo"), r"one\ntwo");
        let mut out = Exposition::default();
        out.value("m", &[("step", "say \"hi\"\n")], 2.0);
        assert_eq!(out.text, "m{step=\"say \\\"hi\\\"\\n\"} 2\n");
    }

    #[test]
    fn a_histogram_has_every_bucket_then_inf_sum_and_count() {
        let mut out = Exposition::default();
        let histogram = Histogram {
            labels: vec!["hello".into()],
            buckets: vec![0, 1, 2, 2, 2, 2, 2, 2, 2, 3],
            sum: 3612.5,
            count: 4,
        };
        out.histogram("h_seconds", &["project"], &histogram);
        let lines: Vec<&str> = out.text.lines().collect();
        assert_eq!(lines.len(), BUCKETS.len() + 3);
        assert_eq!(lines[0], "h_seconds_bucket{project=\"hello\",le=\"1\"} 0");
        assert_eq!(lines[1], "h_seconds_bucket{project=\"hello\",le=\"5\"} 1");
        assert_eq!(
            lines[9],
            "h_seconds_bucket{project=\"hello\",le=\"3600\"} 3"
        );
        assert_eq!(
            lines[10],
            "h_seconds_bucket{project=\"hello\",le=\"+Inf\"} 4"
        );
        assert_eq!(lines[11], "h_seconds_sum{project=\"hello\"} 3612.5");
        assert_eq!(lines[12], "h_seconds_count{project=\"hello\"} 4");
    }

    #[test]
    fn every_status_of_every_project_is_reported() {
        let counted = vec![Sample {
            labels: vec!["web".into(), "passed".into()],
            value: 3.0,
        }];
        let all = with_every_status(&["api"], counted);
        assert_eq!(all.len(), 2 * BUILD_STATUSES.len());
        let passed = |project: &str| {
            all.iter()
                .find(|s| s.labels == [project, "passed"])
                .unwrap()
                .value
        };
        assert_eq!(passed("web"), 3.0);
        assert_eq!(passed("api"), 0.0);
    }

    #[test]
    fn values_use_the_formats_spelling_of_infinities() {
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(0.25), "0.25");
        assert_eq!(format_value(7.0), "7");
    }
}
