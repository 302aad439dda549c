//! `slipway server`: assembles the store, the build queue and the HTTP API, and runs them
//! until SIGINT/SIGTERM.
//!
//! [`Application::build`] resolves everything (data dir, database, the one Docker client,
//! listener); [`Application::run_until`] serves until the given future completes, then shuts down
//! gracefully: in-flight requests finish, running builds and bakes are stopped and torn down
//! (the bakes queued again), the server is recorded as stopped (so other servers sharing the
//! database take over what it left at once), and the embedded PostgreSQL (when Slipway
//! started it) is stopped.

mod agents_api;
mod api;
mod apt;
mod auth;
mod deploy_api;
mod error;
mod health;
mod hooks;
mod metrics;
mod notify_api;
mod presence;
pub use presence::host_name;
mod releases_api;
mod tokens_api;
mod ui;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::bake::{BakeQueue, Baker};
use crate::cache::Caches;
use crate::config::Config;
use crate::deploy::DeployManager;
use crate::docker::DockerClient;
use crate::queue::BuildQueue;
use crate::releases::Repository;
use crate::store::embedded::EmbeddedPostgres;
use crate::store::{tokens, Store};

pub use error::ApiError;

/// What every request handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Store,
    pub queue: BuildQueue,
    pub repository: Repository,
    /// The release images' bake queue (rebakes go through it too).
    pub bakes: BakeQueue,
    pub deploys: DeployManager,
    /// The one client of dockerd the queue, the deployments and the bakes share.
    pub docker: DockerClient,
    /// Cancelled when the server begins to stop.
    pub stopping: CancellationToken,
}

pub struct Application {
    listener: TcpListener,
    state: AppState,
    /// Builds' caches, which housekeeping expires.
    caches: Arc<Caches>,
    embedded: Option<EmbeddedPostgres>,
    /// The id every container, network and volume this server starts is labelled with.
    server_id: Uuid,
}

impl Application {
    pub async fn build(mut config: Config) -> anyhow::Result<Application> {
        std::fs::create_dir_all(&config.data_dir).with_context(|| {
            format!("cannot create data directory {}", config.data_dir.display())
        })?;
        let (store, embedded) = open_store(&config).await?;
        let server_id = store.server_id().await?;
        ensure_admin_token(&store, &config.data_dir).await?;
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        presence::register(&store, listener.local_addr()?).await?;
        // The default public URL names the listen address: with port 0, the port bound.
        if config.public_url == format!("http://{}", config.listen) {
            config.public_url = format!("http://{}", listener.local_addr()?);
        }
        let repository = Repository::open(
            &store,
            &config.data_dir,
            &config.apt_dir,
            config.apt_s3.as_ref(),
        )
        .await?;
        // Built without contacting dockerd: it may come later, and the queue waits for it.
        let docker = DockerClient::new(&config.docker_host)?;
        let baker = Baker::new(
            &config.data_dir,
            &repository.key_path(),
            listener.local_addr()?,
            server_id,
            docker.clone(),
            config.packer.clone(),
        )
        .with_log_limit(config.bake_log_limit_bytes);
        crate::releases::claim_declared_packages(&store, &config.projects).await?;
        baker.remove_scratch_leftovers()?;
        let config = Arc::new(config);
        let bakes = BakeQueue::start(config.clone(), store.clone(), baker, &docker).await?;
        let deploys = DeployManager::start(&config, store.clone(), server_id, &docker).await?;
        let caches = Arc::new(Caches::open(&config.cache).await);
        let queue = BuildQueue::start(
            config.clone(),
            store.clone(),
            repository.clone(),
            bakes.clone(),
            docker.clone(),
            caches.clone(),
            server_id,
        )
        .await?;
        Ok(Application {
            listener,
            state: AppState {
                config,
                store,
                queue,
                repository,
                bakes,
                deploys,
                docker,
                stopping: CancellationToken::new(),
            },
            caches,
            embedded,
            server_id,
        })
    }

