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
    /// The answer needs leaves that the tree no longer holds: read the leaves of `tile` from
    /// storage, add them to the [`Tiles`] and ask again.
    #[error("the leaves of tile {tile} must be read from storage")]
    TileNeeded { tile: u64 },
    /// Leaves read for a tile do not hash to the node the tree holds for it.
    #[error("the leaves read for tile {tile} do not match the tree")]
    TileMismatch { tile: u64 },
}

/// An append-only Merkle tree.
///
/// `levels[k]` holds the hashes of the perfect subtrees of height `k` (leaves
/// `i * 2^k .. (i + 1) * 2^k`). A tree made with [`Tree::with_tile_height`]`(h)` keeps the
/// levels below `h` only for its last, incomplete tile of `2^h` leaves: its memory is about
/// `64 / 2^h` bytes per leaf instead of 64, and what the dropped levels held is recomputed from
/// a tile's leaves, which the caller reads back from storage when an answer needs them
/// ([`TreeError::TileNeeded`]). Every node at height `h` or above stays in memory, and so do
/// the nodes of the last tile, so appending and the root of the whole tree never need storage.
#[derive(Debug, Clone, Default)]
pub struct Tree {
    levels: Vec<Vec<Hash>>,
    /// Levels below this keep only the last tile's nodes (0: every level is whole).
    tile_height: u32,
    /// Leaves whose nodes below `tile_height` were dropped: a multiple of the tile size.
    dropped: u64,
}

/// The leaves of whole tiles, read back from storage, for a tree that dropped them.
#[derive(Debug, Clone, Default)]
pub struct Tiles {
    leaves: std::collections::HashMap<u64, Vec<Hash>>,
}

impl Tiles {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn contains(&self, tile: u64) -> bool {
        self.leaves.contains_key(&tile)
    }
}

/// MTH of `leaves` (RFC 9162 2.1.1).
fn mth(leaves: &[Hash]) -> Hash {
    match leaves {
        [] => empty_root(),
        [leaf] => *leaf,
        _ => {
            let k = usize::try_from(split(leaves.len() as u64)).unwrap_or(usize::MAX);
            let (left, right) = leaves.split_at(k.min(leaves.len()));
            node_hash(&mth(left), &mth(right))
        }
    }
}

impl Tree {
    /// A tree that keeps every node.
    pub fn new() -> Self {
        Self::default()
    }

    /// A tree that keeps the levels below `height` only for its last tile of `2^height`
    /// leaves (see [`Tree`]).
    pub fn with_tile_height(height: u32) -> Self {
        Self {
            tile_height: height.min(32),
            ..Self::default()
        }
    }

    /// Leaves per tile (1 for a tree that keeps every node).
    pub fn tile_size(&self) -> u64 {
        1 << self.tile_height
    }

    /// How many hashes the tree holds in memory.
    pub fn held(&self) -> usize {
        self.levels.iter().map(Vec::len).sum()
    }

    /// Adds to `tiles` the leaf hashes of a dropped `tile`, in order, as read back from
    /// storage, once they hash to the node the tree holds for the whole tile: a proof is never
    /// built from altered leaves.
    pub fn add_tile(
        &self,
        tiles: &mut Tiles,
        tile: u64,
        leaves: Vec<Hash>,
    ) -> Result<(), TreeError> {
        let held = self.node(self.tile_height as usize, tile);
        if leaves.len() as u64 == self.tile_size() && held == Some(mth(&leaves)) {
            tiles.leaves.insert(tile, leaves);
            Ok(())
        } else {
            Err(TreeError::TileMismatch { tile })
        }
    }

