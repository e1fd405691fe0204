//! Reading a [`Config`]: TOML text or file, then `KISARA_*` overrides.

use std::path::Path;

use serde::de::{self, DeserializeOwned, Visitor};

use super::{
    AgentConfig, AgentRelay, ApiToken, Config, ContainerDefaults, LegacyClient, LegacyKisara,
    LegacyServer, LegacyTakina, NetworkConfig, RelayConfig, ServerConfig, SessionsConfig,
};
use crate::{Error, Result};

/// The prefix of every override variable.
const ENV_PREFIX: &str = "KISARA_";

impl Config {
    /// Parses TOML `text`; `origin` (usually the file name) prefixes every
    /// error, which also names the offending key and its line.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self> {
        Self::from_toml_str_with_env(text, origin, std::iter::empty())
    }

    /// Like [`Config::from_toml_str`], then applies the `KISARA_*` overrides
    /// in `env` as described at [`Config::load_with_env`].
    pub fn from_toml_str_with_env(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self> {
        // Deserializing the text itself keeps toml's line and column in the
        // message for mistakes in the file.
        let config: Self = toml::from_str(text)
            .map_err(|err| Error::invalid("config", format!("{origin}: {err}")))?;
        let overrides: Vec<_> = env
            .into_iter()
            .filter_map(|(name, value)| EnvOverride::parse(name, value))
            .collect();
        if overrides.is_empty() {
            return Ok(config);
        }
        let mut table: toml::Table = toml::from_str(text)
            .map_err(|err| Error::invalid("config", format!("{origin}: {err}")))?;
        let problems: Vec<String> = overrides
            .into_iter()
            .filter_map(|ov| ov.apply(&mut table).err())
            .collect();
        if !problems.is_empty() {
            return Err(Error::invalid(
                "config",
                format!("{origin}: environment overrides: {}", problems.join("; ")),
            ));
        }
        // Every override was checked against the whole config as it went in.
        table.try_into().map_err(|err| {
            Error::invalid(
                "config",
                format!("{origin} with environment overrides: {err}"),
            )
        })
    }

    /// Reads and parses the TOML file at `path`; errors name the path.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Self::load_with_env(path, std::iter::empty())
    }

    /// Reads the file at `path`, then applies the environment overrides in
    /// `env` (pass [`std::env::vars`]-like pairs; tests pass their own).
    ///
    /// # Overrides
    ///
    /// `KISARA_<SECTION>__<KEY>=value` sets `<key>` in `[<section>]`, with a
    /// double underscore between the two; section and key match the known
    /// names case-insensitively (`KISARA_AGENT__MAX_CONTAINERS=100`,
    /// `KISARA_KISARACLIENT__PORT=1`). The value is read as a TOML value when
    /// it is one the key accepts (`100`, `true`, `["a", "b"]`,
    /// `{ start = 1, end = 2 }`) and as a plain string otherwise, so a
    /// numeric token stays a string. Nested keys are not reachable.
    ///
    /// A `KISARA_` variable in this form with an unknown section or key, or a
    /// value its key rejects, is an error naming the variable. Variables
    /// without `__` (`KISARA_CONFIG`, `KISARA_LOG`) belong to the binaries
    /// and are ignored here. Precedence: environment > file > defaults.
    pub fn load_with_env(
        path: impl AsRef<Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|err| {
            if err.kind() == std::io::ErrorKind::NotFound {
                Error::not_found("config file", path.display().to_string())
            } else {
                Error::invalid("config", format!("{}: cannot read: {err}", path.display()))
            }
        })?;
        Self::from_toml_str_with_env(&text, &path.display().to_string(), env)
    }

    /// Every key a file may set, as `section.key`, in the order the
    /// structs declare them, read from the serde derives (so a sample file
    /// or a tool can be checked against them); the keys of the tables
    /// listed in `server.api_tokens` and `[[agent.relays]]` follow their
    /// list as `server.api_tokens.name`, `agent.relays.address`, ...
    pub fn known_keys() -> Vec<String> {
        let mut keys = Vec::new();
        for info in sections() {
            for field in info.fields {
                let key = format!("{}.{field}", info.name);
                let entries = match key.as_str() {
                    "server.api_tokens" => field_names::<ApiToken>(),
                    "agent.relays" => field_names::<AgentRelay>(),
                    _ => &[],
                };
                let nested: Vec<String> = entries.iter().map(|e| format!("{key}.{e}")).collect();
                keys.push(key);
                keys.extend(nested);
            }
        }
        keys
    }

    /// [`Config::load_with_env`] with this process's environment. A
    /// `KISARA_` variable that is not valid Unicode is an error.
    pub fn load_with_process_env(path: impl AsRef<Path>) -> Result<Self> {
        let mut env = Vec::new();
        for (name, value) in std::env::vars_os() {
            let Some(name) = name.to_str().filter(|name| name.starts_with(ENV_PREFIX)) else {
                continue;
            };
            let value = value.into_string().map_err(|_| {
                Error::invalid("config", format!("{name}: value is not valid Unicode"))
            })?;
            env.push((name.to_owned(), value));
        }
        Self::load_with_env(path, env)
    }
}

