//! The Kisara server with its SSH gateway: the cluster's API and agent
//! endpoint, and SSH logins into the containers, all through one session
//! engine (one policy, one audit log, one recording store).
//!
//! Run: `cargo run -p kisara-examples --bin ssh-gateway -- conf/kisara.toml
//! --auth-webhook http://127.0.0.1:8080` (`[ssh]`: `listen`, `host_key_dir`,
//! `max_auth_attempts`, `env_allow`, `idle_timeout_secs`,
//! `login_grace_secs`; `[server]`, `[sessions]`, `[policy]` as for the
//! server). Users log in as `user` (their team's only container) or
//! `user+container`.

use std::sync::Arc;

use clap::Parser;
use kisara_cluster::Server;
use kisara_core::config::Role;
use kisara_examples::{
    ConfigFile, Failure, ServiceArgs, api_router_with, exit_on_failure, serve_http, session_engine,
    subnet_allocator,
};
use kisara_ssh::SshGateway;
use kisara_webhook::{ClientOptions, WebhookAuthenticator};

/// The Kisara server with its SSH gateway ([server], [ssh], [sessions],
/// [policy]). Stops on Ctrl-C or SIGTERM.
#[derive(Debug, Parser)]
#[command(name = env!("CARGO_BIN_NAME"), version)]
struct Args {
    #[command(flatten)]
    service: ServiceArgs,
    /// The authentication webhook SSH logins are checked by
    /// (ContainerSSH's `/password` and `/pubkey`).
    #[arg(long, value_name = "URL", env = "KISARA_SSH_AUTH_WEBHOOK")]
    auth_webhook: String,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    args.service.log.init("info");
    exit_on_failure(run(&args.service.config, &args.auth_webhook)).await
}

async fn run(file: &ConfigFile, auth_webhook: &str) -> Result<(), Failure> {
    let config = file.load(Role::Server)?;
    let authenticator = WebhookAuthenticator::new(auth_webhook, ClientOptions::default())
        .map_err(|e| format!("--auth-webhook {auth_webhook}: {e}"))?;
    let server = Server::builder(subnet_allocator(&config.network)?).build();
    let sessions = session_engine(&server, &config, &file.path).await?;
    let ssh = &config.ssh;
    let gateway = SshGateway::builder(sessions.clone(), Arc::new(authenticator))
        .host_key_dir(&ssh.host_key_dir)
        .max_auth_attempts(ssh.max_auth_attempts as usize)
        .env_allow(ssh.env_allow.iter().cloned())
        .idle_timeout(ssh.idle_timeout(&config.sessions))
        .login_grace(ssh.login_grace())
        .build()?;
    let listener = tokio::net::TcpListener::bind(ssh.listen)
        .await
        .map_err(|e| format!("ssh.listen {}: {e}", ssh.listen))?;
    let (router, _) = api_router_with(&server, &config, sessions)?;
    // The API stops gracefully on Ctrl-C or SIGTERM, the gateway with it.
    tokio::select! {
        served = serve_http(&config.server, router) => served,
        served = gateway.serve(listener) => served.map_err(Into::into),
    }
}
