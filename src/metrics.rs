//! Counters and their Prometheus text exposition.
//!
//! Each worker owns one [`WorkerCounters`] (cache-line padded, so workers never share a line) and
//! is its only writer: it adds with a plain load + store ([`bump`]), not an atomic read-modify-write,
//! so counting costs what a local `u64 += 1` costs. Readers (the metrics endpoint, the demo) load
//! them with relaxed ordering and sum across workers at scrape time.
//!
//! The exposition is `prometheus-client`'s (escaping, HELP/TYPE, one block per family): at scrape
//! time the sums ([`Totals`]) are encoded as constant counters by its [`Collector`] interface, so
//! the hot path keeps its own counters and never touches the library's types.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_utils::CachePadded;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::dataplane::{DropReason, PassReason, Verdict};

/// Add `n` to a counter that only the calling thread writes.
#[inline]
pub fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// Each entry: its doc comment, which becomes the metric's HELP text (every entry needs one;
/// tests/http_endpoint.rs checks every family has HELP), and its name, which becomes
/// `maglevd_<name>_total`.
macro_rules! io_counters {
    ($($(#[doc = $doc:literal])* $name:ident,)*) => {
        /// Counters of the I/O around `forward()`, per worker.
        #[derive(Debug, Default)]
        pub struct IoCounters { $($(#[doc = $doc])* pub $name: AtomicU64,)* }
        impl IoCounters {
            /// (name, doc comment) of every counter, in the order of [`IoCounters::values`].
            pub const DOCS: &'static [(&'static str, &'static str)] = &[$((stringify!($name), concat!($($doc),*)),)*];

            /// (name, value) of every counter.
            pub fn values(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), get(&self.$name)),)*]
            }
        }
    };
}

io_counters! {
    /// Frames taken from the RX ring.
    rx_frames,
    /// Bytes of those frames.
    rx_bytes,
    /// Non-empty RX batches.
    rx_batches,
    /// Frames the kernel cut to the ring's frame size (dropped; see `rx_snaplen`).
    rx_truncated,
    /// Frames the kernel could not put in the ring (PACKET_STATISTICS drops).
    rx_ring_drops,
    /// `poll()` on the RX ring failed (unexpected; the worker sleeps and retries).
    rx_wait_errors,
    /// Frames the kernel took from the TX ring (counted at flush, like `forwarded`).
    tx_frames,
    /// Bytes the kernel reported as sent.
    tx_bytes,
    /// Frames dropped because the TX ring had no free slot.
    tx_ring_full,
    /// Frames too big for a TX slot or the egress MTU.
    tx_too_big,
    /// Frames whose virtio-net header the TX ring refused.
    tx_bad_vnet,
    /// `send()` calls (one per batch).
    tx_flushes,
    /// `send()` returned EAGAIN/EWOULDBLOCK (frames stay queued and go with the next flush).
    tx_eagain,
    /// `send()` returned ENOBUFS.
    tx_enobufs,
    /// `send()` failed otherwise.
    tx_errors,
    /// Bytes the kernel took from the TX ring but discarded instead of sending (a lower bound; the
    /// kernel does not say which frames, so they cannot be counted as frames).
    tx_kernel_dropped_bytes,
    /// Reading the RX ring's kernel statistics (PACKET_STATISTICS) failed.
    rx_stats_errors,
    /// ICMP fragmentation-needed messages sent to clients (see `drop_total{reason="frag_needed"}`).
    icmp_frag_needed_sent,
    /// ICMP fragmentation-needed messages not sent because of the per-worker rate limit.
    icmp_frag_needed_suppressed,
    /// ICMP fragmentation-needed messages that could not be built or sent (send error).
    icmp_frag_needed_errors,
}

/// A worker's connection-tracking figures, copied from its [`crate::flow::Tracker`] after every
/// batch (absolute values: the worker is the only writer).
#[derive(Debug, Default)]
pub struct FlowCounters {
    /// Occupied flow entries (expired ones not reclaimed yet included).
    pub entries: AtomicU64,
    /// Flow entries the worker's table holds at most.
    pub capacity: AtomicU64,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub inserts: AtomicU64,
    pub evictions: AtomicU64,
    pub timeouts: AtomicU64,
    pub rechosen: AtomicU64,
    pub fragment_entries: AtomicU64,
    pub fragments_followed: AtomicU64,
    pub fragments_untracked: AtomicU64,
}

impl FlowCounters {
    /// Copy `t`'s figures.
    #[inline]
    pub fn publish(&self, t: &crate::flow::Tracker) {
        let s = t.flows.stats();
        for (c, v) in [
            (&self.entries, t.flows.len() as u64),
            (&self.capacity, t.flows.capacity() as u64),
            (&self.hits, s.hits),
            (&self.misses, s.misses),
            (&self.inserts, s.inserts),
            (&self.evictions, s.evictions),
            (&self.timeouts, s.timeouts),
            (&self.rechosen, t.rechosen),
            (&self.fragment_entries, t.frags.len() as u64),
            (&self.fragments_followed, t.fragments_followed),
            (&self.fragments_untracked, t.fragments_untracked),
        ] {
            c.store(v, Ordering::Relaxed);
        }
    }

    /// (metric name, help, is a counter, value) of every figure.
    pub fn values(&self) -> [(&'static str, &'static str, bool, u64); 11] {
        [
            (
                "maglevd_flow_entries",
                "Tracked flows (occupied flow-table entries), per worker.",
                false,
                get(&self.entries),
            ),
            ("maglevd_flow_capacity", "Flow-table entries, per worker.", false, get(&self.capacity)),
            ("maglevd_flow_hits", "Packets of a tracked flow, per worker.", true, get(&self.hits)),
            (
                "maglevd_flow_misses",
                "Packets of an untracked (new, expired or evicted) flow, per worker.",
                true,
                get(&self.misses),
            ),
            ("maglevd_flow_inserts", "Flows tracked, per worker.", true, get(&self.inserts)),
            (
                "maglevd_flow_evictions",
                "Live flows dropped from a full bucket (least recently used first), per worker.",
                true,
                get(&self.evictions),
            ),
            ("maglevd_flow_timeouts", "Flows expired after their idle timeout, per worker.", true, get(&self.timeouts)),
            (
                "maglevd_flow_rechosen",
                "Tracked flows moved because their backend was removed, went down or lost its MAC, per worker.",
                true,
                get(&self.rechosen),
            ),
            (
                "maglevd_fragment_entries",
                "Datagrams whose later fragments are followed, per worker.",
                false,
                get(&self.fragment_entries),
            ),
            (
                "maglevd_fragments_followed",
                "Later fragments sent to their first fragment's backend, per worker.",
                true,
                get(&self.fragments_followed),
            ),
            (
                "maglevd_fragments_untracked",
                "Later fragments whose first fragment was not seen, sent by the address hash, per worker.",
                true,
                get(&self.fragments_untracked),
            ),
        ]
    }
}

/// One backend's traffic, as the workers forward it: one cell per worker, each on its own cache
/// lines and written by that worker only (no shared line on the forwarding path). The snapshot
/// builder hands the same `BackendCounters` to every snapshot while the backend stays configured
/// (by its identity: service endpoint, address and port), so a reload keeps its totals.
#[derive(Debug)]
pub struct BackendCounters {
    cells: Box<[CachePadded<BackendCell>]>,
}

/// One worker's share of a backend's counters.
#[derive(Debug, Default)]
pub struct BackendCell {
    /// Frames queued for the backend (a frame the TX ring then fails to send is still counted
    /// here; `maglevd_drop_total{reason="tx_send_failed"}` counts those).
    pub packets: AtomicU64,
    /// Bytes of those frames (Ethernet header included; a GSO super-frame counts as its bytes).
    pub bytes: AtomicU64,
    /// Flows assigned to the backend: new tracked flows, and tracked flows re-chosen to it.
    pub flows: AtomicU64,
}

/// A backend's totals over the workers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BackendTotals {
    pub packets: u64,
    pub bytes: u64,
    pub flows: u64,
}

