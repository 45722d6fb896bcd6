//! Conformance tests for `maglevd::ipvs_mh` against the kernel-verified cases in
//! `tests/data/cases_public.json` (each case: the dests in kernel order, the kernel's table and
//! lookups under every flag combination) and against an independent reference implementation
//! written here, literally from a prose description of the kernel's algorithm.

use maglevd::ipvs_mh::{self, Family, MhDest, MhFlags, MhTable, NO_DEST};
use proptest::prelude::*;
use serde::Deserialize;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

// ---------------------------------------------------------------------------------------------
// Public cases
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
struct Case {
    name: String,
    af: String,
    tab_index: u8,
    table_size: u32,
    dests: Vec<CaseDest>,
    gcd: u32,
    rshift: u32,
    table: Vec<i64>,
    lookups: Vec<CaseLookup>,
}

#[derive(Debug, Deserialize)]
struct CaseDest {
    addr: IpAddr,
    port: u16,
    weight: i32,
    last_weight: i32,
}

#[derive(Debug, Deserialize)]
struct CaseLookup {
    client_addr: IpAddr,
    client_port: u16,
    dest_no_flags: i64,
    dest_mh_port: i64,
    dest_mh_fallback: i64,
    dest_mh_fallback_mh_port: i64,
}

fn cases() -> Vec<Case> {
    let text = include_str!("data/cases_public.json");
    serde_json::from_str(text).expect("cases_public.json parses")
}

fn family_of(af: &str) -> Family {
    match af {
        "inet" => Family::Inet,
        "inet6" => Family::Inet6,
        other => panic!("unknown af {other}"),
    }
}

fn mh_dests(c: &Case) -> Vec<MhDest> {
    c.dests
        .iter()
        .map(|d| MhDest { addr: d.addr, port: d.port, weight: d.weight, last_weight: d.last_weight, overloaded: false })
        .collect()
}

/// Slot table as JSON-style integers (−1 = none).
fn as_i64(t: &MhTable) -> Vec<i64> {
    t.slots().iter().map(|&s| if s == NO_DEST { -1 } else { i64::from(s) }).collect()
}

fn opt_i64(o: Option<usize>) -> i64 {
    o.map_or(-1, |i| i as i64)
}

const FLAGS: [(bool, bool); 4] = [(false, false), (true, false), (false, true), (true, true)];

fn flags(mh_port: bool, mh_fallback: bool) -> MhFlags {
    MhFlags { mh_port, mh_fallback }
}

#[test]
fn public_cases_match_slot_for_slot() {
    let cases = cases();
    assert!(!cases.is_empty());
    for c in &cases {
        let dests = mh_dests(c);
        let t = ipvs_mh::build(family_of(&c.af), &dests, c.tab_index).unwrap();
        assert_eq!(t.size(), c.table_size, "{}: size", c.name);
        assert_eq!(t.gcd(), c.gcd, "{}: gcd", c.name);
        assert_eq!(t.rshift(), c.rshift, "{}: rshift", c.name);
        assert_eq!(c.table.len(), c.table_size as usize, "{}: table length", c.name);
        let got = as_i64(&t);
        let diff: Vec<usize> = (0..got.len()).filter(|&i| got[i] != c.table[i]).collect();
        assert!(diff.is_empty(), "{}: {} slots differ, first {:?}", c.name, diff.len(), &diff[..1]);

        assert_eq!(c.lookups.len(), 20, "{}", c.name);
        for l in &c.lookups {
            let want = [l.dest_no_flags, l.dest_mh_port, l.dest_mh_fallback, l.dest_mh_fallback_mh_port];
            for ((p, f), want) in FLAGS.into_iter().zip(want) {
                let got = t.lookup(&dests, l.client_addr, l.client_port, flags(p, f), true);
                assert_eq!(
                    opt_i64(got),
                    want,
                    "{}: client {}:{} mh_port={p} mh_fallback={f}",
                    c.name,
                    l.client_addr,
                    l.client_port
                );
            }
        }
    }
}

