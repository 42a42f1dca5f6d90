//! Parse-only cost of mountinfo tables of 21, 1,000 and 10,000 entries, on the same bytes,
//! for this crate's parser (owned table, and borrowed entries only) and `procfs` 0.18's
//! `MountInfos::from_read`.
//!
//! The tables are the host namespace's real lines captured on this kernel, completed with
//! synthetic lines shaped like a Kubernetes node's: CSI ext4 staging and publish mounts,
//! projected-volume tmpfs, and containerd overlay root filesystems with long option strings.
//!
//! `cargo bench -p rds-mounts --bench parse -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rds_mounts::mountinfo::{entries, parse_table};

const HOST: &[u8] = include_bytes!("../tests/fixtures/host_namespace.mountinfo");

/// A table of exactly `n` lines: the real host lines, then node-like synthetic ones.
pub fn node_table(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * 200);
    let mut lines = 0;
    for l in HOST.split_inclusive(|&b| b == b'\n').take(n) {
        out.extend_from_slice(l);
        lines += 1;
    }
    let mut id = 1000u32;
    while lines < n {
        let pod = format!(
            "{:08x}-7c1e-4d2b-9c3a-{:012x}",
            id * 2654435761u32,
            u64::from(id) * 40503
        );
        let line = match lines % 3 {
            0 => format!(
                "{id} 29 259:{m} / /var/lib/kubelet/pods/{pod}/volumes/kubernetes.io~csi/pvc-{pod}/mount rw,relatime shared:{g} - ext4 /dev/nvme1n{m} rw,stripe=16,errors=remount-ro\n",
                m = id % 900,
                g = id % 5000
            ),
            1 => format!(
                "{id} 29 0:{m} / /var/lib/kubelet/pods/{pod}/volumes/kubernetes.io~projected/kube-api-access-{s} rw,relatime - tmpfs tmpfs rw,size=4194304k,noswap\n",
                m = 100 + id % 800,
                s = &pod[..5]
            ),
            _ => format!(
                "{id} 31 0:{m} / /run/containerd/io.containerd.runtime.v2.task/k8s.io/{pod}{pod}/rootfs rw,relatime - overlay overlay rw,lowerdir=/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/{a}/fs:/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/{b}/fs,upperdir=/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/{c}/fs,workdir=/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/{c}/work,uuid=on\n",
                m = 100 + id % 800,
                a = id % 7000,
                b = id % 7001,
                c = id
            ),
        };
        out.extend_from_slice(line.as_bytes());
        lines += 1;
        id += 1;
    }
    out
}

fn bench_parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("mountinfo_parse");
    for n in [21usize, 1_000, 10_000] {
        let bytes = node_table(n);
        assert_eq!(
            parse_table(&bytes).entries.len(),
            n,
            "fixture of {n} valid lines"
        );
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("rds_owned", n), &bytes, |b, bytes| {
            b.iter(|| black_box(parse_table(black_box(bytes))))
        });
        g.bench_with_input(BenchmarkId::new("rds_borrowed", n), &bytes, |b, bytes| {
            b.iter(|| black_box(entries(black_box(bytes)).filter(Result::is_ok).count()))
        });
        g.bench_with_input(BenchmarkId::new("procfs_0_18", n), &bytes, |b, bytes| {
            b.iter(|| {
                let m = <procfs::process::MountInfos as procfs::FromRead>::from_read(black_box(
                    &bytes[..],
                ))
                .expect("procfs parses the table");
                black_box(m)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_parse);
criterion_main!(benches);
