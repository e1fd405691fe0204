//! The all-in-one dev deployment on the local Docker engine: a relay, the
//! server (HTTP API and agent endpoint) and the local engine as its first
//! node, in one process. More agents may join it.
//!
//! Run: `./scripts/dev` (starts a Docker engine when none answers), or
//! `cargo run -p kisara-examples --bin dev -- conf/dev.toml`. It builds a
//! small busybox demo image locally (nothing is pulled), launches a demo
//! container serving HTTP with its port exposed through the relay, and
//! prints its public address and how to use the API.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use kisara_cluster::{NetworkRequest, Server, load_or_create_node_id};
use kisara_core::ErrorKind;
use kisara_core::config::Role;
use kisara_core::model::{
    ContainerId, ContainerSpec, ContainerState, Exposure, ImageRef, LaunchRequest,
};
use kisara_docker::{DockerOptions, DockerRuntime, node_capacity};
use kisara_examples::{
    ConfigFile, Failure, ServiceArgs, api_router, exit_on_failure, serve_http, subnet_allocator,
};
use kisara_tunnel::{Relay, RelayOptions, TunnelClient};

/// The all-in-one dev deployment on the local Docker engine: a relay, the
/// server and the local engine as its first node, in one process, with a
/// demo container exposed through the relay. Prints how to use it on
/// stdout; logs go to stderr. Stops on Ctrl-C or SIGTERM.
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
    exit_on_failure(run(&args.service.config)).await
}

async fn run(file: &ConfigFile) -> Result<(), Failure> {
    let config = file.load(Role::Dev)?;
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
    let (router, _) = api_router(&server, &config, &file.path).await?;
    let banner = Banner {
        config: file.path.display().to_string(),
        node: node.to_string(),
        api: config.server.listen.to_string(),
        token: config
            .server
            .api_tokens
            .first()
            .map(|t| t.token.expose().to_owned()),
        relay: relay.local_addr().to_string(),
        image: image.to_string(),
        demo,
    };
    tracing::info!(%node, "dev deployment up; how to use it is printed on stdout");
    // Ignored: a closed stdout (`dev | head`) must not stop the deployment.
    let _ = std::io::stdout()
        .lock()
        .write_all(banner.to_string().as_bytes());
    serve_http(&config.server, router).await?;
    relay.stop().await;
    Ok(())
}

/// The demo container's name (and its network's).
const DEMO: &str = "kisara-demo";

/// Starts the demo container, a busybox httpd on its own network with its
/// port exposed, unless it survived from an earlier run; answers its
/// exposure.
async fn demo_container(server: &Server, image: &ImageRef) -> Result<Exposure, Failure> {
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
    Ok(exposure)
}

/// What `dev` prints once it is up: plain lines on stdout for a person to
/// read and copy from, apart from the log records on stderr.
struct Banner {
    config: String,
    node: String,
    /// The API's `host:port`.
    api: String,
    /// The first `[server] api_tokens` token.
    token: Option<String>,
    relay: String,
    image: String,
    demo: Exposure,
}

impl std::fmt::Display for Banner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            config,
            node,
            api,
            relay,
            image,
            demo,
            ..
        } = self;
        let token = self
            .token
            .as_deref()
            .unwrap_or("<a token from [server] api_tokens>");
        let public = format!("{}:{}", demo.public.host, demo.public.port);
        let auth =
            format!("-H 'Authorization: Bearer {token}' -H 'Content-Type: application/json'");
        writeln!(f, "Kisara dev deployment up ({config}, node {node})")?;
        writeln!(f, "API:        http://{api}")?;
        writeln!(f, "API token:  {token}  (send it as Authorization: Bearer)")?;
        writeln!(f, "OpenAPI:    curl {auth} http://{api}/v1/openapi.json")?;
        writeln!(f, "Relay:      {relay}")?;
        writeln!(
            f,
            "Demo:       {DEMO} serves HTTP at http://{public}/hostname (through the relay)"
        )?;
        writeln!(
            f,
            "Demo inside: {} ({}, container side)",
            demo.target, demo.protocol
        )?;
        writeln!(f, "Launch your own:")?;
        writeln!(
            f,
            "  curl {auth} -d '{{\"name\": \"team-1\"}}' http://{api}/v1/networks"
        )?;
        writeln!(
            f,
            "  curl {auth} -d '{{\"container\": {{\"image\": \"{image}\", \"owner\": \"team-1\", \
             \"networks\": [\"team-1\"], \"ports\": [\"8080/tcp\"], \
             \"command\": [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/etc\"]}}}}' \
             http://{api}/v1/containers"
        )?;
        writeln!(f, "  curl http://<exposures[0].public host:port>/hostname")
    }
}
