//! The mount-table engine of the node plugin.
//!
//! * [`mountinfo`]: a fast, allocation-free-per-field parser of `/proc/<pid>/mountinfo` and the
//!   owned [`MountInfo`](mountinfo::MountInfo) every other crate uses.
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

pub mod mountinfo;
pub mod storm;
pub mod sys;
pub mod table;
pub mod watch;
