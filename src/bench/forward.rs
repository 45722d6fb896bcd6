//! `maglevd bench forward`: the packet path in memory — [`crate::dataplane::forward`] per frame
//! over a realistic mix, like `benches/forward.rs`: 90 % TCP to the VIP from 1000 flows (a third
//! of them carrying 1400 bytes), 6 % TCP to the frontend's own address (passed), 2 % ARP
//! (passed), 2 % with a bad IPv4 checksum (dropped). The frames are forwarded in place again and
//! again. Forwarding rewrites the destination MAC to the backend's, so the backends' static MACs
//! here are the ingress MAC itself: a forwarded frame is still addressed to the balancer (with any
//! other MAC, the second pass would only measure the early "not our MAC" pass). Its source MAC is
//! then the egress MAC, which `forward()` drops as our own frame, so each pass first puts the
//! router's source MAC back (a 6-byte copy per frame, included in the time): every pass sees the
//! same verdicts.
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
use crate::dataplane::{Links, Snapshot, Verdict, forward};
use crate::wire::MacAddr;

const INGRESS: [u8; 6] = [0xc2, 0xb0, 0x57, 0x49, 0x47, 0xf1];
const EGRESS: [u8; 6] = [0xc2, 0xb0, 0x57, 0x49, 0x47, 0xf2];
const ROUTER: [u8; 6] = [0x02, 0, 0, 0, 1, 0xfe];
const SLICES: u32 = 10;

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
mac = "c2:b0:57:49:47:f1"
[[service.backend]]
ip = "10.158.200.252"
mac = "c2:b0:57:49:47:f1"
[[service.backend]]
ip = "10.158.200.253"
mac = "c2:b0:57:49:47:f1"
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
}

impl ForwardArgs {
    pub fn validate(&self) -> Result<Duration, BenchError> {
        if !(self.seconds.is_finite() && (0.01..=3600.0).contains(&self.seconds)) {
            return Err(BenchError::Usage("--seconds must be between 0.01 and 3600".into()));
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

/// The 1000-frame mix (see the module docs).
pub fn mix() -> Vec<Vec<u8>> {
    let vip = Ipv4Addr::new(10, 201, 0, 1);
    let own = Ipv4Addr::new(10, 158, 100, 2);
    (0..1000u32)
        .map(|i| {
            let client = Ipv4Addr::from(0xc0a8_6400 + (i * 7919) % 65000);
            let e = |dst| Endpoints { src_mac: ROUTER, dst_mac: INGRESS, src: client, dst };
            match i % 50 {
                0..=44 => frames::tcp(&e(vip), 1024 + (i % 50000) as u16, 80, if i % 3 == 0 { 1400 } else { 0 }),
                45..=47 => frames::tcp(&e(own), 40000, 22, 0),
                48 => frames::arp_request(&e(own)),
                _ => {
                    let mut f = frames::tcp(&e(vip), 1, 80, 0);
                    f[24] ^= 0xff; // bad IPv4 checksum
                    f
                }
            }
        })
        .collect()
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
}

impl ForwardResult {
    pub fn median_ns(&self) -> f64 {
        median(&self.slices_ns).unwrap_or(f64::NAN)
    }
    pub fn best_ns(&self) -> f64 {
        min(&self.slices_ns).unwrap_or(f64::NAN)
    }
}

/// Puts back the router's source MAC that the last pass rewrote to the egress MAC.
#[inline]
fn restore_src(frame: &mut [u8]) {
    if let Some(src) = frame.get_mut(6..12) {
        src.copy_from_slice(&ROUTER);
    }
}

/// Runs the measurement.
pub fn measure(args: &ForwardArgs) -> Result<ForwardResult, BenchError> {
    let total = args.validate()?;
    if let Some(cpu) = args.cpu {
        crate::io::pin_current_thread(cpu).map_err(|e| BenchError::Usage(format!("--cpu {cpu}: {e}")))?;
    }
    let snap = snapshot()?;
    let mut mix = mix();
    let (mut fwd, mut pass, mut drop) = (0u64, 0u64, 0u64);
    // Warm-up pass, which also counts the verdicts of one pass.
    for f in mix.iter_mut() {
        match forward(f, &snap) {
            Verdict::Forward { .. } => fwd += 1,
            Verdict::Pass(_) => pass += 1,
            Verdict::Drop(_) => drop += 1,
        }
    }
    let per_pass = mix.len() as u64;
    let slice = total / SLICES;
    let load = LoadMeter::start();
    let start = Instant::now();
    let mut slices = Vec::with_capacity(SLICES as usize);
    let mut frames_done = 0u64;
    for _ in 0..SLICES {
        let t = Instant::now();
        let mut n = 0u64;
        while t.elapsed() < slice {
            for f in mix.iter_mut() {
                restore_src(f);
                black_box(forward(black_box(f), &snap));
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
    })
}

/// Text report.
pub fn render(r: &ForwardResult) -> String {
    let mut s = String::from("dataplane::forward over the in-memory mix (1000 frames: 90% TCP to the VIP, 6% to the\n");
    s.push_str("frontend itself, 2% ARP, 2% bad IPv4 checksum), one thread");
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
    let _ = writeln!(s, "  foreign CPU load during the run: {}", fmt_load(r.foreign_load));
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
        // Every later pass over the rewritten frames gives the same verdicts.
        let mut pass = |fr: &mut Vec<u8>| {
            restore_src(fr);
            forward(fr, &snap)
        };
        let again: Vec<Verdict> = m.iter_mut().map(&mut pass).collect();
        let third: Vec<Verdict> = m.iter_mut().map(&mut pass).collect();
        assert_eq!(again, third);
        assert_eq!(again.iter().filter(|v| matches!(v, Verdict::Forward { .. })).count(), 900);
    }

    #[test]
    fn short_run() {
        let r = measure(&ForwardArgs { seconds: 0.05, cpu: None }).unwrap();
        assert!(r.frames > 0 && r.slices_ns.len() == SLICES as usize);
        assert_eq!(r.forwarded + r.passed + r.dropped, r.frames);
        assert!(render(&r).contains("ns/frame"));
        assert!(ForwardArgs { seconds: 0.0, cpu: None }.validate().is_err());
        assert!(ForwardArgs { seconds: f64::NAN, cpu: None }.validate().is_err());
    }
}
