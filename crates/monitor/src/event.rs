//! The machine's input: everything the CSI node service, the watchers and the executor tell it.
//!
//! Events carry facts, never conclusions: "mount 42 detached", not "volume X is stale". The
//! machine decides conditions from the facts it has accumulated.

use std::fmt;
use std::path::PathBuf;

use rds_types::{BlockIdentity, DevNum, Message, NamespaceIds, Nqn};

use crate::ids::{MountKey, StormKey, VolumeId};

/// One mount-table entry as the mount watcher sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountFacts {
    /// The 64-bit unique mount id.
    pub id: u64,
    /// `major:minor` of the superblock (mountinfo field 3), the real device even when the
    /// source path lies.
    pub dev: DevNum,
    pub mount_point: PathBuf,
    pub fs_type: String,
    /// Per-mount read-only flag (`MS_RDONLY` on this mount, mountinfo field 6 `ro`).
    pub read_only: bool,
    /// Superblock options (mountinfo's last field, e.g. `rw,errors=remount-ro`,
    /// `ro,emergency_ro`, `rw,shutdown`).
    pub super_options: String,
}

impl MountFacts {
    pub fn key(&self) -> MountKey {
        MountKey {
            id: self.id,
            dev: self.dev,
        }
    }

    fn super_has(&self, flag: &str) -> bool {
        self.super_options.split(',').any(|o| o == flag)
    }

    /// The kernel's own verdict that the filesystem is dead: ext4 prints `emergency_ro` after
    /// an aborted journal and `shutdown` after `EXT4_IOC_SHUTDOWN`.
    pub fn dead_flag(&self) -> Option<&'static str> {
        ["emergency_ro", "shutdown"]
            .into_iter()
            .find(|f| self.super_has(f))
    }

    /// Read-only at either level (this mount, or the whole superblock as after
    /// `errors=remount-ro`).
    pub fn effectively_read_only(&self) -> bool {
        self.read_only || self.super_has("ro")
    }
}

/// One NVMe namespace block device as the device watcher resolved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceFacts {
    /// The subsystem NQN this namespace belongs to.
    pub nqn: Nqn,
    pub nsid: u32,
    /// Kernel name (`nvme1n1`), for messages only: names are reused.
    pub name: String,
    pub identity: BlockIdentity,
    /// What the target says the namespace is (uuid, nguid, wwid).
    pub ids: NamespaceIds,
}

pub use rds_types::ControllerState;

/// One NVMe controller (a path to a subsystem).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerFacts {
    pub nqn: Nqn,
    /// Kernel name (`nvme3`).
    pub controller: String,
    pub state: ControllerState,
}

/// A publish bind mount the executor re-made during a recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedMount {
    pub target: PathBuf,
    pub mount: Option<MountKey>,
}

/// What a successful recovery did, as the executor reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The device the volume lives on now (also in its record).
    pub new_device: BlockIdentity,
    /// The new staging mount (`None` for raw block).
    pub new_mount: Option<MountKey>,
    /// The publish bind mounts re-made.
    pub republished: Vec<PublishedMount>,
    /// Publishes whose pods were running when the volume moved to another device incarnation:
    /// they still hold the old superblock. The executor persisted these marks in the volume's
    /// record (so a plugin restart keeps them).
    pub stale_targets: Vec<PathBuf>,
}

/// A pod that still holds the filesystem of a device a recovery replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleMark {
    /// `DeviceReplaced` or `FilesystemFailed`: what the pod's filesystem died of.
    pub kind: crate::condition::ConditionKind,
    pub old_device: BlockIdentity,
    pub new_device: BlockIdentity,
}

