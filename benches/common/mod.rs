//! Shared by the root package's benches: a plugin on the emulated fabric in a private mount
//! namespace, filler mounts, and percentiles over every timed iteration.

#![allow(dead_code)] // each bench uses a different subset

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rds_harness::harness::{Kubelet, Plugin};

/// Generous: only bounds a broken run.
pub const WAIT: Duration = Duration::from_secs(30);

/// A multi-threaded runtime shaped like the DaemonSet's on a small node.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A plugin under a fresh temporary root, with its kubelet client.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub plugin: Plugin,
    pub k: Kubelet,
}

impl Env {
    pub async fn start() -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let plugin = Plugin::start(dir.path(), None)
            .await
            .expect("plugin starts");
        let k = plugin.kubelet().await.expect("kubelet connects");
        Env { dir, plugin, k }
    }
}

/// Entries in this process's (private) mount namespace now.
pub fn mounts_in_namespace() -> usize {
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("read /proc/self/mountinfo")
        .lines()
        .count()
}

/// Bind mounts of one tmpfs, added to bring the namespace to a given size. Unmounted on drop
/// (the private namespace goes away with the process anyway).
pub struct Fillers {
    source: PathBuf,
    base: PathBuf,
    made: Vec<PathBuf>,
}

impl Fillers {
    pub fn new(root: &Path) -> Fillers {
        let source = root.join("filler-src");
        let base = root.join("filler");
        std::fs::create_dir_all(&source).expect("filler source dir");
        std::fs::create_dir_all(&base).expect("filler base dir");
        nix::mount::mount(
            Some("tmpfs"),
            &source,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=1m"),
        )
        .expect("filler tmpfs");
        Fillers {
            source,
            base,
            made: Vec::new(),
        }
    }

    /// Add bind mounts until the namespace holds at least `total` entries.
    pub fn grow_to(&mut self, total: usize) {
        let now = mounts_in_namespace();
        for _ in now..total {
            let d = self.base.join(self.made.len().to_string());
            std::fs::create_dir_all(&d).expect("filler dir");
            nix::mount::mount(
                Some(&self.source),
                &d,
                None::<&str>,
                nix::mount::MsFlags::MS_BIND,
                None::<&str>,
            )
            .expect("filler bind mount");
            self.made.push(d);
        }
    }
}

impl Drop for Fillers {
    fn drop(&mut self) {
        for d in self.made.drain(..).rev() {
            let _ = nix::mount::umount2(&d, nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = nix::mount::umount2(&self.source, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Wait until the plugin's mount watcher holds at least `n` entries (it has digested a batch
/// of filler mounts), so a timed iteration does not also pay for the backlog.
pub async fn settle_watcher(plugin: &Plugin, n: usize) {
    let start = Instant::now();
    while plugin.running.mounts.table().len() < n {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the mount watcher holds {} entries, expected at least {n}",
            plugin.running.mounts.table().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let the monitor drain the queued events behind the watcher.
    tokio::time::sleep(Duration::from_millis(200)).await;
}

/// Percentiles over every timed iteration (warm-up included: criterion does not say which
/// call is which), printed next to criterion's mean-based estimate.
pub fn report(name: &str, samples: &mut [Duration]) {
    if samples.is_empty() {
        println!("{name}: no samples");
        return;
    }
    samples.sort_unstable();
    let pct = |p: f64| {
        let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
        samples[i]
    };
    println!(
        "PERCENTILES {name}: n={} p50={:?} p90={:?} p99={:?} max={:?}",
        samples.len(),
        pct(0.50),
        pct(0.90),
        pct(0.99),
        samples[samples.len() - 1]
    );
}
