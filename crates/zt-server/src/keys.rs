//! The service's signing key, generated on first start.
//!
//! Architecture invariant: private key material is written only to files of mode 0600 in a
//! directory of mode 0700, and never logged or returned; a key file that others can read is
//! refused.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot create the key directory `{path}`")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read or write the key file `{path}`")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the key file `{path}` is readable by others (mode {mode:o}); run `chmod 600 {path}`")]
    Exposed { path: PathBuf, mode: u32 },
    #[error("the key file `{0}` does not hold a 32-byte Ed25519 seed in hex")]
    Malformed(PathBuf),
    #[error("there is no signing key at `{0}` to rotate; start the server once to create one")]
    Missing(PathBuf),
}

/// Refuses a private key file that others than its owner can read.
pub fn check_private(path: &Path) -> Result<(), KeyError> {
    let mode = std::fs::metadata(path)
        .map_err(|source| KeyError::File {
            path: path.to_owned(),
            source,
        })?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(KeyError::Exposed {
            path: path.to_owned(),
            mode: mode & 0o777,
        });
    }
    Ok(())
}

/// The public side of a signing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// The first 16 hex digits of SHA-256 of the public key.
    pub key_id: String,
    pub public_key: [u8; 32],
}

/// The signing key, loaded from `dir/signing.key` or generated there.
#[derive(Debug)]
pub struct Signer {
    key: SigningKey,
    info: KeyInfo,
}

impl Signer {
    pub fn info(&self) -> &KeyInfo {
        &self.info
    }

    /// Signs `message` with the private key.
    pub fn sign(&self, message: &[u8]) -> ed25519_dalek::Signature {
        use ed25519_dalek::Signer as _;
        self.key.sign(message)
    }

    pub fn verifying_key(&self) -> ed25519_dalek::VerifyingKey {
        self.key.verifying_key()
    }

    /// This key as the signer of agent sessions' access tokens, named by its key id.
    pub fn token_signer(&self) -> zt_identity::session::TokenSigner {
        zt_identity::session::TokenSigner::new(self.info.key_id.clone(), &self.key)
    }

    /// The signed note of a checkpoint.
    pub fn sign_checkpoint(&self, checkpoint: &zt_evidence::Checkpoint) -> String {
        checkpoint.sign(&self.key)
    }
}

/// The signing key's file name in the key directory.
pub const KEY_FILE: &str = "signing.key";

/// The file, in the key directory, of the key that signs agent sessions' access tokens (a key
/// of its own: evidence and tokens do not share one).
pub const SESSION_KEY_FILE: &str = "session.key";

/// Loads the signing key from `dir`, generating it (and `dir`) on first start.
pub fn load_or_generate(dir: &Path) -> Result<Signer, KeyError> {
    load_or_generate_file(dir, KEY_FILE)
}

/// Loads the key in `dir/file`, generating it (and `dir`) if there is none.
pub fn load_or_generate_file(dir: &Path, file: &str) -> Result<Signer, KeyError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| KeyError::Dir {
            path: dir.to_owned(),
            source,
        })?;
    let path = dir.join(file);
    let file_error = |source| KeyError::File {
        path: path.clone(),
        source,
    };
    let key = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(mut file) => {
            let key = SigningKey::generate(&mut rand_core::OsRng);
            let mut seed = hex::encode(key.to_bytes());
            seed.push('\n');
            file.write_all(seed.as_bytes()).map_err(file_error)?;
            file.sync_all().map_err(file_error)?;
            tracing::info!(path = %path.display(), "generated a new signing key");
            key
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            check_private(&path)?;
            let text = std::fs::read_to_string(&path).map_err(file_error)?;
            let seed: [u8; 32] = hex::decode(text.trim())
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| KeyError::Malformed(path.clone()))?;
            SigningKey::from_bytes(&seed)
        }
        Err(e) => return Err(file_error(e)),
    };
    Ok(Signer {
        info: KeyInfo {
            key_id: zt_evidence::checkpoint::key_id(&key.verifying_key()),
            public_key: key.verifying_key().to_bytes(),
        },
        key,
    })
}

/// Replaces the signing key in `dir` with a new one, atomically, and returns the old key's
/// public side and the new key. The old private key is gone afterwards: it can no longer sign,
/// while its public key stays in the log's keyring so that what it signed still verifies.
pub fn rotate(dir: &Path) -> Result<(KeyInfo, Signer), KeyError> {
    rotate_file(dir, KEY_FILE)
}

/// As [`rotate`], for the key in `dir/file` (the session token key, [`SESSION_KEY_FILE`]).
pub fn rotate_file(dir: &Path, file: &str) -> Result<(KeyInfo, Signer), KeyError> {
    let path = dir.join(file);
    if !path.exists() {
        return Err(KeyError::Missing(path));
    }
    let old = load_or_generate_file(dir, file)?;
    let staging = dir.join(format!("{file}.new"));
    let file_error = |source| KeyError::File {
        path: staging.clone(),
        source,
    };
    if staging.exists() {
        std::fs::remove_file(&staging).map_err(file_error)?;
    }
    let key = SigningKey::generate(&mut rand_core::OsRng);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&staging)
        .map_err(file_error)?;
    let mut seed = hex::encode(key.to_bytes());
    seed.push('\n');
    file.write_all(seed.as_bytes()).map_err(file_error)?;
    file.sync_all().map_err(file_error)?;
    std::fs::rename(&staging, &path).map_err(file_error)?;
    if let Ok(dir) = std::fs::File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok((
        old.info,
        Signer {
            info: KeyInfo {
                key_id: zt_evidence::checkpoint::key_id(&key.verifying_key()),
                public_key: key.verifying_key().to_bytes(),
            },
            key,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_generated_once_with_private_modes() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let first = load_or_generate(&keys).unwrap();
        let second = load_or_generate(&keys).unwrap();
        assert_eq!(first.info(), second.info());
        // The reloaded key is the same private key: its signature verifies with the first
        // public key.
        let public = ed25519_dalek::VerifyingKey::from_bytes(&first.info().public_key).unwrap();
        let signature = second.sign(b"message");
        assert!(public.verify_strict(b"message", &signature).is_ok());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&keys), 0o700);
        assert_eq!(mode(&keys.join("signing.key")), 0o600);
        assert_eq!(first.info().key_id.len(), 16);
    }

    #[test]
    fn rotation_replaces_the_key() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            rotate(dir.path()).unwrap_err(),
            KeyError::Missing(_)
        ));
        let first = load_or_generate(dir.path()).unwrap();
        let (old, new) = rotate(dir.path()).unwrap();
        assert_eq!(&old, first.info());
        assert_ne!(old.key_id, new.info().key_id);
        assert_eq!(load_or_generate(dir.path()).unwrap().info(), new.info());
        let mode = std::fs::metadata(dir.path().join("signing.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn exposed_or_malformed_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        load_or_generate(dir.path()).unwrap();
        let path = dir.path().join("signing.key");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_generate(dir.path()).unwrap_err();
        assert!(
            matches!(err, KeyError::Exposed { mode: 0o644, .. }),
            "{err}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "nothex").unwrap();
        assert!(matches!(
            load_or_generate(dir.path()).unwrap_err(),
            KeyError::Malformed(_)
        ));
    }
}
