//! The glue Kisara's example binaries share: logging, loading the config
//! for a role, and assembling the crates (subnet pool, agent tunnel, HTTP
//! API with the agent endpoint). Each binary stays a page long.

#![doc = include_str!("../README.md")]

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kisara_cluster::Server;
use kisara_cluster::http::agent_link;
use kisara_cluster::http::{ApiBuilder, metrics_router};
use kisara_cluster::link::{AgentGateway, LinkOptions, TlsListener};
use kisara_core::config::{
    AgentConfig, AgentRelay, Config, NetworkConfig, ResolvedConfig, Role, ServerConfig,
};
use kisara_core::model::NodeId;
use kisara_core::{SubnetAllocator, Tunnel};
use kisara_net::{PoolAllocator, SubnetPool};
use kisara_tls::{client_config, server_config};
use kisara_tunnel::{ClientTls, RelayTls, TunnelClient, rustls};

/// What a binary reports when it cannot go on.
pub type Failure = Box<dyn std::error::Error + Send + Sync>;

/// Logs to stderr; `KISARA_LOG` sets the filter (default `default_filter`).
pub fn init_logging(default_filter: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KISARA_LOG")
                .unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal: logs piped to a file, a
        // journal or CI stay plain text.
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .init();
}

/// The config file named by the first argument (default
/// `conf/kisara.toml`), with `KISARA_*` overrides, checked for `role`.
///
/// # Errors
///
/// Every problem at once, prefixed with the file.
pub fn load_config(role: Role) -> Result<(PathBuf, ResolvedConfig), Failure> {
    let path: PathBuf = std::env::args_os()
        .nth(1)
        .unwrap_or_else(|| "conf/kisara.toml".into())
        .into();
    let config = Config::load_with_process_env(&path)
        .and_then(|config| config.resolve_for(role))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((path, config))
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
///
/// # Errors
///
/// An unreadable CA file, or no relay reachable.
pub async fn relay_client(
    node: &NodeId,
    relays: &[AgentRelay],
) -> Result<Option<Arc<dyn Tunnel>>, Failure> {
    if relays.is_empty() {
        return Ok(None);
    }
    let mut builder = TunnelClient::builder(node.as_str());
    for relay in relays {
        builder = match &relay.tls_ca {
            Some(ca) => {
                let server_name = relay.tls_server_name().unwrap_or("localhost");
                let tls = client_tls(ca, server_name)?;
                builder.relay_with_tls(&relay.name, &relay.address, relay.token.clone(), tls)
            }
            None => builder.relay(&relay.name, &relay.address, relay.token.clone()),
        };
    }
    Ok(Some(Arc::new(builder.connect().await?)))
}

/// TLS to a relay whose certificate a CA in the PEM file `ca` signed.
fn client_tls(ca: &Path, server_name: &str) -> Result<ClientTls, Failure> {
    Ok(ClientTls::new(client_config(ca, None)?, server_name)?)
}

/// The relay's TLS from `[relay] tls_cert` / `tls_key` (PEM files).
///
/// # Errors
///
/// An unreadable or malformed file, or a key that does not fit.
pub fn relay_tls(cert: &Path, key: &Path) -> Result<RelayTls, Failure> {
    Ok(RelayTls::new(server_config(cert, key, None)?))
}

/// The agent's TLS for a `wss://` server (`[agent] server_ca`, and
/// `tls_cert` / `tls_key` for mutual TLS), or `None` without a CA.
///
/// # Errors
///
/// An unreadable or malformed file.
pub fn agent_tls(agent: &AgentConfig) -> Result<Option<Arc<rustls::ClientConfig>>, Failure> {
    agent
        .server_ca
        .as_deref()
        .map(|ca| client_config(ca, agent.client_cert()))
        .transpose()
        .map_err(Into::into)
}

/// The HTTP API (bearer tokens from `[server] api_tokens`, Prometheus
/// metrics at `/metrics`) with the agent endpoint beside it, agents
/// admitted by `[server] token`. Call it once per process: it installs the
/// metrics recorder.
///
/// # Errors
///
/// An empty agent token, or a metrics recorder already installed.
pub fn api_router(
    server: &Server,
    config: &ServerConfig,
) -> Result<(axum::Router, AgentGateway), Failure> {
    // A link silent for three heartbeats is dead: fit them in the timeout.
    let heartbeat = config.heartbeat_timeout() / 3;
    let gateway = AgentGateway::new(
        server.clone(),
        config.token.clone(),
        LinkOptions::default().with_heartbeat(heartbeat),
    )?;
    // The process-wide recorder the cluster's metrics go to, rendered at
    // GET /metrics.
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
    let api = ApiBuilder::new(server.clone(), Arc::new(config.api_authenticator()))
        .with_metrics(move || metrics.render())
        .build();
    Ok((api.merge(agent_link(gateway.clone())), gateway))
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
