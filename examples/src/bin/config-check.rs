//! Checks a Kisara config file and prints the configuration it resolves to,
//! or every problem in it.
//!
//! Run: `cargo run -p kisara-examples --bin config-check -- conf/kisara-conf.toml`
//! (the path defaults to `conf/kisara-conf.toml`, where the Go original kept
//! it). `KISARA_<SECTION>__<KEY>` environment variables override the file.
//! Exits 0 when the config is usable, 1 when it is not.

// A command-line tool reports on its terminal.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;

use kisara_core::config::Config;

fn main() -> ExitCode {
    kisara_examples::init_logging("warn");
    let path = std::env::args_os()
        .nth(1)
        .unwrap_or_else(|| "conf/kisara-conf.toml".into());
    let resolved = Config::load_with_process_env(&path).and_then(|config| config.resolve());
    match resolved {
        Ok(resolved) => {
            println!("{}: ok\n{resolved:#?}", path.to_string_lossy());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("{}: {error}", path.to_string_lossy());
            ExitCode::FAILURE
        }
    }
}
