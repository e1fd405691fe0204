//! The Kisara server: the cluster's API and the endpoint node agents dial.
//!
//! Run: `cargo run -p kisara-examples --bin server -- conf/kisara.toml`
//! (`[server]`: `listen`, `token` for agents, `api_tokens` for API callers,
//! `heartbeat_timeout_secs`; `[network] pools`). Nodes appear as their
//! agents link; everything is rebuilt from Docker labels after a restart.

use kisara_cluster::Server;
use kisara_core::config::Role;
use kisara_examples::{
    Failure, api_router, exit_on_failure, init_logging, load_config, serve_http, subnet_allocator,
};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    init_logging("info");
    exit_on_failure(run()).await
}

async fn run() -> Result<(), Failure> {
    let (_, config) = load_config(Role::Server)?;
    let server = Server::builder(subnet_allocator(&config.network)?).build();
    let (router, _) = api_router(&server, &config.server)?;
    serve_http(&config.server, router).await
}
