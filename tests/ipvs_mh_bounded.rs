//! An ipvs-mh lookup costs a small, fixed number of hash evaluations in every backend state,
//! including the states where the kernel's `mh-fallback` walk visits every slot: no destination
//! available (start-up before ARP resolves, everything drained) and almost none available. Cost
//! is measured by counting `hashkey` evaluations ([`MhTable::lookup_counted`]), not by timing.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use maglevd::config;
use maglevd::ipvs_mh::{self, Family, MhDest, MhTable};
use maglevd::table::ServiceTable;

/// The most hash evaluations a lookup may cost: the primary slot plus a small constant.
const MAX_EVALUATIONS: u32 = 1 + ipvs_mh::FALLBACK_PROBES;

// The bound stays a small constant (checked when the tests compile).
const _: () = assert!(ipvs_mh::FALLBACK_PROBES <= 64);

/// Deterministic pseudo-random (client fold, client port) pairs (an LCG).
fn clients(n: usize) -> impl Iterator<Item = (u32, u16)> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    std::iter::repeat_with(move || {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        ((x >> 32) as u32, (x >> 16) as u16)
    })
    .take(n)
}

fn dests(n: u8) -> Vec<MhDest> {
    (1..=n).map(|i| MhDest::new(IpAddr::V4(Ipv4Addr::new(10, 200, 0, i)), 80, 1)).collect()
}

/// An ipvs-mh service with `n` backends, M = 131071, `mh-fallback` and `mh-port`.
fn service(n: u8, weight: u32) -> config::Service {
    let mut t = String::from(
        "[interfaces]\ningress = \"net1\"\negress = \"net2\"\n[[service]]\nvip = \"10.201.0.1\"\nprotocol = \"tcp\"\n\
         port = 80\nalgorithm = \"ipvs-mh\"\nipvs_tab_index = 17\nipvs_flags = [\"mh-fallback\", \"mh-port\"]\n",
    );
    for i in 1..=n {
        t.push_str(&format!("[[service.backend]]\nip = \"10.200.0.{i}\"\nweight = {weight}\nlast_weight = 1\n"));
    }
    config::parse(&t, Path::new("bounded.toml")).unwrap().services.remove(0)
}

fn worst(table: &MhTable, state: &ipvs_mh::MhAvailability, n: usize) -> (u32, u64, Vec<Option<usize>>) {
    let (mut max, mut sum, mut got) = (0, 0u64, Vec::new());
    for (fold, port) in clients(n) {
        let (d, e) = table.lookup_counted(fold, port, true, state);
        max = max.max(e);
        sum += u64::from(e);
        got.push(d);
    }
    (max, sum, got)
}

/// Every destination unavailable (drained, or not reachable yet) with M = 131071: the kernel
/// walks all 131071 slots per packet; maglevd answers "no destination" at once.
#[test]
fn no_available_destination_costs_at_most_one_evaluation() {
    // Drained with `ipvsadm -e -w 0`: the table keeps its slots, nobody is available.
    let mut d = dests(6);
    for x in &mut d {
        x.edit_weight(0);
    }
    let t = ipvs_mh::build(Family::Inet, &d, 17).unwrap();
    assert_eq!(t.size(), 131_071);
    assert!(!t.is_empty());
    let state = t.availability(|i| d[i].is_available());
    let (max, sum, got) = worst(&t, &state, 2000);
    println!("all drained, M = 131071: max {max} evaluations per lookup, total {sum} over 2000 lookups");
    assert!(got.iter().all(Option::is_none));
    assert!(max <= 1, "{max} hash evaluations for a lookup with no destination available");

    // The data plane's state before ARP resolves: weights > 0, no backend reachable; and with
    // every backend drained by weight 0 in the configuration.
    for (svc, reachable) in [(service(6, 1), false), (service(6, 0), true)] {
        let ServiceTable::IpvsMh(m) = ServiceTable::build(&svc, |_| reachable).unwrap() else { unreachable!() };
        let (max, _, got) = worst(&m.table, &m.state, 2000);
        assert!(got.iter().all(Option::is_none));
        assert!(max <= 1, "{max} hash evaluations (reachable {reachable})");
        assert_eq!(m.lookup_v4(0x0a00_0001, 1234), None);
    }
}

/// One destination of many available: whatever the client, a lookup finds it within the bound.
#[test]
fn one_available_destination_of_many_is_found_within_the_bound() {
    let mut d = dests(64);
    for x in d.iter_mut().skip(1) {
        x.edit_weight(0);
    }
    let t = ipvs_mh::build(Family::Inet, &d, 17).unwrap();
    let state = t.availability(|i| d[i].is_available());
    let n = 20_000;
    let (max, sum, got) = worst(&t, &state, n);
    println!(
        "1 of 64 available, M = 131071: max {max} evaluations per lookup, mean {:.2} over {n} clients",
        sum as f64 / n as f64
    );
    assert!(got.iter().all(|&x| x == Some(0)), "the only available destination must always be found");
    assert!(max <= MAX_EVALUATIONS, "{max} hash evaluations for one lookup");
}
