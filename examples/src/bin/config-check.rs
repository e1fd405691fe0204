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

use std::ffi::OsString;
use std::io::{ErrorKind, Write};
use std::process::ExitCode;

use kisara_core::config::Config;

/// The file checked when no path is given.
const DEFAULT_PATH: &str = "conf/kisara.toml";

const USAGE: &str = "\
usage: config-check [CONFIG]

Loads CONFIG (default conf/kisara.toml; the Go original's kisara-conf.toml
loads too), applies KISARA_<SECTION>__<KEY> environment overrides, checks
every section and prints the resolved configuration (secrets redacted), or
every problem at once.

Exit status: 0 usable, 1 not usable, 2 bad arguments.";

fn main() -> ExitCode {
    kisara_examples::init_logging("warn");
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let path = match args.as_slice() {
        [] => OsString::from(DEFAULT_PATH),
        [flag] if flag == "--help" || flag == "-h" => {
            return report(ExitCode::SUCCESS, USAGE);
        }
        // A path starting with `-` is a mistyped flag, not a file: say so.
        [arg] if !arg.to_string_lossy().starts_with('-') => arg.clone(),
        _ => {
            let args: Vec<_> = args.iter().map(|arg| arg.to_string_lossy()).collect();
            eprintln!(
                "config-check: unexpected arguments {args:?}; give one config file\n\n{USAGE}"
            );
            return ExitCode::from(2);
        }
    };
    let resolved = Config::load_with_process_env(&path).and_then(|config| config.resolve());
    match resolved {
        Ok(resolved) => report(
            ExitCode::SUCCESS,
            &format!("{}: ok\n{resolved:#?}", path.to_string_lossy()),
        ),
        Err(error) => {
            eprintln!("{}: {error}", path.to_string_lossy());
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
