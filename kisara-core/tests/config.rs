//! Loading real files: the Go original's samples, Kisara's own sections,
//! typos, missing files and environment overrides.

// In a module so that `cargo nextest run -p kisara-core config` selects these.
mod config {
    use std::net::{IpAddr, SocketAddr};
    use std::path::{Path, PathBuf};

    use kisara_core::ErrorKind;
    use kisara_core::config::{Config, Mode, PortRange};

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
}
