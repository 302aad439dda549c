//! `[autoscale]`: the optional autoscaler of build agents: how many agents the queue may
//! have (`min_agents` to `max_agents`, `capacity_per_agent` builds each), when an idle agent
//! or an instance that never registered goes, and where agents come from: an EC2 Auto Scaling
//! group (`provider = "aws"`) or agent processes the server starts itself (`"local"`).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, Invalid};

/// Seconds an agent stays idle before it may be scaled in, unless `idle_seconds` says.
pub const DEFAULT_IDLE_SECONDS: u64 = 300;
/// Seconds an instance has to register its agent before it is terminated.
pub const DEFAULT_REGISTER_SECONDS: u64 = 600;
/// Seconds between two looks at the queue.
pub const DEFAULT_INTERVAL_SECONDS: u64 = 15;
/// The most builds an agent runs at once (as `slipway agent --capacity` takes it).
const MAX_CAPACITY: u32 = 1000;
/// Flags the local provider gives each agent it starts itself (or, for the token, through
/// the environment): a command that names them is refused.
const LOCAL_FLAGS: [&str; 5] = [
    "--token",
    "--name",
    "--instance-id",
    "--capacity",
    "--work-dir",
];

/// `[autoscale]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAutoscale {
    /// `aws` (an EC2 Auto Scaling group) or `local` (agent processes on this host).
    pub provider: Option<String>,
    pub min_agents: Option<u32>,
    pub max_agents: Option<u32>,
    /// Builds one agent runs at once: the agents' `--capacity`.
    pub capacity_per_agent: Option<u32>,
    /// An agent idle longer than this may be drained and its instance terminated.
    pub idle_seconds: Option<u64>,
    /// An instance whose agent has not registered this long after its launch is terminated.
    pub register_seconds: Option<u64>,
    pub interval_seconds: Option<u64>,
    /// aws: the Auto Scaling group's name.
    pub group: Option<String>,
    /// aws: the group's region.
    pub region: Option<String>,
    /// aws: another endpoint than AWS's (moto in tests).
    pub endpoint_url: Option<String>,
    /// local: the agent command, as an argument list.
    pub command: Option<Vec<String>>,
    /// local: a file holding a token of scope `agent`, given to the agents on their
    /// environment (`SLIPWAY_TOKEN`), never as an argument.
    pub token_file: Option<PathBuf>,
}

/// `[autoscale]`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoscaleConfig {
    pub min_agents: u32,
    pub max_agents: u32,
    pub capacity_per_agent: u32,
    pub idle_after: Duration,
    pub register_within: Duration,
    pub interval: Duration,
    pub provider: AutoscaleProvider,
}

/// Where agents come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AutoscaleProvider {
    /// An EC2 Auto Scaling group whose instances start `slipway agent --instance-id <id>`.
    Aws {
        group: String,
        region: String,
        endpoint_url: Option<String>,
    },
    /// Agent processes this server starts: `command` with the flags each agent gets.
    Local {
        command: Vec<String>,
        token_file: PathBuf,
    },
}

pub(super) fn resolve(
    raw: RawAutoscale,
    invalid: &Invalid<'_>,
) -> Result<AutoscaleConfig, ConfigError> {
    let min_agents = raw.min_agents.unwrap_or(0);
    let Some(max_agents) = raw.max_agents else {
        return Err(invalid(
            "autoscale.max_agents",
            "required: the most agents the autoscaler may run".into(),
        ));
    };
    if max_agents == 0 || max_agents < min_agents {
        return Err(invalid(
            "autoscale.max_agents",
            format!("expected at least 1 and at least min_agents ({min_agents}), got {max_agents}"),
        ));
    }
    let capacity_per_agent = raw.capacity_per_agent.unwrap_or(1);
    if !(1..=MAX_CAPACITY).contains(&capacity_per_agent) {
        return Err(invalid(
            "autoscale.capacity_per_agent",
            format!("expected 1 to {MAX_CAPACITY} builds, got {capacity_per_agent}"),
        ));
    }
    let seconds = |key: &str, value: Option<u64>, default: u64, max: u64| {
        let value = value.unwrap_or(default);
        if (1..=max).contains(&value) {
            Ok(Duration::from_secs(value))
        } else {
            Err(invalid(
                &format!("autoscale.{key}"),
                format!("expected seconds from 1 to {max}, got {value}"),
            ))
        }
    };
    let day = 24 * 3600;
    let idle_after = seconds("idle_seconds", raw.idle_seconds, DEFAULT_IDLE_SECONDS, day)?;
    let register_within = seconds(
        "register_seconds",
        raw.register_seconds,
        DEFAULT_REGISTER_SECONDS,
        day,
    )?;
    let interval = seconds(
        "interval_seconds",
        raw.interval_seconds,
        DEFAULT_INTERVAL_SECONDS,
        3600,
    )?;
    let provider = match raw.provider.as_deref() {
        Some("aws") => resolve_aws(raw, invalid)?,
        Some("local") => resolve_local(raw, invalid)?,
        other => {
            return Err(invalid(
                "autoscale.provider",
                format!("expected \"aws\" or \"local\", got {other:?}"),
            ))
        }
    };
    Ok(AutoscaleConfig {
        min_agents,
        max_agents,
        capacity_per_agent,
        idle_after,
        register_within,
        interval,
        provider,
    })
}

