//! `maglevd bench live`: forwarding through real interfaces, maglevd against the kernel's own IPv4
//! forwarding, on the same topology ([`super::netns`]) and in the same run.
//!
//! # Traffic
//! `--traffic` chooses what crosses the two forwarders:
//! * **udp** (default): small UDP frames from an in-process generator: packet rate, loss and
//!   one-way latency (*Throughput*, *Latency* below). The sink only receives.
//! * **tcp**: iperf3, one stream (`--streams N`), default offloads (TSO/GSO on: the stream crosses
//!   `lb` as super-frames of up to 64 KiB, docs/lab.md pitfall 6).
//! * **http**: wrk against nginx: keep-alive (`wrk -t1 -c32`, `--connections`), then one TCP
//!   connection per request (`Connection: close`).
//!
//! For tcp and http the sink is a real DSR backend (server bound to the VIP on its `lo`,
//! `arp_ignore=1`, `arp_announce=2`) and its replies go back to `gen` on a return path that does
//! not cross `lb` ([`Topology::create_with_return`]); maglevd's service is TCP on the server's port
//! (5201, 80). Client and server are pinned to `--gen-cpu` (the endpoints' CPU), the forwarder
//! to `--fwd-cpu`; RPS on `lbin` puts `lb`'s receive on the forwarder's CPU in *both* modes
//! (in the udp mode only for the kernel): kernel forwarding and maglevd's ring copy then cost the
//! forwarder's CPU, and the endpoints' CPU does the same work in both modes, so the ratio
//! measures the forwarder. The programs, their bounds and their output: [`app`].
//!
//! # Modes
//! * **kernel**: `lb` has `ip_forward=1` and a route for the VIP via the sink's address; RPS on
//!   `lbin` moves the forwarding (softirq) to the forwarder CPU.
//! * **maglevd**: `lb` has `ip_forward=0` and no VIP route; maglevd's real datapath runs in this
//!   process: a [`Snapshot`] from a configuration with one service (VIP, UDP and all ports, or TCP
//!   and the server's port; one backend = the sink with its MAC), a [`Shared`], and `--workers` threads running
//!   [`worker::run`], each with an RX ring on `lbin` opened as the daemon opens it (fanout hash
//!   group, VIP filter, vnet header, slots for 64 KiB super-frames) and a TX ring on `lbout`
//!   (vnet header, qdisc bypass), pinned to the forwarder CPU. Each worker tracks connections with
//!   its share of the default `[flows]` table, as the daemon's workers do (`--no-tracking`: not).
//!   Before the workers start, the daemon's kernel drop filter for the VIP is put on `lbin`
//!   ([`daemon::install_kernel_drop`], [`crate::io::tc`]), and it is removed when they stop, so
//!   VIP frames end after the rings' copy as with `maglevd run` (`--no-kernel-drop`: they also
//!   go through `lb`'s IPv4 stack and are dropped there, as before the filter existed).
//!
//! # Throughput
//! A generator thread in `gen`, pinned to the generator CPU, sends `--size`-byte UDP frames to the
//! VIP from `--flows` source ports through an AF_PACKET TX ring ([`TxRing`]: one `send()` per
//! batch, qdisc bypass, send buffer forced to the ring size with SO_SNDBUFFORCE — docs/lab.md
//! pitfall 4), as fast as it can (or at `--rate`). The ring size (`--gen-slots`) decides what is
//! measured (pitfall 5): 256 slots keep the sender close to the loss-free rate in kernel mode,
//! large rings measure goodput under overload. After a warm-up, the window counts the frames the
//! kernel took from the generator's ring (offered), the `rx_packets` of `lbin` (reached the
//! balancer) and of `sink0` (delivered). Neighbour state is refreshed before every run (pitfall
//! 9). Runs alternate kernel / maglevd, `--repeat` times each; medians are reported.
//!
//! # Load
//! The CPU time of other processes ("foreign") is `/proc/stat` busy time minus this process's
//! (with its children: iperf3, wrk, nginx), ksoftirqd's and irq/softirq time. Before each run (and each latency measurement) the machine
//! is sampled in 300 ms steps while the benchmark is idle, waiting up to `--load-wait` seconds for
//! the foreign share to fall to 15 %; a throughput run with more than 15 % foreign load before or
//! during its window is repeated (up to twice) and flagged `*` if still loaded (pitfall 12).
//!
//! # Latency
//! `--probes` frames 1 ms apart, each carrying a sequence number and its send time
//! (`CLOCK_REALTIME`), to their own UDP port ([`PROBE_DPORT`]), are received in `sink` on a
//! TPACKET_V2 [`RxRing`] in this process whose socket filter takes nothing else: the one-way
//! delay is the kernel's receive timestamp of the probe in that ring ([`crate::io::RxFrame::stamp_ns`],
//! same clock) minus its send time, so the receiving thread's own wake-up is not counted.
//! Alone by default (an idle path); with `--latency-load F` the generator sends background
//! traffic meanwhile at F times the lower of the two modes' median delivered rates of this run
//! (the same rate in every mode): the probes then wait behind it in queues and rings, as real
//! traffic does at that load. Measured for the kernel, for maglevd with its default V2 RX ring,
//! and for maglevd with a TPACKET_V3 RX ring (block timeout `--v3-timeout-ms`), which shows why
//! V2 is the default; `--busy-poll-us` applies to both maglevd rings.
//!
//! # JSON (`--json`)
//! One object: `bench` = `"live"`, `traffic` (`"udp"`, `"tcp"`, `"http"`), `config` (the options),
//! `placement` (the lines of the text report), `runs` and `summary`. Rates are per second; `null`
//! where a figure does not apply or could not be read; `foreign_load*`, `*_cpu_busy`, `steal` and
//! `loss` are shares 0..=1.
//!
//! * **udp**: each of `runs`: `mode` (`kernel`, `maglevd`), `run`, `seconds`, `offered_pps`,
//!   `at_lb_pps`, `delivered_pps`, `loss`, `foreign_load_before`, `foreign_load`,
//!   `gen_cpu_busy`, `fwd_cpu_busy`, `steal`, `attempts`, `flagged`, `maglevd_forwarded_pps`,
//!   `rx_ring_drops`, `flows_tracked`, `kernel_drop`, `gen_eagain`. `summary`: `kernel` and
//!   `maglevd` (medians: `offered_pps`, `at_lb_pps`, `delivered_pps`, `loss`; `runs`, `flagged`)
//!   and `ratio_maglevd_kernel` (median delivered pps). `latency`: per mode (`kernel`,
//!   `maglevd_v2`, `maglevd_v3`) `label`, `sent`, `received`, `median_us`, `p99_us`, `min_us`,
//!   `max_us`, `foreign_load`, `added_us` (median minus the kernel's), `added_p99_us`;
//!   `config.latency_background_pps`: the background rate during the probes (0: none).
//! * **tcp**, **http**: each of `runs`: `test` (`tcp_bulk`; `http_keepalive`, `http_close`),
//!   `mode`, `run`, `seconds` (the client's window), the rate — `bits_per_second` (tcp: received)
//!   or `requests_per_second` (http) — then tcp: `retransmits`; http: `requests`, `errors` (wrk's
//!   connect, read, write, timeout and status errors), `latency_p50_us`, `latency_p99_us`; then
//!   `foreign_load_before` … `kernel_drop` as for udp (`maglevd_forwarded_pps` counts a
//!   super-frame once). `summary`: one object per test, `{"unit": "bits_per_second" |
//!   "requests_per_second", "kernel": {"median", "min", "max", "runs", "flagged"}, "maglevd":
//!   {…}, "ratio_maglevd_kernel"}` (median over median). `config` has `streams` (tcp) or
//!   `connections` and `wrk_threads` (http), and `warmup` in whole seconds.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};

use super::frames::{self, Endpoints, MAX_FRAME, MIN_FRAME};
use super::json::Json;
use super::netns::{self, GEN_IF, LB_IN, LB_OUT, SINK_IF, SINK_IP, Topology, VIP};
use super::stats::{LoadMeter, LoadSample, median, percentile, sample_idle_load};
use super::{BenchError, fmt_load};
use crate::config::{self, MAX_WORKERS};
use crate::daemon::{self, Shared, worker};
use crate::dataplane::{Links, Snapshot};
use crate::io::{
    BpfProgram, KernelDrop, PacketSocket, RingVersion, RxConfig, RxRing, TxConfig, TxRing, TxStats, enter_netns,
    pin_current_thread,
};
use crate::wire::MacAddr;

pub mod app;
pub use app::{AppRun, AppSummary, AppTest};

/// Destination UDP port of the generated traffic (the service covers all ports).
const DPORT: u16 = 9;
/// Destination UDP port of the latency probes: the receiver's filter takes only these, so that
/// background traffic (`--latency-load`) costs the sink no copy into its ring.
const PROBE_DPORT: u16 = 10;
/// First source port; flow `i` uses `SPORT0 + i`.
const SPORT0: u16 = 1024;
/// Most flows (distinct source ports).
pub const MAX_FLOWS: u32 = 65535 - SPORT0 as u32 + 1;
/// Foreign share while the benchmark is idle above which the machine counts as loaded.
const PRE_FOREIGN_LIMIT: f64 = 0.15;
/// Foreign share during a run above which it counts as loaded.
const FOREIGN_LIMIT: f64 = 0.15;
/// Attempts per run when the machine is loaded.
const ATTEMPTS: u32 = 3;
/// Frames pushed per generator flush.
const GEN_BATCH: usize = 256;
/// Probes sent before the measured ones (not counted).
const WARMUP_PROBES: u32 = 10;