    /// The id that labels what this server starts in dockerd (`slipway.server`,
    /// `slipway.deploy-server`); it lives in the database, so it survives a restart.
    pub fn server_id(&self) -> Uuid {
        self.server_id
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` completes, then stops everything it started.
    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Application {
            listener,
            state,
            caches,
            embedded,
            server_id,
        } = self;
        let stop = CancellationToken::new();
        let heartbeats = tokio::spawn(presence::heartbeat(state.store.clone(), stop.clone()));
        let housekeeping = tokio::spawn(crate::retention::run(
            state.config.clone(),
            state.store.clone(),
            state.docker.clone(),
            state.repository.clone(),
            caches,
        ));
        let reports = tokio::spawn(crate::build_reports::run(
            state.config.clone(),
            state.store.clone(),
            stop.clone(),
        ));
        let notifications = tokio::spawn(crate::notify::run(
            state.config.clone(),
            state.store.clone(),
            stop.clone(),
        ));
        let autoscaler = match &state.config.autoscale {
            Some(settings) => {
                let server_url = format!("http://{}", loopback(listener.local_addr()?));
                let dir = state.config.data_dir.join("autoscale");
                let provider = crate::autoscale::provider(settings, &server_url, &dir).await;
                Some(tokio::spawn(crate::autoscale::run(
                    state.config.clone(),
                    state.store.clone(),
                    provider,
                    stop.clone(),
                )))
            }
            None => None,
        };
        let stopped = stop.clone();
        let stopping = state.stopping.clone();
        let shutdown = async move {
            tokio::select! {
                _ = shutdown => {},
                _ = stopped.cancelled() => {},
            }
            // Requests that wait (agents' leases) end now rather than hold the stop up.
            stopping.cancel();
        };
        let queue = state.queue.clone();
        let deploys = state.deploys.clone();
        let bakes = state.bakes.clone();
        let store = state.store.clone();
        tracing::info!(
            addr = %listener.local_addr()?,
            server = %server_id,
            "slipway server listening"
        );
        let served = axum::serve(listener, router(state))
            .with_graceful_shutdown(shutdown)
            .await
            .context("HTTP server failed");
        housekeeping.abort();
        queue.shutdown().await;
        bakes.shutdown().await;
        deploys.shutdown();
        stop.cancel();
        let _ = heartbeats.await;
        let _ = reports.await;
        let _ = notifications.await;
        if let Some(autoscaler) = autoscaler {
            let _ = autoscaler.await;
        }
        if let Err(error) = store.stop_server().await {
            tracing::warn!(%error, "cannot record this server's stop; its work is taken over once its heartbeat ages");
        }
        store.close();
        if let Some(cluster) = embedded {
            tokio::task::spawn_blocking(move || cluster.stop())
                .await?
                .context("stopping the embedded PostgreSQL")?;
            tracing::info!("embedded PostgreSQL stopped");
        }
        served
    }
}

/// `addr`, with a wildcard IP replaced by loopback: where a process of this host reaches the
/// server (the local autoscaler's agents).
fn loopback(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, addr.port()))
        }
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port()))
        }
        _ => addr,
    }
}

pub fn router(state: AppState) -> Router {
    let max_body = state.config.webhook_max_body_bytes;
    Router::new()
        .route("/healthz", get(health::healthz))
        .route(
            "/hooks/bitbucket",
            post(hooks::bitbucket).layer(axum::extract::DefaultBodyLimit::max(max_body)),
        )
        .nest("/api/v1", api::routes(state.clone()))
        .nest("/agent/v1", agents_api::agent_routes(state.clone()))
        .merge(apt::routes(&state))
        .merge(ui::routes())
        .merge(metrics::routes())
        .with_state(state)
}

async fn open_store(config: &Config) -> anyhow::Result<(Store, Option<EmbeddedPostgres>)> {
    match &config.database_url {
        Some(url) => {
            let store = Store::connect(url.expose())
                .await
                .context("connecting to database_url")?;
            Ok((store, None))
        }
        None => {
            let data_dir = config.data_dir.clone();
            let cluster = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&data_dir))
                .await?
                .context("starting the embedded PostgreSQL")?;
            let store = Store::connect(&cluster.connection_string())
                .await
                .context("connecting to the embedded PostgreSQL")?;
            Ok((store, Some(cluster)))
        }
    }
}

/// On first start, makes an admin token and writes it to `<data_dir>/admin.token` (mode 0600).
async fn ensure_admin_token(store: &Store, data_dir: &Path) -> anyhow::Result<()> {
    if store.token_count().await? > 0 {
        return Ok(());
    }
    let token = tokens::generate_token();
    let path = data_dir.join("admin.token");
    write_private(&path, &format!("{token}\n"))
        .with_context(|| format!("cannot write {}", path.display()))?;
    store
        .insert_token("admin", &[tokens::Scope::Admin], &token)
        .await?;
    tracing::info!(path = %path.display(), "wrote the initial admin token");
    Ok(())
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutting down");
}
