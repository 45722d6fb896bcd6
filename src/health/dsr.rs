//! The `dsr` check: a TCP SYN to **VIP:port**, built here and sent on the egress interface to the
//! backend's MAC (an AF_PACKET send, as maglevd forwards client packets), from our egress address
//! and a port we reserve.
//!
//! A backend that holds the VIP on its loopback and listens answers with a SYN-ACK from VIP:port
//! to our egress address, routed over its on-link route, so it arrives on the egress interface,
//! where a filtered AF_PACKET socket sees it. SYN-ACK = up; RST = "refused"; nothing before the
//! timeout = down. A backend **without the VIP** (the commonest DSR fault: it answers on its
//! real IP, so `tcp`/`http` checks pass, while every client packet forwarded to it is dropped: a
//! "DSR blackhole") is not the destination of the SYN and stays silent.
//!
//! # Cleaning up the backend's half-open connection
//! Our kernel has no socket for the SYN-ACK and answers it with a RST; that RST goes to the VIP,
//! i.e. out of the default route towards the router and through the load balancers, and may
//! reach another backend, so it cannot be relied on. After a SYN-ACK the probe therefore sends
//! its own RST (sequence number = the SYN-ACK's acknowledgment number) to the backend's MAC,
//! which removes the half-open connection at once instead of leaving it to the backend's SYN-ACK
//! retries.
//!
//! # The source port
//! Each probe binds a TCP socket to our egress address and port 0 (never connected nor listening):
//! the kernel picks a free port and keeps it out of its own connections while the probe runs, so
//! a SYN-ACK for the probe can never be taken for one of the host's connections.
//!
//! # Checksums
//! Frames are built with `etherparse`, which computes the IPv4 and TCP checksums. Replies are not
//! checksum-verified: a backend on veth or macvlan leaves the TCP checksum to offload
//! (CHECKSUM_PARTIAL), and an AF_PACKET socket sees the frame before it is filled in; the match on
//! addresses, ports, flags and acknowledgment number is what identifies the reply.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TcpOptionElement, TransportSlice};

use crate::io::bpf::{Insn, OP_JEQ_K, OP_LD_B_ABS, OP_LD_H_ABS, OP_LD_W_ABS, OP_RET_K};
use crate::io::{BpfProgram, PacketSocket};
use crate::wire::MacAddr;

/// MSS announced in the probe SYN.
const SYN_MSS: u16 = 1460;
/// TTL of probe frames (they cross one L2 segment).
const TTL: u8 = 64;

/// One probe's addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SynProbe {
    pub src_mac: MacAddr,
    pub dst_mac: MacAddr,
    /// Our egress address and reserved port.
    pub src: SocketAddrV4,
    /// VIP:port.
    pub dst: SocketAddrV4,
    /// Initial sequence number.
    pub seq: u32,
}

fn tcp_frame(
    p: &SynProbe,
    build: impl FnOnce(etherparse::PacketBuilderStep<etherparse::TcpHeader>) -> Vec<u8>,
) -> Vec<u8> {
    build(PacketBuilder::ethernet2(p.src_mac.0, p.dst_mac.0).ipv4(p.src.ip().octets(), p.dst.ip().octets(), TTL).tcp(
        p.src.port(),
        p.dst.port(),
        p.seq,
        64240,
    ))
}

/// The SYN frame (Ethernet, IPv4, TCP with an MSS option).
pub fn build_syn(p: &SynProbe) -> Vec<u8> {
    tcp_frame(p, |b| {
        let b = b.syn();
        // An MSS option always fits the 40 option bytes: this cannot fail.
        let b = match b.options(&[TcpOptionElement::MaximumSegmentSize(SYN_MSS)]) {
            Ok(b) => b,
            Err(_) => return Vec::new(),
        };
        let mut out = Vec::with_capacity(b.size(0));
        let _ = b.write(&mut out, &[]);
        out
    })
}

