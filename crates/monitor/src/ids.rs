//! Identities the monitor keys its state on (the kernel's ones come from `rds_types`).

use std::fmt;
use std::path::PathBuf;

use rds_types::DevNum;

/// A CSI volume ID (the PV name, `pvc-<uuid>`). Validated by the CSI layer; the monitor only
/// uses it as a key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VolumeId(String);

impl VolumeId {
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for VolumeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for VolumeId {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

impl From<String> for VolumeId {
    fn from(s: String) -> Self {
        Self(s)
    }
}

/// One mount as the kernel identifies it: its 64-bit unique mount id (never reused within a
/// boot, what `statmount`/fanotify report) and the `major:minor` of its superblock. Paths are
/// not identity: the same path can be mounted over, a symlinked kubelet dir has two spellings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MountKey {
    pub id: u64,
    pub dev: DevNum,
}

impl fmt::Display for MountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "mount {} on {}", self.id, self.dev)
    }
}

/// What a mount storm was detected on (by the mount engine): every mount of one device, or the
/// entries stacked at or under one path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StormKey {
    Device(DevNum),
    Path(PathBuf),
}

impl fmt::Display for StormKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StormKey::Device(d) => write!(f, "device {d}"),
            StormKey::Path(p) => write!(f, "path {}", p.display()),
        }
    }
}
