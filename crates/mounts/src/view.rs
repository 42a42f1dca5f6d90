//! [`MountView`]: the one way the plugin reads the mount table to decide something (is this
//! path mounted, by which device; which mounts use this device). Every reader has the same
//! error policy: a line that does not parse makes the whole read an error, because a table
//! that could not be fully parsed cannot prove that anything is absent.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rds_types::DevNum;

use crate::mountinfo::{mountinfo_path, read_mountinfo, MountInfo};

/// Why the table could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("reading {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} has {count} unparsable line(s) (first: {first}); a partial table proves nothing"
    )]
    Unparsable {
        path: PathBuf,
        count: usize,
        first: String,
    },
    #[error("reading {path} did not finish within {}; the mount table may be flooded (mount storm)", humantime::format_duration(*.after))]
    TimedOut { path: PathBuf, after: Duration },
}

/// A complete, parsed snapshot of one mount table, in the kernel's order (a later entry at the
/// same mount point is stacked on top of an earlier one). Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct MountView {
    entries: Arc<Vec<MountInfo>>,
}

impl MountView {
    /// Read `<proc_root>/<pid>/mountinfo` now, on the calling thread (which must be allowed to
    /// block: a flooded table takes seconds).
    pub fn read_now(proc_root: &Path, pid: &str) -> Result<Self, ViewError> {
        let path = mountinfo_path(proc_root, pid);
        let t = read_mountinfo(proc_root, pid).map_err(|source| ViewError::Io {
            path: path.clone(),
            source,
        })?;
        if let Some(first) = t.errors.first() {
            return Err(ViewError::Unparsable {
                path,
                count: t.errors.len(),
                first: first.to_string(),
            });
        }
        Ok(Self::from_entries(t.entries))
    }

    /// Read this process's table off the async runtime, bounded by `deadline`.
    pub async fn read(proc_root: &Path, deadline: Duration) -> Result<Self, ViewError> {
        let root = proc_root.to_owned();
        let job = tokio::task::spawn_blocking(move || Self::read_now(&root, "self"));
        match tokio::time::timeout(deadline, job).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(ViewError::Io {
                path: mountinfo_path(proc_root, "self"),
                source: std::io::Error::other(format!("the reading thread failed: {e}")),
            }),
            Err(_) => Err(ViewError::TimedOut {
                path: mountinfo_path(proc_root, "self"),
                after: deadline,
            }),
        }
    }

    pub fn from_entries(entries: Vec<MountInfo>) -> Self {
        Self {
            entries: Arc::new(entries),
        }
    }

    /// The visible (topmost) mount at `path`.
    pub fn top_at(&self, path: &Path) -> Option<&MountInfo> {
        self.entries.iter().rev().find(|m| m.mount_point == path)
    }

    /// Every mount of `dev`, in table order.
    pub fn mounts_of(&self, dev: DevNum) -> impl Iterator<Item = &MountInfo> + '_ {
        self.entries.iter().filter(move |m| m.dev == dev)
    }

    /// Every mount, in table order.
    pub fn entries(&self) -> &[MountInfo] {
        &self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mountinfo::parse_table;

    fn view(text: &str) -> MountView {
        MountView::from_entries(parse_table(text.as_bytes()).entries)
    }

    #[test]
    fn the_last_entry_at_a_path_is_the_visible_one() {
        let v = view(
            "30 1 259:1 / /stage rw - ext4 /dev/nvme0n1 rw\n\
             31 1 259:2 / /stage rw - ext4 /dev/nvme1n1 rw\n\
             32 1 259:1 / /pod rw - ext4 /dev/nvme0n1 rw\n",
        );
        assert_eq!(v.top_at(Path::new("/stage")).map(|m| m.id), Some(31));
        assert_eq!(v.top_at(Path::new("/nothing")), None);
        let of: Vec<u32> = v.mounts_of(DevNum::new(259, 1)).map(|m| m.id).collect();
        assert_eq!(of, vec![30, 32]);
    }

    #[test]
    fn an_unparsable_line_makes_the_read_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("self")).unwrap();
        std::fs::write(
            dir.path().join("self/mountinfo"),
            "30 1 259:1 / /stage rw - ext4 /dev/nvme0n1 rw\nthis is not a mount\n",
        )
        .unwrap();
        match MountView::read_now(dir.path(), "self") {
            Err(ViewError::Unparsable { count: 1, .. }) => {}
            other => panic!("expected Unparsable, got {other:?}"),
        }
    }
}