/// What `bench live` sends through the two forwarders.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Traffic {
    /// Small UDP frames from an in-process generator: packet rate, loss and one-way latency.
    #[default]
    Udp,
    /// Bulk TCP: iperf3 through the VIP, default offloads, replies by the return path.
    Tcp,
    /// HTTP: wrk against nginx through the VIP, keep-alive and one connection per request.
    Http,
}

impl Traffic {
    pub fn name(self) -> &'static str {
        match self {
            Traffic::Udp => "udp",
            Traffic::Tcp => "tcp",
            Traffic::Http => "http",
        }
    }
}

/// Options of `maglevd bench live`.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct LiveArgs {
    /// What to send: udp (generated frames), tcp (iperf3 bulk transfer) or http (wrk against
    /// nginx, keep-alive and a connection per request). tcp and http need iperf3, wrk and nginx.
    #[arg(long, value_enum, default_value_t = Traffic::Udp)]
    pub traffic: Traffic,
    /// Measurement window per run, in seconds (tcp, http: whole seconds).
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Warm-up before each window, in seconds (tcp, http: rounded up to whole seconds).
    #[arg(long, default_value_t = 0.5)]
    pub warmup: f64,
    /// tcp: parallel iperf3 streams.
    #[arg(long, default_value_t = 1)]
    pub streams: u32,
    /// http: wrk connections (one wrk thread).
    #[arg(long, default_value_t = 32)]
    pub connections: u32,
    /// udp: distinct flows (UDP source ports).
    #[arg(long, default_value_t = 4096)]
    pub flows: u32,
    /// udp: frame size in bytes (Ethernet header included, FCS excluded).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// maglevd forwarding threads (all pinned to --fwd-cpu, or one per CPU with --spread).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Runs per mode (medians are reported).
    #[arg(long, default_value_t = 3)]
    pub repeat: u32,
    /// udp: latency probes per mode (0 skips the latency measurement).
    #[arg(long, default_value_t = 500)]
    pub probes: u32,
    /// maglevd RX ring slots per worker (as `maglevd run --rx-slots`).
    #[arg(long, default_value_t = 512)]
    pub rx_slots: usize,
    /// maglevd TX ring slots per worker (as `maglevd run --tx-slots`).
    #[arg(long, default_value_t = 256)]
    pub tx_slots: usize,
    /// udp: generator TX ring slots: small = near loss-free rate, large = overload (docs/lab.md
    /// pitfall 5).
    #[arg(long, default_value_t = 256)]
    pub gen_slots: usize,
    /// udp: generator rate in frames per second (0: as fast as it can).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// CPU of the generator (and of the latency receiver); tcp, http: of the clients and servers.
    #[arg(long, default_value_t = 0)]
    pub gen_cpu: usize,
    /// CPU of the forwarder: maglevd's workers, or the kernel's forwarding through RPS.
    #[arg(long, default_value_t = 1)]
    pub fwd_cpu: usize,
    /// udp: scale out over every CPU: worker i on CPU i mod the CPU count (the generator shares
    /// its CPU with one of them), and the kernel forwards with RPS on every CPU; --fwd-cpu is then
    /// not used. Use with --workers equal to the CPU count.
    #[arg(long)]
    pub spread: bool,
    /// udp: background traffic while the latency probes run, as a share of the lower of the two
    /// modes' median delivered rates measured in this run (0: lone probes on an idle path; 0.5:
    /// the probes cross a forwarder at half load). The same rate for every mode.
    #[arg(long, default_value_t = 0.0)]
    pub latency_load: f64,
    /// udp: TPACKET_V3 block timeout for the V3 latency comparison (ms).
    #[arg(long, default_value_t = 1)]
    pub v3_timeout_ms: u32,
    /// Forward without connection tracking (default: each worker tracks flows as the daemon's
    /// do, with the default `[flows]` table).
    #[arg(long)]
    pub no_tracking: bool,
    /// maglevd runs without the daemon's kernel drop filter on lbin: VIP frames also go through
    /// lb's IPv4 stack after the rings' copy (default: the filter is on, as `maglevd run` puts it).
    #[arg(long)]
    pub no_kernel_drop: bool,
    /// maglevd's workers busy-poll (`daemon.busy_poll_us`): spin this many µs on the ring before
    /// sleeping in poll() (0: sleep at once, the default).
    #[arg(long, default_value_t = 0)]
    pub busy_poll_us: u64,
    /// Before each run, wait up to this many seconds for foreign CPU load to pass.
    #[arg(long, default_value_t = 30.0)]
    pub load_wait: f64,
}

impl Default for LiveArgs {
    fn default() -> Self {
        LiveArgs {
            traffic: Traffic::Udp,
            seconds: 5.0,
            warmup: 0.5,
            streams: 1,
            connections: 32,
            flows: 4096,
            size: 64,
            workers: 1,
            repeat: 3,
            probes: 500,
            rx_slots: 512,
            tx_slots: 256,
            gen_slots: 256,
            rate: 0,
            gen_cpu: 0,
            fwd_cpu: 1,
            latency_load: 0.0,
            spread: false,
            v3_timeout_ms: 1,
            no_tracking: false,
            no_kernel_drop: false,
            busy_poll_us: 0,
            load_wait: 30.0,
        }
    }
}

impl LiveArgs {
    /// Checks every option against its range and the CPUs present; all problems at once.
    pub fn validate(&self, cpus: usize) -> Result<(), BenchError> {
        let mut p = Vec::new();
        if !(self.seconds.is_finite() && (0.1..=3600.0).contains(&self.seconds)) {
            p.push("--seconds must be between 0.1 and 3600".to_string());
        }
        if !(self.warmup.is_finite() && (0.0..=60.0).contains(&self.warmup)) {
            p.push("--warmup must be between 0 and 60".into());
        }
        if self.traffic != Traffic::Udp && self.seconds.fract() != 0.0 {
            p.push(format!(
                "--seconds must be whole with --traffic {} (iperf3 and wrk count whole seconds)",
                self.traffic.name()
            ));
        }
        if !(1..=128).contains(&self.streams) {
            p.push("--streams must be between 1 and 128".into());
        }
        if !(1..=10_000).contains(&self.connections) {
            p.push("--connections must be between 1 and 10000".into());
        }
        if !(1..=MAX_FLOWS).contains(&self.flows) {
            p.push(format!("--flows must be between 1 and {MAX_FLOWS}"));
        }
        if !(MIN_FRAME..=MAX_FRAME).contains(&self.size) {
            p.push(format!("--size must be between {MIN_FRAME} and {MAX_FRAME} bytes"));
        }
        if !(1..=MAX_WORKERS).contains(&self.workers) {
            p.push(format!("--workers must be between 1 and {MAX_WORKERS}"));
        }
        if !(1..=100).contains(&self.repeat) {
            p.push("--repeat must be between 1 and 100".into());
        }
        if self.probes > 100_000 {
            p.push("--probes must be at most 100000".into());
        }
        for (name, v) in [("--rx-slots", self.rx_slots), ("--tx-slots", self.tx_slots), ("--gen-slots", self.gen_slots)]
        {
            if !(8..=65536).contains(&v) {
                p.push(format!("{name} must be between 8 and 65536"));
            }
        }
        for (name, v) in [("--gen-cpu", self.gen_cpu), ("--fwd-cpu", self.fwd_cpu)] {
            if v >= cpus {
                p.push(format!("{name} {v}: this machine has {cpus} CPU(s) (0..={})", cpus.saturating_sub(1)));
            }
        }
        if self.spread && self.traffic != Traffic::Udp {
            p.push(format!("--spread is for --traffic udp (not {})", self.traffic.name()));
        }
        if self.gen_cpu == self.fwd_cpu && !self.spread {
            p.push("--gen-cpu and --fwd-cpu must differ (generator and forwarder on one core measure something else, docs/lab.md pitfall 10)".into());
        }
        if !(self.load_wait.is_finite() && (0.0..=3600.0).contains(&self.load_wait)) {
            p.push("--load-wait must be between 0 and 3600".into());
        }
        if !(self.latency_load.is_finite() && (0.0..=0.95).contains(&self.latency_load)) {
            p.push("--latency-load must be between 0 and 0.95".into());
        }
        if !(1..=1000).contains(&self.v3_timeout_ms) {
            p.push("--v3-timeout-ms must be between 1 and 1000".into());
        }
        if p.is_empty() { Ok(()) } else { Err(BenchError::Usage(p.join("\n"))) }
    }
}

/// The two forwarders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Kernel,
    Maglevd,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Kernel => "kernel",
            Mode::Maglevd => "maglevd",
        }
    }
}

/// One throughput run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunResult {
    pub mode: Mode,
    pub run: u32,
    pub seconds: f64,
    pub offered_pps: f64,
    pub at_lb_pps: f64,
    pub delivered_pps: f64,
    /// The machine's load around the window, and what maglevd's workers reported.
    pub cond: Conditions,
    /// Generator flushes that hit EAGAIN (send buffer full).
    pub gen_eagain: u64,
    /// The generator socket's effective send buffer (bytes).
    pub gen_sndbuf: usize,
}

/// What one run (UDP frames or a real program's) went through: the machine's load around its
/// window and, for maglevd, what its workers reported.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Conditions {
    /// Foreign CPU share just before the run (the benchmark idle).
    pub pre_foreign: Option<f64>,
    /// Foreign CPU share during the window.
    pub foreign: Option<f64>,
    /// Busy share of the generator's (the endpoints') and of the forwarder's CPU in the window.
    pub cpu_busy: Option<(f64, f64)>,
    /// Share of the CPUs the hypervisor stole during the window.
    pub steal: Option<f64>,
    pub attempts: u32,
    /// Still loaded after the retries.
    pub flagged: bool,
    /// maglevd: frames (a super-frame counts once) its workers forwarded per second in the window.
    pub forwarded_pps: Option<f64>,
    /// maglevd: frames its RX rings dropped (ring full) over the whole run.
    pub rx_ring_drops: Option<u64>,
    /// maglevd with tracking: flows its workers' tables held at the end.
    pub flows_tracked: Option<u64>,
    /// maglevd: the kernel drop filter was on `lbin` during the run.
    pub kernel_drop: Option<bool>,
}

