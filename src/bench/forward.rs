//! `maglevd bench forward`: the packet path in memory — with connection tracking as the daemon's
//! workers run it: batches of the worker's [`BATCH`] frames in two passes through a
//! [`crate::dataplane::Lookahead`] (prefetch, then forward; see "Batches" in
//! [`crate::dataplane`]), each frame's verdict that of [`crate::dataplane::forward_tracked`]
//! (`--no-tracking`: [`crate::dataplane::forward`] per frame) — over a realistic mix, like `benches/forward.rs`: 90 % TCP to
//! the VIP (by default 900 flows, a third of them carrying 1400 bytes; `--flows N`: N flows in
//! random order, header-only frames), 6 % TCP to the frontend's own address (passed), 2 % ARP
//! (passed), 2 % with a bad IPv4 checksum (dropped). The flow table holds twice the flows (at
//! least the default per-worker capacity of one worker), and a warm-up pass tracks every flow, so
//! the measured passes find their flows in a table of that size: with a million flows nearly
//! every lookup goes to memory, as in a busy frontend. The frames are forwarded in place again and
//! again. Forwarding rewrites both MACs, so before each call the frame gets its original 12 MAC
//! bytes back (one 12-byte copy, part of the measured cost): every pass sees the same verdicts
//! (otherwise the second pass would only measure the early "not our MAC" pass).
//!
//! The run is cut into ten equal slices; the report gives the median and best slice in ns per
//! frame and the Mpps they mean on one core.

use std::fmt::Write as _;
use std::hint::black_box;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use clap::Args;

use super::frames::{self, Endpoints};
use super::json::Json;
use super::stats::{LoadMeter, median, min};
use super::{BenchError, fmt_load};
use crate::config;
use crate::daemon::worker::BATCH;
use crate::dataplane::{FrameMeta, Links, Lookahead, Snapshot, Verdict, forward, forward_tracked};
use crate::flow::{self, Tick, Tracker};
use crate::wire::MacAddr;

const INGRESS: [u8; 6] = [0xc2, 0xb0, 0x57, 0x49, 0x47, 0xf1];
const EGRESS: [u8; 6] = [0xc2, 0xb0, 0x57, 0x49, 0x47, 0xf2];
const ROUTER: [u8; 6] = [0x02, 0, 0, 0, 1, 0xfe];
const SLICES: u32 = 10;
/// The service's VIP and the frontend's own address in the mix.
const VIP: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 1);
const OWN: Ipv4Addr = Ipv4Addr::new(10, 158, 100, 2);
/// Largest `--flows` (about 70 bytes of frame each, plus the table).
pub const MAX_FLOWS: usize = 16 << 20;

const CONFIG: &str = r#"
[interfaces]
ingress = "net1"
egress = "net2"
[daemon]
metrics = ""
[[service]]
vip = "10.201.0.1"
protocol = "tcp"
port = 80
table_size = 65537
[[service.backend]]
ip = "10.158.200.251"
mac = "c2:b0:57:49:47:0b"
[[service.backend]]
ip = "10.158.200.252"
mac = "c2:b0:57:49:47:0b"
[[service.backend]]
ip = "10.158.200.253"
mac = "c2:b0:57:49:47:0b"
"#;

/// Options of `maglevd bench forward`.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct ForwardArgs {
    /// Measurement time in seconds.
    #[arg(long, default_value_t = 2.0)]
    pub seconds: f64,
    /// Pin the measuring thread to this CPU.
    #[arg(long)]
    pub cpu: Option<usize>,
    /// Distinct VIP flows in the mix (above 900 the frames carry no payload).
    #[arg(long, default_value_t = 900)]
    pub flows: usize,
    /// Forward without connection tracking (every packet's backend from the table).
    #[arg(long)]
    pub no_tracking: bool,
    /// Also measure 1, 2, … workers at once (up to the CPUs this process may use), each on its
    /// own CPU with its own flow table and copy of the mix, and report Mpps per worker count.
    #[arg(long, conflicts_with = "cpu")]
    pub scale: bool,
}

