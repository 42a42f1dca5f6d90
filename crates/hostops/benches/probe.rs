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
    // The in-use check walks every process of the real /proc (read-only). On this test machine
    // pid 1 refuses inspection, so the verdict is Unknown, but the walk is complete.
    let roots = rds_hostops::HostRoots::standard();
    let procs = std::fs::read_dir("/proc")
        .map(|d| {
            d.filter(|e| {
                e.as_ref().is_ok_and(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                })
            })
            .count()
        })
        .unwrap_or(0);
    c.bench_function(
        &format!("in_use over the real /proc ({procs} processes)"),
        |b| {
            b.iter(|| rds_hostops::in_use(black_box(rds_types::DevNum::new(7, 4095)), None, &roots))
        },
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
