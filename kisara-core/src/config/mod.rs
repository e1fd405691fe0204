//! Configuration: TOML on disk, defaults, `KISARA_*` environment overrides,
//! and a [`Config::validate`] that reports every problem at once.
//!
//! A file holds Kisara's own sections (`[server]`, `[agent]`, `[network]`,
//! `[relay]`, `[containers]`) and/or the sections of the Go original's
//! `conf/kisara-conf.toml` (`[kisara]`, `[kisaraClient]`, `[kisaraServer]`,
//! `[takina]`), which load unchanged. [`Config::resolve`] folds the legacy
//! keys into Kisara's own and returns a [`ResolvedConfig`] that the rest of
//! Kisara reads; a key set both ways to different values is a problem.
//!
//! Each program checks only what it runs: [`Config::resolve_for`] with its
//! [`Role`] (a relay needs no agent token, an agent no API token).
//! [`Config::resolve`] checks for [`Role::Dev`], everything in one process.
//!
//! Every section rejects unknown keys, naming the key and the file.
//! Precedence: environment > file > defaults (see [`Config::load_with_env`]
//! for the override rules).
//!
//! ```
//! use kisara_core::config::{Config, Role};
//!
//! let text = r#"
//! [kisara]
//! mode = "prod"          # the default; "dev" turns weak tokens into warnings
//!
//! [server]
//! listen = "0.0.0.0:7474"
//! token = "a-long-random-shared-token"   # agents present it
//! heartbeat_timeout_secs = 15            # an agent link this quiet is dead
//! api_tokens = [{ name = "platform", token = "a-long-random-api-token", roles = ["platform"] }]
//! tls_cert = "/etc/kisara/server.pem"     # TLS; both or neither
//! tls_key = "/etc/kisara/server-key.pem"
//! tls_client_ca = "/etc/kisara/agents-ca.pem"  # optional: mutual TLS
//!
//! [agent]
//! server_url = "wss://kisara.example.com:7474"
//! server_ca = "/etc/kisara/server-ca.pem"  # optional pin; unset, the system's roots
//! tls_cert = "/etc/kisara/agent.pem"       # for mutual TLS; both or neither
//! tls_key = "/etc/kisara/agent-key.pem"
//! token = "a-long-random-shared-token"
//! state_dir = "/var/lib/kisara"
//! max_containers = 120
//! bandwidth_in = 104857600   # bytes/s
//! bandwidth_out = 104857600
//!
//! [[agent.relays]]           # the relays this node's tunnel client links to
//! name = "relay-1"
//! address = "relay.example.com:7000"
//! token = "another-long-random-token"
//! tls = true                            # TLS, verified against the system's roots
//! tls_ca = "/etc/kisara/relay-ca.pem"   # optional pin: only this CA
//! server_name = "relay.example.com"     # default: the host of `address`
//!
//! [network]
//! pools = ["10.[128-255].[0-255].0/24"]
//!
//! [relay]
//! listen = "0.0.0.0:7000"
//! public_host = "relay.example.com"
//! port_range = "20000-50000"  # or { start = 20000, end = 50000 }
//! token = "another-long-random-token"
//! tls_cert = "/etc/kisara/relay.pem"    # both or neither
//! tls_key = "/etc/kisara/relay-key.pem"
//!
//! [containers]
//! memory_bytes = 268435456
//! cpu_millis = 500
//! pids = 128
//! dns = ["1.1.1.1"]
//! mount_allow_list = ["/srv/challenges"]
//! "#;
//! let config = Config::from_toml_str(text, "kisara.toml")?;
//! config.validate()?;
//! let resolved = config.resolve()?;
//! assert_eq!(resolved.agent.max_containers, 120);
//! assert!(resolved.server.token.matches("a-long-random-shared-token"));
//! assert_eq!(resolved.agent.relays[0].tls_server_name(), Some("relay.example.com"));
//!
//! // A relay-only file passes for the relay, not for a whole deployment.
//! let relay = Config::from_toml_str("[relay]\ntoken = \"another-long-random-token\"", "relay.toml")?;
//! relay.resolve_for(Role::Relay)?;
//! assert!(relay.resolve().is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod load;
mod resolve;
mod ssh;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use crate::builtin::StaticAuthenticator;
use crate::model::pool::{DEFAULT_POOL, SubnetPool};
use crate::model::{ContainerSpec, ResourceLimits};
use crate::{Identity, Secret};

