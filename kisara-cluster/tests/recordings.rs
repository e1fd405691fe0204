//! Recordings and the audit trail over HTTP, from sessions actually run:
//! listing and search by command, downloads with Range, playback tickets,
//! export bundles, audit queries, the live follow, and who may see them.

mod common;

use common::*;
use futures::SinkExt;
use serde_json::Value;

/// Runs a terminal session on red that types `lines`, then exits; its
/// recording's id.
async fn session(s: &Stack, lines: &[&str]) -> String {
    let path = format!("/v1/containers/{}/terminal/ws", s.red);
    let mut socket = s.open(&path, Some(RED_TOKEN)).await.unwrap();
    let (started, _) = until_frame(&mut socket, "started").await;
    for line in lines {
        socket
            .send(stdin(format!("{line}\r").as_bytes()))
            .await
            .unwrap();
    }
    socket.send(stdin(b"exit\r")).await.unwrap();
    until_frame(&mut socket, "ended").await;
    started["recording"].as_str().unwrap().to_owned()
}

async fn get_json(s: &Stack, path: &str, token: &str) -> (u16, Value) {
    let auth = format!("Bearer {token}");
    let (status, _, body) = s
        .http
        .get(
            &format!("http://{}{path}", s.base),
            &[("authorization", &auth)],
        )
        .await;
    (status, serde_json::from_slice(&body).unwrap_or_default())
}