/// The reference implementation below must itself reproduce the kernel cases, otherwise the
/// comparisons against it further down would prove nothing.
#[test]
fn reference_reproduces_public_cases() {
    for c in &cases() {
        let v6 = c.af == "inet6";
        let rd: Vec<(IpAddr, u16, i64)> = c.dests.iter().map(|d| (d.addr, d.port, i64::from(d.last_weight))).collect();
        let r = reference::build(v6, &rd, c.tab_index).unwrap();
        assert_eq!((r.gcd, r.rshift), (u64::from(c.gcd), u64::from(c.rshift)), "{}", c.name);
        assert_eq!(r.table, c.table, "{}: reference table", c.name);
        let avail: Vec<bool> = c.dests.iter().map(|d| d.weight > 0).collect();
        for l in &c.lookups {
            let want = [l.dest_no_flags, l.dest_mh_port, l.dest_mh_fallback, l.dest_mh_fallback_mh_port];
            for ((p, f), want) in FLAGS.into_iter().zip(want) {
                let port = if p { l.client_port } else { 0 };
                assert_eq!(reference::lookup(&r, v6, &avail, l.client_addr, port, f), want);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Independent reference: written from a prose description of the kernel's algorithm, deliberately in a different style
// (u64/u128 arithmetic, siphasher directly, Maglev-paper `next[i]++` permutation indices,
// −1 for "none"). It shares no code with the module under test.
// ---------------------------------------------------------------------------------------------
mod reference {
    use siphasher::sip::SipHasher13;
    use std::hash::Hasher;
    use std::net::IpAddr;

    const PRIMES: [u64; 10] = [251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071];
    // §1: each key is two copies of the 64-bit word.
    const K1: u64 = 2654435761;
    const K2: u64 = 2654446892;

    /// §2: SipHash-1-3 of the 4 little-endian bytes of x, low 32 bits.
    fn h(key: u64, x: u32) -> u64 {
        let mut s = SipHasher13::new_with_keys(key, key);
        s.write(&x.to_le_bytes());
        s.finish() & 0xffff_ffff
    }

    /// §3: IPv4 as a big-endian number; IPv6 as XOR of its four big-endian 32-bit words.
    fn fold(v6_service: bool, a: IpAddr) -> u64 {
        match a {
            IpAddr::V4(a) => u64::from(u32::from(a)),
            IpAddr::V6(a) => {
                let b = u128::from(a);
                assert!(v6_service, "reference only handles same-family addresses");
                let w = |s: u32| ((b >> s) & 0xffff_ffff) as u64;
                w(96) ^ w(64) ^ w(32) ^ w(0)
            }
        }
    }

    /// §3: v = (offset + port + fold) mod 2^32; hashkey = H(key, v).
    fn hashkey(v6: bool, a: IpAddr, port: u16, key: u64, offset: u64) -> u64 {
        let v = (offset + u64::from(port) + fold(v6, a)) % (1u64 << 32);
        h(key, v as u32)
    }

    fn gcd(a: u64, b: u64) -> u64 {
        if b == 0 { a } else { gcd(b, a % b) }
    }

    fn bitlength(mut x: u64) -> u64 {
        let mut n = 0;
        while x > 0 {
            n += 1;
            x >>= 1;
        }
        n
    }

    #[derive(Debug)]
    pub struct Ref {
        pub m: u64,
        pub table: Vec<i64>,
        pub gcd: u64,
        pub rshift: u64,
    }

    /// Turns per dest (§5), public for the weight tests.
    pub fn turns(last_weights: &[i64], tab_index: u8) -> (u64, u64, Vec<u64>) {
        let pos: Vec<u64> = last_weights.iter().filter(|&&w| w > 0).map(|&w| w as u64).collect();
        if pos.is_empty() {
            return (0, 0, vec![0; last_weights.len()]);
        }
        let g = pos.iter().fold(0, |acc, &w| gcd(acc, w));
        let mw = pos.iter().max().unwrap() / g;
        let tab_bits = u64::from(tab_index / 2);
        let rshift = bitlength(mw).saturating_sub(tab_bits);
        let t = last_weights
            .iter()
            .map(|&lw| {
                let q = if lw > 0 { (lw as u64 / g) >> rshift } else { 0 };
                if q == 0 { u64::from(lw != 0) } else { q }
            })
            .collect();
        (g, rshift, t)
    }

    /// §4–§6. `dests` = (addr, port, last_weight) in kernel list order. None = refused (> M).
    pub fn build(v6: bool, dests: &[(IpAddr, u16, i64)], tab_index: u8) -> Option<Ref> {
        let m = PRIMES[usize::from(tab_index - 8)];
        if dests.len() as u64 > m {
            return None;
        }
        let lws: Vec<i64> = dests.iter().map(|d| d.2).collect();
        let (g, rshift, turns) = turns(&lws, tab_index);
        let mut table = vec![-1i64; m as usize];
        if g == 0 {
            return Some(Ref { m, table, gcd: 0, rshift: 0 });
        }
        // Permutation of dest i: slot(j) = (offset_i + j * skip_i) mod M, j = 0, 1, 2, …
        let perm: Vec<(u64, u64)> = dests
            .iter()
            .map(|&(a, p, _)| {
                let offset = hashkey(v6, a, p, K1, 0) % m;
                let skip = hashkey(v6, a, p, K2, 0) % (m - 1) + 1;
                (offset, skip)
            })
            .collect();
        let mut j = vec![0u64; dests.len()];
        let mut n = 0u64;
        'rounds: loop {
            for i in 0..dests.len() {
                for _ in 0..turns[i] {
                    if n == m {
                        break 'rounds;
                    }
                    // Claim the first unfilled slot of dest i's permutation from j[i] on.
                    loop {
                        let (o, s) = perm[i];
                        let slot = ((o + j[i] * s) % m) as usize;
                        j[i] += 1;
                        if table[slot] == -1 {
                            table[slot] = i as i64;
                            break;
                        }
                    }
                    n += 1;
                }
            }
            if n == m {
                break;
            }
        }
        Some(Ref { m, table, gcd: g, rshift })
    }

    /// §7 with the client port already chosen. `avail[i]` = current weight > 0 and not overloaded.
    pub fn lookup(r: &Ref, v6: bool, avail: &[bool], client: IpAddr, port: u16, fb: bool) -> i64 {
        walk(r, v6, avail, client, port, fb).0
    }

    /// §7, also returning how many rehashes the fallback walk made (0 without one).
    pub fn walk(r: &Ref, v6: bool, avail: &[bool], client: IpAddr, port: u16, fb: bool) -> (i64, u64) {
        let slot = hashkey(v6, client, port, K1, 0) % r.m;
        let d = r.table[slot as usize];
        if d < 0 {
            return (-1, 0);
        }
        if avail[d as usize] {
            return (d, 0);
        }
        if !fb {
            return (-1, 0);
        }
        for o in 0..r.m {
            let rr = (slot + o) % r.m;
            let s2 = hashkey(v6, client, port, K1, rr) % r.m;
            let d = r.table[s2 as usize];
            if d < 0 {
                return (-1, o + 1);
            }
            if avail[d as usize] {
                return (d, o + 1);
            }
        }
        (-1, r.m)
    }

    /// maglevd's bounded lookup (`ipvs_mh` module docs, "Bounded lookup cost"): the kernel's
    /// answer whenever the kernel's walk needs at most `probes` rehashes; past that, the owner of
    /// the first slot at or after the client's slot whose owner is available. Returns the answer
    /// and whether it departs from the kernel's.
    pub fn bounded(r: &Ref, v6: bool, avail: &[bool], client: IpAddr, port: u16, fb: bool, probes: u64) -> (i64, bool) {
        let (kernel, rehashes) = walk(r, v6, avail, client, port, fb);
        if rehashes <= probes {
            return (kernel, false);
        }
        let slot = hashkey(v6, client, port, K1, 0) % r.m;
        let owner =
            (0..r.m).map(|k| r.table[((slot + k) % r.m) as usize]).find(|&d| d >= 0 && avail[d as usize]).unwrap_or(-1);
        (owner, owner != kernel)
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers for own cases
// ---------------------------------------------------------------------------------------------

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn ref_build(family: Family, dests: &[MhDest], tab_index: u8) -> reference::Ref {
    let rd: Vec<(IpAddr, u16, i64)> = dests.iter().map(|d| (d.addr, d.port, i64::from(d.last_weight))).collect();
    reference::build(family == Family::Inet6, &rd, tab_index).unwrap()
}

/// Deterministic pseudo-random clients (an LCG), plus the two wrap-around clients.
fn clients(v6: bool, n: usize) -> Vec<(IpAddr, u16)> {
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = move || {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        x
    };
    let mut out = if v6 {
        vec![(IpAddr::V6(Ipv6Addr::from(u128::MAX)), 65535), (IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0)]
    } else {
        vec![(v4(255, 255, 255, 255), 65535), (v4(0, 0, 0, 0), 0)]
    };
    for _ in 0..n {
        let a = if v6 {
            IpAddr::V6(Ipv6Addr::from((u128::from(next()) << 64) | u128::from(next())))
        } else {
            IpAddr::V4(Ipv4Addr::from((next() >> 32) as u32))
        };
        out.push((a, (next() >> 48) as u16));
    }
    out
}

/// The reference's answer for maglevd's bounded lookup: the kernel's whenever the kernel's
/// fallback walk is at most `FALLBACK_PROBES` rehashes long.
fn expected(r: &reference::Ref, v6: bool, avail: &[bool], client: IpAddr, port: u16, fb: bool) -> i64 {
    reference::bounded(r, v6, avail, client, port, fb, u64::from(ipvs_mh::FALLBACK_PROBES)).0
}

/// Module lookups == reference lookups for every client and all four flag combinations.
fn assert_lookups_match_reference(family: Family, dests: &[MhDest], t: &MhTable, n: usize) {
    let r = ref_build(family, dests, t.tab_index());
    let avail: Vec<bool> = dests.iter().map(|d| d.weight > 0 && !d.overloaded).collect();
    for (c, port) in clients(family == Family::Inet6, n) {
        for (p, f) in FLAGS {
            let want = expected(&r, family == Family::Inet6, &avail, c, if p { port } else { 0 }, f);
            let got = t.lookup(dests, c, port, flags(p, f), true);
            assert_eq!(opt_i64(got), want, "client {c}:{port} mh_port={p} mh_fallback={f}");
        }
    }
}

fn seed_case() -> Case {
    cases().into_iter().find(|c| c.name == "seed_6dests").expect("seed_6dests present")
}

/// Slots whose owner *address* differs between two tables (indexes shift when the list changes).
fn moved_by_addr(a: &MhTable, ad: &[MhDest], b: &[i64], bd: &[MhDest]) -> usize {
    a.slots().iter().zip(b).filter(|&(&x, &y)| ad[x as usize].addr != bd[y as usize].addr).count()
}

// ---------------------------------------------------------------------------------------------
// Own cases
// ---------------------------------------------------------------------------------------------

/// §9: `ipvsadm -e … -w 0` only changes the current weight; last_weight stays 1, so the table is
/// slot-for-slot the seed table. Clients whose slot belongs to the drained dest get no
/// destination without mh-fallback and a *different* dest with it.
#[test]
fn drain_by_edit_to_zero_keeps_table() {
    let seed = seed_case();
    let mut dests = mh_dests(&seed);
    let drained = 2; // 10.200.0.251
    dests[drained].edit_weight(0);
    assert_eq!((dests[drained].weight, dests[drained].last_weight), (0, 1));

    let t = ipvs_mh::build(Family::Inet, &dests, 12).unwrap();
    assert_eq!(as_i64(&t), seed.table, "drain must not change the table");

    // Pick clients whose primary slot (no mh-port) is owned by the drained dest, using the
    // kernel-verified seed table from the JSON rather than the module's own slot function.
    let r = ref_build(Family::Inet, &dests, 12);
    let avail: Vec<bool> = dests.iter().map(MhDest::is_available).collect();
    let mut hits = 0;
    for (c, port) in clients(false, 400) {
        let primary = reference::lookup(&r, false, &[true; 6], c, 0, false);
        assert_eq!(primary, seed.table[t.slot_of(c, 0) as usize]);
        if primary != drained as i64 {
            continue;
        }
        hits += 1;
        assert_eq!(t.lookup(&dests, c, port, MhFlags::default(), true), None, "{c}");
        let fb = t.lookup(&dests, c, port, flags(false, true), true);
        assert!(fb.is_some() && fb != Some(drained), "{c}: fallback gave {fb:?}");
        assert_eq!(opt_i64(fb), expected(&r, false, &avail, c, 0, true));
    }
    // 400 random clients over 6 equal dests: ~67 expected on the drained one.
    assert!(hits >= 30, "only {hits} clients hit the drained dest");
    assert_lookups_match_reference(Family::Inet, &dests, &t, 200);
}

/// §8.1: `ipvsadm -d` then `-a` of the same dest puts it at the list head. Seed order is
/// [.253, .252, .251, .250, .249, .248]; re-adding .250 gives [.250, .253, .252, .251, .249, .248].
/// Spec numbers for the seed (§8.4, §9): deleting the dest that owns 682 slots moves 738 slots
/// (`delete_one`; of the six seed dests only .250 gives exactly 738), and delete + re-add of a
/// seed dest changes 10 slots. Both are checked here by owner address, since indexes shift.
#[test]
fn delete_then_readd_moves_dest_to_head() {
    let seed = seed_case();
    let seed_dests = mh_dests(&seed);
    let mut dests = seed_dests.clone();
    let d = dests.remove(3);
    assert_eq!(d.addr, v4(10, 200, 0, 250));
    assert_eq!(seed.table.iter().filter(|&&s| s == 3).count(), 682);

    // After the delete alone: 5 dests, the table is rebuilt and matches the reference.
    let t_del = ipvs_mh::build(Family::Inet, &dests, 12).unwrap();
    assert_eq!(as_i64(&t_del), ref_build(Family::Inet, &dests, 12).table);
    assert!(!t_del.slots().contains(&5), "only indexes 0..5 after delete");
    assert_eq!(moved_by_addr(&t_del, &dests, &seed.table, &seed_dests), 738);

    // Re-add: at the head.
    dests.insert(0, d);
    let t = ipvs_mh::build(Family::Inet, &dests, 12).unwrap();
    assert_eq!(as_i64(&t), ref_build(Family::Inet, &dests, 12).table);
    assert_eq!(moved_by_addr(&t, &dests, &seed.table, &seed_dests), 10);
    assert_lookups_match_reference(Family::Inet, &dests, &t, 100);
}

/// §8.4: "reversing A changes 5 of 4093 slots". Configuration A in kernel order is
/// [.3, .2, .1]; reversed it is [.1, .2, .3]. Compared by address.
#[test]
fn reversing_config_a_changes_five_slots() {
    let a = cases().into_iter().find(|c| c.name == "A_3dests_w1").expect("A present");
    let fwd = mh_dests(&a);
    let mut rev = fwd.clone();
    rev.reverse();
    let t = ipvs_mh::build(Family::Inet, &rev, 12).unwrap();
    assert_eq!(moved_by_addr(&t, &rev, &a.table, &fwd), 5);
}

/// §5: weights 65535/3000/1000/1 → gcd 1, mw 65535 has bitlength 16, TAB_BITS 6, rshift 10;
/// turns 63/2/1/1 (1000 >> 10 = 0 and 1 >> 10 = 0 both become 1). Slot counts must follow the
/// reference, and with these turns the first dest owns the bulk (63/67 of slots ≈ 3850).
#[test]
fn large_weights_with_rshift() {
    let w = [65535, 3000, 1000, 1];
    assert_eq!(reference::turns(&w.map(i64::from), 12), (1, 10, vec![63, 2, 1, 1]));
    let dests: Vec<MhDest> = w.iter().zip(1u8..).map(|(&w, i)| MhDest::new(v4(10, 1, 0, i), 8080, w)).collect();
    let t = ipvs_mh::build(Family::Inet, &dests, 12).unwrap();
    assert_eq!((t.gcd(), t.rshift()), (1, 10));
    let s = t.weight_scale().unwrap();
    assert_eq!(w.map(|x| s.turns(x)), [63, 2, 1, 1]);
    let r = ref_build(Family::Inet, &dests, 12);
    assert_eq!(as_i64(&t), r.table);
    let mut counts = [0usize; 4];
    for &x in t.slots() {
        counts[x as usize] += 1;
    }
    assert!(counts[0] > 3700, "{counts:?}");
    // Weight 1000 and weight 1 get about the same share: the distortion the spec warns about.
    assert!(counts[2].abs_diff(counts[3]) < 30, "{counts:?}");
    assert_lookups_match_reference(Family::Inet, &dests, &t, 200);
}

/// §3 wrap-around: 255.255.255.255:65535 gives v = 0xFFFFFFFF + 65535 ≡ 65534, and 0.0.0.0:0
/// gives v = 0; in the fallback walk the offset r is added on top and wraps as well. With every
/// dest but one drained, the fallback walk is long, so wrap errors would show.
#[test]
fn wraparound_clients_with_long_fallback_walks() {
    let mut dests: Vec<MhDest> = (1u8..=8).map(|i| MhDest::new(v4(172, 16, 0, i), 443, 1)).collect();
    for d in dests.iter_mut().skip(1) {
        d.edit_weight(0);
    }
    let t = ipvs_mh::build(Family::Inet, &dests, 12).unwrap();
    let r = ref_build(Family::Inet, &dests, 12);
    assert_eq!(as_i64(&t), r.table);
    let avail: Vec<bool> = dests.iter().map(MhDest::is_available).collect();
    for (c, port) in [(v4(255, 255, 255, 255), 65535u16), (v4(0, 0, 0, 0), 0), (v4(255, 255, 255, 255), 0)] {
        for (p, f) in FLAGS {
            let want = expected(&r, false, &avail, c, if p { port } else { 0 }, f);
            assert_eq!(opt_i64(t.lookup(&dests, c, port, flags(p, f), true)), want, "{c}:{port}");
        }
        // With fallback the only available dest is always found (table is full).
        assert_eq!(t.lookup(&dests, c, port, flags(true, true), true), Some(0));
    }
    // The primary slot of 255.255.255.255:65535 with mh-port is H(K1, 65534) mod M.
    let want = ipvs_mh::hsiphash(ipvs_mh::K1, &65534u32.to_le_bytes()) % 4093;
    assert_eq!(t.slot_of(v4(255, 255, 255, 255), 65535), want);
}

/// An IPv6 service: every address is folded as the XOR of its four big-endian words. Includes a
/// dest added with weight 0 (no slots), a drained dest and an overloaded one.
#[test]
fn ipv6_service() {
    let addr = |i: u16| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0x10, 0, 0, 0, i));
    // Added in order ::1 … ::6, so kernel order is ::6 first.
    let mut dests: Vec<MhDest> = (1u16..=6).rev().map(|i| MhDest::new(addr(i), 443, i32::from(i) * 10)).collect();
    dests[1].edit_weight(0); // drained: keeps its slots
    dests[4] = MhDest::new(dests[4].addr, 443, 0); // added with weight 0: no slots
    dests[2].overloaded = true;
    let t = ipvs_mh::build(Family::Inet6, &dests, 12).unwrap();
    assert_eq!(t.family(), Family::Inet6);
    let r = ref_build(Family::Inet6, &dests, 12);
    assert_eq!((u64::from(t.gcd()), u64::from(t.rshift())), (r.gcd, r.rshift));
    assert_eq!((t.gcd(), t.rshift()), (10, 0));
    assert_eq!(as_i64(&t), r.table);
    assert!(!t.slots().contains(&4));
    assert!(t.slots().contains(&1));
    assert_lookups_match_reference(Family::Inet6, &dests, &t, 300);

    // 2001:db8::1 folds like 32.1.13.185.
    assert_eq!(ipvs_mh::fold(Family::Inet6, "2001:db8::1".parse().unwrap()), 0x2001_0db9);
}

/// The protocol gate of §7: without ports (e.g. ICMP-only or other protocols) mh-port is ignored.
#[test]
fn mh_port_needs_a_port_protocol() {
    let seed = seed_case();
    let dests = mh_dests(&seed);
    let t = ipvs_mh::build(Family::Inet, &dests, 12).unwrap();
    for l in &seed.lookups {
        let got = t.lookup(&dests, l.client_addr, l.client_port, flags(true, false), false);
        assert_eq!(opt_i64(got), l.dest_no_flags);
    }
}

/// The bounded lookup agrees with the kernel on every client whose kernel fallback walk is at most
/// `FALLBACK_PROBES` rehashes, and departs (deterministically, to the next available slot owner)
/// only past that. Swept over how much of the table is available.
#[test]
fn fallback_departs_from_the_kernel_only_past_the_probe_limit() {
    let mut all: Vec<MhDest> = (1u8..=24).map(|i| MhDest::new(v4(10, 9, 0, i), 80, 1)).collect();
    let t = ipvs_mh::build(Family::Inet, &all, 12).unwrap();
    let r = ref_build(Family::Inet, &all, 12);
    let k = u64::from(ipvs_mh::FALLBACK_PROBES);
    for available in [1usize, 2, 3, 6, 12, 23] {
        for (i, d) in all.iter_mut().enumerate() {
            d.edit_weight(if i < available { 1 } else { 0 });
        }
        let avail: Vec<bool> = all.iter().map(MhDest::is_available).collect();
        let (mut within, mut past, mut departed) = (0, 0, 0);
        for (c, port) in clients(false, 3000) {
            for p in [false, true] {
                let port = if p { port } else { 0 };
                let (kernel, rehashes) = reference::walk(&r, false, &avail, c, port, true);
                let (want, departs) = reference::bounded(&r, false, &avail, c, port, true, k);
                let got = opt_i64(t.lookup(&all, c, port, flags(p, true), true));
                assert_eq!(got, want, "{available} of 24 available, client {c}:{port}");
                if rehashes <= k {
                    within += 1;
                    assert_eq!(got, kernel, "within the probe limit the kernel's answer, client {c}:{port}");
                } else {
                    past += 1;
                    departed += usize::from(departs);
                }
            }
        }
        println!(
            "{available:>2} of 24 available: {within} lookups within {k} rehashes (= kernel), {past} past it, \
             {departed} of those pick another dest than the kernel"
        );
        if available == 1 {
            assert!(past > 0, "the sweep must exercise the departure");
        }
        if available >= 12 {
            assert_eq!(past, 0);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Randomised cross-check against the reference (small tables so debug builds stay fast)
// ---------------------------------------------------------------------------------------------

fn arb_dests() -> impl Strategy<Value = Vec<(u32, u16, i32, i32, bool)>> {
    // (addr bits, port, weight, last_weight, overloaded); small address/port ranges make
    // (addr + port) collisions likely, and weight/last_weight are independent to cover drains.
    prop::collection::vec(
        (
            0u32..64,
            prop_oneof![Just(80u16), Just(81u16), 0u16..4],
            prop_oneof![Just(0i32), 1i32..5, Just(-1i32), 1000i32..70_000],
            prop_oneof![Just(0i32), 1i32..5, 1000i32..70_000],
            prop::bool::weighted(0.15),
        ),
        0..24,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn random_services_match_reference(
        raw in arb_dests(),
        tab_index in 8u8..=9,
        v6 in any::<bool>(),
    ) {
        let family = if v6 { Family::Inet6 } else { Family::Inet };
        let dests: Vec<MhDest> = raw
            .iter()
            .map(|&(a, port, weight, last_weight, overloaded)| MhDest {
                addr: if v6 {
                    IpAddr::V6(Ipv6Addr::from(0x2001_0db8_0000_0000_0000_0000_0a00_0000u128 + u128::from(a)))
                } else {
                    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + a))
                },
                port,
                weight,
                last_weight,
                overloaded,
            })
            .collect();
        let t = ipvs_mh::build(family, &dests, tab_index).unwrap();
        let r = ref_build(family, &dests, tab_index);
        prop_assert_eq!(&as_i64(&t), &r.table);
        prop_assert_eq!((u64::from(t.gcd()), u64::from(t.rshift())), (r.gcd, r.rshift));
        let avail: Vec<bool> = dests.iter().map(|d| d.weight > 0 && !d.overloaded).collect();
        for (c, port) in clients(v6, 24) {
            for (p, f) in FLAGS {
                let want = expected(&r, v6, &avail, c, if p { port } else { 0 }, f);
                prop_assert_eq!(opt_i64(t.lookup(&dests, c, port, flags(p, f), true)), want);
            }
        }
    }
}