pub use resolve::{ConfigErrors, ConfigProblem, ResolvedConfig, Role};
pub use ssh::SshConfig;

/// A whole configuration file as written: the Go original's sections and
/// Kisara's own, each defaulted when absent.
///
/// Read the effective values from [`Config::resolve`], not from here: a
/// legacy key such as `kisaraClient.max_container` only reaches
/// `agent.max_containers` there.
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[kisara]`: shared token, run mode and DNS (Go original; `mode` is
    /// also Kisara's).
    pub kisara: LegacyKisara,
    /// `[kisaraClient]`: the Go node agent's settings.
    #[serde(rename = "kisaraClient")]
    pub kisara_client: LegacyClient,
    /// `[kisaraServer]`: the Go server's address.
    #[serde(rename = "kisaraServer")]
    pub kisara_server: LegacyServer,
    /// `[takina]`: the Go tunnel's token.
    pub takina: LegacyTakina,
    /// `[server]`: the cluster server.
    pub server: ServerConfig,
    /// `[agent]`: a node agent (the Go original's "client").
    pub agent: AgentConfig,
    /// `[network]`: container networks.
    pub network: NetworkConfig,
    /// `[relay]`: the port relay (the Go original's Takina).
    pub relay: RelayConfig,
    /// `[containers]`: defaults and limits for every container.
    pub containers: ContainerDefaults,
    /// `[sessions]`: execs and terminals on the server: where they are
    /// audited and recorded, their limits.
    pub sessions: SessionsConfig,
    /// `[ssh]`: the SSH gateway of the server.
    pub ssh: SshConfig,
    /// `[policy]`: the command policy, kept as written. Its owner checks it:
    /// `kisara-audit`'s `RulePolicy::from_file` reads this table from the
    /// same file and refuses a bad rule naming it; here it only has to load.
    pub policy: toml::Table,
}

/// How strict [`Config::validate`] is about secrets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Development: weak or sample tokens are logged as warnings.
    Dev,
    /// Production (the default when `[kisara] mode` is unset): tokens shorter
    /// than 16 bytes or copied from the Go sample are errors.
    #[default]
    Prod,
}

/// `[kisara]` of the Go original. Every key is optional so that "unset" can
/// be told from "set".
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LegacyKisara {
    /// The shared token; folds into `server.token` and `agent.token`.
    pub token: Option<Secret>,
    /// `dev` or `prod`; unset means [`Mode::Prod`].
    pub mode: Option<Mode>,
    /// One DNS server IP for containers; folds into `containers.dns`.
    pub dns: Option<String>,
}

/// `[kisaraClient]` of the Go original (the node agent).
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LegacyClient {
    /// Where the Go server reached the client. Unused: Kisara agents dial
    /// the server, so no inbound address is needed.
    pub address: Option<String>,
    /// The port of `address`; unused for the same reason.
    pub port: Option<u16>,
    /// Inbound bandwidth in bytes/s; folds into `agent.bandwidth_in`.
    pub network_in: Option<u64>,
    /// Outbound bandwidth in bytes/s; folds into `agent.bandwidth_out`.
    pub network_out: Option<u64>,
    /// Container limit; folds into `agent.max_containers`.
    pub max_container: Option<u32>,
    /// The Go client's local database; folds into `agent.db_path`, where the
    /// agent keeps its local store.
    pub db_path: Option<PathBuf>,
    /// One subnet pool pattern; folds into `network.pools`.
    pub network_cidrs: Option<String>,
}

/// `[kisaraServer]` of the Go original.
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LegacyServer {
    /// The server's IP; folds into `server.listen` and `agent.server_url`.
    pub address: Option<String>,
    /// The server's port; folds like `address`.
    pub port: Option<u16>,
}

/// `[takina]` of the Go original (its tunnel).
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LegacyTakina {
    /// The tunnel token; folds into `relay.token`.
    pub token: Option<Secret>,
}

/// `[server]`: the cluster server that agents dial.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Where to accept agents and API calls; default `127.0.0.1:7474`
    /// (loopback until asked otherwise).
    pub listen: SocketAddr,
    /// The token agents must present; required.
    pub token: Secret,
    /// The bearer tokens the HTTP API accepts, each with the name callers
    /// are known by; at least one for [`Role::Server`]. Written
    /// `api_tokens = [{ name = "platform", token = "..." }]`.
    pub api_tokens: Vec<ApiToken>,
    /// Seconds without a heartbeat after which an agent's link counts as
    /// dead and its node goes offline; default 15.
    pub heartbeat_timeout_secs: u64,
    /// A PEM certificate chain to serve the API and agent links over TLS
    /// (agents then dial `wss://`); set with `tls_key` or not at all.
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// A PEM CA: set, every client (agents and API callers) must present a
    /// certificate it signed (mutual TLS), besides its token. Needs
    /// `tls_cert`.
    pub tls_client_ca: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 7474),
            token: Secret::default(),
            api_tokens: Vec::new(),
            heartbeat_timeout_secs: 15,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
        }
    }
}