#[tokio::test]
async fn recordings_are_listed_searched_by_command_and_hidden_from_players() {
    let s = stack().await;
    let first = session(&s, &["echo first-session"]).await;
    let second = session(&s, &["echo second", "cat /etc/hostname"]).await;

    let (status, list) = get_json(&s, "/v1/recordings", ADMIN_TOKEN).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["total"], 2);
    let ids: Vec<&str> = list["recordings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [first.as_str(), second.as_str()], "oldest first");

    let (_, found) = get_json(&s, "/v1/recordings?command=cat%20/etc", ADMIN_TOKEN).await;
    assert_eq!(found["total"], 1, "{found}");
    assert_eq!(found["recordings"][0]["id"], second.as_str());
    let (_, none) = get_json(&s, "/v1/recordings?command=rm", ADMIN_TOKEN).await;
    assert_eq!(none["total"], 0);
    let (_, page) = get_json(&s, "/v1/recordings?limit=1&offset=1", ADMIN_TOKEN).await;
    assert_eq!(page["recordings"][0]["id"], second.as_str());

    let (status, one) = get_json(&s, &format!("/v1/recordings/{first}"), ADMIN_TOKEN).await;
    assert_eq!(status, 200);
    assert_eq!(one["end_reason"], "exit");
    assert_eq!(one["username"], "alice");

    // Players and platforms see none of it; bad input is named.
    for token in [RED_TOKEN, PLATFORM_TOKEN] {
        let (status, body) = get_json(&s, "/v1/recordings", token).await;
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["error"]["code"], "permission_denied");
    }
    let (status, body) = get_json(&s, "/v1/recordings/..%2F..%2Fetc%2Fpasswd", ADMIN_TOKEN).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("recording id"),
        "{body}"
    );
    let unknown = "0123456789abcdef0123456789abcdef";
    let (status, _) = get_json(&s, &format!("/v1/recordings/{unknown}"), ADMIN_TOKEN).await;
    assert_eq!(status, 404);
    let (status, body) = get_json(&s, "/v1/recordings?limit=0", ADMIN_TOKEN).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = get_json(&s, "/v1/recordings?path=/etc", ADMIN_TOKEN).await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn casts_download_whole_or_by_range_and_play_with_a_ticket_once() {
    let s = stack().await;
    let id = session(&s, &["echo kisara-42"]).await;
    let url = format!("http://{}/v1/recordings/{id}/cast", s.base);
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let (status, headers, whole) = s.http.get(&url, &[("authorization", &auth)]).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/x-asciicast");
    assert_eq!(headers["accept-ranges"], "bytes");
    let text = std::str::from_utf8(&whole).unwrap();
    let header: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(header["version"], 2);
    assert!(text.contains("kisara-42"), "{text}");
    assert!(
        text.contains(r#""m", "echo kisara-$((6*7))""#) || text.contains("\"m\""),
        "{text}"
    );

    let (status, headers, part) = s
        .http
        .get(&url, &[("authorization", &auth), ("range", "bytes=0-9")])
        .await;
    assert_eq!(status, 206);
    assert_eq!(&part[..], &whole[..10]);
    assert_eq!(
        headers["content-range"],
        format!("bytes 0-9/{}", whole.len())
    );
    let (_, _, tail) = s
        .http
        .get(&url, &[("authorization", &auth), ("range", "bytes=-5")])
        .await;
    assert_eq!(&tail[..], &whole[whole.len() - 5..]);
    for bad in ["bytes=999999999-", "bytes=5-1", "bytes=0-1,4-5", "pages=1"] {
        let (status, headers, _) = s
            .http
            .get(&url, &[("authorization", &auth), ("range", bad)])
            .await;
        assert_eq!(status, 416, "{bad}");
        assert_eq!(headers["content-range"], format!("bytes */{}", whole.len()));
    }
    let (status, _, _) = s.http.get(&url, &[]).await;
    assert_eq!(status, 401);

    // A playback ticket: the page's URL, the cast once.
    let (status, ticket) = s
        .http
        .post(
            &format!("http://{}/v1/recordings/{id}/ticket", s.base),
            ADMIN_TOKEN,
            "",
        )
        .await;
    assert_eq!(status, 201, "{ticket}");
    assert!(
        ticket["page"]
            .as_str()
            .unwrap()
            .starts_with(&format!("/player/?recording={id}&ticket="))
    );
    let cast = format!("http://{}{}", s.base, ticket["cast"].as_str().unwrap());
    let (status, _, played) = s.http.get(&cast, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(played, whole);
    let (status, _, _) = s.http.get(&cast, &[]).await;
    assert_eq!(status, 401, "a ticket plays once");
    let (status, _) = s
        .http
        .post(
            &format!("http://{}/v1/recordings/{id}/ticket", s.base),
            RED_TOKEN,
            "",
        )
        .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn exports_and_audit_queries_hold_every_event_in_order() {
    let s = stack().await;
    let id = session(&s, &["echo audited"]).await;
    let (status, bundle) = get_json(&s, &format!("/v1/recordings/{id}/export"), ADMIN_TOKEN).await;
    assert_eq!(status, 200);
    let kinds: Vec<&str> = bundle["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["session_started", "command", "command", "session_ended"]
    );
    assert!(bundle["cast"].as_str().unwrap().contains("audited"));
    assert_eq!(bundle["recording"]["id"], id.as_str());

    let (status, page) =
        get_json(&s, "/v1/audit?kind=command&order=oldest_first", ADMIN_TOKEN).await;
    assert_eq!(status, 200, "{page}");
    let commands: Vec<String> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            e["command"]
                .as_array()
                .unwrap()
                .iter()
                .map(|w| w.as_str().unwrap())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    assert_eq!(commands, ["echo audited", "exit"]);
    let (_, page) = get_json(&s, "/v1/audit?command=audited&user=alice", ADMIN_TOKEN).await;
    assert_eq!(page["events"].as_array().unwrap().len(), 1);
    for bad in [
        "limit=0",
        "decision=maybe",
        "order=sideways",
        "since=10&until=5",
        "color=red",
    ] {
        let (status, body) = get_json(&s, &format!("/v1/audit?{bad}"), ADMIN_TOKEN).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, _) = get_json(&s, "/v1/audit", RED_TOKEN).await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn follow_streams_new_events_as_they_happen() {
    use http_body_util::BodyExt;
    let s = stack().await;
    let request = hyper::Request::get(format!("http://{}/v1/audit/follow?kind=command", s.base))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    // A session after the follow started.
    let stack = s.clone();
    let runner = tokio::spawn(async move { session(&stack, &["echo followed"]).await });
    let mut seen = String::new();
    tokio::time::timeout(WAIT, async {
        while !seen.contains("followed") {
            let frame = body.frame().await.unwrap().unwrap();
            if let Some(data) = frame.data_ref() {
                seen.push_str(&String::from_utf8_lossy(data));
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the follow never showed the command; saw {seen:?}"));
    runner.await.unwrap();
    let first = seen.split("\n\n").next().unwrap();
    assert!(first.starts_with("id: "), "{first}");
    assert!(first.contains("\nevent: audit\ndata: {"), "{first}");
}
