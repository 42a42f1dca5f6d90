//! The kernel's own NVMe-oF target (nvmet) driven through configfs, on 127.0.0.1 over TCP.
//!
//! A subsystem is `subsystems/<nqn>` with `attr_allow_any_host`; each namespace is
//! `namespaces/<nsid>` backed by a file (`device_path`, nvmet's file backend); a port is
//! `ports/<id>` with `addr_*` attributes; exposing a subsystem on a port is a symlink into
//! `ports/<id>/subsystems/`, and removing that symlink takes the port away from every host
//! connected through it (the host sees the connection drop and starts reconnecting).

use std::io;
use std::path::{Path, PathBuf};

/// nvmet's configfs root.
pub const CONFIGFS: &str = "/sys/kernel/config/nvmet";

/// The target.
#[derive(Debug, Clone)]
pub struct Nvmet {
    root: PathBuf,
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    std::fs::write(path, value).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("writing {value:?} to {}: {e}", path.display()),
        )
    })
}

fn read(path: &Path) -> io::Result<String> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|e| io::Error::new(e.kind(), format!("reading {}: {e}", path.display())))
}

fn mkdir(path: &Path) -> io::Result<()> {
    match std::fs::create_dir(path) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(io::Error::new(
            e.kind(),
            format!("creating {}: {e}", path.display()),
        )),
        _ => Ok(()),
    }
}

fn rmdir(path: &Path) -> io::Result<()> {
    match std::fs::remove_dir(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io::Error::new(
            e.kind(),
            format!("removing {}: {e}", path.display()),
        )),
        _ => Ok(()),
    }
}

