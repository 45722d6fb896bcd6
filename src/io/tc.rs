//! Kernel drop: a tc ingress filter that discards VIP frames after maglevd's rings have copied them.
//!
//! # Why
//! An AF_PACKET socket is a tap: the kernel hands the ring a copy of each frame and then goes on
//! with the frame itself. A VIP frame then runs through the IPv4 stack (`ip_rcv`, a route lookup
//! that fails on a frontend without the VIP and without forwarding, `ip_error`'s rate-limited
//! ICMP) only to be dropped. That is softirq time on the CPU that receives the frame, for nothing.
//!
//! In `__netif_receive_skb_core` the taps bound to all protocols (`ptype_all`, where our RX
//! rings sit) come first, then the tc ingress hook, then the protocol handlers (`ip_rcv`). A tc
//! filter that drops exactly the frames the rings take therefore removes the IP stack's share
//! and changes nothing for the rings (nor for other taps such as tcpdump, which still see the
//! frames).
//!
//! # What is installed
//! * a `clsact` qdisc on the ingress interface, created if the interface has none (an existing
//!   `clsact` or `ingress` qdisc is used as it is);
//! * one filter at the ingress hook: classifier `bpf` in direct-action mode, protocol IPv4,
//!   priority [`PRIORITY`] (19788, `pref 19788` in `tc filter show dev IF ingress`) and handle
//!   [`HANDLE`] (`0x4d4c`). Its program is [`VipFilter::build_tc_drop`]: the very instructions
//!   of the RX ring's socket filter ([`VipFilter::build`]) with other return values, so it
//!   matches exactly the frames the rings take — IPv4 to a configured VIP — and nothing else.
//!   ARP, IPv6, the frontend's own traffic and IPv4 to any other address go on to the kernel
//!   (`TC_ACT_UNSPEC`: the next filter, if any, then the stack).
//!
//! Replacing the filter (`RTM_NEWTFILTER` with `NLM_F_CREATE` and no `NLM_F_EXCL`, same
//! priority and handle) swaps the program atomically, so installing it again is idempotent and a
//! new VIP set takes effect without a moment with no filter. [`KernelDrop::remove`] deletes the
//! filter, and the `clsact` qdisc too if this process created it and no other filter uses it.
//!
//! The priority is below the ones tc picks when none is given (49152 and down), so the filter
//! runs before filters added without a `pref`, and is an unlikely choice for a hand-written one.
//! Whatever holds this priority and handle on the ingress hook is taken for maglevd's own filter.
//!
//! # Why `cls_bpf` with classic BPF, and not `u32` or a `gact` action
//! The match is the ring filter's own program, so the two cannot disagree, for any number of
//! VIPs (a `u32` filter needs one key, or a hash table, per VIP, a second encoding of the same
//! set). Direct action lets the program return the verdict itself: no action module is needed
//! (`act_gact`, the usual `action drop`, is not built into every kernel; this lab's is one
//! without it), only `cls_bpf`, `clsact`/`ingress` and the classic BPF translator, which every
//! kernel with tc has.
//!
//! # Why hand-written netlink
//! Four rtnetlink requests (new qdisc, new/delete filter, dump filters) with fixed layouts. The
//! `rtnetlink` crate is asynchronous (tokio) and brings a large dependency tree for them;
//! `netlink-packet-route` alone still needs its own socket layer. The messages are built here
//! with bounds-checked byte writes and parsed with bounds-checked reads; the only system calls
//! are the socket, `send`, `poll` and `recv` of [`super::sys`].
//!
//! # Failures
//! It needs CAP_NET_ADMIN in the network namespace of the interface. The caller decides what a
//! failure means; the daemon logs a warning naming the cost and forwards on without it.
//!
//! # After a crash
//! A filter left behind by a process that did not stop cleanly keeps dropping VIP frames, which
//! a frontend without VIP and without forwarding would drop anyway; the next start replaces it.
//! On a host given back to IPVS, remove it: `tc filter del dev IF ingress pref 19788`.

use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use super::bpf::{BpfError, BpfProgram, VipFilter};
use super::sys;

/// The filter's priority (`pref`) on the ingress hook.
pub const PRIORITY: u16 = 0x4d4c;
/// The filter's handle.
pub const HANDLE: u32 = 0x4d4c;

