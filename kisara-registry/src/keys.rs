//! The ES256 signing keys: generated on first start with a self-signed
//! certificate for the registry's `rootcertbundle`, stored `0600`, exported
//! as PEM and JWKS, and rotated with the previous key still trusted.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{RegistryError, Result};

/// The DER SubjectPublicKeyInfo prefix of every P-256 key; the
/// uncompressed point `04‖X‖Y` follows it.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// How the `kid` header names a key; the registry looks certificates in
/// its `rootcertbundle` up by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KidFormat {
    /// docker/libtrust's fingerprint, what distribution 2.x expects.
    #[default]
    Libtrust,
    /// The RFC 7638 JWK thumbprint as distribution 3.x computes it (Go's
    /// `big.Int.Bytes()` drops leading zero bytes of X and Y).
    JwkThumbprint,
}

impl KidFormat {
    /// The kid of the P-256 point (`04‖X‖Y`).
    pub fn kid(self, point: &[u8]) -> String {
        match self {
            Self::Libtrust => libtrust_kid(point),
            Self::JwkThumbprint => {
                let (x, y) = coordinates(point);
                jwk_thumbprint(strip_zeros(x), strip_zeros(y))
            }
        }
    }
}

fn coordinates(point: &[u8]) -> (&[u8], &[u8]) {
    point[1..].split_at(32)
}

fn strip_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[first..]
}

/// libtrust: SHA-256 of the SPKI DER, first 240 bits, base32 without
/// padding, in twelve `:`-joined groups of four.
pub fn libtrust_kid(point: &[u8]) -> String {
    let mut spki = P256_SPKI_PREFIX.to_vec();
    spki.extend_from_slice(point);
    let digest = Sha256::digest(&spki);
    let encoded = base32(&digest[..30]);
    encoded
        .as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).expect("base32 is ASCII"))
        .collect::<Vec<_>>()
        .join(":")
}

/// RFC 7638: SHA-256 of the members `crv`, `kty`, `x`, `y` in that order.
pub fn jwk_thumbprint(x: &[u8], y: &[u8]) -> String {
    let canonical = format!(
        r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
        URL_SAFE_NO_PAD.encode(x),
        URL_SAFE_NO_PAD.encode(y)
    );
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

/// Standard-alphabet base32 without padding.
fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// One key with its certificate.
#[derive(Debug)]
pub struct SigningKey {
    pair: EcdsaKeyPair,
    pkcs8_pem: String,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    kid: String,
}

impl SigningKey {
    /// A new key with a self-signed certificate for `common_name`.
    pub fn generate(common_name: &str, kid: KidFormat) -> Result<Self> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| RegistryError::Key(format!("generating a P-256 key: {e}")))?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
            .map_err(|e| RegistryError::Key(e.to_string()))?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        // The registry only reads the key out of it; a long life spares
        // restarts, and rotation replaces it.
        params.not_after = rcgen::date_time_ymd(2100, 1, 1);
        let cert = params
            .self_signed(&key)
            .map_err(|e| RegistryError::Key(format!("self-signing: {e}")))?;
        Self::from_parts(&key.serialize_pem(), &cert.pem(), kid)
    }

    fn from_parts(pkcs8_pem: &str, cert_pem: &str, kid: KidFormat) -> Result<Self> {
        let key = rcgen::KeyPair::from_pem(pkcs8_pem)
            .map_err(|e| RegistryError::Key(format!("reading the private key: {e}")))?;
        let pair = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &key.serialize_der(),
            &SystemRandom::new(),
        )
        .map_err(|e| RegistryError::Key(format!("not a P-256 key: {e}")))?;
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| RegistryError::Key(format!("reading the certificate: {e}")))?;
        let kid = kid.kid(pair.public_key().as_ref());
        Ok(Self {
            pair,
            pkcs8_pem: pkcs8_pem.to_owned(),
            cert_der,
            cert_pem: cert_pem.to_owned(),
            kid,
        })
    }

    /// The `kid` header value.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The certificate, PEM (for `rootcertbundle`).
    pub fn certificate_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The certificate, base64 DER (the `x5c` header's one entry).
    pub fn x5c(&self) -> String {
        STANDARD.encode(self.cert_der.as_ref())
    }

    /// The uncompressed public point `04‖X‖Y`.
    pub fn public_point(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    /// The private key, PKCS#8 PEM.
    pub fn private_key_pem(&self) -> &str {
        &self.pkcs8_pem
    }

    /// An ES256 signature of `message` (64 bytes, `r‖s`).
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>> {
        self.pair
            .sign(&SystemRandom::new(), message)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| RegistryError::Key("signing failed".to_owned()))
    }

    /// The public key as a JWK.
    pub fn jwk(&self) -> serde_json::Value {
        let (x, y) = coordinates(self.public_point());
        serde_json::json!({
            "kty": "EC",
            "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(x),
            "y": URL_SAFE_NO_PAD.encode(y),
            "kid": self.kid,
            "use": "sig",
            "alg": "ES256",
        })
    }
}

