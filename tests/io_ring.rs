//! AF_PACKET ring tests in throwaway network namespaces.
//!
//! Needs root (CAP_NET_RAW, CAP_NET_ADMIN, CAP_SYS_ADMIN for setns) and
//! `ip netns`; the tests FAIL (not skip) without them. Each test creates its
//! own namespaces named `mlvio-<pid>-<n>` with veth pairs, runs its body on
//! threads that `setns()` into them, and deletes them on drop (also when the
//! test panics). The host's interfaces are never touched.
//!
//! Run with `--nocapture` to see the latency and batch-size measurements.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::ns::{require_lab, serial};
use etherparse::PacketBuilder;
use maglevd::io::{
    Fanout, FlushStatus, PacketSocket, RingVersion, RxConfig, RxRing, TxConfig, TxError, TxRing, VipFilter, VnetHdr,
};
use maglevd::netns::Netns;

/// A fresh namespace `mlvio-<pid>-<n>`, deleted on drop.
fn new_ns() -> Netns {
    common::ns::new_ns("mlvio")
}

/// One namespace with veth v0 ↔ v1.
fn pair() -> Netns {
    let ns = new_ns();
    ns.veth("v0", &ns, "v1").expect("veth v0 ↔ v1");
    ns
}

fn udp_frame(src_mac: [u8; 6], dst_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, sport: u16, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(src_mac, dst_mac).ipv4(src.octets(), dst.octets(), 64).udp(sport, 9);
    let mut v = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut v, payload).unwrap();
    v
}

fn arp_frame(src_mac: [u8; 6]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[10, 99, 0, 9, 0, 0, 0, 0, 0, 0, 10, 99, 0, 1]);
    f
}

/// Drains `rx` until `want` frames arrived (then 50 ms more) or 2 s passed.
fn collect(rx: &mut RxRing, want: usize) -> Vec<(Vec<u8>, Option<VnetHdr>, bool)> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut extra: Option<Instant> = None;
    loop {
        rx.recv_batch(64, |f| got.push((f.data.to_vec(), f.vnet, f.truncated)));
        let now = Instant::now();
        if got.len() >= want && extra.is_none() {
            extra = Some(now + Duration::from_millis(50));
        }
        if now > deadline || extra.is_some_and(|e| now > e) {
            return got;
        }
        rx.wait(Duration::from_millis(10)).unwrap();
    }
}

fn marker(frame: &[u8]) -> Option<&[u8]> {
    frame.windows(4).position(|w| w == b"MLV:").map(|i| &frame[i..(i + 8).min(frame.len())])
}

const VIP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const OTHER: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 9);

#[test]
fn rx_ring_receives_only_what_the_bpf_filter_passes() {
    let _g = serial();
    require_lab("tests/io_ring.rs");
    let ns = pair();
    let (m0, m1) = (ns.mac("v0").unwrap(), ns.mac("v1").unwrap());
    ns.run(|| {
        let filter = VipFilter::new(&[VIP], true).build().unwrap();
        let cfg = RxConfig { filter: Some(filter), frame_count: 64, ..RxConfig::default() };
        let mut rx = RxRing::open("v1", &cfg).unwrap();
        assert_eq!(rx.interface().mac, m1);
        assert!(rx.interface().mtu >= 1500);
        let mut tx = PacketSocket::open("v0", 0x0800).unwrap();
        for i in 0..5u8 {
            tx.send(&udp_frame(m0, m1, CLIENT, VIP, 1000, &[b'M', b'L', b'V', b':', b'v', b'i', b'p', b'0' + i]))
                .unwrap();
            tx.send(&udp_frame(m0, m1, CLIENT, OTHER, 1000, b"MLV:oth_")).unwrap();
        }
        tx.send(&arp_frame(m0)).unwrap();
        tx.send(&arp_frame(m0)).unwrap();
        let mut v6 = udp_frame(m0, m1, CLIENT, VIP, 1, b"MLV:ipv6");
        v6[12] = 0x86;
        v6[13] = 0xdd;
        tx.send(&v6).unwrap();
        let got = collect(&mut rx, 7);
        let vips: Vec<&[u8]> = got.iter().filter_map(|(f, _, _)| marker(f)).collect();
        let arps = got.iter().filter(|(f, _, _)| f[12..14] == [0x08, 0x06]).count();
        assert_eq!(vips, [b"MLV:vip0", b"MLV:vip1", b"MLV:vip2", b"MLV:vip3", b"MLV:vip4"], "{got:?}");
        assert_eq!(arps, 2);
        assert_eq!(got.len(), 7, "only VIP and ARP frames pass");
        assert!(got.iter().all(|(_, v, t)| v.is_none() && !t));
        let st = rx.stats().unwrap();
        assert_eq!((st.packets, st.drops, st.malformed), (7, 0, 0));
        // Replacing the filter at run time: now nothing passes.
        rx.set_filter(&maglevd::io::BpfProgram::drop_all()).unwrap();
        tx.send(&udp_frame(m0, m1, CLIENT, VIP, 1000, b"MLV:late")).unwrap();
        assert!(collect(&mut rx, 1).is_empty());
    })
    .expect("run in the namespace");
}

