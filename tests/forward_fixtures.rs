//! Table-driven packet fixtures for `forward()`, in the style of Katran's packet tests: a
//! description, the input frame, the expected verdict, and the expected output frame.
//!
//! The backend expected for each forwarded fixture was computed by `tests/ref/maglev_ref.py`, an
//! independent implementation of the table and flow hash (e.g.
//! `maglev_ref.py flow 65537 5-tuple 192.168.100.1 40000 10.201.0.1 80 6 10.158.200.251 …252 …253`).

mod common;

use common::*;
use maglevd::dataplane::{DropReason as D, FrameMeta, PassReason as P, Snapshot, Verdict, forward_frame};

/// What a fixture expects.
enum Want {
    /// Forwarded to the backend with this IP (frame must equal the input with new MACs).
    To(&'static str),
    Pass(P),
    Drop(D),
}

struct Fixture {
    desc: &'static str,
    /// What the receive ring reported besides the bytes, and the egress MTU.
    meta: FrameMeta,
    input: Vec<u8>,
    want: Want,
}

fn fx(desc: &'static str, input: Vec<u8>, want: Want) -> Fixture {
    Fixture { desc, meta: FrameMeta::default(), input, want }
}

/// A fixture with receive metadata (a VLAN tag the kernel stripped, GSO) or an egress MTU.
fn fxm(desc: &'static str, meta: FrameMeta, input: Vec<u8>, want: Want) -> Fixture {
    Fixture { desc, meta, input, want }
}

/// Tagged with `tci` by the sender; the kernel stripped the tag and reported it out of band.
fn tagged(tci: u16) -> FrameMeta {
    FrameMeta { vlan_tci: Some(tci), ..FrameMeta::default() }
}

/// Leaving by an egress interface with this MTU.
fn mtu(mtu: u32) -> FrameMeta {
    FrameMeta { egress_mtu: Some(mtu), ..FrameMeta::default() }
}

/// Clear the IPv4 don't-fragment bit.
fn clear_df(f: &mut [u8]) {
    f[20] &= !0x40;
    fix_ip_checksum(f);
}

const CLIENT: &str = "192.168.100.1";
const VIP: &str = "10.201.0.1";

fn syn(sport: u16) -> Vec<u8> {
    tcp(CLIENT, sport, VIP, 80, &[])
}

/// A reply the backend sent from VIP:80 to the client, as quoted by an ICMP error.
fn quoted_reply(client_port: u16) -> Vec<u8> {
    let mut q = ip_packet(&tcp(VIP, 80, CLIENT, client_port, &[0u8; 32]));
    q.truncate(20 + 8); // routers quote the IP header and the first 8 bytes
    q
}

fn edit(mut frame: Vec<u8>, f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    f(&mut frame);
    frame
}

fn fixtures() -> Vec<Fixture> {
    use Want::*;
    vec![
        // --- forwarded
        fx("tcp syn to vip:80", syn(40000), To("10.158.200.251")),
        fx("tcp syn to vip:80, other source port", syn(40001), To("10.158.200.252")),
        fx(
            "tcp from another client",
            tcp("192.168.100.7", 51234, VIP, 80, b"GET / HTTP/1.1\r\n\r\n"),
            To("10.158.200.253"),
        ),
        fx("tcp with ethernet padding to 60 bytes", edit(syn(40000), |f| f.resize(60, 0)), To("10.158.200.251")),
        fx("jumbo 9000-byte tcp segment", tcp(CLIENT, 40000, VIP, 80, &[0x5a; 8946]), To("10.158.200.251")),
        fx(
            "udp to all-ports vip, src-ip key",
            udp("192.168.100.5", 5353, "10.201.0.2", 53, b"q"),
            To("10.158.200.252"),
        ),
        fx(
            "udp, same client, other port: same backend",
            udp("192.168.100.5", 9999, "10.201.0.2", 4242, b"q"),
            To("10.158.200.252"),
        ),
        fx("udp, another client", udp(CLIENT, 5353, "10.201.0.2", 53, b"q"), To("10.158.200.251")),
        fx(
            "first fragment carries the ports: it goes where its flow goes",
            edit(syn(40001), |f| make_fragment(f, 0, true)),
            To("10.158.200.252"),
        ),
        fx(
            "middle fragment whose first was not seen: the address hash (ports 0)",
            edit(tcp(CLIENT, 0, VIP, 0, &[0; 64]), |f| make_fragment(f, 185, true)),
            To("10.158.200.251"),
        ),
        fx(
            "last fragment whose first was not seen: the same address hash",
            edit(tcp(CLIENT, 0, VIP, 0, &[0; 64]), |f| make_fragment(f, 370, false)),
            To("10.158.200.251"),
        ),
        fx(
            "icmp fragmentation-needed reaches the flow's backend",
            icmp("10.0.0.9", VIP, 3, 4, [0, 0, 0x05, 0xdc], &quoted_reply(40001)),
            To("10.158.200.252"),
        ),
        fx(
            "icmp time exceeded reaches the flow's backend",
            icmp("10.0.0.9", VIP, 11, 0, [0; 4], &quoted_reply(40000)),
            To("10.158.200.251"),
        ),
        // The balancer is a transparent wire for TTL, like IPVS in direct-routing mode: it neither
        // decrements nor checks it (the backend's kernel does).
        fx(
            "ttl 1 crosses unchanged",
            edit(syn(40000), |f| {
                f[22] = 1;
                fix_ip_checksum(f)
            }),
            To("10.158.200.251"),
        ),
        fx(
            "ttl 0 crosses unchanged",
            edit(syn(40000), |f| {
                f[22] = 0;
                fix_ip_checksum(f)
            }),
            To("10.158.200.251"),
        ),
        fxm("priority-tagged (vlan id 0) is the ingress's own", tagged(0xa000), syn(40000), To("10.158.200.251")),
        fxm(
            "frame of exactly the egress mtu",
            mtu(1500),
            tcp(CLIENT, 40000, VIP, 80, &[0; 1460]),
            To("10.158.200.251"),
        ),
        fxm(
            "gso super-frame above the egress mtu (segmented on egress)",
            FrameMeta { gso: true, egress_mtu: Some(1500), vlan_tci: None },
            tcp(CLIENT, 40000, VIP, 80, &[0; 9000]),
            To("10.158.200.251"),
        ),
        // --- passed to the kernel
        fxm("vlan 100 (tag stripped by the kernel)", tagged(100), syn(40000), Pass(P::ForeignVlan)),
        fxm("vlan 4095 with priority bits", tagged(0xefff), syn(40000), Pass(P::ForeignVlan)),
        fx("arp", edit(syn(1), |f| f[12..14].copy_from_slice(&[0x08, 0x06])), Pass(P::NotIpv4)),
        fx("ipv6 ethertype", edit(syn(1), |f| f[12..14].copy_from_slice(&[0x86, 0xdd])), Pass(P::NotIpv4)),
        fx(
            "802.1q tag left in the frame",
            edit(syn(1), |f| f[12..14].copy_from_slice(&[0x81, 0x00])),
            Pass(P::NotIpv4),
        ),
        fx("broadcast destination mac", edit(syn(1), |f| f[..6].copy_from_slice(&[0xff; 6])), Pass(P::NotOurMac)),
        fx("another host's mac", edit(syn(1), |f| f[..6].copy_from_slice(&OTHER_MAC)), Pass(P::NotOurMac)),
        fx("tcp to the frontend's own ip", tcp(CLIENT, 40000, "10.158.100.2", 22, &[]), Pass(P::NotVip)),
        fx(
            "not-vip traffic is passed even when malformed",
            edit(tcp(CLIENT, 1, "10.158.100.2", 22, &[]), |f| f[14] = 0x4f),
            Pass(P::NotVip),
        ),
        // --- dropped
        fx("empty frame", vec![], Drop(D::EthTruncated)),
        fx("13-byte frame", vec![0; 13], Drop(D::EthTruncated)),
        fx("ipv4 ethertype, 10 bytes of header", edit(syn(1), |f| f.truncate(24)), Drop(D::Ipv4Truncated)),
        fx("ip version 6 under the ipv4 ethertype", edit(syn(1), |f| f[14] = 0x65), Drop(D::Ipv4Version)),
        fx(
            "ihl 4",
            edit(syn(1), |f| {
                f[14] = 0x44;
                fix_ip_checksum(f)
            }),
            Drop(D::Ipv4HeaderLength),
        ),
        fx(
            "ip options (ihl 6)",
            edit(syn(1), |f| {
                f[14] = 0x46;
                fix_ip_checksum(f)
            }),
            Drop(D::Ipv4Options),
        ),
        fx(
            "total length beyond the frame",
            edit(syn(1), |f| {
                f[16..18].copy_from_slice(&1000u16.to_be_bytes());
                fix_ip_checksum(f)
            }),
            Drop(D::Ipv4TotalLength),
        ),
        fx(
            "total length below the header",
            edit(syn(1), |f| {
                f[16..18].copy_from_slice(&19u16.to_be_bytes());
                fix_ip_checksum(f)
            }),
            Drop(D::Ipv4TotalLength),
        ),
        fx("truncated frame (total length says more)", edit(syn(1), |f| f.truncate(50)), Drop(D::Ipv4TotalLength)),
        fx("bad header checksum", edit(syn(1), |f| f[24] ^= 0x01), Drop(D::Ipv4Checksum)),
        fx(
            "tcp header cut to 10 bytes",
            edit(syn(1), |f| {
                f.truncate(44);
                f[16..18].copy_from_slice(&30u16.to_be_bytes());
                fix_ip_checksum(f)
            }),
            Drop(D::L4Truncated),
        ),
        fx(
            "udp header cut to 4 bytes",
            edit(udp(CLIENT, 1, "10.201.0.2", 53, &[]), |f| {
                f.truncate(38);
                f[16..18].copy_from_slice(&24u16.to_be_bytes());
                fix_ip_checksum(f)
            }),
            Drop(D::L4Truncated),
        ),
        fx("tcp to a vip port without service", tcp(CLIENT, 40000, VIP, 81, &[]), Drop(D::NoService)),
        fx("udp to a tcp-only vip", udp(CLIENT, 40000, VIP, 80, &[]), Drop(D::NoService)),
        fx(
            "gre to a vip",
            edit(syn(1), |f| {
                f[23] = 47;
                fix_ip_checksum(f)
            }),
            Drop(D::NoService),
        ),
        fx(
            "from our own egress mac (a frame we sent, handed back)",
            edit(syn(40000), |f| f[6..12].copy_from_slice(&EGRESS_MAC)),
            Drop(D::OwnFrame),
        ),
        fxm(
            "df tcp one byte above the egress mtu",
            mtu(1500),
            tcp(CLIENT, 40000, VIP, 80, &[0; 1461]),
            Drop(D::FragNeeded),
        ),
        fxm(
            "jumbo df tcp over a 1500 egress",
            mtu(1500),
            tcp(CLIENT, 40000, VIP, 80, &[0x5a; 8946]),
            Drop(D::FragNeeded),
        ),
        fxm(
            "a packet that fits, with an ethernet trailer beyond the egress mtu",
            mtu(1500),
            edit(tcp(CLIENT, 40000, VIP, 80, &[0; 1000]), |f| f.resize(1600, 0)),
            Drop(D::TooBig),
        ),
        fxm(
            "udp without df above the egress mtu (not fragmented)",
            mtu(1500),
            edit(udp(CLIENT, 5353, "10.201.0.2", 53, &[0; 2000]), |f| clear_df(f)),
            Drop(D::TooBig),
        ),
        fxm(
            "icmp error above the egress mtu (no icmp about icmp errors)",
            mtu(576),
            icmp("10.0.0.9", VIP, 3, 4, [0, 0, 0x05, 0xdc], &edit(quoted_reply(40001), |q| q.resize(1000, 0))),
            Drop(D::TooBig),
        ),
        fx("all backends drained", tcp(CLIENT, 40000, "10.201.0.4", 80, &[]), Drop(D::NoBackend)),
        fx(
            "first fragment for a vip with two tcp services: its port's service",
            edit(tcp(CLIENT, 1, "10.201.0.3", 443, &[]), |f| make_fragment(f, 0, true)),
            To("10.158.200.252"),
        ),
        fx(
            "later fragment for a vip with two tcp services (which one is ambiguous)",
            edit(tcp(CLIENT, 0, "10.201.0.3", 0, &[0; 64]), |f| make_fragment(f, 185, true)),
            Drop(D::FragmentNoService),
        ),
        fx(
            "icmp fragment",
            edit(icmp("10.0.0.9", VIP, 3, 4, [0; 4], &quoted_reply(1)), |f| make_fragment(f, 0, true)),
            Drop(D::FragmentNoService),
        ),
        fx("icmp echo to the vip", icmp(CLIENT, VIP, 8, 0, [0, 1, 0, 1], b"ping"), Drop(D::IcmpUnsupported)),
        fx(
            "icmp error with the quote cut short",
            icmp("10.0.0.9", VIP, 3, 4, [0; 4], &quoted_reply(1)[..22]),
            Drop(D::IcmpMalformed),
        ),
        fx(
            "icmp error quoting a non-first fragment",
            icmp("10.0.0.9", VIP, 3, 4, [0; 4], &edit(quoted_reply(1), |q| q[6..8].copy_from_slice(&[0x00, 0x10]))),
            Drop(D::IcmpMalformed),
        ),
        fx(
            "icmp error quoting a packet not from the vip",
            icmp("10.0.0.9", VIP, 3, 1, [0; 4], &ip_packet(&tcp("10.9.9.9", 80, CLIENT, 1, &[]))[..28]),
            Drop(D::IcmpNoService),
        ),
        fx(
            "icmp error quoting a vip port without service",
            icmp("10.0.0.9", VIP, 3, 3, [0; 4], &ip_packet(&tcp(VIP, 8080, CLIENT, 1, &[]))[..28]),
            Drop(D::IcmpNoService),
        ),
    ]
}

fn backend_index(snap: &Snapshot, service: u16, ip: &str) -> u32 {
    let svc = snap.service_state(service).expect("service");
    svc.backends.iter().position(|b| b.ip.to_string() == ip).expect("backend in service") as u32
}

#[test]
fn packet_fixtures() {
    let snap = snapshot();
    let all = fixtures();
    assert!(all.len() >= 25);
    let mut failures = Vec::new();
    for f in &all {
        let mut frame = f.input.clone();
        let got = forward_frame(&mut frame, &f.meta, &snap);
        let (want_verdict, want_frame) = match f.want {
            Want::To(ip) => {
                let Verdict::Forward { service, .. } = got else {
                    failures.push(format!("{}: got {got:?}, want forward to {ip}", f.desc));
                    continue;
                };
                let backend = backend_index(&snap, service, ip);
                let mac = backend_mac(ip.parse().unwrap());
                (Verdict::Forward { service, backend }, with_macs(&f.input, mac, EGRESS_MAC))
            }
            Want::Pass(r) => (Verdict::Pass(r), f.input.clone()),
            Want::Drop(r) => (Verdict::Drop(r), f.input.clone()),
        };
        if got != want_verdict {
            failures.push(format!("{}: got {got:?}, want {want_verdict:?}", f.desc));
        } else if frame != want_frame {
            failures.push(format!("{}: output frame differs from the expected bytes", f.desc));
        }
    }
    assert!(failures.is_empty(), "{} of {} fixtures failed:\n{}", failures.len(), all.len(), failures.join("\n"));
}

/// Every reason named in the fixtures exists; and every drop reason `forward_frame()` can give is
/// exercised by some fixture, so a new reason cannot be added without a fixture for it (the TX ring
/// outcomes are the worker's and tested with it).
#[test]
fn every_reason_has_a_fixture() {
    let all = fixtures();
    for r in D::ALL.iter().filter(|r| !D::AFTER_FORWARD.contains(r)) {
        assert!(all.iter().any(|f| matches!(f.want, Want::Drop(x) if x == *r)), "no fixture drops with {r:?}");
    }
    for r in P::ALL {
        assert!(all.iter().any(|f| matches!(f.want, Want::Pass(x) if x == *r)), "no fixture passes with {r:?}");
    }
}
