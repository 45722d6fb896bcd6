use super::*;
use proptest::prelude::*;

const TCP: u8 = 6;
const UDP: u8 = 17;
const GRE: u8 = 47;

fn flow(n: u32, proto: u8) -> FiveTuple {
    FiveTuple { src: 0x0a00_0000 + n, dst: 0x0ac9_0001, sport: 1024 + (n % 60000) as u16, dport: 80, proto }
}

fn secs(s: u32) -> Tick {
    Tick::from_secs(s)
}

/// A table of one bucket: every key lands in it.
fn one_bucket() -> FlowTable {
    FlowTable::new(WAYS, Timeouts::default())
}

fn stats(hits: u64, misses: u64, inserts: u64, evictions: u64, timeouts: u64) -> TableStats {
    TableStats { hits, misses, inserts, evictions, timeouts }
}

#[test]
fn layout_is_24_bytes_per_entry_in_whole_cache_lines() {
    assert_eq!(ENTRY_BYTES, 24);
    assert_eq!(std::mem::size_of::<Bucket>(), 192);
    assert_eq!(std::mem::align_of::<Bucket>(), 64);
    let t = FlowTable::new(1 << 16, Timeouts::default());
    assert_eq!(t.memory_bytes(), (1 << 16) * 24);
    assert_eq!(t.sets.buckets.as_ptr() as usize % 64, 0);
}

#[test]
fn capacity_rounding_and_split_across_workers() {
    let cap = |c| FlowTable::new(c, Timeouts::default()).capacity();
    assert_eq!((cap(0), cap(1), cap(8), cap(9), cap(1000), cap(1001)), (8, 8, 8, 16, 1000, 1008));
    assert_eq!(round_capacity(usize::MAX), MAX_CAPACITY);
    assert_eq!(per_worker(1 << 20, 1), 1 << 20);
    assert_eq!(per_worker(1 << 20, 2), 1 << 19);
    assert_eq!(per_worker(1_000_001, 3), 333_336); // ⌈1000001 / 3⌉ = 333334, rounded up to 8
    assert_eq!(per_worker(4096, 64), MIN_PER_WORKER);
    assert_eq!(per_worker(5000, 0), 5000);
    assert_eq!(per_worker(usize::MAX, 1), MAX_CAPACITY);
    for (total, workers) in [(1 << 20, 3), (12345, 7), (MAX_CAPACITY, 64)] {
        let each = per_worker(total, workers);
        assert_eq!(cap(each), each, "per_worker gives a capacity FlowTable keeps as is");
        assert!(each * workers >= total);
    }
}

#[test]
fn insert_lookup_update_and_counters() {
    let mut t = FlowTable::new(1024, Timeouts::default());
    assert!(t.is_empty());
    let (a, b) = (flow(1, TCP), flow(2, UDP));
    assert_eq!(t.lookup(&a, 0, secs(0)), None);
    t.insert(&a, 7, TCP_SYN, secs(0));
    t.insert(&b, 9, 0, secs(0));
    assert_eq!(t.lookup(&a, TCP_ACK, secs(1)), Some(7));
    assert_eq!(t.lookup(&b, 0, secs(1)), Some(9));
    // Same addresses and ports, other protocol: another flow.
    assert_eq!(t.lookup(&FiveTuple { proto: UDP, ..a }, 0, secs(1)), None);
    // A new backend for a live flow replaces it in place: not a new entry.
    t.insert(&a, 8, TCP_ACK, secs(2));
    assert_eq!(t.lookup(&a, TCP_ACK, secs(2)), Some(8));
    assert_eq!(t.len(), 2);
    assert_eq!(t.stats(), stats(3, 2, 2, 0, 0));
}

#[test]
fn all_zero_key_is_a_key_like_any_other() {
    // An empty entry is all zeros; the occupied bit keeps it from matching the zero key.
    let mut t = one_bucket();
    let zero = FiveTuple::default();
    assert_eq!(t.lookup(&zero, 0, secs(0)), None);
    t.insert(&zero, 3, 0, secs(0));
    assert_eq!(t.lookup(&zero, 0, secs(0)), Some(3));
    assert_eq!(t.len(), 1);
}

