//! The gateway against the real OpenSSH client, on real containers of the
//! local Docker engine: logins, execs and their exit codes, refusals, an
//! interactive shell driven in tmux, and its recording read by asciinema.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kisara_audit::{CastStore, CastStoreOptions, LineGatePolicy, RulePolicy, UncertainMode};
use kisara_cluster::Server;
use kisara_cluster::session::{PLAYER_ROLE, SessionEngine};
use kisara_core::builtin::StaticAuthenticator;
use kisara_core::memory::{MemoryAuditSink, MemorySubnetAllocator};
use kisara_core::model::{ContainerId, LaunchRequest, NodeCapacity, NodeId};
use kisara_core::{AuditEventKind, Identity};
use kisara_docker::testing::{self, Cleanup};
use kisara_ssh::SshGateway;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

const PASSWORD: &str = "correct horse battery staple";
const WAIT: Duration = Duration::from_secs(30);

const POLICY: &str = r#"
[policy]
default = "allow"
unparsable = "allow_audited"

[[policy.rules]]
name = "no-rm"
decision = "deny"
program = "rm"
"#;

struct Stack {
    port: u16,
    dir: tempfile::TempDir,
    red: ContainerId,
    blue_name: String,
    server: Server,
    audit: Arc<MemoryAuditSink>,
    casts: PathBuf,
    _cleanup: Cleanup,
}

/// Every test's tools, checked up front: they never skip.
fn require_tools() {
    for tool in ["ssh", "ssh-keygen", "tmux", "asciinema", "script"] {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "these tests need `{tool}`: run ./scripts/ensure-ssh-tools (OpenSSH client, tmux) \
             and install asciinema (apt-get install asciinema)"
        );
    }
}

/// Who checks the logins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    /// A table in the process.
    Static,
    /// That table behind the authentication webhook, over HTTP.
    Webhook,
}

async fn stack() -> Stack {
    stack_with(Backend::Static).await
}

async fn stack_with(backend: Backend) -> Stack {
    require_tools();
    let runtime = testing::connect_default().await;
    let image = testing::test_image(&runtime).await;
    let cleanup = Cleanup::new(&runtime);
    let server = Server::builder(Arc::new(
        MemorySubnetAllocator::new("10.154.0.0/16".parse().unwrap(), 24).unwrap(),
    ))
    .build();
    // The engine is shared with other tests' containers, which count
    // towards a node's load: the capacity must not be what limits here.
    let capacity = NodeCapacity {
        max_containers: 1000,
        bandwidth_in: 10 << 20,
        bandwidth_out: 10 << 20,
    };
    server
        .connect_node(
            NodeId::new("ssh-node").unwrap(),
            capacity,
            Arc::new(runtime),
        )
        .await
        .unwrap();
    let launch = |owner: &str| {
        let mut spec = cleanup.spec(&image, ["sleep", "600"]);
        spec.owner = Some(owner.to_owned());
        let server = server.clone();
        async move {
            server
                .launch_container(LaunchRequest::new(spec), WAIT)
                .await
                .expect("launching a test container")
                .container
        }
    };
    // Teams of this run only: tests share the engine, and the gateway
    // picks a team's container from everything the node runs.
    let red_team = format!("red-{}", cleanup.run());
    let red = launch(&red_team).await.id;
    let blue_name = launch(&format!("blue-{}", cleanup.run())).await.name;

    let dir = tempfile::tempdir().unwrap();
    let casts = dir.path().join("casts");
    let recordings = Arc::new(CastStore::open(&casts, CastStoreOptions::default()).unwrap());
    let policy = Arc::new(RulePolicy::from_toml_str(POLICY, "test policy").unwrap());
    let audit = Arc::new(MemoryAuditSink::new());
    let engine = SessionEngine::builder(server.clone())
        .with_command_policy(policy.clone())
        .with_terminal_policy(Arc::new(LineGatePolicy::new(policy, UncertainMode::Audit)))
        .with_recordings(recordings)
        .with_audit(audit.clone())
        .with_audit_log(audit.clone())
        .build();

    let key = dir.path().join("id_ed25519");
    let made = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "alice@test", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(made.success(), "ssh-keygen failed");
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let alice = Identity::new("alice")
        .with_role(PLAYER_ROLE)
        .with_team(red_team);
    let authenticator = StaticAuthenticator::new()
        .with_password(alice.clone(), PASSWORD)
        .with_public_key(alice, public.trim());
    let authenticator: Arc<dyn kisara_core::Authenticator> = match backend {
        Backend::Static => Arc::new(authenticator),
        Backend::Webhook => {
            let handler = kisara_webhook::server::BackendHandler::new(
                Arc::new(authenticator),
                Arc::new(kisara_core::builtin::StaticConfigProvider::new(None)),
            );
            let app = kisara_webhook::server::router(
                Arc::new(handler),
                kisara_webhook::server::ServerOptions::default(),
            );
            let webhook = Arc::new(
                kisara_webhook::server::WebhookServer::bind(
                    "127.0.0.1:0".parse().unwrap(),
                    app,
                    None,
                )
                .await
                .unwrap(),
            );
            let url = format!("http://{}", webhook.local_addr());
            tokio::spawn(async move { webhook.serve(std::future::pending()).await });
            Arc::new(
                kisara_webhook::WebhookAuthenticator::new(
                    &url,
                    kisara_webhook::ClientOptions::default(),
                )
                .unwrap(),
            )
        }
    };
    let askpass = dir.path().join("askpass");
    std::fs::write(&askpass, format!("#!/bin/sh\necho '{PASSWORD}'\n")).unwrap();
    std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o700)).unwrap();
    let wrong = dir.path().join("askpass-wrong");
    std::fs::write(&wrong, "#!/bin/sh\necho 'wrong'\n").unwrap();
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o700)).unwrap();

    let gateway = SshGateway::builder(engine, authenticator)
        .host_key_dir(dir.path().join("host"))
        .rejection_delay(Duration::from_millis(200))
        .login_grace(Duration::from_secs(3))
        .env_allow(["LANG"])
        .build()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { gateway.serve(listener).await });
    Stack {
        port,
        dir,
        red,
        blue_name,
        server,
        audit,
        casts,
        _cleanup: cleanup,
    }
}

