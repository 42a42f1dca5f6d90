//! The tokio side: one fanotify group on an `AsyncFd`, a task that reads and maps its events,
//! and a handle that adds and removes filesystem marks.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use rds_types::DevNum;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::{mpsc, oneshot};

use crate::event::{map_event, FsErrorEvent, LostCause};
use crate::parse::{self, Fsid};
use crate::registry::Registry;
use crate::sys;
use crate::FsErrorError;

/// Read buffer: FS_ERROR events are about 60-170 bytes; 16 KiB drains ~100 per `read(2)`.
const READ_BUF_LEN: usize = 16 * 1024;
/// Bytes read per wake-up before the task yields to send what it has (bounded work).
const MAX_BYTES_PER_PASS: usize = 256 * 1024;

struct Shared {
    fan: AsyncFd<OwnedFd>,
    registry: Mutex<Registry>,
}

impl Shared {
    fn registry(&self) -> MutexGuard<'_, Registry> {
        // The registry stays consistent across a panic elsewhere (every update is one call).
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Entry point; see [`FsErrorWatcher::spawn`].
#[derive(Debug)]
pub struct FsErrorWatcher;

impl FsErrorWatcher {
    /// Create the fanotify group (`FAN_CLASS_NOTIF | FAN_REPORT_FID | FAN_CLOEXEC |
    /// FAN_NONBLOCK`) and spawn the task that reads it on the current tokio runtime.
    /// Events arrive on the returned receiver (bounded by `capacity`; while it is full the
    /// kernel keeps queueing, and past its limit reports an overflow, sent as
    /// [`FsErrorEvent::Lost`]).
    ///
    /// The task stops, and the group is closed (which removes every mark), when every clone
    /// of the handle is dropped or when the receiver is dropped.
    ///
    /// Needs `CAP_SYS_ADMIN` (fanotify) and Linux 5.16+ (`FAN_FS_ERROR`).
    pub fn spawn(
        capacity: usize,
    ) -> Result<(FsErrorHandle, mpsc::Receiver<FsErrorEvent>), FsErrorError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| FsErrorError::NoRuntime)?;
        let fd = sys::fanotify_init().map_err(|source| FsErrorError::Init { source })?;
        let fan = {
            let _enter = runtime.enter();
            // SAFETY: the AsyncFd takes ownership of the OwnedFd, which stays open and refers to
            // the same fanotify group until the AsyncFd is dropped.
            unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(|e| {
                FsErrorError::Register {
                    source: e.into_parts().1,
                }
            })?
        };
        let shared = Arc::new(Shared {
            fan,
            registry: Mutex::new(Registry::default()),
        });
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let (stop_tx, stop_rx) = oneshot::channel();
        runtime.spawn(run(Arc::clone(&shared), tx, stop_rx));
        tracing::debug!(
            fd = shared.fan.as_raw_fd(),
            "filesystem-error watcher started"
        );
        Ok((
            FsErrorHandle {
                inner: Arc::new(HandleInner {
                    shared,
                    stop: stop_tx,
                }),
            },
            rx,
        ))
    }
}

/// Adds and removes watched filesystems. Cheap to clone; the watcher stops when the last
/// clone is dropped.
#[derive(Clone)]
pub struct FsErrorHandle {
    inner: Arc<HandleInner>,
}

struct HandleInner {
    shared: Arc<Shared>,
    /// Dropped with the last handle: wakes the task, which ends and closes the group.
    stop: oneshot::Sender<()>,
}

impl std::fmt::Debug for FsErrorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsErrorHandle")
            .field("fd", &self.inner.shared.fan.as_raw_fd())
            .finish()
    }
}

/// What [`FsErrorHandle::unwatch`] did with each incarnation watched for the device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unwatched {
    /// Superblocks whose mark was removed (or had already gone with the superblock).
    pub removed: Vec<Fsid>,
    /// Superblocks the recorded mount point no longer reaches: their mark stays until the
    /// superblock dies; their events are dropped meanwhile.
    pub left_to_kernel: Vec<Fsid>,
}

impl FsErrorHandle {
    /// Watch the filesystem mounted at `mount_point`, which must be `dev`'s
    /// (`fanotify_mark(FAN_MARK_ADD | FAN_MARK_FILESYSTEM, FAN_FS_ERROR)`), and return its
    /// [`Fsid`]. Every later error on that superblock arrives as [`FsErrorEvent::Error`] with
    /// this `dev` and this fsid.
    ///
    /// The fsid is `statfs(2)`'s `f_fsid`, read through the same descriptor the mark uses. For
    /// ext4 the kernel derives it from the filesystem UUID, so a new superblock on the same
    /// `major:minor` (a re-format, a different image behind a reused device number) has a
    /// different fsid: keep the returned value to tell superblock incarnations apart. Watching
    /// a new incarnation of `dev` keeps the older ones mapped to `dev` too.
    ///
    /// Makes a few syscalls on the mount point (`open(O_PATH)`, `fstat`, `fstatfs`), none of
    /// which does I/O on ext4 or xfs; call it right after mounting.
    pub fn watch(&self, mount_point: &Path, dev: DevNum) -> Result<Fsid, FsErrorError> {
        let shared = &self.inner.shared;
        if self.inner.stop.is_closed() {
            return Err(FsErrorError::Stopped);
        }
        let path = || mount_point.to_path_buf();
        let target = sys::open_target(mount_point).map_err(|source| FsErrorError::Open {
            path: path(),
            source,
        })?;
        if target.dev != dev {
            return Err(FsErrorError::DeviceMismatch {
                path: path(),
                expected: dev,
                found: target.dev,
            });
        }
        let fsid = target.fsid;
        let mut registry = shared.registry();
        if let Some(other) = registry.conflict(fsid, dev) {
            return Err(FsErrorError::FsidCollision {
                path: path(),
                fsid,
                dev,
                other,
            });
        }
        sys::mark_add(shared.fan.as_raw_fd(), &target).map_err(|source| FsErrorError::Mark {
            path: path(),
            fsid,
            source,
        })?;
        registry.insert(dev, fsid, mount_point);
        tracing::debug!(%dev, %fsid, mount_point = %mount_point.display(), "watching filesystem errors");
        Ok(fsid)
    }