#[test]
fn full_bucket_evicts_its_least_recently_used_entry() {
    let mut t = one_bucket();
    for n in 0..8 {
        t.insert(&flow(n, TCP), n, 0, Tick(n));
    }
    assert_eq!((t.len(), t.capacity()), (8, 8));
    // Flow 0 is the oldest insert but is used again: flow 1 is now the least recently used.
    assert_eq!(t.lookup(&flow(0, TCP), 0, Tick(8)), Some(0));
    t.insert(&flow(8, TCP), 8, 0, Tick(9));
    assert_eq!(t.lookup(&flow(1, TCP), 0, Tick(9)), None, "flow 1 was evicted");
    t.insert(&flow(9, TCP), 9, 0, Tick(10));
    assert_eq!(t.lookup(&flow(2, TCP), 0, Tick(10)), None, "then flow 2");
    for n in [0, 3, 4, 5, 6, 7, 8, 9] {
        assert_eq!(t.lookup(&flow(n, TCP), 0, Tick(11)), Some(n), "flow {n} stays");
    }
    assert_eq!(t.len(), 8);
    assert_eq!(t.stats(), stats(9, 2, 10, 2, 0));
}

#[test]
fn full_bucket_reuses_an_expired_entry_before_evicting() {
    let mut t = one_bucket();
    t.insert(&flow(0, UDP), 0, 0, secs(0)); // expires after 300 s
    for n in 1..8 {
        t.insert(&flow(n, TCP), n, 0, secs(0)); // 900 s
    }
    t.insert(&flow(8, TCP), 8, 0, secs(301));
    assert_eq!(t.stats(), stats(0, 0, 9, 0, 1));
    for n in 1..9 {
        assert_eq!(t.lookup(&flow(n, TCP), 0, secs(302)), Some(n));
    }
    assert_eq!(t.len(), 8);
}

/// Entries idle exactly their timeout are alive; one tick more and they are gone.
fn expires_after(proto: u8, flags_at_insert: u8, timeout: u32) {
    let mut t = FlowTable::new(1024, Timeouts::default());
    let (a, b) = (flow(1, proto), flow(2, proto));
    t.insert(&a, 1, flags_at_insert, secs(10));
    t.insert(&b, 2, flags_at_insert, secs(10));
    assert_eq!(t.lookup(&a, 0, secs(10 + timeout)), Some(1), "proto {proto}: alive at the timeout");
    assert_eq!(t.lookup(&b, 0, Tick(secs(10 + timeout).0 + 1)), None, "proto {proto}: expired after it");
    assert_eq!(t.len(), 1);
    assert_eq!(t.stats(), stats(1, 1, 2, 0, 1));
}

#[test]
fn idle_timeouts_per_protocol() {
    expires_after(TCP, TCP_SYN, 900);
    expires_after(UDP, 0, 300);
    expires_after(GRE, 0, 300); // other protocols use UDP's
    // Configured values are used.
    let mut t = FlowTable::new(64, Timeouts { tcp: Duration::from_secs(60), ..Timeouts::default() });
    t.insert(&flow(1, TCP), 1, 0, secs(0));
    assert_eq!(t.lookup(&flow(1, TCP), 0, secs(61)), None);
}

