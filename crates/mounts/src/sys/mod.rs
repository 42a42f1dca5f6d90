//! Raw kernel interfaces the watcher uses: `listmount(2)`, `statmount(2)` (Linux 6.8+, with
//! the fields used here from 6.15) and fanotify mount-namespace events (6.15+).
//!
//! Debian 12's uapi headers predate all of these, so the constants and struct layouts are
//! defined here from the kernel's `include/uapi/linux/{mount,fanotify}.h`. Since Linux 5.1 new
//! syscalls share one number on every architecture (424 and up), so 457/458 are portable.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rds_types::DevNum;

use crate::mountinfo::{MountInfo, OptionalField};

pub const SYS_STATMOUNT: libc::c_long = 457;
pub const SYS_LISTMOUNT: libc::c_long = 458;

/// `struct mnt_id_req` (version 1, 32 bytes).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct MntIdReq {
    pub size: u32,
    /// `spare` before 6.18, `mnt_ns_fd` since; 0 = the caller's namespace.
    pub spare: u32,
    pub mnt_id: u64,
    pub param: u64,
    pub mnt_ns_id: u64,
}
pub const MNT_ID_REQ_SIZE_VER1: u32 = 32;
const _: () = assert!(std::mem::size_of::<MntIdReq>() == 32);

/// listmount: start at the namespace's root.
pub const LSMT_ROOT: u64 = u64::MAX;

pub const STATMOUNT_SB_BASIC: u64 = 0x1;
pub const STATMOUNT_MNT_BASIC: u64 = 0x2;
pub const STATMOUNT_PROPAGATE_FROM: u64 = 0x4;
pub const STATMOUNT_MNT_ROOT: u64 = 0x8;
pub const STATMOUNT_MNT_POINT: u64 = 0x10;
pub const STATMOUNT_FS_TYPE: u64 = 0x20;
pub const STATMOUNT_MNT_OPTS: u64 = 0x80;
pub const STATMOUNT_FS_SUBTYPE: u64 = 0x100;
pub const STATMOUNT_SB_SOURCE: u64 = 0x200;
/// Everything needed to rebuild a mountinfo line.
pub const STATMOUNT_MOUNTINFO: u64 = STATMOUNT_SB_BASIC
    | STATMOUNT_MNT_BASIC
    | STATMOUNT_PROPAGATE_FROM
    | STATMOUNT_MNT_ROOT
    | STATMOUNT_MNT_POINT
    | STATMOUNT_FS_TYPE
    | STATMOUNT_MNT_OPTS
    | STATMOUNT_FS_SUBTYPE
    | STATMOUNT_SB_SOURCE;

// struct statmount field offsets (include/uapi/linux/mount.h, 6.18); strings are offsets
// into `str[]`, which starts at byte 512.
const SM_SIZE: usize = 0;
const SM_MNT_OPTS: usize = 4;
const SM_MASK: usize = 8;
const SM_SB_DEV_MAJOR: usize = 16;
const SM_SB_DEV_MINOR: usize = 20;
const SM_SB_FLAGS: usize = 32;
const SM_FS_TYPE: usize = 36;
const SM_MNT_ID: usize = 40;
const SM_MNT_ID_OLD: usize = 56;
const SM_MNT_PARENT_ID_OLD: usize = 60;
const SM_MNT_ATTR: usize = 64;
const SM_MNT_PROPAGATION: usize = 72;
const SM_MNT_PEER_GROUP: usize = 80;
const SM_MNT_MASTER: usize = 88;
const SM_PROPAGATE_FROM: usize = 96;
const SM_MNT_ROOT: usize = 104;
const SM_MNT_POINT: usize = 108;
const SM_FS_SUBTYPE: usize = 120;
const SM_SB_SOURCE: usize = 124;
const SM_STR: usize = 512;

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_NOEXEC: u64 = 0x8;
const MOUNT_ATTR__ATIME: u64 = 0x70;
const MOUNT_ATTR_RELATIME: u64 = 0x0;
const MOUNT_ATTR_NOATIME: u64 = 0x10;
const MOUNT_ATTR_NODIRATIME: u64 = 0x80;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const MOUNT_ATTR_NOSYMFOLLOW: u64 = 0x0020_0000;

const SB_RDONLY: u32 = 1;
const SB_SYNCHRONOUS: u32 = 1 << 4;
const SB_DIRSYNC: u32 = 1 << 7;
const SB_LAZYTIME: u32 = 1 << 25;

