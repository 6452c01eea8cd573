//! Whole-log tests: build a signed log, export it, verify it, and tamper with it in every way.

use ed25519_dalek::SigningKey;
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::checkpoint::{Checkpoint, Keyring, PublicKey};
use crate::merkle::{Tiles, Tree};
use crate::record::{Chain, PendingRecord};
use crate::verify::{EXPORT_FORMAT, FailureKind, Line, Prefix, verify_lines};

const ORIGIN: &str = "test.ztinfra/log";

/// TEST KEYS, for tests only.
fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn keyring(keys: &[&SigningKey]) -> Keyring {
    Keyring {
        origin: ORIGIN.into(),
        keys: keys
            .iter()
            .map(|k| PublicKey::new(ORIGIN, &k.verifying_key(), 0))
            .collect(),
    }
}

/// A log of `n` records committed in batches of `batch`, each batch closed by a checkpoint
/// signed with `signer(batch index)`; exported from `from`.
fn export(n: u64, batch: u64, from: u64, signer: impl Fn(u64) -> SigningKey) -> Vec<String> {
    let mut chain = Chain::genesis();
    let mut tree = Tree::new();
    let mut lines = Vec::new();
    let mut body = Vec::new();
    for seq in 0..n {
        let record = chain.seal(&PendingRecord {
            time_ms: 1_700_000_000_000 + seq as i64,
            caller: None,
            kind: None,
            decision_id: format!("d-{seq}"),
            request: json!({"actor": "agent", "action": "a.b", "resource": format!("r{seq}"), "context": {}}),
            decision: if seq % 3 == 0 { "allow" } else { "deny" }.into(),
            reasons: json!([]),
            policy_version: "sha256:00".into(),
        });
        tree.push(record.leaf());
        if seq >= from {
            // As the exporter does: the stored canonical text, verbatim.
            body.push(format!(
                "{{\"type\":\"record\",\"hash\":\"{}\",\"record\":{}}}",
                record.hash.to_hex(),
                record.canonical
            ));
        }
        if (seq + 1) % batch == 0 || seq + 1 == n {
            let size = seq + 1;
            let note = Checkpoint {
                origin: ORIGIN.into(),
                size,
                root: tree.root(size, &Tiles::new()).unwrap(),
            }
            .sign(&signer(seq / batch));
            if size > from {
                body.push(serde_json::to_string(&Line::Checkpoint { note }).unwrap());
            }
        }
    }
    let prefix = tree.compact_range(from, &Tiles::new()).unwrap();
    lines.push(
        serde_json::to_string(&Line::Header {
            format: EXPORT_FORMAT.into(),
            origin: ORIGIN.into(),
            from,
            to: n,
            prefix: Prefix {
                size: from,
                nodes: prefix.nodes().iter().map(|h| h.to_hex()).collect(),
            },
        })
        .unwrap(),
    );
    lines.extend(body);
    lines
}

fn record_line(lines: &[String], seq: u64) -> usize {
    lines
        .iter()
        .position(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["type"] == "record" && v["record"]["seq"] == seq
        })
        .unwrap()
}

fn edit_record(lines: &mut [String], seq: u64, rehash: bool, f: impl FnOnce(&mut Value)) {
    let i = record_line(lines, seq);
    let mut v: Value = serde_json::from_str(&lines[i]).unwrap();
    f(&mut v["record"]);
    if rehash {
        v["hash"] = json!(crate::record::record_hash(&v["record"]).to_hex());
    }
    lines[i] = v.to_string();
}

fn verdict(lines: &[String], keys: &Keyring) -> (FailureKind, Option<u64>) {
    let failure = verify_lines(lines, keys).unwrap_err();
    (failure.kind, failure.seq)
}

#[test]
fn an_untouched_log_verifies_across_a_key_rotation() {
    let (old, new) = (key(1), key(2));
    let lines = export(50, 7, 0, |b| if b < 4 { old.clone() } else { new.clone() });
    let summary = verify_lines(&lines, &keyring(&[&new, &old])).unwrap();
    assert_eq!(
        (summary.records, summary.tree_size, summary.checkpoints),
        (50, 50, 8)
    );
    assert_eq!(summary.key_ids.len(), 2);
    // Without the retired key, its checkpoints cannot be trusted.
    assert_eq!(
        verdict(&lines, &keyring(&[&new])).0,
        FailureKind::UnknownKey
    );
}

#[test]
fn record_lines_are_read_without_parsing_the_record() {
    let k = key(1);
    let lines = export(3, 2, 0, |_| k.clone());
    let (hash, text) = crate::verify::record_line(&lines[1]).unwrap();
    assert_eq!(crate::merkle::Hash::digest(text.as_bytes()).to_hex(), hash);
    assert_eq!(crate::verify::skim_seq(&lines[1]), Some(0));
    assert_eq!(crate::verify::skim_seq("{\"type\":\"record\"}"), None);
    assert!(crate::verify::record_line(&lines[0]).is_none());
}

