//! Tells a project's team what happened, off the path of the work it reports on.
//!
//! Triggers record events as builds, bakes and deployments change (see `store::notifications`
//! and `migrations/V17`). Every second each server fans the events out, one delivery per
//! `[[projects.notify]]` target whose `on` lists the event, with the message written then; and
//! sends the deliveries due: a Slack-compatible `{"text"}` to a `slack` target, the event as
//! JSON signed with HMAC-SHA256 (`X-Slipway-Signature: sha256=<hex>`) to a `webhook` target. A
//! failed delivery is tried again after 1, 2, 4, ... 60 s and given up after
//! [`crate::build_reports::ATTEMPTS`] attempts; every outcome is kept
//! (`GET /api/v1/projects/{p}/notifications`). Errors never repeat a target's URL, which
//! carries its token.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

use crate::build_reports::{backoff, ATTEMPTS};
use crate::config::notify::{Notify, NotifyKind};
use crate::config::{Config, Project};
use crate::outage::Outage;
use crate::store::notifications::{NewNotification, NotificationEvent, PendingNotification};
use crate::store::outbox::Outbox;
use crate::store::{Store, StoreResult};

/// Where the deliveries wait.
const OUTBOX: Outbox = Outbox::Notifications;
/// How often each server looks for events and deliveries.
const POLL: Duration = Duration::from_secs(1);
/// Events fanned out, and deliveries claimed, at once.
const BATCH: i64 = 20;
/// How long one delivery may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of a target's error answer kept.
const ANSWER_LIMIT: usize = 300;
/// The most of a reason (a build's, a deployment's) put in a message.
const REASON_LIMIT: usize = 500;

