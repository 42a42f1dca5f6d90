//! The monitor: the [`shell`] that owns the `rds-monitor` state machine and carries out its
//! actions, the [`conditions`] it publishes for NodeGetVolumeStats (O(1) reads), the I/O
//! [`io`] sampler, and the [`MonitorHandle`] through which the node service tells it what it
//! did (the node service's [`VolumeObserver`]).
//!
//! Nothing here decides a condition: the machine does. The shell translates inputs
//! ([`translate`]), feeds them in, and acts through [`seams`].

pub mod conditions;
pub mod io;
pub mod seams;
pub mod shell;
pub mod translate;

#[cfg(test)]
mod shell_tests;

use std::path::Path;
use std::time::Duration;

use rds_node::observer::VolumeObserver;
use rds_node::record::VolumeRecord;
use rds_types::{Health, MountKey, Nqn, VolumeId};
use tokio::sync::{mpsc, oneshot};

pub use conditions::{Conditions, VolumeReport};
pub use seams::{
    DeviceModel, Evictor, FsWatcher, KubeEvictor, MonitorMetrics, MountTracker, RecoveryFailure,
    RecoveryRunner, Seams,
};
pub use shell::{Note, NoteMsg, Shell, Sources};

/// Capacity of the node service's note channel. Policy when full: the CSI call waits for room
/// (the shell drains notes first, so the wait is short); notes are never dropped.
pub const NOTES_CAPACITY: usize = 1024;

/// How long a CSI call waits for the monitor to take its note in before going on (the note
/// is queued either way; this only bounds how stale a following NodeGetVolumeStats can be).
pub const NOTE_ACK_WAIT: Duration = Duration::from_secs(2);

/// The monitor's face to the rest of the process. Cheap to clone.
#[derive(Clone)]
pub struct MonitorHandle {
    notes: mpsc::Sender<NoteMsg>,
    conditions: Conditions,
}

impl MonitorHandle {
    /// A handle and the receiving end of its notes (for [`Sources::notes`]).
    pub fn new(conditions: Conditions) -> (Self, mpsc::Receiver<NoteMsg>) {
        let (tx, rx) = mpsc::channel(NOTES_CAPACITY);
        (
            Self {
                notes: tx,
                conditions,
            },
            rx,
        )
    }

    pub fn conditions(&self) -> &Conditions {
        &self.conditions
    }

    /// The current condition of a volume, if the monitor knows it.
    pub fn volume_condition(&self, id: &VolumeId) -> Option<Health> {
        self.conditions.volume(id)
    }

    /// Wait until the condition at `path` (the volume's with `None`) satisfies `pred`, up to
    /// `deadline`, woken by each change. On timeout, the last condition seen.
    pub async fn wait_for(
        &self,
        id: &VolumeId,
        path: Option<&Path>,
        deadline: Duration,
        pred: impl Fn(&Health) -> bool,
    ) -> Result<Health, Option<Health>> {
        self.conditions.wait_for(id, path, deadline, pred).await
    }

    async fn send(&self, note: Note) {
        let (ack, done) = oneshot::channel();
        if self
            .notes
            .send(NoteMsg {
                note,
                ack: Some(ack),
            })
            .await
            .is_err()
        {
            tracing::error!("the monitor has stopped; a note was lost");
            return;
        }
        if tokio::time::timeout(NOTE_ACK_WAIT, done).await.is_err() {
            tracing::warn!(wait = ?NOTE_ACK_WAIT, "the monitor is slow to take notes in");
        }
    }
}

#[tonic::async_trait]
impl VolumeObserver for MonitorHandle {
    async fn staged(&self, rec: &VolumeRecord, mount: Option<MountKey>) {
        self.send(Note::Staged {
            rec: Box::new(rec.clone()),
            mount,
        })
        .await
    }

    async fn unstaged(&self, id: &VolumeId) {
        self.send(Note::Unstaged(id.clone())).await
    }

    async fn published(&self, rec: &VolumeRecord, target: &Path, mount: Option<MountKey>) {
        self.send(Note::Published {
            rec: Box::new(rec.clone()),
            target: target.to_owned(),
            mount,
        })
        .await
    }

    async fn unpublished(&self, id: &VolumeId, target: &Path) {
        self.send(Note::Unpublished(id.clone(), target.to_owned()))
            .await
    }

    async fn connect_failed(&self, id: &VolumeId, nqn: &Nqn, error: &str) {
        self.send(Note::ConnectFailed {
            volume_id: id.clone(),
            nqn: nqn.clone(),
            error: error.to_owned(),
        })
        .await
    }

    fn condition(&self, id: &VolumeId, path: &Path) -> Option<Health> {
        self.conditions.at(id, path)
    }

    async fn settle(&self, id: &VolumeId, deadline: Duration) -> Option<Health> {
        match self.wait_for(id, None, deadline, |c| !c.abnormal()).await {
            Ok(c) => Some(c),
            Err(last) => last,
        }
    }
}
