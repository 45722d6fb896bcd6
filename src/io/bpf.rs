//! Classic BPF socket filter: "ARP, or IPv4 to one of these VIPs".
//!
//! AF_PACKET is a tap: without a filter the RX ring receives every frame of
//! the interface (and the kernel still processes them). The program built
//! here runs in the kernel before a frame is copied to the ring:
//!
//! ```text
//!        ldh [12]                      ; ethertype
//!        jeq #0x0806, accept_arp       ; if ARP is accepted
//!        jeq #0x0800, ipv4, +1
//!        ja  vlan | drop
//! ipv4:  ld  [30]                      ; IPv4 destination (14 + 16)
//!        ja  chain
//! vlan:  jeq #0x8100 ... ldh [16] / jeq #0x0800 / ld [34]   (optional)
//! chain: jeq #vip0, acc0 … jeq #vipN, acc0 ; chunks of ≤ 128 VIPs, because
//!        ja  +1                              ; conditional jumps reach at
//! acc0:  ret #0xffffffff                     ; most 255 instructions
//!        …
//! drop:  ret #0
//! ```
//!
//! Accepting returns `0xFFFF_FFFF` (keep the whole frame, including 64 KiB
//! GSO super-frames); dropping returns 0. A load past the end of a short frame
//! makes classic BPF return 0, so runts are dropped. Frames whose VLAN tag
//! was stripped by the NIC are seen untagged. Up to ~4000 VIPs fit into the
//! 4096-instruction limit (half that with `vlan`).
//!
//! Attach it **before** the socket is bound (the rings in this crate do), so
//! no unfiltered frame can enter the ring; when replacing a filter at run
//! time, frames already in the ring passed the old one.

use std::net::Ipv4Addr;

/// Maximum program length accepted by the kernel (BPF_MAXINSNS).
pub const MAX_INSNS: usize = 4096;
/// Return value for "accept the whole frame".
pub const ACCEPT: u32 = u32::MAX;
/// Return value for "drop".
pub const DROP: u32 = 0;
/// tc direct-action verdict "drop the frame" (`TC_ACT_SHOT`).
pub const TC_ACT_SHOT: u32 = 2;
/// tc direct-action verdict "no verdict: go on with the next filter" (`TC_ACT_UNSPEC`, -1).
pub const TC_ACT_UNSPEC: u32 = u32::MAX;

const CHUNK: usize = 128;

// Opcodes (linux/bpf_common.h).
const BPF_LD: u16 = 0x00;
const BPF_JMP: u16 = 0x05;
const BPF_RET: u16 = 0x06;
const BPF_W: u16 = 0x00;
const BPF_H: u16 = 0x08;
const BPF_B: u16 = 0x10;
const BPF_ABS: u16 = 0x20;
const BPF_JA: u16 = 0x00;
const BPF_JEQ: u16 = 0x10;
const BPF_K: u16 = 0x00;

/// `ld [k]` (32-bit, absolute).
pub const OP_LD_W_ABS: u16 = BPF_LD | BPF_W | BPF_ABS;
/// `ldh [k]`.
pub const OP_LD_H_ABS: u16 = BPF_LD | BPF_H | BPF_ABS;
/// `ldb [k]`.
pub const OP_LD_B_ABS: u16 = BPF_LD | BPF_B | BPF_ABS;
/// `jeq #k, jt, jf`.
pub const OP_JEQ_K: u16 = BPF_JMP | BPF_JEQ | BPF_K;
/// `ja k`.
pub const OP_JA: u16 = BPF_JMP | BPF_JA;
/// `ret #k`.
pub const OP_RET_K: u16 = BPF_RET | BPF_K;

/// One classic BPF instruction (layout of `struct sock_filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    /// Opcode.
    pub code: u16,
    /// Jump offset if true.
    pub jt: u8,
    /// Jump offset if false.
    pub jf: u8,
    /// Constant.
    pub k: u32,
}

/// A classic BPF program ready to attach with `SO_ATTACH_FILTER`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BpfProgram {
    insns: Vec<Insn>,
}

/// Why a program could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BpfError {
    /// More instructions than the kernel accepts.
    #[error("BPF program has {len} instructions, more than the kernel limit of {MAX_INSNS} (too many VIPs)")]
    TooLong {
        /// Program length.
        len: usize,
    },
    /// A conditional jump would need more than 255 instructions (internal).
    #[error("BPF jump out of range")]
    JumpRange,
}

impl BpfProgram {
    /// Builds a program from raw instructions.
    pub fn from_insns(insns: Vec<Insn>) -> Result<BpfProgram, BpfError> {
        if insns.is_empty() || insns.len() > MAX_INSNS {
            return Err(BpfError::TooLong { len: insns.len() });
        }
        Ok(BpfProgram { insns })
    }