const MS_UNBINDABLE: u64 = 1 << 17;
const MS_SLAVE: u64 = 1 << 19;
const MS_SHARED: u64 = 1 << 20;

// fanotify (include/uapi/linux/fanotify.h, 6.15+).
pub const FAN_CLOEXEC: u32 = 0x1;
pub const FAN_NONBLOCK: u32 = 0x2;
pub const FAN_REPORT_MNT: u32 = 0x4000;
pub const FAN_MARK_ADD: u32 = 0x1;
pub const FAN_MARK_MNTNS: u32 = 0x110;
pub const FAN_MNT_ATTACH: u64 = 0x0100_0000;
pub const FAN_MNT_DETACH: u64 = 0x0200_0000;
pub const FAN_Q_OVERFLOW: u64 = 0x4000;
pub const FAN_EVENT_INFO_TYPE_MNT: u8 = 7;
const FAN_EVENT_METADATA_LEN: usize = 24;

fn syscall_result(rc: libc::c_long) -> io::Result<usize> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as usize)
    }
}

/// Every mount id (64-bit unique ids) of the caller's mount namespace, paging through
/// `listmount(2)`.
pub fn listmount_all() -> io::Result<Vec<u64>> {
    let mut out: Vec<u64> = Vec::new();
    let mut last = 0u64;
    let chunk = 4096usize;
    loop {
        let req = MntIdReq {
            size: MNT_ID_REQ_SIZE_VER1,
            mnt_id: LSMT_ROOT,
            param: last,
            ..MntIdReq::default()
        };
        out.reserve(chunk);
        let spare = out.spare_capacity_mut();
        // SAFETY: the kernel writes at most `chunk` u64s into the spare capacity, which holds
        // at least `chunk`; `req` outlives the call.
        let rc = unsafe {
            libc::syscall(
                SYS_LISTMOUNT,
                &req as *const MntIdReq,
                spare.as_mut_ptr() as *mut u64,
                chunk,
                0u32,
            )
        };
        let n = syscall_result(rc)?;
        // SAFETY: the kernel initialised `n <= chunk` elements.
        unsafe { out.set_len(out.len() + n) };
        if n < chunk {
            return Ok(out);
        }
        last = *out.last().unwrap_or(&0);
    }
}

/// `statmount(2)` of one mount by unique id, turned into the mountinfo view of it. `buf` is
/// reused across calls and grows on `EOVERFLOW`. `ENOENT` means the mount is gone.
pub fn statmount(unique_id: u64, buf: &mut Vec<u8>) -> io::Result<MountInfo> {
    if buf.len() < 8192 {
        buf.resize(8192, 0);
    }
    loop {
        let req = MntIdReq {
            size: MNT_ID_REQ_SIZE_VER1,
            mnt_id: unique_id,
            param: STATMOUNT_MOUNTINFO,
            ..MntIdReq::default()
        };
        // SAFETY: `buf` is writable for `buf.len()` bytes; `req` outlives the call.
        let rc = unsafe {
            libc::syscall(
                SYS_STATMOUNT,
                &req as *const MntIdReq,
                buf.as_mut_ptr(),
                buf.len(),
                0u32,
            )
        };
        match syscall_result(rc) {
            Ok(_) => return decode_statmount(buf),
            Err(e) if e.raw_os_error() == Some(libc::EOVERFLOW) && buf.len() < (16 << 20) => {
                let n = buf.len() * 2;
                buf.resize(n, 0);
            }
            Err(e) => return Err(e),
        }
    }
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_ne_bytes)
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    b.get(off..off + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_ne_bytes)
}

/// A NUL-terminated string at `str[offset]`, when `flag` is in the returned mask.
fn str_at(b: &[u8], size: usize, mask: u64, flag: u64, off_field: usize) -> Option<&[u8]> {
    if mask & flag == 0 {
        return None;
    }
    let start = SM_STR + u32_at(b, off_field) as usize;
    let area = b.get(start..size.min(b.len()))?;
    let end = memchr::memchr(0, area).unwrap_or(area.len());
    Some(&area[..end])
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("statmount: {what}"))
}

