//! The daemon (`maglevd run`): the control plane around the forwarding workers.
//!
//! # Threads
//! * **workers** (`--workers`, default one per CPU): each owns an RX ring on the ingress interface
//!   (joined in one `PACKET_FANOUT` hash group, so a flow always lands on the same worker, and
//!   filtered by a classic BPF program to VIP frames) and a TX ring on the egress interface. See
//!   [`worker`].
//! * **control** (the main thread): owns the configuration and the backend neighbour table, runs
//!   ARP on the egress interface (answers for our address when the kernel does not, resolves
//!   backend MACs), handles `SIGHUP` (reload) and `SIGTERM`/`SIGINT` (stop), and publishes a new
//!   [`Snapshot`] whenever the configuration or a backend MAC changes.
//! * **ingress ARP** (two-arm mode only): answers for the ingress address when the kernel does not,
//!   and counts the requests for a VIP it refuses.
//! * **metrics**: `/metrics` (Prometheus text) and `/healthz` over plain HTTP.
//!
//! # Publication
//! The configuration, every table and every backend MAC form one immutable [`Snapshot`] with a
//! generation number, swapped atomically (`arc-swap`); workers load it once per batch, so no
//! packet ever sees a table of one generation with MACs of another.
//!
//! # One path to a snapshot
//! `maglevd check`, start-up and every reload build the forwarding state with the same function,
//! [`prepare`]: every table (reused from the last build where nothing changed), the snapshot and
//! the kernel VIP filter. What `check` accepts, start-up and reload accept; what cannot be built
//! is refused before anything is published.
//!
//! # Reload
//! `SIGHUP`, or a change of the file seen by the periodic check, re-reads the file. An invalid
//! file, one that changes the interfaces (the rings are bound to them; that needs a restart), one
//! whose VIP is held locally, or one whose snapshot or filter cannot be built is refused whole
//! with a logged error naming the problem and counted in `maglevd_reload_failures_total`; the
//! running configuration stays in force. Table builds run on the builder thread ([`builder`]), so
//! ARP refresh, signals and the file check never wait for them.

pub mod announce;
mod builder;
pub mod flows;
pub mod http;
pub mod status;
mod throttle;
pub mod worker;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tracing::{error, info, warn};

use crate::config::{self, Config, ConfigError};
use crate::dataplane::BuildState;
use crate::dataplane::{Healthy, Links, Resolver, Snapshot};
use crate::flow::{self, Tracker};
use crate::health::{self, HealthView};
use crate::io::{
    BpfProgram, Capabilities, Fanout, InterfaceInfo, IoError, KernelDrop, PacketSocket, RxConfig, RxRing, TxConfig,
    TxRing, VipFilter, VipRoutes, tc,
};
use crate::metrics::Counters;
use crate::neigh::{self, Answer, NeighStats, NeighTable, NeighTimers, Responder};
use crate::table::BuildError;
use crate::wire::{ETHERTYPE_ARP, MacAddr};

/// What the workers, the control thread and the metrics endpoint share.
#[derive(Debug)]
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    /// Set by SIGTERM/SIGINT: everyone finishes what they do and returns.
    pub stop: Arc<AtomicBool>,
    pub counters: Counters,
    pub arp: ArpCounters,
    /// Reloads refused (bad file); the running configuration stayed in force.
    pub reload_failures: AtomicU64,
    /// Bumped by the control thread when an interface was re-created or changed: every worker
    /// re-opens its rings (see [`worker::Worker::run_reopening`]).
    pub rings_epoch: AtomicU64,
    /// Per worker: its rings are open and bound (false after a failed re-open, until it works).
    pub rings_ok: Box<[AtomicBool]>,
    /// Why the interfaces cannot carry traffic now (an interface is missing or down), if so:
    /// readiness fails until the control thread sees them back.
    pub link_problem: arc_swap::ArcSwapOption<String>,
    /// Per worker: the VIP filter of the current snapshot is on its RX ring.
    pub filter_ok: Box<[AtomicBool]>,
    /// When the daemon started: the epoch of the heartbeats.
    pub started: Instant,
    /// The control thread's heartbeat (ms since `started`), stored every loop turn.
    pub control_heartbeat_ms: AtomicU64,
    /// The health checks' latest view (for metrics and `status`).
    pub health: ArcSwap<HealthView>,
    /// The kernel drop filter is on the ingress interface ([`crate::io::tc`]).
    pub kernel_drop: AtomicBool,
    /// Flow listings for `status --flows` (see [`flows`]).
    pub flow_dump: flows::FlowDump,
    /// The configuration file the daemon runs from (for `status`).
    pub config_path: std::sync::OnceLock<PathBuf>,
    /// When the running configuration was applied, and the last refused reload.
    pub reloads: ReloadLog,
    /// Set by the first SIGTERM/SIGINT when `[announce]` asks for a drain period: every VIP is
    /// withdrawn and readiness fails, while forwarding goes on until `stop`.
    pub stopping: AtomicBool,
    /// `maglevd drain` (`POST /drain`) asked to withdraw every VIP; `POST /undrain` clears it.
    pub drain_requested: AtomicBool,
    /// The running `[announce]` settings (none: the section is absent).
    pub announce_cfg: arc_swap::ArcSwapOption<config::Announce>,
    /// The announce thread's latest decision (none: `[announce]` is absent).
    pub announce: arc_swap::ArcSwapOption<crate::status::AnnounceStatus>,
    /// `daemon.busy_poll_us`: how long an idle worker spins on its ring before sleeping.
    pub busy_poll_us: AtomicU64,
}

/// When the running configuration was applied (Unix seconds; 0: not yet) and the last reload
/// that was refused (Unix seconds, why), for `status`.
#[derive(Debug, Default)]
pub struct ReloadLog {
    pub applied_unix: AtomicU64,
    pub last_error: arc_swap::ArcSwapOption<(u64, String)>,
}

impl ReloadLog {
    pub fn applied(&self) {
        self.applied_unix.store(unix_now(), Ordering::Relaxed);
    }

    pub fn refused(&self, why: &str) {
        self.last_error.store(Some(Arc::new((unix_now(), why.to_string()))));
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The indices of the per-worker flags that are false, as `"0, 3"` (empty if none).
fn unset(flags: &[AtomicBool]) -> String {
    let off: Vec<String> =
        flags.iter().enumerate().filter(|(_, f)| !f.load(Ordering::Relaxed)).map(|(i, _)| i.to_string()).collect();
    off.join(", ")
}

/// A worker or the control thread whose heartbeat is older than this is stalled: `/live` fails.
/// Both turn at least every 200 ms when idle.
pub const STALL_AFTER: Duration = Duration::from_secs(5);

impl Shared {
    /// Fresh state for `workers` workers around the first snapshot; `stop` is the flag the signal
    /// handlers set.
    pub fn new(snapshot: Snapshot, workers: usize, stop: Arc<AtomicBool>) -> Shared {
        Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            stop,
            counters: Counters::new(workers),
            arp: ArpCounters::default(),
            reload_failures: AtomicU64::new(0),
            rings_epoch: AtomicU64::new(0),
            rings_ok: (0..workers).map(|_| AtomicBool::new(true)).collect(),
            link_problem: arc_swap::ArcSwapOption::empty(),
            filter_ok: (0..workers).map(|_| AtomicBool::new(true)).collect(),
            started: Instant::now(),
            control_heartbeat_ms: AtomicU64::new(0),
            health: ArcSwap::from_pointee(HealthView::default()),
            kernel_drop: AtomicBool::new(false),
            flow_dump: flows::FlowDump::new(workers),
            config_path: std::sync::OnceLock::new(),
            reloads: ReloadLog::default(),
            stopping: AtomicBool::new(false),
            drain_requested: AtomicBool::new(false),
            announce_cfg: arc_swap::ArcSwapOption::empty(),
            announce: arc_swap::ArcSwapOption::empty(),
            busy_poll_us: AtomicU64::new(0),
        }
    }

    /// Takes the settings of `cfg` that other threads read while running (`[announce]`,
    /// `daemon.busy_poll_us`): at start and at every applied reload.
    pub fn follow_settings(&self, cfg: &Config) {
        self.announce_cfg.store(cfg.announce.clone().map(Arc::new));
        self.busy_poll_us.store(cfg.daemon.busy_poll.as_micros() as u64, Ordering::Relaxed);
    }

    /// Milliseconds since the daemon started (the heartbeat clock).
    pub fn millis(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.started).as_millis() as u64
    }

