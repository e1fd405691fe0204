//! The relay's metrics, read from a recorder installed for this test
//! binary: links, rejected handshakes, exposures, TCP visitors by outcome
//! with their bytes, and UDP sessions.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kisara_core::Tunnel;
use kisara_core::model::{ExposeRequest, Protocol};
use kisara_core::testing::tunnel::{tcp_echo, udp_visitor};
use kisara_tunnel::TunnelClient;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

const WAIT: Duration = Duration::from_secs(20);

/// The metrics seen so far. A snapshot hands over what changed since the
/// last one (counters and gauges are swapped to 0), so the values are
/// summed across snapshots: the relay only adds to counters and moves
/// gauges up and down.
struct Seen {
    snapshotter: Snapshotter,
    values: BTreeMap<String, f64>,
}

impl Seen {
    /// Every metric as `name{label=value,...}` → its value.
    fn read(&mut self) -> &BTreeMap<String, f64> {
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let labels: Vec<String> = key
                .key()
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            let change = match value {
                DebugValue::Counter(n) => n as f64,
                DebugValue::Gauge(g) => g.into_inner(),
                DebugValue::Histogram(samples) => samples.len() as f64,
            };
            let name = format!("{}{{{}}}", key.key().name(), labels.join(","));
            *self.values.entry(name).or_default() += change;
        }
        &self.values
    }

    /// The value of `metric`, 0 when it was never recorded.
    fn value(&mut self, metric: &str) -> f64 {
        self.read().get(metric).copied().unwrap_or(0.0)
    }

    /// Waits until `metric` reads `value`.
    async fn until(&mut self, metric: &str, value: f64) {
        let deadline = Instant::now() + WAIT;
        while self.value(metric) != value {
            assert!(
                Instant::now() < deadline,
                "{metric} never read {value}: {:?}",
                self.values
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn echo_once(visitor: &mut TcpStream, message: &[u8]) {
    visitor.write_all(message).await.unwrap();
    let mut back = vec![0u8; message.len()];
    visitor.read_exact(&mut back).await.unwrap();
    assert_eq!(back, message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_counts_links_rejections_exposures_visitors_and_sessions() {
    let recorder = DebuggingRecorder::new();
    let mut seen = Seen {
        snapshotter: recorder.snapshotter(),
        values: BTreeMap::new(),
    };
    // Each test binary runs in its own process, and this one holds only
    // this test: the global recorder sees only it.
    assert!(
        recorder.install().is_ok(),
        "another metrics recorder is installed in this process"
    );
    let relay = common::relay_with(|options| options.with_udp_peers(1)).await;
    // An idle relay shows its gauges at 0, not nothing.
    for gauge in [
        "kisara_tunnel_clients{}",
        "kisara_tunnel_exposures{protocol=tcp}",
        "kisara_tunnel_exposures{protocol=udp}",
        "kisara_tunnel_tcp_visitors{}",
        "kisara_tunnel_udp_sessions{}",
    ] {
        assert_eq!(seen.read().get(gauge), Some(&0.0), "{gauge}");
    }
    let client = common::client("node-metrics", &relay).await;
    seen.until("kisara_tunnel_clients{}", 1.0).await;

    let refused = TunnelClient::builder("node-wrong")
        .relay("relay-a", relay.local_addr().to_string(), "wrong token")
        .connect()
        .await;
    assert!(refused.is_err(), "a wrong token was let in");
    seen.until("kisara_tunnel_rejected_total{reason=token}", 1.0)
        .await;

    let mut request = ExposeRequest::new(tcp_echo().await, Protocol::Tcp);
    request.limits.max_connections = Some(1);
    let exposure = client.expose(&request).await.unwrap();
    seen.until("kisara_tunnel_exposures{protocol=tcp}", 1.0)
        .await;
    let public = (exposure.public.host.as_str(), exposure.public.port);

    // Carried to the end: 5 bytes each way.
    let mut carried = TcpStream::connect(public).await.unwrap();
    echo_once(&mut carried, b"hello").await;
    carried.shutdown().await.unwrap();
    carried.read_to_end(&mut Vec::new()).await.unwrap();
    seen.until("kisara_tunnel_tcp_visitors_total{outcome=carried}", 1.0)
        .await;
    for direction in ["to_target", "to_visitor"] {
        let bytes = format!("kisara_tunnel_tcp_bytes_total{{direction={direction}}}");
        assert_eq!(seen.value(&bytes), 5.0, "{bytes}");
    }

    // One visitor held, a second one over the limit of one.
    let mut held = TcpStream::connect(public).await.unwrap();
    echo_once(&mut held, b"held").await;
    assert_eq!(seen.value("kisara_tunnel_tcp_visitors{}"), 1.0);
    // Reset at once: the reset may even come before `connect` returns.
    if let Ok(mut over) = TcpStream::connect(public).await {
        let _ = over.read(&mut [0u8; 1]).await;
    }
    seen.until("kisara_tunnel_tcp_visitors_total{outcome=over_limit}", 1.0)
        .await;

    // Withdrawn under the held visitor.
    client.withdraw(&exposure.id).await.unwrap();
    seen.until("kisara_tunnel_tcp_visitors_total{outcome=withdrawn}", 1.0)
        .await;
    seen.until("kisara_tunnel_tcp_visitors{}", 0.0).await;
    seen.until("kisara_tunnel_exposures{protocol=tcp}", 0.0)
        .await;

    // UDP: one peer gets a session, a second is beyond the bound of one.
    let target = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let udp = client
        .expose(&ExposeRequest::new(
            target.local_addr().unwrap(),
            Protocol::Udp,
        ))
        .await
        .unwrap();
    let first = udp_visitor(&udp).await;
    first.send(b"one").await.unwrap();
    let mut datagram = [0u8; 16];
    let (n, _) = tokio::time::timeout(WAIT, target.recv_from(&mut datagram))
        .await
        .expect("the first peer's datagram reached the target")
        .unwrap();
    assert_eq!(&datagram[..n], b"one");
    seen.until("kisara_tunnel_udp_sessions{}", 1.0).await;
    let second = udp_visitor(&udp).await;
    second.send(b"two").await.unwrap();
    seen.until("kisara_tunnel_udp_peers_dropped_total{}", 1.0)
        .await;
    client.withdraw(&udp.id).await.unwrap();
    seen.until("kisara_tunnel_udp_sessions{}", 0.0).await;

    drop(client);
    seen.until("kisara_tunnel_clients{}", 0.0).await;
}