/// One `KISARA_<SECTION>__<KEY>` variable, split but not yet matched.
struct EnvOverride {
    name: String,
    section: String,
    key: String,
    value: String,
}

impl EnvOverride {
    /// `None` for variables that are not overrides.
    fn parse(name: String, value: String) -> Option<Self> {
        let (section, key) = name.strip_prefix(ENV_PREFIX)?.split_once("__")?;
        let (section, key) = (section.to_owned(), key.to_owned());
        Some(Self {
            name,
            section,
            key,
            value,
        })
    }

    /// Sets the key in `table`, keeping `table` a valid [`Config`]; on error
    /// leaves `table` as it was and returns a message naming the variable.
    fn apply(self, table: &mut toml::Table) -> std::result::Result<(), String> {
        let Self {
            name,
            section,
            key,
            value,
        } = self;
        let sections = sections();
        let known =
            |names: &mut dyn Iterator<Item = &'static str>| names.collect::<Vec<_>>().join(", ");
        let Some(info) = sections
            .iter()
            .find(|info| info.name.eq_ignore_ascii_case(&section))
        else {
            let names = known(&mut sections.iter().map(|info| info.name));
            return Err(format!(
                "{name}: unknown section `{section}` (known: {names})"
            ));
        };
        let Some(field) = info
            .fields
            .iter()
            .find(|field| field.eq_ignore_ascii_case(&key))
        else {
            let names = known(&mut info.fields.iter().copied());
            return Err(format!(
                "{name}: unknown key `{key}` in [{}] (known: {names})",
                info.name
            ));
        };

        let typed = toml_value(&value);
        let mut candidates = vec![typed.clone()];
        if !typed.is_str() {
            candidates.push(toml::Value::String(value));
        }
        let mut first_error = None;
        for candidate in candidates {
            let mut trial = table.clone();
            let entry = trial
                .entry(info.name)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let toml::Value::Table(section) = entry {
                section.insert((*field).to_owned(), candidate);
            }
            match trial.clone().try_into::<Config>() {
                Ok(_) => {
                    *table = trial;
                    return Ok(());
                }
                Err(err) => {
                    first_error.get_or_insert(err);
                }
            }
        }
        let err = first_error.map(|err| err.to_string()).unwrap_or_default();
        Err(format!("{name}: {}", err.trim().replace('\n', " ")))
    }
}

/// `text` as a TOML value when it is one, else as a string.
fn toml_value(text: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {text}"))
        .ok()
        .filter(|table| table.len() == 1)
        .and_then(|mut table| table.remove("v"))
        .unwrap_or_else(|| toml::Value::String(text.to_owned()))
}

/// A top-level section: its name in the file and its keys.
pub(super) struct SectionInfo {
    pub(super) name: &'static str,
    pub(super) fields: &'static [&'static str],
}