/// The RST that closes the backend's half-open connection after its SYN-ACK: sequence number
/// `ack` (the SYN-ACK's acknowledgment number).
pub fn build_rst(p: &SynProbe, ack: u32) -> Vec<u8> {
    let p = SynProbe { seq: ack, ..*p };
    tcp_frame(&p, |b| {
        let b = b.rst();
        let mut out = Vec::with_capacity(b.size(0));
        let _ = b.write(&mut out, &[]);
        out
    })
}

/// What a received frame says about a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// SYN-ACK from VIP:port acknowledging our SYN; carries its acknowledgment number.
    SynAck { ack: u32 },
    /// RST (with ACK) from VIP:port acknowledging our SYN: nothing listens there.
    Refused,
}

/// Is `frame` the answer to `probe`? Anything else (another flow, a fragment, a malformed frame,
/// a reply to an older probe with another sequence number) is `None`.
pub fn parse_reply(frame: &[u8], probe: &SynProbe) -> Option<Reply> {
    let p = SlicedPacket::from_ethernet(frame).ok()?;
    let Some(NetSlice::Ipv4(ip)) = &p.net else { return None };
    let h = ip.header();
    if h.source_addr() != *probe.dst.ip() || h.destination_addr() != *probe.src.ip() {
        return None;
    }
    let Some(TransportSlice::Tcp(tcp)) = &p.transport else { return None };
    if tcp.source_port() != probe.dst.port()
        || tcp.destination_port() != probe.src.port()
        || !tcp.ack()
        || tcp.acknowledgment_number() != probe.seq.wrapping_add(1)
    {
        return None;
    }
    if tcp.rst() {
        Some(Reply::Refused)
    } else if tcp.syn() {
        Some(Reply::SynAck { ack: tcp.acknowledgment_number() })
    } else {
        None
    }
}

// Opcodes the VIP filter does not need (linux/bpf_common.h, linux/filter.h).
const OP_LDX_MSH: u16 = 0x01 | 0x10 | 0xa0; // ldxb 4*([k]&0xf)
const OP_LD_H_IND: u16 = 0x48; // ldh [x + k]
const OP_JSET_K: u16 = 0x45; // jset #k

/// Classic BPF: IPv4 TCP to `local` (address and port), first fragments only. The reply parser
/// checks everything again; the filter only keeps other traffic out of the socket.
pub fn reply_filter(local: SocketAddrV4) -> BpfProgram {
    let i = |code, jt, jf, k| Insn { code, jt, jf, k };
    // Index 12 is the drop; `jf` and `jt` count from the next instruction.
    let insns = vec![
        i(OP_LD_H_ABS, 0, 0, 12),                   // 0: ethertype
        i(OP_JEQ_K, 0, 10, 0x0800),                 // 1
        i(OP_LD_B_ABS, 0, 0, 23),                   // 2: protocol
        i(OP_JEQ_K, 0, 8, 6),                       // 3
        i(OP_LD_W_ABS, 0, 0, 30),                   // 4: destination
        i(OP_JEQ_K, 0, 6, u32::from(*local.ip())),  // 5
        i(OP_LD_H_ABS, 0, 0, 20),                   // 6: flags and fragment offset
        i(OP_JSET_K, 4, 0, 0x1fff),                 // 7: not the first fragment
        i(OP_LDX_MSH, 0, 0, 14),                    // 8: X = IPv4 header length
        i(OP_LD_H_IND, 0, 0, 16),                   // 9: TCP destination port
        i(OP_JEQ_K, 0, 1, u32::from(local.port())), // 10
        i(OP_RET_K, 0, 0, u32::MAX),                // 11: accept
        i(OP_RET_K, 0, 0, 0),                       // 12: drop
    ];
    BpfProgram::from_insns(insns).unwrap_or_else(|_| BpfProgram::drop_all())
}

/// Where dsr probes leave from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Egress {
    pub name: String,
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
}

