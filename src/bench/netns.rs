//! The live benchmark's topology: three network namespaces joined by two veth pairs,
//!
//! ```text
//!   gen ── gen0 ═══ lbin ── lb ── lbout ═══ sink0 ── sink (VIP on lo)
//!        10.203.1.1   10.203.1.2  10.203.2.1   10.203.2.2
//! ```
//!
//! and, for the TCP and HTTP traffic ([`Topology::create_with_return`]), a third pair that
//! carries the replies straight back, as a DSR backend's replies bypass the balancer:
//!
//! ```text
//!   gen ── genr ════════════════════════════ sinkr ── sink
//!        10.203.3.1                        10.203.3.2
//! ```
//!
//! `gen` reaches the VIP through `lb` (route `VIP via 10.203.1.2 dev gen0`); `sink` answers from
//! the VIP on its `lo` to `gen`'s address 10.203.1.1 through `sinkr` (route `10.203.1.1 via
//! 10.203.3.1`), so no reply crosses `lb`, and `gen` accepts them on `genr` (rp_filter 0). The
//! hops that carry traffic one way only (`gen` → `lbin`, `sink` → `genr`) get permanent neighbour
//! entries so that no ARP exchange runs during a measurement. `gen` also sets
//! `net.ipv4.tcp_tw_reuse=1` and `ip_local_port_range` 1024–65535 for connection-per-request load
//! (docs/lab.md pitfall 8).
//!
//! built with iproute2 (`ip netns add`, `ip -n NS link add … netns OTHER`): every interface is
//! created inside a namespace, so nothing outside them is touched. [`Topology`] removes the
//! namespaces (and with them the veths) when dropped — on success, on error and on panic.
//!
//! The sink's IP stack drops the VIP frames (UDP to a port without a socket; the ICMP error it
//! would answer has no route back). A tc ingress drop would be cheaper, but this kernel has no tc
//! classifiers built in.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use super::BenchError;
use super::stats::parse_net_dev;
use crate::netns::{Netns, NetnsError};

/// The VIP, on `lo` of the sink (as a DSR backend holds it).
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 1);
pub const GEN_IP: Ipv4Addr = Ipv4Addr::new(10, 203, 1, 1);
pub const LB_IN_IP: Ipv4Addr = Ipv4Addr::new(10, 203, 1, 2);
pub const LB_OUT_IP: Ipv4Addr = Ipv4Addr::new(10, 203, 2, 1);
pub const SINK_IP: Ipv4Addr = Ipv4Addr::new(10, 203, 2, 2);
pub const GEN_IF: &str = "gen0";
pub const LB_IN: &str = "lbin";
pub const LB_OUT: &str = "lbout";
pub const SINK_IF: &str = "sink0";
/// The return path (TCP and HTTP traffic only): `gen`'s end and `sink`'s end.
pub const GEN_RET: &str = "genr";
pub const SINK_RET: &str = "sinkr";
pub const GEN_RET_IP: Ipv4Addr = Ipv4Addr::new(10, 203, 3, 1);
pub const SINK_RET_IP: Ipv4Addr = Ipv4Addr::new(10, 203, 3, 2);

/// The three namespaces; removed on drop.
#[derive(Debug)]
pub struct Topology {
    prefix: String,
    /// `gen`, `lb`, `sink` (in creation order; dropped, and so deleted, in reverse).
    namespaces: Vec<(&'static str, Netns)>,
}

impl From<NetnsError> for BenchError {
    fn from(e: NetnsError) -> BenchError {
        match e {
            NetnsError::Env(m) => BenchError::Env(m),
            e => BenchError::Setup(e.to_string()),
        }
    }
}

/// Checks that we can build the topology: root and iproute2.
pub fn preflight() -> Result<(), BenchError> {
    Ok(crate::netns::preflight("bench live")?)
}

impl Topology {
    /// Namespace name prefix for this process: `mlvb<pid>`.
    pub fn prefix_for_pid(pid: u32) -> String {
        format!("mlvb{pid}")
    }

