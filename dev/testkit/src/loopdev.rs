//! Test-only loop device helper driven by the loop ioctls (no losetup), cleaned up on drop.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

const LOOP_CTL_ADD: libc::c_ulong = 0x4C80;
const LOOP_CTL_REMOVE: libc::c_ulong = 0x4C81;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;

/// `struct loop_config`: fd, block_size, `struct loop_info64` (232 bytes), 8 reserved u64.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: [u8; 232],
    reserved: [u64; 8],
}

/// A loop device this test created (`LOOP_CTL_ADD`); detached and removed on drop.
pub struct LoopDev {
    pub num: u32,
    ctl: File,
    dev: Option<File>,
}

fn check(rc: libc::c_int, what: &str) -> io::Result<libc::c_int> {
    if rc < 0 {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("{what}: {e}")))
    } else {
        Ok(rc)
    }
}

/// Loop minors are 20 bits.
const MAX_LOOP_NUMBER: u32 = 1 << 20;

impl LoopDev {
    /// Adds a new loop device with a free number at or above `from`.
    pub fn add(dev_root: &Path, from: u32) -> io::Result<Self> {
        let ctl = OpenOptions::new()
            .read(true)
            .write(true)
            .open(dev_root.join("loop-control"))?;
        // Other processes (and earlier runs) may hold many loop numbers: search the whole
        // minor range above `from`, not a small window.
        for num in from..MAX_LOOP_NUMBER {
            // SAFETY: ioctl with an integer argument on an open loop-control fd.
            let rc = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_ADD, num as libc::c_ulong) };
            if rc >= 0 {
                return Ok(Self {
                    num: rc as u32,
                    ctl,
                    dev: None,
                });
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(io::Error::new(e.kind(), format!("LOOP_CTL_ADD {num}: {e}")));
            }
        }
        Err(io::Error::other("no free loop number"))
    }

    pub fn name(&self) -> String {
        format!("loop{}", self.num)
    }

    /// Attaches `backing` (LOOP_CONFIGURE): a new diskseq.
    pub fn configure(&mut self, dev_root: &Path, backing: &Path) -> io::Result<()> {
        let dev = OpenOptions::new()
            .read(true)
            .write(true)
            .open(dev_root.join(self.name()))?;
        let file = OpenOptions::new().read(true).write(true).open(backing)?;
        let cfg = LoopConfig {
            fd: file.as_raw_fd() as u32,
            block_size: 0,
            info: [0; 232],
            reserved: [0; 8],
        };
        // SAFETY: LOOP_CONFIGURE reads a loop_config that lives across the call.
        check(
            unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE, &cfg as *const LoopConfig) },
            "LOOP_CONFIGURE",
        )?;
        self.dev = Some(dev);
        Ok(())
    }

    /// Detaches (LOOP_CLR_FD, then close).
    pub fn detach(&mut self) -> io::Result<()> {
        if let Some(dev) = self.dev.take() {
            // SAFETY: plain ioctl on an open loop device fd.
            check(
                unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CLR_FD, 0) },
                "LOOP_CLR_FD",
            )?;
        }
        Ok(())
    }

    /// Removes the device (LOOP_CTL_REMOVE).
    pub fn remove(mut self) -> io::Result<()> {
        self.detach()?;
        let num = self.num;
        // SAFETY: ioctl with an integer argument on an open loop-control fd.
        let rc =
            unsafe { libc::ioctl(self.ctl.as_raw_fd(), LOOP_CTL_REMOVE, num as libc::c_ulong) };
        self.num = u32::MAX;
        check(rc, "LOOP_CTL_REMOVE").map(|_| ())
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        if self.num == u32::MAX {
            return;
        }
        let _ = self.detach();
        // SAFETY: as in `remove`.
        unsafe {
            libc::ioctl(
                self.ctl.as_raw_fd(),
                LOOP_CTL_REMOVE,
                self.num as libc::c_ulong,
            )
        };
    }
}
