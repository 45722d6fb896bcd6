//! The live benchmark's topology: three network namespaces joined by two veth pairs,
//!
//! ```text
//!   gen ── gen0 ═══ lbin ── lb ── lbout ═══ sink0 ── sink (VIP on lo)
//!        10.203.1.1   10.203.1.2  10.203.2.1   10.203.2.2
//! ```
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
use std::process::Command;
use std::sync::mpsc;

use super::BenchError;
use super::stats::parse_net_dev;

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

/// The three namespaces; removed on drop.
#[derive(Debug)]
pub struct Topology {
    prefix: String,
    created: Vec<String>,
}

/// Output of a command, as text.
fn run(cmd: &mut Command) -> Result<String, String> {
    let shown = format!("{cmd:?}").replace('"', "");
    match cmd.output() {
        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
        Ok(o) => Err(format!("{shown}: {}", String::from_utf8_lossy(&o.stderr).trim())),
        Err(e) => Err(format!("{shown}: {e}")),
    }
}

/// Checks that we can build the topology: root and iproute2.
pub fn preflight() -> Result<(), BenchError> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|l| l.split_whitespace().nth(1));
    if euid != Some("0") {
        return Err(BenchError::Env(
            "bench live creates network namespaces and AF_PACKET rings: run it as root".into(),
        ));
    }
    run(Command::new("ip").arg("-V")).map_err(|e| BenchError::Env(format!("bench live needs iproute2 (`ip`): {e}")))?;
    Ok(())
}

impl Topology {
    /// Namespace name prefix for this process: `mlvb<pid>`.
    pub fn prefix_for_pid(pid: u32) -> String {
        format!("mlvb{pid}")
    }

    /// Builds the topology (see the module docs).
    pub fn create() -> Result<Topology, BenchError> {
        let mut t = Topology { prefix: Self::prefix_for_pid(std::process::id()), created: Vec::new() };
        t.build().map_err(BenchError::Setup)?;
        Ok(t)
    }

    /// Full namespace name of `gen`, `lb` or `sink`.
    pub fn ns(&self, short: &str) -> String {
        format!("{}-{short}", self.prefix)
    }

    /// `/run/netns/NAME` of a namespace (for `setns`).
    pub fn ns_path(&self, short: &str) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.ns(short)))
    }

    /// `ip -n NS ARGS…`.
    pub fn ip(&self, short: &str, args: &[&str]) -> Result<String, String> {
        run(Command::new("ip").arg("-n").arg(self.ns(short)).args(args))
    }

    /// Runs a shell snippet inside a namespace (`ip netns exec`, which also mounts that
    /// namespace's /sys).
    pub fn sh(&self, short: &str, script: &str) -> Result<String, String> {
        run(Command::new("ip").args(["netns", "exec", &self.ns(short), "sh", "-c", script]))
    }

    /// Sets a sysctl inside a namespace.
    pub fn sysctl(&self, short: &str, key: &str, value: &str) -> Result<(), String> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.sh(short, &format!("echo {value} > {path}")).map(|_| ())
    }

    fn build(&mut self) -> Result<(), String> {
        for short in ["gen", "lb", "sink"] {
            let name = self.ns(short);
            run(Command::new("ip").args(["netns", "add", &name]))?;
            self.created.push(name);
        }
        let (gen_ns, sink_ns) = (self.ns("gen"), self.ns("sink"));
        self.ip("lb", &["link", "add", LB_IN, "type", "veth", "peer", "name", GEN_IF, "netns", &gen_ns])?;
        self.ip("lb", &["link", "add", LB_OUT, "type", "veth", "peer", "name", SINK_IF, "netns", &sink_ns])?;
        let addr = |ip: Ipv4Addr| format!("{ip}/24");
        for (ns, ifname, ip) in
            [("gen", GEN_IF, GEN_IP), ("lb", LB_IN, LB_IN_IP), ("lb", LB_OUT, LB_OUT_IP), ("sink", SINK_IF, SINK_IP)]
        {
            self.ip(ns, &["addr", "add", &addr(ip), "dev", ifname])?;
            self.ip(ns, &["link", "set", ifname, "up"])?;
            // Forwarded frames are checksummed and small: keep offloads out of the picture.
            let _ = self.sh(ns, &format!("ethtool -K {ifname} gro off >/dev/null 2>&1 || true"));
        }
        for ns in ["gen", "lb", "sink"] {
            self.ip(ns, &["link", "set", "lo", "up"])?;
            for k in ["all", "default"] {
                self.sysctl(ns, &format!("net.ipv4.conf.{k}.rp_filter"), "0")?;
            }
            self.sysctl(ns, "net.ipv4.ip_forward", "0")?;
        }
        for ifname in [LB_IN, LB_OUT] {
            self.sysctl("lb", &format!("net.ipv4.conf.{ifname}.rp_filter"), "0")?;
        }
        self.sysctl("sink", &format!("net.ipv4.conf.{SINK_IF}.rp_filter"), "0")?;
        self.sysctl("sink", "net.ipv4.conf.lo.rp_filter", "0")?;
        // The sink is a DSR backend: VIP on lo, never answering ARP for it.
        self.ip("sink", &["addr", "add", &format!("{VIP}/32"), "dev", "lo"])?;
        self.sysctl("sink", "net.ipv4.conf.all.arp_ignore", "1")?;
        self.sysctl("sink", "net.ipv4.conf.all.arp_announce", "2")?;
        Ok(())
    }

    /// MAC of an interface inside a namespace.
    pub fn mac(&self, short: &str, ifname: &str) -> Result<[u8; 6], BenchError> {
        let ifname = ifname.to_string();
        let info = self.in_ns(short, move || crate::io::InterfaceInfo::lookup(&ifname))??;
        Ok(info.mac)
    }

    /// Runs `f` on a fresh thread inside namespace `short` and returns its result.
    pub fn in_ns<T: Send + 'static>(
        &self,
        short: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, BenchError> {
        let path = self.ns_path(short);
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("bench-{short}"))
            .spawn(move || {
                let r = crate::io::enter_netns(&path).map(|()| f());
                let _ = tx.send(r);
            })
            .map_err(|e| BenchError::Setup(format!("spawning a thread: {e}")))?;
        rx.recv()
            .map_err(|_| BenchError::Setup(format!("thread in namespace {short} panicked")))?
            .map_err(|e| BenchError::Setup(format!("setns into {short}: {e}")))
    }

    /// `(rx_packets, tx_packets)` of an interface in a namespace, read in-process from
    /// `/proc/thread-self/net/dev` by a thread inside it.
    pub fn counters(&self, short: &str, ifname: &str) -> Result<(u64, u64), BenchError> {
        let name = ifname.to_string();
        let text = self.in_ns(short, || std::fs::read_to_string("/proc/thread-self/net/dev"))?;
        let text = text.map_err(|e| BenchError::Setup(format!("reading /proc/net/dev in {short}: {e}")))?;
        parse_net_dev(&text, &name).ok_or_else(|| BenchError::Setup(format!("{short}: no {name} in /proc/net/dev")))
    }

    /// Removes the namespaces (idempotent).
    pub fn teardown(&mut self) {
        for name in self.created.drain(..).rev() {
            let _ = run(Command::new("ip").args(["netns", "del", &name]));
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Names of existing namespaces that start with `prefix` (to check cleanup).
pub fn leftover_namespaces(prefix: &str) -> Vec<String> {
    run(Command::new("ip").args(["netns", "list"]))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect()
}
