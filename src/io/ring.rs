//! AF_PACKET rings: [`RxRing`], [`TxRing`], and the plain [`PacketSocket`].
//!
//! # RX ring
//! `socket(AF_PACKET, SOCK_RAW, 0)` (protocol 0: receives nothing yet) →
//! `PACKET_VERSION` → `PACKET_VNET_HDR` → `PACKET_IGNORE_OUTGOING` →
//! `SO_ATTACH_FILTER` → `PACKET_RX_RING` → `mmap(MAP_SHARED|MAP_POPULATE)` →
//! `bind(ifindex, ETH_P_ALL)` (frames start arriving, already filtered) →
//! `PACKET_FANOUT`. Doing the filter before `bind` means no unfiltered frame
//! can be in the ring, so there is nothing to drain.
//!
//! **TPACKET_V2 is the default**: every frame has its own status word, so a
//! lone packet is visible as soon as the kernel wrote it (≈ 14 µs here);
//! frames are still drained in batches without a system call. TPACKET_V3
//! hands over whole blocks, which retire only when full or when
//! `block_timeout_ms` expires (≈ 1 ms latency at 1 ms), so it is an option
//! for bulk capture only.
//!
//! **Fanout**: `PACKET_FANOUT_HASH` on the kernel's flow hash: all frames of
//! one 5-tuple land on the same socket (worker). Fragments of a datagram are
//! hashed on addresses only (the flow dissector does not read ports of
//! fragments), so they too stay together, though not necessarily with the
//! unfragmented packets of the same flow. `PACKET_FANOUT_FLAG_DEFRAG` is off
//! by default: it would reassemble fragments in the kernel and deliver a
//! datagram larger than the egress MTU, which a MAC-rewriting forwarder
//! cannot send. `PACKET_FANOUT_FLAG_ROLLOVER` is never set: it moves flows to
//! another socket when a ring is full, breaking flow affinity. With fanout,
//! ignoring outgoing frames needs `PACKET_FANOUT_FLAG_IGNORE_OUTGOING` (the
//! group's hook replaces the socket's; the per-socket option has no effect),
//! so it is set from `ignore_outgoing`; every member of a group must use the
//! same flags (the kernel refuses a join with different ones). A socket
//! receives on its own between `bind` and the fanout join (microseconds);
//! those first frames are not hashed.
//!
//! **vnet header**: with `vnet_hdr`, each frame is preceded by a
//! `virtio_net_hdr` describing GSO (64 KiB TCP super-frames cross veth and
//! macvlan unsegmented with default offloads) and CHECKSUM_PARTIAL state. The
//! slot must hold a whole super-frame or the frame is truncated (and must be
//! dropped): [`RxConfig::super_frames`] sizes it for 64 KiB + headers.
//!
//! # Memory
//! The kernel allocates each ring block with `2^order` pages, so a block size
//! that is not a power-of-two number of pages wastes the rest. [`RingLayout`]
//! picks block sizes that are powers of two and grows the frames to fill the
//! block. Examples (4 KiB pages): 2048-byte frames → 4 KiB blocks, 2 frames
//! each, 4096 frames = 8 MiB. 64 KiB super-frames (RX, vnet) → 512 KiB blocks
//! of 7 frames of 74,896 bytes, 256 frames ≈ 18.5 MiB. TX super-frame slots
//! are page-aligned (18 pages, 7 per 512 KiB block) so that a 64 KiB frame
//! needs at most 17 page fragments (`MAX_SKB_FRAGS`).
//!
//! # TX ring
//! `PACKET_TX_RING` (V2) with `PACKET_QDISC_BYPASS` (frames go straight to
//! the driver through `dev_direct_xmit`: no qdisc back-pressure, so full
//! device queues show up as ENOBUFS; bypassed frames are also invisible to
//! packet taps such as tcpdump or our own RX rings). `dev_direct_xmit` drops
//! a GSO or CHECKSUM_PARTIAL frame the device cannot take as is (no TSO /
//! csum offload) instead of fixing it in software, and `tpacket_snd` then
//! leaves it at the ring head to be retried; so on ENOBUFS `flush` makes one
//! more `send()` with the bypass switched off (the normal path segments,
//! checksums and queues) and switches it back on. `PACKET_LOSS` (a frame the kernel rejects is discarded and its
//! slot freed, instead of stopping the ring at `TP_STATUS_WRONG_FORMAT`), and
//! a large send buffer through `SO_SNDBUFFORCE` (falls back to `SO_SNDBUF`,
//! capped by `net.core.wmem_max`, without CAP_NET_ADMIN): every frame in
//! flight is charged to the socket until the receiver frees it. `push`
//! fills slots; `flush` is one `send(fd, NULL, 0, MSG_DONTWAIT)` for all of
//! them. With `vnet_hdr`, `tpacket_snd` reads the virtio-net header in front
//! of each frame, so a GSO super-frame is segmented (or passed to a
//! TSO-capable device) and CHECKSUM_PARTIAL frames get their checksum.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use super::bpf::BpfProgram;
use super::iface::InterfaceInfo;
use super::sys::{self, Mmap};
use super::{
    FlushOutcome, FlushStatus, IoError, RingStats, RxDevice, RxFrame, RxStatus, TxDevice, TxError, TxStats, VnetHdr,
};

/// Largest frame a 64 KiB GSO super-frame can be: IPv4 total length (65535)
/// + Ethernet header + one VLAN tag.
pub const MAX_SUPER_FRAME: usize = 65535 + 14 + 4;

/// TPACKET_ALIGN(sizeof(struct tpacket2_hdr)).
const TP2_HDR: usize = 32;
/// TPACKET_ALIGN(sizeof(struct tpacket3_hdr)).
const TP3_HDR: usize = 48;
/// sizeof(struct sockaddr_ll).
const SLL_LEN: usize = 20;
/// V3 block descriptor length (BLK_HDR_LEN, 8-aligned).
const V3_BLK_HDR: usize = 48;
/// Worst-case offset of the Ethernet header in an RX slot:
/// TPACKET_ALIGN(hdrlen + sockaddr_ll + 16) + vnet (V3 is the larger).
const RX_HEADROOM: usize = ((TP3_HDR + SLL_LEN + 16 + 15) & !15) + VnetHdr::LEN;

const ETH_P_ALL: u16 = 0x0003;
const TX_BUSY: u32 = libc::TP_STATUS_SEND_REQUEST | libc::TP_STATUS_SENDING;
const TX_STATE_MASK: u32 = libc::TP_STATUS_SEND_REQUEST | libc::TP_STATUS_SENDING | libc::TP_STATUS_WRONG_FORMAT;

/// Ring flavour for RX.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RingVersion {
    /// TPACKET_V2: per-frame status, lowest latency (default).
    #[default]
    V2,
    /// TPACKET_V3: block-based; a block is handed over when full or after
    /// `block_timeout_ms`. Better for bulk capture, worse for latency.
    V3 {
        /// `tp_retire_blk_tov` in milliseconds (≥ 1).
        block_timeout_ms: u32,
    },
}