fn realtime_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

#[test]
fn rx_ring_frames_carry_the_kernels_receive_time() {
    let _g = serial();
    require_lab("tests/io_ring.rs");
    let ns = pair();
    let (m0, m1) = (ns.mac("v0").unwrap(), ns.mac("v1").unwrap());
    ns.run(|| {
        for version in [RingVersion::V2, RingVersion::V3 { block_timeout_ms: 1 }] {
            let cfg = RxConfig { version, frame_count: 256, ..RxConfig::default() };
            let mut rx = RxRing::open("v1", &cfg).unwrap();
            let mut tx = PacketSocket::open("v0", 0x0800).unwrap();
            let before = realtime_ns();
            tx.send(&udp_frame(m0, m1, CLIENT, VIP, 1000, b"MLV:time")).unwrap();
            // Read well after the kernel received it (veth delivers within the send call, or soon
            // after in ksoftirqd): a stamp taken when the frame is read would come after this.
            std::thread::sleep(Duration::from_millis(200));
            let read_start = realtime_ns();
            let mut stamps = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(2);
            while stamps.is_empty() && Instant::now() < deadline {
                rx.recv_batch(64, |f| {
                    if marker(f.data) == Some(b"MLV:time") {
                        stamps.push(f.stamp_ns);
                    }
                });
                rx.wait(Duration::from_millis(10)).unwrap();
            }
            assert_eq!(stamps.len(), 1, "{version:?}");
            let t = stamps[0];
            assert!(
                t >= before && t < read_start,
                "{version:?}: stamp {t} not between the send ({before}) and the read ({read_start})"
            );
        }
    })
    .expect("run in the namespace");
}

#[test]
fn rx_ring_v3_receives() {
    let _g = serial();
    require_lab("tests/io_ring.rs");
    let ns = pair();
    let (m0, m1) = (ns.mac("v0").unwrap(), ns.mac("v1").unwrap());
    ns.run(|| {
        let cfg = RxConfig {
            version: RingVersion::V3 { block_timeout_ms: 1 },
            filter: Some(VipFilter::new(&[VIP], false).build().unwrap()),
            frame_count: 256,
            ..RxConfig::default()
        };
        let mut rx = RxRing::open("v1", &cfg).unwrap();
        assert!(rx.layout().block_size >= 256 << 10);
        let mut tx = PacketSocket::open("v0", 0x0800).unwrap();
        for i in 0..20u8 {
            tx.send(&udp_frame(m0, m1, CLIENT, VIP, 1000, &[b'M', b'L', b'V', b':', b'v', b'3', b'_', i])).unwrap();
        }
        let got = collect(&mut rx, 20);
        assert_eq!(got.len(), 20);
        for (i, (f, _, _)) in got.iter().enumerate() {
            assert_eq!(marker(f).unwrap()[7], i as u8, "in order");
        }
        let st = rx.stats().unwrap();
        assert_eq!((st.packets, st.drops, st.malformed), (20, 0, 0));
    })
    .expect("run in the namespace");
}

