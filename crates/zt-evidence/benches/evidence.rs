//! Evidence costs: sealing a record, Merkle roots and inclusion proofs at 1M records, and
//! checkpoint signing and verification.
//!
//! Run: `cargo bench -p zt-evidence --bench evidence`.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "benchmark set-up fails loudly on a broken fixture"
)]

use divan::Bencher;
use ed25519_dalek::SigningKey;
use serde_json::json;
use zt_evidence::checkpoint::{Checkpoint, Keyring, PublicKey, verify_note};
use zt_evidence::merkle::{Hash, Tiles, Tree, leaf_hash, verify_inclusion};
use zt_evidence::record::{Chain, PendingRecord, record_hash};

fn main() {
    divan::main();
}

fn pending() -> PendingRecord {
    PendingRecord {
        time_ms: 1_700_000_000_000,
        caller: Some(json!({"kind": "pep", "name": "mcp-gateway"})),
        kind: None,
        decision_id: "01a2052f-0067-7330-b6f9-10bba91c9256".into(),
        request: json!({"actor": "demo-agent", "action": "aws.ec2.terminate_instances", "resource": "i-demo", "context": {"env": "prod", "ticket": "CHG-1"}}),
        decision: "deny".into(),
        reasons: json!([{"kind": "forbid", "policy": "prod-changes-need-ticket", "message": "changes in prod need a change ticket"}]),
        policy_version: "sha256:285f88cb1740bad08438f71e6e05b36f3c2ab6321a28775568f2ea58f940d8e3"
            .into(),
    }
}

/// Sealing: canonical encoding and SHA-256 of a typical record.
#[divan::bench]
fn seal_record(bencher: Bencher) {
    let mut chain = Chain::genesis();
    bencher
        .with_inputs(pending)
        .bench_local_refs(|p| chain.seal(p));
}

/// What the verifier does per record: canonical encoding, SHA-256 and the leaf hash.
#[divan::bench]
fn rehash_record(bencher: Bencher) {
    let record = Chain::genesis().seal(&pending());
    let body: serde_json::Value = serde_json::from_str(&record.canonical).unwrap();
    bencher.bench(|| leaf_hash(&record_hash(&body).0));
}

fn million(tile_height: u32) -> (Tree, Vec<Hash>) {
    let mut tree = Tree::with_tile_height(tile_height);
    let leaves: Vec<Hash> = (0..1_000_000u64)
        .map(|i| leaf_hash(&i.to_be_bytes()))
        .collect();
    for leaf in &leaves {
        tree.push(*leaf);
    }
    (tree, leaves)
}

/// An inclusion proof in a tree of 1M records, and its verification.
#[divan::bench(sample_count = 1000)]
fn inclusion_proof_1m(bencher: Bencher) {
    let (tree, _) = million(0);
    let size = tree.len();
    let none = Tiles::new();
    let root = tree.root(size, &none).unwrap_or_else(|e| panic!("{e}"));
    let mut i = 0u64;
    bencher.bench_local(|| {
        i = (i + 7919) % size;
        let proof = tree
            .inclusion_proof(i, size, &none)
            .unwrap_or_else(|e| panic!("{e}"));
        let leaf = tree.leaf(i, &none).unwrap_or(Hash([0; 32]));
        assert!(verify_inclusion(i, size, &leaf, &proof, &root));
    });
}

/// The same on the server's tree, which keeps only the nodes above its tiles of 256 leaves:
/// the leaf's tile (as read back from storage; the read is not timed here) and the proof.
#[divan::bench(sample_count = 1000)]
fn inclusion_proof_1m_tiled(bencher: Bencher) {
    let (tree, leaves) = million(8);
    let size = tree.len();
    let root = tree
        .root(size, &Tiles::new())
        .unwrap_or_else(|e| panic!("{e}"));
    let mut i = 0u64;
    bencher.bench_local(|| {
        i = (i + 7919) % size;
        let tile = i >> 8;
        let mut tiles = Tiles::new();
        let start = (tile << 8) as usize;
        tree.add_tile(
            &mut tiles,
            tile,
            leaves.get(start..start + 256).unwrap_or(&[]).to_vec(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let proof = tree
            .inclusion_proof(i, size, &tiles)
            .unwrap_or_else(|e| panic!("{e}"));
        let leaf = tree.leaf(i, &tiles).unwrap_or(Hash([0; 32]));
        assert!(verify_inclusion(i, size, &leaf, &proof, &root));
    });
}

/// The root of a 1M-record tree (done once per commit batch).
#[divan::bench]
fn root_1m(bencher: Bencher) {
    let (tree, _) = million(8);
    let none = Tiles::new();
    bencher.bench(|| tree.root(tree.len(), &none));
}

/// TEST KEY, for benchmarks only.
fn key() -> SigningKey {
    SigningKey::from_bytes(&[5; 32])
}

/// Signing a checkpoint (once per commit batch).
#[divan::bench]
fn sign_checkpoint(bencher: Bencher) {
    let key = key();
    let checkpoint = Checkpoint {
        origin: "bench/log".into(),
        size: 1_000_000,
        root: Hash([1; 32]),
    };
    bencher.bench(|| checkpoint.sign(&key));
}

/// Verifying a checkpoint (once per checkpoint in an export).
#[divan::bench]
fn verify_checkpoint(bencher: Bencher) {
    let key = key();
    let note = Checkpoint {
        origin: "bench/log".into(),
        size: 1_000_000,
        root: Hash([1; 32]),
    }
    .sign(&key);
    let keyring = Keyring {
        origin: "bench/log".into(),
        keys: vec![PublicKey::new("bench/log", &key.verifying_key(), 0)],
    };
    bencher.bench(|| verify_note(&note, &keyring).is_ok());
}
