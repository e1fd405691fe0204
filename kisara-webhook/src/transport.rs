//! One HTTP/1.1 `POST` over hyper, on a small pool of kept-alive
//! connections (plain or rustls), with the answer's status, content type and
//! size checked.

use std::sync::Mutex;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use kisara_core::sync::lock;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;

use crate::WebhookError;
use crate::sign::{SIGNATURE_HEADER, Signer};
use crate::tls::{ClientTls, ReloadingTls};

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// Where a webhook lives, parsed once.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    url: String,
    host: String,
    port: u16,
    tls: bool,
    authority: String,
}

impl Endpoint {
    /// Parses an `http://` or `https://` URL.
    pub(crate) fn parse(url: &str) -> Result<Self, WebhookError> {
        let bad = |message: String| WebhookError::Config {
            what: "webhook url",
            message,
        };
        let uri: Uri = url
            .parse()
            .map_err(|e| bad(format!("{url:?} is not a URL: {e}")))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            other => {
                return Err(bad(format!(
                    "{url:?} has scheme {other:?}; use http:// or https://"
                )));
            }
        };
        let host = uri
            .host()
            .ok_or_else(|| bad(format!("{url:?} names no host")))?;
        // `[::1]` in a URL is `::1` to connect and to verify.
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let authority = uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_default();
        Ok(Self {
            url: url.trim_end_matches('/').to_owned(),
            host,
            port,
            tls,
            authority,
        })
    }

    /// The URL as configured, without a trailing `/`.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }
}

/// A pool of connections to one host.
pub(crate) struct Transport {
    endpoint: Endpoint,
    tls: Option<(ReloadingTls<ClientTls>, ServerName<'static>)>,
    signer: Option<Signer>,
    max_body: usize,
    max_idle: usize,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("endpoint", &self.endpoint.url)
            .field("signed", &self.signer.is_some())
            .finish_non_exhaustive()
    }
}

impl Transport {
    pub(crate) fn new(
        endpoint: Endpoint,
        tls: Option<ClientTls>,
        signer: Option<Signer>,
        max_body: usize,
        max_idle: usize,
    ) -> Result<Self, WebhookError> {
        let tls = match (endpoint.tls, tls) {
            (false, None) => None,
            (false, Some(_)) => {
                return Err(WebhookError::Config {
                    what: "webhook url",
                    message: format!(
                        "{} is plain http but TLS settings are given; use https://",
                        endpoint.url
                    ),
                });
            }
            (true, tls) => {
                let name = ServerName::try_from(endpoint.host.clone()).map_err(|e| {
                    WebhookError::Config {
                        what: "webhook url",
                        message: format!("{:?} is not a TLS server name: {e}", endpoint.host),
                    }
                })?;
                Some((ReloadingTls::new(tls.unwrap_or_default())?, name))
            }
        };
        Ok(Self {
            endpoint,
            tls,
            signer,
            max_body,
            max_idle,
            idle: Mutex::new(Vec::new()),
        })
    }