/// The signing key and, after a rotation, the one before it: tokens are
/// signed with the current key, and the exported bundle and JWKS hold both
/// so tokens signed just before the rotation stay valid.
#[derive(Debug)]
pub struct KeyRing {
    dir: PathBuf,
    current: SigningKey,
    previous: Option<SigningKey>,
}

const CURRENT: &str = "signing";
const PREVIOUS: &str = "previous";
/// The file to point the registry's `auth.token.rootcertbundle` at.
pub const BUNDLE_FILE: &str = "rootcertbundle.pem";

impl KeyRing {
    /// Loads the keys in `dir`, generating (and storing) the first one when
    /// there is none, and writes [`BUNDLE_FILE`].
    pub fn open(dir: &Path, common_name: &str, kid: KidFormat) -> Result<Self> {
        fs::create_dir_all(dir).map_err(|e| RegistryError::file(dir, e))?;
        let current = match load(dir, CURRENT, kid)? {
            Some(key) => key,
            None => {
                let key = SigningKey::generate(common_name, kid)?;
                store(dir, CURRENT, &key)?;
                tracing::info!(kid = key.kid(), dir = %dir.display(), "generated a registry token signing key");
                key
            }
        };
        let ring = Self {
            dir: dir.to_owned(),
            current,
            previous: load(dir, PREVIOUS, kid)?,
        };
        ring.write_bundle()?;
        Ok(ring)
    }

    /// Makes a new current key; the old one becomes the previous (and the
    /// one before is dropped). The registry reads its `rootcertbundle` at
    /// start, so restart it after rotating.
    pub fn rotate(&mut self, common_name: &str, kid: KidFormat) -> Result<()> {
        let fresh = SigningKey::generate(common_name, kid)?;
        store(&self.dir, PREVIOUS, &self.current)?;
        store(&self.dir, CURRENT, &fresh)?;
        self.previous = Some(std::mem::replace(&mut self.current, fresh));
        self.write_bundle()
    }

    /// The key tokens are signed with.
    pub fn current(&self) -> &SigningKey {
        &self.current
    }

    /// Every trusted key, current first.
    pub fn trusted(&self) -> impl Iterator<Item = &SigningKey> {
        std::iter::once(&self.current).chain(self.previous.as_ref())
    }

    /// The certificates of every trusted key, PEM, for `rootcertbundle`.
    pub fn bundle_pem(&self) -> String {
        self.trusted().map(SigningKey::certificate_pem).collect()
    }

    /// The path of the written bundle.
    pub fn bundle_path(&self) -> PathBuf {
        self.dir.join(BUNDLE_FILE)
    }

    /// The trusted keys as a JWKS (distribution 3's `auth.token.jwks`).
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({ "keys": self.trusted().map(SigningKey::jwk).collect::<Vec<_>>() })
    }

    fn write_bundle(&self) -> Result<()> {
        write_file(&self.bundle_path(), self.bundle_pem().as_bytes(), 0o644)
    }
}

