//! The web terminal and the recording player: two pages and their scripts,
//! embedded in the binary, served without authentication.
//!
//! The pages hold no secret: the credential is the ticket in the page's URL
//! (`/terminal/?container=…&ticket=…`, `/player/?recording=…&ticket=…`),
//! which the page's script hands to the API. Every page carries a strict
//! Content-Security-Policy (scripts, styles and connections to this origin
//! only, no framing) and is never cached; the vendored libraries have the
//! version in their names and are cached as immutable. The pages address
//! the API relative to themselves, so they keep working when the API is
//! nested under a prefix.

use std::future::ready;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, Uri, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use super::ApiError;
use kisara_core::Error;

const HTML: &str = "text/html; charset=utf-8";
const JAVASCRIPT: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// How long a browser may keep a served file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caching {
    /// A vendored file whose name carries its version: it never changes.
    Immutable,
    /// Kisara's own scripts and styles: asked for again on each load, so
    /// that an upgraded server is seen at once.
    Revalidate,
}

impl Caching {
    fn header(self) -> &'static str {
        match self {
            Self::Immutable => "public, max-age=31536000, immutable",
            Self::Revalidate => "no-cache",
        }
    }
}

/// A file served under `/assets/`.
struct Asset {
    /// Its name in the URL.
    name: &'static str,
    /// The file's bytes, embedded from `assets/`.
    body: &'static [u8],
    content_type: &'static str,
    caching: Caching,
}

macro_rules! asset {
    ($name:literal, $source:literal, $content_type:expr, $caching:expr) => {
        Asset {
            name: $name,
            body: include_bytes!(concat!("../../assets/", $source)),
            content_type: $content_type,
            caching: $caching,
        }
    };
}

/// Every file under `/assets/`; any other name is a 404 (nothing is read
/// from disk).
const ASSETS: &[Asset] = &[
    asset!(
        "xterm-6.0.0.js",
        "vendor/xterm.js",
        JAVASCRIPT,
        Caching::Immutable
    ),
    asset!(
        "xterm-6.0.0.css",
        "vendor/xterm.css",
        CSS,
        Caching::Immutable
    ),
    asset!(
        "addon-fit-0.11.0.js",
        "vendor/addon-fit.js",
        JAVASCRIPT,
        Caching::Immutable
    ),
    asset!(
        "asciinema-player-3.18.0.min.js",
        "vendor/asciinema-player.min.js",
        JAVASCRIPT,
        Caching::Immutable
    ),
    asset!(
        "asciinema-player-3.18.0.css",
        "vendor/asciinema-player.css",
        CSS,
        Caching::Immutable
    ),
    asset!(
        "terminal.js",
        "terminal.js",
        JAVASCRIPT,
        Caching::Revalidate
    ),
    asset!("player.js", "player.js", JAVASCRIPT, Caching::Revalidate),
    asset!(
        "csp-report.js",
        "csp-report.js",
        JAVASCRIPT,
        Caching::Revalidate
    ),
    asset!("pages.css", "pages.css", CSS, Caching::Revalidate),
];

/// A page, and what its policy lets it do beyond the common ground.
#[derive(Debug, Clone, Copy)]
enum Page {
    /// Opens the session WebSocket.
    Terminal,
    /// Fetches the cast; the player's terminal emulator is WebAssembly.
    Player,
}

impl Page {
    fn html(self) -> &'static str {
        match self {
            Self::Terminal => include_str!("../../assets/terminal.html"),
            Self::Player => include_str!("../../assets/player.html"),
        }
    }

    /// The Content-Security-Policy of the page served to `host` (the
    /// request's `Host`, when it is a plain host name or address).
    fn policy(self, host: Option<&str>) -> String {
        let script = match self {
            Self::Terminal => "'self'",
            // Compiling the player's WebAssembly; eval stays forbidden.
            Self::Player => "'self' 'wasm-unsafe-eval'",
        };
        // 'self' covers ws:// and wss:// to this origin in current
        // browsers; naming them also covers older ones.
        let sockets = host
            .map(|host| format!(" ws://{host} wss://{host}"))
            .unwrap_or_default();
        // Styles may be inline: xterm.js sizes its grid through <style>
        // elements it writes. Styles cannot run code; scripts stay 'self'.
        format!(
            "default-src 'none'; script-src {script}; style-src 'self' 'unsafe-inline'; \
             connect-src 'self'{sockets}; img-src 'self'; font-src 'self'; \
             base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        )
    }
}