impl Conditions {
    /// Attempt `attempts` of a run, `pre_foreign` before it and `load` during its window; flagged
    /// when either is above its limit. The maglevd fields are empty ([`Conditions::maglevd`]).
    fn measured(args: &LiveArgs, attempts: u32, pre_foreign: Option<f64>, load: Option<&LoadSample>) -> Conditions {
        let foreign = load.map(|l| l.foreign);
        Conditions {
            pre_foreign,
            foreign,
            cpu_busy: load.and_then(|l| Some((*l.per_cpu.get(args.gen_cpu)?, *l.per_cpu.get(args.fwd_cpu)?))),
            steal: load.map(|l| l.steal),
            attempts,
            flagged: pre_foreign.is_some_and(|b| b > PRE_FOREIGN_LIMIT) || foreign.is_some_and(|f| f > FOREIGN_LIMIT),
            ..Conditions::default()
        }
    }

    /// With what maglevd's workers reported: their forwarding rate, what [`Workers::finish`]
    /// returned (RX ring drops, flows tracked) and whether the kernel drop filter was on.
    fn maglevd(
        self,
        forwarded_pps: Option<f64>,
        finished: Option<(u64, Option<u64>)>,
        kernel_drop: Option<bool>,
    ) -> Self {
        Conditions {
            forwarded_pps,
            rx_ring_drops: finished.map(|d| d.0),
            flows_tracked: finished.and_then(|d| d.1),
            kernel_drop,
            ..self
        }
    }

    /// The report's notes before the forwarding rate: CPU busy (`cpu0` names CPU 0's role), steal.
    fn notes_before(&self, cpu0: &str) -> Vec<String> {
        let mut notes = Vec::new();
        if let Some((g, f)) = self.cpu_busy {
            notes.push(format!("CPU busy {cpu0} {:.0}% fwd {:.0}%", g * 100.0, f * 100.0));
        }
        if let Some(st) = self.steal.filter(|st| *st >= 0.01) {
            notes.push(format!("steal {:.0}%", st * 100.0));
        }
        notes
    }

    /// The report's notes after the forwarding rate: RX ring drops, flows, the filter, retries.
    fn notes_after(&self, notes: &mut Vec<String>) {
        if let Some(d) = self.rx_ring_drops.filter(|d| *d > 0) {
            notes.push(format!("RX ring drops {d}"));
        }
        if let Some(f) = self.flows_tracked {
            notes.push(format!("{f} flows tracked"));
        }
        if self.kernel_drop == Some(false) {
            notes.push("no kernel drop".into());
        }
        if self.attempts > 1 {
            notes.push(format!("attempt {}", self.attempts));
        }
    }

    /// Its fields in a run's JSON object (module docs).
    fn json(&self, j: Json) -> Json {
        j.with("foreign_load_before", self.pre_foreign)
            .with("foreign_load", self.foreign)
            .with("gen_cpu_busy", self.cpu_busy.map(|c| c.0))
            .with("fwd_cpu_busy", self.cpu_busy.map(|c| c.1))
            .with("steal", self.steal)
            .with("attempts", self.attempts)
            .with("flagged", self.flagged)
            .with("maglevd_forwarded_pps", self.forwarded_pps)
            .with("rx_ring_drops", self.rx_ring_drops)
            .with("flows_tracked", self.flows_tracked)
            .with("kernel_drop", self.kernel_drop)
    }
}

impl RunResult {
    /// Share of the offered frames not delivered (0..=1).
    pub fn loss(&self) -> f64 {
        loss(self.offered_pps, self.delivered_pps)
    }
}

/// `1 − delivered / offered`, clamped to 0..=1 (0 when nothing was offered).
pub fn loss(offered: f64, delivered: f64) -> f64 {
    if offered <= 0.0 { 0.0 } else { (1.0 - delivered / offered).clamp(0.0, 1.0) }
}

/// Medians of one mode's runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModeSummary {
    pub offered_pps: f64,
    pub at_lb_pps: f64,
    pub delivered_pps: f64,
    pub loss: f64,
    pub runs: usize,
    pub flagged: usize,
}

/// Medians over the runs of `mode` (`None` without runs).
pub fn summarize(runs: &[RunResult], mode: Mode) -> Option<ModeSummary> {
    let r: Vec<&RunResult> = runs.iter().filter(|r| r.mode == mode).collect();
    let col = |f: &dyn Fn(&RunResult) -> f64| median(&r.iter().map(|x| f(x)).collect::<Vec<_>>());
    Some(ModeSummary {
        offered_pps: col(&|x| x.offered_pps)?,
        at_lb_pps: col(&|x| x.at_lb_pps)?,
        delivered_pps: col(&|x| x.delivered_pps)?,
        loss: col(&|x| x.loss())?,
        runs: r.len(),
        flagged: r.iter().filter(|x| x.cond.flagged).count(),
    })
}

/// Which forwarder a latency measurement went through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatencyMode {
    Kernel,
    MaglevdV2,
    MaglevdV3 { timeout_ms: u32 },
}

impl LatencyMode {
    pub fn label(self) -> String {
        match self {
            LatencyMode::Kernel => "kernel".into(),
            LatencyMode::MaglevdV2 => "maglevd (RX TPACKET_V2, default)".into(),
            LatencyMode::MaglevdV3 { timeout_ms } => format!("maglevd (RX TPACKET_V3, block timeout {timeout_ms} ms)"),
        }
    }
    pub fn key(self) -> &'static str {
        match self {
            LatencyMode::Kernel => "kernel",
            LatencyMode::MaglevdV2 => "maglevd_v2",
            LatencyMode::MaglevdV3 { .. } => "maglevd_v3",
        }
    }
}

/// One-way latency of one mode, in microseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyResult {
    pub mode: LatencyMode,
    pub sent: u32,
    pub received: u32,
    pub median_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub min_us: Option<f64>,
    pub max_us: Option<f64>,
    /// Foreign CPU share while the probes ran.
    pub foreign: Option<f64>,
}

impl LatencyResult {
    /// Statistics over the one-way delays (ns) of the probes received.
    pub fn from_samples(mode: LatencyMode, sent: u32, delays_ns: &[f64]) -> LatencyResult {
        let us: Vec<f64> = delays_ns.iter().map(|d| d / 1e3).collect();
        LatencyResult {
            mode,
            sent,
            received: us.len() as u32,
            median_us: median(&us),
            p99_us: percentile(&us, 99.0),
            min_us: super::stats::min(&us),
            max_us: super::stats::max(&us),
            foreign: None,
        }
    }
}

/// The whole report.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveReport {
    pub args: LiveArgs,
    pub placement: Vec<String>,
    pub gen_sndbuf: usize,
    /// udp: the throughput runs.
    pub runs: Vec<RunResult>,
    /// udp: the latency measurements.
    pub latency: Vec<LatencyResult>,
    /// udp: the background rate (frames/s) during the latency probes (`--latency-load`); 0: none.
    pub latency_background_pps: u64,
    /// tcp, http: the runs of the real programs.
    pub app_runs: Vec<app::AppRun>,
}

impl LiveReport {
    /// Median delivered pps, maglevd over kernel.
    pub fn ratio(&self) -> Option<f64> {
        let k = summarize(&self.runs, Mode::Kernel)?;
        let m = summarize(&self.runs, Mode::Maglevd)?;
        (k.delivered_pps > 0.0).then(|| m.delivered_pps / k.delivered_pps)
    }

    /// 99th percentile one-way latency of `mode` minus the kernel's, µs.
    pub fn added_p99_us(&self, mode: LatencyMode) -> Option<f64> {
        let get = |m: LatencyMode| self.latency.iter().find(|l| l.mode == m).and_then(|l| l.p99_us);
        Some(get(mode)? - get(LatencyMode::Kernel)?)
    }

    /// Median one-way latency of `mode` minus the kernel's, µs.
    pub fn added_latency_us(&self, mode: LatencyMode) -> Option<f64> {
        let get = |m: LatencyMode| self.latency.iter().find(|l| l.mode == m).and_then(|l| l.median_us);
        Some(get(mode)? - get(LatencyMode::Kernel)?)
    }
}

// ---------------------------------------------------------------------------------------------
// Interrupts

/// SIGINT/SIGTERM set this; every wait checks it so the namespaces are always removed. A second
/// signal exits at once.
fn install_interrupt_flag() -> Result<Arc<AtomicBool>, BenchError> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 130, Arc::clone(&flag))
            .and_then(|_| signal_hook::flag::register(sig, Arc::clone(&flag)))
            .map_err(|e| BenchError::Setup(format!("installing signal handlers: {e}")))?;
    }
    Ok(flag)
}

/// Sleeps `d`, returning `Err(Interrupted)` early if the flag is set.
fn sleep_checked(d: Duration, intr: &AtomicBool) -> Result<(), BenchError> {
    let end = Instant::now() + d;
    loop {
        if intr.load(Ordering::Relaxed) {
            return Err(BenchError::Interrupted);
        }
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(20)));
    }
}

