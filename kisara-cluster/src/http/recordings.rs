//! Recordings and the audit trail over HTTP: list and search recordings
//! (by the commands run in them too), download a `.cast` by id with Range
//! requests, playback tickets for the player page, an export bundle for an
//! outside auditor, audit queries and a live follow as server-sent events.
//!
//! Everything here needs the `admin` role (or a playback ticket for one
//! recording). Recordings are addressed by id only: an id is 32 hex digits,
//! checked before any store sees it, so no request names a path.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::params::{self, NoQuery, ValidPath};
use super::{ApiError, ApiResult, ApiState, Caller, ErrorBody, query, tag};
use crate::session::{Action, TicketScope, authorize};
use kisara_core::model::{ContainerId, SessionId, Timestamp};
use kisara_core::{
    AuditLog, AuditPage, AuditQuery, Error, QueryOrder, RecordingFilter, RecordingInfo,
};

/// The media type of asciicast files.
const ASCIICAST: &str = "application/x-asciicast";
/// How often a follow looks for new events.
const FOLLOW_POLL: Duration = Duration::from_millis(250);
/// How often a quiet follow sends a keepalive comment.
const FOLLOW_KEEPALIVE: Duration = Duration::from_secs(15);
/// The most recordings one list answers.
const MAX_LIST: usize = 1000;
/// The most command events a search by command reads.
const MAX_SEARCHED_EVENTS: usize = 10 * AuditQuery::MAX_LIMIT;

fn audit_log(state: &ApiState) -> ApiResult<&std::sync::Arc<dyn AuditLog>> {
    state.sessions.audit_log().ok_or_else(|| {
        ApiError::from(Error::not_supported(
            "this server",
            "audit queries: its session engine has no audit log (SessionEngineBuilder::with_audit_log)",
        ))
    })
}

/// A page of recordings.
#[derive(Debug, Serialize, ToSchema)]
#[schema(examples(json!({"recordings": [{"id": "5d1f0c9a3b7e4f2a8c6d0e1b9a7f3c5d", "session": "c0ffee0123456789", "container": "4f1c2a9b7e3d", "username": "alice", "size": {"rows": 24, "cols": 80}, "title": "alice in 4f1c2a9b7e3d", "env": {"SHELL": "/bin/sh", "TERM": "xterm-256color"}, "started": 1_767_787_200_000_u64, "ended": 1_767_787_260_000_u64, "end_reason": "exit", "size_bytes": 2048, "truncated": false}], "total": 1})))]
struct RecordingList {
    /// The recordings, newest first.
    recordings: Vec<RecordingInfo>,
    /// How many matched in all.
    total: usize,
}

/// The recordings, filtered, newest first; `command` finds the sessions
/// that ran a command containing the text (from the audit log).
#[utoipa::path(
    get,
    path = "/v1/recordings",
    operation_id = "listRecordings",
    tag = tag::RECORDINGS,
    security(("bearer" = [])),
    params(params::RecordingListParams),
    responses(
        (status = 200, description = "A page of recordings", body = RecordingList),
        (status = 403, description = "The caller is not an admin", body = ErrorBody),
        (status = 501, description = "A search by command on a server whose session engine keeps no audit log", body = ErrorBody),
        (status = 500, description = "The store failed", body = ErrorBody),
    )
)]
pub(super) async fn list(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    uri: Uri,
) -> ApiResult<impl IntoResponse> {
    authorize(&caller, Action::Audit)?;
    let params: params::RecordingListParams = query(&uri)?;
    let limit = params.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_LIST {
        return Err(
            Error::invalid("limit", format!("{limit} is not within 1..={MAX_LIST}")).into(),
        );
    }
    let filter = RecordingFilter {
        container: params.container.map(ContainerId::new),
        username: params.user,
        since: params.since.map(Timestamp::from_unix_millis),
        until: params.until.map(Timestamp::from_unix_millis),
    };
    let mut found = state.sessions.recordings().list(&filter).await?;
    if let Some(text) = params.command {
        let sessions = sessions_that_ran(audit_log(&state)?.as_ref(), &text, &filter).await?;
        found.retain(|info| sessions.contains(&info.session));
    }
    let total = found.len();
    let recordings = found
        .into_iter()
        .skip(params.offset.unwrap_or(0))
        .take(limit)
        .collect();
    Ok(axum::Json(RecordingList { recordings, total }))
}

