//! Test frames for the benchmarks: Ethernet/IPv4/UDP and TCP frames with a correct IPv4 header
//! checksum, and the latency probe payload (magic, sequence number, send time).

use std::net::Ipv4Addr;

use crate::wire::{ETH_HEADER_LEN, ETHERTYPE_ARP, ETHERTYPE_IPV4, IPPROTO_TCP, IPPROTO_UDP, internet_checksum};

/// Ethernet + IPv4 + UDP headers.
pub const UDP_HEADERS: usize = ETH_HEADER_LEN + 20 + 8;
/// Probe payload: magic (4), sequence number (4), send time in ns (8).
pub const PROBE_LEN: usize = 16;
/// Smallest `--size`: the headers plus a probe payload.
pub const MIN_FRAME: usize = UDP_HEADERS + PROBE_LEN;
/// Largest `--size` on a 1500-byte MTU link (Ethernet header included, FCS excluded).
pub const MAX_FRAME: usize = 1500 + ETH_HEADER_LEN;
/// Marks a probe ("MLVB").
pub const PROBE_MAGIC: [u8; 4] = *b"MLVB";

/// Addresses of a generated frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoints {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
}

fn ip_header(buf: &mut [u8], proto: u8, src: Ipv4Addr, dst: Ipv4Addr, ttl: u8, id: u16) {
    let total = buf.len() - ETH_HEADER_LEN;
    let ip = &mut buf[ETH_HEADER_LEN..ETH_HEADER_LEN + 20];
    ip[0] = 0x45;
    ip[1] = 0;
    ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&id.to_be_bytes());
    ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // DF, no fragment
    ip[8] = ttl;
    ip[9] = proto;
    ip[10..12].copy_from_slice(&[0, 0]);
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let c = internet_checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
}

fn ethernet(buf: &mut [u8], e: &Endpoints, ethertype: u16) {
    buf[0..6].copy_from_slice(&e.dst_mac);
    buf[6..12].copy_from_slice(&e.src_mac);
    buf[12..14].copy_from_slice(&ethertype.to_be_bytes());
}

/// A UDP frame of exactly `size` bytes (clamped to `UDP_HEADERS..=MAX_FRAME`), zero payload,
/// UDP checksum 0 (none, legal over IPv4).
pub fn udp(e: &Endpoints, sport: u16, dport: u16, size: usize) -> Vec<u8> {
    let size = size.clamp(UDP_HEADERS, MAX_FRAME);
    let mut buf = vec![0u8; size];
    ethernet(&mut buf, e, ETHERTYPE_IPV4);
    ip_header(&mut buf, IPPROTO_UDP, e.src, e.dst, 64, sport);
    let udp = &mut buf[ETH_HEADER_LEN + 20..];
    let len = udp.len() as u16;
    udp[0..2].copy_from_slice(&sport.to_be_bytes());
    udp[2..4].copy_from_slice(&dport.to_be_bytes());
    udp[4..6].copy_from_slice(&len.to_be_bytes());
    buf
}

/// A TCP segment (ACK, window 64240) with `payload` zero bytes.
pub fn tcp(e: &Endpoints, sport: u16, dport: u16, payload: usize) -> Vec<u8> {
    let size = ETH_HEADER_LEN + 20 + 20 + payload;
    let mut buf = vec![0u8; size];
    ethernet(&mut buf, e, ETHERTYPE_IPV4);
    ip_header(&mut buf, IPPROTO_TCP, e.src, e.dst, 63, sport);
    let t = &mut buf[ETH_HEADER_LEN + 20..];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&1u32.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = 0x10;
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    buf
}

/// An ARP request frame (what a frontend sees besides VIP traffic).
pub fn arp_request(e: &Endpoints) -> Vec<u8> {
    let mut buf = vec![0u8; 60];
    ethernet(&mut buf, &Endpoints { dst_mac: [0xff; 6], ..*e }, ETHERTYPE_ARP);
    let a = &mut buf[ETH_HEADER_LEN..];
    a[0..8].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    a[8..14].copy_from_slice(&e.src_mac);
    a[14..18].copy_from_slice(&e.src.octets());
    a[24..28].copy_from_slice(&e.dst.octets());
    buf
}

/// Writes a probe (magic, `seq`, `sent_ns`) at the start of a UDP frame's payload.
pub fn write_probe(frame: &mut [u8], seq: u32, sent_ns: u64) -> bool {
    let Some(p) = frame.get_mut(UDP_HEADERS..UDP_HEADERS + PROBE_LEN) else { return false };
    p[0..4].copy_from_slice(&PROBE_MAGIC);
    p[4..8].copy_from_slice(&seq.to_be_bytes());
    p[8..16].copy_from_slice(&sent_ns.to_be_bytes());
    true
}

/// Reads a probe from a received UDP frame: `(seq, sent_ns)`.
pub fn read_probe(frame: &[u8]) -> Option<(u32, u64)> {
    let p = frame.get(UDP_HEADERS..UDP_HEADERS + PROBE_LEN)?;
    if p[0..4] != PROBE_MAGIC || frame.get(12..14)? != ETHERTYPE_IPV4.to_be_bytes() {
        return None;
    }
    let seq = u32::from_be_bytes(p[4..8].try_into().ok()?);
    let sent = u64::from_be_bytes(p[8..16].try_into().ok()?);
    Some((seq, sent))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{EthernetFrame, Ipv4Header};

    const E: Endpoints = Endpoints {
        src_mac: [2, 0, 0, 0, 0, 1],
        dst_mac: [2, 0, 0, 0, 0, 2],
        src: Ipv4Addr::new(10, 0, 0, 1),
        dst: Ipv4Addr::new(10, 201, 0, 1),
    };

    #[test]
    fn udp_frame_is_valid() {
        let f = udp(&E, 4000, 9, 64);
        assert_eq!(f.len(), 64);
        let eth = EthernetFrame::new_checked(&f[..]).unwrap();
        assert_eq!(eth.ethertype(), ETHERTYPE_IPV4);
        let ip = Ipv4Header::new_checked(eth.payload()).unwrap();
        assert!(ip.checksum_ok(20));
        assert_eq!(ip.total_len(), 50);
        assert_eq!((ip.src(), ip.dst(), ip.protocol(), ip.ttl()), (E.src, E.dst, IPPROTO_UDP, 64));
        assert!(!ip.is_fragment());
        assert_eq!(&f[34..38], &[0x0f, 0xa0, 0, 9]);
        assert_eq!(udp(&E, 1, 2, 10).len(), UDP_HEADERS);
        assert_eq!(udp(&E, 1, 2, 9000).len(), MAX_FRAME);
    }

    #[test]
    fn tcp_and_arp_frames() {
        let f = tcp(&E, 40000, 80, 100);
        let ip = Ipv4Header::new_checked(&f[14..]).unwrap();
        assert!(ip.checksum_ok(20));
        assert_eq!(ip.total_len(), 140);
        let a = arp_request(&E);
        assert_eq!(&a[0..6], &[0xff; 6]);
        assert_eq!(&a[12..14], &[8, 6]);
    }

    #[test]
    fn probe_roundtrip() {
        let mut f = udp(&E, 4000, 9, MIN_FRAME);
        assert_eq!(read_probe(&f), None);
        assert!(write_probe(&mut f, 77, 123_456_789));
        assert_eq!(read_probe(&f), Some((77, 123_456_789)));
        let mut short = udp(&E, 4000, 9, UDP_HEADERS);
        assert!(!write_probe(&mut short, 1, 1));
        assert_eq!(read_probe(&short), None);
    }
}
