//! Small block-device primitives shared by the probe, format and statfs code: size, diskseq,
//! logical sector size (ioctls), identity, exclusive-open checks and bounded reads.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use rds_types::DevNum;

nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);
nix::ioctl_read!(blkgetdiskseq, 0x12, 128, u64);
nix::ioctl_read_bad!(blksszget, nix::request_code_none!(0x12, 104), libc::c_int);
nix::ioctl_write_ptr_bad!(blkroset, nix::request_code_none!(0x12, 93), libc::c_int);
nix::ioctl_read_bad!(blkroget, nix::request_code_none!(0x12, 94), libc::c_int);

fn open_node(path: &Path) -> io::Result<File> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)?;
    if !f.metadata()?.file_type().is_block_device() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a block device", path.display()),
        ));
    }
    Ok(f)
}

/// Whether the kernel refuses writes to the block device at `path` (`BLKROGET`: the device's
/// own read-only state, set by the target or by `BLKROSET`).
pub fn is_read_only(path: &Path) -> io::Result<bool> {
    let f = open_node(path)?;
    let mut ro: libc::c_int = 0;
    // SAFETY: BLKROGET writes one int into `ro`, which outlives the call.
    unsafe { blkroget(std::os::fd::AsRawFd::as_raw_fd(&f), &mut ro) }.map_err(io::Error::from)?;
    Ok(ro != 0)
}

/// Make the block device at `path` read-only in the kernel, or writable again (`BLKROSET`):
/// every write through any node of it then fails with EPERM, root's included.
pub fn set_read_only(path: &Path, read_only: bool) -> io::Result<()> {
    let f = open_node(path)?;
    let v: libc::c_int = read_only.into();
    // SAFETY: BLKROSET reads one int from `v`, which outlives the call.
    unsafe { blkroset(std::os::fd::AsRawFd::as_raw_fd(&f), &v) }.map_err(io::Error::from)?;
    Ok(())
}

/// Size in bytes: `BLKGETSIZE64` for a block device, the length for a regular file.
pub(crate) fn size_of(file: &File) -> io::Result<u64> {
    let meta = file.metadata()?;
    if meta.file_type().is_block_device() {
        let mut size: u64 = 0;
        // SAFETY: BLKGETSIZE64 writes one u64 into `size`, which outlives the call.
        unsafe { blkgetsize64(std::os::fd::AsRawFd::as_raw_fd(file), &mut size) }
            .map_err(io::Error::from)?;
        Ok(size)
    } else {
        Ok(meta.len())
    }
}

/// The kernel's disk sequence number (5.15+); `None` for files and older kernels.
pub(crate) fn diskseq_of(file: &File) -> Option<u64> {
    let mut seq: u64 = 0;
    // SAFETY: BLKGETDISKSEQ writes one u64 into `seq`, which outlives the call.
    unsafe { blkgetdiskseq(std::os::fd::AsRawFd::as_raw_fd(file), &mut seq) }.ok()?;
    Some(seq)
}

/// Logical sector size (alignment unit for O_DIRECT); 512 for files.
pub(crate) fn logical_sector_size(file: &File) -> u64 {
    let mut sz: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int into `sz`, which outlives the call.
    match unsafe { blksszget(std::os::fd::AsRawFd::as_raw_fd(file), &mut sz) } {
        Ok(_) if sz > 0 => sz as u64,
        _ => 512,
    }
}

/// What a device path pointed at when it was examined: enough to notice that the path now
/// names another device (renumbering, a new diskseq, another size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Identity {
    pub rdev: Option<DevNum>,
    pub dev: u64,
    pub ino: u64,
    pub diskseq: Option<u64>,
    pub size: u64,
}

pub(crate) fn identity_of(file: &File) -> io::Result<Identity> {
    let meta = file.metadata()?;
    let rdev = meta
        .file_type()
        .is_block_device()
        .then(|| DevNum::from_dev_t(meta.rdev()));
    Ok(Identity {
        rdev,
        dev: meta.dev(),
        ino: meta.ino(),
        diskseq: diskseq_of(file),
        size: size_of(file)?,
    })
}

/// Open read-only, bypassing the page cache when the device supports it, so that what we read
/// was really read from the device now, not served from pages cached before it died.
pub(crate) fn open_direct(path: &Path) -> io::Result<(File, bool)> {
    let direct = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT | libc::O_CLOEXEC)
        .open(path);
    match direct {
        Ok(f) => Ok((f, true)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_CLOEXEC)
                .open(path)?;
            Ok((f, false))
        }
        Err(e) => Err(e),
    }
}

/// Read exactly `len` bytes at `offset`. A short read (end of data before `len`) is an error:
/// a device that returns less than it claims to hold is not a device we can vouch for.
pub(crate) fn read_exact_at(
    file: &File,
    offset: u64,
    len: usize,
    direct: bool,
) -> io::Result<Vec<u8>> {
    const ALIGN: usize = 4096;
    // O_DIRECT needs an aligned buffer: over-allocate and use an aligned window (safe code).
    let mut raw = vec![0u8; len + ALIGN];
    let start = if direct {
        raw.as_ptr().align_offset(ALIGN)
    } else {
        0
    };
    let buf = &mut raw[start..start + len];
    let mut done = 0usize;
    while done < len {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("short read: {done} of {len} bytes at offset {offset}"),
                ))
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(buf.to_vec())
}

/// True when the block device can be opened with `O_EXCL`, i.e. nothing (a mounted
/// filesystem in any namespace, a holder, another exclusive opener) claims it right now.
/// Regular files always pass. The handle is closed before returning.
pub(crate) fn exclusive_open_ok(path: &Path) -> io::Result<bool> {
    let meta = std::fs::metadata(path)?;
    if !meta.file_type().is_block_device() {
        return Ok(true);
    }
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_EXCL | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(false),
        Err(e) => Err(e),
    }
}
