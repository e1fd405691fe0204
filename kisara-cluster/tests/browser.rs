//! The web terminal and the recording player in a real headless chromium,
//! driven over WebDriver (chromedriver), against the real stack: a
//! [`Server`] whose node is an in-process [`Agent`] linked over a real
//! WebSocket on loopback, running containers on the local Docker engine;
//! a session engine with a line gate denying `rm`, recording to a cast
//! store; the HTTP API with the pages on loopback.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`scripts/ensure-browser`)
//! and a Docker engine (`scripts/ensure-docker`); fails saying so when one
//! is missing. Screenshots go to `target/test-artefacts/`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use fantoccini::{Client, ClientBuilder, Locator};
use kisara_audit::{CastStore, CastStoreOptions, LineGatePolicy, UncertainMode};
use kisara_cluster::Server;
use kisara_cluster::http::{ApiBuilder, agent_link};
use kisara_cluster::link::{Agent, AgentGateway, LinkOptions};
use kisara_cluster::session::{ADMIN_ROLE, SessionEngine, SessionLimits};
use kisara_core::builtin::{PrefixPolicy, StaticAuthenticator};
use kisara_core::memory::MemorySubnetAllocator;
use kisara_core::model::{ContainerId, LaunchRequest, NodeCapacity, NodeId};
use kisara_core::{Identity, RecordingFilter, RecordingStore, Secret};
use kisara_docker::testing::{self, Cleanup};
use serde_json::{Value, json};

const ADMIN_TOKEN: &str = "browser-test-admin-token-0123456789";
const AGENT_TOKEN: &str = "browser-test-agent-token-0123456789";
/// How long one step (a page load, a command's output) may take: chromium
/// shares a small machine with builds.
const WAIT: Duration = Duration::from_secs(30);
/// How long a session of the impatient API may stay idle.
const IDLE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the whole test may take.
const BUDGET: Duration = Duration::from_secs(240);

/// The JavaScript reading the terminal's screen, a line per row (xterm.js
/// writes spaces as no-break spaces).
const SCREEN_TEXT: &str = "return Array.from(document.querySelectorAll('.xterm-rows > div'), \
     r => r.textContent.replace(/\\u00a0/g, ' ')).join('\\n');";

fn find_on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|path| path.is_file())
    })
}

/// chromedriver on a loopback port, and the chromium it starts; both are
/// killed when dropped, also when the test fails.
struct Driver {
    chromedriver: Child,
    chromium: PathBuf,
    /// The browser profile: unique to this run, so its processes are known
    /// by it.
    profile: tempfile::TempDir,
    url: String,
}

