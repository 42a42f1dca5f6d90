//! Bare listeners for the kernel's own signals, each on its own thread with a timestamp per
//! record: kernel uevents (netlink `NETLINK_KOBJECT_UEVENT` group 1, what the kernel sends
//! before udev sees it) and NVMe lines of the kernel log (`/dev/kmsg`). They are the reference
//! the real-kernel benchmark measures the plugin against, and what the fixtures are made of.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::socket::{
    bind, recv, setsockopt, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr, SockFlag,
    SockProtocol, SockType,
};
use rds_devices::uevent::{parse_kernel, parse_libudev, Uevent};

/// One record and when the listener received it.
#[derive(Debug, Clone)]
pub struct Stamped<T> {
    pub at: Instant,
    pub value: T,
}

struct Log<T> {
    items: Mutex<Vec<Stamped<T>>>,
    grew: Condvar,
}

impl<T: Clone> Log<T> {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            items: Mutex::new(Vec::new()),
            grew: Condvar::new(),
        })
    }

    fn push(&self, value: T) {
        let mut g = self.items.lock().unwrap_or_else(PoisonError::into_inner);
        g.push(Stamped {
            at: Instant::now(),
            value,
        });
        self.grew.notify_all();
    }

    fn snapshot(&self) -> Vec<Stamped<T>> {
        self.items
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The first record at or after `since` that satisfies `pred`, waiting up to `within`.
    fn wait_for(
        &self,
        since: Instant,
        within: Duration,
        pred: impl Fn(&T) -> bool,
    ) -> Option<Stamped<T>> {
        let deadline = Instant::now() + within;
        let mut g = self.items.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(hit) = g.iter().find(|s| s.at >= since && pred(&s.value)) {
                return Some(hit.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            g = self
                .grew
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// Kernel uevents as they leave the kernel.
pub struct UeventRecorder {
    log: Arc<Log<Uevent>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn netlink_socket(group: u32) -> std::io::Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkKObjectUEvent,
    )?;
    // A burst of events (a controller's deletion is about ten) must not overflow the queue.
    let _ = setsockopt(&fd, sockopt::RcvBufForce, &(4 << 20));
    setsockopt(
        &fd,
        sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(0, 100_000),
    )?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, group))?;
    Ok(fd)
}

impl UeventRecorder {
    /// The kernel's own events (group 1).
    pub fn start() -> std::io::Result<Self> {
        Self::start_group(rds_devices::uevent::GROUP_KERNEL, parse_kernel)
    }

    /// What udev (or the emulation, which speaks as udev) sends on group 2.
    pub fn udev() -> std::io::Result<Self> {
        Self::start_group(rds_devices::uevent::GROUP_UDEV, parse_libudev)
    }

    fn start_group(
        group: u32,
        parse: fn(&[u8]) -> Result<Uevent, rds_devices::uevent::ParseError>,
    ) -> std::io::Result<Self> {
        let fd = netlink_socket(group)?;
        let log = Log::new();
        let stop = Arc::new(AtomicBool::new(false));
        let (l, s) = (log.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("uevent-recorder".into())
            .spawn(move || {
                let mut buf = vec![0u8; 16 * 1024];
                while !s.load(Ordering::Relaxed) {
                    match recv(fd.as_fd().as_raw_fd(), &mut buf, MsgFlags::empty()) {
                        Ok(n) => {
                            if let Ok(ev) = parse(&buf[..n]) {
                                l.push(ev);
                            }
                        }
                        Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {}
                        Err(e) => {
                            eprintln!("uevent recorder: {e}");
                            return;
                        }
                    }
                }
            })?;
        Ok(Self {
            log,
            stop,
            thread: Some(thread),
        })
    }

    pub fn snapshot(&self) -> Vec<Stamped<Uevent>> {
        self.log.snapshot()
    }

    pub fn wait_for(
        &self,
        since: Instant,
        within: Duration,
        pred: impl Fn(&Uevent) -> bool,
    ) -> Option<Stamped<Uevent>> {
        self.log.wait_for(since, within, pred)
    }
}

impl Drop for UeventRecorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Lines of the kernel log (`/dev/kmsg`, from the moment the recorder starts), message text
/// only.
pub struct KmsgRecorder {
    log: Arc<Log<String>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl KmsgRecorder {
    /// The kernel log, from now on.
    pub fn start() -> std::io::Result<Self> {
        use std::io::{Seek, SeekFrom};
        let mut f = Self::open(std::path::Path::new("/dev/kmsg"))?;
        f.seek(SeekFrom::End(0))?;
        Self::run(f)
    }

    /// A FIFO carrying records in the kernel log's format (the emulation's `<dev>/kmsg`).
    pub fn fifo(path: &std::path::Path) -> std::io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        // Read-write: the FIFO always has a writer, so no end-of-file between the emulation's
        // writes.
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)?;
        Self::run(f)
    }

    fn open(path: &std::path::Path) -> std::io::Result<std::fs::File> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
    }

    fn run(mut f: std::fs::File) -> std::io::Result<Self> {
        use std::io::Read;
        let log = Log::new();
        let stop = Arc::new(AtomicBool::new(false));
        let (l, s) = (log.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("kmsg-recorder".into())
            .spawn(move || {
                let mut buf = vec![0u8; 8192];
                while !s.load(Ordering::Relaxed) {
                    let mut pfd = [nix::poll::PollFd::new(
                        f.as_fd(),
                        nix::poll::PollFlags::POLLIN,
                    )];
                    let _ = nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(100u16));
                    loop {
                        match f.read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => {
                                // One record per read from /dev/kmsg; a FIFO may hand over
                                // several: "pri,seq,usec,flags;message\n KEY=VALUE\n...".
                                let text = String::from_utf8_lossy(&buf[..n]);
                                for line in text.lines() {
                                    if line.starts_with(' ') {
                                        continue;
                                    }
                                    if let Some((_, msg)) = line.split_once(';') {
                                        l.push(msg.to_owned());
                                    }
                                }
                            }
                            // EPIPE: records were overwritten; the next read continues.
                            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                            Err(_) => break,
                        }
                    }
                }
            })?;
        Ok(Self {
            log,
            stop,
            thread: Some(thread),
        })
    }

    pub fn snapshot(&self) -> Vec<Stamped<String>> {
        self.log.snapshot()
    }

    pub fn wait_for(
        &self,
        since: Instant,
        within: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<Stamped<String>> {
        self.log.wait_for(since, within, |s| pred(s))
    }
}

impl Drop for KmsgRecorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
