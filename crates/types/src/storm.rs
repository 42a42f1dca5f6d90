//! What a mount storm is about.

use std::fmt;
use std::path::PathBuf;

use crate::DevNum;

/// A mount storm is flagged on every mount of one device, or on the entries stacked at or
/// under one mount point.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StormKey {
    Device(DevNum),
    MountPoint(PathBuf),
}

impl fmt::Display for StormKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Device(d) => write!(f, "device {d}"),
            Self::MountPoint(p) => write!(f, "mount point {}", p.display()),
        }
    }
}
