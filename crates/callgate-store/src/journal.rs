//! The audit store's write-ahead journal: what makes a batch of records durable.
//!
//! Why it exists: with SQLite alone, every group commit was an fsynced SQLite transaction,
//! and a small transaction rewrites every partly filled table and index page it touches (in
//! the WAL, then again when the WAL is checkpointed into the database). Under load the store
//! wrote about nine times the record bytes, and copying those pages took a third of the
//! gateway's CPU. The journal makes a batch durable with one positioned write and one
//! `fdatasync` of exactly the record bytes; SQLite, which every reader uses, takes the same
//! records moments later in large transactions ([`crate::sqlite`]).
//!
//! The file is reused: once SQLite holds everything the journal holds (durably), the next
//! batch is written from the start again, so the file stays small, its blocks stay
//! allocated, and a sync never has to commit a new file size.
//!
//! Frame: `"CGJ1"` · body length (u32 LE) · leaf index (u64 LE) · body · the body's RFC 6962
//! leaf hash (32 bytes). The body is the record as the tree hashes it, which ends with its
//! own index, so the hash covers the index too. Reading stops at the first frame that is incomplete, whose hash does
//! not match, or whose index does not follow the previous one: a torn tail (a batch being
//! written when the process died, never acknowledged) or what is left of an earlier pass
//! over the file (whose records SQLite already holds, with lower indexes).

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

use callgate_audit::merkle;

use crate::{NewRecord, StoreError};

const MAGIC: &[u8; 4] = b"CGJ1";
const HEADER: usize = 4 + 4 + 8;
const TRAILER: usize = 32;

/// A record read back from the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Frame {
    pub index: u64,
    pub body: Vec<u8>,
    pub leaf_hash: merkle::Hash,
}

/// The frames for `batch`, in one buffer.
pub(crate) fn encode(batch: &[NewRecord]) -> Vec<u8> {
    let len = batch.iter().map(|r| HEADER + r.body.len() + TRAILER).sum();
    let mut out = Vec::with_capacity(len);
    for r in batch {
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(r.body.len() as u32).to_le_bytes());
        out.extend_from_slice(&r.index.to_le_bytes());
        out.extend_from_slice(&r.body);
        out.extend_from_slice(&r.leaf_hash);
    }
    out
}

/// The valid frames at the start of `bytes` (see the module docs for where reading stops).
pub(crate) fn decode(bytes: &[u8]) -> Vec<Frame> {
    let mut frames: Vec<Frame> = Vec::new();
    let mut at = 0;
    while let Some(head) = bytes.get(at..at + HEADER) {
        if &head[..4] != MAGIC {
            break;
        }
        let len = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes")) as usize;
        let index = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
        let Some(end) = (at + HEADER)
            .checked_add(len)
            .and_then(|e| e.checked_add(TRAILER))
        else {
            break;
        };
        let Some(frame) = bytes.get(at + HEADER..end) else {
            break;
        };
        let (body, hash) = frame.split_at(len);
        let leaf_hash = merkle::leaf_hash(body);
        // The hash covers the body; the body names its own index (`leaf_bytes`), which
        // covers the header's.
        if hash != leaf_hash.as_slice() || !body.ends_with(&index_suffix(index)) {
            break;
        }
        if frames
            .last()
            .is_some_and(|f| f.index.checked_add(1) != Some(index))
        {
            break;
        }
        frames.push(Frame {
            index,
            body: body.to_vec(),
            leaf_hash,
        });
        at = end;
    }
    frames
}

/// How a record body (`callgate_audit::record::leaf_bytes`) at `index` ends.
fn index_suffix(index: u64) -> Vec<u8> {
    format!(",\"index\":{index},\"v\":1}}").into_bytes()
}

/// The journal file.
pub(crate) struct Journal {
    file: File,
    /// Where the next batch is written.
    pos: u64,
    /// After a failed write or sync, where the suspect region starts: cut off (and synced)
    /// before anything else is written, so no half-written frame can be read back later.
    repair: Option<u64>,
}

