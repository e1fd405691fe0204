//! The Kisara node agent (the Go original's "client"): serves the local
//! Docker engine to the server over a link it dials, and exposes container
//! ports through the relays in `[agent] relays`.
//!
//! Run: `cargo run -p kisara-examples --bin agent -- conf/kisara.toml`
//! (`[agent]`: `server_url`, `token`, `state_dir`, `node_id`,
//! `max_containers`, `bandwidth_in`/`_out`, `docker_host`, `relays`,
//! `sidecar_binary` for containers on overlay networks;
//! `[containers]` defaults). Stopping or killing the agent stops no
//! container; a restarted agent re-registers everything.

use std::sync::Arc;

use clap::Parser;
use kisara_cluster::link::Agent;
use kisara_cluster::load_or_create_node_id;
use kisara_core::config::Role;
use kisara_docker::sidecar::{SidecarTunnel, sidecar_image};
use kisara_docker::{DockerOptions, DockerRuntime, node_capacity};
use kisara_examples::{
    ConfigFile, Failure, ServiceArgs, agent_tls, exit_on_failure, relay_client, shutdown_signal,
};

/// The bridge network sidecars join so the host reaches them.
const SIDECAR_NETWORK: &str = "kisara-sidecars";

/// The Kisara node agent: serves the local Docker engine to the server
/// over a link it dials ([agent]) and exposes container ports through the
/// relays in [agent] relays. Stops on Ctrl-C or SIGTERM; no container
/// stops with it.
#[derive(Debug, Parser)]
#[command(name = env!("CARGO_BIN_NAME"), version)]
struct Args {
    #[command(flatten)]
    service: ServiceArgs,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    args.service.log.init("info");
    // Boxed: the agent's whole state would otherwise sit on the stack.
    exit_on_failure(Box::pin(run(&args.service.config))).await
}

async fn run(config: &ConfigFile) -> Result<(), Failure> {
    let config = config.load(Role::Agent)?;
    let agent_config = &config.agent;
    // Before anything else: a TLS setup that cannot work fails at once.
    let tls = agent_tls(agent_config)?;
    let options = DockerOptions::from_agent_config(agent_config, &config.containers);
    let runtime = DockerRuntime::connect(options).await?;
    let engine = runtime.clone();
    let node = load_or_create_node_id(&agent_config.state_dir, agent_config.node_id.as_deref())?;
    let capacity = node_capacity(agent_config);
    tracing::info!(%node, "node agent starting");
    let mut agent = Agent::new(node.clone(), capacity, Arc::new(runtime));
    if let Some(mut tunnel) = relay_client(&node, &agent_config.relays).await? {
        if let Some(binary) = &agent_config.sidecar_binary {
            let image = sidecar_image(&engine, binary).await?;
            let sidecars = SidecarTunnel::new(engine, tunnel, image, SIDECAR_NETWORK);
            let pruned = sidecars.prune().await?;
            if !pruned.is_empty() {
                tracing::info!(?pruned, "removed sidecars of containers that are gone");
            }
            tunnel = Arc::new(sidecars);
        }
        agent = agent.with_tunnel(tunnel);
    }
    if let Some(tls) = tls {
        agent = agent.with_tls(tls);
    }
    agent
        .run(
            &agent_config.server_url,
            &agent_config.token,
            shutdown_signal(),
        )
        .await?;
    Ok(())
}
