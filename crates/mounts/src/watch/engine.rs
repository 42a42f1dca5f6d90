//! What the three strategies share: emitting, publishing the snapshot, storm signals, and
//! full reads bounded by the deadline.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::{lock, MountEvent, Shared};
use crate::mountinfo::mountinfo_path;
use crate::storm::{top_offenders, StormDetector, StormSignal};
use crate::sys::{listmount_all, statmount};
use crate::table::{MountChange, MountTable};

/// The receiver is gone: stop.
pub(super) struct Closed;

/// The watcher task's state, shared by the three strategies.
pub(super) struct Engine {
    pub(super) tx: mpsc::Sender<MountEvent>,
    pub(super) shared: Arc<Shared>,
    pub(super) storm: StormDetector,
    pub(super) read_timeout: Duration,
    pub(super) proc_root: PathBuf,
}

impl Engine {
    pub(super) async fn emit(&self, ev: MountEvent) -> Result<(), Closed> {
        self.tx.send(ev).await.map_err(|_| Closed)
    }

    /// Mutate the published table in place (copy-on-write: only clones when a reader still
    /// holds the previous snapshot) and return the new snapshot.
    pub(super) fn mutate<R>(&self, f: impl FnOnce(&mut MountTable) -> R) -> (R, Arc<MountTable>) {
        let mut slot = lock(&self.shared.table);
        let r = f(Arc::make_mut(&mut slot));
        (r, slot.clone())
    }

    pub(super) fn tracked(&self) -> Vec<u32> {
        lock(&self.shared.tracked).iter().copied().collect()
    }

    pub(super) async fn storm_signals(&self, signals: Vec<StormSignal>) -> Result<(), Closed> {
        for s in signals {
            match s {
                StormSignal::Started(r) => {
                    tracing::warn!(key = %r.key, count = r.count, "{}", r.message);
                    self.emit(MountEvent::Storm(r)).await?;
                }
                StormSignal::Cleared(c) => {
                    tracing::info!(key = %c.key, count = c.count, peak = c.peak, lasted = ?c.lasted, "mount storm cleared");
                    self.emit(MountEvent::StormCleared(c)).await?;
                }
            }
        }
        Ok(())
    }

    /// Publish a batch of changes already applied to the table: events, then storm signals.
    pub(super) async fn publish(
        &mut self,
        changes: Vec<MountChange>,
        table: Arc<MountTable>,
    ) -> Result<(), Closed> {
        if changes.is_empty() {
            return Ok(());
        }
        // The changes go out first; the storm detector looks at them afterwards.
        let touched = crate::storm::touches(&changes);
        for c in changes {
            self.emit(match c {
                MountChange::Attached(m) => MountEvent::Attached(m),
                MountChange::Detached(m) => MountEvent::Detached(m),
                MountChange::Changed { old, new } => MountEvent::Changed { old, new },
            })
            .await?;
        }
        // The receiver's turn first (in the plugin it runs on this thread): the storm detector,
        // and the mountinfo POLLPRI pass the same change usually caused, can wait for it.
        tokio::task::yield_now().await;
        let signals = self.storm.observe_touches(&table, touched, Instant::now());
        drop(table);
        self.storm_signals(signals).await
    }

    /// Replace the table with a complete snapshot and say so.
    pub(super) async fn publish_resync(&mut self, fresh: MountTable) -> Result<(), Closed> {
        let table = Arc::new(fresh);
        *lock(&self.shared.table) = table.clone();
        let signals = self.storm.resync(&table, Instant::now());
        self.emit(MountEvent::Resynced { table }).await?;
        self.storm_signals(signals).await
    }

    /// Run a full read off the runtime; past the deadline, warn (once) and keep waiting.
    pub(super) async fn bounded<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> Result<io::Result<T>, Closed> {
        let mut job = tokio::task::spawn_blocking(f);
        let joined = match tokio::time::timeout(self.read_timeout, &mut job).await {
            Ok(r) => r,
            Err(_) => {
                let table = self
                    .shared
                    .table
                    .lock()
                    .map(|t| t.clone())
                    .unwrap_or_default();
                let top = top_offenders(&table, 3)
                    .into_iter()
                    .map(|o| format!("{} ({})", o.key, o.count))
                    .collect::<Vec<_>>()
                    .join(", ");
                let msg = format!(
                    "{what} exceeded {}; the mount table may be flooded: {} entries at the last \
                     complete read (largest: {top}); inspect with: wc -l {}",
                    humantime::format_duration(self.read_timeout),
                    table.len(),
                    mountinfo_path(&self.proc_root, "self").display()
                );
                drop(table);
                tracing::error!("{msg}");
                self.emit(MountEvent::Error(msg)).await?;
                job.await
            }
        };
        Ok(joined.unwrap_or_else(|e| Err(io::Error::other(format!("{what} task failed: {e}")))))
    }