    /// Builds the topology (see the module docs), without the return path.
    pub fn create() -> Result<Topology, BenchError> {
        let mut t = Topology { prefix: Self::prefix_for_pid(std::process::id()), namespaces: Vec::new() };
        t.build()?;
        Ok(t)
    }

    /// Builds the topology with the return path `sink` → `gen` for traffic that has replies
    /// (see the module docs).
    pub fn create_with_return() -> Result<Topology, BenchError> {
        let mut t = Topology { prefix: Self::prefix_for_pid(std::process::id()), namespaces: Vec::new() };
        t.build()?;
        t.build_return()?;
        Ok(t)
    }

    /// Full namespace name of `gen`, `lb` or `sink`.
    pub fn ns(&self, short: &str) -> String {
        format!("{}-{short}", self.prefix)
    }

    /// The namespace `gen`, `lb` or `sink`.
    pub fn netns(&self, short: &str) -> Result<&Netns, BenchError> {
        self.namespaces
            .iter()
            .find(|(s, _)| *s == short)
            .map(|(_, n)| n)
            .ok_or_else(|| BenchError::Setup(format!("no namespace {short} in the bench topology")))
    }

    /// `/run/netns/NAME` of a namespace (for `setns`).
    pub fn ns_path(&self, short: &str) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.ns(short)))
    }

    /// `ip -n NS ARGS…`.
    pub fn ip(&self, short: &str, args: &[&str]) -> Result<String, String> {
        self.netns(short).map_err(|e| e.to_string())?.ip(args).map_err(|e| e.to_string())
    }

    /// Runs a shell snippet inside a namespace (`ip netns exec`, which also mounts that
    /// namespace's /sys).
    pub fn sh(&self, short: &str, script: &str) -> Result<String, String> {
        self.netns(short).map_err(|e| e.to_string())?.sh(script).map_err(|e| e.to_string())
    }

    /// Sets a sysctl inside a namespace.
    pub fn sysctl(&self, short: &str, key: &str, value: &str) -> Result<(), String> {
        self.netns(short).map_err(|e| e.to_string())?.sysctl(key, value).map_err(|e| e.to_string())
    }

    fn build(&mut self) -> Result<(), BenchError> {
        for short in ["gen", "lb", "sink"] {
            // Netns::create sets lo up, ip_forward 0 and rp_filter 0 (all, default).
            let ns = Netns::create(&self.ns(short))?;
            self.namespaces.push((short, ns));
        }
        let (lb, gen_ns, sink) = (self.netns("lb")?, self.netns("gen")?, self.netns("sink")?);
        lb.veth(LB_IN, gen_ns, GEN_IF)?;
        lb.veth(LB_OUT, sink, SINK_IF)?;
        let addr = |ip: Ipv4Addr| format!("{ip}/24");
        for (ns, ifname, ip) in
            [(gen_ns, GEN_IF, GEN_IP), (lb, LB_IN, LB_IN_IP), (lb, LB_OUT, LB_OUT_IP), (sink, SINK_IF, SINK_IP)]
        {
            ns.addr(ifname, &addr(ip))?;
            // Forwarded frames are checksummed and small: keep offloads out of the picture.
            let _ = ns.sh(&format!("ethtool -K {ifname} gro off >/dev/null 2>&1 || true"));
        }
        lb.sysctls(&[
            (&format!("net.ipv4.conf.{LB_IN}.rp_filter"), "0"),
            (&format!("net.ipv4.conf.{LB_OUT}.rp_filter"), "0"),
        ])?;
        // The sink is a DSR backend: VIP on lo, never answering ARP for it.
        sink.addr("lo", &format!("{VIP}/32"))?;
        sink.sysctls(&[
            (&format!("net.ipv4.conf.{SINK_IF}.rp_filter"), "0"),
            ("net.ipv4.conf.lo.rp_filter", "0"),
            ("net.ipv4.conf.all.arp_ignore", "1"),
            ("net.ipv4.conf.all.arp_announce", "2"),
        ])?;
        Ok(())
    }

    /// The return path and the routes and neighbours around it (see the module docs).
    fn build_return(&mut self) -> Result<(), BenchError> {
        let (gen_ns, lb, sink) = (self.netns("gen")?, self.netns("lb")?, self.netns("sink")?);
        sink.veth(SINK_RET, gen_ns, GEN_RET)?;
        for (ns, ifname, ip) in [(sink, SINK_RET, SINK_RET_IP), (gen_ns, GEN_RET, GEN_RET_IP)] {
            ns.addr(ifname, &format!("{ip}/24"))?;
            let _ = ns.sh(&format!("ethtool -K {ifname} gro off >/dev/null 2>&1 || true"));
        }
        sink.sysctl(&format!("net.ipv4.conf.{SINK_RET}.rp_filter"), "0")?;
        gen_ns.sysctls(&[
            (&format!("net.ipv4.conf.{GEN_IF}.rp_filter"), "0"),
            (&format!("net.ipv4.conf.{GEN_RET}.rp_filter"), "0"),
            ("net.ipv4.tcp_tw_reuse", "1"),
            ("net.ipv4.ip_local_port_range", "1024 65535"),
        ])?;
        sink.ip(&["route", "add", &format!("{GEN_IP}/32"), "via", &GEN_RET_IP.to_string(), "dev", SINK_RET])?;
        gen_ns.ip(&["route", "add", &format!("{VIP}/32"), "via", &LB_IN_IP.to_string(), "dev", GEN_IF])?;
        // One-way hops: permanent neighbours (no ARP during a measurement, docs/lab.md pitfall 9).
        let lbin_mac = lb.mac(LB_IN)?;
        let genr_mac = gen_ns.mac(GEN_RET)?;
        let mac = |m: [u8; 6]| crate::wire::MacAddr(m).to_string();
        gen_ns.ip(&[
            "neigh",
            "replace",
            &LB_IN_IP.to_string(),
            "lladdr",
            &mac(lbin_mac),
            "dev",
            GEN_IF,
            "nud",
            "permanent",
        ])?;
        sink.ip(&[
            "neigh",
            "replace",
            &GEN_RET_IP.to_string(),
            "lladdr",
            &mac(genr_mac),
            "dev",
            SINK_RET,
            "nud",
            "permanent",
        ])?;
        Ok(())
    }

    /// MAC of an interface inside a namespace.
    pub fn mac(&self, short: &str, ifname: &str) -> Result<[u8; 6], BenchError> {
        let ifname = ifname.to_string();
        let info = self.in_ns(short, move || crate::io::InterfaceInfo::lookup(&ifname))??;
        Ok(info.mac)
    }

    /// Runs `f` on a fresh thread inside namespace `short` and returns its result.
    pub fn in_ns<T: Send>(&self, short: &str, f: impl FnOnce() -> T + Send) -> Result<T, BenchError> {
        Ok(self.netns(short)?.run(f)?)
    }

    /// `(rx_packets, tx_packets)` of an interface in a namespace, read in-process from
    /// `/proc/thread-self/net/dev` by a thread inside it.
    pub fn counters(&self, short: &str, ifname: &str) -> Result<(u64, u64), BenchError> {
        let text = self.in_ns(short, || std::fs::read_to_string("/proc/thread-self/net/dev"))?;
        let text = text.map_err(|e| BenchError::Setup(format!("reading /proc/net/dev in {short}: {e}")))?;
        parse_net_dev(&text, ifname).ok_or_else(|| BenchError::Setup(format!("{short}: no {ifname} in /proc/net/dev")))
    }

    /// Removes the namespaces (idempotent).
    pub fn teardown(&mut self) {
        for (_, mut ns) in self.namespaces.drain(..).rev() {
            ns.delete();
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.teardown();
    }
}
