//! TLS and mTLS for both sides, with rustls: certificates and keys come from
//! PEM files and are re-read when a file changes (checked before each new
//! connection) or on [`ReloadingTls::reload`] (wire it to SIGHUP), so a
//! certificate swapped on disk is used for the next connection while open
//! ones carry on.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use kisara_core::sync::lock;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};

use crate::WebhookError;

/// The lowest TLS version a side accepts; lower ones are refused in the
/// handshake (ContainerSSH's bug #681 applied 1.3 as 1.2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3 only (the default, as in ContainerSSH).
    #[default]
    #[serde(rename = "1.3")]
    Tls13,
}

impl TlsVersion {
    fn versions(self) -> &'static [&'static rustls::SupportedProtocolVersion] {
        static BOTH: [&rustls::SupportedProtocolVersion; 2] =
            [&rustls::version::TLS13, &rustls::version::TLS12];
        static ONLY_13: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
        match self {
            Self::Tls12 => &BOTH,
            Self::Tls13 => &ONLY_13,
        }
    }
}

/// The client side: which servers to trust, and an optional client
/// certificate for mTLS.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientTls {
    /// PEM file of the CA(s) that sign the webhook's certificate; without
    /// it, the bundled Mozilla roots (webpki-roots) are trusted.
    pub ca: Option<PathBuf>,
    /// PEM file of the client certificate chain (mTLS).
    pub cert: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    pub key: Option<PathBuf>,
    /// The lowest TLS version offered.
    pub min_version: TlsVersion,
}

/// The server side: its certificate and, for mTLS, the CA whose client
/// certificates it requires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    /// PEM file of the server certificate chain.
    pub cert: PathBuf,
    /// PEM file of its private key.
    pub key: PathBuf,
    /// PEM file of the CA(s) of client certificates; when set, every client
    /// must present a certificate it signed.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// The lowest TLS version accepted.
    #[serde(default)]
    pub min_version: TlsVersion,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, WebhookError> {
    fs::read(path).map_err(|source| WebhookError::Io {
        path: path.display().to_string(),
        source,
    })
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, WebhookError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_config(path, &e.to_string()))?;
    if certs.is_empty() {
        return Err(tls_config(path, "holds no PEM certificate"));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, WebhookError> {
    PrivateKeyDer::from_pem_slice(&read(path)?).map_err(|e| tls_config(path, &e.to_string()))
}

fn roots(path: &Path) -> Result<RootCertStore, WebhookError> {
    let mut store = RootCertStore::empty();
    for cert in certs(path)? {
        store
            .add(cert)
            .map_err(|e| tls_config(path, &e.to_string()))?;
    }
    Ok(store)
}

fn tls_config(path: &Path, message: &str) -> WebhookError {
    WebhookError::Config {
        what: "TLS file",
        message: format!("{}: {message}", path.display()),
    }
}

impl ClientTls {
    fn files(&self) -> Vec<PathBuf> {
        [&self.ca, &self.cert, &self.key]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }

    /// Builds the rustls configuration from the files as they are now.
    pub fn build(&self) -> Result<ClientConfig, WebhookError> {
        let roots = match &self.ca {
            Some(ca) => roots(ca)?,
            None => RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            },
        };
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(self.min_version.versions())
            .map_err(|e| WebhookError::Config {
                what: "TLS versions",
                message: e.to_string(),
            })?
            .with_root_certificates(roots);
        let mut config = match (&self.cert, &self.key) {
            (Some(cert), Some(key_path)) => builder
                .with_client_auth_cert(certs(cert)?, key(key_path)?)
                .map_err(|e| tls_config(cert, &e.to_string()))?,
            (None, None) => builder.with_no_client_auth(),
            _ => {
                return Err(WebhookError::Config {
                    what: "client TLS",
                    message: "`cert` and `key` go together; set both or neither".to_owned(),
                });
            }
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

impl ServerTls {
    fn files(&self) -> Vec<PathBuf> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }

    /// Builds the rustls configuration from the files as they are now.
    pub fn build(&self) -> Result<ServerConfig, WebhookError> {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(self.min_version.versions())
            .map_err(|e| WebhookError::Config {
                what: "TLS versions",
                message: e.to_string(),
            })?;
        let builder = match &self.client_ca {
            Some(ca) => {
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots(ca)?),
                    provider(),
                )
                .build()
                .map_err(|e| tls_config(ca, &e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(certs(&self.cert)?, key(&self.key)?)
            .map_err(|e| tls_config(&self.cert, &e.to_string()))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// A TLS configuration kept in step with its files.
pub trait TlsSource: Send + Sync + 'static {
    /// The built configuration.
    type Config: Send + Sync + 'static;
    /// The files it is built from.
    fn files(&self) -> Vec<PathBuf>;
    /// Builds it from the files as they are now.
    fn build(&self) -> Result<Self::Config, WebhookError>;
}

impl TlsSource for ClientTls {
    type Config = ClientConfig;
    fn files(&self) -> Vec<PathBuf> {
        ClientTls::files(self)
    }
    fn build(&self) -> Result<ClientConfig, WebhookError> {
        ClientTls::build(self)
    }
}

impl TlsSource for ServerTls {
    type Config = ServerConfig;
    fn files(&self) -> Vec<PathBuf> {
        ServerTls::files(self)
    }
    fn build(&self) -> Result<ServerConfig, WebhookError> {
        ServerTls::build(self)
    }
}

type Stamp = Vec<Option<(SystemTime, u64)>>;

fn stamp(files: &[PathBuf]) -> Stamp {
    files
        .iter()
        .map(|f| {
            fs::metadata(f)
                .ok()
                .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
        })
        .collect()
}

/// A TLS configuration rebuilt when its files change.
#[derive(Debug)]
pub struct ReloadingTls<S: TlsSource> {
    source: S,
    files: Vec<PathBuf>,
    current: Mutex<(Stamp, Arc<S::Config>)>,
}

impl<S: TlsSource + std::fmt::Debug> ReloadingTls<S> {
    /// Builds the configuration now; an error names the bad file.
    pub fn new(source: S) -> Result<Self, WebhookError> {
        let files = source.files();
        let built = Arc::new(source.build()?);
        Ok(Self {
            current: Mutex::new((stamp(&files), built)),
            files,
            source,
        })
    }

    /// The configuration for a new connection, rebuilt first if a file
    /// changed. A file that no longer parses keeps the last good
    /// configuration (logged), so a half-written swap never stops service.
    pub fn current(&self) -> Arc<S::Config> {
        let now = stamp(&self.files);
        let mut current = lock(&self.current);
        if current.0 != now {
            match self.source.build() {
                Ok(built) => {
                    tracing::info!(files = ?self.files, "TLS files changed; reloaded");
                    *current = (now, Arc::new(built));
                }
                Err(err) => {
                    tracing::warn!(%err, "TLS files changed but do not load; keeping the last good ones");
                }
            }
        }
        current.1.clone()
    }

    /// Rebuilds now (on SIGHUP), returning the error if the files are bad;
    /// the last good configuration stays in use then.
    pub fn reload(&self) -> Result<(), WebhookError> {
        let built = Arc::new(self.source.build()?);
        *lock(&self.current) = (stamp(&self.files), built);
        Ok(())
    }
}