fn resolve_aws(raw: RawAutoscale, invalid: &Invalid<'_>) -> Result<AutoscaleProvider, ConfigError> {
    for (key, given) in [
        ("command", raw.command.is_some()),
        ("token_file", raw.token_file.is_some()),
    ] {
        if given {
            return Err(invalid(
                &format!("autoscale.{key}"),
                "only with provider = \"local\"".into(),
            ));
        }
    }
    let group = raw.group.unwrap_or_default();
    if group.is_empty() || group.len() > 255 || group.contains(char::is_control) {
        return Err(invalid(
            "autoscale.group",
            format!("expected the Auto Scaling group's name, got {group:?}"),
        ));
    }
    let region = raw.region.unwrap_or_default();
    let region_ok = !region.is_empty()
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !region_ok {
        return Err(invalid(
            "autoscale.region",
            format!("expected the group's region, like eu-west-1, got {region:?}"),
        ));
    }
    if let Some(url) = &raw.endpoint_url {
        if !(url.starts_with("http://") || url.starts_with("https://"))
            || url.contains(char::is_whitespace)
        {
            return Err(invalid(
                "autoscale.endpoint_url",
                format!("expected a URL like http://127.0.0.1:5000, got {url:?}"),
            ));
        }
    }
    Ok(AutoscaleProvider::Aws {
        group,
        region,
        endpoint_url: raw.endpoint_url,
    })
}

