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

use kisara_examples::{Failure, init_logging, shutdown_signal};
use kisara_tls::ServerTls;
use kisara_webhook::{
    BackendHandler, ServerOptions, UsersFile, WebhookServer, hash_password, router,
};

const USAGE: &str = "\
usage: webhook-server [--check] [--listen ADDR] [--tls-cert PEM --tls-key PEM [--client-ca PEM]] USERS.toml
       webhook-server hash-password    (reads the password from stdin)

Answers /password, /pubkey, /authz, /config and /session-ended from USERS.toml.
--check validates the file and exits. SIGHUP reloads it.

Exit status: 0 ok, 1 failure, 2 bad arguments.";

/// The command line, parsed.
struct Args {
    users: PathBuf,
    check: bool,
    listen: SocketAddr,
    tls: Option<ServerTls>,
}

fn parse_args(args: &[String]) -> Result<Args, String> {
    let (mut users, mut check, mut listen) = (None, false, None);
    let (mut cert, mut key, mut client_ca) = (None, None, None);
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let mut value = |flag: &str| {
            rest.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match arg.as_str() {
            "--check" => check = true,
            "--listen" => {
                let text = value("--listen")?;
                listen = Some(
                    text.parse::<SocketAddr>()
                        .map_err(|e| format!("--listen {text:?}: {e}"))?,
                );
            }
            "--tls-cert" => cert = Some(PathBuf::from(value("--tls-cert")?)),
            "--tls-key" => key = Some(PathBuf::from(value("--tls-key")?)),
            "--client-ca" => client_ca = Some(PathBuf::from(value("--client-ca")?)),
            flag if flag.starts_with('-') => return Err(format!("unknown option {flag:?}")),
            path if users.is_none() => users = Some(PathBuf::from(path)),
            extra => return Err(format!("unexpected argument {extra:?}")),
        }
    }
    let tls = match (cert, key, client_ca) {
        (Some(cert), Some(key), client_ca) => Some(ServerTls {
            cert,
            key,
            client_ca,
            min_version: kisara_tls::TlsVersion::default(),
        }),
        (None, None, None) => None,
        _ => {
            return Err("--tls-cert and --tls-key go together (and --client-ca needs them)".into());
        }
    };
    Ok(Args {
        users: users.ok_or("no users file given")?,
        check,
        listen: listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8088))),
        tls,
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    init_logging("info");
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--help" | "-h") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some("hash-password") if args.len() == 1 => return print_hash(),
        _ => {}
    }
    let args = match parse_args(&args) {
        Ok(args) => args,
        Err(error) => {
            eprintln!("webhook-server: {error}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
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
    let users = UsersFile::load(&args.users)?;
    if args.check {
        println!("{}: ok, {} user(s)", args.users.display(), users.len());
        return Ok(());
    }
    let handler = BackendHandler::new(Arc::new(users.clone()), Arc::new(users.clone()));
    let app = router(Arc::new(handler), ServerOptions::default());
    let server = WebhookServer::bind(args.listen, app, args.tls).await?;
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