#[test]
fn fin_or_rst_shortens_the_timeout() {
    expires_after(TCP, TCP_FIN | TCP_ACK, 30);
    expires_after(TCP, TCP_RST, 30);
    let mut t = FlowTable::new(1024, Timeouts::default());
    let (a, b, c, d) = (flow(1, TCP), flow(2, TCP), flow(3, TCP), flow(4, UDP));
    for k in [a, b, c, d] {
        t.insert(&k, 1, TCP_SYN, secs(0));
    }
    assert_eq!(t.lookup(&a, TCP_FIN | TCP_ACK, secs(10)), Some(1));
    assert_eq!(t.lookup(&b, TCP_RST, secs(10)), Some(1));
    // The client's ACKs after its FIN keep the closing entry alive (idle timeout).
    assert_eq!(t.lookup(&a, TCP_ACK, secs(35)), Some(1));
    assert_eq!(t.lookup(&a, TCP_ACK, secs(60)), Some(1));
    assert_eq!(t.lookup(&b, TCP_ACK, secs(41)), None, "30 s after the RST");
    let listed: Vec<(FiveTuple, bool)> = t.entries(secs(60), 10).map(|e| (e.key, e.closing)).collect();
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().all(|&(k, closing)| closing == (k == a)), "{listed:?}");
    // A SYN+ACK is not a new connection; a pure SYN (port reuse) is: open again, same backend.
    assert_eq!(t.lookup(&c, TCP_FIN, secs(10)), Some(1));
    assert_eq!(t.lookup(&c, TCP_SYN | TCP_ACK, secs(20)), Some(1));
    assert_eq!(t.lookup(&c, TCP_SYN, secs(40)), Some(1));
    assert_eq!(t.lookup(&c, 0, secs(40 + 900)), Some(1));
    // Flags mean nothing for UDP.
    assert_eq!(t.lookup(&d, TCP_FIN, secs(10)), Some(1));
    assert_eq!(t.lookup(&d, 0, secs(10 + 300)), Some(1));
}

#[test]
fn reinsert_after_timeout() {
    let mut t = FlowTable::new(1024, Timeouts::default());
    let a = flow(1, UDP);
    t.insert(&a, 1, 0, secs(0));
    // The usual path: the lookup misses and reclaims, the caller inserts.
    assert_eq!(t.lookup(&a, 0, secs(301)), None);
    t.insert(&a, 2, 0, secs(301));
    assert_eq!(t.lookup(&a, 0, secs(302)), Some(2));
    // An insert over the key's own expired entry counts the same way.
    t.insert(&a, 3, 0, secs(700));
    assert_eq!(t.lookup(&a, 0, secs(700)), Some(3));
    assert_eq!(t.len(), 1);
    assert_eq!(t.stats(), stats(2, 1, 3, 0, 2));
}

#[test]
fn sweep_reclaims_expired_entries_with_bounded_work() {
    let mut t = FlowTable::new(64, Timeouts::default()); // 8 buckets
    for n in 0..40 {
        t.insert(&flow(n, UDP), n, 0, secs(0));
    }
    let before = t.len();
    assert!(before > 30, "{before}");
    assert_eq!(t.sweep(secs(300), 8), 0, "nothing expired yet");
    // One bucket per call: never more than WAYS entries.
    let first = t.sweep(secs(301), 1);
    assert!(first <= WAYS);
    let rest: usize = (0..7).map(|_| t.sweep(secs(301), 1)).sum();
    assert_eq!(first + rest, before);
    assert_eq!((t.len(), t.sets.count_occupied()), (0, 0));
    assert_eq!(t.stats().timeouts, before as u64);
    assert_eq!(t.sweep(secs(301), usize::MAX), 0);
}

#[test]
fn entries_lists_live_flows_up_to_a_limit() {
    let mut t = FlowTable::new(1024, Timeouts::default());
    for n in 0..10 {
        t.insert(&flow(n, if n < 5 { TCP } else { UDP }), 100 + n, 0, secs(0));
    }
    assert_eq!(t.entries(secs(0), 4).count(), 4);
    // At 400 s the UDP flows have expired (not yet reclaimed: len still counts them).
    let live: Vec<FlowEntry> = t.entries(secs(400), 100).collect();
    assert_eq!(t.len(), 10);
    assert_eq!(live.len(), 5);
    for e in &live {
        let n = e.backend - 100;
        assert_eq!(e.key, flow(n, TCP));
        assert_eq!((e.idle, e.closing), (Duration::from_secs(400), false));
    }
}

