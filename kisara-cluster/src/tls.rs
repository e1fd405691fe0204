//! rustls configs from the PEM files a config names: the server's API and
//! agent endpoint (`[server] tls_cert` / `tls_key` / `tls_client_ca`), the
//! agent's `wss://` link (`[agent] server_ca`, `tls_cert` / `tls_key`), and
//! the relay and its clients (`[relay] tls_cert` / `tls_key`,
//! `[[agent.relays]] tls_ca`). One place builds them, so every program and
//! every embedder loading the same config gets the same TLS.
//!
//! Every error names the file and what is wrong with it.

use std::path::Path;
use std::sync::Arc;

use kisara_core::{Error, Result};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};

/// The crypto provider every config uses (ring).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn invalid(path: &Path, error: impl std::fmt::Display) -> Error {
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

/// A client config trusting the CAs in `ca`, presenting `client_cert`
/// (certificate chain, key) when given, for servers that demand one.
///
/// # Errors
///
/// An unreadable or malformed file, or a key that does not fit its
/// certificate.
pub fn client_config(ca: &Path, client_cert: Option<(&Path, &Path)>) -> Result<Arc<ClientConfig>> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(ca, e))?
        .with_root_certificates(pem_roots(ca)?);
    let config = match client_cert {
        Some((chain, key)) => builder
            .with_client_auth_cert(pem_chain(chain)?, pem_key(key)?)
            .map_err(|e| invalid(key, e))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// A server config serving `cert` / `key`, demanding client certificates
/// signed by a CA in `client_ca` when given (mutual TLS).
///
/// # Errors
///
/// An unreadable or malformed file, or a key that does not fit its
/// certificate.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(cert, e))?;
    let builder = match client_ca {
        Some(ca) => builder.with_client_cert_verifier(
            rustls::server::WebPkiClientVerifier::builder_with_provider(pem_roots(ca)?, provider())
                .build()
                .map_err(|e| invalid(ca, e))?,
        ),
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(pem_chain(cert)?, pem_key(key)?)
        .map_err(|e| invalid(key, e))?;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
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
        client_config(&cert_pem, None).unwrap();
        client_config(&cert_pem, Some((&cert_pem, &key_pem))).unwrap();
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let empty = write(dir.path(), "empty.pem", "");
        let missing = dir.path().join("missing.pem");
        for error in [
            client_config(&empty, None).unwrap_err(),
            client_config(&missing, None).unwrap_err(),
            server_config(&empty, &empty, None).unwrap_err(),
        ] {
            assert_eq!(error.kind(), kisara_core::ErrorKind::Invalid, "{error}");
            assert!(error.to_string().contains(".pem"), "{error}");
        }
    }
}