/// Everything the monitor learns. `now` is passed beside each event, never inside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MonitorEvent {
    // ---- volume lifecycle, from the CSI node service ----
    /// A volume was staged (or, with `adopted`, re-adopted from its persisted record after a
    /// plugin restart). `device` and `mount` are the identities at mount time.
    VolumeStaged {
        volume_id: VolumeId,
        nqn: Nqn,
        nsid: Option<u32>,
        /// The namespace's identifiers recorded at stage time: a namespace that comes back
        /// with others is another volume.
        ids: NamespaceIds,
        staging_path: PathBuf,
        /// The staging mount. `None` for raw block volumes, and for a filesystem volume whose
        /// staging mount was not found (re-adoption): that one is missing once the table is
        /// authoritative.
        mount: Option<MountKey>,
        device: BlockIdentity,
        /// The filesystem (`None`: a raw block volume). Decided by the record, never inferred
        /// from the mount table.
        fs_type: Option<String>,
        read_only: bool,
        /// True when replayed from a persisted record at start-up rather than just mounted:
        /// then a mount or namespace missing from an authoritative resync is missing, not late.
        adopted: bool,
    },
    VolumeUnstaged {
        volume_id: VolumeId,
    },
    /// A publish (one pod's target). Block publishes are device nodes: no mount.
    VolumePublished {
        volume_id: VolumeId,
        target: PathBuf,
        mount: Option<MountKey>,
        read_only: bool,
        /// As for `VolumeStaged`.
        adopted: bool,
        /// Persisted by an earlier recovery: the pod still holds a replaced filesystem.
        stale: Option<StaleMark>,
    },
    /// NodeStageVolume could not connect the volume's controller (for an Event on the PVC).
    ConnectFailed {
        volume_id: VolumeId,
        nqn: Nqn,
        error: String,
    },
    VolumeUnpublished {
        volume_id: VolumeId,
        target: PathBuf,
    },

    // ---- mount table, from the mount watcher/engine ----
    MountAttached(MountFacts),
    MountDetached {
        id: u64,
    },
    /// Remount or option change (seen on the next mountinfo read).
    MountChanged(MountFacts),
    /// A full table scan: replaces the whole view (start-up, queue overflow).
    MountResync(Vec<MountFacts>),
    MountStorm {
        key: StormKey,
        count: u64,
        message: String,
    },
    MountStormCleared {
        key: StormKey,
    },

    // ---- devices, from the device watcher ----
    NamespaceAdded(NamespaceFacts),
    /// The namespace's block device went away. `identity` is the incarnation removed: a late
    /// removal of an older incarnation does not remove a newer one.
    NamespaceRemoved {
        nqn: Nqn,
        nsid: u32,
        identity: BlockIdentity,
    },
    ControllerState(ControllerFacts),
    ControllerRemoved {
        nqn: Nqn,
        controller: String,
    },
    /// A full device scan: replaces the namespace and controller views.
    DeviceResync {
        namespaces: Vec<NamespaceFacts>,
        controllers: Vec<ControllerFacts>,
    },

    /// One sample of a staged device's request counters (`/sys/block/X/inflight` and the
    /// completed requests of `/sys/block/X/stat`), taken now.
    IoProgress {
        dev: DevNum,
        inflight: u64,
        completed: u64,
    },

    // ---- filesystems, from fanotify FAN_FS_ERROR ----
    /// `count` errors (last `errno`) on the superblock of `dev`. Sticky until the volume is
    /// recovered or restaged. See the crate docs on keeping errors of a superseded superblock
    /// with the same `major:minor` out.
    FsError {
        dev: DevNum,
        errno: i32,
        count: u32,
    },

    // ---- executor feedback ----
    RecoveryStarted {
        volume_id: VolumeId,
        attempt: u32,
    },
    /// The staging path is mounted again: see [`RecoveryReport`].
    RecoverySucceeded {
        volume_id: VolumeId,
        report: RecoveryReport,
    },
    /// `final_` = the executor knows retrying cannot help.
    RecoveryFailed {
        volume_id: VolumeId,
        attempt: u32,
        error: String,
        final_: bool,
    },

    /// Time passed (the machine asked for it with `Action::ScheduleTick`).
    Tick,
}

