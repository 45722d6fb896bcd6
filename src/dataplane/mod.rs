//! The forwarding hot path: `forward(frame, snapshot) -> Verdict`, a pure function over one
//! Ethernet frame and an immutable [`Snapshot`].
//!
//! # Contract
//! * **No I/O, no allocation, no lock, no panic** on any input. Every index is bounds-checked by
//!   the typed views of [`crate::wire`] or by an explicit length check before it is used.
//! * On [`Verdict::Forward`] the frame's destination MAC is the backend's and its source MAC the
//!   egress interface's; **no other byte changes** (direct server return: the IP packet, TTL and
//!   checksums are untouched, the backend holds the VIP itself). On [`Verdict::Pass`] and
//!   [`Verdict::Drop`] the frame is not modified at all. Property tests check all of this.
//! * Frames that are not for a VIP are [`Verdict::Pass`]ed: left to the kernel. Every frame for a
//!   VIP is either forwarded or dropped with a [`DropReason`]; each reason has its own counter.
//! * The decision takes what the receive ring knows besides the bytes ([`FrameMeta`]): the VLAN
//!   tag the kernel stripped, whether the frame is a GSO super-frame, and the egress MTU.
//!   [`forward`] is [`forward_frame`] for an untagged, non-GSO frame with no MTU limit.
//!
//! # What is not forwarded
//! * **VLANs.** The kernel strips an 802.1Q tag before the packet tap and reports it out of band.
//!   The ingress interface is untagged (a VLAN subinterface's frames arrive without a tag), so a
//!   frame that carried a non-zero VLAN ID belongs to another network: it is passed
//!   ([`PassReason::ForeignVlan`]) and never leaves untagged on the egress. VLAN ID 0 is a
//!   priority tag on an untagged frame and is the ingress's own.
//! * **Our own frames.** A frame whose source MAC is the egress (or ingress) interface's is one we
//!   sent that came back (a one-arm macvlan hands them back): forwarding it would loop
//!   ([`DropReason::OwnFrame`]).
//! * **Frames larger than the egress MTU** (non-GSO; a GSO super-frame is segmented to its MSS on
//!   egress). maglevd does not fragment. With DF set the frame is dropped as
//!   [`DropReason::FragNeeded`] and the worker answers the client with an ICMP
//!   fragmentation-needed carrying the egress MTU, as IPVS does in direct-routing mode (see
//!   [`pmtu`]); without DF, or for an ICMP error (no ICMP error is sent about an ICMP error), it
//!   is dropped as [`DropReason::TooBig`].
//!
//! # TTL
//! The balancer is a transparent wire for TTL, like IPVS in direct-routing mode (the director
//! receives the packet locally and re-sends it without routing it): it neither decrements nor
//! checks the TTL; the frame reaches the backend as the last router sent it.
//!
//! # Which backend
//! The service is found by (destination VIP, protocol, destination port), falling back to the
//! VIP's "all ports" service. The flow hash is XXH3-64 (`xxhash-rust`, a specified and frozen
//! algorithm) seeded with [`FLOW_SEED`], over the bytes of the service's [`FlowKey`] in network
//! order (see [`flow_hash`]). The hash picks a slot of the service's Maglev table
//! ([`crate::maglev::Table::lookup`]). Every frontend with the same configuration and backend
//! state therefore picks the same backend for the same packet — which is what lets ECMP spread a
//! VIP over several frontends and move flows between them.
//!
//! * **IP fragments** carry no ports after the first one. The first fragment of a TCP or UDP
//!   datagram has them: it is routed like any packet of its flow (its port's service, its flow's
//!   backend). The later fragments (and every fragment of another protocol) use the VIP's
//!   *fragment service* for the protocol: its "all ports" service, else its only service for that
//!   protocol (a VIP with several port services for one protocol cannot attribute them and drops
//!   them: [`DropReason::FragmentNoService`]); with tracking they follow their first fragment's
//!   backend (below), without it they are hashed with both ports 0.
//! * **ICMP errors** (destination unreachable, including fragmentation needed, and time exceeded)
//!   sent to a VIP quote the header of a packet the backend sent *from* the VIP. They are hashed as
//!   the quoted flow's reverse — the client's packets — so they reach the backend that owns the flow
//!   (this is what makes path-MTU discovery work through the balancer).
//! * **IPv4 options** are dropped ([`DropReason::Ipv4Options`]), as Katran does: they are rare in
//!   legitimate VIP traffic and common in attacks.

