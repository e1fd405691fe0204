//! The Kisara relay: the public side of the tunnel. Node clients dial it and
//! place exposures on its public ports.
//!
//! Run: `cargo run -p kisara-examples --bin relay -- conf/kisara-conf.toml`
//! (the `[relay]` section: `listen`, `public_host`, `port_range`, `token`;
//! `KISARA_RELAY__TOKEN` and the other `KISARA_` variables override it).
//! Stops on Ctrl-C, closing every public port.

// A command-line tool reports on its terminal.
#![allow(clippy::print_stderr)]

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use kisara_core::config::{Config, Role};
use kisara_core::lifecycle::Lifecycle;
use kisara_tunnel::{Relay, RelayOptions};

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KISARA_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let path = std::env::args_os()
        .nth(1)
        .unwrap_or_else(|| "conf/kisara-conf.toml".into());
    let config = match Config::load_with_process_env(&path).and_then(|c| c.resolve_for(Role::Relay))
    {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{}: {error}", path.to_string_lossy());
            return ExitCode::FAILURE;
        }
    };
    let mut options = RelayOptions::from_config(&config.relay);
    if let Some((cert, key)) = config.relay.tls() {
        match kisara_examples::relay_tls(cert, key) {
            Ok(tls) => options = options.with_tls(tls),
            Err(error) => {
                eprintln!("relay: {error}");
                return ExitCode::FAILURE;
            }
        }
    }
    let relay = match Relay::bind(options).await {
        Ok(relay) => relay,
        Err(error) => {
            eprintln!("relay: {error}");
            return ExitCode::FAILURE;
        }
    };
    let handle = Lifecycle::new(Arc::new(relay)).spawn();
    let outcome = tokio::select! {
        _ = tokio::signal::ctrl_c() => handle.stop(Duration::from_secs(5)).await,
        outcome = handle.wait() => outcome,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("relay: {error}");
            ExitCode::FAILURE
        }
    }
}
