//! Signed tree heads as C2SP `tlog-checkpoint` notes, signed per C2SP `signed-note` with
//! Ed25519:
//!
//! ```text
//! <origin>
//! <tree size>
//! <base64 root hash>
//!
//! — <key name> <base64(key hash[4] || signature[64])>
//! ```
//!
//! The signature covers the note text up to and including the newline before the blank line.
//! The key name is the log's origin; the 4-byte key hash is the first four bytes of
//! SHA-256(key name || `\n` || 0x01 || public key), which tells keys apart across rotations.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::merkle::Hash;

/// The signature algorithm byte of Ed25519 in C2SP signed notes.
const ED25519: u8 = 0x01;

/// A public key of the log, as `GET /v1/evidence/keys` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKey {
    /// First 16 hex digits of SHA-256 of the public key.
    pub key_id: String,
    pub algorithm: String,
    /// The 32-byte public key, base64.
    pub public_key: String,
    /// The C2SP verifier key: `<name>+<key hash hex>+<base64(0x01 || public key)>`.
    pub verifier_key: String,
    /// Milliseconds since the Unix epoch.
    pub created_at_ms: i64,
    /// Set once a newer key signs instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_at_ms: Option<i64>,
}

/// The public keys of a log: what a verifier needs, and all it needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keyring {
    pub origin: String,
    pub keys: Vec<PublicKey>,
}

/// The first 16 hex digits of SHA-256 of a public key.
pub fn key_id(public: &VerifyingKey) -> String {
    hex::encode(Sha256::digest(public.as_bytes()))
        .chars()
        .take(16)
        .collect()
}

/// The C2SP key hash of `public` under the key name `name`.
pub fn key_hash(name: &str, public: &VerifyingKey) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([ED25519]);
    h.update(public.as_bytes());
    let digest: [u8; 32] = h.finalize().into();
    [digest[0], digest[1], digest[2], digest[3]]
}

impl PublicKey {
    pub fn new(origin: &str, public: &VerifyingKey, created_at_ms: i64) -> Self {
        let mut key = vec![ED25519];
        key.extend_from_slice(public.as_bytes());
        Self {
            key_id: key_id(public),
            algorithm: "Ed25519".into(),
            public_key: B64.encode(public.as_bytes()),
            verifier_key: format!(
                "{origin}+{}+{}",
                hex::encode(key_hash(origin, public)),
                B64.encode(key)
            ),
            created_at_ms,
            retired_at_ms: None,
        }
    }

    pub fn verifying_key(&self) -> Option<VerifyingKey> {
        let bytes: [u8; 32] = B64.decode(&self.public_key).ok()?.try_into().ok()?;
        VerifyingKey::from_bytes(&bytes).ok()
    }
}

/// A checkpoint's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

impl Checkpoint {
    /// The signed part of the note.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root.0)
        )
    }

    /// The complete signed note.
    pub fn sign(&self, key: &SigningKey) -> String {
        let body = self.body();
        let signature = key.sign(body.as_bytes());
        let mut blob = key_hash(&self.origin, &key.verifying_key()).to_vec();
        blob.extend_from_slice(&signature.to_bytes());
        format!("{body}\n\u{2014} {} {}\n", self.origin, B64.encode(blob))
    }
}

/// Why a note did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error("malformed checkpoint note: {0}")]
    Malformed(String),
    #[error("checkpoint is for origin `{found}`, not `{expected}`")]
    Origin { found: String, expected: String },
    #[error("checkpoint is signed by an unknown key (key hash {0})")]
    UnknownKey(String),
    #[error("bad signature on the checkpoint (key {0})")]
    BadSignature(String),
}

/// A checkpoint whose signature verified, and the id of the key that signed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCheckpoint {
    pub checkpoint: Checkpoint,
    pub key_id: String,
}

/// A parsed note and the signature to check on it.
struct Signed {
    checkpoint: Checkpoint,
    body: String,
    signature: Signature,
    key: VerifyingKey,
    key_id: String,
}

/// Parses a note and finds the keyring's key that signed it, without checking the signature.
fn parse_signed(note: &str, keyring: &Keyring) -> Result<Signed, NoteError> {
    let malformed = |why: &str| NoteError::Malformed(why.to_owned());
    let (body, signatures) = note
        .split_once("\n\n")
        .ok_or_else(|| malformed("no blank line before the signatures"))?;
    let body = format!("{body}\n");
    let mut lines = body.lines();
    let origin = lines.next().ok_or_else(|| malformed("no origin"))?;
    let size = lines
        .next()
        .and_then(|l| l.parse::<u64>().ok())
        .ok_or_else(|| malformed("no tree size"))?;
    let root = lines
        .next()
        .and_then(|l| B64.decode(l).ok())
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .map(Hash)
        .ok_or_else(|| malformed("no root hash"))?;
    if origin != keyring.origin {
        return Err(NoteError::Origin {
            found: origin.to_owned(),
            expected: keyring.origin.clone(),
        });
    }
    let checkpoint = Checkpoint {
        origin: origin.to_owned(),
        size,
        root,
    };
    let mut last_unknown = None;
    for line in signatures.lines().filter(|l| !l.is_empty()) {
        let rest = line
            .strip_prefix("\u{2014} ")
            .ok_or_else(|| malformed("a signature line does not start with `— `"))?;
        let (name, blob) = rest
            .rsplit_once(' ')
            .ok_or_else(|| malformed("a signature line has no signature"))?;
        let blob = B64
            .decode(blob)
            .map_err(|_| malformed("a signature is not base64"))?;
        let (hash, signature) = blob
            .split_first_chunk::<4>()
            .ok_or_else(|| malformed("a signature is too short"))?;
        let found = keyring.keys.iter().find_map(|k| {
            let key = k.verifying_key()?;
            (key_hash(name, &key) == *hash).then(|| (k.key_id.clone(), key))
        });
        let Some((key_id, key)) = found else {
            last_unknown = Some(hex::encode(hash));
            continue;
        };
        let signature = Signature::from_slice(signature)
            .map_err(|_| malformed("a signature is not 64 bytes"))?;
        return Ok(Signed {
            checkpoint,
            body,
            signature,
            key,
            key_id,
        });
    }
    Err(NoteError::UnknownKey(
        last_unknown.unwrap_or_else(|| "none".to_owned()),
    ))
}

