//! Registry logins for a build: a project's passwords and tokens as configured, ECR tokens
//! from GetAuthorizationToken (through the AWS SDK) cached until shortly before they expire,
//! and the server's mirror for Docker Hub images. The pipeline crate gets plain values.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use base64::Engine as _;
use slipway_pipeline::docker::{self as engine, ImageReference};
use slipway_pipeline::{DockerEngine, Plan};
use tokio::sync::Mutex;

use crate::config::{Config, Project, RegistryLogin, Secret};

/// An ECR token is asked for again this long before it expires, so no pull starts with a token
/// about to lapse (ECR's last 12 hours).
const ECR_TOKEN_MARGIN: Duration = Duration::from_secs(15 * 60);

/// The server's registry settings and its cache of ECR tokens; shared by all builds.
pub struct RegistryLogins {
    mirror: Option<engine::Mirror>,
    ecr_tokens: Mutex<HashMap<EcrAddress, EcrToken>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct EcrAddress {
    region: String,
    endpoint_url: Option<String>,
}

struct EcrToken {
    username: String,
    password: Secret,
    renew_at: SystemTime,
}

impl RegistryLogins {
    pub fn new(config: &Config) -> RegistryLogins {
        RegistryLogins {
            mirror: config
                .registry_mirror
                .as_ref()
                .map(|mirror| engine::Mirror {
                    host: mirror.host.clone(),
                    fallback_to_origin: mirror.fallback_to_origin,
                }),
            ecr_tokens: Mutex::new(HashMap::new()),
        }
    }

    /// `engine` pulling through the server's mirror with `project`'s logins for the registries
    /// `plan`'s images come from (ECR is asked only for a registry the plan uses).
    pub async fn engine_for(
        &self,
        engine: &DockerEngine,
        project: &Project,
        plan: &Plan,
    ) -> anyhow::Result<DockerEngine> {
        let mut used: Vec<String> = plan
            .steps
            .iter()
            .map(|step| &step.image)
            .chain(plan.services.iter().map(|service| &service.image))
            .map(|image| ImageReference::parse(image).registry_name().to_owned())
            .collect();
        used.extend(self.mirror.iter().map(|mirror| mirror.host.clone()));
        let mut logins = BTreeMap::new();
        for registry in &project.registries {
            if !used.contains(&registry.host) {
                continue;
            }
            let login = match &registry.login {
                RegistryLogin::Password { username, password } => engine::RegistryLogin::Password {
                    username: username.clone(),
                    password: password.expose().to_owned(),
                },
                RegistryLogin::Token(token) => {
                    engine::RegistryLogin::Token(token.expose().to_owned())
                }
                RegistryLogin::Ecr {
                    region,
                    endpoint_url,
                } => {
                    let address = EcrAddress {
                        region: region.clone(),
                        endpoint_url: endpoint_url.clone(),
                    };
                    self.ecr_login(&address).await.with_context(|| {
                        format!(
                            "cannot get a login for registry `{}` from ECR in {region}",
                            registry.host
                        )
                    })?
                }
            };
            logins.insert(registry.host.clone(), login);
        }
        Ok(engine.clone().with_registries(engine::Registries {
            mirror: self.mirror.clone(),
            logins,
        }))
    }

    /// ECR's login for `address`, from the cache while it is fresh.
    async fn ecr_login(&self, address: &EcrAddress) -> anyhow::Result<engine::RegistryLogin> {
        let mut tokens = self.ecr_tokens.lock().await;
        let fresh = tokens
            .get(address)
            .filter(|token| SystemTime::now() < token.renew_at);
        let token = match fresh {
            Some(token) => token,
            None => {
                let token = fetch_ecr_token(address).await?;
                tokens.insert(address.clone(), token);
                &tokens[address]
            }
        };
        Ok(engine::RegistryLogin::Password {
            username: token.username.clone(),
            password: token.password.expose().to_owned(),
        })
    }
}

/// GetAuthorizationToken: a base64 `user:password` pair and when it expires.
#[tracing::instrument(skip_all, fields(region = %address.region), err)]
async fn fetch_ecr_token(address: &EcrAddress) -> anyhow::Result<EcrToken> {
    let sdk =
        slipway_deployer::aws::sdk_config(&address.region, address.endpoint_url.as_deref()).await;
    let answer = aws_sdk_ecr::Client::new(&sdk)
        .get_authorization_token()
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{}", aws_sdk_ecr::error::DisplayErrorContext(e)))?;
    let data = answer
        .authorization_data()
        .first()
        .context("ECR answered without authorization data")?;
    let encoded = data
        .authorization_token()
        .context("ECR answered without a token")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .context("ECR's token is not base64 text")?;
    let (username, password) = decoded
        .split_once(':')
        .context("ECR's token is not a `user:password` pair")?;
    let expires = data
        .expires_at()
        .and_then(|at| SystemTime::try_from(*at).ok())
        .unwrap_or_else(|| SystemTime::now() + ECR_TOKEN_MARGIN * 2);
    tracing::info!("Got a registry login from ECR.");
    Ok(EcrToken {
        username: username.to_owned(),
        password: Secret::new(password),
        renew_at: expires.checked_sub(ECR_TOKEN_MARGIN).unwrap_or(expires),
    })
}
