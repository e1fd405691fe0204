//! The webhook server and client, side by side with a bare hyper server in
//! one run.
//!
//! 1. **Server throughput and p99**: the same Rust load generator (keep-alive
//!    HTTP/1.1 connections, each sending the next `POST /password` as soon
//!    as the answer arrives) drives `kisara_webhook`'s server (router,
//!    lenient decoding, the built-in authenticator) and a bare hyper server
//!    answering the same bytes without looking at the request; plain and
//!    over TLS 1.3. Goal: Kisara ≥ 0.8 of the bare server's requests/s.
//! 2. **Client overhead per authentication**: `WebhookAuthenticator`
//!    (retries, breaker, metrics, decoding) against a raw hyper client
//!    sending the same request to the same server, one call at a time; p50
//!    and p99 of each.
//!
//! `cargo bench -p kisara-benches --bench webhook` (about 30 s);
//! `KISARA_BENCH_SMOKE=1` for a run of a second or two.

#![allow(clippy::print_stdout)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use kisara_benches::{Samples, Table, met, smoke};
use kisara_core::builtin::{StaticAuthenticator, StaticConfigProvider};
use kisara_core::{Authenticator, Credentials, Identity};
use kisara_tls::{ClientTls, ServerTls, TlsVersion};
use kisara_webhook::{
    BackendHandler, ClientOptions, ServerOptions, WebhookAuthenticator, WebhookServer, router,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// `alice` / `correct horse`, as ContainerSSH sends it.
const BODY: &str = r#"{"username":"alice","remoteAddress":"127.0.0.1:1234","connectionId":"0123456789ABCDEF","passwordBase64":"Y29ycmVjdCBob3JzZQ=="}"#;
/// What both servers answer (Kisara's answer to [`BODY`], byte for byte).
const ANSWER: &str = r#"{"remoteAddress":"","connectionId":"","clientVersion":"","username":"alice","authenticatedUsername":"alice","success":true}"#;

/// Certificates for 127.0.0.1 in a temporary directory.
struct Pki {
    _dir: tempfile::TempDir,
    server: ServerTls,
    client: ClientTls,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    Pki {
        server: ServerTls {
            cert: cert.clone(),
            key,
            client_ca: None,
            min_version: TlsVersion::Tls13,
        },
        client: ClientTls {
            ca: Some(cert),
            ..ClientTls::default()
        },
        _dir: dir,
    }
}

async fn webhook_server(tls: Option<ServerTls>) -> SocketAddr {
    let users = StaticAuthenticator::new().with_password(Identity::new("alice"), "correct horse");
    let handler = BackendHandler::new(Arc::new(users), Arc::new(StaticConfigProvider::new(None)));
    let server = WebhookServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        router(Arc::new(handler), ServerOptions::default()),
        tls,
    )
    .await
    .unwrap();
    let addr = server.local_addr();
    tokio::spawn(async move { server.serve(std::future::pending()).await });
    addr
}

/// hyper's hello world, answering [`ANSWER`] to everything.
async fn bare_server(tls: Option<&ServerTls>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tls.map(|tls| TlsAcceptor::from(Arc::new(tls.build().unwrap())));
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            tcp.set_nodelay(true).unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(|_request: Request<hyper::body::Incoming>| async {
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from_static(ANSWER.as_bytes())))
                                .unwrap(),
                        )
                    });
                let http = hyper::server::conn::http1::Builder::new();
                let _ = match acceptor {
                    Some(acceptor) => {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        http.serve_connection(TokioIo::new(tls), service).await
                    }
                    None => http.serve_connection(TokioIo::new(tcp), service).await,
                };
            });
        }
    });
    addr
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// One keep-alive connection to `addr`, over TLS when `tls` is given.
async fn connect(addr: SocketAddr, tls: Option<&ClientTls>) -> Sender {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let (sender, connection) = match tls {
        Some(tls) => {
            let connector = TlsConnector::from(Arc::new(tls.build().unwrap()));
            let name = ServerName::IpAddress(addr.ip().into());
            let stream = connector.connect(name, tcp).await.unwrap();
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(connection);
            return sender;
        }
        None => hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap(),
    };
    tokio::spawn(connection);
    sender
}

