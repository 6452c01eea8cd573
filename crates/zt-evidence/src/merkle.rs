//! The Merkle tree of RFC 9162 (Certificate Transparency 2.0), section 2.1: leaf hashes
//! `SHA-256(0x00 || data)`, node hashes `SHA-256(0x01 || left || right)`, the tree over `n`
//! leaves split at the largest power of two below `n`; inclusion and consistency proofs and
//! their verification.
//!
//! [`Tree`] keeps every perfect subtree, so a root or a proof over any prefix costs
//! O(log² n) hash look-ups and at most O(log n) hash computations. [`CompactRange`] keeps only the
//! O(log n) subtrees that cover a prefix, for streaming verification.

use sha2::{Digest, Sha256};

/// A SHA-256 digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    pub fn to_hex(&self) -> String {
        let mut out = String::with_capacity(64);
        self.push_hex(&mut out);
        out
    }

    /// Appends the hash in lower-case hex to `out`.
    pub fn push_hex(&self, out: &mut String) {
        for byte in self.0 {
            for nibble in [byte >> 4, byte & 0xf] {
                out.push(char::from_digit(u32::from(nibble), 16).unwrap_or('0'));
            }
        }
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        let bytes = hex::decode(s).ok()?;
        Some(Self(bytes.try_into().ok()?))
    }

    /// SHA-256 of `bytes`.
    pub fn digest(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }
}

impl std::fmt::Display for Hash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// The hash of the empty tree: SHA-256 of nothing.
pub fn empty_root() -> Hash {
    Hash::digest(&[])
}

pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    Hash(h.finalize().into())
}

pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left.0);
    h.update(right.0);
    Hash(h.finalize().into())
}

/// The largest power of two strictly below `n` (for `n >= 2`).
fn split(n: u64) -> u64 {
    let mut k = 1;
    while k << 1 < n {
        k <<= 1;
    }
    k
}

/// Why a tree operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    #[error("leaf {index} is not in a tree of size {size}")]
    NoSuchLeaf { index: u64, size: u64 },
    #[error("tree size {size} is larger than the log ({len} leaves)")]
    TooLarge { size: u64, len: u64 },
    #[error("a consistency proof needs 0 < from <= to; got from {from}, to {to}")]
    BadRange { from: u64, to: u64 },
}

/// An append-only tree holding every perfect subtree: `levels[k][i]` is the hash of leaves
/// `i * 2^k .. (i + 1) * 2^k`.
#[derive(Debug, Clone, Default)]
pub struct Tree {
    levels: Vec<Vec<Hash>>,
}

impl Tree {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of leaves.
    pub fn len(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends a leaf, given its leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        let mut level = 0;
        let mut hash = leaf;
        loop {
            if self.levels.len() <= level {
                self.levels.push(Vec::new());
            }
            let Some(nodes) = self.levels.get_mut(level) else {
                return;
            };
            nodes.push(hash);
            if nodes.len() % 2 == 1 {
                return;
            }
            let (Some(right), Some(left)) = (
                nodes.last(),
                nodes.len().checked_sub(2).and_then(|i| nodes.get(i)),
            ) else {
                return;
            };
            hash = node_hash(left, right);
            level += 1;
        }
    }

    /// Drops every leaf from `len` on (to undo appends whose commit failed).
    pub fn truncate(&mut self, len: u64) {
        for (level, nodes) in self.levels.iter_mut().enumerate() {
            let keep = usize::try_from(len >> level).unwrap_or(usize::MAX);
            nodes.truncate(keep);
        }
        while self.levels.last().is_some_and(Vec::is_empty) {
            self.levels.pop();
        }
    }

    /// The leaf hash at `index`.
    pub fn leaf(&self, index: u64) -> Option<Hash> {
        self.levels
            .first()?
            .get(usize::try_from(index).ok()?)
            .copied()
    }

    /// MTH of leaves `start .. start + size`, where `start` is a multiple of the largest power of
    /// two not above `size` (always true of the ranges RFC 9162's recursions visit).
    fn subtree(&self, start: u64, size: u64) -> Hash {
        if size.is_power_of_two() {
            let level = size.trailing_zeros() as usize;
            if let Some(hash) = self
                .levels
                .get(level)
                .and_then(|l| l.get(usize::try_from(start >> level).ok()?))
            {
                return *hash;
            }
        }
        if size == 1 {
            return self.leaf(start).unwrap_or_else(empty_root);
        }
        let k = split(size);
        node_hash(&self.subtree(start, k), &self.subtree(start + k, size - k))
    }