/// Joining a `PACKET_FANOUT` group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fanout {
    /// Group id, shared by all worker sockets of one interface.
    pub group_id: u16,
    /// `PACKET_FANOUT_FLAG_DEFRAG` (see the module docs; default off).
    pub defrag: bool,
}

impl Fanout {
    /// Hash fanout in group `group_id`, no defrag.
    pub fn hash(group_id: u16) -> Fanout {
        Fanout { group_id, defrag: false }
    }
}

/// RX ring options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RxConfig {
    /// V2 (default) or V3.
    pub version: RingVersion,
    /// Minimum slot size in bytes, ring header included; rounded up, and
    /// grown to fill the kernel block (see [`RingLayout`]).
    pub frame_size: usize,
    /// Minimum number of slots.
    pub frame_count: usize,
    /// `PACKET_VNET_HDR`: deliver a [`VnetHdr`] with every frame. GSO
    /// super-frames are only whole if `frame_size` leaves room for
    /// [`MAX_SUPER_FRAME`] (use [`RxConfig::super_frames`]); otherwise they
    /// arrive `truncated` and must be dropped.
    pub vnet_hdr: bool,
    /// `PACKET_IGNORE_OUTGOING` (and the fanout flag): do not see frames
    /// this host transmits on the interface (default true).
    pub ignore_outgoing: bool,
    /// Join a fanout group.
    pub fanout: Option<Fanout>,
    /// Socket filter attached before the first frame can arrive.
    pub filter: Option<BpfProgram>,
}

impl Default for RxConfig {
    /// V2, 2048-byte slots × 4096 (8 MiB), no vnet header, ignore outgoing.
    fn default() -> Self {
        RxConfig {
            version: RingVersion::V2,
            frame_size: 2048,
            frame_count: 4096,
            vnet_hdr: false,
            ignore_outgoing: true,
            fanout: None,
            filter: None,
        }
    }
}

impl RxConfig {
    /// Slots big enough for frames of `max_frame` bytes (Ethernet header
    /// included) without truncation.
    pub fn for_max_frame(max_frame: usize, frame_count: usize) -> RxConfig {
        RxConfig { frame_size: RX_HEADROOM + max_frame, frame_count, ..RxConfig::default() }
    }

    /// vnet header on and slots for 64 KiB GSO super-frames
    /// ([`MAX_SUPER_FRAME`]); 256 slots ≈ 18.5 MiB.
    pub fn super_frames(frame_count: usize) -> RxConfig {
        RxConfig { vnet_hdr: true, ..RxConfig::for_max_frame(MAX_SUPER_FRAME, frame_count) }
    }
}

/// Frames up to this size (not GSO) go to the kernel whole in the skb's linear part.
///
/// `tpacket_snd` copies the vnet header's `hdr_len` bytes (at least the Ethernet header) into the
/// skb and attaches the rest of the slot as fragments of the ring's pages, marked zero-copy. A
/// device that delivers to a local stack (veth, a macvlan in bridge mode, a tap) must not keep
/// them: `skb_copy_ubufs` then allocates a page per frame (zeroed where the kernel zeroes
/// allocations) and copies the fragment into it. For a small frame that page costs far more than
/// copying the frame; a NIC DMAs either form. Super-frames (GSO) keep their fragments.
pub const TX_LINEAR_MAX: usize = 2048;

/// The vnet header to write for a frame of `len` bytes: `hdr_len` is the size of the linear
/// part `tpacket_snd` copies (the rest is attached as page fragments). A frame up to
/// [`TX_LINEAR_MAX`] that is not GSO goes whole; GSO frames without NEEDS_CSUM need their L2-L4
/// headers linear, so GSO gets at least 128 bytes; never more than the frame.
fn tx_vnet(mut v: VnetHdr, len: usize) -> VnetHdr {
    let len16 = u16::try_from(len).unwrap_or(u16::MAX);
    if v.is_gso() {
        v.hdr_len = v.hdr_len.max(128);
    } else if len <= TX_LINEAR_MAX {
        v.hdr_len = len16;
    }
    v.hdr_len = v.hdr_len.min(len16);
    v
}

/// TX ring options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxConfig {
    /// Minimum slot size (ring header included).
    pub frame_size: usize,
    /// Minimum number of slots.
    pub frame_count: usize,
    /// `PACKET_VNET_HDR`: each frame carries a [`VnetHdr`] (GSO / csum offload).
    pub vnet_hdr: bool,
    /// `PACKET_QDISC_BYPASS` (default true).
    pub qdisc_bypass: bool,
    /// Requested send buffer; `None` = enough for the whole ring.
    pub sndbuf: Option<usize>,
}

impl Default for TxConfig {
    /// 2048-byte slots × 1024 (2 MiB), no vnet header, qdisc bypass.
    fn default() -> Self {
        TxConfig { frame_size: 2048, frame_count: 1024, vnet_hdr: false, qdisc_bypass: true, sndbuf: None }
    }
}

impl TxConfig {
    /// vnet header on and page-aligned slots for 64 KiB super-frames.
    pub fn super_frames(frame_count: usize) -> TxConfig {
        TxConfig {
            frame_size: TP2_HDR + VnetHdr::LEN + MAX_SUPER_FRAME,
            frame_count,
            vnet_hdr: true,
            ..TxConfig::default()
        }
    }
}

/// Geometry of a ring as handed to `PACKET_RX_RING`/`PACKET_TX_RING`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingLayout {
    /// Bytes per kernel block (power-of-two pages).
    pub block_size: usize,
    /// Number of blocks.
    pub block_nr: usize,
    /// Bytes per slot.
    pub frame_size: usize,
    /// Number of slots.
    pub frame_nr: usize,
}

impl RingLayout {
    /// Chooses a layout with slots of at least `min_frame` bytes and at least
    /// `frame_count` slots. Blocks are `2^order` pages (what the kernel
    /// allocates anyway); the order is the smallest that wastes ≤ 1/8 of a
    /// block (else the least wasteful of five), and slots grow to share the
    /// block evenly. `page_aligned` makes slots whole pages.
    pub fn plan(
        min_frame: usize,
        frame_count: usize,
        page: usize,
        page_aligned: bool,
        min_block: usize,
    ) -> Result<RingLayout, String> {
        if frame_count == 0 {
            return Err("frame count must be > 0".into());
        }
        if !page.is_power_of_two() {
            return Err("page size is not a power of two".into());
        }
        let align = if page_aligned { page } else { 16 };
        let f = min_frame.max(TP3_HDR + SLL_LEN + 64).div_ceil(align) * align;
        const MAX_ORDER: u32 = 10; // 4 MiB blocks with 4 KiB pages
        let min_pages = f.div_ceil(page).max(min_block.div_ceil(page)).max(1);
        let order0 = min_pages.next_power_of_two().trailing_zeros();
        if order0 > MAX_ORDER {
            return Err(format!("frame size {min_frame} is larger than the largest ring block"));
        }
        let mut best: Option<(usize, usize)> = None; // (block, waste)
        for order in order0..=(order0 + 4).min(MAX_ORDER) {
            let block = page << order;
            let waste = block - (block / f) * f;
            if waste * 8 <= block {
                best = Some((block, waste));
                break;
            }
            if best.is_none_or(|(b, w)| waste * b < w * block) {
                best = Some((block, waste));
            }
        }
        let (block_size, _) = best.ok_or("no block size fits")?;
        let fpb = block_size / f;
        let frame_size = (block_size / fpb) / align * align;
        let block_nr = frame_count.div_ceil(fpb);
        let frame_nr = block_nr * fpb;
        let total = block_size.checked_mul(block_nr).ok_or("ring too large")?;
        if u32::try_from(frame_nr).is_err() || u32::try_from(block_nr).is_err() || total > (1usize << 40) {
            return Err("ring too large".into());
        }
        Ok(RingLayout { block_size, block_nr, frame_size, frame_nr })
    }