/// The sessions whose audit trail has a command containing `text`.
async fn sessions_that_ran(
    log: &dyn AuditLog,
    text: &str,
    filter: &RecordingFilter,
) -> ApiResult<BTreeSet<SessionId>> {
    let query = AuditQuery {
        kind: Some("command".into()),
        command: Some(text.to_owned()),
        container: filter.container.clone(),
        username: filter.username.clone(),
        since: filter.since,
        order: QueryOrder::OldestFirst,
        limit: AuditQuery::MAX_LIMIT,
        ..AuditQuery::default()
    };
    let events = every_page(log, query, MAX_SEARCHED_EVENTS).await?;
    Ok(events
        .into_iter()
        .map(|stored| stored.event.session)
        .collect())
}

/// The events of `query`, page after page, until the last page or at
/// least `most` events.
async fn every_page(
    log: &dyn AuditLog,
    mut query: AuditQuery,
    most: usize,
) -> ApiResult<Vec<kisara_core::StoredEvent>> {
    let mut events = Vec::new();
    loop {
        let page = log.query(&query).await?;
        events.extend(page.events);
        match page.next {
            Some(next) if events.len() < most => query.cursor = Some(next),
            _ => return Ok(events),
        }
    }
}

/// One recording's metadata.
#[utoipa::path(
    get,
    path = "/v1/recordings/{id}",
    operation_id = "inspectRecording",
    tag = tag::RECORDINGS,
    security(("bearer" = [])),
    params(params::RecordingPath),
    responses(
        (status = 200, description = "The recording", body = RecordingInfo),
        (status = 403, description = "The caller is not an admin", body = ErrorBody),
        (status = 404, description = "No such recording", body = ErrorBody),
        (status = 500, description = "The store failed", body = ErrorBody),
    )
)]
pub(super) async fn inspect(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    _query: NoQuery,
    ValidPath(id): ValidPath<params::RecordingPath>,
) -> ApiResult<impl IntoResponse> {
    authorize(&caller, Action::Audit)?;
    let recording = state.sessions.recordings().open(&id).await?;
    Ok(axum::Json(recording.info))
}

/// A playback ticket as the API gives it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(examples(json!({
    "ticket": "0e7f3b1d5c8a2e4f6b0d9f2c6a1e0b7d4c3a8e5f1d2b6c9a",
    "expires_in_secs": 60,
    "cast": "/v1/recordings/5d1f0c9a3b7e4f2a8c6d0e1b9a7f3c5d/cast?ticket=0e7f3b1d5c8a2e4f6b0d9f2c6a1e0b7d4c3a8e5f1d2b6c9a",
    "page": "/player/?recording=5d1f0c9a3b7e4f2a8c6d0e1b9a7f3c5d&ticket=0e7f3b1d5c8a2e4f6b0d9f2c6a1e0b7d4c3a8e5f1d2b6c9a"
})))]
struct PlaybackTicket {
    /// The single-use secret.
    ticket: String,
    /// How long it is valid, in seconds.
    expires_in_secs: u64,
    /// The recording's file, fetched with the ticket.
    cast: String,
    /// The player page that plays it.
    page: String,
}

/// Gives a single-use, short-lived ticket to play one recording in the
/// player page, for a browser that holds no token.
#[utoipa::path(
    post,
    path = "/v1/recordings/{id}/ticket",
    operation_id = "issuePlaybackTicket",
    tag = tag::RECORDINGS,
    security(("bearer" = [])),
    params(params::RecordingPath),
    responses(
        (status = 201, description = "The ticket, with the file and the page that take it", body = PlaybackTicket),
        (status = 403, description = "The caller is not an admin", body = ErrorBody),
        (status = 404, description = "No such recording", body = ErrorBody),
        (status = 503, description = "Too many tickets are outstanding", body = ErrorBody),
        (status = 500, description = "The store failed", body = ErrorBody),
    )
)]
pub(super) async fn ticket(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    _query: NoQuery,
    ValidPath(id): ValidPath<params::RecordingPath>,
) -> ApiResult<impl IntoResponse> {
    authorize(&caller, Action::Audit)?;
    // Refused now, not when the player comes.
    state.sessions.recordings().open(&id).await?;
    let ticket = state
        .tickets
        .issue(caller, TicketScope::Playback(id.clone()))?;
    Ok((
        StatusCode::CREATED,
        axum::Json(PlaybackTicket {
            cast: format!("/v1/recordings/{id}/cast?ticket={}", ticket.secret),
            page: format!("/player/?recording={id}&ticket={}", ticket.secret),
            expires_in_secs: ticket.ttl.as_secs(),
            ticket: ticket.secret,
        }),
    ))
}

