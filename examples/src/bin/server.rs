//! The Kisara server: the cluster's API and the endpoint node agents dial.
//!
//! Run: `cargo run -p kisara-examples --bin server -- conf/kisara.toml`
//! (`[server]`: `listen`, `token` for agents, `api_tokens` for API callers,
//! `heartbeat_timeout_secs`; `[network] pools`). Nodes appear as their
//! agents link; everything is rebuilt from Docker labels after a restart.

use clap::Parser;
use kisara_cluster::Server;
use kisara_core::config::Role;
use kisara_examples::{
    ConfigFile, Failure, ServiceArgs, api_router, exit_on_failure, serve_http, subnet_allocator,
};

/// The Kisara server: the cluster's HTTP API and the endpoint node agents
/// dial ([server], [network] pools). Stops on Ctrl-C or SIGTERM.
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
    let config = file.load(Role::Server)?;
    let server = Server::builder(subnet_allocator(&config.network)?).build();
    let (router, _) = api_router(&server, &config, &file.path).await?;
    serve_http(&config.server, router).await
}