    /// The root of the first `size` leaves.
    pub fn root(&self, size: u64) -> Result<Hash, TreeError> {
        if size > self.len() {
            return Err(TreeError::TooLarge {
                size,
                len: self.len(),
            });
        }
        Ok(if size == 0 {
            empty_root()
        } else {
            self.subtree(0, size)
        })
    }

    /// The audit path of leaf `index` in the tree of the first `size` leaves (RFC 9162 2.1.3.1).
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, TreeError> {
        if size > self.len() {
            return Err(TreeError::TooLarge {
                size,
                len: self.len(),
            });
        }
        if index >= size {
            return Err(TreeError::NoSuchLeaf { index, size });
        }
        let mut proof = Vec::new();
        self.path(index, 0, size, &mut proof);
        Ok(proof)
    }

    fn path(&self, m: u64, start: u64, n: u64, proof: &mut Vec<Hash>) {
        if n <= 1 {
            return;
        }
        let k = split(n);
        if m < k {
            self.path(m, start, k, proof);
            proof.push(self.subtree(start + k, n - k));
        } else {
            self.path(m - k, start + k, n - k, proof);
            proof.push(self.subtree(start, k));
        }
    }

    /// The consistency proof between the trees of the first `from` and `to` leaves
    /// (RFC 9162 2.1.4.1).
    pub fn consistency_proof(&self, from: u64, to: u64) -> Result<Vec<Hash>, TreeError> {
        if from == 0 || from > to {
            return Err(TreeError::BadRange { from, to });
        }
        if to > self.len() {
            return Err(TreeError::TooLarge {
                size: to,
                len: self.len(),
            });
        }
        let mut proof = Vec::new();
        self.subproof(from, 0, to, true, &mut proof);
        Ok(proof)
    }

    fn subproof(&self, m: u64, start: u64, n: u64, whole: bool, proof: &mut Vec<Hash>) {
        if m == n {
            if !whole {
                proof.push(self.subtree(start, n));
            }
            return;
        }
        let k = split(n);
        if m <= k {
            self.subproof(m, start, k, whole, proof);
            proof.push(self.subtree(start + k, n - k));
        } else {
            self.subproof(m - k, start + k, n - k, false, proof);
            proof.push(self.subtree(start, k));
        }
    }
}

/// Verifies an inclusion proof (RFC 9162 2.1.3.2).
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    sn == 0 && r == *root
}

