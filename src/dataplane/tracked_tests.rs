//! Connection tracking in the forwarding decision ([`forward_tracked`]): what a tracked flow
//! keeps across backend changes, drains, health and fragments. Time is injected ([`Tick`]).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

use etherparse::PacketBuilder;

use super::*;
use crate::config::{self, Backend, Config, Service};
use crate::flow::{Timeouts, Tracker};
use crate::wire::MacAddr;

const INGRESS: [u8; 6] = [2, 0, 0, 0, 0xee, 1];
const ROUTER: [u8; 6] = [2, 0, 0, 0, 9, 9];
const VIP: [u8; 4] = [10, 201, 0, 1];

fn links() -> Links {
    Links { ingress_mac: MacAddr(INGRESS), egress_mac: MacAddr([2, 0, 0, 0, 0xee, 2]) }
}

/// A web service on VIP:80 with these backends (`ip` or `ip weight`), and `extra` service keys.
fn cfg(backends: &[&str], extra: &str) -> Config {
    let mut text = format!(
        "[interfaces]\ningress = \"net1\"\negress = \"net2\"\n[[service]]\nname = \"web\"\nvip = \"10.201.0.1\"\nprotocol = \"tcp\"\nport = 80\n{extra}\n"
    );
    for b in backends {
        let mut parts = b.split(' ');
        let ip = parts.next().unwrap();
        text += &format!("[[service.backend]]\nip = \"{ip}\"\n");
        if let Some(w) = parts.next() {
            text += &format!("weight = {w}\n");
        }
    }
    config::parse(&text, Path::new("t.toml")).unwrap()
}

fn mac_of(b: &Backend) -> Option<MacAddr> {
    b.ipv4().map(|ip| MacAddr([2, 0, 0, 0, 0, ip.octets()[3]]))
}

/// Snapshots built one after another with the same ids, as the daemon builds them.
struct Builder {
    state: BuildState,
    generation: u64,
}

impl Builder {
    fn new() -> Builder {
        Builder { state: BuildState::default(), generation: 0 }
    }

    fn build(&mut self, cfg: &Config, down: &[&str]) -> Snapshot {
        self.generation += 1;
        let healthy = |_: &Service, b: &Backend| !down.contains(&b.ip.to_string().as_str());
        Snapshot::build_observed(cfg, links(), &mac_of, &healthy, self.generation, &mut self.state).unwrap()
    }
}

fn tracker() -> Tracker {
    Tracker::new(4096, Timeouts::default(), std::time::Duration::from_secs(5))
}

fn tcp(sport: u16, flags: &str) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2(ROUTER, INGRESS).ipv4([192, 168, 1, 1], VIP, 64).tcp(sport, 80, 1, 512);
    for f in flags.chars() {
        b = match f {
            'S' => b.syn(),
            'A' => b.ack(2),
            'F' => b.fin(),
            'R' => b.rst(),
            _ => b,
        };
    }
    let mut v = Vec::new();
    b.write(&mut v, &[]).unwrap();
    v
}

/// The backend IP a frame is forwarded to (`None`: not forwarded).
fn to(snap: &Snapshot, v: Verdict) -> Option<Ipv4Addr> {
    match v {
        Verdict::Forward { service, backend } => {
            Some(snap.service_state(service).unwrap().backends[backend as usize].ip)
        }
        _ => None,
    }
}

fn send(snap: &Snapshot, t: &mut Tracker, frame: &[u8], now: u32) -> Option<Ipv4Addr> {
    let mut f = frame.to_vec();
    to(snap, forward_tracked(&mut f, &FrameMeta::default(), snap, t, Tick::from_secs(now)))
}

fn untracked(snap: &Snapshot, frame: &[u8]) -> Option<Ipv4Addr> {
    let mut f = frame.to_vec();
    to(snap, forward(&mut f, snap))
}

/// Open `n` flows (source ports 40000..) under `snap`; their backends.
fn open(snap: &Snapshot, t: &mut Tracker, n: u16) -> BTreeMap<u16, Ipv4Addr> {
    (0..n).map(|i| (40000 + i, send(snap, t, &tcp(40000 + i, "S"), 0).unwrap())).collect()
}