/// Samples the machine (300 ms steps) until the foreign share is at most [`PRE_FOREIGN_LIMIT`]
/// or `max_wait` has passed; returns the last sample's foreign share.
fn wait_quiet(max_wait: f64, what: &str, intr: &AtomicBool) -> Result<Option<f64>, BenchError> {
    let start = Instant::now();
    let mut told = false;
    loop {
        if intr.load(Ordering::Relaxed) {
            return Err(BenchError::Interrupted);
        }
        let f = sample_idle_load(Duration::from_millis(300)).map(|l| l.foreign);
        if f.is_none_or(|f| f <= PRE_FOREIGN_LIMIT) || start.elapsed().as_secs_f64() >= max_wait {
            return Ok(f);
        }
        if !told {
            eprintln!(
                "bench live: foreign CPU load {} before {what}; waiting up to {max_wait} s for it to pass",
                fmt_load(f)
            );
            told = true;
        }
    }
}

// ---------------------------------------------------------------------------------------------
/// The probe receiver's socket filter: IPv4 UDP to the VIP's [`PROBE_DPORT`] (the generated
/// frames have no IP options), nothing else.
fn probe_filter() -> Result<BpfProgram, crate::io::bpf::BpfError> {
    use crate::io::bpf::{ACCEPT, DROP, Insn, OP_JEQ_K, OP_LD_B_ABS, OP_LD_H_ABS, OP_LD_W_ABS, OP_RET_K};
    let i = |code, jt, jf, k| Insn { code, jt, jf, k };
    BpfProgram::from_insns(vec![
        i(OP_LD_H_ABS, 0, 0, 12),
        i(OP_JEQ_K, 0, 7, 0x0800),
        i(OP_LD_W_ABS, 0, 0, 30),
        i(OP_JEQ_K, 0, 5, u32::from(VIP)),
        i(OP_LD_B_ABS, 0, 0, 23),
        i(OP_JEQ_K, 0, 3, 17),
        i(OP_LD_H_ABS, 0, 0, 36),
        i(OP_JEQ_K, 0, 1, u32::from(PROBE_DPORT)),
        i(OP_RET_K, 0, 0, ACCEPT),
        i(OP_RET_K, 0, 0, DROP),
    ])
}

/// The CPUs that forward: --fwd-cpu, or with --spread every CPU this process may run on (as
/// `bench forward --scale` places its workers; all CPUs if the affinity cannot be read).
fn fwd_cpus(args: &LiveArgs) -> Vec<usize> {
    if !args.spread {
        return vec![args.fwd_cpu];
    }
    crate::io::allowed_cpus()
        .unwrap_or_else(|_| (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect())
}

/// [`fwd_cpus`] as an RPS mask (CPUs from 64 on do not fit and are left out).
fn fwd_mask(args: &LiveArgs) -> u64 {
    fwd_cpus(args).iter().filter(|&&c| c < 64).fold(0, |m, &c| m | 1 << c)
}

/// Nanoseconds since the Unix epoch on `CLOCK_REALTIME`, the clock of the rings' timestamps.
fn realtime_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

// Threads

/// Waits for a thread's "ready" message (rings open) or its error.
fn await_ready(rx: &mpsc::Receiver<Result<usize, String>>, what: &str) -> Result<usize, BenchError> {
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(BenchError::Setup(format!("{what}: {e}"))),
        Err(_) => Err(BenchError::Setup(format!("{what}: did not start"))),
    }
}

/// The generator thread (see the module docs).
struct Generator {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    handle: JoinHandle<Result<TxStats, String>>,
    sndbuf: usize,
}

impl Generator {
    fn start(topo: &Topology, frames: Arc<Vec<Vec<u8>>>, args: &LiveArgs) -> Result<Generator, BenchError> {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready_rx) = mpsc::channel();
        let (path, cpu, slots, rate) = (topo.ns_path("gen"), args.gen_cpu, args.gen_slots, args.rate);
        let (s, n) = (Arc::clone(&stop), Arc::clone(&sent));
        let handle = std::thread::Builder::new()
            .name("bench-gen".into())
            .spawn(move || -> Result<TxStats, String> {
                let setup = || -> Result<TxRing, String> {
                    enter_netns(&path).map_err(|e| format!("setns: {e}"))?;
                    pin_current_thread(cpu).map_err(|e| format!("pinning to CPU {cpu}: {e}"))?;
                    let cfg = TxConfig { frame_size: 2048, frame_count: slots, ..TxConfig::default() };
                    TxRing::open(GEN_IF, &cfg).map_err(|e| e.to_string())
                };
                let mut tx = match setup() {
                    Ok(tx) => {
                        let _ = ready_tx.send(Ok(tx.sndbuf()));
                        tx
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.clone()));
                        return Err(e);
                    }
                };
                generate(&mut tx, &frames, rate, &s, &n);
                Ok(tx.stats())
            })
            .map_err(|e| BenchError::Setup(format!("spawning the generator: {e}")))?;
        let sndbuf = await_ready(&ready_rx, "generator")?;
        Ok(Generator { stop, sent, handle, sndbuf })
    }

    fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    fn finish(self) -> Result<TxStats, BenchError> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .join()
            .map_err(|_| BenchError::Setup("the generator panicked".into()))?
            .map_err(|e| BenchError::Setup(format!("generator: {e}")))
    }
}

/// Pushes the frames round-robin into the TX ring and flushes each batch with one `send()`,
/// paced to `rate` frames per second when it is non-zero. `sent` follows the frames the kernel
/// took.
fn generate(tx: &mut TxRing, frames: &[Vec<u8>], rate: u64, stop: &AtomicBool, sent: &AtomicU64) {
    let start = Instant::now();
    let mut next = 0usize;
    let mut total = 0u64;
    let batch = if rate == 0 { GEN_BATCH } else { ((rate / 10_000) as usize).clamp(1, GEN_BATCH) };
    while !stop.load(Ordering::Relaxed) {
        let mut want = batch;
        if rate > 0 {
            let allowed = (start.elapsed().as_secs_f64() * rate as f64) as u64;
            let budget = allowed.saturating_sub(total + tx.queued() as u64);
            if budget == 0 {
                std::hint::spin_loop();
                continue;
            }
            want = want.min(budget as usize);
        }
        let mut pushed = 0;
        while pushed < want {
            if tx.push(None, &frames[next]).is_err() {
                break;
            }
            next += 1;
            if next == frames.len() {
                next = 0;
            }
            pushed += 1;
        }
        let o = tx.flush();
        total += u64::from(o.frames);
        sent.store(total, Ordering::Relaxed);
        if o.frames == 0 {
            // Send buffer full (EAGAIN): the receiver side has not freed our frames yet.
            std::thread::yield_now();
        }
    }
}

/// Final statistics of one worker.
#[derive(Debug, Clone, Copy, Default)]
struct WorkerReport {
    rx_drops: u64,
}

/// maglevd's workers in `lb`.
struct Workers {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<Result<WorkerReport, String>>>,
    /// The kernel drop filter on `lbin` (removed when the workers stop).
    kernel_drop: Option<KernelDrop>,
}

