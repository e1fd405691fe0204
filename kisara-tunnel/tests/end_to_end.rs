//! End to end on loopback: a relay, a client, real TCP and UDP echo
//! targets, and visitors checking every byte.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kisara_core::model::{ExposeRequest, Exposure, LabelFilter, Protocol};
use kisara_core::testing::random_bytes;
use kisara_core::testing::tunnel::{echoes, tcp_echo, udp_visitor};
use kisara_core::{ErrorKind, Tunnel};
use kisara_tunnel::{LinkStatus, Relay, TunnelClient};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

const WAIT: Duration = Duration::from_secs(20);

/// A socket with 4 MiB of kernel receive buffer, as the tunnel's own ask
/// for: bursts in these tests must not be lost at the endpoints.
async fn roomy_udp_socket() -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    #[cfg(target_os = "linux")]
    rustix::net::sockopt::set_socket_recv_buffer_size(&socket, 4 << 20).unwrap();
    socket
}

async fn udp_echo() -> SocketAddr {
    let socket = roomy_udp_socket().await;
    let address = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buffer = vec![0u8; 65_536];
        while let Ok((n, peer)) = socket.recv_from(&mut buffer).await {
            let _ = socket.send_to(&buffer[..n], peer).await;
        }
    });
    address
}

async fn visit(exposure: &Exposure) -> TcpStream {
    TcpStream::connect((exposure.public.host.as_str(), exposure.public.port))
        .await
        .unwrap()
}

