//! Sessions over WebSocket through a real socket: tickets (single use,
//! bound to a container, expiring), the frame protocol, refusals of bad
//! frames that leave the session running, close codes, interactive exec.

mod common;

use std::time::Duration;

use common::*;
use futures::{SinkExt, StreamExt};
use kisara_cluster::http::MAX_CLIENT_FRAME;
use kisara_cluster::session::SessionLimits;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

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
