//! Writer of the NVMe-over-fabrics sysfs layout under an injectable root.
//!
//! Used by the emulated fabric (this kernel has no NVMe) and by tests. It mirrors what the
//! kernel creates (Documentation/ABI/testing/sysfs-class-nvme*, drivers/nvme/host/{core,
//! multipath,sysfs}.c), so the scanner in [`crate::scan`] reads production `/sys` and an
//! emulated root with the same code:
//!
//! ```text
//! <sys>/devices/virtual/nvme-fabrics/ctl/nvmeN/            controller: subsysnqn transport address
//!                                                          state cntlid hostnqn hostid dev
//!                                                          ctrl_loss_tmo reconnect_delay
//! <sys>/devices/virtual/nvme-fabrics/ctl/nvmeN/nvmeNnM/    namespace disk (no native multipath)
//! <sys>/devices/virtual/nvme-fabrics/ctl/nvmeN/nvmeNcKnM/  hidden per-path disk (multipath)
//! <sys>/devices/virtual/nvme-subsystem/nvme-subsysK/       subsystem: subsysnqn, links nvmeN
//! <sys>/devices/virtual/nvme-subsystem/nvme-subsysK/nvmeKnM/  multipath head disk
//! <sys>/class/nvme/nvmeN            -> ../../devices/virtual/nvme-fabrics/ctl/nvmeN
//! <sys>/class/nvme-subsystem/nvme-subsysK -> ../../devices/virtual/nvme-subsystem/nvme-subsysK
//! <sys>/block/<disk>, <sys>/class/block/<disk> -> ../(../)devices/.../<disk>
//! <sys>/module/nvme_core/parameters/multipath   "Y" or "N"
//! ```
//!
//! Disk attributes: `dev` (`259:M`), `diskseq`, `size` (512-byte sectors), `nsid`, `wwid`, and
//! `uuid`/`nguid` when given, `hidden` (1 for per-path disks), `ro`, `removable`, plus a
//! `uevent` file like the kernel's. Every attribute ends with a newline, as the kernel's do.
//! Files are written by rename from a temporary so readers never see half a value.

use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use rds_devices::scan::normalize_link;
use rds_types::{DevNum, DiskSeq};

/// Devpath (relative to the sys root, with leading `/`) of fabrics controllers.
pub const FABRICS_CTL_DEVPATH: &str = "/devices/virtual/nvme-fabrics/ctl";
/// Devpath of NVMe subsystems.
pub const SUBSYSTEM_DEVPATH: &str = "/devices/virtual/nvme-subsystem";

/// One controller as the kernel describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerSpec {
    /// `nvmeN`.
    pub name: String,
    pub subsysnqn: String,
    /// `tcp` for NVMe/TCP.
    pub transport: String,
    pub traddr: String,
    pub trsvcid: String,
    /// Kernel state string: `new`, `live`, `resetting`, `connecting`, `deleting`,
    /// `deleting (no IO)`, `dead`.
    pub state: String,
    pub cntlid: u16,
    pub hostnqn: String,
    pub hostid: String,
    /// The controller's char device (`nvmeN`).
    pub dev: DevNum,
    pub ctrl_loss_tmo: Option<i32>,
    pub reconnect_delay: Option<u32>,
}

impl ControllerSpec {
    /// The `address` attribute as the TCP transport prints it: the local address it
    /// connected from comes last.
    pub fn address(&self) -> String {
        format!(
            "traddr={},trsvcid={},src_addr={}",
            self.traddr, self.trsvcid, self.traddr
        )
    }
}

/// A timeout attribute as the kernel prints it: `off` for -1 (forever).
fn tmo(v: i32) -> String {
    if v < 0 {
        "off".to_owned()
    } else {
        v.to_string()
    }
}

/// One namespace disk (non-multipath `nvmeNnM`, head `nvmeKnM` or hidden path `nvmeNcKnM`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceSpec {
    pub name: String,
    pub nsid: u32,
    pub dev: DevNum,
    pub diskseq: Option<DiskSeq>,
    /// In 512-byte sectors.
    pub size_sectors: u64,
    pub uuid: Option<String>,
    pub nguid: Option<String>,
    pub wwid: Option<String>,
}

/// Writes (and removes) the layout under `sys_root`.
#[derive(Debug, Clone)]
pub struct NvmeTree {
    sys: PathBuf,
}

impl NvmeTree {
    pub fn new(sys_root: impl Into<PathBuf>) -> Self {
        Self {
            sys: sys_root.into(),
        }
    }

    pub fn sys_root(&self) -> &Path {
        &self.sys
    }

    /// `<sys>/devices/virtual/nvme-fabrics/ctl/<ctrl>`.
    pub fn controller_dir(&self, ctrl: &str) -> PathBuf {
        self.abs(&controller_devpath(ctrl))
    }