#[test]
fn an_added_backend_moves_no_tracked_flow_but_takes_its_share_of_new_ones() {
    let mut b = Builder::new();
    let s1 = b.build(&cfg(&["10.0.0.1", "10.0.0.2", "10.0.0.3"], ""), &[]);
    let mut t = tracker();
    let flows = open(&s1, &mut t, 300);
    let s2 = b.build(&cfg(&["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"], ""), &[]);
    let remapped = flows.keys().filter(|p| untracked(&s2, &tcp(**p, "A")) != Some(flows[p])).count();
    assert!(remapped > 30, "the new table moves about a quarter of the flows: {remapped}");
    for (p, was) in &flows {
        assert_eq!(send(&s2, &mut t, &tcp(*p, "A"), 1), Some(*was), "tracked flow {p} kept its backend");
    }
    // New flows follow the new table, the new backend included.
    let new = open(&s2, &mut t, 0);
    assert!(new.is_empty());
    let newcomer: Vec<_> = (50000..50300).filter_map(|p| send(&s2, &mut t, &tcp(p, "S"), 1)).collect();
    assert!(newcomer.iter().any(|ip| ip.octets()[3] == 4), "the added backend gets new flows");
    assert_eq!(t.rechosen, 0);
}

#[test]
fn a_drained_backend_keeps_its_flows_and_gets_no_new_ones() {
    let mut b = Builder::new();
    let s1 = b.build(&cfg(&["10.0.0.1", "10.0.0.2", "10.0.0.3"], ""), &[]);
    let mut t = tracker();
    let flows = open(&s1, &mut t, 300);
    let on_2: Vec<u16> = flows.iter().filter(|(_, ip)| ip.octets()[3] == 2).map(|(p, _)| *p).collect();
    assert!(on_2.len() > 50);
    let s2 = b.build(&cfg(&["10.0.0.1", "10.0.0.2 0", "10.0.0.3"], ""), &[]);
    for p in &on_2 {
        assert_eq!(send(&s2, &mut t, &tcp(*p, "A"), 1), Some(Ipv4Addr::new(10, 0, 0, 2)), "drain keeps flow {p}");
    }
    for p in 50000..50300 {
        assert_ne!(
            send(&s2, &mut t, &tcp(p, "S"), 1),
            Some(Ipv4Addr::new(10, 0, 0, 2)),
            "new flow {p} to a drained backend"
        );
    }
}

/// A client that closes a connection and opens a new one from the same port (a pure SYN on the
/// old entry) opens a new connection: not on a drained backend, which only keeps what it has.
#[test]
fn a_reused_port_opens_no_new_connection_on_a_drained_backend() {
    let mut b = Builder::new();
    let s1 = b.build(&cfg(&["10.0.0.1", "10.0.0.2", "10.0.0.3"], ""), &[]);
    let mut t = tracker();
    let flows = open(&s1, &mut t, 300);
    let on_2: Vec<u16> = flows.iter().filter(|(_, ip)| ip.octets()[3] == 2).map(|(p, _)| *p).collect();
    let s2 = b.build(&cfg(&["10.0.0.1", "10.0.0.2 0", "10.0.0.3"], ""), &[]);
    let two = Some(Ipv4Addr::new(10, 0, 0, 2));
    for (n, p) in on_2.iter().enumerate() {
        // Half of them closed first (FIN, then RST), the others reuse an open entry.
        if n % 2 == 0 {
            assert_eq!(send(&s2, &mut t, &tcp(*p, "FA"), 1), two);
            assert_eq!(send(&s2, &mut t, &tcp(*p, "R"), 1), two);
        }
        let again = send(&s2, &mut t, &tcp(*p, "S"), 2);
        assert_ne!(again, two, "a new connection from port {p} reached the drained backend");
        assert_eq!(again, untracked(&s2, &tcp(*p, "S")), "port {p}: the table's backend");
        assert_eq!(send(&s2, &mut t, &tcp(*p, "A"), 2), again, "port {p}: the new connection stays");
    }
    assert_eq!(t.rechosen, on_2.len() as u64);
    // A SYN retransmitted on a backend that still takes new flows stays where it is.
    let s3 = b.build(&cfg(&["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"], ""), &[]);
    for (p, was) in flows.iter().filter(|(p, _)| !on_2.contains(p)) {
        assert_eq!(send(&s3, &mut t, &tcp(*p, "S"), 3), Some(*was), "SYN of flow {p} kept its backend");
    }
}

