//! The node service's view of the mount table: read fresh from the kernel, off the runtime,
//! with a deadline. Idempotency decisions come from the real table, never from our own notes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rds_hostops::deadline::run_blocking;
use rds_mounts::mountinfo::{MountInfo, ParsedTable};
use rds_types::DevNum;

use crate::error::NodeError;

#[derive(Debug, Clone)]
pub struct MountView {
    pub table: Arc<ParsedTable>,
}

impl MountView {
    pub async fn read(proc_root: &Path, deadline: Duration) -> Result<Self, NodeError> {
        let root = proc_root.to_owned();
        let table = run_blocking("reading mountinfo", deadline, move || {
            rds_mounts::mountinfo::read_mountinfo(&root, "self")
        })
        .await
        .map_err(|e| {
            NodeError::DeadlineExceeded(format!(
                "{e}; the mount table may be flooded (mount storm)"
            ))
        })?
        .map_err(|e| NodeError::internal("reading the mount table", e))?;
        if !table.errors.is_empty() {
            // A table we could not fully parse cannot prove anything is absent.
            return Err(NodeError::internal(
                "reading the mount table",
                format!(
                    "{} unparsable lines (first: {})",
                    table.errors.len(),
                    table.errors[0]
                ),
            ));
        }
        Ok(Self {
            table: Arc::new(table),
        })
    }

    /// The visible (topmost) mount at `path`.
    pub fn top(&self, path: &Path) -> Option<&MountInfo> {
        self.table
            .entries
            .iter()
            .rev()
            .find(|m| m.mount_point == path)
    }

    /// Mount points of every mount of `dev`.
    pub fn mounts_of(&self, dev: DevNum) -> Vec<PathBuf> {
        self.table
            .entries
            .iter()
            .filter(|m| m.dev == dev)
            .map(|m| m.mount_point.clone())
            .collect()
    }
}
