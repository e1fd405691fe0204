//! `kisara-core`'s `Service` conformance suite against a real relay on
//! loopback, visited by a real client.

mod common;

use std::sync::Arc;
use std::time::Duration;

use kisara_core::testing::service::{self, ServiceFixture, Visit};

/// How long a visiting client may take to link up.
const LINK_WAIT: Duration = Duration::from_secs(2);

#[tokio::test]
async fn the_relay_passes_the_service_suite() {
    service::all(|| async {
        let relay = Arc::new(common::relay().await);
        let address = relay.local_addr().to_string();
        ServiceFixture::new(relay, move || {
            let address = address.clone();
            async move {
                // A client that links up is served; while it lives its
                // control link stays open on the relay.
                let client = kisara_tunnel::TunnelClient::builder("service-probe")
                    .relay("relay", address, common::TOKEN)
                    .with_connect_timeout(LINK_WAIT)
                    .connect()
                    .await
                    .map_err(|error| error.to_string())?;
                Ok(Box::new(client) as Visit)
            }
        })
    })
    .await;
}

/// Once its run returned after a stop, the relay has closed its listener
/// and every connection: its address can be bound again at once, as
/// [`kisara_tunnel::Relay::stop`] promises.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_relay_frees_its_address_before_its_run_returns() {
    let relay = Arc::new(common::relay().await);
    let listen = relay.local_addr();
    let visitor = common::client("linked-visitor", &relay).await;
    let handle = kisara_core::lifecycle::Lifecycle::new(relay).spawn();
    handle
        .stop(Duration::from_secs(5))
        .await
        .expect("the relay stops cleanly");
    let rebound = std::net::TcpListener::bind(listen);
    assert!(
        rebound.is_ok(),
        "{listen} is still held after the relay's run returned: {rebound:?}"
    );
    drop(visitor);
}
