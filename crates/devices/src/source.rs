//! Uevent sources: one `NETLINK_KOBJECT_UEVENT` socket bound to the kernel group (1), the
//! udev group (2), or both.
//!
//! Why our own socket for the udev group rather than the `udev` crate's `MonitorBuilder`:
//! libudev binds group 2 only when `/run/udev/control` exists or `/dev` is devtmpfs (a
//! container with a tmpfs `/dev` and no udevd would silently get nothing), it swallows
//! `ENOBUFS` (lost events would go unnoticed: the overflow test needs exactly that signal on
//! group 2, where the emulated fabric injects), and it would make libudev a run-time
//! dependency. A raw socket (created with
//! `netlink-sys`, driven by tokio's `AsyncFd`) receives both groups with one parser, reports
//! overflow, and needs no libudev at run time. Sending to these groups needs CAP_NET_ADMIN
//! (the kernel refuses unprivileged senders), and kernel-format messages are only accepted
//! from the kernel (sender port 0), as libudev does.

use std::io;
use std::mem;
use std::os::fd::AsRawFd;
use std::path::Path;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tracing::{debug, warn};

use crate::uevent::{self, Origin, Uevent, GROUP_KERNEL, GROUP_UDEV};

/// Which groups to listen to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SourceKind {
    /// Kernel uevents (group 1): always available, also in a private network namespace.
    Kernel,
    /// udev events (group 2): udevd's re-broadcasts, and synthetic injections.
    Udev,
    /// Both groups.
    Both,
    /// Kernel, plus udev when udevd runs (`<run>/udev/control` exists).
    #[default]
    Auto,
}

/// The live groups resolved from a [`SourceKind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sources {
    pub kernel: bool,
    pub udev: bool,
}

impl Sources {
    /// Netlink group bit mask (group 1 = bit 0, group 2 = bit 1).
    pub fn mask(self) -> u32 {
        (if self.kernel {
            1 << (GROUP_KERNEL - 1)
        } else {
            0
        }) | (if self.udev { 1 << (GROUP_UDEV - 1) } else { 0 })
    }
}

impl SourceKind {
    pub fn resolve(self, run_root: &Path) -> Sources {
        match self {
            Self::Kernel => Sources {
                kernel: true,
                udev: false,
            },
            Self::Udev => Sources {
                kernel: false,
                udev: true,
            },
            Self::Both => Sources {
                kernel: true,
                udev: true,
            },
            Self::Auto => Sources {
                kernel: true,
                udev: run_root.join("udev/control").exists(),
            },
        }
    }
}

/// What one receive produced.
#[derive(Debug)]
pub enum Received {
    Event(Uevent),
    /// The socket's receive queue overflowed (`ENOBUFS`): events were lost.
    Overflow,
    /// A message that may have been ours but could not be read (truncated or unparsable):
    /// treat it as a loss and resync.
    Unreadable(String),
    /// A message that is not for us (a kernel-format message sent from user space).
    Ignored,
}

/// Receive buffer: the parser's limit plus room to notice longer messages.
const RECV_BUF: usize = uevent::MAX_UEVENT_LEN * 2;

/// A non-blocking uevent socket registered with tokio.
pub struct UeventSocket {
    fd: AsyncFd<netlink_sys::Socket>,
    buf: Vec<u8>,
}

impl UeventSocket {
    /// Opens and binds a socket for `sources` with a receive buffer of `rcvbuf` bytes
    /// (SO_RCVBUFFORCE when privileged, else SO_RCVBUF capped by `rmem_max`). Must be called
    /// inside a tokio runtime.
    pub fn open(sources: Sources, rcvbuf: usize) -> io::Result<Self> {
        let mut sock = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_KOBJECT_UEVENT)?;
        set_rcvbuf(&sock, rcvbuf);
        sock.bind(&netlink_sys::SocketAddr::new(0, sources.mask()))?;
        sock.set_non_blocking(true)?;
        // SAFETY: the socket owns its descriptor, which stays open and unchanged until the
        // AsyncFd (which owns the socket) is dropped.
        let fd = unsafe { AsyncFd::register_with_interest(sock, Interest::READABLE) }
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Self {
            fd,
            buf: vec![0; RECV_BUF],
        })
    }

    /// The effective receive buffer (the kernel doubles what was asked).
    pub fn rcvbuf(&self) -> io::Result<usize> {
        self.fd.get_ref().get_rx_buf_sz()
    }

    /// Waits for the next message.
    pub async fn recv(&mut self) -> io::Result<Received> {
        loop {
            let mut guard = self.fd.readable().await?;
            let buf = &mut self.buf;
            match guard.try_io(|fd| recv_one(fd.get_ref().as_raw_fd(), buf)) {
                Ok(res) => return res,
                Err(_would_block) => continue,
            }
        }
    }

    /// Receives one message if one is queued, without waiting.
    pub fn try_recv(&mut self) -> io::Result<Option<Received>> {
        match recv_one(self.fd.get_ref().as_raw_fd(), &mut self.buf) {
            Ok(r) => Ok(Some(r)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }
}

fn set_rcvbuf(sock: &netlink_sys::Socket, size: usize) {
    let val = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: setsockopt on an owned socket with a c_int that outlives the call.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&val as *const libc::c_int).cast(),
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            return;
        }
    }
    warn!(
        rcvbuf = size,
        error = %io::Error::last_os_error(),
        "could not set the uevent receive buffer; keeping the default"
    );
}

/// One `recvmsg`, classified.
fn recv_one(fd: libc::c_int, buf: &mut [u8]) -> io::Result<Received> {
    // SAFETY: zeroed sockaddr_nl/msghdr are valid; the iovec points into `buf`, which
    // outlives the call; the kernel writes at most the lengths given.
    let (n, addr, flags) = unsafe {
        let mut addr: libc::sockaddr_nl = mem::zeroed();
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut msg: libc::msghdr = mem::zeroed();
        msg.msg_name = (&mut addr as *mut libc::sockaddr_nl).cast();
        msg.msg_namelen = mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        let n = libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT);
        (n, addr, msg.msg_flags)
    };
    if n < 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ENOBUFS) => Ok(Received::Overflow),
            _ => Err(err),
        };
    }
    let n = n as usize;
    if flags & libc::MSG_TRUNC != 0 {
        warn!(len = n, "uevent longer than the receive buffer dropped");
        return Ok(Received::Unreadable(format!(
            "message truncated at {n} bytes"
        )));
    }
    match uevent::parse(&buf[..n]) {
        Ok(ev) if ev.origin == Origin::Kernel && addr.nl_pid != 0 => {
            debug!(
                sender = addr.nl_pid,
                "kernel-format uevent from user space ignored"
            );
            Ok(Received::Ignored)
        }
        Ok(ev) => Ok(Received::Event(ev)),
        Err(e) => {
            warn!(error = %e, len = n, "unparsable uevent");
            Ok(Received::Unreadable(e.to_string()))
        }
    }
}
