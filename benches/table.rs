//! Maglev table build time for M = 65537 with N = 3, 100 and 1000 equal backends, and with
//! skewed weights (the credit rounds' worst realistic case).

use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use maglevd::maglev::{TableBackend, build};

fn backends(n: u32, weight: impl Fn(u32) -> u32) -> Vec<TableBackend> {
    (0..n).map(|i| TableBackend { ip: Ipv4Addr::from(0x0a9e_0000 + i), weight: weight(i) }).collect()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("maglev_build_m65537");
    g.sample_size(20);
    for n in [3u32, 100, 1000] {
        let b = backends(n, |_| 1);
        g.bench_with_input(BenchmarkId::new("equal", n), &b, |bench, b| bench.iter(|| build(black_box(b), 65537)));
    }
    let skewed = backends(100, |i| 1 + i % 10);
    g.bench_with_input(BenchmarkId::new("weights_1_to_10", 100), &skewed, |bench, b| {
        bench.iter(|| build(black_box(b), 65537))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
