//! Packet I/O: AF_PACKET memory-mapped rings on `libc`, for a direct-server-
//! return forwarder that receives VIP frames on one interface, rewrites the
//! two MAC addresses and transmits them on another.
//!
//! # Why not pnet
//! `pnet_datalink` (0.35) has no mmap rings, no `PACKET_FANOUT`, no
//! `PACKET_QDISC_BYPASS`, no `PACKET_VNET_HDR`: it does one `poll()` +
//! `recvfrom()` per received frame and one `sendto()` per sent frame. Here a
//! batch of frames costs no system call on receive (the ring is walked in
//! user space, `poll()` only when it is empty) and one `send()` on transmit.
//!
//! # Layout
//! * [`sys`](self) — the only module with `unsafe` (sockets and their options, `mmap`,
//!   bounds-checked ring accessors, `getifaddrs`, `setns`).
//! * [`ring`] — [`RxRing`] (TPACKET_V2 by default, V3 optional), [`TxRing`]
//!   (TPACKET_V2 + qdisc bypass + one `send()` per batch), [`PacketSocket`]
//!   (plain socket for ARP and other low-rate control traffic).
//! * [`bpf`] — classic BPF program "ARP + IPv4 to one of these VIPs".
//! * [`tc`] — [`KernelDrop`]: a tc ingress filter (the same program, other verdicts) that drops
//!   VIP frames after the rings copied them, so the kernel's IP stack does not process them too.
//! * [`iface`] — interface index, MAC, IPv4 addresses and MTU.
//! * [`mem`] — in-memory [`RxDevice`]/[`TxDevice`] for tests of the worker.
//!
//! # Invariants
//! * **Ownership of a ring slot is decided by its status word only.** RX: a
//!   frame belongs to user space from an *Acquire* load that sees
//!   `TP_STATUS_USER` until the *Release* store of `TP_STATUS_KERNEL`; the
//!   [`RxFrame`] handed to the closure borrows the slot for exactly that
//!   window and cannot escape it. TX: a slot is written only when its status
//!   is `TP_STATUS_AVAILABLE` and is published by a *Release* store of
//!   `TP_STATUS_SEND_REQUEST`.
//! * Slots are consumed strictly in ring order (the kernel's head and ours
//!   advance together); a TX slot that is not free makes `push` return
//!   [`TxError::RingFull`] rather than skip ahead, because the kernel would
//!   stop at the skipped slot.
//! * Nothing coming from the kernel or the network can panic this layer:
//!   every offset/length read from a ring header is checked against the slot
//!   and the mapping; bad frames are counted (`RingStats::malformed`) and
//!   returned to the kernel.
//! * The hot path (`recv_batch`, `push`, `flush`) does not allocate.
//! * Errors name the interface and the system call that failed; flush
//!   outcomes such as `EAGAIN`/`ENOBUFS` are counted results, not errors.

//!
//! # Forwarding with one copy
//! The RX closure may push into a TX ring: the frame is rewritten in its RX
//! slot and copied once, RX slot → TX slot, with its vnet header.
//!
//! ```no_run
//! use std::time::Duration;
//! use maglevd::io::{RxConfig, RxRing, TxConfig, TxRing, VipFilter};
//! # fn main() -> Result<(), maglevd::io::IoError> {
//! let vips = ["192.0.2.10".parse().unwrap()];
//! let filter = VipFilter::new(&vips, false).build()?;
//! let mut rx = RxRing::open("eth0", &RxConfig { filter: Some(filter), ..RxConfig::super_frames(256) })?;
//! let mut tx = TxRing::open("eth1", &TxConfig::super_frames(256))?;
//! let (backend_mac, our_mac) = ([0x02, 0, 0, 0, 0, 1], tx.interface().mac);
//! let mut dropped = 0u64;
//! for _ in 0..1_000_000 {
//!     let n = rx.recv_batch(256, |f| {
//!         if f.truncated || f.data.len() < 14 {
//!             dropped += 1;
//!             return;
//!         }
//!         f.data[0..6].copy_from_slice(&backend_mac);
//!         f.data[6..12].copy_from_slice(&our_mac);
//!         if tx.push(f.vnet.as_ref(), f.data).is_err() {
//!             dropped += 1; // RingFull / FrameTooBig: count, never block
//!         }
//!     });
//!     if n > 0 || tx.queued() > 0 {
//!         tx.flush(); // one send() for the whole batch
//!     } else {
//!         rx.wait(Duration::from_millis(10))?;
//!     }
//! }
//! # Ok(())
//! # }
//! ```