fn resolve_local(
    raw: RawAutoscale,
    invalid: &Invalid<'_>,
) -> Result<AutoscaleProvider, ConfigError> {
    for (key, given) in [
        ("group", raw.group.is_some()),
        ("region", raw.region.is_some()),
        ("endpoint_url", raw.endpoint_url.is_some()),
    ] {
        if given {
            return Err(invalid(
                &format!("autoscale.{key}"),
                "only with provider = \"aws\"".into(),
            ));
        }
    }
    let command = raw.command.unwrap_or_default();
    if command.first().is_none_or(String::is_empty) {
        return Err(invalid(
            "autoscale.command",
            "expected the agent command as a list, like [\"/usr/bin/slipway\", \"agent\"]".into(),
        ));
    }
    if let Some(flag) = command.iter().find_map(|arg| {
        LOCAL_FLAGS
            .into_iter()
            .find(|flag| arg == flag || arg.starts_with(&format!("{flag}=")))
    }) {
        return Err(invalid(
            "autoscale.command",
            format!("leave out {flag}: each agent gets it from the server (the token on its environment, from token_file)"),
        ));
    }
    let token_file = raw.token_file.unwrap_or_default();
    if token_file.as_os_str().is_empty() {
        return Err(invalid(
            "autoscale.token_file",
            "required: a file holding a token of scope agent".into(),
        ));
    }
    Ok(AutoscaleProvider::Local {
        command,
        token_file,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse, resolve, Overrides};

    fn load(text: &str) -> Result<Option<AutoscaleConfig>, String> {
        parse(text, "slipway.toml")
            .and_then(|raw| resolve(raw, "slipway.toml", &Overrides::default(), &|_| None))
            .map(|config| config.autoscale)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_autoscaler_is_off_unless_configured_and_has_defaults() {
        assert_eq!(load("").unwrap(), None);
        let aws = load("[autoscale]\nprovider = \"aws\"\nmax_agents = 8\ngroup = \"agents\"\nregion = \"eu-west-1\"\nendpoint_url = \"http://127.0.0.1:5000\"\n").unwrap();
        assert_eq!(
            aws,
            Some(AutoscaleConfig {
                min_agents: 0,
                max_agents: 8,
                capacity_per_agent: 1,
                idle_after: Duration::from_secs(300),
                register_within: Duration::from_secs(600),
                interval: Duration::from_secs(15),
                provider: AutoscaleProvider::Aws {
                    group: "agents".into(),
                    region: "eu-west-1".into(),
                    endpoint_url: Some("http://127.0.0.1:5000".into()),
                },
            })
        );
        let local = load("[autoscale]\nprovider = \"local\"\nmin_agents = 1\nmax_agents = 2\ncapacity_per_agent = 3\nidle_seconds = 5\nregister_seconds = 6\ninterval_seconds = 7\ncommand = [\"/usr/bin/slipway\", \"agent\", \"--docker-host\", \"unix:///run/docker.sock\"]\ntoken_file = \"/etc/slipway/agent.token\"\n").unwrap().unwrap();
        assert_eq!(
            (
                local.min_agents,
                local.capacity_per_agent,
                local.idle_after,
                local.register_within,
                local.interval
            ),
            (
                1,
                3,
                Duration::from_secs(5),
                Duration::from_secs(6),
                Duration::from_secs(7)
            )
        );
        assert_eq!(
            local.provider,
            AutoscaleProvider::Local {
                command: vec![
                    "/usr/bin/slipway".into(),
                    "agent".into(),
                    "--docker-host".into(),
                    "unix:///run/docker.sock".into()
                ],
                token_file: "/etc/slipway/agent.token".into(),
            }
        );
    }

    #[test]
    fn bad_autoscale_settings_name_their_key() {
        let aws = "provider = \"aws\"\ngroup = \"agents\"\nregion = \"eu-west-1\"\n";
        let local =
            "provider = \"local\"\ncommand = [\"slipway\", \"agent\"]\ntoken_file = \"/t\"\n";
        for (text, key) in [
            (aws.to_owned(), "key `autoscale.max_agents`"),
            (format!("{aws}max_agents = 0\n"), "key `autoscale.max_agents`"),
            (
                format!("{aws}min_agents = 3\nmax_agents = 2\n"),
                "key `autoscale.max_agents`",
            ),
            (
                format!("{aws}max_agents = 2\ncapacity_per_agent = 0\n"),
                "key `autoscale.capacity_per_agent`",
            ),
            (
                format!("{aws}max_agents = 2\nidle_seconds = 0\n"),
                "key `autoscale.idle_seconds`",
            ),
            (
                format!("{aws}max_agents = 2\ninterval_seconds = 4000\n"),
                "key `autoscale.interval_seconds`",
            ),
            (
                "provider = \"gcp\"\nmax_agents = 2\n".into(),
                "key `autoscale.provider`",
            ),
            (
                "provider = \"aws\"\nmax_agents = 2\nregion = \"eu-west-1\"\n".into(),
                "key `autoscale.group`",
            ),
            (
                "provider = \"aws\"\nmax_agents = 2\ngroup = \"g\"\n".into(),
                "key `autoscale.region`",
            ),
            (
                format!("{aws}max_agents = 2\nendpoint_url = \"moto\"\n"),
                "key `autoscale.endpoint_url`",
            ),
            (
                format!("{aws}max_agents = 2\ntoken_file = \"/t\"\n"),
                "key `autoscale.token_file`",
            ),
            (
                format!("{local}max_agents = 2\ngroup = \"g\"\n"),
                "key `autoscale.group`",
            ),
            (
                "provider = \"local\"\nmax_agents = 2\ncommand = []\ntoken_file = \"/t\"\n".into(),
                "key `autoscale.command`",
            ),
            (
                "provider = \"local\"\nmax_agents = 2\ncommand = [\"slipway\", \"agent\", \"--token=x\"]\ntoken_file = \"/t\"\n".into(),
                "key `autoscale.command`",
            ),
            (
                "provider = \"local\"\nmax_agents = 2\ncommand = [\"slipway\", \"agent\", \"--name\", \"a\"]\ntoken_file = \"/t\"\n".into(),
                "key `autoscale.command`",
            ),
            (
                "provider = \"local\"\nmax_agents = 2\ncommand = [\"slipway\"]\n".into(),
                "key `autoscale.token_file`",
            ),
            (format!("{aws}max_agents = 2\nsize = 3\n"), "unknown field `size`"),
        ] {
            let error = load(&format!("[autoscale]\n{text}")).unwrap_err();
            assert!(error.contains(key), "{text}: {error}");
        }
    }
}
