#![doc = include_str!("../README.md")]

/// Writes one line to stderr (the container's log), prefixed with the
/// program's name; a failed write is ignored, there is nowhere else to say it.
macro_rules! log {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), "kisara-sidecar: {}", format_args!($($arg)*));
    }};
}

mod args;
mod tcp;
mod udp;

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::process::ExitCode;
use std::thread;

use args::{Command, Protocol};

/// Stack of every thread: they only copy through heap buffers or 8 KiB
/// ones, and a sidecar may hold thousands of them.
const STACK_SIZE: usize = 128 * 1024;

/// Starts a thread with [`STACK_SIZE`].
fn spawn<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<thread::JoinHandle<T>> {
    thread::Builder::new().stack_size(STACK_SIZE).spawn(work)
}

/// Ends the process when a serving thread panics, so a half-working sidecar
/// shows up as an exited container instead of silently dropping a port.
struct ExitOnPanic;

impl Drop for ExitOnPanic {
    fn drop(&mut self) {
        if thread::panicking() {
            std::process::exit(1);
        }
    }
}

enum Listener {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

fn main() -> ExitCode {
    let args = std::env::args_os().skip(1);
    let config = match args::parse(args.map(|a| a.to_string_lossy().into_owned())) {
        Ok(Command::Run(config)) => config,
        Ok(Command::Help) => {
            let _ = writeln!(std::io::stdout().lock(), "{}", args::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            log!("{message}\n{}", args::USAGE);
            return ExitCode::from(2);
        }
    };
    // Bind every port before serving any, so a port that cannot be bound
    // fails the start instead of leaving a partial sidecar.
    let mut listeners = Vec::with_capacity(config.forwards.len());
    for forward in &config.forwards {
        let address = SocketAddr::from((Ipv4Addr::UNSPECIFIED, forward.listen_port));
        let bound = match forward.protocol {
            Protocol::Tcp => TcpListener::bind(address).map(Listener::Tcp),
            Protocol::Udp => UdpSocket::bind(address).map(Listener::Udp),
        };
        match bound {
            Ok(listener) => listeners.push((listener, forward.target)),
            Err(e) => {
                log!("cannot listen on {address}/{}: {e}", forward.protocol);
                return ExitCode::FAILURE;
            }
        }
    }
    for (listener, target) in listeners {
        let udp_idle = config.udp_idle;
        let started = spawn(move || {
            let _guard = ExitOnPanic;
            match listener {
                Listener::Tcp(listener) => tcp::serve(&listener, target),
                Listener::Udp(socket) => udp::serve(socket, target, udp_idle),
            }
        });
        if let Err(e) = started {
            log!("cannot start a thread: {e}");
            return ExitCode::FAILURE;
        }
    }
    let forwards: Vec<String> = config.forwards.iter().map(ToString::to_string).collect();
    log!("forwarding {}", forwards.join(" "));
    loop {
        thread::park();
    }
}
