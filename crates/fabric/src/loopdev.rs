//! A small safe wrapper over the loop-device ioctls.
//!
//! The emulated fabric backs every NVMe namespace with a loop device: a "reconnect" attaches a
//! *new* loop device to the same backing file (new `major:minor`, new `diskseq`), a dead path
//! truncates the backing file and sets the loop capacity to 0 (real EIO).
//!
//! Loop devices are global to the machine and other processes (other engineers' tests, `losetup`)
//! grab free devices concurrently. This module therefore:
//! - configures a device with one atomic `LOOP_CONFIGURE` and retries with another free number
//!   when it loses the race (`EBUSY`);
//! - keeps an open descriptor on every device it configured, and before each mutating ioctl checks
//!   through that descriptor (`BLKGETDISKSEQ`) that the binding is still the one it created, so it
//!   never touches a device that became someone else's;
//! - sets `LO_FLAGS_AUTOCLEAR` by default, so a binding dissolves by itself once the last opener
//!   (our descriptor, or a mount) goes away, even when the owning process dies without cleaning up.
//!
//! Roots (`/dev`, `/sys`) are values, as everywhere in this project.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rds_types::{DevNum, DiskSeq};

// ioctl numbers from <linux/loop.h> and <linux/fs.h> (stable kernel ABI).
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LOOP_SET_STATUS64: libc::c_ulong = 0x4C04;
const LOOP_GET_STATUS64: libc::c_ulong = 0x4C05;
const LOOP_SET_CAPACITY: libc::c_ulong = 0x4C07;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_CTL_ADD: libc::c_ulong = 0x4C80;
const LOOP_CTL_REMOVE: libc::c_ulong = 0x4C81;
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
/// `_IOR(0x12, 128, __u64)`: the disk sequence number of an open block device.
const BLKGETDISKSEQ: libc::c_ulong = 0x8008_1280;

const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_NAME_SIZE: usize = 64;

/// How many free numbers [`LoopControl::attach`] tries before giving up; each failed attempt
/// means another process configured the device between `LOOP_CTL_GET_FREE` and our
/// `LOOP_CONFIGURE`.
pub const ATTACH_ATTEMPTS: u32 = 64;

/// `struct loop_info64` from `<linux/loop.h>`.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config` from `<linux/loop.h>` (the `LOOP_CONFIGURE` argument).
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

const _: () = assert!(std::mem::size_of::<LoopInfo64>() == 232);
const _: () = assert!(std::mem::size_of::<LoopConfig>() == 304);

/// Errors of the loop-device layer. Every OS error names the operation and the path.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    #[error("{op} on {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no loop device could be configured after {attempts} attempts: other processes kept taking the free ones")]
    Exhausted { attempts: u32 },
    #[error("{path}: {value:?} is not a disk sequence number")]
    Parse { path: PathBuf, value: String },
    #[error("{path} is no longer ours: its diskseq is {found}, ours was {ours} (someone detached and reused it)")]
    NotOurs {
        path: PathBuf,
        ours: DiskSeq,
        found: DiskSeq,
    },
}

impl LoopError {
    fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        Self::Io {
            op,
            path: path.to_owned(),
            source,
        }
    }

    /// The OS error number behind this error, if any.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Self::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// Options for [`LoopControl::attach`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttachOptions {
    pub read_only: bool,
    /// Let the kernel dissolve the binding when the last opener closes (see module docs).
    pub autoclear: bool,
}

impl Default for AttachOptions {
    fn default() -> Self {
        Self {
            read_only: false,
            autoclear: true,
        }
    }
}

/// `/dev/loop-control` and the `/dev/loopN` nodes under a device root, plus the sysfs root
/// used to read `block/loopN/diskseq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopControl {
    dev_root: PathBuf,
    sys_root: PathBuf,
}

