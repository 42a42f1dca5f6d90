//! The kernel log as a hint: the earliest signal that an NVMe controller changed state.
//!
//! No uevent announces that a fabrics controller lost its transport, and its sysfs `state`
//! attribute never wakes `poll()` (no `sysfs_notify`; measured on 6.12). The kernel does log
//! it at once: `nvme nvme0: starting error recovery` about 10 ms after a target port goes away
//! (the state reads `resetting` then, `connecting` some 20 ms later), `Reconnecting in N
//! seconds...`, `Successfully reconnected`, `Removing controller`. Each record of the NVMe
//! core carries `SUBSYSTEM=nvme` and `DEVICE=c<major>:<minor>` (the controller's char device).
//!
//! The watcher reads `/dev/kmsg` (one record per `read`; a FIFO with the same record format
//! in the emulation) and re-reads the named controller's `state` at once and a few times
//! after, so a transition is seen in milliseconds instead of at the next periodic re-read.
//! The log is only a hint: the state is always read from sysfs.
//!
//! One more thing only the log says: that xfs shut a filesystem down (a log or metadata write
//! failed, so every operation through the mount now fails with EIO). xfs sends no
//! `FAN_FS_ERROR` (only ext4 does), keeps its mount options and still answers statvfs; its
//! `XFS (<dev>): Filesystem has been shut down ...` line is the kernel's only signal, and the
//! watcher reports it as [`Hint::FsShutdown`].

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use rds_types::DevNum;

/// What a record says about a controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NvmeHint {
    /// `nvmeN`, from the message's `nvme nvmeN:` prefix.
    pub controller: Option<String>,
    /// The controller's char device, from `DEVICE=c<major>:<minor>`.
    pub dev: Option<DevNum>,
}

/// What a record tells the watcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hint {
    /// The NVMe core logged about a controller: re-read controller states.
    Nvme(NvmeHint),
    /// A filesystem on block device `device` (its kernel name) was shut down by the kernel.
    FsShutdown { device: String, message: String },
}

/// The record's hint, if it carries one.
pub fn parse_hint(rec: &[u8]) -> Option<Hint> {
    parse_record(rec).map(Hint::Nvme).or_else(|| {
        parse_fs_shutdown(rec).map(|(device, message)| Hint::FsShutdown { device, message })
    })
}

/// `XFS (<dev>): Filesystem has been shut down due to ...` (6.x), `XFS (<dev>): Corruption of
/// in-memory data (0x8) detected ... Shutting down filesystem`: the device's kernel name and
/// the message.
pub fn parse_fs_shutdown(rec: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(rec).ok()?;
    let first = text.split('\n').next()?;
    let message = first.split_once(';').map_or(first, |(_, m)| m);
    let rest = message.strip_prefix("XFS (")?;
    let (device, what) = rest.split_once("): ")?;
    let valid = !device.is_empty()
        && device
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    let shut = what.contains("has been shut down") || what.contains("Shutting down filesystem");
    (valid && shut).then(|| (device.to_owned(), message.to_owned()))
}