/// Every section of [`Config`] with its keys, read from the serde derives so
/// they cannot drift from the structs.
pub(super) fn sections() -> [SectionInfo; 11] {
    fn section<T: DeserializeOwned>(name: &'static str) -> SectionInfo {
        SectionInfo {
            name,
            fields: field_names::<T>(),
        }
    }
    [
        section::<LegacyKisara>("kisara"),
        section::<LegacyClient>("kisaraClient"),
        section::<LegacyServer>("kisaraServer"),
        section::<LegacyTakina>("takina"),
        section::<ServerConfig>("server"),
        section::<AgentConfig>("agent"),
        section::<NetworkConfig>("network"),
        section::<RelayConfig>("relay"),
        section::<ContainerDefaults>("containers"),
        section::<SessionsConfig>("sessions"),
        section::<super::SshConfig>("ssh"),
    ]
}

/// The field names a derived `Deserialize` struct asks for.
pub(super) fn field_names<T: DeserializeOwned>() -> &'static [&'static str] {
    let mut fields: &'static [&'static str] = &[];
    // The probe always errs once it has seen the names; the result is moot.
    let _ = T::deserialize(FieldProbe(&mut fields));
    fields
}

/// A deserializer that records the field list of `deserialize_struct`.
struct FieldProbe<'a>(&'a mut &'static [&'static str]);