    /// `<sys>/devices/virtual/nvme-subsystem/<subsys>`.
    pub fn subsystem_dir(&self, subsys: &str) -> PathBuf {
        self.abs(&subsystem_devpath(subsys))
    }

    /// Absolute path of a devpath (`/devices/...`) under the root.
    pub fn abs(&self, devpath: &str) -> PathBuf {
        self.sys.join(devpath.trim_start_matches('/'))
    }

    /// Writes `<sys>/module/nvme_core/parameters/multipath` (`Y`/`N`).
    pub fn set_multipath(&self, on: bool) -> io::Result<()> {
        let dir = self.sys.join("module/nvme_core/parameters");
        fs::create_dir_all(&dir)?;
        write_attr(&dir, "multipath", if on { "Y" } else { "N" })
    }

    /// Creates subsystem `nvme-subsysK` with its NQN; returns its devpath.
    pub fn add_subsystem(&self, instance: u32, nqn: &str) -> io::Result<String> {
        let name = format!("nvme-subsys{instance}");
        let devpath = subsystem_devpath(&name);
        let dir = self.abs(&devpath);
        fs::create_dir_all(&dir)?;
        write_attr(&dir, "subsysnqn", nqn)?;
        write_attr(&dir, "iopolicy", "numa")?;
        write_attr(&dir, "model", "Linux")?;
        write_attr(&dir, "serial", "rds-emulated")?;
        write_attr(&dir, "subsystype", "nvm")?;
        write_attr(&dir, "uevent", "")?;
        self.class_link("nvme-subsystem", &name, &devpath)?;
        Ok(devpath)
    }

    /// Removes a subsystem (and any heads under it).
    pub fn remove_subsystem(&self, instance: u32) -> io::Result<()> {
        let name = format!("nvme-subsys{instance}");
        for head in child_disks(&self.subsystem_dir(&name))? {
            remove_link(&self.sys.join("block").join(&head))?;
            remove_link(&self.sys.join("class/block").join(&head))?;
        }
        remove_link(&self.sys.join("class/nvme-subsystem").join(&name))?;
        remove_dir(&self.subsystem_dir(&name))
    }