/// One worker count of `--scale`: every worker's median Mpps, measured at the same time.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalePoint {
    pub workers: usize,
    pub mpps: Vec<f64>,
}

impl ScalePoint {
    pub fn total(&self) -> f64 {
        self.mpps.iter().sum()
    }
}

impl ForwardArgs {
    pub fn validate(&self) -> Result<Duration, BenchError> {
        if !(self.seconds.is_finite() && (0.01..=3600.0).contains(&self.seconds)) {
            return Err(BenchError::Usage("--seconds must be between 0.01 and 3600".into()));
        }
        if !(1..=MAX_FLOWS).contains(&self.flows) {
            return Err(BenchError::Usage(format!("--flows must be between 1 and {MAX_FLOWS}")));
        }
        Ok(Duration::from_secs_f64(self.seconds))
    }
}

/// The snapshot every in-memory measurement uses (one TCP service, three backends).
pub fn snapshot() -> Result<Snapshot, BenchError> {
    let cfg = config::parse(CONFIG, Path::new("<bench>")).map_err(|e| BenchError::Setup(e.to_string()))?;
    let links = Links { ingress_mac: MacAddr(INGRESS), egress_mac: MacAddr(EGRESS) };
    Snapshot::build(&cfg, links, &|_| None, 1).map_err(|e| BenchError::Setup(e.to_string()))
}

/// The mix with `flows` VIP flows (see the module docs): [`mix`] up to 900, else one frame per
/// flow in random order, with the other frames in the same proportions.
pub fn mix_of(flows: usize) -> Vec<Vec<u8>> {
    if flows <= 900 {
        let mut m = mix();
        // Fewer flows: the VIP frames repeat the first `flows` ones.
        let vip: Vec<usize> = (0..m.len()).filter(|i| i % 50 <= 44).collect();
        for (n, &i) in vip.iter().enumerate().skip(flows) {
            m[i] = m[vip[n % flows]].clone();
        }
        return m;
    }
    let total = flows.div_ceil(45) * 50;
    let mut next_flow = 0u64;
    (0..total)
        .filter_map(|i| {
            let r = splitmix(i as u64);
            let client = Ipv4Addr::from(0x0a00_0000 | (r >> 40) as u32);
            let e = |dst| Endpoints { src_mac: ROUTER, dst_mac: INGRESS, src: client, dst };
            Some(match i % 50 {
                0..=44 => {
                    if next_flow == flows as u64 {
                        return None;
                    }
                    // Flow `next_flow`'s address and port come from a hash of it: random order.
                    let h = splitmix(next_flow ^ 0x5eed);
                    next_flow += 1;
                    let e = Endpoints { src: Ipv4Addr::from((h >> 32) as u32 | 0x0100_0000), ..e(VIP) };
                    frames::tcp(&e, (h as u16) | 1024, 80, 0)
                }
                n => other_frame(n, client),
            })
        })
        .collect()
}

/// The frame of slot `n` (45..50) of every 50 that is not VIP traffic, from `client`: 45–47 TCP to
/// the frontend's own address (passed), 48 ARP (passed), 49 a bad IPv4 checksum (dropped).
fn other_frame(n: usize, client: Ipv4Addr) -> Vec<u8> {
    let e = |dst| Endpoints { src_mac: ROUTER, dst_mac: INGRESS, src: client, dst };
    match n {
        45..=47 => frames::tcp(&e(OWN), 40000, 22, 0),
        48 => frames::arp_request(&e(OWN)),
        _ => {
            let mut f = frames::tcp(&e(VIP), 1, 80, 0);
            f[24] ^= 0xff; // bad IPv4 checksum
            f
        }
    }
}

/// splitmix64: a fixed pseudo-random sequence.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The 1000-frame mix (see the module docs).
pub fn mix() -> Vec<Vec<u8>> {
    (0..1000u32)
        .map(|i| {
            let client = Ipv4Addr::from(0xc0a8_6400 + (i * 7919) % 65000);
            let e = |dst| Endpoints { src_mac: ROUTER, dst_mac: INGRESS, src: client, dst };
            match i % 50 {
                0..=44 => frames::tcp(&e(VIP), 1024 + (i % 50000) as u16, 80, if i % 3 == 0 { 1400 } else { 0 }),
                n => other_frame(n as usize, client),
            }
        })
        .collect()
}