    /// Workers whose thread ended or whose heartbeat is older than [`STALL_AFTER`], with why.
    pub fn stalled_workers(&self, now: Instant) -> Vec<(usize, &'static str)> {
        let (now_ms, limit) = (self.millis(now), STALL_AFTER.as_millis() as u64);
        (0..self.counters.workers())
            .filter_map(|i| {
                let beat = self.counters.worker(i)?.heartbeat_ms.load(Ordering::Relaxed);
                if beat == crate::metrics::HEARTBEAT_DEAD {
                    Some((i, "thread ended"))
                } else if now_ms.saturating_sub(beat) > limit {
                    Some((i, "no progress"))
                } else {
                    None
                }
            })
            .collect()
    }

    /// Liveness: every worker and the control thread make progress. `Err` says which does not.
    pub fn liveness(&self, now: Instant) -> Result<(), String> {
        let mut problems: Vec<String> =
            self.stalled_workers(now).into_iter().map(|(i, why)| format!("worker {i}: {why}")).collect();
        let control = self.control_heartbeat_ms.load(Ordering::Relaxed);
        if self.millis(now).saturating_sub(control) > STALL_AFTER.as_millis() as u64 {
            problems.push("control thread: no progress".into());
        }
        if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
    }

    /// Readiness: live, the interfaces there, every worker's rings open with the VIP filter on,
    /// and every service with a usable backend. `Err` says what is missing.
    pub fn readiness(&self, now: Instant) -> Result<(), String> {
        self.serving(now, None)
    }

    /// Readiness of one VIP (`GET /ready/VIP`, what a BGP speaker announces by). With
    /// `[announce]`, whether the VIP is announced ([`crate::announce`]: hysteresis, settle time,
    /// drain); without, as [`Shared::readiness`] but only the services of `vip` need a usable
    /// backend. `None`: `vip` is not a VIP of the running configuration.
    pub fn vip_readiness(&self, vip: Ipv4Addr, now: Instant) -> Option<Result<(), String>> {
        if !self.snapshot.load().vip_addrs().any(|v| v == vip) {
            return None;
        }
        if self.announce_cfg.load().is_some() {
            let view = self.announce.load_full();
            let state = view.as_ref().and_then(|a| a.vips.iter().find(|v| v.vip == vip));
            return Some(match state {
                Some(v) if v.announced => Ok(()),
                Some(v) => Err(format!("withdrawn: {}", v.reason)),
                None => Err("withdrawn: not evaluated yet".into()),
            });
        }
        Some(self.serving(now, Some(vip)))
    }

    /// The raw readiness of one VIP, before [`crate::announce`]'s hysteresis: live, the data
    /// path in place, and every service of `vip` with a usable backend.
    pub fn vip_serving(&self, vip: Ipv4Addr, now: Instant) -> Result<(), String> {
        self.serving(now, Some(vip))
    }

    /// Live, the data path in place, and every service (of `vip`, if given) with a usable backend.
    fn serving(&self, now: Instant, vip: Option<Ipv4Addr>) -> Result<(), String> {
        if self.stopping.load(Ordering::Relaxed) {
            return Err("stopping: draining before exit".into());
        }
        self.liveness(now)?;
        if let Some(problem) = self.datapath_problem() {
            return Err(problem);
        }
        let unfiltered = unset(&self.filter_ok);
        if !unfiltered.is_empty() {
            return Err(format!("the VIP filter is not installed on worker {unfiltered}"));
        }
        let snap = self.snapshot.load();
        let empty: Vec<&str> = snap
            .services()
            .iter()
            .filter(|s| vip.is_none_or(|v| s.vip == v) && s.table.is_empty())
            .map(|s| s.name.as_str())
            .collect();
        if empty.is_empty() { Ok(()) } else { Err(format!("no usable backend: {}", empty.join(", "))) }
    }
    /// Why forwarding cannot work now, if it cannot: an interface is missing or down, or a worker
    /// could not re-open its rings.
    pub fn datapath_problem(&self) -> Option<String> {
        if let Some(p) = self.link_problem.load_full() {
            return Some((*p).clone());
        }
        let dead = unset(&self.rings_ok);
        (!dead.is_empty()).then(|| format!("worker {dead} could not re-open its rings"))
    }
}

/// The rings of one forwarding worker, exactly as the daemon opens them (the benchmark measures
/// these too): an RX ring on the ingress interface in fanout `group` (hash mode: one flow, one
/// worker) filtered to the VIPs, with slots for 64 KiB super-frames and their virtio-net header,
/// and a TX ring on the egress interface alike.
pub fn worker_rings(
    vips: &[Ipv4Addr],
    group: u16,
    rx_slots: usize,
    tx_slots: usize,
) -> Result<(RxConfig, TxConfig), IoError> {
    let filter = VipFilter::new(vips, false).build()?;
    let rx = RxConfig { fanout: Some(Fanout::hash(group)), filter: Some(filter), ..RxConfig::super_frames(rx_slots) };
    Ok((rx, TxConfig::super_frames(tx_slots)))
}

/// What it costs to forward without the kernel drop filter, for the warning when it cannot be
/// installed (measured with `maglevd bench live`, 64-byte UDP: 19 % of the receiving CPU, and
/// 0.78 instead of 1.02 times kernel forwarding's rate; see README, *Measured*).
pub const KERNEL_DROP_COST: &str = "every VIP frame also goes through the kernel's IPv4 stack after maglevd's copy \
     (ip_rcv, a failing route lookup, ip_error): about a fifth of the receiving CPU at small packets, \
     and about a third less throughput in maglevd bench live";

/// Puts the kernel drop filter for `vips` on `ingress` (in the calling thread's network
/// namespace), as the daemon does at start and `bench live` does for its maglevd runs: logged,
/// recorded in `shared.kernel_drop`. Failing (no CAP_NET_ADMIN, no `cls_bpf` in the kernel) is a
/// warning naming the cost, never an error: forwarding works without it.
pub fn install_kernel_drop(ingress: &str, vips: &[Ipv4Addr], shared: &Shared) -> Option<KernelDrop> {
    match KernelDrop::install(ingress, vips) {
        Ok(k) => {
            info!(
                interface = ingress,
                vips = vips.len(),
                pref = tc::PRIORITY,
                created_clsact = k.created_clsact(),
                "kernel drop filter installed: VIP frames stop after the rings' copy"
            );
            shared.kernel_drop.store(true, Ordering::Relaxed);
            Some(k)
        }
        Err(e) => {
            let why = if e.is_permission() { " (needs CAP_NET_ADMIN)" } else { "" };
            warn!(
                error = %e,
                "cannot install the kernel drop filter{why}; forwarding without it: {KERNEL_DROP_COST} \
                 (set interfaces.kernel_drop = false to silence this)"
            );
            shared.kernel_drop.store(false, Ordering::Relaxed);
            None
        }
    }
}

/// Removes the kernel drop filter (a clean stop, or `kernel_drop` turned off by a reload).
pub fn remove_kernel_drop(k: KernelDrop, shared: &Shared) {
    let iface = k.interface().to_string();
    shared.kernel_drop.store(false, Ordering::Relaxed);
    match k.remove() {
        Ok(()) => info!(interface = %iface, "kernel drop filter removed"),
        Err(e) => warn!(error = %e, "cannot remove the kernel drop filter"),
    }
}

/// The fanout group of this process's workers: distinct per process, so two daemons in one
/// network namespace never share a group.
pub fn fanout_group() -> u16 {
    (std::process::id() & 0xffff) as u16
}