#[test]
fn tx_ring_sends_a_batch_with_one_send_and_ignore_outgoing_works() {
    let _g = serial();
    require_lab("tests/io_ring.rs");
    let ns = pair();
    let (m0, m1) = (ns.mac("v0").unwrap(), ns.mac("v1").unwrap());
    ns.run(|| {
        let cfg = RxConfig { frame_count: 64, ..RxConfig::default() };
        let mut rx1 = RxRing::open("v1", &cfg).unwrap();
        // On v0: one ring that ignores our own TX, one that does not, and one
        // fanout member that ignores it (needs the fanout flag).
        let mut rx0_ign = RxRing::open("v0", &cfg).unwrap();
        let mut rx0_all = RxRing::open("v0", &RxConfig { ignore_outgoing: false, ..cfg.clone() }).unwrap();
        let mut rx0_fan = RxRing::open("v0", &RxConfig { fanout: Some(Fanout::hash(4242)), ..cfg.clone() }).unwrap();
        let mut tx = TxRing::open("v0", &TxConfig { frame_count: 64, ..TxConfig::default() }).unwrap();
        assert!(tx.sndbuf() >= tx.memory(), "SO_SNDBUFFORCE applied: {} < {}", tx.sndbuf(), tx.memory());
        for i in 0..8u8 {
            tx.push(None, &udp_frame(m0, m1, CLIENT, VIP, 2000, &[b'M', b'L', b'V', b':', b't', b'x', b'_', b'0' + i]))
                .unwrap();
        }
        assert_eq!(tx.queued(), 8);
        let out = tx.flush();
        assert_eq!((out.syscalls, out.frames, out.backlog, out.status), (1, 8, 0, FlushStatus::Sent), "{out:?}");
        assert_eq!(tx.stats().sends, 1);
        let got = collect(&mut rx1, 8);
        let marks: Vec<u8> = got.iter().filter_map(|(f, _, _)| marker(f)).map(|m| m[7]).collect();
        assert_eq!(marks, b"01234567", "peer receives all 8 in order");
        // Nothing queued: flush makes no system call.
        assert_eq!(tx.flush().syscalls, 0);

        let own = |r: &mut RxRing| collect(r, 8).iter().filter(|(f, _, _)| marker(f).is_some()).count();
        // Frames sent with PACKET_QDISC_BYPASS skip the taps entirely
        // (dev_direct_xmit does not call dev_queue_xmit_nit).
        assert_eq!(own(&mut rx0_all), 0, "bypassed TX is invisible to taps");
        // Through the qdisc path the taps see them, unless told to ignore.
        let mut txq =
            TxRing::open("v0", &TxConfig { frame_count: 64, qdisc_bypass: false, ..TxConfig::default() }).unwrap();
        for i in 0..8u8 {
            txq.push(
                None,
                &udp_frame(m0, m1, CLIENT, VIP, 2001, &[b'M', b'L', b'V', b':', b'q', b'd', b'_', b'0' + i]),
            )
            .unwrap();
        }
        assert_eq!(txq.flush().frames, 8);
        assert_eq!(collect(&mut rx1, 8).len(), 8);
        assert_eq!(own(&mut rx0_all), 8, "without PACKET_IGNORE_OUTGOING our TX is seen");
        assert_eq!(own(&mut rx0_ign), 0, "PACKET_IGNORE_OUTGOING hides our TX");
        assert_eq!(own(&mut rx0_fan), 0, "PACKET_FANOUT_FLAG_IGNORE_OUTGOING hides our TX");
        println!(
            "TX ring: {} slots of {} B, {} KiB, sndbuf {} KiB",
            tx.layout().frame_nr,
            tx.layout().frame_size,
            tx.memory() >> 10,
            tx.sndbuf() >> 10
        );
    })
    .expect("run in the namespace");
}