/// One dsr probe of `vip` through the backend at `backend_mac`; `Err` says why it failed.
pub fn probe(egress: &Egress, backend_mac: MacAddr, vip: SocketAddrV4, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    // Reserve the source port (see the module docs); held until the probe returns.
    let reservation = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .and_then(|s| s.bind(&SocketAddrV4::new(egress.ip, 0).into()).map(|_| s))
        .map_err(|e| format!("cannot reserve a source port on {}: {e}", egress.ip))?;
    let port = reservation
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket_ipv4())
        .map(|a| a.port())
        .ok_or_else(|| "cannot read the reserved source port".to_string())?;
    let src = SocketAddrV4::new(egress.ip, port);
    let mut sock = PacketSocket::open(&egress.name, crate::wire::ETHERTYPE_IPV4).map_err(|e| e.to_string())?;
    sock.set_filter(&reply_filter(src)).map_err(|e| e.to_string())?;
    let seq = initial_seq(src, vip);
    let p = SynProbe { src_mac: egress.mac, dst_mac: backend_mac, src, dst: vip, seq };
    sock.send(&build_syn(&p)).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 256];
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(format!("no answer from {vip} within {} ms", timeout.as_millis()));
        }
        let Some(n) = sock.recv(&mut buf, deadline - now).map_err(|e| e.to_string())? else { continue };
        match parse_reply(&buf[..n], &p) {
            Some(Reply::SynAck { ack }) => {
                // Best effort: the backend's SYN-ACK retries end the connection anyway.
                let _ = sock.send(&build_rst(&p, ack));
                return Ok(());
            }
            Some(Reply::Refused) => return Err(format!("refused: RST from {vip}")),
            None => {}
        }
    }
}

