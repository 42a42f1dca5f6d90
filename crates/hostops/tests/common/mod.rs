//! Test-only helpers: loop devices over sparse backing files, mounts and child processes that
//! clean up after themselves (Drop), even when a test fails.
#![allow(dead_code)]

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use rds_types::DevNum;

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A loop device we created, over a sparse file in our own temporary directory.
pub struct Loop {
    pub path: PathBuf,
    pub backing: PathBuf,
    _dir: tempfile::TempDir,
}

impl Loop {
    pub fn new(size: u64) -> Self {
        let dir = tempfile::tempdir().expect("tempdir for the backing file");
        let backing = dir.path().join("backing.img");
        std::fs::File::create(&backing)
            .and_then(|f| f.set_len(size))
            .expect("create sparse backing file");
        let path = PathBuf::from(run(Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&backing)));
        assert!(
            std::fs::metadata(&path)
                .expect("stat loop")
                .file_type()
                .is_block_device(),
            "losetup gave {path:?}, not a block device"
        );
        Self {
            path,
            backing,
            _dir: dir,
        }
    }

    /// A loop device over a sparse file at `backing` (which the caller's directory owns).
    pub fn on_file(backing: &Path, size: u64) -> Self {
        std::fs::File::create(backing)
            .and_then(|f| f.set_len(size))
            .expect("create backing file");
        let path = PathBuf::from(run(Command::new("losetup")
            .args(["--find", "--show"])
            .arg(backing)));
        Self {
            path,
            backing: backing.to_owned(),
            _dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn dev(&self) -> DevNum {
        DevNum::from_dev_t(std::fs::metadata(&self.path).expect("stat loop").rdev())
    }

    /// Resize the backing file and tell the loop driver (`losetup -c`).
    pub fn set_capacity(&self, size: u64) {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&self.backing)
            .and_then(|f| f.set_len(size))
            .expect("resize backing file");
        run(Command::new("losetup").arg("-c").arg(&self.path));
    }

    /// Write `data` at `offset` of the device itself.
    pub fn write_at(&self, offset: u64, data: &[u8]) {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.path)
            .expect("open loop for writing");
        f.write_all_at(data, offset).expect("write to loop");
        f.sync_all().expect("fsync loop");
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.path).status();
    }
}

/// A mount we made; detached on drop (test cleanup only: our own mounts in our private
/// namespace).
pub struct Mounted(pub PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

pub fn mount_tmpfs(target: &Path) -> Mounted {
    nix::mount::mount(
        Some("tmpfs"),
        target,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=16m"),
    )
    .expect("mount tmpfs");
    Mounted(target.to_owned())
}

/// A child process killed and reaped on drop.
pub struct Child(pub std::process::Child);

impl Child {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
    pub fn stop(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `sleep` with its working directory at `cwd` (set before exec, so it holds `cwd` as soon as
/// spawn returns).
pub fn sleeper_in(cwd: &Path) -> Child {
    Child(
        Command::new("sleep")
            .arg("100000")
            .current_dir(cwd)
            .spawn()
            .expect("spawn sleep"),
    )
}

pub fn table() -> rds_mounts::MountView {
    rds_mounts::MountView::read_now(Path::new("/proc"), "self").expect("read our mountinfo")
}

pub fn is_mounted(p: &Path) -> bool {
    table().top_at(p).is_some()
}

/// A stand-in `/proc` in which every "process" is inspectable, for the verdicts this machine's
/// real `/proc` cannot give (its pid 1 refuses inspection, which rightly makes the real answer
/// Unknown). It holds one process, "1", in our own mount namespace (its mountinfo is our
/// real one), in the initial PID namespace, with cwd and root at `/` and the given open "fds"
/// (symlinks to real files, so device matching is real).
pub struct FakeProc {
    pub dir: tempfile::TempDir,
}

impl FakeProc {
    pub fn new(fds: &[&Path]) -> Self {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path();
        symlink("/proc/self", p.join("self")).expect("self link");
        let one = p.join("1");
        std::fs::create_dir_all(one.join("ns")).expect("mkdir");
        std::fs::create_dir_all(one.join("fd")).expect("mkdir");
        symlink("pid:[4026531836]", one.join("ns/pid")).expect("pid ns");
        let mnt_ns = std::fs::read_link("/proc/self/ns/mnt").expect("our mnt ns");
        symlink(mnt_ns, one.join("ns/mnt")).expect("mnt ns");
        symlink("/proc/self/mountinfo", one.join("mountinfo")).expect("mountinfo");
        symlink("/", one.join("cwd")).expect("cwd");
        symlink("/", one.join("root")).expect("root");
        std::fs::write(one.join("maps"), "").expect("maps");
        std::fs::write(one.join("comm"), "fake-init\n").expect("comm");
        for (i, f) in fds.iter().enumerate() {
            symlink(f, one.join("fd").join((i + 3).to_string())).expect("fd link");
        }
        Self { dir }
    }

    pub fn roots(&self) -> rds_hostops::HostRoots {
        rds_hostops::HostRoots {
            proc: self.dir.path().to_owned(),
            sys: "/sys".into(),
            dev: "/dev".into(),
        }
    }
}