// rtnetlink message types and flags (linux/rtnetlink.h, linux/netlink.h).
const RTM_NEWQDISC: u16 = 36;
const RTM_DELQDISC: u16 = 37;
const RTM_NEWTFILTER: u16 = 44;
const RTM_DELTFILTER: u16 = 45;
const RTM_GETTFILTER: u16 = 46;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
/// In an error message: the request was not echoed (`NETLINK_CAP_ACK`).
const NLM_F_CAPPED: u16 = 0x100;
/// In an error message: extended-ack attributes follow.
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;
const NETLINK_CAP_ACK: i32 = 10;
const NETLINK_EXT_ACK: i32 = 11;

// tc (linux/pkt_sched.h, linux/pkt_cls.h).
const TCA_KIND: u16 = 1;
const TCA_OPTIONS: u16 = 2;
const TCA_BPF_OPS_LEN: u16 = 4;
const TCA_BPF_OPS: u16 = 5;
const TCA_BPF_FLAGS: u16 = 8;
const TCA_BPF_FLAG_ACT_DIRECT: u32 = 1;
const NLA_F_NESTED: u16 = 0x8000;
/// `TC_H_CLSACT` (= `TC_H_INGRESS`): the parent of a clsact or ingress qdisc.
const TC_H_CLSACT: u32 = 0xffff_fff1;
/// The clsact qdisc's own handle, `ffff:`.
const CLSACT_HANDLE: u32 = 0xffff_0000;
/// `TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS)`: where ingress filters hang.
const PARENT_INGRESS: u32 = 0xffff_fff2;
/// `TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_EGRESS)`.
const PARENT_EGRESS: u32 = 0xffff_fff3;
const ETH_P_IP: u16 = 0x0800;

const NLMSG_HDR: usize = 16;
const TCMSG: usize = 20;
/// How long one request may wait for the kernel's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the filter could not be installed, replaced or removed.
#[derive(Debug, thiserror::Error)]
pub enum TcError {
    /// The program could not be built (too many VIPs).
    #[error("building the tc program: {0}")]
    Program(#[from] BpfError),
    /// A netlink request failed.
    #[error("{iface}: {what}: {source}{}", detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Netlink {
        /// The interface.
        iface: String,
        /// What was asked of the kernel.
        what: &'static str,
        /// The error (errno, or a malformed answer).
        source: std::io::Error,
        /// The kernel's extended-ack message, if it sent one.
        detail: Option<String>,
    },
}

impl TcError {
    /// The kernel refused for lack of privileges (CAP_NET_ADMIN).
    pub fn is_permission(&self) -> bool {
        matches!(self, TcError::Netlink { source, .. } if matches!(source.raw_os_error(), Some(libc::EPERM | libc::EACCES)))
    }
}

/// `struct tcmsg`.
#[derive(Debug, Clone, Copy)]
struct TcMsg {
    ifindex: u32,
    handle: u32,
    parent: u32,
    info: u32,
}

/// `tcm_info` of a filter: priority in the upper half, protocol (network order) in the lower.
fn filter_info(priority: u16, protocol: u16) -> u32 {
    (u32::from(priority) << 16) | u32::from(protocol.to_be())
}

/// A netlink message under construction: header, `tcmsg`, attributes.
struct Msg {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

impl Msg {
    fn new(kind: u16, flags: u16, seq: u32, tcm: TcMsg) -> Msg {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len, set by finish()
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: the kernel
        buf.extend_from_slice(&[0u8; 4]); // tcm_family (AF_UNSPEC) and padding
        buf.extend_from_slice(&tcm.ifindex.to_ne_bytes());
        buf.extend_from_slice(&tcm.handle.to_ne_bytes());
        buf.extend_from_slice(&tcm.parent.to_ne_bytes());
        buf.extend_from_slice(&tcm.info.to_ne_bytes());
        Msg { buf, nests: Vec::new() }
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn attr(&mut self, kind: u16, payload: &[u8]) {
        let len = u16::try_from(4 + payload.len()).unwrap_or(u16::MAX);
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.pad();
    }

    fn attr_str(&mut self, kind: u16, s: &str) {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.attr(kind, &v);
    }

    fn begin(&mut self, kind: u16) {
        self.nests.push(self.buf.len());
        self.attr(kind | NLA_F_NESTED, &[]);
    }

    fn end(&mut self) {
        if let Some(at) = self.nests.pop() {
            let len = u16::try_from(self.buf.len() - at).unwrap_or(u16::MAX);
            self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
        }
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The attributes in `b` as (type without flags, payload).
fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = usize::from(u16_at(b, 0)?);
        let kind = u16_at(b, 2)? & !NLA_F_NESTED;
        let payload = b.get(4..len)?;
        b = b.get((len + 3) & !3..).unwrap_or(&[]);
        Some((kind, payload))
    })
}

/// One message of an answer.
#[derive(Debug)]
struct Answer<'a> {
    kind: u16,
    flags: u16,
    seq: u32,
    payload: &'a [u8],
}

