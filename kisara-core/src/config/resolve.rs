//! Folding the Go original's keys into Kisara's own, and validation.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Component, PathBuf};

use super::{
    AgentConfig, AgentRelay, Config, ContainerDefaults, Mode, NetworkConfig, RelayConfig,
    ServerConfig, SessionsConfig, SshConfig,
};
use crate::model::pool::{self, PoolPattern, SubnetPool};
use crate::{Error, Secret};

/// Tokens shipped in the Go original's sample config.
const SAMPLE_TOKENS: [&str; 2] = ["test", "testtest"];
/// Shortest token accepted in [`Mode::Prod`], in bytes.
const MIN_TOKEN_LEN: usize = 16;
/// Smallest `containers.memory_bytes`.
const MIN_MEMORY_BYTES: u64 = 4 * 1024 * 1024;

/// Which program a configuration is checked for: each demands only the
/// sections it runs (see [`Config::resolve_for`]).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The cluster server: `[server]` (`server.token` and at least one of
    /// `server.api_tokens` required) and `[network]`.
    Server,
    /// A node agent: `[agent]` (`agent.token` required, `agent.relays`) and
    /// `[containers]`.
    Agent,
    /// The relay: `[relay]`, `relay.token` required.
    Relay,
    /// Everything in one process, the all-in-one dev binary: every section,
    /// `server.token` and `agent.token` required; `[relay]` is checked but
    /// its token may be empty (no relay runs then).
    Dev,
}

impl Role {
    /// Whether this role runs `section` (`"server"`, `"agent"`, ...), so
    /// that its keys are checked.
    fn runs(self, section: &str) -> bool {
        match self {
            Self::Server => matches!(section, "server" | "network"),
            Self::Agent => matches!(section, "agent" | "containers"),
            Self::Relay => section == "relay",
            Self::Dev => true,
        }
    }
}

/// The effective configuration: Kisara's own sections with the Go
/// original's keys folded in. Built by [`Config::resolve`].
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedConfig {
    /// From `[kisara] mode`; [`Mode::Prod`] when unset.
    pub mode: Mode,
    /// The cluster server.
    pub server: ServerConfig,
    /// A node agent.
    pub agent: AgentConfig,
    /// Container networks.
    pub network: NetworkConfig,
    /// The port relay.
    pub relay: RelayConfig,
    /// Container defaults and limits.
    pub containers: ContainerDefaults,
    /// Sessions on the server.
    pub sessions: SessionsConfig,
    /// The SSH gateway.
    pub ssh: SshConfig,
    /// The `[policy]` table as written, for the program that enforces it.
    pub policy: toml::Table,
}

/// One problem found by [`Config::validate`]: the key as written in the
/// file and what is wrong with it. Displays as `key: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The offending key, e.g. `agent.max_containers` or, when the value
    /// came from the Go original's section, `kisaraClient.max_container`.
    pub key: String,
    /// What is wrong and, where it helps, what to do.
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every problem of a configuration, never empty. Displays one problem per
/// line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    problems: Vec<ConfigProblem>,
}

impl ConfigErrors {
    /// The problems, in the order the keys were checked.
    pub fn problems(&self) -> &[ConfigProblem] {
        &self.problems
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigErrors> for Error {
    fn from(errors: ConfigErrors) -> Self {
        Error::invalid("config", errors.to_string())
    }
}

impl Config {
    /// The run mode: `[kisara] mode`, else [`Mode::Prod`].
    pub fn mode(&self) -> Mode {
        self.kisara.mode.unwrap_or_default()
    }

    /// Checks the configuration for [`Role::Dev`] (every section), legacy
    /// keys folded in, and returns every problem at once; see
    /// [`Config::validate_for`].
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        self.validate_for(Role::Dev)
    }

    /// Checks what `role` runs, legacy keys folded in, and returns every
    /// problem at once. Weaknesses that [`Mode::Dev`] tolerates are logged
    /// with `tracing::warn!` instead.
    ///
    /// Problems, in the sections `role` runs: an empty `server.token` /
    /// `agent.token` (and `relay.token` for [`Role::Relay`]; no
    /// `server.api_tokens` for [`Role::Server`]); in prod, tokens shorter
    /// than 16 bytes or copied from the Go sample; port 0; an
    /// `agent.server_url` that is not `ws://` or `wss://`;
    /// `max_containers` or `heartbeat_timeout_secs` 0; an empty `node_id`;
    /// an API token or agent relay without a name, or with a name used
    /// twice; a relay `address` that is not `host:port`; a `server_name`
    /// without TLS (`tls` or `tls_ca`); `relay.tls_cert` without `relay.tls_key` or the
    /// reverse; a `kisara.dns` or `kisaraServer.address` that is not an IP;
    /// a reversed or zero-based `relay.port_range`; no pools, a pool that
    /// does not parse (named with its position, as
    /// [`PoolPattern`]'s parser names the bad token) or pools that overlap;
    /// mount paths
    /// that are relative or contain `..`; memory below 4 MiB; zero CPU or
    /// pids; a legacy key and its Kisara key set to different values.
    pub fn validate_for(&self, role: Role) -> Result<(), ConfigErrors> {
        self.check(role).1.finish()
    }

    /// Validates for [`Role::Dev`], then returns the effective
    /// configuration; see [`Config::resolve_for`].
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] listing every problem (see [`Config::validate`]).
    pub fn resolve(&self) -> crate::Result<ResolvedConfig> {
        self.resolve_for(Role::Dev)
    }

