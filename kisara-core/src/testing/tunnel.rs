//! Conformance cases for [`Tunnel`].
//!
//! The cases run their own echo servers on `127.0.0.1` and reach exposures
//! at the public addresses the tunnel reports, so the fixture's relays must
//! listen on the loopback interface.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use super::{Fixture, Outcome, random_bytes, suite, unique_name};
use crate::model::{ExposeRequest, Exposure, ExposureId, LabelFilter, Protocol};
use crate::{ErrorKind, Tunnel};

/// How long a case waits for bytes to come back.
const WAIT: Duration = Duration::from_secs(20);

impl Fixture for Arc<dyn Tunnel> {
    async fn cleanup(&self) {
        if let Ok(exposures) = self.list(&LabelFilter::all().with_key(RUN_LABEL)).await {
            for exposure in exposures {
                let _ = self.withdraw(&exposure.id).await;
            }
        }
    }
}

/// The label on every exposure a case makes, for cleanup.
pub const RUN_LABEL: &str = "kisara-conformance";

suite!(all, "Tunnel", CASES: Arc<dyn Tunnel>:
    tcp_bytes_round_trip,
    many_visitors_at_once,
    a_taken_public_port_conflicts_naming_it,
    withdraw_closes_the_port_and_is_idempotent,
    withdrawing_one_exposure_leaves_the_others,
    list_filters_by_labels,
    connection_limit_refuses_extra_visitors,
    udp_round_trip_or_not_supported,
);

/// A TCP echo server on loopback; runs until the test's runtime ends.
pub async fn tcp_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    address
}

fn request(target: SocketAddr, protocol: Protocol) -> ExposeRequest {
    let mut request = ExposeRequest::new(target, protocol);
    request.labels.insert(RUN_LABEL.into(), unique_name("run"));
    request
}

async fn connect(exposure: &Exposure) -> std::io::Result<TcpStream> {
    TcpStream::connect((exposure.public.host.as_str(), exposure.public.port)).await
}

/// Sends `payload` and reads the same number of bytes back.
async fn echo_through(stream: &mut TcpStream, payload: &[u8]) -> std::io::Result<Vec<u8>> {
    let (mut read, mut write) = stream.split();
    let send = async {
        write.write_all(payload).await?;
        write.flush().await
    };
    let mut back = vec![0; payload.len()];
    let receive = read.read_exact(&mut back);
    let (sent, received) = tokio::time::timeout(WAIT, async { tokio::join!(send, receive) })
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no echo"))?;
    sent?;
    received?;
    Ok(back)
}

/// A UDP socket on 127.0.0.1 connected to `exposure`'s public address.
pub async fn udp_visitor(exposure: &Exposure) -> UdpSocket {
    let visitor = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    visitor
        .connect((exposure.public.host.as_str(), exposure.public.port))
        .await
        .unwrap();
    visitor
}