//!
//! # Connection tracking
//! The daemon's workers forward with [`forward_tracked`]: each worker keeps a
//! [`crate::flow::FlowTable`] (5-tuple → backend id; see [`crate::flow`] for its design) and a
//! [`crate::flow::FragTable`]. PACKET_FANOUT's hash mode sends every packet of a flow to the same
//! worker, so the tables need no sharing. Per packet of a TCP/UDP flow:
//!
//! * **Tracked** and its backend still *keeps flows* (configured in the same service, MAC known,
//!   not down by its health check; **a drained, weight-0 backend keeps its flows**: that is what a
//!   drain is): that backend, whatever the table says now. A reload that adds a backend or
//!   reorders them moves no established flow (the entry names the backend by its stable id).
//! * **Tracked, but its backend went away** (removed, down, MAC lost): the table's backend, which
//!   replaces the entry (`rechosen`). So does a **pure SYN** (no ACK) on an entry whose backend
//!   is drained: the client closed its connection and opens a new one from the same port, and a
//!   new connection must not reach a drained backend (IPVS's `conn_reuse_mode` does the same). A
//!   retransmitted SYN to a backend that still takes new flows stays where it is.
//! * **Not tracked** (a new flow, one that arrived mid-connection after an ECMP change, or one
//!   whose entry expired or was evicted): the table's backend, remembered. Any packet creates an
//!   entry, not only a SYN.
//! * An **ICMP error** about a flow goes to the flow's tracked backend; it creates no entry.
//! * A datagram's **first fragment** is routed as its flow's packet and remembered by (source,
//!   destination, protocol, IP ID) for the fragment timeout; its **later fragments** follow it.
//!   A later fragment whose first one this worker did not see falls back to the hash with ports 0
//!   (`fragments_untracked`).
//!
//! There is no state shared between frontends. A flow that ECMP moves to another frontend is
//! picked there from the same table (every frontend builds the same table from the same
//! configuration), so it reaches the same backend unless the backends changed since it began: the
//! argument of the Maglev paper (§3.3): consistent hashing makes the table mostly agree across
//! changes, and connection tracking covers the rest on the frontend that holds the flow.
//!
//! # Batches: hiding the flow table's memory latency
//! With many active flows in random order, nearly every packet's flow-table bucket is in memory,
//! not in the CPU caches, and one packet's work (~150 instructions) is too short for the CPU to
//! reach the next packet's bucket while it waits for this one: handled one at a time, a packet
//! costs a whole memory latency. The workers therefore handle a batch in two passes, through a
//! [`Lookahead`]:
//!
//! 1. **Prefetch pass**: for every frame, [`flow_key`] parses just enough to know the 5-tuple the
//!    flow table will be asked for (no validation), hashes it once ([`FiveTuple::hashed`]) and
//!    keeps the key and hash; for the first [`PREFETCH_DISTANCE`] frames it also starts loading
//!    their buckets ([`crate::flow::FlowTable::prefetch`]).
//! 2. **Forward pass**: before forwarding frame `i`, the bucket of frame `i + PREFETCH_DISTANCE`
//!    is prefetched; then frame `i` is forwarded exactly as [`forward_tracked`] does, except that
//!    the flow-table lookup reuses the first pass's hash when the key it parsed is the same one.
//!
//! So the memory loads of several packets are in flight while the CPU does the other packets'
//! work, instead of one after the other. Prefetching a fixed distance ahead, rather than every
//! bucket of the batch at once, keeps the number of lines in flight within what the CPU can track
//! and the prefetched lines in the first-level cache until they are used (both variants measured;
//! the fixed distance was as fast or faster). The first pass is only a hint: it changes no state,
//! a frame it cannot parse (or gets wrong) is forwarded like any other, only without the
//! prefetch, and the verdicts are those of [`forward_tracked`] one frame at a time (tested).

