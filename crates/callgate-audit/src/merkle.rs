//! The RFC 6962 (RFC 9162 §2.1) Merkle tree over audit records.
//!
//! Leaf and node hashes are domain-separated (`0x00` and `0x01` prefixes), so a leaf can never
//! be passed off as an interior node. Proof generation follows the RFC's recursive `PATH` and
//! `SUBPROOF` definitions over the leaf hashes; verification follows RFC 9162 §2.1.3.2 and
//! §2.1.4.2 and is checked against the transparency-dev vectors in the tests.

use sha2::{Digest, Sha256};
use std::ops::Range;
use thiserror::Error;

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// The root of the empty tree: SHA-256 of the empty string.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// `MTH({d}) = SHA-256(0x00 || d)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The largest power of two strictly smaller than `n` (`n > 1`).
fn split(n: usize) -> usize {
    debug_assert!(n > 1);
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// The Merkle tree hash of a list of leaf hashes.
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n);
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// The audit path for leaf `index` in the tree made of `leaves` (RFC 6962 `PATH`).
///
/// Returns `None` when `index` is outside the tree.
pub fn inclusion_proof(leaves: &[Hash], index: usize) -> Option<Vec<Hash>> {
    let ranges = inclusion_ranges(leaves.len() as u64, index as u64)?;
    Some(ranges.into_iter().map(|r| range_root(leaves, r)).collect())
}

/// The consistency proof between the tree of the first `size1` leaves and the tree of all
/// `leaves` (RFC 6962 `PROOF`). Returns `None` when `size1` exceeds the tree.
pub fn consistency_proof(leaves: &[Hash], size1: usize) -> Option<Vec<Hash>> {
    let ranges = consistency_ranges(leaves.len() as u64, size1 as u64)?;
    Some(ranges.into_iter().map(|r| range_root(leaves, r)).collect())
}

fn range_root(leaves: &[Hash], r: Range<u64>) -> Hash {
    root(&leaves[r.start as usize..r.end as usize])
}

/// The audit path for leaf `index` in a tree of `size` leaves, as the leaf ranges whose
/// Merkle tree hashes make it up, in proof order. A store that keeps the roots of large
/// subtrees (or reads leaves a block at a time) proves a record without reading the whole
/// log. `None` when `index` is outside the tree.
pub fn inclusion_ranges(size: u64, index: u64) -> Option<Vec<Range<u64>>> {
    if index >= size {
        return None;
    }
    let mut out = Vec::new();
    path(0..size, index, &mut out);
    Some(out)
}

fn path(r: Range<u64>, m: u64, out: &mut Vec<Range<u64>>) {
    let n = r.end - r.start;
    if n <= 1 {
        return;
    }
    let k = split(n as usize) as u64;
    let mid = r.start + k;
    if m < k {
        path(r.start..mid, m, out);
        out.push(mid..r.end);
    } else {
        path(mid..r.end, m - k, out);
        out.push(r.start..mid);
    }
}

/// The consistency proof between the trees of `size1` and `size` leaves, as leaf ranges (see
/// [`inclusion_ranges`]). `None` when `size1` exceeds `size`.
pub fn consistency_ranges(size: u64, size1: u64) -> Option<Vec<Range<u64>>> {
    if size1 > size {
        return None;
    }
    let mut out = Vec::new();
    if size1 > 0 && size1 < size {
        subproof(0..size, size1, true, &mut out);
    }
    Some(out)
}

fn subproof(r: Range<u64>, m: u64, complete: bool, out: &mut Vec<Range<u64>>) {
    let n = r.end - r.start;
    if m == n {
        if !complete {
            out.push(r);
        }
        return;
    }
    let k = split(n as usize) as u64;
    let mid = r.start + k;
    if m <= k {
        subproof(r.start..mid, m, complete, out);
        out.push(mid..r.end);
    } else {
        subproof(mid..r.end, m - k, false, out);
        out.push(r.start..mid);
    }
}

/// How the Merkle tree hash of the leaves in `r` is made: `Ok(level)` when `r` is one perfect
/// subtree aligned to its size (`2^level` leaves starting at a multiple of `2^level`: such a
/// subtree never changes once its leaves exist, so its root can be kept), else `Err(mid)`,
/// the split point: `MTH(r) = node_hash(MTH(start..mid), MTH(mid..end))`. Every range a
/// proof above names splits into aligned perfect subtrees this way. `r` must not be empty.
pub fn range_shape(r: &Range<u64>) -> Result<u32, u64> {
    let n = r.end - r.start;
    if n.is_power_of_two() && r.start.is_multiple_of(n) {
        Ok(n.trailing_zeros())
    } else {
        Err(r.start + split(n as usize) as u64)
    }
}