impl Stack {
    /// `ssh` to the gateway as `user`, without host key checks; a password
    /// login answers with the askpass script `askpass` (in the test dir).
    fn ssh(&self, user: &str, login: Login) -> Command {
        let mut command = Command::new("ssh");
        command
            .args(["-p", &self.port.to_string()])
            .args(["-o", "StrictHostKeyChecking=no"])
            .args(["-o", "UserKnownHostsFile=/dev/null"])
            .args(["-o", "LogLevel=ERROR"])
            .args(["-o", "ConnectTimeout=10"])
            .args(["-F", "/dev/null"])
            .kill_on_drop(true);
        match login {
            Login::Key => {
                command
                    .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"])
                    .args(["-o", "PreferredAuthentications=publickey", "-i"])
                    .arg(self.dir.path().join("id_ed25519"));
            }
            Login::Password { askpass, method } => {
                command
                    .args(["-o", &format!("PreferredAuthentications={method}")])
                    .args(["-o", "NumberOfPasswordPrompts=1"])
                    .args(["-o", "PubkeyAuthentication=no"])
                    .env("SSH_ASKPASS", self.dir.path().join(askpass))
                    .env("SSH_ASKPASS_REQUIRE", "force")
                    .env("DISPLAY", ":0");
            }
        }
        command.arg(format!("{user}@127.0.0.1"));
        command
    }

    async fn run(&self, user: &str, login: Login, remote: &[&str]) -> Output {
        let mut command = self.ssh(user, login);
        command.args(remote);
        tokio::time::timeout(WAIT, command.output())
            .await
            .expect("ssh did not finish in time")
            .expect("running ssh")
    }
}

#[derive(Clone, Copy)]
enum Login {
    Key,
    Password {
        askpass: &'static str,
        method: &'static str,
    },
}