async fn post(sender: &mut Sender) {
    let request = Request::post("/password")
        .header("host", "127.0.0.1")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(BODY.as_bytes())))
        .unwrap();
    sender
        .ready()
        .await
        .expect("the server keeps the connection open");
    let response = sender.send_request(request).await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, ANSWER.as_bytes());
}

/// Requests per second and the p99 latency (ms) of `connections`
/// keep-alive connections sending for `duration`.
async fn load(
    addr: SocketAddr,
    tls: Option<&ClientTls>,
    connections: usize,
    duration: Duration,
) -> (f64, f64) {
    let mut senders = Vec::new();
    for _ in 0..connections {
        senders.push(connect(addr, tls).await);
    }
    let started = Instant::now();
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|mut sender| {
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while started.elapsed() < duration {
                    let sent = Instant::now();
                    post(&mut sender).await;
                    latencies.push(sent.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    let p99 = all[(all.len() * 99 / 100).min(all.len() - 1)];
    (all.len() as f64 / elapsed, p99.as_secs_f64() * 1000.0)
}

fn percentile(samples: &mut [Duration], p: usize) -> f64 {
    samples.sort();
    samples[(samples.len() * p / 100).min(samples.len() - 1)].as_secs_f64() * 1e6
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run());
}

async fn run() {
    let smoke = smoke();
    let duration = Duration::from_millis(if smoke { 300 } else { 4000 });
    let connections = 32;
    let pki = pki();
    let mut table = Table::new(&["measure", "Kisara", "bare hyper", "ratio", "goal", "met?"]);
    for (label, tls) in [("plain", false), ("TLS 1.3", true)] {
        let kisara_addr = webhook_server(tls.then(|| pki.server.clone())).await;
        let bare_addr = bare_server(tls.then_some(&pki.server)).await;
        let client = tls.then_some(&pki.client);
        // Warm up both, then alternate so drift hits both alike.
        load(kisara_addr, client, 4, duration / 10).await;
        load(bare_addr, client, 4, duration / 10).await;
        let (mut kisara, mut bare) = (Samples::default(), Samples::default());
        let (mut kisara_p99, mut bare_p99) = (Samples::default(), Samples::default());
        for _ in 0..3 {
            let (rate, p99) = load(kisara_addr, client, connections, duration).await;
            kisara.push_value(rate);
            kisara_p99.push_value(p99);
            let (rate, p99) = load(bare_addr, client, connections, duration).await;
            bare.push_value(rate);
            bare_p99.push_value(p99);
        }
        let ratio = kisara.median() / bare.median();
        table.row(vec![
            format!("requests/s, {connections} connections, {label}"),
            format!("{:.0}", kisara.median()),
            format!("{:.0}", bare.median()),
            format!("{ratio:.2}"),
            "≥ 0.8".to_owned(),
            met(Some(ratio >= 0.8)),
        ]);
        table.row(vec![
            format!("p99 latency, {label}"),
            format!("{:.2} ms", kisara_p99.median()),
            format!("{:.2} ms", bare_p99.median()),
            format!("{:.2}", kisara_p99.median() / bare_p99.median()),
            "–".to_owned(),
            met(None),
        ]);
    }

    // One call at a time: the client's own cost beside a raw request.
    let addr = webhook_server(None).await;
    let authenticator =
        WebhookAuthenticator::new(&format!("http://{addr}"), ClientOptions::default()).unwrap();
    let login = Credentials::Password {
        username: "alice".into(),
        password: "correct horse".into(),
    };
    let calls = if smoke { 200 } else { 5000 };
    let mut raw = connect(addr, None).await;
    let (mut through_client, mut through_raw) = (Vec::new(), Vec::new());
    for _ in 0..calls {
        let started = Instant::now();
        authenticator.authenticate(&login, None).await.unwrap();
        through_client.push(started.elapsed());
        let started = Instant::now();
        post(&mut raw).await;
        through_raw.push(started.elapsed());
    }
    for p in [50, 99] {
        let (client, raw) = (
            percentile(&mut through_client, p),
            percentile(&mut through_raw, p),
        );
        table.row(vec![
            format!("one authentication, p{p}"),
            format!("{client:.0} µs"),
            format!("{raw:.0} µs raw hyper client"),
            format!("+{:.0} µs", client - raw),
            "–".to_owned(),
            met(None),
        ]);
    }
    println!("\n## Summary\n\n{table}");
}