/// The original 12 MAC bytes of every frame, restored before each pass.
fn mac_heads(mix: &[Vec<u8>]) -> Vec<[u8; 12]> {
    mix.iter().map(|f| f.get(..12).and_then(|h| h.try_into().ok()).unwrap_or([0; 12])).collect()
}

/// Result of the in-memory measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct ForwardResult {
    pub frames: u64,
    pub seconds: f64,
    /// ns per frame, per slice.
    pub slices_ns: Vec<f64>,
    pub forwarded: u64,
    pub passed: u64,
    pub dropped: u64,
    pub cpu: Option<usize>,
    pub foreign_load: Option<f64>,
    pub flows: usize,
    /// With tracking: the flow table's (capacity, entries, bytes).
    pub table: Option<(usize, usize, usize)>,
    /// `--scale`: Mpps per worker count.
    pub scale: Vec<ScalePoint>,
}

impl ForwardResult {
    pub fn median_ns(&self) -> f64 {
        median(&self.slices_ns).unwrap_or(f64::NAN)
    }
    pub fn best_ns(&self) -> f64 {
        min(&self.slices_ns).unwrap_or(f64::NAN)
    }
}

/// Runs the measurement (and with `--scale`, the measurement on 1, 2, … CPUs at once).
pub fn measure(args: &ForwardArgs) -> Result<ForwardResult, BenchError> {
    let mut r = measure_one(args)?;
    if args.scale {
        let cpus = crate::io::allowed_cpus().map_err(|e| BenchError::Setup(format!("the CPUs to use: {e}")))?;
        for k in 1..=cpus.len() {
            let runs: Vec<Result<ForwardResult, BenchError>> = std::thread::scope(|scope| {
                let handles: Vec<_> = cpus[..k]
                    .iter()
                    .map(|&cpu| {
                        let a = ForwardArgs { cpu: Some(cpu), scale: false, ..args.clone() };
                        scope.spawn(move || measure_one(&a))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|_| Err(BenchError::Setup("a worker panicked".into()))))
                    .collect()
            });
            let mpps = runs.into_iter().map(|r| r.map(|r| 1e3 / r.median_ns())).collect::<Result<Vec<f64>, _>>()?;
            r.scale.push(ScalePoint { workers: k, mpps });
        }
    }
    Ok(r)
}

