//! Host keys: an ed25519 key kept in a directory, made on first start.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{HashAlg, PrivateKey};

use crate::SshError;

/// The file name of the ed25519 host key in its directory, as OpenSSH
/// names it; the public half is next to it with `.pub`.
pub const ED25519_FILE: &str = "ssh_host_ed25519_key";

/// The host key in `dir`: read when there, else generated and written
/// (the directory 0700, the key 0600, its public half 0644).
///
/// # Errors
///
/// [`SshError::HostKey`] naming the file: unreadable, not an OpenSSH
/// private key, encrypted, or readable by group or others (as OpenSSH,
/// a key others may read is refused).
pub fn load_or_generate(dir: &Path) -> Result<PrivateKey, SshError> {
    let path = dir.join(ED25519_FILE);
    if path.exists() {
        return load(&path);
    }
    let fail = |message: String| SshError::HostKey {
        path: path.clone(),
        message,
    };
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)))
        .map_err(|e| fail(format!("cannot create the directory: {e}")))?;
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| fail(format!("no randomness: {e}")))?;
    let key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    let pem = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| fail(format!("cannot encode: {e}")))?;
    write_new(&path, pem.as_bytes(), 0o600).map_err(|e| fail(format!("cannot write: {e}")))?;
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|e| fail(format!("cannot encode the public key: {e}")))?;
    write_new(
        &PathBuf::from(format!("{}.pub", path.display())),
        format!("{public}\n").as_bytes(),
        0o644,
    )
    .map_err(|e| fail(format!("cannot write the public key: {e}")))?;
    tracing::info!(path = %path.display(), fingerprint = %fingerprint(&key), "generated a host key");
    Ok(key)
}

/// Reads an unencrypted OpenSSH private key that only its owner may read.
///
/// # Errors
///
/// [`SshError::HostKey`] naming the file and what is wrong.
pub fn load(path: &Path) -> Result<PrivateKey, SshError> {
    let fail = |message: String| SshError::HostKey {
        path: path.to_owned(),
        message,
    };
    let mode = std::fs::metadata(path)
        .map_err(|e| fail(format!("cannot read: {e}")))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(fail(format!(
            "permissions {:o} let group or others read it; chmod 600 it",
            mode & 0o777
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    let key = PrivateKey::from_openssh(&text)
        .map_err(|e| fail(format!("not an OpenSSH private key: {e}")))?;
    if key.is_encrypted() {
        return Err(fail(
            "the key is encrypted; a host key must be readable without a passphrase".into(),
        ));
    }
    Ok(key)
}

/// The SHA-256 fingerprint of `key`, as `ssh-keygen -l` shows it.
pub fn fingerprint(key: &PrivateKey) -> String {
    key.public_key().fingerprint(HashAlg::Sha256).to_string()
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_is_private_and_read_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let made = load_or_generate(&dir.path().join("keys")).unwrap();
        let path = dir.path().join("keys").join(ED25519_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = load_or_generate(&dir.path().join("keys")).unwrap();
        assert_eq!(fingerprint(&made), fingerprint(&again));
        assert!(fingerprint(&made).starts_with("SHA256:"));
    }

    #[test]
    fn a_key_others_may_read_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        load_or_generate(dir.path()).unwrap();
        let path = dir.path().join(ED25519_FILE);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = load_or_generate(dir.path()).unwrap_err().to_string();
        assert!(
            error.contains(ED25519_FILE) && error.contains("644"),
            "{error}"
        );
    }

    #[test]
    fn a_file_that_is_no_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(ED25519_FILE);
        write_new(&path, b"not a key", 0o600).unwrap();
        let error = load(&path).unwrap_err().to_string();
        assert!(error.contains("not an OpenSSH private key"), "{error}");
    }
}
