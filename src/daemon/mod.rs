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
//! # Reload
//! `SIGHUP` re-reads the file. An invalid file, or one that changes the interfaces (the rings are
//! bound to them; that needs a restart), is refused with a logged error naming the problem, and
//! the running configuration stays in force.

mod http;
pub mod worker;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tracing::{error, info, warn};

use crate::config::{self, Config, ConfigError};
use crate::dataplane::{Links, Snapshot};
use crate::io::{
    Capabilities, Fanout, InterfaceInfo, IoError, PacketSocket, RxConfig, RxRing, TxConfig, TxRing, VipFilter,
};
use crate::metrics::Counters;
use crate::neigh::{self, Answer, NeighTable, NeighTimers, Responder};
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
}

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
        }
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

/// The fanout group of this process's workers: distinct per process, so two daemons in one
/// network namespace never share a group.
pub fn fanout_group() -> u16 {
    (std::process::id() & 0xffff) as u16
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

fn build_snapshot(cfg: &Config, ifs: &Interfaces, neigh: &NeighTable, generation: u64) -> Result<Snapshot, BuildError> {
    Snapshot::build(cfg, ifs.links(), &|b| b.ipv4().and_then(|ip| neigh.mac(ip)), generation)
}

/// Run the daemon until SIGTERM/SIGINT.
pub fn run(opts: &Options) -> Result<(), DaemonError> {
    // Signals first: a SIGTERM during start-up (e.g. to PID 1 of a pod) must not be lost.
    let stop = Arc::new(AtomicBool::new(false));
    let reload = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        // The first signal asks for a clean stop; a second one while stopping exits at once.
        let set = signal_hook::flag::register_conditional_shutdown(sig, 1, Arc::clone(&stop))
            .and_then(|_| signal_hook::flag::register(sig, Arc::clone(&stop)));
        set.map_err(|e| DaemonError::Setup(format!("installing the signal handlers: {e}")))?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&reload))
        .map_err(|e| DaemonError::Setup(format!("installing the SIGHUP handler: {e}")))?;

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
    neigh.set_targets(arp_targets(&cfg), now);
    let snapshot = build_snapshot(&cfg, &ifs, &neigh, 1)?;
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

    let shared = Arc::new(Shared::new(snapshot, workers, stop));

    let mut handles = Vec::new();
    for (i, (mut rx, mut tx, mut icmp)) in rings.into_iter().enumerate() {
        let shared = Arc::clone(&shared);
        let h = std::thread::Builder::new()
            .name(format!("maglevd-w{i}"))
            .spawn(move || {
                let Some(counters) = shared.counters.worker(i) else { return };
                worker::run(&mut rx, &mut tx, &mut icmp, &shared, counters);
            })
            .map_err(|e| DaemonError::Setup(format!("spawning worker {i}: {e}")))?;
        handles.push(h);
    }
    let ingress_responder = match ingress_arp {
        Some(sock) => {
            let responder =
                Responder::new(MacAddr(ifs.ingress.mac), answer_for(cfg.ingress_address, &ifs.ingress), vips(&cfg));
            let responder = Arc::new(ArcSwap::from_pointee(responder));
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
    let responder = egress_responder(&cfg, &ifs);
    let mut control = Control { opts, cfg, ifs, neigh, responder, ingress_responder, shared: &shared, generation: 1 };
    control.run(egress_arp, &reload);
    for h in handles {
        let _ = h.join();
    }
    info!(counters = %shared.counters.totals().summary(), "stopped");
    Ok(())
}

/// State of the control thread.
struct Control<'a> {
    opts: &'a Options,
    cfg: Config,
    ifs: Interfaces,
    neigh: NeighTable,
    responder: Responder,
    ingress_responder: Option<Arc<ArcSwap<Responder>>>,
    shared: &'a Shared,
    generation: u64,
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

impl Control<'_> {
    /// The control loop: reloads (SIGHUP or a changed file), ARP on the egress interface, backend
    /// resolution, snapshot publication; until the stop flag is set.
    fn run(&mut self, mut sock: PacketSocket, reload: &AtomicBool) {
        let mut buf = [0u8; 256];
        // The file as last loaded or tried: the periodic check reloads only when it changed
        // (Kubernetes updates a mounted ConfigMap by swapping a symlink, without any signal).
        let mut seen = std::fs::read(&self.opts.config).ok();
        let mut next_check = Instant::now();
        while !self.shared.stop.load(Ordering::Relaxed) {
            let mut due = reload.swap(false, Ordering::Relaxed);
            if let Some(every) = self.cfg.daemon.config_check
                && Instant::now() >= next_check
            {
                next_check = Instant::now() + every;
                let now = std::fs::read(&self.opts.config).ok();
                if now.is_some() && now != seen {
                    info!(config = %self.opts.config.display(), "configuration file changed");
                    due = true;
                }
            }
            if due {
                seen = std::fs::read(&self.opts.config).ok();
                self.reload();
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
                    warn!(error = %e, "ARP receive failed");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            if changed {
                self.publish();
            }
        }
    }

    /// Send due probes and expire entries; true if a MAC was lost.
    fn poll_neigh(&mut self, sock: &mut PacketSocket, now: Instant) -> bool {
        let mut probes = Vec::new();
        let lost = self.neigh.poll(now, |p| probes.push(p));
        for p in probes {
            match sock.send(&self.neigh.probe_frame(&p)) {
                Ok(()) => self.shared.arp.probes_sent.fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    warn!(backend = %p.target, error = %e, "ARP probe failed");
                    self.shared.arp.errors.fetch_add(1, Ordering::Relaxed)
                }
            };
        }
        if lost {
            self.shared.arp.macs_expired.fetch_add(1, Ordering::Relaxed);
            for (ip, s) in self.neigh.entries() {
                if s.mac().is_none() {
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

    /// Build and publish a new snapshot from the current configuration and neighbour table.
    fn publish(&mut self) {
        match build_snapshot(&self.cfg, &self.ifs, &self.neigh, self.generation + 1) {
            Ok(s) => {
                self.generation += 1;
                let usable: usize = s.services().iter().map(|s| s.backends.iter().filter(|b| b.usable()).count()).sum();
                info!(generation = self.generation, usable_backends = usable, "snapshot published");
                self.shared.snapshot.store(Arc::new(s));
            }
            Err(e) => error!(error = %e, "cannot build the lookup tables; keeping the previous snapshot"),
        }
    }

    /// Re-read the configuration; keep the running one if the new one is unusable.
    fn reload(&mut self) {
        let path: &Path = &self.opts.config;
        let new = match config::load(path) {
            Ok(c) => c,
            Err(e) => {
                self.shared.reload_failures.fetch_add(1, Ordering::Relaxed);
                error!("reload refused, running configuration kept: {e}");
                return;
            }
        };
        if new.ingress != self.cfg.ingress || new.egress != self.cfg.egress {
            self.shared.reload_failures.fetch_add(1, Ordering::Relaxed);
            error!(
                "reload refused, running configuration kept: {}: the interfaces changed ({} → {}, {} → {}); that needs a restart",
                path.display(),
                self.cfg.ingress,
                new.ingress,
                self.cfg.egress,
                new.egress
            );
            return;
        }
        match vip_held_locally(&new) {
            Ok(None) => {}
            Ok(Some(problem)) => {
                self.shared.reload_failures.fetch_add(1, Ordering::Relaxed);
                error!("reload refused, running configuration kept: {}: {problem}", path.display());
                return;
            }
            Err(e) => warn!(error = %e, "cannot list the interfaces to check for a local VIP"),
        }
        if let Err(e) = crate::report::tables(&new) {
            self.shared.reload_failures.fetch_add(1, Ordering::Relaxed);
            error!("reload refused, running configuration kept: {}: {e}", path.display());
            return;
        }
        self.neigh.set_targets(arp_targets(&new), Instant::now());
        self.responder = egress_responder(&new, &self.ifs);
        if let Some(r) = &self.ingress_responder {
            r.store(Arc::new(Responder::new(
                MacAddr(self.ifs.ingress.mac),
                answer_for(new.ingress_address, &self.ifs.ingress),
                vips(&new),
            )));
        }
        self.cfg = new;
        info!(config = %path.display(), services = self.cfg.services.len(), "configuration reloaded");
        self.publish();
    }
}

fn ingress_arp_loop(mut sock: PacketSocket, responder: &ArcSwap<Responder>, shared: &Shared) {
    let mut buf = [0u8; 256];
    while !shared.stop.load(Ordering::Relaxed) {
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
                warn!(error = %e, "ARP receive failed on the ingress interface");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}
