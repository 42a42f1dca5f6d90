//! The emulated fabric is held to what the real kernel showed: the same steps as the
//! real-kernel tier's recording (`rds_harness::vm::fixture::record_kernel`) run on the
//! emulation, and the sysfs objects, the events and their order must have the committed
//! fixture's shapes (`dev/harness/fixtures/kernel-6.12.json`, rewritten by the tier with
//! `RDS_UPDATE_FIXTURES=1`). Differences in what the product does not read are printed, not
//! failed.

rds_testkit::private_namespaces!();

use std::path::Path;
use std::time::{Duration, Instant};

use rds_fabric::loopdev::LoopControl;
use rds_fabric::{ConnectRequest, EmulatedConfig, EmulatedFabric, Fabric};
use rds_harness::vm::fixture::{compare, record_object, step_of, Fixture, STEPS};
use rds_harness::vm::uevents::{KmsgRecorder, UeventRecorder};
use rds_types::{ManagedPrefix, Nqn};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/kernel-6.12.json");
const SIZE: u64 = 64 << 20;

/// Events are sent synchronously; this only lets the listener threads take them.
const SETTLE: Duration = Duration::from_millis(300);

fn wait(what: &str, f: impl Fn() -> bool) {
    let started = Instant::now();
    while !f() {
        assert!(started.elapsed() < Duration::from_secs(20), "{what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn record_emulation(dir: &Path) -> Fixture {
    let managed = ManagedPrefix::parse("nqn.2000-02.com.mikrotik:pvc-").expect("prefix");
    let mut cfg = EmulatedConfig::under(dir, managed, LoopControl::new("/dev", "/sys"));
    cfg.inject_uevents = true;
    let fabric = EmulatedFabric::new(cfg.clone()).expect("emulated fabric");
    let uevents = UeventRecorder::udev().expect("udev listener");
    let kmsg = KmsgRecorder::fifo(&cfg.dev_root.join("kmsg")).expect("kmsg fifo");
    let nqn = Nqn::parse("nqn.2000-02.com.mikrotik:pvc-vm-fixture").expect("nqn");
    fabric.add_target(&nqn, SIZE).expect("target");
    let mut req = ConnectRequest::tcp(nqn.clone(), [127, 0, 0, 1].into(), 4420);
    req.ctrl_loss_tmo = Some(3);
    req.reconnect_delay = Some(1);
    let take = |since: Instant| {
        std::thread::sleep(SETTLE);
        let ev: Vec<_> = uevents
            .snapshot()
            .into_iter()
            .filter(|s| s.at >= since)
            .map(|s| s.value)
            .collect();
        let km: Vec<_> = kmsg
            .snapshot()
            .into_iter()
            .filter(|s| s.at >= since)
            .map(|s| s.value)
            .collect();
        step_of(&ev, &km)
    };
    let mut f = Fixture {
        kernel: "emulated".into(),
        ..Fixture::default()
    };
    let sys = cfg.sys_root.clone();
    let obj = |d: &Path| record_object(&sys, d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));

    let mark = Instant::now();
    let out = fabric.connect(&req).expect("connect");
    f.steps.insert("connect".into(), take(mark));
    let ctrl = out.controller.clone();
    let (head, _, _) = fabric.namespace_of(&nqn).expect("namespace");
    let cdir = sys.join("class/nvme").join(&ctrl);
    let hdir = sys.join("class/block").join(&head);
    let subsys = std::fs::canonicalize(&hdir)
        .expect("head")
        .parent()
        .expect("parent")
        .to_owned();
    let path = std::fs::read_dir(&cdir)
        .expect("controller dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("nvme") && n.contains('c') && n.contains('n'))
        })
        .expect("a hidden path disk under the controller");
    f.objects.insert("controller".into(), obj(&cdir));
    f.objects.insert("subsystem".into(), obj(&subsys));
    f.objects.insert("head".into(), obj(&hdir));
    f.objects.insert("path".into(), obj(&path));

    let mark = Instant::now();
    fabric.lose_port(&nqn).expect("lose port");
    f.steps.insert("port_lost".into(), take(mark));
    f.objects.insert("controller_lost".into(), obj(&cdir));

    let mark = Instant::now();
    fabric.restore_port(&nqn).expect("restore port");
    f.steps.insert("port_restored".into(), take(mark));

    let mark = Instant::now();
    fabric.lose_port(&nqn).expect("lose port");
    wait("ctrl_loss_tmo deletes the controller", || {
        fabric.controller_of(&nqn).is_none()
    });
    f.steps.insert("deleted".into(), take(mark));

    fabric.restore_port(&nqn).expect("restore port");
    let mark = Instant::now();
    let out = fabric.connect(&req).expect("connect again");
    f.steps.insert("reconnected".into(), take(mark));

    fabric.lose_port(&nqn).expect("lose port");
    fabric.replace_namespace(&nqn).expect("replace");
    let mark = Instant::now();
    fabric.restore_port(&nqn).expect("restore port");
    f.steps.insert("restored_replaced".into(), take(mark));
    assert!(
        fabric.namespace_of(&nqn).is_none(),
        "a reconnect onto a changed namespace drops it"
    );

    let mark = Instant::now();
    fabric.rescan(&out.controller).expect("rescan");
    f.steps.insert("rescanned".into(), take(mark));
    assert!(fabric.namespace_of(&nqn).is_some(), "the rescan adds it");

    let mark = Instant::now();
    fabric.disconnect(&out.controller).expect("disconnect");
    f.steps.insert("disconnected".into(), take(mark));

    let mut forever = req.clone();
    forever.ctrl_loss_tmo = Some(-1);
    fabric.connect(&forever).expect("connect for unexport");
    std::thread::sleep(SETTLE);
    let mark = Instant::now();
    fabric.unexport(&nqn).expect("unexport");
    wait("an unexported subsystem's controller is deleted", || {
        fabric.controller_of(&nqn).is_none()
    });
    f.steps.insert("unexported".into(), take(mark));
    f.unexport_deleted_after_ms = Some(mark.elapsed().as_millis() as u64);
    fabric.shutdown();
    f
}

#[test]
fn the_emulated_fabric_shows_what_the_kernel_shows() {
    rds_testkit::require_private_namespaces();
    let kernel: Fixture = serde_json::from_str(
        &std::fs::read_to_string(FIXTURE).unwrap_or_else(|e| panic!("{FIXTURE}: {e}")),
    )
    .expect("fixture parses");
    for s in STEPS {
        assert!(kernel.steps.contains_key(*s), "the fixture lacks step {s}");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let emulated = record_emulation(dir.path());
    let diffs = compare(&kernel, &emulated);
    for d in diffs.iter().filter(|d| !d.matters) {
        println!("not read by the product: {}", d.what);
    }
    let matters: Vec<_> = diffs
        .iter()
        .filter(|d| d.matters)
        .map(|d| &d.what)
        .collect();
    assert!(
        matters.is_empty(),
        "the emulation differs from kernel {} where the product reads:\n  {}",
        kernel.kernel,
        matters
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n  ")
    );
}