impl Signed {
    fn verify(self) -> Result<VerifiedCheckpoint, NoteError> {
        self.key
            .verify_strict(self.body.as_bytes(), &self.signature)
            .map_err(|_| NoteError::BadSignature(self.key_id.clone()))?;
        Ok(self.verified())
    }

    fn verified(self) -> VerifiedCheckpoint {
        VerifiedCheckpoint {
            checkpoint: self.checkpoint,
            key_id: self.key_id,
        }
    }
}

/// Parses a note and verifies a signature by one of `keyring`'s keys.
pub fn verify_note(note: &str, keyring: &Keyring) -> Result<VerifiedCheckpoint, NoteError> {
    parse_signed(note, keyring)?.verify()
}

/// Verifies many notes at once: all signatures in one Ed25519 batch verification (about twice
/// as fast as one by one), and one by one, strictly, only when the batch fails, to name the
/// first bad note. The error carries the index of the note at fault.
pub fn verify_notes(
    notes: &[String],
    keyring: &Keyring,
) -> Result<Vec<VerifiedCheckpoint>, (usize, NoteError)> {
    let signed = notes
        .iter()
        .enumerate()
        .map(|(i, note)| parse_signed(note, keyring).map_err(|e| (i, e)))
        .collect::<Result<Vec<_>, _>>()?;
    let messages: Vec<&[u8]> = signed.iter().map(|s| s.body.as_bytes()).collect();
    let signatures: Vec<Signature> = signed.iter().map(|s| s.signature).collect();
    let keys: Vec<VerifyingKey> = signed.iter().map(|s| s.key).collect();
    if ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok() {
        return Ok(signed.into_iter().map(Signed::verified).collect());
    }
    signed
        .into_iter()
        .enumerate()
        .map(|(i, s)| s.verify().map_err(|e| (i, e)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TEST KEY, for tests only.
    fn test_key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn keyring(keys: &[&SigningKey]) -> Keyring {
        Keyring {
            origin: "example.test/log".into(),
            keys: keys
                .iter()
                .map(|k| PublicKey::new("example.test/log", &k.verifying_key(), 0))
                .collect(),
        }
    }

    fn checkpoint() -> Checkpoint {
        Checkpoint {
            origin: "example.test/log".into(),
            size: 42,
            root: Hash([7; 32]),
        }
    }

    #[test]
    fn notes_have_the_c2sp_shape_and_verify() {
        let key = test_key(1);
        let note = checkpoint().sign(&key);
        let mut lines = note.lines();
        assert_eq!(lines.next(), Some("example.test/log"));
        assert_eq!(lines.next(), Some("42"));
        assert_eq!(
            lines.next(),
            Some("BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=")
        );
        assert_eq!(lines.next(), Some(""));
        assert!(
            lines
                .next()
                .unwrap()
                .starts_with("\u{2014} example.test/log ")
        );
        let verified = verify_note(&note, &keyring(&[&key])).unwrap();
        assert_eq!(verified.checkpoint, checkpoint());
        assert_eq!(verified.key_id, key_id(&key.verifying_key()));
    }

    #[test]
    fn batches_verify_and_name_the_bad_note() {
        let (a, b) = (test_key(1), test_key(2));
        let keys = keyring(&[&a, &b]);
        let mut notes: Vec<String> = (0..10)
            .map(|i| {
                let key = if i % 2 == 0 { &a } else { &b };
                Checkpoint {
                    size: i,
                    ..checkpoint()
                }
                .sign(key)
            })
            .collect();
        let verified = verify_notes(&notes, &keys).unwrap();
        assert_eq!(
            verified
                .iter()
                .map(|v| v.checkpoint.size)
                .collect::<Vec<_>>(),
            (0..10).collect::<Vec<_>>()
        );
        notes[6] = notes[6].replacen("\n6\n", "\n7\n", 1);
        let (index, error) = verify_notes(&notes, &keys).unwrap_err();
        assert_eq!(index, 6);
        assert!(matches!(error, NoteError::BadSignature(_)));
    }

    #[test]
    fn rotation_unknown_keys_and_tampering() {
        let (old, new) = (test_key(1), test_key(2));
        let note = checkpoint().sign(&old);
        // Verifies with a keyring that still holds the retired key.
        assert!(verify_note(&note, &keyring(&[&new, &old])).is_ok());
        assert!(matches!(
            verify_note(&note, &keyring(&[&new])),
            Err(NoteError::UnknownKey(_))
        ));
        let tampered = note.replacen("42", "43", 1);
        assert!(matches!(
            verify_note(&tampered, &keyring(&[&old])),
            Err(NoteError::BadSignature(_))
        ));
        let other_origin = note.replacen("example.test/log", "evil.test/log", 1);
        assert!(matches!(
            verify_note(&other_origin, &keyring(&[&old])),
            Err(NoteError::Origin { .. })
        ));
        assert!(matches!(
            verify_note("no blank line", &keyring(&[&old])),
            Err(NoteError::Malformed(_))
        ));
    }
}
