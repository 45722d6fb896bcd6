//! Benchmarks of the IPVS `mh` reproduction: table build and per-flow lookup.

use criterion::{Criterion, criterion_group, criterion_main};
use maglevd::ipvs_mh::{self, Family, MhDest, MhFlags};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

fn dests(n: u32) -> Vec<MhDest> {
    (0..n).map(|i| MhDest::new(IpAddr::V4(Ipv4Addr::from(0x0ac8_0000 + i)), 80, 1 + (i % 3) as i32)).collect()
}

fn clients() -> Vec<(IpAddr, u16)> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..1024)
        .map(|_| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (IpAddr::V4(Ipv4Addr::from((x >> 32) as u32)), (x >> 16) as u16)
        })
        .collect()
}

fn bench_build(c: &mut Criterion) {
    let mut g = c.benchmark_group("ipvs_mh_build");
    for (tab_index, n) in [(12u8, 6u32), (12, 100), (16, 1000)] {
        let d = dests(n);
        let m = ipvs_mh::table_size(tab_index).unwrap();
        g.bench_function(format!("M={m}/dests={n}"), |b| {
            b.iter(|| ipvs_mh::build(Family::Inet, black_box(&d), tab_index).unwrap());
        });
    }
    g.finish();
}

fn bench_lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("ipvs_mh_lookup");
    let mut d = dests(6);
    let t = ipvs_mh::build(Family::Inet, &d, 12).unwrap();
    // The data plane prepares the dests' state once per snapshot; so does the benchmark.
    let state = t.availability(|i| d[i].is_available());
    let port_of = |f: MhFlags, p: u16| if f.mh_port { p } else { 0 };
    let cl = clients();
    let cases = [
        ("no_flags", MhFlags::default()),
        ("mh_port", MhFlags { mh_port: true, mh_fallback: false }),
        ("mh_port+fallback", MhFlags { mh_port: true, mh_fallback: true }),
    ];
    for (name, flags) in cases {
        let mut i = 0usize;
        g.bench_function(name, |b| {
            b.iter(|| {
                let (a, p) = cl[i & 1023];
                i = i.wrapping_add(1);
                t.lookup_by(ipvs_mh::fold(Family::Inet, black_box(a)), port_of(flags, p), flags.mh_fallback, &state)
            });
        });
    }
    // Fallback path: one of six dests drained, so ~1/6 of lookups walk the fallback sequence.
    d[0].edit_weight(0);
    let state = t.availability(|i| d[i].is_available());
    let mut i = 0usize;
    let flags = MhFlags { mh_port: true, mh_fallback: true };
    g.bench_function("mh_port+fallback/1of6_drained", |b| {
        b.iter(|| {
            let (a, p) = cl[i & 1023];
            i = i.wrapping_add(1);
            t.lookup_by(ipvs_mh::fold(Family::Inet, black_box(a)), black_box(p), flags.mh_fallback, &state)
        });
    });
    g.bench_function("hsiphash_u32", |b| {
        let mut x = 0u32;
        b.iter(|| {
            x = x.wrapping_add(1);
            ipvs_mh::hsiphash_u32(ipvs_mh::K1, black_box(x))
        });
    });
    g.finish();
}

criterion_group!(benches, bench_build, bench_lookup);
criterion_main!(benches);