impl ServerConfig {
    /// [`ServerConfig::heartbeat_timeout_secs`] as a duration.
    pub fn heartbeat_timeout(&self) -> Duration {
        Duration::from_secs(self.heartbeat_timeout_secs)
    }

    /// An authenticator accepting each of [`ServerConfig::api_tokens`] as
    /// an identity of its name, for the HTTP API.
    pub fn api_authenticator(&self) -> StaticAuthenticator {
        self.api_tokens
            .iter()
            .fold(StaticAuthenticator::new(), |auth, api| {
                let mut identity = Identity::new(&api.name);
                identity.roles = api.roles.clone();
                if let Some(team) = &api.team {
                    identity = identity.with_team(team);
                }
                auth.with_token(identity, api.token.expose())
            })
    }
}

/// A bearer token of the HTTP API (`server.api_tokens`).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiToken {
    /// Who presents it: the user name logs and audit events show.
    pub name: String,
    /// The token.
    pub token: Secret,
    /// What its holder may do: `admin` (everything, the default),
    /// `platform` (launch and manage, sessions anywhere) or `player`
    /// (sessions on its team's containers only).
    #[serde(default = "admin_only")]
    pub roles: Vec<String>,
    /// The team of a `player` token: the owner label of the containers it
    /// reaches (default: its `name`).
    #[serde(default)]
    pub team: Option<String>,
}

fn admin_only() -> Vec<String> {
    vec![crate::roles::ADMIN.to_owned()]
}

impl ApiToken {
    /// `token`, presented by `name`, an admin.
    pub fn new(name: impl Into<String>, token: impl Into<Secret>) -> Self {
        Self {
            name: name.into(),
            token: token.into(),
            roles: admin_only(),
            team: None,
        }
    }
}

/// `[agent]`: a node agent on one Docker host.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// The server's WebSocket URL; default `ws://127.0.0.1:7474`.
    pub server_url: String,
    /// The token presented to the server; required.
    pub token: Secret,
    /// Where the agent persists its node id and state; default `state`.
    pub state_dir: PathBuf,
    /// A fixed node id; unset means one is generated and persisted in
    /// `state_dir`.
    pub node_id: Option<String>,
    /// Most containers this node runs at once; default 80.
    pub max_containers: u32,
    /// Inbound bandwidth in bytes/s; default 52428800 (50 MiB/s).
    pub bandwidth_in: u64,
    /// Outbound bandwidth in bytes/s; default 52428800 (50 MiB/s).
    pub bandwidth_out: u64,
    /// The Docker endpoint; unset means the runtime's default
    /// (`DOCKER_HOST` or the local socket).
    pub docker_host: Option<String>,
    /// Where the agent's local store lives; unset means inside `state_dir`
    /// (see [`AgentConfig::store_path`]). Set by the Go `kisaraClient.db_path`.
    pub db_path: Option<PathBuf>,
    /// The relays this node's tunnel client links to; default none (no
    /// ports exposed).
    pub relays: Vec<AgentRelay>,
    /// A PEM CA that signed the server's certificate, pinned: set, a
    /// `wss://` server is verified against it alone; unset, against the
    /// system's trust roots (`SSL_CERT_FILE` / `SSL_CERT_DIR` honoured).
    pub server_ca: Option<PathBuf>,
    /// A PEM client certificate chain for a server that demands one
    /// (mutual TLS); set with `tls_key` or not at all.
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// A statically linked `kisara-sidecar` binary. Set, the agent builds
    /// the forwarding sidecar image from it and exposes ports of containers
    /// on overlay networks (which the host cannot reach) through sidecars;
    /// unset, such exposures point at addresses only the swarm reaches.
    pub sidecar_binary: Option<PathBuf>,
    /// Whether containers on `internal` networks are kept from the host by
    /// firewall rules the agent installs: `enforce` (the default) or `off`.
    pub internal_isolation: Isolation,
}