/// The kind of an event, for causes and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    VolumeStaged,
    VolumeUnstaged,
    VolumePublished,
    VolumeUnpublished,
    MountAttached,
    MountDetached,
    MountChanged,
    MountResync,
    MountStorm,
    MountStormCleared,
    NamespaceAdded,
    NamespaceRemoved,
    ControllerState,
    ControllerRemoved,
    DeviceResync,
    IoProgress,
    ConnectFailed,
    FsError,
    RecoveryStarted,
    RecoverySucceeded,
    RecoveryFailed,
    Tick,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::VolumeStaged => "volume_staged",
            Self::VolumeUnstaged => "volume_unstaged",
            Self::VolumePublished => "volume_published",
            Self::VolumeUnpublished => "volume_unpublished",
            Self::MountAttached => "mount_attached",
            Self::MountDetached => "mount_detached",
            Self::MountChanged => "mount_changed",
            Self::MountResync => "mount_resync",
            Self::MountStorm => "mount_storm",
            Self::MountStormCleared => "mount_storm_cleared",
            Self::NamespaceAdded => "namespace_added",
            Self::NamespaceRemoved => "namespace_removed",
            Self::ControllerState => "controller_state",
            Self::ControllerRemoved => "controller_removed",
            Self::DeviceResync => "device_resync",
            Self::IoProgress => "io_progress",
            Self::ConnectFailed => "connect_failed",
            Self::FsError => "fs_error",
            Self::RecoveryStarted => "recovery_started",
            Self::RecoverySucceeded => "recovery_succeeded",
            Self::RecoveryFailed => "recovery_failed",
            Self::Tick => "tick",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl MonitorEvent {
    pub fn kind(&self) -> EventKind {
        match self {
            Self::VolumeStaged { .. } => EventKind::VolumeStaged,
            Self::VolumeUnstaged { .. } => EventKind::VolumeUnstaged,
            Self::VolumePublished { .. } => EventKind::VolumePublished,
            Self::VolumeUnpublished { .. } => EventKind::VolumeUnpublished,
            Self::MountAttached(_) => EventKind::MountAttached,
            Self::MountDetached { .. } => EventKind::MountDetached,
            Self::MountChanged(_) => EventKind::MountChanged,
            Self::MountResync(_) => EventKind::MountResync,
            Self::MountStorm { .. } => EventKind::MountStorm,
            Self::MountStormCleared { .. } => EventKind::MountStormCleared,
            Self::NamespaceAdded(_) => EventKind::NamespaceAdded,
            Self::NamespaceRemoved { .. } => EventKind::NamespaceRemoved,
            Self::ControllerState(_) => EventKind::ControllerState,
            Self::ControllerRemoved { .. } => EventKind::ControllerRemoved,
            Self::DeviceResync { .. } => EventKind::DeviceResync,
            Self::IoProgress { .. } => EventKind::IoProgress,
            Self::ConnectFailed { .. } => EventKind::ConnectFailed,
            Self::FsError { .. } => EventKind::FsError,
            Self::RecoveryStarted { .. } => EventKind::RecoveryStarted,
            Self::RecoverySucceeded { .. } => EventKind::RecoverySucceeded,
            Self::RecoveryFailed { .. } => EventKind::RecoveryFailed,
            Self::Tick => EventKind::Tick,
        }
    }

    /// A one-line summary for a condition's cause (what happened, with the kernel identities).
    /// The frequent kernel events are written out only when read.
    pub fn summary(&self) -> Message {
        match *self {
            Self::MountDetached { id } => Message::new(Summary::MountDetached(id)),
            Self::IoProgress {
                dev,
                inflight,
                completed,
            } => Message::new(Summary::IoProgress {
                dev,
                inflight,
                completed,
            }),
            _ => Message::from(self.summary_text()),
        }
    }

    fn summary_text(&self) -> String {
        match self {
            Self::VolumeStaged {
                volume_id,
                device,
                mount,
                adopted,
                ..
            } => {
                let how = if *adopted { "re-adopted" } else { "staged" };
                match mount {
                    Some(m) => format!("{volume_id} {how} on {device}, {m}"),
                    None => format!("{volume_id} {how} on {device} (raw block)"),
                }
            }
            Self::VolumeUnstaged { volume_id } => format!("{volume_id} unstaged"),
            Self::VolumePublished {
                volume_id, target, ..
            } => format!("{volume_id} published at {}", target.display()),
            Self::VolumeUnpublished { volume_id, target } => {
                format!("{volume_id} unpublished from {}", target.display())
            }
            Self::MountAttached(m) => format!(
                "mount {} attached at {} ({})",
                m.id,
                m.mount_point.display(),
                m.dev
            ),
            Self::MountDetached { id } => Summary::MountDetached(*id).to_string(),
            Self::MountChanged(m) => format!(
                "mount {} at {} changed: {} / {}",
                m.id,
                m.mount_point.display(),
                if m.read_only { "ro" } else { "rw" },
                m.super_options
            ),
            Self::MountResync(v) => format!("mount table resync ({} entries)", v.len()),
            Self::MountStorm {
                key,
                count,
                message,
            } => format!("mount storm on {key}: {count} entries ({message})"),
            Self::MountStormCleared { key } => format!("mount storm on {key} cleared"),
            Self::NamespaceAdded(ns) => format!(
                "namespace {} (nsid {}) of {} added as {}, {}",
                ns.name, ns.nsid, ns.nqn, ns.identity, ns.ids
            ),
            Self::NamespaceRemoved {
                nqn,
                nsid,
                identity,
            } => format!("namespace nsid {nsid} of {nqn} removed ({identity})"),
            Self::ControllerState(c) => {
                format!("controller {} of {} is {}", c.controller, c.nqn, c.state)
            }
            Self::ControllerRemoved { nqn, controller } => {
                format!("controller {controller} of {nqn} removed")
            }
            Self::DeviceResync {
                namespaces,
                controllers,
            } => format!(
                "device resync ({} namespaces, {} controllers)",
                namespaces.len(),
                controllers.len()
            ),
            Self::IoProgress {
                dev,
                inflight,
                completed,
            } => Summary::IoProgress {
                dev: *dev,
                inflight: *inflight,
                completed: *completed,
            }
            .to_string(),
            Self::ConnectFailed { volume_id, nqn, .. } => {
                format!("connecting {nqn} for {volume_id} failed")
            }
            Self::FsError { dev, errno, count } => {
                format!("filesystem error on {dev}: errno {errno}, {count} error(s)")
            }
            Self::RecoveryStarted { volume_id, attempt } => {
                format!("recovery attempt {attempt} of {volume_id} started")
            }
            Self::RecoverySucceeded { volume_id, report } => {
                format!("recovery of {volume_id} succeeded on {}", report.new_device)
            }
            Self::RecoveryFailed {
                volume_id,
                attempt,
                error,
                ..
            } => format!("recovery attempt {attempt} of {volume_id} failed: {error}"),
            Self::Tick => "deadline reached".to_owned(),
        }
    }
}