    /// Validates what `role` runs, then returns the effective
    /// configuration: every section resolved, only `role`'s checked.
    ///
    /// Each Go key folds into Kisara's own: `kisara.token` → `server.token`
    /// and `agent.token`; `kisaraServer.address`/`port` → `server.listen`
    /// and `agent.server_url` (`ws://address:port`);
    /// `kisaraClient.max_container` → `agent.max_containers`;
    /// `network_in`/`network_out` → `agent.bandwidth_in`/`_out`;
    /// `network_cidrs` → `network.pools`; `db_path` → `agent.db_path`;
    /// `kisara.dns` → `containers.dns`; `takina.token` → `relay.token`.
    /// A Kisara key counts as set when it differs from its default; set to
    /// a different value than its legacy key, it is a problem naming both.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] listing every problem (see
    /// [`Config::validate_for`]).
    pub fn resolve_for(&self, role: Role) -> crate::Result<ResolvedConfig> {
        let (resolved, checker) = self.check(role);
        checker.finish()?;
        Ok(resolved)
    }

    /// Folds and checks in one pass: problems and warnings go to the
    /// returned [`Checker`].
    fn check(&self, role: Role) -> (ResolvedConfig, Checker) {
        let mut c = Checker {
            mode: self.mode(),
            role,
            problems: Vec::new(),
            warnings: Vec::new(),
            folded: Vec::new(),
        };
        let mut r = ResolvedConfig {
            mode: self.mode(),
            server: self.server.clone(),
            agent: self.agent.clone(),
            network: self.network.clone(),
            relay: self.relay.clone(),
            containers: self.containers.clone(),
            sessions: self.sessions.clone(),
            ssh: self.ssh.clone(),
            policy: self.policy.clone(),
        };
        let (server, agent) = (ServerConfig::default(), AgentConfig::default());
        let (network, relay) = (NetworkConfig::default(), RelayConfig::default());
        let containers = ContainerDefaults::default();
        let (kisara, client) = (&self.kisara, &self.kisara_client);

        let token = kisara.token.clone();
        c.fold(
            "kisara.token",
            token.clone(),
            "server.token",
            &mut r.server.token,
            &server.token,
        );
        c.fold(
            "kisara.token",
            token,
            "agent.token",
            &mut r.agent.token,
            &agent.token,
        );
        let takina = self.takina.token.clone();
        c.fold(
            "takina.token",
            takina,
            "relay.token",
            &mut r.relay.token,
            &relay.token,
        );

        let (listen, url) = self.legacy_server(&mut c, server.listen);
        let legacy = "kisaraServer.address/port";
        c.fold(
            legacy,
            listen,
            "server.listen",
            &mut r.server.listen,
            &server.listen,
        );
        c.fold(
            legacy,
            url,
            "agent.server_url",
            &mut r.agent.server_url,
            &agent.server_url,
        );

        let max = client.max_container;
        let (max_key, max_default) = ("agent.max_containers", &agent.max_containers);
        c.fold(
            "kisaraClient.max_container",
            max,
            max_key,
            &mut r.agent.max_containers,
            max_default,
        );
        let (bw_in, bw_out) = (client.network_in, client.network_out);
        let (bw_in_default, bw_out_default) = (&agent.bandwidth_in, &agent.bandwidth_out);
        c.fold(
            "kisaraClient.network_in",
            bw_in,
            "agent.bandwidth_in",
            &mut r.agent.bandwidth_in,
            bw_in_default,
        );
        c.fold(
            "kisaraClient.network_out",
            bw_out,
            "agent.bandwidth_out",
            &mut r.agent.bandwidth_out,
            bw_out_default,
        );
        let db = client.db_path.clone().map(Some);
        c.fold(
            "kisaraClient.db_path",
            db,
            "agent.db_path",
            &mut r.agent.db_path,
            &agent.db_path,
        );
        let pools = client.network_cidrs.clone().map(|pool| vec![pool]);
        c.fold(
            "kisaraClient.network_cidrs",
            pools,
            "network.pools",
            &mut r.network.pools,
            &network.pools,
        );

        let dns = kisara
            .dns
            .as_deref()
            .and_then(|dns| match dns.trim().parse::<IpAddr>() {
                Ok(ip) => Some(vec![ip]),
                Err(_) => {
                    if role.runs("containers") {
                        c.problem("kisara.dns", format!("{dns:?} is not an IP address"));
                    }
                    None
                }
            });
        c.fold(
            "kisara.dns",
            dns,
            "containers.dns",
            &mut r.containers.dns,
            &containers.dns,
        );

        c.check_resolved(&r);
        if client.port == Some(0) && role.runs("agent") {
            c.problem("kisaraClient.port", "must not be 0");
        }
        (r, c)
    }