#[test]
fn tx_ring_rejects_and_recovers() {
    let _g = serial();
    require_lab("tests/io_ring.rs");
    let ns = pair();
    let (m0, m1) = (ns.mac("v0").unwrap(), ns.mac("v1").unwrap());
    ns.run(|| {
        let mut rx1 = RxRing::open("v1", &RxConfig { frame_count: 64, ..RxConfig::default() }).unwrap();
        let mut tx = TxRing::open("v0", &TxConfig { frame_count: 4, ..TxConfig::default() }).unwrap();
        let frame = udp_frame(m0, m1, CLIENT, VIP, 3000, b"MLV:full");
        // Slot count is rounded to whole blocks (2 per 4 KiB page).
        let slots = tx.layout().frame_nr;
        for _ in 0..slots {
            tx.push(None, &frame).unwrap();
        }
        assert_eq!(tx.push(None, &frame), Err(TxError::RingFull));
        assert!(matches!(tx.push(None, &[0u8; 10]), Err(TxError::FrameTooBig { .. })));
        assert!(matches!(tx.push(None, &vec![0u8; 1600]), Err(TxError::FrameTooBig { max: 1518, .. })));
        let gso = VnetHdr { gso_type: VnetHdr::GSO_TCPV4, gso_size: 1000, ..VnetHdr::default() };
        assert!(matches!(tx.push(Some(&gso), &frame), Err(TxError::BadVnetHdr(_))), "no vnet on this ring");
        assert_eq!(tx.flush().frames as usize, slots);
        assert_eq!(collect(&mut rx1, slots).len(), slots);
        // Slots come back: the ring keeps working.
        let t0 = Instant::now();
        while tx.free_slots() < slots && t0.elapsed() < Duration::from_secs(1) {
            std::thread::sleep(Duration::from_millis(1));
        }
        tx.push(None, &frame).unwrap();
        assert_eq!(tx.flush().frames, 1);
        assert_eq!(collect(&mut rx1, 1).len(), 1);
        let st = tx.stats();
        assert_eq!((st.ring_full, st.too_big, st.bad_vnet), (1, 2, 1));

        // A frame the kernel rejects (GSO TCP header on a UDP packet) is
        // discarded by the kernel (PACKET_LOSS), counted, and does not stall
        // the ring.
        let mut vtx = TxRing::open("v0", &TxConfig { frame_count: 8, vnet_hdr: true, ..TxConfig::default() }).unwrap();
        let bad = udp_frame(m0, m1, CLIENT, VIP, 3001, &[7u8; 600]);
        let good1 = udp_frame(m0, m1, CLIENT, VIP, 3002, b"MLV:good");
        let good2 = udp_frame(m0, m1, CLIENT, VIP, 3003, b"MLV:goo2");
        vtx.push(None, &good1).unwrap();
        vtx.push(Some(&VnetHdr { gso_type: VnetHdr::GSO_TCPV4, gso_size: 100, ..VnetHdr::default() }), &bad).unwrap();
        vtx.push(Some(&VnetHdr::default()), &good2).unwrap();
        let out = vtx.flush();
        assert_eq!((out.frames, out.backlog, out.status), (3, 0, FlushStatus::Sent), "{out:?}");
        assert_eq!(vtx.stats().kernel_dropped_bytes, bad.len() as u64);
        let got = collect(&mut rx1, 2);
        let marks: Vec<&[u8]> = got.iter().filter_map(|(f, _, _)| marker(f)).collect();
        assert_eq!(marks, [b"MLV:good", b"MLV:goo2"]);
        vtx.push(None, &good1).unwrap();
        assert_eq!(vtx.flush().status, FlushStatus::Sent);
    })
    .expect("run in the namespace");
}