impl<'de> de::Deserializer<'de> for FieldProbe<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("not a struct"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(de::Error::custom("fields recorded"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect()
    }

    fn with_env(text: &str, pairs: &[(&str, &str)]) -> Result<Config> {
        Config::from_toml_str_with_env(text, "test.toml", env(pairs))
    }

    #[test]
    fn section_table_matches_the_config_struct() {
        let names: Vec<_> = sections().iter().map(|info| info.name).collect();
        // `[policy]` is kept as written for the program that enforces it:
        // it has no typed keys here and no environment overrides.
        let typed: Vec<_> = field_names::<Config>()
            .iter()
            .copied()
            .filter(|name| *name != "policy")
            .collect();
        assert_eq!(names, typed);
        let agent = sections()
            .into_iter()
            .find(|info| info.name == "agent")
            .unwrap();
        assert!(agent.fields.contains(&"max_containers"));
    }

    #[test]
    fn known_keys_name_sections_keys_and_list_entries() {
        let keys = Config::known_keys();
        let at = |key: &str| {
            keys.iter()
                .position(|k| k == key)
                .unwrap_or_else(|| panic!("{key}"))
        };
        assert_eq!(keys[0], "kisara.token");
        assert_eq!(at("agent.relays") + 1, at("agent.relays.name"));
        assert!(at("server.api_tokens.token") < at("server.heartbeat_timeout_secs"));
        assert!(keys.contains(&"containers.read_only_root".to_owned()));
        assert!(keys.contains(&"kisaraClient.network_cidrs".to_owned()));
    }

    #[test]
    fn typo_names_key_and_file() {
        let err = Config::from_toml_str("[agent]\nmax_container = 3\n", "site.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_container"), "{err}");
        assert!(err.contains("site.toml"), "{err}");
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn internal_isolation_is_enforced_unless_turned_off_by_name() {
        use crate::config::Isolation;
        let default = Config::from_toml_str("", "site.toml").unwrap();
        assert_eq!(default.agent.internal_isolation, Isolation::Enforce);
        let off =
            Config::from_toml_str("[agent]\ninternal_isolation = \"off\"\n", "site.toml").unwrap();
        assert_eq!(off.agent.internal_isolation, Isolation::Off);
        let from_env = with_env("", &[("KISARA_AGENT__INTERNAL_ISOLATION", "off")]).unwrap();
        assert_eq!(from_env.agent.internal_isolation, Isolation::Off);
        let err = Config::from_toml_str("[agent]\ninternal_isolation = \"none\"\n", "site.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("none") && err.contains("enforce") && err.contains("off"),
            "{err}"
        );
    }

    #[test]
    fn unknown_section_is_rejected() {
        let err = Config::from_toml_str("[agnet]\n", "site.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("agnet") && err.contains("site.toml"), "{err}");
    }

    #[test]
    fn env_overrides_file_and_defaults() {
        let config = with_env(
            "[agent]\nmax_containers = 5\n",
            &[
                ("KISARA_AGENT__MAX_CONTAINERS", "100"),
                ("kisara_ignored__x", "lowercase prefix is not ours"),
                ("KISARA_agent__Node_Id", "node-7"),
                ("KISARA_KISARACLIENT__PORT", "1"),
                ("KISARA_CONFIG", "/etc/kisara.toml"),
                ("KISARA_LOG", "debug"),
                ("PATH", "/bin"),
            ],
        )
        .unwrap();
        assert_eq!(config.agent.max_containers, 100);
        assert_eq!(config.agent.node_id.as_deref(), Some("node-7"));
        assert_eq!(config.kisara_client.port, Some(1));
    }

    #[test]
    fn env_values_are_toml_when_the_key_takes_them() {
        let config = with_env(
            "",
            &[
                ("KISARA_NETWORK__POOLS", r#"["10.1.0.0/16", "10.2.0.0/16"]"#),
                ("KISARA_CONTAINERS__READ_ONLY_ROOT", "true"),
                ("KISARA_CONTAINERS__DNS", r#"["1.1.1.1"]"#),
                ("KISARA_RELAY__PORT_RANGE", "{ start = 1, end = 2 }"),
                ("KISARA_KISARA__DNS", "8.8.8.8"),
                // Numeric or date-like strings stay strings where one is wanted.
                ("KISARA_SERVER__TOKEN", "1234567890123456"),
                ("KISARA_AGENT__NODE_ID", "2024-01-01"),
            ],
        )
        .unwrap();
        assert_eq!(config.network.pools, ["10.1.0.0/16", "10.2.0.0/16"]);
        assert!(config.containers.read_only_root);
        assert_eq!(
            config.containers.dns,
            ["1.1.1.1".parse::<std::net::IpAddr>().unwrap()]
        );
        assert_eq!(
            (config.relay.port_range.start, config.relay.port_range.end),
            (1, 2)
        );
        assert_eq!(config.kisara.dns.as_deref(), Some("8.8.8.8"));
        assert!(config.server.token.matches("1234567890123456"));
        assert_eq!(config.agent.node_id.as_deref(), Some("2024-01-01"));
    }

    #[test]
    fn bad_env_overrides_name_every_variable() {
        let err = with_env(
            "",
            &[
                ("KISARA_AGNET__MAX_CONTAINERS", "1"),
                ("KISARA_AGENT__MAX_CONTIANERS", "1"),
                ("KISARA_AGENT__MAX_CONTAINERS", "many"),
                ("KISARA___TOKEN", "x"),
            ],
        )
        .unwrap_err()
        .to_string();
        for name in [
            "KISARA_AGNET__MAX_CONTAINERS: unknown section `AGNET`",
            "KISARA_AGENT__MAX_CONTIANERS: unknown key `MAX_CONTIANERS` in [agent]",
            "KISARA_AGENT__MAX_CONTAINERS: ",
            "KISARA___TOKEN: unknown section ``",
            "test.toml",
        ] {
            assert!(err.contains(name), "{name:?} missing from {err}");
        }
    }

    #[test]
    fn later_env_value_wins() {
        let config = with_env(
            "",
            &[
                ("KISARA_AGENT__MAX_CONTAINERS", "7"),
                ("KISARA_AGENT__MAX_CONTAINERS", "9"),
            ],
        )
        .unwrap();
        assert_eq!(config.agent.max_containers, 9);
    }

    #[test]
    fn toml_values_fall_back_to_strings() {
        assert_eq!(toml_value("42"), toml::Value::Integer(42));
        assert_eq!(toml_value("8.8.8.8"), toml::Value::String("8.8.8.8".into()));
        assert_eq!(
            toml_value("1\nx = 2"),
            toml::Value::String("1\nx = 2".into())
        );
    }
}
