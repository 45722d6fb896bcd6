//! The flow table's cost per packet and its resident memory, with a million active flows.
//!
//! Per packet the data plane will call `lookup` and, on a miss, `insert` (the backend chosen by the
//! Maglev table). The packets come from a million flows in random order, so nearly every access
//! misses the CPU caches: this measures the table in its real working set, not a hot bucket.
//!
//! * `flow/1M_flows_capacity_2M`: the recommended sizing (capacity ≈ 2 × flows): nearly all hits.
//! * `flow/1M_flows_capacity_1M`: flows = capacity (the default capacity, one worker): about 14 %
//!   of flows find their bucket full, so misses, inserts and evictions churn all the time.
//! * `flow/new_flows_full_table`: every packet a new flow (a SYN flood): miss, insert, eviction.
//! * `flow/in_cache_4096_flows`: the same work with a table that fits the CPU caches: the cost of
//!   the instructions alone (hash, scan of 8 entries, counters).
//! * `flow/floor_one_random_read_48MiB`: one 4-byte read per packet at a random place of 48 MiB,
//!   for scale: what memory alone costs when nothing else limits how many reads are in flight.
//!
//! Before the benchmarks it prints the resident memory of the tables (from `/proc/self/statm`,
//! after filling them, so every page is touched) per entry and per flow.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group};
use maglevd::flow::{FiveTuple, FlowTable, Tick, Timeouts};

const FLOWS: usize = 1 << 20;
/// Packets per measured iteration (a worker batch).
const BATCH: usize = 256;

/// splitmix64: a fixed pseudo-random sequence without a dependency.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Flow `n`: a client address and port derived from `n`, to the VIP's port 80.
fn flow(n: u64) -> FiveTuple {
    let r = mix(n);
    FiveTuple { src: (r >> 32) as u32, dst: 0x0ac9_0001, sport: (r as u16) | 1024, dport: 80, proto: 6 }
}

/// A table of `capacity` with flows `0..FLOWS` inserted at tick 0.
fn filled(capacity: usize) -> FlowTable {
    let mut t = FlowTable::new(capacity, Timeouts::default());
    for n in 0..FLOWS as u64 {
        t.insert(&flow(n), n as u32, 0x02, Tick(0));
    }
    t
}

/// Resident bytes of this process.
fn resident() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).expect("statm resident field");
    pages * 4096
}

fn report_memory() {
    for capacity in [FLOWS, 2 * FLOWS] {
        let before = resident();
        let t = filled(capacity);
        let after = resident();
        let bytes = after.saturating_sub(before);
        println!(
            "flow memory: capacity {} holding {} of {FLOWS} flows: resident +{:.1} MiB = {:.1} bytes/entry, {:.1} bytes/flow (table says {} bytes); evictions while filling: {}",
            t.capacity(),
            t.len(),
            bytes as f64 / (1 << 20) as f64,
            bytes as f64 / t.capacity() as f64,
            bytes as f64 / FLOWS as f64,
            t.memory_bytes(),
            t.stats().evictions,
        );
        drop(t);
    }
}

/// The packets: flows drawn at random from `0..FLOWS`.
fn packets() -> Vec<FiveTuple> {
    (0..FLOWS as u64).map(|i| flow(mix(i ^ 0x5eed) % FLOWS as u64)).collect()
}

fn bench(c: &mut Criterion) {
    let packets = packets();
    let mut g = c.benchmark_group("flow");
    g.throughput(Throughput::Elements(BATCH as u64));
    for (name, capacity) in [("1M_flows_capacity_2M", 2 * FLOWS), ("1M_flows_capacity_1M", FLOWS)] {
        let mut table = filled(capacity);
        let mut next = 0;
        g.bench_function(name, |b| {
            b.iter(|| {
                let now = Tick(16);
                let mut sum = 0u32;
                for key in &packets[next..next + BATCH] {
                    sum = sum.wrapping_add(match table.lookup(key, 0x10, now) {
                        Some(backend) => backend,
                        None => {
                            table.insert(key, 1, 0x10, now);
                            1
                        }
                    });
                }
                next = (next + BATCH) % FLOWS;
                black_box(sum)
            })
        });
        let s = table.stats();
        println!(
            "{name}: hits {} misses {} ({:.1} %) evictions {}",
            s.hits,
            s.misses,
            100.0 * s.misses as f64 / (s.hits + s.misses).max(1) as f64,
            s.evictions
        );
    }
    {
        let mut table = FlowTable::new(8192, Timeouts::default());
        let small: Vec<FiveTuple> = (0..FLOWS as u64).map(|i| flow(mix(i) % 4096)).collect();
        let mut next = 0;
        g.bench_function("in_cache_4096_flows", |b| {
            b.iter(|| {
                let now = Tick(16);
                let mut sum = 0u32;
                for key in &small[next..next + BATCH] {
                    sum = sum.wrapping_add(match table.lookup(key, 0x10, now) {
                        Some(backend) => backend,
                        None => {
                            table.insert(key, 1, 0x10, now);
                            1
                        }
                    });
                }
                next = (next + BATCH) % FLOWS;
                black_box(sum)
            })
        });
        let mem = vec![1u32; 12 << 20];
        let idx: Vec<u32> = (0..FLOWS as u64).map(|i| (mix(i) % (12 << 20)) as u32).collect();
        let mut next = 0;
        g.bench_function("floor_one_random_read_48MiB", |b| {
            b.iter(|| {
                let mut sum = 0u32;
                for &i in &idx[next..next + BATCH] {
                    sum = sum.wrapping_add(mem[i as usize]);
                }
                next = (next + BATCH) % FLOWS;
                black_box(sum)
            })
        });
    }
    let mut table = filled(FLOWS);
    let mut n = FLOWS as u64;
    g.bench_function("new_flows_full_table", |b| {
        b.iter(|| {
            let now = Tick(16);
            for _ in 0..BATCH {
                let key = flow(n);
                n += 1;
                if table.lookup(&key, 0x02, now).is_none() {
                    table.insert(&key, 1, 0x02, now);
                }
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);

fn main() {
    report_memory();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