    /// Finds the subsystem holding `nqn` (its name `nvme-subsysK`).
    pub fn find_subsystem(&self, nqn: &str) -> io::Result<Option<String>> {
        let class = self.sys.join("class/nvme-subsystem");
        let entries = match fs::read_dir(&class) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Ok(v) = fs::read_to_string(self.subsystem_dir(&name).join("subsysnqn")) {
                if v.trim_end() == nqn {
                    return Ok(Some(name));
                }
            }
        }
        Ok(None)
    }

    /// Creates a controller; its subsystem (by `subsysnqn`) must exist. Returns its devpath.
    pub fn add_controller(&self, spec: &ControllerSpec) -> io::Result<String> {
        let subsys = self.find_subsystem(&spec.subsysnqn)?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "no subsystem with NQN {} under {}",
                    spec.subsysnqn,
                    self.sys.display()
                ),
            )
        })?;
        let devpath = controller_devpath(&spec.name);
        let dir = self.abs(&devpath);
        fs::create_dir_all(&dir)?;
        write_attr(&dir, "subsysnqn", &spec.subsysnqn)?;
        write_attr(&dir, "transport", &spec.transport)?;
        write_attr(&dir, "address", &spec.address())?;
        write_attr(&dir, "cntlid", &spec.cntlid.to_string())?;
        write_attr(&dir, "hostnqn", &spec.hostnqn)?;
        write_attr(&dir, "hostid", &spec.hostid)?;
        write_attr(&dir, "dev", &spec.dev.to_string())?;
        // The kernel's defaults when the connect line does not set them: 600 s, 10 s.
        write_attr(
            &dir,
            "ctrl_loss_tmo",
            &tmo(spec.ctrl_loss_tmo.unwrap_or(600)),
        )?;
        write_attr(
            &dir,
            "reconnect_delay",
            &spec.reconnect_delay.unwrap_or(10).to_string(),
        )?;
        write_attr(&dir, "fast_io_fail_tmo", "off")?;
        write_attr(&dir, "kato", "5")?;
        write_attr(&dir, "queue_count", "3")?;
        write_attr(&dir, "sqsize", "127")?;
        write_attr(&dir, "cntrltype", "io")?;
        write_attr(&dir, "dctype", "none")?;
        write_attr(&dir, "model", "Linux")?;
        write_attr(&dir, "serial", "rds-emulated")?;
        write_attr(&dir, "firmware_rev", "emulated")?;
        write_attr(
            &dir,
            "uevent",
            &format!(
                "MAJOR={}\nMINOR={}\nDEVNAME={}\nNVME_TRTYPE={}\nNVME_TRADDR={}\nNVME_TRSVCID={}\nNVME_HOST_TRADDR=none\nNVME_HOST_IFACE=none",
                spec.dev.major,
                spec.dev.minor,
                spec.name,
                spec.transport,
                spec.traddr,
                spec.trsvcid
            ),
        )?;
        // Written last: a reader that sees `state` sees a complete controller.
        write_attr(&dir, "state", &spec.state)?;
        self.class_link("nvme", &spec.name, &devpath)?;
        // The subsystem links to its controllers: nvme-subsysK/nvmeN -> ../../nvme-fabrics/ctl/nvmeN
        let link = self.subsystem_dir(&subsys).join(&spec.name);
        replace_symlink(&format!("../../nvme-fabrics/ctl/{}", spec.name), &link)?;
        Ok(devpath)
    }

    /// Sets a controller's `state` attribute. The TCP transport prints `src_addr` in
    /// `address` only while it has a socket: a controller that is not live shows
    /// `traddr=..,trsvcid=..` alone (measured on 6.12).
    pub fn set_controller_state(&self, ctrl: &str, state: &str) -> io::Result<()> {
        let dir = self.controller_dir(ctrl);
        if !dir.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no controller {ctrl}"),
            ));
        }
        let address = fs::read_to_string(dir.join("address")).unwrap_or_default();
        let base: Vec<&str> = address
            .trim()
            .split(',')
            .filter(|kv| !kv.starts_with("src_addr="))
            .collect();
        let address = if state == "live" {
            let traddr = base
                .iter()
                .find_map(|kv| kv.strip_prefix("traddr="))
                .unwrap_or_default();
            format!("{},src_addr={traddr}", base.join(","))
        } else {
            base.join(",")
        };
        write_attr(&dir, "address", &address)?;
        write_attr(&dir, "state", state)
    }

    /// Removes a controller, its namespaces/paths and its subsystem link.
    pub fn remove_controller(&self, ctrl: &str) -> io::Result<()> {
        let dir = self.controller_dir(ctrl);
        for disk in child_disks(&dir)? {
            remove_link(&self.sys.join("block").join(&disk))?;
            remove_link(&self.sys.join("class/block").join(&disk))?;
        }
        if let Ok(v) = fs::read_to_string(dir.join("subsysnqn")) {
            if let Some(subsys) = self.find_subsystem(v.trim_end())? {
                remove_link(&self.subsystem_dir(&subsys).join(ctrl))?;
            }
        }
        remove_link(&self.sys.join("class/nvme").join(ctrl))?;
        remove_dir(&dir)
    }

    /// Adds a non-multipath namespace disk `nvmeNnM` under controller `ctrl`. Returns its devpath.
    pub fn add_namespace(&self, ctrl: &str, ns: &NamespaceSpec) -> io::Result<String> {
        let devpath = format!("{}/{}", controller_devpath(ctrl), ns.name);
        self.write_disk(&devpath, ns, false)?;
        Ok(devpath)
    }

    /// Adds a multipath head `nvmeKnM` under subsystem `nvme-subsysK`. Returns its devpath.
    pub fn add_head(&self, subsys_instance: u32, ns: &NamespaceSpec) -> io::Result<String> {
        let devpath = format!(
            "{}/{}",
            subsystem_devpath(&format!("nvme-subsys{subsys_instance}")),
            ns.name
        );
        self.write_disk(&devpath, ns, false)?;
        Ok(devpath)
    }

    /// Adds a hidden per-path disk `nvmeNcKnM` under controller `ctrl`. Returns its devpath.
    pub fn add_path(&self, ctrl: &str, ns: &NamespaceSpec) -> io::Result<String> {
        let devpath = format!("{}/{}", controller_devpath(ctrl), ns.name);
        self.write_disk(&devpath, ns, true)?;
        Ok(devpath)
    }

    /// Removes a disk by name (namespace, head or path), wherever it lives.
    pub fn remove_disk(&self, name: &str) -> io::Result<()> {
        let link = self.sys.join("block").join(name);
        let target = fs::read_link(&link).ok();
        remove_link(&link)?;
        remove_link(&self.sys.join("class/block").join(name))?;
        if let Some(t) = target {
            let devpath = normalize_link("/block", &t);
            remove_dir(&self.abs(&devpath))?;
        }
        Ok(())
    }

    /// Rewrites a disk's `size` (sectors), as a resize would.
    pub fn set_disk_size(&self, name: &str, sectors: u64) -> io::Result<()> {
        write_attr(
            &self.sys.join("block").join(name),
            "size",
            &sectors.to_string(),
        )
    }

    fn write_disk(&self, devpath: &str, ns: &NamespaceSpec, hidden: bool) -> io::Result<()> {
        let dir = self.abs(devpath);
        fs::create_dir_all(&dir)?;
        write_attr(&dir, "size", &ns.size_sectors.to_string())?;
        write_attr(&dir, "nsid", &ns.nsid.to_string())?;
        let wwid = ns
            .wwid
            .clone()
            .unwrap_or_else(|| match (&ns.uuid, &ns.nguid) {
                (Some(u), _) => format!("uuid.{u}"),
                (None, Some(g)) => format!("eui.{}", g.replace('-', "")),
                (None, None) => format!("nvme.0000-{}-{}", ns.name, ns.nsid),
            });
        write_attr(&dir, "wwid", &wwid)?;
        if let Some(u) = &ns.uuid {
            write_attr(&dir, "uuid", u)?;
        }
        if let Some(g) = &ns.nguid {
            write_attr(&dir, "nguid", g)?;
        }
        write_attr(&dir, "ro", "0")?;
        write_attr(&dir, "removable", "0")?;
        write_attr(&dir, "hidden", if hidden { "1" } else { "0" })?;
        // A hidden multipath path has no device number, no node and no uevents (measured on
        // 6.12): its `uevent` file holds only DEVTYPE and DISKSEQ.
        let mut uevent = if hidden {
            "DEVTYPE=disk".to_owned()
        } else {
            format!(
                "MAJOR={}\nMINOR={}\nDEVNAME={}\nDEVTYPE=disk",
                ns.dev.major, ns.dev.minor, ns.name
            )
        };
        if let Some(s) = ns.diskseq {
            uevent.push_str(&format!("\nDISKSEQ={s}"));
            write_attr(&dir, "diskseq", &s.to_string())?;
        }
        write_attr(&dir, "uevent", &uevent)?;
        // `dev` last: the scanner treats a disk without `dev` as not there yet.
        if !hidden {
            write_attr(&dir, "dev", &ns.dev.to_string())?;
        }
        let rel = devpath.trim_start_matches('/');
        replace_symlink(&format!("../{rel}"), &self.sys.join("block").join(&ns.name))?;
        replace_symlink(
            &format!("../../{rel}"),
            &self.sys.join("class/block").join(&ns.name),
        )
    }

    /// `<sys>/dev/block/M:m` → `target` (the kernel links it to the device's directory; the
    /// emulation links it to the real loop device's, so its request counters are the real
    /// ones).
    pub fn link_dev_block(&self, dev: DevNum, target: &Path) -> io::Result<()> {
        let dir = self.sys.join("dev/block");
        fs::create_dir_all(&dir)?;
        let link = dir.join(dev.to_string());
        let _ = fs::remove_file(&link);
        symlink(target, link)
    }

    pub fn unlink_dev_block(&self, dev: DevNum) -> io::Result<()> {
        remove_link(&self.sys.join("dev/block").join(dev.to_string()))
    }

    fn class_link(&self, class: &str, name: &str, devpath: &str) -> io::Result<()> {
        let rel = devpath.trim_start_matches('/');
        replace_symlink(
            &format!("../../{rel}"),
            &self.sys.join("class").join(class).join(name),
        )
    }
}