impl Driver {
    fn start() -> Self {
        let missing = || {
            panic!(
                "the browser tests need Debian's chromium and chromedriver on PATH: \
                 run scripts/ensure-browser as root, or `apt-get install chromium chromium-driver`"
            )
        };
        let chromium = find_on_path("chromium").unwrap_or_else(missing);
        let chromedriver = find_on_path("chromedriver").unwrap_or_else(missing);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free loopback port")
            .port();
        let profile = tempfile::tempdir().expect("a browser profile directory");
        let log = std::fs::File::create(profile.path().join("chromedriver.log")).unwrap();
        let child = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .arg(format!(
                "--log-path={}",
                profile.path().join("chromedriver.log").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", chromedriver.display()));
        Self {
            chromedriver: child,
            chromium,
            profile,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// A browser session, once chromedriver answers.
    async fn session(&self) -> Client {
        let mut args = vec![
            "--headless=new".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--no-first-run".to_owned(),
            "--window-size=900,600".to_owned(),
            format!(
                "--user-data-dir={}",
                self.profile.path().join("chromium").display()
            ),
        ];
        if is_root() {
            // Chromium's sandbox refuses to run as root.
            args.push("--no-sandbox".to_owned());
        }
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": self.chromium, "args": args },
        })
        .as_object()
        .cloned()
        .expect("capabilities are a JSON object");
        let deadline = Instant::now() + WAIT;
        loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(capabilities.clone())
                .connect(&self.url)
                .await
            {
                Ok(client) => return client,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(error = %e, "chromedriver not ready yet");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!(
                    "no browser session from chromedriver at {} within {WAIT:?}: {e}\nchromedriver log:\n{}",
                    self.url,
                    std::fs::read_to_string(self.profile.path().join("chromedriver.log"))
                        .unwrap_or_default()
                ),
            }
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Chromium's processes are not chromedriver's to reap once it is
        // killed: find them by this run's profile directory.
        let profile = self.profile.path().to_string_lossy().into_owned();
        let mut pids = vec![self.chromedriver.id()];
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|s| s.parse::<u32>().ok())
                else {
                    continue;
                };
                let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmdline).contains(&profile) {
                    pids.push(pid);
                }
            }
        }
        let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
        // Ignored: a process may have ended by itself meanwhile.
        let _ = Command::new("kill")
            .arg("-KILL")
            .args(&pids)
            .stderr(Stdio::null())
            .status();
        let _ = self.chromedriver.wait();
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|status| {
            status
                .lines()
                .any(|line| line.starts_with("Uid:") && line.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Runs `script` in the page.
async fn eval(client: &Client, script: &str) -> Value {
    client
        .execute(script, Vec::new())
        .await
        .unwrap_or_else(|e| panic!("running {script:?} in the page: {e}"))
}

async fn eval_text(client: &Client, script: &str) -> String {
    match eval(client, script).await {
        Value::String(text) => text,
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Waits until `script` gives a text for which `done` holds; the text.
async fn wait_for(
    client: &Client,
    what: &str,
    script: &str,
    done: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = eval_text(client, script).await;
        if done(&text) {
            return text;
        }
        if Instant::now() > deadline {
            let status = eval_text(
                client,
                "return document.getElementById('status')?.textContent",
            )
            .await;
            panic!("waited {WAIT:?} for {what}; status line {status:?}; saw:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn screen_shows(client: &Client, wanted: &str) -> String {
    wait_for(
        client,
        &format!("{wanted:?} on the terminal"),
        SCREEN_TEXT,
        |text| text.contains(wanted),
    )
    .await
}

async fn status_is(client: &Client, state: &str) -> String {
    wait_for(
        client,
        &format!("the status line to be {state}"),
        "return document.getElementById('status').dataset.state",
        |s| s == state,
    )
    .await;
    eval_text(
        client,
        "return document.getElementById('status').textContent",
    )
    .await
}

/// Types `line` and Enter into the terminal, as a person would.
async fn type_line(client: &Client, line: &str) {
    let input = client
        .find(Locator::Css(".xterm-helper-textarea"))
        .await
        .expect("xterm's input element");
    // U+E007 is WebDriver's Enter key.
    input
        .send_keys(&format!("{line}\u{E007}"))
        .await
        .unwrap_or_else(|e| panic!("typing {line:?}: {e}"));
}

async fn no_csp_violations(client: &Client, page: &str) {
    let violations = eval(client, "return window.kisaraCspViolations").await;
    assert_eq!(
        violations,
        json!([]),
        "the {page} page broke its Content-Security-Policy"
    );
}

async fn screenshot(client: &Client, name: &str) -> PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("test-artefacts");
    std::fs::create_dir_all(&dir).unwrap();
    let png = client.screenshot().await.expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    let path = dir.join(name);
    std::fs::write(&path, png).unwrap();
    path
}

async fn post(url: &str, token: &str, body: &str) -> (u16, Value) {
    use http_body_util::BodyExt;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let request = hyper::Request::post(url)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_owned(),
        )))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or_default())
}

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    address.to_string()
}

struct Stack {
    base: String,
    /// The same API over an engine ending sessions idle for a moment.
    impatient_base: String,
    server: Server,
    container: ContainerId,
    recordings: Arc<CastStore>,
    stop_agent: tokio::sync::oneshot::Sender<()>,
    _casts: tempfile::TempDir,
    cleanup: Cleanup,
}