/// Decode a `struct statmount` buffer into the view mountinfo would print.
pub fn decode_statmount(b: &[u8]) -> io::Result<MountInfo> {
    let size = u32_at(b, SM_SIZE) as usize;
    if size < SM_STR || size > b.len() {
        return Err(invalid("reply size out of range"));
    }
    let mask = u64_at(b, SM_MASK);
    let need = STATMOUNT_SB_BASIC | STATMOUNT_MNT_BASIC | STATMOUNT_MNT_POINT;
    if mask & need != need {
        return Err(invalid("kernel did not return the basic fields"));
    }
    let s = |flag, off| str_at(b, size, mask, flag, off);
    let attr = u64_at(b, SM_MNT_ATTR);
    let mut mount_options = String::from(if attr & MOUNT_ATTR_RDONLY != 0 {
        "ro"
    } else {
        "rw"
    });
    for (bit, name) in [
        (MOUNT_ATTR_NOSUID, ",nosuid"),
        (MOUNT_ATTR_NODEV, ",nodev"),
        (MOUNT_ATTR_NOEXEC, ",noexec"),
    ] {
        if attr & bit != 0 {
            mount_options.push_str(name);
        }
    }
    let atime = attr & MOUNT_ATTR__ATIME;
    if atime == MOUNT_ATTR_NOATIME {
        mount_options.push_str(",noatime");
    }
    if attr & MOUNT_ATTR_NODIRATIME != 0 {
        mount_options.push_str(",nodiratime");
    }
    if atime == MOUNT_ATTR_RELATIME {
        mount_options.push_str(",relatime");
    }
    if attr & MOUNT_ATTR_NOSYMFOLLOW != 0 {
        mount_options.push_str(",nosymfollow");
    }
    if attr & MOUNT_ATTR_IDMAP != 0 {
        mount_options.push_str(",idmapped");
    }

    let sb_flags = u32_at(b, SM_SB_FLAGS);
    let mut super_options = String::from(if sb_flags & SB_RDONLY != 0 {
        "ro"
    } else {
        "rw"
    });
    for (bit, name) in [
        (SB_SYNCHRONOUS, ",sync"),
        (SB_DIRSYNC, ",dirsync"),
        (SB_LAZYTIME, ",lazytime"),
    ] {
        if sb_flags & bit != 0 {
            super_options.push_str(name);
        }
    }
    if let Some(opts) = s(STATMOUNT_MNT_OPTS, SM_MNT_OPTS).filter(|o| !o.is_empty()) {
        super_options.push(',');
        super_options.push_str(&String::from_utf8_lossy(opts));
    }

    let prop = u64_at(b, SM_MNT_PROPAGATION);
    let mut optional = Vec::new();
    if prop & MS_SHARED != 0 {
        optional.push(OptionalField::Shared(u64_at(b, SM_MNT_PEER_GROUP) as u32));
    }
    if prop & MS_SLAVE != 0 {
        let master = u64_at(b, SM_MNT_MASTER);
        optional.push(OptionalField::Master(master as u32));
        let from = u64_at(b, SM_PROPAGATE_FROM);
        if mask & STATMOUNT_PROPAGATE_FROM != 0 && from != 0 && from != master {
            optional.push(OptionalField::PropagateFrom(from as u32));
        }
    }
    if prop & MS_UNBINDABLE != 0 {
        optional.push(OptionalField::Unbindable);
    }

    let mut fs_type = s(STATMOUNT_FS_TYPE, SM_FS_TYPE)
        .map(|t| String::from_utf8_lossy(t).into_owned())
        .unwrap_or_default();
    if let Some(sub) = s(STATMOUNT_FS_SUBTYPE, SM_FS_SUBTYPE).filter(|t| !t.is_empty()) {
        fs_type.push('.');
        fs_type.push_str(&String::from_utf8_lossy(sub));
    }
    let path = |p: &[u8]| PathBuf::from(OsStr::from_bytes(p));
    Ok(MountInfo {
        id: u32_at(b, SM_MNT_ID_OLD),
        parent_id: u32_at(b, SM_MNT_PARENT_ID_OLD),
        dev: DevNum::new(u32_at(b, SM_SB_DEV_MAJOR), u32_at(b, SM_SB_DEV_MINOR)),
        root: s(STATMOUNT_MNT_ROOT, SM_MNT_ROOT)
            .map(path)
            .unwrap_or_default(),
        mount_point: s(STATMOUNT_MNT_POINT, SM_MNT_POINT)
            .map(path)
            .unwrap_or_default(),
        mount_options,
        optional,
        fs_type,
        source: s(STATMOUNT_SB_SOURCE, SM_SB_SOURCE)
            .filter(|t| !t.is_empty())
            .map(|t| String::from_utf8_lossy(t).into_owned()),
        super_options,
        unique_id: Some(u64_at(b, SM_MNT_ID)),
    })
}