impl BackendCounters {
    /// Counters for `workers` workers (at least one cell).
    pub fn new(workers: usize) -> BackendCounters {
        BackendCounters { cells: (0..workers.max(1)).map(|_| CachePadded::new(BackendCell::default())).collect() }
    }

    /// Worker `worker`'s cell (a worker beyond the count shares a cell: counts stay right only
    /// if those workers never run at once, so size them by the real worker count).
    #[inline]
    pub fn cell(&self, worker: usize) -> &BackendCell {
        &self.cells[worker % self.cells.len()]
    }

    /// Count one frame of `bytes` bytes (and a new flow if `new_flow`) for worker `worker`.
    #[inline]
    pub fn record(&self, worker: usize, bytes: usize, new_flow: bool) {
        let c = self.cell(worker);
        bump(&c.packets, 1);
        bump(&c.bytes, bytes as u64);
        if new_flow {
            bump(&c.flows, 1);
        }
    }

    pub fn totals(&self) -> BackendTotals {
        self.cells.iter().fold(BackendTotals::default(), |t, c| BackendTotals {
            packets: t.packets + get(&c.packets),
            bytes: t.bytes + get(&c.bytes),
            flows: t.flows + get(&c.flows),
        })
    }
}

/// All counters of one worker.
#[derive(Debug, Default)]
pub struct WorkerCounters {
    /// The worker's index (its cell in [`BackendCounters`]).
    pub index: usize,
    pub io: IoCounters,
    pub forwarded: AtomicU64,
    pub drops: [AtomicU64; DropReason::COUNT],
    pub passes: [AtomicU64; PassReason::COUNT],
    pub flows: FlowCounters,
    /// The worker's heartbeat: milliseconds since the daemon started, stored once per loop turn
    /// (at least every 100 ms while idle); [`HEARTBEAT_DEAD`] once its thread has ended.
    pub heartbeat_ms: AtomicU64,
}

