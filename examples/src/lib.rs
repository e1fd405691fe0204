//! The glue Kisara's example binaries share: logging, loading the config
//! for a role, and assembling the crates (subnet pool, agent tunnel, HTTP
//! API with the agent endpoint). Each binary stays a page long.

#![doc = include_str!("../README.md")]

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kisara_audit::{
    CastStore, CastStoreOptions, LineGatePolicy, RulePolicy, SqliteConfig, SqliteSink,
    UncertainMode,
};
use kisara_cluster::Server;
use kisara_cluster::http::agent_link;
use kisara_cluster::http::{ApiBuilder, metrics_router};
use kisara_cluster::link::{AgentGateway, LinkOptions, TlsListener};
use kisara_cluster::session::{SessionEngine, SessionLimits};
use kisara_core::builtin::PrefixPolicy;
use kisara_core::config::{
    AgentConfig, AgentRelay, Config, NetworkConfig, ResolvedConfig, Role, ServerConfig,
};
use kisara_core::model::NodeId;
use kisara_core::{CommandPolicy, SubnetAllocator, Tunnel};
use kisara_net::{PoolAllocator, SubnetPool};
use kisara_tls::{client_config, server_config};
use kisara_tunnel::{ClientTls, RelayTls, TunnelClient, rustls};

/// What a binary reports when it cannot go on.
pub type Failure = Box<dyn std::error::Error + Send + Sync>;

/// How a binary logs to stderr: the option every binary shares.
#[derive(Debug, Clone, clap::Args)]
pub struct LogOptions {
    /// The log format on stderr; KISARA_LOG sets the filter (e.g. `debug`,
    /// `info,kisara_cluster=debug`).
    #[arg(
        long,
        value_name = "FORMAT",
        value_enum,
        default_value_t = LogFormat::Text,
        env = "KISARA_LOG_FORMAT",
        global = true
    )]
    pub log_format: LogFormat,
}

/// The formats [`LogOptions`] offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Lines for people, coloured only at a terminal without NO_COLOR.
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

impl LogOptions {
    /// Logs to stderr in the chosen format; `KISARA_LOG` sets the filter
    /// (default `default_filter`).
    pub fn init(&self, default_filter: &str) {
        let builder = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("KISARA_LOG")
                    .unwrap_or_else(|_| default_filter.into()),
            )
            .with_writer(std::io::stderr);
        match self.log_format {
            // Colours only for a person at a terminal: logs piped to a
            // file, a journal or CI stay plain text.
            LogFormat::Text => builder
                .with_ansi(
                    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
                )
                .init(),
            LogFormat::Json => builder.with_ansi(false).json().flatten_event(true).init(),
        }
    }
}

/// The config file a Kisara program reads: the positional argument of the
/// server, agent, relay, dev and config-check binaries.
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigFile {
    /// The Kisara config file (TOML; the Go original's kisara-conf.toml
    /// loads too); KISARA_<SECTION>__<KEY> environment variables override
    /// its values.
    #[arg(value_name = "CONFIG", default_value = "conf/kisara.toml")]
    pub path: PathBuf,
}

impl ConfigFile {
    /// The file with `KISARA_*` overrides, checked for `role`.
    ///
    /// # Errors
    ///
    /// Every problem at once, prefixed with the file.
    pub fn load(&self, role: Role) -> Result<ResolvedConfig, Failure> {
        Config::load_with_process_env(&self.path)
            .and_then(|config| config.resolve_for(role))
            .map_err(|e| format!("{}: {e}", self.path.display()).into())
    }
}

/// The command line of the server, agent, relay and dev binaries: a config
/// file and the log options. Each binary flattens it into its own parser,
/// which carries its name, version and description.
#[derive(Debug, Clone, clap::Args)]
pub struct ServiceArgs {
    /// The config file.
    #[command(flatten)]
    pub config: ConfigFile,
    /// How it logs.
    #[command(flatten)]
    pub log: LogOptions,
}