/// The fanout group of the rings re-opened at `epoch`: a new group each time, because the
/// kernel refuses to put sockets of a re-created interface in a group whose members are still
/// bound to the old one.
fn fanout_group_at(epoch: u64) -> u16 {
    fanout_group().wrapping_add((epoch as u16).wrapping_mul(0x9e37))
}

/// ARP counters (written by the control and ingress-ARP threads with atomic adds: ARP is rare).
#[derive(Debug, Default)]
pub struct ArpCounters {
    /// Requests for our address answered by maglevd.
    pub replies_sent: AtomicU64,
    /// Requests for a VIP seen and deliberately left unanswered.
    pub vip_requests_refused: AtomicU64,
    /// Probes sent to resolve or refresh backend MACs.
    pub probes_sent: AtomicU64,
    /// Backend MACs learned or changed.
    pub macs_learned: AtomicU64,
    /// Backend MACs forgotten after unanswered refreshes.
    pub macs_expired: AtomicU64,
    /// ARP packets offering one of our own MACs for a backend (refused: it would loop).
    pub own_mac_refused: AtomicU64,
    /// Another MAC claimed for a resolved backend (not used until confirmed).
    pub mac_claims: AtomicU64,
    /// Claims confirmed by a broadcast request: the backend's MAC changed.
    pub mac_changes_confirmed: AtomicU64,
    /// Claims rejected: the known MAC still answered.
    pub mac_conflicts_kept: AtomicU64,
    /// ARP socket errors (receive or send).
    pub errors: AtomicU64,
}

/// Command-line options of `maglevd run`.
#[derive(Debug, Clone)]
pub struct Options {
    pub config: PathBuf,
    /// Overrides `daemon.workers`.
    pub workers: Option<usize>,
    /// RX ring slots per worker (each slot holds a 64 KiB super-frame).
    pub rx_slots: usize,
    /// TX ring slots per worker.
    pub tx_slots: usize,
}

impl Options {
    pub fn new(config: PathBuf) -> Options {
        Options { config, workers: None, rx_slots: 512, tx_slots: 256 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("building the lookup tables: {0}")]
    Table(#[from] BuildError),
    #[error("building the kernel VIP filter: {0}")]
    Filter(#[from] crate::io::BpfError),
    #[error("{0}")]
    Setup(String),
}

/// The kernel-independent facts about the interfaces the daemon serves.
#[derive(Debug, Clone)]
struct Interfaces {
    ingress: InterfaceInfo,
    egress: InterfaceInfo,
    /// Sender address of our ARP probes on the egress interface.
    egress_ip: Ipv4Addr,
}

impl Interfaces {
    fn links(&self) -> Links {
        Links { ingress_mac: MacAddr(self.ingress.mac), egress_mac: MacAddr(self.egress.mac) }
    }
}

fn lookup_interfaces(cfg: &Config) -> Result<Interfaces, DaemonError> {
    let ingress = InterfaceInfo::lookup(&cfg.ingress)?;
    let egress = InterfaceInfo::lookup(&cfg.egress)?;
    for i in [&ingress, &egress] {
        if !MacAddr(i.mac).is_unicast() {
            return Err(DaemonError::Setup(format!("{}: has no Ethernet MAC address ({})", i.name, i.mac_string())));
        }
    }
    let egress_ip = match cfg.egress_address.or_else(|| egress.ipv4.first().copied()) {
        Some(ip) => ip,
        None => {
            return Err(DaemonError::Setup(format!(
                "{}: the egress interface has no IPv4 address and interfaces.egress_address is not set: \
                 maglevd needs a sender address to resolve backend MACs by ARP",
                egress.name
            )));
        }
    };
    Ok(Interfaces { ingress, egress, egress_ip })
}

/// The frontend's kernel must not hold a VIP (it would answer or reset VIP traffic itself) and
/// should not forward (it would forward every VIP packet too). A local VIP is an error; forwarding
/// on the ingress interface is a warning, because a firewall rule may be dropping VIP traffic.
fn check_host(cfg: &Config, ifs: &Interfaces) -> Result<(), DaemonError> {
    if let Some(problem) = vip_held_locally(cfg)? {
        return Err(DaemonError::Setup(problem));
    }
    if let Some(problem) = off_link_backends(cfg, &ifs.egress) {
        return Err(DaemonError::Setup(problem));
    }
    let path = format!("/proc/sys/net/ipv4/conf/{}/forwarding", ifs.ingress.name);
    if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == "1") {
        warn!(
            "{} forwards IPv4 ({path} = 1): the kernel will forward every VIP packet too, unless a \
             firewall drops them; set net.ipv4.ip_forward=0 on the frontend",
            ifs.ingress.name
        );
    }
    Ok(())
}

/// A VIP of `cfg` configured on an interface of this network namespace, described for an error.
fn vip_held_locally(cfg: &Config) -> Result<Option<String>, IoError> {
    let vips = vips(cfg);
    for name in InterfaceInfo::names()? {
        let Ok(info) = InterfaceInfo::lookup(&name) else { continue };
        if let Some(vip) = info.ipv4.iter().find(|a| vips.contains(a)) {
            return Ok(Some(format!(
                "{name} holds the VIP {vip}: the kernel would answer (or reset) VIP traffic itself; \
                 remove it (`ip addr del {vip}/32 dev {name}`): with maglevd no frontend holds a VIP"
            )));
        }
    }
    Ok(None)
}

/// Backends whose MAC must be resolved by ARP (no static MAC), over all services.
fn arp_targets(cfg: &Config) -> Vec<Ipv4Addr> {
    let mut v: Vec<Ipv4Addr> = cfg
        .services
        .iter()
        .flat_map(|s| s.backends.iter())
        .filter(|b| b.mac.is_none())
        .filter_map(|b| b.ipv4())
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

fn vips(cfg: &Config) -> Vec<Ipv4Addr> {
    let mut v: Vec<Ipv4Addr> = cfg
        .services
        .iter()
        .filter_map(|s| match s.vip {
            std::net::IpAddr::V4(a) => Some(a),
            std::net::IpAddr::V6(_) => None,
        })
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// The addresses maglevd answers ARP for on an interface: the configured one, unless the kernel
/// holds it (then the kernel answers).
fn answer_for(configured: Option<Ipv4Addr>, iface: &InterfaceInfo) -> Vec<Ipv4Addr> {
    match configured {
        Some(ip) if !iface.ipv4.contains(&ip) => vec![ip],
        _ => Vec::new(),
    }
}

/// What a reload from `old` to `new` changes in `[announce]` that only a restart can: the
/// section itself (the announce thread runs or not), or the routes' table or device (created
/// while privileged, at start).
fn announce_restart(old: &Config, new: &Config) -> Option<String> {
    match (&old.announce, &new.announce) {
        (None, None) => None,
        (None, Some(_)) => Some("an [announce] section was added".into()),
        (Some(_), None) => Some("the [announce] section was removed".into()),
        (Some(a), Some(b)) if a.table != b.table || (a.table.is_some() && a.device != b.device) => {
            Some(format!("announce.table/device changed ({:?} {} → {:?} {})", a.table, a.device, b.table, b.device))
        }
        _ => None,
    }
}

/// The forwarding state of a configuration: what [`prepare`] builds.
#[derive(Debug)]
pub struct Prepared {
    pub snapshot: Snapshot,
    /// The kernel filter every worker's RX ring gets for these VIPs.
    pub filter: BpfProgram,
}

/// Build everything a configuration needs to forward: the snapshot (tables reused from `state`
/// where nothing changed) and the VIP filter. `check`, start-up and reload all come here, so
/// what one accepts the others accept.
pub fn prepare(
    cfg: &Config,
    links: Links,
    resolve: Resolver<'_>,
    healthy: Healthy<'_>,
    generation: u64,
    state: &mut BuildState,
) -> Result<Prepared, DaemonError> {
    let snapshot = Snapshot::build_observed(cfg, links, resolve, healthy, generation, state)?;
    let filter = VipFilter::new(&vips(cfg), false).build()?;
    Ok(Prepared { snapshot, filter })
}

/// [`prepare`] as `maglevd check` runs it, without interfaces: every backend counts as resolved,
/// and the interfaces' MACs are placeholders that no static backend MAC of `cfg` uses.
pub fn prepare_offline(cfg: &Config) -> Result<Prepared, DaemonError> {
    let statics: Vec<MacAddr> = cfg.services.iter().flat_map(|s| &s.backends).filter_map(|b| b.mac).collect();
    let mut free = (1u8..=u8::MAX).map(|i| MacAddr([0x02, 0, 0, 0, 0, i])).filter(|m| !statics.contains(m));
    let (Some(ingress_mac), Some(egress_mac)) = (free.next(), free.next()) else {
        return Err(DaemonError::Setup("no placeholder MAC left for the offline check".into()));
    };
    let resolved = MacAddr([0x02, 0, 0, 0, 0xff, 0xff]);
    let links = Links { ingress_mac, egress_mac };
    prepare(cfg, links, &|_| Some(resolved), &|_, _| true, 1, &mut BuildState::default())
}

/// Backends that `cfg` wants resolved by ARP on the egress interface but that are not on any of
/// its subnets: ARP cannot find them (and would broadcast for them forever). A start-up or reload
/// with such a backend is refused. An interface without IPv4 subnets tells nothing; then all pass.
fn off_link_backends(cfg: &Config, egress: &InterfaceInfo) -> Option<String> {
    if egress.ipv4_nets.is_empty() {
        return None;
    }
    let off: Vec<String> =
        arp_targets(cfg).into_iter().filter(|ip| !egress.on_link(*ip)).map(|ip| ip.to_string()).collect();
    if off.is_empty() {
        return None;
    }
    let nets: Vec<String> = egress.ipv4_nets.iter().map(|(a, p)| format!("{a}/{p}")).collect();
    let shown =
        if off.len() > 5 { format!("{} and {} more", off[..5].join(", "), off.len() - 5) } else { off.join(", ") };
    Some(format!(
        "backend {shown} is not on the egress interface {}'s subnets ({}): direct server return needs \
         backends on that link; fix the address or give the backend a static `mac`",
        egress.name,
        nets.join(", ")
    ))
}

fn macs_of(neigh: &NeighTable) -> builder::Macs {
    neigh.entries().filter_map(|(ip, s)| s.mac().map(|m| (ip, m))).collect()
}

/// A backend's MAC from `macs`, for the health checks' targets.
fn mac_lookup(macs: &builder::Macs) -> impl Fn(std::net::IpAddr) -> Option<MacAddr> + '_ {
    move |ip| match ip {
        std::net::IpAddr::V4(v4) => macs.get(&v4).copied(),
        std::net::IpAddr::V6(_) => None,
    }
}

/// Start worker `i` on its devices; `reopen` gives it new ones when the interfaces change. Its
/// heartbeat is marked dead however the thread ends (a panic included), so `/live` learns it at
/// once.
fn spawn_worker<R, T, S, F>(
    i: usize,
    shared: Arc<Shared>,
    devices: (R, T, S),
    flows: config::Flows,
    mut reopen: F,
) -> std::io::Result<std::thread::JoinHandle<()>>
where
    R: crate::io::RxDevice + worker::VipFiltered + Send + 'static,
    T: crate::io::TxDevice + Send + 'static,
    S: crate::io::FrameSender + Send + 'static,
    F: FnMut(u64) -> Result<(R, T, S), IoError> + Send + 'static,
{
    std::thread::Builder::new().name(format!("maglevd-w{i}")).spawn(move || {
        let Some(counters) = shared.counters.worker(i) else { return };
        let _dead = DeadOnDrop(&counters.heartbeat_ms);
        let (mut rx, mut tx, mut icmp) = devices;
        // Allocated and written here, in the worker's thread, before its first packet.
        let workers = shared.counters.workers();
        let tracker = worker_tracker(&flows, workers);
        counters.flows.publish(&tracker);
        worker::Worker::new(&mut rx, &mut tx, &mut icmp, counters, Instant::now()).tracking(tracker).run_reopening(
            &shared,
            i,
            &mut reopen,
        );
    })
}

/// One worker's connection-tracking state for `[flows]` shared by `workers` workers: its share
/// of the capacity, allocated and written now (call it in the worker's thread). `bench live`
/// tracks with the same.
pub fn worker_tracker(flows: &config::Flows, workers: usize) -> Tracker {
    Tracker::new(flow::per_worker(flows.capacity, workers), flows.timeouts, flows.fragment_timeout)
}

/// Marks a worker's heartbeat dead when its thread ends, by return or by panic.
struct DeadOnDrop<'a>(&'a AtomicU64);

impl Drop for DeadOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(crate::metrics::HEARTBEAT_DEAD, Ordering::Relaxed);
    }
}