/// Whether the runtime keeps containers on `internal` networks from
/// reaching the host (`[agent] internal_isolation`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// Install firewall rules for every internal bridge network and
    /// reconcile them when connecting; connecting fails when no firewall
    /// tool works.
    #[default]
    Enforce,
    /// Install no rules. Containers on internal networks then reach every
    /// service of the host that listens on the wildcard address or on the
    /// bridge's gateway address: only for hosts whose firewall is managed
    /// otherwise, or where that is acceptable.
    Off,
}

/// A relay an agent links to (`[[agent.relays]]`), as the tunnel client
/// dials it.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentRelay {
    /// Its name, unique among the agent's relays; exposures report it.
    pub name: String,
    /// Where it accepts clients, `host:port`.
    pub address: String,
    /// The token it expects (its `relay.token`).
    pub token: Secret,
    /// The link uses TLS, the relay verified against the system's trust
    /// roots (or `tls_ca`); default off, unless `tls_ca` is set.
    #[serde(default)]
    pub tls: bool,
    /// A PEM file of the CA that signed the relay's certificate, pinned:
    /// set, the link uses TLS verified against this CA alone.
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// The name the relay's certificate must carry; default the host of
    /// `address`. Needs TLS (`tls` or `tls_ca`).
    #[serde(default)]
    pub server_name: Option<String>,
}

impl AgentRelay {
    /// Whether the link uses TLS: `tls`, or a pinned `tls_ca`.
    pub fn uses_tls(&self) -> bool {
        self.tls || self.tls_ca.is_some()
    }

    /// A relay at `address` expecting `token`, without TLS.
    pub fn new(
        name: impl Into<String>,
        address: impl Into<String>,
        token: impl Into<Secret>,
    ) -> Self {
        Self {
            name: name.into(),
            address: address.into(),
            token: token.into(),
            tls: false,
            tls_ca: None,
            server_name: None,
        }
    }

    /// The name to verify the relay's certificate under, when the link
    /// uses TLS: `server_name`, else the host of `address` (without the
    /// brackets of an IPv6 address).
    pub fn tls_server_name(&self) -> Option<&str> {
        if !self.uses_tls() {
            return None;
        }
        let host = || {
            let host = self
                .address
                .rsplit_once(':')
                .map_or(self.address.as_str(), |(host, _)| host);
            host.trim_start_matches('[').trim_end_matches(']')
        };
        Some(self.server_name.as_deref().unwrap_or_else(host))
    }
}

impl AgentConfig {
    /// The agent's local store: `db_path`, else `<state_dir>/kisara.db`.
    pub fn store_path(&self) -> PathBuf {
        self.db_path
            .clone()
            .unwrap_or_else(|| self.state_dir.join("kisara.db"))
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            server_url: "ws://127.0.0.1:7474".to_owned(),
            token: Secret::default(),
            state_dir: PathBuf::from("state"),
            node_id: None,
            max_containers: 80,
            bandwidth_in: 52_428_800,
            bandwidth_out: 52_428_800,
            docker_host: None,
            db_path: None,
            relays: Vec::new(),
            server_ca: None,
            tls_cert: None,
            tls_key: None,
            sidecar_binary: None,
            internal_isolation: Isolation::Enforce,
        }
    }
}

/// `[network]`: where container networks come from.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// Subnet pool patterns such as `10.[128-255].[0-255].0/24` or plain
    /// CIDRs (see [`PoolPattern`](crate::model::pool::PoolPattern)), used in
    /// order and disjoint; default [`DEFAULT_POOL`], private space, unlike
    /// the Go original's public
    /// [`GO_DEFAULT_POOL`](crate::model::pool::GO_DEFAULT_POOL).
    pub pools: Vec<String>,
}

