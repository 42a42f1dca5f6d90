//! The emulated kernel's state on disk, for cluster mode ([`super::EmulatedConfig::persist`]).
//!
//! A real kernel keeps its NVMe controllers when the plugin restarts; the emulated "kernel" is
//! the plugin's own process, so it writes down what the kernel would remember (targets,
//! controllers, which loop device and diskseq carries each namespace) after every change, and
//! the next process takes the loop devices over from it. The file is replaced atomically
//! (write to a temporary file, fsync, rename), so a crash leaves the last complete state.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use rds_types::Nqn;
use serde::{Deserialize, Serialize};

use crate::api::ConnectRequest;

/// Bumped when the shape changes; another version is refused, never guessed at.
pub const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Saved {
    pub version: u32,
    /// The last uevent and kmsg sequence number handed out.
    pub seqnum: u64,
    pub targets: Vec<SavedTarget>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedTarget {
    pub nqn: Nqn,
    pub backing: PathBuf,
    pub size_bytes: u64,
    pub uuid: String,
    pub port_up: bool,
    pub ns_enabled: bool,
    pub loss: u64,
    pub read_only: bool,
    pub conn: Option<SavedConn>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedConn {
    pub ctrl: u32,
    pub subsys: u32,
    pub req: ConnectRequest,
    /// The sysfs `state` text.
    pub state: String,
    pub ctrl_devpath: String,
    pub subsys_devpath: String,
    pub ns: Option<SavedNs>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedNs {
    pub name: String,
    pub path_disk: Option<String>,
    /// The `N` of the `loopN` that carries the namespace.
    pub loop_number: u32,
    /// Its `major:minor`, which the namespace's device node carries.
    pub dev: String,
    /// The binding's diskseq: the loop device is taken over only while it still has it.
    pub diskseq: u64,
    pub devpath: String,
    pub uuid: String,
}

/// The state in `path`, `None` when there is none yet.
pub fn load(path: &Path) -> io::Result<Option<Saved>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let saved: Saved =
        serde_json::from_str(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    if saved.version != VERSION {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "state version {} (this build reads {VERSION})",
                saved.version
            ),
        ));
    }
    Ok(Some(saved))
}

/// The JSON text `save` writes.
pub fn encode(saved: &Saved) -> String {
    // Plain data: serialisation cannot fail.
    serde_json::to_string_pretty(saved).unwrap_or_default()
}

/// Replace `path` with `text` atomically.
pub fn save(path: &Path, text: &str) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Saved {
        let nqn = Nqn::parse("nqn.2000-02.com.mikrotik:pvc-1").unwrap();
        Saved {
            version: VERSION,
            seqnum: 42,
            targets: vec![SavedTarget {
                nqn: nqn.clone(),
                backing: "/b/x.img".into(),
                size_bytes: 1 << 20,
                uuid: "u".into(),
                port_up: false,
                ns_enabled: true,
                loss: 3,
                read_only: false,
                conn: Some(SavedConn {
                    ctrl: 0,
                    subsys: 0,
                    req: ConnectRequest::tcp(nqn, "127.0.0.1".parse().unwrap(), 4420),
                    state: "connecting".into(),
                    ctrl_devpath: "/devices/virtual/nvme-fabrics/ctl/nvme0".into(),
                    subsys_devpath: "/devices/virtual/nvme-subsystem/nvme-subsys0".into(),
                    ns: Some(SavedNs {
                        name: "nvme0n1".into(),
                        path_disk: Some("nvme0c0n1".into()),
                        loop_number: 7,
                        dev: "7:7".into(),
                        diskseq: 99,
                        devpath: "/devices/virtual/nvme-subsystem/nvme-subsys0/nvme0n1".into(),
                        uuid: "u".into(),
                    }),
                }),
            }],
        }
    }

    #[test]
    fn state_round_trips_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fabric.json");
        assert_eq!(load(&path).unwrap(), None, "no file yet is no state");
        save(&path, &encode(&sample())).unwrap();
        assert_eq!(load(&path).unwrap(), Some(sample()));
        assert!(!path.with_extension("tmp").exists());
    }

    #[test]
    fn another_version_or_garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fabric.json");
        let mut s = sample();
        s.version = VERSION + 1;
        save(&path, &encode(&s)).unwrap();
        assert_eq!(load(&path).unwrap_err().kind(), io::ErrorKind::InvalidData);
        std::fs::write(&path, "{not json").unwrap();
        assert_eq!(load(&path).unwrap_err().kind(), io::ErrorKind::InvalidData);
    }
}
