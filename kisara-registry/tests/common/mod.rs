//! A real Debian `docker-registry` with token auth against a token
//! service of the test's own, on loopback, and the `docker` CLI driving
//! it with a config directory of the test's own.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kisara_core::builtin::StaticAuthenticator;
use kisara_core::{Authenticator, Identity, Secret, roles};
use kisara_registry::{
    AdminApi, Issuer, KeyRing, KidFormat, NotificationIntake, Project, Role, Store, TokenService,
};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};

pub const SERVICE: &str = "kisara-test-registry";
pub const ISSUER: &str = "kisara-test-issuer";
pub const NOTIFY_SECRET: &str = "notify-secret-0123456789";
pub const PASSWORD: &str = "pw-0123456789";

/// The users: `root` (Kisara admin), `alice` (developer of `ctf`), `gus`
/// (guest of `ctf`), `dora` (admin of `pub`).
pub fn authenticator() -> Arc<dyn Authenticator> {
    Arc::new(
        StaticAuthenticator::new()
            .with_password(Identity::new("root").with_role(roles::ADMIN), PASSWORD)
            .with_password(Identity::new("alice"), PASSWORD)
            .with_password(Identity::new("gus"), PASSWORD)
            .with_password(Identity::new("dora"), PASSWORD),
    )
}

pub struct Stack {
    pub dir: tempfile::TempDir,
    pub store: Store,
    pub issuer: Issuer,
    pub token_addr: SocketAddr,
    pub registry_addr: SocketAddr,
    pub registry_config: PathBuf,
    registry: Child,
    server: tokio::task::JoinHandle<()>,
}

impl Stack {
    /// The token service (with `extra` routes mounted beside it) and a
    /// registry trusting it.
    pub async fn start(
        build: impl FnOnce(&Store, &Issuer, Arc<dyn Authenticator>) -> (TokenService, axum::Router),
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let keys =
            KeyRing::open(&dir.path().join("keys"), "kisara test", KidFormat::Libtrust).unwrap();
        let bundle = keys.bundle_path();
        let issuer = Issuer::new(
            Arc::new(RwLock::new(keys)),
            ISSUER,
            Duration::from_secs(300),
        );
        let store = Store::open(&dir.path().join("registry.db")).unwrap();
        for (name, public) in [("ctf", false), ("pub", true)] {
            store
                .put_project(Project {
                    name: name.to_owned(),
                    public,
                })
                .await
                .unwrap();
        }
        for (project, user, role) in [
            ("ctf", "alice", Role::Developer),
            ("ctf", "gus", Role::Guest),
            ("pub", "dora", Role::Admin),
        ] {
            store
                .put_member(project.to_owned(), user.to_owned(), role)
                .await
                .unwrap();
        }
        let auth = authenticator();
        let (service, extra) = build(&store, &issuer, auth.clone());
        let intake = NotificationIntake::new(store.clone(), Secret::new(NOTIFY_SECRET));
        let admin = AdminApi {
            store: store.clone(),
            issuer: issuer.clone(),
            authenticator: auth,
            key_name: "kisara test".to_owned(),
            kid: KidFormat::Libtrust,
        };
        let app = Arc::new(service)
            .router()
            .merge(Arc::new(intake).router())
            .nest("/admin", admin.router())
            .merge(extra);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let token_addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });

        let registry_addr = free_port().await;
        let registry_config = dir.path().join("config.yml");
        std::fs::write(
            &registry_config,
            format!(
                "version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: {data}
  delete:
    enabled: true
http:
  addr: {registry_addr}
auth:
  token:
    realm: http://{token_addr}/token
    service: {SERVICE}
    issuer: {ISSUER}
    rootcertbundle: {bundle}
notifications:
  endpoints:
    - name: kisara
      url: http://{token_addr}/notifications
      headers:
        Authorization: [Bearer {NOTIFY_SECRET}]
      timeout: 2s
      threshold: 5
      backoff: 1s
",
                data = dir.path().join("data").display(),
                bundle = bundle.display(),
            ),
        )
        .unwrap();
        let registry = Command::new("docker-registry")
            .arg("serve")
            .arg(&registry_config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("registry.log")).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "these tests need Debian's docker-registry on PATH: {e}\n\
                     install it with ./scripts/ensure-registry (apt-get install docker-registry)"
                )
            });
        let stack = Self {
            dir,
            store,
            issuer,
            token_addr,
            registry_addr,
            registry_config,
            registry,
            server,
        };
        stack.wait_for_registry().await;
        stack
    }

    async fn wait_for_registry(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((status, _)) =
                http("GET", &format!("{}/v2/", self.registry_url()), &[], "").await
                && status == 401
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not answer on {}: {}",
                self.registry_addr,
                self.registry_log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn registry_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    pub fn registry_url(&self) -> String {
        format!("http://{}", self.registry_addr)
    }

    pub fn token_url(&self) -> String {
        format!("http://{}", self.token_addr)
    }

    /// `127.0.0.1:PORT/<repository>`.
    pub fn image(&self, repository: &str) -> String {
        format!("{}/{repository}", self.registry_addr)
    }

    pub async fn stop(mut self) {
        let _ = self.registry.kill().await;
        self.server.abort();
    }
}

async fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// One HTTP/1.1 request; the status and body.
pub async fn http(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, String), String> {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut request = hyper::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_owned())))
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .map_err(|_| format!("{method} {url} timed out"))?
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

pub fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// The `docker` CLI with a config directory of its own (its logins).
pub struct DockerCli {
    config: tempfile::TempDir,
    /// Tags to remove when dropped.
    tags: std::sync::Mutex<Vec<String>>,
}

pub struct Output {
    pub ok: bool,
    pub text: String,
}

impl DockerCli {
    pub fn new() -> Self {
        Self {
            config: tempfile::tempdir().unwrap(),
            tags: std::sync::Mutex::default(),
        }
    }

    pub async fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut command = Command::new("docker");
        command
            .arg("--config")
            .arg(self.config.path())
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().unwrap_or_else(|e| {
            panic!("these tests need the docker CLI on PATH: {e}; run ./scripts/ensure-docker")
        });
        if let Some(input) = stdin {
            use tokio::io::AsyncWriteExt;
            let mut pipe = child.stdin.take().unwrap();
            pipe.write_all(input.as_bytes()).await.unwrap();
        }
        let output = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
            .await
            .expect("docker took over two minutes")
            .unwrap();
        Output {
            ok: output.status.success(),
            text: format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        }
    }

    pub async fn login(&self, registry: &str, user: &str) -> Output {
        self.run(
            &["login", "--username", user, "--password-stdin", registry],
            Some(PASSWORD),
        )
        .await
    }

    /// Tags `source` as `target`, remembered for removal.
    pub async fn tag(&self, source: &str, target: &str) {
        let out = self.run(&["tag", source, target], None).await;
        assert!(out.ok, "docker tag: {}", out.text);
        self.remember(target);
    }

    pub fn remember(&self, tag: &str) {
        self.tags.lock().unwrap().push(tag.to_owned());
    }
}

impl Drop for DockerCli {
    fn drop(&mut self) {
        let tags = std::mem::take(&mut *self.tags.lock().unwrap());
        if !tags.is_empty() {
            let _ = std::process::Command::new("docker")
                .arg("rmi")
                .arg("--force")
                .args(&tags)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

pub fn path_text(path: &Path) -> String {
    path.display().to_string()
}
