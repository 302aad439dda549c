//! A project's `[[projects.notify]]`: who is told when a build fails or is fixed, a release is
//! baked or its bake fails, and a deployment succeeds, fails or rolls back. A target is a
//! Slack-compatible incoming webhook or a generic JSON webhook signed with a secret; its URL
//! (which often carries a token) and its secret come from the environment and are kept as
//! [`Secret`]s.

use serde::Deserialize;

use super::Secret;

/// Every event a target may ask for, as written in `on`.
pub const EVENTS: [&str; 7] = [
    "build_failed",
    "build_fixed",
    "baked",
    "bake_failed",
    "deployed",
    "deploy_failed",
    "rolled_back",
];

/// `[[projects.notify]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNotify {
    /// `slack` or `webhook`.
    pub kind: String,
    pub url_env: String,
    /// The webhook's signing secret (required for `webhook`).
    pub secret_env: Option<String>,
    /// The events to send; default all of [`EVENTS`].
    pub on: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyKind {
    Slack,
    Webhook,
}

impl NotifyKind {
    pub fn name(self) -> &'static str {
        match self {
            NotifyKind::Slack => "slack",
            NotifyKind::Webhook => "webhook",
        }
    }
}

/// One notification target, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notify {
    pub kind: NotifyKind,
    pub url: Secret,
    /// The key of the HMAC-SHA256 signature a `webhook` target's deliveries carry.
    pub secret: Option<Secret>,
    pub on: Vec<String>,
}

/// Checks `raw`; errors are `(field, message)` for the caller to place under its key.
pub fn resolve(
    raw: RawNotify,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Notify, (&'static str, String)> {
    let kind = match raw.kind.as_str() {
        "slack" => NotifyKind::Slack,
        "webhook" => NotifyKind::Webhook,
        other => {
            return Err((
                "kind",
                format!("expected \"slack\" or \"webhook\", got {other:?}"),
            ))
        }
    };
    let url = env(&raw.url_env).ok_or_else(|| {
        (
            "url_env",
            format!("environment variable {} is not set", raw.url_env),
        )
    })?;
    // The URL is a secret: a message about it never repeats it.
    let valid = (url.starts_with("https://") || url.starts_with("http://"))
        && !url.contains(char::is_whitespace)
        && url.len() <= 2000;
    if !valid {
        return Err((
            "url_env",
            format!(
                "environment variable {} does not hold an http(s) URL",
                raw.url_env
            ),
        ));
    }
    let secret = match (kind, raw.secret_env) {
        (NotifyKind::Webhook, None) => {
            return Err((
                "secret_env",
                "a webhook target signs its deliveries: name the variable holding its secret"
                    .into(),
            ))
        }
        (NotifyKind::Slack, Some(_)) => {
            return Err((
                "secret_env",
                "a slack target takes no secret (its URL is the secret)".into(),
            ))
        }
        (NotifyKind::Webhook, Some(var)) => Some(Secret::new(env(&var).ok_or_else(|| {
            (
                "secret_env",
                format!("environment variable {var} is not set"),
            )
        })?)),
        (NotifyKind::Slack, None) => None,
    };
    let on = match raw.on {
        None => EVENTS.iter().map(|e| e.to_string()).collect(),
        Some(on) if on.is_empty() => {
            return Err((
                "on",
                "expected at least one event; remove the target to send nothing".into(),
            ))
        }
        Some(on) => {
            if let Some(unknown) = on.iter().find(|e| !EVENTS.contains(&e.as_str())) {
                return Err((
                    "on",
                    format!(
                        "unknown event {unknown:?}; expected some of {}",
                        EVENTS.join(", ")
                    ),
                ));
            }
            on
        }
    };
    Ok(Notify {
        kind,
        url: Secret::new(url),
        secret,
        on,
    })
}
