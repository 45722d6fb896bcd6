//! The forwarding worker (`daemon::worker::run`) on real AF_PACKET rings in throwaway network
//! namespaces, under failure and bad input: an RX ring that overflows, VLAN-tagged frames on the
//! ingress, a client whose path MTU is larger than the egress MTU, and an egress interface that
//! goes down.
//!
//! Needs root (CAP_NET_RAW, CAP_NET_ADMIN, CAP_SYS_ADMIN for setns) and `ip netns`; the tests FAIL
//! (not skip) without them. Each test creates its own namespaces named `mlvdp-<pid>-<n>` and
//! deletes them on drop (also when the test panics). The host's interfaces are never touched and no
//! packet leaves the namespaces.
//!
//! Topology (one namespace `lb` unless said otherwise): `v0` ↔ `v1` (frames are injected on `v0`;
//! the worker's RX ring and ICMP socket are on `v1`, the ingress), `e0` ↔ `e1` (the worker's TX
//! ring is on `e0`, the egress; the backend's MAC is `e1`'s, where forwarded frames are captured).

mod common;

use std::net::{Ipv4Addr, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::ns::{require_lab, serial};
use etherparse::PacketBuilder;
use maglevd::config;
use maglevd::daemon::{Shared, worker, worker_rings};
use maglevd::dataplane::{DropReason, Links, PassReason, Snapshot};
use maglevd::io::{PacketSocket, RxConfig, RxRing, TxRing};
use maglevd::metrics::Totals;
use maglevd::netns::Netns;
use maglevd::wire::MacAddr;

/// A fresh namespace `mlvdp-<pid>-<n>`, deleted on drop.
fn new_ns() -> Netns {
    common::ns::new_ns("mlvdp")
}

const VIP: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 9);

/// The namespace `lb` with `v0` ↔ `v1` and `e0` ↔ `e1`.
fn lb() -> Netns {
    let ns = new_ns();
    ns.veth("v0", &ns, "v1").expect("veth v0 ↔ v1");
    ns.veth("e0", &ns, "e1").expect("veth e0 ↔ e1");
    ns
}

/// One UDP service on [`VIP`], all ports, one backend whose MAC is `backend_mac`.
fn snapshot(ingress_mac: [u8; 6], egress_mac: [u8; 6], backend_mac: [u8; 6]) -> Snapshot {
    let mac = MacAddr(backend_mac).to_string();
    let text = format!(
        "[interfaces]\ningress = \"v1\"\negress = \"e0\"\n[[service]]\nvip = \"{VIP}\"\nprotocol = \"udp\"\nport = \"all\"\n\
         [[service.backend]]\nip = \"10.98.0.7\"\nmac = \"{mac}\"\n"
    );
    let cfg = config::parse(&text, Path::new("datapath.toml")).expect("config");
    let links = Links { ingress_mac: MacAddr(ingress_mac), egress_mac: MacAddr(egress_mac) };
    Snapshot::build(&cfg, links, &|_| None, 1).expect("snapshot")
}

