//! Unit tests of the snapshot and the flow hash; the packet fixtures and property tests are in
//! `tests/forward_fixtures.rs` and `tests/forward_props.rs`.

use super::*;
use crate::config::{self, Config};
use crate::wire::MacAddr;
use std::net::Ipv4Addr;
use std::path::Path;

const CFG: &str = r#"
[interfaces]
ingress = "net1"
egress = "net2"
[[service]]
vip = "10.201.0.1"
protocol = "tcp"
port = 80
[[service.backend]]
ip = "10.0.0.1"
[[service.backend]]
ip = "10.0.0.2"
[[service.backend]]
ip = "10.0.0.3"
mac = "02:00:00:00:00:33"
[[service]]
vip = "10.201.0.9"
protocol = "udp"
port = "all"
[[service.backend]]
ip = "10.0.0.1"
"#;

fn cfg() -> Config {
    config::parse(CFG, Path::new("t.toml")).unwrap()
}

fn links() -> Links {
    Links { ingress_mac: MacAddr([2, 0, 0, 0, 0xee, 1]), egress_mac: MacAddr([2, 0, 0, 0, 0xee, 2]) }
}

fn resolved(b: &crate::config::Backend) -> Option<MacAddr> {
    b.ipv4().map(|ip| MacAddr([2, 0, 0, 0, 0, ip.octets()[3]]))
}

fn addr(s: &str) -> u32 {
    u32::from(s.parse::<Ipv4Addr>().unwrap())
}

#[test]
fn static_mac_wins_and_unresolved_backends_get_no_slots() {
    let s = Snapshot::build(&cfg(), links(), &|_| None, 7).unwrap();
    assert_eq!(s.generation(), 7);
    let web = s.service_state(0).unwrap();
    // Only the backend with a static MAC is usable.
    assert_eq!(web.backends.iter().filter(|b| b.usable()).count(), 1);
    assert_eq!(web.table.shares(3), vec![0, 0, 65537]);
    assert_eq!(s.backend_mac(0, 2), Some(MacAddr([2, 0, 0, 0, 0, 0x33])));
    assert_eq!(s.backend_mac(0, 0), None);
    // The UDP service has no usable backend at all: an empty table, so lookups miss.
    assert!(s.service_state(1).unwrap().table.is_empty());

    let s = Snapshot::build(&cfg(), links(), &resolved, 8).unwrap();
    assert_eq!(s.backend_mac(0, 0), Some(MacAddr([2, 0, 0, 0, 0, 1])));
    assert_eq!(s.backend_mac(0, 2), Some(MacAddr([2, 0, 0, 0, 0, 0x33])));
    assert_eq!(s.backend_mac(0, 3), None);
    assert_eq!(s.backend_mac(9, 0), None);
    assert!(s.service_state(9).is_none());
}

#[test]
fn service_lookup() {
    let s = Snapshot::build(&cfg(), links(), &resolved, 1).unwrap();
    let (web, dns) = (addr("10.201.0.1"), addr("10.201.0.9"));
    assert!(s.is_vip(web) && s.is_vip(dns));
    assert!(!s.is_vip(addr("10.201.0.2")));
    assert_eq!(s.service(web, 6, 80), Some(0));
    assert_eq!(s.service(web, 6, 81), None);
    assert_eq!(s.service(web, 17, 80), None);
    assert_eq!(s.service(dns, 17, 1), Some(1));
    assert_eq!(s.service(dns, 17, 65535), Some(1));
    assert_eq!(s.service(dns, 6, 53), None);
    // Fragment services: the only TCP service of the web VIP; the all-ports UDP service.
    assert_eq!(s.fragment_service(web, 6), Some(0));
    assert_eq!(s.fragment_service(dns, 17), Some(1));
    assert_eq!(s.fragment_service(web, 17), None);
}

