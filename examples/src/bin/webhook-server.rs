//! A ContainerSSH-compatible auth and config webhook answering from a TOML
//! file of users (argon2 password hashes, SSH keys, roles, team, and each
//! user's session config): a platform without a user database of its own
//! points Kisara (or ContainerSSH) at it.
//!
//! Run: `cargo run -p kisara-examples --bin webhook-server -- conf/users.toml`
//! (`--listen ADDR`, default 127.0.0.1:8088; `--tls-cert`/`--tls-key`, and
//! `--client-ca` to require client certificates). `--check` validates the
//! file and exits; `hash-password` reads a password from stdin and prints
//! the hash for a user's `password` field. SIGHUP reloads the users file
//! (a bad file keeps the old users); certificates are re-read when their
//! files change. Stops on Ctrl-C or SIGTERM.

// A command-line tool reports on its terminal.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use kisara_examples::{Failure, LogOptions, shutdown_signal};
use kisara_tls::ServerTls;
use kisara_webhook::{
    BackendHandler, ServerOptions, UsersFile, WebhookServer, hash_password, router,
};

/// A ContainerSSH-compatible auth and config webhook: answers /password,
/// /pubkey, /authz, /config and /session-ended from USERS.toml. SIGHUP
/// reloads the file; Ctrl-C or SIGTERM stops it.
#[derive(Debug, Parser)]
#[command(
    name = env!("CARGO_BIN_NAME"),
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = "Exit status: 0 ok, 1 failure, 2 bad arguments."
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// The users file (argon2 password hashes, SSH keys, roles, team, each
    /// user's session config).
    #[arg(value_name = "USERS.toml", required = true)]
    users: Option<PathBuf>,
    /// Validates the users file and exits.
    #[arg(long)]
    check: bool,
    /// The address to serve on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8088")]
    listen: SocketAddr,
    /// Serves TLS with this PEM certificate chain (with --tls-key).
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Requires client certificates signed by a CA in this PEM file
    /// (mutual TLS; needs --tls-cert).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    client_ca: Option<PathBuf>,
    #[command(flatten)]
    log: LogOptions,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Reads a password from stdin and prints its hash, for a user's
    /// `password` field.
    HashPassword,
}

impl Args {
    fn tls(&self) -> Option<ServerTls> {
        Some(ServerTls {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            client_ca: self.client_ca.clone(),
            min_version: kisara_tls::TlsVersion::default(),
        })
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    args.log.init("info");
    if let Some(Command::HashPassword) = args.command {
        return print_hash();
    }
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("webhook-server: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Reads one line (the password) from stdin and prints its hash.
fn print_hash() -> ExitCode {
    let mut line = String::new();
    if let Err(e) = std::io::stdin().lock().read_line(&mut line) {
        eprintln!("webhook-server: cannot read the password: {e}");
        return ExitCode::FAILURE;
    }
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        eprintln!("webhook-server: the password is empty");
        return ExitCode::from(2);
    }
    match hash_password(password) {
        Ok(hash) => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("webhook-server: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Failure> {
    // Set: clap requires it unless a subcommand is given.
    let path = args.users.clone().ok_or("no users file given")?;
    let users = UsersFile::load(&path)?;
    if args.check {
        println!("{}: ok, {} user(s)", path.display(), users.len());
        return Ok(());
    }
    let handler = BackendHandler::new(Arc::new(users.clone()), Arc::new(users.clone()));
    let app = router(Arc::new(handler), ServerOptions::default());
    let server = WebhookServer::bind(args.listen, app, args.tls()).await?;
    tracing::info!(address = %server.local_addr(), users = users.len(), "webhook server listening");
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let tls = server.tls();
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            match users.reload() {
                Ok(count) => tracing::info!(users = count, "users file reloaded"),
                Err(error) => {
                    tracing::warn!(%error, "users file not reloaded; keeping the old users");
                }
            }
            if let Some(Err(error)) = tls.as_ref().map(|tls| tls.reload()) {
                tracing::warn!(%error, "TLS files not reloaded; keeping the old ones");
            }
        }
    });
    server.serve(shutdown_signal()).await;
    Ok(())
}