/// A worker running on its own thread in the current namespace, with rings opened as the daemon
/// opens them (`rx_slots` RX slots) and a send-only ICMP socket on the ingress.
struct Worker {
    shared: Arc<Shared>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Worker {
    fn open(ns: &Netns, rx_slots: usize) -> (RxRing, TxRing, PacketSocket, Arc<Shared>) {
        let snap = snapshot(ns.mac("v1").unwrap(), ns.mac("e0").unwrap(), ns.mac("e1").unwrap());
        let (rx_cfg, tx_cfg) = worker_rings(&[VIP], 4242, rx_slots, 64).expect("ring config");
        let rx = RxRing::open("v1", &rx_cfg).expect("RX ring");
        let tx = TxRing::open("e0", &tx_cfg).expect("TX ring");
        let icmp = PacketSocket::sender("v1").expect("ICMP socket");
        (rx, tx, icmp, Arc::new(Shared::new(snap, 1, Arc::new(AtomicBool::new(false)))))
    }

    fn start(parts: (RxRing, TxRing, PacketSocket, Arc<Shared>)) -> Worker {
        let (mut rx, mut tx, mut icmp, shared) = parts;
        let sh = Arc::clone(&shared);
        let handle = std::thread::spawn(move || {
            let counters = sh.counters.worker(0).expect("counters");
            worker::run(&mut rx, &mut tx, &mut icmp, &sh, counters);
        });
        Worker { shared, handle: Some(handle) }
    }

    fn totals(&self) -> Totals {
        self.shared.counters.totals()
    }

    /// Waits until `cond` holds on the counters (or panics after `secs`).
    fn wait_for(&self, secs: u64, what: &str, cond: impl Fn(&Totals) -> bool) -> Totals {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let t = self.totals();
            if cond(&t) {
                return t;
            }
            assert!(Instant::now() < deadline, "{what}: never happened; counters: {}", t.summary());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn stop(mut self) -> Totals {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.join().expect("worker thread");
        }
        self.totals()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn udp_frame(src_mac: [u8; 6], dst_mac: [u8; 6], sport: u16, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(src_mac, dst_mac).ipv4(CLIENT.octets(), VIP.octets(), 64).udp(sport, 53);
    let mut v = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut v, payload).unwrap();
    v
}

/// `frame` with an 802.1Q tag carrying `tci` inserted after the MAC addresses.
fn tagged(frame: &[u8], tci: u16) -> Vec<u8> {
    let mut v = frame[..12].to_vec();
    v.extend_from_slice(&[0x81, 0x00]);
    v.extend_from_slice(&tci.to_be_bytes());
    v.extend_from_slice(&frame[12..]);
    v
}

/// Every frame on `rx` carrying the marker `MLV:`, until `want` arrived (then 50 ms more) or 2 s.
fn markers(rx: &mut RxRing, want: usize) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut extra: Option<Instant> = None;
    loop {
        rx.recv_batch(64, |f| {
            if let Some(i) = f.data.windows(4).position(|w| w == b"MLV:") {
                got.push(f.data[i..(i + 8).min(f.data.len())].to_vec());
            }
        });
        let now = Instant::now();
        if got.len() >= want && extra.is_none() {
            extra = Some(now + Duration::from_millis(50));
        }
        if now > deadline || extra.is_some_and(|e| now > e) {
            return got;
        }
        let _ = rx.wait(Duration::from_millis(10));
    }
}

/// Bug: `rx_ring_drops` was exported but never written. A tiny RX ring is flooded before its worker
/// runs: every frame the kernel accepted from the sender either reached the worker or is counted as
/// a ring drop — exactly.
#[test]
fn rx_ring_overflow_is_counted_exactly() {
    let _g = serial();
    require_lab("tests/datapath_io.rs");
    let ns = lb();
    let (m0, m1) = (ns.mac("v0").unwrap(), ns.mac("v1").unwrap());
    ns.run(|| {
        let parts = Worker::open(&ns, 8);
        let slots = parts.0.layout().frame_nr as u64;
        let mut tx = PacketSocket::sender("v0").unwrap();
        let mut sent = 0u64;
        for i in 0..1000u16 {
            if tx.send(&udp_frame(m0, m1, 1000 + (i % 50), b"MLV:flood")).is_ok() {
                sent += 1;
            }
            if i % 100 == 99 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        assert!(sent > slots * 10, "only {sent} frames sent");
        let t0 = Instant::now();
        let w = Worker::start(parts);
        // Once the ring is drained, one more frame: it carries TP_STATUS_LOSING (drops not read yet).
        w.wait_for(5, "the worker drained the ring", |t| t.io("rx_frames") >= slots.min(sent));
        if tx.send(&udp_frame(m0, m1, 999, b"MLV:late")).is_ok() {
            sent += 1;
        }
        let running = w.wait_for(5, "every frame received or counted as a ring drop", |t| {
            t.io("rx_frames") + t.io("rx_ring_drops") == sent
        });
        let took = t0.elapsed();
        let t = w.stop();
        let (received, drops) = (t.io("rx_frames"), t.io("rx_ring_drops"));
        println!(
            "sent {sent}, ring of {slots} slots: received {received}, ring drops {drops} (counted after {took:?})"
        );
        assert_eq!(drops, sent - received, "rx_ring_drops = frames sent − frames received");
        assert_eq!(running.io("rx_ring_drops"), drops, "counted while running, not only at stop");
        assert!(drops >= sent - 2 * slots - 1, "the ring overflowed: {drops}");
        assert_eq!(t.io("rx_stats_errors"), 0);
    })
    .expect("run in the namespace");
}

/// Bug: the VLAN tag the kernel strips was ignored, so a frame of any VLAN was forwarded (and left
/// untagged). Tagged frames are injected into the ingress veth: only the untagged and the
/// priority-tagged (VLAN 0) ones reach the backend.
#[test]
fn frames_of_another_vlan_are_not_forwarded() {
    let _g = serial();
    require_lab("tests/datapath_io.rs");
    let ns = lb();
    let (m0, m1) = (ns.mac("v0").unwrap(), ns.mac("v1").unwrap());
    ns.run(|| {
        let mut sink = RxRing::open("e1", &RxConfig { frame_count: 64, ..RxConfig::default() }).unwrap();
        let w = Worker::start(Worker::open(&ns, 64));
        let mut tx = PacketSocket::sender("v0").unwrap();
        let plain = |m: &[u8; 8]| udp_frame(m0, m1, 2000, m);
        tx.send(&plain(b"MLV:none")).unwrap();
        tx.send(&tagged(&plain(b"MLV:v100"), 100)).unwrap();
        tx.send(&tagged(&plain(b"MLV:vid0"), 0x6000)).unwrap(); // priority 3, VLAN 0
        tx.send(&tagged(&plain(b"MLV:v200"), 0x2000 | 200)).unwrap();
        tx.send(&tagged(&plain(b"MLV:v4k_"), 4095)).unwrap();
        let got = markers(&mut sink, 2);
        w.wait_for(5, "all five frames seen", |t| t.io("rx_frames") == 5);
        let t = w.wait_for(5, "two forwarded", |t| t.forwarded == 2);
        assert_eq!(got, vec![b"MLV:none".to_vec(), b"MLV:vid0".to_vec()], "only the ingress's own VLAN is forwarded");
        assert_eq!(t.passes[PassReason::ForeignVlan.index()], 3);
        let t = w.stop();
        assert_eq!((t.forwarded, t.passes[PassReason::ForeignVlan.index()], t.dropped()), (2, 3, 0));
    })
    .expect("run in the namespace");
}

/// Bug: a DF packet larger than the egress MTU was copied and silently dropped (a PMTU black hole).
/// A client with a 9000-byte MTU sends a 3000-byte DF datagram to the VIP through a worker whose
/// egress has a 1500-byte MTU: the client receives ICMP fragmentation-needed from the VIP and its
/// kernel caches the path MTU 1500; nothing was copied to the egress.
#[test]
fn a_client_learns_the_egress_mtu() {
    let _g = serial();
    require_lab("tests/datapath_io.rs");
    let ns = new_ns();
    ns.veth("e0", &ns, "e1").unwrap();
    let client = new_ns();
    client.veth("c0", &ns, "v1").unwrap();
    client.sh("ip link set c0 mtu 9000").unwrap();
    ns.sh("ip link set v1 mtu 9000; ip link set e0 mtu 1500; ip link set e1 mtu 1500").unwrap();
    let lb_mac = ns.mac("v1").unwrap();
    let mac = MacAddr(lb_mac).to_string();
    client
        .sh(&format!(
            "ip addr add {CLIENT}/24 dev c0; ip route add 10.201.0.0/24 via 10.99.0.1 dev c0; \
         ip neigh add 10.99.0.1 lladdr {mac} dev c0 nud permanent"
        ))
        .unwrap();
    let route = || client.sh(&format!("ip route get {VIP}")).unwrap();
    assert!(!route().contains("mtu"), "no cached PMTU yet: {}", route());
    ns.run(|| {
        let mut sink = RxRing::open("e1", &RxConfig { frame_count: 64, ..RxConfig::for_max_frame(9100, 64) }).unwrap();
        let w = Worker::start(Worker::open(&ns, 64));
        let sock = client
            .run(|| {
                let s = UdpSocket::bind((CLIENT, 40000)).unwrap();
                s.connect((VIP, 53)).unwrap();
                // Linux's default PMTU mode for UDP (IP_PMTUDISC_WANT) sets DF on unfragmented packets.
                let mut big = vec![0u8; 3000];
                big[..8].copy_from_slice(b"MLV:big_");
                s.send(&big).unwrap();
                s
            })
            .expect("run in the namespace");
        let t = w.wait_for(5, "the ICMP was sent", |t| t.io("icmp_frag_needed_sent") == 1);
        assert_eq!(t.drop(DropReason::FragNeeded), 1);
        // The client's kernel took the ICMP: the route to the VIP now carries the egress MTU.
        let deadline = Instant::now() + Duration::from_secs(3);
        while !route().contains("mtu 1500") {
            assert!(Instant::now() < deadline, "the client never learned the PMTU: {}", route());
            std::thread::sleep(Duration::from_millis(10));
        }
        println!("client route after the ICMP: {}", route().trim());
        client
            .run(|| {
                let mut big = vec![0u8; 3000];
                big[..8].copy_from_slice(b"MLV:frag");
                // The connected socket was told too: its next send reports the error once ...
                let e = sock.send(&big).expect_err("EMSGSIZE from the ICMP");
                assert_eq!(e.raw_os_error(), Some(libc::EMSGSIZE), "{e}");
                // ... and from then on the kernel fragments to 1500: the fragments are forwarded.
                sock.send(&big).unwrap();
            })
            .expect("run in the namespace");
        let got = markers(&mut sink, 1);
        let t = w.stop();
        assert_eq!(got, vec![b"MLV:frag".to_vec()], "only the re-sent datagram's first fragment carries the marker");
        assert_eq!(t.forwarded, 3, "3000 bytes of UDP in 1500-byte fragments: {}", t.summary());
        assert_eq!((t.drop(DropReason::FragNeeded), t.io("icmp_frag_needed_sent"), t.io("tx_too_big")), (1, 1, 0));
    })
    .expect("run in the namespace");
}

/// Bug: with the egress down, frames were counted as forwarded and as `tx_frames` while every
/// `send()` failed, and the queued frames stayed in the TX ring. Now they are drops
/// (`tx_send_failed`), the ring does not wedge, and forwarding resumes when the egress comes up.
#[test]
fn egress_down_frames_are_drops_and_the_ring_recovers() {
    let _g = serial();
    require_lab("tests/datapath_io.rs");
    let ns = lb();
    let (m0, m1) = (ns.mac("v0").unwrap(), ns.mac("v1").unwrap());
    ns.run(|| {
        let w = Worker::start(Worker::open(&ns, 64));
        let mut tx = PacketSocket::sender("v0").unwrap();
        ns.sh("ip link set e0 down").unwrap();
        // More frames than the TX ring has slots: a wedged ring would refuse the rest.
        let n = 200u64;
        for i in 0..n {
            tx.send(&udp_frame(m0, m1, 3000 + (i % 20) as u16, b"MLV:down")).unwrap();
            if i % 50 == 49 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        let down = w.wait_for(5, "every frame a counted drop", |t| t.drop(DropReason::TxSendFailed) == n);
        assert_eq!((down.forwarded, down.io("tx_frames")), (0, 0), "nothing was sent: {}", down.summary());
        assert_eq!(down.drop(DropReason::TxRingFull), 0, "the ring never wedged");
        assert!(down.io("tx_errors") > 0);

        ns.sh("ip link set e0 up").unwrap();
        let mut sink = RxRing::open("e1", &RxConfig { frame_count: 64, ..RxConfig::default() }).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        for i in 0..10u16 {
            tx.send(&udp_frame(m0, m1, 4000 + i, b"MLV:up__")).unwrap();
        }
        let got = markers(&mut sink, 10);
        let t = w.stop();
        assert_eq!(got.len(), 10, "forwarding resumed");
        assert_eq!((t.forwarded, t.io("tx_frames")), (10, 10), "{}", t.summary());
        assert_eq!(t.drop(DropReason::TxSendFailed), n);
    })
    .expect("run in the namespace");
}