    /// Stop watching every superblock recorded for `dev` (`FAN_MARK_REMOVE`). A mark is
    /// reached again through the mount point given to [`watch`](Self::watch), and removed only
    /// if that path still leads to the same fsid; otherwise see [`Unwatched::left_to_kernel`].
    pub fn unwatch(&self, dev: DevNum) -> Result<Unwatched, FsErrorError> {
        let shared = &self.inner.shared;
        // The registry is not held across the syscalls: the reader decodes every error
        // through it, on the notification path's thread.
        let gone = shared.registry().remove_dev(dev);
        if gone.is_empty() {
            return Err(FsErrorError::NotWatched { dev });
        }
        let mut out = Unwatched::default();
        for w in gone {
            match remove_mark(shared, &w.mount_point, w.fsid) {
                Ok(()) => out.removed.push(w.fsid),
                Err(e) => {
                    tracing::debug!(%dev, fsid = %w.fsid, mount_point = %w.mount_point.display(), error = %e, "mark left until its superblock dies");
                    shared.registry().retire(w.fsid);
                    out.left_to_kernel.push(w.fsid);
                }
            }
        }
        tracing::debug!(%dev, removed = out.removed.len(), left = out.left_to_kernel.len(), "unwatched filesystem errors");
        Ok(out)
    }

    /// The fsids currently watched for `dev`, oldest first.
    pub fn watched(&self, dev: DevNum) -> Vec<Fsid> {
        self.inner
            .shared
            .registry()
            .watched(dev)
            .iter()
            .map(|w| w.fsid)
            .collect()
    }
}

fn remove_mark(shared: &Shared, mount_point: &Path, fsid: Fsid) -> io::Result<()> {
    let target = sys::open_target(mount_point)?;
    if target.fsid != fsid {
        return Err(io::Error::other(
            "the mount point now holds another filesystem",
        ));
    }
    match sys::mark_remove(shared.fan.as_raw_fd(), &target) {
        // ENOENT: no such mark any more; nothing left to remove.
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        r => r,
    }
}

/// The reader task.
async fn run(shared: Arc<Shared>, tx: mpsc::Sender<FsErrorEvent>, mut stop: oneshot::Receiver<()>) {
    let mut buf = vec![0u8; READ_BUF_LEN];
    let mut batch = Vec::new();
    loop {
        let mut guard = tokio::select! {
            biased;
            _ = &mut stop => break,
            _ = tx.closed() => break,
            ready = shared.fan.readable() => match ready {
                Ok(g) => g,
                Err(e) => {
                    tracing::error!(error = %e, "fanotify group cannot be polled; filesystem-error watcher stops");
                    let _ = tx.try_send(FsErrorEvent::Lost { cause: LostCause::ReadFailed, observed_at: Instant::now() });
                    break;
                }
            },
        };
        let mut read_total = 0;
        while read_total < MAX_BYTES_PER_PASS {
            match guard.try_io(|fd| sys::read(fd.as_raw_fd(), &mut buf)) {
                Err(_would_block) => break,
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "reading the fanotify group failed");
                    batch.push(FsErrorEvent::Lost {
                        cause: LostCause::ReadFailed,
                        observed_at: Instant::now(),
                    });
                    guard.clear_ready();
                    break;
                }
                Ok(Ok(n)) => {
                    let observed_at = Instant::now();
                    read_total += n;
                    decode(&shared, &buf[..n.min(buf.len())], observed_at, &mut batch);
                }
            }
        }
        drop(guard);
        for event in batch.drain(..) {
            tokio::select! {
                biased;
                _ = &mut stop => return,
                sent = tx.send(event) => if sent.is_err() { return },
            }
        }
    }
    tracing::debug!("filesystem-error watcher stopped");
}

fn decode(shared: &Shared, bytes: &[u8], observed_at: Instant, out: &mut Vec<FsErrorEvent>) {
    let registry = shared.registry();
    let mut unparsable = false;
    for item in parse::events(bytes) {
        match item {
            Ok(raw) => {
                sys::close_event_fd(raw.fd);
                out.extend(map_event(&raw, &registry, observed_at));
            }
            Err(e) => {
                tracing::warn!(error = %e, "undecodable fanotify event");
                unparsable = true;
            }
        }
    }
    if unparsable {
        out.push(FsErrorEvent::Lost {
            cause: LostCause::Unparsable,
            observed_at,
        });
    }
}
