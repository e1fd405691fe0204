//! The all-in-one dev deployment on the local Docker engine: a relay, the
//! server (HTTP API and agent endpoint) and the local engine as its first
//! node, in one process. More agents may join it.
//!
//! Run: `./scripts/dev` (starts a Docker engine when none answers), or
//! `cargo run -p kisara-examples --bin dev -- conf/dev.toml`. It builds a
//! small busybox demo image locally (nothing is pulled), launches a demo
//! container serving HTTP with its port exposed through the relay, and
//! prints its public address and how to use the API.

use std::sync::Arc;
use std::time::Duration;

use kisara_cluster::{NetworkRequest, Server, load_or_create_node_id};
use kisara_core::ErrorKind;
use kisara_core::config::Role;
use kisara_core::model::{ContainerId, ContainerSpec, ContainerState, ImageRef, LaunchRequest};
use kisara_docker::{DockerOptions, DockerRuntime, node_capacity};
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
    let runtime =
        DockerRuntime::connect(DockerOptions::from_agent_config(agent, &config.containers)).await?;
    let image = kisara_docker::static_image::busybox_image(&runtime).await?;
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
    let capacity = node_capacity(agent);
    server
        .connect_node(node.clone(), capacity, Arc::new(runtime))
        .await?;
    let demo = demo_container(&server, &image).await?;
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
        "dev deployment up. The demo container {DEMO} serves HTTP at http://{demo}/hostname \
         (through the relay). Launch your own:\n  \
         curl {auth} -d '{{\"name\": \"team-1\"}}' http://{listen}/v1/networks\n  \
         curl {auth} -d '{{\"container\": {{\"image\": \"{image}\", \"owner\": \"team-1\", \
         \"networks\": [\"team-1\"], \"ports\": [\"8080/tcp\"], \
         \"command\": [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/etc\"]}}}}' \
         http://{listen}/v1/containers\n  \
         curl http://<exposures[0].public host:port>/hostname\n\
         The API's OpenAPI document: curl {auth} http://{listen}/v1/openapi.json"
    );
    serve_http(&config.server, router).await?;
    relay.stop().await;
    Ok(())
}

/// The demo container's name (and its network's).
const DEMO: &str = "kisara-demo";

/// Starts the demo container, a busybox httpd on its own network with its
/// port exposed, unless it survived from an earlier run; answers its public
/// address.
async fn demo_container(server: &Server, image: &ImageRef) -> Result<String, Failure> {
    let demo = ContainerId::new(DEMO);
    let running = match server.inspect(&demo).await {
        Ok((_, info)) => info.state == ContainerState::Running,
        Err(error) if error.kind() == ErrorKind::NotFound => false,
        Err(error) => return Err(error.into()),
    };
    if !running {
        // A stopped leftover is replaced.
        server.remove(&demo).await?;
        let networks = server.list_networks().await?;
        if !networks.iter().any(|(_, network)| network.name == DEMO) {
            server.create_network(&NetworkRequest::new(DEMO)).await?;
        }
        let mut spec = ContainerSpec::new(image.clone());
        spec.name = Some(DEMO.to_owned());
        spec.owner = Some("demo".to_owned());
        spec.networks = vec![DEMO.to_owned()];
        spec.ports = vec!["8080/tcp".parse()?];
        spec.command = Some(
            ["httpd", "-f", "-p", "8080", "-h", "/etc"]
                .map(str::to_owned)
                .to_vec(),
        );
        server
            .launch_container(LaunchRequest::new(spec), Duration::from_secs(60))
            .await?;
    }
    let exposure = server
        .exposures(&demo)
        .await?
        .into_iter()
        .next()
        .ok_or("the demo container has no exposure")?;
    Ok(format!("{}:{}", exposure.public.host, exposure.public.port))
}