    pub(crate) fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    async fn connect(&self, url: &str) -> Result<SendRequest<Full<Bytes>>, WebhookError> {
        let tcp = TcpStream::connect((self.endpoint.host.as_str(), self.endpoint.port))
            .await
            .map_err(|e| WebhookError::Connect {
                url: url.to_owned(),
                reason: e.to_string(),
            })?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = match &self.tls {
            None => Box::new(tcp),
            Some((config, name)) => {
                let connector = TlsConnector::from(config.current());
                let stream = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| tls_error(url, &e))?;
                Box::new(stream)
            }
        };
        let (sender, connection) = http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| send_error(url, &e))?;
        tokio::spawn(async move {
            // Ends when the peer or the pool drops the connection.
            let _ = connection.await;
        });
        Ok(sender)
    }

    fn take_idle(&self) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = lock(&self.idle);
        while let Some(sender) = idle.pop() {
            if sender.is_ready() && !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    fn put_idle(&self, sender: SendRequest<Full<Bytes>>) {
        let mut idle = lock(&self.idle);
        if idle.len() < self.max_idle {
            idle.push(sender);
        }
    }

    /// One `POST` of `body` to `url` (on this transport's host), reusing a
    /// kept-alive connection when one is idle.
    pub(crate) async fn post(
        &self,
        url: &str,
        path: &str,
        body: Bytes,
    ) -> Result<Bytes, WebhookError> {
        let request = || {
            let mut request = Request::builder()
                .method(Method::POST)
                .uri(path)
                .header(HOST, &self.endpoint.authority)
                .header(CONTENT_TYPE, "application/json");
            if let Some(signer) = &self.signer {
                request = request.header(SIGNATURE_HEADER, signer.sign(&body));
            }
            request
                .body(Full::new(body.clone()))
                .map_err(|e| WebhookError::Config {
                    what: "webhook url",
                    message: format!("{url}: {e}"),
                })
        };
        let (mut sender, response) = match self.take_idle() {
            Some(mut sender) => match sender.send_request(request()?).await {
                Ok(response) => (sender, response),
                // The server closed an idle connection as we reused it:
                // nothing reached it, so a fresh connection is the same
                // attempt, not a retry.
                Err(e) if e.is_canceled() || e.is_incomplete_message() || e.is_closed() => {
                    self.fresh_send(url, request()?).await?
                }
                Err(e) => return Err(send_error(url, &e)),
            },
            None => self.fresh_send(url, request()?).await?,
        };
        let status = response.status();
        if status != StatusCode::OK {
            return Err(WebhookError::Status {
                url: url.to_owned(),
                status: status.as_u16(),
            });
        }
        let protocol = |reason: String| WebhookError::Protocol {
            url: url.to_owned(),
            reason,
        };
        if let Some(kind) = response.headers().get(CONTENT_TYPE) {
            let kind = kind.to_str().unwrap_or("").to_ascii_lowercase();
            if kind.split(';').next().map(str::trim) != Some("application/json") {
                return Err(protocol(format!(
                    "content type {kind:?}, expected application/json"
                )));
            }
        }
        let declared = response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|len| len > self.max_body as u64) {
            return Err(protocol(format!(
                "a body of {} bytes is over the {}-byte limit",
                declared.unwrap_or_default(),
                self.max_body
            )));
        }
        let body = Limited::new(response.into_body(), self.max_body)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    protocol(format!("the body is over the {}-byte limit", self.max_body))
                } else {
                    protocol(format!("the body broke off: {e}"))
                }
            })?
            .to_bytes();
        // Only a connection whose answer was read to the end can carry the
        // next request.
        if sender.ready().await.is_ok() {
            self.put_idle(sender);
        }
        Ok(body)
    }

    async fn fresh_send(
        &self,
        url: &str,
        request: Request<Full<Bytes>>,
    ) -> Result<
        (
            SendRequest<Full<Bytes>>,
            hyper::Response<hyper::body::Incoming>,
        ),
        WebhookError,
    > {
        let mut sender = self.connect(url).await?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| send_error(url, &e))?;
        Ok((sender, response))
    }
}

fn send_error(url: &str, e: &hyper::Error) -> WebhookError {
    let reason = chain(e);
    if has_tls_error(e) {
        // In TLS 1.3 the server checks our certificate after our side of the
        // handshake is done, so its refusal arrives with the first read.
        WebhookError::Tls {
            url: url.to_owned(),
            reason,
        }
    } else {
        // A connection that drops before any answer is as good as refused.
        WebhookError::Connect {
            url: url.to_owned(),
            reason,
        }
    }
}

/// `e` and its sources, `: `-joined (hyper's own message says little).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = inner.source();
    }
    out
}

fn has_tls_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(e);
    while let Some(inner) = current {
        // `io::Error::source` skips the error it wraps, so look inside.
        let wrapped = inner
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .is_some_and(|io| io.is::<tokio_rustls::rustls::Error>());
        if wrapped || inner.is::<tokio_rustls::rustls::Error>() {
            return true;
        }
        current = inner.source();
    }
    false
}

fn tls_error(url: &str, e: &std::io::Error) -> WebhookError {
    // rustls puts its alert or verification error inside the io::Error.
    WebhookError::Tls {
        url: url.to_owned(),
        reason: chain(e),
    }
}
