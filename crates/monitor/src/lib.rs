//! The monitor's sans-IO state machine: kernel facts in, volume conditions and actions out.
//!
//! No syscalls, no clocks, no async runtime: [`Monitor::on_event`] takes a [`MonitorEvent`]
//! and the current [`Timestamp`] and returns [`Action`]s for the executor. Conditions are
//! queried without I/O or scanning (a hash lookup) with [`Monitor::condition`] and
//! [`Monitor::publish_condition`].
//!
//! ```
//! use rds_monitor::*;
//! use rds_types::{BlockIdentity, DevNum, DiskSeq, Nqn};
//!
//! let mut m = Monitor::new(MonitorConfig::default());
//! let nqn = Nqn::parse("nqn.2000-02.com.mikrotik:pvc-1").unwrap();
//! let dev = |seq| BlockIdentity { dev: DevNum::new(259, 1), diskseq: Some(DiskSeq(seq)) };
//! let t = |s| Timestamp::from_duration(std::time::Duration::from_secs(s));
//! let id = VolumeId::parse("pvc-1").expect("valid volume id");
//! m.on_event(MonitorEvent::VolumeStaged {
//!     volume_id: id.clone(), nqn: nqn.clone(), nsid: Some(1), ids: Default::default(),
//!     staging_path: "/staging/pvc-1".into(),
//!     mount: Some(MountKey { id: 42, dev: DevNum::new(259, 1) }),
//!     device: dev(7), fs_type: Some("ext4".into()), read_only: false, adopted: false,
//! }, t(1));
//! // The namespace comes back under the same number with a new diskseq.
//! let actions = m.on_event(MonitorEvent::NamespaceAdded(NamespaceFacts {
//!     nqn, nsid: 1, name: "nvme1n1".into(), identity: dev(8), ids: Default::default(),
//! }), t(2));
//! assert_eq!(m.condition(&id).unwrap().kind, ConditionKind::DeviceReplaced);
//! assert!(actions.iter().any(|a| matches!(a, Action::ScheduleTick { .. })));
//! // One second later the tick asks for the recovery.
//! let actions = m.on_event(MonitorEvent::Tick, t(3));
//! assert!(actions.iter().any(|a| matches!(a, Action::Recover { attempt: 1, .. })));
//! ```
//!
//! # Facts, not conclusions
//! The machine accumulates facts (the mount table by unique mount id, NVMe namespaces by NQN
//! and nsid with their `major:minor` + `diskseq`, controller states, storms reported by the
//! mount engine, `FAN_FS_ERROR`s) and per-volume records (the NQN, device identity and staging
//! mount id at stage time). A volume's condition is a pure function of those
//! (`evaluate.rs`); each event re-evaluates only the volumes it touches, found through the
//! NQN, device and mount-id indices. [`recompute::check`] re-derives everything from scratch
//! and is what the property test compares against.
//!
//! # Conditions and priority
//! When several faults hold, the highest wins (see [`ConditionKind::priority`]):
//!
//! | priority | condition | holds when |
//! |---|---|---|
//! | 7 | `MountStorm` | the mount engine reports a storm on the volume's device, or at/above its staging path or a target |
//! | 6 | `DeviceGone` | the namespace was removed (or missing from an authoritative scan) and nothing came back within `gone_grace` |
//! | 5 | `Recovering` | the executor reported `RecoveryStarted` and has not answered yet |
//! | 4 | `DeviceReplaced` | the NQN (nsid) resolves to another device: another `major:minor`, or the same one with a new `diskseq` |
//! | 3 | `FilesystemFailed` | `FsError` on the volume's device, `emergency_ro`/`shutdown` in the staging mount's super options, or a read-write staging mount that turned read-only |
//! | 2 | `MountMissing` | the staging mount left the table without an unstage |
//! | 1 | `ControllerReconnecting` | no controller of the NQN is `live` and one is `connecting`/`resetting` |
//! | 0 | `Healthy` | none of the above |
//!
//! Why this order: a storm endangers the whole node and must not be made worse by remounts,
//! so it masks everything; a gone device makes every other fault moot and nothing can be done
//! until it returns; while a recovery runs, the faults it is repairing (and the unmounts it
//! performs) are expected; a replaced device is the root cause of the filesystem errors and
//! the missing mount that usually accompany it, and tells the executor what to mount; a dead
//! filesystem does not heal when the controller reconnects (so it beats
//! `ControllerReconnecting`); a reconnecting controller is transient and may heal by itself.
//!
//! # Publish conditions
//! Each publish (one pod's target) has its own condition, what `NodeGetVolumeStats` on that
//! target reports. In order: the pod holds a filesystem a recovery replaced (stale, see
//! below) > its own bind mount left the table without an unpublish (`MountMissing`, with its
//! own `MountFailure` event) > the volume's condition, inherited > its bind mount alone
//! turned read-only although published read-write (`FilesystemFailed`) > `Healthy`.
//!
//! # Transitions
//! ```text
//!            VolumeStaged                     fault appears (any event)
//!   (none) ──────────────► Healthy ◄──────────────────────────────┐
//!                             │                                    │ fault clears / RecoverySucceeded
//!                             ▼                                    │
//!        ControllerReconnecting, MountMissing, FilesystemFailed, DeviceReplaced,
//!        DeviceGone (after the grace), MountStorm
//!                             │ recoverable fault, device present, path live, no storm:
//!                             │ Recover after backoff[0] (ScheduleTick)
//!                             ▼
//!                 RecoveryStarted ──► Recovering ──► RecoverySucceeded ──► (re-evaluated)
//!                                          │
//!                                          └──► RecoveryFailed ──► fault again; next attempt
//!                                               after backoff[n], or exhausted (event posted)
//!   VolumeUnstaged: the record, its publishes and any recovery cycle are dropped.
//! ```
//! Every kind change is recorded ([`Monitor::transitions`]) with its [`Cause`] (the event
//! summarised with its kernel identities), its time and how long the previous kind lasted;
//! the [`Action::ConditionChanged`] carries the same for the log.
//!
//! # Hysteresis
//! - **Namespace removal**: a reconnect removes and re-adds the namespace. `NamespaceRemoved`
//!   records the removal and asks for a tick at `now + gone_grace`; if a namespace for the NQN
//!   comes back first the volume is `DeviceReplaced` (new identity) or healthy (same
//!   identity), never `DeviceGone`. A late removal of an older incarnation is ignored.
//! - **Late watcher events**: a mount or namespace absent from our view right after a fresh
//!   stage is not missing, only unreported. A mount is judged missing once it was seen, seen
//!   detached, or an authoritative [`MonitorEvent::MountResync`] postdates the stage (or, for
//!   an `adopted` stage, any resync). Likewise a namespace is judged removed only on a
//!   removal event or when an authoritative device resync lacks it.
//! - **Recovery debounce**: attempt 1 waits `recovery_backoff[0]` (1 s) so such races settle
//!   before anything is remounted; later attempts wait 2 s, 4 s after each failure. Recovery
//!   is asked for `DeviceReplaced`, `FilesystemFailed` and `MountMissing` only while the
//!   namespace is present, a path is live and there is no storm.
//!
//! - **Reported successes are verified**: after `RecoverySucceeded` the cycle watches until
//!   the new staging mount is seen in the table without a fault. If the same fault is back
//!   first (mounting a device whose superblock running pods still hold returns that same dead
//!   superblock), the success counts as a failed attempt, so the attempt budget bounds the
//!   remounts instead of looping.
//!
//! Timers are never slept on: the machine returns [`Action::ScheduleTick`] and expects a
//! [`MonitorEvent::Tick`]; any later event also fires due deadlines, so a late tick is harmless.
//!
//! # Honest recovery
//! Remounting the staging path heals *future* pods only: a running container keeps its
//! reference to the dead superblock. So after a successful recovery of a replaced device or a
//! failed filesystem every publish that existed is marked stale: its condition stays
//! abnormal (with a message saying the pod must be recreated) until that target is
//! unpublished; the `RecoverySucceeded` event names the stranded targets; with
//! `evict_pods_on_stale` an [`Action::EvictPods`] asks for them to be deleted. A staging mount
//! that merely vanished left the pods' binds intact, so its recovery strands nobody.
//!
//! # Contract with the executor and the integration layer
//! - Answer every [`Action::Recover`] with `RecoveryStarted` and then `RecoverySucceeded` or
//!   `RecoveryFailed` for the same attempt; until then the volume gets no other `Recover`.
//!   Take the per-volume guard first and drop a `Recover` for a volume that was unstaged
//!   meanwhile (a deadline can fire just before the unstage event is processed).
//! - Report the new staging mount in `RecoverySucceeded` and, if the targets were re-bound,
//!   their new bind mounts in `republished`.
//! - `FsError` carries only a device number. A pod still holding the old superblock of a
//!   replaced device with the *same* `major:minor` can produce errors that look like the new
//!   mount's; use one fanotify group per staged superblock and drop it on recovery/unstage so
//!   errors from a superseded superblock never reach the machine.
//! - Deliver [`MonitorEvent::Tick`] at or after each [`Action::ScheduleTick`] (or just sleep
//!   until [`Monitor::next_deadline`]).
//!
//! # Re-adoption after a restart
//! The integration layer replays `VolumeStaged { adopted: true }` (and `VolumePublished`) for
//! each persisted record plus a `MountResync` and a `DeviceResync`, in any order. Each
//! volume's condition follows from that one pass: a record on 259:1 diskseq 7 with the scan
//! showing the NQN at 259:4 is `DeviceReplaced`; a staging mount absent from the scan is
//! `MountMissing`; a namespace absent from the scan starts the gone-grace. Not recovered by a
//! restart: stale marks of pods stranded by an earlier recovery, recovery cycles in progress
//! and `FsError`s seen before the restart (the kernel's `emergency_ro`/`shutdown` flags are
//! still visible in the mount resync).

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod action;
mod apply;
mod condition;
mod config;
mod evaluate;
mod event;
mod facts;
mod ids;
mod machine;
pub mod recompute;
mod recovery;
mod time;
mod timers;
mod volume;

pub use action::{
    Action, EventReason, EventType, IgnoreReason, MetricEvent, RecoveryReason, RecoveryResult,
};
pub use condition::{Cause, ConditionKind, Transition, VolumeCondition};
pub use config::{
    MonitorConfig, DEFAULT_GONE_GRACE, DEFAULT_HISTORY_LEN, DEFAULT_IO_STALL_AFTER,
    DEFAULT_RECONNECT_BACKOFF, DEFAULT_RECOVERY_ATTEMPTS, DEFAULT_RECOVERY_BACKOFF,
};
pub use evaluate::headline;
pub use event::{
    ControllerFacts, ControllerState, EventKind, MonitorEvent, MountFacts, NamespaceFacts,
    PublishedMount, RecoveryReport, StaleMark,
};
pub use ids::{MountKey, StormKey, VolumeId};
pub use machine::Monitor;
pub use time::Timestamp;
