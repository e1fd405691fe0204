//! What the API tests share: the API's contract (every answer checked
//! against the OpenAPI document), and a stack for the session tests: the
//! API over in-memory nodes on a real socket, with an HTTP client and
//! WebSocket helpers.

// Each test binary that includes this module uses a part of it.
#![allow(dead_code)]

pub(crate) use kisara_cluster::testing::CONTRACT;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kisara_cluster::Server;
use kisara_cluster::http::ApiBuilder;
use kisara_cluster::session::{
    ADMIN_ROLE, PLATFORM_ROLE, PLAYER_ROLE, SessionEngine, SessionLimits,
};
use kisara_core::Identity;
use kisara_core::builtin::StaticAuthenticator;
use kisara_core::memory::{MemoryAuditSink, MemoryRuntime, MemorySubnetAllocator};
use kisara_core::model::{
    ContainerId, ContainerSpec, ImageRef, LaunchRequest, NodeCapacity, NodeId,
};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

pub(crate) const PLATFORM_TOKEN: &str = "platform-token-0123456789abcdef";
pub(crate) const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";
pub(crate) const RED_TOKEN: &str = "red-player-token-0123456789abcdef";
pub(crate) const WAIT: Duration = Duration::from_secs(10);

pub(crate) type Client =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

#[derive(Clone)]
pub(crate) struct Stack {
    pub(crate) base: String,
    pub(crate) red: ContainerId,
    pub(crate) blue: ContainerId,
    pub(crate) audit: Arc<MemoryAuditSink>,
    pub(crate) http: Http,
}

/// An HTTP/1.1 client over hyper.
#[derive(Clone)]
pub(crate) struct Http(
    hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
);

impl Http {
    pub(crate) fn new() -> Self {
        Self(
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http(),
        )
    }

    /// A GET with `headers`: the status, the response's headers, its body.
    pub(crate) async fn get(
        &self,
        url: &str,
        headers: &[(&str, &str)],
    ) -> (u16, hyper::HeaderMap, bytes::Bytes) {
        use http_body_util::BodyExt;
        let mut request = hyper::Request::get(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let response = self.0.request(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        checked("GET", url, parts.status.as_u16(), &parts.headers, &bytes);
        (parts.status.as_u16(), parts.headers, bytes)
    }

    pub(crate) async fn post(&self, url: &str, token: &str, body: &str) -> (u16, Value) {
        use http_body_util::BodyExt;
        let request = hyper::Request::post(url)
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(
                body.to_owned(),
            )))
            .unwrap();
        let response = self.0.request(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        checked("POST", url, parts.status.as_u16(), &parts.headers, &bytes);
        (
            parts.status.as_u16(),
            serde_json::from_slice(&bytes).unwrap_or_default(),
        )
    }
}

/// Checks an answer to `url` against the API's contract: every answer the
/// session tests receive from the API is one the document describes.
/// The pages (and their files) are the browser's, not the API's: the
/// crate's README describes them.
fn checked(method: &str, url: &str, status: u16, headers: &hyper::HeaderMap, body: &[u8]) {
    let uri = url
        .split_once("://")
        .and_then(|(_, rest)| rest.find('/').map(|slash| &rest[slash..]))
        .unwrap_or(url);
    let page = ["/terminal", "/player", "/assets/"]
        .iter()
        .any(|prefix| uri.starts_with(prefix));
    if !page {
        CONTRACT.check(method, uri, status, headers, body);
    }
}

pub(crate) async fn stack_with(limits: SessionLimits) -> Stack {
    let image = ImageRef::parse("busybox:latest").unwrap();
    let runtime = MemoryRuntime::new();
    runtime.add_image(&image, None);
    let server = Server::builder(Arc::new(
        MemorySubnetAllocator::new("10.132.0.0/16".parse().unwrap(), 24).unwrap(),
    ))
    .build();
    let capacity = NodeCapacity {
        max_containers: 10,
        bandwidth_in: 1 << 20,
        bandwidth_out: 1 << 20,
    };
    server
        .connect_node(NodeId::new("n1").unwrap(), capacity, Arc::new(runtime))
        .await
        .unwrap();
    let launch = |owner: &str| {
        let mut spec = ContainerSpec::new(image.clone());
        spec.owner = Some(owner.into());
        let server = server.clone();
        async move {
            server
                .launch_container(LaunchRequest::new(spec), WAIT)
                .await
                .unwrap()
                .container
                .id
        }
    };
    let red = launch("red").await;
    let blue = launch("blue").await;
    let audit = Arc::new(MemoryAuditSink::new());
    let policy = Arc::new(kisara_core::builtin::PrefixPolicy::allow_by_default().deny(["rm"]));
    let sessions = SessionEngine::builder(server.clone())
        .with_command_policy(policy.clone())
        .with_terminal_policy(Arc::new(kisara_audit::LineGatePolicy::new(
            policy,
            kisara_audit::UncertainMode::Audit,
        )))
        .with_audit(audit.clone())
        .with_audit_log(audit.clone())
        .with_limits(limits)
        .build();
    let tokens = StaticAuthenticator::new()
        .with_token(Identity::new("root").with_role(ADMIN_ROLE), ADMIN_TOKEN)
        .with_token(
            Identity::new("ctfd").with_role(PLATFORM_ROLE),
            PLATFORM_TOKEN,
        )
        .with_token(
            Identity::new("alice")
                .with_role(PLAYER_ROLE)
                .with_team("red"),
            RED_TOKEN,
        );
    let app = ApiBuilder::new(server, Arc::new(tokens))
        .with_sessions(sessions)
        .with_ticket_ttl(Duration::from_secs(2))
        .build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Stack {
        base: format!("127.0.0.1:{}", address.port()),
        red,
        blue,
        audit,
        http: Http::new(),
    }
}

pub(crate) async fn stack() -> Stack {
    stack_with(SessionLimits::default()).await
}

impl Stack {
    pub(crate) async fn ticket(
        &self,
        token: &str,
        container: &ContainerId,
        body: Value,
    ) -> (u16, Value) {
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        self.http
            .post(
                &format!("http://{}/v1/containers/{container}/terminal", self.base),
                token,
                &body,
            )
            .await
    }

