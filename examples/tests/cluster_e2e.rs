//! The whole cluster as separate processes on the real Docker engine: a
//! relay, the server and two agents (distinct node ids, same engine).
//! Twenty containers for five owners are launched through the HTTP API and
//! reached through the relay's public ports (the relay's own metrics
//! endpoint counts them); one agent is killed with
//! SIGKILL and restarted, then the server is; after each, everything is
//! still there and reachable. Teardown leaves nothing behind.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{Process, exchange_parts, free_port, http, kisara, remove_node_leftovers};
use kisara_cluster::testing::CONTRACT;
use kisara_core::model::LabelFilter;
use kisara_core::{ContainerRuntime, model::labels};
use serde_json::{Value, json};

const API_TOKEN: &str = "e2e-api-token-0123456789abcdef";
const AGENT_TOKEN: &str = "e2e-agent-token-0123456789abcdef";
const RELAY_TOKEN: &str = "e2e-relay-token-0123456789abcdef";
const WAIT: Duration = Duration::from_secs(60);

/// The rig: config files and processes. Dropping it kills the processes
/// and removes whatever its nodes left on the engine, so a failed run
/// leaks nothing.
struct Rig {
    dir: tempfile::TempDir,
    api: String,
    /// Where the relay serves its metrics.
    relay_metrics: String,
    nodes: [String; 2],
    processes: BTreeMap<String, Process>,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.processes.clear();
        for node in &self.nodes {
            remove_node_leftovers(node);
        }
    }
}