fn ioctl_arg(fd: &impl AsRawFd, req: libc::c_ulong, arg: libc::c_ulong) -> io::Result<libc::c_int> {
    // SAFETY: the requests used with this helper take an integer argument (or none); the kernel
    // does not dereference it.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

impl LoopControl {
    pub fn new(dev_root: impl Into<PathBuf>, sys_root: impl Into<PathBuf>) -> Self {
        Self {
            dev_root: dev_root.into(),
            sys_root: sys_root.into(),
        }
    }

    pub fn dev_root(&self) -> &Path {
        &self.dev_root
    }

    pub fn sys_root(&self) -> &Path {
        &self.sys_root
    }

    fn control_path(&self) -> PathBuf {
        self.dev_root.join("loop-control")
    }

    /// The node of loop device `n` under the device root.
    pub fn device_path(&self, n: u32) -> PathBuf {
        self.dev_root.join(format!("loop{n}"))
    }

    fn control_ioctl(
        &self,
        op: &'static str,
        req: libc::c_ulong,
        arg: u32,
    ) -> Result<u32, LoopError> {
        let path = self.control_path();
        let ctl = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| LoopError::io("open", &path, e))?;
        let rc = ioctl_arg(&ctl, req, libc::c_ulong::from(arg))
            .map_err(|e| LoopError::io(op, &path, e))?;
        u32::try_from(rc).map_err(|_| {
            LoopError::io(
                op,
                &path,
                io::Error::other(format!("negative device number {rc}")),
            )
        })
    }

    /// `LOOP_CTL_GET_FREE`: the number of an unbound loop device, created if none is free.
    /// Another process may take it before you configure it; [`Self::attach`] handles that.
    pub fn get_free(&self) -> Result<u32, LoopError> {
        self.control_ioctl("LOOP_CTL_GET_FREE", LOOP_CTL_GET_FREE, 0)
    }

    /// `LOOP_CTL_ADD`: create loop device `n` (`EEXIST` if it exists).
    pub fn add(&self, n: u32) -> Result<u32, LoopError> {
        self.control_ioctl("LOOP_CTL_ADD", LOOP_CTL_ADD, n)
    }

    /// `LOOP_CTL_REMOVE`: remove loop device `n`. The kernel refuses (`EBUSY`) while the device
    /// is bound or open. Only remove numbers you added yourself: a free device may be in the
    /// middle of being claimed by another process.
    pub fn remove(&self, n: u32) -> Result<(), LoopError> {
        self.control_ioctl("LOOP_CTL_REMOVE", LOOP_CTL_REMOVE, n)
            .map(|_| ())
    }

    /// Bind `backing` to a free loop device with one atomic `LOOP_CONFIGURE`, retrying with
    /// another free number whenever another process wins the race for the same device.
    pub fn attach(&self, backing: &Path, opts: AttachOptions) -> Result<LoopDevice, LoopError> {
        let backing_file = OpenOptions::new()
            .read(true)
            .write(!opts.read_only)
            .custom_flags(libc::O_CLOEXEC)
            .open(backing)
            .map_err(|e| LoopError::io("open backing file", backing, e))?;
        let mut missing: Option<u32> = None;
        for attempt in 1..=ATTACH_ATTEMPTS {
            let n = self.get_free()?;
            let path = self.device_path(n);
            let dev = match OpenOptions::new()
                .read(true)
                .write(!opts.read_only)
                .custom_flags(libc::O_CLOEXEC)
                .open(&path)
            {
                Ok(f) => f,
                // The same free number without a node twice: the device root has no node for
                // it (a static /dev), not a race. Say so instead of spinning.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) && missing == Some(n) => {
                    return Err(LoopError::io("open", &path, e));
                }
                // Removed by someone else between GET_FREE and open.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENXIO)) => {
                    missing = Some(n);
                    tracing::debug!(loop_dev = %path.display(), attempt, error = %e, "free loop device vanished, retrying");
                    continue;
                }
                Err(e) => return Err(LoopError::io("open", &path, e)),
            };
            match configure(&dev, &backing_file, backing, opts) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    tracing::debug!(loop_dev = %path.display(), attempt, "lost the race for a free loop device, retrying");
                    continue;
                }
                Err(e) => return Err(LoopError::io("LOOP_CONFIGURE", &path, e)),
            }
            // From here on the binding is ours: undo it if we cannot describe it.
            let mut device = LoopDevice {
                number: n,
                path,
                dev: DevNum::new(0, 0),
                diskseq: DiskSeq(0),
                file: Some(dev),
                sys_root: self.sys_root.clone(),
                backing: backing.to_owned(),
            };
            // On failure, dropping `device` detaches it (best-effort).
            device.describe()?;
            tracing::debug!(loop_dev = %device.path.display(), dev = %device.dev,
                diskseq = %device.diskseq, backing = %backing.display(), "attached loop device");
            return Ok(device);
        }
        Err(LoopError::Exhausted {
            attempts: ATTACH_ATTEMPTS,
        })
    }
}