fn messages(mut b: &[u8]) -> impl Iterator<Item = Answer<'_>> {
    std::iter::from_fn(move || {
        let len = u32_at(b, 0)? as usize;
        if len < NLMSG_HDR {
            return None;
        }
        let m =
            Answer { kind: u16_at(b, 4)?, flags: u16_at(b, 6)?, seq: u32_at(b, 8)?, payload: b.get(NLMSG_HDR..len)? };
        b = b.get((len + 3) & !3..).unwrap_or(&[]);
        Some(m)
    })
}

/// An error message's errno (0 for an acknowledgement) and extended-ack text.
fn error_of(m: &Answer<'_>) -> (i32, Option<String>) {
    let errno = u32_at(m.payload, 0).map_or(libc::EPROTO, |e| -(e as i32));
    let mut detail = None;
    if m.flags & NLM_F_ACK_TLVS != 0 {
        // After the error code comes the request's header, and its payload unless capped.
        let echoed = if m.flags & NLM_F_CAPPED != 0 {
            NLMSG_HDR
        } else {
            u32_at(m.payload, 4).map_or(NLMSG_HDR, |l| l as usize)
        };
        let tlvs = m.payload.get(4 + ((echoed + 3) & !3)..).unwrap_or(&[]);
        detail = attrs(tlvs).find(|(k, _)| *k == NLMSGERR_ATTR_MSG).map(|(_, v)| {
            let text = v.split(|c| *c == 0).next().unwrap_or(&[]);
            String::from_utf8_lossy(text).into_owned()
        });
    }
    (errno, detail)
}

/// A filter seen in a dump.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Filter {
    handle: u32,
    priority: u16,
    kind: String,
}

