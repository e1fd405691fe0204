//! The all-in-one dev deployment on the local Docker engine: a relay, the
//! server (HTTP API and agent endpoint) and the local engine as its first
//! node, in one process. More agents may join it.
//!
//! Run: `./scripts/dev` (starts a Docker engine when none answers), or
//! `cargo run -p kisara-examples --bin dev -- conf/dev.toml`. It builds a
//! small busybox demo image locally (nothing is pulled) and prints how to
//! launch a container and reach it through the relay.

use std::sync::Arc;

use kisara_core::cluster::{Server, load_or_create_node_id};
use kisara_core::config::Role;
use kisara_core::model::NodeCapacity;
use kisara_docker::{DockerOptions, DockerRuntime};
use kisara_examples::{
    Failure, api_router, exit_on_failure, init_logging, load_config, serve_http, subnet_allocator,
};
use kisara_tunnel::{Relay, RelayOptions, TunnelClient};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    init_logging("info");
    exit_on_failure(run()).await
}

async fn run() -> Result<(), Failure> {
    let (path, config) = load_config(Role::Dev)?;
    if config.relay.tls().is_some() {
        tracing::warn!(
            "the dev deployment serves its relay without TLS; run the relay binary for TLS"
        );
    }
    let relay = Relay::bind(RelayOptions::from_config(&config.relay)).await?;

    let agent = &config.agent;
    let runtime = DockerRuntime::connect(DockerOptions {
        host: agent.docker_host.clone(),
        defaults: config.containers.clone(),
        ..DockerOptions::default()
    })
    .await?;
    let image = kisara_docker::testing::test_image(&runtime).await;
    let node = load_or_create_node_id(&agent.state_dir, agent.node_id.as_deref())?;
    let tunnel = TunnelClient::builder(node.as_str())
        .relay(
            "local",
            relay.local_addr().to_string(),
            config.relay.token.clone(),
        )
        .connect()
        .await?;

    let server = Server::builder(subnet_allocator(&config.network)?)
        .with_tunnel(Arc::new(tunnel))
        .build();
    let capacity = NodeCapacity {
        max_containers: agent.max_containers,
        bandwidth_in: agent.bandwidth_in,
        bandwidth_out: agent.bandwidth_out,
    };
    server
        .connect_node(node.clone(), capacity, Arc::new(runtime))
        .await?;
    let (router, _) = api_router(&server, &config.server)?;
    let listen = config.server.listen;
    let token = config
        .server
        .api_tokens
        .first()
        .map_or("<an api token>", |t| t.token.expose());
    let auth = format!("-H 'Authorization: Bearer {token}' -H 'Content-Type: application/json'");
    tracing::info!(
        config = %path.display(),
        %node,
        relay = %relay.local_addr(),
        "dev deployment up; try:\n  \
         curl {auth} -d '{{\"name\": \"team-1\"}}' http://{listen}/v1/networks\n  \
         curl {auth} -d '{{\"container\": {{\"image\": \"{image}\", \"owner\": \"team-1\", \
         \"networks\": [\"team-1\"], \"ports\": [\"8080/tcp\"], \
         \"command\": [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/etc\"]}}}}' \
         http://{listen}/v1/containers\n  \
         curl http://<exposures[0].public host:port>/hostname"
    );
    serve_http(listen, router).await?;
    relay.stop().await;
    Ok(())
}