impl Workers {
    fn start(topo: &Topology, snap: &Snapshot, args: &LiveArgs, version: RingVersion) -> Result<Workers, BenchError> {
        let shared = Arc::new(Shared::new(snap.clone(), args.workers, Arc::new(AtomicBool::new(false))));
        shared.busy_poll_us.store(args.busy_poll_us, Ordering::Relaxed);
        // The daemon's own ring configuration; only the RX ring version may differ (V3 run).
        let (rx_cfg, tx_cfg) = daemon::worker_rings(&[VIP], daemon::fanout_group(), args.rx_slots, args.tx_slots)?;
        let rx_cfg = RxConfig { version, ..rx_cfg };
        let mut w = Workers { shared, handles: Vec::new(), kernel_drop: None };
        if !args.no_kernel_drop {
            // The daemon's own call, from a thread in `lb` (the filter's socket acts there).
            let (path, shared) = (topo.ns_path("lb"), Arc::clone(&w.shared));
            let installed = std::thread::Builder::new()
                .name("bench-tc".into())
                .spawn(move || -> Result<Option<KernelDrop>, String> {
                    enter_netns(&path).map_err(|e| format!("setns: {e}"))?;
                    Ok(daemon::install_kernel_drop(LB_IN, &[VIP], &shared))
                })
                .map_err(|e| BenchError::Setup(format!("spawning the tc thread: {e}")))?
                .join()
                .map_err(|_| BenchError::Setup("the tc thread panicked".into()))?
                .map_err(BenchError::Setup)?;
            w.kernel_drop = Some(installed.ok_or_else(|| {
                BenchError::Setup("the kernel drop filter could not be installed on lbin (see the warning)".into())
            })?);
        }
        let cpus = fwd_cpus(args);
        for i in 0..args.workers {
            let (rx_cfg, tx_cfg) = (rx_cfg.clone(), tx_cfg.clone());
            let cpu = cpus[i % cpus.len()];
            let (path, shared) = (topo.ns_path("lb"), Arc::clone(&w.shared));
            let (tracking, workers) = (!args.no_tracking, args.workers);
            let (ready_tx, ready_rx) = mpsc::channel();
            let h = std::thread::Builder::new()
                .name(format!("bench-w{i}"))
                .spawn(move || -> Result<WorkerReport, String> {
                    let setup = || -> Result<(RxRing, TxRing, PacketSocket), String> {
                        enter_netns(&path).map_err(|e| format!("setns: {e}"))?;
                        pin_current_thread(cpu).map_err(|e| format!("pinning to CPU {cpu}: {e}"))?;
                        let rx = RxRing::open(LB_IN, &rx_cfg).map_err(|e| e.to_string())?;
                        let tx = TxRing::open(LB_OUT, &tx_cfg).map_err(|e| e.to_string())?;
                        let icmp = PacketSocket::sender(LB_IN).map_err(|e| e.to_string())?;
                        Ok((rx, tx, icmp))
                    };
                    let (mut rx, mut tx, mut icmp) = match setup() {
                        Ok(r) => {
                            let _ = ready_tx.send(Ok(0));
                            r
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.clone()));
                            return Err(e);
                        }
                    };
                    let Some(counters) = shared.counters.worker(i) else {
                        return Err(format!("no counters for worker {i}"));
                    };
                    let mut w = worker::Worker::new(&mut rx, &mut tx, &mut icmp, counters, Instant::now());
                    if tracking {
                        let tracker = daemon::worker_tracker(&config::Flows::default(), workers);
                        counters.flows.publish(&tracker);
                        w = w.tracking(tracker);
                    }
                    w.run(&shared);
                    let stats = rx.stats().map_err(|e| e.to_string())?;
                    Ok(WorkerReport { rx_drops: stats.drops })
                })
                .map_err(|e| BenchError::Setup(format!("spawning worker {i}: {e}")))?;
            w.handles.push(h);
            await_ready(&ready_rx, &format!("maglevd worker {i}"))?;
        }
        Ok(w)
    }

    fn forwarded(&self) -> u64 {
        self.shared.counters.totals().forwarded
    }

    fn kernel_drop(&self) -> bool {
        self.shared.kernel_drop.load(Ordering::Relaxed)
    }

    /// Stops the workers: the frames their RX rings dropped, and with tracking the flows their
    /// tables held.
    fn finish(mut self) -> Result<(u64, Option<u64>), BenchError> {
        let figures = self.shared.counters.flow_figures();
        let tracked = (figures.total("maglevd_flow_capacity") > 0).then(|| figures.total("maglevd_flow_entries"));
        self.shared.stop.store(true, Ordering::Relaxed);
        let mut drops = 0;
        let mut err = None;
        for h in std::mem::take(&mut self.handles) {
            match h.join() {
                Ok(Ok(r)) => drops += r.rx_drops,
                Ok(Err(e)) => err = Some(BenchError::Setup(format!("maglevd worker: {e}"))),
                Err(_) => err = Some(BenchError::Setup("a maglevd worker panicked".into())),
            }
        }
        if let Some(k) = self.kernel_drop.take() {
            daemon::remove_kernel_drop(k, &self.shared);
        }
        err.map_or(Ok((drops, tracked)), Err)
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        // On an early return: stop and join the workers before the namespaces go away.
        self.shared.stop.store(true, Ordering::Relaxed);
        for h in std::mem::take(&mut self.handles) {
            let _ = h.join();
        }
        // Dropping it removes the filter: the kernel runs must see every VIP frame.
        self.kernel_drop.take();
    }
}

// ---------------------------------------------------------------------------------------------
// The benchmark

struct Lab {
    topo: Topology,
    snap: Snapshot,
    sink_mac: [u8; 6],
    frames: Arc<Vec<Vec<u8>>>,
    probe_template: Vec<u8>,
    rps: bool,
}

impl Lab {
    fn setup(args: &LiveArgs) -> Result<Lab, BenchError> {
        let topo = match args.traffic {
            Traffic::Udp => Topology::create()?,
            Traffic::Tcp | Traffic::Http => Topology::create_with_return()?,
        };
        let gen_mac = topo.mac("gen", GEN_IF)?;
        let lbin_mac = topo.mac("lb", LB_IN)?;
        let lbout_mac = topo.mac("lb", LB_OUT)?;
        let sink_mac = topo.mac("sink", SINK_IF)?;
        // UDP: all ports; TCP and HTTP: the server's port, as a real service is configured.
        let (protocol, port) = match args.traffic {
            Traffic::Udp => ("udp", "\"all\"".to_string()),
            Traffic::Tcp => ("tcp", app::IPERF_PORT.to_string()),
            Traffic::Http => ("tcp", app::HTTP_PORT.to_string()),
        };
        let cfg_text = format!(
            "[interfaces]\ningress = \"{LB_IN}\"\negress = \"{LB_OUT}\"\n[daemon]\nmetrics = \"\"\n\
             [[service]]\nname = \"bench\"\nvip = \"{VIP}\"\nprotocol = \"{protocol}\"\nport = {port}\ntable_size = 65537\n\
             [[service.backend]]\nip = \"{SINK_IP}\"\nmac = \"{}\"\n",
            MacAddr(sink_mac)
        );
        let cfg = config::parse(&cfg_text, Path::new("<bench live>")).map_err(|e| BenchError::Setup(e.to_string()))?;
        let links = Links { ingress_mac: MacAddr(lbin_mac), egress_mac: MacAddr(lbout_mac) };
        let snap = Snapshot::build(&cfg, links, &|_| None, 1).map_err(|e| BenchError::Setup(e.to_string()))?;
        let ep = Endpoints { src_mac: gen_mac, dst_mac: lbin_mac, src: netns::GEN_IP, dst: VIP };
        let frames: Vec<Vec<u8>> =
            (0..args.flows).map(|i| frames::udp(&ep, SPORT0 + i as u16, DPORT, args.size)).collect();
        let probe_template = frames::udp(&ep, SPORT0, PROBE_DPORT, args.size);
        let mut lab = Lab { topo, snap, sink_mac, frames: Arc::new(frames), probe_template, rps: false };
        // Is RPS available (CONFIG_RPS) on lbin? Probe once; the kernel mode needs it.
        lab.rps = lab.set_rps(1 << args.fwd_cpu).is_ok();
        lab.set_rps(0).ok();
        Ok(lab)
    }

    fn set_rps(&self, mask: u64) -> Result<(), String> {
        self.topo.sh("lb", &format!("echo {mask:x} > /sys/class/net/{LB_IN}/queues/rx-0/rps_cpus")).map(|_| ())
    }

    /// Puts `lb` in `mode` and refreshes the neighbour entry for the sink.
    fn configure(&self, mode: Mode, args: &LiveArgs) -> Result<(), BenchError> {
        let e = BenchError::Setup;
        let t = &self.topo;
        t.ip(
            "lb",
            &[
                "neigh",
                "replace",
                &SINK_IP.to_string(),
                "lladdr",
                &MacAddr(self.sink_mac).to_string(),
                "dev",
                LB_OUT,
                "nud",
                "permanent",
            ],
        )
        .map_err(e)?;
        match mode {
            Mode::Kernel => {
                t.sysctl("lb", "net.ipv4.ip_forward", "1").map_err(e)?;
                t.ip("lb", &["route", "replace", &format!("{VIP}/32"), "via", &SINK_IP.to_string(), "dev", LB_OUT])
                    .map_err(e)?;
                if self.rps {
                    self.set_rps(fwd_mask(args)).map_err(e)?;
                }
            }
            Mode::Maglevd => {
                t.sysctl("lb", "net.ipv4.ip_forward", "0").map_err(e)?;
                let _ = t.ip("lb", &["route", "del", &format!("{VIP}/32")]);
                if self.rps {
                    // tcp, http: lbin's receive (the rings' copy) on the forwarder's CPU too, so
                    // that the endpoints' CPU does the same work in both modes (module docs).
                    let mask = if args.traffic == Traffic::Udp { 0 } else { 1 << args.fwd_cpu };
                    self.set_rps(mask).map_err(e)?;
                }
            }
        }
        Ok(())
    }