pub mod pmtu;
mod snapshot;

pub use snapshot::{BackendIds, BackendState, BuildState, Healthy, Links, Resolver, ServiceState, Snapshot};

use crate::config::FlowKey;
use crate::flow::{FiveTuple, FragKey, HashedTuple, TCP_ACK, TCP_SYN, Tick, Tracker};
use crate::table::ServiceTable;
use crate::wire::{
    self, ETH_HEADER_LEN, ETHERTYPE_IPV4, EthernetFrame, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IPV4_MIN_HEADER_LEN,
    Ipv4Header,
};

/// Seed of the flow hash: the ASCII bytes `"mlvflow1"` read as a little-endian u64. Fixed forever
/// (changing it remaps every flow).
pub const FLOW_SEED: u64 = u64::from_le_bytes(*b"mlvflow1");

/// What to do with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The MACs were rewritten: transmit the frame on the egress interface.
    Forward { service: u16, backend: u32 },
    /// Not ours: leave it to the kernel.
    Pass(PassReason),
    /// Ours but unusable: count and discard.
    Drop(DropReason),
}

macro_rules! reasons {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident = $s:literal,)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($(#[$vm])* $v,)* }
        impl $name {
            /// Every reason, in counter order.
            pub const ALL: &'static [$name] = &[$($name::$v,)*];
            /// Number of reasons (the length of a counter array).
            pub const COUNT: usize = Self::ALL.len();
            /// The reason's name in metrics and logs (snake_case).
            pub fn name(self) -> &'static str {
                match self { $($name::$v => $s,)* }
            }
            /// Index into a counter array.
            pub fn index(self) -> usize {
                self as usize
            }
        }
    };
}

reasons! {
    /// Why a frame was dropped. Each has a counter.
    DropReason {
        /// Shorter than an Ethernet header.
        EthTruncated = "eth_truncated",
        /// IPv4 ethertype but shorter than a minimal IPv4 header.
        Ipv4Truncated = "ipv4_truncated",
        /// IPv4 ethertype but the version field is not 4.
        Ipv4Version = "ipv4_version",
        /// IHL below 5.
        Ipv4HeaderLength = "ipv4_header_length",
        /// IHL above 5: IP options.
        Ipv4Options = "ipv4_options",
        /// Total length below the header or beyond the frame.
        Ipv4TotalLength = "ipv4_total_length",
        /// Header checksum wrong.
        Ipv4Checksum = "ipv4_checksum",
        /// TCP/UDP header incomplete.
        L4Truncated = "l4_truncated",
        /// For a VIP, but no service matches the protocol and port.
        NoService = "no_service",
        /// The service has no usable backend (all drained, down or unresolved).
        NoBackend = "no_backend",
        /// A fragment for a VIP whose fragment service is ambiguous or missing.
        FragmentNoService = "fragment_no_service",
        /// ICMP to a VIP that is not an error we relay (e.g. echo).
        IcmpUnsupported = "icmp_unsupported",
        /// ICMP error whose quoted header is truncated or malformed.
        IcmpMalformed = "icmp_malformed",
        /// ICMP error quoting a flow that belongs to no service.
        IcmpNoService = "icmp_no_service",
        /// Sent by this host (source MAC = the egress or ingress interface's) and handed back to
        /// us: forwarding it again would loop.
        OwnFrame = "own_frame",
        /// Larger than the egress MTU with DF set (not GSO): the worker answers with an ICMP
        /// fragmentation-needed (rate-limited; see the `icmp_frag_needed_*` counters).
        FragNeeded = "frag_needed",
        /// Larger than the egress MTU without DF, or an ICMP error that large, or with an Ethernet
        /// trailer that makes the frame too long: maglevd does not fragment and sends no ICMP error
        /// about an ICMP error.
        TooBig = "too_big",
        /// Refused by the TX ring: no free slot (decided by the worker, not by `forward()`).
        TxRingFull = "tx_ring_full",
        /// Refused by the TX ring: larger than a slot, or an unusable virtio-net header (decided by
        /// the worker).
        TxRejected = "tx_rejected",
        /// Queued in the TX ring but discarded because `send()` failed with a hard error (e.g.
        /// ENETDOWN) or made no progress for a bounded time (decided by the worker).
        TxSendFailed = "tx_send_failed",
    }
}

