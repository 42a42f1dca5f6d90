//! Costs of the fabric layer: the pure parts (options line, sysfs scan of many controllers) and
//! the emulation's kernel work (loop attach/detach, a full emulated connect/disconnect cycle and
//! a same-name reconnect). Needs root for the loop devices; runs in private namespaces.

rds_testkit::private_namespaces!();

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use rds_fabric::emulated::tree::{ControllerSpec, NvmeTree};
use rds_fabric::loopdev::{AttachOptions, LoopControl};
use rds_fabric::{ConnectRequest, EmulatedConfig, EmulatedFabric, Fabric};
use rds_types::{DevNum, ManagedPrefix, Nqn};

const PREFIX: &str = "nqn.2000-02.com.mikrotik:pvc-";

fn request(nqn: Nqn) -> ConnectRequest {
    let mut r = ConnectRequest::tcp(nqn, "10.0.0.5".parse().unwrap(), 4420);
    r.host_nqn =
        Some("nqn.2014-08.org.nvmexpress:uuid:1b4e28ba-2fa1-11d2-883f-0016d3cca427".into());
    r.host_id = Some("1b4e28ba-2fa1-11d2-883f-0016d3cca427".into());
    r.ctrl_loss_tmo = Some(-1);
    r.reconnect_delay = Some(5);
    r
}

fn pure(c: &mut Criterion) {
    rds_testkit::require_private_namespaces();
    let req = request(
        Nqn::parse("nqn.2000-02.com.mikrotik:pvc-0b5a6c1e-1234-4d2b-9c3a-7f8e9d0a1b2c").unwrap(),
    );
    c.bench_function("options_line", |b| {
        b.iter(|| black_box(&req).to_options_line().unwrap())
    });

    let dir = tempfile::tempdir().unwrap();
    let tree = NvmeTree::new(dir.path());
    for i in 0..100u32 {
        let nqn = format!("{PREFIX}{i}");
        tree.add_subsystem(i, &nqn).unwrap();
        tree.add_controller(&ControllerSpec {
            name: format!("nvme{i}"),
            subsysnqn: nqn,
            transport: "tcp".into(),
            traddr: "10.0.0.5".into(),
            trsvcid: "4420".into(),
            state: "live".into(),
            cntlid: 1,
            hostnqn: String::new(),
            hostid: String::new(),
            dev: DevNum::new(240, i),
            ctrl_loss_tmo: Some(-1),
            reconnect_delay: Some(5),
        })
        .unwrap();
    }
    c.bench_function("scan_controllers_100", |b| {
        b.iter(|| rds_fabric::sysfs::scan_controllers(black_box(dir.path())).unwrap())
    });
}

fn kernel_work(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    // The roots live on a tmpfs (in the bench's private mount namespace): on the shared, busy
    // ext4 disk (mounted with `discard`) file creation and unlink dominate at ~1 ms each, which
    // measures the disk, not the emulation.
    nix::mount::mount(
        Some("tmpfs"),
        dir.path(),
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=128m"),
    )
    .expect("tmpfs for the bench roots (needs root)");
    let loops = LoopControl::new("/dev", "/sys");
    let file = dir.path().join("b.img");
    std::fs::File::create(&file)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    c.bench_function("loop_attach_detach", |b| {
        b.iter(|| {
            loops
                .attach(&file, AttachOptions::default())
                .unwrap()
                .detach()
                .unwrap()
        })
    });

    let fabric = EmulatedFabric::new(EmulatedConfig {
        sys_root: dir.path().join("sys"),
        dev_root: dir.path().join("dev"),
        backing_dir: dir.path().join("targets"),
        multipath: false,
        inject_uevents: false,
        managed: ManagedPrefix::parse(PREFIX).unwrap(),
        loops,
        create_on_connect: None,
        persist: None,
    })
    .unwrap();
    let nqn = Nqn::parse(&format!("{PREFIX}bench")).unwrap();
    fabric.add_target(&nqn, 16 << 20).unwrap();
    let req = request(nqn.clone());
    c.bench_function("emulated_connect_disconnect", |b| {
        b.iter(|| {
            let out = fabric.connect(&req).unwrap();
            fabric.disconnect(&out.controller).unwrap();
        })
    });
    c.bench_function("emulated_loss_and_reconnect", |b| {
        b.iter(|| {
            fabric.connect(&req).unwrap();
            fabric.lose_controller(&nqn).unwrap();
            fabric.restore_port(&nqn).unwrap();
        })
    });
    fabric.shutdown();
    drop(fabric);
    let _ = nix::mount::umount2(dir.path(), nix::mount::MntFlags::MNT_DETACH);
}

criterion_group!(benches, pure, kernel_work);
criterion_main!(benches);