/// The subnet pool from `[network] pools`, logging what its patterns warn
/// of (public address space).
///
/// # Errors
///
/// A pattern that does not parse, or pools that overlap.
pub fn subnet_allocator(network: &NetworkConfig) -> Result<Arc<dyn SubnetAllocator>, Failure> {
    let pool = SubnetPool::parse_list(&network.pools)?;
    for warning in pool.warnings() {
        tracing::warn!("network.pools: {warning}");
    }
    Ok(Arc::new(PoolAllocator::new(pool)))
}

/// A relay client for `node` linked to `relays`, or `None` without relays.
/// A relay with TLS is verified against its pinned `tls_ca`, else the
/// system's roots.
///
/// # Errors
///
/// An unreadable CA file, no usable system root, or no relay reachable.
pub async fn relay_client(
    node: &NodeId,
    relays: &[AgentRelay],
) -> Result<Option<Arc<dyn Tunnel>>, Failure> {
    if relays.is_empty() {
        return Ok(None);
    }
    let mut builder = TunnelClient::builder(node.as_str());
    for relay in relays {
        builder = match relay.tls_server_name() {
            Some(server_name) => {
                let config = client_config(relay.tls_ca.as_deref(), None)?;
                let tls = ClientTls::new(config, server_name)?;
                builder.relay_with_tls(&relay.name, &relay.address, relay.token.clone(), tls)
            }
            None => builder.relay(&relay.name, &relay.address, relay.token.clone()),
        };
    }
    Ok(Some(Arc::new(builder.connect().await?)))
}

/// The relay's TLS from `[relay] tls_cert` / `tls_key` (PEM files).
///
/// # Errors
///
/// An unreadable or malformed file, or a key that does not fit.
pub fn relay_tls(cert: &Path, key: &Path) -> Result<RelayTls, Failure> {
    Ok(RelayTls::new(server_config(cert, key, None)?))
}

/// The agent's TLS for a `wss://` server, or `None` for `ws://`: the
/// server verified against the pinned `[agent] server_ca`, else the
/// system's roots; `tls_cert` / `tls_key` answer a server demanding a
/// client certificate (mutual TLS).
///
/// # Errors
///
/// An unreadable or malformed file, or no `server_ca` and no usable system
/// root.
pub fn agent_tls(agent: &AgentConfig) -> Result<Option<Arc<rustls::ClientConfig>>, Failure> {
    // The resolved config's server_url is ws:// or wss://.
    if !agent.server_url.starts_with("wss://") {
        return Ok(None);
    }
    Ok(Some(client_config(
        agent.server_ca.as_deref(),
        agent.client_cert(),
    )?))
}

/// The HTTP API (bearer tokens from `[server] api_tokens`, Prometheus
/// metrics at `/metrics`) with the agent endpoint beside it, agents
/// admitted by `[server] token`. Call it once per process: it installs the
/// metrics recorder.
///
/// # Errors
///
/// An empty agent token, or a metrics recorder already installed.
pub async fn api_router(
    server: &Server,
    config: &ResolvedConfig,
    origin: &Path,
) -> Result<(axum::Router, AgentGateway), Failure> {
    let sessions = session_engine(server, config, origin).await?;
    api_router_with(server, config, sessions)
}

/// [`api_router`] over a session engine of the caller's, for a program
/// that opens sessions through it elsewhere too (the SSH gateway).
///
/// # Errors
///
/// As [`api_router`].
pub fn api_router_with(
    server: &Server,
    config: &ResolvedConfig,
    sessions: SessionEngine,
) -> Result<(axum::Router, AgentGateway), Failure> {
    let server_config = &config.server;
    // A link silent for three heartbeats is dead: fit them in the timeout.
    let heartbeat = server_config.heartbeat_timeout() / 3;
    let gateway = AgentGateway::new(
        server.clone(),
        server_config.token.clone(),
        LinkOptions::default().with_heartbeat(heartbeat),
    )?;
    // The process-wide recorder the cluster's metrics go to, rendered at
    // GET /metrics.
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
    let api = ApiBuilder::new(server.clone(), Arc::new(server_config.api_authenticator()))
        .with_metrics(move || metrics.render())
        .with_sessions(sessions)
        .with_ticket_ttl(config.sessions.ticket_ttl())
        .build();
    Ok((api.merge(agent_link(gateway.clone())), gateway))
}