/// How often the control thread looks at the interfaces (index, MAC, MTU).
const LINK_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Run the daemon until SIGTERM/SIGINT.
pub fn run(opts: &Options) -> Result<(), DaemonError> {
    // Signals first: a SIGTERM during start-up (e.g. to PID 1 of a pod) must not be lost.
    // `term` is the signal; `stop` is what every thread stops on, set by the control thread at
    // once or, with an [announce] drain period, once it has passed.
    let stop = Arc::new(AtomicBool::new(false));
    let term = Arc::new(AtomicBool::new(false));
    let reload = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        // The first signal asks for a clean stop; a second one while stopping exits at once.
        let set = signal_hook::flag::register_conditional_shutdown(sig, 1, Arc::clone(&term))
            .and_then(|_| signal_hook::flag::register(sig, Arc::clone(&term)));
        set.map_err(|e| DaemonError::Setup(format!("installing the signal handlers: {e}")))?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&reload))
        .map_err(|e| DaemonError::Setup(format!("installing the SIGHUP handler: {e}")))?;

    info!(version = env!("CARGO_PKG_VERSION"), config = %opts.config.display(), "maglevd starting");
    let cfg = config::load(&opts.config)?;
    match Capabilities::current() {
        Ok(caps) => {
            caps.require_datapath()?;
            if let Some(w) = caps.warning() {
                warn!("{w}");
            }
        }
        Err(e) => warn!(error = %e, "cannot read this thread's capabilities; continuing"),
    }
    let ifs = lookup_interfaces(&cfg)?;
    check_host(&cfg, &ifs)?;
    let workers = opts
        .workers
        .or(cfg.daemon.workers)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, config::MAX_WORKERS);
    info!(
        config = %opts.config.display(),
        ingress = %format!("{} {}", ifs.ingress.name, ifs.ingress.mac_string()),
        egress = %format!("{} {} {}", ifs.egress.name, ifs.egress.mac_string(), ifs.egress_ip),
        workers,
        services = cfg.services.len(),
        "starting"
    );

    // Everything that needs privileges is opened here, before any thread starts.
    let now = Instant::now();
    let mut neigh = NeighTable::new(MacAddr(ifs.egress.mac), ifs.egress_ip, NeighTimers::default());
    neigh.set_own_macs(&[MacAddr(ifs.ingress.mac), MacAddr(ifs.egress.mac)]);
    neigh.set_targets(arp_targets(&cfg), now);
    let mut cache = BuildState::for_workers(workers);
    let macs = macs_of(&neigh);
    let resolve = |b: &config::Backend| b.ipv4().and_then(|ip| macs.get(&ip).copied());
    // Every backend starts healthy ("unknown" counts as up until its checks conclude).
    let snapshot = prepare(&cfg, ifs.links(), &resolve, &|_, _| true, 1, &mut cache)?.snapshot;
    let (rx_cfg, tx_cfg) = worker_rings(&vips(&cfg), fanout_group(), opts.rx_slots, opts.tx_slots)?;
    let mut rings = Vec::with_capacity(workers);
    for _ in 0..workers {
        // Each worker also gets a send-only socket on the ingress for its ICMP errors to clients.
        let icmp = PacketSocket::sender(&cfg.ingress)?;
        rings.push((RxRing::open(&cfg.ingress, &rx_cfg)?, TxRing::open(&cfg.egress, &tx_cfg)?, icmp));
    }
    let memory: usize = rings.iter().map(|(rx, tx, _)| rx.memory() + tx.memory()).sum();
    let sndbuf = rings.first().map_or(0, |(_, tx, _)| tx.sndbuf());
    let egress_arp = PacketSocket::open(&cfg.egress, ETHERTYPE_ARP)?;
    let ingress_arp = if cfg.one_arm() { None } else { Some(PacketSocket::open(&cfg.ingress, ETHERTYPE_ARP)?) };
    let metrics = match cfg.daemon.metrics {
        Some(addr) => Some(
            std::net::TcpListener::bind(addr)
                .map_err(|e| DaemonError::Setup(format!("daemon.metrics: cannot listen on {addr}: {e}")))?,
        ),
        None => None,
    };
    info!(ring_memory_mib = memory >> 20, tx_sndbuf_kib = sndbuf >> 10, "rings open");
    // The VIP routes' device, while privileged; a start that cannot announce as configured fails.
    let vip_routes = match cfg.announce.as_ref().and_then(|a| Some((a.table?, a.device.as_str()))) {
        Some((table, device)) => {
            let r = VipRoutes::open(device, table)
                .map_err(|e| DaemonError::Setup(format!("announce: {e} (announce.table = {table})")))?;
            info!(device, table, "VIP route device up: announced VIPs get a route in this table");
            Some(r)
        }
        None => None,
    };

    let shared = Arc::new(Shared::new(snapshot, workers, stop));
    let _ = shared.config_path.set(opts.config.clone());
    shared.reloads.applied();
    shared.follow_settings(&cfg);
    // After the rings are bound: from here on VIP frames are the rings' alone.
    let kernel_drop = if cfg.kernel_drop {
        install_kernel_drop(&cfg.ingress, &vips(&cfg), &shared)
    } else {
        info!("interfaces.kernel_drop = false: VIP frames also go through the kernel's IPv4 stack");
        None
    };

    // Everything is open: from here on nothing is effective, in this thread and in every thread
    // it starts; re-opening sockets raises CAP_NET_RAW/CAP_NET_ADMIN for just that.
    match crate::privs::drop_after_start() {
        Ok(kept) => {
            let mut names: Vec<String> = kept.iter().map(|c| c.to_string()).collect();
            names.sort();
            info!(
                permitted = %names.join(","),
                "capabilities dropped: none effective, only these permitted (raised to re-open sockets)"
            );
        }
        Err(e) => warn!(error = %e, "cannot drop capabilities after start; running with them"),
    }
    let mut handles = Vec::new();
    for (i, (rx, tx, icmp)) in rings.into_iter().enumerate() {
        let (ingress, egress) = (cfg.ingress.clone(), cfg.egress.clone());
        let (rx_cfg, tx_cfg) = (rx_cfg.clone(), tx_cfg.clone());
        // The same rings again, on the interfaces as they are now (after a re-creation).
        let reopen = move |epoch: u64| -> Result<_, IoError> {
            let rx_cfg = RxConfig { fanout: Some(Fanout::hash(fanout_group_at(epoch))), ..rx_cfg.clone() };
            Ok((RxRing::open(&ingress, &rx_cfg)?, TxRing::open(&egress, &tx_cfg)?, PacketSocket::sender(&ingress)?))
        };
        let h = spawn_worker(i, Arc::clone(&shared), (rx, tx, icmp), cfg.flows, reopen)
            .map_err(|e| DaemonError::Setup(format!("spawning worker {i}: {e}")))?;
        handles.push(h);
    }
    let ingress_responder = match ingress_arp {
        Some(sock) => {
            let responder = Arc::new(ArcSwap::from_pointee(ingress_responder(&cfg, &ifs)));
            let (r, arp_shared) = (Arc::clone(&responder), Arc::clone(&shared));
            std::thread::Builder::new()
                .name("maglevd-arp-in".into())
                .spawn(move || ingress_arp_loop(sock, &r, &arp_shared))
                .map_err(|e| DaemonError::Setup(format!("spawning the ARP thread: {e}")))?;
            Some(responder)
        }
        None => None,
    };
    if let Some(listener) = metrics {
        let http_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("maglevd-http".into())
            .spawn(move || http::serve(listener, &http_shared))
            .map_err(|e| DaemonError::Setup(format!("spawning the metrics thread: {e}")))?;
    }
    let announcer = if cfg.announce.is_some() {
        Some(
            announce::spawn(Arc::clone(&shared), vip_routes)
                .map_err(|e| DaemonError::Setup(format!("spawning the announce thread: {e}")))?,
        )
    } else {
        None
    };
    // Health checks: their own threads, never a worker; probes leave through the egress.
    let (prober, health_changes) = health::Prober::start(
        egress_of(&cfg, &ifs),
        health::DEFAULT_PROBE_THREADS,
        health::targets(&cfg, mac_lookup(&macs)),
    )
    .map_err(|e| DaemonError::Setup(format!("starting the health checks: {e}")))?;
    let responder = egress_responder(&cfg, &ifs);
    let cfg = Arc::new(cfg);
    let start =
        builder::Start { cfg: Arc::clone(&cfg), links: ifs.links(), macs, cache, health: prober.view(), generation: 1 };
    let builder = builder::Builder::spawn(start, Arc::clone(&shared))
        .map_err(|e| DaemonError::Setup(format!("spawning the snapshot builder: {e}")))?;
    let mut control = Control {
        opts,
        cfg,
        ifs,
        neigh,
        neigh_seen: NeighStats::default(),
        responder,
        ingress_responder,
        shared: &shared,
        builder,
        arp_warnings: throttle::Throttle::default(),
        prober,
        health_changes,
        health_due: None,
        kernel_drop,
    };
    // systemd (Type=notify): started; the control loop feeds the watchdog while every thread
    // makes progress. Outside systemd (no NOTIFY_SOCKET) these do nothing.
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status("forwarding")]);
    control.run(egress_arp, &reload, &term);
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    for h in handles {
        let _ = h.join();
    }
    if let Some(h) = announcer {
        let _ = h.join();
    }
    // The workers are gone: VIP frames are nobody's now, the kernel drops them as before.
    if let Some(k) = control.kernel_drop.take() {
        remove_kernel_drop(k, &shared);
    }
    info!(counters = %shared.counters.totals().summary(), "stopped");
    Ok(())
}

