//! The `migrations:` section: the application's SQL migrations, applied to a service's
//! PostgreSQL database after the services are ready and before the first step.

use serde::{Deserialize, Serialize};

use super::locate::Segment;
use super::validate::Problem;
use super::{EnvValue, Name, Spec, WorkspacePath};

/// The name of the build step that applies the migrations.
pub const MIGRATIONS_STEP: &str = "migrations";
/// PostgreSQL's port when `port` is absent.
pub const DEFAULT_POSTGRES_PORT: u16 = 5432;

/// `migrations: {dir: migrations, service: postgres}`. The database, user and password are
/// the service's `POSTGRES_DB`, `POSTGRES_USER` and `POSTGRES_PASSWORD` (the official
/// image's variables) unless given here.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationsSpec {
    /// A directory of `V<N>__name.sql` or `<N>_name.sql` files in the repository.
    pub dir: WorkspacePath,
    /// The service whose database the build migrates.
    pub service: Name,
    pub port: Option<u16>,
    pub database: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
}

/// How the build reaches the service's database, decided at compile time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationsPlan {
    pub dir: String,
    pub service: String,
    /// The service's container, whose address on the build network the applier connects to.
    pub container: String,
    pub port: u16,
    pub database: String,
    pub user: String,
    pub password: String,
    /// The secret whose value is the password, filled in when the migrations run (the
    /// service's `POSTGRES_PASSWORD` is `{from_secret: NAME}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret: Option<String>,
}

impl MigrationsSpec {
    /// The plan for the service's container `container`.
    pub fn plan(&self, spec: &Spec, container: String) -> MigrationsPlan {
        let service = spec
            .services
            .iter()
            .find(|s| s.name.as_str() == self.service.as_str());
        let value_in_service = |variable: &str| {
            service.and_then(|s| {
                s.environment
                    .iter()
                    .find(|(name, _)| name.as_str() == variable)
                    .map(|(_, value)| value)
            })
        };
        let from_service = |variable: &str| match value_in_service(variable) {
            Some(EnvValue::Text(text)) => Some(text.0.clone()),
            _ => None,
        };
        let password_secret = match value_in_service("POSTGRES_PASSWORD") {
            Some(EnvValue::FromSecret(secret)) if self.password.is_none() => {
                Some(secret.as_str().to_owned())
            }
            _ => None,
        };
        let user = self
            .user
            .clone()
            .or_else(|| from_service("POSTGRES_USER"))
            .unwrap_or_else(|| "postgres".to_owned());
        MigrationsPlan {
            dir: self.dir.as_str().to_owned(),
            service: self.service.to_string(),
            container,
            port: self.port.unwrap_or(DEFAULT_POSTGRES_PORT),
            database: self
                .database
                .clone()
                .or_else(|| from_service("POSTGRES_DB"))
                .unwrap_or_else(|| user.clone()),
            password: self
                .password
                .clone()
                .or_else(|| from_service("POSTGRES_PASSWORD"))
                .unwrap_or_default(),
            password_secret,
            user,
        }
    }
}

/// The service must exist, and no step may take the migrations step's name.
pub fn check(spec: &Spec) -> Result<(), Problem> {
    let Some(migrations) = &spec.migrations else {
        return Ok(());
    };
    let named = |name: &Name, wanted: &str| name.as_str() == wanted;
    if !spec
        .services
        .iter()
        .any(|s| named(&s.name, migrations.service.as_str()))
    {
        return Err(Problem {
            path: vec![Segment::Key("migrations"), Segment::Key("service")],
            message: format!(
                "no service is named `{}`: the migrations need one of `services`",
                migrations.service
            ),
        });
    }
    if let Some(index) = spec
        .steps
        .iter()
        .position(|s| named(&s.name, MIGRATIONS_STEP))
    {
        return Err(Problem {
            path: vec![Segment::Key("steps"), Segment::Index(index), Segment::Key("name")],
            message: format!(
                "`{MIGRATIONS_STEP}` is the name of the step that applies `migrations:`; rename this step"
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::spec::parse;

    const SERVICE: &str = "services:\n  - name: db\n    image: slipway/postgres:15\n    environment: {POSTGRES_USER: app, POSTGRES_PASSWORD: pw}\n";
    const STEP: &str =
        "steps:\n  - {name: test, image: slipway/debian:bookworm, commands: [\"true\"]}\n";

    #[test]
    fn the_service_database_login_comes_from_its_environment() {
        let text = format!("{SERVICE}migrations: {{dir: db/migrations, service: db}}\n{STEP}");
        let spec = parse(&text).unwrap();
        let plan = spec.migrations.as_ref().unwrap().plan(&spec, "c-db".into());
        assert_eq!(
            (
                plan.dir.as_str(),
                plan.user.as_str(),
                plan.password.as_str()
            ),
            ("db/migrations", "app", "pw")
        );
        // POSTGRES_DB defaults to the user, as in the official image.
        assert_eq!((plan.database.as_str(), plan.port), ("app", 5432));
    }

    #[test]
    fn a_password_from_a_secret_is_named_in_the_plan_not_copied() {
        let service = SERVICE.replace(
            "POSTGRES_PASSWORD: pw",
            "POSTGRES_PASSWORD: {from_secret: DB_PW}",
        );
        let text = format!("{service}migrations: {{dir: m, service: db}}\n{STEP}");
        let spec = parse(&text).unwrap();
        let plan = spec.migrations.as_ref().unwrap().plan(&spec, "c-db".into());
        assert_eq!(plan.password, "");
        assert_eq!(plan.password_secret.as_deref(), Some("DB_PW"));
        // A password written in `migrations:` wins over the service's secret.
        let text = format!("{service}migrations: {{dir: m, service: db, password: given}}\n{STEP}");
        let spec = parse(&text).unwrap();
        let plan = spec.migrations.as_ref().unwrap().plan(&spec, "c-db".into());
        assert_eq!(
            (plan.password.as_str(), plan.password_secret),
            ("given", None)
        );
    }

    #[test]
    fn an_unknown_service_or_a_step_named_migrations_is_refused_at_its_line() {
        let text = format!("{SERVICE}migrations:\n  dir: migrations\n  service: postgres\n{STEP}");
        let err = parse(&text).unwrap_err();
        assert_eq!(err.line, 7, "{err}");
        assert!(
            err.message.contains("no service is named `postgres`"),
            "{err}"
        );

        let text = format!(
            "{SERVICE}migrations: {{dir: m, service: db}}\n{}",
            STEP.replace("name: test", "name: migrations")
        );
        let err = parse(&text).unwrap_err();
        assert_eq!(err.line, 7, "{err}");
        assert!(err.message.contains("rename this step"), "{err}");

        let err = parse(&format!(
            "{SERVICE}migrations: {{dir: ../x, service: db}}\n{STEP}"
        ))
        .unwrap_err();
        assert_eq!(err.line, 5, "{err}");
    }
}
