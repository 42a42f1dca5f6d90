//! A one-file FUSE filesystem whose I/O can be frozen: the real hung device for stall tests.
//!
//! [`HangableFile::mount`] mounts a FUSE filesystem (the kernel's own `/dev/fuse` protocol,
//! spoken here directly: no libfuse, no `fusermount`) that holds one regular file of a fixed
//! size, kept in memory. A loop device on that file is a real block device whose every request
//! ends in this process. [`HangableFile::freeze`] stops answering reads, writes and fsyncs
//! (they are parked, never failed), so requests pile up in flight in the block layer and none
//! completes: what a target that accepts commands and never completes them does to a node.
//! [`HangableFile::thaw`] answers the parked requests and serves again.
//!
//! Needs root (a FUSE mount with `allow_other`); use it inside the test kit's private mount
//! namespace. Drop thaws, detaches the mount and aborts the connection.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

const ROOT_ID: u64 = 1;
const FILE_ID: u64 = 2;
const MAX_WRITE: u32 = 128 << 10;
const ENOENT: i32 = 2;
const ENOSYS: i32 = 38;

// Opcodes (include/uapi/linux/fuse.h).
const LOOKUP: u32 = 1;
const FORGET: u32 = 2;
const GETATTR: u32 = 3;
const SETATTR: u32 = 4;
const OPEN: u32 = 14;
const READ: u32 = 15;
const WRITE: u32 = 16;
const STATFS: u32 = 17;
const RELEASE: u32 = 18;
const FSYNC: u32 = 20;
const FLUSH: u32 = 25;
const INIT: u32 = 26;
const INTERRUPT: u32 = 36;
const BATCH_FORGET: u32 = 42;

/// A request parked while frozen: answered at thaw.
struct Parked {
    unique: u64,
    opcode: u32,
    offset: u64,
    size: u32,
    data: Vec<u8>,
}

struct Shared {
    data: Vec<u8>,
    frozen: bool,
    parked: Vec<Parked>,
    /// Requests answered with data or a write (not metadata): completions seen by the kernel.
    served: u64,
}

/// The mounted filesystem and its one file.
pub struct HangableFile {
    mount: PathBuf,
    file: PathBuf,
    dev: Arc<File>,
    shared: Arc<Mutex<Shared>>,
    conn: u32,
    thread: Option<JoinHandle<()>>,
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or([0; 4]))
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]))
}

fn attr(ino: u64, size: u64) -> Vec<u8> {
    let mut a = Vec::with_capacity(88);
    let (mode, nlink) = if ino == ROOT_ID {
        (libc::S_IFDIR | 0o755, 2u32)
    } else {
        (libc::S_IFREG | 0o644, 1u32)
    };
    for v in [ino, size, size.div_ceil(512), 0, 0, 0] {
        a.extend_from_slice(&v.to_le_bytes());
    }
    for v in [0u32, 0, 0, mode, nlink, 0, 0, 0, 4096, 0] {
        a.extend_from_slice(&v.to_le_bytes());
    }
    a
}

/// Entry and attribute validity: long, so a frozen file's metadata needs no round trip.
const VALID_SECS: u64 = 3600;

fn reply(dev: &File, unique: u64, error: i32, payload: &[u8]) {
    let mut b = Vec::with_capacity(16 + payload.len());
    b.extend_from_slice(&(16 + payload.len() as u32).to_le_bytes());
    b.extend_from_slice(&(-error).to_le_bytes());
    b.extend_from_slice(&unique.to_le_bytes());
    b.extend_from_slice(payload);
    // SAFETY: `b` is a valid buffer of `b.len()` bytes for the duration of the call.
    let _ = unsafe { libc::write(dev.as_raw_fd(), b.as_ptr().cast(), b.len()) };
}

impl Shared {
    /// Serve a read or write (or answer an fsync) now.
    fn serve(&mut self, dev: &File, p: Parked) {
        self.served += 1;
        match p.opcode {
            READ => {
                let start = (p.offset as usize).min(self.data.len());
                let end = (start + p.size as usize).min(self.data.len());
                let chunk = self.data[start..end].to_vec();
                reply(dev, p.unique, 0, &chunk);
            }
            WRITE => {
                let start = (p.offset as usize).min(self.data.len());
                let end = (start + p.data.len()).min(self.data.len());
                self.data[start..end].copy_from_slice(&p.data[..end - start]);
                let mut out = Vec::with_capacity(8);
                out.extend_from_slice(&((end - start) as u32).to_le_bytes());
                out.extend_from_slice(&0u32.to_le_bytes());
                reply(dev, p.unique, 0, &out);
            }
            _ => reply(dev, p.unique, 0, &[]),
        }
    }
}