    pub(super) async fn report_io(&self, what: &str, e: io::Error) -> Result<(), Closed> {
        tracing::warn!(error = %e, "{what} failed");
        self.emit(MountEvent::Error(format!("{what} failed: {e}")))
            .await
    }

    /// listmount + statmount of everything, bounded.
    pub(super) async fn scan_statmount(&self) -> Result<io::Result<MountTable>, Closed> {
        self.bounded("listmount/statmount scan", || {
            let ids = listmount_all()?;
            let mut buf = Vec::new();
            let mut t = MountTable::new();
            for id in ids {
                match statmount(id, &mut buf) {
                    Ok(m) => {
                        t.insert(m);
                    }
                    // Unmounted between listmount and statmount.
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(t)
        })
        .await
    }

    pub(super) async fn initial_statmount_scan(&mut self) -> Result<(), Closed> {
        loop {
            match self.scan_statmount().await? {
                Ok(t) => return self.publish_resync(t).await,
                Err(e) => {
                    self.report_io("initial listmount/statmount scan", e)
                        .await?;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// statmount the tracked mounts and report those that changed (remount, move).
    pub(super) async fn tracked_pass(&mut self) -> Result<(), Closed> {
        let tracked = self.tracked();
        if tracked.is_empty() {
            return Ok(());
        }
        let uniques: Vec<u64> = {
            let t = lock(&self.shared.table);
            tracked
                .iter()
                .filter_map(|id| t.get(*id).and_then(|m| m.unique_id))
                .collect()
        };
        let fresh = self
            .bounded("statmount of tracked mounts", move || {
                let mut buf = Vec::new();
                Ok(uniques
                    .into_iter()
                    .filter_map(|u| statmount(u, &mut buf).ok())
                    .collect::<Vec<_>>())
            })
            .await?;
        let fresh = match fresh {
            Ok(f) => f,
            Err(e) => return self.report_io("statmount of tracked mounts", e).await,
        };
        let (changes, table) = self.mutate(|t| {
            let mut changes = Vec::new();
            for new in fresh {
                let Some(old) = new.unique_id.and_then(|u| t.get_by_unique(u)) else {
                    continue;
                };
                if !old.same_mount_state(&new) {
                    let c = MountChange::Changed {
                        old: old.clone(),
                        new,
                    };
                    t.apply(&c);
                    changes.push(c);
                }
            }
            changes
        });
        self.publish(changes, table).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storm::StormConfig;

    #[tokio::test]
    async fn a_read_past_its_deadline_reports_a_flooded_table_and_still_completes() {
        let (tx, mut rx) = mpsc::channel(8);
        let engine = Engine {
            tx,
            shared: Arc::default(),
            storm: StormDetector::new(StormConfig::default()),
            read_timeout: Duration::from_millis(1),
            proc_root: PathBuf::from("/proc"),
        };
        // The read cannot finish before the test has seen the warning: no timing involved.
        let (release, blocked) = std::sync::mpsc::channel::<()>();
        let job = tokio::spawn(async move {
            let r = engine
                .bounded("mountinfo read", move || {
                    let _ = blocked.recv();
                    Ok(42)
                })
                .await;
            matches!(r, Ok(Ok(42)))
        });
        match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
            Ok(Some(MountEvent::Error(msg))) => assert!(
                msg.starts_with(
                    "mountinfo read exceeded 1ms; the mount table may be flooded: 0 entries"
                ),
                "unexpected message: {msg}"
            ),
            other => panic!("expected an Error event about the deadline, got {other:?}"),
        }
        release.send(()).expect("release the read");
        assert!(
            job.await.expect("join"),
            "the late read must still deliver its result"
        );
    }
}
