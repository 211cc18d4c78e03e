//! Verifying a whole log: every record against its leaf hash and index, every checkpoint's
//! signature, root and consistency with the one before, and, optionally, a checkpoint kept
//! outside Callgate's control.
//!
//! The verifier is fed rows in index order ([`LogVerifier::push`]) so a store can stream them.
//! The first problem ends verification and names the first index that cannot be trusted.
//!
//! Keys: the verifier trusts the keys given to it (`--key`) or, without any, the first key the
//! log announces (reported, so an auditor can compare it with the published one). A key
//! announced later becomes trusted once a checkpoint covering its announcement verifies under an
//! already trusted key; a key rotation also retires the previous key from then on, so later
//! checkpoints must carry the new key.

use std::fmt;

use crate::merkle::{self, Frontier, Hash};
use crate::note::{Checkpoint, Note, NoteError, Verifier};
use crate::record::parse_record;

/// One stored row: the record bytes (or `None` if retention pruned them), the stored leaf
/// hash and, when the store keeps them, the columns it indexes the record by (searches trust
/// them, so they must say what the record says).
pub struct Row {
    pub index: u64,
    pub body: Option<Vec<u8>>,
    pub leaf_hash: Vec<u8>,
    pub columns: Option<RowColumns>,
}

/// A store's index columns for one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowColumns {
    pub kind: String,
    pub time_ms: u64,
    pub request_id: Option<String>,
    pub session: Option<String>,
    pub subject: Option<String>,
    pub function: Option<String>,
    pub decision: Option<String>,
}

/// The first thing found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The first index that cannot be trusted.
    pub index: u64,
    pub reason: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "first bad index {}: {}", self.index, self.reason)
    }
}

/// What a successful verification covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub tree_size: u64,
    pub root: Hash,
    pub checkpoints: usize,
    /// The largest checkpointed size: records beyond it are not yet covered by a signature.
    pub checkpointed_size: u64,
    pub pruned: u64,
    /// Keys trusted by the end, in the order they became trusted.
    pub keys: Vec<String>,
    /// True when no key was given and the first announced key was taken on trust.
    pub trusted_first_key: bool,
}

/// Streaming log verification.
pub struct LogVerifier {
    origin: String,
    checkpoints: Vec<(u64, String)>,
    next_checkpoint: usize,
    external: Option<String>,
    /// The size the external checkpoint claims, if it parses.
    external_size: Option<u64>,
    leaves: Vec<Hash>,
    frontier: Frontier,
    trusted: Vec<Verifier>,
    /// Announced keys: where, the key, and the key it replaces (rotations).
    announced: Vec<(u64, Verifier, Option<Verifier>)>,
    pinned: bool,
    trusted_first_key: bool,
    last_good: Option<(u64, Hash)>,
    pruned: u64,
    /// Records found without their body, to be accounted for by a prune record.
    bodiless: Vec<u64>,
    /// The index ranges the prune records seen so far list.
    /// The index ranges prune records list, with each prune record's own index: only those
    /// under a verified checkpoint count (anyone can append a record to the database).
    pruned_ranges: Vec<(u64, [u64; 2])>,
    checked: usize,
}

impl LogVerifier {
    /// `checkpoints` are the stored signed notes with the size they claim; `external` is a
    /// signed checkpoint obtained elsewhere; `keys` pins the trusted keys (empty: trust the
    /// first key the log announces).
    pub fn new(
        origin: &str,
        mut checkpoints: Vec<(u64, String)>,
        external: Option<String>,
        keys: Vec<Verifier>,
    ) -> Self {
        checkpoints.sort_by_key(|c| c.0);
        LogVerifier {
            origin: origin.to_string(),
            checkpoints,
            next_checkpoint: 0,
            external_size: external
                .as_deref()
                .and_then(|n| Note::parse(n).ok())
                .and_then(|n| Checkpoint::parse(&n.text).ok())
                .map(|c| c.size),
            external,
            leaves: Vec::new(),
            frontier: Frontier::default(),
            pinned: !keys.is_empty(),
            trusted: keys,
            announced: Vec::new(),
            trusted_first_key: false,
            last_good: None,
            pruned: 0,
            bodiless: Vec::new(),
            pruned_ranges: Vec::new(),
            checked: 0,
        }
    }

    fn fail(index: u64, reason: impl Into<String>) -> Failure {
        Failure {
            index,
            reason: reason.into(),
        }
    }