    /// One throughput run of `mode` (retried under foreign load).
    fn run_once(&self, mode: Mode, run: u32, args: &LiveArgs, intr: &AtomicBool) -> Result<RunResult, BenchError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let r = self.attempt(mode, run, attempt, args, intr)?;
            if !r.cond.flagged || attempt >= ATTEMPTS {
                return Ok(r);
            }
            eprintln!(
                "bench live: {} run {run} taken under foreign load ({} before, {} during); repeating",
                mode.name(),
                fmt_load(r.cond.pre_foreign),
                fmt_load(r.cond.foreign)
            );
            sleep_checked(Duration::from_secs(2), intr)?;
        }
    }

    fn attempt(
        &self,
        mode: Mode,
        run: u32,
        attempt: u32,
        args: &LiveArgs,
        intr: &AtomicBool,
    ) -> Result<RunResult, BenchError> {
        self.configure(mode, args)?;
        let workers = match mode {
            Mode::Maglevd => Some(Workers::start(&self.topo, &self.snap, args, RingVersion::V2)?),
            Mode::Kernel => None,
        };
        let pre_foreign = wait_quiet(args.load_wait, &format!("{} run {run}", mode.name()), intr)?;
        let generator = Generator::start(&self.topo, Arc::clone(&self.frames), args)?;
        let result = (|| {
            sleep_checked(Duration::from_secs_f64(args.warmup), intr)?;
            let read = || -> Result<(Instant, u64, u64, u64, u64), BenchError> {
                let sent = generator.sent();
                let fwd = workers.as_ref().map_or(0, Workers::forwarded);
                let lb = self.topo.counters("lb", LB_IN)?.0;
                let sink = self.topo.counters("sink", SINK_IF)?.0;
                Ok((Instant::now(), sent, fwd, lb, sink))
            };
            let load = LoadMeter::start();
            let a = read()?;
            sleep_checked(Duration::from_secs_f64(args.seconds), intr)?;
            let b = read()?;
            Ok::<_, BenchError>((a, b, load.finish()))
        })();
        let gen_sndbuf = generator.sndbuf;
        let gen_stats = generator.finish();
        let kernel_drop = workers.as_ref().map(Workers::kernel_drop);
        let drops = match workers {
            Some(w) => Some(w.finish()?),
            None => None,
        };
        let (a, b, load) = result?;
        let gen_stats = gen_stats?;
        let dt = b.0.duration_since(a.0).as_secs_f64();
        let pps = |x: u64, y: u64| y.saturating_sub(x) as f64 / dt;
        let forwarded_pps = (mode == Mode::Maglevd).then(|| pps(a.2, b.2));
        Ok(RunResult {
            mode,
            run,
            seconds: dt,
            offered_pps: pps(a.1, b.1),
            at_lb_pps: pps(a.3, b.3),
            delivered_pps: pps(a.4, b.4),
            cond: Conditions::measured(args, attempt, pre_foreign, load.as_ref()).maglevd(
                forwarded_pps,
                drops,
                kernel_drop,
            ),
            gen_eagain: gen_stats.eagain,
            gen_sndbuf,
        })
    }

    /// The one-way latency of probes through `mode`, alone or over `background` frames/s of the
    /// generator's traffic.
    fn latency(
        &self,
        mode: LatencyMode,
        args: &LiveArgs,
        background: u64,
        intr: &AtomicBool,
    ) -> Result<LatencyResult, BenchError> {
        let (fwd_mode, version) = match mode {
            LatencyMode::Kernel => (Mode::Kernel, None),
            LatencyMode::MaglevdV2 => (Mode::Maglevd, Some(RingVersion::V2)),
            LatencyMode::MaglevdV3 { timeout_ms } => {
                (Mode::Maglevd, Some(RingVersion::V3 { block_timeout_ms: timeout_ms }))
            }
        };
        self.configure(fwd_mode, args)?;
        wait_quiet(args.load_wait, &format!("the {} latency probes", mode.key()), intr)?;
        let workers = match version {
            Some(v) => Some(Workers::start(&self.topo, &self.snap, args, v)?),
            None => None,
        };
        // Receiver in the sink: a V2 ring filtered to the VIP, collecting (seq, delay). The delay
        // is the kernel's receive timestamp of the probe in the sink's ring minus its send time,
        // both on the realtime clock: what the receiving thread's own wake-up adds is not counted.
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let (path, cpu, s) = (self.topo.ns_path("sink"), args.gen_cpu, Arc::clone(&stop));
        let receiver = std::thread::Builder::new()
            .name("bench-probe-rx".into())
            .spawn(move || -> Result<Vec<(u32, f64)>, String> {
                let setup = || -> Result<RxRing, String> {
                    enter_netns(&path).map_err(|e| format!("setns: {e}"))?;
                    pin_current_thread(cpu).map_err(|e| format!("pinning to CPU {cpu}: {e}"))?;
                    let filter = probe_filter().map_err(|e| e.to_string())?;
                    let cfg = RxConfig { frame_count: 256, filter: Some(filter), ..RxConfig::default() };
                    RxRing::open(SINK_IF, &cfg).map_err(|e| e.to_string())
                };
                let mut rx = match setup() {
                    Ok(r) => {
                        let _ = ready_tx.send(Ok(0));
                        r
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.clone()));
                        return Err(e);
                    }
                };
                let mut got = Vec::new();
                while !s.load(Ordering::Relaxed) {
                    let n = rx.recv_batch(64, |f| {
                        let now = if f.stamp_ns != 0 { f.stamp_ns } else { realtime_ns() };
                        if let Some((seq, sent)) = frames::read_probe(f.data) {
                            got.push((seq, now.saturating_sub(sent) as f64));
                        }
                    });
                    if n == 0 {
                        let _ = rx.wait(Duration::from_millis(5));
                    }
                }
                Ok(got)
            })
            .map_err(|e| BenchError::Setup(format!("spawning the probe receiver: {e}")))?;
        let load = LoadMeter::start();
        let mut generator = None;
        let result = (|| {
            await_ready(&ready_rx, "probe receiver")?;
            if background > 0 {
                let bg = LiveArgs { rate: background, ..args.clone() };
                generator = Some(Generator::start(&self.topo, Arc::clone(&self.frames), &bg)?);
                sleep_checked(Duration::from_secs_f64(args.warmup), intr)?;
            }
            self.send_probes(args, intr)
        })();
        let foreign = load.finish().map(|l| l.foreign);
        let generated = generator.map(Generator::finish);
        stop.store(true, Ordering::Relaxed);
        let got = receiver.join().map_err(|_| BenchError::Setup("the probe receiver panicked".into()))?;
        if let Some(w) = workers {
            w.finish()?;
        }
        result?;
        if let Some(g) = generated {
            g?;
        }
        let got = got.map_err(|e| BenchError::Setup(format!("probe receiver: {e}")))?;
        let mut seen = std::collections::HashSet::new();
        let delays: Vec<f64> =
            got.into_iter().filter(|(seq, _)| *seq < args.probes && seen.insert(*seq)).map(|(_, d)| d).collect();
        Ok(LatencyResult { foreign, ..LatencyResult::from_samples(mode, args.probes, &delays) })
    }

    /// Sends the warm-up and measured probes from `gen`, 1 ms apart, then waits for stragglers.
    fn send_probes(&self, args: &LiveArgs, intr: &AtomicBool) -> Result<(), BenchError> {
        let (path, cpu, template, probes, flows) =
            (self.topo.ns_path("gen"), args.gen_cpu, self.probe_template.clone(), args.probes, args.flows);
        let intr_seen = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&intr_seen);
        let h = std::thread::Builder::new()
            .name("bench-probe-tx".into())
            .spawn(move || -> Result<(), String> {
                enter_netns(&path).map_err(|e| format!("setns: {e}"))?;
                pin_current_thread(cpu).map_err(|e| format!("pinning to CPU {cpu}: {e}"))?;
                let cfg = TxConfig { frame_size: 2048, frame_count: 16, ..TxConfig::default() };
                let mut tx = TxRing::open(GEN_IF, &cfg).map_err(|e| e.to_string())?;
                let mut frame = template;
                let start = Instant::now();
                for i in 0..WARMUP_PROBES + probes {
                    if flag.load(Ordering::Relaxed) {
                        break;
                    }
                    // Warm-up probes carry sequence numbers past the measured range.
                    let seq = if i < WARMUP_PROBES { u32::MAX - i } else { i - WARMUP_PROBES };
                    let sport = SPORT0 + (i % flows) as u16;
                    frame[34..36].copy_from_slice(&sport.to_be_bytes());
                    frames::write_probe(&mut frame, seq, realtime_ns());
                    tx.push(None, &frame).map_err(|e| e.to_string())?;
                    tx.flush();
                    let next = start + Duration::from_millis(u64::from(i) + 1);
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                }
                Ok(())
            })
            .map_err(|e| BenchError::Setup(format!("spawning the probe sender: {e}")))?;
        while !h.is_finished() {
            if intr.load(Ordering::Relaxed) {
                intr_seen.store(true, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        h.join()
            .map_err(|_| BenchError::Setup("the probe sender panicked".into()))?
            .map_err(|e| BenchError::Setup(format!("probe sender: {e}")))?;
        if intr.load(Ordering::Relaxed) {
            return Err(BenchError::Interrupted);
        }
        // Let the last probe through (a V3 block retires after its timeout).
        sleep_checked(Duration::from_millis(50 + 2 * u64::from(args.v3_timeout_ms)), intr)
    }
}

fn placement(args: &LiveArgs, rps: bool) -> Vec<String> {
    let g = args.gen_cpu;
    if args.spread {
        let cpus = fwd_cpus(args);
        let n = cpus.len();
        let workers: Vec<String> = (0..args.workers).map(|i| format!("w{i} on CPU {}", cpus[i % n])).collect();
        return vec![
            format!(
                "generator: one thread in gen pinned to CPU {g} (TX ring {} slots), sharing it with the forwarders \
                 (--spread)",
                args.gen_slots
            ),
            if rps {
                format!("kernel:  lb forwards in softirq on all {n} CPUs (RPS on {LB_IN}, mask {:x})", fwd_mask(args))
            } else {
                format!("kernel:  RPS unavailable on this kernel: lb forwards on the generator's CPU {g} only")
            },
            format!(
                "maglevd: {} worker(s), {} (fanout hash over their RX rings); {LB_IN}'s receive runs on CPU {g} \
                 with the generator, no RPS",
                args.workers,
                workers.join(", ")
            ),
        ];
    }
    let f = args.fwd_cpu;
    vec![
        format!(
            "generator: one thread in gen pinned to CPU {g} (TX ring {} slots, qdisc bypass, SO_SNDBUFFORCE); \
             the latency receiver in sink also runs on CPU {g}",
            args.gen_slots
        ),
        if rps {
            format!(
                "kernel:  lb forwards in softirq on CPU {f} (RPS on {LB_IN} -> CPU {f}); the sink's receive \
                 runs there too"
            )
        } else {
            format!(
                "kernel:  RPS unavailable on this kernel: lb forwards in softirq on the generator's CPU {g} \
                 (NOT on CPU {f})"
            )
        },
        format!(
            "maglevd: {} worker(s) pinned to CPU {f} (RX TPACKET_V2 {} slots, fanout hash, VIP filter, vnet hdr; \
             TX {} slots, qdisc bypass); {LB_IN}'s receive softirq ({}) \
             runs on CPU {g} with the generator, no RPS; the sink's receive runs on CPU {f}",
            args.workers,
            args.rx_slots,
            args.tx_slots,
            if args.no_kernel_drop {
                "AF_PACKET tap, then IP stack drop: ip_forward=0"
            } else {
                "AF_PACKET tap, then the tc kernel drop filter"
            }
        ),
    ]
}

/// Runs the live benchmark (see the module docs).
pub fn measure(args: &LiveArgs) -> Result<LiveReport, BenchError> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    args.validate(cpus)?;
    netns::preflight()?;
    if args.traffic != Traffic::Udp {
        app::preflight(args.traffic)?;
    }
    let intr = install_interrupt_flag()?;
    let lab = Lab::setup(args)?;
    if args.traffic != Traffic::Udp {
        let app_runs = app::measure(&lab, args, &intr)?;
        let placement = app::placement(args, lab.rps);
        drop(lab);
        return Ok(LiveReport {
            args: args.clone(),
            placement,
            gen_sndbuf: 0,
            runs: Vec::new(),
            latency: Vec::new(),
            latency_background_pps: 0,
            app_runs,
        });
    }
    let mut runs = Vec::new();
    for run in 1..=args.repeat {
        for mode in [Mode::Kernel, Mode::Maglevd] {
            let r = lab.run_once(mode, run, args, &intr)?;
            eprintln!(
                "bench live: {:<7} run {run}: offered {:>9.0} pps, delivered {:>9.0} pps, loss {:>5.1}%{}",
                mode.name(),
                r.offered_pps,
                r.delivered_pps,
                r.loss() * 100.0,
                if r.cond.flagged { " (foreign load)" } else { "" }
            );
            runs.push(r);
        }
    }
    let mut latency = Vec::new();
    // The same background rate for every mode: a share of the slower forwarder's median.
    let background = match (summarize(&runs, Mode::Kernel), summarize(&runs, Mode::Maglevd)) {
        (Some(k), Some(m)) if args.latency_load > 0.0 => {
            (args.latency_load * k.delivered_pps.min(m.delivered_pps)).round() as u64
        }
        _ => 0,
    };
    if args.probes > 0 {
        if background > 0 {
            eprintln!("bench live: latency probes over {background} frames/s of background traffic");
        }
        for mode in
            [LatencyMode::Kernel, LatencyMode::MaglevdV2, LatencyMode::MaglevdV3 { timeout_ms: args.v3_timeout_ms }]
        {
            let l = lab.latency(mode, args, background, &intr)?;
            eprintln!(
                "bench live: latency {:<40} {}/{} probes, median {}",
                mode.label(),
                l.received,
                l.sent,
                fmt_us(l.median_us)
            );
            latency.push(l);
        }
    }
    let placement = placement(args, lab.rps);
    drop(lab);
    let gen_sndbuf = runs.first().map_or(0, |r| r.gen_sndbuf);
    Ok(LiveReport {
        args: args.clone(),
        placement,
        gen_sndbuf,
        runs,
        latency,
        latency_background_pps: if args.probes > 0 { background } else { 0 },
        app_runs: Vec::new(),
    })
}

