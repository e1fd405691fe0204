//! The TOML config of a standalone token service (the `registry-auth`
//! example binary) and the assembly of its routes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use kisara_core::{Authenticator, Secret};
use serde::Deserialize;

use crate::error::{RegistryError, Result};
use crate::{AdminApi, Issuer, KeyRing, KidFormat, NotificationIntake, Store, TokenService};

/// `registry-auth.toml`; see the crate README for an example.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryAuthConfig {
    /// Where to serve `/token`, `/notifications` and `/admin`.
    pub listen: SocketAddr,
    /// The registry's `auth.token.service`.
    pub service: String,
    /// The registry's `auth.token.issuer`.
    pub issuer: String,
    /// Where the signing keys and `rootcertbundle.pem` live.
    pub key_dir: PathBuf,
    /// How the `kid` header is computed.
    #[serde(default)]
    pub kid: KidFormat,
    /// The SQLite database.
    pub database: PathBuf,
    /// Token lifetime in seconds (at least 60; default 300).
    #[serde(default = "default_lifetime")]
    pub token_lifetime_secs: u64,
    /// The secret the registry's notification endpoint sends as
    /// `Authorization: Bearer <secret>` (at least 16 characters).
    pub notification_secret: String,
    /// The users file (kisara-webhook's `UsersFile`: argon2 hashes, roles).
    pub users: PathBuf,
}

fn default_lifetime() -> u64 {
    300
}

impl RegistryAuthConfig {
    /// Reads and checks `path`; errors name the file and the field.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| RegistryError::file(path, e))?;
        let config: Self = toml::from_str(&text).map_err(|e| RegistryError::file(path, e))?;
        if config.notification_secret.len() < 16 {
            return Err(RegistryError::file(
                path,
                "notification_secret is under 16 characters",
            ));
        }
        if config.token_lifetime_secs < 60 {
            return Err(RegistryError::file(
                path,
                format!(
                    "token_lifetime_secs = {} is under the 60 s clients expect",
                    config.token_lifetime_secs
                ),
            ));
        }
        Ok(config)
    }

    /// Opens the keys and the store and builds the routes: `/token`,
    /// `/notifications`, `/admin/...`. Returns them with the path of the
    /// certificate bundle to give the registry.
    pub fn build(&self, authenticator: Arc<dyn Authenticator>) -> Result<(Router, PathBuf)> {
        let keys = KeyRing::open(&self.key_dir, &self.issuer, self.kid)?;
        let bundle = keys.bundle_path();
        let issuer = Issuer::new(
            Arc::new(RwLock::new(keys)),
            self.issuer.clone(),
            Duration::from_secs(self.token_lifetime_secs),
        );
        let store = Store::open(&self.database)?;
        let tokens = TokenService::new(
            issuer.clone(),
            self.service.clone(),
            authenticator.clone(),
            store.clone(),
        );
        let intake =
            NotificationIntake::new(store.clone(), Secret::new(self.notification_secret.clone()));
        let admin = AdminApi {
            store,
            issuer,
            authenticator,
            key_name: self.issuer.clone(),
            kid: self.kid,
        };
        let app = Arc::new(tokens)
            .router()
            .merge(Arc::new(intake).router())
            .nest("/admin", admin.router());
        Ok((app, bundle))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_configs_name_the_file_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry-auth.toml");
        let good = r#"
listen = "127.0.0.1:5001"
service = "registry"
issuer = "kisara"
key_dir = "keys"
database = "registry.db"
notification_secret = "0123456789abcdef"
users = "users.toml"
"#;
        std::fs::write(&path, good).unwrap();
        let config = RegistryAuthConfig::load(&path).unwrap();
        assert_eq!(config.kid, KidFormat::Libtrust);
        assert_eq!(config.token_lifetime_secs, 300);
        for (text, expect) in [
            (format!("{good}colour = 1\n"), "unknown field `colour`"),
            (format!("{good}kid = \"md5\"\n"), "unknown variant `md5`"),
            (
                good.replace("0123456789abcdef", "short"),
                "under 16 characters",
            ),
            (format!("{good}token_lifetime_secs = 5\n"), "under the 60 s"),
        ] {
            std::fs::write(&path, text).unwrap();
            let err = RegistryAuthConfig::load(&path).unwrap_err().to_string();
            assert!(
                err.contains("registry-auth.toml") && err.contains(expect),
                "{err}"
            );
        }
    }
}