/// Fans out and delivers until `stop` is cancelled.
pub async fn run(config: Arc<Config>, store: Store, stop: CancellationToken) {
    let http = reqwest::Client::new();
    let mut outage = Outage::new("the database", "notifications wait");
    loop {
        let wait = match once(&config, &store, &http).await {
            Ok(()) => {
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

async fn once(config: &Config, store: &Store, http: &reqwest::Client) -> StoreResult<()> {
    store
        .fan_out_notifications(BATCH, |event| plan(config, event))
        .await?;
    let due = store.claim_notifications(BATCH).await?;
    let results = futures::future::join_all(due.iter().map(|n| deliver(config, http, n))).await;
    for (notification, result) in due.iter().zip(results) {
        match result {
            Ok(()) => {
                store
                    .settle_delivery(OUTBOX, notification.id, "delivered", None)
                    .await?
            }
            Err(error) if notification.attempts + 1 >= ATTEMPTS => {
                tracing::warn!(project = %notification.project, event = %notification.event, target = notification.target, %error, "gave up a notification");
                store
                    .settle_delivery(OUTBOX, notification.id, "abandoned", Some(&error))
                    .await?
            }
            Err(error) => {
                tracing::info!(project = %notification.project, event = %notification.event, target = notification.target, %error, "a notification failed; retrying");
                store
                    .retry_delivery(
                        OUTBOX,
                        notification.id,
                        &error,
                        backoff(notification.attempts),
                    )
                    .await?
            }
        }
    }
    Ok(())
}

/// The deliveries `event` makes: one per target of its project that asks for it.
fn plan(config: &Config, event: &NotificationEvent) -> Vec<NewNotification> {
    let Some(project) = config.projects.iter().find(|p| p.name == event.project) else {
        return Vec::new();
    };
    let message = Message::of(config, project, event);
    project
        .notify
        .iter()
        .enumerate()
        .filter(|(_, target)| target.on.contains(&message.event))
        .map(|(index, target)| NewNotification {
            target: index as i32,
            kind: target.kind.name().to_owned(),
            body: message.body(target.kind, event),
        })
        .collect()
}

/// What a team is told about one event.
struct Message {
    /// The event as targets choose it (a rollback asked for by command is `rolled_back`).
    event: String,
    /// One line, plain text.
    text: String,
    /// Where the team sees more.
    url: String,
    /// Who asked for it, for a deployment; `slipway` when Slipway started it itself.
    by: Option<String>,
}

impl Message {
    fn of(config: &Config, project: &Project, event: &NotificationEvent) -> Message {
        let facts = &event.facts;
        let fact = |name: &str| match &facts[name] {
            Value::String(text) => text.clone(),
            Value::Number(number) => number.to_string(),
            _ => String::new(),
        };
        let reason = || {
            let reason = fact("reason");
            if reason.is_empty() {
                String::new()
            } else {
                let short: String = reason.chars().take(REASON_LIMIT).collect();
                format!(": {short}")
            }
        };
        let api = format!("{}/api/v1/projects/{}", config.public_url, project.name);
        let name = &project.name;
        let short_commit: String = fact("commit").chars().take(12).collect();
        let by = event.asked_by.as_ref().map(|(token, _)| token.clone());
        let by_text = match &by {
            Some(token) => format!(" (asked by {token})"),
            None if facts.get("deployment").is_some() => " (by Slipway)".to_owned(),
            None => String::new(),
        };
        let rollback_asked = matches!(&event.asked_by, Some((_, action)) if action == "rollback");
        let (event_name, text, url) = match event.event.as_str() {
            "build_failed" => (
                "build_failed",
                format!(
                    "{name} build #{} {} on {} ({short_commit}){}",
                    fact("build"),
                    fact("status"),
                    fact("branch"),
                    reason()
                ),
                format!("{api}/builds/{}", fact("build")),
            ),
            "build_fixed" => (
                "build_fixed",
                format!(
                    "{name} build #{} passed on {} ({short_commit}): fixed",
                    fact("build"),
                    fact("branch")
                ),
                format!("{api}/builds/{}", fact("build")),
            ),
            "baked" => (
                "baked",
                format!(
                    "{name} {} baked: {} image {}",
                    fact("release"),
                    fact("image_kind"),
                    fact("image")
                ),
                format!("{api}/releases"),
            ),
            "bake_failed" => (
                "bake_failed",
                format!(
                    "{name} {}: the {} bake failed{}",
                    fact("release"),
                    fact("image_kind"),
                    reason()
                ),
                bake_log_url(&api, &fact("release"), &fact("image_kind"), &fact("region")),
            ),
            "deployed" if rollback_asked => (
                "rolled_back",
                format!(
                    "{name} {} rolled back to {}{by_text}",
                    fact("environment"),
                    fact("release")
                ),
                format!("{api}/deployments/{}", fact("deployment")),
            ),
            "deployed" => (
                "deployed",
                format!(
                    "{name} {} deployed to {}{by_text}",
                    fact("release"),
                    fact("environment")
                ),
                format!("{api}/deployments/{}", fact("deployment")),
            ),
            "deploy_failed" => (
                "deploy_failed",
                format!(
                    "{name} {} failed to deploy to {}{by_text}{}",
                    fact("release"),
                    fact("environment"),
                    reason()
                ),
                format!("{api}/deployments/{}", fact("deployment")),
            ),
            _ => (
                "rolled_back",
                format!(
                    "{name} {} rolled back automatically in {}{}",
                    fact("release"),
                    fact("environment"),
                    reason()
                ),
                format!("{api}/deployments/{}", fact("deployment")),
            ),
        };
        Message {
            event: event_name.to_owned(),
            text,
            url,
            by: by.or_else(|| facts.get("deployment").map(|_| "slipway".to_owned())),
        }
    }

    /// The JSON a target of `kind` receives.
    fn body(&self, kind: NotifyKind, event: &NotificationEvent) -> Value {
        match kind {
            NotifyKind::Slack => json!({
                "text": format!("{} <{}|details>", slack_escape(&self.text), self.url),
            }),
            NotifyKind::Webhook => json!({
                "event": self.event,
                "project": event.project,
                "text": self.text,
                "url": self.url,
                "by": self.by,
                "facts": event.facts,
            }),
        }
    }
}

/// Slack's message text escapes `&`, `<` and `>`, its control characters.
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

async fn deliver(
    config: &Config,
    http: &reqwest::Client,
    notification: &PendingNotification,
) -> Result<(), String> {
    let target = config
        .projects
        .iter()
        .find(|p| p.name == notification.project)
        .and_then(|p| p.notify.get(notification.target as usize))
        .filter(|t| t.kind.name() == notification.kind)
        .ok_or_else(|| {
            format!(
                "project `{}` has no {} target at notify[{}] any more",
                notification.project, notification.kind, notification.target
            )
        })?;
    send(http, target, notification).await
}

async fn send(
    http: &reqwest::Client,
    target: &Notify,
    notification: &PendingNotification,
) -> Result<(), String> {
    let body = serde_json::to_vec(&notification.body).expect("JSON serialises");
    let mut request = http
        .post(target.url.expose())
        .header("Content-Type", "application/json")
        .timeout(CALL_TIMEOUT);
    if let Some(secret) = &target.secret {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes())
            .expect("HMAC takes a key of any length");
        mac.update(&body);
        request = request
            .header(
                "X-Slipway-Signature",
                format!("sha256={}", hex::encode(mac.finalize().into_bytes())),
            )
            .header("X-Slipway-Event", &notification.event)
            .header("X-Slipway-Delivery", notification.id.to_string());
    }
    let where_to = format!(
        "the {} target notify[{}]",
        target.kind.name(),
        notification.target
    );
    let answer = request.body(body).send().await.map_err(|e| {
        // reqwest names the URL, which carries the target's token: say what failed only.
        let what = if e.is_timeout() {
            "no answer in time"
        } else if e.is_connect() {
            "cannot connect"
        } else {
            "the request failed"
        };
        format!("{where_to}: {what}")
    })?;
    let code = answer.status();
    if code.is_success() {
        return Ok(());
    }
    let text: String = answer
        .text()
        .await
        .unwrap_or_default()
        .chars()
        .take(ANSWER_LIMIT)
        .collect();
    Err(format!("{where_to} answered {code}: {}", text.trim()))
}

/// Where the log of release `release`'s bake of kind `kind` (in `region`, for an AMI) is read.
fn bake_log_url(api: &str, release: &str, kind: &str, region: &str) -> String {
    let mut url = format!("{api}/releases/{release}/bake-log?kind={kind}");
    if !region.is_empty() {
        url.push_str("&region=");
        url.push_str(region);
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slack_text_escapes_its_control_characters() {
        assert_eq!(slack_escape("a <b> & c"), "a &lt;b&gt; &amp; c");
    }

    fn config() -> Config {
        let text = "public_url = \"https://ci.acme.test\"\n[[projects]]\nname = \"hello\"\nrepository = \"acme/hello\"\nclone_url = \"file:///r\"\n[[projects.notify]]\nkind = \"slack\"\nurl_env = \"SLACK\"\non = [\"bake_failed\", \"rolled_back\"]\n[[projects.notify]]\nkind = \"webhook\"\nurl_env = \"HOOK\"\nsecret_env = \"SECRET\"\n";
        let raw = crate::config::parse(text, "test").unwrap();
        let env = |key: &str| match key {
            "SLACK" | "HOOK" => Some("https://hooks.acme.test/x".to_owned()),
            "SECRET" => Some("s".to_owned()),
            _ => None,
        };
        crate::config::resolve(raw, "test", &Default::default(), &env).unwrap()
    }

    fn event(name: &str, facts: Value, asked_by: Option<(&str, &str)>) -> NotificationEvent {
        NotificationEvent {
            id: 1,
            project: "hello".into(),
            event: name.into(),
            facts,
            asked_by: asked_by.map(|(t, a)| (t.to_owned(), a.to_owned())),
        }
    }

    #[test]
    fn each_event_reads_as_one_line_with_its_link_to_the_targets_that_asked() {
        let config = config();
        let deployment = json!({"deployment": "d-1", "environment": "prod", "release": "v7", "reason": "not healthy"});
        let cases = [
            (
                event(
                    "bake_failed",
                    json!({"release": "v7", "image_kind": "ami", "region": "eu-west-1", "reason": "packer exited 1"}),
                    None,
                ),
                "bake_failed",
                "hello v7: the ami bake failed: packer exited 1",
                "https://ci.acme.test/api/v1/projects/hello/releases/v7/bake-log?kind=ami&region=eu-west-1",
            ),
            (
                event(
                    "baked",
                    json!({"release": "v7", "image_kind": "docker", "image": "slipway/hello:v7"}),
                    None,
                ),
                "baked",
                "hello v7 baked: docker image slipway/hello:v7",
                "https://ci.acme.test/api/v1/projects/hello/releases",
            ),
            (
                event(
                    "deploy_failed",
                    deployment.clone(),
                    Some(("alice", "promote")),
                ),
                "deploy_failed",
                "hello v7 failed to deploy to prod (asked by alice): not healthy",
                "https://ci.acme.test/api/v1/projects/hello/deployments/d-1",
            ),
            (
                event("deployed", deployment.clone(), Some(("bob", "rollback"))),
                "rolled_back",
                "hello prod rolled back to v7 (asked by bob)",
                "https://ci.acme.test/api/v1/projects/hello/deployments/d-1",
            ),
        ];
        for (event, name, text, url) in cases {
            let message = Message::of(&config, &config.projects[0], &event);
            assert_eq!(
                (
                    message.event.as_str(),
                    message.text.as_str(),
                    message.url.as_str()
                ),
                (name, text, url)
            );
            let deliveries = plan(&config, &event);
            let kinds: Vec<&str> = deliveries.iter().map(|d| d.kind.as_str()).collect();
            let wanted: Vec<&str> = if ["bake_failed", "rolled_back"].contains(&name) {
                vec!["slack", "webhook"]
            } else {
                vec!["webhook"]
            };
            assert_eq!(kinds, wanted, "{name}");
            let hook = deliveries.iter().find(|d| d.kind == "webhook").unwrap();
            assert_eq!(hook.body["event"], name);
            assert_eq!(hook.body["url"], url);
        }
        let rollback = event("deployed", deployment, Some(("bob", "rollback")));
        assert_eq!(plan(&config, &rollback)[1].body["by"], "bob");
    }
}