impl DropReason {
    /// Reasons only the worker gives (TX ring outcomes), never [`forward_frame`].
    pub const AFTER_FORWARD: &'static [DropReason] =
        &[DropReason::TxRingFull, DropReason::TxRejected, DropReason::TxSendFailed];
}

reasons! {
    /// Why a frame was left to the kernel. Each has a counter.
    PassReason {
        /// Tagged with a VLAN other than the ingress's own (the kernel stripped the tag and
        /// reported it): another network's frame, whatever its destination.
        ForeignVlan = "foreign_vlan",
        /// Not IPv4 (ARP, IPv6, an 802.1Q tag the kernel left in the frame, anything else).
        NotIpv4 = "not_ipv4",
        /// Not addressed to the ingress interface's MAC (broadcast, multicast, other host).
        NotOurMac = "not_our_mac",
        /// IPv4 but the destination is not a VIP.
        NotVip = "not_vip",
    }
}

/// The flow hash: XXH3-64 with [`FLOW_SEED`] over the key's bytes, all in network order:
///
/// | key | bytes hashed |
/// |---|---|
/// | `5-tuple` | src addr (4), dst addr (4), protocol (1), src port (2), dst port (2) |
/// | `src-ip` | src addr (4) |
/// | `src-ip-port` | src addr (4), src port (2) |
///
/// Fragments are hashed with both ports 0.
#[inline]
pub fn flow_hash(key: FlowKey, src: u32, dst: u32, proto: u8, sport: u16, dport: u16) -> u64 {
    use xxhash_rust::xxh3::xxh3_64_with_seed;
    match key {
        FlowKey::FiveTuple => {
            let mut b = [0u8; 13];
            b[0..4].copy_from_slice(&src.to_be_bytes());
            b[4..8].copy_from_slice(&dst.to_be_bytes());
            b[8] = proto;
            b[9..11].copy_from_slice(&sport.to_be_bytes());
            b[11..13].copy_from_slice(&dport.to_be_bytes());
            xxh3_64_with_seed(&b, FLOW_SEED)
        }
        FlowKey::SrcIp => xxh3_64_with_seed(&src.to_be_bytes(), FLOW_SEED),
        FlowKey::SrcIpPort => {
            let mut b = [0u8; 6];
            b[0..4].copy_from_slice(&src.to_be_bytes());
            b[4..6].copy_from_slice(&sport.to_be_bytes());
            xxh3_64_with_seed(&b, FLOW_SEED)
        }
    }
}

const ICMP_DEST_UNREACHABLE: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_HEADER_LEN: usize = 8;

/// What the receive path knows about a frame besides its bytes, and the MTU it would leave with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FrameMeta {
    /// The 802.1Q TCI the kernel stripped from the frame (`TP_STATUS_VLAN_VALID`), if any.
    pub vlan_tci: Option<u16>,
    /// A GSO super-frame (segmented to its MSS on egress): exempt from the MTU check.
    pub gso: bool,
    /// MTU of the egress interface (IP bytes per frame); `None`: no limit.
    pub egress_mtu: Option<u32>,
}

impl FrameMeta {
    /// The VLAN ID bits of an 802.1Q TCI.
    pub const VID_MASK: u16 = 0x0fff;

    /// True if the frame carried a VLAN ID other than 0 (0 = priority tag only = untagged).
    #[inline]
    pub fn foreign_vlan(&self) -> bool {
        self.vlan_tci.is_some_and(|tci| tci & Self::VID_MASK != 0)
    }
}

/// [`forward_frame`] for an untagged, non-GSO frame with no egress MTU limit.
pub fn forward(frame: &mut [u8], snap: &Snapshot) -> Verdict {
    forward_frame(frame, &FrameMeta::default(), snap)
}