    /// `server.listen` and `agent.server_url` as the Go `[kisaraServer]`
    /// gives them, if it gives any; an unset half takes `default`'s.
    fn legacy_server(
        &self,
        c: &mut Checker,
        default: SocketAddr,
    ) -> (Option<SocketAddr>, Option<String>) {
        let address = self.kisara_server.address.as_deref().map(str::trim);
        let port = self.kisara_server.port;
        if address.is_none() && port.is_none() {
            return (None, None);
        }
        let port = port.unwrap_or(default.port());
        let Some(address) = address else {
            let listen = SocketAddr::new(default.ip(), port);
            return (Some(listen), Some(format!("ws://{listen}")));
        };
        match address.parse::<IpAddr>() {
            Ok(ip) => {
                let listen = SocketAddr::new(ip, port);
                (Some(listen), Some(format!("ws://{listen}")))
            }
            Err(_) => {
                // Only the server listens on it; agents dial a host name fine.
                if c.role.runs("server") {
                    c.problem(
                        "kisaraServer.address",
                        format!(
                            "{address:?} is not an IP address, which server.listen needs; \
                         use [server] listen and [agent] server_url instead"
                        ),
                    );
                }
                (None, Some(format!("ws://{address}:{port}")))
            }
        }
    }
}

/// Collects problems and warnings for the sections a role runs, and
/// remembers which Kisara keys took their value from a legacy key so that
/// problems name what the user wrote.
struct Checker {
    mode: Mode,
    role: Role,
    problems: Vec<ConfigProblem>,
    warnings: Vec<ConfigProblem>,
    /// (Kisara key, legacy key it was folded from).
    folded: Vec<(&'static str, &'static str)>,
}

impl Checker {
    fn problem(&mut self, key: impl Into<String>, message: impl Into<String>) {
        push_unique(&mut self.problems, key.into(), message.into());
    }

    fn warning(&mut self, key: impl Into<String>, message: impl Into<String>) {
        push_unique(&mut self.warnings, key.into(), message.into());
    }

