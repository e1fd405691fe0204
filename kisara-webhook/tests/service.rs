//! `kisara-core`'s `Service` conformance suite against a real webhook
//! server on loopback, visited by the webhook authenticator.

mod common;

use std::sync::Arc;

use common::{backends, fast_options};
use kisara_core::testing::service::{self, ServiceFixture, Visit};
use kisara_core::{Authenticator, Credentials};
use kisara_webhook::{ServerOptions, WebhookAuthenticator, WebhookServer, router};

#[tokio::test]
async fn the_webhook_server_passes_the_service_suite() {
    service::all(|| async {
        let app = router(Arc::new(backends()), ServerOptions::default());
        let server = WebhookServer::bind("127.0.0.1:0".parse().unwrap(), app, None)
            .await
            .unwrap();
        let url = format!("http://{}", server.local_addr());
        ServiceFixture::new(Arc::new(server), move || {
            let url = url.clone();
            async move {
                // Served when alice's password is checked; the client keeps
                // its connection open for the next call.
                let authenticator = WebhookAuthenticator::new(&url, fast_options())
                    .map_err(|error| error.to_string())?;
                let credentials = Credentials::Password {
                    username: "alice".into(),
                    password: "correct horse".into(),
                };
                let identity = authenticator
                    .authenticate(&credentials, None)
                    .await
                    .map_err(|error| error.to_string())?;
                if identity.username != "alice" {
                    return Err(format!("authenticated as {:?}", identity.username));
                }
                Ok(Box::new(authenticator) as Visit)
            }
        })
    })
    .await;
}

#[tokio::test]
async fn a_stopped_server_refuses_connections_and_serves_once() {
    let app = router(Arc::new(backends()), ServerOptions::default());
    let server = Arc::new(
        WebhookServer::bind("127.0.0.1:0".parse().unwrap(), app, None)
            .await
            .unwrap(),
    );
    let addr = server.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn({
        let server = server.clone();
        async move { server.serve(async { stopped.await.unwrap_or(()) }).await }
    });
    tokio::net::TcpStream::connect(addr).await.unwrap();
    stop.send(()).unwrap();
    serving.await.unwrap();
    let refused = tokio::net::TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(
        refused.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "{refused}"
    );
    // A second serve has no port to serve on and returns at once.
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        server.serve(std::future::pending()),
    )
    .await
    .expect("a second serve returns at once");
}