#[test]
fn a_partial_export_verifies_from_its_prefix() {
    let k = key(1);
    let lines = export(50, 7, 20, |_| k.clone());
    let summary = verify_lines(&lines, &keyring(&[&k])).unwrap();
    assert_eq!(
        (summary.from, summary.records, summary.tree_size),
        (20, 30, 50)
    );
}

#[test]
fn each_tampering_is_named() {
    let k = key(1);
    let keys = keyring(&[&k]);
    let clean = export(40, 5, 0, |_| k.clone());

    // One byte of one record changed, its hash left alone.
    let mut lines = clean.clone();
    edit_record(&mut lines, 17, false, |r| r["decision"] = json!("allow"));
    assert_eq!(verdict(&lines, &keys), (FailureKind::Modified, Some(17)));

    // Changed and rehashed: the next record's link gives it away.
    let mut lines = clean.clone();
    edit_record(&mut lines, 17, true, |r| r["decision"] = json!("allow"));
    assert_eq!(verdict(&lines, &keys), (FailureKind::Modified, Some(17)));

    // Missing.
    let mut lines = clean.clone();
    lines.remove(record_line(&lines, 12));
    assert_eq!(verdict(&lines, &keys), (FailureKind::Missing, Some(12)));

    // Reordered.
    let mut lines = clean.clone();
    let (a, b) = (record_line(&lines, 12), record_line(&lines, 13));
    lines.swap(a, b);
    assert_eq!(verdict(&lines, &keys), (FailureKind::Reordered, Some(12)));

    // Inserted: a forged record after 20, and every later record renumbered and rehashed.
    let mut lines = clean.clone();
    let at = record_line(&lines, 21);
    let mut forged: Value = serde_json::from_str(&lines[record_line(&lines, 20)]).unwrap();
    let prev = forged["hash"].clone();
    forged["record"]["seq"] = json!(21);
    forged["record"]["decision_id"] = json!("forged");
    forged["record"]["prev_hash"] = prev;
    forged["hash"] = json!(crate::record::record_hash(&forged["record"]).to_hex());
    for seq in (21..40).rev() {
        edit_record(&mut lines, seq, true, |r| r["seq"] = json!(seq + 1));
    }
    lines.insert(at, forged.to_string());
    assert_eq!(verdict(&lines, &keys), (FailureKind::Inserted, Some(21)));

    // Truncated: the last records dropped, the checkpoints kept.
    let mut lines = clean.clone();
    lines.retain(|l| {
        let v: Value = serde_json::from_str(l).unwrap();
        !(v["type"] == "record" && v["record"]["seq"].as_u64().unwrap() >= 33)
    });
    assert_eq!(verdict(&lines, &keys), (FailureKind::Truncated, Some(33)));

    // Truncated with the checkpoints too: the header still says how many there were.
    let mut lines = clean.clone();
    lines.truncate(record_line(&lines, 33));
    assert_eq!(verdict(&lines, &keys).0, FailureKind::Truncated);

    // A checkpoint by an unknown key, and one whose signature does not verify.
    let mut lines = clean.clone();
    let last = lines.len() - 1;
    let forged = Checkpoint {
        origin: ORIGIN.into(),
        size: 40,
        root: crate::merkle::Hash([0; 32]),
    }
    .sign(&key(9));
    lines[last] = serde_json::to_string(&Line::Checkpoint { note: forged }).unwrap();
    assert_eq!(verdict(&lines, &keys), (FailureKind::UnknownKey, Some(39)));
    let mut lines = clean.clone();
    let v: Value = serde_json::from_str(&lines[last]).unwrap();
    let note = v["note"].as_str().unwrap().replacen("\n40\n", "\n41\n", 1);
    lines[last] = serde_json::to_string(&Line::Checkpoint { note }).unwrap();
    assert_eq!(
        verdict(&lines, &keys),
        (FailureKind::BadSignature, Some(40))
    );

    // Records after the last checkpoint, signed by nobody.
    let mut lines = clean.clone();
    lines.retain(|l| !l.contains("\"checkpoint\"") || l.contains("\\n5\\n"));
    assert_eq!(verdict(&lines, &keys), (FailureKind::Unsigned, Some(5)));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any single change to any record's content is detected, and names that record.
    #[test]
    fn any_single_modification_is_detected(n in 1u64..40, batch in 1u64..9, pick in any::<u64>(), byte in any::<u8>()) {
        let k = key(3);
        let keys = keyring(&[&k]);
        let mut lines = export(n, batch, 0, |_| k.clone());
        prop_assert!(verify_lines(&lines, &keys).is_ok());
        let seq = pick % n;
        let rehash = pick % 2 == 0;
        edit_record(&mut lines, seq, rehash, |r| {
            let old = r["request"]["resource"].as_str().unwrap().to_owned();
            r["request"]["resource"] = json!(format!("{old}{}", char::from(b'a' + byte % 26)));
        });
        let failure = verify_lines(&lines, &keys).unwrap_err();
        prop_assert_eq!(failure.kind, FailureKind::Modified);
        // A rehashed change to the last record is caught by the checkpoint over its batch.
        prop_assert!(failure.seq.is_some_and(|s| s <= seq), "{:?}", failure);
        prop_assert!(rehash || failure.seq == Some(seq));
    }

    /// Any single record removed or any two swapped is detected.
    #[test]
    fn any_removal_or_swap_is_detected(n in 2u64..40, batch in 1u64..9, pick in any::<u64>()) {
        let k = key(4);
        let keys = keyring(&[&k]);
        let clean = export(n, batch, 0, |_| k.clone());
        let mut lines = clean.clone();
        let seq = pick % n;
        lines.remove(record_line(&lines, seq));
        prop_assert!(verify_lines(&lines, &keys).is_err());
        let mut lines = clean.clone();
        let other = (seq + 1 + pick / n % (n - 1)) % n;
        let (a, b) = (record_line(&lines, seq), record_line(&lines, other));
        lines.swap(a, b);
        prop_assert_eq!(verify_lines(&lines, &keys).unwrap_err().seq, Some(seq.min(other)));
    }
}

