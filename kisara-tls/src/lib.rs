#![doc = include_str!("../README.md")]

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use kisara_core::sync::lock;
use kisara_core::{Error, Result};
use serde::{Deserialize, Serialize};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};

/// The crypto provider every config uses (ring).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn invalid(path: &Path, error: impl fmt::Display) -> Error {
    Error::invalid("TLS file", format!("{}: {error}", path.display()))
}

/// The certificates in a PEM file.
///
/// # Errors
///
/// An unreadable file, or one without a certificate.
pub fn pem_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<std::result::Result<Vec<_>, _>>)
        .map_err(|e| invalid(path, e))?;
    if chain.is_empty() {
        return Err(invalid(path, "holds no PEM certificate"));
    }
    Ok(chain)
}

/// The private key in a PEM file.
///
/// # Errors
///
/// An unreadable file, or one without a private key.
pub fn pem_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| invalid(path, e))
}

/// The CAs in a PEM file, as trust roots.
///
/// # Errors
///
/// An unreadable file, or a certificate that is no valid trust anchor.
pub fn pem_roots(path: &Path) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for cert in pem_chain(path)? {
        roots.add(cert).map_err(|e| invalid(path, e))?;
    }
    Ok(Arc::new(roots))
}

/// The roots a client verifies servers against: only the CAs in `pin` when
/// it is given, else the system's trust store, as `rustls-native-certs`
/// finds it (`SSL_CERT_FILE` / `SSL_CERT_DIR` when set, else the
/// platform's bundle).
///
/// There is deliberately no fallback to a bundled root list: a client
/// trusts what the host's operator manages (a CA added to or removed from
/// the system store counts), and a host without a store is a setup error
/// to report, not to paper over with a different set of roots.
///
/// # Errors
///
/// A pin that cannot be read or holds no valid CA (named), or no usable
/// system root, saying where the roots were looked for and how to fix it.
pub fn trust_roots(pin: Option<&Path>) -> Result<Arc<RootCertStore>> {
    match pin {
        Some(ca) => pem_roots(ca),
        None => system_roots(rustls_native_certs::load_native_certs()).map(Arc::new),
    }
}

/// The usable roots among what the system store gave. Unreadable entries
/// beside usable ones are logged, not fatal: one broken file in a
/// certificate directory should not stop every client.
fn system_roots(found: rustls_native_certs::CertificateResult) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    let problems: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
    if added == 0 {
        let looked_in = match (
            std::env::var_os("SSL_CERT_FILE"),
            std::env::var_os("SSL_CERT_DIR"),
        ) {
            (None, None) => "the system's certificate store".to_owned(),
            (file, dir) => format!(
                "SSL_CERT_FILE={} SSL_CERT_DIR={}",
                file.unwrap_or_default().to_string_lossy(),
                dir.unwrap_or_default().to_string_lossy()
            ),
        };
        return Err(Error::invalid(
            "TLS trust roots",
            format!(
                "no CA file is configured and {looked_in} holds no usable root \
                 ({ignored} unparsable; problems: {problems:?}); install the system's \
                 CA bundle (e.g. ca-certificates), point SSL_CERT_FILE at a PEM bundle, \
                 or configure the server's CA file"
            ),
        ));
    }
    for problem in &problems {
        tracing::warn!(%problem, "a system trust root could not be loaded");
    }
    if ignored > 0 {
        tracing::warn!(
            ignored,
            "system trust roots that are no valid trust anchor were skipped"
        );
    }
    Ok(roots)
}

/// The lowest TLS version a side accepts; lower ones are refused in the
/// handshake.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3, for peers that cannot speak 1.3.
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3 only: the default, every Kisara program speaks it.
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
/// certificate for mutual TLS.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientTls {
    /// PEM file of the CA(s) that sign the server's certificate: a pin,
    /// only they are trusted. Without it, the system's roots are (see
    /// [`trust_roots`]).
    pub ca: Option<PathBuf>,
    /// PEM file of the client certificate chain (mutual TLS).
    pub cert: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    pub key: Option<PathBuf>,
    /// The lowest TLS version offered.
    pub min_version: TlsVersion,
}

/// The server side: its certificate and, for mutual TLS, the CA whose
/// client certificates it requires.
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

fn versions_error(error: &rustls::Error) -> Error {
    Error::invalid("TLS versions", error.to_string())
}

