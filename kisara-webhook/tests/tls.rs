//! TLS and mTLS between the client backends and the webhook server, with
//! certificates made by rcgen: each refusal gives a clear error, the right
//! certificate works, the minimum version is enforced, and a certificate
//! swapped on disk is used for the next connection.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::{fast_options, real_server};
use kisara_core::{Authenticator, Credentials, ErrorKind};
use kisara_webhook::tls::{ClientTls, ServerTls, TlsVersion};
use kisara_webhook::{ClientOptions, ServerOptions, WebhookAuthenticator};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls_pki_types::pem::PemObject as _;
use tokio_rustls::rustls;

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// A leaf for `names`, valid now unless `expired`: (cert PEM, key PEM).
    fn leaf(&self, names: &[&str], expired: bool) -> (String, String) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .unwrap();
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

struct Pki {
    dir: tempfile::TempDir,
    ca: Ca,
    other: Ca,
}

impl Pki {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            ca: Ca::new("kisara test CA"),
            other: Ca::new("another CA"),
        }
    }

    fn write(&self, name: &str, pem: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        // Write then rename, as a deploy would, so a reader never sees half.
        let tmp = self.dir.path().join(format!("{name}.tmp"));
        std::fs::write(&tmp, pem).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        path
    }

    fn pair(&self, name: &str, (cert, key): (String, String)) -> (PathBuf, PathBuf) {
        (
            self.write(&format!("{name}.crt"), &cert),
            self.write(&format!("{name}.key"), &key),
        )
    }

    fn server(&self, client_ca: bool, min_version: TlsVersion) -> ServerTls {
        let (cert, key) = self.pair("server", self.ca.leaf(&["127.0.0.1", "localhost"], false));
        ServerTls {
            cert,
            key,
            client_ca: client_ca.then(|| self.write("ca.crt", &self.ca.pem)),
            min_version,
        }
    }

    fn client(&self, cert: Option<(String, String)>) -> ClientTls {
        let (cert, key) = match cert {
            Some(pair) => {
                let (c, k) = self.pair("client", pair);
                (Some(c), Some(k))
            }
            None => (None, None),
        };
        ClientTls {
            ca: Some(self.write("ca.crt", &self.ca.pem)),
            cert,
            key,
            min_version: TlsVersion::Tls13,
        }
    }
}

async fn login(url: &str, tls: ClientTls) -> kisara_core::Result<String> {
    let options = ClientOptions {
        tls: Some(tls),
        ..fast_options()
    };
    let authenticator = WebhookAuthenticator::new(url, options).unwrap();
    let credentials = Credentials::Password {
        username: "alice".into(),
        password: "correct horse".into(),
    };
    authenticator
        .authenticate(&credentials, None)
        .await
        .map(|identity| identity.username)
}

async fn refused(url: &str, tls: ClientTls, expect: &str) {
    let started = std::time::Instant::now();
    let err = login(url, tls).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    let message = err.to_string();
    assert!(message.contains("TLS with the webhook"), "{message}");
    assert!(message.contains(expect), "expected {expect:?} in {message}");
    // A TLS refusal is final: no retries until the deadline.
    assert!(started.elapsed() < Duration::from_secs(1), "{message}");
}

#[tokio::test]
async fn the_right_client_certificate_works() {
    let pki = Pki::new();
    let addr = real_server(
        Some(pki.server(true, TlsVersion::Tls13)),
        ServerOptions::default(),
    )
    .await;
    let tls = pki.client(Some(pki.ca.leaf(&["client"], false)));
    assert_eq!(
        login(&format!("https://{addr}"), tls).await.unwrap(),
        "alice"
    );
    // By name too, and with 1.2 allowed the client still negotiates 1.3.
    let mut tls = pki.client(Some(pki.ca.leaf(&["client"], false)));
    tls.min_version = TlsVersion::Tls12;
    let url = format!("https://localhost:{}", addr.port());
    assert_eq!(login(&url, tls).await.unwrap(), "alice");
}