/// Parse one `/dev/kmsg` record (`prio,seq,ts,flags;message\n KEY=VALUE\n...`). `Some` when it
/// is a message of the NVMe core about a controller.
pub fn parse_record(rec: &[u8]) -> Option<NvmeHint> {
    let text = std::str::from_utf8(rec).ok()?;
    let mut lines = text.split('\n');
    let first = lines.next()?;
    let message = first.split_once(';').map_or(first, |(_, m)| m);
    let mut subsystem = None;
    let mut device = None;
    for l in lines {
        let Some(kv) = l.strip_prefix(' ') else {
            continue;
        };
        match kv.split_once('=') {
            Some(("SUBSYSTEM", v)) => subsystem = Some(v),
            Some(("DEVICE", v)) => device = Some(v),
            _ => {}
        }
    }
    let controller = message
        .strip_prefix("nvme ")
        .and_then(|rest| rest.split_once(':'))
        .map(|(name, _)| name)
        .filter(|n| {
            n.strip_prefix("nvme")
                .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(str::to_owned);
    let dev = device
        .and_then(|d| d.strip_prefix('c'))
        .and_then(|d| d.parse::<DevNum>().ok());
    (controller.is_some() || (subsystem == Some("nvme") && dev.is_some()))
        .then_some(NvmeHint { controller, dev })
}

/// An open kernel log, positioned at its end (only what is logged from now on is read).
pub struct Kmsg {
    file: File,
    /// A FIFO (the emulation): records may arrive in one read; split on record boundaries.
    stream: bool,
    pending: Vec<u8>,
}

impl Kmsg {
    /// Open `path` non-blocking. `/dev/kmsg` is read-only and seeked to its end; a FIFO is
    /// opened read-write, so it never reports hang-up when its writer is gone.
    pub fn open(path: &Path) -> io::Result<Self> {
        let fifo = std::fs::metadata(path)?.file_type().is_fifo();
        let file = OpenOptions::new()
            .read(true)
            .write(fifo)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)?;
        if !fifo {
            use std::os::fd::AsRawFd;
            // SAFETY: lseek on a descriptor we own; SEEK_END on /dev/kmsg skips to the end.
            if unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_END) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(Self {
            file,
            stream: fifo,
            pending: Vec::new(),
        })
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Read what is available now; the NVMe hints among it. `EPIPE` (records overwritten
    /// before we read them) is not an error: the next read continues.
    pub fn read_hints(&mut self, out: &mut Vec<Hint>) -> io::Result<()> {
        let mut buf = [0u8; 8192];
        loop {
            match self.file.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) if self.stream => {
                    self.pending.extend_from_slice(&buf[..n]);
                    self.split_stream(out);
                }
                Ok(n) => out.extend(parse_hint(&buf[..n])),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// A stream holds whole records: a header line, then continuation lines starting with a
    /// space; a record ends where the next header begins (or at a blank line).
    fn split_stream(&mut self, out: &mut Vec<Hint>) {
        let Some(last_nl) = self.pending.iter().rposition(|&b| b == b'\n') else {
            return;
        };
        let complete: Vec<u8> = self.pending.drain(..=last_nl).collect();
        let mut rec: Vec<u8> = Vec::new();
        for line in complete.split(|&b| b == b'\n') {
            if line.first() == Some(&b' ') {
                rec.push(b'\n');
                rec.extend_from_slice(line);
                continue;
            }
            if !rec.is_empty() {
                out.extend(parse_hint(&rec));
                rec.clear();
            }
            rec.extend_from_slice(line);
        }
        if !rec.is_empty() {
            out.extend(parse_hint(&rec));
        }
    }
}

/// One record in `/dev/kmsg`'s format, as the emulation writes it.
pub fn format_record(seq: u64, message: &str, dev: Option<DevNum>) -> String {
    let mut r = format!("6,{seq},0,-;{message}\n");
    if let Some(d) = dev {
        r.push_str(&format!(" SUBSYSTEM=nvme\n DEVICE=c{d}\n"));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvme_core_records_name_their_controller() {
        // Verbatim from Debian's 6.12 kernel (a port unlinked on the target).
        let r = b"4,1234,5678901,-;nvme nvme0: starting error recovery\n SUBSYSTEM=nvme\n DEVICE=c238:0\n";
        assert_eq!(
            parse_record(r),
            Some(NvmeHint {
                controller: Some("nvme0".into()),
                dev: Some(DevNum::new(238, 0)),
            })
        );
        let r = b"6,7,8,-;nvme nvme12: Reconnecting in 1 seconds...";
        assert_eq!(
            parse_record(r).and_then(|h| h.controller),
            Some("nvme12".into())
        );
    }

    #[test]
    fn other_records_are_ignored() {
        for r in [
            &b"6,1,2,-;nvmet_tcp: enabling port 1 (127.0.0.1:4420)"[..],
            b"6,1,2,-;EXT4-fs (nvme0n1): mounted filesystem",
            b"6,1,2,-;nvme nvmeX: nope",
            b"\xff\xfe",
        ] {
            assert_eq!(parse_record(r), None, "{:?}", String::from_utf8_lossy(r));
        }
    }

    #[test]
    fn a_stream_of_records_is_split_on_record_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("kmsg");
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let mut k = Kmsg::open(&p).unwrap();
        let mut w = OpenOptions::new().write(true).open(&p).unwrap();
        use std::io::Write;
        let text = format!(
            "{}{}{}{}",
            format_record(
                1,
                "nvme nvme3: starting error recovery",
                Some(DevNum::new(240, 3))
            ),
            format_record(2, "unrelated line", None),
            format_record(3, "nvme nvme4: Removing ctrl", None),
            format_record(
                4,
                "XFS (nvme4n1): Filesystem has been shut down due to log error (0x2).",
                None
            )
        );
        w.write_all(text.as_bytes()).unwrap();
        let mut hints = Vec::new();
        k.read_hints(&mut hints).unwrap();
        let nvme: Vec<&NvmeHint> = hints
            .iter()
            .filter_map(|h| match h {
                Hint::Nvme(n) => Some(n),
                _ => None,
            })
            .collect();
        let names: Vec<_> = nvme.iter().filter_map(|h| h.controller.clone()).collect();
        assert_eq!(names, vec!["nvme3", "nvme4"]);
        assert_eq!(nvme[0].dev, Some(DevNum::new(240, 3)));
        assert!(
            matches!(hints.last(), Some(Hint::FsShutdown { device, .. }) if device == "nvme4n1")
        );
    }

    #[test]
    fn an_xfs_shutdown_names_its_device() {
        // As 6.12 and 6.18 print them (measured: a loop device whose capacity went to 0).
        for (line, dev) in [
            ("3,801,4275600796,-;XFS (loop0): Filesystem has been shut down due to log error (0x2).", "loop0"),
            ("2,9,1,-;XFS (nvme0n1): Corruption of in-memory data (0x8) detected at xfs_trans_cancel+0x1 (fs/xfs/xfs_trans.c:1098).  Shutting down filesystem.", "nvme0n1"),
            ("3,10,1,-;XFS (dm-3): Filesystem has been shut down due to log error (0x2).", "dm-3"),
        ] {
            let (d, _) = parse_fs_shutdown(line.as_bytes()).unwrap_or_else(|| panic!("{line}"));
            assert_eq!(d, dev);
        }
        for line in [
            "4,5,1,-;XFS (loop0): log I/O error -5",
            "4,6,1,-;XFS (loop0): Please unmount the filesystem and rectify the problem(s)",
            "6,7,1,-;XFS (loop0): Mounting V5 Filesystem",
            "6,8,1,-;XFS (../x): Filesystem has been shut down",
            "6,8,1,-;EXT4-fs (loop0): Filesystem has been shut down",
        ] {
            assert_eq!(parse_fs_shutdown(line.as_bytes()), None, "{line}");
        }
    }
}