impl ClientTls {
    /// Builds the rustls configuration from the files as they are now.
    ///
    /// # Errors
    ///
    /// A file that cannot be read or parsed (named), a key that does not
    /// fit its certificate, `cert` without `key` (or the other way), or no
    /// `ca` and no usable system root.
    pub fn build(&self) -> Result<ClientConfig> {
        let roots = trust_roots(self.ca.as_deref())?;
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(self.min_version.versions())
            .map_err(|e| versions_error(&e))?
            .with_root_certificates(roots);
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(pem_chain(cert)?, pem_key(key)?)
                .map_err(|e| invalid(key, e)),
            (None, None) => Ok(builder.with_no_client_auth()),
            _ => Err(Error::invalid(
                "client TLS",
                "`cert` and `key` go together; set both or neither",
            )),
        }
    }
}

impl ServerTls {
    /// Builds the rustls configuration from the files as they are now.
    ///
    /// # Errors
    ///
    /// A file that cannot be read or parsed (named), or a key that does not
    /// fit its certificate.
    pub fn build(&self) -> Result<ServerConfig> {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(self.min_version.versions())
            .map_err(|e| versions_error(&e))?;
        let builder = match &self.client_ca {
            Some(ca) => builder.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder_with_provider(
                    pem_roots(ca)?,
                    provider(),
                )
                .build()
                .map_err(|e| invalid(ca, e))?,
            ),
            None => builder.with_no_client_auth(),
        };
        builder
            .with_single_cert(pem_chain(&self.cert)?, pem_key(&self.key)?)
            .map_err(|e| invalid(&self.key, e))
    }
}

/// A client config trusting only the CAs in `ca` when given, else the
/// system's roots ([`trust_roots`]), presenting `client_cert` (certificate
/// chain, key) when given, for servers that demand one. Every Kisara client
/// (the agent's `wss://` link, the relay client, webhooks) builds its
/// config here, so they all trust the same way.
///
/// # Errors
///
/// As [`ClientTls::build`].
pub fn client_config(
    ca: Option<&Path>,
    client_cert: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>> {
    let (cert, key) = client_cert.unzip();
    ClientTls {
        ca: ca.map(Path::to_owned),
        cert: cert.map(Path::to_owned),
        key: key.map(Path::to_owned),
        min_version: TlsVersion::default(),
    }
    .build()
    .map(Arc::new)
}

/// A server config serving `cert` / `key`, demanding client certificates
/// signed by a CA in `client_ca` when given (mutual TLS).
///
/// # Errors
///
/// As [`ServerTls::build`].
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>> {
    ServerTls {
        cert: cert.to_owned(),
        key: key.to_owned(),
        client_ca: client_ca.map(Path::to_owned),
        min_version: TlsVersion::default(),
    }
    .build()
    .map(Arc::new)
}

/// A TLS configuration that can be rebuilt from its files.
pub trait TlsSource: fmt::Debug + Send + Sync + 'static {
    /// The built configuration.
    type Config: fmt::Debug + Send + Sync + 'static;
    /// The files it is built from.
    fn files(&self) -> Vec<PathBuf>;
    /// Builds it from the files as they are now.
    ///
    /// # Errors
    ///
    /// A file that cannot be read or parsed, named.
    fn build(&self) -> Result<Self::Config>;
}

impl TlsSource for ClientTls {
    type Config = ClientConfig;
    fn files(&self) -> Vec<PathBuf> {
        [&self.ca, &self.cert, &self.key]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }
    fn build(&self) -> Result<ClientConfig> {
        ClientTls::build(self)
    }
}

impl TlsSource for ServerTls {
    type Config = ServerConfig;
    fn files(&self) -> Vec<PathBuf> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }
    fn build(&self) -> Result<ServerConfig> {
        ServerTls::build(self)
    }
}

/// What a file looked like when the configuration was last built.
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

/// A TLS configuration rebuilt when its files change (checked before each
/// new connection) or on [`reload`](Self::reload) (wire it to SIGHUP), so a
/// certificate swapped on disk is used for the next connection while open
/// ones carry on.
#[derive(Debug)]
pub struct ReloadingTls<S: TlsSource> {
    source: S,
    files: Vec<PathBuf>,
    current: Mutex<(Stamp, Arc<S::Config>)>,
}