    /// Number of leaves.
    pub fn len(&self) -> u64 {
        self.count(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The index of the first node held at `level`.
    fn first(&self, level: usize) -> u64 {
        if (level as u32) < self.tile_height {
            self.dropped >> level
        } else {
            0
        }
    }

    /// How many nodes `level` has had, held or dropped.
    fn count(&self, level: usize) -> u64 {
        self.first(level) + self.levels.get(level).map_or(0, |l| l.len() as u64)
    }

    /// The node at `level`, `index`, if held.
    fn node(&self, level: usize, index: u64) -> Option<Hash> {
        let offset = index.checked_sub(self.first(level))?;
        self.levels
            .get(level)?
            .get(usize::try_from(offset).ok()?)
            .copied()
    }

    /// Appends a leaf, given its leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        let mut level = 0;
        let mut hash = leaf;
        loop {
            if self.levels.len() <= level {
                self.levels.push(Vec::new());
            }
            let count = self.count(level);
            let Some(nodes) = self.levels.get_mut(level) else {
                return;
            };
            nodes.push(hash);
            // The new node is number `count`: a left child (even) waits for its sibling.
            if count.is_multiple_of(2) {
                break;
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
        // A tile just completed: its node at `tile_height` is made; drop what is below it.
        if self.tile_height > 0 && self.len().is_multiple_of(self.tile_size()) {
            self.dropped = self.len();
            for nodes in self.levels.iter_mut().take(self.tile_height as usize) {
                nodes.clear();
            }
        }
    }

    /// The leaf hash at `index`.
    pub fn leaf(&self, index: u64, tiles: &Tiles) -> Result<Hash, TreeError> {
        if index >= self.len() {
            return Err(TreeError::NoSuchLeaf {
                index,
                size: self.len(),
            });
        }
        self.subtree(0, index, 1, tiles)
    }

    /// MTH of leaves `start .. start + size`, where `start` is a multiple of the largest power of
    /// two not above `size` (always true of the ranges RFC 9162's recursions visit).
    fn subtree(&self, depth: u32, start: u64, size: u64, tiles: &Tiles) -> Result<Hash, TreeError> {
        if size.is_power_of_two() {
            let level = size.trailing_zeros();
            if let Some(hash) = self.node(level as usize, start >> level) {
                return Ok(hash);
            }
            if level < self.tile_height && start < self.dropped {
                let tile = start >> self.tile_height;
                let leaves = tiles
                    .leaves
                    .get(&tile)
                    .filter(|l| l.len() as u64 == self.tile_size())
                    .ok_or(TreeError::TileNeeded { tile })?;
                let from = usize::try_from(start - (tile << self.tile_height)).unwrap_or(0);
                let to = from + usize::try_from(size).unwrap_or(0);
                return Ok(mth(leaves.get(from..to).unwrap_or(&[])));
            }
        }
        if size <= 1 || depth > 64 {
            // Not reached for ranges inside the tree.
            return Err(TreeError::NoSuchLeaf {
                index: start,
                size: self.len(),
            });
        }
        let k = split(size);
        Ok(node_hash(
            &self.subtree(depth + 1, start, k, tiles)?,
            &self.subtree(depth + 1, start + k, size - k, tiles)?,
        ))
    }

    fn check_size(&self, size: u64) -> Result<(), TreeError> {
        if size > self.len() {
            return Err(TreeError::TooLarge {
                size,
                len: self.len(),
            });
        }
        Ok(())
    }

    /// The root of the first `size` leaves.
    pub fn root(&self, size: u64, tiles: &Tiles) -> Result<Hash, TreeError> {
        self.check_size(size)?;
        if size == 0 {
            return Ok(empty_root());
        }
        self.subtree(0, 0, size, tiles)
    }

    /// The audit path of leaf `index` in the tree of the first `size` leaves (RFC 9162 2.1.3.1).
    pub fn inclusion_proof(
        &self,
        index: u64,
        size: u64,
        tiles: &Tiles,
    ) -> Result<Vec<Hash>, TreeError> {
        self.check_size(size)?;
        if index >= size {
            return Err(TreeError::NoSuchLeaf { index, size });
        }
        let mut proof = Vec::new();
        self.path(index, 0, size, tiles, &mut proof)?;
        Ok(proof)
    }

    fn path(
        &self,
        m: u64,
        start: u64,
        n: u64,
        tiles: &Tiles,
        proof: &mut Vec<Hash>,
    ) -> Result<(), TreeError> {
        if n <= 1 {
            return Ok(());
        }
        let k = split(n);
        if m < k {
            self.path(m, start, k, tiles, proof)?;
            proof.push(self.subtree(0, start + k, n - k, tiles)?);
        } else {
            self.path(m - k, start + k, n - k, tiles, proof)?;
            proof.push(self.subtree(0, start, k, tiles)?);
        }
        Ok(())
    }

    /// The consistency proof between the trees of the first `from` and `to` leaves
    /// (RFC 9162 2.1.4.1).
    pub fn consistency_proof(
        &self,
        from: u64,
        to: u64,
        tiles: &Tiles,
    ) -> Result<Vec<Hash>, TreeError> {
        if from == 0 || from > to {
            return Err(TreeError::BadRange { from, to });
        }
        self.check_size(to)?;
        let mut proof = Vec::new();
        self.subproof(from, 0, to, true, tiles, &mut proof)?;
        Ok(proof)
    }

    fn subproof(
        &self,
        m: u64,
        start: u64,
        n: u64,
        whole: bool,
        tiles: &Tiles,
        proof: &mut Vec<Hash>,
    ) -> Result<(), TreeError> {
        if m == n {
            if !whole {
                proof.push(self.subtree(0, start, n, tiles)?);
            }
            return Ok(());
        }
        let k = split(n);
        if m <= k {
            self.subproof(m, start, k, whole, tiles, proof)?;
            proof.push(self.subtree(0, start + k, n - k, tiles)?);
        } else {
            self.subproof(m - k, start + k, n - k, false, tiles, proof)?;
            proof.push(self.subtree(0, start, k, tiles)?);
        }
        Ok(())
    }

    /// The compact range of the first `size` leaves, for exports that start there, and for
    /// the root of the tree with further leaves (`compact_range(len())` never needs tiles).
    pub fn compact_range(&self, size: u64, tiles: &Tiles) -> Result<CompactRange, TreeError> {
        self.check_size(size)?;
        let mut nodes = Vec::new();
        let mut start = 0;
        for bit in (0..64).rev() {
            let part = 1u64 << bit;
            if size & part != 0 {
                nodes.push(self.subtree(0, start, part, tiles)?);
                start += part;
            }
        }
        Ok(CompactRange { len: size, nodes })
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
        assert_eq!(tree(&[leaf]).root(1, &Tiles::new()).unwrap(), leaf);
    }

    #[test]
    fn out_of_range_requests_are_refused() {
        let t = tree(&leaves(5));
        let none = Tiles::new();
        assert_eq!(
            t.root(6, &none),
            Err(TreeError::TooLarge { size: 6, len: 5 })
        );
        assert_eq!(
            t.inclusion_proof(5, 5, &none),
            Err(TreeError::NoSuchLeaf { index: 5, size: 5 })
        );
        assert_eq!(
            t.consistency_proof(0, 3, &none),
            Err(TreeError::BadRange { from: 0, to: 3 })
        );
        assert_eq!(
            t.consistency_proof(4, 3, &none),
            Err(TreeError::BadRange { from: 4, to: 3 })
        );
        assert_eq!(
            t.leaf(5, &none),
            Err(TreeError::NoSuchLeaf { index: 5, size: 5 })
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
            let none = Tiles::new();
            for size in 0..=n {
                prop_assert_eq!(t.root(size as u64, &none).unwrap(), reference_root(&leaves[..size]));
                prop_assert_eq!(t.compact_range(size as u64, &none).unwrap().root(), reference_root(&leaves[..size]));
            }
        }

        #[test]
        fn inclusion_proofs_verify_and_tampering_fails(n in 1u64..200, seed in any::<u64>()) {
            let t = tree(&leaves(n as usize));
            let none = Tiles::new();
            let size = 1 + seed % n;
            let index = (seed / 7) % size;
            let root = t.root(size, &none).unwrap();
            let leaf = t.leaf(index, &none).unwrap();
            let proof = t.inclusion_proof(index, size, &none).unwrap();
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
            let none = Tiles::new();
            let to = 1 + seed % n;
            let from = 1 + (seed / 11) % to;
            let (from_root, to_root) = (t.root(from, &none).unwrap(), t.root(to, &none).unwrap());
            let proof = t.consistency_proof(from, to, &none).unwrap();
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

    /// Answers from a tree that dropped its lower levels, reading tiles on demand as a server
    /// does from storage; `reads` counts the tiles read.
    fn with_tiles<T>(
        tree: &Tree,
        all: &[Hash],
        mut ask: impl FnMut(&Tiles) -> Result<T, TreeError>,
        reads: &mut usize,
    ) -> Result<T, TreeError> {
        let mut tiles = Tiles::new();
        loop {
            match ask(&tiles) {
                Err(TreeError::TileNeeded { tile }) if !tiles.contains(tile) => {
                    *reads += 1;
                    let start = (tile * 4) as usize;
                    tree.add_tile(&mut tiles, tile, all[start..start + 4].to_vec())?;
                }
                other => return other,
            }
        }
    }

    #[test]
    fn a_tiled_tree_drops_the_levels_below_its_tiles() {
        let all = leaves(1000);
        let mut t = Tree::with_tile_height(4);
        for l in &all {
            t.push(*l);
        }
        let held = t.held();
        // 1,000 leaves: 62 nodes at height 4, 31 at 5, ... and the last tile's 8 leaves and
        // their 4 + 2 + 1 parents; a whole tree holds 1,999.
        assert!(held < 140, "{held} nodes held");
        assert_eq!(t.len(), 1000);
        // The whole tree's root, and the compact range at its end, need no tile.
        let none = Tiles::new();
        assert_eq!(t.root(1000, &none).unwrap(), reference_root(&all));
        assert!(t.compact_range(1000, &none).is_ok());
        assert_eq!(t.leaf(3, &none), Err(TreeError::TileNeeded { tile: 0 }));
        assert_eq!(t.leaf(999, &none).unwrap(), all[999]);
        // Leaves read back are checked against the tile's node before use.
        let mut tiles = Tiles::new();
        let mut altered = all[32..48].to_vec();
        altered[5] = leaf_hash(b"altered");
        assert_eq!(
            t.add_tile(&mut tiles, 2, altered),
            Err(TreeError::TileMismatch { tile: 2 })
        );
        assert_eq!(
            t.add_tile(&mut tiles, 2, all[32..47].to_vec()),
            Err(TreeError::TileMismatch { tile: 2 })
        );
        assert_eq!(
            t.add_tile(&mut tiles, 62, all[992..].to_vec()),
            Err(TreeError::TileMismatch { tile: 62 })
        );
        assert!(!tiles.contains(2) && !tiles.contains(62));
        assert_eq!(t.add_tile(&mut tiles, 2, all[32..48].to_vec()), Ok(()));
        assert_eq!(t.leaf(37, &tiles).unwrap(), all[37]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// A tree with tiles of 4 leaves gives exactly the whole tree's roots and proofs, reading
        /// at most three tiles for any one answer.
        #[test]
        fn a_tiled_tree_answers_as_a_whole_one(n in 1u64..300, seed in any::<u64>()) {
            let all = leaves(n as usize);
            let whole = tree(&all);
            let mut tiled = Tree::with_tile_height(2);
            for l in &all {
                tiled.push(*l);
            }
            let none = Tiles::new();
            let to = 1 + seed % n;
            let from = 1 + (seed / 11) % to;
            let index = (seed / 7) % to;
            let mut reads = 0;
            prop_assert_eq!(
                with_tiles(&tiled, &all, |t| tiled.root(to, t), &mut reads).unwrap(),
                whole.root(to, &none).unwrap()
            );
            prop_assert!(reads <= 1);
            reads = 0;
            prop_assert_eq!(
                with_tiles(&tiled, &all, |t| tiled.leaf(index, t), &mut reads).unwrap(),
                all[index as usize]
            );
            reads = 0;
            prop_assert_eq!(
                with_tiles(&tiled, &all, |t| tiled.inclusion_proof(index, to, t), &mut reads).unwrap(),
                whole.inclusion_proof(index, to, &none).unwrap()
            );
            prop_assert!(reads <= 2, "{} tiles read", reads);
            reads = 0;
            prop_assert_eq!(
                with_tiles(&tiled, &all, |t| tiled.consistency_proof(from, to, t), &mut reads).unwrap(),
                whole.consistency_proof(from, to, &none).unwrap()
            );
            prop_assert!(reads <= 3, "{} tiles read", reads);
            reads = 0;
            prop_assert_eq!(
                with_tiles(&tiled, &all, |t| tiled.compact_range(from, t), &mut reads).unwrap(),
                whole.compact_range(from, &none).unwrap()
            );
            // Appending after answers still gives the whole tree's root.
            let more = leaf_hash(b"more");
            tiled.push(more);
            let mut grown = all.clone();
            grown.push(more);
            prop_assert_eq!(tiled.root(n + 1, &none).unwrap(), reference_root(&grown));
        }
    }
}