    /// Bytes mapped (and allocated by the kernel) for the ring.
    pub fn memory(&self) -> usize {
        self.block_size * self.block_nr
    }

    fn frames_per_block(&self) -> usize {
        self.block_size / self.frame_size
    }

    /// Offset of slot `idx` in the mapping.
    pub fn frame_offset(&self, idx: usize) -> usize {
        let fpb = self.frames_per_block();
        (idx / fpb) * self.block_size + (idx % fpb) * self.frame_size
    }

    fn req(&self) -> libc::tpacket_req {
        libc::tpacket_req {
            tp_block_size: self.block_size as u32,
            tp_block_nr: self.block_nr as u32,
            tp_frame_size: self.frame_size as u32,
            tp_frame_nr: self.frame_nr as u32,
        }
    }
}

fn open_socket(iface: &InterfaceInfo, version: u32) -> Result<OwnedFd, IoError> {
    let fd = sys::packet_socket(0).map_err(|e| IoError::sys(&iface.name, "socket(AF_PACKET)", e))?;
    sys::set_int(&fd, libc::SOL_PACKET, libc::PACKET_VERSION, version as i32)
        .map_err(|e| IoError::sys(&iface.name, "setsockopt(PACKET_VERSION)", e))?;
    Ok(fd)
}

fn set_opt(fd: &OwnedFd, iface: &str, name: i32, call: &'static str, val: i32) -> Result<(), IoError> {
    sys::set_int(fd, libc::SOL_PACKET, name, val).map_err(|e| IoError::sys(iface, call, e))
}

#[derive(Debug, Clone, Copy, Default)]
struct V3Cursor {
    active: bool,
    left: u32,
    off: usize,
}

/// Where a received frame sits in the ring, as its TPACKET header says (V2 and V3 alike).
struct SlotFrame {
    /// Offset of the frame's TPACKET header in the mapping.
    base: usize,
    /// Offset of the Ethernet header from `base` (`tp_mac`).
    mac: usize,
    /// Size of the TPACKET header (the vnet header sits between it and `mac`).
    hdr_len: usize,
    snap: usize,
    wire_len: u32,
    status: u32,
    tci: u16,
    /// `tp_sec`, `tp_nsec`.
    stamp: (u32, u32),
}

/// A memory-mapped AF_PACKET receive ring bound to one interface.
#[derive(Debug)]
pub struct RxRing {
    iface: InterfaceInfo,
    fd: OwnedFd,
    map: Mmap,
    layout: RingLayout,
    version: RingVersion,
    vnet: bool,
    /// V2: next slot; V3: current block.
    head: usize,
    v3: V3Cursor,
    stats: RingStats,
}

impl RxRing {
    /// Opens the ring on interface `name` (see the module docs for the
    /// order of operations).
    pub fn open(name: &str, cfg: &RxConfig) -> Result<RxRing, IoError> {
        // CAP_NET_RAW (and CAP_NET_ADMIN for SO_SNDBUFFORCE), raised for the opening only.
        let _privs = crate::privs::raised();
        let iface = InterfaceInfo::lookup(name)?;
        let n = iface.name.as_str();
        let cfg_err = |reason: String| IoError::Config { iface: n.to_string(), reason };
        let (version_no, min_block) = match cfg.version {
            RingVersion::V2 => (libc::tpacket_versions::TPACKET_V2 as u32, 0),
            RingVersion::V3 { block_timeout_ms } => {
                if block_timeout_ms == 0 {
                    return Err(cfg_err("V3 block timeout must be ≥ 1 ms".into()));
                }
                (libc::tpacket_versions::TPACKET_V3 as u32, 256 * 1024)
            }
        };
        let frame =
            if matches!(cfg.version, RingVersion::V3 { .. }) { cfg.frame_size + V3_BLK_HDR } else { cfg.frame_size };
        let layout = RingLayout::plan(frame, cfg.frame_count, sys::page_size(), false, min_block).map_err(cfg_err)?;

        let fd = open_socket(&iface, version_no)?;
        if cfg.vnet_hdr {
            set_opt(&fd, n, libc::PACKET_VNET_HDR, "setsockopt(PACKET_VNET_HDR)", 1)?;
        }
        if cfg.ignore_outgoing {
            set_opt(&fd, n, libc::PACKET_IGNORE_OUTGOING, "setsockopt(PACKET_IGNORE_OUTGOING)", 1)?;
        }
        if let Some(prog) = &cfg.filter {
            sys::attach_filter(&fd, &prog.raw()).map_err(|e| IoError::sys(n, "setsockopt(SO_ATTACH_FILTER)", e))?;
        }
        match cfg.version {
            RingVersion::V2 => sys::set_tpacket_req(&fd, libc::PACKET_RX_RING, &layout.req()),
            RingVersion::V3 { block_timeout_ms } => {
                let r = layout.req();
                sys::set_tpacket_req3(
                    &fd,
                    &libc::tpacket_req3 {
                        tp_block_size: r.tp_block_size,
                        tp_block_nr: r.tp_block_nr,
                        tp_frame_size: r.tp_frame_size,
                        tp_frame_nr: r.tp_frame_nr,
                        tp_retire_blk_tov: block_timeout_ms,
                        tp_sizeof_priv: 0,
                        tp_feature_req_word: 0,
                    },
                )
            }
        }
        .map_err(|e| IoError::sys(n, "setsockopt(PACKET_RX_RING)", e))?;
        let map = Mmap::map(&fd, layout.memory()).map_err(|e| IoError::sys(n, "mmap(PACKET_RX_RING)", e))?;
        sys::bind_ll(&fd, iface.ifindex, ETH_P_ALL).map_err(|e| IoError::sys(n, "bind(AF_PACKET)", e))?;
        if let Some(fo) = cfg.fanout {
            let mut flags = libc::PACKET_FANOUT_HASH;
            if fo.defrag {
                flags |= libc::PACKET_FANOUT_FLAG_DEFRAG;
            }
            if cfg.ignore_outgoing {
                flags |= libc::PACKET_FANOUT_FLAG_IGNORE_OUTGOING;
            }
            let arg = u32::from(fo.group_id) | (flags << 16);
            set_opt(&fd, n, libc::PACKET_FANOUT, "setsockopt(PACKET_FANOUT)", arg as i32)?;
        }
        Ok(RxRing {
            iface,
            fd,
            map,
            layout,
            version: cfg.version,
            vnet: cfg.vnet_hdr,
            head: 0,
            v3: V3Cursor::default(),
            stats: RingStats::default(),
        })
    }

