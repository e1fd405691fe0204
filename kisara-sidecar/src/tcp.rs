//! TCP: a thread per connection and direction, half-closes passed through.

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections forever, relaying each to `target`.
pub(crate) fn serve(listener: &TcpListener, target: SocketAddr) -> ! {
    loop {
        match listener.accept() {
            Ok((client, peer)) => {
                if let Err(e) = crate::spawn(move || relay(&client, peer, target)) {
                    log!("tcp {peer} -> {target}: cannot start a thread: {e}");
                }
            }
            Err(e) => {
                log!("tcp accept for {target}: {e}");
                // Out of descriptors or memory: back off instead of spinning.
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn relay(client: &TcpStream, peer: SocketAddr, target: SocketAddr) {
    let upstream = match TcpStream::connect_timeout(&target, CONNECT_TIMEOUT) {
        Ok(upstream) => upstream,
        Err(e) => {
            log!("tcp {peer} -> {target}: {e}");
            return;
        }
    };
    for stream in [client, &upstream] {
        // Interactive traffic (terminals, games) must not wait for Nagle.
        let _ = stream.set_nodelay(true);
    }
    let (up, down) = thread::scope(|scope| {
        let down = thread::Builder::new()
            .stack_size(crate::STACK_SIZE)
            .spawn_scoped(scope, || pipe(&upstream, client));
        match down {
            Ok(down) => (
                pipe(client, &upstream),
                down.join()
                    .unwrap_or_else(|_| Err(io::Error::other("panicked"))),
            ),
            Err(e) => (Err(e), Ok(0)),
        }
    });
    match (up, down) {
        (Ok(up), Ok(down)) => log!("tcp {peer} -> {target}: closed, {up} bytes up, {down} down"),
        (up, down) => log!("tcp {peer} -> {target}: up {up:?}, down {down:?}"),
    }
}

/// Copies `from` to `to` until `from` ends, then passes the half-close on
/// (the other direction may still flow); an error closes both directions
/// of both streams, so the other copy ends too.
fn pipe(from: &TcpStream, to: &TcpStream) -> io::Result<u64> {
    let copied = io::copy(&mut &*from, &mut &*to);
    if copied.is_ok() {
        let _ = to.shutdown(Shutdown::Write);
    } else {
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    }
    copied
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::Ipv4Addr;

    use super::*;

    /// A forwarder on loopback to `target`; returns its address.
    fn forwarder(target: SocketAddr) -> SocketAddr {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let address = listener.local_addr().unwrap();
        thread::spawn(move || serve(&listener, target));
        address
    }

    #[test]
    fn data_and_half_closes_pass_both_ways() {
        // Answers only after the client's half-close: proves it passed.
        let upstream = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let target = upstream.local_addr().unwrap();
        thread::spawn(move || {
            for stream in upstream.incoming() {
                let mut stream = stream.unwrap();
                let mut request = Vec::new();
                stream.read_to_end(&mut request).unwrap();
                write!(stream, "got {} bytes", request.len()).unwrap();
            }
        });
        let address = forwarder(target);
        for size in [0, 5, 3 << 20] {
            let mut client = TcpStream::connect(address).unwrap();
            let body = vec![b'k'; size];
            client.write_all(&body).unwrap();
            client.shutdown(Shutdown::Write).unwrap();
            let mut answer = String::new();
            client.read_to_string(&mut answer).unwrap();
            assert_eq!(answer, format!("got {size} bytes"));
        }
    }

    #[test]
    fn an_unreachable_target_closes_the_client() {
        let closed = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let target = closed.local_addr().unwrap();
        drop(closed);
        let mut client = TcpStream::connect(forwarder(target)).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buffer = [0; 1];
        assert_eq!(client.read(&mut buffer).unwrap(), 0);
    }
}