/// The pages and their files, stateless, to merge into a router of any
/// state.
pub(super) fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/terminal/",
            get(|headers: HeaderMap| ready(page(Page::Terminal, &headers))),
        )
        .route(
            "/player/",
            get(|headers: HeaderMap| ready(page(Page::Player, &headers))),
        )
        // The pages address their files and the API relative to a trailing
        // slash.
        .route(
            "/terminal",
            get(|uri: Uri| ready(add_slash("terminal", &uri))),
        )
        .route("/player", get(|uri: Uri| ready(add_slash("player", &uri))))
        .route("/assets/{name}", get(asset))
}

fn page(page: Page, request: &HeaderMap) -> Response {
    let host = request
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .filter(|host| plain_host(host));
    let mut response = ([(header::CONTENT_TYPE, HTML)], page.html()).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    let policy = HeaderValue::from_str(&page.policy(host))
        .expect("the policy is ASCII: plain_host lets nothing else in");
    headers.insert(header::CONTENT_SECURITY_POLICY, policy);
    common_headers(headers);
    response
}

async fn asset(Path(name): Path<String>) -> Result<Response, ApiError> {
    let asset = ASSETS
        .iter()
        .find(|asset| asset.name == name)
        .ok_or_else(|| Error::not_found("asset", name))?;
    let mut response = ([(header::CONTENT_TYPE, asset.content_type)], asset.body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(asset.caching.header()),
    );
    common_headers(headers);
    Ok(response)
}

/// Redirects `…/page` to `…/page/`, relative so that a prefix the API is
/// nested under stays.
fn add_slash(page: &str, uri: &Uri) -> Redirect {
    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    Redirect::permanent(&format!("{page}/{query}"))
}