impl NetworkConfig {
    /// [`NetworkConfig::pools`] parsed into one checked pool.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`](crate::Error::Invalid) for a pattern that does not
    /// parse, overlapping pools or an empty list, as
    /// [`Config::validate`] reports them.
    pub fn subnet_pool(&self) -> crate::Result<SubnetPool> {
        SubnetPool::parse_list(&self.pools)
    }
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            pools: vec![DEFAULT_POOL.to_owned()],
        }
    }
}

/// `[sessions]`: how the server audits, records and limits sessions.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionsConfig {
    /// The SQLite database audit events go to (searchable over the API);
    /// default `state/audit.db`.
    pub audit_db: PathBuf,
    /// The directory recordings (asciicast v2 files) go to; default
    /// `state/recordings`.
    pub recordings_dir: PathBuf,
    /// Seconds without input or output after which a session ends; 0 for
    /// never; default 1800.
    pub idle_timeout_secs: u64,
    /// Seconds after which any session ends; default 28800 (8 hours).
    pub max_lifetime_secs: u64,
    /// Seconds a terminal ticket stays valid; 1 to 3600, default 60.
    pub ticket_ttl_secs: u64,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        Self {
            audit_db: PathBuf::from("state/audit.db"),
            recordings_dir: PathBuf::from("state/recordings"),
            idle_timeout_secs: 1800,
            max_lifetime_secs: 8 * 3600,
            ticket_ttl_secs: 60,
        }
    }
}

impl SessionsConfig {
    /// [`SessionsConfig::idle_timeout_secs`] as a duration, `None` for 0.
    pub fn idle_timeout(&self) -> Option<Duration> {
        (self.idle_timeout_secs > 0).then(|| Duration::from_secs(self.idle_timeout_secs))
    }

    /// [`SessionsConfig::max_lifetime_secs`] as a duration.
    pub fn max_lifetime(&self) -> Duration {
        Duration::from_secs(self.max_lifetime_secs)
    }

    /// [`SessionsConfig::ticket_ttl_secs`] as a duration.
    pub fn ticket_ttl(&self) -> Duration {
        Duration::from_secs(self.ticket_ttl_secs)
    }
}

/// `[relay]`: the relay that exposes container ports publicly.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// Where the relay accepts agents; default `127.0.0.1:7000`.
    pub listen: SocketAddr,
    /// The host name users connect to; default `127.0.0.1`.
    pub public_host: String,
    /// Public ports handed out; default [`DEFAULT_PORT_RANGE`].
    pub port_range: PortRange,
    /// The token agents present to the relay. Empty means this deployment
    /// runs no relay; a relay must refuse to start without one.
    pub token: Secret,
    /// A PEM certificate chain to serve agents over TLS; set with
    /// `tls_key` or not at all.
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Where the relay program serves its Prometheus metrics
    /// (`GET /metrics`, plain HTTP without authentication: bind it to an
    /// address only the scraper reaches); not served by default. A relay
    /// run inside the server or dev program reports through that
    /// program's `/metrics` instead.
    pub metrics_listen: Option<SocketAddr>,
}

impl RelayConfig {
    /// The certificate chain and key to serve TLS with, when both are set.
    pub fn tls(&self) -> Option<(&Path, &Path)> {
        Some((self.tls_cert.as_deref()?, self.tls_key.as_deref()?))
    }
}

impl ServerConfig {
    /// The certificate chain and key to serve TLS with, when both are set.
    pub fn tls(&self) -> Option<(&Path, &Path)> {
        Some((self.tls_cert.as_deref()?, self.tls_key.as_deref()?))
    }
}

impl AgentConfig {
    /// The client certificate chain and key, when both are set.
    pub fn client_cert(&self) -> Option<(&Path, &Path)> {
        Some((self.tls_cert.as_deref()?, self.tls_key.as_deref()?))
    }
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 7000),
            public_host: "127.0.0.1".to_owned(),
            port_range: DEFAULT_PORT_RANGE,
            token: Secret::default(),
            tls_cert: None,
            tls_key: None,
            metrics_listen: None,
        }
    }
}