impl<S: TlsSource> ReloadingTls<S> {
    /// Builds the configuration now.
    ///
    /// # Errors
    ///
    /// As [`TlsSource::build`]: the bad file is named.
    pub fn new(source: S) -> Result<Self> {
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

    /// Rebuilds now (on SIGHUP); the last good configuration stays in use
    /// when the files are bad.
    ///
    /// # Errors
    ///
    /// As [`TlsSource::build`].
    pub fn reload(&self) -> Result<()> {
        let built = Arc::new(self.source.build()?);
        *lock(&self.current) = (stamp(&self.files), built);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn configs_build_from_a_generated_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert_pem = write(dir.path(), "cert.pem", &cert.cert.pem());
        let key_pem = write(dir.path(), "key.pem", &cert.signing_key.serialize_pem());
        server_config(&cert_pem, &key_pem, None).unwrap();
        server_config(&cert_pem, &key_pem, Some(&cert_pem)).unwrap();
        client_config(Some(&cert_pem), None).unwrap();
        client_config(Some(&cert_pem), Some((&cert_pem, &key_pem))).unwrap();
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let empty = write(dir.path(), "empty.pem", "");
        let missing = dir.path().join("missing.pem");
        for error in [
            client_config(Some(&empty), None).unwrap_err(),
            client_config(Some(&missing), None).unwrap_err(),
            server_config(&empty, &empty, None).unwrap_err(),
        ] {
            assert_eq!(error.kind(), kisara_core::ErrorKind::Invalid, "{error}");
            assert!(error.to_string().contains(".pem"), "{error}");
        }
    }

    #[test]
    fn a_pin_is_the_only_root() {
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let ca_pem = write(dir.path(), "ca.pem", &ca.cert.pem());
        let roots = trust_roots(Some(&ca_pem)).unwrap();
        assert_eq!(roots.len(), 1);
    }

    #[test]
    fn system_roots_are_the_usable_certificates_found() {
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let mut found = rustls_native_certs::CertificateResult::default();
        found.certs = vec![
            ca.cert.der().clone(),
            CertificateDer::from(vec![0x30, 0x00]),
        ];
        let roots = system_roots(found).unwrap();
        assert_eq!(roots.len(), 1, "the malformed one is skipped");
    }

    #[test]
    fn no_system_root_is_a_clear_error() {
        let mut found = rustls_native_certs::CertificateResult::default();
        found.certs = vec![CertificateDer::from(vec![0x30, 0x00])];
        let error = system_roots(found).unwrap_err();
        assert_eq!(error.kind(), kisara_core::ErrorKind::Invalid, "{error}");
        for needle in ["no usable root", "1 unparsable", "SSL_CERT_FILE", "CA file"] {
            assert!(error.to_string().contains(needle), "{needle}: {error}");
        }
    }

    #[test]
    fn half_a_client_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert_pem = write(dir.path(), "cert.pem", &cert.cert.pem());
        let error = ClientTls {
            ca: Some(cert_pem.clone()),
            cert: Some(cert_pem),
            ..ClientTls::default()
        }
        .build()
        .unwrap_err();
        assert!(error.to_string().contains("set both or neither"), "{error}");
    }

    #[test]
    fn a_swapped_certificate_is_picked_up_and_a_broken_one_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let first = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = write(dir.path(), "cert.pem", &first.cert.pem());
        let key = write(dir.path(), "key.pem", &first.signing_key.serialize_pem());
        let tls = ReloadingTls::new(ServerTls {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: None,
            min_version: TlsVersion::Tls13,
        })
        .unwrap();
        let before = tls.current();
        assert!(
            Arc::ptr_eq(&before, &tls.current()),
            "unchanged files are not rebuilt"
        );
        // A half-written file (different length) keeps the last good config.
        fs::write(&cert, "-----BEGIN CERTIFICATE-----\n").unwrap();
        assert!(Arc::ptr_eq(&before, &tls.current()));
        assert!(tls.reload().unwrap_err().to_string().contains("cert.pem"));
        let second = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        fs::write(&cert, second.cert.pem()).unwrap();
        fs::write(&key, second.signing_key.serialize_pem()).unwrap();
        assert!(
            !Arc::ptr_eq(&before, &tls.current()),
            "a swapped pair is used"
        );
    }
}