impl Journal {
    /// Opens (creating if needed) the journal at `path` and reads its valid frames.
    pub(crate) fn open(path: &Path) -> Result<(Journal, Vec<Frame>), StoreError> {
        let fail = |e: io::Error| StoreError::Unwritable(format!("{}: {e}", path.display()));
        let existed = path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(fail)?;
        if !file.metadata().map_err(fail)?.is_file() {
            return Err(StoreError::Unwritable(format!(
                "{} is not a regular file",
                path.display()
            )));
        }
        if !existed {
            // The new file's directory entry must survive a crash too.
            file.sync_all().map_err(fail)?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                File::open(dir).and_then(|d| d.sync_all()).map_err(fail)?;
            }
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(fail)?;
        let frames = decode(&bytes);
        let journal = Journal {
            file,
            pos: 0,
            repair: None,
        };
        Ok((journal, frames))
    }

    /// Writes `frames` after what was written since the last rewind and waits until they are
    /// on disk.
    pub(crate) fn write(&mut self, frames: &[u8]) -> io::Result<()> {
        if let Some(at) = self.repair {
            self.file.set_len(at)?;
            self.file.sync_all()?;
            self.repair = None;
        }
        match self
            .file
            .write_all_at(frames, self.pos)
            .and_then(|()| self.file.sync_data())
        {
            Ok(()) => {
                self.pos += frames.len() as u64;
                Ok(())
            }
            Err(e) => {
                self.repair = Some(self.pos);
                Err(e)
            }
        }
    }

    /// Bytes written since the last rewind.
    pub(crate) fn len(&self) -> u64 {
        self.pos
    }

    /// Starts over at the beginning of the file. Only when everything written so far is
    /// durable elsewhere (in SQLite).
    pub(crate) fn rewind(&mut self) {
        self.pos = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use callgate_audit::record::Columns;

    fn rec(index: u64, event: &str) -> NewRecord {
        let body = callgate_audit::record::leaf_bytes(index, format!("{event:?}").as_bytes());
        NewRecord {
            index,
            columns: Columns {
                kind: "call",
                time_ms: 0,
                request_id: None,
                session: None,
                subject: None,
                function: None,
                decision: None,
            },
            leaf_hash: merkle::leaf_hash(&body),
            body,
        }
    }

    #[test]
    fn frames_read_back_until_a_torn_or_stale_one() {
        let batch = [rec(7, "seven"), rec(8, "eight"), rec(9, "")];
        let bytes = encode(&batch);
        let frames = decode(&bytes);
        assert_eq!(
            frames.iter().map(|f| f.index).collect::<Vec<_>>(),
            [7, 8, 9]
        );
        assert_eq!(frames[1].body, batch[1].body);
        // Every cut through the last frame drops exactly that frame.
        let last = encode(&batch[2..]).len();
        for cut in 1..=last {
            assert_eq!(decode(&bytes[..bytes.len() - cut]).len(), 2, "cut {cut}");
        }
        // A flipped bit anywhere in a frame, index included, ends reading there.
        for i in 0..encode(&batch[..1]).len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(decode(&bad).is_empty(), "byte {i}");
        }
        // What is left of an earlier pass (lower indexes) is not read.
        let mut reused = encode(&[rec(100, "new")]);
        reused.extend_from_slice(&bytes);
        assert_eq!(decode(&reused).len(), 1);
        // A gap ends reading too.
        let gap = [encode(&[rec(1, "a")]), encode(&[rec(3, "c")])].concat();
        assert_eq!(decode(&gap).len(), 1);
        assert!(decode(b"").is_empty());
        assert!(decode(b"CGJ1\xff\xff\xff\xff").is_empty());
    }

    #[test]
    fn a_rewound_journal_overwrites_from_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.journal");
        let (mut j, frames) = Journal::open(&path).unwrap();
        assert!(frames.is_empty());
        j.write(&encode(&[rec(0, "zero"), rec(1, "one"), rec(2, "two")]))
            .unwrap();
        j.rewind();
        j.write(&encode(&[rec(3, "three")])).unwrap();
        drop(j);
        let (_, frames) = Journal::open(&path).unwrap();
        assert_eq!(frames.iter().map(|f| f.index).collect::<Vec<_>>(), [3]);
        let dir_path = dir.path().join("sub");
        std::fs::create_dir(&dir_path).unwrap();
        assert!(Journal::open(&dir_path).is_err());
    }
}
