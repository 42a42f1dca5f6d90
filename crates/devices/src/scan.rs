//! Reading the sysfs tree under an injectable root: full scans and per-uevent enrichment.
//!
//! Devices come and go while we read. An attribute that vanishes mid-read means the device is
//! being removed: that entry is skipped (its remove uevent follows, or the next scan settles
//! it), never an error that stops the scan. Only an unreadable root directory is an error.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use rds_types::{BlockIdentity, DevNum, DiskSeq};
use tracing::debug;

use crate::model::{
    BlockInfo, ControllerInfo, ControllerState, NvmeNamespace, NvmeRole, Observation, Snapshot,
};
use crate::uevent::{Action, Uevent};

/// Uevent subsystems the watcher follows.
pub const SUBSYSTEMS: [&str; 3] = ["nvme", "nvme-subsystem", "block"];

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A read of sysfs ran past its deadline (the kernel held it), or one still is.
    #[error("a sysfs read did not finish within {0:?}")]
    Stalled(std::time::Duration),
}

/// Reads the sysfs tree rooted at `sys_root`.
#[derive(Debug, Clone)]
pub struct SysfsReader {
    sys: PathBuf,
}

impl SysfsReader {
    /// The sysfs root this reader reads under.
    pub fn sys_root(&self) -> &std::path::Path {
        &self.sys
    }

