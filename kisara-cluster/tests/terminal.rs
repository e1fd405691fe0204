//! Sessions over WebSocket through a real socket: tickets (single use,
//! bound to a container, expiring), the frame protocol, refusals of bad
//! frames that leave the session running, close codes, interactive exec.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use kisara_cluster::Server;
use kisara_cluster::http::{ApiBuilder, MAX_CLIENT_FRAME};
use kisara_cluster::session::{PLATFORM_ROLE, PLAYER_ROLE, SessionEngine, SessionLimits};
use kisara_core::Identity;
use kisara_core::builtin::StaticAuthenticator;
use kisara_core::memory::{MemoryAuditSink, MemoryRuntime, MemorySubnetAllocator};
use kisara_core::model::{
    ContainerId, ContainerSpec, ImageRef, LaunchRequest, NodeCapacity, NodeId,
};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const PLATFORM_TOKEN: &str = "platform-token-0123456789abcdef";
const RED_TOKEN: &str = "red-player-token-0123456789abcdef";
const WAIT: Duration = Duration::from_secs(10);

type Client =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Stack {
    base: String,
    red: ContainerId,
    blue: ContainerId,
    audit: Arc<MemoryAuditSink>,
    http: Http,
}

/// An HTTP/1.1 client over hyper.
struct Http(
    hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
);

impl Http {
    fn new() -> Self {
        Self(
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http(),
        )
    }

    async fn post(&self, url: &str, token: &str, body: &str) -> (u16, Value) {
        use http_body_util::BodyExt;
        let request = hyper::Request::post(url)
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(
                body.to_owned(),
            )))
            .unwrap();
        let response = self.0.request(request).await.unwrap();
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap_or_default())
    }
}