#[test]
fn a_removed_or_failed_backend_loses_its_flows_to_the_table() {
    let mut b = Builder::new();
    let three = cfg(&["10.0.0.1", "10.0.0.2", "10.0.0.3"], "");
    let s1 = b.build(&three, &[]);
    let mut t = tracker();
    let flows = open(&s1, &mut t, 300);
    let on = |n: u8| flows.iter().filter(|(_, ip)| ip.octets()[3] == n).count();
    // 10.0.0.2 fails its health check: its flows go where the table says now, the others stay.
    let s2 = b.build(&three, &["10.0.0.2"]);
    for (p, was) in &flows {
        let now = send(&s2, &mut t, &tcp(*p, "A"), 1).unwrap();
        if was.octets()[3] == 2 {
            assert_eq!(Some(now), untracked(&s2, &tcp(*p, "A")), "flow {p} moved where the table says");
        } else {
            assert_eq!(now, *was, "flow {p} of a healthy backend stayed");
        }
    }
    assert_eq!(t.rechosen as usize, on(2));
    // They stay on their new backend when 10.0.0.2 comes back (it would move them again).
    let s3 = b.build(&three, &[]);
    for (p, was) in &flows {
        let now = send(&s3, &mut t, &tcp(*p, "A"), 2).unwrap();
        assert_ne!(now.octets()[3], 2, "flow {p} ({was}) did not move back");
    }
    // 10.0.0.3 is removed from the configuration: the same.
    let s4 = b.build(&cfg(&["10.0.0.1", "10.0.0.2"], ""), &[]);
    for p in flows.keys() {
        assert_ne!(send(&s4, &mut t, &tcp(*p, "A"), 3).unwrap().octets()[3], 3);
    }
}

#[test]
fn reordered_backends_keep_their_flows() {
    let mut b = Builder::new();
    let s1 = b.build(&cfg(&["10.0.0.1", "10.0.0.2", "10.0.0.3"], ""), &[]);
    let mut t = tracker();
    let flows = open(&s1, &mut t, 200);
    // Another order and a weight change: indices move, identities do not.
    let s2 = b.build(&cfg(&["10.0.0.3 5", "10.0.0.1", "10.0.0.2"], ""), &[]);
    for (p, was) in &flows {
        assert_eq!(send(&s2, &mut t, &tcp(*p, "A"), 1), Some(*was));
    }
}

#[test]
fn every_backend_down_drops_or_forwards_to_all_by_policy() {
    let mut b = Builder::new();
    let all = ["10.0.0.1", "10.0.0.2"];
    let s = b.build(&cfg(&all, ""), &all);
    assert!(s.service_state(0).unwrap().all_down);
    let mut t = tracker();
    assert_eq!(send(&s, &mut t, &tcp(1, "S"), 0), None, "when_all_down = drop (the default)");
    let s = b.build(&cfg(&all, "when_all_down = \"all\""), &all);
    assert!(s.service_state(0).unwrap().all_down);
    assert!(send(&s, &mut t, &tcp(1, "S"), 0).is_some(), "when_all_down = all forwards");
    // One backend up again: only it serves.
    let s = b.build(&cfg(&all, "when_all_down = \"all\""), &["10.0.0.1"]);
    assert!(!s.service_state(0).unwrap().all_down);
    for p in 2..100 {
        assert_eq!(send(&s, &mut t, &tcp(p, "S"), 0), Some(Ipv4Addr::new(10, 0, 0, 2)));
    }
}

#[test]
fn a_flow_expires_after_its_timeout_and_sooner_after_fin() {
    let mut b = Builder::new();
    let s1 = b.build(&cfg(&["10.0.0.1", "10.0.0.2", "10.0.0.3"], ""), &[]);
    let mut t = tracker();
    let flows = open(&s1, &mut t, 100);
    let s2 = b.build(&cfg(&["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"], ""), &[]);
    let moved: Vec<u16> = flows.keys().copied().filter(|p| untracked(&s2, &tcp(*p, "A")) != Some(flows[p])).collect();
    assert!(moved.len() >= 10);
    let (a, rest) = moved.split_at(moved.len() / 2);
    // Half the flows send a FIN at 10 s: 30 s later they are gone, the others are still tracked.
    for p in a {
        assert_eq!(send(&s2, &mut t, &tcp(*p, "FA"), 10), Some(flows[p]));
    }
    for p in rest {
        assert_eq!(send(&s2, &mut t, &tcp(*p, "A"), 10), Some(flows[p]));
    }
    for p in a {
        assert_ne!(send(&s2, &mut t, &tcp(*p, "A"), 41), Some(flows[p]), "closed flow {p} expired");
    }
    for p in rest {
        assert_eq!(send(&s2, &mut t, &tcp(*p, "A"), 41), Some(flows[p]), "open flow {p} still tracked");
    }
    assert!(t.flows.stats().timeouts >= a.len() as u64);
}

