//! `[ssh]`: the SSH gateway of the server.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigProblem, SessionsConfig};

/// Most `ssh.max_auth_attempts` accepted.
const MAX_AUTH_ATTEMPTS: u32 = 20;

/// `[ssh]`: where the SSH gateway listens, its host key and its limits.
///
/// ```
/// use kisara_core::config::Config;
///
/// let config = Config::from_toml_str(r#"
/// [ssh]
/// listen = "0.0.0.0:2222"
/// host_key_dir = "/var/lib/kisara/ssh"   # ed25519 key made here on first start
/// max_auth_attempts = 3
/// env_allow = ["LANG", "LC_*"]
/// idle_timeout_secs = 600                # unset: [sessions] idle_timeout_secs
/// login_grace_secs = 30
/// "#, "kisara.toml")?;
/// assert_eq!(config.ssh.listen.port(), 2222);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SshConfig {
    /// Where the gateway accepts SSH clients; default `127.0.0.1:2222`
    /// (loopback until asked otherwise).
    pub listen: SocketAddr,
    /// The directory of the gateway's host key (`ssh_host_ed25519_key`,
    /// generated there with mode 0600 on first start); default `state/ssh`.
    pub host_key_dir: PathBuf,
    /// Authentication attempts per connection, 1 to 20; default 3.
    pub max_auth_attempts: u32,
    /// Environment variables a client may set (`SendEnv`/`SetEnv`); a name
    /// ending in `*` allows every name it starts; default `LANG`, `LC_*`.
    pub env_allow: Vec<String>,
    /// Seconds a logged-in connection without an open channel is kept; 0
    /// for ever; unset, `[sessions] idle_timeout_secs`.
    pub idle_timeout_secs: Option<u64>,
    /// Seconds a client has to log in after connecting; default 30.
    pub login_grace_secs: u64,
}

impl Default for SshConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 2222),
            host_key_dir: PathBuf::from("state/ssh"),
            max_auth_attempts: 3,
            env_allow: vec!["LANG".to_owned(), "LC_*".to_owned()],
            idle_timeout_secs: None,
            login_grace_secs: 30,
        }
    }
}

impl SshConfig {
    /// The idle timeout of connections: `idle_timeout_secs`, else the
    /// sessions'; `None` for never.
    pub fn idle_timeout(&self, sessions: &SessionsConfig) -> Option<Duration> {
        match self.idle_timeout_secs {
            Some(0) => None,
            Some(secs) => Some(Duration::from_secs(secs)),
            None => sessions.idle_timeout(),
        }
    }

    /// [`SshConfig::login_grace_secs`] as a duration.
    pub fn login_grace(&self) -> Duration {
        Duration::from_secs(self.login_grace_secs)
    }

    /// What is wrong with the section, each problem naming its key and
    /// the bad value.
    pub fn problems(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        let mut problem = |key: &str, message: String| {
            problems.push(ConfigProblem {
                key: key.to_owned(),
                message,
            });
        };
        if self.listen.port() == 0 {
            problem("ssh.listen", "port must not be 0".to_owned());
        }
        if self.host_key_dir.as_os_str().is_empty() {
            problem("ssh.host_key_dir", "must not be empty".to_owned());
        }
        if !(1..=MAX_AUTH_ATTEMPTS).contains(&self.max_auth_attempts) {
            problem(
                "ssh.max_auth_attempts",
                format!(
                    "{} is not within 1..={MAX_AUTH_ATTEMPTS}",
                    self.max_auth_attempts
                ),
            );
        }
        if self.login_grace_secs == 0 {
            problem("ssh.login_grace_secs", "must be at least 1".to_owned());
        }
        for (i, name) in self.env_allow.iter().enumerate() {
            let stem = name.strip_suffix('*').unwrap_or(name);
            // A bare `*` would let clients set LD_PRELOAD and the like.
            let valid =
                !stem.is_empty() && stem.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                problem(
                    &format!("ssh.env_allow[{i}]"),
                    format!(
                        "{name:?} is not a variable name (letters, digits, `_`, optionally ending in `*`)"
                    ),
                );
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_pass_and_fall_back_to_the_sessions_idle_timeout() {
        let ssh = SshConfig::default();
        assert!(ssh.problems().is_empty());
        let sessions = SessionsConfig::default();
        assert_eq!(ssh.idle_timeout(&sessions), sessions.idle_timeout());
        let never = SshConfig {
            idle_timeout_secs: Some(0),
            ..SshConfig::default()
        };
        assert_eq!(never.idle_timeout(&sessions), None);
    }

    #[test]
    fn bad_values_are_named() {
        let ssh = SshConfig {
            max_auth_attempts: 0,
            env_allow: vec!["LANG".into(), "BAD NAME".into(), String::new()],
            login_grace_secs: 0,
            ..SshConfig::default()
        };
        let problems: Vec<String> = ssh.problems().iter().map(ToString::to_string).collect();
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems[0].starts_with("ssh.max_auth_attempts: 0 is not within"));
        assert!(problems[1].starts_with("ssh.login_grace_secs"));
        assert!(problems[2].contains("ssh.env_allow[1]") && problems[2].contains("BAD NAME"));
        assert!(problems[3].contains("ssh.env_allow[2]"));
    }
}