impl LoopControl {
    /// Take over binding `loopN` that an earlier process configured on `backing` with
    /// `diskseq` (a plugin restart): it is ours only while the device still has that diskseq,
    /// otherwise [`LoopError::NotOurs`] (someone detached and reused it meanwhile).
    pub fn adopt(
        &self,
        number: u32,
        diskseq: DiskSeq,
        backing: &Path,
        read_only: bool,
    ) -> Result<LoopDevice, LoopError> {
        let path = self.device_path(number);
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| LoopError::io("open", &path, e))?;
        let found = disk_seq_of(&file).map_err(|e| LoopError::io("BLKGETDISKSEQ", &path, e))?;
        if found != diskseq {
            return Err(LoopError::NotOurs {
                path,
                ours: diskseq,
                found,
            });
        }
        // And still bound to that file (the diskseq changes on detach; this says so directly).
        let attr = self
            .sys_root
            .join("block")
            .join(format!("loop{number}"))
            .join("loop/backing_file");
        let bound = std::fs::read_to_string(&attr).map_err(|e| LoopError::io("read", &attr, e))?;
        let expected = std::fs::canonicalize(backing).unwrap_or_else(|_| backing.to_owned());
        if Path::new(bound.trim()) != expected {
            return Err(LoopError::io(
                "adopt",
                &path,
                io::Error::other(format!(
                    "bound to {}, not {}",
                    bound.trim(),
                    expected.display()
                )),
            ));
        }
        let mut device = LoopDevice {
            number,
            path,
            dev: DevNum::new(0, 0),
            diskseq,
            file: Some(file),
            sys_root: self.sys_root.clone(),
            backing: backing.to_owned(),
        };
        if let Err(e) = device.describe() {
            // Not ours after all: let go without touching the binding.
            device.file = None;
            return Err(e);
        }
        Ok(device)
    }
}