fn load(dir: &Path, name: &str, kid: KidFormat) -> Result<Option<SigningKey>> {
    let key_path = dir.join(format!("{name}.key"));
    let cert_path = dir.join(format!("{name}.crt"));
    if !key_path.exists() {
        return Ok(None);
    }
    let mode = fs::metadata(&key_path)
        .map_err(|e| RegistryError::file(&key_path, e))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(RegistryError::file(
            &key_path,
            format!(
                "is readable by others (mode {:o}); chmod 600 it",
                mode & 0o777
            ),
        ));
    }
    let key = fs::read_to_string(&key_path).map_err(|e| RegistryError::file(&key_path, e))?;
    let cert = fs::read_to_string(&cert_path).map_err(|e| RegistryError::file(&cert_path, e))?;
    SigningKey::from_parts(&key, &cert, kid)
        .map(Some)
        .map_err(|e| RegistryError::file(&key_path, e))
}

fn store(dir: &Path, name: &str, key: &SigningKey) -> Result<()> {
    write_file(
        &dir.join(format!("{name}.key")),
        key.private_key_pem().as_bytes(),
        0o600,
    )?;
    write_file(
        &dir.join(format!("{name}.crt")),
        key.certificate_pem().as_bytes(),
        0o644,
    )
}

/// Writes through a temporary file created with `mode`, so the secret is
/// never readable by others and a crash leaves the old file whole.
fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let temp = path.with_extension("tmp");
    let _ = fs::remove_file(&temp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temp)
        .map_err(|e| RegistryError::file(&temp, e))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|e| RegistryError::file(&temp, e))?;
    fs::rename(&temp, path).map_err(|e| RegistryError::file(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn golden_point() -> Vec<u8> {
        let x = URL_SAFE_NO_PAD
            .decode("m7zUpx3b-zmVE5cymSs64POG9QcyEpJaYCD82-549_Q")
            .unwrap();
        let y = URL_SAFE_NO_PAD
            .decode("dU3biz8sZ_8GPB-odm8Wxz3lNDr1xcAQQPQaOcr1fmc")
            .unwrap();
        [&[4u8][..], &x, &y].concat()
    }

    #[test]
    fn kid_matches_the_spec_golden_vector() {
        assert_eq!(
            libtrust_kid(&golden_point()),
            "PYYO:TEWU:V7JH:26JV:AQTZ:LJC3:SXVJ:XGHA:34F2:2LAQ:ZRMK:Z7Q6"
        );
        assert_eq!(
            KidFormat::JwkThumbprint.kid(&golden_point()),
            "8qjioA3ZA7ti2JIE7c-U8smBFuZolQZvhSHDPU3hhB8"
        );
    }

    #[test]
    fn keys_are_generated_once_stored_private_and_rotated() {
        let dir = tempfile::tempdir().unwrap();
        let ring = KeyRing::open(dir.path(), "test", KidFormat::Libtrust).unwrap();
        let kid = ring.current().kid().to_owned();
        assert_eq!(kid.len(), 59, "{kid}");
        let mode = fs::metadata(dir.path().join("signing.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        drop(ring);
        let mut ring = KeyRing::open(dir.path(), "test", KidFormat::Libtrust).unwrap();
        assert_eq!(ring.current().kid(), kid, "the stored key is reused");
        ring.rotate("test", KidFormat::Libtrust).unwrap();
        assert_ne!(ring.current().kid(), kid);
        let kids: Vec<_> = ring.trusted().map(|k| k.kid().to_owned()).collect();
        assert_eq!(kids.len(), 2);
        assert_eq!(kids[1], kid, "the old key is still trusted");
        let bundle = fs::read_to_string(ring.bundle_path()).unwrap();
        assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 2);
        assert_eq!(ring.jwks()["keys"].as_array().unwrap().len(), 2);

        fs::set_permissions(
            dir.path().join("signing.key"),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let err = KeyRing::open(dir.path(), "test", KidFormat::Libtrust)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("signing.key") && err.contains("chmod 600"),
            "{err}"
        );
    }
}