/// The recording as an asciicast v2 file, whole or the one byte range the
/// `Range` header asks for, with a playback ticket or an admin's token.
#[utoipa::path(
    get,
    path = "/v1/recordings/{id}/cast",
    operation_id = "downloadCast",
    tag = tag::RECORDINGS,
    security((), ("bearer" = [])),
    params(
        params::RecordingPath,
        params::CastParams,
        ("Range" = Option<String>, Header, description = "One byte range: `bytes=START-END`, `bytes=START-` or `bytes=-SUFFIX`", example = "bytes=0-1023"),
    ),
    responses(
        (status = 200, description = "The whole file", content_type = "application/x-asciicast", body = String, example = json!("{\"version\": 2, \"width\": 80, \"height\": 24}\n[0.5, \"o\", \"$ \"]\n")),
        (status = 206, description = "The range asked for", content_type = "application/x-asciicast", body = String,
            headers(("Content-Range" = String, description = "`bytes START-END/TOTAL`")), example = json!("{\"version\": 2, \"width\": 80, \"height\": 24}\n[0.5, \"o\", \"$ \"]\n")),
        (status = 401, description = "No token and no ticket, or one refused (unknown, used, expired or for another recording)", body = ErrorBody),
        (status = 403, description = "The caller is not an admin", body = ErrorBody),
        (status = 404, description = "No such recording", body = ErrorBody),
        (status = 416, description = "The range is malformed, asks for several ranges or lies outside the file", body = ErrorBody,
            headers(("Content-Range" = String, description = "`bytes */TOTAL`"))),
        (status = 500, description = "The store failed", body = ErrorBody),
    )
)]
pub(super) async fn cast(
    State(state): State<ApiState>,
    ValidPath(id): ValidPath<params::RecordingPath>,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let params: params::CastParams = query(&uri)?;
    match &params.ticket {
        Some(ticket) => {
            state
                .tickets
                .redeem(ticket, &TicketScope::Playback(id.clone()))?;
        }
        None => {
            let Caller(caller) = Caller::authenticate(&state, &headers, None).await?;
            authorize(&caller, Action::Audit)?;
        }
    }
    let file = state.sessions.recordings().export(&id).await?;
    let range = headers
        .get(header::RANGE)
        .map(|value| value.to_str().unwrap_or_default());
    ranged(file, range, &format!("{id}.cast"))
}

/// `file`, whole or the one byte range asked for (RFC 9110 §14).
fn ranged(file: Bytes, range: Option<&str>, name: &str) -> ApiResult<Response> {
    let total = file.len() as u64;
    let disposition = HeaderValue::from_str(&format!("inline; filename=\"{name}\""))
        .expect("ids and .cast make a valid header");
    let base = [
        (header::CONTENT_TYPE, HeaderValue::from_static(ASCIICAST)),
        (header::ACCEPT_RANGES, HeaderValue::from_static("bytes")),
        (header::CONTENT_DISPOSITION, disposition),
    ];
    let Some(range) = range else {
        return Ok((StatusCode::OK, base, file).into_response());
    };
    match parse_range(range, total) {
        Some((start, end)) => {
            let content_range = HeaderValue::from_str(&format!("bytes {start}-{end}/{total}"))
                .expect("numbers make a valid header");
            let part = file.slice(start as usize..=end as usize);
            Ok((
                StatusCode::PARTIAL_CONTENT,
                base,
                [(header::CONTENT_RANGE, content_range)],
                part,
            )
                .into_response())
        }
        None => {
            let content_range = HeaderValue::from_str(&format!("bytes */{total}"))
                .expect("numbers make a valid header");
            let error = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                kisara_core::ErrorKind::Invalid.code(),
                format!(
                    "range {:?} is not within the recording's {total} bytes (one range of bytes=START-END, START-, or -SUFFIX)",
                    kisara_core::excerpt(range)
                ),
            );
            let mut response = error.into_response();
            response
                .headers_mut()
                .insert(header::CONTENT_RANGE, content_range);
            Ok(response)
        }
    }
}