/// Decide what to do with `frame` received with `meta` and, on [`Verdict::Forward`], rewrite its MAC
/// addresses in place. The frame is unchanged on any other verdict. Without connection tracking:
/// every packet's backend comes from the table (see [`forward_tracked`]).
pub fn forward_frame(frame: &mut [u8], meta: &FrameMeta, snap: &Snapshot) -> Verdict {
    rewrite(frame, snap, classify(frame, meta, snap, None))
}

/// [`forward_frame`] with the worker's connection tracking (see "Connection tracking" in the
/// module docs): the backend of a known flow is its entry's while that backend still serves; a
/// new flow's comes from the table and is remembered as of `now`.
pub fn forward_tracked(
    frame: &mut [u8],
    meta: &FrameMeta,
    snap: &Snapshot,
    tracker: &mut Tracker,
    now: Tick,
) -> Verdict {
    rewrite(frame, snap, classify(frame, meta, snap, Some((tracker, now, None))))
}

/// The flow-table key [`forward_tracked`] will look up for `frame`, if it can be told cheaply:
/// an IPv4 TCP or UDP packet without options that is not a later fragment. Nothing else is checked
/// (MACs, VIP, checksum, lengths): the frame may still be passed or dropped, and then the guess only
/// cost a prefetch. Every read is bounds-checked; any input is fine.
#[inline]
pub fn flow_key(frame: &[u8]) -> Option<FiveTuple> {
    let eth = EthernetFrame::new_checked(frame)?;
    if eth.ethertype() != ETHERTYPE_IPV4 {
        return None;
    }
    let packet = eth.payload();
    let ip = Ipv4Header::new_checked(packet)?;
    let proto = ip.protocol();
    // Version 4, IHL 5: a header with options is dropped anyway.
    if packet.first() != Some(&0x45) || ip.frag_offset() != 0 || !matches!(proto, IPPROTO_TCP | IPPROTO_UDP) {
        return None;
    }
    let (sport, dport) = packet.get(IPV4_MIN_HEADER_LEN..).and_then(wire::ports)?;
    Some(FiveTuple { src: ip.src_raw(), dst: ip.dst_raw(), sport, dport, proto })
}

/// How many frames ahead of the one it forwards [`Lookahead`] prefetches a flow-table bucket.
pub const PREFETCH_DISTANCE: usize = 8;

/// [`forward_tracked`] for a batch of frames in two passes (see "Batches" in the module docs):
/// [`Lookahead::prefetch`] on every frame of the batch, then [`Lookahead::forward`] on every frame,
/// with the same index `i` for the same frame (`i < N`). The verdicts and the tracker's state are
/// exactly those of [`forward_tracked`] on each frame in turn: the first pass changes nothing but
/// what is in the CPU caches, and the second takes a key's hash from the first only when the key
/// it parses is the same.
#[derive(Debug, Clone)]
pub struct Lookahead<const N: usize> {
    /// Frame `i`'s key and hash, from the first pass.
    keys: [Option<HashedTuple>; N],
}

impl<const N: usize> Default for Lookahead<N> {
    fn default() -> Self {
        Lookahead { keys: [None; N] }
    }
}

impl<const N: usize> Lookahead<N> {
    /// First pass, frame `i` of the batch: hash its flow key ([`flow_key`]) and prefetch the flow
    /// table's bucket of it. Touches nothing but the caches; `i ≥ N` does nothing.
    #[inline]
    pub fn prefetch(&mut self, i: usize, frame: &[u8], tracker: &Tracker) {
        if let Some(slot) = self.keys.get_mut(i) {
            *slot = flow_key(frame).map(|key| {
                let key = key.hashed();
                if i < PREFETCH_DISTANCE {
                    tracker.flows.prefetch(&key);
                }
                key
            });
        }
    }

