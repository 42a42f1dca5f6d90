//! The real fabric: `<dev>/nvme-fabrics` and `<sys>/class/nvme`.

use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use rds_types::{ManagedPrefix, Nqn};

use crate::api::{ConnectOutcome, ConnectRequest, ControllerInfo, Fabric, FabricError};
use crate::sysfs;

/// Longest reply `/dev/nvme-fabrics` gives (`instance=N,cntlid=M\n`), with room to spare.
const REPLY_MAX: usize = 4096;

/// The kernel's NVMe-oF host: connects by writing an options line to `<dev_root>/nvme-fabrics`,
/// disconnects by writing `1` to `<sys_root>/class/nvme/nvmeN/delete_controller`.
///
/// It refuses to connect or disconnect any subsystem outside `managed`: diskless nodes boot
/// from the same storage box, and a controller outside the prefix is never written to.
#[derive(Debug, Clone)]
pub struct KernelFabric {
    pub dev_root: PathBuf,
    pub sys_root: PathBuf,
    pub managed: ManagedPrefix,
}

impl KernelFabric {
    pub fn new(
        dev_root: impl Into<PathBuf>,
        sys_root: impl Into<PathBuf>,
        managed: ManagedPrefix,
    ) -> Self {
        Self {
            dev_root: dev_root.into(),
            sys_root: sys_root.into(),
            managed,
        }
    }

    fn fabrics_path(&self) -> PathBuf {
        self.dev_root.join("nvme-fabrics")
    }

    fn existing(&self, req: &ConnectRequest) -> Result<Option<String>, FabricError> {
        let all = sysfs::scan_controllers(&self.sys_root)?;
        Ok(sysfs::find_controller(
            &all,
            req.nqn.as_str(),
            req.transport.as_str(),
            req.traddr,
            req.trsvcid,
        )
        .map(|c| c.name.clone()))
    }

    fn check_managed(&self, what: impl Into<String>, subsysnqn: &str) -> Result<(), FabricError> {
        let covered = Nqn::parse(subsysnqn).is_ok_and(|n| self.managed.covers(&n));
        if covered {
            Ok(())
        } else {
            Err(FabricError::NotManaged {
                what: what.into(),
                subsysnqn: subsysnqn.to_owned(),
                prefix: self.managed.as_str().to_owned(),
            })
        }
    }
}

impl Fabric for KernelFabric {
    fn connect(&self, req: &ConnectRequest) -> Result<ConnectOutcome, FabricError> {
        self.check_managed("connect", req.nqn.as_str())?;
        let line = req.to_options_line()?;
        if let Some(controller) = self.existing(req)? {
            tracing::debug!(nqn = %req.nqn, controller, "already connected");
            return Ok(ConnectOutcome {
                controller,
                already_connected: true,
            });
        }
        let path = self.fabrics_path();
        let mut dev = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| FabricError::io("open", &path, e))?;
        // The kernel parses each write as one complete set of options: one write(2), no retry
        // of a partial write.
        match dev.write(line.as_bytes()) {
            Ok(n) if n == line.len() => {}
            Ok(n) => {
                return Err(FabricError::io(
                    "write",
                    &path,
                    io::Error::new(
                        io::ErrorKind::WriteZero,
                        format!("short write: {n} of {} bytes", line.len()),
                    ),
                ))
            }
            Err(e) if e.raw_os_error() == Some(libc::EALREADY) => {
                // Connected in between (another caller, or a controller we skipped because it
                // was deleting): report the survivor.
                return match self.existing(req)? {
                    Some(controller) => Ok(ConnectOutcome {
                        controller,
                        already_connected: true,
                    }),
                    None => Err(FabricError::AlreadyConnected {
                        nqn: req.nqn.clone(),
                        address: req.address(),
                    }),
                };
            }
            Err(e) => {
                return Err(FabricError::Refused {
                    nqn: req.nqn.clone(),
                    address: req.address(),
                    source: e,
                })
            }
        }
        let mut buf = [0u8; REPLY_MAX];
        let n = dev
            .read(&mut buf)
            .map_err(|e| FabricError::io("read", &path, e))?;
        let reply = String::from_utf8_lossy(&buf[..n]);
        let (instance, cntlid) = sysfs::parse_connect_reply(&reply)?;
        let controller = format!("nvme{instance}");
        tracing::info!(nqn = %req.nqn, address = %req.address(), controller, cntlid, "connected");
        Ok(ConnectOutcome {
            controller,
            already_connected: false,
        })
    }

    fn disconnect(&self, controller: &str) -> Result<(), FabricError> {
        let info = sysfs::read_controller(&self.sys_root, controller)?
            .ok_or_else(|| FabricError::NoSuchController(controller.to_owned()))?;
        self.check_managed(format!("disconnect {controller}"), &info.subsysnqn)?;
        let path = sysfs::class_nvme(&self.sys_root)
            .join(controller)
            .join("delete_controller");
        // No O_CREAT: a missing attribute means the controller is already gone.
        let mut f = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| FabricError::io("open", &path, e))?;
        f.write_all(b"1")
            .map_err(|e| FabricError::io("write", &path, e))?;
        tracing::info!(controller, nqn = %info.subsysnqn, "deleted controller");
        Ok(())
    }

    fn controllers(&self) -> Result<Vec<ControllerInfo>, FabricError> {
        sysfs::scan_controllers(&self.sys_root)
    }

    fn rescan(&self, controller: &str) -> Result<(), FabricError> {
        let info = sysfs::read_controller(&self.sys_root, controller)?
            .ok_or_else(|| FabricError::NoSuchController(controller.to_owned()))?;
        self.check_managed(format!("rescan {controller}"), &info.subsysnqn)?;
        let path = sysfs::class_nvme(&self.sys_root)
            .join(controller)
            .join("rescan_controller");
        let mut f = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| FabricError::io("open", &path, e))?;
        f.write_all(b"1")
            .map_err(|e| FabricError::io("write", &path, e))?;
        tracing::info!(controller, nqn = %info.subsysnqn, "rescanned controller");
        Ok(())
    }
}