/// The inclusive byte range `range` asks of `total` bytes; `None` when it
/// is malformed, asks for several ranges, or lies outside.
fn parse_range(range: &str, total: u64) -> Option<(u64, u64)> {
    let spec = range.trim().strip_prefix("bytes=")?;
    if spec.contains(',') || total == 0 {
        return None;
    }
    let (start, end) = spec.split_once('-')?;
    let (start, end) = match (start.trim(), end.trim()) {
        ("", suffix) => {
            let suffix: u64 = suffix.parse().ok().filter(|&n| n > 0)?;
            (total.saturating_sub(suffix), total - 1)
        }
        (start, "") => (start.parse().ok()?, total - 1),
        (start, end) => (start.parse().ok()?, end.parse::<u64>().ok()?.min(total - 1)),
    };
    (start <= end && start < total).then_some((start, end))
}

/// A session for an outside auditor: the recording's metadata, its audit
/// events in order, and the `.cast` file.
#[derive(Debug, Serialize, ToSchema)]
#[schema(examples(json!({"recording": {"id": "5d1f0c9a3b7e4f2a8c6d0e1b9a7f3c5d", "session": "c0ffee0123456789", "container": "4f1c2a9b7e3d", "username": "alice", "size": {"rows": 24, "cols": 80}, "title": "alice in 4f1c2a9b7e3d", "env": {"SHELL": "/bin/sh", "TERM": "xterm-256color"}, "started": 1_767_787_200_000_u64, "ended": 1_767_787_260_000_u64, "end_reason": "exit", "size_bytes": 2048, "truncated": false}, "audit": [{"id": 42, "time": 1_767_787_230_000_u64, "session": "c0ffee0123456789", "username": "alice", "container": "4f1c2a9b7e3d", "type": "command", "command": ["cat", "/flag"], "decision": {"decision": "allow"}, "uncertain": false}], "cast": "{\"version\": 2, \"width\": 80, \"height\": 24}\n[0.5, \"o\", \"$ \"]\n"})))]
struct Export {
    /// The recording's metadata.
    recording: RecordingInfo,
    /// The session's audit events, oldest first.
    audit: Vec<kisara_core::StoredEvent>,
    /// The asciicast v2 file.
    cast: String,
}

/// One session as a bundle for an outside auditor: the recording's
/// metadata, every audit event of its session in order, and the `.cast`.
#[utoipa::path(
    get,
    path = "/v1/recordings/{id}/export",
    operation_id = "exportRecording",
    tag = tag::RECORDINGS,
    security(("bearer" = [])),
    params(params::RecordingPath),
    responses(
        (status = 200, description = "The bundle, as an attachment", body = Export,
            headers(("Content-Disposition" = String, description = "`attachment; filename=\"<id>.json\"`"))),
        (status = 403, description = "The caller is not an admin", body = ErrorBody),
        (status = 404, description = "No such recording", body = ErrorBody),
        (status = 501, description = "The server's session engine keeps no audit log", body = ErrorBody),
        (status = 500, description = "The store failed", body = ErrorBody),
    )
)]
pub(super) async fn export(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    _query: NoQuery,
    ValidPath(id): ValidPath<params::RecordingPath>,
) -> ApiResult<Response> {
    authorize(&caller, Action::Audit)?;
    let recordings = state.sessions.recordings();
    let info = recordings.open(&id).await?.info;
    let file = recordings.export(&id).await?;
    let query = AuditQuery {
        session: Some(info.session.clone()),
        order: QueryOrder::OldestFirst,
        limit: AuditQuery::MAX_LIMIT,
        ..AuditQuery::default()
    };
    let audit = every_page(audit_log(&state)?.as_ref(), query, usize::MAX).await?;
    let disposition = HeaderValue::from_str(&format!("attachment; filename=\"{id}.json\""))
        .expect("ids make a valid header");
    let body = Export {
        recording: info,
        audit,
        cast: String::from_utf8_lossy(&file).into_owned(),
    };
    Ok((
        [(header::CONTENT_DISPOSITION, disposition)],
        axum::Json(body),
    )
        .into_response())
}

/// The audit trail, filtered, a page at a time.
#[utoipa::path(
    get,
    path = "/v1/audit",
    operation_id = "queryAudit",
    tag = tag::AUDIT,
    security(("bearer" = [])),
    params(params::AuditParams),
    responses(
        (status = 200, description = "A page of events; `next` continues it", body = AuditPage),
        (status = 403, description = "The caller is not an admin", body = ErrorBody),
        (status = 501, description = "The server's session engine keeps no audit log, or the log cannot apply a filter", body = ErrorBody),
        (status = 500, description = "The log failed", body = ErrorBody),
    )
)]
pub(super) async fn audit(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    uri: Uri,
) -> ApiResult<axum::Json<AuditPage>> {
    authorize(&caller, Action::Audit)?;
    let query = query::<params::AuditParams>(&uri)?.into_query()?;
    Ok(axum::Json(audit_log(&state)?.query(&query).await?))
}

