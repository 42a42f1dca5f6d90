//! Cost of the native half of the content probe (signature scan over the first and last MiB).
use criterion::{criterion_group, criterion_main, Criterion};
use rds_hostops::signatures::{scan, Regions};
use std::hint::black_box;

fn bench(c: &mut Criterion) {
    let head = vec![0u8; 1 << 20];
    let tail = vec![0u8; 1 << 20];
    c.bench_function(
        "scan 2 MiB of zeroes (worst case: every byte checked)",
        |b| {
            b.iter(|| {
                scan(black_box(&Regions {
                    head: &head,
                    tail: &tail,
                    tail_offset: 1 << 30,
                    size: (1 << 30) + (1 << 20),
                }))
            })
        },
    );
    let mut ext = vec![0u8; 1 << 20];
    ext[1024 + 0x38..1024 + 0x3A].copy_from_slice(&0xEF53u16.to_le_bytes());
    c.bench_function("scan an ext4 head (non-zero found early)", |b| {
        b.iter(|| {
            scan(black_box(&Regions {
                head: &ext,
                tail: &tail,
                tail_offset: 1 << 30,
                size: (1 << 30) + (1 << 20),
            }))
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
