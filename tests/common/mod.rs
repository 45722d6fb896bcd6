//! Shared helpers for the packet-path tests: a fixed snapshot and frame builders.
#![allow(dead_code)]

pub mod ns;

use std::net::Ipv4Addr;
use std::path::Path;

use etherparse::PacketBuilder;
use maglevd::config::{self, Config};
use maglevd::dataplane::{Links, Snapshot};
use maglevd::wire::{MacAddr, internet_checksum};

pub const INGRESS_MAC: [u8; 6] = [0xc2, 0xb0, 0x57, 0x49, 0x47, 0xf1];
pub const EGRESS_MAC: [u8; 6] = [0xc2, 0xb0, 0x57, 0x49, 0x47, 0xf2];
pub const ROUTER_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x01, 0xfe];
pub const OTHER_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x09, 0x09];

/// VIP 10.201.0.1:80/tcp → the seed's three backends (5-tuple); VIP 10.201.0.2 all UDP ports
/// (src-ip key); VIP 10.201.0.3 with two TCP port services (fragments are ambiguous there);
/// VIP 10.201.0.4:80/tcp with every backend drained.
pub const FIXTURE_CONFIG: &str = r#"
[interfaces]
ingress = "net1"
egress = "net2"

[[service]]
name = "web"
vip = "10.201.0.1"
protocol = "tcp"
port = 80
[[service.backend]]
ip = "10.158.200.251"
[[service.backend]]
ip = "10.158.200.252"
[[service.backend]]
ip = "10.158.200.253"

[[service]]
name = "dns"
vip = "10.201.0.2"
protocol = "udp"
port = "all"
flow_key = "src-ip"
[[service.backend]]
ip = "10.158.200.251"
[[service.backend]]
ip = "10.158.200.252"

[[service]]
name = "two-a"
vip = "10.201.0.3"
protocol = "tcp"
port = 80
[[service.backend]]
ip = "10.158.200.251"

[[service]]
name = "two-b"
vip = "10.201.0.3"
protocol = "tcp"
port = 443
[[service.backend]]
ip = "10.158.200.252"

[[service]]
name = "drained"
vip = "10.201.0.4"
protocol = "tcp"
port = 80
[[service.backend]]
ip = "10.158.200.251"
weight = 0
"#;

pub fn fixture_config() -> Config {
    config::parse(FIXTURE_CONFIG, Path::new("fixture.toml")).expect("fixture config is valid")
}

/// The MAC every backend resolves to in tests: c2:b0:57:49:47:<last octet of its IP>.
pub fn backend_mac(ip: Ipv4Addr) -> MacAddr {
    MacAddr([0xc2, 0xb0, 0x57, 0x49, 0x47, ip.octets()[3]])
}

pub fn links() -> Links {
    Links { ingress_mac: MacAddr(INGRESS_MAC), egress_mac: MacAddr(EGRESS_MAC) }
}

pub fn snapshot() -> Snapshot {
    Snapshot::build(&fixture_config(), links(), &|b| b.ipv4().map(backend_mac), 1).expect("tables build")
}

pub fn ip(s: &str) -> [u8; 4] {
    s.parse::<Ipv4Addr>().expect("test IP").octets()
}

/// A TCP segment from the router to `dst`, addressed to the ingress MAC.
pub fn tcp(src: &str, sport: u16, dst: &str, dport: u16, payload: &[u8]) -> Vec<u8> {
    let b =
        PacketBuilder::ethernet2(ROUTER_MAC, INGRESS_MAC).ipv4(ip(src), ip(dst), 63).tcp(sport, dport, 0x1000, 64240);
    let mut v = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut v, payload).expect("build tcp");
    v
}

pub fn udp(src: &str, sport: u16, dst: &str, dport: u16, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(ROUTER_MAC, INGRESS_MAC).ipv4(ip(src), ip(dst), 63).udp(sport, dport);
    let mut v = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut v, payload).expect("build udp");
    v
}

/// An ICMP message of `kind`/`code` to `dst`, quoting `quoted` (an IP packet, no Ethernet).
pub fn icmp(src: &str, dst: &str, kind: u8, code: u8, rest: [u8; 4], quoted: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(ROUTER_MAC, INGRESS_MAC).ipv4(ip(src), ip(dst), 63).icmpv4_raw(kind, code, rest);
    let mut v = Vec::with_capacity(b.size(quoted.len()));
    b.write(&mut v, quoted).expect("build icmp");
    v
}

/// The IP packet of a frame built above (drops the 14-byte Ethernet header).
pub fn ip_packet(frame: &[u8]) -> Vec<u8> {
    frame[14..].to_vec()
}

/// Recompute the IPv4 header checksum after a test edited the header.
pub fn fix_ip_checksum(frame: &mut [u8]) {
    let ihl = ((frame[14] & 0x0f) as usize) * 4;
    frame[24] = 0;
    frame[25] = 0;
    let c = internet_checksum(&frame[14..14 + ihl]);
    frame[24..26].copy_from_slice(&c.to_be_bytes());
}

/// Mark a frame as an IP fragment with the given offset (8-byte units) and MF flag.
pub fn make_fragment(frame: &mut [u8], offset: u16, more: bool) {
    let v = offset & 0x1fff | if more { 0x2000 } else { 0 };
    frame[20..22].copy_from_slice(&v.to_be_bytes());
    fix_ip_checksum(frame);
}

/// `frame` with its MACs replaced: what a forwarded frame must look like.
pub fn with_macs(frame: &[u8], dst: MacAddr, src: [u8; 6]) -> Vec<u8> {
    let mut v = frame.to_vec();
    v[..6].copy_from_slice(&dst.0);
    v[6..12].copy_from_slice(&src);
    v
}
