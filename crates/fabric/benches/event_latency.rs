//! Latency from a uevent to "model updated and visible to a waiter":
//! - an injected libudev message (group 2) announcing an NVMe namespace in an emulated tree;
//! - a real `LOOP_CTL_ADD` ioctl (kernel group 1 event).
//!
//! Runs as root; enters a private network namespace first so injections reach no host
//! listener. Prints p50/p99 over its own samples, then runs the criterion measurements.
//! `cargo bench -p rds-fabric --bench event_latency -- --warm-up-time 1 --measurement-time 3`

use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use rds_devices::uevent::{encode_libudev, UdevInjector};
use rds_devices::{spawn, DeviceWatcherHandle, SourceKind, WatcherConfig};
use rds_fabric::emulated::tree::{ControllerSpec, NamespaceSpec, NvmeTree};
use rds_types::{DevNum, DiskSeq};

const NQN: &str = "nqn.2000-02.com.mikrotik:pvc-bench";
const DEADLINE: Duration = Duration::from_secs(10);

struct NvmeBench {
    _sys: tempfile::TempDir,
    _run: tempfile::TempDir,
    tree: NvmeTree,
    h: DeviceWatcherHandle,
    inj: UdevInjector,
    seq: u64,
}

impl NvmeBench {
    fn new(rt: &tokio::runtime::Runtime) -> Self {
        let sys = tempfile::tempdir().unwrap();
        let run = tempfile::tempdir().unwrap();
        let tree = NvmeTree::new(sys.path());
        tree.add_subsystem(0, NQN).unwrap();
        tree.add_controller(&ControllerSpec {
            name: "nvme0".into(),
            subsysnqn: NQN.into(),
            transport: "tcp".into(),
            traddr: "10.0.0.5".into(),
            trsvcid: "4420".into(),
            state: "live".into(),
            cntlid: 1,
            hostnqn: "nqn.2014-08.org.nvmexpress:uuid:bench".into(),
            hostid: "bench".into(),
            dev: DevNum::new(241, 0),
            ctrl_loss_tmo: None,
            reconnect_delay: None,
        })
        .unwrap();
        let cfg = WatcherConfig::new(sys.path(), run.path()).with_sources(SourceKind::Udev);
        let (h, rx) = rt.block_on(async { spawn(cfg) }).expect("watcher");
        // Keep the event stream drained so the watcher never waits on it.
        rt.spawn(async move {
            let mut rx = rx;
            while rx.recv().await.is_some() {}
        });
        Self {
            _sys: sys,
            _run: run,
            tree,
            h,
            inj: UdevInjector::new().expect("netlink socket"),
            seq: 1000,
        }
    }

    /// One sample: write the namespace (new diskseq) into the tree, then time injection →
    /// waiter sees the new identity.
    fn sample(&mut self, rt: &tokio::runtime::Runtime) -> Duration {
        self.seq += 1;
        let ns = NamespaceSpec {
            name: "nvme0n1".into(),
            nsid: 1,
            dev: DevNum::new(259, 3),
            diskseq: Some(DiskSeq(self.seq)),
            size_sectors: 2048,
            uuid: None,
            nguid: None,
            wwid: None,
        };
        let devpath = self.tree.add_namespace("nvme0", &ns).unwrap();
        let seq = self.seq.to_string();
        let msg = encode_libudev(&[
            ("ACTION", "add"),
            ("DEVPATH", &devpath),
            ("SUBSYSTEM", "block"),
            ("MAJOR", "259"),
            ("MINOR", "3"),
            ("DEVNAME", "/dev/nvme0n1"),
            ("DEVTYPE", "disk"),
            ("DISKSEQ", &seq),
            ("SEQNUM", &seq),
        ]);
        let want = Some(DiskSeq(self.seq));
        let h = self.h.clone();
        rt.block_on(async {
            // The waiter is registered before the message is sent, as a CSI stage call would be.
            let waiter = tokio::spawn(async move {
                h.wait_until(DEADLINE, |m| {
                    m.resolve(NQN, Some(1))
                        .filter(|d| d.identity.diskseq == want)
                        .map(|_| Instant::now())
                })
                .await
                .expect("namespace visible")
            });
            tokio::task::yield_now().await;
            let t0 = Instant::now();
            self.inj.send(&msg).expect("inject");
            waiter.await.unwrap() - t0
        })
    }
}

fn loop_sample(rt: &tokio::runtime::Runtime, h: &DeviceWatcherHandle) -> Duration {
    let h2 = h.clone();
    rt.block_on(async {
        let t0 = Instant::now();
        let lo = rds_testkit::loopdev::LoopDev::add(Path::new("/dev"), 400).expect("LOOP_CTL_ADD");
        let name = lo.name();
        let seen = h2
            .wait_until(DEADLINE, |m| m.block_by_name(&name).map(|_| Instant::now()))
            .await
            .expect("loop device visible");
        lo.remove().expect("LOOP_CTL_REMOVE");
        seen - t0
    })
}

fn percentiles(label: &str, mut v: Vec<Duration>) {
    v.sort();
    let p = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "{label}: n={} p50={:?} p90={:?} p99={:?} max={:?}",
        v.len(),
        p(0.50),
        p(0.90),
        p(0.99),
        v[v.len() - 1]
    );
}

fn enter_private_netns() {
    // SAFETY: unshare before any thread of ours exists (criterion has not started yet).
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "unshare(CLONE_NEWNET) needs root: {}",
        std::io::Error::last_os_error()
    );
}

fn bench(c: &mut Criterion) {
    enter_private_netns();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut nb = NvmeBench::new(&rt);
    for _ in 0..200 {
        nb.sample(&rt);
    }
    percentiles(
        "injected udev message -> resolver waiter",
        (0..3000).map(|_| nb.sample(&rt)).collect(),
    );

    let run = tempfile::tempdir().unwrap();
    let (lh, lrx) = rt
        .block_on(async {
            spawn(WatcherConfig::new("/sys", run.path()).with_sources(SourceKind::Kernel))
        })
        .expect("kernel watcher");
    rt.spawn(async move {
        let mut rx = lrx;
        while rx.recv().await.is_some() {}
    });
    percentiles(
        "LOOP_CTL_ADD ioctl -> model waiter (includes kernel device creation)",
        (0..300).map(|_| loop_sample(&rt, &lh)).collect(),
    );

    let mut g = c.benchmark_group("event_latency");
    g.bench_function("injected_udev_to_waiter", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| nb.sample(&rt)).sum())
    });
    g.sample_size(20);
    g.bench_function("loop_ctl_add_to_waiter", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| loop_sample(&rt, &lh)).sum())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
