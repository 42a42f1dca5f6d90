//! The monitor's sans-IO state machine: kernel facts in, volume conditions and actions out.
//!
//! No syscalls, no clocks, no async runtime: [`Monitor::on_event`] takes a [`MonitorEvent`]
//! and the current [`Timestamp`] and returns [`Action`]s for the executor. Conditions are
//! queried in O(1) with [`Monitor::condition`] and [`Monitor::publish_condition`].
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
//! # Re-adoption after a restart
//! The integration layer replays `VolumeStaged { adopted: true }` (and `VolumePublished`) for
//! each persisted record plus a `MountResync` and a `DeviceResync`, in any order. Each
//! volume's condition follows from that one pass: a record on 259:1 diskseq 7 with the scan
//! showing the NQN at 259:4 is `DeviceReplaced`; a staging mount absent from the scan is
//! `MountMissing`; a namespace absent from the scan starts the gone-grace.

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
    MonitorConfig, DEFAULT_GONE_GRACE, DEFAULT_HISTORY_LEN, DEFAULT_RECOVERY_ATTEMPTS,
    DEFAULT_RECOVERY_BACKOFF,
};
pub use event::{
    ControllerFacts, ControllerState, EventKind, MonitorEvent, MountFacts, NamespaceFacts,
    PublishedMount,
};
pub use ids::{MountKey, StormKey, VolumeId};
pub use machine::Monitor;
pub use time::Timestamp;