#[test]
fn a_repeated_member_is_a_modified_record() {
    let k = key(1);
    let keys = keyring(&[&k]);
    // A forged `decision` (or a second `seq`, or `actor`) placed before the genuine one: a
    // reader that takes the first sees the forgery, serde_json the original.
    for (genuine, forged) in [
        (
            "\"decision\":\"allow\"",
            "\"decision\":\"deny\",\"decision\":\"allow\"",
        ),
        ("\"seq\":3", "\"seq\":1,\"seq\":3"),
        (
            "\"actor\":\"agent\"",
            "\"actor\":\"root\",\"actor\":\"agent\"",
        ),
    ] {
        let mut lines = export(6, 2, 0, |_| k.clone());
        let i = record_line(&lines, 3);
        assert!(lines[i].contains(genuine), "{}", lines[i]);
        lines[i] = lines[i].replacen(genuine, forged, 1);
        assert_eq!(
            verdict(&lines, &keys),
            (FailureKind::Modified, Some(3)),
            "{forged}"
        );
    }
    // In a line the exporter did not write (the record's members reordered), too.
    let mut lines = export(6, 2, 0, |_| k.clone());
    let i = record_line(&lines, 3);
    let line = lines[i].replacen("{\"type\":\"record\",", "{", 1);
    lines[i] = format!(
        "{},\"type\":\"record\",\"type\":\"record\"}}",
        &line[..line.len() - 1]
    );
    assert_eq!(verdict(&lines, &keys).0, FailureKind::Malformed);
}

#[test]
fn a_pinned_size_or_root_exposes_a_cut_export() {
    use crate::verify::{Pin, verify_export_pinned};
    let k = key(1);
    let keys = keyring(&[&k]);
    let whole = export(10, 2, 0, |_| k.clone());
    let full = verify_lines(&whole, &keys).unwrap();
    let root = crate::merkle::Hash::from_hex(&full.root);
    let check = |lines: &[String], pin: Pin| {
        let open = || Ok::<_, std::convert::Infallible>(lines.iter().cloned().map(Ok));
        match verify_export_pinned(open, &keys, Some(pin), |_| {}) {
            Ok(verdict) => verdict.map(|s| s.tree_size).map_err(|f| f.kind),
            Err(never) => match never {},
        }
    };
    let exact = |size, root| Pin {
        size,
        root,
        exact: true,
    };
    assert_eq!(check(&whole, exact(10, root)), Ok(10));
    // The same log cut after 6 records, with a header edited to say so: it verifies on its
    // own, but not against what the verifier was told to expect.
    let cut = export(6, 2, 0, |_| k.clone());
    assert!(verify_lines(&cut, &keys).is_ok());
    assert_eq!(check(&cut, exact(10, None)), Err(FailureKind::Truncated));
    assert_eq!(check(&cut, exact(6, root)), Err(FailureKind::Modified));
    // A trusted checkpoint of 6 records: the whole export reaches it with the same root.
    let at_six = crate::merkle::Hash::from_hex(&verify_lines(&cut, &keys).unwrap().root);
    let trusted = Pin {
        size: 6,
        root: at_six,
        exact: false,
    };
    assert_eq!(check(&whole, trusted), Ok(10));
    assert_eq!(check(&whole, exact(6, at_six)), Err(FailureKind::Inserted));
}