/// The session engine of `[sessions]` and `[policy]`: audit events in
/// SQLite, recordings as asciicast files, the policy on execs and on every
/// terminal line. Without a `[policy]` table every command is allowed (and
/// still audited), which the log says.
///
/// # Errors
///
/// A bad policy rule (named), or an audit database or recording directory
/// that cannot be opened.
pub async fn session_engine(
    server: &Server,
    config: &ResolvedConfig,
    origin: &Path,
) -> Result<SessionEngine, Failure> {
    let sessions = &config.sessions;
    let policy: Arc<dyn CommandPolicy> = if config.policy.is_empty() {
        tracing::warn!(
            "no [policy] in {}: every command is allowed, audited and recorded",
            origin.display()
        );
        Arc::new(PrefixPolicy::allow_by_default())
    } else {
        Arc::new(RulePolicy::from_table(
            config.policy.clone(),
            &origin.display().to_string(),
        )?)
    };
    for dir in [
        sessions.audit_db.parent(),
        Some(sessions.recordings_dir.as_path()),
    ]
    .into_iter()
    .flatten()
    .filter(|dir| !dir.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let audit = Arc::new(SqliteSink::open(SqliteConfig::new(&sessions.audit_db)).await?);
    let recordings = Arc::new(CastStore::open(
        &sessions.recordings_dir,
        CastStoreOptions::default(),
    )?);
    tracing::info!(
        audit = %sessions.audit_db.display(),
        recordings = %sessions.recordings_dir.display(),
        "sessions are audited and recorded"
    );
    Ok(SessionEngine::builder(server.clone())
        .with_command_policy(policy.clone())
        .with_terminal_policy(Arc::new(LineGatePolicy::new(policy, UncertainMode::Audit)))
        .with_audit(audit.clone())
        .with_audit_log(audit)
        .with_recordings(recordings)
        .with_limits(SessionLimits {
            idle_timeout: sessions.idle_timeout(),
            max_lifetime: sessions.max_lifetime(),
            ..SessionLimits::default()
        })
        .build())
}

/// Installs the process's metrics recorder and serves it at
/// `GET /metrics` on `listen` (plain HTTP, no authentication) until the
/// process ends: for a program without the API, such as the relay.
///
/// # Errors
///
/// When `listen` cannot be bound, or a metrics recorder is already
/// installed.
pub async fn serve_metrics(listen: SocketAddr) -> Result<(), Failure> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot serve metrics on {listen}: {e}"))?;
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
    tracing::info!(%listen, "serving metrics at /metrics");
    let router = metrics_router(move || metrics.render());
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router).await {
            tracing::warn!(%error, "the metrics endpoint stopped");
        }
    });
    Ok(())
}

/// Serves `router` on `[server] listen` until Ctrl-C or SIGTERM, over TLS
/// when `[server] tls_cert` is set (and mutual TLS with `tls_client_ca`).
///
/// # Errors
///
/// When the address cannot be bound or the TLS files cannot be read.
pub async fn serve_http(config: &ServerConfig, router: axum::Router) -> Result<(), Failure> {
    let listen = config.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    match config.tls() {
        Some((cert, key)) => {
            let tls = server_config(cert, key, config.tls_client_ca.as_deref())?;
            tracing::info!(%listen, mutual = config.tls_client_ca.is_some(), "serving the API and agent links over TLS");
            axum::serve(TlsListener::new(listener, tls)?, router)
                .with_graceful_shutdown(shutdown_signal())
                .await?;
        }
        None => {
            tracing::info!(%listen, "serving the API and agent links");
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown_signal())
                .await?;
        }
    }
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler can be installed");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    tracing::info!("stopping");
}

/// Runs `main`, printing its failure and exiting non-zero.
pub async fn exit_on_failure(
    main: impl Future<Output = Result<(), Failure>>,
) -> std::process::ExitCode {
    match main.await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            std::process::ExitCode::FAILURE
        }
    }
}