    /// Feeds the next row.
    pub fn push(&mut self, row: Row) -> Result<(), Failure> {
        let position = self.frontier.size();
        // Checkpoints at the current size are checked before the next record is taken, so a
        // failure names the earliest index.
        self.check_checkpoints_at(position)?;
        if row.index != position {
            return Err(Self::fail(
                position,
                format!(
                    "record {position} is missing (the next stored record is {}): deleted or reordered",
                    row.index
                ),
            ));
        }
        let stored: Hash = row
            .leaf_hash
            .as_slice()
            .try_into()
            .map_err(|_| Self::fail(position, "the stored leaf hash is not a SHA-256 hash"))?;
        match &row.body {
            Some(body) => {
                if merkle::leaf_hash(body) != stored {
                    return Err(Self::fail(
                        position,
                        "the record does not match its leaf hash: altered",
                    ));
                }
                let record = parse_record(position, body)
                    .map_err(|e| Self::fail(position, e.to_string()))?;
                if let Some(stored) = &row.columns {
                    let c = record.event.columns();
                    let expected = RowColumns {
                        kind: c.kind.to_string(),
                        time_ms: c.time_ms,
                        request_id: c.request_id,
                        session: c.session,
                        subject: c.subject,
                        function: c.function,
                        decision: c.decision,
                    };
                    if stored != &expected {
                        return Err(Self::fail(
                            position,
                            "the store's index columns do not match the record: searches would be misled",
                        ));
                    }
                }
                if let crate::record::Event::Prune(e) = &record.event {
                    // Ascending, well-formed ranges of earlier records only.
                    let ordered = e.indexes.iter().all(|r| r[0] <= r[1] && r[1] < position)
                        && e.indexes.windows(2).all(|w| w[0][1] < w[1][0]);
                    if !ordered {
                        return Err(Self::fail(
                            position,
                            "the prune record's index ranges are not ascending ranges of earlier records",
                        ));
                    }
                    self.pruned_ranges
                        .extend(e.indexes.iter().map(|r| (position, *r)));
                }
                if let Some(k) = record.event.announced_key() {
                    let parse = |k: &str| {
                        Verifier::parse(k).map_err(|e| {
                            Self::fail(position, format!("the announced key is unusable: {e}"))
                        })
                    };
                    let v = parse(k)?;
                    let previous = match &record.event {
                        crate::record::Event::KeyRotation(r) => Some(parse(&r.previous_key)?),
                        _ => None,
                    };
                    if !self.pinned && self.trusted.is_empty() {
                        self.trusted.push(v.clone());
                        self.trusted_first_key = true;
                    }
                    self.announced.push((position, v, previous));
                }
            }
            None => {
                // Retention prunes call records only; any other record without its body was
                // erased.
                if row
                    .columns
                    .as_ref()
                    .is_some_and(|c| !c.kind.starts_with("call"))
                {
                    return Err(Self::fail(
                        position,
                        "the record's body is gone, and it is not a call record retention may prune",
                    ));
                }
                self.bodiless.push(position);
                self.pruned += 1
            }
        }
        self.leaves.push(stored);
        self.frontier.push(stored);
        Ok(())
    }

    fn check_checkpoints_at(&mut self, size: u64) -> Result<(), Failure> {
        // An external checkpoint is checked when the tree has its size, with the keys trusted
        // then (before a stored checkpoint of that size retires a rotated key): a checkpoint
        // published before a rotation stays verifiable with the key that signed it.
        if self.external_size == Some(size)
            && let Some(note) = self.external.take()
        {
            let last_good = self.last_good;
            self.check_checkpoint(&note, size, "external checkpoint")?;
            self.last_good = last_good.max(self.last_good);
        }
        while let Some((claimed, note)) = self.checkpoints.get(self.next_checkpoint).cloned() {
            if claimed != size {
                break;
            }
            self.next_checkpoint += 1;
            self.check_checkpoint(&note, claimed, "checkpoint")?;
        }
        Ok(())
    }

    /// The index from which records may be bad when a checkpoint's root does not match.
    fn suspect_from(&self) -> u64 {
        self.last_good.map(|(s, _)| s).unwrap_or(0)
    }