async fn stack() -> Stack {
    let runtime = testing::connect_default().await;
    let image = testing::test_image(&runtime).await;
    let cleanup = Cleanup::new(&runtime);

    let server = Server::builder(Arc::new(
        MemorySubnetAllocator::new("10.153.0.0/16".parse().unwrap(), 24).unwrap(),
    ))
    .build();
    let gateway = AgentGateway::new(
        server.clone(),
        Secret::new(AGENT_TOKEN),
        LinkOptions::default(),
    )
    .unwrap();
    let link_url = format!("ws://{}", serve(agent_link(gateway)).await);
    let node = NodeId::new("browser-node").unwrap();
    let capacity = NodeCapacity {
        max_containers: 4,
        bandwidth_in: 10 << 20,
        bandwidth_out: 10 << 20,
    };
    let agent = Agent::new(node.clone(), capacity, Arc::new(runtime));
    let (stop_agent, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let stop = async {
            // Ignored: a dropped sender stops the agent too.
            let _ = stopped.await;
        };
        if let Err(e) = agent.run(&link_url, &Secret::new(AGENT_TOKEN), stop).await {
            tracing::warn!(error = %e, "the agent stopped");
        }
    });
    let deadline = Instant::now() + WAIT;
    while !server.nodes().iter().any(|n| n.node == node && n.online) {
        assert!(Instant::now() < deadline, "the agent never linked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let spec = cleanup.spec(&image, ["sleep", "600"]);
    let container = server
        .launch_container(LaunchRequest::new(spec), WAIT)
        .await
        .expect("launching the test container")
        .container
        .id;

    let casts = tempfile::tempdir().unwrap();
    let recordings = Arc::new(CastStore::open(casts.path(), CastStoreOptions::default()).unwrap());
    let policy = Arc::new(PrefixPolicy::allow_by_default().deny(["rm"]));
    let sessions = SessionEngine::builder(server.clone())
        .with_command_policy(policy.clone())
        .with_terminal_policy(Arc::new(LineGatePolicy::new(policy, UncertainMode::Audit)))
        .with_recordings(recordings.clone())
        .build();
    let tokens = || {
        Arc::new(
            StaticAuthenticator::new()
                .with_token(Identity::new("ops").with_role(ADMIN_ROLE), ADMIN_TOKEN),
        )
    };
    let impatient = SessionEngine::builder(server.clone())
        .with_limits(SessionLimits {
            idle_timeout: Some(IDLE_TIMEOUT),
            ..SessionLimits::default()
        })
        .build();
    let impatient_app = ApiBuilder::new(server.clone(), tokens())
        .with_sessions(impatient)
        .build();
    let app = ApiBuilder::new(server.clone(), tokens())
        .with_sessions(sessions)
        .build();
    Stack {
        base: format!("http://{}", serve(app).await),
        impatient_base: format!("http://{}", serve(impatient_app).await),
        server,
        container,
        recordings,
        stop_agent,
        _casts: casts,
        cleanup,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_terminal_and_player_pages_work_in_a_real_browser() {
    let stack = stack().await;
    let driver = Driver::start();
    let client = driver.session().await;
    let outcome = tokio::time::timeout(BUDGET, drive(&client, &stack)).await;
    // Ignored: the browser is killed with the driver below in any case.
    let _ = client.close().await;
    drop(driver);
    // Ignored: the container may be gone already; the cleanup below
    // removes whatever is left.
    let _ = stack.server.remove(&stack.container).await;
    let _ = stack.stop_agent.send(());
    stack.cleanup.clean().await;
    outcome.unwrap_or_else(|_| panic!("the browser test took longer than {BUDGET:?}"));
}

/// A terminal ticket from the API at `base`; the page's URL.
async fn terminal_page(base: &str, container: &ContainerId) -> String {
    let (status, ticket) = post(
        &format!("{base}/v1/containers/{container}/terminal"),
        ADMIN_TOKEN,
        "",
    )
    .await;
    assert_eq!(status, 201, "{ticket}");
    format!("{base}{}", ticket["page"].as_str().expect("a page URL"))
}

async fn drive(client: &Client, stack: &Stack) {
    let page = terminal_page(&stack.base, &stack.container).await;

    // The terminal opens with the ticket and runs what is typed.
    client.set_window_size(900, 600).await.unwrap();
    client.goto(&page).await.unwrap();
    let connected = status_is(client, "connected").await;
    assert!(connected.contains(stack.container.as_str()), "{connected}");
    assert!(connected.contains("recorded"), "{connected}");
    assert_eq!(
        eval_text(client, "return location.search").await,
        "",
        "the ticket stays in the address bar"
    );
    type_line(client, "echo kisara-$((6*7))").await;
    screen_shows(client, "kisara-42").await;
    // Typed text goes up as UTF-8.
    type_line(client, "echo ünï-$((1+2))").await;
    screen_shows(client, "ünï-3").await;

    // The window's size reaches the container's terminal, before and after
    // a resize.
    let size = "return [document.getElementById('terminal').dataset.rows, \
                document.getElementById('terminal').dataset.cols].join('x')";
    let before = eval_text(client, size).await;
    type_line(client, "echo size-$(stty size | tr ' ' x)").await;
    screen_shows(client, &format!("size-{before}")).await;
    client.set_window_size(1200, 800).await.unwrap();
    let after = wait_for(client, "the grid to follow the window", size, |s| {
        s != before
    })
    .await;
    type_line(client, "echo size-$(stty size | tr ' ' x)").await;
    screen_shows(client, &format!("size-{after}")).await;

    // A denied command is not run, and the terminal says why.
    type_line(client, "touch /tmp/kept && echo touched").await;
    screen_shows(client, "touched").await;
    type_line(client, "rm /tmp/kept").await;
    let screen = screen_shows(client, "kisara: denied:").await;
    let denial = screen
        .lines()
        .find(|line| line.contains("kisara: denied:"))
        .unwrap();
    assert!(denial.contains("rm"), "{denial}");
    type_line(client, "ls /tmp/kept && echo still-$((1+1))").await;
    screen_shows(client, "still-2").await;
    no_csp_violations(client, "terminal").await;
    let shot = screenshot(client, "terminal.png").await;
    tracing::info!(path = %shot.display(), "terminal screenshot");

    // The shell's exit ends the session, and the page says so.
    type_line(client, "exit").await;
    let ended = status_is(client, "ended").await;
    assert!(ended.contains("code 1000"), "{ended}");
    screen_shows(client, "[session ended:").await;
    screen_shows(client, "exit code 0").await;

    // A ticket opens one terminal only.
    client.goto(&page).await.unwrap();
    let refused = status_is(client, "error").await;
    assert!(refused.contains("could not open"), "{refused}");
    screen_shows(client, "ticket may have expired or been used already").await;

    // Without a ticket there is nothing to open, and the page says what
    // it needs.
    client
        .goto(&format!("{}/terminal/", stack.base))
        .await
        .unwrap();
    status_is(client, "error").await;
    screen_shows(client, "this page needs ?container=").await;

    // A session ended by the server says why, in the terminal and the
    // status line.
    client
        .goto(&terminal_page(&stack.impatient_base, &stack.container).await)
        .await
        .unwrap();
    let idle = status_is(client, "ended").await;
    assert!(
        idle.contains("idle timeout") && idle.contains("code 4001"),
        "{idle}"
    );
    screen_shows(client, "[session ended: idle").await;
    screenshot(client, "terminal-idle.png").await;

    // The player plays the session's recording, its commands listed.
    let recorded = stack
        .recordings
        .list(&RecordingFilter {
            container: Some(stack.container.clone()),
            ..RecordingFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    let (status, playback) = post(
        &format!("{}/v1/recordings/{}/ticket", stack.base, recorded[0].id),
        ADMIN_TOKEN,
        "",
    )
    .await;
    assert_eq!(status, 201, "{playback}");
    let player = format!(
        "{}{}",
        stack.base,
        playback["page"].as_str().expect("a page URL")
    );
    client.goto(&player).await.unwrap();
    let ready = status_is(client, "ready").await;
    assert!(ready.contains("commands"), "{ready}");
    // Each command as "<class>|<m:ss>|<line>", in order.
    let markers = eval(
        client,
        "return Array.from(document.querySelectorAll('#markers li'), li => \
         [li.className, li.querySelector('.time').textContent.trim(), li.querySelector('a').lastChild.textContent].join('|'))",
    )
    .await;
    let markers: Vec<(String, String, String)> = markers
        .as_array()
        .expect("a list")
        .iter()
        .map(|marker| {
            let mut parts = marker.as_str().unwrap().splitn(3, '|').map(str::to_owned);
            (
                parts.next().unwrap(),
                parts.next().unwrap(),
                parts.next().unwrap(),
            )
        })
        .collect();
    let lines: Vec<(&str, &str)> = markers
        .iter()
        .map(|(class, _, line)| (class.as_str(), line.as_str()))
        .collect();
    assert_eq!(
        lines,
        [
            ("", "echo kisara-$((6*7))"),
            ("", "echo ünï-$((1+2))"),
            ("", "echo size-$(stty size | tr ' ' x)"),
            ("", "echo size-$(stty size | tr ' ' x)"),
            ("", "touch /tmp/kept && echo touched"),
            ("denied", "denied: rm /tmp/kept"),
            ("", "ls /tmp/kept && echo still-$((1+1))"),
            ("", "exit"),
        ]
    );
    for (_, time, line) in &markers {
        let (minutes, seconds) = time.split_once(':').expect("m:ss");
        assert!(
            minutes.parse::<u32>().is_ok() && seconds.len() == 2 && seconds.parse::<u32>().is_ok(),
            "{line} at {time:?}"
        );
    }
    let player_text =
        "return document.getElementById('player').textContent.replace(/\\u00a0/g, ' ')";
    wait_for(client, "the recording's last screen", player_text, |text| {
        text.contains("kisara-42") && text.contains("still-2")
    })
    .await;
    no_csp_violations(client, "player").await;
    let shot = screenshot(client, "player.png").await;
    tracing::info!(path = %shot.display(), "player screenshot");

    // A command's link seeks to it: the screen as it was then.
    client
        .find(Locator::Css("#markers li:first-child a"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(
        client,
        "the screen at the first command",
        player_text,
        |text| text.contains("echo kisara-") && !text.contains("still-2"),
    )
    .await;

    // A used playback ticket is refused, and the page shows the API's
    // message.
    client.goto(&player).await.unwrap();
    let refused = status_is(client, "error").await;
    assert!(
        refused.contains("cannot load recording")
            && refused.contains("ask for a new one")
            && refused.contains("HTTP 401"),
        "{refused}"
    );
}