/// State of the control thread.
struct Control<'a> {
    opts: &'a Options,
    /// The running configuration (the builder's last applied one).
    cfg: Arc<Config>,
    ifs: Interfaces,
    neigh: NeighTable,
    /// The neighbour table's counters as last exported.
    neigh_seen: NeighStats,
    responder: Responder,
    ingress_responder: Option<Arc<ArcSwap<Responder>>>,
    shared: &'a Shared,
    builder: builder::Builder,
    /// Rate limit of repeated ARP socket warnings.
    arp_warnings: throttle::Throttle,
    prober: health::Prober,
    /// The prober's transitions: each one gets a new snapshot.
    health_changes: std::sync::mpsc::Receiver<health::Change>,
    /// The generation of the newest transition that changes forwarding and has not reached the
    /// builder yet.
    health_due: Option<u64>,
    /// The kernel drop filter, when installed.
    kernel_drop: Option<KernelDrop>,
}

/// Where health probes leave from: the egress interface and its address as they are now.
fn egress_of(cfg: &Config, ifs: &Interfaces) -> health::Egress {
    health::Egress { name: cfg.egress.clone(), mac: MacAddr(ifs.egress.mac), ip: ifs.egress_ip }
}

/// The responder on the egress socket: for the egress address, and in one-arm mode (one socket
/// for both roles) for the ingress address too.
fn egress_responder(cfg: &Config, ifs: &Interfaces) -> Responder {
    let mut ours = answer_for(cfg.egress_address, &ifs.egress);
    if cfg.one_arm() {
        ours.extend(answer_for(cfg.ingress_address, &ifs.ingress));
    }
    Responder::new(MacAddr(ifs.egress.mac), ours, vips(cfg))
}