fn fmt_us(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".into(), |v| format!("{v:.1} µs"))
}

fn fmt_pps(v: f64) -> String {
    if v >= 1e6 { format!("{:.3} Mpps", v / 1e6) } else { format!("{:.1} kpps", v / 1e3) }
}

/// Text report.
pub fn render(r: &LiveReport) -> String {
    if r.args.traffic != Traffic::Udp {
        return app::render(r);
    }
    let a = &r.args;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "live forwarding: gen --veth-- lb --veth-- sink, {}-byte UDP to {VIP} from {} flows, {} s windows after {} s warm-up, {} run(s) per mode{}",
        a.size,
        a.flows,
        a.seconds,
        a.warmup,
        a.repeat,
        if a.rate > 0 { format!(", offered at {} pps", a.rate) } else { String::new() }
    );
    let _ = writeln!(
        s,
        "maglevd: {} worker(s), {}",
        a.workers,
        if a.no_tracking { "no connection tracking" } else { "connection tracking on (default [flows] table)" }
    );
    let _ = writeln!(
        s,
        "maglevd: {}",
        if a.no_kernel_drop {
            "no kernel drop filter: VIP frames also go through lb's IPv4 stack (--no-kernel-drop)"
        } else {
            "kernel drop filter on lbin (tc ingress, as maglevd run): VIP frames end after the rings' copy"
        }
    );
    if a.busy_poll_us > 0 {
        let _ = writeln!(s, "maglevd: busy polling, {} µs per idle spin (--busy-poll-us)", a.busy_poll_us);
    }
    if a.spread {
        let _ = writeln!(s, "placement (--spread: the forwarders on every CPU, the generator sharing one):");
    } else {
        let _ = writeln!(s, "placement (2 cores: generator and forwarder apart, docs/lab.md pitfall 10):");
    }
    for p in &r.placement {
        let _ = writeln!(s, "  {p}");
    }
    let _ = writeln!(s, "  generator send buffer: {} KiB", r.gen_sndbuf >> 10);
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{:<8} {:>3} {:>13} {:>13} {:>13} {:>7} {:>9} {:>9}  notes",
        "mode", "run", "offered pps", "at lb pps", "delivered pps", "loss %", "load pre", "load run"
    );
    for x in &r.runs {
        let mut notes = x.cond.notes_before("gen");
        if let Some(f) = x.cond.forwarded_pps {
            notes.push(format!("maglevd forwarded {f:.0} pps"));
        }
        if x.gen_eagain > 0 {
            notes.push(format!("gen EAGAIN {}", x.gen_eagain));
        }
        x.cond.notes_after(&mut notes);
        let _ = writeln!(
            s,
            "{:<8} {:>3} {:>13.0} {:>13.0} {:>13.0} {:>7.2} {:>9} {:>9}{} {}",
            x.mode.name(),
            x.run,
            x.offered_pps,
            x.at_lb_pps,
            x.delivered_pps,
            x.loss() * 100.0,
            fmt_load(x.cond.pre_foreign),
            fmt_load(x.cond.foreign),
            if x.cond.flagged { "*" } else { " " },
            notes.join(", ")
        );
    }
    let _ = writeln!(
        s,
        "(load pre/run: CPU share of other processes just before / during the window; * = above {:.0}%)",
        FOREIGN_LIMIT * 100.0
    );
    let _ = writeln!(s);
    let _ = writeln!(s, "medians:");
    for mode in [Mode::Kernel, Mode::Maglevd] {
        if let Some(m) = summarize(&r.runs, mode) {
            let _ = writeln!(
                s,
                "  {:<8} offered {:>12}  delivered {:>12}  loss {:>5.2}%  ({} runs{})",
                mode.name(),
                fmt_pps(m.offered_pps),
                fmt_pps(m.delivered_pps),
                m.loss * 100.0,
                m.runs,
                if m.flagged > 0 { format!(", {} under foreign load (*)", m.flagged) } else { String::new() }
            );
        }
    }
    match r.ratio() {
        Some(x) => {
            let _ = writeln!(s, "  ratio maglevd/kernel (delivered pps): {x:.2}");
        }
        None => {
            let _ = writeln!(s, "  ratio maglevd/kernel: n/a (kernel delivered nothing)");
        }
    }
    if !r.latency.is_empty() {
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "latency: one-way gen -> sink (send time to the kernel's receive timestamp in sink), {} probes 1 ms apart per mode (after {WARMUP_PROBES} warm-up probes), {}",
            a.probes,
            if r.latency_background_pps > 0 {
                format!(
                    "over {} frames/s of background traffic ({:.0} % of the slower forwarder's median)",
                    r.latency_background_pps,
                    a.latency_load * 100.0
                )
            } else {
                "alone (idle path)".to_string()
            }
        );
        let _ =
            writeln!(s, "{:<48} {:>9} {:>11} {:>11} {:>11} {:>11}", "mode", "received", "median", "p99", "min", "max");
        for l in &r.latency {
            let _ = writeln!(
                s,
                "{:<48} {:>9} {:>11} {:>11} {:>11} {:>11} {:>9}{}",
                l.mode.label(),
                format!("{}/{}", l.received, l.sent),
                fmt_us(l.median_us),
                fmt_us(l.p99_us),
                fmt_us(l.min_us),
                fmt_us(l.max_us),
                fmt_load(l.foreign),
                if l.foreign.is_some_and(|f| f > FOREIGN_LIMIT) { "*" } else { "" }
            );
        }
        for l in r.latency.iter().filter(|l| l.mode != LatencyMode::Kernel) {
            if let Some(d) = r.added_latency_us(l.mode) {
                let p99 = r.added_p99_us(l.mode).map_or_else(|| "n/a".into(), |p| format!("{p:+.1} µs"));
                let _ = writeln!(s, "added latency of {} (median vs kernel): {d:+.1} µs; p99: {p99}", l.mode.label());
            }
        }
    }
    s
}