fn configure(
    dev: &File,
    backing: &File,
    backing_path: &Path,
    opts: AttachOptions,
) -> io::Result<()> {
    let mut flags = 0;
    if opts.read_only {
        flags |= LO_FLAGS_READ_ONLY;
    }
    if opts.autoclear {
        flags |= LO_FLAGS_AUTOCLEAR;
    }
    let mut name = [0u8; LO_NAME_SIZE];
    let bytes = backing_path.as_os_str().as_encoded_bytes();
    let len = bytes.len().min(LO_NAME_SIZE - 1);
    name[..len].copy_from_slice(&bytes[..len]);
    let cfg = LoopConfig {
        fd: u32::try_from(backing.as_raw_fd())
            .map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?,
        block_size: 0,
        info: LoopInfo64 {
            lo_device: 0,
            lo_inode: 0,
            lo_rdevice: 0,
            lo_offset: 0,
            lo_sizelimit: 0,
            lo_number: 0,
            lo_encrypt_type: 0,
            lo_encrypt_key_size: 0,
            lo_flags: flags,
            lo_file_name: name,
            lo_crypt_name: [0; LO_NAME_SIZE],
            lo_encrypt_key: [0; 32],
            lo_init: [0; 2],
        },
        reserved: [0; 8],
    };
    // SAFETY: LOOP_CONFIGURE reads a `struct loop_config`, which `cfg` matches in layout
    // (checked by the size assertions above) and which outlives the call.
    let rc = unsafe {
        libc::ioctl(
            dev.as_raw_fd(),
            LOOP_CONFIGURE as _,
            &cfg as *const LoopConfig,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `BLKGETDISKSEQ` on an open block device.
fn disk_seq_of(f: &File) -> io::Result<DiskSeq> {
    let mut seq: u64 = 0;
    // SAFETY: BLKGETDISKSEQ writes one u64 through the pointer, which is valid for the call.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), BLKGETDISKSEQ as _, &mut seq as *mut u64) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(DiskSeq(seq))
    }
}

/// Read `<sys_root>/block/<name>/diskseq`.
pub fn read_sys_diskseq(sys_root: &Path, block_name: &str) -> Result<DiskSeq, LoopError> {
    let path = sys_root.join("block").join(block_name).join("diskseq");
    let text = std::fs::read_to_string(&path).map_err(|e| LoopError::io("read", &path, e))?;
    text.trim()
        .parse()
        .map(DiskSeq)
        .map_err(|_| LoopError::Parse {
            path,
            value: text.clone(),
        })
}

/// A loop device this process configured. It holds an open descriptor on the device (which
/// pins the binding: with autoclear the binding dissolves when that descriptor and every mount
/// are gone). [`LoopDevice::detach`] is the explicit way out; `Drop` detaches best-effort.
#[derive(Debug)]
pub struct LoopDevice {
    number: u32,
    path: PathBuf,
    dev: DevNum,
    diskseq: DiskSeq,
    file: Option<File>,
    sys_root: PathBuf,
    backing: PathBuf,
}

impl LoopDevice {
    /// Fill `dev` (fstat of the node) and `diskseq` (sysfs, cross-checked with the ioctl).
    fn describe(&mut self) -> Result<(), LoopError> {
        let file = self.file()?;
        let ioctl_seq =
            disk_seq_of(file).map_err(|e| LoopError::io("BLKGETDISKSEQ", &self.path, e))?;
        self.diskseq = ioctl_seq;
        let meta = self
            .file()?
            .metadata()
            .map_err(|e| LoopError::io("fstat", &self.path, e))?;
        self.dev = DevNum::from_dev_t(meta.rdev());
        let name = self.name();
        let sys_seq = read_sys_diskseq(&self.sys_root, &name)?;
        if sys_seq != ioctl_seq {
            return Err(LoopError::NotOurs {
                path: self.sys_root.join("block").join(&name).join("diskseq"),
                ours: ioctl_seq,
                found: sys_seq,
            });
        }
        Ok(())
    }

    fn file(&self) -> Result<&File, LoopError> {
        self.file.as_ref().ok_or_else(|| {
            LoopError::io("use", &self.path, io::Error::from_raw_os_error(libc::EBADF))
        })
    }

    /// Fails unless the device is still bound with the diskseq we configured.
    fn check_ours(&self) -> Result<&File, LoopError> {
        let file = self.file()?;
        let found = disk_seq_of(file).map_err(|e| LoopError::io("BLKGETDISKSEQ", &self.path, e))?;
        if found != self.diskseq {
            return Err(LoopError::NotOurs {
                path: self.path.clone(),
                ours: self.diskseq,
                found,
            });
        }
        Ok(file)
    }

    /// The `N` of `loopN`.
    pub fn number(&self) -> u32 {
        self.number
    }

    /// `loopN`, the block device's kernel name.
    pub fn name(&self) -> String {
        format!("loop{}", self.number)
    }

    /// The device node this was configured through (`<dev_root>/loopN`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The device number (`7:N` for the first 256 devices, more majors beyond).
    pub fn dev_num(&self) -> DevNum {
        self.dev
    }

    /// The disk sequence number of this binding (fresh on every attach).
    pub fn diskseq(&self) -> DiskSeq {
        self.diskseq
    }

    pub fn backing_file(&self) -> &Path {
        &self.backing
    }

    /// `LOOP_SET_CAPACITY`: re-read the backing file's size (after a truncate, a size of 0 makes
    /// every I/O fail with EIO).
    pub fn set_capacity(&self) -> Result<(), LoopError> {
        let file = self.check_ours()?;
        ioctl_arg(file, LOOP_SET_CAPACITY, 0)
            .map(|_| ())
            .map_err(|e| LoopError::io("LOOP_SET_CAPACITY", &self.path, e))
    }

    /// Cut the device off from its backing file without touching the file: its size limit
    /// drops to one sector (`LOOP_SET_STATUS64`), so every read past it returns nothing and every
    /// write fails, as with a namespace whose controller the kernel deleted. Works while
    /// mounted; the backing file keeps every byte for the next incarnation.
    pub fn cut_off(&self) -> Result<(), LoopError> {
        let file = self.check_ours()?;
        // SAFETY: all-zero is a valid `loop_info64`; the kernel fills it in.
        let mut info: LoopInfo64 = unsafe { std::mem::zeroed() };
        // SAFETY: LOOP_GET_STATUS64 writes one `struct loop_info64`, which `info` matches in
        // layout and which outlives the call.
        let rc = unsafe {
            libc::ioctl(
                file.as_raw_fd(),
                LOOP_GET_STATUS64 as _,
                &mut info as *mut LoopInfo64,
            )
        };
        if rc < 0 {
            return Err(LoopError::io(
                "LOOP_GET_STATUS64",
                &self.path,
                io::Error::last_os_error(),
            ));
        }
        info.lo_sizelimit = 512;
        // SAFETY: LOOP_SET_STATUS64 reads one `struct loop_info64` from `info`, valid for the call.
        let rc = unsafe {
            libc::ioctl(
                file.as_raw_fd(),
                LOOP_SET_STATUS64 as _,
                &info as *const LoopInfo64,
            )
        };
        if rc < 0 {
            return Err(LoopError::io(
                "LOOP_SET_STATUS64",
                &self.path,
                io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Close our descriptor and leave the binding in place, for the next process to
    /// [`LoopControl::adopt`] (the emulated kernel outlives the plugin).
    pub fn release(&mut self) {
        self.file = None;
    }

    /// `LOOP_CLR_FD`, then close our descriptor. While the device is still open elsewhere (a
    /// mount) the kernel only sets autoclear and the device lives until that last user goes,
    /// exactly like `losetup -d` on a mounted loop.
    pub fn detach(mut self) -> Result<(), LoopError> {
        self.detach_inner()
    }

    fn detach_inner(&mut self) -> Result<(), LoopError> {
        if self.file.is_none() {
            return Ok(());
        }
        let result = self.check_ours().and_then(|file| {
            match ioctl_arg(file, LOOP_CLR_FD, 0) {
                Ok(_) => Ok(()),
                // Already unbound (e.g. autoclear ran): nothing left to do.
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Ok(()),
                Err(e) => Err(LoopError::io("LOOP_CLR_FD", &self.path, e)),
            }
        });
        // Closing our descriptor is what lets the kernel finish a deferred (autoclear) detach.
        self.file = None;
        match &result {
            Ok(()) => {
                tracing::debug!(loop_dev = %self.path.display(), dev = %self.dev, diskseq = %self.diskseq, "detached loop device")
            }
            Err(e) => {
                tracing::warn!(loop_dev = %self.path.display(), error = %e, "detaching loop device failed")
            }
        }
        result
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = self.detach_inner();
    }
}