fn handle(dev: &File, shared: &Mutex<Shared>, name: &[u8], req: &[u8]) {
    if req.len() < 40 {
        return;
    }
    let opcode = le32(req, 4);
    let unique = le64(req, 8);
    let nodeid = le64(req, 16);
    let body = &req[40..];
    let size = shared.lock().unwrap_or_else(|p| p.into_inner()).data.len() as u64;
    match opcode {
        INIT => {
            let max_readahead = if body.len() >= 12 { le32(body, 8) } else { 0 };
            let mut out = Vec::with_capacity(64);
            for v in [7u32, 38, max_readahead, 0] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            out.extend_from_slice(&16u16.to_le_bytes()); // max_background
            out.extend_from_slice(&12u16.to_le_bytes()); // congestion_threshold
            out.extend_from_slice(&MAX_WRITE.to_le_bytes());
            out.extend_from_slice(&1u32.to_le_bytes()); // time_gran
            out.extend_from_slice(&0u16.to_le_bytes()); // max_pages
            out.extend_from_slice(&0u16.to_le_bytes()); // map_alignment
            out.extend_from_slice(&0u32.to_le_bytes()); // flags2
            out.extend_from_slice(&[0u8; 28]);
            reply(dev, unique, 0, &out);
        }
        LOOKUP => {
            let asked = body.split(|b| *b == 0).next().unwrap_or(&[]);
            if nodeid == ROOT_ID && asked == name {
                let mut out = Vec::with_capacity(128);
                for v in [FILE_ID, 1, VALID_SECS, VALID_SECS] {
                    out.extend_from_slice(&v.to_le_bytes());
                }
                out.extend_from_slice(&[0u8; 8]);
                out.extend_from_slice(&attr(FILE_ID, size));
                reply(dev, unique, 0, &out);
            } else {
                reply(dev, unique, ENOENT, &[]);
            }
        }
        GETATTR | SETATTR => {
            let mut out = Vec::with_capacity(104);
            out.extend_from_slice(&VALID_SECS.to_le_bytes());
            out.extend_from_slice(&[0u8; 8]);
            out.extend_from_slice(&attr(
                if nodeid == ROOT_ID { ROOT_ID } else { FILE_ID },
                size,
            ));
            reply(dev, unique, 0, &out);
        }
        OPEN => reply(dev, unique, 0, &[0u8; 16]),
        STATFS => reply(dev, unique, 0, &[0u8; 80]),
        RELEASE | FLUSH => reply(dev, unique, 0, &[]),
        READ | WRITE | FSYNC => {
            let p = Parked {
                unique,
                opcode,
                offset: if body.len() >= 16 { le64(body, 8) } else { 0 },
                size: if body.len() >= 20 { le32(body, 16) } else { 0 },
                data: if opcode == WRITE && body.len() >= 40 {
                    body[40..].to_vec()
                } else {
                    Vec::new()
                },
            };
            let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
            if s.frozen {
                s.parked.push(p);
            } else {
                s.serve(dev, p);
            }
        }
        FORGET | BATCH_FORGET | INTERRUPT => {}
        _ => reply(dev, unique, ENOSYS, &[]),
    }
}

impl HangableFile {
    /// Mount at `dir` (created if missing) a filesystem holding the file `name` of `size`
    /// zero bytes.
    pub fn mount(dir: &Path, name: &str, size: u64) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let dev = Arc::new(
            OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/fuse")?,
        );
        let opts = format!(
            "fd={},rootmode=40000,user_id=0,group_id=0,allow_other",
            dev.as_raw_fd()
        );
        nix::mount::mount(
            Some("rds-hangable"),
            dir,
            Some("fuse"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            Some(opts.as_str()),
        )
        .map_err(io::Error::from)?;
        let shared = Arc::new(Mutex::new(Shared {
            data: vec![0; usize::try_from(size).map_err(|_| io::Error::other("size"))?],
            frozen: false,
            parked: Vec::new(),
            served: 0,
        }));
        let (d, s, n) = (dev.clone(), shared.clone(), name.as_bytes().to_vec());
        let thread = std::thread::Builder::new()
            .name("hangable-fuse".into())
            .spawn(move || {
                let mut buf = vec![0u8; MAX_WRITE as usize + 64 * 1024];
                loop {
                    // SAFETY: `buf` is valid for `buf.len()` bytes for the call.
                    let n_read =
                        unsafe { libc::read(d.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                    if n_read < 0 {
                        match io::Error::last_os_error().raw_os_error() {
                            Some(libc::EINTR | libc::EAGAIN | libc::ENOENT) => continue,
                            _ => return,
                        }
                    }
                    handle(&d, &s, &n, &buf[..n_read as usize]);
                }
            })?;
        // The connection's number is the mount's device minor (/sys/fs/fuse/connections/N).
        let conn = nix::sys::stat::minor(std::fs::metadata(dir)?.dev()) as u32;
        Ok(Self {
            mount: dir.to_owned(),
            file: dir.join(name),
            dev,
            shared,
            conn,
            thread: Some(thread),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.file
    }

    /// Stop answering reads, writes and fsyncs: they wait, in flight.
    pub fn freeze(&self) {
        self.shared.lock().unwrap_or_else(|p| p.into_inner()).frozen = true;
    }

    /// Answer every parked request and serve again.
    pub fn thaw(&self) {
        let mut s = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        s.frozen = false;
        let parked = std::mem::take(&mut s.parked);
        for p in parked {
            s.serve(&self.dev, p);
        }
    }

    /// Requests waiting for an answer.
    pub fn parked(&self) -> usize {
        self.shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .parked
            .len()
    }
}

impl Drop for HangableFile {
    fn drop(&mut self) {
        self.thaw();
        let _ = nix::mount::umount2(&self.mount, nix::mount::MntFlags::MNT_DETACH);
        // Aborting the connection ends the server thread's read (and fails whatever a
        // leftover user still sends).
        let ctl = Path::new("/sys/fs/fuse/connections");
        let abort = ctl.join(self.conn.to_string()).join("abort");
        if !abort.exists() {
            let _ = nix::mount::mount(
                Some("fusectl"),
                ctl,
                Some("fusectl"),
                nix::mount::MsFlags::empty(),
                None::<&str>,
            );
        }
        if std::fs::write(&abort, b"1").is_ok() {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }
}