    fn check_checkpoint(&mut self, note: &str, claimed: u64, what: &str) -> Result<(), Failure> {
        let size = self.frontier.size();
        let parsed = Note::parse(note)
            .map_err(|e| Self::fail(claimed, format!("{what} at size {claimed}: {e}")))?;
        let cp = Checkpoint::parse(&parsed.text)
            .map_err(|e| Self::fail(claimed, format!("{what} at size {claimed}: {e}")))?;
        if cp.size != claimed {
            return Err(Self::fail(
                claimed.min(cp.size),
                format!("{what} stored for size {claimed} says size {}", cp.size),
            ));
        }
        if cp.origin != self.origin {
            return Err(Self::fail(
                claimed,
                format!(
                    "{what} at size {claimed} names origin {:?}, not {:?}",
                    cp.origin, self.origin
                ),
            ));
        }
        match parsed.verify(&self.trusted) {
            Ok(_) => {}
            Err(NoteError::Unverified) => {
                return Err(Self::fail(
                    claimed,
                    format!("{what} at size {claimed} is not signed by a trusted key: forged"),
                ));
            }
            Err(e) => {
                return Err(Self::fail(
                    claimed,
                    format!("{what} at size {claimed}: {e}: forged"),
                ));
            }
        }
        if cp.size > size {
            return Err(Self::fail(
                size,
                format!(
                    "{what} at size {} but the log holds only {size} records: truncated",
                    cp.size
                ),
            ));
        }
        // Stored checkpoints are checked when the log has exactly their size, so the frontier
        // gives the root in O(log n); only an external checkpoint for an older size needs the
        // prefix recomputed. Two checkpoints whose roots both match the same leaves are
        // consistent with each other by construction.
        let root = if cp.size == size {
            self.frontier.root()
        } else {
            merkle::root(&self.leaves[..cp.size as usize])
        };
        if root != cp.root {
            return Err(Self::fail(
                self.suspect_from().min(cp.size.saturating_sub(1)),
                format!(
                    "the tree of the first {} records does not match the signed {what}: records from index {} on were altered",
                    cp.size,
                    self.suspect_from()
                ),
            ));
        }
        // An external checkpoint older than the newest stored one: prove, as any third party
        // would, that the newer tree extends it.
        if let Some((last_size, last_root)) = self.last_good
            && what != "checkpoint"
            && cp.size > 0
            && cp.size < last_size
        {
            let proof =
                merkle::consistency_proof(&self.leaves[..last_size as usize], cp.size as usize)
                    .expect("sizes are within the tree");
            merkle::verify_consistency(cp.size, last_size, &proof, &cp.root, &last_root).map_err(
                |e| {
                    Self::fail(
                        cp.size,
                        format!("the {what} at {} and the checkpoint at {last_size} are not consistent: {e}", cp.size),
                    )
                },
            )?;
        }
        // Keys announced inside a verified checkpoint become trusted; a rotation retires the
        // key it replaces.
        for (at, v, previous) in &self.announced {
            if *at < cp.size {
                if !self.trusted.contains(v) {
                    self.trusted.push(v.clone());
                }
                if let Some(p) = previous {
                    self.trusted.retain(|t| t != p);
                }
            }
        }
        if self.last_good.is_none_or(|(s, _)| s <= cp.size) {
            self.last_good = Some((cp.size, cp.root));
        }
        self.checked += 1;
        Ok(())
    }