impl Rig {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (api, relay, relay_metrics) = (free_port(), free_port(), free_port());
        // A private slice of the public port range, so parallel runs of
        // other tests do not collide with it.
        let first = 21000 + (kisara_core::testing::random_u64() % 200) as u16 * 100;
        let base = format!(
            r#"
[server]
listen = "127.0.0.1:{api}"
token = "{AGENT_TOKEN}"
api_tokens = [{{ name = "e2e", token = "{API_TOKEN}" }}]
heartbeat_timeout_secs = 3

[sessions]
audit_db = "{dir}/audit.db"
recordings_dir = "{dir}/recordings"

[network]
pools = ["10.[200-209].[0-255].0/24"]

[relay]
listen = "127.0.0.1:{relay}"
public_host = "127.0.0.1"
port_range = "{first}-{last}"
token = "{RELAY_TOKEN}"
metrics_listen = "127.0.0.1:{relay_metrics}"
"#,
            last = first + 99,
            dir = dir.path().display(),
        );
        std::fs::write(dir.path().join("server.toml"), &base).unwrap();
        // Fresh node ids: nothing from an earlier run is adopted.
        let run = kisara_core::testing::random_u64() % 1_000_000;
        let nodes = [format!("e2e-{run}-a"), format!("e2e-{run}-b")];
        for node in &nodes {
            let agent = format!(
                r#"{base}
[agent]
server_url = "ws://127.0.0.1:{api}"
token = "{AGENT_TOKEN}"
state_dir = "{state}"
node_id = "{node}"
max_containers = 15
relays = [{{ name = "relay-1", address = "127.0.0.1:{relay}", token = "{RELAY_TOKEN}" }}]
"#,
                state = dir.path().join(node).display(),
            );
            std::fs::write(dir.path().join(format!("{node}.toml")), agent).unwrap();
        }
        Self {
            dir,
            api: format!("127.0.0.1:{api}"),
            relay_metrics: format!("127.0.0.1:{relay_metrics}"),
            nodes,
            processes: BTreeMap::new(),
        }
    }

    /// Starts `relay`, `server`, or agent `0` / `1`.
    fn start(&mut self, name: &str) {
        let (binary, config) = match name {
            "relay" => (env!("CARGO_BIN_EXE_relay"), "server.toml".to_owned()),
            "server" => (env!("CARGO_BIN_EXE_server"), "server.toml".to_owned()),
            index => {
                let node = &self.nodes[index.parse::<usize>().expect("an agent index")];
                (env!("CARGO_BIN_EXE_agent"), format!("{node}.toml"))
            }
        };
        let config = self.dir.path().join(config);
        let process = Process::start(self.dir.path(), name, kisara(binary, &config));
        self.processes.insert(name.to_owned(), process);
    }

    fn logs(&self) -> String {
        self.processes
            .values()
            .map(Process::tail)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Calls the API; answers the status and the JSON body (status 0 and
    /// the error when the server cannot be reached, e.g. while it starts).
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {API_TOKEN}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.api,
            body.len()
        );
        let answer = match tokio::net::TcpStream::connect(&self.api).await {
            Ok(stream) => exchange_parts(stream, &request).await,
            Err(error) => Err(error),
        };
        match answer {
            Ok((status, headers, body)) => {
                // Every answer is one the API's document describes.
                CONTRACT.check(method, path, status, &headers, body.as_bytes());
                (status, serde_json::from_str(&body).unwrap_or(Value::Null))
            }
            Err(error) => (0, Value::String(format!("{method} {path}: {error}"))),
        }
    }

    /// Polls `check` until it holds, failing with the logs after `WAIT`.
    async fn eventually<F, Fut>(&self, what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = Instant::now() + WAIT;
        while !check().await {
            assert!(
                Instant::now() < deadline,
                "{what}: never happened\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// What the relay's metrics endpoint answers (no token needed).
    async fn relay_metrics(&self) -> String {
        match scrape(&self.relay_metrics, None).await {
            Ok((200, body)) => body,
            other => format!("{other:?}"),
        }
    }

    async fn online_nodes(&self) -> Vec<String> {
        let (status, nodes) = self.call("GET", "/v1/nodes", None).await;
        if status != 200 {
            return Vec::new();
        }
        let mut online: Vec<String> = nodes
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["online"] == true)
            .map(|n| n["node"].as_str().unwrap().to_owned())
            .collect();
        online.sort();
        online
    }
}

/// `GET /metrics` at `address`, with a bearer token when one is given.
async fn scrape(address: &str, bearer: Option<&str>) -> std::io::Result<(u16, String)> {
    let authorization = bearer
        .map(|token| format!("Authorization: Bearer {token}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "GET /metrics HTTP/1.1\r\nHost: {address}\r\n{authorization}Connection: close\r\n\r\n"
    );
    http(address, &request).await
}

/// What a container's httpd answers for `/hostname` through its public
/// address: its hostname, the start of its id.
async fn fetch_hostname(public: &Value) -> Option<String> {
    let address = format!("{}:{}", public["host"].as_str()?, public["port"].as_u64()?);
    let request = format!("GET /hostname HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    match http(&address, &request).await {
        Ok((200, body)) => Some(body.trim().to_owned()),
        _ => None,
    }
}

/// Whether every container answers with its own hostname through the
/// relay, exposures read fresh from the server.
async fn all_reachable(rig: &Rig, containers: &[(String, String)]) -> bool {
    for (id, _) in containers {
        let (status, exposures) = rig
            .call("GET", &format!("/v1/containers/{id}/exposures"), None)
            .await;
        let Some(public) = (status == 200)
            .then(|| exposures.get(0).map(|e| e["public"].clone()))
            .flatten()
        else {
            return false;
        };
        if fetch_hostname(&public).await.as_deref() != Some(&id[..12]) {
            return false;
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_agent_cluster_survives_crashes_and_restarts() {
    let docker = kisara_docker::testing::connect_default().await;
    let image = kisara_docker::testing::test_image(&docker).await;
    let mut rig = Rig::new();
    for name in ["relay", "server", "0", "1"] {
        rig.start(name);
    }
    let [a, b] = rig.nodes.clone();
    rig.eventually("both agents online", async || {
        rig.online_nodes().await == [a.clone(), b.clone()]
    })
    .await;

    // Five owners, each with a network on one node and four containers.
    let mut containers = Vec::new();
    for team in 1..=5 {
        let node = if team % 2 == 1 { &a } else { &b };
        let network = format!("e2e-team-{team}");
        let (status, created) = rig
            .call(
                "POST",
                "/v1/networks",
                Some(json!({"name": network, "node": node})),
            )
            .await;
        assert_eq!(status, 201, "{created}\n{}", rig.logs());
        for _ in 0..4 {
            let spec = json!({
                "node": node,
                "container": {
                    "image": image.to_string(),
                    "owner": format!("team-{team}"),
                    "networks": [network],
                    "ports": ["8080/tcp"],
                    "command": ["httpd", "-f", "-p", "8080", "-h", "/etc"],
                },
            });
            let (status, launched) = rig.call("POST", "/v1/containers", Some(spec)).await;
            assert_eq!(status, 201, "{launched}\n{}", rig.logs());
            assert_eq!(launched["node"], node.as_str());
            assert_eq!(launched["exposures"].as_array().unwrap().len(), 1);
            let id = launched["container"]["id"].as_str().unwrap().to_owned();
            containers.push((id, node.clone()));
        }
    }
    assert_eq!(containers.len(), 20);
    let metrics = scrape(&rig.api, Some(API_TOKEN)).await.unwrap();
    assert_eq!(metrics.0, 200);
    assert!(
        metrics
            .1
            .contains("kisara_launches_total{outcome=\"ok\"} 20"),
        "{}",
        metrics.1
    );
    rig.eventually("every container answers through the relay", async || {
        all_reachable(&rig, &containers).await
    })
    .await;
    let relay_metrics = rig.relay_metrics().await;
    for line in [
        "kisara_tunnel_clients 2",
        "kisara_tunnel_exposures{protocol=\"tcp\"} 20",
        "kisara_tunnel_tcp_visitors_total{outcome=\"carried\"}",
    ] {
        assert!(relay_metrics.contains(line), "{line}: {relay_metrics}");
    }

    // An agent crashes: its containers keep running...
    rig.processes.get_mut("0").unwrap().kill().await;
    rig.eventually("node a seen offline", async || {
        rig.online_nodes().await == [b.clone()]
    })
    .await;
    let on_a = LabelFilter::managed().with(labels::NODE, a.as_str());
    let running = docker.list(&on_a).await.unwrap();
    assert_eq!(running.len(), 12, "{running:?}");
    assert!(
        running
            .iter()
            .all(|c| c.state == kisara_core::model::ContainerState::Running)
    );
    // ... and after a restart they are resynced and reachable again.
    rig.start("0");
    rig.eventually("node a back", async || rig.online_nodes().await.len() == 2)
        .await;
    rig.eventually("node a's containers reachable again", async || {
        all_reachable(&rig, &containers).await
    })
    .await;

    // The server crashes and comes back: it rebuilds everything from what
    // the agents report.
    rig.processes.get_mut("server").unwrap().kill().await;
    rig.start("server");
    rig.eventually("both agents relinked", async || {
        rig.online_nodes().await.len() == 2
    })
    .await;
    let (status, listed) = rig.call("GET", "/v1/containers", None).await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed.as_array().unwrap().len(), 20, "{listed}");
    let (status, networks) = rig.call("GET", "/v1/networks", None).await;
    assert_eq!(status, 200, "{networks}");
    assert_eq!(networks.as_array().unwrap().len(), 5, "{networks}");
    rig.eventually("reachable after the server restart", async || {
        all_reachable(&rig, &containers).await
    })
    .await;

    // Teardown through the API leaves nothing behind.
    let mut publics = Vec::new();
    for (id, _) in &containers {
        let (_, exposures) = rig
            .call("GET", &format!("/v1/containers/{id}/exposures"), None)
            .await;
        publics.push(exposures[0]["public"].clone());
        let (status, body) = rig
            .call("DELETE", &format!("/v1/containers/{id}"), None)
            .await;
        assert_eq!(status, 204, "{body}");
    }
    for team in 1..=5 {
        let (status, body) = rig
            .call("DELETE", &format!("/v1/networks/e2e-team-{team}"), None)
            .await;
        assert_eq!(status, 204, "{body}");
    }
    for node in [&a, &b] {
        let mine = LabelFilter::managed().with(labels::NODE, node.as_str());
        assert!(docker.list(&mine).await.unwrap().is_empty());
        assert!(docker.list_networks(&mine).await.unwrap().is_empty());
    }
    for public in &publics {
        assert_eq!(fetch_hostname(public).await, None, "{public} still answers");
    }
    rig.eventually("the relay holds no exposure", async || {
        rig.relay_metrics()
            .await
            .contains("kisara_tunnel_exposures{protocol=\"tcp\"} 0")
    })
    .await;
}
