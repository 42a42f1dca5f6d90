//! Strategy::Reread: on POLLPRI, re-read and diff the whole mountinfo.

use std::io;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::MountEvent;
use crate::mountinfo::{parse_table, read_mountinfo_bytes};
use crate::table::MountChange;

use super::engine::{Closed, Engine};

impl Engine {
    pub(super) async fn run_reread(mut self, pri: AsyncFd<std::fs::File>) {
        let _ = self.reread_loop(pri).await;
        tracing::debug!("mount watcher stopped: receiver dropped");
    }

    pub(super) async fn read_table(
        &self,
    ) -> Result<io::Result<crate::mountinfo::ParsedTable>, Closed> {
        let proc_root = self.proc_root.clone();
        self.bounded("mountinfo read", move || {
            read_mountinfo_bytes(&proc_root, "self").map(|b| parse_table(&b))
        })
        .await
    }

    pub(super) async fn reread_loop(&mut self, pri: AsyncFd<std::fs::File>) -> Result<(), Closed> {
        loop {
            match self.read_table().await? {
                Ok(parsed) => {
                    self.report_parse_errors(&parsed.errors).await?;
                    self.publish_resync(parsed.entries.into_iter().collect())
                        .await?;
                    break;
                }
                Err(e) => {
                    self.report_io("initial mountinfo read", e).await?;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        loop {
            match pri.ready(Interest::PRIORITY).await {
                Ok(mut g) => g.clear_ready(),
                Err(e) => {
                    self.report_io("mountinfo POLLPRI", e).await?;
                    continue;
                }
            }
            let parsed = match self.read_table().await? {
                Ok(p) => p,
                Err(e) => {
                    self.report_io("mountinfo read", e).await?;
                    continue;
                }
            };
            self.report_parse_errors(&parsed.errors).await?;
            let keep_detached = parsed.errors.is_empty();
            let (changes, table) = self.mutate(|t| {
                let mut changes = t.diff_entries(&parsed.entries);
                if !keep_detached {
                    // A line we could not parse must not read as an unmount.
                    changes.retain(|c| !matches!(c, MountChange::Detached(_)));
                }
                for c in &changes {
                    t.apply(c);
                }
                changes
            });
            self.publish(changes, table).await?;
        }
    }

    pub(super) async fn report_parse_errors(
        &self,
        errors: &[crate::mountinfo::ParseError],
    ) -> Result<(), Closed> {
        if errors.is_empty() {
            return Ok(());
        }
        let first = errors
            .iter()
            .take(3)
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("; ");
        let msg = format!("{} unparsable mountinfo line(s): {first}", errors.len());
        tracing::warn!("{msg}");
        self.emit(MountEvent::Error(msg)).await
    }
}