fn measure_one(args: &ForwardArgs) -> Result<ForwardResult, BenchError> {
    let total = args.validate()?;
    if let Some(cpu) = args.cpu {
        crate::io::pin_current_thread(cpu).map_err(|e| BenchError::Usage(format!("--cpu {cpu}: {e}")))?;
    }
    let snap = snapshot()?;
    let mut mix = mix_of(args.flows);
    let heads = mac_heads(&mix);
    let capacity = flow::per_worker((2 * args.flows).max(flow::DEFAULT_CAPACITY / 2), 1);
    let mut tracker = (!args.no_tracking).then(|| {
        let f = config::Flows::default();
        Tracker::new(capacity, f.timeouts, f.fragment_timeout)
    });
    let now = Tick(0);
    let meta = FrameMeta::default();
    let (mut fwd, mut pass, mut drop) = (0u64, 0u64, 0u64);
    // Warm-up pass, which also counts the verdicts of one pass (and tracks every flow).
    for f in mix.iter_mut() {
        let verdict = match tracker.as_mut() {
            Some(t) => forward_tracked(f, &meta, &snap, t, now),
            None => forward(f, &snap),
        };
        match verdict {
            Verdict::Forward { .. } => fwd += 1,
            Verdict::Pass(_) => pass += 1,
            Verdict::Drop(_) => drop += 1,
        }
    }
    let per_pass = mix.len() as u64;
    let mut ahead = Box::new(Lookahead::<BATCH>::default());
    let slice = total / SLICES;
    let load = LoadMeter::start();
    let start = Instant::now();
    let mut slices = Vec::with_capacity(SLICES as usize);
    let mut frames_done = 0u64;
    for _ in 0..SLICES {
        let t = Instant::now();
        let mut n = 0u64;
        while t.elapsed() < slice {
            match tracker.as_mut() {
                // As a worker does it: batches of BATCH frames in two passes.
                Some(tracker) => {
                    for (batch, heads) in mix.chunks_mut(BATCH).zip(heads.chunks(BATCH)) {
                        for (i, (f, head)) in batch.iter_mut().zip(heads).enumerate() {
                            f[..12].copy_from_slice(head);
                            ahead.prefetch(i, black_box(f), tracker);
                        }
                        for (i, f) in batch.iter_mut().enumerate() {
                            black_box(ahead.forward(i, black_box(f), &meta, &snap, tracker, now));
                        }
                    }
                }
                None => {
                    for (f, head) in mix.iter_mut().zip(&heads) {
                        f[..12].copy_from_slice(head);
                        black_box(forward(black_box(f), &snap));
                    }
                }
            }
            n += per_pass;
        }
        slices.push(t.elapsed().as_nanos() as f64 / n as f64);
        frames_done += n;
    }
    let seconds = start.elapsed().as_secs_f64();
    let passes = frames_done / per_pass;
    Ok(ForwardResult {
        frames: frames_done,
        seconds,
        slices_ns: slices,
        forwarded: fwd * passes,
        passed: pass * passes,
        dropped: drop * passes,
        cpu: args.cpu,
        foreign_load: load.finish().map(|l| l.foreign),
        flows: args.flows,
        table: tracker.as_ref().map(|t| (t.flows.capacity(), t.flows.len(), t.flows.memory_bytes())),
        scale: Vec::new(),
    })
}

/// Text report.
pub fn render(r: &ForwardResult) -> String {
    let mut s = format!(
        "dataplane::{} over the in-memory mix ({} VIP flows, 90% of the frames; 6% to the frontend\n",
        if r.table.is_some() { "forward_tracked" } else { "forward" },
        r.flows
    );
    s.push_str("itself, 2% ARP, 2% bad IPv4 checksum), one thread");
    match r.cpu {
        Some(c) => {
            let _ = writeln!(s, " pinned to CPU {c}");
        }
        None => s.push('\n'),
    }
    let _ = writeln!(
        s,
        "  frames {:>12}   in {:.2} s   (forwarded {}, passed {}, dropped {})",
        r.frames, r.seconds, r.forwarded, r.passed, r.dropped
    );
    let (med, best) = (r.median_ns(), r.best_ns());
    let _ = writeln!(s, "  ns/frame  median {med:>7.1}   best {best:>7.1}   ({SLICES} slices)");
    let _ = writeln!(s, "  Mpps      median {:>7.2}   best {:>7.2}", 1e3 / med, 1e3 / best);
    match r.table {
        Some((capacity, entries, bytes)) => {
            let _ = writeln!(
                s,
                "  flow table: {entries} of {capacity} entries tracked, {:.1} MiB",
                bytes as f64 / f64::from(1 << 20)
            );
        }
        None => s.push_str("  no connection tracking (--no-tracking)\n"),
    }
    let _ = writeln!(s, "  foreign CPU load during the run: {}", fmt_load(r.foreign_load));
    if !r.scale.is_empty() {
        s.push_str("workers at once, each on its own CPU with its own flow table (median Mpps):\n");
        for p in &r.scale {
            let each: Vec<String> = p.mpps.iter().map(|m| format!("{m:.2}")).collect();
            let _ = writeln!(
                s,
                "  {} worker(s): {:>6.2} Mpps in all ({:.2}× one worker; each: {})",
                p.workers,
                p.total(),
                p.total() / r.scale[0].total(),
                each.join(", ")
            );
        }
    }
    s
}