    /// Opens `path`; the socket, or the HTTP status it was refused with.
    pub(crate) async fn open(&self, path: &str, token: Option<&str>) -> Result<Client, u16> {
        let mut request = format!("ws://{}{path}", self.base)
            .into_client_request()
            .unwrap();
        if let Some(token) = token {
            request
                .headers_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        match tokio_tungstenite::connect_async(request).await {
            Ok((socket, _)) => Ok(socket),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                Err(response.status().as_u16())
            }
            Err(other) => panic!("connect failed: {other}"),
        }
    }
}

/// Reads frames until a text frame of `kind`; the text frames seen, and the
/// terminal's output.
pub(crate) async fn until_frame(socket: &mut Client, kind: &str) -> (Value, String) {
    let mut output = String::new();
    tokio::time::timeout(WAIT, async {
        loop {
            match socket.next().await.expect("socket open").unwrap() {
                Message::Binary(data) => {
                    assert!(matches!(data[0], 1 | 2), "stream byte {}", data[0]);
                    output.push_str(&String::from_utf8_lossy(&data[1..]));
                }
                Message::Text(text) => {
                    let frame: Value = serde_json::from_str(text.as_str()).unwrap();
                    if frame["type"] == kind {
                        return (frame, output);
                    }
                }
                _ => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {kind} frame"))
}

pub(crate) async fn until_output(socket: &mut Client, wanted: &str) -> String {
    let mut output = String::new();
    tokio::time::timeout(WAIT, async {
        while !output.contains(wanted) {
            match socket.next().await.expect("socket open").unwrap() {
                Message::Binary(data) => output.push_str(&String::from_utf8_lossy(&data[1..])),
                Message::Text(text) => output.push_str(text.as_str()),
                _ => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{wanted:?} never came; saw {output:?}"));
    output
}

pub(crate) fn stdin(bytes: &[u8]) -> Message {
    let mut frame = vec![0];
    frame.extend_from_slice(bytes);
    Message::Binary(frame.into())
}

pub(crate) async fn close_code(socket: &mut Client) -> CloseCode {
    tokio::time::timeout(WAIT, async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Close(Some(frame)))) => return frame.code,
                Some(Ok(_)) => {}
                other => panic!("socket ended without a close frame: {other:?}"),
            }
        }
    })
    .await
    .expect("closed in time")
}