/// An rtnetlink socket in the namespace where it was opened.
#[derive(Debug)]
struct Rtnl {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl Rtnl {
    fn open() -> std::io::Result<Rtnl> {
        let fd = sys::rtnetlink_socket()?;
        // Error messages with the kernel's reason, without an echo of the (up to 32 KiB) request.
        let _ = sys::set_int(&fd, libc::SOL_NETLINK, NETLINK_EXT_ACK, 1);
        let _ = sys::set_int(&fd, libc::SOL_NETLINK, NETLINK_CAP_ACK, 1);
        Ok(Rtnl { fd, seq: 0, buf: vec![0; 128 * 1024] })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Receives the next datagram into `self.buf`; its length.
    fn recv(&mut self, deadline: Instant) -> std::io::Result<usize> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(std::io::Error::from_raw_os_error(libc::ETIMEDOUT));
            }
            if !sys::poll_in(&self.fd, left)?.readable {
                continue;
            }
            match sys::recv_buf(&self.fd, &mut self.buf) {
                Ok(n) if n > self.buf.len() => return Err(std::io::Error::from_raw_os_error(libc::EMSGSIZE)),
                Ok(n) => return Ok(n),
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends a request with `NLM_F_ACK` and waits for its acknowledgement: `Err((errno, detail))`.
    fn request(
        &mut self,
        kind: u16,
        flags: u16,
        tcm: TcMsg,
        body: impl FnOnce(&mut Msg),
    ) -> Result<(), (std::io::Error, Option<String>)> {
        let seq = self.next_seq();
        let mut msg = Msg::new(kind, flags | NLM_F_ACK, seq, tcm);
        body(&mut msg);
        sys::send_buf(&self.fd, &msg.finish()).map_err(|e| (e, None))?;
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        loop {
            let n = self.recv(deadline).map_err(|e| (e, None))?;
            for m in messages(&self.buf[..n]) {
                if m.kind == NLMSG_ERROR && m.seq == seq {
                    let (errno, detail) = error_of(&m);
                    return if errno == 0 { Ok(()) } else { Err((std::io::Error::from_raw_os_error(errno), detail)) };
                }
            }
        }
    }

    /// The filters on `parent` of interface `ifindex`.
    fn filters(&mut self, ifindex: u32, parent: u32) -> Result<Vec<Filter>, (std::io::Error, Option<String>)> {
        let seq = self.next_seq();
        let tcm = TcMsg { ifindex, handle: 0, parent, info: 0 };
        sys::send_buf(&self.fd, &Msg::new(RTM_GETTFILTER, NLM_F_DUMP, seq, tcm).finish()).map_err(|e| (e, None))?;
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        let mut out = Vec::new();
        loop {
            let n = self.recv(deadline).map_err(|e| (e, None))?;
            for m in messages(&self.buf[..n]) {
                if m.seq != seq {
                    continue;
                }
                match m.kind {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let (errno, detail) = error_of(&m);
                        return Err((
                            std::io::Error::from_raw_os_error(if errno == 0 { libc::EPROTO } else { errno }),
                            detail,
                        ));
                    }
                    RTM_NEWTFILTER => {
                        let (Some(handle), Some(info)) = (u32_at(m.payload, 8), u32_at(m.payload, 16)) else {
                            continue;
                        };
                        let kind = attrs(m.payload.get(TCMSG..).unwrap_or(&[]))
                            .find(|(k, _)| *k == TCA_KIND)
                            .map(|(_, v)| {
                                String::from_utf8_lossy(v.split(|c| *c == 0).next().unwrap_or(&[])).into_owned()
                            })
                            .unwrap_or_default();
                        out.push(Filter { handle, priority: (info >> 16) as u16, kind });
                    }
                    _ => {}
                }
            }
        }
    }
}

/// maglevd's VIP drop filter on one interface's ingress hook, installed by [`KernelDrop::install`]
/// and removed by [`KernelDrop::remove`] (or, errors ignored, when dropped).
///
/// It keeps the netlink socket it was installed with, so every later change applies in the
/// network namespace of the install, from any thread.
#[derive(Debug)]
pub struct KernelDrop {
    rtnl: Rtnl,
    iface: String,
    ifindex: u32,
    vips: Vec<Ipv4Addr>,
    /// The `clsact` qdisc did not exist and was created here.
    created_clsact: bool,
    removed: bool,
}

impl KernelDrop {
    /// Creates the `clsact` qdisc on `iface` if it has none and installs (or replaces) the drop
    /// filter for `vips`, in the calling thread's network namespace.
    pub fn install(iface: &str, vips: &[Ipv4Addr]) -> Result<KernelDrop, TcError> {
        // CAP_NET_ADMIN, raised for this request only.
        let _privs = crate::privs::raised();
        let rtnl = Rtnl::open().map_err(|source| TcError::Netlink {
            iface: iface.to_string(),
            what: "opening an rtnetlink socket",
            source,
            detail: None,
        })?;
        let mut k = KernelDrop {
            rtnl,
            iface: iface.to_string(),
            ifindex: 0,
            vips: Vec::new(),
            created_clsact: false,
            removed: false,
        };
        k.reinstall_for(vips)?;
        Ok(k)
    }

    /// The interface.
    pub fn interface(&self) -> &str {
        &self.iface
    }

    /// The VIPs the installed filter drops.
    pub fn vips(&self) -> &[Ipv4Addr] {
        &self.vips
    }

    /// Whether this process created the `clsact` qdisc (and removes it with the filter).
    pub fn created_clsact(&self) -> bool {
        self.created_clsact
    }

    /// Replaces the filter's program with one for `vips` (nothing to do if they are the ones in
    /// place).
    pub fn set_vips(&mut self, vips: &[Ipv4Addr]) -> Result<(), TcError> {
        // CAP_NET_ADMIN, raised for this request only.
        let _privs = crate::privs::raised();
        let mut want = vips.to_vec();
        want.sort_unstable();
        want.dedup();
        if want == self.vips {
            return Ok(());
        }
        let prog = VipFilter::new(&want, false).build_tc_drop()?;
        self.replace_filter(&prog)?;
        self.vips = want;
        Ok(())
    }

    /// Installs everything again on the interface as it is now (after it was re-created: a new
    /// index, and the old qdisc and filter went with the old interface).
    pub fn reinstall(&mut self) -> Result<(), TcError> {
        // CAP_NET_ADMIN, raised for this request only.
        let _privs = crate::privs::raised();
        let vips = self.vips.clone();
        self.reinstall_for(&vips)
    }