/// Why a proof did not verify.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProofError {
    #[error("leaf index {index} is outside a tree of size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("the proof has {got} hashes; a proof for these sizes has {want}")]
    WrongLength { got: usize, want: usize },
    #[error("the second tree ({size2}) is smaller than the first ({size1})")]
    Shrinking { size1: u64, size2: u64 },
    #[error("the proof must be empty for these sizes")]
    ProofNotEmpty,
    #[error("consistency with the empty tree proves nothing")]
    EmptyTree,
    #[error("the proof is empty")]
    EmptyProof,
    #[error("the computed root does not match")]
    RootMismatch,
}

/// Hashes the proof's inner part (the part below the level where the paths to `index` and
/// `size - 1` meet), choosing sides by the bits of `index`.
fn chain_inner(mut seed: Hash, proof: &[Hash], index: u64) -> Hash {
    for (i, h) in proof.iter().enumerate() {
        seed = if (index >> i) & 1 == 0 {
            node_hash(&seed, h)
        } else {
            node_hash(h, &seed)
        };
    }
    seed
}

/// Like [`chain_inner`], but only the nodes where the seed is the right child: this rebuilds
/// the root of the smaller tree in a consistency proof.
fn chain_inner_right(mut seed: Hash, proof: &[Hash], index: u64) -> Hash {
    for (i, h) in proof.iter().enumerate() {
        if (index >> i) & 1 == 1 {
            seed = node_hash(h, &seed);
        }
    }
    seed
}

/// The border part of a proof: the seed is always the right child.
fn chain_border_right(mut seed: Hash, proof: &[Hash]) -> Hash {
    for h in proof {
        seed = node_hash(h, &seed);
    }
    seed
}

/// Splits the length of an inclusion proof for `index` in a tree of `size` into its inner
/// and border parts.
fn decompose(index: u64, size: u64) -> (usize, usize) {
    let inner = (u64::BITS - (index ^ (size - 1)).leading_zeros()) as usize;
    let border = (index >> inner).count_ones() as usize;
    (inner, border)
}

/// The root an inclusion proof leads to.
pub fn root_from_inclusion_proof(
    index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
) -> Result<Hash, ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let (inner, border) = decompose(index, size);
    if proof.len() != inner + border {
        return Err(ProofError::WrongLength {
            got: proof.len(),
            want: inner + border,
        });
    }
    let r = chain_inner(*leaf, &proof[..inner], index);
    Ok(chain_border_right(r, &proof[inner..]))
}

/// Checks that `leaf` is at `index` in the tree of `size` with `root`.
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if &root_from_inclusion_proof(index, size, leaf, proof)? == root {
        Ok(())
    } else {
        Err(ProofError::RootMismatch)
    }
}