/// Sends `payload` and returns the SHA-256 of what came back.
async fn echo_digest(exposure: &Exposure, payload: &[u8]) -> [u8; 32] {
    let stream = visit(exposure).await;
    let (mut read, mut write) = stream.into_split();
    let send = async {
        write.write_all(payload).await.unwrap();
        write.shutdown().await.unwrap();
    };
    let receive = async {
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; 64 * 1024];
        let mut total = 0;
        while total < payload.len() {
            let n = read.read(&mut buffer).await.unwrap();
            assert!(n > 0, "closed after {total} of {} bytes", payload.len());
            hasher.update(&buffer[..n]);
            total += n;
        }
        hasher.finalize().into()
    };
    let ((), digest) = tokio::time::timeout(WAIT, async { tokio::join!(send, receive) })
        .await
        .expect("echo in time");
    digest
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn udp_round_trip(exposure: &Exposure, payload: &[u8]) -> bool {
    let visitor = udp_visitor(exposure).await;
    for _ in 0..5 {
        visitor.send(payload).await.unwrap();
        let mut back = vec![0u8; 65_536];
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(500), visitor.recv(&mut back)).await
        {
            return &back[..n] == payload;
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn megabytes_cross_unchanged_for_many_concurrent_visitors() {
    let (_relay, _client, exposure) =
        common::exposed("node-bytes", tcp_echo().await, Protocol::Tcp).await;

    let big = random_bytes(16 * 1024 * 1024 + 3);
    let expected: [u8; 32] = Sha256::digest(&big).into();
    assert_eq!(echo_digest(&exposure, &big).await, expected);

    let visitors: Vec<_> = (0..64)
        .map(|_| {
            let exposure = exposure.clone();
            tokio::spawn(async move {
                let payload = random_bytes(512 * 1024);
                let expected: [u8; 32] = Sha256::digest(&payload).into();
                assert_eq!(echo_digest(&exposure, &payload).await, expected);
            })
        })
        .collect();
    for visitor in visitors {
        visitor.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_peers_get_their_own_datagrams() {
    let (_relay, _client, exposure) =
        common::exposed("node-udp", udp_echo().await, Protocol::Udp).await;
    let peers: Vec<_> = (0..16)
        .map(|_| {
            let exposure = exposure.clone();
            tokio::spawn(async move {
                for size in [1, 512, 1400, 8000] {
                    let payload = random_bytes(size);
                    assert!(udp_round_trip(&exposure, &payload).await, "{size} bytes");
                }
            })
        })
        .collect();
    for peer in peers {
        peer.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_of_datagrams_cross_whole_and_in_order() {
    let (_relay, _client, exposure) =
        common::exposed("node-udp-burst", udp_echo().await, Protocol::Udp).await;
    let visitor = roomy_udp_socket().await;
    visitor
        .connect((exposure.public.host.as_str(), exposure.public.port))
        .await
        .unwrap();
    // Opens the session, so the bursts meet a ready path.
    visitor.send(b"open").await.unwrap();
    let mut back = vec![0u8; 65_536];
    tokio::time::timeout(WAIT, visitor.recv(&mut back))
        .await
        .unwrap()
        .unwrap();

    // Mostly equal sizes (they travel as GSO runs and GRO trains), broken
    // by shorter, longer and the largest datagrams, each numbered and
    // filled with a pattern of its number.
    let datagram = |n: u32| {
        let size = match n % 50 {
            7 => 700,
            19 => 9_000,
            33 => 65_507,
            _ => 1_400,
        };
        let mut bytes: Vec<u8> = (0..size).map(|i| (i as u32 * 7 + n) as u8).collect();
        bytes[..4].copy_from_slice(&n.to_be_bytes());
        bytes
    };
    const BURST: u32 = 300;
    for round in 0..4 {
        let first = round * BURST;
        for n in first..first + BURST {
            visitor.send(&datagram(n)).await.unwrap();
        }
        for n in first..first + BURST {
            let len = tokio::time::timeout(WAIT, visitor.recv(&mut back))
                .await
                .unwrap_or_else(|_| panic!("datagram {n} never came back"))
                .unwrap();
            assert_eq!(
                back[..len],
                datagram(n),
                "datagram {n} came back changed or out of order"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_client_takes_its_exposures_back() {
    let relay = common::relay().await;
    let client = common::client("node-restart", &relay).await;
    let mut request = ExposeRequest::new(tcp_echo().await, Protocol::Tcp);
    request.labels.insert("owner".into(), "alice".into());
    let exposure = client.expose(&request).await.unwrap();
    let udp = client
        .expose(&ExposeRequest::new(udp_echo().await, Protocol::Udp))
        .await
        .unwrap();
    assert!(echoes(&exposure).await);

    drop(client); // killed: every link and connection closes at once
    eventually("visitors are refused", async || !echoes(&exposure).await).await;

    let client = common::client("node-restart", &relay).await;
    eventually("the exposure is back", async || echoes(&exposure).await).await;
    let listed = client.list(&LabelFilter::all()).await.unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    let back = listed.iter().find(|e| e.id == exposure.id).unwrap();
    assert_eq!(back, &exposure, "same id, port, target and labels");
    assert!(udp_round_trip(&udp, b"datagram").await);

    client.withdraw(&exposure.id).await.unwrap();
    assert!(!echoes(&exposure).await);
}

/// More held exposures than one control frame holds (64 KiB) still come
/// back to a restarted client, all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_client_takes_back_more_exposures_than_a_frame_holds() {
    const EXPOSURES: usize = 300;
    let relay = common::relay().await;
    let client = common::client("node-many", &relay).await;
    let target = tcp_echo().await;
    let mut request = ExposeRequest::new(target, Protocol::Tcp);
    request.labels.insert("note".into(), "n".repeat(250));
    for _ in 0..EXPOSURES {
        client.expose(&request).await.unwrap();
    }
    drop(client);

    let client = common::client("node-many", &relay).await;
    eventually("every exposure is back", async || {
        client.list(&LabelFilter::all()).await.unwrap().len() == EXPOSURES
    })
    .await;
    let listed = client.list(&LabelFilter::all()).await.unwrap();
    assert!(echoes(&listed[EXPOSURES - 1]).await);
    assert_eq!(relay.exposure_count(), EXPOSURES);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exposures_come_back_after_a_relay_restart() {
    let (relay, client, kept) =
        common::exposed("node-relay-restart", tcp_echo().await, Protocol::Tcp).await;
    let listen = relay.local_addr();
    let udp = client
        .expose(&ExposeRequest::new(udp_echo().await, Protocol::Udp))
        .await
        .unwrap();
    let mut open = visit(&kept).await;
    open.write_all(b"x").await.unwrap();

    relay.stop().await;
    drop(relay);
    // The relay's connections die with it.
    let mut byte = [0u8; 2];
    let read = tokio::time::timeout(WAIT, open.read(&mut byte))
        .await
        .unwrap();
    assert!(matches!(read, Ok(0 | 1) | Err(_)));

    let relay = common::relay_rebound(listen).await;
    eventually("the exposure is re-registered", async || {
        echoes(&kept).await
    })
    .await;
    assert_eq!(relay.exposure_count(), 2);
    let listed = client.list(&LabelFilter::all()).await.unwrap();
    assert!(listed.contains(&kept), "same public port kept: {listed:?}");
    eventually("UDP is back", async || udp_round_trip(&udp, b"again").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_tokens_are_refused_slowed_down_and_harmless() {
    let (relay, _good, exposure) =
        common::exposed("node-good", tcp_echo().await, Protocol::Tcp).await;

    let mut handshakes = Vec::new();
    for _ in 0..4 {
        let started = Instant::now();
        let err = TunnelClient::builder("node-bad")
            .relay("relay-a", relay.local_addr().to_string(), "wrong token")
            .with_max_backoff(Duration::from_secs(60))
            .connect()
            .await
            .unwrap_err();
        handshakes.push(started.elapsed());
        let core: kisara_core::Error = err.into();
        assert_eq!(core.kind(), ErrorKind::Unauthenticated, "{core}");
        assert!(!core.to_string().contains("wrong token"));
    }
    // 0, 100, 200, 400 ms of slow-down (at least).
    assert!(
        handshakes[3] >= Duration::from_millis(400),
        "{handshakes:?}"
    );
    assert!(handshakes[3] > handshakes[0], "{handshakes:?}");
    assert!(echoes(&exposure).await, "the good client is undisturbed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_frames_are_rejected_and_the_relay_stays_up() {
    let (relay, client, exposure) =
        common::exposed("node-garbage", tcp_echo().await, Protocol::Tcp).await;
    let oversized = {
        let mut frame = u32::MAX.to_be_bytes().to_vec();
        frame.extend_from_slice(&[b'{'; 1024]);
        frame
    };
    let just_over = ((kisara_tunnel::MAX_FRAME + 1) as u32)
        .to_be_bytes()
        .to_vec();
    let garbage: Vec<u8> = random_bytes(4096);
    let bad_json = {
        let body = br#"{"type":"control","version":1,"client":}"#;
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(body);
        frame
    };
    let bad_version = {
        let body = br#"{"type":"control","version":99,"client":"x"}"#;
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(body);
        frame
    };
    for payload in [oversized, just_over, garbage, bad_json, bad_version] {
        let mut stream = TcpStream::connect(relay.local_addr()).await.unwrap();
        let _ = stream.write_all(&payload).await;
        let mut sink = Vec::new();
        let closed = tokio::time::timeout(WAIT, stream.read_to_end(&mut sink)).await;
        assert!(closed.is_ok(), "the relay closes a bad connection");
    }
    assert!(echoes(&exposure).await, "the relay stays up");
    assert_eq!(client.relays()[0].status, LinkStatus::Up);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bandwidth_limit_holds_without_slowing_its_neighbours() {
    let relay = common::relay().await;
    let client = common::client("node-limits", &relay).await;
    let target = tcp_echo().await;
    let mut limited = ExposeRequest::new(target, Protocol::Tcp);
    limited.limits.bandwidth = Some(10 * 1024);
    let limited = client.expose(&limited).await.unwrap();
    let free = client
        .expose(&ExposeRequest::new(target, Protocol::Tcp))
        .await
        .unwrap();

    let slow = tokio::spawn(async move {
        let payload = random_bytes(50 * 1024);
        let expected: [u8; 32] = Sha256::digest(&payload).into();
        let started = Instant::now();
        assert_eq!(echo_digest(&limited, &payload).await, expected);
        started.elapsed()
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let payload = random_bytes(4 * 1024 * 1024);
    let expected: [u8; 32] = Sha256::digest(&payload).into();
    assert_eq!(echo_digest(&free, &payload).await, expected);
    let fast = started.elapsed();
    let slow = slow.await.unwrap();
    assert!(
        slow >= Duration::from_millis(4500),
        "50 KB at 10 KB/s took {slow:?}"
    );
    assert!(
        slow <= Duration::from_secs(8),
        "50 KB at 10 KB/s took {slow:?}"
    );
    // Were the limit shared, 4 MB would take minutes; at a loose floor of
    // 512 kB/s (a busy debug build) it is under 8 s.
    assert!(
        fast < Duration::from_secs(8),
        "unlimited 4 MB took {fast:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exposures_spread_over_several_relays() {
    let (a, b) = (common::relay().await, common::relay().await);
    let client = TunnelClient::builder("node-multi")
        .relay("relay-a", a.local_addr().to_string(), common::TOKEN)
        .relay("relay-b", b.local_addr().to_string(), common::TOKEN)
        .connect()
        .await
        .unwrap();
    eventually("both links are up", async || {
        client.relays().iter().all(|r| r.status == LinkStatus::Up)
    })
    .await;
    let target = tcp_echo().await;
    let mut placed = Vec::new();
    for _ in 0..6 {
        let exposure = client
            .expose(&ExposeRequest::new(target, Protocol::Tcp))
            .await
            .unwrap();
        assert!(echoes(&exposure).await);
        placed.push(exposure);
    }
    let on_a = placed.iter().filter(|e| e.relay == "relay-a").count();
    assert_eq!(on_a, 3, "least-loaded placement alternates");
    assert_eq!((a.exposure_count(), b.exposure_count()), (3, 3));

    // A relay going away leaves the other serving, and new exposures go
    // to the one still up.
    drop(a);
    eventually("relay-a is down", async || {
        client.relays()[0].status != LinkStatus::Up
    })
    .await;
    let exposure = client
        .expose(&ExposeRequest::new(target, Protocol::Tcp))
        .await
        .unwrap();
    assert_eq!(exposure.relay, "relay-b");
    assert!(echoes(&exposure).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visitors_do_not_block_each_other() {
    let (_relay, _client, exposure) =
        common::exposed("node-hol", tcp_echo().await, Protocol::Tcp).await;
    // A visitor that sends a lot and never reads stalls only itself.
    let mut stalled = visit(&exposure).await;
    let flood = tokio::spawn(async move {
        let chunk = vec![0u8; 64 * 1024];
        for _ in 0..1024 {
            if stalled.write_all(&chunk).await.is_err() {
                break;
            }
        }
        stalled
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..10 {
        assert!(echoes(&exposure).await, "a fresh visitor got through");
    }
    flood.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requested_ports_and_unknown_relays() {
    let relay: Relay = common::relay().await;
    let client = common::client("node-ports", &relay).await;
    let target = tcp_echo().await;
    let first = client
        .expose(&ExposeRequest::new(target, Protocol::Tcp))
        .await
        .unwrap();
    let mut wanted = ExposeRequest::new(target, Protocol::Tcp);
    wanted.public_port = Some(first.public.port + 7);
    let second = client.expose(&wanted).await.unwrap();
    assert_eq!(second.public.port, first.public.port + 7);
    assert!(echoes(&second).await);
    // TCP and UDP exposures may share a port number (iperf3 needs it).
    let mut udp = ExposeRequest::new(udp_echo().await, Protocol::Udp);
    udp.public_port = Some(first.public.port);
    let udp = client.expose(&udp).await.unwrap();
    assert_eq!(udp.public.port, first.public.port);
    assert!(udp_round_trip(&udp, b"shared port").await);
    assert!(echoes(&first).await);
    // A withdrawn port is free again at once.
    client.withdraw(&second.id).await.unwrap();
    let again = client.expose(&wanted).await.unwrap();
    assert_eq!(again.public.port, second.public.port);
    assert!(echoes(&again).await);
    let mut outside = ExposeRequest::new(target, Protocol::Tcp);
    outside.public_port = Some(80);
    let err = client.expose(&outside).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");

    let nowhere = TunnelClient::builder("node-nowhere")
        .relay("gone", "127.0.0.1:1", common::TOKEN)
        .with_connect_timeout(Duration::from_millis(500))
        .connect()
        .await
        .unwrap_err();
    let nowhere: kisara_core::Error = nowhere.into();
    assert!(nowhere.is_retryable(), "{nowhere}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_udp_sessions_expire_and_busy_ones_stay() {
    let relay = common::relay_with(|options| options.with_udp_idle(Duration::from_secs(1))).await;
    let client = TunnelClient::builder("node-udp-idle")
        .relay("relay-a", relay.local_addr().to_string(), common::TOKEN)
        .with_udp_idle(Duration::from_secs(1))
        .connect()
        .await
        .unwrap();
    // A target that answers with the port it sees the session come from.
    let target = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let target_address = target.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buffer = [0u8; 64];
        while let Ok((_, peer)) = target.recv_from(&mut buffer).await {
            let _ = target.send_to(&peer.port().to_be_bytes(), peer).await;
        }
    });
    let exposure = client
        .expose(&ExposeRequest::new(target_address, Protocol::Udp))
        .await
        .unwrap();
    let visitor = udp_visitor(&exposure).await;
    let session_port = async || {
        for _ in 0..5 {
            visitor.send(b"which").await.unwrap();
            let mut back = [0u8; 2];
            if let Ok(Ok(2)) =
                tokio::time::timeout(Duration::from_millis(500), visitor.recv(&mut back)).await
            {
                return u16::from_be_bytes(back);
            }
        }
        panic!("no answer");
    };
    let first = session_port().await;
    // Traffic every 200 ms keeps the session (idle expiry is 1 s; the
    // margin absorbs a loaded test machine's stalls).
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(session_port().await, first, "a busy session was replaced");
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_ne!(session_port().await, first, "an idle session was kept");
}

/// Visitors one after another reuse the data connections.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_visitors_reuse_data_connections() {
    let (relay, _client, exposure) =
        common::exposed("node-reuse", tcp_echo().await, Protocol::Tcp).await;
    common::assert_visitors_reuse_data_connections(&relay, &exposure).await;
}

/// So do visitors of a bandwidth-limited exposure, paced on the way.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visitors_of_a_limited_exposure_reuse_data_connections() {
    let relay = common::relay().await;
    let client = common::client("node-reuse-limited", &relay).await;
    let mut limited = ExposeRequest::new(tcp_echo().await, Protocol::Tcp);
    limited.limits.bandwidth = Some(10 * 1024 * 1024);
    let exposure = client.expose(&limited).await.unwrap();
    common::assert_visitors_reuse_data_connections(&relay, &exposure).await;
}

/// Visitors of an exposure whose target refuses them are reset, as a
/// direct connection to a closed port would be, and the data connections
/// they came on stay for the next ones.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_visitors_are_reset_and_data_connections_stay() {
    const VISITORS: usize = 50;
    let closed = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    let (relay, _client, exposure) = common::exposed("node-refused", closed, Protocol::Tcp).await;
    let public = (exposure.public.host.as_str(), exposure.public.port);
    for i in 0..VISITORS {
        // The reset may come before the write, or even before `connect`
        // has looked at the handshake's outcome.
        let answer = async {
            let mut visitor = TcpStream::connect(public).await?;
            let _ = visitor.write_all(b"anyone there?").await;
            visitor.read(&mut [0u8; 16]).await
        };
        let read = tokio::time::timeout(WAIT, answer)
            .await
            .unwrap_or_else(|_| panic!("visitor {i} got no answer"));
        assert!(
            matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
            "visitor {i} of {closed} (nothing listens): {read:?}"
        );
    }
    common::assert_data_connections_kept(&relay, VISITORS);
}

/// An exposure without `max_connections` still carries a bounded number
/// of UDP peers at once: anyone can open a session per source address,
/// and each costs sockets on relay and client. A new peer beyond the
/// bound is dropped until an idle session ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_peers_are_bounded_by_default() {
    const PEERS: usize = 8;
    let relay = common::relay_with(|options| {
        options
            .with_udp_peers(PEERS)
            // Longer than the refused peer's 2.5 s of tries below.
            .with_udp_idle(Duration::from_secs(5))
    })
    .await;
    let client = common::client("node-udp-peers", &relay).await;
    let exposure = client
        .expose(&ExposeRequest::new(udp_echo().await, Protocol::Udp))
        .await
        .unwrap();
    for peer in 0..PEERS {
        assert!(
            udp_round_trip(&exposure, b"hello").await,
            "peer {peer} got no session"
        );
    }
    assert!(
        !udp_round_trip(&exposure, b"one too many").await,
        "peer {PEERS} got a session beyond the bound"
    );
    eventually("idle sessions make room", async || {
        udp_round_trip(&exposure, b"later").await
    })
    .await;
}

/// A client gone longer than the grace period loses its exposures: the
/// relay closes their public ports and gives them back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exposures_of_a_client_gone_past_the_grace_period_are_withdrawn() {
    let relay = common::relay_with(|options| options.with_grace(Duration::from_millis(500))).await;
    let client = common::client("node-gone", &relay).await;
    let exposure = client
        .expose(&ExposeRequest::new(tcp_echo().await, Protocol::Tcp))
        .await
        .unwrap();
    drop(client);
    eventually("the exposure is withdrawn", async || {
        relay.exposure_count() == 0
    })
    .await;

    // Its port is free again (given back just after): another client may
    // have it.
    let other = common::client("node-other", &relay).await;
    let mut request = ExposeRequest::new(tcp_echo().await, Protocol::Tcp);
    request.public_port = Some(exposure.public.port);
    let mut taken = None;
    eventually("its port is free again", async || {
        taken = other.expose(&request).await.ok();
        taken.is_some()
    })
    .await;
    let taken = taken.unwrap();
    assert_eq!(taken.public.port, exposure.public.port);
    assert!(echoes(&taken).await);
    // The first client, back, holds nothing.
    let back = common::client("node-gone", &relay).await;
    assert!(back.list(&LabelFilter::all()).await.unwrap().is_empty());
}

/// An `expose` whose caller stops waiting before the relay answers leaves
/// no exposure behind, on the client or on the relay: the caller never
/// learned its id or port, so nobody could withdraw it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expose_given_up_on_leaves_nothing_behind() {
    let relay = common::relay().await;
    let client = common::client("node-impatient", &relay).await;
    let request = ExposeRequest::new(tcp_echo().await, Protocol::Tcp);
    // Polled once (the request goes out), then dropped: the answer comes
    // to nobody.
    tokio::select! {
        biased;
        exposed = client.expose(&request) => panic!("answered at once: {exposed:?}"),
        () = std::future::ready(()) => {}
    }
    let kept = client.expose(&request).await.unwrap();
    eventually("only the exposure waited for remains", async || {
        client.list(&LabelFilter::all()).await.unwrap() == [kept.clone()]
            && relay.exposure_count() == 1
    })
    .await;
}

/// Once `withdraw` returns, a UDP exposure's port is closed, sessions and
/// all, and once `stop` returns, every port is: each can be bound again at
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_ports_are_free_once_withdrawn_or_stopped() {
    let (relay, client, withdrawn) =
        common::exposed("node-udp-again", udp_echo().await, Protocol::Udp).await;
    let stopped = client
        .expose(&ExposeRequest::new(withdrawn.target, Protocol::Udp))
        .await
        .unwrap();
    let mut peers = Vec::new();
    for exposure in [&withdrawn, &stopped] {
        for _ in 0..8 {
            let peer = udp_visitor(exposure).await;
            peer.send(b"session").await.unwrap();
            let mut back = [0u8; 16];
            tokio::time::timeout(WAIT, peer.recv(&mut back))
                .await
                .unwrap()
                .unwrap();
            peers.push(peer);
        }
    }
    client.withdraw(&withdrawn.id).await.unwrap();
    let mut again = ExposeRequest::new(withdrawn.target, Protocol::Udp);
    again.public_port = Some(withdrawn.public.port);
    let again = client.expose(&again).await.unwrap();
    assert_eq!(again.public.port, withdrawn.public.port);
    assert!(udp_round_trip(&again, b"again").await);

    relay.stop().await;
    std::net::UdpSocket::bind(("127.0.0.1", stopped.public.port))
        .expect("a session still holds the port after stop");
}

/// Withdrawing an exposure ends the visitors it is carrying: each visitor
/// and its connection to the target are reset (a target about to be torn
/// down or handed to someone else gets nothing more), whether the visitor
/// came framed on a standby data connection or on one of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withdrawing_an_exposure_resets_its_visitors() {
    for standby in [4, 0] {
        let relay = common::relay_with(|options| options.with_standby(standby)).await;
        let client = common::client("node-withdraw-visitors", &relay).await;
        let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let exposure = client
            .expose(&ExposeRequest::new(
                target.local_addr().unwrap(),
                Protocol::Tcp,
            ))
            .await
            .unwrap();
        let mut visitor = visit(&exposure).await;
        visitor.write_all(b"hello").await.unwrap();
        let (mut upstream, _) = tokio::time::timeout(WAIT, target.accept())
            .await
            .expect("the visitor reached the target")
            .unwrap();
        let mut hello = [0u8; 5];
        upstream.read_exact(&mut hello).await.unwrap();
        upstream.write_all(b"welcome").await.unwrap();
        let mut welcome = [0u8; 7];
        visitor.read_exact(&mut welcome).await.unwrap();

        client.withdraw(&exposure.id).await.unwrap();
        for (who, stream) in [("visitor", &mut visitor), ("target", &mut upstream)] {
            let read = tokio::time::timeout(WAIT, stream.read(&mut [0u8; 16]))
                .await
                .unwrap_or_else(|_| panic!("standby {standby}: the {who} still runs"));
            assert!(
                matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
                "standby {standby}: the {who} read {read:?}, not a reset"
            );
        }
    }
}
