//! A `wss://` agent (the `agent` binary) trusts the system's roots, as
//! `SSL_CERT_FILE` names them, when no `server_ca` is configured, for the
//! server and for a relay with `tls = true`; a configured `server_ca` is a
//! pin that replaces them; an agent with neither refuses to start, saying
//! how to fix it. The server and the relay are the `server` and `relay`
//! binaries serving TLS with a certificate signed by a test CA made here.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Process, exchange, free_port, kisara};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;

const API_TOKEN: &str = "tls-api-token-0123456789abcdef";
const AGENT_TOKEN: &str = "tls-agent-token-0123456789abcdef";
const RELAY_TOKEN: &str = "tls-relay-token-0123456789abcdef";
const WAIT: Duration = Duration::from_secs(60);

/// A test certificate authority.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// A server certificate for 127.0.0.1: (cert PEM, key PEM).
    fn leaf(&self) -> (String, String) {
        let params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// `GET /v1/nodes` over TLS, the server verified against `ca`: the ids of
/// the nodes online (none while the server starts).
async fn online_nodes(api: &str, ca: &Path) -> Vec<String> {
    let config = kisara_tls::client_config(Some(ca), None).unwrap();
    let request = format!(
        "GET /v1/nodes HTTP/1.1\r\nHost: {api}\r\nAuthorization: Bearer {API_TOKEN}\r\n\
         Connection: close\r\n\r\n"
    );
    let answer = async {
        let tcp = TcpStream::connect(api).await?;
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let tls = TlsConnector::from(config).connect(name, tcp).await?;
        exchange(tls, &request).await
    };
    let Ok((200, body)) = answer.await else {
        return Vec::new();
    };
    let nodes: serde_json::Value = serde_json::from_str(&body).unwrap();
    nodes
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["online"] == true)
        .map(|n| n["node"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wss_agent_trusts_the_system_roots_unless_a_ca_is_pinned() {
    // The agent serves the local engine: fail here, with instructions,
    // when none answers.
    drop(kisara_docker::testing::connect_default().await);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (ca, other) = (Ca::new("kisara test CA"), Ca::new("another CA"));
    let (cert, key) = ca.leaf();
    let ca_bundle = write(dir, "system-bundle.pem", &ca.pem);
    let other_bundle = write(dir, "other-bundle.pem", &other.pem);
    let empty_bundle = write(dir, "empty-bundle.pem", "");
    let (port, relay_port) = (free_port(), free_port());
    let api = format!("127.0.0.1:{port}");
    let relay = format!("127.0.0.1:{relay_port}");
    let first = 31000 + (kisara_core::testing::random_u64() % 100) as u16 * 100;
    let server_toml = format!(
        r#"
[server]
listen = "{api}"
token = "{AGENT_TOKEN}"
api_tokens = [{{ name = "tls", token = "{API_TOKEN}" }}]
tls_cert = "{cert}"
tls_key = "{key}"

[sessions]
audit_db = "{state}/audit.db"
recordings_dir = "{state}/recordings"

[network]
pools = ["10.[210-211].[0-255].0/24"]

[relay]
listen = "{relay}"
public_host = "127.0.0.1"
port_range = "{first}-{last}"
token = "{RELAY_TOKEN}"
tls_cert = "{cert}"
tls_key = "{key}"
"#,
        last = first + 99,
        state = dir.display(),
        cert = write(dir, "server.pem", &cert).display(),
        key = write(dir, "server-key.pem", &key).display(),
    );
    let server_config = write(dir, "server.toml", &server_toml);
    // Fresh node ids: nothing from an earlier run is adopted.
    let run = kisara_core::testing::random_u64() % 1_000_000;
    let agent = |name: &str, bundle: &Path, server_ca: Option<&Path>, with_relay: bool| {
        let node = format!("tls-{run}-{name}");
        let mut extra = server_ca
            .map(|ca| format!("server_ca = \"{}\"\n", ca.display()))
            .unwrap_or_default();
        if with_relay {
            extra += &format!(
                "relays = [{{ name = \"relay-1\", address = \"{relay}\", \
                 token = \"{RELAY_TOKEN}\", tls = true }}]\n"
            );
        }
        let config = write(
            dir,
            &format!("{name}.toml"),
            &format!(
                "[agent]\nserver_url = \"wss://{api}\"\ntoken = \"{AGENT_TOKEN}\"\n\
                 state_dir = \"{state}\"\nnode_id = \"{node}\"\n{extra}",
                state = dir.join(name).display(),
            ),
        );
        let mut command = kisara(env!("CARGO_BIN_EXE_agent"), &config);
        // The system's roots are exactly this bundle.
        command
            .env("SSL_CERT_FILE", bundle)
            .env_remove("SSL_CERT_DIR");
        (node, command)
    };

    let mut processes = BTreeMap::new();
    processes.insert(
        "server",
        Process::start(
            dir,
            "server",
            kisara(env!("CARGO_BIN_EXE_server"), &server_config),
        ),
    );
    processes.insert(
        "relay",
        Process::start(
            dir,
            "relay",
            kisara(env!("CARGO_BIN_EXE_relay"), &server_config),
        ),
    );
    // Linked to the relay over TLS too: it starts only with a relay linked.
    let (trusting, command) = agent("trusting", &ca_bundle, None, true);
    processes.insert("trusting", Process::start(dir, "trusting", command));
    let (untrusting, command) = agent("untrusting", &other_bundle, None, false);
    processes.insert("untrusting", Process::start(dir, "untrusting", command));
    // The right CA in the system bundle, but a pin on another one.
    let (pinned, command) = agent("pinned", &ca_bundle, Some(&other_bundle), false);
    processes.insert("pinned", Process::start(dir, "pinned", command));
    let logs = |processes: &BTreeMap<&str, Process>| {
        processes
            .values()
            .map(Process::tail)
            .collect::<Vec<_>>()
            .join("\n")
    };

    let deadline = Instant::now() + WAIT;
    let refused = |process: &Process| {
        let log = process.logged();
        log.contains("TLS to 127.0.0.1 failed") && log.contains("UnknownIssuer")
    };
    loop {
        let online = online_nodes(&api, &ca_bundle).await;
        assert!(
            !online.contains(&untrusting) && !online.contains(&pinned),
            "an agent that does not trust the server linked: {online:?}\n{}",
            logs(&processes)
        );
        if online == [trusting.clone()]
            && refused(&processes["untrusting"])
            && refused(&processes["pinned"])
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the trusting agent never came online or the others were not refused\n{}",
            logs(&processes)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // No roots at all and no pin: the agent stops at once, saying why.
    let (_, mut command) = agent("rootless", &empty_bundle, None, false);
    let output = tokio::time::timeout(WAIT, command.output())
        .await
        .expect("the rootless agent exits")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    for needle in [
        "no usable root",
        "SSL_CERT_FILE",
        "empty-bundle.pem",
        "CA file",
    ] {
        assert!(stderr.contains(needle), "{needle}: {stderr}");
    }
}
