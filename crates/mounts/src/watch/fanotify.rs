//! Strategy::Fanotify: fanotify mount events, statmount on attach, listmount resync on
//! overflow, POLLPRI for tracked remounts.

use std::io;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::{lock, MountEvent};
use crate::mountinfo::MountInfo;
use crate::sys::{statmount, FanMountEvent, MountFanotify};
use crate::table::MountChange;

use super::engine::{Closed, Engine};

/// Reads that drain a queue after an overflow, at most (each takes up to a buffer's worth).
const MAX_DRAIN_READS: usize = 1 << 12;

impl Engine {
    pub(super) async fn run_fanotify(
        mut self,
        pri: AsyncFd<std::fs::File>,
        fan: AsyncFd<MountFanotify>,
    ) {
        let _ = self.fanotify_loop(pri, fan).await;
        tracing::debug!("mount watcher stopped: receiver dropped");
    }

    pub(super) async fn fanotify_loop(
        &mut self,
        pri: AsyncFd<std::fs::File>,
        fan: AsyncFd<MountFanotify>,
    ) -> Result<(), Closed> {
        self.initial_statmount_scan().await?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut events = Vec::new();
        loop {
            tokio::select! {
                biased;
                guard = fan.readable() => {
                    let mut guard = match guard {
                        Ok(g) => g,
                        Err(e) => { self.report_io("fanotify poll", e).await?; continue; }
                    };
                    events.clear();
                    let mut failed = None;
                    // One read per pass: a read that returned events leaves the readiness set,
                    // so the read that finds the queue empty (and clears it) comes after this
                    // batch is handed on, not before.
                    match fan.get_ref().read_events(&mut buf, &mut events) {
                        Ok(0) => guard.clear_ready(),
                        Ok(_) => {}
                        Err(e) => { failed = Some(e); guard.clear_ready(); }
                    }
                    drop(guard);
                    if let Some(e) = failed {
                        self.report_io("fanotify read", e).await?;
                    }
                    if events.contains(&FanMountEvent::Overflow) {
                        self.overflow(&fan, &mut buf).await?;
                    } else {
                        let batch = std::mem::take(&mut events);
                        self.fanotify_pass(&batch).await?;
                        events = batch;
                    }
                }
                guard = pri.ready(Interest::PRIORITY) => {
                    match guard {
                        Ok(mut g) => g.clear_ready(),
                        Err(e) => { self.report_io("mountinfo POLLPRI", e).await?; continue; }
                    }
                    self.tracked_pass().await?;
                }
            }
        }
    }

    /// Apply one batch of fanotify events, in kernel order.
    pub(super) async fn fanotify_pass(&mut self, batch: &[FanMountEvent]) -> Result<(), Closed> {
        let to_stat: Vec<u64> = {
            let t = lock(&self.shared.table);
            batch
                .iter()
                .filter_map(|e| match *e {
                    FanMountEvent::Attach(u) if t.get_by_unique(u).is_none() => Some(u),
                    FanMountEvent::Move(u) => Some(u),
                    _ => None,
                })
                .collect()
        };
        let stats = if to_stat.is_empty() {
            Vec::new()
        } else {
            match self
                .bounded("statmount of attached mounts", move || {
                    let mut buf = Vec::new();
                    Ok(to_stat
                        .into_iter()
                        .map(|u| (u, statmount(u, &mut buf)))
                        .collect::<Vec<_>>())
                })
                .await?
            {
                Ok(s) => s,
                Err(e) => return self.report_io("statmount of attached mounts", e).await,
            }
        };
        let mut errors = Vec::new();
        let (changes, table) = self.mutate(|t| {
            let mut stats: std::collections::HashMap<u64, io::Result<MountInfo>> =
                stats.into_iter().collect();
            let mut changes = Vec::new();
            for ev in batch {
                let c = match *ev {
                    FanMountEvent::Attach(u) | FanMountEvent::Move(u) => {
                        match stats.remove(&u) {
                            Some(Ok(new)) => match t.get_by_unique(u) {
                                Some(old) if old.same_mount_state(&new) => continue,
                                Some(old) => MountChange::Changed {
                                    old: old.clone(),
                                    new,
                                },
                                None => MountChange::Attached(new),
                            },
                            // Gone again before we looked: its detach follows.
                            Some(Err(e)) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                            Some(Err(e)) => {
                                errors.push(format!("statmount of mount {u:#x} failed: {e}"));
                                continue;
                            }
                            None => continue,
                        }
                    }
                    // Taken out of the table, not copied: the event carries it on.
                    FanMountEvent::Detach(u) => {
                        if let Some(old) = t.remove_unique(u) {
                            changes.push(MountChange::Detached(old));
                        }
                        continue;
                    }
                    FanMountEvent::Overflow => continue,
                };
                t.apply(&c);
                changes.push(c);
            }
            changes
        });
        for e in errors {
            tracing::warn!("{e}");
            self.emit(MountEvent::Error(e)).await?;
        }
        self.publish(changes, table).await
    }

    /// The fanotify queue overflowed: drain what is queued (stale now), then resync.
    pub(super) async fn overflow(
        &mut self,
        fan: &AsyncFd<MountFanotify>,
        buf: &mut [u8],
    ) -> Result<(), Closed> {
        tracing::warn!("fanotify mount event queue overflowed; resyncing with listmount/statmount");
        self.emit(MountEvent::Overflow).await?;
        let mut drained = Vec::new();
        // Bounded: on a host that never stops mounting, stop after a few queues' worth; the
        // scan below is the truth either way.
        for _ in 0..MAX_DRAIN_READS {
            if !matches!(fan.get_ref().read_events(buf, &mut drained), Ok(n) if n > 0) {
                break;
            }
            drained.clear();
        }
        loop {
            match self.scan_statmount().await? {
                Ok(t) => return self.publish_resync(t).await,
                Err(e) => {
                    self.report_io("resync after overflow", e).await?;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}