    /// The key the value of Kisara's `key` was written under.
    fn key<'a>(&self, key: &'a str) -> &'a str {
        self.folded
            .iter()
            .find(|(kisara, _)| *kisara == key)
            .map_or(key, |(_, legacy)| legacy)
    }

    /// Folds one legacy value into its Kisara key: the legacy value is taken
    /// when the Kisara key is at its default; both set and different is a
    /// problem naming both keys.
    fn fold<T: PartialEq + fmt::Debug>(
        &mut self,
        legacy_key: &'static str,
        legacy: Option<T>,
        key: &'static str,
        target: &mut T,
        default: &T,
    ) {
        let Some(value) = legacy else { return };
        let section = key.split('.').next().unwrap_or_default();
        if *target != *default && *target != value && self.role.runs(section) {
            // Debug of a Secret is redacted, so tokens are not printed.
            self.problem(
                key,
                format!("is {target:?} but legacy {legacy_key} is {value:?}; remove one of them"),
            );
            return;
        }
        *target = value;
        self.folded.push((key, legacy_key));
    }

    /// A token: `required` ones must not be empty; weak ones are problems in
    /// prod and warnings in dev.
    fn token(&mut self, key: &str, token: &Secret, required: bool) {
        let key = self.key(key);
        if token.is_empty() {
            if required {
                self.problem(key, "must not be empty");
            }
            return;
        }
        let weakness = if SAMPLE_TOKENS.iter().any(|sample| token.matches(sample)) {
            "is a sample token from the Go original's kisara-conf.toml".to_owned()
        } else if token.len() < MIN_TOKEN_LEN {
            format!("is {} bytes, shorter than {MIN_TOKEN_LEN}", token.len())
        } else {
            return;
        };
        match self.mode {
            Mode::Prod => self.problem(
                key,
                format!("{weakness}; use a long random token (or [kisara] mode = \"dev\")"),
            ),
            Mode::Dev => self.warning(key, format!("{weakness}; acceptable only in dev mode")),
        }
    }

    fn port(&mut self, key: &'static str, addr: SocketAddr) {
        if addr.port() == 0 {
            let key = self.key(key);
            self.problem(key, "port must not be 0");
        }
    }

    fn at_least_one(&mut self, key: &'static str, value: u64) {
        if value == 0 {
            let key = self.key(key);
            self.problem(key, "must be at least 1");
        }
    }

    /// Checks the effective values of the sections the role runs.
    fn check_resolved(&mut self, r: &ResolvedConfig) {
        let role = self.role;
        if role.runs("server") {
            self.check_server(&r.server);
            self.check_sessions(&r.sessions);
            for problem in r.ssh.problems() {
                self.problem(problem.key, problem.message);
            }
        }
        if role.runs("agent") {
            self.check_agent(&r.agent);
        }
        if role.runs("network") {
            self.check_network(&r.network);
        }
        if role.runs("relay") {
            self.check_relay(&r.relay);
        }
        if role.runs("containers") {
            self.check_containers(&r.containers);
        }
    }

    fn check_sessions(&mut self, sessions: &SessionsConfig) {
        self.at_least_one("sessions.max_lifetime_secs", sessions.max_lifetime_secs);
        if !(1..=3600).contains(&sessions.ticket_ttl_secs) {
            self.problem(
                "sessions.ticket_ttl_secs",
                format!("{} is not within 1..=3600", sessions.ticket_ttl_secs),
            );
        }
        for (key, path) in [
            ("sessions.audit_db", &sessions.audit_db),
            ("sessions.recordings_dir", &sessions.recordings_dir),
        ] {
            if path.as_os_str().is_empty() {
                self.problem(key, "must not be empty");
            }
        }
    }

    fn check_server(&mut self, server: &ServerConfig) {
        self.token("server.token", &server.token, true);
        self.port("server.listen", server.listen);
        self.at_least_one(
            "server.heartbeat_timeout_secs",
            server.heartbeat_timeout_secs,
        );
        if self.role == Role::Server && server.api_tokens.is_empty() {
            self.problem(
                "server.api_tokens",
                "must list at least one token for the HTTP API, \
                 e.g. [{ name = \"platform\", token = \"...\" }]",
            );
        }
        let names: Vec<&str> = server.api_tokens.iter().map(|t| t.name.as_str()).collect();
        self.unique_names("server.api_tokens", &names);
        for (i, api) in server.api_tokens.iter().enumerate() {
            self.token(&format!("server.api_tokens[{i}].token"), &api.token, true);
            if api.roles.is_empty() {
                self.problem(
                    format!("server.api_tokens[{i}].roles"),
                    "must name at least one role: admin, platform or player",
                );
            }
            for role in &api.roles {
                if !crate::roles::ALL.contains(&role.as_str()) {
                    self.problem(
                        format!("server.api_tokens[{i}].roles"),
                        format!("unknown role {role:?}: expected admin, platform or player"),
                    );
                }
            }
        }
        self.cert_and_key("server", server.tls_cert.as_ref(), server.tls_key.as_ref());
        if server.tls_client_ca.is_some() && server.tls_cert.is_none() {
            self.problem(
                "server.tls_client_ca",
                "needs server.tls_cert and server.tls_key: client certificates are asked for over TLS",
            );
        }
    }

    fn check_agent(&mut self, agent: &AgentConfig) {
        self.token("agent.token", &agent.token, true);
        let url = &agent.server_url;
        if !(url.starts_with("ws://") || url.starts_with("wss://")) {
            let key = self.key("agent.server_url");
            self.problem(key, format!("{url:?} must start with ws:// or wss://"));
        }
        self.at_least_one("agent.max_containers", agent.max_containers.into());
        if agent
            .node_id
            .as_deref()
            .is_some_and(|id| id.trim().is_empty())
        {
            self.problem(
                "agent.node_id",
                "must not be empty; leave it unset to generate one",
            );
        }
        let names: Vec<&str> = agent.relays.iter().map(|r| r.name.as_str()).collect();
        self.unique_names("agent.relays", &names);
        self.cert_and_key("agent", agent.tls_cert.as_ref(), agent.tls_key.as_ref());
        for (i, relay) in agent.relays.iter().enumerate() {
            self.agent_relay(&format!("agent.relays[{i}]"), relay);
        }
    }

    fn agent_relay(&mut self, key: &str, relay: &AgentRelay) {
        let address = relay.address.trim();
        let split = address
            .rsplit_once(':')
            .filter(|(host, port)| !host.is_empty() && matches!(port.parse::<u16>(), Ok(1..)));
        if split.is_none() {
            self.problem(
                format!("{key}.address"),
                format!("{address:?} must be host:port, e.g. relay.example.com:7000"),
            );
        }
        self.token(&format!("{key}.token"), &relay.token, true);
        if relay
            .tls_ca
            .as_ref()
            .is_some_and(|ca| ca.as_os_str().is_empty())
        {
            self.problem(format!("{key}.tls_ca"), "must not be empty");
        }
        match relay.server_name.as_deref() {
            Some(name) if name.trim().is_empty() => {
                self.problem(format!("{key}.server_name"), "must not be empty");
            }
            Some(_) if !relay.uses_tls() => self.problem(
                format!("{key}.server_name"),
                format!(
                    "needs {key}.tls = true (or a pinned {key}.tls_ca): the name is checked in the TLS handshake"
                ),
            ),
            _ => {}
        }
    }

    /// Parses every pool, so that each bad one is reported with its
    /// position, then checks them as one list: disjoint, at most 256.
    /// Pools in public address space are warnings.
    fn check_network(&mut self, network: &NetworkConfig) {
        let pools_key = self.key("network.pools");
        if network.pools.is_empty() {
            self.problem(pools_key, "must list at least one pool");
            return;
        }
        // A legacy key holds one pool and is named as written.
        let key = |i: usize| {
            if pools_key == "network.pools" {
                format!("network.pools[{i}]")
            } else {
                pools_key.to_owned()
            }
        };
        let mut parsed: Vec<(usize, PoolPattern)> = Vec::new();
        for (i, text) in network.pools.iter().enumerate() {
            match text.parse::<PoolPattern>() {
                Ok(pattern) => parsed.push((i, pattern)),
                Err(err) => self.problem(key(i), invalid_message(err)),
            }
        }
        let patterns: Vec<PoolPattern> = parsed.iter().map(|(_, p)| p.clone()).collect();
        if let Some((earlier, later)) = pool::overlapping_pair(&patterns) {
            self.problem(
                key(parsed[later].0),
                format!(
                    "{} (the earlier pool is {})",
                    pool::overlap_message(&patterns[earlier], &patterns[later]),
                    key(parsed[earlier].0)
                ),
            );
        } else if parsed.len() == network.pools.len() {
            match SubnetPool::new(patterns) {
                Ok(pool) => {
                    for warning in pool.warnings() {
                        self.warning(pools_key, warning);
                    }
                }
                Err(err) => self.problem(pools_key, invalid_message(err)),
            }
        }
    }

    fn check_relay(&mut self, relay: &RelayConfig) {
        self.token("relay.token", &relay.token, self.role == Role::Relay);
        self.port("relay.listen", relay.listen);
        let range = relay.port_range;
        if range.start == 0 {
            self.problem(
                "relay.port_range",
                format!("{range} must start at 1 or above"),
            );
        }
        if range.start > range.end {
            self.problem(
                "relay.port_range",
                format!("{range} is reversed; write start-end"),
            );
        }
        if relay.public_host.trim().is_empty() {
            self.problem("relay.public_host", "must not be empty");
        }
        self.cert_and_key("relay", relay.tls_cert.as_ref(), relay.tls_key.as_ref());
        if let Some(metrics) = relay.metrics_listen {
            self.port("relay.metrics_listen", metrics);
            if metrics == relay.listen {
                self.problem(
                    "relay.metrics_listen",
                    format!("{metrics} is relay.listen; give metrics a port of their own"),
                );
            } else if range.contains(metrics.port()) {
                self.problem(
                    "relay.metrics_listen",
                    format!(
                        "port {} is inside relay.port_range {range}, where exposures take ports",
                        metrics.port()
                    ),
                );
            }
        }
    }

    /// A certificate and its key come together or not at all.
    fn cert_and_key(&mut self, section: &str, cert: Option<&PathBuf>, key: Option<&PathBuf>) {
        match (cert, key) {
            (Some(_), None) => self.problem(
                format!("{section}.tls_key"),
                format!("must be set when {section}.tls_cert is"),
            ),
            (None, Some(_)) => self.problem(
                format!("{section}.tls_cert"),
                format!("must be set when {section}.tls_key is"),
            ),
            _ => {}
        }
    }

    fn check_containers(&mut self, limits: &ContainerDefaults) {
        if limits.memory_bytes < MIN_MEMORY_BYTES {
            self.problem(
                "containers.memory_bytes",
                format!(
                    "{} is below the minimum {MIN_MEMORY_BYTES} (4 MiB)",
                    limits.memory_bytes
                ),
            );
        }
        self.at_least_one("containers.cpu_millis", limits.cpu_millis);
        self.at_least_one("containers.pids", limits.pids);
        for (i, path) in limits.mount_allow_list.iter().enumerate() {
            let key = format!("containers.mount_allow_list[{i}]");
            if !path.is_absolute() {
                self.problem(&key, format!("{} must be an absolute path", path.display()));
            }
            if path.components().any(|part| part == Component::ParentDir) {
                self.problem(key, format!("{} must not contain `..`", path.display()));
            }
        }
    }

    /// Names in the list `key` must be set and each used once.
    fn unique_names(&mut self, key: &str, names: &[&str]) {
        for (i, name) in names.iter().enumerate() {
            let entry = format!("{key}[{i}].name");
            if name.trim().is_empty() {
                self.problem(entry, "must not be empty");
            } else if let Some(first) = names[..i].iter().position(|other| other == name) {
                self.problem(
                    entry,
                    format!("{name:?} is also the name of {key}[{first}]"),
                );
            }
        }
    }

    /// Logs the warnings and returns the problems, if any.
    fn finish(self) -> Result<(), ConfigErrors> {
        for warning in &self.warnings {
            tracing::warn!(key = %warning.key, "config: {}", warning.message);
        }
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors {
                problems: self.problems,
            })
        }
    }
}