pub mod bpf;
pub mod iface;
#[cfg(test)]
pub mod mem;
mod netlink;
pub mod ring;
pub mod route;
mod sys;
pub mod tc;

use std::time::Duration;

pub use bpf::{BpfError, BpfProgram, VipFilter};
pub use iface::InterfaceInfo;
#[cfg(test)]
pub use mem::{MemFrame, MemRx, MemTx};
pub use netlink::NetlinkError;
pub use ring::{Fanout, MAX_SUPER_FRAME, PacketSocket, RingLayout, RingVersion, RxConfig, RxRing, TxConfig, TxRing};
pub use route::{RouteError, VipRoutes};
pub(crate) use sys::{advise_hugepages, allowed_cpus, prefetch};
pub use sys::{enter_netns, pin_current_thread};
pub use tc::{KernelDrop, TcError};

/// `struct virtio_net_hdr` (10 bytes, legacy layout, host byte order) that the
/// kernel puts in front of each frame when `PACKET_VNET_HDR` is on. It carries
/// the GSO/GRO segmentation and checksum-offload state of super-frames, so
/// that a 64 KiB TCP frame received on one interface can be transmitted on
/// another and segmented / checksummed by the kernel or the NIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VnetHdr {
    /// `VIRTIO_NET_HDR_F_*`.
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*`, possibly with `GSO_ECN`.
    pub gso_type: u8,
    /// Length of the headers (a hint for how much to keep linear).
    pub hdr_len: u16,
    /// Segment payload size (MSS) of a GSO frame.
    pub gso_size: u16,
    /// Offset from the Ethernet header where checksumming starts.
    pub csum_start: u16,
    /// Offset after `csum_start` where the checksum is stored.
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Size on the wire of the header.
    pub const LEN: usize = 10;
    /// The L4 checksum is partial: complete it from `csum_start`.
    pub const F_NEEDS_CSUM: u8 = 1;
    /// The checksum was already verified.
    pub const F_DATA_VALID: u8 = 2;
    /// Not a GSO frame.
    pub const GSO_NONE: u8 = 0;
    /// TCP over IPv4 GSO frame.
    pub const GSO_TCPV4: u8 = 1;
    /// UDP fragmentation offload (legacy).
    pub const GSO_UDP: u8 = 3;
    /// TCP over IPv6 GSO frame.
    pub const GSO_TCPV6: u8 = 4;
    /// UDP segmentation offload.
    pub const GSO_UDP_L4: u8 = 5;
    /// ECN bit, or-ed into `gso_type`.
    pub const GSO_ECN: u8 = 0x80;

    /// Parses the 10 header bytes (host byte order, as the kernel writes them).
    pub fn from_bytes(b: &[u8; Self::LEN]) -> Self {
        let u = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        VnetHdr { flags: b[0], gso_type: b[1], hdr_len: u(2), gso_size: u(4), csum_start: u(6), csum_offset: u(8) }
    }

    /// Serialises the header (host byte order).
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
        b
    }

    /// True for a GSO super-frame (`gso_type` other than NONE).
    pub fn is_gso(&self) -> bool {
        self.gso_type & !Self::GSO_ECN != Self::GSO_NONE
    }

    /// True if the L4 checksum still has to be completed.
    pub fn needs_csum(&self) -> bool {
        self.flags & Self::F_NEEDS_CSUM != 0
    }

    /// True when the header asks for nothing (no GSO, no checksum to finish):
    /// such a frame can be sent on a socket without `PACKET_VNET_HDR`.
    pub fn is_plain(&self) -> bool {
        !self.is_gso() && !self.needs_csum()
    }
}

/// Per-frame status bits from the RX ring header (`TP_STATUS_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RxStatus(pub u32);

