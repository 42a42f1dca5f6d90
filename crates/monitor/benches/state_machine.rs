//! Events per second through the state machine with 1,000 staged volumes and 10,000 mounts:
//! a mix of unrelated mount attach/detach, changes of our own mounts, device replacements
//! and restorations, controller flaps and ticks. Also: re-adopting 1,000 volumes after a
//! restart (stages plus both resyncs).

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rds_monitor::*;
use rds_types::{BlockIdentity, DevNum, DiskSeq, Nqn};

const VOLUMES: u32 = 1_000;
const MOUNTS: u64 = 10_000;
const BATCH: usize = 10_000;

fn nqn(n: u32) -> Nqn {
    Nqn::parse(&format!("nqn.2000-02.com.mikrotik:pvc-{n}")).expect("valid NQN")
}

fn ident(n: u32, seq: u64) -> BlockIdentity {
    BlockIdentity {
        dev: DevNum::new(259, n),
        diskseq: Some(DiskSeq(seq)),
    }
}

fn staging(n: u32) -> PathBuf {
    PathBuf::from(format!(
        "/var/lib/kubelet/plugins/kubernetes.io/csi/rds/{n}/globalmount"
    ))
}

fn staging_mount(n: u32) -> MountFacts {
    MountFacts {
        id: u64::from(n) + 1,
        dev: DevNum::new(259, n),
        mount_point: staging(n),
        fs_type: "ext4".into(),
        read_only: false,
        super_options: "rw,errors=remount-ro".into(),
    }
}

fn other_mount(id: u64) -> MountFacts {
    MountFacts {
        id,
        dev: DevNum::new(0, u32::try_from(id % 4096).unwrap_or(0)),
        mount_point: PathBuf::from(format!("/run/other/{id}")),
        fs_type: "tmpfs".into(),
        read_only: false,
        super_options: "rw".into(),
    }
}

fn ns(n: u32, seq: u64) -> NamespaceFacts {
    NamespaceFacts {
        nqn: nqn(n),
        nsid: 1,
        name: format!("nvme{n}n1"),
        identity: ident(n, seq),
        ids: Default::default(),
    }
}

fn stage(n: u32, adopted: bool) -> MonitorEvent {
    MonitorEvent::VolumeStaged {
        volume_id: VolumeId::parse(&format!("pvc-{n}")).expect("valid volume id"),
        nqn: nqn(n),
        nsid: Some(1),
        ids: Default::default(),
        staging_path: staging(n),
        mount: Some(MountKey {
            id: u64::from(n) + 1,
            dev: DevNum::new(259, n),
        }),
        device: ident(n, 7),
        fs_type: Some("ext4".into()),
        read_only: false,
        adopted,
    }
}

fn all_mounts() -> Vec<MountFacts> {
    (0..VOLUMES)
        .map(staging_mount)
        .chain((u64::from(VOLUMES) + 1..=MOUNTS).map(other_mount))
        .collect()
}

fn resync_events() -> (MonitorEvent, MonitorEvent) {
    (
        MonitorEvent::MountResync(all_mounts()),
        MonitorEvent::DeviceResync {
            namespaces: (0..VOLUMES).map(|n| ns(n, 7)).collect(),
            controllers: (0..VOLUMES)
                .map(|n| ControllerFacts {
                    nqn: nqn(n),
                    controller: format!("nvme{n}"),
                    state: ControllerState::Live,
                })
                .collect(),
        },
    )
}

fn populated() -> Monitor {
    let mut m = Monitor::new(MonitorConfig::default());
    let (mounts, devices) = resync_events();
    let now = Timestamp::from_duration(Duration::from_secs(1));
    m.on_event(mounts, now);
    m.on_event(devices, now);
    for n in 0..VOLUMES {
        m.on_event(stage(n, false), now);
    }
    m
}

/// A cyclic mix that returns the state to where it started: every attach has its detach,
/// every replacement its restoration, every flap its recovery.
fn event_mix() -> Vec<MonitorEvent> {
    let mut out = Vec::with_capacity(BATCH);
    let mut i: u32 = 0;
    while out.len() < BATCH {
        let v = (i * 7919) % VOLUMES;
        let extra = MOUNTS + 1 + u64::from(i % 500);
        match i % 10 {
            0..=4 => {
                out.push(MonitorEvent::MountAttached(other_mount(extra)));
                out.push(MonitorEvent::MountDetached { id: extra });
            }
            5 | 6 => out.push(MonitorEvent::MountChanged(staging_mount(v))),
            7 => {
                out.push(MonitorEvent::NamespaceAdded(ns(v, 8)));
                out.push(MonitorEvent::NamespaceAdded(ns(v, 7)));
            }
            8 => {
                let c = |state| {
                    MonitorEvent::ControllerState(ControllerFacts {
                        nqn: nqn(v),
                        controller: format!("nvme{v}"),
                        state,
                    })
                };
                out.push(c(ControllerState::Connecting));
                out.push(c(ControllerState::Live));
            }
            _ => out.push(MonitorEvent::Tick),
        }
        i += 1;
    }
    out.truncate(BATCH);
    out
}