/// The heartbeat of a worker whose thread has ended (returned or panicked).
pub const HEARTBEAT_DEAD: u64 = u64::MAX;

impl WorkerCounters {
    /// Count one verdict.
    #[inline]
    pub fn record(&self, v: &Verdict) {
        match v {
            Verdict::Forward { .. } => bump(&self.forwarded, 1),
            Verdict::Drop(r) => bump(&self.drops[r.index()], 1),
            Verdict::Pass(r) => bump(&self.passes[r.index()], 1),
        }
    }
}

/// The counters of every worker, each on its own cache lines.
#[derive(Debug)]
pub struct Counters {
    workers: Box<[CachePadded<WorkerCounters>]>,
}

impl Counters {
    pub fn new(workers: usize) -> Counters {
        Counters {
            workers: (0..workers)
                .map(|index| CachePadded::new(WorkerCounters { index, ..Default::default() }))
                .collect(),
        }
    }

    /// Worker `i`'s counters (it must be their only writer).
    pub fn worker(&self, i: usize) -> Option<&WorkerCounters> {
        self.workers.get(i).map(|c| &**c)
    }

    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Sums over all workers.
    pub fn totals(&self) -> Totals {
        let mut t =
            Totals { io: Vec::new(), forwarded: 0, drops: [0; DropReason::COUNT], passes: [0; PassReason::COUNT] };
        for w in self.workers.iter() {
            for (i, (name, v)) in w.io.values().into_iter().enumerate() {
                match t.io.get_mut(i) {
                    Some(e) => e.1 += v,
                    None => t.io.push((name, v)),
                }
            }
            t.forwarded += get(&w.forwarded);
            for (a, c) in t.drops.iter_mut().zip(&w.drops) {
                *a += get(c);
            }
            for (a, c) in t.passes.iter_mut().zip(&w.passes) {
                *a += get(c);
            }
        }
        t
    }
}

/// The connection-tracking figures of every worker at one moment, exposed per worker (label
/// `worker`): `maglevd_flow_*` and `maglevd_fragment*`.
#[derive(Debug, Clone)]
pub struct FlowFigures {
    /// Per worker, [`FlowCounters::values`].
    pub workers: Vec<[(&'static str, &'static str, bool, u64); 11]>,
}

impl Counters {
    /// Every worker's [`FlowCounters`].
    pub fn flow_figures(&self) -> FlowFigures {
        FlowFigures { workers: self.workers.iter().map(|w| w.flows.values()).collect() }
    }
}

impl FlowFigures {
    /// The sum over workers of figure `name`.
    pub fn total(&self, name: &str) -> u64 {
        self.workers.iter().flat_map(|w| w.iter()).filter(|f| f.0 == name).map(|f| f.3).sum()
    }
}

impl Collector for FlowFigures {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let Some(first) = self.workers.first() else { return Ok(()) };
        for (i, &(name, help, is_counter, _)) in first.iter().enumerate() {
            let kind = if is_counter { MetricType::Counter } else { MetricType::Gauge };
            let mut family = enc.encode_descriptor(name, help, None, kind)?;
            for (w, figures) in self.workers.iter().enumerate() {
                let label = w.to_string();
                let v = figures[i].3;
                let labels = [("worker", label.as_str())];
                let m = family.encode_family(&labels)?;
                if is_counter { ConstCounter::new(v).encode(m)? } else { ConstGauge::new(v).encode(m)? }
            }
        }
        Ok(())
    }
}

/// Counter sums at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Totals {
    pub io: Vec<(&'static str, u64)>,
    pub forwarded: u64,
    pub drops: [u64; DropReason::COUNT],
    pub passes: [u64; PassReason::COUNT],
}

impl Totals {
    pub fn io(&self, name: &str) -> u64 {
        self.io.iter().find(|(n, _)| *n == name).map_or(0, |e| e.1)
    }

    pub fn drop(&self, r: DropReason) -> u64 {
        self.drops[r.index()]
    }

    pub fn dropped(&self) -> u64 {
        self.drops.iter().sum()
    }

