//! The command line: `slipway server` runs the service; the other commands talk to a server's
//! API, except `slipway pipeline`, which works on a local checkout.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "slipway",
    version,
    about = "From a Bitbucket push to a healthy blue/green fleet",
    long_about = "Slipway builds each push in containers next to a Postgres sidecar, packages passing builds \
                  on the deploy branch as .deb releases in a signed apt repository, bakes machine images with \
                  Packer and Ansible, and deploys them blue/green."
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service: HTTP API, webhooks, build queue and agent.
    Server(ServerArgs),
    /// Deploy to an environment what is live in the one before it (or a named release).
    Promote {
        #[command(flatten)]
        client: ClientArgs,
        /// The environment to deploy to.
        #[arg(long)]
        env: String,
        /// The release to deploy, like v42.
        #[arg(long)]
        release: Option<String>,
        /// Deploy even when the release expects an older database schema than the
        /// environment's database has.
        #[arg(long)]
        allow_older_schema: bool,
    },
    /// Make an earlier release live again in an environment.
    Rollback {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        env: String,
        /// The release to make live, like v42.
        #[arg(long)]
        to: String,
        /// Roll back even when the release expects an older database schema than the
        /// environment's database has.
        #[arg(long)]
        allow_older_schema: bool,
    },
    /// List a project's builds, newest first.
    Builds {
        #[command(flatten)]
        client: ClientArgs,
        /// How many builds (1 to 1000).
        #[arg(long, default_value_t = 25, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
    },
    /// Queue a manual build of a branch (`--branch`), or show, follow, cancel or rebuild a
    /// build.
    Build(BuildArgs),
    /// Check an API token against a server and store both (and --project, if given) for later
    /// commands, in $XDG_CONFIG_HOME/slipway/client.toml, else ~/.config/slipway/client.toml.
    Login {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List a project's releases.
    Releases {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show each environment's live release, fleet health and last deployments.
    Status {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Write the installation's state (database, signing key, apt repository) to one file.
    Backup {
        #[command(flatten)]
        server: ServerArgs,
        /// The backup file to write (mode 0600: it holds the signing key).
        #[arg(long)]
        out: PathBuf,
    },
    /// Restore a backup into an empty database and apt directory, for a server to start on.
    Restore {
        #[command(flatten)]
        server: ServerArgs,
        /// The backup file, as `slipway backup` wrote it.
        #[arg(long)]
        from: PathBuf,
    },
    /// Work with a .slipway.yml pipeline locally.
    #[command(subcommand)]
    Pipeline(PipelineCommand),
    /// Run a server's builds on this machine's dockerd (a build agent), or drain an agent.
    Agent(AgentArgs),
    /// List the build agents: capacity, labels, running builds, last heartbeat, version.
    Agents {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Manage API tokens (admin).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Show who asked for deployments, cancels, rebuilds, rebakes and token changes (admin).
    Audit {
        #[command(flatten)]
        client: ClientArgs,
        /// How many events, newest first.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Config file; default ./slipway.toml when present, else built-in defaults.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address to listen on (default 127.0.0.1:8080).
    #[arg(long)]
    pub listen: Option<String>,
    /// Data directory (default ./.slipway).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The Slipway server's URL; default: the one `slipway login` stored, else
    /// http://127.0.0.1:8080.
    #[arg(long, env = "SLIPWAY_SERVER")]
    pub server: Option<String>,
    /// API token, or `-` to read it from stdin (out of sight of `ps`); default: the one
    /// `slipway login` stored for the server, else the admin token in ./.slipway/admin.token.
    #[arg(long, env = "SLIPWAY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Project; optional when `slipway login` stored one or the server has exactly one.
    #[arg(long)]
    pub project: Option<String>,
}

/// `slipway build --branch B [--commit C]`, or one of its subcommands.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct BuildArgs {
    #[command(subcommand)]
    pub command: Option<BuildCommand>,
    #[command(flatten)]
    pub client: ClientArgs,
    /// The branch to build: any branch of the repository, whatever the project's `branches`
    /// (which only selects the pushes that build).
    #[arg(long, required = true)]
    pub branch: Option<String>,
    /// The commit to build, a full id on the branch; default: the branch's head.
    #[arg(long, requires = "branch")]
    pub commit: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum BuildCommand {
    /// Show a build and its steps with their status and timings.
    Show {
        #[command(flatten)]
        client: ClientArgs,
        /// The build's number.
        number: i64,
    },
    /// Print a build's log.
    Logs {
        #[command(flatten)]
        client: ClientArgs,
        /// The build's number.
        number: i64,
        /// Only this step's lines.
        #[arg(long)]
        step: Option<String>,
        /// Keep printing lines as the build writes them, until it ends; the exit code is then
        /// 0 only when it passed.
        #[arg(long)]
        follow: bool,
    },
    /// Cancel a queued or running build.
    Cancel {
        #[command(flatten)]
        client: ClientArgs,
        /// The build's number.
        number: i64,
    },
    /// Queue a build's commit again, on its branch.
    Rebuild {
        #[command(flatten)]
        client: ClientArgs,
        /// The build's number.
        number: i64,
    },
}

#[derive(Debug, Subcommand)]
pub enum PipelineCommand {
    /// Print the compiled plan of a .slipway.yml.
    Compile {
        /// The file (default ./.slipway.yml).
        file: Option<PathBuf>,
        #[arg(long, default_value = "main")]
        branch: String,
        #[arg(long, default_value = "push")]
        event: String,
    },
    /// Run a repository's pipeline locally against Docker and print its logs.
    Exec {
        /// The repository (default: the current directory).
        #[arg(long, default_value = ".")]
        repo: PathBuf,
        /// Run the repository's files at this commit instead of the working tree as it is.
        #[arg(long)]
        commit: Option<String>,
        /// The branch the build pretends to be on (for `when: branch`).
        #[arg(long, default_value = "main")]
        branch: String,
        /// A secret as NAME=VALUE; may be repeated. Masked in the output.
        #[arg(long = "secret", value_name = "NAME=VALUE")]
        secrets: Vec<String>,
        /// Keep the pipeline's `cache:` in this directory between runs (without it the cache
        /// steps are skipped).
        #[arg(long, value_name = "DIR")]
        cache_dir: Option<PathBuf>,
    },
    /// Build the .deb a pipeline's `package:` section describes from a directory's files, as
    /// the server packages a release from a build's workspace (no steps run).
    Package {
        /// A pipeline file, or a file holding only its `package:` section (default:
        /// .slipway.yml in --dir).
        #[arg(long)]
        file: Option<PathBuf>,
        /// The files the package's sources are relative to.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The package's version (a release's number).
        #[arg(long)]
        version: u32,
        /// Where the .deb is written.
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a new API token; it is printed once and stored hashed.
    Create {
        #[command(flatten)]
        client: ClientArgs,
        /// What the token is for (1 to 100 printable characters).
        #[arg(long)]
        name: String,
        /// What it may do: read, build, deploy:<environment>, deploy (every environment),
        /// admin, or agent (registers build agents, nothing else); may be repeated. Every
        /// scope but agent includes read.
        #[arg(long = "scope", value_name = "SCOPE", required = true)]
        scopes: Vec<String>,
    },
    /// List the tokens: id, name, scopes, when made and last used, revoked.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Revoke a token: requests with it are refused from then on.
    Revoke {
        #[command(flatten)]
        client: ClientArgs,
        /// The token's id, as `slipway token list` shows it.
        id: i64,
    },
}

/// `slipway agent --server URL --token T ...`, or `slipway agent drain NAME`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct AgentArgs {
    #[command(subcommand)]
    pub command: Option<AgentCommand>,
    /// The server's URL; the agent dials out to it (it needs no inbound port).
    #[arg(long, env = "SLIPWAY_SERVER", required = true)]
    pub server: Option<String>,
    /// A token of scope `agent` (or `admin`) to register with, or `-` to read it from stdin
    /// (out of sight of `ps`).
    #[arg(long, env = "SLIPWAY_TOKEN", hide_env_values = true, required = true)]
    pub token: Option<String>,
    /// The agent's name, as the server shows it on builds; default: this host's name.
    #[arg(long)]
    pub name: Option<String>,
    /// How many builds it runs at once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub capacity: u32,
    /// Labels that pipelines select agents by, as `key=value,key=value`.
    #[arg(long, default_value = "")]
    pub labels: String,
    /// The dockerd that runs the builds.
    #[arg(long, env = "DOCKER_HOST", default_value = crate::config::DEFAULT_DOCKER_HOST)]
    pub docker_host: String,
    /// Where builds' files are kept while they run (emptied at start).
    #[arg(long, default_value = "/var/lib/slipway-agent")]
    pub work_dir: PathBuf,
    /// The machine this agent runs on, as the autoscaler's group names it (an EC2 instance
    /// id): the server scales the group in only through agents it knows the instance of.
    #[arg(long, env = "SLIPWAY_INSTANCE_ID")]
    pub instance_id: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Ask an agent to take no new build and exit once its running builds end (admin).
    Drain {
        #[command(flatten)]
        client: ClientArgs,
        /// The agent's name, as `slipway agents` shows it.
        name: String,
    },
}