/// A datagram's first fragment carries the ports: it goes where the flow goes, and the later
/// fragments follow it by IP ID even where the address hash would send them elsewhere.
#[test]
fn later_fragments_follow_the_first() {
    let mut b = Builder::new();
    let backends = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"];
    let text = |b: &[&str]| {
        let mut c = cfg(b, "");
        c.services[0].protocol = config::Protocol::Udp;
        c
    };
    let s = b.build(&text(&backends), &[]);
    let udp = |sport: u16, id: u16, frag: Option<(u16, bool)>| {
        let mut v = Vec::new();
        PacketBuilder::ethernet2(ROUTER, INGRESS)
            .ipv4([192, 168, 1, 1], VIP, 64)
            .udp(sport, 80)
            .write(&mut v, &[7; 64])
            .unwrap();
        v[18..20].copy_from_slice(&id.to_be_bytes());
        if let Some((offset, more)) = frag {
            let f = offset | if more { 0x2000 } else { 0 };
            v[20..22].copy_from_slice(&f.to_be_bytes());
        }
        v[24..26].copy_from_slice(&[0, 0]);
        let c = crate::wire::internet_checksum(&v[14..34]);
        v[24..26].copy_from_slice(&c.to_be_bytes());
        v
    };
    let mut t = tracker();
    // Find a flow whose backend differs from its fragments' address hash.
    let later = untracked(&s, &udp(1, 99, Some((8, false)))).unwrap();
    let sport = (1000..2000).find(|p| untracked(&s, &udp(*p, 0, None)) != Some(later)).unwrap();
    let flow = send(&s, &mut t, &udp(sport, 1, None), 0).unwrap();
    assert_eq!(send(&s, &mut t, &udp(sport, 7, Some((0, true))), 0), Some(flow), "first fragment");
    assert_eq!(send(&s, &mut t, &udp(sport, 7, Some((8, true))), 0), Some(flow), "middle fragment");
    assert_eq!(send(&s, &mut t, &udp(sport, 7, Some((16, false))), 0), Some(flow), "last fragment");
    assert_eq!(t.fragments_followed, 2);
    // A later fragment of a datagram whose first fragment was not seen: the address hash, counted.
    assert_eq!(send(&s, &mut t, &udp(sport, 8, Some((8, false))), 0), Some(later));
    assert_eq!(t.fragments_untracked, 1);
    // After the fragment timeout the datagram is forgotten.
    assert_eq!(send(&s, &mut t, &udp(sport, 7, Some((24, false))), 6), Some(later));
    assert_eq!(t.fragments_untracked, 2);
}