impl RxStatus {
    /// `TP_STATUS_GSO_TCP` (kernel ≥ 6.11): a TCP GSO frame.
    pub const GSO_TCP: u32 = 1 << 8;

    /// CHECKSUM_PARTIAL: the L4 checksum is not filled in yet (a locally
    /// generated or veth frame). Forward it only with its [`VnetHdr`].
    pub fn csum_not_ready(&self) -> bool {
        self.0 & libc::TP_STATUS_CSUMNOTREADY != 0
    }
    /// The checksum was verified by the NIC or the stack.
    pub fn csum_valid(&self) -> bool {
        self.0 & libc::TP_STATUS_CSUM_VALID != 0
    }
    /// The kernel dropped frames since the last `stats()` read.
    pub fn losing(&self) -> bool {
        self.0 & libc::TP_STATUS_LOSING != 0
    }
    /// TCP GSO frame (only reported by newer kernels).
    pub fn gso_tcp(&self) -> bool {
        self.0 & Self::GSO_TCP != 0
    }
}

/// A received frame, borrowed from its ring slot for the duration of the
/// `recv_batch` closure.
#[derive(Debug)]
pub struct RxFrame<'a> {
    /// The frame, starting at the Ethernet header (`tp_snaplen` bytes). It may
    /// be modified in place (e.g. MAC rewrite) before it is pushed to TX.
    pub data: &'a mut [u8],
    /// Original length on the wire (`tp_len`), ≥ `data.len()`.
    pub wire_len: u32,
    /// The virtio-net header, when the ring was opened with `vnet_hdr`.
    pub vnet: Option<VnetHdr>,
    /// `tp_len > tp_snaplen`: the slot was too small, `data` is cut short.
    /// Such a frame must not be forwarded.
    pub truncated: bool,
    /// VLAN TCI stripped by the NIC/driver (`TP_STATUS_VLAN_VALID`).
    pub vlan_tci: Option<u16>,
    /// Raw status flags.
    pub status: RxStatus,
    /// When the kernel put the frame in the ring (`tp_sec`, `tp_nsec`: `CLOCK_REALTIME` in
    /// nanoseconds, taken in the receive path before the frame is copied); 0 when unknown.
    pub stamp_ns: u64,
}

/// RX ring counters: kernel statistics (accumulated across the reset-on-read
/// `PACKET_STATISTICS`) plus our own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RingStats {
    /// Frames the kernel handled for this socket (it counts drops in too).
    pub packets: u64,
    /// Frames dropped because the ring was full (or vnet hdr failed).
    pub drops: u64,
    /// TPACKET_V3: times the block queue was frozen (all blocks in user space).
    pub freeze_q: u64,
    /// Frames whose ring header was inconsistent (never expected).
    pub malformed: u64,
}

/// TX ring counters (cumulative).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TxStats {
    /// Frames written into the ring.
    pub pushed: u64,
    /// Bytes written into the ring (frames only, without vnet headers).
    pub pushed_bytes: u64,
    /// `push` found no free slot.
    pub ring_full: u64,
    /// `push` rejected a frame that was too big/small for slot or MTU.
    pub too_big: u64,
    /// `push` rejected an inconsistent vnet header.
    pub bad_vnet: u64,
    /// `send()` calls made.
    pub sends: u64,
    /// Bytes the kernel reported as sent.
    pub sent_bytes: u64,
    /// `send()` returned EAGAIN (socket send buffer full).
    pub eagain: u64,
    /// `send()` returned ENOBUFS (device queue full, qdisc bypass).
    pub enobufs: u64,
    /// ENOBUFS under qdisc bypass answered by one extra `send()` through
    /// the normal queueing path (see `TxRing::flush`).
    pub bypass_fallbacks: u64,
    /// `send()` failed otherwise (ENETDOWN, ENXIO…).
    pub errors: u64,
    /// Slots found in TP_STATUS_WRONG_FORMAT and reclaimed.
    pub wrong_format: u64,
    /// Queued frames given up by `discard_queued` (never taken by the kernel).
    pub discarded: u64,
    /// Bytes the kernel consumed from the ring but did not send (frames it
    /// rejected and discarded thanks to PACKET_LOSS). A lower bound.
    pub kernel_dropped_bytes: u64,
}