#[test]
fn ticks_from_instants_and_wrapping() {
    let epoch = Instant::now();
    assert_eq!(Tick::since(epoch, epoch + Duration::from_millis(1500)), Tick(24));
    assert_eq!(Tick::since(epoch + Duration::from_secs(1), epoch), Tick(0));
    assert_eq!(secs(2).after(Duration::from_millis(130)), Tick(34));
    // Across the wrap of the tick counter.
    let mut t = FlowTable::new(64, Timeouts::default());
    let start = Tick(u32::MAX - 16);
    t.insert(&flow(1, TCP), 1, 0, start);
    t.insert(&flow(2, TCP), 2, 0, start);
    assert_eq!(t.lookup(&flow(1, TCP), 0, start.after(Duration::from_secs(900))), Some(1));
    assert_eq!(t.lookup(&flow(2, TCP), 0, start.after(Duration::from_secs(901))), None);
    // A `now` before the last use reads as age 0, not as a huge age.
    t.insert(&flow(3, TCP), 3, 0, secs(100));
    assert_eq!(t.lookup(&flow(3, TCP), 0, secs(50)), Some(3));
}

#[test]
fn the_bucket_hash_is_fixed() {
    // XXH3-64 with the documented seed over the documented bytes: frozen across builds.
    let k = FiveTuple { src: 0x0a00_0001, dst: 0x0ac9_0001, sport: 40000, dport: 80, proto: TCP };
    let bytes = [10, 0, 0, 1, 10, 201, 0, 1, 6, 0x9c, 0x40, 0, 80];
    assert_eq!(k.packed().hash, xxh3_64_with_seed(&bytes, FLOW_TABLE_SEED));
    let f = FragKey { src: 0x0a00_0001, dst: 0x0ac9_0001, proto: UDP, id: 0x1234 };
    assert_eq!(f.packed().hash, xxh3_64_with_seed(&[10, 0, 0, 1, 10, 201, 0, 1, 17, 0x12, 0x34], FRAG_TABLE_SEED));
    // Keys spread over the buckets.
    let t = FlowTable::new(1 << 12, Timeouts::default());
    let mut used = vec![0u32; t.sets.buckets.len()];
    for n in 0..4096 {
        used[t.sets.bucket_index(flow(n, TCP).packed().hash)] += 1;
    }
    assert!(used.iter().all(|&c| c < 24), "max {}", used.iter().max().unwrap());
}

fn frag(id: u16) -> FragKey {
    FragKey { src: 0x0a00_0001, dst: 0x0ac9_0001, proto: UDP, id }
}

#[test]
fn fragments_follow_their_first_fragment_until_the_timeout() {
    let mut t = FragTable::new(FRAG_CAPACITY, DEFAULT_FRAGMENT_TIMEOUT);
    assert_eq!(t.capacity(), 4096);
    assert_eq!(t.lookup(&frag(1), secs(0)), None, "a later fragment before the first one");
    t.remember(&frag(1), 5, secs(0));
    t.remember(&frag(2), 6, secs(0));
    assert_eq!(t.lookup(&frag(1), secs(5)), Some(5));
    assert_eq!(t.lookup(&frag(2), Tick(secs(5).0 + 1)), None, "5 s and a tick later");
    // The protocol and the ID are part of the key.
    assert_eq!(t.lookup(&FragKey { proto: TCP, ..frag(1) }, secs(5)), None);
    assert_eq!(t.lookup(&frag(3), secs(5)), None);
    // A datagram reusing an expired ID gets its own backend.
    t.remember(&frag(2), 7, secs(6));
    assert_eq!(t.lookup(&frag(2), secs(6)), Some(7));
    assert_eq!(t.len(), 2);
    assert_eq!(t.stats(), stats(2, 4, 3, 0, 1));
    let short = FragTable::new(8, Duration::from_secs(1));
    assert!(short.is_empty());
}

#[test]
fn fragment_table_evicts_the_least_recently_used() {
    let mut t = FragTable::new(WAYS, DEFAULT_FRAGMENT_TIMEOUT);
    for id in 0..8 {
        t.remember(&frag(id), u32::from(id), Tick(u32::from(id)));
    }
    t.remember(&frag(8), 8, Tick(8));
    assert_eq!(t.lookup(&frag(0), Tick(9)), None);
    assert_eq!(t.lookup(&frag(8), Tick(9)), Some(8));
    assert_eq!(t.len(), 8);
    assert_eq!(t.stats(), stats(1, 1, 9, 1, 0));
}