/// The message of an [`Error::Invalid`] without its `invalid ...:` prefix,
/// for a problem whose key already says what it is about.
fn invalid_message(err: Error) -> String {
    match err {
        Error::Invalid { message, .. } => message,
        other => other.to_string(),
    }
}

/// Pushes unless the same problem is there already (one legacy key can fold
/// into several Kisara keys and fail the same check for each).
fn push_unique(list: &mut Vec<ConfigProblem>, key: String, message: String) {
    let problem = ConfigProblem { key, message };
    if !list.contains(&problem) {
        list.push(problem);
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::{ApiToken, PortRange};

    const STRONG: &str = "0123456789abcdef";

    fn parse(text: &str) -> Config {
        Config::from_toml_str(text, "test.toml").unwrap()
    }

    fn problems(config: &Config) -> Vec<String> {
        match config.validate() {
            Ok(()) => Vec::new(),
            Err(errors) => errors.problems().iter().map(ToString::to_string).collect(),
        }
    }

    fn with_tokens() -> Config {
        let mut config = Config::default();
        config.server.token = Secret::new(STRONG);
        config.agent.token = Secret::new(STRONG);
        config
    }

    #[test]
    fn defaults_are_private_loopback_and_need_only_tokens() {
        let config = Config::default();
        assert_eq!(config.mode(), Mode::Prod);
        assert_eq!(
            problems(&config),
            [
                "server.token: must not be empty",
                "agent.token: must not be empty"
            ]
        );
        let resolved = with_tokens().resolve().unwrap();
        assert_eq!(resolved.mode, Mode::Prod);
        assert_eq!(resolved.server.listen, "127.0.0.1:7474".parse().unwrap());
        assert_eq!(resolved.agent.server_url, "ws://127.0.0.1:7474");
        assert_eq!(resolved.agent.state_dir, PathBuf::from("state"));
        assert_eq!(
            resolved.agent.store_path(),
            PathBuf::from("state/kisara.db")
        );
        assert_eq!(resolved.agent.node_id, None);
        assert_eq!(resolved.agent.max_containers, 80);
        assert_eq!(resolved.agent.bandwidth_in, 52_428_800);
        assert_eq!(resolved.agent.bandwidth_out, 52_428_800);
        assert_eq!(resolved.network.pools, ["10.[128-255].[0-255].0/24"]);
        assert_eq!(resolved.relay.listen, "127.0.0.1:7000".parse().unwrap());
        assert_eq!(resolved.relay.public_host, "127.0.0.1");
        assert_eq!(
            resolved.relay.port_range,
            PortRange {
                start: 20000,
                end: 50000
            }
        );
        assert!(resolved.relay.token.is_empty());
        let limits = &resolved.containers;
        assert_eq!(
            (limits.memory_bytes, limits.cpu_millis, limits.pids),
            (536_870_912, 1000, 256)
        );
        assert!(limits.dns.is_empty() && limits.mount_allow_list.is_empty());
        assert!(limits.cap_add.is_empty() && !limits.read_only_root);
        // An empty file is the defaults.
        assert_eq!(parse(""), Config::default());
    }

    #[test]
    fn validate_reports_every_problem_at_once() {
        let config = parse(
            r#"
            [server]
            listen = "0.0.0.0:0"
            [agent]
            server_url = "http://x"
            max_containers = 0
            node_id = " "
            [network]
            pools = []
            [relay]
            port_range = "50000-20000"
            public_host = ""
            [containers]
            memory_bytes = 1024
            cpu_millis = 0
            pids = 0
            mount_allow_list = ["srv", "/srv/../etc"]
            "#,
        );
        let found = problems(&config);
        for expected in [
            "server.token: must not be empty",
            "agent.token: must not be empty",
            "server.listen: port must not be 0",
            "agent.server_url: \"http://x\" must start with ws:// or wss://",
            "agent.max_containers: must be at least 1",
            "agent.node_id: must not be empty",
            "network.pools: must list at least one pool",
            "relay.port_range: 50000-20000 is reversed",
            "relay.public_host: must not be empty",
            "containers.memory_bytes: 1024 is below the minimum 4194304",
            "containers.cpu_millis: must be at least 1",
            "containers.pids: must be at least 1",
            "containers.mount_allow_list[0]: srv must be an absolute path",
            "containers.mount_allow_list[1]: /srv/../etc must not contain `..`",
        ] {
            assert!(
                found.iter().any(|line| line.starts_with(expected)),
                "{expected:?} missing from {found:#?}"
            );
        }
        assert_eq!(found.len(), 14, "{found:#?}");
        let display = config.validate().unwrap_err().to_string();
        assert_eq!(display.lines().count(), 14);
        let error: Error = config.validate().unwrap_err().into();
        assert!(error.to_string().contains("agent.max_containers"));
    }

    #[test]
    fn bad_and_overlapping_pools_are_reported_with_every_other_problem() {
        let mut config = Config::default();
        config.network.pools = vec![
            "10.0.0.0/8".to_owned(),
            "172.[128-300].0.0/16".to_owned(),
            "10.[128-255].[0-255].0/24".to_owned(),
            String::new(),
        ];
        assert_eq!(
            problems(&config),
            [
                "server.token: must not be empty",
                "agent.token: must not be empty",
                "network.pools[1]: pool pattern \"172.[128-300].0.0/16\": octet 2: range 128-300 exceeds 255",
                "network.pools[3]: pool pattern \"\": pattern: is empty; write e.g. 10.[128-255].[0-255].0/24",
                "network.pools[2]: pool 10.[128-255].[0-255].0/24 overlaps pool 10.0.0.0/8; \
                 pools must be disjoint (the earlier pool is network.pools[0])",
            ]
        );
        // resolve_for reports them too, for the roles that run the network.
        config.server.token = Secret::new(STRONG);
        config.server.api_tokens = vec![ApiToken::new("platform", STRONG)];
        let err = config.resolve_for(Role::Server).unwrap_err().to_string();
        assert!(
            err.contains("network.pools[1]") && err.contains("network.pools[2]"),
            "{err}"
        );
        config.resolve_for(Role::Relay).unwrap_err();
        config.relay.token = Secret::new(STRONG);
        config.resolve_for(Role::Relay).unwrap();

        // The legacy key is named as written.
        let legacy = parse(&format!(
            "[kisara]\ntoken = \"{STRONG}\"\n[kisaraClient]\nnetwork_cidrs = \"10.[1-300].0.0/16\"\n"
        ));
        let found = problems(&legacy);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert!(
            found[0].starts_with(
                "kisaraClient.network_cidrs: pool pattern \"10.[1-300].0.0/16\": octet 2"
            ),
            "{found:#?}"
        );

        // Public pools (the Go default) are accepted, with a warning.
        let mut go = with_tokens();
        go.network.pools = vec![
            pool::GO_DEFAULT_POOL.to_owned(),
            "fd00:6b69::/48".to_owned(),
        ];
        assert!(problems(&go).is_empty());
        assert_eq!(go.network.subnet_pool().unwrap().patterns().len(), 2);
    }

    #[test]
    fn weak_tokens_fail_in_prod_and_warn_in_dev() {
        let text = "[kisara]\ntoken = \"test\"\n";
        let found = problems(&parse(text));
        assert_eq!(found.len(), 1, "{found:#?}");
        assert!(
            found[0].starts_with("kisara.token: is a sample token"),
            "{found:#?}"
        );

        let short = problems(&parse(
            "[server]\ntoken = \"short\"\n[agent]\ntoken = \"0123456789abcdef\"",
        ));
        assert_eq!(
            short,
            [
                "server.token: is 5 bytes, shorter than 16; use a long random token (or [kisara] mode = \"dev\")"
            ]
        );

        assert_eq!(
            problems(&parse(&format!("{text}mode = \"dev\"\n"))),
            Vec::<String>::new()
        );
        assert!(problems(&parse("[kisara]\ntoken = \"0123456789abcdef\"\n")).is_empty());
        let relay = format!("[kisara]\ntoken = \"{STRONG}\"\n[takina]\ntoken = \"testtest\"\n");
        assert_eq!(problems(&parse(&relay)).len(), 1);
    }

    #[test]
    fn legacy_keys_fold_and_problems_name_them() {
        let config = parse(
            r#"
            [kisara]
            token = "0123456789abcdef"
            dns = "114.114.114.114"
            [kisaraClient]
            max_container = 0
            network_in = 1
            network_out = 2
            db_path = "db/kisara.db"
            network_cidrs = "10.0.[0-255].0/24"
            [kisaraServer]
            port = 9000
            [takina]
            token = "0123456789abcdef-relay"
            "#,
        );
        assert_eq!(
            problems(&config),
            ["kisaraClient.max_container: must be at least 1"]
        );

        let mut config = config;
        config.kisara_client.max_container = Some(3);
        let r = config.resolve().unwrap();
        assert_eq!(r.agent.max_containers, 3);
        assert_eq!((r.agent.bandwidth_in, r.agent.bandwidth_out), (1, 2));
        assert_eq!(r.agent.store_path(), PathBuf::from("db/kisara.db"));
        assert_eq!(r.network.pools, ["10.0.[0-255].0/24"]);
        assert_eq!(
            r.containers.dns,
            ["114.114.114.114".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(r.server.listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(r.agent.server_url, "ws://127.0.0.1:9000");
        assert!(r.server.token.matches(STRONG) && r.agent.token.matches(STRONG));
        assert!(r.relay.token.matches("0123456789abcdef-relay"));
    }

    #[test]
    fn legacy_and_kisara_keys_that_disagree_are_a_problem() {
        let config = parse(&format!(
            r#"
            [kisara]
            token = "{STRONG}-legacy"
            [kisaraClient]
            max_container = 100
            [kisaraServer]
            address = "::1"
            port = 7474
            [server]
            token = "{STRONG}-new"
            [agent]
            token = "{STRONG}-legacy"
            max_containers = 50
            "#
        ));
        let found = problems(&config);
        assert_eq!(
            found,
            [
                "server.token: is <redacted> but legacy kisara.token is <redacted>; remove one of them",
                "agent.max_containers: is 50 but legacy kisaraClient.max_container is 100; remove one of them",
            ]
        );
        assert!(!format!("{found:?}").contains(STRONG));

        // Agreeing values are fine, and IPv6 gets brackets in the URL.
        let mut config = config;
        config.server.token = Secret::new(format!("{STRONG}-legacy"));
        config.agent.max_containers = 100;
        let r = config.resolve().unwrap();
        assert_eq!(r.agent.max_containers, 100);
        assert_eq!(r.agent.server_url, "ws://[::1]:7474");
    }

    #[test]
    fn legacy_values_that_are_not_ips_are_problems() {
        let config = parse(&format!(
            "[kisara]\ntoken = \"{STRONG}\"\ndns = \"dns.google\"\n\
             [kisaraServer]\naddress = \"kisara.example.com\"\n[kisaraClient]\nport = 0\n"
        ));
        let found = problems(&config);
        assert_eq!(found.len(), 3, "{found:#?}");
        assert!(found[0].starts_with("kisaraServer.address: \"kisara.example.com\" is not an IP"));
        assert_eq!(found[1], "kisara.dns: \"dns.google\" is not an IP address");
        assert_eq!(found[2], "kisaraClient.port: must not be 0");
    }

    #[test]
    fn port_ranges_parse_both_forms_and_reject_junk() {
        let text = |range: &str| format!("[relay]\nport_range = {range}\n");
        let range = |range: &str| parse(&text(range)).relay.port_range;
        assert_eq!(range("\"1-2\""), PortRange { start: 1, end: 2 });
        assert_eq!(
            range("{ start = 3, end = 4 }"),
            PortRange { start: 3, end: 4 }
        );
        assert!(range("\"10-20\"").contains(20) && !range("\"10-20\"").contains(21));
        for junk in [
            "\"1-\"",
            "\"a-b\"",
            "\"1-70000\"",
            "5",
            "{ start = 1 }",
            "{ start = 1, end = 2, x = 3 }",
        ] {
            let err = Config::from_toml_str(&text(junk), "r.toml")
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("r.toml") && err.contains("port_range"),
                "{junk}: {err}"
            );
        }
        let mut config = with_tokens();
        config.relay.port_range = PortRange { start: 0, end: 10 };
        assert_eq!(
            problems(&config),
            ["relay.port_range: 0-10 must start at 1 or above"]
        );
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let config = parse(&format!(
            "[kisara]\ntoken = \"{STRONG}-a\"\n[takina]\ntoken = \"{STRONG}-b\"\n\
             [server]\ntoken = \"{STRONG}-c\"\n[relay]\ntoken = \"{STRONG}-d\"\n"
        ));
        let debug = format!("{config:?} {:?}", config.resolve());
        assert!(!debug.contains(STRONG), "{debug}");
        assert!(debug.contains("<redacted>"));
    }
}