const PASSWORD_LOGIN: Login = Login::Password {
    askpass: "askpass",
    method: "password",
};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_execs_exit_codes_and_refusals_through_openssh() {
    let stack = stack().await;

    // A password login, and the command's output and exit code.
    let out = stack
        .run(
            "alice",
            PASSWORD_LOGIN,
            &["echo", "hi", "from", "$HOSTNAME"],
        )
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("hi from "),
        "{}",
        text(&out.stdout)
    );
    let out = stack.run("alice", PASSWORD_LOGIN, &["exit 7"]).await;
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    // stdout and stderr stay apart.
    let out = stack
        .run("alice", Login::Key, &["echo out; echo err >&2"])
        .await;
    assert_eq!(
        (text(&out.stdout), text(&out.stderr)),
        ("out\n".into(), "err\n".into())
    );

    // A key login; the keyboard-interactive password prompt.
    let out = stack.run("alice", Login::Key, &["cat /etc/hostname"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let interactive = Login::Password {
        askpass: "askpass",
        method: "keyboard-interactive",
    };
    let out = stack.run("alice", interactive, &["true"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    // stdin reaches the command, and its end ends it.
    let mut child = stack
        .ssh("alice", Login::Key)
        .arg("wc -c")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&[b'x'; 100_000]).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(text(&out.stdout).trim(), "100000");

    // Only allowed environment variables pass.
    let mut command = stack.ssh("alice", Login::Key);
    command.args([
        "-o",
        "SetEnv=LANG=C.UTF-8 SECRET=leak",
        "echo \"$LANG/$SECRET\"",
    ]);
    let out = command.output().await.unwrap();
    assert_eq!(text(&out.stdout), "C.UTF-8/\n", "{}", text(&out.stderr));

    // A denied command never runs, and says why.
    let out = stack.run("alice", Login::Key, &["rm -rf /tmp"]).await;
    assert_eq!(out.status.code(), Some(126), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("no-rm"), "{}", text(&out.stderr));
    let denied = stack.audit.events().into_iter().any(|e| {
        matches!(&e.kind, AuditEventKind::Command { decision, .. } if !matches!(decision, kisara_core::PolicyDecision::Allow))
    });
    assert!(denied, "the denial was not audited");

    // Another team's container is not there for alice.
    let out = stack
        .run(&format!("alice+{}", stack.blue_name), Login::Key, &["true"])
        .await;
    assert_eq!(out.status.code(), Some(127), "{}", text(&out.stderr));

    // A wrong password is refused, after the same delay as any refusal.
    let wrong = Login::Password {
        askpass: "askpass-wrong",
        method: "password",
    };
    let out = stack.run("alice", wrong, &["true"]).await;
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("Permission denied"),
        "{}",
        text(&out.stderr)
    );
    let out = stack.run("mallory", PASSWORD_LOGIN, &["true"]).await;
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("Permission denied"),
        "{}",
        text(&out.stderr)
    );

    // Garbage instead of a banner, and a client that says nothing: each is
    // dropped, and the gateway keeps serving.
    let mut garbage = tokio::net::TcpStream::connect(("127.0.0.1", stack.port))
        .await
        .unwrap();
    let _ = garbage.write_all(&[0xff; 4096]).await;
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(WAIT, garbage.read_to_end(&mut sink)).await;
    let started = Instant::now();
    let mut silent = tokio::net::TcpStream::connect(("127.0.0.1", stack.port))
        .await
        .unwrap();
    let mut banner = Vec::new();
    let closed = tokio::time::timeout(WAIT, silent.read_to_end(&mut banner)).await;
    assert!(
        closed.is_ok(),
        "a silent client was kept beyond the login grace"
    );
    assert!(
        text(&banner).starts_with("SSH-2.0-kisara"),
        "{}",
        text(&banner)
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    let out = stack.run("alice", Login::Key, &["echo still here"]).await;
    assert_eq!(text(&out.stdout), "still here\n", "{}", text(&out.stderr));

    stack.server.remove(&stack.red).await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_are_checked_by_the_auth_webhook() {
    let stack = stack_with(Backend::Webhook).await;
    let out = stack
        .run("alice", PASSWORD_LOGIN, &["echo", "by", "webhook"])
        .await;
    assert_eq!(text(&out.stdout), "by webhook\n", "{}", text(&out.stderr));
    let out = stack.run("alice", Login::Key, &["exit 4"]).await;
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    let wrong = Login::Password {
        askpass: "askpass-wrong",
        method: "password",
    };
    let out = stack.run("alice", wrong, &["true"]).await;
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("Permission denied"),
        "{}",
        text(&out.stderr)
    );
    stack.server.remove(&stack.red).await.ok();
}

/// tmux on its own socket, killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn command(&self, args: &[&str]) -> Output {
        std::process::Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("running tmux")
    }

    fn screen(&self) -> String {
        text(&self.command(&["capture-pane", "-p", "-t", "ssh"]).stdout)
    }

    async fn until_screen(&self, wanted: impl Fn(&str) -> bool, what: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let screen = self.screen();
            if wanted(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "never saw {what}; the screen:\n{screen}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn type_line(&self, line: &str) {
        self.command(&["send-keys", "-t", "ssh", "-l", line]);
        self.command(&["send-keys", "-t", "ssh", "Enter"]);
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        self.command(&["kill-server"]);
    }
}

