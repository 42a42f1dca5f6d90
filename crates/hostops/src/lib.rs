//! Host operations for the CSI node service and the recovery executor: the data-safety
//! critical layer.
//!
//! Everything here is a blocking function over syscalls (or, where no syscall exists, an
//! external tool run with an argument vector and a deadline). Async callers wrap each call in
//! [`deadline::run_blocking`] because any of them can hang on a dead device. Each destructive
//! operation has a guard that makes one of the Go driver's incidents impossible:
//!
//! | incident | guard |
//! |---|---|
//! | 1 mount storm | [`mknod::create_block_node`] publishes raw block by device number and re-checks it |
//! | 2 mkfs on a live volume | [`probe::format`] needs a [`probe::FormatPermit`], only minted by an `Empty` probe |
//! | 3 recursive delete of user data | [`mount::remove_target_dir`]: rmdir only, only after proving not a mount point |
//! | 4 fsck on a mounted fs | [`fstools::fsck_ext4`] checks the mount table and an `O_EXCL` open first |
//! | 5 in-use check a no-op | [`inuse::in_use`] is native and answers Unknown when it cannot see |
//! | 6, 10 unbounded calls | [`deadline::run_blocking`], [`command::run`] with process-group kill |
//! | 9 recovery left things worse | [`mount::bind`] removes its own half-made bind; unmount never goes lazy when in use |
//! | paths that escape | [`beneath::Root`] opens every path beneath kubelet's directory without following a symlink |

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod beneath;
mod blockdev;
pub use blockdev::{is_read_only, set_read_only};
pub mod command;
pub mod deadline;
pub mod fstools;
pub mod inuse;
pub mod mknod;
pub mod mount;
mod paths;
pub mod probe;
pub mod signatures;
pub mod statfs;

pub use deadline::{bounded, run_blocking, Bounded, TimedOut};
pub use inuse::{in_use, Holder, HostRoots, Usage};
pub use probe::{format, probe_content, Content, FormatPermit, FsKind};