/// The responder on the ingress ARP socket (two-arm mode): for the ingress address.
fn ingress_responder(cfg: &Config, ifs: &Interfaces) -> Responder {
    Responder::new(MacAddr(ifs.ingress.mac), answer_for(cfg.ingress_address, &ifs.ingress), vips(cfg))
}

impl Control<'_> {
    /// The control loop: reloads (SIGHUP or a changed file), ARP on the egress interface, backend
    /// resolution, snapshot publication; until the stop flag is set.
    fn run(&mut self, mut sock: PacketSocket, reload: &AtomicBool, term: &AtomicBool) {
        let mut buf = [0u8; 256];
        // The file as last loaded or tried: the periodic check reloads only when it changed
        // (Kubernetes updates a mounted ConfigMap by swapping a symlink, without any signal).
        let mut seen = config::read_file(&self.opts.config).ok();
        let mut next_check = Instant::now();
        let mut next_link_check = Instant::now() + LINK_CHECK_EVERY;
        // systemd's watchdog, fed at half its period, and only while every thread is live: a dead
        // or stuck worker gets the service restarted.
        let watchdog = sd_notify::watchdog_enabled().map(|d| d / 2);
        let mut next_watchdog = Instant::now();
        // With an [announce] drain period: when the stop is due.
        let mut stop_at: Option<Instant> = None;
        while !self.shared.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if term.load(Ordering::Relaxed) && stop_at.is_none() {
                stop_at = Some(self.begin_stop(now));
            }
            if stop_at.is_some_and(|t| now >= t) {
                self.shared.stop.store(true, Ordering::Relaxed);
                break;
            }
            self.shared.control_heartbeat_ms.store(self.shared.millis(now), Ordering::Relaxed);
            if let Some(every) = watchdog
                && now >= next_watchdog
            {
                next_watchdog = now + every;
                match self.shared.liveness(now) {
                    Ok(()) => {
                        let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                    }
                    Err(problem) => error!("not feeding the systemd watchdog: {problem}"),
                }
            }
            if Instant::now() >= next_link_check {
                next_link_check = Instant::now() + LINK_CHECK_EVERY;
                self.check_links(&mut sock);
            }
            let mut due = reload.swap(false, Ordering::Relaxed);
            if let Some(every) = self.cfg.daemon.config_check
                && Instant::now() >= next_check
            {
                next_check = Instant::now() + every;
                let now = config::read_file(&self.opts.config).ok();
                if now.is_some() && now != seen {
                    info!(config = %self.opts.config.display(), "configuration file changed");
                    due = true;
                }
            }
            if due {
                seen = config::read_file(&self.opts.config).ok();
                self.reload();
            }
            while let Some(outcome) = self.builder.outcome() {
                if let builder::Outcome::Applied(cfg) = outcome {
                    self.applied(cfg);
                }
            }
            let now = Instant::now();
            let mut changed = self.poll_neigh(&mut sock, now);
            let wait =
                self.neigh.next_deadline().map_or(Duration::from_millis(200), |d| d.saturating_duration_since(now));
            match sock.recv(&mut buf, wait.clamp(Duration::from_millis(1), Duration::from_millis(200))) {
                Ok(Some(n)) => changed |= self.on_frame(&mut sock, &buf[..n]),
                Ok(None) => {}
                Err(e) => {
                    self.shared.arp.errors.fetch_add(1, Ordering::Relaxed);
                    if let Some(held) = self.arp_warnings.allow(Instant::now()) {
                        warn!(error = %e, suppressed = held, "ARP receive failed");
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            self.export_neigh_stats();
            if changed {
                let macs = macs_of(&self.neigh);
                // The dsr check sends to the backend's MAC: it follows.
                self.prober.set_targets(health::targets(&self.cfg, mac_lookup(&macs)));
                self.builder.macs(macs);
            }
            self.follow_health();
        }
    }

    /// The first SIGTERM/SIGINT: with `[announce]` and a drain period, withdraw every VIP and
    /// go on forwarding for `drain_secs` while the routers converge; otherwise stop now. When the
    /// stop is due.
    fn begin_stop(&self, now: Instant) -> Instant {
        let drain = self.shared.announce_cfg.load().as_ref().map_or(Duration::ZERO, |a| a.drain);
        if drain.is_zero() {
            info!("stopping");
            return now;
        }
        self.shared.stopping.store(true, Ordering::Relaxed);
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Status("draining before stop")]);
        info!(
            drain_secs = drain.as_secs(),
            "stopping: every VIP withdrawn; forwarding goes on for the drain period (a second signal stops at once)"
        );
        now + drain
    }

    /// Hand the health checks' verdicts to the builder when one changed, and to the metrics.
    fn follow_health(&mut self) {
        while let Ok(change) = self.health_changes.try_recv() {
            if change.transition.changes_forwarding() {
                self.health_due = self.health_due.max(Some(change.generation));
            }
        }
        let view = self.prober.view();
        // The prober sends a change before it publishes the view that holds it: hand the builder
        // a view only once it is at least as new as the changes seen (else at the next turn).
        if self.health_due.is_some_and(|g| view.generation >= g) {
            self.health_due = None;
            self.builder.health(Arc::clone(&view));
        }
        self.shared.health.store(view);
    }

    /// Send due probes, expire entries and settle MAC claims; true if a MAC was lost or changed.
    fn poll_neigh(&mut self, sock: &mut PacketSocket, now: Instant) -> bool {
        let mut probes = Vec::new();
        let resolved: Vec<Ipv4Addr> =
            self.neigh.entries().filter(|(_, s)| s.mac().is_some()).map(|(ip, _)| ip).collect();
        let lost = self.neigh.poll(now, |p| probes.push(p));
        for p in probes {
            match sock.send(&self.neigh.probe_frame(&p)) {
                Ok(()) => self.shared.arp.probes_sent.fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    if let Some(held) = self.arp_warnings.allow(now) {
                        warn!(backend = %p.target, error = %e, suppressed = held, "ARP probe failed");
                    }
                    self.shared.arp.errors.fetch_add(1, Ordering::Relaxed)
                }
            };
        }
        if lost {
            // Once per backend that just lost its MAC (a transition, not a state).
            for ip in resolved {
                if self.neigh.mac(ip).is_none() {
                    warn!(backend = %ip, "backend MAC unresolved: out of the table until it answers ARP");
                }
            }
        }
        lost
    }

    /// One ARP frame from the egress interface; true if a MAC was learned or changed.
    fn on_frame(&mut self, sock: &mut PacketSocket, frame: &[u8]) -> bool {
        let Some(arp) = neigh::parse_arp(frame) else { return false };
        match self.responder.handle(&arp) {
            Answer::Reply(reply) => {
                if sock.send(&reply).is_ok() {
                    self.shared.arp.replies_sent.fetch_add(1, Ordering::Relaxed);
                }
            }
            Answer::RefusedVip => {
                self.shared.arp.vip_requests_refused.fetch_add(1, Ordering::Relaxed);
            }
            Answer::NotOurs => {}
        }
        let learned = self.neigh.on_arp(&arp, Instant::now());
        if learned {
            self.shared.arp.macs_learned.fetch_add(1, Ordering::Relaxed);
            info!(backend = %arp.sender_ip, mac = %arp.sender_mac, "backend resolved");
        }
        learned
    }

    /// Add what the neighbour table refused, claimed and confirmed since the last call to the
    /// exported counters.
    fn export_neigh_stats(&mut self) {
        let now = self.neigh.stats();
        let was = std::mem::replace(&mut self.neigh_seen, now);
        let arp = &self.shared.arp;
        for (c, n, w) in [
            (&arp.own_mac_refused, now.own_mac_refused, was.own_mac_refused),
            (&arp.mac_claims, now.challenges, was.challenges),
            (&arp.mac_changes_confirmed, now.changes_confirmed, was.changes_confirmed),
            (&arp.mac_conflicts_kept, now.conflicts_kept, was.conflicts_kept),
            (&arp.macs_expired, now.expired, was.expired),
        ] {
            if n > w {
                c.fetch_add(n - w, Ordering::Relaxed);
            }
        }
        if now.conflicts_kept > was.conflicts_kept {
            warn!(
                "another host claimed a backend's address with a different MAC; the known MAC still answers and stays"
            );
        }
        if now.changes_confirmed > was.changes_confirmed {
            info!("a backend's MAC change was confirmed by a broadcast request");
        }
    }

    /// Re-read the configuration and hand it to the builder, unless it is refused here already
    /// (unreadable or invalid file, changed interfaces, a local VIP, a backend off the egress
    /// link). The builder applies it whole or refuses it whole.
    fn reload(&mut self) {
        let path: &Path = &self.opts.config;
        let refuse = |shared: &Shared, why: String| {
            shared.reload_failures.fetch_add(1, Ordering::Relaxed);
            shared.reloads.refused(&why);
            error!("reload refused, running configuration kept: {why}");
        };
        let new = match config::load(path) {
            Ok(c) => c,
            Err(e) => return refuse(self.shared, e.to_string()),
        };
        if new.ingress != self.cfg.ingress || new.egress != self.cfg.egress {
            return refuse(
                self.shared,
                format!(
                    "{}: the interfaces changed ({} → {}, {} → {}); that needs a restart",
                    path.display(),
                    self.cfg.ingress,
                    new.ingress,
                    self.cfg.egress,
                    new.egress
                ),
            );
        }
        if let Some(problem) = announce_restart(&self.cfg, &new) {
            return refuse(self.shared, format!("{}: {problem}; that needs a restart", path.display()));
        }
        match vip_held_locally(&new) {
            Ok(None) => {}
            Ok(Some(problem)) => return refuse(self.shared, format!("{}: {problem}", path.display())),
            Err(e) => warn!(error = %e, "cannot list the interfaces to check for a local VIP"),
        }
        if let Some(problem) = off_link_backends(&new, &self.ifs.egress) {
            return refuse(self.shared, format!("{}: {problem}", path.display()));
        }
        self.builder.reload(Arc::new(new));
    }

    /// Follow the interfaces: one missing makes the daemon not ready (loudly) until it is back;
    /// one re-created (new index) or changed (MAC, MTU) gets every ring and ARP socket re-opened
    /// and its MAC into the next snapshot.
    fn check_links(&mut self, sock: &mut PacketSocket) {
        let looked = InterfaceInfo::lookup(&self.cfg.ingress).and_then(|i| {
            let e = if self.cfg.one_arm() { i.clone() } else { InterfaceInfo::lookup(&self.cfg.egress)? };
            Ok((i, e))
        });
        let (ingress, egress) = match looked {
            Ok(pair) => pair,
            Err(e) => {
                if self.shared.link_problem.load().is_none() {
                    error!("{e}: VIP traffic cannot flow; not ready until the interface is back");
                    self.shared.link_problem.store(Some(Arc::new(e.to_string())));
                }
                return;
            }
        };
        let (old_in, old_eg) = (&self.ifs.ingress, &self.ifs.egress);
        let recreated = ingress.ifindex != old_in.ifindex || egress.ifindex != old_eg.ifindex;
        let changed = recreated
            || ingress.mac != old_in.mac
            || egress.mac != old_eg.mac
            || ingress.mtu != old_in.mtu
            || egress.mtu != old_eg.mtu;
        if changed {
            info!(
                ingress = %format!("{} index {} {} mtu {}", ingress.name, ingress.ifindex, ingress.mac_string(), ingress.mtu),
                egress = %format!("{} index {} {} mtu {}", egress.name, egress.ifindex, egress.mac_string(), egress.mtu),
                "interfaces changed; re-opening the rings"
            );
            let egress_ip =
                self.cfg.egress_address.or_else(|| egress.ipv4.first().copied()).unwrap_or(self.ifs.egress_ip);
            self.ifs = Interfaces { ingress, egress, egress_ip };
            let (in_mac, eg_mac) = (MacAddr(self.ifs.ingress.mac), MacAddr(self.ifs.egress.mac));
            self.neigh.set_sender(eg_mac, egress_ip);
            self.neigh.set_own_macs(&[in_mac, eg_mac]);
            self.prober.set_egress(egress_of(&self.cfg, &self.ifs));
            self.refresh_responders();
            match PacketSocket::open(&self.cfg.egress, ETHERTYPE_ARP) {
                Ok(s) => *sock = s,
                Err(e) => warn!(error = %e, "cannot re-open the ARP socket on the egress interface"),
            }
            self.builder.links(self.ifs.links());
            self.shared.rings_epoch.fetch_add(1, Ordering::Relaxed);
            // A re-created ingress interface came without our qdisc and filter.
            if recreated && let Some(k) = self.kernel_drop.as_mut() {
                match k.reinstall() {
                    Ok(()) => {
                        info!(interface = %k.interface(), "kernel drop filter installed again on the re-created interface");
                        self.shared.kernel_drop.store(true, Ordering::Relaxed);
                    }
                    Err(e) => {
                        warn!(error = %e, "cannot install the kernel drop filter again: {KERNEL_DROP_COST}");
                        self.shared.kernel_drop.store(false, Ordering::Relaxed);
                    }
                }
            }
        }
        if self.shared.link_problem.load().is_some() {
            info!("the interfaces are back");
            self.shared.link_problem.store(None);
        }
    }

    /// The kernel drop filter as `cfg` wants it, right after its snapshot was published (the
    /// workers put the same VIPs on their rings at their next batch): replaced when the VIPs
    /// changed, installed or removed when `kernel_drop` changed. While the two differ, only
    /// frames the kernel would drop anyway are concerned (the frontend holds no VIP and does not
    /// forward).
    fn follow_kernel_drop(&mut self, cfg: &Config) {
        match (cfg.kernel_drop, self.kernel_drop.as_mut()) {
            (true, Some(k)) => {
                let want = vips(cfg);
                if want != k.vips() {
                    match k.set_vips(&want) {
                        Ok(()) => info!(vips = want.len(), "kernel drop filter follows the new VIPs"),
                        Err(e) => {
                            error!(error = %e, "cannot update the kernel drop filter; removing it");
                            if let Some(k) = self.kernel_drop.take() {
                                remove_kernel_drop(k, self.shared);
                            }
                        }
                    }
                }
            }
            (true, None) if !self.cfg.kernel_drop => {
                self.kernel_drop = install_kernel_drop(&cfg.ingress, &vips(cfg), self.shared);
            }
            (false, Some(_)) => {
                if let Some(k) = self.kernel_drop.take() {
                    remove_kernel_drop(k, self.shared);
                }
            }
            _ => {}
        }
    }

    /// Answer ARP as the running configuration and the interfaces say now, on both sockets.
    fn refresh_responders(&mut self) {
        self.responder = egress_responder(&self.cfg, &self.ifs);
        if let Some(r) = &self.ingress_responder {
            r.store(Arc::new(ingress_responder(&self.cfg, &self.ifs)));
        }
    }

    /// The builder published `cfg`: resolve its backends and answer ARP as it says.
    fn applied(&mut self, cfg: Arc<Config>) {
        let lost = self.neigh.set_targets(arp_targets(&cfg), Instant::now());
        if cfg.flows != self.cfg.flows {
            warn!(
                "the [flows] settings changed: they take effect when maglevd restarts (the tables are sized at start)"
            );
        }
        self.prober.set_targets(health::targets(&cfg, mac_lookup(&macs_of(&self.neigh))));
        self.follow_kernel_drop(&cfg);
        self.shared.follow_settings(&cfg);
        self.cfg = cfg;
        self.refresh_responders();
        if lost {
            self.builder.macs(macs_of(&self.neigh));
        }
    }
}

