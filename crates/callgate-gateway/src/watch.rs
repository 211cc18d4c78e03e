//! Cheap "did any watched file change?" for the per-request reload check.
//!
//! The reloader must apply an edit to the very next request (tighten a policy, the next call is
//! denied), so it looks before every request. Comparing each file's metadata costs one `statx`
//! (with its path walk) per watched file per request. This module lets that comparison run only
//! when the kernel has reported something: an inotify instance watches every file, its
//! directory and the directory it resolves into (so in-place writes, editors' atomic renames,
//! deletions and symlink swaps such as a Kubernetes ConfigMap update are all seen), and a
//! request does one non-blocking `read` of it. inotify queues the event inside the writer's own
//! system call, so an edit that completed before the request arrived is always seen: the
//! "next request" guarantee is kept, not approximated with a timer.
//!
//! A report does not mean a watched file changed (a neighbour in the same directory may have);
//! the caller then compares metadata as before. Where inotify is unavailable (another OS, the
//! per-user watch limit reached), [`Watch::new`] returns `None` and the caller compares
//! metadata on every request.

use std::path::{Path, PathBuf};

/// An inotify instance over a set of paths.
pub struct Watch {
    #[cfg(target_os = "linux")]
    fd: rustix::fd::OwnedFd,
}

impl Watch {
    /// Watches `paths`, their directories and the directories they resolve into. A path that
    /// does not exist is watched through its directory (its creation is an event there).
    /// `None` when inotify is unavailable or a directory cannot be watched.
    pub fn new(paths: &[PathBuf]) -> Option<Watch> {
        let dir = |p: &Path| match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut required: Vec<PathBuf> = Vec::new();
        let mut optional: Vec<PathBuf> = Vec::new();
        for p in paths {
            required.push(dir(p));
            if let Ok(real) = std::fs::canonicalize(p) {
                optional.push(p.to_path_buf());
                optional.push(dir(&real));
            }
        }
        required.sort();
        required.dedup();
        optional.sort();
        optional.dedup();
        optional.retain(|p| !required.contains(p));
        imp::new(&required, &optional)
    }

    /// True when nothing was reported since the last call. Reports are consumed.
    pub fn quiet(&self) -> bool {
        imp::quiet(self)
    }
}

#[cfg(target_os = "linux")]
mod imp {
    use super::Watch;
    use rustix::fs::inotify::{self, CreateFlags, WatchFlags};
    use rustix::io::Errno;
    use std::path::PathBuf;

    /// Every `required` path must be watched; an `optional` one may have gone since it was
    /// looked at (then its directory reports what happens to it).
    pub fn new(required: &[PathBuf], optional: &[PathBuf]) -> Option<Watch> {
        let fd = inotify::init(CreateFlags::NONBLOCK | CreateFlags::CLOEXEC).ok()?;
        let mask = WatchFlags::MODIFY
            | WatchFlags::ATTRIB
            | WatchFlags::CLOSE_WRITE
            | WatchFlags::MOVED_FROM
            | WatchFlags::MOVED_TO
            | WatchFlags::CREATE
            | WatchFlags::DELETE
            | WatchFlags::DELETE_SELF
            | WatchFlags::MOVE_SELF;
        for t in required {
            inotify::add_watch(&fd, t.as_path(), mask).ok()?;
        }
        for t in optional {
            let _ = inotify::add_watch(&fd, t.as_path(), mask);
        }
        Some(Watch { fd })
    }

    pub fn quiet(w: &Watch) -> bool {
        let mut buf = [0u8; 4096];
        let mut quiet = true;
        loop {
            match rustix::io::read(&w.fd, &mut buf) {
                Ok(0) => return quiet,
                Ok(_) => quiet = false,
                Err(Errno::AGAIN) => return quiet,
                Err(Errno::INTR) => continue,
                // Anything else: report a change, so the caller compares metadata.
                Err(_) => return false,
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use super::Watch;
    use std::path::PathBuf;

    pub fn new(_: &[PathBuf], _: &[PathBuf]) -> Option<Watch> {
        None
    }

    pub fn quiet(_: &Watch) -> bool {
        false
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn reports_in_place_writes_renames_deletes_and_symlink_swaps() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("callgate.yaml");
        std::fs::write(&file, "a").unwrap();
        let neighbour = dir.path().join("other");
        std::fs::create_dir(dir.path().join("policies")).unwrap();
        let policy = dir.path().join("policies/main.cedar");
        std::fs::write(&policy, "p").unwrap();
        let w = Watch::new(&[file.clone(), dir.path().join("policies"), policy.clone()]).unwrap();
        assert!(w.quiet(), "nothing happened yet");
        std::fs::write(&file, "b").unwrap();
        assert!(!w.quiet(), "an in-place write is reported");
        assert!(w.quiet(), "reports are consumed");
        let tmp = dir.path().join("callgate.yaml.tmp");
        std::fs::write(&tmp, "c").unwrap();
        assert!(!w.quiet());
        std::fs::rename(&tmp, &file).unwrap();
        assert!(!w.quiet(), "an atomic replace is reported");
        std::fs::write(dir.path().join("policies/new.cedar"), "q").unwrap();
        assert!(!w.quiet(), "a new file in a watched directory is reported");
        std::fs::remove_file(&policy).unwrap();
        assert!(!w.quiet(), "a deletion is reported");
        std::fs::create_dir(&neighbour).unwrap();
        std::fs::write(neighbour.join("deep"), "x").unwrap();
        let _ = w.quiet();
        std::fs::write(neighbour.join("deep"), "y").unwrap();
        assert!(w.quiet(), "a subdirectory's files are not watched");
    }

    #[test]
    fn follows_a_symlink_swap_like_a_configmap_update() {
        // /etc/callgate/callgate.yaml -> ..data/callgate.yaml, ..data -> ..v1
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("..v1")).unwrap();
        std::fs::write(d.join("..v1/callgate.yaml"), "a").unwrap();
        std::os::unix::fs::symlink("..v1", d.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/callgate.yaml", d.join("callgate.yaml")).unwrap();
        let w = Watch::new(&[d.join("callgate.yaml")]).unwrap();
        assert!(w.quiet());
        std::fs::create_dir(d.join("..v2")).unwrap();
        std::fs::write(d.join("..v2/callgate.yaml"), "b").unwrap();
        let _ = w.quiet();
        std::os::unix::fs::symlink("..v2", d.join("..data_tmp")).unwrap();
        let _ = w.quiet();
        std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
        assert!(!w.quiet(), "the swap of ..data is reported");
    }

    #[test]
    fn a_missing_file_is_watched_through_its_directory_a_missing_directory_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Watch::new(&[dir.path().join("nope/callgate.yaml")]).is_none());
        let gone = dir.path().join("gone.cedar");
        let w = Watch::new(std::slice::from_ref(&gone)).unwrap();
        assert!(w.quiet());
        std::fs::write(&gone, "p").unwrap();
        assert!(!w.quiet(), "its creation is reported");
    }
}