/// Whether a fresh visitor to `exposure` gets `ping` echoed back within
/// two seconds.
pub async fn echoes(exposure: &Exposure) -> bool {
    let attempt = async {
        let mut stream = connect(exposure).await.ok()?;
        stream.write_all(b"ping").await.ok()?;
        let mut back = [0u8; 4];
        stream.read_exact(&mut back).await.ok()?;
        (&back == b"ping").then_some(())
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
        .is_some()
}

/// A megabyte and more crosses the exposure unchanged, both ways.
pub async fn tcp_bytes_round_trip(tunnel: Arc<dyn Tunnel>) -> Outcome {
    let target = tcp_echo().await;
    let exposure = tunnel
        .expose(&request(target, Protocol::Tcp))
        .await
        .unwrap();
    assert_eq!(exposure.target, target);
    assert_eq!(exposure.protocol, Protocol::Tcp);
    let payload = random_bytes(2 * 1024 * 1024 + 17);
    let mut stream = connect(&exposure).await.unwrap();
    let back = echo_through(&mut stream, &payload).await.unwrap();
    assert!(back == payload, "bytes changed on the way");
    Outcome::Passed
}

/// Concurrent visitors each get their own bytes back.
pub async fn many_visitors_at_once(tunnel: Arc<dyn Tunnel>) -> Outcome {
    let exposure = tunnel
        .expose(&request(tcp_echo().await, Protocol::Tcp))
        .await
        .unwrap();
    let visitors: Vec<_> = (0..32)
        .map(|_| {
            let exposure = exposure.clone();
            tokio::spawn(async move {
                let payload = random_bytes(64 * 1024);
                let mut stream = connect(&exposure).await.unwrap();
                let back = echo_through(&mut stream, &payload).await.unwrap();
                assert!(back == payload, "a visitor got someone else's bytes");
            })
        })
        .collect();
    for visitor in visitors {
        visitor.await.unwrap();
    }
    Outcome::Passed
}

/// Asking for a public port in use is a conflict naming the port.
pub async fn a_taken_public_port_conflicts_naming_it(tunnel: Arc<dyn Tunnel>) -> Outcome {
    let target = tcp_echo().await;
    let first = tunnel
        .expose(&request(target, Protocol::Tcp))
        .await
        .unwrap();
    let mut again = request(target, Protocol::Tcp);
    again.public_port = Some(first.public.port);
    let err = tunnel.expose(&again).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert!(
        err.to_string().contains(&first.public.port.to_string()),
        "names the port: {err}"
    );
    assert!(echoes(&first).await, "the first exposure still works");
    Outcome::Passed
}

/// After withdrawal nobody new gets through; withdrawing again is fine.
pub async fn withdraw_closes_the_port_and_is_idempotent(tunnel: Arc<dyn Tunnel>) -> Outcome {
    let exposure = tunnel
        .expose(&request(tcp_echo().await, Protocol::Tcp))
        .await
        .unwrap();
    assert!(echoes(&exposure).await);
    tunnel.withdraw(&exposure.id).await.unwrap();
    assert!(
        !echoes(&exposure).await,
        "a visitor got through after withdraw"
    );
    tunnel.withdraw(&exposure.id).await.unwrap();
    tunnel
        .withdraw(&ExposureId::new(unique_name("never")))
        .await
        .unwrap();
    Outcome::Passed
}

/// Withdrawing one exposure does not disturb another's open connection.
pub async fn withdrawing_one_exposure_leaves_the_others(tunnel: Arc<dyn Tunnel>) -> Outcome {
    let kept = tunnel
        .expose(&request(tcp_echo().await, Protocol::Tcp))
        .await
        .unwrap();
    let dropped = tunnel
        .expose(&request(tcp_echo().await, Protocol::Tcp))
        .await
        .unwrap();
    let mut open = connect(&kept).await.unwrap();
    assert_eq!(echo_through(&mut open, b"before").await.unwrap(), b"before");
    tunnel.withdraw(&dropped.id).await.unwrap();
    assert_eq!(echo_through(&mut open, b"after").await.unwrap(), b"after");
    assert!(
        echoes(&kept).await,
        "new visitors still reach the kept exposure"
    );
    Outcome::Passed
}

/// Listing returns exactly the exposures whose labels match.
pub async fn list_filters_by_labels(tunnel: Arc<dyn Tunnel>) -> Outcome {
    let target = tcp_echo().await;
    let run = unique_name("run");
    let mut ids = Vec::new();
    for owner in ["alice", "alice", "bob"] {
        let mut request = request(target, Protocol::Tcp);
        request.labels.insert(RUN_LABEL.into(), run.clone());
        request.labels.insert("owner".into(), owner.into());
        ids.push(tunnel.expose(&request).await.unwrap().id);
    }
    let count = |filter: LabelFilter| {
        let tunnel = tunnel.clone();
        async move { tunnel.list(&filter).await.unwrap().len() }
    };
    let base = LabelFilter::all().with(RUN_LABEL, &run);
    assert_eq!(count(base.clone()).await, 3);
    assert_eq!(count(base.clone().with("owner", "alice")).await, 2);
    assert_eq!(count(base.clone().with("owner", "bob")).await, 1);
    tunnel.withdraw(&ids[0]).await.unwrap();
    assert_eq!(count(base.with("owner", "alice")).await, 1);
    Outcome::Passed
}

/// Beyond `max_connections`, new visitors are refused while the admitted
/// ones keep working; a slot frees when one leaves.
pub async fn connection_limit_refuses_extra_visitors(tunnel: Arc<dyn Tunnel>) -> Outcome {
    let mut limited = request(tcp_echo().await, Protocol::Tcp);
    limited.limits.max_connections = Some(1);
    let exposure = tunnel.expose(&limited).await.unwrap();
    let mut admitted = connect(&exposure).await.unwrap();
    assert_eq!(
        echo_through(&mut admitted, b"first").await.unwrap(),
        b"first"
    );
    assert!(
        !echoes(&exposure).await,
        "a second visitor got past a limit of 1"
    );
    assert_eq!(
        echo_through(&mut admitted, b"still").await.unwrap(),
        b"still"
    );
    drop(admitted);
    let freed = async {
        while !echoes(&exposure).await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(WAIT, freed)
        .await
        .expect("the slot frees once the visitor leaves");
    Outcome::Passed
}

/// UDP datagrams cross unchanged, or the tunnel says it does not carry UDP.
pub async fn udp_round_trip_or_not_supported(tunnel: Arc<dyn Tunnel>) -> Outcome {
    let echo = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let target = echo.local_addr().unwrap();
    if !tunnel.supports(Protocol::Udp) {
        let err = tunnel
            .expose(&request(target, Protocol::Udp))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotSupported, "{err}");
        return Outcome::NotApplicable("does not carry UDP");
    }
    tokio::spawn(async move {
        let mut buffer = vec![0u8; 65_536];
        while let Ok((n, peer)) = echo.recv_from(&mut buffer).await {
            let _ = echo.send_to(&buffer[..n], peer).await;
        }
    });
    let exposure = tunnel
        .expose(&request(target, Protocol::Udp))
        .await
        .unwrap();
    let visitor = udp_visitor(&exposure).await;
    for size in [1, 512, 1400] {
        let payload = random_bytes(size);
        // UDP may drop a datagram: retry a few times before failing.
        let mut answered = false;
        for _ in 0..5 {
            visitor.send(&payload).await.unwrap();
            let mut back = vec![0u8; 2048];
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_secs(1), visitor.recv(&mut back)).await
            {
                assert_eq!(&back[..n], &payload[..], "datagram of {size} bytes changed");
                answered = true;
                break;
            }
        }
        assert!(answered, "no echo for a {size}-byte datagram");
    }
    Outcome::Passed
}
