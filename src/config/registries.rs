//! Image registries in the config: a project's `[[projects.registries]]` logins and the
//! server's `registry_mirror` for Docker Hub images. Values come from the environment and are
//! kept as [`Secret`]s; ECR logins are fetched at build time, so only their address is here.

use serde::Deserialize;

use super::{Invalid, Secret};

/// One `[[projects.registries]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegistry {
    /// As in image references: `registry.acme.test:5000`, or `docker.io` for Docker Hub.
    pub host: String,
    pub username: Option<String>,
    /// The password, read from this environment variable (with `username`).
    pub password_env: Option<String>,
    /// An identity token, read from this environment variable.
    pub token_env: Option<String>,
    /// Logins from ECR's GetAuthorizationToken.
    pub ecr: Option<RawEcr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEcr {
    pub region: String,
    /// Another ECR endpoint (moto in tests); absent in production.
    pub endpoint_url: Option<String>,
}

/// A project's login for one registry host.
#[derive(Debug, Clone)]
pub struct Registry {
    pub host: String,
    pub login: RegistryLogin,
}

#[derive(Debug, Clone)]
pub enum RegistryLogin {
    Password {
        username: String,
        password: Secret,
    },
    Token(Secret),
    /// A token from ECR, asked for when a build needs it (AWS credentials from the
    /// environment, as for the aws target).
    Ecr {
        region: String,
        endpoint_url: Option<String>,
    },
}

/// The server's pull-through mirror for Docker Hub images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryMirror {
    /// `host[:port]` as in image references.
    pub host: String,
    /// Whether an image the mirror cannot serve is pulled from Docker Hub itself.
    pub fallback_to_origin: bool,
}

/// Checks `registry_mirror` (`http://host[:port]` or `https://...`) and its fallback switch.
pub fn resolve_mirror(
    url: Option<String>,
    fallback: Option<bool>,
    invalid: &Invalid<'_>,
) -> Result<Option<RegistryMirror>, super::ConfigError> {
    let Some(url) = url else {
        return match fallback {
            Some(_) => Err(invalid(
                "registry_mirror_fallback",
                "set only with registry_mirror".into(),
            )),
            None => Ok(None),
        };
    };
    let host = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .map(|rest| rest.strip_suffix('/').unwrap_or(rest))
        .filter(|host| is_host(host))
        .ok_or_else(|| {
            invalid(
                "registry_mirror",
                format!("expected `http://host[:port]` or `https://host[:port]` without a path, got {url:?}"),
            )
        })?;
    Ok(Some(RegistryMirror {
        host: host.to_owned(),
        fallback_to_origin: fallback.unwrap_or(false),
    }))
}

/// Checks a project's registries; `key` names a field of the entry at an index.
pub fn resolve_registries(
    raw: Vec<RawRegistry>,
    key: &dyn Fn(usize, &str) -> String,
    invalid: &Invalid<'_>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<Registry>, super::ConfigError> {
    let mut registries: Vec<Registry> = Vec::new();
    for (i, raw) in raw.into_iter().enumerate() {
        if !is_host(&raw.host) {
            return Err(invalid(
                &key(i, "host"),
                format!(
                    "expected a registry host as in image references (`registry.acme.test:5000`, `docker.io`), got {:?}",
                    raw.host
                ),
            ));
        }
        if registries.iter().any(|r| r.host == raw.host) {
            return Err(invalid(
                &key(i, "host"),
                format!("registry `{}` is listed twice", raw.host),
            ));
        }
        let from_env = |field: &str, var: &str| {
            env(var).map(Secret::new).ok_or_else(|| {
                invalid(
                    &key(i, field),
                    format!("environment variable {var} is not set"),
                )
            })
        };
        let login = match (raw.username, raw.password_env, raw.token_env, raw.ecr) {
            (Some(username), Some(var), None, None) => RegistryLogin::Password {
                username,
                password: from_env("password_env", &var)?,
            },
            (None, None, Some(var), None) => RegistryLogin::Token(from_env("token_env", &var)?),
            (None, None, None, Some(ecr)) => RegistryLogin::Ecr {
                region: ecr.region,
                endpoint_url: ecr.endpoint_url,
            },
            (Some(_), None, None, None) => {
                return Err(invalid(
                    &key(i, "password_env"),
                    "required with username".into(),
                ))
            }
            (None, Some(_), None, None) => {
                return Err(invalid(
                    &key(i, "username"),
                    "required with password_env".into(),
                ))
            }
            _ => {
                return Err(invalid(
                    &key(i, "host"),
                    format!(
                        "registry `{}` needs exactly one login: username with password_env, token_env, or ecr",
                        raw.host
                    ),
                ))
            }
        };
        registries.push(Registry {
            host: raw.host,
            login,
        });
    }
    Ok(registries)
}