/// Frames of every kind the batch tests mix: TCP flows with every flag combination, first and
/// later fragments, ICMP errors about a flow, and malformed copies (cut short, a byte flipped).
fn batch_pool() -> Vec<Vec<u8>> {
    let mut pool = Vec::new();
    for sport in 40000..40024 {
        for flags in ["S", "A", "SA", "F", "RA"] {
            pool.push(tcp(sport, flags));
        }
    }
    let fix = |mut f: Vec<u8>| {
        f[24..26].copy_from_slice(&[0, 0]);
        let c = crate::wire::internet_checksum(&f[14..34]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
        f
    };
    let mut first = tcp(40001, "A");
    first[20] = 0x20; // more fragments, offset 0: a first fragment
    pool.push(fix(first));
    let mut later = tcp(40001, "A");
    later[20..22].copy_from_slice(&0x0001u16.to_be_bytes()); // offset 8: bytes that look like ports
    pool.push(fix(later));
    // An ICMP fragmentation-needed about a flow (the backend's packet from the VIP quoted).
    let mut quoted = Vec::new();
    PacketBuilder::ipv4(VIP, [192, 168, 1, 1], 64).tcp(80, 40003, 1, 512).write(&mut quoted, &[]).unwrap();
    let mut icmp = Vec::new();
    PacketBuilder::ethernet2(ROUTER, INGRESS)
        .ipv4([192, 168, 9, 9], VIP, 64)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 },
        ))
        .write(&mut icmp, &quoted[..28])
        .unwrap();
    pool.push(icmp);
    pool
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]

    /// Forwarding in two-pass batches ([`Lookahead`]) gives the verdicts, the rewritten frames and
    /// the tracking state of [`forward_tracked`] one frame at a time, malformed frames included.
    #[test]
    fn two_pass_batches_match_one_frame_at_a_time(
        picks in proptest::collection::vec((0usize..200, 0usize..80, proptest::prelude::any::<u8>()), 1..400),
        cuts in proptest::collection::vec(1usize..=64, 1..20),
    ) {
        let s = Builder::new().build(&cfg(&["10.0.0.1", "10.0.0.2", "10.0.0.3"], ""), &[]);
        let pool = batch_pool();
        let frames: Vec<Vec<u8>> = picks
            .iter()
            .map(|&(n, at, byte)| {
                let mut f = pool[n % pool.len()].clone();
                match n % 10 {
                    8 => f.truncate(at),
                    9 => {
                        let i = at % f.len();
                        f[i] ^= byte | 1;
                    }
                    _ => {}
                }
                f
            })
            .collect();
        // A small table: evictions happen too.
        let small = || Tracker::new(16, Timeouts::default(), std::time::Duration::from_secs(5));
        let (mut one, mut batched) = (small(), small());
        let meta = FrameMeta::default();
        let mut single = frames.clone();
        let want: Vec<Verdict> =
            single.iter_mut().enumerate().map(|(i, f)| forward_tracked(f, &meta, &s, &mut one, Tick(i as u32 / 50))).collect();
        let mut ahead = Lookahead::<64>::default();
        let mut got = Vec::new();
        let mut two = frames.clone();
        let mut rest = &mut two[..];
        let (mut start, mut c) = (0, 0);
        while !rest.is_empty() {
            let (batch, tail) = rest.split_at_mut(cuts[c % cuts.len()].min(rest.len()));
            c += 1;
            for (i, f) in batch.iter().enumerate() {
                ahead.prefetch(i, f, &batched);
            }
            for (i, f) in batch.iter_mut().enumerate() {
                got.push(ahead.forward(i, f, &meta, &s, &mut batched, Tick((start + i) as u32 / 50)));
            }
            start += batch.len();
            rest = tail;
        }
        proptest::prop_assert_eq!(&got, &want);
        proptest::prop_assert_eq!(&two, &single);
        proptest::prop_assert_eq!(batched.flows.stats(), one.flows.stats());
        let now = Tick(frames.len() as u32 / 50);
        proptest::prop_assert!(batched.flows.entries(now, usize::MAX).eq(one.flows.entries(now, usize::MAX)));
        proptest::prop_assert_eq!(
            (batched.rechosen, batched.fragments_followed, batched.fragments_untracked, batched.frags.stats()),
            (one.rechosen, one.fragments_followed, one.fragments_untracked, one.frags.stats())
        );
    }

    /// The first pass accepts any bytes: no panic, no state change, and a frame it got a key
    /// from is forwarded as it would be without it.
    #[test]
    fn the_first_pass_takes_any_bytes(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..100)) {
        let s = Builder::new().build(&cfg(&["10.0.0.1", "10.0.0.2"], ""), &[]);
        let (mut a, mut b) = (tracker(), tracker());
        let _ = flow_key(&bytes);
        let mut ahead = Lookahead::<4>::default();
        ahead.prefetch(0, &bytes, &a);
        ahead.prefetch(7, &bytes, &a); // beyond the batch: ignored
        proptest::prop_assert_eq!(a.flows.stats(), b.flows.stats());
        let (mut x, mut y) = (bytes.clone(), bytes.clone());
        let meta = FrameMeta::default();
        proptest::prop_assert_eq!(ahead.forward(0, &mut x, &meta, &s, &mut a, Tick(0)), forward_tracked(&mut y, &meta, &s, &mut b, Tick(0)));
        proptest::prop_assert_eq!(x, y);
        proptest::prop_assert_eq!(a.flows.stats(), b.flows.stats());
    }
}

/// The first pass's key is the one the lookup uses, for the frames that have one.
#[test]
fn flow_key_is_the_tracked_five_tuple() {
    let key = flow_key(&tcp(40000, "S")).unwrap();
    assert_eq!(key, FiveTuple { src: 0xc0a8_0101, dst: 0x0ac9_0001, sport: 40000, dport: 80, proto: IPPROTO_TCP });
    let pool = batch_pool();
    assert!(flow_key(&pool[pool.len() - 1]).is_none(), "an ICMP error: no key of its own");
    assert!(flow_key(&pool[pool.len() - 2]).is_none(), "a later fragment has no ports");
    assert!(flow_key(&pool[pool.len() - 3]).is_some(), "a first fragment has them");
    assert!(flow_key(&tcp(1, "S")[..37]).is_none(), "cut before the ports");
    // A stale key at an index (another frame's) is not used: the frame is forwarded normally.
    let s = Builder::new().build(&cfg(&["10.0.0.1", "10.0.0.2"], ""), &[]);
    let mut t = tracker();
    let mut ahead = Lookahead::<2>::default();
    ahead.prefetch(0, &tcp(1111, "S"), &t);
    let mut f = tcp(2222, "S");
    assert!(matches!(ahead.forward(0, &mut f, &FrameMeta::default(), &s, &mut t, Tick(0)), Verdict::Forward { .. }));
    let keys: Vec<u16> = t.flows.entries(Tick(0), 10).map(|e| e.key.sport).collect();
    assert_eq!(keys, [2222]);
}
