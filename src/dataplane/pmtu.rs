//! Path-MTU discovery through the balancer: the ICMP "fragmentation needed" (type 3, code 4) a
//! worker sends back to a client whose DF packet is larger than the egress MTU, and the token
//! bucket that limits how many it sends.
//!
//! IPVS in direct-routing mode answers such a packet the same way; without the answer the client
//! never learns the path MTU and the flow stalls (a PMTU black hole) whenever the ingress carries a
//! larger MTU than the egress.
//!
//! The message goes out of the ingress interface, back the way the packet came: destination MAC =
//! the frame's source MAC (the client or its router), source MAC = the ingress interface's, source
//! IP = the VIP the packet was sent to (the client's socket is connected to it), destination IP =
//! the client. It quotes the packet's IP header and its first 8 payload bytes (RFC 792), and its
//! next-hop MTU field holds the egress MTU (RFC 1191). It is built in a caller-provided array: no
//! allocation. The message is small enough to write by hand (a 70-byte frame); `etherparse`
//! checks it in the tests.

use std::time::{Duration, Instant};

use crate::wire::{ETH_HEADER_LEN, ETHERTYPE_IPV4, IPPROTO_ICMP, IPV4_MIN_HEADER_LEN, MacAddr, internet_checksum};

/// Bytes of the original packet quoted after its IP header (RFC 792).
const QUOTED_PAYLOAD: usize = 8;
const ICMP_HEADER_LEN: usize = 8;
/// Length of the frame [`frag_needed`] writes: Ethernet + IP + ICMP header + the quoted IP header
/// (without options: packets with options are dropped before this point) + 8 bytes.
pub const FRAG_NEEDED_LEN: usize =
    ETH_HEADER_LEN + IPV4_MIN_HEADER_LEN + ICMP_HEADER_LEN + IPV4_MIN_HEADER_LEN + QUOTED_PAYLOAD;
/// TTL of the ICMP messages we originate.
const ICMP_TTL: u8 = 64;
/// DSCP "network control" (CS6), as Linux marks its own ICMP errors.
const ICMP_TOS: u8 = 0xc0;

/// Writes into `out` the Ethernet frame of an ICMP fragmentation-needed answering `frame` (an
/// option-less IPv4 frame as received, MACs not rewritten) with next-hop MTU `mtu`, sent from
/// `ingress_mac`. Returns `None` (and writes nothing) if `frame` is not an IPv4 frame with a
/// 20-byte header and 8 bytes of payload.
pub fn frag_needed(frame: &[u8], ingress_mac: MacAddr, mtu: u16, out: &mut [u8; FRAG_NEEDED_LEN]) -> Option<()> {
    let quote_len = IPV4_MIN_HEADER_LEN + QUOTED_PAYLOAD;
    let eth_type = frame.get(12..14)?;
    let quoted = frame.get(ETH_HEADER_LEN..ETH_HEADER_LEN + quote_len)?;
    if eth_type != ETHERTYPE_IPV4.to_be_bytes() || quoted[0] != 0x45 {
        return None;
    }
    let (client_mac, client_ip, vip) = (&frame[6..12], &quoted[12..16], &quoted[16..20]);

    out.fill(0);
    let (eth, rest) = out.split_at_mut(ETH_HEADER_LEN);
    eth[0..6].copy_from_slice(client_mac);
    eth[6..12].copy_from_slice(&ingress_mac.0);
    eth[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());

    let (ip, icmp) = rest.split_at_mut(IPV4_MIN_HEADER_LEN);
    let ip_total = (IPV4_MIN_HEADER_LEN + ICMP_HEADER_LEN + quote_len) as u16;
    ip[0] = 0x45;
    ip[1] = ICMP_TOS;
    ip[2..4].copy_from_slice(&ip_total.to_be_bytes());
    // Identification 0, no flags: a 56-byte datagram is never fragmented.
    ip[8] = ICMP_TTL;
    ip[9] = IPPROTO_ICMP;
    ip[12..16].copy_from_slice(vip);
    ip[16..20].copy_from_slice(client_ip);
    let c = internet_checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());

    icmp[0] = 3; // destination unreachable
    icmp[1] = 4; // fragmentation needed and DF set
    icmp[6..8].copy_from_slice(&mtu.to_be_bytes());
    icmp[ICMP_HEADER_LEN..].copy_from_slice(quoted);
    let c = internet_checksum(icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    Some(())
}

/// A token bucket: `rate` tokens per second, at most `burst` saved up. Time is passed in.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: u32,
    burst: u32,
    tokens: u32,
    /// When the last whole token was added.
    last: Instant,
}

impl TokenBucket {
    /// ICMP fragmentation-needed messages per second and worker.
    pub const ICMP_RATE: u32 = 100;
    /// ... and how many may go out at once after a quiet period.
    pub const ICMP_BURST: u32 = 20;

