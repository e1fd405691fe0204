//! Loading real files: the Go original's samples, Kisara's own sections,
//! typos, missing files and environment overrides.

// In a module so that `cargo nextest run -p kisara-core config` selects these.
mod config {
    use std::collections::BTreeSet;
    use std::net::{IpAddr, SocketAddr};
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use kisara_core::config::{Config, Mode, PortRange, Role};
    use kisara_core::{Authenticator, Credentials, ErrorKind};

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect()
    }

    #[test]
    fn go_sample_loads_unchanged_and_resolves() {
        let config = Config::load(fixture("go-kisara-conf.toml")).unwrap();
        assert_eq!(config.mode(), Mode::Dev);
        assert_eq!(config.kisara_client.address.as_deref(), Some("0.0.0.0"));
        assert_eq!(config.kisara_client.port, Some(25570));
        // Dev mode: the sample tokens are warnings, not problems.
        config.validate().unwrap();

        let r = config.resolve().unwrap();
        assert!(r.server.token.matches("test") && r.agent.token.matches("test"));
        assert!(r.relay.token.matches("testtest"));
        assert_eq!(
            r.server.listen,
            "0.0.0.0:7474".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(r.agent.server_url, "ws://0.0.0.0:7474");
        assert_eq!(r.agent.max_containers, 80);
        assert_eq!(
            (r.agent.bandwidth_in, r.agent.bandwidth_out),
            (52_428_800, 52_428_800)
        );
        assert_eq!(r.agent.store_path(), PathBuf::from("db/kisara.db"));
        assert_eq!(r.network.pools, ["172.[128-255].[0-255].0/24"]);
        assert_eq!(r.containers.dns, ["8.8.8.8".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn go_sample_in_prod_mode_rejects_its_tokens() {
        let config = Config::load_with_env(
            fixture("go-kisara-conf.toml"),
            env(&[("KISARA_KISARA__MODE", "prod")]),
        )
        .unwrap();
        assert_eq!(config.mode(), Mode::Prod);
        let errors = config.validate().unwrap_err();
        let keys: Vec<_> = errors.problems().iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["kisara.token", "takina.token"], "{errors}");
        let err = config.resolve().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Invalid);
        assert!(
            err.to_string().contains("kisara.token: is a sample token"),
            "{err}"
        );
    }

    #[test]
    fn go_server_only_sample_loads_and_resolves() {
        let config = Config::load(fixture("go-kisara-server-conf.toml")).unwrap();
        config.validate().unwrap();
        let r = config.resolve().unwrap();
        assert!(r.server.token.matches("test"));
        assert_eq!(
            r.server.listen,
            "159.75.81.96:7474".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(r.agent.server_url, "ws://159.75.81.96:7474");
        // Everything else keeps Kisara's defaults, including the private pool.
        assert_eq!(r.agent.max_containers, 80);
        assert_eq!(r.network.pools, ["10.[128-255].[0-255].0/24"]);
        assert!(r.relay.token.is_empty());
    }

    #[test]
    fn kisara_sections_load_every_key() {
        let r = Config::load(fixture("kisara.toml"))
            .unwrap()
            .resolve()
            .unwrap();
        assert_eq!(r.mode, Mode::Prod);
        assert_eq!(
            r.server.listen,
            "0.0.0.0:7474".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(r.agent.server_url, "wss://kisara.example.com:7474");
        assert_eq!(r.agent.state_dir, PathBuf::from("/var/lib/kisara"));
        assert_eq!(r.agent.node_id.as_deref(), Some("node-a"));
        assert_eq!(
            r.agent.docker_host.as_deref(),
            Some("unix:///var/run/docker.sock")
        );
        assert_eq!(
            r.agent.store_path(),
            PathBuf::from("/var/lib/kisara/store.db")
        );
        assert_eq!(r.network.pools.len(), 2);
        assert_eq!(r.relay.public_host, "relay.example.com");
        assert_eq!(
            r.relay.port_range,
            PortRange {
                start: 30000,
                end: 30999
            }
        );
        assert!(r.relay.token.matches("0123456789abcdef-relay"));
        assert_eq!(
            r.relay.tls(),
            Some((
                Path::new("/etc/kisara/relay.pem"),
                Path::new("/etc/kisara/relay-key.pem")
            ))
        );
        assert_eq!(r.server.heartbeat_timeout_secs, 30);
        assert_eq!(r.server.heartbeat_timeout(), Duration::from_secs(30));
        let names: Vec<_> = r
            .server
            .api_tokens
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        assert_eq!(names, ["platform", "ctl"]);
        assert!(
            r.server.api_tokens[1]
                .token
                .matches("0123456789abcdef-api-ctl")
        );
        assert_eq!(
            r.server.tls(),
            Some((
                Path::new("/etc/kisara/server.pem"),
                Path::new("/etc/kisara/server-key.pem")
            ))
        );
        assert_eq!(
            r.server.tls_client_ca.as_deref(),
            Some(Path::new("/etc/kisara/agents-ca.pem"))
        );
        assert_eq!(
            r.agent.server_ca.as_deref(),
            Some(Path::new("/etc/kisara/server-ca.pem"))
        );
        assert!(r.agent.client_cert().is_some());
        assert_eq!(
            r.agent.sidecar_binary.as_deref(),
            Some(Path::new("/usr/local/lib/kisara/kisara-sidecar"))
        );
        let relays = &r.agent.relays;
        assert_eq!(relays.len(), 2);
        assert_eq!(
            (relays[0].name.as_str(), relays[0].address.as_str()),
            ("relay-1", "relay.example.com:7000")
        );
        assert!(relays[0].token.matches("0123456789abcdef-relay"));
        assert_eq!(
            relays[0].tls_ca.as_deref(),
            Some(Path::new("/etc/kisara/relay-ca.pem"))
        );
        assert_eq!(relays[0].tls_server_name(), Some("relay-1.internal"));
        assert_eq!(relays[1].tls_server_name(), None, "no CA, no TLS");
        assert_eq!(r.containers.dns.len(), 2);
        assert_eq!(
            r.containers.mount_allow_list,
            [PathBuf::from("/srv/challenges")]
        );
        assert_eq!(r.containers.cap_add, ["NET_ADMIN"]);
        assert!(r.containers.read_only_root);
    }

    #[test]
    fn typo_fails_naming_key_and_file() {
        let path = fixture("typo-kisara-conf.toml");
        let err = Config::load(&path).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Invalid);
        let message = err.to_string();
        assert!(message.contains("max_contianer"), "{message}");
        assert!(message.contains(&path.display().to_string()), "{message}");
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = Config::load("/nonexistent/kisara-conf.toml").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert!(
            err.to_string().contains("/nonexistent/kisara-conf.toml"),
            "{err}"
        );
    }

    #[test]
    fn env_overrides_beat_the_file() {
        let config = Config::load_with_env(
            fixture("go-kisara-conf.toml"),
            env(&[
                ("KISARA_KISARACLIENT__MAX_CONTAINER", "12"),
                ("KISARA_KISARACLIENT__NETWORK_CIDRS", "10.9.[0-255].0/24"),
                ("KISARA_CONFIG", "ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(config.kisara_client.max_container, Some(12));
        let r = config.resolve().unwrap();
        assert_eq!(r.agent.max_containers, 12);
        assert_eq!(r.network.pools, ["10.9.[0-255].0/24"]);
        // The env set network.pools, so it now disagrees with network_cidrs.
        let err = Config::load_with_env(
            fixture("go-kisara-conf.toml"),
            env(&[("KISARA_NETWORK__POOLS", r#"["10.9.0.0/16"]"#)]),
        )
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("network.pools") && err.contains("kisaraClient.network_cidrs"),
            "{err}"
        );
    }

    #[test]
    fn unknown_env_override_names_the_variable() {
        let err = Config::load_with_env(
            fixture("go-kisara-conf.toml"),
            env(&[("KISARA_AGENT__MAX_CONTIANERS", "5")]),
        )
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Invalid);
        assert!(
            err.to_string().contains("KISARA_AGENT__MAX_CONTIANERS"),
            "{err}"
        );
    }

    fn problem_lines(config: &Config, role: Role) -> Vec<String> {
        match config.validate_for(role) {
            Ok(()) => Vec::new(),
            Err(errors) => errors.problems().iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn each_role_demands_only_what_it_runs() {
        let relay = Config::load(fixture("relay-only.toml")).unwrap();
        let r = relay.resolve_for(Role::Relay).unwrap();
        assert_eq!(r.relay.public_host, "relay.example.com");
        assert!(r.relay.tls().is_some());
        // The whole deployment, or another role, misses its own tokens.
        let err = relay.resolve().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Invalid);
        assert_eq!(
            problem_lines(&relay, Role::Dev),
            [
                "server.token: must not be empty",
                "agent.token: must not be empty"
            ]
        );
        assert_eq!(
            problem_lines(&relay, Role::Agent),
            ["agent.token: must not be empty"]
        );
        let server = problem_lines(&relay, Role::Server);
        assert_eq!(server.len(), 2, "{server:#?}");
        assert!(server[1].starts_with("server.api_tokens: must list at least one token"));

        // A relay must have a token; the dev all-in-one runs without one.
        let no_token =
            Config::from_toml_str("[relay]\npublic_host = \"r.example\"\n", "r.toml").unwrap();
        assert_eq!(
            problem_lines(&no_token, Role::Relay),
            ["relay.token: must not be empty"]
        );
        assert!(
            !problem_lines(&no_token, Role::Dev)
                .iter()
                .any(|p| p.starts_with("relay."))
        );
    }

    #[test]
    fn the_relay_metrics_address_is_optional_and_its_own() {
        let relay = |extra: &str| {
            Config::from_toml_str(
                &format!(
                    "[relay]\nlisten = \"0.0.0.0:7000\"\nport_range = \"30000-30999\"\n\
                     token = \"0123456789abcdef-relay\"\n{extra}"
                ),
                "relay.toml",
            )
            .unwrap()
        };
        let none = relay("").resolve_for(Role::Relay).unwrap();
        assert_eq!(
            none.relay.metrics_listen, None,
            "served without being asked"
        );
        let set = relay("metrics_listen = \"127.0.0.1:9464\"\n")
            .resolve_for(Role::Relay)
            .unwrap();
        assert_eq!(
            set.relay.metrics_listen,
            Some("127.0.0.1:9464".parse().unwrap())
        );
        for (value, problem) in [
            (
                "0.0.0.0:7000",
                "relay.metrics_listen: 0.0.0.0:7000 is relay.listen; give metrics a port of their own",
            ),
            (
                "127.0.0.1:30500",
                "relay.metrics_listen: port 30500 is inside relay.port_range 30000-30999, where exposures take ports",
            ),
            ("127.0.0.1:0", "relay.metrics_listen: port must not be 0"),
        ] {
            let config = relay(&format!("metrics_listen = \"{value}\"\n"));
            assert_eq!(problem_lines(&config, Role::Relay), [problem]);
        }
        let junk = Config::from_toml_str("[relay]\nmetrics_listen = \"localhost\"\n", "r.toml")
            .unwrap_err()
            .to_string();
        assert!(junk.contains("metrics_listen"), "{junk}");
    }

    #[test]
    fn problems_outside_a_role_are_not_its_problems() {
        // An agent's file with broken relay and server settings, and an
        // unusable Go server address: only agent and container keys count.
        let text = r#"
            [kisara]
            dns = "dns.google"
            [kisaraServer]
            address = "kisara.example.com"
            [server]
            listen = "0.0.0.0:0"
            [agent]
            token = "0123456789abcdef-agent"
            [relay]
            port_range = "50000-20000"
            tls_key = "/k.pem"
            [containers]
            pids = 0
        "#;
        let config = Config::from_toml_str(text, "agent.toml").unwrap();
        let r = config.resolve_for(Role::Relay).unwrap_err().to_string();
        assert!(
            r.contains("relay.port_range") && r.contains("relay.tls_cert"),
            "{r}"
        );
        assert!(
            !r.contains("server.") && !r.contains("agent.") && !r.contains("kisara.dns"),
            "{r}"
        );
        assert_eq!(
            problem_lines(&config, Role::Agent),
            [
                "kisara.dns: \"dns.google\" is not an IP address",
                "containers.pids: must be at least 1"
            ]
        );
        let resolved = config.resolve_for(Role::Agent).err().unwrap().to_string();
        assert!(!resolved.contains("kisaraServer"), "{resolved}");
        let server = problem_lines(&config, Role::Server);
        assert!(server[0].starts_with("kisaraServer.address"), "{server:#?}");
        assert!(
            server
                .iter()
                .any(|p| p == "server.listen: port must not be 0")
        );
    }

    #[test]
    fn new_keys_report_every_problem_at_once() {
        let config = Config::load(fixture("new-keys-problems.toml")).unwrap();
        let found = problem_lines(&config, Role::Dev);
        for expected in [
            "server.heartbeat_timeout_secs: must be at least 1",
            "server.api_tokens[1].name: \"platform\" is also the name of server.api_tokens[0]",
            "server.api_tokens[2].name: must not be empty",
            "server.api_tokens[2].token: is 5 bytes, shorter than 16",
            "agent.relays[0].address: \"relay.example.com\" must be host:port",
            "agent.relays[0].token: must not be empty",
            "agent.relays[0].server_name: needs agent.relays[0].tls = true",
            "agent.relays[1].name: \"relay-1\" is also the name of agent.relays[0]",
            "relay.tls_key: must be set when relay.tls_cert is",
            "server.tls_cert: must be set when server.tls_key is",
            "server.tls_client_ca: needs server.tls_cert and server.tls_key",
            "agent.tls_key: must be set when agent.tls_cert is",
        ] {
            assert!(
                found.iter().any(|line| line.starts_with(expected)),
                "{expected:?} missing from {found:#?}"
            );
        }
        assert_eq!(found.len(), 12, "{found:#?}");
        assert!(
            !format!("{found:?}").contains("0123456789abcdef"),
            "no secret printed"
        );
        // An IPv6 relay verifies under its address without brackets.
        assert_eq!(config.agent.relays[1].tls_server_name(), Some("::1"));
    }

    #[test]
    fn tls_without_a_ca_trusts_the_system_roots() {
        // A wss:// server and a TLS relay need no CA file: unset, the
        // system's roots verify them; a CA file is only a pin.
        let text = r#"
[agent]
server_url = "wss://kisara.example.com:7474"
token = "0123456789abcdef-server"

[[agent.relays]]
name = "relay-1"
address = "relay.example.com:7000"
token = "0123456789abcdef-relay"
tls = true
"#;
        let config = Config::from_toml_str(text, "kisara.toml").unwrap();
        let found = problem_lines(&config, Role::Agent);
        assert!(
            !found
                .iter()
                .any(|line| line.contains("server_ca") || line.contains("relays[0]")),
            "{found:#?}"
        );
        let relay = &config.agent.relays[0];
        assert!(relay.uses_tls() && relay.tls_ca.is_none());
        assert_eq!(relay.tls_server_name(), Some("relay.example.com"));
    }

    #[test]
    fn unknown_keys_in_new_tables_are_rejected() {
        for (text, key) in [
            (
                "[[agent.relays]]\nname = \"r\"\naddress = \"r:1\"\ntoken = \"t\"\ntls_cafile = \"x\"\n",
                "tls_cafile",
            ),
            (
                "[server]\napi_tokens = [{ name = \"p\", token = \"t\", role = \"admin\" }]\n",
                "role",
            ),
            ("[server]\napi_token = \"t\"\n", "api_token"),
            ("[relay]\ntls_certificate = \"x\"\n", "tls_certificate"),
        ] {
            let err = Config::from_toml_str(text, "site.toml")
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(key) && err.contains("site.toml"),
                "{key}: {err}"
            );
        }
    }

    #[tokio::test]
    async fn api_tokens_come_from_the_file_or_the_environment_and_authenticate() {
        let config = Config::load_with_env(
            fixture("relay-only.toml"),
            env(&[(
                "KISARA_SERVER__API_TOKENS",
                r#"[{ name = "platform", token = "0123456789abcdef-env" }]"#,
            )]),
        )
        .unwrap();
        let auth = config.server.api_authenticator();
        let bearer = |token: &str| Credentials::BearerToken {
            token: token.to_owned(),
        };
        let who = auth
            .authenticate(&bearer("0123456789abcdef-env"), None)
            .await
            .unwrap();
        assert_eq!(who.username, "platform");
        let err = auth.authenticate(&bearer("other"), None).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unauthenticated);
        assert_eq!(Config::default().server.heartbeat_timeout_secs, 15);
        assert!(Config::default().agent.relays.is_empty());
    }

    /// The shipped sample, `conf/kisara.toml`.
    fn sample_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../conf/kisara.toml")
    }

    /// `text` with its optional keys and tables switched on: `#key = ...`
    /// and `#[section]` lines lose their `#` (prose is `# text`, with a
    /// space).
    fn uncommented(text: &str) -> String {
        text.lines()
            .map(|line| match line.strip_prefix('#') {
                Some(rest) if rest.starts_with(|c: char| c == '[' || c.is_ascii_alphabetic()) => {
                    rest
                }
                _ => line,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Every key set in `table`, as `section.key`, with the keys of tables
    /// in a list as `section.key.entry`.
    fn keys_of(table: &toml::Table) -> BTreeSet<String> {
        let mut keys = BTreeSet::new();
        for (section, value) in table {
            let Some(section_table) = value.as_table() else {
                continue;
            };
            for (key, value) in section_table {
                let key = format!("{section}.{key}");
                let entries = value.as_array().into_iter().flatten();
                for entry in entries.filter_map(toml::Value::as_table) {
                    keys.extend(entry.keys().map(|name| format!("{key}.{name}")));
                }
                keys.insert(key);
            }
        }
        keys
    }

    #[test]
    fn sample_config_resolves_to_the_defaults_for_every_role() {
        let config = Config::load(sample_path()).unwrap();
        let resolved = config.resolve().unwrap();
        for role in [Role::Server, Role::Agent, Role::Relay, Role::Dev] {
            config.resolve_for(role).unwrap();
        }
        // Safe as shipped: loopback, private pools, and every value but the
        // placeholder tokens is the built-in default.
        assert!(resolved.server.listen.ip().is_loopback());
        assert!(resolved.relay.listen.ip().is_loopback());
        assert!(resolved.network.subnet_pool().unwrap().is_private());
        let tokens = [
            &resolved.server.token,
            &resolved.agent.token,
            &resolved.relay.token,
            &resolved.server.api_tokens[0].token,
        ];
        assert!(
            tokens
                .iter()
                .all(|token| token.expose().starts_with("REPLACE-ME-")),
            "sample tokens are marked as placeholders"
        );
        let mut defaults = Config::default();
        defaults.server.token = resolved.server.token.clone();
        defaults.server.api_tokens = resolved.server.api_tokens.clone();
        defaults.agent.token = resolved.agent.token.clone();
        defaults.relay.token = resolved.relay.token.clone();
        assert_eq!(defaults.resolve().unwrap(), resolved);
    }

    #[test]
    fn sample_config_names_every_key() {
        let text = std::fs::read_to_string(sample_path()).unwrap();
        // With its optional keys switched on it is still a valid file, so
        // every commented example is a real key with a value it takes.
        let all = uncommented(&text);
        Config::from_toml_str(&all, "conf/kisara.toml, uncommented").unwrap();
        // `[policy]` is kisara-audit's to check, and its tests read the
        // sample's policy with `RulePolicy`.
        let written: BTreeSet<String> = keys_of(&toml::from_str(&all).unwrap())
            .into_iter()
            .filter(|key| !key.starts_with("policy."))
            .collect();
        let known: BTreeSet<String> = Config::known_keys().into_iter().collect();
        let missing: Vec<_> = known.difference(&written).collect();
        assert!(missing.is_empty(), "conf/kisara.toml lacks {missing:?}");
        assert_eq!(written, known);
        // Set keys are set once: a key is either on or an example.
        let on = keys_of(&toml::from_str(&text).unwrap());
        assert!(on.contains("server.api_tokens.token") && !on.contains("agent.relays"));
    }
}
