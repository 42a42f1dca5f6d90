//! Per-message processing after arrival on the emulated NVMe tree (parse, the sysfs reads the
//! event lacks, the model). `cargo bench -p rds-fabric --bench pipeline`.

use criterion::{criterion_group, criterion_main, Criterion};
use rds_devices::uevent::{encode_libudev, parse};

/// The work done per message once it has arrived: parse, read the sysfs attributes the event
/// lacks (emulated tree on tmpfs), apply to the model. Each iteration announces a new diskseq,
/// so the model really replaces the device (remove + add events).
fn pipeline(c: &mut Criterion) {
    use rds_devices::model::Model;
    use rds_devices::scan::SysfsReader;
    use rds_fabric::emulated::tree::{ControllerSpec, NamespaceSpec, NvmeTree};
    use rds_types::{DevNum, DiskSeq};
    let nqn = "nqn.2000-02.com.mikrotik:pvc-bench";
    let sys = tempfile::tempdir().unwrap();
    let tree = NvmeTree::new(sys.path());
    tree.add_subsystem(0, nqn).unwrap();
    tree.add_controller(&ControllerSpec {
        name: "nvme0".into(),
        subsysnqn: nqn.into(),
        transport: "tcp".into(),
        traddr: "10.0.0.5".into(),
        trsvcid: "4420".into(),
        state: "live".into(),
        cntlid: 1,
        hostnqn: "h".into(),
        hostid: "h".into(),
        dev: DevNum::new(241, 0),
        ctrl_loss_tmo: None,
        reconnect_delay: None,
    })
    .unwrap();
    let devpath = tree
        .add_namespace(
            "nvme0",
            &NamespaceSpec {
                name: "nvme0n1".into(),
                nsid: 1,
                dev: DevNum::new(259, 3),
                diskseq: Some(DiskSeq(1)),
                size_sectors: 2048,
                uuid: Some("0b5a6c1e-1234-4d2b-9c3a-000000000001".into()),
                nguid: None,
                wwid: None,
            },
        )
        .unwrap();
    let reader = SysfsReader::new(sys.path());
    let mut model = Model::new();
    let mut seq = 1u64;
    c.bench_function("pipeline/parse_observe_apply_block_add", |b| {
        b.iter(|| {
            seq += 1;
            let s = seq.to_string();
            let msg = encode_libudev(&[
                ("ACTION", "add"),
                ("DEVPATH", &devpath),
                ("SUBSYSTEM", "block"),
                ("MAJOR", "259"),
                ("MINOR", "3"),
                ("DEVNAME", "/dev/nvme0n1"),
                ("DEVTYPE", "disk"),
                ("DISKSEQ", &s),
                ("SEQNUM", &s),
            ]);
            let ev = parse(&msg).unwrap();
            let obs = reader.observe(&ev).unwrap();
            std::hint::black_box(model.apply(obs));
        })
    });
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