async fn stack_with(limits: SessionLimits) -> Stack {
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
    let sessions = SessionEngine::builder(server.clone())
        .with_audit(audit.clone())
        .with_limits(limits)
        .build();
    let tokens = StaticAuthenticator::new()
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

async fn stack() -> Stack {
    stack_with(SessionLimits::default()).await
}

impl Stack {
    async fn ticket(&self, token: &str, container: &ContainerId, body: Value) -> (u16, Value) {
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
    async fn open(&self, path: &str, token: Option<&str>) -> Result<Client, u16> {
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
async fn until_frame(socket: &mut Client, kind: &str) -> (Value, String) {
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

async fn until_output(socket: &mut Client, wanted: &str) -> String {
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

fn stdin(bytes: &[u8]) -> Message {
    let mut frame = vec![0];
    frame.extend_from_slice(bytes);
    Message::Binary(frame.into())
}

async fn close_code(socket: &mut Client) -> CloseCode {
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

#[tokio::test]
async fn a_platform_ticket_opens_a_players_terminal_once() {
    let s = stack().await;
    let (status, ticket) = s
        .ticket(
            PLATFORM_TOKEN,
            &s.red,
            json!({"user": {"username": "alice", "team": "red"}}),
        )
        .await;
    assert_eq!(status, 201, "{ticket}");
    assert_eq!(ticket["expires_in_secs"], 2);
    let websocket = ticket["websocket"].as_str().unwrap().to_owned();
    assert!(
        ticket["page"]
            .as_str()
            .unwrap()
            .starts_with("/terminal/?container=")
    );

    let mut socket = s
        .open(&format!("{websocket}&cols=100&rows=30"), None)
        .await
        .unwrap();
    let (started, _) = until_frame(&mut socket, "started").await;
    assert_eq!(started["container"], s.red.as_str());
    assert!(started["recording"].is_string(), "{started}");
    socket.send(stdin(b"echo kisara-$((6*7))\r")).await.unwrap();
    socket.send(stdin(b"stty size\r")).await.unwrap();
    until_output(&mut socket, "30 100").await;
    socket
        .send(Message::text(
            json!({"type": "resize", "cols": 120, "rows": 50}).to_string(),
        ))
        .await
        .unwrap();
    socket.send(stdin(b"stty size\r")).await.unwrap();
    until_output(&mut socket, "50 120").await;
    socket.send(stdin(b"exit 7\r")).await.unwrap();
    let (ended, _) = until_frame(&mut socket, "ended").await;
    assert_eq!(
        ended,
        json!({"type": "ended", "exit_code": 7, "reason": "exit", "message": "exit"})
    );
    assert_eq!(close_code(&mut socket).await, CloseCode::Normal);

    // The same ticket again: refused before any upgrade.
    assert_eq!(s.open(&websocket, None).await.unwrap_err(), 401);
    let users: Vec<_> = s
        .audit
        .events()
        .iter()
        .map(|e| e.username.clone())
        .collect();
    assert!(users.iter().all(|u| u == "alice"), "{users:?}");
}

#[tokio::test]
async fn tickets_are_refused_for_other_teams_other_containers_and_after_expiry() {
    let s = stack().await;
    // A player asks for itself: its own team's container only.
    let (status, _) = s.ticket(RED_TOKEN, &s.red, Value::Null).await;
    assert_eq!(status, 201);
    let (status, body) = s.ticket(RED_TOKEN, &s.blue, Value::Null).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "permission_denied");
    // A player may not vouch for anybody.
    let (status, _) = s
        .ticket(
            RED_TOKEN,
            &s.red,
            json!({"user": {"username": "mallory", "team": "red"}}),
        )
        .await;
    assert_eq!(status, 403);
    let (status, body) = s
        .ticket("wrong-token-0123456789abcdef", &s.red, Value::Null)
        .await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = s
        .ticket(PLATFORM_TOKEN, &s.red, json!({"user": {"name": "x"}}))
        .await;
    assert_eq!(status, 400, "{body}");

    // A ticket for red used on blue's socket: refused, and used up.
    let (_, ticket) = s.ticket(RED_TOKEN, &s.red, Value::Null).await;
    let secret = ticket["ticket"].as_str().unwrap();
    let foreign = format!("/v1/containers/{}/terminal/ws?ticket={secret}", s.blue);
    assert_eq!(s.open(&foreign, None).await.unwrap_err(), 401);
    assert_eq!(
        s.open(ticket["websocket"].as_str().unwrap(), None)
            .await
            .unwrap_err(),
        401
    );

    let (_, ticket) = s.ticket(RED_TOKEN, &s.red, Value::Null).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        s.open(ticket["websocket"].as_str().unwrap(), None)
            .await
            .unwrap_err(),
        401
    );
    // No ticket and no token.
    let bare = format!("/v1/containers/{}/terminal/ws", s.red);
    assert_eq!(s.open(&bare, None).await.unwrap_err(), 401);
    // Bad sizes are refused by name before any upgrade.
    let tiny = format!("/v1/containers/{}/terminal/ws?cols=0&rows=0", s.red);
    assert_eq!(s.open(&tiny, Some(RED_TOKEN)).await.unwrap_err(), 400);
}

#[tokio::test]
async fn bad_frames_are_refused_and_the_session_goes_on() {
    let s = stack().await;
    let path = format!("/v1/containers/{}/terminal/ws", s.red);
    let mut socket = s.open(&path, Some(RED_TOKEN)).await.unwrap();
    until_frame(&mut socket, "started").await;
    let garbage = [
        Message::Binary(Vec::new().into()),
        Message::Binary(vec![1, b'x'].into()),
        Message::text("not json"),
        Message::text(json!({"type": "resize", "cols": 0, "rows": 0}).to_string()),
        Message::text(json!({"type": "resize", "cols": 65535, "rows": 65535}).to_string()),
        Message::text(json!({"type": "launch_missiles"}).to_string()),
        Message::Binary(vec![0xff; 300].into()),
    ];
    for frame in garbage {
        socket.send(frame).await.unwrap();
        let (error, _) = until_frame(&mut socket, "error").await;
        assert_eq!(error["code"], "invalid", "{error}");
        assert!(error["message"].as_str().unwrap().len() > 10, "{error}");
    }
    socket.send(stdin(b"echo still-here\r")).await.unwrap();
    until_output(&mut socket, "still-here").await;

    // An oversized frame closes the socket with "message too big".
    socket
        .send(stdin(&vec![b'a'; MAX_CLIENT_FRAME + 1]))
        .await
        .unwrap();
    let code = tokio::time::timeout(WAIT, async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
                Some(Ok(_)) => {}
                _ => return None,
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(code, Some(CloseCode::Size));
}

#[tokio::test]
async fn an_idle_terminal_is_closed_with_its_reason() {
    let s = stack_with(SessionLimits {
        idle_timeout: Some(Duration::from_millis(300)),
        ..SessionLimits::default()
    })
    .await;
    let path = format!("/v1/containers/{}/terminal/ws", s.red);
    let mut socket = s.open(&path, Some(RED_TOKEN)).await.unwrap();
    let (ended, _) = until_frame(&mut socket, "ended").await;
    assert_eq!(ended["reason"], "idle_timeout");
    assert_eq!(ended["exit_code"], Value::Null);
    assert_eq!(close_code(&mut socket).await, CloseCode::from(4001));
}

#[tokio::test]
async fn interactive_exec_streams_stdin_and_exit_codes() {
    let s = stack().await;
    let path = format!("/v1/containers/{}/exec/ws?command=cat", s.red);
    let mut socket = s.open(&path, Some(RED_TOKEN)).await.unwrap();
    until_frame(&mut socket, "started").await;
    socket.send(stdin(b"ping\n")).await.unwrap();
    until_output(&mut socket, "ping\n").await;
    socket
        .send(Message::text(r#"{"type":"eof"}"#))
        .await
        .unwrap();
    let (ended, _) = until_frame(&mut socket, "ended").await;
    assert_eq!(ended["exit_code"], 0);

    let path = format!(
        "/v1/containers/{}/exec/ws?command=sh&command=-c&command=echo%20oops%20%3E%262%3B%20exit%204",
        s.red
    );
    let mut socket = s.open(&path, Some(PLATFORM_TOKEN)).await.unwrap();
    let (ended, output) = until_frame(&mut socket, "ended").await;
    assert_eq!(output, "oops\n");
    assert_eq!(ended["exit_code"], 4);

    // Refusals before any upgrade: the other team's container, no command,
    // unknown parameters, no token.
    let blue = format!("/v1/containers/{}/exec/ws?command=id", s.blue);
    assert_eq!(s.open(&blue, Some(RED_TOKEN)).await.unwrap_err(), 403);
    let none = format!("/v1/containers/{}/exec/ws", s.red);
    assert_eq!(s.open(&none, Some(RED_TOKEN)).await.unwrap_err(), 400);
    let odd = format!("/v1/containers/{}/exec/ws?command=id&shell=1", s.red);
    assert_eq!(s.open(&odd, Some(RED_TOKEN)).await.unwrap_err(), 400);
    assert_eq!(s.open(&blue, None).await.unwrap_err(), 401);
}
