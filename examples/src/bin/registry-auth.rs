//! The token service of a private Docker registry: `/token` for the
//! registry's `auth.token.realm`, `/notifications` for its `notifications`
//! endpoint, and the admin API under `/admin` (projects, members, the image
//! index, keys). Users come from a kisara-webhook users file.
//!
//! Run: `cargo run -p kisara-examples --bin registry-auth -- registry-auth.toml`
//! (`--check` validates the config and exits). Stops on Ctrl-C or SIGTERM.

// A command-line tool reports on its terminal.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use kisara_examples::{Failure, LogOptions, shutdown_signal};
use kisara_registry::config::RegistryAuthConfig;
use kisara_webhook::{UsersFile, WebhookServer};

/// A Docker Registry token service with projects, roles and notifications.
#[derive(Debug, Parser)]
#[command(
    name = env!("CARGO_BIN_NAME"),
    version,
    after_help = "Exit status: 0 ok, 1 failure, 2 bad arguments."
)]
struct Args {
    /// The config file (TOML).
    #[arg(value_name = "CONFIG")]
    config: PathBuf,
    /// Validates the config and the users file and exits.
    #[arg(long)]
    check: bool,
    #[command(flatten)]
    log: LogOptions,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    args.log.init("info");
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("registry-auth: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Failure> {
    let config = RegistryAuthConfig::load(&args.config)?;
    let users = UsersFile::load(&config.users)?;
    if args.check {
        println!("{}: ok, {} user(s)", args.config.display(), users.len());
        return Ok(());
    }
    let (app, bundle) = config.build(Arc::new(users))?;
    let server = WebhookServer::bind(config.listen, app, None).await?;
    tracing::info!(
        address = %server.local_addr(),
        rootcertbundle = %bundle.display(),
        "registry token service listening"
    );
    server.serve(shutdown_signal()).await;
    Ok(())
}
