//! The Kisara relay: the public side of the tunnel. Node clients dial it and
//! place exposures on its public ports.
//!
//! Run: `cargo run -p kisara-examples --bin relay -- conf/kisara.toml`
//! (the `[relay]` section: `listen`, `public_host`, `port_range`, `token`,
//! optional `tls_cert` / `tls_key`, and `metrics_listen` to serve
//! Prometheus metrics at `GET /metrics`; `KISARA_RELAY__TOKEN` and the
//! other `KISARA_` variables override it). Stops on Ctrl-C or SIGTERM,
//! closing every public port.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use kisara_core::config::Role;
use kisara_core::lifecycle::Lifecycle;
use kisara_examples::{
    ConfigFile, Failure, ServiceArgs, exit_on_failure, relay_tls, serve_metrics, shutdown_signal,
};
use kisara_tunnel::{Relay, RelayOptions};

/// The Kisara relay: the public side of the tunnel, where node agents place
/// exposures of container ports ([relay]). Stops on Ctrl-C or SIGTERM.
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

async fn run(config: &ConfigFile) -> Result<(), Failure> {
    let config = config.load(Role::Relay)?;
    if let Some(listen) = config.relay.metrics_listen {
        serve_metrics(listen).await?;
    }
    let mut options = RelayOptions::from_config(&config.relay);
    if let Some((cert, key)) = config.relay.tls() {
        options = options.with_tls(relay_tls(cert, key)?);
    }
    let relay = Relay::bind(options).await?;
    let handle = Lifecycle::new(Arc::new(relay)).spawn();
    tokio::select! {
        () = shutdown_signal() => handle.stop(Duration::from_secs(5)).await?,
        outcome = handle.wait() => outcome?,
    }
    Ok(())
}