fn bench_mixed(c: &mut Criterion) {
    let mut m = populated();
    let events = event_mix();
    let mut now = m.now();
    let mut g = c.benchmark_group("state_machine");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("mixed_events_1k_volumes_10k_mounts", |b| {
        b.iter_batched(
            || events.clone(),
            |evs| {
                let mut actions = 0usize;
                for e in evs {
                    now = now.saturating_add(Duration::from_micros(100));
                    actions += m.on_event(e, now).len();
                }
                black_box(actions)
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn bench_readopt(c: &mut Criterion) {
    let (mounts, devices) = resync_events();
    let stages: Vec<MonitorEvent> = (0..VOLUMES).map(|n| stage(n, true)).collect();
    let mut g = c.benchmark_group("state_machine");
    g.throughput(Throughput::Elements(u64::from(VOLUMES)));
    g.bench_function("readopt_1k_volumes_10k_mounts", |b| {
        b.iter_batched(
            || (stages.clone(), mounts.clone(), devices.clone()),
            |(stages, mounts, devices)| {
                let mut m = Monitor::new(MonitorConfig::default());
                let now = Timestamp::from_duration(Duration::from_secs(1));
                for s in stages {
                    m.on_event(s, now);
                }
                m.on_event(mounts, now);
                m.on_event(devices, now);
                black_box(m.len())
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

/// The path the detection bench times inside the machine: one staged volume's own staging
/// mount detached (→ `mount_missing`, with its Event and recovery timer) and attached again
/// (→ healthy), with 10,000 mounts and a level storm on an unrelated device in the facts.
fn bench_own_detach(c: &mut Criterion) {
    let mut m = populated();
    let mut now = m.now();
    m.on_event(
        MonitorEvent::MountStorm {
            key: StormKey::Device(DevNum::new(0, 1)),
            count: 2_500,
            message: "a storm on an unrelated device".into(),
        },
        now,
    );
    let v = 17;
    let mut g = c.benchmark_group("state_machine");
    g.throughput(Throughput::Elements(2));
    g.bench_function(
        "own_staging_mount_detach_and_back_1k_volumes_10k_mounts",
        |b| {
            b.iter(|| {
                now = now.saturating_add(Duration::from_micros(100));
                let a = m.on_event(
                    MonitorEvent::MountDetached {
                        id: u64::from(v) + 1,
                    },
                    now,
                );
                now = now.saturating_add(Duration::from_micros(100));
                let b = m.on_event(MonitorEvent::MountAttached(staging_mount(v)), now);
                black_box(a.len() + b.len())
            })
        },
    );
    g.finish();
}

/// The same detach on cold caches, as the detection bench meets it: before each timed detach
/// the mount is attached again and 64 MiB are written, evicting the machine's state and code
/// from the CPU caches. Between kernel events a node does other work, so this is the common
/// case in production, and the one where every allocation and every formatted string costs.
fn bench_own_detach_cold(c: &mut Criterion) {
    let mut m = populated();
    let mut now = m.now();
    let v = 17;
    let mut pollution = vec![0u8; 64 << 20];
    let mut g = c.benchmark_group("state_machine");
    g.bench_function(
        "own_staging_mount_detach_cold_caches_1k_volumes_10k_mounts",
        |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    now = now.saturating_add(Duration::from_micros(100));
                    black_box(m.on_event(MonitorEvent::MountAttached(staging_mount(v)), now));
                    for (i, b) in pollution.iter_mut().enumerate().step_by(64) {
                        *b = b.wrapping_add(i as u8);
                    }
                    black_box(&pollution);
                    now = now.saturating_add(Duration::from_micros(100));
                    let t = std::time::Instant::now();
                    let a = m.on_event(
                        MonitorEvent::MountDetached {
                            id: u64::from(v) + 1,
                        },
                        now,
                    );
                    timed += t.elapsed();
                    black_box(a);
                }
                timed
            })
        },
    );
    g.finish();
}

criterion_group!(
    benches,
    bench_mixed,
    bench_readopt,
    bench_own_detach,
    bench_own_detach_cold
);
criterion_main!(benches);