#[test]
fn fanout_keeps_each_flow_on_one_socket() {
    let _g = serial();
    require_lab("tests/io_ring.rs");
    let ns = pair();
    let (m0, m1) = (ns.mac("v0").unwrap(), ns.mac("v1").unwrap());
    ns.run(|| {
        let cfg = RxConfig { fanout: Some(Fanout::hash(7)), frame_count: 1024, ..RxConfig::default() };
        let mut a = RxRing::open("v1", &cfg).unwrap();
        let mut b = RxRing::open("v1", &cfg).unwrap();
        // A member with different flags is refused by the kernel.
        let e = RxRing::open("v1", &RxConfig { ignore_outgoing: false, ..cfg.clone() }).unwrap_err();
        assert!(e.to_string().starts_with("v1: setsockopt(PACKET_FANOUT): "), "{e}");
        let mut tx = TxRing::open("v0", &TxConfig::default()).unwrap();
        const FLOWS: u16 = 32;
        const PER_FLOW: usize = 8;
        for round in 0..PER_FLOW {
            for flow in 0..FLOWS {
                let f = udp_frame(
                    m0,
                    m1,
                    CLIENT,
                    VIP,
                    10_000 + flow,
                    &[b'M', b'L', b'V', b':', b'f', b'o', round as u8, 0],
                );
                tx.push(None, &f).unwrap();
            }
            assert_eq!(tx.flush().status, FlushStatus::Sent);
        }
        let total = usize::from(FLOWS) * PER_FLOW;
        let (mut ga, mut gb) = (Vec::new(), Vec::new());
        let deadline = Instant::now() + Duration::from_secs(2);
        while ga.len() + gb.len() < total && Instant::now() < deadline {
            a.recv_batch(256, |f| ga.push(u16::from_be_bytes([f.data[34], f.data[35]])));
            b.recv_batch(256, |f| gb.push(u16::from_be_bytes([f.data[34], f.data[35]])));
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(ga.len() + gb.len(), total);
        for flow in 0..FLOWS {
            let port = 10_000 + flow;
            let (na, nb) = (ga.iter().filter(|&&p| p == port).count(), gb.iter().filter(|&&p| p == port).count());
            assert!((na, nb) == (PER_FLOW, 0) || (na, nb) == (0, PER_FLOW), "flow {flow} split {na}/{nb}");
        }
        assert!(!ga.is_empty() && !gb.is_empty(), "hash spread flows over both sockets: {}/{}", ga.len(), gb.len());
        println!("fanout: {} / {} frames over 2 sockets", ga.len(), gb.len());
    })
    .expect("run in the namespace");
}

fn ones_sum(data: &[u8], mut sum: u32) -> u32 {
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Sum of the TCP/IPv4 pseudo header.
fn pseudo(ip: &[u8], l4_len: usize) -> u32 {
    ones_sum(&ip[12..20], 0) + 6 + l4_len as u32
}

/// A 64 KiB TCP super-frame as the stack would hand it to a TSO device:
/// CHECKSUM_PARTIAL (pseudo-header sum in the checksum field), GSO TCPV4.
fn tcp_super_frame(m0: [u8; 6], m1: [u8; 6], payload: &[u8]) -> (VnetHdr, Vec<u8>) {
    let b = PacketBuilder::ethernet2(m0, m1)
        .ipv4(CLIENT.octets(), VIP.octets(), 64)
        .tcp(40000, 80, 1_000_000, 65000)
        .ack(1);
    let mut f = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut f, payload).unwrap();
    let l4 = f.len() - 34;
    let p = fold(pseudo(&f[14..34], l4));
    f[50..52].copy_from_slice(&p.to_be_bytes());
    let v = VnetHdr {
        flags: VnetHdr::F_NEEDS_CSUM,
        gso_type: VnetHdr::GSO_TCPV4,
        hdr_len: 54,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
    };
    (v, f)
}

#[test]
fn tx_ring_vnet_gso_super_frame_is_kept_or_segmented() {
    let _g = serial();
    require_lab("tests/io_ring.rs");
    let ns = pair();
    let (m0, m1) = (ns.mac("v0").unwrap(), ns.mac("v1").unwrap());
    let payload: Vec<u8> = (0..64_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let (vnet, frame) = tcp_super_frame(m0, m1, &payload);
    assert_eq!(frame.len(), 64_054);
    ns.run(|| {
        // 1) TSO on (veth default): the super-frame crosses the veth whole and
        // arrives with its vnet header on a vnet RX ring.
        let mut rx = RxRing::open(
            "v1",
            &RxConfig { filter: Some(VipFilter::new(&[VIP], false).build().unwrap()), ..RxConfig::super_frames(32) },
        )
        .unwrap();
        assert!(rx.max_frame() >= maglevd::io::MAX_SUPER_FRAME);
        let mut tx = TxRing::open("v0", &TxConfig::super_frames(16)).unwrap();
        tx.push(Some(&vnet), &frame).unwrap();
        let out = tx.flush();
        assert_eq!((out.frames, out.status), (1, FlushStatus::Sent), "{out:?}");
        assert_eq!(out.bytes, frame.len() as u64);
        let got = collect(&mut rx, 1);
        assert_eq!(got.len(), 1);
        let (data, v, trunc) = &got[0];
        assert!(!trunc);
        assert_eq!(data.len(), frame.len());
        assert_eq!(&data[54..], &payload[..]);
        let v = v.expect("vnet header on RX");
        assert_eq!(
            (v.gso_type, v.gso_size, v.flags & VnetHdr::F_NEEDS_CSUM),
            (VnetHdr::GSO_TCPV4, 1448, VnetHdr::F_NEEDS_CSUM),
            "{v:?}"
        );
        assert_eq!((v.csum_start, v.csum_offset), (34, 16));
        println!("RX vnet of a TX-ring GSO frame: {v:?}");
    })
    .expect("run in the namespace");
    // 2) TSO and checksum offload off on v0: the kernel segments the frame in
    // software and fills every checksum.
    ns.sh("ethtool -K v0 tso off gso off tx off >/dev/null").unwrap();
    ns.run(|| {
        let mut rx = RxRing::open(
            "v1",
            &RxConfig {
                filter: Some(VipFilter::new(&[VIP], false).build().unwrap()),
                frame_count: 256,
                ..RxConfig::default()
            },
        )
        .unwrap();
        let mut tx = TxRing::open("v0", &TxConfig::super_frames(16)).unwrap();
        tx.push(Some(&vnet), &frame).unwrap();
        // Qdisc bypass refuses frames that need software GSO (ENOBUFS); the
        // flush retries once through the qdisc path, which segments.
        let out = tx.flush();
        assert_eq!((out.status, out.frames, out.syscalls), (FlushStatus::Sent, 1, 2), "{out:?}");
        assert_eq!((tx.stats().enobufs, tx.stats().bypass_fallbacks), (1, 1));
        let segs = collect(&mut rx, 45);
        assert_eq!(segs.len(), 64_000usize.div_ceil(1448), "segments");
        let mut joined = Vec::new();
        for (s, v, t) in &segs {
            assert!(v.is_none() && !t);
            assert!(s.len() <= 1514);
            let ip = &s[14..34];
            assert_eq!(fold(ones_sum(ip, 0)), 0xffff, "IPv4 header checksum");
            let l4 = &s[34..];
            assert_eq!(fold(ones_sum(l4, pseudo(ip, l4.len()))), 0xffff, "TCP checksum completed by the kernel");
            joined.extend_from_slice(&l4[20..]);
        }
        assert_eq!(joined, payload, "segments carry the payload in order");
    })
    .expect("run in the namespace");
}

/// Forwarder counters.
#[derive(Debug, Default, Clone, Copy)]
struct FwdStats {
    frames: u64,
    gso_frames: u64,
    max_frame: usize,
    csum_partial: u64,
    max_batch: usize,
    truncated: u64,
    tx_errors: u64,
    flushes: u64,
    again: u64,
    nobufs: u64,
}

/// Mini DSR forwarder: RX on `rx_if`, MAC rewrite, TX on `tx_if`.
fn forward(
    rx_if: &str,
    tx_if: &str,
    dst: [u8; 6],
    accept: Ipv4Addr,
    stop: &AtomicBool,
    ready: &AtomicUsize,
) -> FwdStats {
    let filter = VipFilter::new(&[accept], false).build().unwrap();
    let mut rx = RxRing::open(rx_if, &RxConfig { filter: Some(filter), ..RxConfig::super_frames(256) }).unwrap();
    let mut tx = TxRing::open(tx_if, &TxConfig::super_frames(256)).unwrap();
    let src = tx.interface().mac;
    let mut st = FwdStats::default();
    ready.fetch_add(1, Ordering::SeqCst);
    while !stop.load(Ordering::Relaxed) {
        let n = rx.recv_batch(256, |f| {
            st.frames += 1;
            if f.truncated {
                st.truncated += 1;
                return;
            }
            if let Some(v) = f.vnet {
                st.gso_frames += u64::from(v.is_gso());
                st.csum_partial += u64::from(v.needs_csum());
            }
            st.max_frame = st.max_frame.max(f.data.len());
            f.data[0..6].copy_from_slice(&dst);
            f.data[6..12].copy_from_slice(&src);
            let mut r = tx.push(f.vnet.as_ref(), f.data);
            if r == Err(TxError::RingFull) {
                tx.flush();
                r = tx.push(f.vnet.as_ref(), f.data);
            }
            st.tx_errors += u64::from(r.is_err());
        });
        if n > 0 || tx.queued() > 0 {
            st.max_batch = st.max_batch.max(n);
            let o = tx.flush();
            st.flushes += u64::from(o.syscalls);
            st.again += u64::from(o.status == FlushStatus::Again);
            st.nobufs += u64::from(o.status == FlushStatus::NoBufs);
        }
        if n == 0 {
            let t = if tx.queued() > 0 { Duration::from_micros(200) } else { Duration::from_millis(5) };
            rx.wait(t).unwrap();
        }
    }
    let rs = rx.stats().unwrap();
    assert_eq!(rs.malformed, 0);
    st
}

fn prng(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn mini_forwarder_carries_tcp_super_frames_and_measures_latency() {
    let _g = serial();
    require_lab("tests/io_ring.rs");
    let (a, f, b) = (new_ns(), new_ns(), new_ns());
    f.veth("f0", &a, "a0").unwrap();
    f.veth("f1", &b, "b0").unwrap();
    a.veth("a1", &b, "b1").unwrap(); // direct path, for the latency baseline
    a.sh("ip addr add 10.77.0.1/24 dev a0; ip addr add 10.78.0.1/24 dev a1").unwrap();
    b.sh("ip addr add 10.77.0.2/24 dev b0; ip addr add 10.78.0.2/24 dev b1").unwrap();
    let (fm0, fm1, am0, bm0) = (f.mac("f0").unwrap(), f.mac("f1").unwrap(), a.mac("a0").unwrap(), b.mac("b0").unwrap());
    let hex = |m: [u8; 6]| maglevd::io::iface::format_mac(&m);
    a.sh(&format!("ip neigh replace 10.77.0.2 lladdr {} dev a0 nud permanent", hex(fm0))).unwrap();
    b.sh(&format!("ip neigh replace 10.77.0.1 lladdr {} dev b0 nud permanent", hex(fm1))).unwrap();
    let offloads = a.sh("ethtool -k a0 | grep -E \"^(tcp-segmentation-offload|tx-checksumming)\"").unwrap();
    assert!(offloads.matches(": on").count() == 2, "default offloads: {offloads}");

    let stop = AtomicBool::new(false);
    let ready = AtomicUsize::new(0);
    let listening = AtomicBool::new(false);
    const UP: usize = 8 << 20;
    const DOWN: usize = 4 << 20;
    let up = prng(1, UP);
    let down = prng(2, DOWN);

    let (fwd_ab, fwd_ba, lat) = std::thread::scope(|s| {
        let h1 = s.spawn(|| {
            f.enter().unwrap();
            forward("f0", "f1", bm0, Ipv4Addr::new(10, 77, 0, 2), &stop, &ready)
        });
        let h2 = s.spawn(|| {
            f.enter().unwrap();
            forward("f1", "f0", am0, Ipv4Addr::new(10, 77, 0, 1), &stop, &ready)
        });
        while ready.load(Ordering::SeqCst) < 2 && !h1.is_finished() && !h2.is_finished() {
            std::thread::sleep(Duration::from_millis(1));
        }
        if h1.is_finished() || h2.is_finished() {
            stop.store(true, Ordering::SeqCst);
            let (r1, r2) = (h1.join(), h2.join());
            panic!("forwarder failed to start: {:?} {:?}", r1.err().map(|_| "A→B"), r2.err().map(|_| "B→A"));
        }
        // Server in B: read everything, answer with its hash, then send DOWN bytes.
        let server = s.spawn(|| {
            b.enter().unwrap();
            let l = TcpListener::bind("10.77.0.2:5001").unwrap();
            let echo = UdpSocket::bind("0.0.0.0:7007").unwrap();
            echo.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            listening.store(true, Ordering::SeqCst);
            l.set_nonblocking(true).unwrap();
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut c = loop {
                match l.accept() {
                    Ok((c, _)) => break c,
                    Err(_) if !stop.load(Ordering::SeqCst) && Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(2))
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            };
            c.set_nonblocking(false).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let mut got = Vec::with_capacity(UP);
            c.read_to_end(&mut got).unwrap();
            c.write_all(&xxhash_rust::xxh3::xxh3_64(&got).to_be_bytes()).unwrap();
            c.write_all(&down).unwrap();
            drop(c);
            // UDP echo until the client says stop.
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::SeqCst) {
                match echo.recv_from(&mut buf) {
                    Ok((n, from)) if &buf[..n] == b"stop" => {
                        let _ = echo.send_to(b"bye", from);
                        break;
                    }
                    Ok((n, from)) => {
                        echo.send_to(&buf[..n], from).unwrap();
                    }
                    Err(_) => {}
                }
            }
            got.len()
        });
        let client = s.spawn(|| {
            a.enter().unwrap();
            while !listening.load(Ordering::SeqCst) && !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            let t0 = Instant::now();
            let mut c = TcpStream::connect_timeout(&"10.77.0.2:5001".parse().unwrap(), Duration::from_secs(5)).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            c.write_all(&up).unwrap();
            c.shutdown(std::net::Shutdown::Write).unwrap();
            let mut back = Vec::new();
            c.read_to_end(&mut back).unwrap();
            let secs = t0.elapsed().as_secs_f64();
            assert_eq!(back.len(), 8 + DOWN, "bytes back");
            assert_eq!(&back[..8], &xxhash_rust::xxh3::xxh3_64(&up).to_be_bytes(), "server received the upload intact");
            assert!(back[8..] == down[..], "download intact");
            // Latency: UDP echo through the forwarder vs the direct veth.
            let u = UdpSocket::bind("0.0.0.0:0").unwrap();
            u.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
            let via: SocketAddr = "10.77.0.2:7007".parse().unwrap();
            let direct: SocketAddr = "10.78.0.2:7007".parse().unwrap();
            let (mut tv, mut td) = (Vec::new(), Vec::new());
            let mut buf = [0u8; 64];
            for i in 0..220u32 {
                for (dst, out) in [(via, &mut tv), (direct, &mut td)] {
                    let p = i.to_be_bytes();
                    let t = Instant::now();
                    u.send_to(&p, dst).unwrap();
                    loop {
                        let (n, _) = u.recv_from(&mut buf).expect("echo reply");
                        if buf[..n] == p {
                            break;
                        }
                    }
                    if i >= 20 {
                        out.push(t.elapsed());
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            u.send_to(b"stop", via).unwrap();
            let _ = u.recv_from(&mut buf);
            (secs, median(&mut tv), median(&mut td), tv.iter().max().copied().unwrap_or_default())
        });
        let lat = client.join().unwrap_or_else(|p| {
            stop.store(true, Ordering::SeqCst);
            std::panic::resume_unwind(p)
        });
        let n = server.join().unwrap();
        assert_eq!(n, UP);
        stop.store(true, Ordering::SeqCst);
        (h1.join().unwrap(), h2.join().unwrap(), lat)
    });
    let (secs, med_fwd, med_direct, max_fwd) = lat;
    println!("forwarder A→B: {fwd_ab:?}");
    println!("forwarder B→A: {fwd_ba:?}");
    println!(
        "TCP {} MiB up + {} MiB down through the rings in {:.2} s ({:.2} Gbit/s)",
        UP >> 20,
        DOWN >> 20,
        secs,
        (UP + DOWN) as f64 * 8.0 / secs / 1e9
    );
    println!(
        "UDP echo RTT median over 200 probes: via forwarder {:?}, direct {:?}; added per traversal ≈ {:?} (max via {:?})",
        med_fwd,
        med_direct,
        med_fwd.saturating_sub(med_direct) / 2,
        max_fwd
    );
    assert!(fwd_ab.gso_frames > 0 && fwd_ab.max_frame > 1514, "super-frames crossed A→B: {fwd_ab:?}");
    assert!(fwd_ba.gso_frames > 0, "super-frames crossed B→A: {fwd_ba:?}");
    assert!(fwd_ab.csum_partial > 0);
    assert_eq!(fwd_ab.truncated + fwd_ba.truncated, 0);
    assert!(med_fwd < Duration::from_millis(5), "lone-packet latency through V2 rings: {med_fwd:?}");
}