    pub fn passed(&self) -> u64 {
        self.passes.iter().sum()
    }

    /// A one-line summary for logs and the demo.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "rx {} frames, forwarded {}, passed {}, dropped {}, tx {} frames",
            self.io("rx_frames"),
            self.forwarded,
            self.passed(),
            self.dropped(),
            self.io("tx_frames")
        );
        let reasons: Vec<String> = DropReason::ALL
            .iter()
            .filter(|r| self.drop(**r) > 0)
            .map(|r| format!("{}={}", r.name(), self.drop(*r)))
            .collect();
        if !reasons.is_empty() {
            let _ = write!(s, " [{}]", reasons.join(" "));
        }
        s
    }
}

/// The packet counters: `maglevd_forwarded_total`, `maglevd_drop_total{reason}`,
/// `maglevd_pass_total{reason}` and `maglevd_<io counter>_total`.
impl Collector for Totals {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        counter(&mut enc, "maglevd_forwarded", "Frames forwarded to a backend.", self.forwarded)?;
        let mut family =
            enc.encode_descriptor("maglevd_drop", "Frames for a VIP dropped, by reason.", None, MetricType::Counter)?;
        for r in DropReason::ALL {
            ConstCounter::new(self.drop(*r)).encode(family.encode_family(&[("reason", r.name())])?)?;
        }
        let mut family =
            enc.encode_descriptor("maglevd_pass", "Frames left to the kernel, by reason.", None, MetricType::Counter)?;
        for r in PassReason::ALL {
            ConstCounter::new(self.passes[r.index()]).encode(family.encode_family(&[("reason", r.name())])?)?;
        }
        for (name, v) in &self.io {
            let doc = IoCounters::DOCS.iter().find(|(n, _)| n == name).map_or("", |d| d.1);
            counter(&mut enc, &format!("maglevd_{name}"), doc.trim(), *v)?;
        }
        Ok(())
    }
}

/// One unlabelled counter family; `name` without the `_total` suffix (the encoder adds it).
pub fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    ConstCounter::new(v).encode(enc.encode_descriptor(name, help, None, MetricType::Counter)?)
}

/// One unlabelled gauge family.
pub fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    ConstGauge::new(v).encode(enc.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

/// One counter family with a sample per label set.
pub fn counter_family<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, u64)>,
) -> std::fmt::Result {
    let mut family = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in samples {
        ConstCounter::new(v).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// One gauge family with a sample per label set.
pub fn gauge_family<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, u64)>,
) -> std::fmt::Result {
    let mut family = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in samples {
        ConstGauge::new(v).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Prometheus text exposition (format 0.0.4, [`CONTENT_TYPE`]) of these collectors, in order.
pub fn encode(collectors: Vec<Box<dyn Collector>>) -> String {
    let mut registry = prometheus_client::registry::Registry::default();
    for c in collectors {
        registry.register_collector(c);
    }
    let mut out = String::new();
    // Writing into a String cannot fail, and neither can our collectors.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
    out
}

/// The `Content-Type` of [`encode`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_sum_and_render() {
        let c = Counters::new(2);
        let (a, b) = (c.worker(0).unwrap(), c.worker(1).unwrap());
        a.record(&Verdict::Forward { service: 0, backend: 1 });
        b.record(&Verdict::Forward { service: 0, backend: 2 });
        b.record(&Verdict::Drop(DropReason::Ipv4Checksum));
        a.record(&Verdict::Pass(PassReason::NotVip));
        bump(&a.io.rx_frames, 3);
        bump(&b.io.rx_frames, 1);
        assert!(c.worker(2).is_none());
        let t = c.totals();
        assert_eq!((t.forwarded, t.dropped(), t.passed(), t.io("rx_frames")), (2, 1, 1, 4));
        assert_eq!(t.drop(DropReason::Ipv4Checksum), 1);
        assert!(t.summary().contains("[ipv4_checksum=1]"), "{}", t.summary());
        let out = encode(vec![Box::new(t)]);
        assert!(out.contains("# HELP maglevd_rx_frames_total Frames taken from the RX ring.\n"), "{out}");
        assert!(out.contains("# TYPE maglevd_rx_frames_total counter\n"), "{out}");
        assert!(out.contains("maglevd_forwarded_total 2\n"));
        assert!(out.contains("maglevd_drop_total{reason=\"ipv4_checksum\"} 1\n"));
        assert!(out.contains("maglevd_drop_total{reason=\"no_backend\"} 0\n"));
        assert!(out.contains("maglevd_pass_total{reason=\"not_vip\"} 1\n"));
        assert!(out.contains("maglevd_rx_frames_total 4\n"));
    }
}