/// A sequence number that differs per probe (time and ports mixed), so a late reply to an
/// earlier probe never matches a later one.
fn initial_seq(src: SocketAddrV4, dst: SocketAddrV4) -> u32 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let x = t.as_nanos() as u64 ^ (u64::from(src.port()) << 16) ^ u64::from(u32::from(*dst.ip()));
    xxhash_rust::xxh3::xxh3_64(&x.to_le_bytes()) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{Ipv4Slice, TcpSlice};

    fn probe_addrs() -> SynProbe {
        SynProbe {
            src_mac: MacAddr([0xc2, 0xb0, 0x57, 0x49, 0x47, 0xf2]),
            dst_mac: MacAddr([0xc2, 0xb0, 0x57, 0x49, 0x47, 0xa1]),
            src: "10.158.200.2:40001".parse().unwrap(),
            dst: "10.201.0.1:80".parse().unwrap(),
            seq: 0xfffffff0,
        }
    }

    /// The fields and both checksums of a built frame, read back by etherparse.
    fn check_frame(frame: &[u8], p: &SynProbe) -> (bool, bool, bool, u32) {
        assert_eq!(&frame[0..6], &p.dst_mac.0);
        assert_eq!(&frame[6..12], &p.src_mac.0);
        assert_eq!(&frame[12..14], &[0x08, 0x00]);
        let ip = Ipv4Slice::from_slice(&frame[14..]).unwrap();
        let h = ip.header();
        assert_eq!((h.source_addr(), h.destination_addr(), h.protocol().0, h.ttl()), (*p.src.ip(), *p.dst.ip(), 6, 64));
        assert_eq!(h.header_checksum(), h.to_header().calc_header_checksum(), "IPv4 header checksum");
        let tcp = TcpSlice::from_slice(ip.payload().payload).unwrap();
        assert_eq!((tcp.source_port(), tcp.destination_port()), (p.src.port(), p.dst.port()));
        let sum = tcp.calc_checksum_ipv4(p.src.ip().octets(), p.dst.ip().octets()).unwrap();
        assert_eq!(tcp.checksum(), sum, "TCP checksum");
        (tcp.syn(), tcp.ack(), tcp.rst(), tcp.sequence_number())
    }

    #[test]
    fn syn_frame_fields_and_checksums() {
        let p = probe_addrs();
        let f = build_syn(&p);
        assert_eq!(f.len(), 14 + 20 + 24);
        assert_eq!(check_frame(&f, &p), (true, false, false, p.seq));
        let tcp = TcpSlice::from_slice(&f[34..]).unwrap();
        let opts: Vec<_> = tcp.options_iterator().map(|o| o.unwrap()).collect();
        assert_eq!(opts, [TcpOptionElement::MaximumSegmentSize(1460)]);
    }

    #[test]
    fn rst_frame_fields_and_checksums() {
        let p = probe_addrs();
        let f = build_rst(&p, 0x1234_5678);
        assert_eq!(check_frame(&f, &p), (false, false, true, 0x1234_5678));
    }

    /// A reply as the backend would send it: from VIP:port to us, with the given flags and ack.
    fn reply(p: &SynProbe, syn: bool, rst: bool, ack: u32) -> Vec<u8> {
        let b = PacketBuilder::ethernet2(p.dst_mac.0, p.src_mac.0)
            .ipv4(p.dst.ip().octets(), p.src.ip().octets(), 64)
            .tcp(p.dst.port(), p.src.port(), 777, 65000)
            .ack(ack);
        let b = if syn { b.syn() } else { b };
        let b = if rst { b.rst() } else { b };
        let mut out = Vec::new();
        b.write(&mut out, &[]).unwrap();
        out
    }

    #[test]
    fn replies_are_matched_exactly() {
        let p = probe_addrs();
        let ack = p.seq.wrapping_add(1); // wraps to 0xfffffff1
        assert_eq!(parse_reply(&reply(&p, true, false, ack), &p), Some(Reply::SynAck { ack }));
        assert_eq!(parse_reply(&reply(&p, false, true, ack), &p), Some(Reply::Refused));
        // A reply to another probe (other sequence number), a plain ACK, other ports or addresses.
        assert_eq!(parse_reply(&reply(&p, true, false, ack + 1), &p), None);
        assert_eq!(parse_reply(&reply(&p, false, false, ack), &p), None);
        let other_port = SynProbe { src: "10.158.200.2:40002".parse().unwrap(), ..p };
        assert_eq!(parse_reply(&reply(&other_port, true, false, ack), &p), None);
        let other_vip = SynProbe { dst: "10.201.0.2:80".parse().unwrap(), ..p };
        assert_eq!(parse_reply(&reply(&other_vip, true, false, ack), &p), None);
        let other_service = SynProbe { dst: "10.201.0.1:443".parse().unwrap(), ..p };
        assert_eq!(parse_reply(&reply(&other_service, true, false, ack), &p), None);
        // Our own SYN is not a reply; truncated and garbage frames are ignored, never a panic.
        assert_eq!(parse_reply(&build_syn(&p), &p), None);
        let good = reply(&p, true, false, ack);
        for n in 0..good.len() {
            assert_eq!(parse_reply(&good[..n], &p), None, "cut at {n}");
        }
        assert_eq!(parse_reply(&[0xff; 100], &p), None);
    }

    #[test]
    fn filter_shape() {
        let f = reply_filter("10.158.200.2:40001".parse().unwrap());
        let insns = f.insns();
        assert_eq!(insns.len(), 13);
        // Every conditional jump lands inside the program, on the accept or the drop at the end.
        for (n, i) in insns.iter().enumerate() {
            if i.code == OP_JEQ_K || i.code == OP_JSET_K {
                assert!(n + 1 + usize::from(i.jt) < insns.len() && n + 1 + usize::from(i.jf) < insns.len());
                let targets = [n + 1 + usize::from(i.jt), n + 1 + usize::from(i.jf)];
                assert!(targets.iter().any(|&t| t == 12 || t == n + 1), "insn {n}: {targets:?}");
            }
        }
        assert_eq!(insns[5].k, u32::from(Ipv4Addr::new(10, 158, 200, 2)));
        assert_eq!(insns[10].k, 40001);
        assert_eq!((insns[11].k, insns[12].k), (u32::MAX, 0));
    }
}