/// `host[:port]` as dockerd reads it in an image reference.
fn is_host(text: &str) -> bool {
    let (name, port) = match text.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (text, None),
    };
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        && port.is_none_or(|port| port.parse::<u16>().is_ok_and(|p| p > 0))
}

#[cfg(test)]
mod tests {
    use super::super::{parse, resolve, Config, ConfigError, Overrides};
    use super::RegistryLogin;

    const PROJECT: &str =
        "[[projects]]\nname = \"hello\"\nrepository = \"acme/hello\"\nclone_url = \"x\"\n";

    fn load(text: &str) -> Result<Config, ConfigError> {
        let env = |key: &str| (key == "ACME_REGISTRY_PASSWORD").then(|| "hunter2".to_string());
        resolve(parse(text, "f")?, "f", &Overrides::default(), &env)
    }

    #[test]
    fn a_registry_password_comes_from_the_environment_and_is_never_printed() {
        let config = load(&format!("{PROJECT}[[projects.registries]]\nhost = \"registry.acme.test:5000\"\nusername = \"ci\"\npassword_env = \"ACME_REGISTRY_PASSWORD\"\n")).unwrap();
        let registry = &config.projects[0].registries[0];
        assert_eq!(registry.host, "registry.acme.test:5000");
        match &registry.login {
            RegistryLogin::Password { username, password } => {
                assert_eq!(username, "ci");
                assert_eq!(password.expose(), "hunter2");
            }
            other => panic!("{other:?}"),
        }
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn registry_mistakes_name_the_key() {
        let cases = [
            ("host = \"r.test\"\ntoken_env = \"UNSET\"\n", "f: key `projects[0].registries[0].token_env`: environment variable UNSET is not set"),
            ("host = \"r.test\"\nusername = \"ci\"\n", "f: key `projects[0].registries[0].password_env`: required with username"),
            ("host = \"r.test\"\ntoken_env = \"T\"\necr = { region = \"eu-west-1\" }\n", "f: key `projects[0].registries[0].host`: registry `r.test` needs exactly one login: username with password_env, token_env, or ecr"),
            ("host = \"https://r.test\"\necr = { region = \"eu-west-1\" }\n", "f: key `projects[0].registries[0].host`: expected a registry host as in image references (`registry.acme.test:5000`, `docker.io`), got \"https://r.test\""),
        ];
        for (entry, expected) in cases {
            let text = format!("{PROJECT}[[projects.registries]]\n{entry}");
            assert_eq!(load(&text).unwrap_err().to_string(), expected, "{entry}");
        }
    }

    #[test]
    fn the_mirror_is_a_host_with_an_optional_fallback() {
        let config = load("registry_mirror = \"http://127.0.0.1:5000/\"\n").unwrap();
        let mirror = config.registry_mirror.unwrap();
        assert_eq!(mirror.host, "127.0.0.1:5000");
        assert!(!mirror.fallback_to_origin);
        let error = load("registry_mirror = \"127.0.0.1:5000/v2\"\n").unwrap_err();
        assert_eq!(
            error.to_string(),
            "f: key `registry_mirror`: expected `http://host[:port]` or `https://host[:port]` without a path, got \"127.0.0.1:5000/v2\""
        );
        let error = load("registry_mirror_fallback = true\n").unwrap_err();
        assert_eq!(
            error.to_string(),
            "f: key `registry_mirror_fallback`: set only with registry_mirror"
        );
    }
}
