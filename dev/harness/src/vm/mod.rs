//! The real-kernel tier: Debian's 6.12 kernel booted under qemu by virtme-ng (software
//! emulation; KVM is not usable on these machines), with the kernel's own NVMe/TCP host and an
//! nvmet-tcp target on 127.0.0.1, the host's root shared read-only. The host side ([`boot`])
//! runs one command in the guest and collects what it wrote into a shared directory; the guest
//! side builds targets through configfs ([`nvmet`]), runs the product binary as a child process
//! ([`plugin`]) and drives it over its socket as kubelet would.
//!
//! A tier that cannot boot fails: every requirement missing is an error naming it, never a
//! skip.

/// `ensure!(cond, "why {}", x)`: a step of a real-kernel scenario that must hold; fails the
/// scenario with the message and the place.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!("{} ({}:{})", format!($($fmt)+), file!(), line!()));
        }
    };
}

pub mod fixture;
pub mod guest;
pub mod nvmet;
pub mod plugin;
pub mod uevents;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The environment variable that tells a test binary it runs inside the guest.
pub const GUEST_ENV: &str = "RDS_VM_GUEST";

/// Why the tier could not run.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("the real-kernel tier needs {0}; the README's test command installs it")]
    Missing(String),
    #[error("booting the VM: {0}")]
    Boot(String),
    #[error("the VM did not finish within {0:?}")]
    Timeout(Duration),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// The newest Debian 6.12 kernel image installed (`linux-image-6.12-amd64`).
pub fn kernel_image() -> Result<PathBuf, VmError> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/boot")
        .map_err(|e| VmError::Missing(format!("/boot ({e})")))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-6.12"))
        })
        .collect();
    found.sort();
    found.pop().ok_or_else(|| {
        VmError::Missing("a /boot/vmlinuz-6.12* kernel (apt linux-image-6.12-amd64)".into())
    })
}

fn on_path(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Every tool the tier needs, or an error naming what is missing.
pub fn check_requirements() -> Result<PathBuf, VmError> {
    for (tool, package) in [
        ("vng", "pip virtme-ng"),
        ("qemu-system-x86_64", "apt qemu-system-x86"),
        ("busybox", "apt busybox-static"),
    ] {
        if !on_path(tool) {
            return Err(VmError::Missing(format!("{tool} ({package})")));
        }
    }
    kernel_image()
}

/// What a guest run left.
#[derive(Debug)]
pub struct VmRun {
    pub elapsed: Duration,
    /// The qemu console (virtme's output).
    pub console: String,
    /// The shared directory the guest wrote into.
    pub dir: PathBuf,
}

/// Boot the kernel and run `script` (a bash script) in the guest, with `dir` shared
/// read-write at the same path. Returns once the guest powered off, or fails at `timeout`.
pub fn boot(dir: &Path, script: &str, timeout: Duration) -> Result<VmRun, VmError> {
    let kernel = check_requirements()?;
    std::fs::create_dir_all(dir)?;
    let script_path = dir.join("guest.sh");
    std::fs::write(&script_path, script)?;
    let started = Instant::now();
    let mut child = Command::new("vng")
        .arg("-r")
        .arg(&kernel)
        .args([
            "--disable-kvm",
            "--cpus",
            "2",
            "--memory",
            "2G",
            "--user",
            "root",
        ])
        .arg("--rwdir")
        .arg(dir)
        .arg("--exec")
        .arg(format!("bash {}", script_path.display()))
        .current_dir(dir)
        // Its own process group: on a timeout the whole VM goes (vng, then qemu under it).
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("console.txt"))?)
        .stderr(std::fs::File::create(dir.join("console.err"))?)
        .spawn()
        .map_err(|e| VmError::Boot(format!("starting vng: {e}")))?;
    loop {
        match child.try_wait()? {
            Some(status) => {
                let console = std::fs::read_to_string(dir.join("console.txt")).unwrap_or_default()
                    + &std::fs::read_to_string(dir.join("console.err")).unwrap_or_default();
                if !status.success() {
                    return Err(VmError::Boot(format!(
                        "vng exited with {status}: {}",
                        tail(&console, 4000)
                    )));
                }
                return Ok(VmRun {
                    elapsed: started.elapsed(),
                    console,
                    dir: dir.to_owned(),
                });
            }
            None if started.elapsed() > timeout => {
                // vng is a Python wrapper: killing it alone leaves qemu running.
                if let Ok(pid) = i32::try_from(child.id()) {
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                let _ = child.kill();
                let _ = child.wait();
                return Err(VmError::Timeout(timeout));
            }
            None => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// What this executable left after running itself in the guest.
#[derive(Debug)]
pub struct GuestRun {
    pub vm: VmRun,
    /// Everything it printed (stdout and stderr).
    pub log: String,
    /// Its exit status, `None` when it never finished.
    pub rc: Option<i32>,
}

/// Boot the VM and run this very executable in it with [`GUEST_ENV`] set, `args` as its
/// arguments and `RDS_VM_OUT` naming the shared directory `dir` (emptied first), where the
/// guest side writes what the host reads back.
pub fn run_self_in_guest(
    dir: &Path,
    args: &[&str],
    timeout: Duration,
) -> Result<GuestRun, VmError> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let exe = std::env::current_exe()?;
    let script = format!(
        "#!/bin/bash\nexport {GUEST_ENV}=1 RDS_VM_OUT={dir} RUST_BACKTRACE=1\ncd {dir}\n{exe} {args} > {dir}/guest.log 2>&1\necho $? > {dir}/guest.rc\n",
        dir = dir.display(),
        exe = exe.display(),
        args = args.join(" "),
    );
    let vm = boot(dir, &script, timeout)?;
    let log = std::fs::read_to_string(dir.join("guest.log")).unwrap_or_default();
    let rc = std::fs::read_to_string(dir.join("guest.rc"))
        .ok()
        .and_then(|s| s.trim().parse().ok());
    Ok(GuestRun { vm, log, rc })
}

/// The last `n` bytes of `s` (on a character boundary).
pub fn tail(s: &str, n: usize) -> &str {
    let mut start = s.len().saturating_sub(n);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// The guest's first steps: the NVMe/TCP host and target modules, loop devices, configfs.
pub fn prepare_guest() -> Result<(), String> {
    for m in ["configfs", "nvme-tcp", "nvmet", "nvmet-tcp", "loop"] {
        let s = Command::new("modprobe")
            .arg(m)
            .status()
            .map_err(|e| format!("modprobe {m}: {e}"))?;
        if !s.success() {
            return Err(format!("modprobe {m} failed ({s})"));
        }
    }
    let cfg = Path::new("/sys/kernel/config");
    let mounted = std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some("/sys/kernel/config"));
    if !mounted {
        nix::mount::mount(
            Some("configfs"),
            cfg,
            Some("configfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| format!("mounting configfs: {e}"))?;
    }
    if !cfg.join("nvmet").is_dir() {
        return Err("no /sys/kernel/config/nvmet after loading nvmet".into());
    }
    Ok(())
}
