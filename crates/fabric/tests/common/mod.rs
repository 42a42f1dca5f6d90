//! Helpers shared by the privileged test files.
#![allow(dead_code)]

pub mod devices;

use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

/// Generous: the release normally follows within microseconds.
const RELEASE_DEADLINE: Duration = Duration::from_secs(10);

/// The backing file the kernel reports for `loopN`, if bound.
pub fn loop_backing(loop_name: &str) -> Option<String> {
    std::fs::read_to_string(format!("/sys/block/{loop_name}/loop/backing_file"))
        .ok()
        .map(|s| s.trim_end().to_owned())
}

/// Wait until `loop_name` is no longer bound to `backing`, awaiting the kernel's uevents for
/// that device (group 1) with a deadline.
///
/// A detach is immediate only when no one else holds the device open; otherwise the kernel sets
/// autoclear and finishes when the last opener closes. Besides mounts, that opener can be the
/// short-lived child of a `fork` in a parallel test (it holds copies of every descriptor until
/// it execs), so tests wait for the release event instead of expecting it synchronously.
pub fn await_loop_released(loop_name: &str, backing: &Path) {
    let backing = backing.to_str().expect("utf-8 path");
    // Subscribe first, then check: a release between the two is seen by the check.
    let mut sock = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_KOBJECT_UEVENT)
        .expect("uevent socket");
    sock.bind(&netlink_sys::SocketAddr::new(0, 1))
        .expect("bind group 1");
    let start = Instant::now();
    let mut buf = vec![0u8; 16384];
    loop {
        if loop_backing(loop_name).as_deref() != Some(backing) {
            return;
        }
        let left = RELEASE_DEADLINE
            .checked_sub(start.elapsed())
            .unwrap_or_else(|| {
                panic!("{loop_name} still bound to {backing} after {RELEASE_DEADLINE:?}")
            });
        let tv = libc::timeval {
            tv_sec: left.as_secs() as libc::time_t,
            tv_usec: libc::suseconds_t::from(left.subsec_micros().max(1) as i32),
        };
        // SAFETY: setsockopt with a valid timeval on our own socket.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as u32,
            );
        }
        // Any event (or a timeout) leads to a re-check; the deadline bounds the whole wait.
        let _ = sock.recv(&mut &mut buf[..], 0);
    }
}
