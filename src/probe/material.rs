//! Credentials and TLS material that live in files, re-read when the files change.
//!
//! The kubelet updates a mounted Secret by swapping a `..data` symlink, and cert-manager
//! rotates certificates the same way: the path stays, what it points to changes. A
//! [`Watched`] file compares the metadata of what the path resolves to (inode, size, mtime)
//! on every check; only when it changed is the file read again. That costs one `stat` per
//! file per check, and a revoked token or a rotated client certificate is taken up within one
//! check, not after the next connection happens to fail.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// A file whose changes are noticed by its metadata.
#[derive(Debug, Clone)]
pub struct Watched {
    path: PathBuf,
    stamp: Option<Stamp>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    inode: u64,
    len: u64,
    modified: Option<SystemTime>,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    // Follows symlinks: the stamp is that of the file `..data` points to now.
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        inode: m.ino(),
        len: m.len(),
        modified: m.modified().ok(),
    })
}

impl Watched {
    /// Starts watching `path` as it is now.
    pub fn new(path: &Path) -> Self {
        Watched {
            path: path.to_path_buf(),
            stamp: stamp(path),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True once each time the file's metadata differs from the last look (a file that
    /// disappears is not a change: the old material stays in use).
    pub fn changed(&mut self) -> bool {
        match stamp(&self.path) {
            Some(now) if Some(now) != self.stamp => {
                self.stamp = Some(now);
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_swapped_symlink_is_a_change_once() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, "one").unwrap();
        std::fs::write(&b, "two").unwrap();
        let link = dir.path().join("token");
        std::os::unix::fs::symlink(&a, &link).unwrap();
        let mut w = Watched::new(&link);
        assert!(!w.changed());
        // What the kubelet does: a new target, renamed over the old link.
        let tmp = dir.path().join("token.tmp");
        std::os::unix::fs::symlink(&b, &tmp).unwrap();
        std::fs::rename(&tmp, &link).unwrap();
        assert!(w.changed());
        assert!(!w.changed(), "a change is reported once");
        std::fs::remove_file(&link).unwrap();
        assert!(!w.changed(), "a file that vanished keeps the old material");
    }
}