/// What one `flush()` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FlushOutcome {
    /// `send()` calls made: 0 when nothing was queued, else 1 (2 when an
    /// ENOBUFS under qdisc bypass was retried through the qdisc path).
    pub syscalls: u32,
    /// Frames the kernel took from the ring during this call.
    pub frames: u32,
    /// Bytes the kernel reported as sent.
    pub bytes: u64,
    /// Frames still queued in the ring (call `flush` again later).
    pub backlog: u32,
    /// Result of the `send()`.
    pub status: FlushStatus,
    /// Bytes of frames the kernel took from the ring in this call but did
    /// not send (discarded under `PACKET_LOSS`): taken bytes minus sent
    /// bytes, known only when one `send()` succeeded. The kernel does not
    /// mark which slot it discarded, so frames cannot be counted.
    pub dropped_bytes: u64,
}

/// Result class of a flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FlushStatus {
    /// Nothing was queued; no system call.
    #[default]
    Idle,
    /// `send()` succeeded.
    Sent,
    /// EAGAIN: the socket's send buffer is full; frames stay queued.
    Again,
    /// ENOBUFS: the device queue is full; the frame is retried next flush.
    NoBufs,
    /// Another errno (e.g. ENETDOWN); frames stay queued.
    Error(i32),
}

/// Why a frame was not queued for transmission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TxError {
    /// No free slot: the kernel has not sent the oldest frames yet.
    #[error("TX ring full")]
    RingFull,
    /// Larger than the slot, the MTU (non-GSO) or 64 KiB (GSO), or shorter
    /// than an Ethernet header.
    #[error("frame of {len} bytes does not fit (max {max})")]
    FrameTooBig {
        /// Frame length.
        len: usize,
        /// Largest length accepted for this frame.
        max: usize,
    },
    /// The vnet header is inconsistent, or asks for GSO/checksum offload on a
    /// ring opened without `vnet_hdr`.
    #[error("unusable virtio-net header: {0}")]
    BadVnetHdr(&'static str),
}