impl Nvmet {
    /// The target under configfs (mounted by [`super::prepare_guest`]).
    pub fn open() -> io::Result<Self> {
        let root = PathBuf::from(CONFIGFS);
        if !root.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{CONFIGFS} is missing (nvmet not loaded or configfs not mounted)"),
            ));
        }
        Ok(Self { root })
    }

    fn subsystem(&self, nqn: &str) -> PathBuf {
        self.root.join("subsystems").join(nqn)
    }

    fn namespace(&self, nqn: &str, nsid: u32) -> PathBuf {
        self.subsystem(nqn)
            .join("namespaces")
            .join(nsid.to_string())
    }

    fn port(&self, id: u32) -> PathBuf {
        self.root.join("ports").join(id.to_string())
    }

    /// Create port `id` listening on 127.0.0.1:`trsvcid` (idempotent).
    pub fn add_port(&self, id: u32, trsvcid: u16) -> io::Result<()> {
        let p = self.port(id);
        if p.join("addr_trsvcid").exists() && read(&p.join("addr_trsvcid"))? == trsvcid.to_string()
        {
            return Ok(());
        }
        mkdir(&p)?;
        write(&p.join("addr_trtype"), "tcp")?;
        write(&p.join("addr_adrfam"), "ipv4")?;
        write(&p.join("addr_traddr"), "127.0.0.1")?;
        write(&p.join("addr_trsvcid"), &trsvcid.to_string())
    }

    /// Create a subsystem any host may connect to, with namespace 1 on a new sparse file of
    /// `size` bytes at `backing`. Returns the namespace's `device_uuid` (nvmet picks a random
    /// one; `uuid` overrides it).
    pub fn add_subsystem(
        &self,
        nqn: &str,
        backing: &Path,
        size: u64,
        uuid: Option<&str>,
    ) -> io::Result<String> {
        let s = self.subsystem(nqn);
        mkdir(&s)?;
        write(&s.join("attr_allow_any_host"), "1")?;
        self.add_namespace(nqn, 1, backing, size, uuid)
    }

    /// A subsystem whose namespace 1 is block device `device` (nvmet's bdev backend: the
    /// host's I/O fails when the device does).
    pub fn add_subsystem_on_device(&self, nqn: &str, device: &Path) -> io::Result<String> {
        let s = self.subsystem(nqn);
        mkdir(&s)?;
        write(&s.join("attr_allow_any_host"), "1")?;
        let n = self.namespace(nqn, 1);
        mkdir(&n)?;
        write(&n.join("device_path"), &device.display().to_string())?;
        write(&n.join("enable"), "1")?;
        read(&n.join("device_uuid"))
    }

    /// Create (disabled, configured, then enabled) namespace `nsid` on a new file.
    pub fn add_namespace(
        &self,
        nqn: &str,
        nsid: u32,
        backing: &Path,
        size: u64,
        uuid: Option<&str>,
    ) -> io::Result<String> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(backing)?;
        f.set_len(size)?;
        drop(f);
        let n = self.namespace(nqn, nsid);
        mkdir(&n)?;
        write(&n.join("device_path"), &backing.display().to_string())?;
        if let Some(u) = uuid {
            write(&n.join("device_uuid"), u)?;
        }
        write(&n.join("enable"), "1")?;
        read(&n.join("device_uuid"))
    }

    /// The namespace's `device_uuid`.
    pub fn device_uuid(&self, nqn: &str, nsid: u32) -> io::Result<String> {
        read(&self.namespace(nqn, nsid).join("device_uuid"))
    }

    /// Enable or disable a namespace (disabling removes it from every connected host).
    pub fn set_enabled(&self, nqn: &str, nsid: u32, on: bool) -> io::Result<()> {
        write(
            &self.namespace(nqn, nsid).join("enable"),
            if on { "1" } else { "0" },
        )
    }

    /// Put another file and a new identity behind namespace `nsid` (the target "restarted
    /// with a different namespace"): disable, swap `device_path` and `device_uuid`, enable.
    pub fn replace_namespace(
        &self,
        nqn: &str,
        nsid: u32,
        backing: &Path,
        size: u64,
        uuid: &str,
    ) -> io::Result<()> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(backing)?;
        f.set_len(size)?;
        drop(f);
        let n = self.namespace(nqn, nsid);
        write(&n.join("enable"), "0")?;
        write(&n.join("device_path"), &backing.display().to_string())?;
        write(&n.join("device_uuid"), uuid)?;
        // A new NGUID too, or the host could match the namespace by its old one.
        write(&n.join("device_nguid"), &uuid.replace('-', ""))?;
        write(&n.join("enable"), "1")
    }

    /// Expose the subsystem on port `id`.
    pub fn expose(&self, nqn: &str, port: u32) -> io::Result<()> {
        let link = self.port(port).join("subsystems").join(nqn);
        match std::os::unix::fs::symlink(self.subsystem(nqn), &link) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(io::Error::new(
                e.kind(),
                format!("linking {}: {e}", link.display()),
            )),
            _ => Ok(()),
        }
    }

    /// Take the subsystem away from port `id` (hosts connected through it lose the path).
    pub fn hide(&self, nqn: &str, port: u32) -> io::Result<()> {
        let link = self.port(port).join("subsystems").join(nqn);
        match std::fs::remove_file(&link) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io::Error::new(
                e.kind(),
                format!("unlinking {}: {e}", link.display()),
            )),
            _ => Ok(()),
        }
    }

    /// Remove the subsystem: off every port, every namespace disabled and removed.
    pub fn remove_subsystem(&self, nqn: &str) -> io::Result<()> {
        let s = self.subsystem(nqn);
        if !s.exists() {
            return Ok(());
        }
        for port in std::fs::read_dir(self.root.join("ports"))? {
            let port = port?.path();
            let link = port.join("subsystems").join(nqn);
            if link.symlink_metadata().is_ok() {
                std::fs::remove_file(&link)?;
            }
        }
        for ns in std::fs::read_dir(s.join("namespaces"))? {
            let ns = ns?.path();
            write(&ns.join("enable"), "0")?;
            rmdir(&ns)?;
        }
        rmdir(&s)
    }

    /// Every subsystem's NQN.
    pub fn subsystems(&self) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(self.root.join("subsystems"))? {
            out.push(e?.file_name().to_string_lossy().into_owned());
        }
        out.sort();
        Ok(out)
    }
}