/// Devpath of fabrics controller `nvmeN`.
pub fn controller_devpath(ctrl: &str) -> String {
    format!("{FABRICS_CTL_DEVPATH}/{ctrl}")
}

/// Devpath of subsystem `nvme-subsysK`.
pub fn subsystem_devpath(subsys: &str) -> String {
    format!("{SUBSYSTEM_DEVPATH}/{subsys}")
}

/// Writes `<dir>/<name>` = `value\n` atomically (temporary + rename).
fn write_attr(dir: &Path, name: &str, value: &str) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    fs::write(&tmp, format!("{value}\n"))?;
    fs::rename(&tmp, dir.join(name))
}

fn replace_symlink(target: &str, link: &Path) -> io::Result<()> {
    if let Some(parent) = link.parent() {
        fs::create_dir_all(parent)?;
    }
    remove_link(link)?;
    symlink(target, link)
}

fn remove_link(link: &Path) -> io::Result<()> {
    match fs::remove_file(link) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn remove_dir(dir: &Path) -> io::Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Names of disk directories (those with a `dev` or `nsid` attribute) directly under `dir`.
fn child_disks(dir: &Path) -> io::Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        let p = entry.path();
        if entry.file_type()?.is_dir() && p.join("nsid").exists() {
            out.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_link_resolves_class_links_to_devpaths() {
        assert_eq!(
            normalize_link(
                "/class/block",
                Path::new("../../devices/virtual/nvme-fabrics/ctl/nvme0/nvme0n1")
            ),
            "/devices/virtual/nvme-fabrics/ctl/nvme0/nvme0n1"
        );
        assert_eq!(
            normalize_link("/block", Path::new("../devices/virtual/block/loop0")),
            "/devices/virtual/block/loop0"
        );
    }
}