pub fn to_json(r: &ForwardResult) -> Json {
    Json::obj()
        .with("bench", "forward")
        .with("frames", r.frames)
        .with("seconds", r.seconds)
        .with("ns_per_frame_median", r.median_ns())
        .with("ns_per_frame_best", r.best_ns())
        .with("mpps_median", 1e3 / r.median_ns())
        .with("forwarded", r.forwarded)
        .with("passed", r.passed)
        .with("dropped", r.dropped)
        .with("cpu", r.cpu)
        .with("foreign_load", r.foreign_load)
        .with("flows", r.flows as u64)
        .with("tracking", r.table.is_some())
        .with("flow_table_entries", r.table.map(|t| t.1 as u64))
        .with(
            "scale",
            Json::Arr(
                r.scale
                    .iter()
                    .map(|p| {
                        Json::obj()
                            .with("workers", p.workers as u64)
                            .with("mpps", p.total())
                            .with("mpps_per_worker", Json::Arr(p.mpps.iter().map(|m| Json::Num(*m)).collect()))
                    })
                    .collect(),
            ),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_has_the_documented_shares() {
        let snap = snapshot().unwrap();
        let mut m = mix();
        let (mut f, mut p, mut d) = (0, 0, 0);
        for fr in m.iter_mut() {
            match forward(fr, &snap) {
                Verdict::Forward { .. } => f += 1,
                Verdict::Pass(_) => p += 1,
                Verdict::Drop(_) => d += 1,
            }
        }
        assert_eq!((f, p, d), (900, 80, 20));
        // Every later pass over the restored frames gives the same verdicts.
        let heads = mac_heads(&mix());
        let pass = |m: &mut Vec<Vec<u8>>| -> Vec<Verdict> {
            m.iter_mut()
                .zip(&heads)
                .map(|(fr, h)| {
                    fr[..12].copy_from_slice(h);
                    forward(fr, &snap)
                })
                .collect()
        };
        let again = pass(&mut m);
        let third = pass(&mut m);
        assert_eq!(again, third);
        assert_eq!(again.iter().filter(|v| matches!(v, Verdict::Forward { .. })).count(), 900);
    }

    #[test]
    fn short_run() {
        let r =
            measure(&ForwardArgs { seconds: 0.05, cpu: None, flows: 900, no_tracking: false, scale: false }).unwrap();
        assert!(r.frames > 0 && r.slices_ns.len() == SLICES as usize);
        assert_eq!(r.forwarded + r.passed + r.dropped, r.frames);
        assert!(render(&r).contains("ns/frame"));
        assert_eq!(r.table.map(|t| t.1), Some(900), "every flow tracked");
        let many =
            measure(&ForwardArgs { seconds: 0.05, cpu: None, flows: 5000, no_tracking: false, scale: false }).unwrap();
        assert_eq!(many.table.map(|t| t.1), Some(5000));
        let len = mix_of(5000).len() as u64;
        assert_eq!(many.forwarded * len, many.frames * 5000, "every VIP frame forwarded, once per pass");
        let a = |seconds, flows| ForwardArgs { seconds, cpu: None, flows, no_tracking: true, scale: false };
        assert!(a(0.0, 1).validate().is_err());
        assert!(a(f64::NAN, 1).validate().is_err());
        assert!(a(1.0, 0).validate().is_err());
    }

    #[test]
    fn scale_measures_each_worker_count_at_once() {
        let r =
            measure(&ForwardArgs { seconds: 0.05, cpu: None, flows: 900, no_tracking: false, scale: true }).unwrap();
        let cpus = crate::io::allowed_cpus().unwrap().len();
        assert_eq!(r.scale.iter().map(|p| p.workers).collect::<Vec<_>>(), (1..=cpus).collect::<Vec<_>>());
        assert!(r.scale.iter().all(|p| p.mpps.len() == p.workers && p.mpps.iter().all(|m| *m > 0.0)), "{:?}", r.scale);
        assert!(render(&r).contains("1 worker(s):"));
        assert!(to_json(&r).render().contains("\"mpps_per_worker\""));
    }
}