    fn reinstall_for(&mut self, vips: &[Ipv4Addr]) -> Result<(), TcError> {
        let mut want = vips.to_vec();
        want.sort_unstable();
        want.dedup();
        let prog = VipFilter::new(&want, false).build_tc_drop()?;
        self.ifindex = sys::if_nametoindex(&self.iface).map_err(|e| self.err("looking up the interface", e, None))?;
        let created = self.ensure_clsact()?;
        self.created_clsact |= created;
        self.replace_filter(&prog)?;
        self.vips = want;
        self.removed = false;
        Ok(())
    }

    fn err(&self, what: &'static str, source: std::io::Error, detail: Option<String>) -> TcError {
        TcError::Netlink { iface: self.iface.clone(), what, source, detail }
    }

    /// Creates the clsact qdisc unless a clsact or ingress qdisc is there; true if created.
    fn ensure_clsact(&mut self) -> Result<bool, TcError> {
        let tcm = TcMsg { ifindex: self.ifindex, handle: CLSACT_HANDLE, parent: TC_H_CLSACT, info: 0 };
        match self.rtnl.request(RTM_NEWQDISC, NLM_F_CREATE | NLM_F_EXCL, tcm, |m| m.attr_str(TCA_KIND, "clsact")) {
            Ok(()) => Ok(true),
            Err((e, _)) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
            Err((e, d)) => Err(self.err("creating the clsact qdisc", e, d)),
        }
    }

    fn filter_msg(&self) -> TcMsg {
        TcMsg { ifindex: self.ifindex, handle: HANDLE, parent: PARENT_INGRESS, info: filter_info(PRIORITY, ETH_P_IP) }
    }

    fn replace_filter(&mut self, prog: &BpfProgram) -> Result<(), TcError> {
        let ops: Vec<u8> = prog
            .raw()
            .into_iter()
            .flat_map(|(code, jt, jf, k)| {
                let mut b = [0u8; 8];
                b[0..2].copy_from_slice(&code.to_ne_bytes());
                b[2] = jt;
                b[3] = jf;
                b[4..8].copy_from_slice(&k.to_ne_bytes());
                b
            })
            .collect();
        let n = prog.insns().len() as u16;
        let tcm = self.filter_msg();
        let r = self.rtnl.request(RTM_NEWTFILTER, NLM_F_CREATE, tcm, |m| {
            m.attr_str(TCA_KIND, "bpf");
            m.begin(TCA_OPTIONS);
            m.attr(TCA_BPF_OPS_LEN, &n.to_ne_bytes());
            m.attr(TCA_BPF_OPS, &ops);
            m.attr(TCA_BPF_FLAGS, &TCA_BPF_FLAG_ACT_DIRECT.to_ne_bytes());
            m.end();
        });
        r.map_err(|(e, d)| self.err("installing the VIP drop filter", e, d))
    }

    /// Deletes the filter, and the clsact qdisc if it was created here and holds no other filter.
    pub fn remove(mut self) -> Result<(), TcError> {
        self.remove_inner()
    }

    fn remove_inner(&mut self) -> Result<(), TcError> {
        // CAP_NET_ADMIN, raised for this request only.
        let _privs = crate::privs::raised();
        if self.removed {
            return Ok(());
        }
        self.removed = true;
        let tcm = self.filter_msg();
        match self.rtnl.request(RTM_DELTFILTER, 0, tcm, |m| m.attr_str(TCA_KIND, "bpf")) {
            Ok(()) => {}
            // Already gone (with the interface, or by hand).
            Err((e, _)) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENODEV | libc::EINVAL)) => {}
            Err((e, d)) => return Err(self.err("removing the VIP drop filter", e, d)),
        }
        if self.created_clsact {
            let mut others = 0;
            for parent in [PARENT_INGRESS, PARENT_EGRESS] {
                match self.rtnl.filters(self.ifindex, parent) {
                    Ok(f) => others += f.len(),
                    // No qdisc (the interface went away): nothing to remove.
                    Err(_) => return Ok(()),
                }
            }
            if others == 0 {
                let tcm = TcMsg { ifindex: self.ifindex, handle: CLSACT_HANDLE, parent: TC_H_CLSACT, info: 0 };
                match self.rtnl.request(RTM_DELQDISC, 0, tcm, |m| m.attr_str(TCA_KIND, "clsact")) {
                    Ok(()) => {}
                    Err((e, _)) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENODEV | libc::EINVAL)) => {}
                    Err((e, d)) => return Err(self.err("removing the clsact qdisc", e, d)),
                }
            }
        }
        Ok(())
    }
}