    /// A full bucket.
    pub fn new(rate: u32, burst: u32, now: Instant) -> TokenBucket {
        TokenBucket { rate: rate.max(1), burst, tokens: burst, last: now }
    }

    /// The worker's ICMP limit ([`Self::ICMP_RATE`] per second, bursts of [`Self::ICMP_BURST`]).
    pub fn icmp(now: Instant) -> TokenBucket {
        TokenBucket::new(Self::ICMP_RATE, Self::ICMP_BURST, now)
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        let per_token = Duration::from_secs(1) / self.rate;
        let elapsed = now.saturating_duration_since(self.last);
        let new = (elapsed.as_nanos() / per_token.as_nanos().max(1)).min(u128::from(self.burst)) as u32;
        if new > 0 {
            self.tokens = (self.tokens + new).min(self.burst);
            // Keep the fraction of a token already earned, unless the bucket is full.
            self.last = if self.tokens == self.burst { now } else { self.last + per_token * new };
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{
        Icmpv4Type, NetSlice, PacketBuilder, SlicedPacket, TransportSlice, icmpv4::DestUnreachableHeader,
    };

    const INGRESS: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
    const ROUTER: [u8; 6] = [2, 0, 0, 0, 9, 9];

    fn udp_df(payload: usize) -> Vec<u8> {
        let b = PacketBuilder::ethernet2(ROUTER, INGRESS.0).ipv4([192, 168, 1, 7], [10, 201, 0, 1], 63).udp(40000, 53);
        let mut v = Vec::new();
        b.write(&mut v, &vec![0x5a; payload]).unwrap();
        v
    }

    #[test]
    fn frag_needed_is_a_valid_icmp_to_the_client_quoting_the_packet() {
        let frame = udp_df(2000);
        let mut out = [0u8; FRAG_NEEDED_LEN];
        frag_needed(&frame, INGRESS, 1400, &mut out).unwrap();
        assert_eq!(&out[..6], &ROUTER, "back to the frame's sender");
        assert_eq!(&out[6..12], &INGRESS.0);
        let p = SlicedPacket::from_ethernet(&out).unwrap();
        let Some(NetSlice::Ipv4(ip)) = &p.net else { panic!("not ipv4: {p:?}") };
        let h = ip.header().to_header();
        assert_eq!((h.source, h.destination, h.time_to_live), ([10, 201, 0, 1], [192, 168, 1, 7], 64));
        assert_eq!(h.header_checksum, h.calc_header_checksum(), "IP header checksum");
        assert_eq!(usize::from(h.total_len), FRAG_NEEDED_LEN - ETH_HEADER_LEN);
        let Some(TransportSlice::Icmpv4(icmp)) = &p.transport else { panic!("not icmp: {p:?}") };
        assert_eq!(
            icmp.icmp_type(),
            Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 })
        );
        assert_eq!(icmp.checksum(), icmp.icmp_type().calc_checksum(icmp.payload()), "ICMP checksum");
        assert_eq!(icmp.payload(), &frame[14..14 + 28], "quotes the IP header and 8 bytes");
        // The quote parses as the client's datagram to the VIP.
        let quoted = etherparse::Ipv4HeaderSlice::from_slice(icmp.payload()).unwrap();
        assert_eq!((quoted.source(), quoted.destination()), ([192, 168, 1, 7], [10, 201, 0, 1]));
    }

    #[test]
    fn frag_needed_refuses_what_it_cannot_quote() {
        let mut out = [0u8; FRAG_NEEDED_LEN];
        let frame = udp_df(100);
        assert!(frag_needed(&frame[..40], INGRESS, 1400, &mut out).is_none(), "shorter than IP + 8");
        let mut opts = frame.clone();
        opts[14] = 0x46;
        assert!(frag_needed(&opts, INGRESS, 1400, &mut out).is_none(), "IP options");
        let mut arp = frame;
        arp[12] = 0x08;
        arp[13] = 0x06;
        assert!(frag_needed(&arp, INGRESS, 1400, &mut out).is_none());
        assert_eq!(out, [0u8; FRAG_NEEDED_LEN], "nothing written");
    }

    #[test]
    fn token_bucket_bursts_then_holds_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100, 20, t0);
        assert_eq!((0..50).filter(|_| b.take(t0)).count(), 20, "the burst");
        // 10 ms later: one more token (100/s).
        assert!(b.take(t0 + Duration::from_millis(10)));
        assert!(!b.take(t0 + Duration::from_millis(15)));
        // Over one second at a steady stream of tries: 100 sent.
        let start = t0 + Duration::from_millis(20);
        let sent = (0..10_000).filter(|i| b.take(start + Duration::from_micros(100 * i))).count();
        assert!((99..=101).contains(&sent), "{sent} in one second");
        // A long pause refills to the burst, not beyond.
        let later = start + Duration::from_secs(60);
        assert_eq!((0..50).filter(|_| b.take(later)).count(), 20);
    }
}