    /// Second pass, frame `i` of the batch: [`forward_tracked`], with the hash of the first pass.
    #[inline]
    pub fn forward(
        &self,
        i: usize,
        frame: &mut [u8],
        meta: &FrameMeta,
        snap: &Snapshot,
        tracker: &mut Tracker,
        now: Tick,
    ) -> Verdict {
        if let Some(Some(ahead)) = self.keys.get(i + PREFETCH_DISTANCE) {
            tracker.flows.prefetch(ahead);
        }
        let hint = self.keys.get(i).and_then(Option::as_ref);
        rewrite(frame, snap, classify(frame, meta, snap, Some((tracker, now, hint))))
    }
}

/// Apply `decision` to the frame: on [`Verdict::Forward`], the backend's and the egress MACs.
#[inline]
fn rewrite(frame: &mut [u8], snap: &Snapshot, decision: Verdict) -> Verdict {
    if let Verdict::Forward { service, backend } = decision {
        // A snapshot's tables only hold backends with a known MAC, tracked flows are only kept on
        // one that has it, and `classify` has checked the frame's length; the `else` arms are
        // defence in depth, never a silent pass-through.
        let (Some(mac), Some(mut eth)) = (snap.backend_mac(service, backend), EthernetFrame::new_checked(&mut *frame))
        else {
            return Verdict::Drop(DropReason::NoBackend);
        };
        eth.set_addrs(mac, snap.links().egress_mac);
    }
    decision
}

/// The tracking state, the time of the batch and the first pass's hashed key (see [`Lookahead`]),
/// when tracking.
type Track<'a> = Option<(&'a mut Tracker, Tick, Option<&'a HashedTuple>)>;

/// The decision, without touching the frame.
fn classify(frame: &[u8], meta: &FrameMeta, snap: &Snapshot, track: Track<'_>) -> Verdict {
    use DropReason as D;
    if meta.foreign_vlan() {
        return Verdict::Pass(PassReason::ForeignVlan);
    }
    let Some(eth) = EthernetFrame::new_checked(frame) else {
        return Verdict::Drop(D::EthTruncated);
    };
    if eth.ethertype() != ETHERTYPE_IPV4 {
        return Verdict::Pass(PassReason::NotIpv4);
    }
    if eth.dst() != snap.links().ingress_mac {
        return Verdict::Pass(PassReason::NotOurMac);
    }
    let packet = eth.payload();
    let Some(ip) = Ipv4Header::new_checked(packet) else {
        return Verdict::Drop(D::Ipv4Truncated);
    };
    if ip.version() != 4 {
        return Verdict::Drop(D::Ipv4Version);
    }
    let dst = ip.dst_raw();
    if !snap.is_vip(dst) {
        return Verdict::Pass(PassReason::NotVip);
    }
    let src_mac = eth.src();
    if src_mac == snap.links().egress_mac || src_mac == snap.links().ingress_mac {
        return Verdict::Drop(D::OwnFrame);
    }
    let ihl = ip.header_len();
    if ihl < IPV4_MIN_HEADER_LEN {
        return Verdict::Drop(D::Ipv4HeaderLength);
    }
    if ihl > IPV4_MIN_HEADER_LEN {
        return Verdict::Drop(D::Ipv4Options);
    }
    let total = ip.total_len();
    if total < ihl || total > packet.len() {
        return Verdict::Drop(D::Ipv4TotalLength);
    }
    // IHL is exactly 5 here (options were dropped above).
    if !ip.checksum_ok_20() {
        return Verdict::Drop(D::Ipv4Checksum);
    }
    let verdict = route(snap, &ip, packet, total, track);
    // Only a frame that would be forwarded is checked against the egress MTU: the client learns
    // the path MTU of a flow that works, not of one dropped anyway.
    match (verdict, meta.egress_mtu) {
        (Verdict::Forward { .. }, Some(mtu)) if !meta.gso && frame.len() > ETH_HEADER_LEN + mtu as usize => {
            // The frame length is what the kernel checks on send; only a packet that is itself too
            // long (not one with an oversized Ethernet trailer) is worth an ICMP.
            if total > mtu as usize && ip.protocol() != IPPROTO_ICMP && dont_fragment(packet) {
                Verdict::Drop(D::FragNeeded)
            } else {
                Verdict::Drop(D::TooBig)
            }
        }
        _ => verdict,
    }
}

