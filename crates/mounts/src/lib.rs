//! The mount-table engine of the node plugin: read the kernel's mount table fast and exactly,
//! keep an indexed snapshot of it, follow its changes as typed events, and flag mount storms.
//!
//! # Modules and the API other crates call
//!
//! * [`mountinfo`] — `/proc/<pid>/mountinfo`.
//!   - [`MountInfo`](mountinfo::MountInfo): one owned mount (`id`, `parent_id`, `dev:
//!     DevNum`, `root`, `mount_point: PathBuf`, `mount_options`, `optional:
//!     Vec<OptionalField>`, `fs_type`, `source: Option<String>`, `super_options`,
//!     `unique_id: Option<u64>`), with `is_read_only()` (per-mount `ro`),
//!     `is_super_read_only()`, `mount_flag(name)`, `super_flag(name)` (e.g. `emergency_ro`,
//!     `shutdown`), `super_option(name) -> Option<String>`, `shared_group()`,
//!     `master_group()`, `is_unbindable()`, `same_mount_state(&other)`, `to_line()`.
//!   - `parse_line(&[u8]) -> Result<MountEntry<'_>, ParseError>`: borrowed, no allocation;
//!     fields stay escaped ([`Escaped`](mountinfo::Escaped)) until decoded;
//!     `MountEntry::to_owned() -> MountInfo`.
//!   - `entries(&[u8])` (borrowed iterator), `parse_table(&[u8]) -> ParsedTable { entries,
//!     errors }`, `read_mountinfo(proc_root, "self") -> io::Result<ParsedTable>`,
//!     `escape`/`unescape` (the kernel's octal escapes, exact for arbitrary bytes).
//!   - A final line without its newline is a [`ParseErrorKind::Truncated`](mountinfo::ParseErrorKind)
//!     error, never a silently cut entry. Super options are kept as printed (escaped) so that
//!     an escaped `,` inside a value cannot split it.
//! * [`table`] — [`MountTable`](table::MountTable), the snapshot shared by the monitor and the
//!   CSI handlers (`MountTable::read(proc_root, "self")` for a one-off read): `get(id)`, `get_by_unique(u64)`, `at_mount_point(path)`, `top_at(path)`,
//!   `on_device(dev)`, `device_count(dev)` and `mount_point_count(path)` (O(1), maintained on
//!   every `insert`/`remove`), `diff(&old, &new) -> Vec<MountChange>` (detaches children
//!   first, attaches parents first), `apply(&change)`.
//! * [`storm`] — [`StormDetector`](storm::StormDetector), pure (time is passed in): per-device
//!   and per-mount-point level (default 100) and net-growth signals, one
//!   [`StormReport`](storm::StormReport) per episode with top offenders and a command to
//!   inspect them, cleared below 80 % of the threshold.
//! * [`watch`] — [`spawn(WatcherConfig)`](watch::spawn) `-> (WatcherHandle,
//!   mpsc::Receiver<MountEvent>)`; [`MountEvent`](watch::MountEvent) is `Attached`,
//!   `Detached`, `Changed { old, new }`, `Resynced { table }` (always first: the initial
//!   scan), `Overflow`, `Storm`, `StormCleared`, `Error`. [`Strategy`](watch::Strategy):
//!   `Fanotify` (6.15+), `ListStat` (6.8+), `Reread` (any), `Auto`.
//!   `WatcherHandle::{track, untrack, table, strategy}`.
//! * [`MountView`] — the one way to read the table for a decision: `MountView::read(proc_root,
//!   deadline)` off the runtime, or `MountView::read_now` on a blocking thread, with
//!   `top_at(path)` and `mounts_of(dev)`. One error policy: a line that does not parse makes
//!   the whole read an error (a table that could not be fully parsed proves nothing absent).
//! * `sys` (private) — the raw `listmount(2)`/`statmount(2)`/fanotify-mount wrappers the
//!   watcher uses (constants and layouts defined there: Debian 12's headers predate them).
//!
//! ```
//! use rds_mounts::mountinfo::{parse_line, parse_table};
//! let line = b"36 35 98:0 /mnt1 /mnt\\040two rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n";
//! let e = parse_line(line).unwrap();
//! assert_eq!(e.mount_point.to_path_buf(), std::path::Path::new("/mnt two"));
//! let t = parse_table(line);
//! assert_eq!(t.entries[0].master_group(), Some(1));
//! assert!(t.errors.is_empty());
//! ```
//!
//! # What each strategy sees
//!
//! | | attach/detach | remount, move of a tracked mount | remount of an untracked mount | cost per wake |
//! |---|---|---|---|---|
//! | `Fanotify` | yes, by 64-bit id; overflow → resync | yes (POLLPRI → statmount) | no | O(changes) |
//! | `ListStat` | yes (id-set diff) | yes | no | O(ids) listmount |
//! | `Reread` | yes | yes | yes | O(table) read+parse |
//!
//! Identity is the kernel's: mounts are keyed by mount id and `major:minor`, never by a
//! source path. Every entry built from `statmount` is byte-for-byte what mountinfo prints
//! (checked by the `kernel_sys` tests).

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod mountinfo;
pub mod storm;
mod sys;
pub mod table;
mod view;
pub mod watch;

pub use view::{MountView, ViewError};

/// The kernel-reply decoders, for the fuzz targets only (`--features fuzzing`).
#[cfg(feature = "fuzzing")]
pub mod fuzzing {
    pub use crate::sys::{decode_fanotify, decode_statmount, FanMountEvent};
}

// The crate's unit tests include privileged ones (the syscall wrappers against the live kernel):
// the whole unit-test binary enters private mount and network namespaces before main.
#[cfg(test)]
rds_testkit::private_namespaces!();