    /// Finishes: checkpoints beyond the end mean truncation; the external checkpoint, if any,
    /// must match the tree at its size.
    pub fn finish(mut self) -> Result<Report, Failure> {
        let size = self.frontier.size();
        self.check_checkpoints_at(size)?;
        if let Some((claimed, note)) = self.checkpoints.get(self.next_checkpoint).cloned() {
            // Its signature first: a forged checkpoint is not evidence of truncation.
            self.check_checkpoint(&note, claimed, "checkpoint")?;
        }
        if let Some(note) = self.external.take() {
            let claimed = Note::parse(&note)
                .ok()
                .and_then(|n| Checkpoint::parse(&n.text).ok())
                .map(|c| c.size)
                .ok_or_else(|| Self::fail(0, "the external checkpoint is not a checkpoint"))?;
            let last_good = self.last_good;
            self.check_checkpoint(&note, claimed, "external checkpoint")?;
            self.last_good = last_good.max(self.last_good);
        }
        // A record without its body is accounted for only by a prune record that lists it
        // and that a verified checkpoint covers (the store's kind column is not evidence: no
        // hash covers it; nor is a prune record anyone could have appended since the last
        // signature — Callgate signs a checkpoint over its prune record before it removes a
        // body). Every prune record lists only earlier records (checked as it was read), so
        // what matters is whether any lists the index: one sorted, merged set of ranges,
        // searched once per body-less record.
        let signed = self.last_good.map_or(0, |(s, _)| s);
        let mut ranges: Vec<[u64; 2]> = std::mem::take(&mut self.pruned_ranges)
            .into_iter()
            .filter(|(at, _)| *at < signed)
            .map(|(_, r)| r)
            .collect();
        ranges.sort_unstable();
        let mut merged: Vec<[u64; 2]> = Vec::with_capacity(ranges.len());
        for r in ranges {
            match merged.last_mut() {
                Some(last) if r[0] <= last[1].saturating_add(1) => last[1] = last[1].max(r[1]),
                _ => merged.push(r),
            }
        }
        if let Some(&at) = self
            .bodiless
            .iter()
            .find(|&&at| !crate::record::ranges_cover(&merged, at))
        {
            return Err(Self::fail(
                at,
                "the record's body is gone and no signed prune record lists it: erased",
            ));
        }
        Ok(Report {
            tree_size: size,
            root: self.frontier.root(),
            checkpoints: self.checked,
            checkpointed_size: self.last_good.map(|(s, _)| s).unwrap_or(0),
            pruned: self.pruned,
            keys: self.trusted.iter().map(|v| v.to_string()).collect(),
            trusted_first_key: self.trusted_first_key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::note::Signer;
    use crate::record::{Event, StartEvent, StopEvent, leaf_bytes};

    const ORIGIN: &str = "test.example/audit";

    struct Log {
        rows: Vec<(u64, Option<Vec<u8>>, Hash)>,
        checkpoints: Vec<(u64, String)>,
        signer: Signer,
    }

    /// Record 15 of every test log is a prune record for records 3 to 8.
    fn event(i: u64, signer: &Signer) -> Event {
        if i == 15 {
            return Event::Prune(crate::record::PruneEvent {
                time_ms: i,
                before_ms: 10,
                indexes: vec![[3, 8]],
            });
        }
        if i == 0 {
            Event::Start(StartEvent {
                time_ms: 0,
                version: "test".into(),
                config_sha256: String::new(),
                policy_sha256: String::new(),
                key: signer.verifier().to_string(),
            })
        } else {
            Event::Stop(StopEvent {
                time_ms: i,
                reason: format!("record {i}"),
            })
        }
    }

    /// A log of `n` records with a checkpoint every `every` records and one at the end.
    fn log(n: u64, every: u64) -> Log {
        let signer = Signer::from_seed(ORIGIN, [1; 32]).unwrap();
        let mut rows = Vec::new();
        let mut leaves = Vec::new();
        let mut checkpoints = Vec::new();
        for i in 0..n {
            let body = leaf_bytes(i, &event(i, &signer).encode().unwrap().json);
            let h = merkle::leaf_hash(&body);
            leaves.push(h);
            rows.push((i, Some(body), h));
            if (i + 1) % every == 0 || i + 1 == n {
                let cp = Checkpoint {
                    origin: ORIGIN.into(),
                    size: i + 1,
                    root: merkle::root(&leaves),
                };
                checkpoints.push((i + 1, cp.sign(&[&signer]).unwrap()));
            }
        }
        Log {
            rows,
            checkpoints,
            signer,
        }
    }

    fn verify(l: &Log, key: Option<Verifier>) -> Result<Report, Failure> {
        let mut v = LogVerifier::new(
            ORIGIN,
            l.checkpoints.clone(),
            None,
            key.into_iter().collect(),
        );
        for (index, body, h) in &l.rows {
            v.push(Row {
                index: *index,
                body: body.clone(),
                leaf_hash: h.to_vec(),
                columns: None,
            })?;
        }
        v.finish()
    }

    #[test]
    fn an_intact_log_verifies() {
        let l = log(40, 7);
        let r = verify(&l, Some(l.signer.verifier().clone())).unwrap();
        assert_eq!(r.tree_size, 40);
        assert_eq!(r.checkpoints, 6);
        assert_eq!(r.checkpointed_size, 40);
        assert!(!r.trusted_first_key);
        assert!(verify(&l, None).unwrap().trusted_first_key);
    }

    /// Table of tamperings, each with the index verification must name.
    #[test]
    fn tampering_names_the_first_bad_index() {
        type Tamper = fn(&mut Log);
        let cases: Vec<(&str, Tamper, u64)> = vec![
            (
                "alter a record",
                |l| {
                    let b = l.rows[12].1.as_mut().unwrap();
                    let s = String::from_utf8(b.clone())
                        .unwrap()
                        .replace("record 12", "record 99");
                    *b = s.into_bytes();
                },
                12,
            ),
            (
                "alter a record and its leaf hash",
                |l| {
                    let s = String::from_utf8(l.rows[12].1.clone().unwrap())
                        .unwrap()
                        .replace("record 12", "record 99");
                    l.rows[12].2 = merkle::leaf_hash(s.as_bytes());
                    l.rows[12].1 = Some(s.into_bytes());
                },
                7,
            ),
            (
                "delete a record",
                |l| {
                    l.rows.remove(20);
                },
                20,
            ),
            (
                "swap two records",
                |l| {
                    l.rows.swap(30, 31);
                },
                30,
            ),
            (
                "swap two records and renumber",
                |l| {
                    l.rows.swap(30, 31);
                    l.rows[30].0 = 30;
                    l.rows[31].0 = 31;
                },
                30,
            ),
            (
                "truncate the log",
                |l| {
                    l.rows.truncate(33);
                },
                33,
            ),
            (
                "forge the last checkpoint",
                |l| {
                    let other = Signer::from_seed(ORIGIN, [2; 32]).unwrap();
                    let last = l.checkpoints.last_mut().unwrap();
                    let cp = Checkpoint::open(&last.1, &[l.signer.verifier().clone()]).unwrap();
                    last.1 = cp.sign(&[&other]).unwrap();
                },
                40,
            ),
            (
                "edit a checkpoint's size",
                |l| {
                    let c = &mut l.checkpoints[1];
                    c.1 = c.1.replacen("\n14\n", "\n15\n", 1);
                },
                14,
            ),
        ];
        for (name, tamper, want) in cases {
            let mut l = log(40, 7);
            tamper(&mut l);
            let got = verify(&l, Some(l.signer.verifier().clone()));
            match got {
                Err(f) => assert_eq!(f.index, want, "{name}: {f}"),
                Ok(r) => panic!("{name}: verified {r:?}"),
            }
        }
    }

    #[test]
    fn pruned_bodies_keep_the_tree_verifiable() {
        let mut l = log(20, 5);
        for r in &mut l.rows[3..9] {
            r.1 = None;
        }
        let r = verify(&l, None).unwrap();
        assert_eq!(r.pruned, 6);
        // A body gone that no prune record lists (before it, outside its ranges, or after it)
        // was erased.
        for at in [2usize, 9, 17] {
            let mut l = log(20, 5);
            l.rows[at].1 = None;
            let err = verify(&l, None).unwrap_err();
            assert_eq!(err.index, at as u64, "{err}");
            assert!(err.reason.contains("prune record lists it"), "{err}");
        }
        // A prune record no verified checkpoint covers accounts for nothing: anyone with the
        // database could have appended it (here the checkpoint after it is gone).
        let mut l = log(20, 5);
        for r in &mut l.rows[3..9] {
            r.1 = None;
        }
        l.checkpoints.pop();
        let err = verify(&l, None).unwrap_err();
        assert_eq!(err.index, 3, "{err}");
        assert!(err.reason.contains("erased"), "{err}");
        // The prune record's own body cannot go: nothing would account for what it pruned.
        let mut l = log(20, 5);
        l.rows[15].1 = None;
        l.rows[4].1 = None;
        assert_eq!(verify(&l, None).unwrap_err().index, 4);
    }

    #[test]
    fn prune_ranges_are_read_as_inclusive_ranges() {
        use crate::record::PruneEvent;
        let ranges = PruneEvent::ranges(&[1, 2, 3, 7, 9, 10]);
        assert_eq!(ranges, [[1, 3], [7, 7], [9, 10]]);
        let e = PruneEvent {
            time_ms: 0,
            before_ms: 0,
            indexes: ranges,
        };
        let covered: Vec<u64> = (0..12).filter(|&i| e.covers(i)).collect();
        assert_eq!(covered, [1, 2, 3, 7, 9, 10]);
    }

    #[test]
    fn a_checkpoint_signed_by_an_unannounced_key_is_refused() {
        let l = log(10, 5);
        let other = Signer::from_seed(ORIGIN, [3; 32]).unwrap();
        let err = verify(&l, Some(other.verifier().clone())).unwrap_err();
        assert_eq!(err.index, 5);
        assert!(err.reason.contains("forged"), "{err}");
    }
}
