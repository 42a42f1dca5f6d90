//! Test support shared by every crate's privileged integration tests.
//!
//! Kernel-touching tests must never change the host: they run inside a private mount namespace
//! (with private propagation, so nothing they mount propagates out) and, when they inject
//! uevents, a private network namespace (so no host listener sees synthetic events).
//!
//! A namespace can only be entered by the whole process while it is single-threaded, i.e.
//! before libtest spawns its worker threads. Each integration test binary therefore invokes
//! [`private_namespaces!`] once at top level: it registers a constructor that runs before
//! `main`. Tests then call [`require_private_namespaces`], which panics loudly (never skips)
//! when the namespaces could not be entered, for example when not running as root.

pub mod devices;
pub mod fake_api;
pub mod fuse;
pub mod loopdev;

use std::sync::OnceLock;

/// Outcome of the attempt made before `main`.
static ENTERED: OnceLock<Result<(), String>> = OnceLock::new();

/// Enter a private mount namespace (propagation private) and a private network namespace with
/// the loopback interface up. Called from the constructor registered by
/// [`private_namespaces!`]; not meant to be called directly once threads exist.
#[doc(hidden)]
pub fn enter_before_main() {
    let _ = ENTERED.set(enter());
}

/// Enter private mount and network namespaces now. The caller must be single-threaded (the
/// `demo` calls this before it starts its runtime). Used by [`private_namespaces!`] for tests.
pub fn enter_private_namespaces() -> Result<(), String> {
    enter()
}

fn enter() -> Result<(), String> {
    use nix::mount::{mount, MsFlags};
    use nix::sched::{unshare, CloneFlags};
    unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("unshare(CLONE_NEWNS|CLONE_NEWNET) failed: {e} (tests need root)"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("making / private in the new mount namespace failed: {e}"))?;
    loopback_up().map_err(|e| format!("bringing lo up in the private network namespace: {e}"))?;
    Ok(())
}

/// `ip link set lo up` through the SIOCSIFFLAGS ioctl.
fn loopback_up() -> std::io::Result<()> {
    // SAFETY: plain socket/ioctl calls on a zeroed ifreq that outlives them.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        let mut rc = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req);
        if rc == 0 {
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            rc = libc::ioctl(fd, libc::SIOCSIFFLAGS, &mut req);
        }
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if rc != 0 {
            return Err(err);
        }
    }
    Ok(())
}

/// Panics with a clear message unless this process entered its private namespaces before
/// `main`. Every privileged test calls this first: a test that cannot get its privileges fails.
pub fn require_private_namespaces() {
    match ENTERED.get() {
        Some(Ok(())) => {}
        Some(Err(e)) => panic!("privileged test cannot run: {e}"),
        None => panic!(
            "privileged test cannot run: this test binary did not invoke \
             rds_testkit::private_namespaces!() at top level"
        ),
    }
}

/// Register the constructor that enters the private namespaces before `main`.
/// Invoke once at the top level of an integration test file.
#[macro_export]
macro_rules! private_namespaces {
    () => {
        #[$crate::__ctor::ctor(unsafe)]
        fn __rds_testkit_enter_private_namespaces() {
            $crate::enter_before_main();
        }
    };
}

#[doc(hidden)]
pub use ctor as __ctor;

/// Unmount `path` as an administrator would, retrying while the kernel answers EBUSY for up to
/// two seconds: the plugin opens mount points for an instant (`O_PATH` to mark a filesystem for
/// `FAN_FS_ERROR`, to read `statfs`), and an unmount that lands in that instant is refused.
/// Any other error, or EBUSY that lasts, is returned.
pub fn umount_as_admin(path: &std::path::Path) -> nix::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match nix::mount::umount(path) {
            Err(nix::errno::Errno::EBUSY) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => return r,
        }
    }
}

/// What a pod does on a volume whose device may have died: write 8 KiB to `dir/name` and
/// fsync it, errors ignored (they are the point: the filesystem notices on this I/O).
/// Blocking: call it off the runtime.
pub fn pod_writes(dir: &std::path::Path, name: &str) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::File::create(dir.join(name)) {
        let _ = f.write_all(&[1u8; 8192]);
        let _ = f.sync_all();
    }
}