    pub fn new(sys_root: impl Into<PathBuf>) -> Self {
        Self {
            sys: sys_root.into(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.sys
    }

    fn abs(&self, devpath: &str) -> PathBuf {
        self.sys.join(devpath.trim_start_matches('/'))
    }

    /// Full scan of subsystems, controllers and block devices.
    pub fn scan(&self) -> Result<Snapshot, ScanError> {
        let mut snap = Snapshot::default();
        for (name, devpath) in self.class_entries("nvme-subsystem")? {
            if let Some(nqn) = attr(&self.abs(&devpath), "subsysnqn") {
                snap.subsystems.push((name, nqn));
            }
        }
        for (name, devpath) in self.class_entries("nvme")? {
            if let Some(c) = self.controller(&name, &devpath) {
                snap.controllers.push(c);
            }
        }
        let block_class = if self.sys.join("class/block").is_dir() {
            "block"
        } else {
            ""
        };
        let entries = if block_class.is_empty() {
            self.dir_links("block")?
        } else {
            self.class_entries("block")?
        };
        for (name, devpath) in entries {
            if let Some(b) = self.block(&name, &devpath, None) {
                snap.blocks.push(b);
            }
        }
        snap.sort();
        Ok(snap)
    }

    /// `(name, devpath)` for each link in `<sys>/class/<class>`. A missing class directory is
    /// an empty class (no NVMe module loaded).
    fn class_entries(&self, class: &str) -> Result<Vec<(String, String)>, ScanError> {
        self.links_in(&format!("class/{class}"))
    }

    fn dir_links(&self, dir: &str) -> Result<Vec<(String, String)>, ScanError> {
        self.links_in(dir)
    }

    fn links_in(&self, rel: &str) -> Result<Vec<(String, String)>, ScanError> {
        let dir = self.sys.join(rel);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(ScanError::Read { path: dir, source }),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            // Removed between readdir and readlink: skip.
            let Ok(target) = fs::read_link(entry.path()) else {
                continue;
            };
            out.push((name, normalize_link(&format!("/{rel}"), &target)));
        }
        Ok(out)
    }

    /// Reads controller `name` at `devpath`; `None` when it is not (or no longer) complete.
    pub fn controller(&self, name: &str, devpath: &str) -> Option<ControllerInfo> {
        let dir = self.abs(devpath);
        let state = attr(&dir, "state")?;
        let subsysnqn = attr(&dir, "subsysnqn")?;
        Some(ControllerInfo {
            name: name.to_owned(),
            state: ControllerState::parse(&state),
            transport: attr(&dir, "transport").unwrap_or_default(),
            address: attr(&dir, "address").unwrap_or_default(),
            subsysnqn,
            cntlid: attr(&dir, "cntlid").and_then(|s| s.parse().ok()),
            dev: attr(&dir, "dev").and_then(|s| s.parse().ok()),
        })
    }

    /// Reads controller `name` through its class link (`<sys>/class/nvme/<name>`).
    pub fn controller_by_name(&self, name: &str) -> Option<ControllerInfo> {
        let link = self.sys.join("class/nvme").join(name);
        let target = fs::read_link(link).ok()?;
        self.controller(name, &normalize_link("/class/nvme", &target))
    }

    /// Reads block device `name` at `devpath`. `ev` supplies what the uevent already says
    /// (number, diskseq, devname), which wins over sysfs and lets a block device be known even
    /// when its sysfs directory is not under this root (a loop device seen by an emulated-root
    /// watcher). Returns `None` when neither source gives a device number.
    pub fn block(&self, name: &str, devpath: &str, ev: Option<&Uevent>) -> Option<BlockInfo> {
        let dir = self.abs(devpath);
        let dev = ev
            .and_then(|e| e.dev)
            .or_else(|| attr(&dir, "dev").and_then(|s| s.parse::<DevNum>().ok()))?;
        // diskseq only grows, and the kernel bumps it right *after* sending a detach's
        // `DISK_MEDIA_CHANGE=1` event, so that event carries the old value: the larger of the
        // event's and sysfs's is the current incarnation.
        // Other events' DISKSEQ is current, which saves a read on the hot path.
        let ev_seq = ev.and_then(|e| e.diskseq);
        let media_change = ev.is_some_and(|e| e.get("DISK_MEDIA_CHANGE") == Some("1"));
        let sysfs_seq = || {
            attr(&dir, "diskseq")
                .and_then(|s| s.parse().ok())
                .map(DiskSeq)
        };
        let diskseq = match ev_seq {
            Some(a) if media_change => Some(sysfs_seq().map_or(a, |b| a.max(b))),
            Some(a) => Some(a),
            None => sysfs_seq(),
        };
        let devtype = ev
            .and_then(|e| e.devtype.clone())
            .or_else(|| uevent_attr(&dir, "DEVTYPE"));
        // The kernel's DEVNAME is relative to the dev root; udev's is the node's full path
        // (`/dev/nvme0n1`). Both become the relative form.
        let devname = ev
            .and_then(|e| e.devname.as_deref())
            .map(|d| {
                d.strip_prefix("/dev/")
                    .unwrap_or(d)
                    .trim_start_matches('/')
                    .to_owned()
            })
            .unwrap_or_else(|| name.to_owned());
        Some(BlockInfo {
            name: name.to_owned(),
            devpath: devpath.to_owned(),
            devname,
            identity: BlockIdentity { dev, diskseq },
            devtype,
            size_sectors: attr(&dir, "size").and_then(|s| s.parse().ok()),
            nvme: self.nvme_namespace(name, devpath, &dir),
        })
    }

    fn nvme_namespace(&self, name: &str, devpath: &str, dir: &Path) -> Option<NvmeNamespace> {
        if !name.starts_with("nvme") {
            return None;
        }
        let parent = devpath.rsplit('/').nth(1)?;
        let role = if parent.starts_with("nvme-subsys") {
            NvmeRole::Head {
                subsystem: parent.to_owned(),
            }
        } else if is_path_disk(name) {
            NvmeRole::Path {
                controller: parent.to_owned(),
            }
        } else {
            NvmeRole::Namespace {
                controller: parent.to_owned(),
            }
        };
        // Both a controller and a subsystem directory carry `subsysnqn`.
        let parent_dir = dir.parent()?;
        let nqn = attr(parent_dir, "subsysnqn")?;
        let nsid = attr(dir, "nsid")?.parse().ok()?;
        Some(NvmeNamespace {
            role,
            nqn,
            nsid,
            uuid: attr(dir, "uuid"),
            nguid: attr(dir, "nguid"),
            wwid: attr(dir, "wwid"),
        })
    }

    /// Turns a uevent into what the model needs, reading the attributes the kernel does not
    /// put into events (controller state and NQN, namespace nsid). `None` for events of other
    /// subsystems and for add/change events whose device is already gone again.
    pub fn observe(&self, ev: &Uevent) -> Option<Observation> {
        let name = ev.devpath.rsplit('/').next()?.to_owned();
        let removal = ev.action == Action::Remove;
        match ev.subsystem.as_str() {
            "nvme-subsystem" if removal => Some(Observation::SubsystemGone { name }),
            "nvme-subsystem" => {
                let nqn = attr(&self.abs(&ev.devpath), "subsysnqn");
                if nqn.is_none() {
                    debug!(devpath = %ev.devpath, "subsystem gone before it could be read");
                }
                Some(Observation::SubsystemUp { name, nqn: nqn? })
            }
            "nvme" if removal => Some(Observation::ControllerGone { name }),
            "nvme" => {
                let c = self.controller(&name, &ev.devpath);
                if c.is_none() {
                    debug!(devpath = %ev.devpath, "controller gone before it could be read");
                }
                Some(Observation::ControllerUp(c?))
            }
            // The sysfs name (last devpath component) is the key, as in a scan.
            "block" if removal => Some(Observation::BlockGone { name }),
            "block" => {
                let b = self.block(&name, &ev.devpath, Some(ev));
                if b.is_none() {
                    debug!(devpath = %ev.devpath, "block event without a device number");
                }
                Some(Observation::BlockUp(b?))
            }
            _ => None,
        }
    }

    /// Whether the device directory of `devpath` exists under the root.
    pub fn exists(&self, devpath: &str) -> bool {
        self.abs(devpath).is_dir()
    }
}

/// `nvmeNcKnM`: a hidden per-path disk.
fn is_path_disk(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("nvme") else {
        return false;
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    digits > 0 && rest[digits..].starts_with('c')
}

/// One attribute, trailing newline removed; `None` if missing, unreadable (a race) or not
/// UTF-8. A sysfs attribute is at most one page and comes whole from the first `read`, so
/// this is open + read + close (no `fstat`, no second read), which matters on the per-event
/// path.
pub fn attr(dir: &Path, name: &str) -> Option<String> {
    use std::io::Read;
    let mut f = fs::File::open(dir.join(name)).ok()?;
    let mut buf = [0u8; 4096];
    let mut len = 0;
    // Attributes end with a newline, so one read normally suffices; otherwise read to EOF.
    while len < buf.len() {
        match f.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return None,
        }
        if buf[..len].ends_with(b"\n") {
            break;
        }
    }
    let s = std::str::from_utf8(&buf[..len]).ok()?;
    Some(s.trim_end_matches('\n').to_owned())
}

/// One `KEY=VALUE` line of a device's `uevent` attribute.
fn uevent_attr(dir: &Path, key: &str) -> Option<String> {
    let s = fs::read_to_string(dir.join("uevent")).ok()?;
    s.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k == key).then(|| v.to_owned())
    })
}

/// Lexically resolves a relative symlink target found in directory `link_dir` (a devpath-like
/// path such as `/class/block`) into a devpath (`/devices/...`).
pub fn normalize_link(link_dir: &str, target: &Path) -> String {
    let mut parts: Vec<String> = link_dir
        .split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    for c in target.to_string_lossy().split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other.to_owned()),
        }
    }
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_disks_are_recognised_by_name() {
        assert!(is_path_disk("nvme0c1n1"));
        assert!(is_path_disk("nvme12c3n4"));
        assert!(!is_path_disk("nvme0n1"));
        assert!(!is_path_disk("nvmec1n1"));
        assert!(!is_path_disk("loop0"));
    }
}
