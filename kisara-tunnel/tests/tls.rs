//! The tunnel over TLS: control links and data connections encrypted, the
//! relay's certificate checked by the client.
//!
//! `fixtures/` holds a throw-away test CA and a relay certificate for
//! `localhost` and `127.0.0.1`, valid for a century; never use them
//! anywhere else.

mod common;

use std::sync::Arc;
use std::time::Duration;

use kisara_core::model::{ExposeRequest, Exposure, Protocol};
use kisara_core::testing::random_bytes;
use kisara_core::testing::tunnel::tcp_echo;
use kisara_core::{ErrorKind, Tunnel};
use kisara_tunnel::rustls::pki_types::pem::PemObject;
use kisara_tunnel::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use kisara_tunnel::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use kisara_tunnel::{ClientTls, Relay, RelayOptions, RelayTls, TunnelClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CA: &[u8] = include_bytes!("fixtures/ca.crt");
const CERT: &[u8] = include_bytes!("fixtures/relay.crt");
const KEY: &[u8] = include_bytes!("fixtures/relay.key");

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn relay_tls() -> RelayTls {
    let chain = CertificateDer::pem_slice_iter(CERT)
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(KEY).unwrap();
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    RelayTls::new(Arc::new(config))
}

fn client_tls(roots_pem: &[u8]) -> ClientTls {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(roots_pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    ClientTls::new(Arc::new(config), "127.0.0.1").unwrap()
}

async fn tls_relay() -> Relay {
    let options =
        RelayOptions::new("127.0.0.1:0".parse().unwrap(), common::TOKEN).with_tls(relay_tls());
    Relay::bind(options).await.unwrap()
}

/// A TLS relay, a client named `id` trusting it, and a TCP echo exposed
/// through them.
async fn tls_echo_exposed(id: &str) -> (Relay, TunnelClient, Exposure) {
    let relay = tls_relay().await;
    let client = TunnelClient::builder(id)
        .relay_with_tls(
            "relay-tls",
            relay.local_addr().to_string(),
            common::TOKEN,
            client_tls(CA),
        )
        .connect()
        .await
        .unwrap();
    let exposure = client
        .expose(&ExposeRequest::new(tcp_echo().await, Protocol::Tcp))
        .await
        .unwrap();
    (relay, client, exposure)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_cross_a_tls_tunnel_unchanged() {
    let (_relay, _client, exposure) = tls_echo_exposed("node-tls").await;
    let payload = random_bytes(4 * 1024 * 1024 + 1);
    let stream = TcpStream::connect((exposure.public.host.as_str(), exposure.public.port))
        .await
        .unwrap();
    let (mut read, mut write) = stream.into_split();
    let sent = payload.clone();
    let send = tokio::spawn(async move { write.write_all(&sent).await.unwrap() });
    let mut back = vec![0u8; payload.len()];
    tokio::time::timeout(Duration::from_secs(20), read.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    send.await.unwrap();
    assert!(back == payload, "bytes changed on the way");
}

/// Visitors one after another reuse the TLS data connections: no TLS
/// handshake per visitor.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visitors_reuse_tls_data_connections() {
    let (relay, _client, exposure) = tls_echo_exposed("node-tls-reuse").await;
    common::assert_visitors_reuse_data_connections(&relay, &exposure).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_relay_or_a_plain_client_gets_nowhere() {
    let relay = tls_relay().await;
    // The relay's own certificate is not a trust anchor for the client.
    let untrusted = TunnelClient::builder("node-untrusted")
        .relay_with_tls(
            "relay-tls",
            relay.local_addr().to_string(),
            common::TOKEN,
            client_tls(CERT),
        )
        .with_connect_timeout(Duration::from_millis(800))
        .connect()
        .await
        .unwrap_err();
    let untrusted: kisara_core::Error = untrusted.into();
    assert_eq!(untrusted.kind(), ErrorKind::Unavailable, "{untrusted}");

    let plain = TunnelClient::builder("node-plain")
        .relay("relay-tls", relay.local_addr().to_string(), common::TOKEN)
        .with_connect_timeout(Duration::from_millis(800))
        .connect()
        .await;
    assert!(
        plain.is_err(),
        "a plain client must not get through a TLS relay"
    );
}