/// The summaries written out when read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Summary {
    MountDetached(u64),
    IoProgress {
        dev: DevNum,
        inflight: u64,
        completed: u64,
    },
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::MountDetached(id) => write!(f, "mount {id} detached"),
            Self::IoProgress {
                dev,
                inflight,
                completed,
            } => write!(
                f,
                "{dev}: {inflight} request(s) in flight, {completed} completed"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(ro: bool, opts: &str) -> MountFacts {
        MountFacts {
            id: 1,
            dev: DevNum::new(259, 0),
            mount_point: "/x".into(),
            fs_type: "ext4".into(),
            read_only: ro,
            super_options: opts.into(),
        }
    }

    #[test]
    fn super_option_flags_match_whole_options_only() {
        assert_eq!(
            m(false, "ro,emergency_ro").dead_flag(),
            Some("emergency_ro")
        );
        assert_eq!(m(false, "rw,shutdown").dead_flag(), Some("shutdown"));
        assert_eq!(m(false, "rw,errors=remount-ro").dead_flag(), None);
        assert!(!m(false, "rw,errors=remount-ro").effectively_read_only());
        assert!(m(false, "ro,errors=remount-ro").effectively_read_only());
        assert!(m(true, "rw").effectively_read_only(), "per-mount ro counts");
    }
}
