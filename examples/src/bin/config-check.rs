//! Checks a Kisara config file and prints the configuration it resolves to,
//! or every problem in it.
//!
//! Run: `cargo run -p kisara-examples --bin config-check -- conf/kisara.toml`
//! (the path defaults to `conf/kisara.toml`, the file the `server`, `agent`
//! and `relay` examples read; the Go original's `conf/kisara-conf.toml`
//! loads too). `KISARA_<SECTION>__<KEY>` environment variables override the
//! file. Exits 0 when the config is usable, 1 when it is not, 2 on bad
//! arguments.

// A command-line tool reports on its terminal.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::{ErrorKind, Write};
use std::process::ExitCode;

use clap::Parser;
use kisara_core::config::Config;
use kisara_examples::{ConfigFile, LogOptions};

/// Checks a Kisara config file: loads CONFIG, applies
/// KISARA_<SECTION>__<KEY> environment overrides, checks every section and
/// prints the resolved configuration (secrets redacted), or every problem
/// at once.
#[derive(Debug, Parser)]
#[command(
    name = env!("CARGO_BIN_NAME"),
    version,
    after_help = "Exit status: 0 usable, 1 not usable, 2 bad arguments."
)]
struct Args {
    #[command(flatten)]
    config: ConfigFile,
    #[command(flatten)]
    log: LogOptions,
}

fn main() -> ExitCode {
    let args = Args::parse();
    args.log.init("warn");
    let path = &args.config.path;
    let resolved = Config::load_with_process_env(path).and_then(|config| config.resolve());
    match resolved {
        Ok(resolved) => report(
            ExitCode::SUCCESS,
            &format!("{}: ok\n{resolved:#?}", path.display()),
        ),
        Err(error) => {
            eprintln!("{}: {error}", path.display());
            ExitCode::FAILURE
        }
    }
}
/// Prints `text` and exits with `status`. A reader that went away early
/// (`config-check | head`) is no failure of the check; any other write
/// error is reported.
fn report(status: ExitCode, text: &str) -> ExitCode {
    match writeln!(std::io::stdout().lock(), "{text}") {
        Ok(()) => status,
        Err(e) if e.kind() == ErrorKind::BrokenPipe => status,
        Err(e) => {
            eprintln!("config-check: cannot write to stdout: {e}");
            ExitCode::FAILURE
        }
    }
}