fn ingress_arp_loop(mut sock: PacketSocket, responder: &ArcSwap<Responder>, shared: &Shared) {
    let mut buf = [0u8; 256];
    let mut epoch = shared.rings_epoch.load(Ordering::Relaxed);
    let mut warnings = throttle::Throttle::default();
    while !shared.stop.load(Ordering::Relaxed) {
        // The ingress interface was re-created: listen on the new one.
        let now_epoch = shared.rings_epoch.load(Ordering::Relaxed);
        if now_epoch != epoch {
            match PacketSocket::open(&sock.interface().name.clone(), ETHERTYPE_ARP) {
                Ok(s) => {
                    sock = s;
                    epoch = now_epoch;
                }
                Err(e) => {
                    warn!(error = %e, "cannot re-open the ARP socket on the ingress interface; retrying");
                    std::thread::sleep(Duration::from_millis(500));
                    continue;
                }
            }
        }
        match sock.recv(&mut buf, Duration::from_millis(200)) {
            Ok(Some(n)) => {
                let Some(arp) = neigh::parse_arp(&buf[..n]) else { continue };
                match responder.load().handle(&arp) {
                    Answer::Reply(reply) => match sock.send(&reply) {
                        Ok(()) => shared.arp.replies_sent.fetch_add(1, Ordering::Relaxed),
                        Err(_) => shared.arp.errors.fetch_add(1, Ordering::Relaxed),
                    },
                    Answer::RefusedVip => shared.arp.vip_requests_refused.fetch_add(1, Ordering::Relaxed),
                    Answer::NotOurs => 0,
                };
            }
            Ok(None) => {}
            Err(e) => {
                shared.arp.errors.fetch_add(1, Ordering::Relaxed);
                if let Some(held) = warnings.allow(Instant::now()) {
                    warn!(error = %e, suppressed = held, "ARP receive failed on the ingress interface");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_reload_changing_what_the_announce_thread_was_started_with_needs_a_restart() {
        let base = "[interfaces]\ningress = \"in\"\negress = \"out\"\n[[service]]\nvip = \"10.201.0.1\"\nprotocol = \"tcp\"\nport = 80\n[[service.backend]]\nip = \"10.0.0.7\"\n";
        let cfg = |announce: &str| config::parse(&format!("{base}{announce}"), Path::new("t.toml")).unwrap();
        let (none, routes) = (cfg(""), cfg("[announce]\ntable = 4711\n"));
        assert_eq!(announce_restart(&none, &none), None);
        assert!(announce_restart(&none, &routes).unwrap().contains("added"));
        assert!(announce_restart(&routes, &none).unwrap().contains("removed"));
        assert!(announce_restart(&routes, &cfg("[announce]\ntable = 4712\n")).unwrap().contains("table"));
        assert!(announce_restart(&routes, &cfg("[announce]\ntable = 4711\ndevice = \"x0\"\n")).is_some());
        // Timings, hysteresis, files: taken by a reload.
        let tuned = cfg("[announce]\ntable = 4711\nrise = 5\nsettle_secs = 1\nstate_dir = \"/run/v\"\n");
        assert_eq!(announce_restart(&routes, &tuned), None);
        let no_routes = cfg("[announce]\n");
        assert_eq!(announce_restart(&no_routes, &cfg("[announce]\ndevice = \"x0\"\n")), None, "no device in use");
    }

    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::io::{MemRx, MemTx, RxDevice, RxFrame};

    fn small_flows() -> config::Flows {
        config::Flows { capacity: flow::MIN_PER_WORKER, ..config::Flows::default() }
    }

    fn shared(workers: usize) -> Arc<Shared> {
        let text = "[interfaces]\ningress = \"in\"\negress = \"out\"\n[[service]]\nvip = \"10.201.0.1\"\n\
                    protocol = \"tcp\"\nport = 80\n[[service.backend]]\nip = \"10.0.0.7\"\nmac = \"02:00:00:00:00:07\"\n";
        let cfg = config::parse(text, Path::new("t.toml")).unwrap();
        let links = Links { ingress_mac: MacAddr([2, 0, 0, 0, 0xee, 1]), egress_mac: MacAddr([2, 0, 0, 0, 0xee, 2]) };
        let snap = Snapshot::build(&cfg, links, &|_| None, 1).unwrap();
        Arc::new(Shared::new(snap, workers, Arc::new(AtomicBool::new(false))))
    }

    /// The test hook: a receive device whose worker thread dies (panics) on its first batch.
    struct Dies;

    impl RxDevice for Dies {
        fn recv_batch<F: FnMut(RxFrame<'_>)>(&mut self, _max: usize, _f: F) -> usize {
            panic!("test hook: this worker dies");
        }
        fn wait(&mut self, _timeout: Duration) -> Result<bool, IoError> {
            Ok(false)
        }
        fn kernel_drops(&mut self) -> Result<u64, IoError> {
            Ok(0)
        }
    }

    impl worker::VipFiltered for Dies {
        fn set_vips(&mut self, _vips: &[Ipv4Addr]) -> Result<(), IoError> {
            Ok(())
        }
    }

    fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ok() {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_dead_worker_fails_liveness_at_once() {
        let sh = shared(2);
        let never = |_: u64| -> Result<(MemRx, MemTx, MemTx), IoError> {
            Err(IoError::Config { iface: "-".into(), reason: "no".into() })
        };
        let alive =
            spawn_worker(0, Arc::clone(&sh), (MemRx::new(), MemTx::new(8), MemTx::new(8)), small_flows(), never)
                .unwrap();
        let never = |_: u64| -> Result<(Dies, MemTx, MemTx), IoError> {
            Err(IoError::Config { iface: "-".into(), reason: "no".into() })
        };
        let dead =
            spawn_worker(1, Arc::clone(&sh), (Dies, MemTx::new(8), MemTx::new(8)), small_flows(), never).unwrap();
        assert!(dead.join().is_err(), "the hook panicked the worker");
        sh.control_heartbeat_ms.store(sh.millis(Instant::now()), Ordering::Relaxed);
        let err = sh.liveness(Instant::now()).unwrap_err();
        assert_eq!(err, "worker 1: thread ended");
        assert_eq!(sh.stalled_workers(Instant::now()), vec![(1, "thread ended")]);
        assert!(sh.readiness(Instant::now()).is_err(), "not live, so not ready");
        // The live worker's heartbeat moves; a future without beats is a stall.
        let w0 = sh.counters.worker(0).unwrap();
        let before = w0.heartbeat_ms.load(Ordering::Relaxed);
        wait_for("worker 0 beats", || w0.heartbeat_ms.load(Ordering::Relaxed) > before);
        let later = Instant::now() + STALL_AFTER + Duration::from_secs(1);
        let stalled = sh.stalled_workers(later);
        assert!(stalled.contains(&(0, "no progress")), "{stalled:?}");
        assert!(sh.liveness(later).unwrap_err().contains("control thread: no progress"));
        sh.stop.store(true, Ordering::Relaxed);
        alive.join().unwrap();
        assert_eq!(sh.stalled_workers(Instant::now()).len(), 2, "a stopped worker is not alive either");
    }

    #[test]
    fn readiness_names_what_is_missing() {
        let sh = shared(1);
        let beat = |sh: &Shared| {
            let ms = sh.millis(Instant::now());
            sh.control_heartbeat_ms.store(ms, Ordering::Relaxed);
            sh.counters.worker(0).unwrap().heartbeat_ms.store(ms, Ordering::Relaxed);
        };
        beat(&sh);
        assert_eq!(sh.readiness(Instant::now()), Ok(()));
        sh.filter_ok[0].store(false, Ordering::Relaxed);
        assert_eq!(sh.readiness(Instant::now()).unwrap_err(), "the VIP filter is not installed on worker 0");
        sh.filter_ok[0].store(true, Ordering::Relaxed);
        sh.link_problem.store(Some(Arc::new("net1: no such network interface".into())));
        assert_eq!(sh.readiness(Instant::now()).unwrap_err(), "net1: no such network interface");
        assert_eq!(sh.liveness(Instant::now()), Ok(()), "a missing interface is not a dead process");
    }
}