impl Drop for KernelDrop {
    fn drop(&mut self) {
        let _ = self.remove_inner();
    }
}

/// Whether maglevd's drop filter ([`PRIORITY`], [`HANDLE`], `bpf`) is on `iface`'s ingress hook,
/// in the calling thread's network namespace. An interface without a clsact or ingress qdisc has
/// none.
pub fn installed(iface: &str) -> Result<bool, TcError> {
    let err = |what, source, detail| TcError::Netlink { iface: iface.to_string(), what, source, detail };
    let mut rtnl = Rtnl::open().map_err(|e| err("opening an rtnetlink socket", e, None))?;
    let ifindex = sys::if_nametoindex(iface).map_err(|e| err("looking up the interface", e, None))?;
    match rtnl.filters(ifindex, PARENT_INGRESS) {
        Ok(f) => Ok(f.iter().any(|f| f.handle == HANDLE && f.priority == PRIORITY && f.kind == "bpf")),
        Err((e, _)) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) => Ok(false),
        Err((e, d)) => Err(err("listing the ingress filters", e, d)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_info_puts_priority_high_and_protocol_in_network_order() {
        let info = filter_info(PRIORITY, ETH_P_IP);
        assert_eq!(info >> 16, 0x4d4c);
        assert_eq!((info as u16).to_ne_bytes(), [0x08, 0x00]);
    }

    #[test]
    fn messages_are_aligned_and_nested_lengths_cover_their_attributes() {
        let tcm = TcMsg { ifindex: 7, handle: HANDLE, parent: PARENT_INGRESS, info: 1 };
        let mut m = Msg::new(RTM_NEWTFILTER, NLM_F_CREATE, 9, tcm);
        m.attr_str(TCA_KIND, "bpf");
        m.begin(TCA_OPTIONS);
        m.attr(TCA_BPF_OPS_LEN, &1u16.to_ne_bytes());
        m.attr(TCA_BPF_OPS, &[6, 0, 0, 0, 2, 0, 0, 0]);
        m.end();
        let b = m.finish();
        assert_eq!(u32_at(&b, 0), Some(b.len() as u32));
        assert_eq!(u16_at(&b, 6), Some(NLM_F_CREATE | NLM_F_REQUEST));
        assert_eq!(u32_at(&b, NLMSG_HDR + 4), Some(7));
        let a: Vec<(u16, Vec<u8>)> = attrs(&b[NLMSG_HDR + TCMSG..]).map(|(k, v)| (k, v.to_vec())).collect();
        assert_eq!(a.len(), 2);
        assert_eq!(a[0], (TCA_KIND, b"bpf\0".to_vec()));
        assert_eq!(a[1].0, TCA_OPTIONS);
        let inner: Vec<u16> = attrs(&a[1].1).map(|(k, _)| k).collect();
        assert_eq!(inner, [TCA_BPF_OPS_LEN, TCA_BPF_OPS]);
        assert!(b.len().is_multiple_of(4));
    }

    #[test]
    fn error_messages_give_errno_and_the_kernels_reason() {
        // nlmsgerr: -EPERM, then the capped request header, then NLMSGERR_ATTR_MSG.
        let mut payload = (-libc::EPERM).to_ne_bytes().to_vec();
        payload.extend_from_slice(&[0u8; NLMSG_HDR]);
        payload.extend_from_slice(&12u16.to_ne_bytes());
        payload.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        payload.extend_from_slice(b"no perm\0");
        let m = Answer { kind: NLMSG_ERROR, flags: NLM_F_CAPPED | NLM_F_ACK_TLVS, seq: 1, payload: &payload };
        assert_eq!(error_of(&m), (libc::EPERM, Some("no perm".into())));
        let ack = 0i32.to_ne_bytes();
        let m = Answer { kind: NLMSG_ERROR, flags: 0, seq: 1, payload: &ack };
        assert_eq!(error_of(&m), (0, None));
        // Garbage never panics.
        for n in 0..payload.len() {
            let m = Answer { kind: NLMSG_ERROR, flags: NLM_F_ACK_TLVS, seq: 1, payload: &payload[..n] };
            let _ = error_of(&m);
            let _ = messages(&payload[..n]).count();
            let _ = attrs(&payload[..n]).count();
        }
    }
}