/// Verifies a consistency proof (RFC 9162 2.1.4.2).
pub fn verify_consistency(
    from: u64,
    to: u64,
    from_root: &Hash,
    to_root: &Hash,
    proof: &[Hash],
) -> bool {
    if from == 0 || from > to {
        return false;
    }
    if from == to {
        return proof.is_empty() && from_root == to_root;
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if from.is_power_of_two() {
        path.push(*from_root);
    }
    path.extend_from_slice(proof);
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    let (mut fn_, mut sn) = (from - 1, to - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    sn == 0 && fr == *from_root && sr == *to_root
}

/// The perfect subtrees covering the first `len` leaves, largest first: enough to append
/// further leaves and compute roots, in O(log n) memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactRange {
    len: u64,
    /// One hash per set bit of `len`, from the highest bit down.
    nodes: Vec<Hash>,
}

impl CompactRange {
    pub fn new() -> Self {
        Self::default()
    }

    /// A range from its size and subtree hashes (as exported); `None` if the number of hashes
    /// does not match the size.
    pub fn from_parts(len: u64, nodes: Vec<Hash>) -> Option<Self> {
        (nodes.len() == len.count_ones() as usize).then_some(Self { len, nodes })
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn nodes(&self) -> &[Hash] {
        &self.nodes
    }

    pub fn push(&mut self, leaf: Hash) {
        let mut hash = leaf;
        let mut size = self.len;
        // Merge with each full subtree of equal size, as binary addition carries.
        while size & 1 == 1 {
            let Some(left) = self.nodes.pop() else {
                break;
            };
            hash = node_hash(&left, &hash);
            size >>= 1;
        }
        self.nodes.push(hash);
        self.len += 1;
    }

    pub fn root(&self) -> Hash {
        let mut nodes = self.nodes.iter().rev();
        let Some(last) = nodes.next() else {
            return empty_root();
        };
        nodes.fold(*last, |right, left| node_hash(left, &right))
    }
}

impl Tree {
    /// The compact range of the first `size` leaves, for exports that start there.
    pub fn compact_range(&self, size: u64) -> Result<CompactRange, TreeError> {
        if size > self.len() {
            return Err(TreeError::TooLarge {
                size,
                len: self.len(),
            });
        }
        let mut nodes = Vec::new();
        let mut start = 0;
        for bit in (0..64).rev() {
            let part = 1u64 << bit;
            if size & part != 0 {
                nodes.push(self.subtree(start, part));
                start += part;
            }
        }
        Ok(CompactRange { len: size, nodes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// MTH exactly as RFC 9162 defines it, recursively over the leaves.
    fn reference_root(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split(n as u64) as usize;
                node_hash(&reference_root(&leaves[..k]), &reference_root(&leaves[k..]))
            }
        }
    }

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(&(i as u64).to_be_bytes()))
            .collect()
    }

    fn tree(leaves: &[Hash]) -> Tree {
        let mut t = Tree::new();
        for l in leaves {
            t.push(*l);
        }
        t
    }

    #[test]
    fn known_answers() {
        // RFC 9162: the empty tree's hash is SHA-256 of the empty string.
        assert_eq!(
            empty_root().to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        // A one-leaf tree's root is the leaf hash SHA-256(0x00 || data).
        let leaf = leaf_hash(b"");
        assert_eq!(
            leaf.to_hex(),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
        assert_eq!(tree(&[leaf]).root(1).unwrap(), leaf);
    }

    #[test]
    fn truncation_undoes_appends() {
        let all = leaves(37);
        let mut t = tree(&all);
        t.truncate(21);
        assert_eq!(t.len(), 21);
        assert_eq!(t.root(21).unwrap(), reference_root(&all[..21]));
        for l in &all[21..30] {
            t.push(*l);
        }
        assert_eq!(t.root(30).unwrap(), reference_root(&all[..30]));
        t.truncate(0);
        assert!(t.is_empty());
    }

    #[test]
    fn out_of_range_requests_are_refused() {
        let t = tree(&leaves(5));
        assert_eq!(t.root(6), Err(TreeError::TooLarge { size: 6, len: 5 }));
        assert_eq!(
            t.inclusion_proof(5, 5),
            Err(TreeError::NoSuchLeaf { index: 5, size: 5 })
        );
        assert_eq!(
            t.consistency_proof(0, 3),
            Err(TreeError::BadRange { from: 0, to: 3 })
        );
        assert_eq!(
            t.consistency_proof(4, 3),
            Err(TreeError::BadRange { from: 4, to: 3 })
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn roots_match_the_definition(n in 0usize..130) {
            let leaves = leaves(n);
            let t = tree(&leaves);
            let mut compact = CompactRange::new();
            for (i, l) in leaves.iter().enumerate() {
                compact.push(*l);
                prop_assert_eq!(compact.root(), reference_root(&leaves[..=i]));
            }
            for size in 0..=n {
                prop_assert_eq!(t.root(size as u64).unwrap(), reference_root(&leaves[..size]));
                prop_assert_eq!(t.compact_range(size as u64).unwrap().root(), reference_root(&leaves[..size]));
            }
        }

        #[test]
        fn inclusion_proofs_verify_and_tampering_fails(n in 1u64..200, seed in any::<u64>()) {
            let t = tree(&leaves(n as usize));
            let size = 1 + seed % n;
            let index = (seed / 7) % size;
            let root = t.root(size).unwrap();
            let leaf = t.leaf(index).unwrap();
            let proof = t.inclusion_proof(index, size).unwrap();
            prop_assert!(verify_inclusion(index, size, &leaf, &proof, &root));
            let other = leaf_hash(b"other");
            prop_assert!(!verify_inclusion(index, size, &other, &proof, &root));
            if size > 1 {
                prop_assert!(!verify_inclusion((index + 1) % size, size, &leaf, &proof, &root));
                let mut bad = proof.clone();
                bad[0] = other;
                prop_assert!(!verify_inclusion(index, size, &leaf, &bad, &root));
                prop_assert!(!verify_inclusion(index, size, &leaf, &proof[1..], &root));
            }
        }

        #[test]
        fn consistency_proofs_verify_and_tampering_fails(n in 1u64..200, seed in any::<u64>()) {
            let t = tree(&leaves(n as usize));
            let to = 1 + seed % n;
            let from = 1 + (seed / 11) % to;
            let (from_root, to_root) = (t.root(from).unwrap(), t.root(to).unwrap());
            let proof = t.consistency_proof(from, to).unwrap();
            prop_assert!(verify_consistency(from, to, &from_root, &to_root, &proof));
            let other = leaf_hash(b"other");
            prop_assert!(!verify_consistency(from, to, &other, &to_root, &proof));
            if from < to {
                prop_assert!(!verify_consistency(from, to, &from_root, &other, &proof));
                let mut bad = proof.clone();
                bad[0] = other;
                prop_assert!(!verify_consistency(from, to, &from_root, &to_root, &bad));
            }
        }
    }
}