/// Errors of the I/O layer. Messages name the interface and the system call.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// The interface does not exist (in this network namespace).
    #[error("{iface}: no such network interface")]
    NoSuchInterface {
        /// Interface name.
        iface: String,
    },
    /// A system call failed.
    #[error("{iface}: {call}: {}{}", errno_text(.source), hint(.call, .source))]
    Syscall {
        /// Interface name.
        iface: String,
        /// The call, e.g. `setsockopt(PACKET_RX_RING)`.
        call: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Invalid ring or socket configuration.
    #[error("{iface}: invalid configuration: {reason}")]
    Config {
        /// Interface name.
        iface: String,
        /// What is wrong.
        reason: String,
    },
    /// A capability is missing.
    #[error("missing capability {cap}: {why}")]
    MissingCapability {
        /// e.g. `CAP_NET_RAW`.
        cap: &'static str,
        /// What it is needed for.
        why: &'static str,
    },
    /// The BPF program could not be built.
    #[error(transparent)]
    Bpf(#[from] BpfError),
}

impl IoError {
    pub(crate) fn sys(iface: &str, call: &'static str, source: std::io::Error) -> Self {
        if source.raw_os_error() == Some(libc::ENODEV) && (call == "if_nametoindex" || call.starts_with("bind")) {
            return IoError::NoSuchInterface { iface: iface.to_string() };
        }
        IoError::Syscall { iface: iface.to_string(), call, source }
    }

    /// The errno of a failed system call, if that is what this is.
    pub fn errno(&self) -> Option<i32> {
        match self {
            IoError::Syscall { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// "Operation not permitted", without std's " (os error 1)" suffix.
fn errno_text(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

fn hint(call: &str, e: &std::io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            if call.contains("SNDBUFFORCE") || call.contains("setns") {
                " (needs CAP_NET_ADMIN)"
            } else {
                " (needs CAP_NET_RAW)"
            }
        }
        Some(libc::ENOMEM) if call.contains("RING") || call.starts_with("mmap") => {
            " (ring too large: lower frame size or count)"
        }
        Some(libc::ENETDOWN) => " (interface is down)",
        Some(libc::ENXIO) | Some(libc::ENODEV) => " (interface gone?)",
        _ => "",
    }
}

/// A source of received frames (an [`RxRing`], or in unit tests the in-memory `MemRx`).
pub trait RxDevice {
    /// Hands every ready frame, up to `max`, to `f`, returning each slot to
    /// the kernel after `f` returns. Never blocks, never allocates. Returns
    /// the number of frames handed to `f`.
    fn recv_batch<F: FnMut(RxFrame<'_>)>(&mut self, max: usize, f: F) -> usize;
    /// The first pass of a two-pass batch: hands the bytes of the ready frames, up to `max`, to
    /// `f` with their index in the batch (0, 1, …), read-only and **without taking them**. Returns
    /// the `max` to give the next [`RxDevice::recv_batch`] so that it hands exactly these frames,
    /// in the same order (nothing can take them in between: both calls borrow the device
    /// mutably); 0 when no frame was ready (then any `max` will do). Never blocks, never
    /// allocates, no system call. A device that cannot look ahead hands nothing and returns
    /// `max` (the default).
    fn peek_batch<F: FnMut(usize, &[u8])>(&mut self, max: usize, f: F) -> usize {
        let _ = f;
        max
    }
    /// Sleeps until a frame is ready or `timeout` passes (`poll`); `Ok(true)`
    /// when frames are ready. Call it only when `recv_batch` returned 0.
    fn wait(&mut self, timeout: Duration) -> Result<bool, IoError>;
    /// True if a frame is ready, without a system call (a busy-polling worker spins on it).
    /// A device that cannot tell says false (the default): the worker then sleeps in
    /// [`RxDevice::wait`].
    fn ready(&self) -> bool {
        false
    }
    /// Frames the kernel could not put in the ring since it was opened
    /// (cumulative). A system call on a real ring: call it rarely (when a
    /// frame is marked [`RxStatus::losing`], and periodically), never per
    /// frame.
    fn kernel_drops(&mut self) -> Result<u64, IoError>;
}

/// A sink of frames (a [`TxRing`], or in unit tests the in-memory `MemTx`).
pub trait TxDevice {
    /// Copies `frame` into the next free slot; nothing is sent before `flush`.
    fn push(&mut self, vnet: Option<&VnetHdr>, frame: &[u8]) -> Result<(), TxError>;
    /// Hands every queued frame to the kernel with one system call.
    fn flush(&mut self) -> FlushOutcome;
    /// Frames pushed but not yet taken by the kernel.
    fn queued(&self) -> usize;
    /// Gives up on every queued frame (the kernel has not taken them and
    /// `send()` keeps failing): their slots are free again. Returns how many
    /// were discarded.
    fn discard_queued(&mut self) -> usize;
    /// MTU of the interface: the largest IP packet a non-GSO frame may carry.
    fn mtu(&self) -> u32;
}

/// A sender of single, complete frames (a [`PacketSocket`], or the in-memory `MemTx`
/// in tests): one system call per frame, for rare traffic such as ICMP
/// errors.
pub trait FrameSender {
    /// Sends `frame` (from the Ethernet header) without blocking.
    fn send_frame(&mut self, frame: &[u8]) -> Result<(), IoError>;
}

/// Effective capabilities of the calling thread that matter here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Raw `CapEff` mask.
    pub effective: u64,
    /// CAP_NET_RAW: AF_PACKET sockets.
    pub net_raw: bool,
    /// CAP_NET_ADMIN: SO_SNDBUFFORCE (else the send buffer is capped by
    /// `net.core.wmem_max`).
    pub net_admin: bool,
}

impl Capabilities {
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_NET_RAW: u32 = 13;

    /// Reads `CapEff` of the calling thread (`/proc/thread-self/status`,
    /// capabilities are per thread), falling back to `/proc/self/status`.
    pub fn current() -> Result<Capabilities, IoError> {
        let text = std::fs::read_to_string("/proc/thread-self/status")
            .or_else(|_| std::fs::read_to_string("/proc/self/status"))
            .map_err(|e| IoError::Syscall { iface: "-".into(), call: "read(/proc/self/status)", source: e })?;
        Self::parse_status(&text)
            .ok_or_else(|| IoError::Config { iface: "-".into(), reason: "no CapEff line in /proc/self/status".into() })
    }

    /// Parses the `CapEff:` line of a `/proc/<pid>/status` text.
    pub fn parse_status(text: &str) -> Option<Capabilities> {
        let line = text.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
        let effective = u64::from_str_radix(line.trim(), 16).ok()?;
        Some(Capabilities {
            effective,
            net_raw: effective & (1 << Self::CAP_NET_RAW) != 0,
            net_admin: effective & (1 << Self::CAP_NET_ADMIN) != 0,
        })
    }

    /// `Err` naming CAP_NET_RAW when it is missing; a missing CAP_NET_ADMIN
    /// is only a warning for the caller to print (see [`Capabilities::warning`]).
    pub fn require_datapath(&self) -> Result<(), IoError> {
        if !self.net_raw {
            return Err(IoError::MissingCapability {
                cap: "CAP_NET_RAW",
                why: "AF_PACKET sockets and rings; grant CAP_NET_RAW and CAP_NET_ADMIN, not root (systemd: AmbientCapabilities=; Kubernetes: capabilities.add with the image's file capabilities; or setcap cap_net_raw,cap_net_admin+ep on the binary)",
            });
        }
        Ok(())
    }

    /// A human-readable warning for missing optional capabilities.
    pub fn warning(&self) -> Option<&'static str> {
        (!self.net_admin).then_some(
            "CAP_NET_ADMIN missing: SO_SNDBUFFORCE unavailable, TX send buffer capped by net.core.wmem_max (expect EAGAIN under load); no kernel drop filter (VIP frames also go through the kernel's IPv4 stack)",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vnet_roundtrip() {
        let h = VnetHdr { flags: 1, gso_type: 0x81, hdr_len: 66, gso_size: 1448, csum_start: 34, csum_offset: 16 };
        assert_eq!(VnetHdr::from_bytes(&h.to_bytes()), h);
        assert!(h.is_gso() && h.needs_csum() && !h.is_plain());
        assert!(VnetHdr::default().is_plain());
        assert!(!VnetHdr { gso_type: VnetHdr::GSO_ECN, ..Default::default() }.is_gso());
    }

    #[test]
    fn error_messages_name_iface_and_call() {
        let e = IoError::sys("net1", "setsockopt(PACKET_RX_RING)", std::io::Error::from_raw_os_error(libc::EPERM));
        assert_eq!(e.to_string(), "net1: setsockopt(PACKET_RX_RING): Operation not permitted (needs CAP_NET_RAW)");
        assert_eq!(e.errno(), Some(libc::EPERM));
        let e = IoError::sys("net9", "if_nametoindex", std::io::Error::from_raw_os_error(libc::ENODEV));
        assert_eq!(e.to_string(), "net9: no such network interface");
        let e = IoError::sys("eth0", "setsockopt(SO_SNDBUFFORCE)", std::io::Error::from_raw_os_error(libc::EPERM));
        assert!(e.to_string().ends_with("(needs CAP_NET_ADMIN)"), "{e}");
    }

    #[test]
    fn capabilities_parse() {
        let c = Capabilities::parse_status("Name:\tx\nCapEff:\t0000000000003000\n").unwrap();
        assert!(c.net_raw && c.net_admin);
        let c = Capabilities::parse_status("CapEff:\t0000000000002000\n").unwrap();
        assert!(c.net_raw && !c.net_admin);
        assert!(c.require_datapath().is_ok() && c.warning().is_some());
        let c = Capabilities::parse_status("CapEff:\t0000000000000000\n").unwrap();
        assert!(c.require_datapath().unwrap_err().to_string().contains("CAP_NET_RAW"));
        assert!(Capabilities::parse_status("nothing").is_none());
        assert!(Capabilities::parse_status("CapEff:\tzz").is_none());
        // The current process can always be read.
        assert!(Capabilities::current().is_ok());
    }
}
