//! Every conformance suite against the in-memory backends, through
//! `Arc<dyn Trait>`.

use std::sync::Arc;

use kisara_core::builtin::{PrefixPolicy, StaticAuthenticator, StaticConfigProvider};
use kisara_core::memory::{LoopbackTunnel, MemoryAuditSink, MemoryRuntime, MemorySubnetAllocator};
use kisara_core::model::{ContainerId, ImageRef, SessionId};
use kisara_core::placement::HeadroomPlacement;
use kisara_core::testing::{access, placement, runtime, subnet, tunnel};
use kisara_core::{
    CommandContext, ConfigRequest, ContainerRuntime, Credentials, Identity, Placement,
    SessionConfig, SessionTarget, SubnetAllocator, Tunnel,
};

fn test_image() -> ImageRef {
    ImageRef::parse("kisara-test/busybox:latest").unwrap()
}

fn memory_runtime() -> Arc<dyn ContainerRuntime> {
    let runtime = MemoryRuntime::new();
    runtime.add_image(&test_image(), None);
    Arc::new(runtime)
}

#[tokio::test]
async fn memory_runtime_passes_the_runtime_suite() {
    runtime::all(|| async { runtime::RuntimeFixture::new(memory_runtime(), test_image()) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_runtime_passes_on_a_multi_threaded_scheduler() {
    runtime::all(|| async { runtime::RuntimeFixture::new(memory_runtime(), test_image()) }).await;
}

#[tokio::test]
async fn memory_allocator_passes_the_subnet_suite() {
    subnet::all(|| async {
        Arc::new(MemorySubnetAllocator::new("10.200.0.0/16".parse().unwrap(), 24).unwrap())
            as Arc<dyn SubnetAllocator>
    })
    .await;
}

#[tokio::test]
async fn headroom_placement_passes_the_placement_suite() {
    placement::all(|| async { Arc::new(HeadroomPlacement) as Arc<dyn Placement> }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_tunnel_passes_the_tunnel_suite() {
    tunnel::all(|| async { Arc::new(LoopbackTunnel::default()) as Arc<dyn Tunnel> }).await;
}

fn identity(username: &str, roles: &[&str]) -> Identity {
    let mut identity = Identity::new(username);
    identity.roles = roles.iter().map(|r| (*r).to_owned()).collect();
    identity
}

const ALICE_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl alice@laptop";

#[tokio::test]
async fn static_authenticator_passes_the_authenticator_suite() {
    access::authenticator(|| async {
        let authenticator = StaticAuthenticator::new()
            .with_password(identity("alice", &["player"]), "correct horse")
            .with_public_key(identity("alice", &["player"]), ALICE_KEY)
            .with_token(
                identity("ops", &["admin"]),
                "0123456789abcdef0123456789abcdef",
            );
        access::AuthFixture {
            authenticator: Arc::new(authenticator),
            accepted: vec![
                (
                    Credentials::Password {
                        username: "alice".into(),
                        password: "correct horse".into(),
                    },
                    "alice".into(),
                ),
                (
                    Credentials::PublicKey {
                        username: "alice".into(),
                        // The comment is not part of the key.
                        public_key: ALICE_KEY.replace("alice@laptop", "other-comment"),
                    },
                    "alice".into(),
                ),
                (
                    Credentials::BearerToken {
                        token: "0123456789abcdef0123456789abcdef".into(),
                    },
                    "ops".into(),
                ),
            ],
        }
    })
    .await;
}

fn config_request(username: &str, container: Option<&str>) -> ConfigRequest {
    ConfigRequest {
        session: SessionId::new("s-1"),
        identity: identity(username, &[]),
        remote: None,
        requested_container: container.map(ContainerId::new),
    }
}

#[tokio::test]
async fn static_config_provider_passes_the_config_suite() {
    access::config_provider(|| async {
        let own = SessionConfig::new(SessionTarget::Container {
            container: ContainerId::new("alice-box"),
        });
        access::ConfigFixture {
            provider: Arc::new(StaticConfigProvider::new(None).with_user("alice", own)),
            allowed: config_request("alice", Some("alice-box")),
            denied: config_request("alice", Some("bob-box")),
        }
    })
    .await;
    access::config_provider(|| async {
        access::ConfigFixture {
            provider: Arc::new(StaticConfigProvider::new(None).with_user(
                "alice",
                SessionConfig::new(SessionTarget::Container {
                    container: ContainerId::new("alice-box"),
                }),
            )),
            allowed: config_request("alice", None),
            denied: config_request("mallory", None),
        }
    })
    .await;
}

#[tokio::test]
async fn memory_audit_sink_passes_the_audit_suite() {
    access::audit_sink(|| async {
        let sink = Arc::new(MemoryAuditSink::new());
        let reader = sink.clone();
        access::AuditFixture {
            sink,
            read: Arc::new(move |session| {
                let events = reader.session(&session);
                Box::pin(async move { events })
            }),
        }
    })
    .await;
}

#[tokio::test]
async fn memory_audit_sink_passes_the_audit_log_suite() {
    access::audit_log(|| async {
        let sink = Arc::new(MemoryAuditSink::new());
        access::AuditLogFixture {
            sink: sink.clone(),
            log: sink,
        }
    })
    .await;
}

#[tokio::test]
async fn prefix_policy_passes_the_policy_suite() {
    access::command_policy(|| async {
        let policy = PrefixPolicy::allow_by_default()
            .deny(["rm", "-rf"])
            .deny(["reboot"])
            .exempt_role("admin");
        let context = |user: &str, roles: &[&str]| CommandContext {
            identity: identity(user, roles),
            container: ContainerId::new("web-1"),
            owner: Some("team-1".into()),
            module: Some("web".into()),
        };
        let words = |line: &str| line.split(' ').map(str::to_owned).collect::<Vec<_>>();
        access::PolicyFixture {
            policy: Arc::new(policy),
            allowed: vec![
                (context("alice", &[]), words("ls -la /")),
                (context("alice", &[]), words("rm file.txt")),
                (context("ops", &["admin"]), words("reboot")),
            ],
            denied: vec![
                (context("alice", &[]), words("rm -rf /")),
                (context("alice", &[]), words("/sbin/reboot now")),
            ],
        }
    })
    .await;
}