#[tokio::test]
async fn no_client_certificate_is_refused() {
    let pki = Pki::new();
    let addr = real_server(
        Some(pki.server(true, TlsVersion::Tls13)),
        ServerOptions::default(),
    )
    .await;
    refused(
        &format!("https://{addr}"),
        pki.client(None),
        "CertificateRequired",
    )
    .await;
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let pki = Pki::new();
    let addr = real_server(
        Some(pki.server(true, TlsVersion::Tls13)),
        ServerOptions::default(),
    )
    .await;
    let tls = pki.client(Some(pki.other.leaf(&["client"], false)));
    refused(&format!("https://{addr}"), tls, "UnknownCA").await;
}

#[tokio::test]
async fn an_expired_certificate_is_refused() {
    let pki = Pki::new();
    let addr = real_server(
        Some(pki.server(true, TlsVersion::Tls13)),
        ServerOptions::default(),
    )
    .await;
    let tls = pki.client(Some(pki.ca.leaf(&["client"], true)));
    refused(&format!("https://{addr}"), tls, "CertificateExpired").await;
}

#[tokio::test]
async fn a_wrong_server_name_is_refused() {
    let pki = Pki::new();
    let tls = pki.server(false, TlsVersion::Tls13);
    swap(
        &tls.cert,
        &tls.key,
        pki.ca.leaf(&["webhook.internal"], false),
    );
    let addr = real_server(Some(tls), ServerOptions::default()).await;
    refused(
        &format!("https://{addr}"),
        pki.client(None),
        "not valid for name \"127.0.0.1\"",
    )
    .await;
}

#[tokio::test]
async fn a_tls12_only_client_is_refused_by_a_tls13_only_server() {
    let pki = Pki::new();
    let addr = real_server(
        Some(pki.server(false, TlsVersion::Tls13)),
        ServerOptions::default(),
    )
    .await;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_slice(pki.ca.pem.as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let err = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("127.0.0.1".try_into().unwrap(), tcp)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("ProtocolVersion"), "{err}");
}

#[tokio::test]
async fn a_certificate_swapped_on_disk_is_used_for_the_next_connection() {
    let pki = Pki::new();
    let tls = pki.server(false, TlsVersion::Tls13);
    let addr = real_server(Some(tls.clone()), ServerOptions::default()).await;
    // The client trusts only the other CA, so the first certificate fails…
    let trusting_other = |pki: &Pki| ClientTls {
        ca: Some(pki.write("other-ca.crt", &pki.other.pem)),
        ..ClientTls::default()
    };
    refused(
        &format!("https://{addr}"),
        trusting_other(&pki),
        "UnknownIssuer",
    )
    .await;
    // …and once the files hold one from the other CA, the next one works.
    swap(&tls.cert, &tls.key, pki.other.leaf(&["127.0.0.1"], false));
    assert_eq!(
        login(&format!("https://{addr}"), trusting_other(&pki))
            .await
            .unwrap(),
        "alice"
    );
}

fn swap(cert: &Path, key: &Path, (cert_pem, key_pem): (String, String)) {
    for (path, pem) in [(key, key_pem), (cert, cert_pem)] {
        let tmp = path.with_extension("swap");
        std::fs::write(&tmp, pem).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }
}

#[tokio::test]
async fn bad_tls_files_are_named() {
    let pki = Pki::new();
    let tls = ServerTls {
        cert: pki.write("empty.crt", ""),
        key: pki.write("empty.key", ""),
        client_ca: None,
        min_version: TlsVersion::Tls13,
    };
    let app = kisara_webhook::router(Arc::new(common::backends()), ServerOptions::default());
    let err = kisara_webhook::WebhookServer::bind("127.0.0.1:0".parse().unwrap(), app, Some(tls))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("empty.crt: holds no PEM certificate"), "{err}");
}
