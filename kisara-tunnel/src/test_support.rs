//! Helpers for the unit tests.

use tokio::net::{TcpListener, TcpStream};

/// A connected loopback TCP pair: the dialed end, then the accepted one.
pub(crate) async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dialed = TcpStream::connect(listener.local_addr().unwrap());
    let (dialed, accepted) = tokio::join!(dialed, listener.accept());
    (dialed.unwrap(), accepted.unwrap().0)
}
