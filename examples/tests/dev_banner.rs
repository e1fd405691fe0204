//! The `dev` binary on the real Docker engine: once up it prints plain
//! lines on stdout (the API's URL, the API token, the demo container's
//! addresses, the `curl` calls), not a log record, and the demo container
//! it names answers through the relay. Teardown removes the demo container
//! and its network, which the test checks do not exist before it starts.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{free_port, http};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const API_TOKEN: &str = "banner-api-token-0123456789abcdef";

/// The name of the demo container dev launches, and of its network.
const DEMO: &str = "kisara-demo";

fn docker(args: &[&str]) -> String {
    let output = std::process::Command::new("docker")
        .args(args)
        .output()
        .expect("the docker CLI runs");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Removes the demo container and network (a dev deployment leaves them
/// running on purpose) when the test ends, passed or not.
struct DemoLeftovers;

impl Drop for DemoLeftovers {
    fn drop(&mut self) {
        docker(&["rm", "-f", DEMO]);
        docker(&["network", "rm", DEMO]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_prints_a_plain_banner_and_its_demo_answers() {
    // Fails here, with instructions, when no engine answers.
    drop(kisara_docker::testing::connect_default().await);
    let exact = format!("name=^/{DEMO}$");
    let network = format!("name=^{DEMO}$");
    assert!(
        docker(&["ps", "-aq", "--filter", &exact]).trim().is_empty()
            && docker(&["network", "ls", "-q", "--filter", &network])
                .trim()
                .is_empty(),
        "a {DEMO} container or network exists already (a dev deployment on this engine?); \
         remove it (docker rm -f {DEMO}; docker network rm {DEMO}) to run this test"
    );
    let _leftovers = DemoLeftovers;
    let dir = tempfile::tempdir().unwrap();
    let (api, relay) = (free_port(), free_port());
    // A private slice of the public port range, so parallel tests do not
    // collide with it.
    let first = 41000 + (kisara_core::testing::random_u64() % 40) as u16 * 100;
    let node = format!("banner-{}", kisara_core::testing::random_u64() % 1_000_000);
    let config = dir.path().join("dev.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[kisara]
mode = "dev"

[server]
listen = "127.0.0.1:{api}"
token = "banner-agent-token-0123456789abcdef"
api_tokens = [{{ name = "dev", token = "{API_TOKEN}" }}]

[sessions]
audit_db = "{state}/audit.db"
recordings_dir = "{state}/recordings"

[agent]
server_url = "ws://127.0.0.1:{api}"
token = "banner-agent-token-0123456789abcdef"
state_dir = "{state}"
node_id = "{node}"

[network]
pools = ["10.[212-213].[0-255].0/24"]

[relay]
listen = "127.0.0.1:{relay}"
public_host = "127.0.0.1"
port_range = "{first}-{last}"
token = "banner-relay-token-0123456789abcdef"
"#,
            state = dir.path().join("state").display(),
            last = first + 99,
        ),
    )
    .unwrap();
    let mut dev = Command::new(env!("CARGO_BIN_EXE_dev"))
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start dev");
    let mut stdout = BufReader::new(dev.stdout.take().unwrap()).lines();
    let mut banner = Vec::new();
    let read = async {
        while let Some(line) = stdout.next_line().await.unwrap() {
            let last = line.starts_with("  curl http://<exposures");
            banner.push(line);
            if last {
                break;
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(120), read)
        .await
        .is_err()
        || !banner
            .last()
            .is_some_and(|l| l.starts_with("  curl http://<"))
    {
        dev.start_kill().unwrap();
        let output = dev.wait_with_output().await.unwrap();
        panic!(
            "no whole banner on stdout: {banner:#?}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    let text = banner.join("\n");
    assert!(
        banner[0].starts_with("Kisara dev deployment up") && banner[0].contains(&node),
        "{text}"
    );
    for line in &banner {
        assert!(!line.contains('\u{1b}'), "ANSI escapes in {line:?}");
        assert!(
            !line.contains(" INFO ") && !line.contains("kisara_examples"),
            "a log record on stdout: {line:?}"
        );
    }
    let starting = |prefix: &str| {
        banner
            .iter()
            .find_map(|line| line.strip_prefix(prefix))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {prefix:?} line in\n{text}"))
    };
    assert_eq!(starting("API:"), format!("http://127.0.0.1:{api}"));
    assert!(starting("API token:").starts_with(API_TOKEN), "{text}");
    assert!(starting("Relay:").ends_with(&format!(":{relay}")), "{text}");
    let demo = starting("Demo:");
    let public = demo
        .strip_prefix("kisara-demo serves HTTP at http://")
        .and_then(|rest| rest.split_once("/hostname"))
        .map(|(address, _)| address.to_owned())
        .unwrap_or_else(|| panic!("no demo address in {demo:?}"));
    let port: u16 = public.rsplit_once(':').unwrap().1.parse().unwrap();
    assert!(
        (first..=first + 99).contains(&port),
        "{public} outside the range"
    );
    assert!(starting("Demo inside:").contains(":8080"), "{text}");
    assert!(
        text.contains(&format!("http://127.0.0.1:{api}/v1/containers")),
        "{text}"
    );

    // The address it prints answers, through the relay.
    let request = format!("GET /hostname HTTP/1.1\r\nHost: {public}\r\nConnection: close\r\n\r\n");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match http(&public, &request).await {
            Ok((200, body)) if !body.trim().is_empty() => break,
            other => assert!(
                tokio::time::Instant::now() < deadline,
                "the demo at {public} does not answer: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    dev.kill().await.unwrap();
}
