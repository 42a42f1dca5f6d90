//! Uevent parse throughput on real kernel fixtures (loop events captured on this machine) and
//! on the libudev encoding of the same events.
//! `cargo bench -p rds-devices --bench uevent_parse -- --warm-up-time 1 --measurement-time 3`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rds_devices::uevent::{encode_libudev, parse};

fn fixtures() -> Vec<Vec<u8>> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(dir)
        .expect("fixtures dir")
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "bin"))
        .map(|e| std::fs::read(e.path()).expect("fixture"))
        .collect();
    out.sort();
    out
}

fn bench(c: &mut Criterion) {
    let kernel = fixtures();
    let libudev: Vec<Vec<u8>> = kernel
        .iter()
        .map(|m| {
            let ev = parse(m).expect("fixture parses");
            let props: Vec<(&str, &str)> = ev.props.iter().collect();
            encode_libudev(&props)
        })
        .collect();
    let mut g = c.benchmark_group("uevent_parse");
    g.throughput(Throughput::Elements(kernel.len() as u64));
    g.bench_function("kernel_fixtures", |b| {
        b.iter(|| {
            for m in &kernel {
                std::hint::black_box(parse(std::hint::black_box(m)).ok());
            }
        })
    });
    g.bench_function("libudev_encoded_fixtures", |b| {
        b.iter(|| {
            for m in &libudev {
                std::hint::black_box(parse(std::hint::black_box(m)).ok());
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