#[derive(Debug, Clone)]
enum Op {
    Lookup { key: u8, flags: u8 },
    Insert { key: u8, backend: u32, flags: u8 },
    Sweep { buckets: u8 },
    Advance { ticks: u32 },
    Remember { id: u8, backend: u32 },
    FragLookup { id: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<u8>(), any::<u8>()).prop_map(|(key, flags)| Op::Lookup { key, flags }),
        4 => (any::<u8>(), any::<u32>(), any::<u8>()).prop_map(|(key, backend, flags)| Op::Insert { key, backend, flags }),
        1 => any::<u8>().prop_map(|buckets| Op::Sweep { buckets }),
        2 => prop_oneof![0..64u32, 0..20_000u32, Just(u32::MAX / 2), any::<u32>()].prop_map(|ticks| Op::Advance { ticks }),
        1 => (any::<u8>(), any::<u32>()).prop_map(|(id, backend)| Op::Remember { id, backend }),
        1 => any::<u8>().prop_map(|id| Op::FragLookup { id }),
    ]
}

fn key(n: u8) -> FiveTuple {
    // Few addresses and ports, all protocols: many collisions and every timeout class.
    FiveTuple {
        src: u32::from(n & 7),
        dst: 1,
        sport: u16::from(n >> 3 & 3),
        dport: 0,
        proto: [TCP, UDP, GRE, 0][n as usize >> 5 & 3],
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any sequence of operations keeps `len()` within the capacity and equal to the occupied
    /// entries, counts every lookup once, and never returns a backend that was not the last one
    /// stored for the key.
    #[test]
    fn any_operations_keep_the_tables_consistent(cap in 0usize..40, start: u32, ops in prop::collection::vec(op(), 0..300)) {
        let mut flows = FlowTable::new(cap, Timeouts { tcp: Duration::from_secs(60), tcp_fin: Duration::from_secs(2), udp: Duration::from_secs(10) });
        let mut frags = FragTable::new(cap, Duration::from_secs(1));
        let mut last = std::collections::HashMap::new();
        let mut last_frag = std::collections::HashMap::new();
        let mut now = Tick(start);
        let mut lookups = 0;
        let mut frag_lookups = 0;
        for op in ops {
            match op {
                Op::Lookup { key: k, flags } => {
                    lookups += 1;
                    if let Some(b) = flows.lookup(&key(k), flags, now) {
                        prop_assert_eq!(Some(&b), last.get(&key(k)));
                    }
                }
                Op::Insert { key: k, backend, flags } => {
                    flows.insert(&key(k), backend, flags, now);
                    last.insert(key(k), backend);
                    lookups += 1;
                    prop_assert_eq!(flows.lookup(&key(k), 0, now), Some(backend));
                }
                Op::Sweep { buckets } => {
                    flows.sweep(now, usize::from(buckets));
                }
                Op::Advance { ticks } => now = Tick(now.0.wrapping_add(ticks)),
                Op::Remember { id, backend } => {
                    frags.remember(&frag(u16::from(id)), backend, now);
                    last_frag.insert(id, backend);
                }
                Op::FragLookup { id } => {
                    frag_lookups += 1;
                    if let Some(b) = frags.lookup(&frag(u16::from(id)), now) {
                        prop_assert_eq!(Some(&b), last_frag.get(&id));
                    }
                }
            }
            prop_assert!(flows.len() <= flows.capacity());
            prop_assert_eq!(flows.len(), flows.sets.count_occupied());
            prop_assert!(frags.len() <= frags.capacity());
            prop_assert_eq!(frags.len(), frags.sets.count_occupied());
            prop_assert!(flows.entries(now, usize::MAX).count() <= flows.len());
        }
        let s = flows.stats();
        prop_assert_eq!(s.hits + s.misses, lookups);
        let f = frags.stats();
        prop_assert_eq!(f.hits + f.misses, frag_lookups);
    }
}

#[test]
fn line_0_holds_the_tags_and_ticks_and_lines_1_2_the_keys() {
    assert_eq!(std::mem::offset_of!(Bucket, tags), 0);
    assert_eq!(std::mem::offset_of!(Bucket, last_used), 32);
    assert_eq!(std::mem::offset_of!(Bucket, keys), 64);
    assert_eq!(std::mem::size_of::<Key>() * HALF, 64, "a half's keys fill one line");
}

/// A key goes to a free way of its own half while there is one, so the prefetched key line holds
/// it; a full half overflows into the other one.
#[test]
fn a_new_key_takes_a_way_of_its_own_half_first() {
    let mut t = one_bucket();
    let keys: Vec<FiveTuple> = (0..200).map(|n| flow(n, TCP)).collect();
    let (zero, one): (Vec<_>, Vec<_>) = keys.iter().partition(|k| k.packed().half() == 0);
    for (i, k) in zero.iter().take(HALF + 1).enumerate() {
        t.insert(k, i as u32, 0, secs(0));
        let way = t.sets.buckets[0].find(&k.packed()).unwrap();
        if i < HALF {
            assert!(way < HALF, "key {i} in way {way}");
        } else {
            assert!(way >= HALF, "the half is full: the other one");
        }
    }
    let k = one[0];
    t.insert(&k, 99, 0, secs(0));
    assert!(t.sets.buckets[0].find(&k.packed()).unwrap() >= HALF);
    assert_eq!(t.lookup(&k, 0, secs(0)), Some(99));
}

/// Two keys of one bucket with the same fingerprint and protocol: the key itself decides.
#[test]
fn a_fingerprint_collision_is_told_apart_by_the_key() {
    let mut t = one_bucket();
    let a = flow(0, TCP);
    let fp = |k: &FiveTuple| k.packed().tag();
    let b = (1..1_000_000).map(|n| flow(n, TCP)).find(|k| fp(k) == fp(&a)).expect("a 16-bit collision");
    t.insert(&a, 1, 0, secs(0));
    assert_eq!(t.lookup(&b, 0, secs(0)), None);
    t.insert(&b, 2, 0, secs(0));
    assert_eq!((t.lookup(&a, 0, secs(1)), t.lookup(&b, 0, secs(1))), (Some(1), Some(2)));
    assert_eq!(t.len(), 2);
}

proptest! {
    /// The hash of [`FiveTuple::hashed`] is XXH3 of the documented bytes, for any key.
    #[test]
    fn hashed_is_the_documented_hash(src: u32, dst: u32, sport: u16, dport: u16, proto: u8) {
        let k = FiveTuple { src, dst, sport, dport, proto };
        let mut b = Vec::new();
        b.extend_from_slice(&src.to_be_bytes());
        b.extend_from_slice(&dst.to_be_bytes());
        b.push(proto);
        b.extend_from_slice(&sport.to_be_bytes());
        b.extend_from_slice(&dport.to_be_bytes());
        prop_assert_eq!(k.hashed().hash, xxh3_64_with_seed(&b, FLOW_TABLE_SEED));
        prop_assert_eq!(*k.hashed().key(), k);
    }

    /// Prefetching and the `_hashed` methods change nothing: the same operations through them
    /// leave the same table.
    #[test]
    fn prefetch_and_hashed_calls_change_nothing(ops in prop::collection::vec((any::<u8>(), any::<u8>(), any::<bool>()), 0..200)) {
        let mut plain = FlowTable::new(32, Timeouts::default());
        let mut hashed = FlowTable::new(32, Timeouts::default());
        let end = Tick(ops.len() as u32 * 64);
        for (i, (k, flags, insert)) in ops.into_iter().enumerate() {
            let now = Tick(i as u32 * 64);
            let h = key(k).hashed();
            hashed.prefetch(&h);
            if insert {
                plain.insert(&key(k), u32::from(flags), flags, now);
                hashed.insert_hashed(&h, u32::from(flags), flags, now);
            } else {
                prop_assert_eq!(plain.lookup(&key(k), flags, now), hashed.lookup_hashed(&h, flags, now));
            }
        }
        prop_assert_eq!(plain.stats(), hashed.stats());
        prop_assert!(plain.entries(end, usize::MAX).eq(hashed.entries(end, usize::MAX)));
        prop_assert_eq!(plain.len(), hashed.len());
    }
}
