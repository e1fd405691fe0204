//! Helpers shared by the integration tests: a real webhook server over
//! core's built-in backends, a scripted misbehaving HTTP server, and a
//! metrics recorder.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use kisara_core::builtin::{StaticAuthenticator, StaticConfigProvider};
use kisara_core::model::ContainerId;
use kisara_core::{Identity, SessionConfig, SessionTarget};
use kisara_webhook::tls::ServerTls;
use kisara_webhook::{BackendHandler, ClientOptions, ServerOptions, WebhookServer, router};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const ALICE_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl alice@laptop";
pub const OPS_TOKEN: &str = "0123456789abcdef0123456789abcdef";

pub fn identity(username: &str, roles: &[&str], team: Option<&str>) -> Identity {
    let mut identity = Identity::new(username);
    identity.roles = roles.iter().map(|r| (*r).to_owned()).collect();
    if let Some(team) = team {
        identity.metadata.insert("team".into(), team.into());
    }
    identity
}

/// The backends the real server answers from.
pub fn backends() -> BackendHandler {
    let alice = identity("alice", &["player"], Some("blue"));
    let authenticator = StaticAuthenticator::new()
        .with_password(alice.clone(), "correct horse")
        .with_public_key(alice, ALICE_KEY)
        .with_token(identity("ops", &["admin"], None), OPS_TOKEN);
    let config = StaticConfigProvider::new(None).with_user(
        "alice",
        SessionConfig::new(SessionTarget::Container {
            container: ContainerId::new("blue-web-1"),
        }),
    );
    BackendHandler::new(Arc::new(authenticator), Arc::new(config))
}

/// Client options scaled for tests: short timeouts and backoffs.
pub fn fast_options() -> ClientOptions {
    ClientOptions {
        timeout: Duration::from_millis(300),
        deadline: Duration::from_secs(2),
        backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        ..ClientOptions::default()
    }
}

/// A webhook server over [`backends`] on a free loopback port, running
/// until the test ends.
pub async fn real_server(tls: Option<ServerTls>, options: ServerOptions) -> SocketAddr {
    let app = router(Arc::new(backends()), options);
    let server = WebhookServer::bind("127.0.0.1:0".parse().unwrap(), app, tls)
        .await
        .unwrap();
    let addr = server.local_addr();
    tokio::spawn(async move { server.serve(std::future::pending()).await });
    addr
}

/// What the scripted server does with one request.
#[derive(Debug, Clone)]
pub enum Act {
    /// 200 with this JSON body.
    Ok(&'static str),
    /// This status, empty JSON body.
    Status(u16),
    /// Waits, then answers 200 with this body.
    Slow(Duration, &'static str),
    /// Sends headers announcing a body, then nothing.
    HangAfterHeaders,
    /// Announces 100 bytes, sends 10, closes.
    Truncated,
    /// Announces 100 MB.
    Huge,
    /// Streams chunks without a length, 100 MB in all.
    HugeChunked,
    /// 200 with `text/html`.
    WrongType,
    /// Closes without answering.
    Close,
}

/// A raw HTTP/1.1 server that plays `script` (one act per request, the last
/// one repeated) and counts requests.
pub struct Scripted {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
}

impl Scripted {
    pub async fn start(script: Vec<Act>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::on(listener, script)
    }

    pub fn on(listener: TcpListener, script: Vec<Act>) -> Self {
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = requests.clone();
        let connections = accepted.clone();
        let script = Arc::new(script);
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                connections.fetch_add(1, Ordering::SeqCst);
                let count = count.clone();
                let script = script.clone();
                tokio::spawn(async move { serve_scripted(tcp, &count, &script).await });
            }
        });
        Self {
            addr,
            requests,
            accepted,
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    pub fn count(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

async fn read_request(tcp: &mut TcpStream) -> bool {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let Ok(n) = tcp.read(&mut chunk).await else {
            return false;
        };
        if n == 0 {
            return false;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            while buf.len() < end + 4 + length {
                let Ok(n) = tcp.read(&mut chunk).await else {
                    return false;
                };
                if n == 0 {
                    return false;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return true;
        }
    }
}

fn answer(status: u16, kind: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} X\r\ncontent-type: {kind}\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

async fn serve_scripted(mut tcp: TcpStream, count: &AtomicUsize, script: &[Act]) {
    while read_request(&mut tcp).await {
        let n = count.fetch_add(1, Ordering::SeqCst);
        let act = script[n.min(script.len() - 1)].clone();
        let json = "application/json";
        let result = match act {
            Act::Ok(body) => tcp.write_all(&answer(200, json, body)).await,
            Act::Status(status) => tcp.write_all(&answer(status, json, "{}")).await,
            Act::Slow(pause, body) => {
                tokio::time::sleep(pause).await;
                tcp.write_all(&answer(200, json, body)).await
            }
            Act::HangAfterHeaders => {
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n")
                    .await;
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return;
            }
            Act::Truncated => {
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"success\"")
                    .await;
                return;
            }
            Act::Huge => {
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 104857600\r\n\r\n")
                    .await;
                let zeros = vec![b' '; 1 << 20];
                for _ in 0..100 {
                    if tcp.write_all(&zeros).await.is_err() {
                        return;
                    }
                }
                return;
            }
            Act::HugeChunked => {
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n")
                    .await;
                let mut chunk = format!("{:x}\r\n", 1 << 20).into_bytes();
                chunk.extend(std::iter::repeat_n(b' ', 1 << 20));
                chunk.extend_from_slice(b"\r\n");
                for _ in 0..100 {
                    if tcp.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
                return;
            }
            Act::WrongType => {
                tcp.write_all(&answer(200, "text/html", "<html></html>"))
                    .await
            }
            Act::Close => return,
        };
        if result.is_err() {
            return;
        }
    }
}

/// Installs a recorder for this test process (nextest runs each test in its
/// own) and returns its snapshotter.
pub fn recorder() -> Snapshotter {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _ = metrics::set_global_recorder(recorder);
    snapshotter
}

/// The sum of counter `name` over all labels.
pub fn counter(snapshotter: &Snapshotter, name: &str) -> u64 {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == name)
        .map(|(.., value)| match value {
            DebugValue::Counter(n) => n,
            _ => 0,
        })
        .sum()
}
