//! `forward()` per packet over a realistic mix: 90 % TCP to the VIP from many flows, 6 % traffic
//! for the frontend itself (passed), 2 % ARP (passed), 2 % malformed (dropped). Forwarding
//! rewrites the destination MAC, so before each call the frame gets the ingress MAC back (a 6-byte
//! store, as a fresh frame from the RX ring would have it); without that every frame after the
//! first pass would be a cheap `Pass(NotOurMac)` and the number would mean nothing.

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use etherparse::PacketBuilder;
use maglevd::config;
use maglevd::dataplane::{Links, Snapshot, forward};
use maglevd::wire::MacAddr;

const INGRESS: [u8; 6] = [0xc2, 0xb0, 0x57, 0x49, 0x47, 0xf1];
const ROUTER: [u8; 6] = [0x02, 0, 0, 0, 1, 0xfe];

fn tcp(src: u32, sport: u16, dst: [u8; 4], dport: u16, payload: usize) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(ROUTER, INGRESS).ipv4(src.to_be_bytes(), dst, 63).tcp(sport, dport, 1, 64240);
    let mut v = Vec::new();
    b.write(&mut v, &vec![0u8; payload]).unwrap();
    v
}

fn mix() -> Vec<Vec<u8>> {
    let vip = [10, 201, 0, 1];
    let mut frames = Vec::new();
    for i in 0..1000u32 {
        let client = 0xc0a8_6400 + (i * 7919) % 65000;
        let f = match i % 50 {
            0..=44 => tcp(client, 1024 + (i % 50000) as u16, vip, 80, if i % 3 == 0 { 1400 } else { 0 }),
            45..=47 => tcp(client, 40000, [10, 158, 100, 2], 22, 0),
            48 => {
                let mut f = tcp(client, 1, vip, 80, 0);
                f[12..14].copy_from_slice(&[0x08, 0x06]);
                f
            }
            _ => {
                let mut f = tcp(client, 1, vip, 80, 0);
                f[24] ^= 0xff; // bad checksum
                f
            }
        };
        frames.push(f);
    }
    frames
}

fn bench(c: &mut Criterion) {
    let cfg = config::load(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config/maglevd.toml"))).unwrap();
    let links = Links { ingress_mac: MacAddr(INGRESS), egress_mac: MacAddr([0xc2, 0xb0, 0x57, 0x49, 0x47, 0xf2]) };
    let snap = Snapshot::build(
        &cfg,
        links,
        &|b: &config::Backend| b.ipv4().map(|ip| MacAddr([2, 0, 0, 0, 0, ip.octets()[3]])),
        1,
    )
    .unwrap();
    let mut frames = mix();
    // The mix is what it says: check the verdicts once.
    let mut forwarded = 0;
    for f in frames.iter_mut() {
        let mut copy = f.clone();
        forwarded += usize::from(matches!(forward(&mut copy, &snap), maglevd::dataplane::Verdict::Forward { .. }));
    }
    assert_eq!(forwarded, 900, "the mix must forward 90 % of its frames");
    let mut g = c.benchmark_group("forward");
    g.throughput(Throughput::Elements(frames.len() as u64));
    g.bench_function("mix_1000_frames", |b| {
        b.iter(|| {
            for f in frames.iter_mut() {
                // Undo the last pass's rewrite: a frame from our own egress MAC is dropped.
                f[..6].copy_from_slice(&INGRESS);
                f[6..12].copy_from_slice(&ROUTER);
                black_box(forward(black_box(f), &snap));
            }
        })
    });
    let mut one = tcp(0xc0a8_6401, 40000, [10, 201, 0, 1], 80, 0);
    g.throughput(Throughput::Elements(1));
    g.bench_function("tcp_syn_to_vip", |b| {
        b.iter(|| {
            one[..6].copy_from_slice(&INGRESS);
            one[6..12].copy_from_slice(&ROUTER);
            black_box(forward(black_box(&mut one), &snap))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