/// Checks that the tree of `size2` with `root2` extends the tree of `size1` with `root1`.
///
/// Roots are byte strings so that a root of the wrong length is simply one that does not
/// match. Consistency with the empty tree is refused: it proves nothing, and a verifier that
/// asks for it has a bug.
pub fn verify_consistency(
    size1: u64,
    size2: u64,
    proof: &[Hash],
    root1: &[u8],
    root2: &[u8],
) -> Result<(), ProofError> {
    if size2 < size1 {
        return Err(ProofError::Shrinking { size1, size2 });
    }
    if size1 == 0 {
        return Err(ProofError::EmptyTree);
    }
    if size1 == size2 {
        if !proof.is_empty() {
            return Err(ProofError::ProofNotEmpty);
        }
        return if root1 == root2 {
            Ok(())
        } else {
            Err(ProofError::RootMismatch)
        };
    }
    let root1: Hash = root1.try_into().map_err(|_| ProofError::RootMismatch)?;
    let root2: Hash = root2.try_into().map_err(|_| ProofError::RootMismatch)?;
    if proof.is_empty() {
        return Err(ProofError::EmptyProof);
    }
    let (inner, border) = decompose(size1 - 1, size2);
    let shift = size1.trailing_zeros() as usize;
    let inner = inner - shift;
    // When size1 is a power of two its root is itself a node of the bigger tree and the
    // proof does not repeat it.
    let (seed, rest) = if size1 == 1 << shift {
        (root1, proof)
    } else {
        (proof[0], &proof[1..])
    };
    let want = proof.len() - rest.len() + inner + border;
    if proof.len() != want {
        return Err(ProofError::WrongLength {
            got: proof.len(),
            want,
        });
    }
    let mask = (size1 - 1) >> shift;
    let h1 = chain_border_right(
        chain_inner_right(seed, &rest[..inner], mask),
        &rest[inner..],
    );
    if h1 != root1 {
        return Err(ProofError::RootMismatch);
    }
    let h2 = chain_border_right(chain_inner(seed, &rest[..inner], mask), &rest[inner..]);
    if h2 != root2 {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// The right edge of a growing tree: one root per perfect subtree, largest first. Appending a
/// leaf and computing the root both take O(log n), so the writer never rereads old leaves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// Roots of the perfect subtrees that make up the tree, left to right.
    peaks: Vec<Hash>,
}

impl Frontier {
    /// Rebuilds the frontier of a tree from all its leaf hashes.
    pub fn from_leaves<'a>(leaves: impl IntoIterator<Item = &'a Hash>) -> Self {
        let mut f = Frontier::default();
        for l in leaves {
            f.push(*l);
        }
        f
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The peaks, concatenated (32 bytes each), for storing beside a checkpoint.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.peaks.concat()
    }

    /// A frontier stored with [`Frontier::to_bytes`] for a tree of `size` leaves. `None` if the
    /// bytes cannot be the peaks of such a tree. Check the result's root against a signed one
    /// before trusting it.
    pub fn from_bytes(size: u64, bytes: &[u8]) -> Option<Frontier> {
        if !bytes.len().is_multiple_of(32) || bytes.len() / 32 != size.count_ones() as usize {
            return None;
        }
        let peaks = bytes
            .chunks(32)
            .map(|c| Hash::try_from(c).expect("32-byte chunks"))
            .collect();
        Some(Frontier { size, peaks })
    }

    pub fn push(&mut self, leaf: Hash) {
        let mut h = leaf;
        let mut s = self.size;
        // Every trailing one bit of the old size is a perfect subtree the new leaf completes.
        while s & 1 == 1 {
            let left = self.peaks.pop().expect("a peak per set bit");
            h = node_hash(&left, &h);
            s >>= 1;
        }
        self.peaks.push(h);
        self.size += 1;
    }

    /// The root hash of the tree so far.
    pub fn root(&self) -> Hash {
        let mut it = self.peaks.iter().rev();
        let Some(last) = it.next() else {
            return empty_root();
        };
        it.fold(*last, |acc, left| node_hash(left, &acc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    #[test]
    fn empty_tree_root_is_sha256_of_nothing() {
        assert_eq!(
            hex(&root(&[])),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    fn hex(h: &Hash) -> String {
        h.iter().map(|b| format!("{b:02x}")).collect()
    }

    proptest! {
        #[test]
        fn frontier_matches_recursive_root(n in 0usize..300) {
            let l = leaves(n);
            prop_assert_eq!(Frontier::from_leaves(&l).root(), root(&l));
        }

        #[test]
        fn a_stored_frontier_continues_the_same_tree(n in 0usize..200, more in 0usize..50) {
            let l = leaves(n + more);
            let f = Frontier::from_leaves(&l[..n]);
            let mut g = Frontier::from_bytes(n as u64, &f.to_bytes()).unwrap();
            for h in &l[n..] {
                g.push(*h);
            }
            prop_assert_eq!(g.root(), root(&l));
            prop_assert!(Frontier::from_bytes(n as u64 + 1, &f.to_bytes()).is_none() || (n + 1).count_ones() == n.count_ones());
        }

        #[test]
        fn ranges_split_into_aligned_perfect_subtrees(n in 1u64..300, i in 0u64..300, m in 0u64..300) {
            fn mth(l: &[Hash], r: Range<u64>) -> Hash {
                match range_shape(&r) {
                    Ok(level) => {
                        assert_eq!(r.end - r.start, 1 << level);
                        assert_eq!(r.start % (1 << level), 0);
                        root(&l[r.start as usize..r.end as usize])
                    }
                    Err(mid) => node_hash(&mth(l, r.start..mid), &mth(l, mid..r.end)),
                }
            }
            let l = leaves(n as usize);
            prop_assert_eq!(mth(&l, 0..n), root(&l));
            let i = i % n;
            for r in inclusion_ranges(n, i).unwrap() {
                prop_assert_eq!(mth(&l, r.clone()), root(&l[r.start as usize..r.end as usize]));
            }
            let m = m % (n + 1);
            for r in consistency_ranges(n, m).unwrap() {
                prop_assert_eq!(mth(&l, r.clone()), root(&l[r.start as usize..r.end as usize]));
            }
        }

        #[test]
        fn generated_inclusion_proofs_verify(n in 1usize..200, i in 0usize..200) {
            let l = leaves(n);
            let i = i % n;
            let p = inclusion_proof(&l, i).unwrap();
            prop_assert_eq!(verify_inclusion(i as u64, n as u64, &l[i], &p, &root(&l)), Ok(()));
            // A different leaf at that index never verifies.
            let other = leaf_hash(b"other");
            prop_assert!(verify_inclusion(i as u64, n as u64, &other, &p, &root(&l)).is_err());
        }

        #[test]
        fn generated_consistency_proofs_verify(n in 0usize..200, m in 0usize..200) {
            let l = leaves(n);
            let m = if n == 0 { 0 } else { m % (n + 1) };
            let p = consistency_proof(&l, m).unwrap();
            prop_assert_eq!(
                verify_consistency(m as u64, n as u64, &p, &root(&l[..m]), &root(&l)),
                if m == 0 { Err(ProofError::EmptyTree) } else { Ok(()) }
            );
            if m > 0 && m < n {
                // A rewritten old leaf breaks consistency.
                let mut forged = l.clone();
                forged[m - 1] = leaf_hash(b"forged");
                prop_assert!(verify_consistency(m as u64, n as u64, &p, &root(&forged[..m]), &root(&l)).is_err());
            }
        }
    }
}
