//! Strategy::ListStat: on POLLPRI, listmount, diff the id sets, statmount new and tracked ids.

use std::collections::HashSet;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::lock;
use crate::mountinfo::MountInfo;
use crate::sys::{listmount_all, statmount};
use crate::table::assemble;

use super::engine::{Closed, Engine};

impl Engine {
    pub(super) async fn run_liststat(mut self, pri: AsyncFd<std::fs::File>) {
        let _ = self.liststat_loop(pri).await;
        tracing::debug!("mount watcher stopped: receiver dropped");
    }

    pub(super) async fn liststat_loop(
        &mut self,
        pri: AsyncFd<std::fs::File>,
    ) -> Result<(), Closed> {
        self.initial_statmount_scan().await?;
        loop {
            match pri.ready(Interest::PRIORITY).await {
                Ok(mut g) => g.clear_ready(),
                Err(e) => {
                    self.report_io("mountinfo POLLPRI", e).await?;
                    continue;
                }
            }
            self.tracked_pass().await?;
            self.liststat_pass().await?;
        }
    }

    /// listmount, diff the id sets, statmount the new ids.
    pub(super) async fn liststat_pass(&mut self) -> Result<(), Closed> {
        let known: HashSet<u64> = lock(&self.shared.table).unique_ids().collect();
        let res = self
            .bounded("listmount", move || {
                let ids = listmount_all()?;
                let listed: HashSet<u64> = ids.iter().copied().collect();
                let mut buf = Vec::new();
                let mut new = Vec::new();
                for id in ids.into_iter().filter(|id| !known.contains(id)) {
                    match statmount(id, &mut buf) {
                        Ok(m) => new.push(m),
                        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok((listed, new))
            })
            .await?;
        let (listed, new) = match res {
            Ok(r) => r,
            Err(e) => return self.report_io("listmount pass", e).await,
        };
        let (changes, table) = self.mutate(|t| {
            let detached: Vec<MountInfo> = t
                .iter()
                .filter(|m| m.unique_id.is_some_and(|u| !listed.contains(&u)))
                .cloned()
                .collect();
            let changes = assemble(detached, Vec::new(), new);
            for c in &changes {
                t.apply(c);
            }
            changes
        });
        self.publish(changes, table).await
    }
}