/// A fanotify group watching one mount namespace for attach and detach.
#[derive(Debug)]
pub struct MountFanotify {
    fd: OwnedFd,
}

impl AsRawFd for MountFanotify {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

/// One decoded fanotify mount event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FanMountEvent {
    Attach(u64),
    Detach(u64),
    /// Both bits: a move within the namespace.
    Move(u64),
    Overflow,
}

impl MountFanotify {
    /// `fanotify_init(FAN_REPORT_MNT|FAN_CLOEXEC|FAN_NONBLOCK)` + `fanotify_mark(FAN_MARK_ADD|
    /// FAN_MARK_MNTNS, FAN_MNT_ATTACH|FAN_MNT_DETACH, <ns file>)`. `mnt_ns` is the namespace
    /// file, e.g. `<proc>/self/ns/mnt`.
    pub fn watch_namespace(mnt_ns: &Path) -> io::Result<Self> {
        // SAFETY: plain syscall; the result is checked.
        let raw = unsafe {
            libc::fanotify_init(
                FAN_REPORT_MNT | FAN_CLOEXEC | FAN_NONBLOCK,
                (libc::O_RDONLY | libc::O_CLOEXEC) as libc::c_uint,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let ns = std::fs::File::open(mnt_ns)?;
        // SAFETY: both fds are valid for the call; the path is NULL (mark the fd itself).
        let rc = unsafe {
            libc::fanotify_mark(
                fd.as_raw_fd(),
                FAN_MARK_ADD | FAN_MARK_MNTNS,
                FAN_MNT_ATTACH | FAN_MNT_DETACH,
                ns.as_raw_fd(),
                std::ptr::null(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd })
    }

    /// Read whatever is queued (non-blocking); `Ok(0)` when nothing is.
    pub fn read_events(&self, buf: &mut [u8], out: &mut Vec<FanMountEvent>) -> io::Result<usize> {
        // SAFETY: `buf` is writable for its length.
        let rc = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::WouldBlock {
                Ok(0)
            } else {
                Err(e)
            };
        }
        let n = rc as usize;
        decode_fanotify(&buf[..n], out);
        Ok(n)
    }
}

/// Decode a buffer of fanotify events with mount info records.
pub fn decode_fanotify(mut b: &[u8], out: &mut Vec<FanMountEvent>) {
    while b.len() >= FAN_EVENT_METADATA_LEN {
        let len = u32_at(b, 0) as usize;
        if len < FAN_EVENT_METADATA_LEN || len > b.len() {
            return;
        }
        let meta_len = usize::from(u16::from_ne_bytes([b[6], b[7]]));
        let mask = u64_at(b, 8);
        // The fd field is always FAN_NOFD for a FAN_REPORT_MNT group: no fd to close.
        if mask & FAN_Q_OVERFLOW != 0 {
            out.push(FanMountEvent::Overflow);
        } else {
            let mut info = b
                .get(meta_len.max(FAN_EVENT_METADATA_LEN)..len)
                .unwrap_or(&[]);
            while info.len() >= 4 {
                let ty = info[0];
                let ilen = usize::from(u16::from_ne_bytes([info[2], info[3]]));
                if ilen < 4 || ilen > info.len() {
                    break;
                }
                if ty == FAN_EVENT_INFO_TYPE_MNT && ilen >= 16 {
                    let id = u64_at(info, 8);
                    let attach = mask & FAN_MNT_ATTACH != 0;
                    let detach = mask & FAN_MNT_DETACH != 0;
                    match (attach, detach) {
                        (true, true) => out.push(FanMountEvent::Move(id)),
                        (true, false) => out.push(FanMountEvent::Attach(id)),
                        (false, true) => out.push(FanMountEvent::Detach(id)),
                        (false, false) => {}
                    }
                }
                info = &info[ilen..];
            }
        }
        b = &b[len..];
    }
}

#[cfg(test)]
mod decode_tests;
#[cfg(test)]
mod kernel_tests;