/// `GET /v1/audit/follow`: the events matching the filters as they are
/// recorded, as server-sent events (`id:` the event's id, `event: audit`,
/// `data:` its JSON), from after `cursor` or from now; a comment every
/// [`FOLLOW_KEEPALIVE`] keeps proxies from closing a quiet stream.
#[utoipa::path(
    get,
    path = "/v1/audit/follow",
    operation_id = "followAudit",
    tag = tag::AUDIT,
    security(("bearer" = [])),
    params(
        params::AuditParams,
        ("Last-Event-ID" = Option<u64>, Header, description = "A reconnecting client's last event id: the stream goes on after it", example = 42),
    ),
    responses(
        (status = 200, description = "Server-sent events: `id:` the event's id, `event: audit`, `data:` its JSON (a `StoredEvent`); `event: error` and the end when the log fails", content_type = "text/event-stream", body = String,
            example = json!("id: 42\nevent: audit\ndata: {\"id\":42,\"time\":1767787230000,\"session\":\"c0ffee0123456789\",\"username\":\"alice\",\"container\":\"4f1c2a9b7e3d\",\"type\":\"command\",\"command\":[\"cat\",\"/flag\"],\"decision\":{\"decision\":\"allow\"},\"uncertain\":false}\n\n")),
        (status = 403, description = "The caller is not an admin", body = ErrorBody),
        (status = 501, description = "The server's session engine keeps no audit log, or the log cannot apply a filter", body = ErrorBody),
        (status = 500, description = "The log failed", body = ErrorBody),
    )
)]
pub(super) async fn follow(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult<Response> {
    authorize(&caller, Action::Audit)?;
    let mut query = query::<params::AuditParams>(&uri)?.into_query()?;
    let log = audit_log(&state)?.clone();
    // A reconnecting client says where it was.
    if let Some(last) = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
    {
        query.cursor = Some(last);
    }
    if query.cursor.is_none() {
        let newest = log
            .query(&AuditQuery {
                limit: 1,
                order: QueryOrder::NewestFirst,
                ..query.clone()
            })
            .await?;
        query.cursor = Some(newest.events.first().map_or(0, |e| e.id));
    }
    query.order = QueryOrder::OldestFirst;
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(16);
    tokio::spawn(async move {
        let mut quiet = Duration::ZERO;
        loop {
            let page = match log.query(&query).await {
                Ok(page) => page,
                Err(error) => {
                    let line = format!(
                        "event: error\ndata: {}\n\n",
                        serde_json::json!({"code": error.kind().code(), "message": error.to_string()})
                    );
                    let _ = sender.send(Ok(Bytes::from(line))).await;
                    return;
                }
            };
            for stored in &page.events {
                let data = serde_json::to_string(stored).expect("events serialize");
                let line = format!("id: {}\nevent: audit\ndata: {data}\n\n", stored.id);
                if sender.send(Ok(Bytes::from(line))).await.is_err() {
                    return;
                }
                query.cursor = Some(stored.id);
            }
            if page.next.is_some() {
                continue;
            }
            quiet = if page.events.is_empty() {
                quiet + FOLLOW_POLL
            } else {
                Duration::ZERO
            };
            if quiet >= FOLLOW_KEEPALIVE {
                quiet = Duration::ZERO;
                if sender
                    .send(Ok(Bytes::from_static(b": keepalive\n\n")))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            tokio::select! {
                () = tokio::time::sleep(FOLLOW_POLL) => {}
                () = sender.closed() => return,
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(receiver);
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges_within_and_without() {
        assert_eq!(parse_range("bytes=0-9", 100), Some((0, 9)));
        assert_eq!(parse_range("bytes=90-", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=-10", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=-1000", 100), Some((0, 99)));
        assert_eq!(parse_range("bytes=50-1000", 100), Some((50, 99)));
        for bad in [
            "bytes=100-",
            "bytes=9-0",
            "bytes=-0",
            "bytes=a-b",
            "items=0-1",
            "bytes=0-1,5-6",
            "bytes=",
            "bytes=18446744073709551616-",
        ] {
            assert_eq!(parse_range(bad, 100), None, "{bad}");
        }
        assert_eq!(parse_range("bytes=0-0", 0), None);
    }
}