fn casts_in(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
            } else if path.extension().is_some_and(|e| e == "cast") {
                found.push(path);
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interactive_shell_in_tmux_resizes_and_is_recorded() {
    let stack = stack().await;
    let tmux = Tmux {
        socket: format!("kisara-ssh-{}", std::process::id()),
    };
    let ssh = stack.ssh("alice", Login::Key);
    let mut line: Vec<String> = vec![ssh.as_std().get_program().to_string_lossy().into_owned()];
    line.extend(
        ssh.as_std()
            .get_args()
            .map(|a| format!("'{}'", a.to_string_lossy())),
    );
    line.push("-tt".into());
    let started = tmux.command(&[
        "new-session",
        "-d",
        "-s",
        "ssh",
        "-x",
        "100",
        "-y",
        "30",
        &line.join(" "),
    ]);
    assert!(started.status.success(), "tmux: {}", text(&started.stderr));

    // The shell's prompt, then the size the client's terminal has.
    tmux.until_screen(
        |s| s.lines().any(|l| l.trim_end().ends_with('#')),
        "a prompt",
    )
    .await;
    tmux.type_line("stty size");
    tmux.until_screen(|s| s.contains("30 100"), "stty size 30 100")
        .await;
    // Resizing the client's window reaches the shell's terminal.
    tmux.command(&["resize-window", "-t", "ssh", "-x", "120", "-y", "40"]);
    // The resize goes to the engine's runtime beside the typed input, and
    // may land just after a line typed at once: ask again until it shows.
    let deadline = Instant::now() + WAIT;
    loop {
        tmux.type_line("clear; stty size");
        tokio::time::sleep(Duration::from_millis(300)).await;
        if tmux.screen().contains("40 120") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never saw stty size 40 120:\n{}",
            tmux.screen()
        );
    }
    tmux.type_line("echo marker-$((6*7))");
    tmux.until_screen(|s| s.contains("marker-42"), "the echo")
        .await;
    tmux.type_line("exit");
    // `exit` ends the shell, the session and so ssh, and tmux with it.
    let deadline = Instant::now() + WAIT;
    while tmux.command(&["has-session", "-t", "ssh"]).status.success() {
        assert!(
            Instant::now() < deadline,
            "ssh did not end after exit:\n{}",
            tmux.screen()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The recording is a cast asciinema reads, with what the shell showed.
    let deadline = Instant::now() + WAIT;
    let cast = loop {
        let mut casts = casts_in(&stack.casts);
        let done = casts
            .first()
            .map(|c| std::fs::read_to_string(c).unwrap_or_default());
        if let (Some(cast), Some(body)) = (casts.pop(), done)
            && body.contains("marker-42")
        {
            break cast;
        }
        assert!(
            Instant::now() < deadline,
            "no recording of the shell in {}",
            stack.casts.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let shown = std::process::Command::new("script")
        .args([
            "-qec",
            &format!("asciinema cat '{}'", cast.display()),
            "/dev/null",
        ])
        .output()
        .unwrap();
    assert!(
        shown.status.success(),
        "asciinema cat failed: {}",
        text(&shown.stderr)
    );
    assert!(
        text(&shown.stdout).contains("marker-42"),
        "{}",
        text(&shown.stdout)
    );
    stack.server.remove(&stack.red).await.ok();
}