/// JSON document (schema in the module docs).
pub fn to_json(r: &LiveReport) -> Json {
    if r.args.traffic != Traffic::Udp {
        return app::to_json(r);
    }
    let a = &r.args;
    let cfg = Json::obj()
        .with("seconds", a.seconds)
        .with("warmup", a.warmup)
        .with("flows", a.flows)
        .with("size", a.size)
        .with("workers", a.workers)
        .with("repeat", a.repeat)
        .with("probes", a.probes)
        .with("latency_load", a.latency_load)
        .with("latency_background_pps", r.latency_background_pps)
        .with("rx_slots", a.rx_slots)
        .with("tx_slots", a.tx_slots)
        .with("gen_slots", a.gen_slots)
        .with("rate", a.rate)
        .with("tracking", !a.no_tracking)
        .with("kernel_drop", !a.no_kernel_drop)
        .with("busy_poll_us", a.busy_poll_us)
        .with("spread", a.spread)
        .with("gen_cpu", a.gen_cpu)
        .with("fwd_cpu", a.fwd_cpu)
        .with("load_wait", a.load_wait)
        .with("gen_sndbuf", r.gen_sndbuf);
    let runs: Vec<Json> = r
        .runs
        .iter()
        .map(|x| {
            let j = Json::obj()
                .with("mode", x.mode.name())
                .with("run", x.run)
                .with("seconds", x.seconds)
                .with("offered_pps", x.offered_pps)
                .with("at_lb_pps", x.at_lb_pps)
                .with("delivered_pps", x.delivered_pps)
                .with("loss", x.loss());
            x.cond.json(j).with("gen_eagain", x.gen_eagain)
        })
        .collect();
    let mut summary = Json::obj();
    for mode in [Mode::Kernel, Mode::Maglevd] {
        if let Some(m) = summarize(&r.runs, mode) {
            summary = summary.with(
                mode.name(),
                Json::obj()
                    .with("offered_pps", m.offered_pps)
                    .with("at_lb_pps", m.at_lb_pps)
                    .with("delivered_pps", m.delivered_pps)
                    .with("loss", m.loss)
                    .with("runs", m.runs)
                    .with("flagged", m.flagged),
            );
        }
    }
    summary = summary.with("ratio_maglevd_kernel", r.ratio());
    let latency: Vec<Json> = r
        .latency
        .iter()
        .map(|l| {
            Json::obj()
                .with("mode", l.mode.key())
                .with("label", l.mode.label())
                .with("sent", l.sent)
                .with("received", l.received)
                .with("median_us", l.median_us)
                .with("p99_us", l.p99_us)
                .with("min_us", l.min_us)
                .with("max_us", l.max_us)
                .with("foreign_load", l.foreign)
                .with("added_us", (l.mode != LatencyMode::Kernel).then(|| r.added_latency_us(l.mode)).flatten())
                .with("added_p99_us", (l.mode != LatencyMode::Kernel).then(|| r.added_p99_us(l.mode)).flatten())
        })
        .collect();
    Json::obj()
        .with("bench", "live")
        .with("traffic", a.traffic.name())
        .with("config", cfg)
        .with("placement", r.placement.clone())
        .with("runs", Json::Arr(runs))
        .with("summary", summary)
        .with("latency", Json::Arr(latency))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_on_two_cpus() {
        assert!(LiveArgs::default().validate(2).is_ok());
    }

    #[test]
    fn validation_reports_every_problem() {
        let a = LiveArgs {
            seconds: 0.0,
            flows: 0,
            size: 40,
            workers: 0,
            repeat: 0,
            rx_slots: 1,
            gen_cpu: 1,
            fwd_cpu: 1,
            ..LiveArgs::default()
        };
        let e = a.validate(2).unwrap_err();
        assert!(matches!(e, BenchError::Usage(_)));
        let t = e.to_string();
        for key in ["--seconds", "--flows", "--size", "--workers", "--repeat", "--rx-slots", "must differ"] {
            assert!(t.contains(key), "{key} missing in:\n{t}");
        }
        let e = LiveArgs::default().validate(1).unwrap_err().to_string();
        assert!(e.contains("--fwd-cpu 1: this machine has 1 CPU"), "{e}");
        assert!(LiveArgs { flows: MAX_FLOWS + 1, ..LiveArgs::default() }.validate(2).is_err());
        // tcp and http: whole seconds (iperf3, wrk), streams and connections in range.
        let e = LiveArgs { traffic: Traffic::Tcp, seconds: 1.5, streams: 0, connections: 0, ..LiveArgs::default() }
            .validate(2)
            .unwrap_err()
            .to_string();
        for key in ["--seconds must be whole with --traffic tcp", "--streams", "--connections"] {
            assert!(e.contains(key), "{key} missing in:\n{e}");
        }
        assert!(LiveArgs { seconds: 1.5, ..LiveArgs::default() }.validate(2).is_ok(), "udp takes fractions");
        assert!(LiveArgs { traffic: Traffic::Http, seconds: 1.0, ..LiveArgs::default() }.validate(2).is_ok());
        assert!(LiveArgs { flows: MAX_FLOWS, size: MAX_FRAME, ..LiveArgs::default() }.validate(2).is_ok());
        assert!(LiveArgs { latency_load: 0.5, ..LiveArgs::default() }.validate(2).is_ok());
        // --spread: generator and forwarders share the CPUs; udp only.
        assert!(LiveArgs { spread: true, workers: 2, fwd_cpu: 0, ..LiveArgs::default() }.validate(2).is_ok());
        let e = LiveArgs { spread: true, traffic: Traffic::Tcp, seconds: 1.0, ..LiveArgs::default() }
            .validate(2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--spread is for --traffic udp"), "{e}");
        for bad in [-0.1, 0.96, f64::NAN] {
            let e = LiveArgs { latency_load: bad, ..LiveArgs::default() }.validate(2).unwrap_err().to_string();
            assert!(e.contains("--latency-load must be between 0 and 0.95"), "{e}");
        }
    }

    fn run(mode: Mode, offered: f64, delivered: f64, flagged: bool) -> RunResult {
        RunResult {
            mode,
            run: 1,
            seconds: 1.0,
            offered_pps: offered,
            at_lb_pps: offered,
            delivered_pps: delivered,
            cond: Conditions {
                pre_foreign: Some(0.01),
                foreign: Some(0.0),
                cpu_busy: Some((1.0, 0.5)),
                steal: Some(0.0),
                attempts: 1,
                flagged,
                ..Conditions::default()
            },
            gen_eagain: 0,
            gen_sndbuf: 0,
        }
    }

    #[test]
    fn the_probe_filter_takes_probes_only() {
        let prog = probe_filter().unwrap();
        let ep = Endpoints { src_mac: [2, 0, 0, 0, 0, 1], dst_mac: [2, 0, 0, 0, 0, 2], src: netns::GEN_IP, dst: VIP };
        let run = |f: &[u8]| crate::io::bpf::tests::run(&prog, f);
        assert_eq!(run(&frames::udp(&ep, SPORT0, PROBE_DPORT, 64)), crate::io::bpf::ACCEPT);
        assert_eq!(run(&frames::udp(&ep, SPORT0 + 7, PROBE_DPORT, 128)), crate::io::bpf::ACCEPT);
        // Background traffic, another address, ARP, a runt: dropped.
        assert_eq!(run(&frames::udp(&ep, SPORT0, DPORT, 64)), 0);
        let other = Endpoints { dst: std::net::Ipv4Addr::new(10, 9, 9, 9), ..ep };
        assert_eq!(run(&frames::udp(&other, SPORT0, PROBE_DPORT, 64)), 0);
        let mut arp = frames::udp(&ep, SPORT0, PROBE_DPORT, 64);
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(run(&arp), 0);
        assert_eq!(run(&[0u8; 20]), 0);
    }

    #[test]
    fn summary_and_ratio() {
        assert_eq!(loss(100.0, 75.0), 0.25);
        assert_eq!(loss(0.0, 5.0), 0.0);
        assert_eq!(loss(100.0, 120.0), 0.0);
        let runs = vec![
            run(Mode::Kernel, 400.0, 300.0, false),
            run(Mode::Kernel, 500.0, 310.0, true),
            run(Mode::Kernel, 450.0, 290.0, false),
            run(Mode::Maglevd, 600.0, 600.0, false),
        ];
        let k = summarize(&runs, Mode::Kernel).unwrap();
        assert_eq!((k.offered_pps, k.delivered_pps, k.runs, k.flagged), (450.0, 300.0, 3, 1));
        let report = LiveReport {
            args: LiveArgs::default(),
            placement: placement(&LiveArgs::default(), true),
            gen_sndbuf: 1 << 20,
            runs,
            latency: vec![
                LatencyResult::from_samples(LatencyMode::Kernel, 4, &[10_000.0, 12_000.0, 11_000.0]),
                LatencyResult::from_samples(LatencyMode::MaglevdV2, 4, &[30_000.0, 31_000.0, 29_000.0, 30_000.0]),
            ],
            latency_background_pps: 0,
            app_runs: Vec::new(),
        };
        assert_eq!(report.ratio(), Some(2.0));
        let p99 = report.added_p99_us(LatencyMode::MaglevdV2).unwrap();
        assert!((18.0..=20.0).contains(&p99), "{p99}");
        assert_eq!(report.added_latency_us(LatencyMode::MaglevdV2), Some(19.0));
        assert_eq!(report.added_latency_us(LatencyMode::MaglevdV3 { timeout_ms: 1 }), None);
        let text = render(&report);
        assert!(text.contains("ratio maglevd/kernel (delivered pps): 2.00"), "{text}");
        assert!(
            text.contains("added latency of maglevd (RX TPACKET_V2, default) (median vs kernel): +19.0 µs; p99: +"),
            "{text}"
        );
        assert!(text.contains("RPS on lbin -> CPU 1"), "{text}");
        assert!(text.contains("alone (idle path)"), "{text}");
        let j = to_json(&report).render();
        assert!(j.contains("\"ratio_maglevd_kernel\":2") && j.contains("\"added_us\":19"), "{j}");
        assert!(summarize(&[], Mode::Kernel).is_none());
    }

    #[test]
    fn latency_statistics() {
        let l = LatencyResult::from_samples(LatencyMode::Kernel, 3, &[]);
        assert_eq!((l.received, l.median_us), (0, None));
        let d: Vec<f64> = (1..=100).map(|i| f64::from(i) * 1000.0).collect();
        let l = LatencyResult::from_samples(LatencyMode::Kernel, 100, &d);
        assert_eq!((l.median_us, l.p99_us, l.min_us, l.max_us), (Some(50.5), Some(99.0), Some(1.0), Some(100.0)));
    }
}
