//! Evidence records and the hash chain.
//!
//! A record is a JSON object; its hash is SHA-256 over its canonical encoding
//! ([`crate::canonical`]), and it names the hash of the record before it. It is also a leaf of
//! the log's Merkle tree, with leaf data the 32-byte record hash.
//!
//! A [`PendingRecord`] is what the server knows of a decision; it becomes a [`SealedRecord`] only
//! through [`Chain::seal`], which gives it its place (sequence number and previous hash).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use std::fmt::Write as _;

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
    /// Who asked, as the service verified it (`{"kind", "name"}`: an enforcement point's or
    /// operator's credential name); absent when callers are not authenticated.
    pub caller: Option<Value>,
    /// What the record is of, when not a decision on an agent's request: `session.start` or
    /// `session.revoke` (the service's own acts, decided and recorded the same way).
    pub kind: Option<String>,
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
    /// The record's canonical encoding (a JSON object): the bytes stored and hashed.
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
    ///
    /// The record object is written straight to its canonical encoding, its members in their
    /// canonical order (`caller` when there is one, `decision`, `decision_id`, `kind` when
    /// there is one, `policy_version`, `prev_hash`, `reasons`,
    /// `request`, `seq`, `time_ms`, `v`), without building it as a JSON value first: this runs
    /// once per decision, in the log's one writer.
    pub fn seal(&mut self, pending: &PendingRecord) -> SealedRecord {
        let seq = self.next_seq;
        let mut out = String::with_capacity(512);
        out.push('{');
        if let Some(caller) = &pending.caller {
            out.push_str("\"caller\":");
            canonical::write(caller, &mut out);
            out.push(',');
        }
        out.push_str("\"decision\":");
        canonical::write_str(&pending.decision, &mut out);
        out.push_str(",\"decision_id\":");
        canonical::write_str(&pending.decision_id, &mut out);
        if let Some(kind) = &pending.kind {
            out.push_str(",\"kind\":");
            canonical::write_str(kind, &mut out);
        }
        out.push_str(",\"policy_version\":");
        canonical::write_str(&pending.policy_version, &mut out);
        out.push_str(",\"prev_hash\":\"");
        self.last_hash.push_hex(&mut out);
        out.push_str("\",\"reasons\":");
        canonical::write(&pending.reasons, &mut out);
        out.push_str(",\"request\":");
        canonical::write(&pending.request, &mut out);
        // Writing to a String cannot fail.
        let _ = write!(
            out,
            ",\"seq\":{seq},\"time_ms\":{},\"v\":{FORMAT_VERSION}}}",
            pending.time_ms
        );
        let hash = Hash::digest(out.as_bytes());
        self.next_seq += 1;
        self.last_hash = hash;
        SealedRecord {
            seq,
            canonical: out,
            hash,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn pending(id: &str) -> PendingRecord {
        PendingRecord {
            time_ms: 1_700_000_000_000,
            caller: None,
            kind: None,
            decision_id: id.into(),
            request: json!({"actor": "a", "action": "x.y", "resource": "r", "context": {"n": 1}}),
            decision: "deny".into(),
            reasons: json!([{"kind": "default_deny", "message": "no"}]),
            policy_version: "sha256:00".into(),
        }
    }

    /// The record object a sealed record must encode.
    fn expected(pending: &PendingRecord, seq: u64, prev: Hash) -> Value {
        let mut object = json!({
            "v": FORMAT_VERSION,
            "seq": seq,
            "time_ms": pending.time_ms,
            "decision_id": pending.decision_id,
            "request": pending.request,
            "decision": pending.decision,
            "reasons": pending.reasons,
            "policy_version": pending.policy_version,
            "prev_hash": prev.to_hex(),
        });
        if let (Some(caller), Some(members)) = (&pending.caller, object.as_object_mut()) {
            members.insert("caller".into(), caller.clone());
        }
        if let (Some(kind), Some(members)) = (&pending.kind, object.as_object_mut()) {
            members.insert("kind".into(), kind.clone().into());
        }
        object
    }

    #[test]
    fn records_chain_and_hash_their_canonical_bytes() {
        let mut chain = Chain::genesis();
        let first = chain.seal(&pending("d1"));
        let second = chain.seal(&pending("d2"));
        assert_eq!((first.seq, second.seq), (0, 1));
        assert_eq!(
            canonical::to_string(&expected(&pending("d1"), 0, GENESIS)),
            first.canonical
        );
        assert_eq!(
            canonical::to_string(&expected(&pending("d2"), 1, first.hash)),
            second.canonical
        );
        assert_eq!(Hash::digest(first.canonical.as_bytes()), first.hash);
        assert!(
            first
                .canonical
                .starts_with("{\"decision\":\"deny\",\"decision_id\":\"d1\",")
        );
        assert_eq!(chain.next_seq, 2);
        assert_eq!(chain.last_hash, second.hash);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever a decision holds, the record written directly is the canonical encoding
        /// of the record object, and parses back to it.
        #[test]
        fn sealed_records_are_the_canonical_encoding_of_their_object(
            id in any::<String>(),
            decision in any::<String>(),
            version in any::<String>(),
            key in any::<String>(),
            text in any::<String>(),
            time_ms in any::<i64>(),
            seq in any::<u64>(),
            with_caller in any::<bool>(),
        ) {
            let pending = PendingRecord {
                time_ms,
                caller: with_caller.then(|| json!({"kind": "pep", "name": key.clone()})),
                kind: with_caller.then(|| text.clone()),
                decision_id: id,
                request: json!({"actor": text, "context": {key.clone(): [text, null, -3]}}),
                decision,
                reasons: json!([{key: true}]),
                policy_version: version,
            };
            let prev = Hash::digest(b"prev");
            let mut chain = Chain { next_seq: seq, last_hash: prev };
            let sealed = chain.seal(&pending);
            let object = expected(&pending, seq, prev);
            prop_assert_eq!(&canonical::to_string(&object), &sealed.canonical);
            prop_assert_eq!(serde_json::from_str::<Value>(&sealed.canonical).ok(), Some(object));
            prop_assert_eq!(record_hash(&expected(&pending, seq, prev)), sealed.hash);
        }
    }
}
