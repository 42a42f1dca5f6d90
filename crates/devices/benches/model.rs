//! Resolver lookups and model updates at scale (pure, no IO): `resolve` must stay O(1) as
//! the number of namespaces grows.
//! `cargo bench -p rds-devices --bench model -- --warm-up-time 1 --measurement-time 3`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use rds_devices::model::{
    BlockInfo, ControllerInfo, ControllerState, Model, NvmeNamespace, NvmeRole, Observation,
};
use rds_types::{BlockIdentity, DevNum, DiskSeq};

fn nqn(i: u32) -> String {
    format!("nqn.2000-02.com.mikrotik:pvc-{i:08}")
}

fn model_with(n: u32) -> Model {
    let mut m = Model::new();
    for i in 0..n {
        m.apply(Observation::ControllerUp(ControllerInfo {
            name: format!("nvme{i}"),
            state: ControllerState::Live,
            transport: "tcp".into(),
            address: "traddr=10.0.0.5,trsvcid=4420".into(),
            subsysnqn: nqn(i),
            cntlid: Some(1),
            dev: Some(DevNum::new(241, i)),
        }));
        m.apply(Observation::BlockUp(block(i, 1)));
    }
    m
}

fn block(i: u32, seq: u64) -> BlockInfo {
    BlockInfo {
        name: format!("nvme{i}n1"),
        devpath: format!("/devices/virtual/nvme-fabrics/ctl/nvme{i}/nvme{i}n1"),
        devname: format!("nvme{i}n1"),
        identity: BlockIdentity {
            dev: DevNum::new(259, i),
            diskseq: Some(DiskSeq(seq)),
        },
        devtype: Some("disk".into()),
        size_sectors: Some(2048),
        nvme: Some(NvmeNamespace {
            role: NvmeRole::Namespace {
                controller: format!("nvme{i}"),
            },
            nqn: nqn(i),
            nsid: 1,
            uuid: None,
            nguid: None,
            wwid: None,
        }),
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("model");
    for n in [10u32, 1000, 10_000] {
        let m = model_with(n);
        let key = nqn(n / 2);
        g.bench_with_input(BenchmarkId::new("resolve", n), &n, |b, _| {
            b.iter(|| std::hint::black_box(m.resolve(std::hint::black_box(&key), Some(1))))
        });
        let mut m = model_with(n);
        let mut seq = 1;
        g.bench_with_input(BenchmarkId::new("replace_namespace", n), &n, |b, _| {
            b.iter(|| {
                seq += 1;
                std::hint::black_box(m.apply(Observation::BlockUp(block(n / 2, seq))))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
