//! Test-only helper: a real ext4 on a real loop device, mounted in the test's private mount
//! namespace, with ways to make it fail. Cleans up (unmount, detach) on drop, even on panic.
#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rds_fserror::{FsErrorEvent, LostCause};
use rds_types::DevNum;
use tokio::sync::mpsc::Receiver;

/// `EXT4_GOING_FLAGS_NOLOGFLUSH`: shut down without flushing the journal.
pub const EXT4_GOING_FLAGS_NOLOGFLUSH: u32 = 2;
nix::ioctl_read!(ext4_ioc_shutdown, b'X', 125, u32);

/// Generous deadline for awaiting kernel events (the machine is shared and noisy).
pub const DEADLINE: Duration = Duration::from_secs(30);

pub struct Ext4Loop {
    pub dev: DevNum,
    pub loop_path: PathBuf,
    pub mount_dir: PathBuf,
    pub backing: PathBuf,
    mounted: bool,
    attached: bool,
    _dir: tempfile::TempDir,
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

impl Ext4Loop {
    /// A 16 MiB ext4 image, attached with `losetup --find --show`, mounted at a temp dir.
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("rds-fserror-")
            .tempdir()
            .expect("temp dir");
        let backing = dir.path().join("disk.img");
        let mount_dir = dir.path().join("mnt");
        std::fs::create_dir(&mount_dir).expect("mount dir");
        File::create(&backing)
            .and_then(|f| f.set_len(16 << 20))
            .expect("backing file");
        run(
            "mkfs.ext4",
            &["-q", "-F", backing.to_str().expect("utf-8 path")],
        );
        let loop_path = PathBuf::from(run(
            "losetup",
            &["--find", "--show", backing.to_str().expect("utf-8 path")],
        ));
        let meta = std::fs::metadata(&loop_path).expect("stat loop device");
        assert!(
            meta.file_type().is_block_device(),
            "{loop_path:?} is a block device"
        );
        let mut me = Self {
            dev: DevNum::from_dev_t(meta.rdev()),
            loop_path,
            mount_dir,
            backing,
            mounted: false,
            attached: true,
            _dir: dir,
        };
        me.mount();
        me
    }

    pub fn mount(&mut self) {
        nix::mount::mount(
            Some(&self.loop_path),
            &self.mount_dir,
            Some("ext4"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .expect("mount ext4");
        self.mounted = true;
    }

    pub fn unmount(&mut self) {
        nix::mount::umount(&self.mount_dir).expect("umount");
        self.mounted = false;
    }

    /// Unmount, format the loop device again (new UUID, so a new superblock incarnation on the
    /// same `major:minor`), mount again.
    pub fn reformat(&mut self) {
        self.unmount();
        run(
            "mkfs.ext4",
            &["-q", "-F", self.loop_path.to_str().expect("utf-8 path")],
        );
        self.mount();
    }

    /// A healthy write, so the failing one below is not the file's first.
    pub fn open_file(&self, name: &str) -> File {
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(self.mount_dir.join(name))
            .expect("create file on the healthy filesystem");
        f.write_all(b"healthy").expect("healthy write");
        f.sync_all().expect("healthy fsync");
        f
    }

    /// `EXT4_IOC_SHUTDOWN` with `EXT4_GOING_FLAGS_NOLOGFLUSH` through an open file.
    pub fn shutdown(&self, file: &File) {
        let mut flags = EXT4_GOING_FLAGS_NOLOGFLUSH;
        // SAFETY: valid fd and a valid pointer to the flag word the ioctl reads.
        unsafe { ext4_ioc_shutdown(file.as_raw_fd(), &mut flags) }.expect("EXT4_IOC_SHUTDOWN");
    }

    /// Dead path: truncate the backing file to 0 and tell the loop its capacity changed.
    pub fn kill_path(&self) {
        OpenOptions::new()
            .write(true)
            .open(&self.backing)
            .and_then(|f| f.set_len(0))
            .expect("truncate backing file");
        run(
            "losetup",
            &["-c", self.loop_path.to_str().expect("utf-8 path")],
        );
    }
}

/// The I/O that makes a failed ext4 report its error, measured on Linux 6.18 after a dead path:
/// the data write and its fsync fail with EIO; `syncfs` forces the journal commit, which
/// fails and aborts the journal; the next operation that starts a journal handle (the create)
/// finds the aborted journal and calls `ext4_abort`, which raises `FAN_FS_ERROR`.
/// Results are the failure itself, so they are not checked.
pub fn failing_io(fs: &Ext4Loop, file: &mut File) {
    let _ = file.write_all(&[0x5a; 8192]);
    let _ = file.sync_all();
    let _ = nix::unistd::syncfs(&*file);
    let _ = File::create(fs.mount_dir.join("after-failure"));
}

impl Drop for Ext4Loop {
    fn drop(&mut self) {
        if self.mounted {
            if let Err(e) = nix::mount::umount2(&self.mount_dir, nix::mount::MntFlags::MNT_DETACH) {
                eprintln!("cleanup: umount {:?}: {e}", self.mount_dir);
            }
        }
        if self.attached {
            let st = Command::new("losetup")
                .arg("-d")
                .arg(&self.loop_path)
                .status();
            if !matches!(st, Ok(s) if s.success()) {
                eprintln!("cleanup: losetup -d {:?}: {st:?}", self.loop_path);
            }
        }
    }
}

/// Await the first event for `dev`, returning it and every event received before it.
pub async fn await_error_for(
    rx: &mut Receiver<FsErrorEvent>,
    dev: DevNum,
) -> (FsErrorEvent, Vec<FsErrorEvent>) {
    let mut before = Vec::new();
    let found = tokio::time::timeout(DEADLINE, async {
        loop {
            match rx.recv().await {
                Some(ev @ FsErrorEvent::Error { dev: d, .. }) if d == dev => return ev,
                Some(FsErrorEvent::Lost {
                    cause: LostCause::QueueOverflow,
                    ..
                }) => {
                    panic!("unexpected queue overflow while waiting for {dev}")
                }
                Some(other) => before.push(other),
                None => panic!("watcher stopped before an event for {dev} arrived"),
            }
        }
    })
    .await;
    match found {
        Ok(ev) => (ev, before),
        Err(_) => panic!(
            "expected a FAN_FS_ERROR event for {dev} within {DEADLINE:?}; got only {before:?}"
        ),
    }
}

pub fn path_of(l: &Ext4Loop) -> &Path {
    &l.mount_dir
}