/// The IPv4 don't-fragment flag of a packet whose header was checked.
#[inline]
fn dont_fragment(packet: &[u8]) -> bool {
    packet.get(6).is_some_and(|b| b & 0x40 != 0)
}

/// Byte 13 of a TCP header: the flags.
const TCP_FLAGS_OFFSET: usize = 13;

/// The service and backend of a checked, option-less IPv4 packet to a VIP.
#[inline]
fn route(snap: &Snapshot, ip: &Ipv4Header<&[u8]>, packet: &[u8], total: usize, track: Track<'_>) -> Verdict {
    use DropReason as D;
    let ihl = IPV4_MIN_HEADER_LEN;
    let dst = ip.dst_raw();
    let src = ip.src_raw();
    let proto = ip.protocol();
    // `total ≤ packet.len()`, so this slice is in bounds; it excludes Ethernet padding.
    let l4 = &packet[ihl..total];
    let first_fragment = ip.more_fragments() && ip.frag_offset() == 0;
    if ip.is_fragment() && !(first_fragment && matches!(proto, IPPROTO_TCP | IPPROTO_UDP)) {
        return later_fragment(snap, src, dst, proto, ip.ident(), track);
    }
    match proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            // A first fragment needs only its ports; a whole segment its whole L4 header.
            let min = match (first_fragment, proto) {
                (true, _) => 4,
                (false, IPPROTO_TCP) => 20,
                (false, _) => 8,
            };
            let (true, Some((sport, dport))) = (l4.len() >= min, wire::ports(l4)) else {
                return Verdict::Drop(D::L4Truncated);
            };
            let Some(svc) = snap.service(dst, proto, dport) else {
                return Verdict::Drop(D::NoService);
            };
            let flags = if proto == IPPROTO_TCP { l4.get(TCP_FLAGS_OFFSET).copied().unwrap_or(0) } else { 0 };
            let Some((tracker, now, hint)) = track else {
                return pick(snap, svc, src, dst, proto, sport, dport);
            };
            let key = FiveTuple { src, dst, sport, dport, proto };
            let key = match hint {
                Some(h) if *h.key() == key => *h,
                _ => key.hashed(),
            };
            let verdict = pick_tracked(snap, svc, &key, flags, tracker, now, true);
            if first_fragment
                && let Verdict::Forward { service, backend } = verdict
                && let Some(id) = snap.backend_id(service, backend)
            {
                // The later fragments carry no ports: they follow this one by the IP ID.
                tracker.frags.remember(&FragKey { src, dst, proto, id: ip.ident() }, id, now);
            }
            verdict
        }
        IPPROTO_ICMP => icmp_error(snap, l4, dst, track),
        _ => Verdict::Drop(D::NoService),
    }
}

/// A fragment without ports (not the first one, or of another protocol): the backend its first
/// fragment went to if this worker saw it, else the hash of source, destination and protocol
/// (ports 0) in the VIP's fragment service.
fn later_fragment(snap: &Snapshot, src: u32, dst: u32, proto: u8, ident: u16, track: Track<'_>) -> Verdict {
    if let Some((tracker, now, _)) = track {
        let followed = tracker.frags.lookup(&FragKey { src, dst, proto, id: ident }, now).and_then(|id| {
            let (service, backend) = snap.backend_by_id(id)?;
            snap.keeps(service, backend).then_some(Verdict::Forward { service, backend })
        });
        if let Some(v) = followed {
            tracker.fragments_followed += 1;
            return v;
        }
        tracker.fragments_untracked += 1;
    }
    match snap.fragment_service(dst, proto) {
        Some(svc) => pick(snap, svc, src, dst, proto, 0, 0),
        None => Verdict::Drop(DropReason::FragmentNoService),
    }
}

