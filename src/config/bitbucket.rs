//! A project's `[projects.bitbucket]`: which Bitbucket hosts the repository (Cloud or Data
//! Center, and its API's base URL) and the token that clones it and reports build statuses
//! on its commits. The token comes from the environment or from a file read when it is used
//! (so a rotated file needs no restart); it is kept as a [`Secret`].

use std::path::PathBuf;

use serde::Deserialize;

use super::{Secret, SecretSource};

/// Bitbucket Cloud's API.
pub const CLOUD_API_URL: &str = "https://api.bitbucket.org";
/// The user name of HTTPS clones with a repository, project or workspace access token; API
/// calls then send the token as a bearer.
pub const TOKEN_USERNAME: &str = "x-token-auth";

/// `[projects.bitbucket]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBitbucket {
    /// `cloud` (default) or `datacenter`.
    pub flavour: Option<String>,
    /// Cloud: `https://api.bitbucket.org` (default); Data Center: the server's base URL.
    pub api_url: Option<String>,
    /// For HTTPS clones and API calls: `x-token-auth` (default) for an access token, else the
    /// user an app password or personal token belongs to.
    pub username: Option<String>,
    pub token_env: Option<String>,
    pub token_file: Option<PathBuf>,
    /// A deploy key (a private key file) for SSH clones, with `known_hosts`.
    pub ssh_key_file: Option<PathBuf>,
    /// The pinned host keys of the SSH clone URL's host (a known_hosts file).
    pub known_hosts: Option<PathBuf>,
}

/// An SSH clone's deploy key and the host keys it trusts; paths only (ssh reads the files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshKey {
    pub key_file: PathBuf,
    pub known_hosts: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    Cloud,
    DataCenter,
}

/// A project's Bitbucket, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitbucket {
    pub flavour: Flavour,
    /// Without a trailing `/`.
    pub api_url: String,
    pub username: String,
    pub token: Option<SecretSource>,
    pub ssh: Option<SshKey>,
}

/// Checks `raw`; errors are `(field, message)` for the caller to place under its key.
pub fn resolve(
    raw: RawBitbucket,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Bitbucket, (&'static str, String)> {
    let flavour = match raw.flavour.as_deref() {
        None | Some("cloud") => Flavour::Cloud,
        Some("datacenter") => Flavour::DataCenter,
        Some(other) => {
            return Err((
                "flavour",
                format!("expected \"cloud\" or \"datacenter\", got {other:?}"),
            ))
        }
    };
    let api_url = match (raw.api_url, flavour) {
        (Some(url), _) => url,
        (None, Flavour::Cloud) => CLOUD_API_URL.to_owned(),
        (None, Flavour::DataCenter) => return Err((
            "api_url",
            "a Data Center project needs its server's base URL, like https://bitbucket.acme.test"
                .into(),
        )),
    };
    let url_ok = (api_url.starts_with("https://") || api_url.starts_with("http://"))
        && !api_url.contains(['@', '?', '#'])
        && !api_url.contains(char::is_whitespace)
        && api_url.len() <= 500;
    if !url_ok {
        // A URL with credentials is not repeated: they would reach the log.
        let got = if api_url.contains('@') {
            "a URL with credentials in it".to_owned()
        } else {
            format!("{api_url:?}")
        };
        return Err((
            "api_url",
            format!("expected an http(s) URL without credentials (the token goes in token_env or token_file), got {got}"),
        ));
    }
    let username = raw.username.unwrap_or_else(|| TOKEN_USERNAME.to_owned());
    let username_ok = !username.is_empty()
        && username.len() <= 100
        && !username.contains([':', '@', '/'])
        && !username.contains(char::is_control)
        && !username.contains(char::is_whitespace);
    if !username_ok {
        return Err((
            "username",
            format!("expected a Bitbucket user name, got {username:?}"),
        ));
    }
    let token = match (raw.token_env, raw.token_file) {
        (Some(_), Some(_)) => {
            return Err((
                "token_env",
                "set either token_env or token_file, not both".into(),
            ))
        }
        (Some(var), None) => Some(SecretSource::Value(Secret::new(env(&var).ok_or_else(
            || {
                (
                    "token_env",
                    format!("environment variable {var} is not set"),
                )
            },
        )?))),
        (None, Some(path)) if path.is_absolute() => Some(SecretSource::File(path)),
        (None, Some(path)) => {
            return Err((
                "token_file",
                format!("expected an absolute path, got {:?}", path.display()),
            ))
        }
        (None, None) => None,
    };
    let ssh = match (raw.ssh_key_file, raw.known_hosts) {
        (None, None) => None,
        (Some(_), None) => {
            return Err((
                "known_hosts",
                "an SSH clone pins its host's keys: name a known_hosts file beside ssh_key_file"
                    .into(),
            ))
        }
        (None, Some(_)) => {
            return Err((
                "ssh_key_file",
                "known_hosts is for SSH clones: name the deploy key's file too".into(),
            ))
        }
        (Some(key_file), Some(known_hosts)) => {
            for (field, path) in [("ssh_key_file", &key_file), ("known_hosts", &known_hosts)] {
                let text = path.to_string_lossy();
                // The paths reach ssh's command line through a shell: plain paths only.
                let plain = path.is_absolute()
                    && !text.contains(|c: char| c.is_control() || "'\"\\$`".contains(c));
                if !plain {
                    return Err((
                        field,
                        format!("expected an absolute path without quotes, `$` or backquotes, got {text:?}"),
                    ));
                }
            }
            Some(SshKey {
                key_file,
                known_hosts,
            })
        }
    };
    Ok(Bitbucket {
        flavour,
        api_url: api_url.trim_end_matches('/').to_owned(),
        username,
        token,
        ssh,
    })
}
