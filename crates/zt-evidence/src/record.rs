//! Evidence records and the hash chain.
//!
//! A record is a JSON object; its hash is SHA-256 over its canonical encoding
//! ([`crate::canonical`]), and it names the hash of the record before it. It is also a leaf of
//! the log's Merkle tree, with leaf data the 32-byte record hash.
//!
//! A [`PendingRecord`] is what the server knows of a decision; it becomes a [`SealedRecord`] only
//! through [`Chain::seal`], which gives it its place (sequence number and previous hash).

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::canonical;
use crate::merkle::{Hash, leaf_hash};

/// The version of the record format, in every record as `v`.
pub const FORMAT_VERSION: u64 = 1;

/// The previous-record hash of the first record: 32 zero bytes.
pub const GENESIS: Hash = Hash([0; 32]);

/// A decision, not yet in the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingRecord {
    /// Milliseconds since the Unix epoch.
    pub time_ms: i64,
    pub decision_id: String,
    /// The full decision request as received (and later its session, delegation, approval
    /// and plan step).
    pub request: Value,
    pub decision: String,
    pub reasons: Value,
    pub policy_version: String,
}

/// A record with its place in the log, and its hash.
#[derive(Debug, Clone, PartialEq)]
pub struct SealedRecord {
    pub seq: u64,
    /// The record as a JSON object.
    pub body: Value,
    /// Its canonical encoding: the bytes stored and hashed.
    pub canonical: String,
    pub hash: Hash,
}

impl SealedRecord {
    /// The Merkle leaf hash of this record.
    pub fn leaf(&self) -> Hash {
        leaf_hash(&self.hash.0)
    }
}

/// SHA-256 of the canonical encoding of a record object.
pub fn record_hash(body: &Value) -> Hash {
    Hash::digest(canonical::to_string(body).as_bytes())
}

/// The position of the next record: its sequence number and the hash it links to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chain {
    pub next_seq: u64,
    pub last_hash: Hash,
}

impl Chain {
    /// An empty log.
    pub fn genesis() -> Self {
        Self {
            next_seq: 0,
            last_hash: GENESIS,
        }
    }

    /// Gives `pending` the next place in the log.
    pub fn seal(&mut self, pending: PendingRecord) -> SealedRecord {
        let seq = self.next_seq;
        let body = json!({
            "v": FORMAT_VERSION,
            "seq": seq,
            "time_ms": pending.time_ms,
            "decision_id": pending.decision_id,
            "request": pending.request,
            "decision": pending.decision,
            "reasons": pending.reasons,
            "policy_version": pending.policy_version,
            "prev_hash": self.last_hash.to_hex(),
        });
        let canonical = canonical::to_string(&body);
        let hash = Hash::digest(canonical.as_bytes());
        self.next_seq += 1;
        self.last_hash = hash;
        SealedRecord {
            seq,
            body,
            canonical,
            hash,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(id: &str) -> PendingRecord {
        PendingRecord {
            time_ms: 1_700_000_000_000,
            decision_id: id.into(),
            request: json!({"actor": "a", "action": "x.y", "resource": "r", "context": {"n": 1}}),
            decision: "deny".into(),
            reasons: json!([{"kind": "default_deny", "message": "no"}]),
            policy_version: "sha256:00".into(),
        }
    }

    #[test]
    fn records_chain_and_hash_their_canonical_bytes() {
        let mut chain = Chain::genesis();
        let first = chain.seal(pending("d1"));
        let second = chain.seal(pending("d2"));
        assert_eq!((first.seq, second.seq), (0, 1));
        assert_eq!(first.body["prev_hash"], GENESIS.to_hex());
        assert_eq!(second.body["prev_hash"], first.hash.to_hex());
        assert_eq!(record_hash(&first.body), first.hash);
        assert_eq!(Hash::digest(first.canonical.as_bytes()), first.hash);
        assert!(
            first
                .canonical
                .starts_with("{\"decision\":\"deny\",\"decision_id\":\"d1\",")
        );
        assert_eq!(chain.next_seq, 2);
        assert_eq!(chain.last_hash, second.hash);
    }
}
