//! The syscalls at the edge: fanotify group and marks, and identifying a mounted filesystem.
//!
//! Debian 12's uapi headers (and so parts of `libc`) predate `FAN_FS_ERROR`; the constants are
//! defined here from `linux/fanotify.h` (Linux 5.16+).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rds_types::DevNum;

use crate::parse::Fsid;

/// `FAN_FS_ERROR`: a filesystem reported an error (5.16+).
pub const FAN_FS_ERROR: u64 = 0x0000_8000;
/// `FAN_Q_OVERFLOW`: the group's event queue overflowed; events were lost.
pub const FAN_Q_OVERFLOW: u64 = 0x0000_4000;
/// `FAN_CLOEXEC`.
pub const FAN_CLOEXEC: u32 = 0x0000_0001;
/// `FAN_NONBLOCK`.
pub const FAN_NONBLOCK: u32 = 0x0000_0002;
/// `FAN_CLASS_NOTIF`.
pub const FAN_CLASS_NOTIF: u32 = 0x0000_0000;
/// `FAN_REPORT_FID`: events carry fsid + file handle instead of an open fd (required for
/// `FAN_FS_ERROR`).
pub const FAN_REPORT_FID: u32 = 0x0000_0200;
/// `FAN_MARK_ADD`.
pub const FAN_MARK_ADD: u32 = 0x0000_0001;
/// `FAN_MARK_REMOVE`.
pub const FAN_MARK_REMOVE: u32 = 0x0000_0002;
/// `FAN_MARK_FILESYSTEM`: the mark covers the whole superblock of the given path.
pub const FAN_MARK_FILESYSTEM: u32 = 0x0000_0100;
/// `FAN_NOFD`: the fd field of events that carry no file descriptor.
pub const FAN_NOFD: i32 = -1;
/// `FILEID_INVALID`: the file handle type of an error not tied to an inode.
pub const FILEID_INVALID: i32 = 0xff;

/// `fanotify_init(FAN_CLASS_NOTIF | FAN_REPORT_FID | FAN_CLOEXEC | FAN_NONBLOCK, O_RDONLY)`.
pub fn fanotify_init() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; on success we take sole ownership of the returned descriptor.
    let fd = unsafe {
        libc::fanotify_init(
            FAN_CLASS_NOTIF | FAN_REPORT_FID | FAN_CLOEXEC | FAN_NONBLOCK,
            (libc::O_RDONLY | libc::O_CLOEXEC) as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What a mount point resolves to, all read through one `O_PATH` descriptor so the three facts
/// (device, fsid, mark target) describe the same superblock even if the path is remounted.
#[derive(Debug)]
pub struct Target {
    fd: OwnedFd,
    pub dev: DevNum,
    pub fsid: Fsid,
}

/// Open `mount_point` with `O_PATH | O_DIRECTORY` and read its `st_dev` and `f_fsid`.
///
/// `O_PATH` because a shut-down ext4 refuses a regular `open` of its directories with EIO;
/// `fstat`/`fstatfs` on an `O_PATH` descriptor do no filesystem I/O on ext4.
pub fn open_target(mount_point: &Path) -> io::Result<Target> {
    let c = CString::new(mount_point.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    // SAFETY: valid NUL-terminated path; we own the returned descriptor.
    let raw = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh descriptor, sole owner.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let st = nix::sys::stat::fstat(&fd).map_err(io::Error::from)?;
    let fsid = fstatfs_fsid(fd.as_raw_fd())?;
    Ok(Target {
        dev: DevNum::from_dev_t(st.st_dev),
        fsid,
        fd,
    })
}

/// `fstatfs(2)`'s `f_fsid` as the two `int`s fanotify reports.
fn fstatfs_fsid(fd: RawFd) -> io::Result<Fsid> {
    // SAFETY: zeroed statfs is a valid out-parameter; the call fills it.
    let mut sfs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open for the duration of the call; `sfs` is a valid pointer.
    if unsafe { libc::fstatfs(fd, &mut sfs) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // `libc::fsid_t` keeps its `int __val[2]` private; it is exactly that layout (8 bytes,
    // repr(C)), the kernel's `__kernel_fsid_t`.
    const _: () = assert!(std::mem::size_of::<libc::fsid_t>() == 8);
    // SAFETY: same size, plain integers, every bit pattern valid.
    let val: [i32; 2] = unsafe { std::mem::transmute(sfs.f_fsid) };
    Ok(Fsid(val))
}

/// `fanotify_mark(fan, FAN_MARK_ADD | FAN_MARK_FILESYSTEM, FAN_FS_ERROR, target, ".")`.
pub fn mark_add(fan: RawFd, target: &Target) -> io::Result<()> {
    mark(fan, FAN_MARK_ADD | FAN_MARK_FILESYSTEM, target)
}

/// `fanotify_mark(fan, FAN_MARK_REMOVE | FAN_MARK_FILESYSTEM, FAN_FS_ERROR, target, ".")`.
pub fn mark_remove(fan: RawFd, target: &Target) -> io::Result<()> {
    mark(fan, FAN_MARK_REMOVE | FAN_MARK_FILESYSTEM, target)
}

fn mark(fan: RawFd, flags: u32, target: &Target) -> io::Result<()> {
    // "." relative to the O_PATH descriptor names the very directory we identified (fanotify
    // rejects an O_PATH descriptor with a NULL path, but resolves paths relative to one).
    // SAFETY: both descriptors are open; the path is a static NUL-terminated string.
    let rc = unsafe {
        libc::fanotify_mark(
            fan,
            flags,
            FAN_FS_ERROR,
            target.fd.as_raw_fd(),
            c".".as_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One non-blocking `read(2)` of the group; `Ok(0)` never happens for fanotify, EAGAIN is
/// returned as `WouldBlock`.
pub fn read(fan: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for `buf.len()` bytes of writes.
    let n = unsafe { libc::read(fan, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Close a descriptor an event unexpectedly carried (never happens with `FAN_REPORT_FID`).
pub fn close_event_fd(fd: i32) {
    if fd >= 0 {
        // SAFETY: the kernel handed this descriptor to us with the event; nobody else owns it.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
    }
}