/// An ICMP message to VIP `vip`: relay errors about a VIP flow to the flow's backend.
fn icmp_error(snap: &Snapshot, icmp: &[u8], vip: u32, track: Track<'_>) -> Verdict {
    use DropReason as D;
    let Some(&kind) = icmp.first() else {
        return Verdict::Drop(D::IcmpMalformed);
    };
    if kind != ICMP_DEST_UNREACHABLE && kind != ICMP_TIME_EXCEEDED {
        return Verdict::Drop(D::IcmpUnsupported);
    }
    // The quoted packet: at least its IP header and the 4 bytes of ports.
    let Some(inner) = icmp.get(ICMP_HEADER_LEN..).and_then(Ipv4Header::new_checked) else {
        return Verdict::Drop(D::IcmpMalformed);
    };
    let ihl = inner.header_len();
    if inner.version() != 4 || ihl < IPV4_MIN_HEADER_LEN || inner.frag_offset() != 0 {
        return Verdict::Drop(D::IcmpMalformed);
    }
    let Some((vip_port, client_port)) = icmp.get(ICMP_HEADER_LEN + ihl..).and_then(wire::ports) else {
        return Verdict::Drop(D::IcmpMalformed);
    };
    let proto = inner.protocol();
    // The quoted packet went from the VIP (a backend's reply) to the client.
    if inner.src_raw() != vip || (proto != IPPROTO_TCP && proto != IPPROTO_UDP) {
        return Verdict::Drop(D::IcmpNoService);
    }
    let Some(svc) = snap.service(vip, proto, vip_port) else {
        return Verdict::Drop(D::IcmpNoService);
    };
    // The client → VIP direction, exactly like the flow's own packets: its tracked backend, else
    // its hash. An error never creates a flow.
    let client = inner.dst_raw();
    match track {
        Some((tracker, now, _)) => {
            let key = FiveTuple { src: client, dst: vip, sport: client_port, dport: vip_port, proto }.hashed();
            pick_tracked(snap, svc, &key, 0, tracker, now, false)
        }
        None => pick(snap, svc, client, vip, proto, client_port, vip_port),
    }
}

/// The backend of flow `key` of service `svc`: its entry's while that backend still serves
/// (configured in this service, MAC known, not down; a drained one too), else the table's, which
/// becomes the entry (if `create`).
#[inline]
fn pick_tracked(
    snap: &Snapshot,
    svc: u16,
    hashed: &HashedTuple,
    tcp_flags: u8,
    tracker: &mut Tracker,
    now: Tick,
    create: bool,
) -> Verdict {
    if let Some(id) = tracker.flows.lookup_hashed(hashed, tcp_flags, now) {
        match snap.backend_by_id(id) {
            // A pure SYN is a new connection (the client reusing the port): it may stay on the
            // entry's backend only if that backend takes new flows, never on a drained one.
            Some((service, backend))
                if service == svc
                    && snap.keeps(service, backend)
                    && (tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN || snap.takes_new(service, backend)) =>
            {
                return Verdict::Forward { service, backend };
            }
            _ => tracker.rechosen += 1,
        }
    }
    let key = hashed.key();
    let verdict = pick(snap, svc, key.src, key.dst, key.proto, key.sport, key.dport);
    if create
        && let Verdict::Forward { service, backend } = verdict
        && let Some(id) = snap.backend_id(service, backend)
    {
        tracker.flows.insert_hashed(hashed, id, tcp_flags, now);
    }
    verdict
}

/// The table's backend for a flow of service `svc`: the one decision every path makes for a flow
/// it does not track (or not yet).
#[inline]
fn pick(snap: &Snapshot, svc: u16, src: u32, dst: u32, proto: u8, sport: u16, dport: u16) -> Verdict {
    let Some(state) = snap.service_state(svc) else {
        return Verdict::Drop(DropReason::NoService);
    };
    let backend = match &*state.table {
        ServiceTable::Maglev(t) => t.lookup(flow_hash(state.flow_key, src, dst, proto, sport, dport)),
        ServiceTable::IpvsMh(m) => m.lookup_v4(src, sport),
    };
    match backend {
        Some(backend) => Verdict::Forward { service: svc, backend },
        None => Verdict::Drop(DropReason::NoBackend),
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tracked_tests;