#[test]
fn flow_hash_uses_exactly_the_documented_fields() {
    let (a, b) = (addr("192.168.1.1"), addr("10.201.0.1"));
    let h = |k, src, dst, proto, sp, dp| flow_hash(k, src, dst, proto, sp, dp);
    // src-ip ignores everything but the source address.
    assert_eq!(h(FlowKey::SrcIp, a, b, 6, 1, 2), h(FlowKey::SrcIp, a, 0, 17, 9, 9));
    assert_ne!(h(FlowKey::SrcIp, a, b, 6, 1, 2), h(FlowKey::SrcIp, a + 1, b, 6, 1, 2));
    // src-ip-port adds the source port only.
    assert_eq!(h(FlowKey::SrcIpPort, a, b, 6, 1, 2), h(FlowKey::SrcIpPort, a, 0, 17, 1, 9));
    assert_ne!(h(FlowKey::SrcIpPort, a, b, 6, 1, 2), h(FlowKey::SrcIpPort, a, b, 6, 2, 2));
    // 5-tuple uses all five.
    let base = h(FlowKey::FiveTuple, a, b, 6, 1, 2);
    for other in [
        h(FlowKey::FiveTuple, a + 1, b, 6, 1, 2),
        h(FlowKey::FiveTuple, a, b + 1, 6, 1, 2),
        h(FlowKey::FiveTuple, a, b, 17, 1, 2),
        h(FlowKey::FiveTuple, a, b, 6, 3, 2),
        h(FlowKey::FiveTuple, a, b, 6, 1, 3),
    ] {
        assert_ne!(base, other);
    }
    // The layout is the documented byte string, hashed with the documented seed.
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&a.to_be_bytes());
    bytes.extend_from_slice(&b.to_be_bytes());
    bytes.push(6);
    bytes.extend_from_slice(&1u16.to_be_bytes());
    bytes.extend_from_slice(&2u16.to_be_bytes());
    assert_eq!(base, xxhash_rust::xxh3::xxh3_64_with_seed(&bytes, u64::from_le_bytes(*b"mlvflow1")));
}

#[test]
fn two_frontends_with_the_same_config_agree() {
    // Built twice (as on two frontends), with the backends listed in another order on the second.
    let mut reordered = cfg();
    reordered.services[0].backends.reverse();
    let s1 = Snapshot::build(&cfg(), links(), &resolved, 1).unwrap();
    let s2 = Snapshot::build(&reordered, links(), &resolved, 99).unwrap();
    let (t1, t2) = (&s1.service_state(0).unwrap(), &s2.service_state(0).unwrap());
    for slot in 0..t1.table.size() as usize {
        let ip1 = t1.backends[t1.table.slots()[slot] as usize].ip;
        let ip2 = t2.backends[t2.table.slots()[slot] as usize].ip;
        assert_eq!(ip1, ip2, "slot {slot}");
    }
}

#[test]
fn flows_spread_evenly() {
    let s = Snapshot::build(&cfg(), links(), &resolved, 1).unwrap();
    let web = s.service_state(0).unwrap();
    let mut counts = [0u32; 3];
    let n = 30_000u32;
    for i in 0..n {
        let h =
            flow_hash(FlowKey::FiveTuple, 0xc0a8_0000 + (i % 251), addr("10.201.0.1"), 6, 1024 + (i / 251) as u16, 80);
        let crate::table::ServiceTable::Maglev(table) = &*web.table else { panic!("a maglev service") };
        counts[table.lookup(h).unwrap() as usize] += 1;
    }
    for c in counts {
        let share = c as f64 / n as f64;
        assert!((share - 1.0 / 3.0).abs() < 0.02, "{counts:?}");
    }
}

#[test]
fn reason_names_are_unique_snake_case() {
    let mut names: Vec<&str> =
        DropReason::ALL.iter().map(|r| r.name()).chain(PassReason::ALL.iter().map(|r| r.name())).collect();
    assert!(names.iter().all(|n| n.chars().all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit())));
    let before = names.len();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), before);
    for (i, r) in DropReason::ALL.iter().enumerate() {
        assert_eq!(r.index(), i);
    }
    assert_eq!(DropReason::COUNT, DropReason::ALL.len());
}
