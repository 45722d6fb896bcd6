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
//! # Netlink
//! Four rtnetlink requests (new qdisc, new/delete filter, dump filters) with fixed layouts, sent
//! with [`super::netlink`] (which says why it is hand-written).
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

use super::bpf::{BpfError, BpfProgram, VipFilter};
use super::netlink::{Failure, NLM_F_CREATE, NLM_F_EXCL, NetlinkError, Rtnl, attrs, u32_at};
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

// tc (linux/pkt_sched.h, linux/pkt_cls.h).
const TCA_KIND: u16 = 1;
const TCA_OPTIONS: u16 = 2;
const TCA_BPF_OPS_LEN: u16 = 4;
const TCA_BPF_OPS: u16 = 5;
const TCA_BPF_FLAGS: u16 = 8;
const TCA_BPF_FLAG_ACT_DIRECT: u32 = 1;
/// `TC_H_CLSACT` (= `TC_H_INGRESS`): the parent of a clsact or ingress qdisc.
const TC_H_CLSACT: u32 = 0xffff_fff1;
/// The clsact qdisc's own handle, `ffff:`.
const CLSACT_HANDLE: u32 = 0xffff_0000;
/// `TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS)`: where ingress filters hang.
const PARENT_INGRESS: u32 = 0xffff_fff2;
/// `TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_EGRESS)`.
const PARENT_EGRESS: u32 = 0xffff_fff3;
const ETH_P_IP: u16 = 0x0800;

const TCMSG: usize = 20;

/// Why the filter could not be installed, replaced or removed.
#[derive(Debug, thiserror::Error)]
pub enum TcError {
    /// The program could not be built (too many VIPs).
    #[error("building the tc program: {0}")]
    Program(#[from] BpfError),
    /// A netlink request failed (what names the interface).
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
}

/// A request about `iface` the kernel refused: `what` was asked.
fn failed(iface: &str, what: &str, failure: Failure) -> TcError {
    TcError::Netlink(NetlinkError::new(format!("{iface}: {what}"), failure))
}

impl TcError {
    /// The kernel refused for lack of privileges (CAP_NET_ADMIN).
    pub fn is_permission(&self) -> bool {
        matches!(self, TcError::Netlink(e) if e.is_permission())
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

/// A filter seen in a dump.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Filter {
    handle: u32,
    priority: u16,
    kind: String,
}

impl TcMsg {
    fn bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; 4]; // tcm_family (AF_UNSPEC) and padding
        for v in [self.ifindex, self.handle, self.parent, self.info] {
            b.extend_from_slice(&v.to_ne_bytes());
        }
        b
    }
}

/// The filters on `parent` of interface `ifindex`.
fn filters(rtnl: &mut Rtnl, ifindex: u32, parent: u32) -> Result<Vec<Filter>, (std::io::Error, Option<String>)> {
    let tcm = TcMsg { ifindex, handle: 0, parent, info: 0 };
    let mut out = Vec::new();
    rtnl.dump(RTM_GETTFILTER, &tcm.bytes(), |m| {
        if m.kind != RTM_NEWTFILTER {
            return;
        }
        let (Some(handle), Some(info)) = (u32_at(m.payload, 8), u32_at(m.payload, 16)) else { return };
        let kind = attrs(m.payload.get(TCMSG..).unwrap_or(&[]))
            .find(|(k, _)| *k == TCA_KIND)
            .map(|(_, v)| String::from_utf8_lossy(v.split(|c| *c == 0).next().unwrap_or(&[])).into_owned())
            .unwrap_or_default();
        out.push(Filter { handle, priority: (info >> 16) as u16, kind });
    })?;
    Ok(out)
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
        let rtnl = Rtnl::open().map_err(|e| failed(iface, "opening an rtnetlink socket", (e, None)))?;
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
        failed(&self.iface, what, (source, detail))
    }

    /// Creates the clsact qdisc unless a clsact or ingress qdisc is there; true if created.
    fn ensure_clsact(&mut self) -> Result<bool, TcError> {
        let tcm = TcMsg { ifindex: self.ifindex, handle: CLSACT_HANDLE, parent: TC_H_CLSACT, info: 0 };
        match self
            .rtnl
            .request(RTM_NEWQDISC, NLM_F_CREATE | NLM_F_EXCL, &tcm.bytes(), |m| m.attr_str(TCA_KIND, "clsact"))
        {
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
        let r = self.rtnl.request(RTM_NEWTFILTER, NLM_F_CREATE, &tcm.bytes(), |m| {
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
        match self.rtnl.request(RTM_DELTFILTER, 0, &tcm.bytes(), |m| m.attr_str(TCA_KIND, "bpf")) {
            Ok(()) => {}
            // Already gone (with the interface, or by hand).
            Err((e, _)) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENODEV | libc::EINVAL)) => {}
            Err((e, d)) => return Err(self.err("removing the VIP drop filter", e, d)),
        }
        if self.created_clsact {
            let mut others = 0;
            for parent in [PARENT_INGRESS, PARENT_EGRESS] {
                match filters(&mut self.rtnl, self.ifindex, parent) {
                    Ok(f) => others += f.len(),
                    // No qdisc (the interface went away): nothing to remove.
                    Err(_) => return Ok(()),
                }
            }
            if others == 0 {
                let tcm = TcMsg { ifindex: self.ifindex, handle: CLSACT_HANDLE, parent: TC_H_CLSACT, info: 0 };
                match self.rtnl.request(RTM_DELQDISC, 0, &tcm.bytes(), |m| m.attr_str(TCA_KIND, "clsact")) {
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
    let err = |what, source, detail| failed(iface, what, (source, detail));
    let mut rtnl = Rtnl::open().map_err(|e| err("opening an rtnetlink socket", e, None))?;
    let ifindex = sys::if_nametoindex(iface).map_err(|e| err("looking up the interface", e, None))?;
    match filters(&mut rtnl, ifindex, PARENT_INGRESS) {
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
}