fn common_headers(headers: &mut HeaderMap) {
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // The page's URL holds a ticket: never hand it to anyone else.
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

/// Whether `host` is a host name, IPv4 or bracketed IPv6 address with an
/// optional port, and so safe to put in the policy (no `;`, space or
/// quote could end a directive).
fn plain_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 260
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use sha2::{Digest, Sha256};
    use tower::ServiceExt;

    const VENDOR_README: &str = include_str!("../../assets/vendor/README.md");

    /// The first table of the vendor README: file name and sha256.
    fn listed_hashes() -> Vec<(String, String)> {
        VENDOR_README
            .lines()
            .filter(|line| line.starts_with("| `"))
            .map(|line| {
                let cells: Vec<&str> = line.split('|').map(str::trim).collect();
                (cells[1].trim_matches('`'), cells[cells.len() - 2])
            })
            // Only rows with a sha256 as their last cell, not the tarballs'.
            .filter(|(_, hash)| hash.len() == 66)
            .filter(|(file, _)| !file.ends_with(".tgz"))
            .map(|(file, hash)| (file.to_owned(), hash.trim_matches('`').to_owned()))
            .collect()
    }

    fn sha256(bytes: &[u8]) -> String {
        Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[test]
    fn vendored_files_match_the_hashes_in_their_readme() {
        let listed = listed_hashes();
        assert_eq!(listed.len(), 8, "rows read: {listed:?}");
        let vendored: Vec<&Asset> = ASSETS
            .iter()
            .filter(|asset| asset.caching == Caching::Immutable)
            .collect();
        assert_eq!(vendored.len(), 5);
        for asset in vendored {
            let hash = sha256(asset.body);
            assert!(
                listed.iter().any(|(_, listed)| *listed == hash),
                "the embedded {} (sha256 {hash}) is not a vendored release listed in the vendor README",
                asset.name
            );
        }
        // Each listed file is the release it names (the embedded ones are
        // these files).
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/vendor");
        for (file, hash) in &listed {
            let bytes = std::fs::read(dir.join(file)).unwrap_or_else(|e| {
                panic!("{} is listed but unreadable: {e}", dir.join(file).display())
            });
            assert_eq!(&sha256(&bytes), hash, "{file} differs from its release");
        }
    }

    /// Every `../assets/<name>` the pages load, and every own file, exists
    /// in [`ASSETS`]; our files name no other origin.
    #[test]
    fn pages_load_only_embedded_files_and_no_other_origin() {
        for page in [Page::Terminal, Page::Player] {
            let html = page.html();
            let names: Vec<&str> = html
                .split("../assets/")
                .skip(1)
                .map(|rest| &rest[..rest.find('"').expect("a quoted asset path")])
                .collect();
            assert!(names.len() >= 3, "{names:?}");
            for name in names {
                assert!(
                    ASSETS.iter().any(|asset| asset.name == name),
                    "{page:?} loads {name}, which is not embedded"
                );
            }
        }
        let own = ASSETS
            .iter()
            .filter(|asset| asset.caching == Caching::Revalidate)
            .map(|asset| (asset.name, asset.body))
            .chain([
                ("terminal.html", Page::Terminal.html().as_bytes()),
                ("player.html", Page::Player.html().as_bytes()),
            ]);
        for (source, body) in own {
            let text = std::str::from_utf8(body).unwrap();
            for origin in ["http://", "https://", "src=\"//", "href=\"//", "url(//"] {
                assert!(!text.contains(origin), "{source} names {origin}");
            }
        }
    }

    async fn get(path: &str, host: Option<&str>) -> Response {
        let mut request = Request::get(path);
        if let Some(host) = host {
            request = request.header(header::HOST, host);
        }
        router::<()>()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    fn header_of<'r>(response: &'r Response, name: &header::HeaderName) -> &'r str {
        response
            .headers()
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .unwrap()
    }

    #[tokio::test]
    async fn pages_carry_a_strict_policy_and_are_never_cached() {
        let response = get("/terminal/?container=c&ticket=t", Some("127.0.0.1:7474")).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(header_of(&response, &header::CONTENT_TYPE), HTML);
        assert_eq!(header_of(&response, &header::CACHE_CONTROL), "no-store");
        assert_eq!(
            header_of(&response, &header::X_CONTENT_TYPE_OPTIONS),
            "nosniff"
        );
        assert_eq!(
            header_of(&response, &header::REFERRER_POLICY),
            "no-referrer"
        );
        let policy = header_of(&response, &header::CONTENT_SECURITY_POLICY);
        assert!(
            policy.starts_with("default-src 'none'; script-src 'self';"),
            "{policy}"
        );
        assert!(
            policy.contains("connect-src 'self' ws://127.0.0.1:7474 wss://127.0.0.1:7474;"),
            "{policy}"
        );
        assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(body.starts_with(b"<!doctype html>"));

        let player = get("/player/", Some("[::1]:80")).await;
        let policy = header_of(&player, &header::CONTENT_SECURITY_POLICY);
        assert!(
            policy.contains("script-src 'self' 'wasm-unsafe-eval';"),
            "{policy}"
        );
        assert!(policy.contains("ws://[::1]:80"), "{policy}");
        assert!(!policy.contains(" 'unsafe-eval'"), "{policy}");

        // A Host that could break out of a directive is left out.
        let odd = get("/terminal/", Some("evil; script-src *")).await;
        let policy = header_of(&odd, &header::CONTENT_SECURITY_POLICY);
        assert!(policy.contains("connect-src 'self';"), "{policy}");
        assert!(!policy.contains("evil"), "{policy}");
    }

    #[tokio::test]
    async fn assets_are_served_with_their_type_and_caching() {
        let vendored = get("/assets/xterm-6.0.0.js", None).await;
        assert_eq!(vendored.status(), StatusCode::OK);
        assert_eq!(header_of(&vendored, &header::CONTENT_TYPE), JAVASCRIPT);
        assert!(header_of(&vendored, &header::CACHE_CONTROL).contains("immutable"));
        assert_eq!(
            header_of(&vendored, &header::X_CONTENT_TYPE_OPTIONS),
            "nosniff"
        );
        let body = vendored.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.as_ref(), ASSETS[0].body);

        let own = get("/assets/pages.css", None).await;
        assert_eq!(header_of(&own, &header::CONTENT_TYPE), CSS);
        assert_eq!(header_of(&own, &header::CACHE_CONTROL), "no-cache");
    }

    #[tokio::test]
    async fn unknown_assets_and_paths_out_of_the_table_are_404() {
        for path in [
            "/assets/nope.js",
            "/assets/xterm.js",
            "/assets/..%2FCargo.toml",
            "/assets/%2E%2E%2Fsrc%2Flib.rs",
            "/assets/vendor%2Fxterm.js",
            "/assets/terminal.html",
        ] {
            let response = get(path, None).await;
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
            let body = response.into_body().collect().await.unwrap().to_bytes();
            let text = String::from_utf8_lossy(&body);
            assert!(text.contains("asset"), "{path}: {text}");
        }
        assert_eq!(
            get("/assets/../Cargo.toml", None).await.status(),
            StatusCode::NOT_FOUND
        );
    }

    #[tokio::test]
    async fn a_page_without_its_slash_is_redirected_with_its_query() {
        let response = get("/terminal?container=c&ticket=t", None).await;
        assert_eq!(response.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(
            header_of(&response, &header::LOCATION),
            "terminal/?container=c&ticket=t"
        );
    }
}