/// `[containers]`: defaults and limits applied to every container.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContainerDefaults {
    /// Memory limit in bytes; default 536870912 (512 MiB), at least 4 MiB.
    pub memory_bytes: u64,
    /// CPU limit in thousandths of a core; default 1000 (one core).
    pub cpu_millis: u64,
    /// Process limit; default 256.
    pub pids: u64,
    /// DNS servers; default empty (the engine's default).
    pub dns: Vec<IpAddr>,
    /// Absolute host paths that may be mounted, with everything below them;
    /// default empty, i.e. no host mounts.
    pub mount_allow_list: Vec<PathBuf>,
    /// Extra Linux capabilities; default none.
    pub cap_add: Vec<String>,
    /// Mount the root file system read-only; default false.
    pub read_only_root: bool,
}

impl Default for ContainerDefaults {
    fn default() -> Self {
        Self {
            memory_bytes: 512 * 1024 * 1024,
            cpu_millis: 1000,
            pids: 256,
            dns: Vec::new(),
            mount_allow_list: Vec::new(),
            cap_add: Vec::new(),
            read_only_root: false,
        }
    }
}

impl ContainerDefaults {
    /// Refuses `spec` when a mount's source is not an absolute, `..`-free
    /// path under [`ContainerDefaults::mount_allow_list`], naming the path.
    /// Every runtime calls this before creating anything.
    pub fn check_mounts(&self, spec: &ContainerSpec) -> crate::Result<()> {
        for mount in &spec.mounts {
            let clean = mount.source.is_absolute()
                && !mount.source.components().any(|c| c == Component::ParentDir);
            let allowed = clean
                && self
                    .mount_allow_list
                    .iter()
                    .any(|root| mount.source.starts_with(root));
            if !allowed {
                return Err(crate::Error::permission_denied(format!(
                    "host path {} is not under an allowed mount root",
                    mount.source.display()
                )));
            }
        }
        Ok(())
    }

    /// The limits a container gets: what `requested` sets, these defaults
    /// for the rest. Never unlimited.
    pub fn limits_for(&self, requested: &ResourceLimits) -> ResourceLimits {
        ResourceLimits {
            cpu_millis: Some(requested.cpu_millis.unwrap_or(self.cpu_millis)),
            memory_bytes: Some(requested.memory_bytes.unwrap_or(self.memory_bytes)),
            pids: Some(requested.pids.unwrap_or(self.pids)),
        }
    }
}

/// The relay's default public ports, `20000-50000`, as in the Go original's
/// Takina.
pub const DEFAULT_PORT_RANGE: PortRange = PortRange {
    start: 20000,
    end: 50000,
};

/// An inclusive range of ports, written `"20000-50000"` or
/// `{ start = 20000, end = 50000 }`.
///
/// Parsing checks only the shape; [`Config::validate`] checks that
/// `1 <= start <= end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    /// The first port.
    pub start: u16,
    /// The last port, included.
    pub end: u16,
}

impl PortRange {
    /// Whether `port` lies in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.start..=self.end).contains(&port)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

impl FromStr for PortRange {
    type Err = crate::Error;

    fn from_str(text: &str) -> crate::Result<Self> {
        let parse = |part: &str| part.trim().parse::<u16>().ok();
        text.split_once('-')
            .and_then(|(start, end)| Some((parse(start)?, parse(end)?)))
            .map(|(start, end)| Self { start, end })
            .ok_or_else(|| {
                crate::Error::invalid(
                    "port range",
                    format!("{text:?}: expected \"start-end\" with ports 0-65535"),
                )
            })
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::{self, MapAccess, Visitor, value::MapAccessDeserializer};

        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            start: u16,
            end: u16,
        }

        struct RangeVisitor;

        impl<'de> Visitor<'de> for RangeVisitor {
            type Value = PortRange;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port range \"start-end\" or { start, end }")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<PortRange, E> {
                text.parse().map_err(E::custom)
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<PortRange, A::Error> {
                let Table { start, end } = Table::deserialize(MapAccessDeserializer::new(map))?;
                Ok(PortRange { start, end })
            }
        }

        deserializer.deserialize_any(RangeVisitor)
    }
}