    /// The interface.
    pub fn interface(&self) -> &InterfaceInfo {
        &self.iface
    }

    /// Ring geometry.
    pub fn layout(&self) -> RingLayout {
        self.layout
    }

    /// Bytes of ring memory.
    pub fn memory(&self) -> usize {
        self.layout.memory()
    }

    /// Longest frame (from the Ethernet header) a slot holds untruncated.
    pub fn max_frame(&self) -> usize {
        match self.version {
            RingVersion::V2 => self.layout.frame_size.saturating_sub(RX_HEADROOM),
            RingVersion::V3 { .. } => self.layout.block_size.saturating_sub(V3_BLK_HDR + RX_HEADROOM),
        }
    }

    /// The socket, e.g. to register it with an external poller.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Replaces the socket filter. Frames already in the ring passed the
    /// previous filter.
    pub fn set_filter(&mut self, prog: &BpfProgram) -> Result<(), IoError> {
        sys::attach_filter(&self.fd, &prog.raw())
            .map_err(|e| IoError::sys(&self.iface.name, "setsockopt(SO_ATTACH_FILTER)", e))
    }

    /// True if at least one frame is ready (no system call).
    pub fn ready(&self) -> bool {
        match self.version {
            RingVersion::V2 => {
                let off = self.layout.frame_offset(self.head);
                self.map.load_acquire(off).is_some_and(|s| s & libc::TP_STATUS_USER != 0)
            }
            RingVersion::V3 { .. } => {
                self.v3.active
                    || self
                        .map
                        .load_acquire(self.head * self.layout.block_size + 8)
                        .is_some_and(|s| s & libc::TP_STATUS_USER != 0)
            }
        }
    }