    /// `ret #0xffffffff`.
    pub fn accept_all() -> BpfProgram {
        BpfProgram { insns: vec![Insn { code: OP_RET_K, jt: 0, jf: 0, k: ACCEPT }] }
    }

    /// `ret #0`: useful to drain a socket before installing the real filter.
    pub fn drop_all() -> BpfProgram {
        BpfProgram { insns: vec![Insn { code: OP_RET_K, jt: 0, jf: 0, k: DROP }] }
    }

    /// The instructions.
    pub fn insns(&self) -> &[Insn] {
        &self.insns
    }

    /// The program as `libc::sock_filter`s.
    pub fn to_sock_filters(&self) -> Vec<libc::sock_filter> {
        self.insns.iter().map(|i| libc::sock_filter { code: i.code, jt: i.jt, jf: i.jf, k: i.k }).collect()
    }

    pub(crate) fn raw(&self) -> Vec<(u16, u8, u8, u32)> {
        self.insns.iter().map(|i| (i.code, i.jt, i.jf, i.k)).collect()
    }
}

/// What [`VipFilter::build`] accepts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VipFilter {
    /// IPv4 destination addresses to accept.
    pub vips: Vec<Ipv4Addr>,
    /// Also accept every ARP frame (ethertype 0x0806).
    pub accept_arp: bool,
    /// Also accept IPv4 in one in-band 802.1Q tag.
    pub accept_vlan: bool,
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Ld(u16, u32),
    Jeq(u32, usize, usize),
    Ja(usize),
    Ret(u32),
    Label(usize),
}

impl VipFilter {
    /// Filter for `vips`, with ARP accepted or not.
    pub fn new(vips: &[Ipv4Addr], accept_arp: bool) -> VipFilter {
        VipFilter { vips: vips.to_vec(), accept_arp, accept_vlan: false }
    }

    /// Generates the socket filter (see the module docs for its shape): [`ACCEPT`] for a
    /// matching frame, [`DROP`] for any other.
    pub fn build(&self) -> Result<BpfProgram, BpfError> {
        self.build_returning(ACCEPT, DROP)
    }

    /// The same program for a tc classifier in direct-action mode (see [`super::tc`]): the same
    /// instructions, with [`TC_ACT_SHOT`] (drop the frame) where the socket filter accepts and
    /// [`TC_ACT_UNSPEC`] (not ours: on to the next filter) where it drops. A frame too short for
    /// a load still ends the program with 0, which tc reads as `TC_ACT_OK` (let the frame pass).
    pub fn build_tc_drop(&self) -> Result<BpfProgram, BpfError> {
        self.build_returning(TC_ACT_SHOT, TC_ACT_UNSPEC)
    }

    fn build_returning(&self, matched: u32, other: u32) -> Result<BpfProgram, BpfError> {
        let mut vips = self.vips.clone();
        vips.sort_unstable();
        vips.dedup();

        let mut labels = 0usize;
        let mut new_label = || {
            labels += 1;
            labels
        };
        let l_drop = new_label();
        let l_chain = new_label();
        let l_ipv4 = new_label();
        let l_vlan = new_label();
        let l_arp = new_label();

        let mut ops = vec![Op::Ld(OP_LD_H_ABS, 12)];
        if self.accept_arp {
            let next = new_label();
            ops.push(Op::Jeq(0x0806, l_arp, next));
            ops.push(Op::Label(next));
        }
        let not_ip = new_label();
        ops.push(Op::Jeq(0x0800, l_ipv4, not_ip));
        ops.push(Op::Label(not_ip));
        ops.push(Op::Ja(if self.accept_vlan { l_vlan } else { l_drop }));
        if self.accept_arp {
            ops.push(Op::Label(l_arp));
            ops.push(Op::Ret(matched));
        }
        ops.push(Op::Label(l_ipv4));
        ops.push(Op::Ld(OP_LD_W_ABS, 30));
        ops.push(Op::Ja(l_chain));
        if self.accept_vlan {
            let (tagged, inner_ip, bad) = (new_label(), new_label(), new_label());
            ops.push(Op::Label(l_vlan));
            ops.push(Op::Jeq(0x8100, tagged, bad));
            ops.push(Op::Label(bad));
            ops.push(Op::Ja(l_drop));
            ops.push(Op::Label(tagged));
            ops.push(Op::Ld(OP_LD_H_ABS, 16));
            let bad2 = new_label();
            ops.push(Op::Jeq(0x0800, inner_ip, bad2));
            ops.push(Op::Label(bad2));
            ops.push(Op::Ja(l_drop));
            ops.push(Op::Label(inner_ip));
            ops.push(Op::Ld(OP_LD_W_ABS, 34));
        }
        ops.push(Op::Label(l_chain));
        for chunk in vips.chunks(CHUNK) {
            let acc = new_label();
            for vip in chunk {
                let next = new_label();
                ops.push(Op::Jeq(u32::from(*vip), acc, next));
                ops.push(Op::Label(next));
            }
            let after = new_label();
            ops.push(Op::Ja(after));
            ops.push(Op::Label(acc));
            ops.push(Op::Ret(matched));
            ops.push(Op::Label(after));
        }
        ops.push(Op::Label(l_drop));
        ops.push(Op::Ret(other));
        assemble(&ops, labels + 1)
    }
}