    /// Walks every ready frame (at most `max`), handing each to `f` and
    /// returning its slot to the kernel right after. Returns the number of
    /// frames handed to `f`. No system call, no allocation.
    pub fn recv_batch(&mut self, max: usize, mut f: impl FnMut(RxFrame<'_>)) -> usize {
        match self.version {
            RingVersion::V2 => self.recv_v2(max, &mut f),
            RingVersion::V3 { .. } => self.recv_v3(max, &mut f),
        }
    }

    /// Hands the bytes of the ready frames (at most `max` slots) to `f` without taking them; see
    /// [`RxDevice::peek_batch`]. The walk is [`RxRing::recv_batch`]'s (same slots, same checks,
    /// same count of walked slots) with the cursor in local variables: nothing is released and
    /// nothing counted, so the `recv_batch` that follows walks the same slots again.
    pub fn peek_batch(&self, max: usize, mut f: impl FnMut(usize, &[u8])) -> usize {
        match self.version {
            RingVersion::V2 => self.peek_v2(max, &mut f),
            RingVersion::V3 { .. } => self.peek_v3(max, &mut f),
        }
    }

    fn peek_v2(&self, max: usize, f: &mut impl FnMut(usize, &[u8])) -> usize {
        let (mut walked, mut handed, mut head) = (0, 0, self.head);
        let fsz = self.layout.frame_size;
        while walked < max {
            let base = self.layout.frame_offset(head);
            if self.map.load_acquire(base).is_none_or(|s| s & libc::TP_STATUS_USER == 0) {
                break;
            }
            walked += 1;
            let snap = self.map.read_u32(base + 8).unwrap_or(0) as usize;
            let mac = self.map.read_u16(base + 12).unwrap_or(0) as usize;
            if mac >= TP2_HDR
                && mac.checked_add(snap).is_some_and(|end| end <= fsz)
                && let Some(data) = self.map.bytes(base + mac, snap)
            {
                f(handed, data);
                handed += 1;
            }
            head += 1;
            if head == self.layout.frame_nr {
                head = 0;
            }
        }
        walked
    }

    fn peek_v3(&self, max: usize, f: &mut impl FnMut(usize, &[u8])) -> usize {
        let bsz = self.layout.block_size;
        let (mut walked, mut handed, mut head, mut cur) = (0, 0, self.head, self.v3);
        let next_block = |head: &mut usize, cur: &mut V3Cursor| {
            *cur = V3Cursor::default();
            *head += 1;
            if *head == self.layout.block_nr {
                *head = 0;
            }
        };
        while walked < max {
            let boff = head * bsz;
            if !cur.active {
                if self.map.load_acquire(boff + 8).is_none_or(|st| st & libc::TP_STATUS_USER == 0) {
                    break;
                }
                let num = self.map.read_u32(boff + 12).unwrap_or(0);
                let first = self.map.read_u32(boff + 16).unwrap_or(0) as usize;
                cur = V3Cursor { active: true, left: num, off: first };
            }
            if cur.left == 0 {
                next_block(&mut head, &mut cur);
                continue;
            }
            walked += 1;
            let p = cur.off;
            if !(p >= V3_BLK_HDR && p.checked_add(TP3_HDR).is_some_and(|e| e <= bsz)) {
                next_block(&mut head, &mut cur);
                continue;
            }
            let base = boff + p;
            let next = self.map.read_u32(base).unwrap_or(0) as usize;
            let snap = self.map.read_u32(base + 12).unwrap_or(0) as usize;
            let mac = self.map.read_u16(base + 24).unwrap_or(0) as usize;
            if mac >= TP3_HDR
                && p.checked_add(mac).and_then(|x| x.checked_add(snap)).is_some_and(|e| e <= bsz)
                && let Some(data) = self.map.bytes(base + mac, snap)
            {
                f(handed, data);
                handed += 1;
            }
            cur.left -= 1;
            if cur.left == 0 || next == 0 {
                next_block(&mut head, &mut cur);
            } else {
                cur.off = p + next;
            }
        }
        walked
    }

    fn recv_v2(&mut self, max: usize, f: &mut impl FnMut(RxFrame<'_>)) -> usize {
        let mut delivered = 0;
        let mut walked = 0;
        let fsz = self.layout.frame_size;
        while walked < max {
            let base = self.layout.frame_offset(self.head);
            let Some(status) = self.map.load_acquire(base) else {
                break;
            };
            if status & libc::TP_STATUS_USER == 0 {
                break;
            }
            walked += 1;
            let wire_len = self.map.read_u32(base + 4).unwrap_or(0);
            let snap = self.map.read_u32(base + 8).unwrap_or(0) as usize;
            let mac = self.map.read_u16(base + 12).unwrap_or(0) as usize;
            let tci = self.map.read_u16(base + 24).unwrap_or(0);
            if mac >= TP2_HDR && mac.checked_add(snap).is_some_and(|end| end <= fsz) {
                let stamp = (self.map.read_u32(base + 16).unwrap_or(0), self.map.read_u32(base + 20).unwrap_or(0));
                let slot = SlotFrame { base, mac, hdr_len: TP2_HDR, snap, wire_len, status, tci, stamp };
                delivered += usize::from(self.deliver(&slot, f));
            } else {
                self.stats.malformed += 1;
            }
            self.map.store_release(base, libc::TP_STATUS_KERNEL);
            self.head += 1;
            if self.head == self.layout.frame_nr {
                self.head = 0;
            }
        }
        delivered
    }

    /// Hand the frame described by a ring header to `f`; false (counted as malformed) if the
    /// slot cannot be borrowed.
    fn deliver(&mut self, slot: &SlotFrame, f: &mut impl FnMut(RxFrame<'_>)) -> bool {
        let vnet = self.read_vnet(slot.base, slot.mac, slot.hdr_len);
        let Some(data) = self.map.bytes_mut(slot.base + slot.mac, slot.snap) else {
            self.stats.malformed += 1;
            return false;
        };
        f(RxFrame {
            data,
            wire_len: slot.wire_len,
            vnet,
            truncated: slot.wire_len as usize > slot.snap,
            vlan_tci: (slot.status & libc::TP_STATUS_VLAN_VALID != 0).then_some(slot.tci),
            status: RxStatus(slot.status),
            stamp_ns: u64::from(slot.stamp.0) * 1_000_000_000 + u64::from(slot.stamp.1),
        });
        true
    }

    fn read_vnet(&self, base: usize, mac: usize, hdr: usize) -> Option<VnetHdr> {
        if !self.vnet || mac < hdr + VnetHdr::LEN {
            return None;
        }
        let b = self.map.bytes(base + mac - VnetHdr::LEN, VnetHdr::LEN)?;
        let arr: &[u8; VnetHdr::LEN] = b.try_into().ok()?;
        Some(VnetHdr::from_bytes(arr))
    }

    fn release_block(&mut self) {
        let boff = self.head * self.layout.block_size;
        self.map.store_release(boff + 8, libc::TP_STATUS_KERNEL);
        self.v3 = V3Cursor::default();
        self.head += 1;
        if self.head == self.layout.block_nr {
            self.head = 0;
        }
    }

    fn recv_v3(&mut self, max: usize, f: &mut impl FnMut(RxFrame<'_>)) -> usize {
        let bsz = self.layout.block_size;
        let mut delivered = 0;
        let mut walked = 0;
        while walked < max {
            let boff = self.head * bsz;
            if !self.v3.active {
                let Some(st) = self.map.load_acquire(boff + 8) else {
                    break;
                };
                if st & libc::TP_STATUS_USER == 0 {
                    break;
                }
                let num = self.map.read_u32(boff + 12).unwrap_or(0);
                let first = self.map.read_u32(boff + 16).unwrap_or(0) as usize;
                self.v3 = V3Cursor { active: true, left: num, off: first };
            }
            if self.v3.left == 0 {
                self.release_block();
                continue;
            }
            walked += 1;
            let p = self.v3.off;
            let hdr_ok = p >= V3_BLK_HDR && p.checked_add(TP3_HDR).is_some_and(|e| e <= bsz);
            if !hdr_ok {
                self.stats.malformed += u64::from(self.v3.left);
                self.release_block();
                continue;
            }
            let base = boff + p;
            let next = self.map.read_u32(base).unwrap_or(0) as usize;
            let snap = self.map.read_u32(base + 12).unwrap_or(0) as usize;
            let wire_len = self.map.read_u32(base + 16).unwrap_or(0);
            let status = self.map.read_u32(base + 20).unwrap_or(0);
            let mac = self.map.read_u16(base + 24).unwrap_or(0) as usize;
            let tci = self.map.read_u32(base + 32).unwrap_or(0) as u16;
            if mac >= TP3_HDR && p.checked_add(mac).and_then(|x| x.checked_add(snap)).is_some_and(|e| e <= bsz) {
                let stamp = (self.map.read_u32(base + 4).unwrap_or(0), self.map.read_u32(base + 8).unwrap_or(0));
                let slot = SlotFrame { base, mac, hdr_len: TP3_HDR, snap, wire_len, status, tci, stamp };
                delivered += usize::from(self.deliver(&slot, f));
            } else {
                self.stats.malformed += 1;
            }
            self.v3.left -= 1;
            if self.v3.left == 0 {
                self.release_block();
            } else if next == 0 {
                self.stats.malformed += u64::from(self.v3.left);
                self.release_block();
            } else {
                self.v3.off = p + next;
            }
        }
        delivered
    }

    /// Sleeps in `poll()` until a frame is ready or `timeout` passes. Use it
    /// only when `recv_batch` returned 0. A socket error (e.g. the interface
    /// went down) is returned as `IoError` naming `poll`.
    pub fn wait(&mut self, timeout: Duration) -> Result<bool, IoError> {
        if self.ready() {
            return Ok(true);
        }
        let r = sys::poll_in(&self.fd, timeout).map_err(|e| IoError::sys(&self.iface.name, "poll", e))?;
        if r.error
            && let Some(e) = sys::take_socket_error(&self.fd)
        {
            return Err(IoError::sys(&self.iface.name, "poll", e));
        }
        Ok(self.ready())
    }

    /// Kernel counters (accumulated: `PACKET_STATISTICS` resets on read)
    /// plus malformed-frame count.
    pub fn stats(&mut self) -> Result<RingStats, IoError> {
        let v3 = matches!(self.version, RingVersion::V3 { .. });
        let (p, d, fq) = sys::packet_stats(&self.fd, v3)
            .map_err(|e| IoError::sys(&self.iface.name, "getsockopt(PACKET_STATISTICS)", e))?;
        self.stats.packets += u64::from(p);
        self.stats.drops += u64::from(d);
        self.stats.freeze_q += u64::from(fq);
        Ok(self.stats)
    }
}

impl RxDevice for RxRing {
    fn recv_batch<F: FnMut(RxFrame<'_>)>(&mut self, max: usize, f: F) -> usize {
        RxRing::recv_batch(self, max, f)
    }
    fn peek_batch<F: FnMut(usize, &[u8])>(&mut self, max: usize, f: F) -> usize {
        RxRing::peek_batch(self, max, f)
    }
    fn wait(&mut self, timeout: Duration) -> Result<bool, IoError> {
        RxRing::wait(self, timeout)
    }
    fn ready(&self) -> bool {
        RxRing::ready(self)
    }
    fn kernel_drops(&mut self) -> Result<u64, IoError> {
        Ok(self.stats()?.drops)
    }
}

/// A memory-mapped AF_PACKET TPACKET_V2 transmit ring bound to one interface.
#[derive(Debug)]
pub struct TxRing {
    iface: InterfaceInfo,
    fd: OwnedFd,
    map: Mmap,
    layout: RingLayout,
    vnet: bool,
    bypass: bool,
    /// Next slot to fill.
    head: usize,
    /// Oldest slot not yet taken by the kernel.
    qstart: usize,
    /// Slots pushed and not yet taken by the kernel.
    queued: usize,
    sndbuf: usize,
    stats: TxStats,
}

impl TxRing {
    /// Opens the TX ring on interface `name`. The socket has protocol 0, so it
    /// receives nothing.
    pub fn open(name: &str, cfg: &TxConfig) -> Result<TxRing, IoError> {
        // CAP_NET_RAW (and CAP_NET_ADMIN for SO_SNDBUFFORCE), raised for the opening only.
        let _privs = crate::privs::raised();
        let iface = InterfaceInfo::lookup(name)?;
        let n = iface.name.as_str();
        let page = sys::page_size();
        let layout = RingLayout::plan(cfg.frame_size, cfg.frame_count, page, cfg.vnet_hdr, 0)
            .map_err(|reason| IoError::Config { iface: n.to_string(), reason })?;
        let fd = open_socket(&iface, libc::tpacket_versions::TPACKET_V2 as u32)?;
        if cfg.vnet_hdr {
            set_opt(&fd, n, libc::PACKET_VNET_HDR, "setsockopt(PACKET_VNET_HDR)", 1)?;
        }
        set_opt(&fd, n, libc::PACKET_LOSS, "setsockopt(PACKET_LOSS)", 1)?;
        if cfg.qdisc_bypass {
            set_opt(&fd, n, libc::PACKET_QDISC_BYPASS, "setsockopt(PACKET_QDISC_BYPASS)", 1)?;
        }
        let want = cfg.sndbuf.unwrap_or_else(|| layout.memory()).clamp(1 << 16, (i32::MAX / 2) as usize) as i32;
        if sys::set_int(&fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, want).is_err() {
            sys::set_int(&fd, libc::SOL_SOCKET, libc::SO_SNDBUF, want)
                .map_err(|e| IoError::sys(n, "setsockopt(SO_SNDBUF)", e))?;
        }
        let sndbuf = sys::get_int(&fd, libc::SOL_SOCKET, libc::SO_SNDBUF).unwrap_or(0).max(0) as usize;
        sys::set_tpacket_req(&fd, libc::PACKET_TX_RING, &layout.req())
            .map_err(|e| IoError::sys(n, "setsockopt(PACKET_TX_RING)", e))?;
        let map = Mmap::map(&fd, layout.memory()).map_err(|e| IoError::sys(n, "mmap(PACKET_TX_RING)", e))?;
        sys::bind_ll(&fd, iface.ifindex, 0).map_err(|e| IoError::sys(n, "bind(AF_PACKET)", e))?;
        Ok(TxRing {
            iface,
            fd,
            map,
            layout,
            vnet: cfg.vnet_hdr,
            bypass: cfg.qdisc_bypass,
            head: 0,
            qstart: 0,
            queued: 0,
            sndbuf,
            stats: TxStats::default(),
        })
    }

    /// The interface.
    pub fn interface(&self) -> &InterfaceInfo {
        &self.iface
    }

    /// Ring geometry.
    pub fn layout(&self) -> RingLayout {
        self.layout
    }

    /// Bytes of ring memory.
    pub fn memory(&self) -> usize {
        self.layout.memory()
    }

    /// Effective `SO_SNDBUF` (the kernel doubles the requested value).
    pub fn sndbuf(&self) -> usize {
        self.sndbuf
    }

    /// Cumulative counters.
    pub fn stats(&self) -> TxStats {
        self.stats
    }

    /// The socket.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn vnet_off(&self) -> usize {
        if self.vnet { VnetHdr::LEN } else { 0 }
    }

    /// Largest frame `push` accepts for this vnet header.
    pub fn max_frame(&self, vnet: Option<&VnetHdr>) -> usize {
        let slot = self.layout.frame_size - TP2_HDR - self.vnet_off();
        if self.vnet && vnet.is_some_and(VnetHdr::is_gso) {
            slot.min(MAX_SUPER_FRAME)
        } else {
            slot.min(self.iface.mtu as usize + 14 + 4)
        }
    }

    /// Checks a frame against slot, MTU and vnet rules (mirroring what
    /// `tpacket_snd` would reject), returning the vnet header to write.
    fn check(&mut self, len: usize, vnet: Option<&VnetHdr>) -> Result<Option<VnetHdr>, TxError> {
        let max = self.max_frame(vnet);
        if !(14..=max).contains(&len) {
            self.stats.too_big += 1;
            return Err(TxError::FrameTooBig { len, max });
        }
        let Some(v) = vnet else {
            return Ok(self.vnet.then(|| tx_vnet(VnetHdr::default(), len)));
        };
        if !self.vnet {
            if v.is_plain() {
                return Ok(None);
            }
            self.stats.bad_vnet += 1;
            return Err(TxError::BadVnetHdr("GSO/checksum offload needs a TX ring opened with vnet_hdr"));
        }
        let v = *v;
        let bad = |s: &mut Self, why| {
            s.stats.bad_vnet += 1;
            Err(TxError::BadVnetHdr(why))
        };
        if v.is_gso() {
            let kind = v.gso_type & !VnetHdr::GSO_ECN;
            if !matches!(kind, VnetHdr::GSO_TCPV4 | VnetHdr::GSO_TCPV6 | VnetHdr::GSO_UDP | VnetHdr::GSO_UDP_L4) {
                return bad(self, "unknown gso_type");
            }
            if v.gso_size == 0 {
                return bad(self, "gso_size is 0");
            }
        }
        if v.needs_csum() && usize::from(v.csum_start) + usize::from(v.csum_offset) + 2 > len {
            return bad(self, "checksum field beyond the frame");
        }
        Ok(Some(tx_vnet(v, len)))
    }

    /// Reserves the next slot, lets `fill` write exactly `len` frame bytes
    /// into it (e.g. copy from an RX slot and rewrite the MACs in one pass),
    /// and queues it. Nothing is sent before [`TxRing::flush`].
    pub fn push_with(
        &mut self,
        len: usize,
        vnet: Option<&VnetHdr>,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<(), TxError> {
        let v = self.check(len, vnet)?;
        let base = self.layout.frame_offset(self.head);
        let status = self.map.load_acquire(base).unwrap_or(libc::TP_STATUS_SENDING);
        if status & TX_BUSY != 0 {
            self.stats.ring_full += 1;
            return Err(TxError::RingFull);
        }
        if status & libc::TP_STATUS_WRONG_FORMAT != 0 {
            // Only without PACKET_LOSS (never set up that way here): reclaim.
            self.stats.wrong_format += 1;
        }
        let voff = self.vnet_off();
        if let Some(v) = v
            && let Some(dst) = self.map.bytes_mut(base + TP2_HDR, VnetHdr::LEN)
        {
            dst.copy_from_slice(&v.to_bytes());
        }
        let Some(dst) = self.map.bytes_mut(base + TP2_HDR + voff, len) else {
            self.stats.too_big += 1;
            return Err(TxError::FrameTooBig { len, max: 0 });
        };
        fill(dst);
        // Without GSO the kernel refuses frames above MTU + 14 unless tagged.
        if len > self.iface.mtu as usize + 14 && !v.is_some_and(|v| v.is_gso()) {
            let tagged = self.map.read_u16(base + TP2_HDR + voff + 12) == Some(0x8100u16.to_be());
            if !tagged {
                self.stats.too_big += 1;
                return Err(TxError::FrameTooBig { len, max: self.iface.mtu as usize + 14 });
            }
        }
        self.map.write_u32(base + 4, (len + voff) as u32);
        self.map.store_release(base, libc::TP_STATUS_SEND_REQUEST);
        self.head += 1;
        if self.head == self.layout.frame_nr {
            self.head = 0;
        }
        self.queued += 1;
        self.stats.pushed += 1;
        self.stats.pushed_bytes += len as u64;
        Ok(())
    }

    /// Copies `frame` into the next free slot and queues it.
    pub fn push(&mut self, vnet: Option<&VnetHdr>, frame: &[u8]) -> Result<(), TxError> {
        self.push_with(frame.len(), vnet, |dst| dst.copy_from_slice(frame))
    }

    /// Frames pushed but not yet taken by the kernel.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Number of free slots right now (no system call).
    pub fn free_slots(&self) -> usize {
        let mut n = 0;
        let mut i = self.head;
        while n < self.layout.frame_nr {
            let st = self.map.load_acquire(self.layout.frame_offset(i)).unwrap_or(TX_BUSY);
            if st & TX_BUSY != 0 {
                break;
            }
            n += 1;
            i = (i + 1) % self.layout.frame_nr;
        }
        n
    }

    /// One `send(fd, NULL, 0, MSG_DONTWAIT)` for everything queued.
    /// EAGAIN/ENOBUFS/other errors are reported in the outcome (and counted);
    /// frames the kernel did not take stay queued for the next flush.
    pub fn flush(&mut self) -> FlushOutcome {
        if self.queued == 0 {
            return FlushOutcome::default();
        }
        let sends_before = self.stats.sends;
        let mut r = sys::send_kick(&self.fd);
        self.stats.sends += 1;
        if self.bypass && r.as_ref().is_err_and(|e| e.raw_os_error() == Some(libc::ENOBUFS)) {
            // With PACKET_QDISC_BYPASS, dev_direct_xmit drops a frame that
            // would need software fix-ups (GSO segmentation or checksum on a
            // device without TSO/csum offload) and also reports a full device
            // queue this way; tpacket_snd then leaves the frame at the head
            // of the ring as SEND_REQUEST, so retrying the same way would
            // never make progress. Push what is queued once through the
            // normal dev_queue_xmit path (which segments, checksums and
            // queues), then restore the bypass.
            self.stats.enobufs += 1;
            self.stats.bypass_fallbacks += 1;
            if sys::set_int(&self.fd, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, 0).is_ok() {
                r = sys::send_kick(&self.fd);
                self.stats.sends += 1;
                let _ = sys::set_int(&self.fd, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, 1);
            }
        }
        let (status, bytes) = match r {
            Ok(b) => (FlushStatus::Sent, b as u64),
            Err(e) => match e.raw_os_error() {
                Some(libc::EAGAIN) => (FlushStatus::Again, 0),
                Some(libc::ENOBUFS) => (FlushStatus::NoBufs, 0),
                Some(code) => (FlushStatus::Error(code), 0),
                None => (FlushStatus::Error(0), 0),
            },
        };
        match status {
            FlushStatus::Again => self.stats.eagain += 1,
            FlushStatus::NoBufs => self.stats.enobufs += 1,
            FlushStatus::Error(_) => self.stats.errors += 1,
            FlushStatus::Sent | FlushStatus::Idle => {}
        }
        self.stats.sent_bytes += bytes;
        // Walk the queue in ring order: the kernel takes frames strictly in
        // order, so the first slot still SEND_REQUEST ends what it consumed.
        let voff = self.vnet_off() as u64;
        let mut frames = 0u32;
        let mut consumed = 0u64;
        while self.queued > 0 {
            let base = self.layout.frame_offset(self.qstart);
            let st = self.map.load_acquire(base).unwrap_or(0);
            if st & TX_STATE_MASK == libc::TP_STATUS_SEND_REQUEST {
                break;
            }
            if st & libc::TP_STATUS_WRONG_FORMAT != 0 {
                self.stats.wrong_format += 1;
            }
            consumed += u64::from(self.map.read_u32(base + 4).unwrap_or(0)).saturating_sub(voff);
            frames += 1;
            self.queued -= 1;
            self.qstart += 1;
            if self.qstart == self.layout.frame_nr {
                self.qstart = 0;
            }
        }
        let syscalls = (self.stats.sends - sends_before) as u32;
        // Only a single successful send() reports every byte it sent (after a
        // failed first attempt the bytes of that attempt are unknown).
        let mut dropped_bytes = 0;
        if status == FlushStatus::Sent && syscalls == 1 {
            dropped_bytes = consumed.saturating_sub(bytes);
            self.stats.kernel_dropped_bytes += dropped_bytes;
        }
        FlushOutcome { syscalls, frames, bytes, backlog: self.queued as u32, status, dropped_bytes }
    }

    /// Gives up on every frame queued and not taken by the kernel: their
    /// slots go back to `TP_STATUS_AVAILABLE` and the next `push` reuses the
    /// oldest. Safe because the kernel reads SEND_REQUEST slots only inside
    /// our own `send()` (`tpacket_snd`, under the ring's lock), and its head
    /// is the oldest queued slot (it stops at the first slot it did not take,
    /// which is where our queue starts): after this, both point at that slot.
    /// Returns the number of frames discarded.
    pub fn discard_queued(&mut self) -> usize {
        let n = self.queued;
        let mut i = self.qstart;
        for _ in 0..n {
            let base = self.layout.frame_offset(i);
            if self.map.load_acquire(base).is_some_and(|st| st & TX_STATE_MASK == libc::TP_STATUS_SEND_REQUEST) {
                self.map.store_release(base, libc::TP_STATUS_AVAILABLE);
            }
            i += 1;
            if i == self.layout.frame_nr {
                i = 0;
            }
        }
        self.head = self.qstart;
        self.queued = 0;
        self.stats.discarded += n as u64;
        n
    }
}

impl TxDevice for TxRing {
    fn push(&mut self, vnet: Option<&VnetHdr>, frame: &[u8]) -> Result<(), TxError> {
        TxRing::push(self, vnet, frame)
    }
    fn flush(&mut self) -> FlushOutcome {
        TxRing::flush(self)
    }
    fn queued(&self) -> usize {
        self.queued
    }
    fn discard_queued(&mut self) -> usize {
        TxRing::discard_queued(self)
    }
    fn mtu(&self) -> u32 {
        self.iface.mtu
    }
}

/// A plain (ring-less) AF_PACKET socket for one ethertype on one interface,
/// for low-rate control traffic such as ARP. Outgoing frames are ignored.
#[derive(Debug)]
pub struct PacketSocket {
    iface: InterfaceInfo,
    fd: OwnedFd,
    ethertype: u16,
}

impl PacketSocket {
    /// A send-only socket on `name` (bound with protocol 0: it receives
    /// nothing, so no receive queue fills up), e.g. for ICMP errors.
    pub fn sender(name: &str) -> Result<PacketSocket, IoError> {
        PacketSocket::open(name, 0)
    }

    /// Opens a socket receiving `ethertype` (e.g. 0x0806) on `name`.
    pub fn open(name: &str, ethertype: u16) -> Result<PacketSocket, IoError> {
        // CAP_NET_RAW (and CAP_NET_ADMIN for SO_SNDBUFFORCE), raised for the opening only.
        let _privs = crate::privs::raised();
        let iface = InterfaceInfo::lookup(name)?;
        let n = iface.name.as_str();
        let fd = sys::packet_socket(0).map_err(|e| IoError::sys(n, "socket(AF_PACKET)", e))?;
        set_opt(&fd, n, libc::PACKET_IGNORE_OUTGOING, "setsockopt(PACKET_IGNORE_OUTGOING)", 1)?;
        sys::bind_ll(&fd, iface.ifindex, ethertype).map_err(|e| IoError::sys(n, "bind(AF_PACKET)", e))?;
        Ok(PacketSocket { iface, fd, ethertype })
    }

    /// The interface.
    pub fn interface(&self) -> &InterfaceInfo {
        &self.iface
    }

    /// The ethertype it receives.
    pub fn ethertype(&self) -> u16 {
        self.ethertype
    }

    /// Attaches a socket filter.
    pub fn set_filter(&mut self, prog: &BpfProgram) -> Result<(), IoError> {
        sys::attach_filter(&self.fd, &prog.raw())
            .map_err(|e| IoError::sys(&self.iface.name, "setsockopt(SO_ATTACH_FILTER)", e))
    }

    /// Receives one frame into `buf` (from the Ethernet header), waiting up
    /// to `timeout`. `Ok(None)` on timeout. A frame longer than `buf` is cut
    /// to `buf.len()`.
    pub fn recv(&mut self, buf: &mut [u8], timeout: Duration) -> Result<Option<usize>, IoError> {
        let name = &self.iface.name;
        for attempt in 0..2 {
            match sys::recv_buf(&self.fd, buf) {
                Ok(n) => return Ok(Some(n.min(buf.len()))),
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) || e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => return Err(IoError::sys(name, "recv", e)),
            }
            if attempt == 0 {
                let r = sys::poll_in(&self.fd, timeout).map_err(|e| IoError::sys(name, "poll", e))?;
                if r.error
                    && let Some(e) = sys::take_socket_error(&self.fd)
                {
                    return Err(IoError::sys(name, "poll", e));
                }
                if !r.readable {
                    return Ok(None);
                }
            }
        }
        Ok(None)
    }

    /// Sends one complete frame (Ethernet header included).
    pub fn send(&mut self, frame: &[u8]) -> Result<(), IoError> {
        sys::send_buf(&self.fd, frame).map(|_| ()).map_err(|e| IoError::sys(&self.iface.name, "send", e))
    }
}

impl super::FrameSender for PacketSocket {
    fn send_frame(&mut self, frame: &[u8]) -> Result<(), IoError> {
        self.send(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tx_frames_up_to_the_linear_limit_go_whole_super_frames_keep_fragments() {
        let plain = VnetHdr::default();
        assert_eq!(tx_vnet(plain, 64).hdr_len, 64);
        assert_eq!(tx_vnet(plain, TX_LINEAR_MAX).hdr_len, TX_LINEAR_MAX as u16);
        assert_eq!(tx_vnet(plain, TX_LINEAR_MAX + 1).hdr_len, 0, "left to the kernel (Ethernet header)");
        let csum = VnetHdr { flags: VnetHdr::F_NEEDS_CSUM, hdr_len: 54, csum_start: 34, csum_offset: 16, ..plain };
        assert_eq!(tx_vnet(csum, 1514).hdr_len, 1514);
        assert_eq!(tx_vnet(csum, 9014).hdr_len, 54, "a jumbo frame keeps what it had");
        let gso = VnetHdr { gso_type: VnetHdr::GSO_TCPV4, gso_size: 1448, hdr_len: 66, ..csum };
        assert_eq!(tx_vnet(gso, 64_000).hdr_len, 128);
        assert_eq!(tx_vnet(VnetHdr { hdr_len: 0, ..gso }, 100).hdr_len, 100, "never more than the frame");
    }

    #[test]
    fn layout_small_frames() {
        let l = RingLayout::plan(2048, 4096, 4096, false, 0).unwrap();
        assert_eq!(l, RingLayout { block_size: 4096, block_nr: 2048, frame_size: 2048, frame_nr: 4096 });
        assert_eq!(l.memory(), 8 << 20);
        assert_eq!(l.frame_offset(3), 4096 + 2048);
    }

    #[test]
    fn layout_super_frames_rx() {
        let cfg = RxConfig::super_frames(256);
        let l = RingLayout::plan(cfg.frame_size, cfg.frame_count, 4096, false, 0).unwrap();
        assert_eq!(l.block_size, 512 << 10);
        assert_eq!(l.frame_size, 74_896);
        assert!(l.frame_size - RX_HEADROOM >= MAX_SUPER_FRAME);
        assert_eq!(l.frame_nr, 259);
        assert!(l.memory() < 19 << 20);
    }

    #[test]
    fn layout_super_frames_tx_page_aligned() {
        let cfg = TxConfig::super_frames(128);
        let l = RingLayout::plan(cfg.frame_size, cfg.frame_count, 4096, true, 0).unwrap();
        assert_eq!(l.frame_size % 4096, 0);
        assert!(l.frame_size >= TP2_HDR + VnetHdr::LEN + MAX_SUPER_FRAME);
        // 42 bytes of header + a 64 KiB frame span at most 17 pages.
        assert!((TP2_HDR + VnetHdr::LEN + MAX_SUPER_FRAME).div_ceil(4096) <= 17);
        for i in 0..l.frame_nr {
            assert_eq!(l.frame_offset(i) % 4096, 0);
            assert!(l.frame_offset(i) + l.frame_size <= l.memory());
        }
    }

    #[test]
    fn layout_rejects_nonsense() {
        assert!(RingLayout::plan(2048, 0, 4096, false, 0).is_err());
        assert!(RingLayout::plan(64 << 20, 1, 4096, false, 0).is_err());
        assert!(RingLayout::plan(2048, usize::MAX / 2, 4096, false, 0).is_err());
        // V3: blocks of at least 256 KiB.
        let l = RingLayout::plan(2048, 1024, 4096, false, 256 << 10).unwrap();
        assert_eq!(l.block_size, 256 << 10);
    }

    #[test]
    fn open_missing_interface() {
        let e = RxRing::open("mlvnone0", &RxConfig::default()).unwrap_err();
        assert_eq!(e.to_string(), "mlvnone0: no such network interface");
        let e = TxRing::open("mlvnone0", &TxConfig::default()).unwrap_err();
        assert!(matches!(e, IoError::NoSuchInterface { .. }));
        let e = PacketSocket::open("mlvnone0", 0x0806).unwrap_err();
        assert!(matches!(e, IoError::NoSuchInterface { .. }));
    }
}