fn assemble(ops: &[Op], nlabels: usize) -> Result<BpfProgram, BpfError> {
    let mut pos = vec![usize::MAX; nlabels];
    let mut n = 0usize;
    for op in ops {
        match op {
            Op::Label(l) => pos[*l] = n,
            _ => n += 1,
        }
    }
    if n > MAX_INSNS {
        return Err(BpfError::TooLong { len: n });
    }
    let rel = |from: usize, to: usize| -> Result<usize, BpfError> {
        let t = pos.get(to).copied().unwrap_or(usize::MAX);
        if t == usize::MAX || t < from + 1 {
            return Err(BpfError::JumpRange);
        }
        Ok(t - (from + 1))
    };
    let mut insns = Vec::with_capacity(n);
    for op in ops {
        let at = insns.len();
        let insn = match *op {
            Op::Label(_) => continue,
            Op::Ld(code, k) => Insn { code, jt: 0, jf: 0, k },
            Op::Ret(k) => Insn { code: OP_RET_K, jt: 0, jf: 0, k },
            Op::Ja(l) => Insn { code: OP_JA, jt: 0, jf: 0, k: rel(at, l)? as u32 },
            Op::Jeq(k, t, f) => {
                let jt = u8::try_from(rel(at, t)?).map_err(|_| BpfError::JumpRange)?;
                let jf = u8::try_from(rel(at, f)?).map_err(|_| BpfError::JumpRange)?;
                Insn { code: OP_JEQ_K, jt, jf, k }
            }
        };
        insns.push(insn);
    }
    BpfProgram::from_insns(insns)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A tiny classic-BPF interpreter for the opcodes the generator emits.
    /// Out-of-bounds loads return 0 (drop), as in the kernel.
    pub(crate) fn run(prog: &BpfProgram, pkt: &[u8]) -> u32 {
        let insns = prog.insns();
        let mut a: u32 = 0;
        let mut pc = 0usize;
        let mut steps = 0;
        while let Some(i) = insns.get(pc) {
            steps += 1;
            assert!(steps <= MAX_INSNS, "loop");
            let k = i.k as usize;
            match i.code {
                OP_LD_W_ABS => match pkt.get(k..k + 4) {
                    Some(b) => a = u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
                    None => return 0,
                },
                OP_LD_H_ABS => match pkt.get(k..k + 2) {
                    Some(b) => a = u32::from(u16::from_be_bytes([b[0], b[1]])),
                    None => return 0,
                },
                OP_LD_B_ABS => match pkt.get(k) {
                    Some(b) => a = u32::from(*b),
                    None => return 0,
                },
                OP_JEQ_K => {
                    pc += 1 + usize::from(if a == i.k { i.jt } else { i.jf });
                    continue;
                }
                OP_JA => {
                    pc += 1 + k;
                    continue;
                }
                OP_RET_K => return i.k,
                other => panic!("unexpected opcode {other:#x}"),
            }
            pc += 1;
        }
        panic!("fell off the end of the program");
    }

    pub(crate) fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    pub(crate) fn ipv4_to(dst: Ipv4Addr) -> Vec<u8> {
        let mut ip = vec![0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1];
        ip.extend_from_slice(&dst.octets());
        ip.extend_from_slice(&[0x30, 0x39, 0x00, 0x50, 0, 8, 0, 0]);
        eth(0x0800, &ip)
    }

    fn vlan_ipv4_to(dst: Ipv4Addr) -> Vec<u8> {
        let plain = ipv4_to(dst);
        let mut f = plain[..12].to_vec();
        f.extend_from_slice(&[0x81, 0x00, 0x00, 0x64]);
        f.extend_from_slice(&plain[12..]);
        f
    }

    fn vip(i: u32) -> Ipv4Addr {
        Ipv4Addr::from(0x0a00_0000 + i)
    }

    #[test]
    fn accepts_vips_and_arp_only() {
        let vips = [Ipv4Addr::new(10, 1, 0, 1), Ipv4Addr::new(10, 1, 0, 2)];
        let p = VipFilter::new(&vips, true).build().unwrap();
        assert_eq!(run(&p, &ipv4_to(vips[0])), ACCEPT);
        assert_eq!(run(&p, &ipv4_to(vips[1])), ACCEPT);
        assert_eq!(run(&p, &ipv4_to(Ipv4Addr::new(10, 1, 0, 3))), DROP);
        assert_eq!(run(&p, &eth(0x0806, &[0; 28])), ACCEPT);
        assert_eq!(run(&p, &eth(0x86dd, &[0; 40])), DROP);
        // Runts: the destination load runs past the end.
        assert_eq!(run(&p, &ipv4_to(vips[0])[..32]), DROP);
        assert_eq!(run(&p, &[0u8; 10]), DROP);
        // VLAN-tagged IPv4 is not accepted unless asked for.
        assert_eq!(run(&p, &vlan_ipv4_to(vips[0])), DROP);

        let no_arp = VipFilter::new(&vips, false).build().unwrap();
        assert_eq!(run(&no_arp, &eth(0x0806, &[0; 28])), DROP);
        assert_eq!(run(&no_arp, &ipv4_to(vips[1])), ACCEPT);
    }

    #[test]
    fn vlan_option() {
        let vips = [Ipv4Addr::new(192, 0, 2, 7)];
        let p = VipFilter { vips: vips.to_vec(), accept_arp: false, accept_vlan: true }.build().unwrap();
        assert_eq!(run(&p, &vlan_ipv4_to(vips[0])), ACCEPT);
        assert_eq!(run(&p, &vlan_ipv4_to(Ipv4Addr::new(192, 0, 2, 8))), DROP);
        assert_eq!(run(&p, &ipv4_to(vips[0])), ACCEPT);
        let mut v6 = vlan_ipv4_to(vips[0]);
        v6[16] = 0x86;
        v6[17] = 0xdd;
        assert_eq!(run(&p, &v6), DROP);
    }

    #[test]
    fn hundreds_of_vips() {
        let vips: Vec<Ipv4Addr> = (0..700).map(|i| vip(i * 3)).collect();
        let p = VipFilter::new(&vips, true).build().unwrap();
        assert!(p.insns().len() < 760, "{}", p.insns().len());
        for i in 0..2100 {
            let want = if i % 3 == 0 { ACCEPT } else { DROP };
            assert_eq!(run(&p, &ipv4_to(vip(i))), want, "vip index {i}");
        }
        // Every conditional jump stays within range by construction.
        assert!(p.insns().iter().all(|i| i.code != OP_JEQ_K || (i.jt as usize) <= CHUNK + 1));
    }

    #[test]
    fn empty_vip_list_drops_ip() {
        let p = VipFilter::new(&[], true).build().unwrap();
        assert_eq!(run(&p, &ipv4_to(vip(1))), DROP);
        assert_eq!(run(&p, &eth(0x0806, &[0; 28])), ACCEPT);
    }

    #[test]
    fn too_many_vips() {
        let vips: Vec<Ipv4Addr> = (0..5000).map(vip).collect();
        assert!(matches!(VipFilter::new(&vips, false).build(), Err(BpfError::TooLong { .. })));
        let vips: Vec<Ipv4Addr> = (0..3900).map(vip).collect();
        assert!(VipFilter::new(&vips, false).build().is_ok());
    }

    /// The tc program matches exactly the frames the socket filter accepts (same instructions,
    /// other return values), including runts, VLAN tags and non-IPv4.
    #[test]
    fn tc_drop_program_matches_exactly_what_the_ring_takes() {
        let vips: Vec<Ipv4Addr> = (0..300).map(|i| vip(i * 7)).collect();
        for (arp, vlan) in [(false, false), (true, false), (false, true)] {
            let f = VipFilter { vips: vips.clone(), accept_arp: arp, accept_vlan: vlan };
            let (ring, tc) = (f.build().unwrap(), f.build_tc_drop().unwrap());
            assert_eq!(ring.insns().len(), tc.insns().len());
            let mut frames: Vec<Vec<u8>> = (0..2200).map(|i| ipv4_to(vip(i))).collect();
            frames.extend((0..50).map(|i| vlan_ipv4_to(vip(i))));
            frames.push(eth(0x0806, &[0; 28]));
            frames.push(eth(0x86dd, &[0; 40]));
            for frame in &frames {
                let want = if run(&ring, frame) == ACCEPT { TC_ACT_SHOT } else { TC_ACT_UNSPEC };
                assert_eq!(run(&tc, frame), want);
            }
            // A runt ends both programs with 0: dropped by the ring, let pass by tc (TC_ACT_OK).
            assert_eq!(run(&tc, &ipv4_to(vips[0])[..32]), 0);
        }
    }

    #[test]
    fn trivial_programs() {
        assert_eq!(run(&BpfProgram::accept_all(), &[]), ACCEPT);
        assert_eq!(run(&BpfProgram::drop_all(), &[1, 2, 3]), DROP);
        assert_eq!(BpfProgram::accept_all().to_sock_filters().len(), 1);
        assert!(BpfProgram::from_insns(vec![]).is_err());
    }
}
