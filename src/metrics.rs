//! Counters and their Prometheus text exposition.
//!
//! Each worker owns one [`WorkerCounters`] (cache-line padded, so workers never share a line) and
//! is its only writer: it adds with a plain load + store ([`bump`]), not an atomic read-modify-write,
//! so counting costs what a local `u64 += 1` costs. Readers (the metrics endpoint, the demo) load
//! them with relaxed ordering and sum across workers at scrape time.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_utils::CachePadded;

use crate::dataplane::{DropReason, PassReason, Verdict};

/// Add `n` to a counter that only the calling thread writes.
#[inline]
pub fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

macro_rules! io_counters {
    ($($(#[$m:meta])* $name:ident,)*) => {
        /// Counters of the I/O around `forward()`, per worker.
        #[derive(Debug, Default)]
        pub struct IoCounters { $($(#[$m])* pub $name: AtomicU64,)* }
        impl IoCounters {
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

/// All counters of one worker.
#[derive(Debug, Default)]
pub struct WorkerCounters {
    pub io: IoCounters,
    pub forwarded: AtomicU64,
    pub drops: [AtomicU64; DropReason::COUNT],
    pub passes: [AtomicU64; PassReason::COUNT],
}

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
        Counters { workers: (0..workers).map(|_| CachePadded::new(WorkerCounters::default())).collect() }
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

/// Prometheus text exposition (format 0.0.4) of the packet counters.
pub fn render_counters(c: &Counters, out: &mut String) {
    let t = c.totals();
    let _ = writeln!(out, "# HELP maglevd_forwarded_total Frames forwarded to a backend.");
    let _ = writeln!(out, "# TYPE maglevd_forwarded_total counter");
    let _ = writeln!(out, "maglevd_forwarded_total {}", t.forwarded);
    let _ = writeln!(out, "# HELP maglevd_drop_total Frames for a VIP dropped, by reason.");
    let _ = writeln!(out, "# TYPE maglevd_drop_total counter");
    for r in DropReason::ALL {
        let _ = writeln!(out, "maglevd_drop_total{{reason=\"{}\"}} {}", r.name(), t.drop(*r));
    }
    let _ = writeln!(out, "# HELP maglevd_pass_total Frames left to the kernel, by reason.");
    let _ = writeln!(out, "# TYPE maglevd_pass_total counter");
    for r in PassReason::ALL {
        let _ = writeln!(out, "maglevd_pass_total{{reason=\"{}\"}} {}", r.name(), t.passes[r.index()]);
    }
    for (name, v) in &t.io {
        let _ = writeln!(out, "# TYPE maglevd_{name}_total counter");
        let _ = writeln!(out, "maglevd_{name}_total {v}");
    }
}

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
        let mut out = String::new();
        render_counters(&c, &mut out);
        assert!(out.contains("maglevd_forwarded_total 2\n"));
        assert!(out.contains("maglevd_drop_total{reason=\"ipv4_checksum\"} 1\n"));
        assert!(out.contains("maglevd_drop_total{reason=\"no_backend\"} 0\n"));
        assert!(out.contains("maglevd_pass_total{reason=\"not_vip\"} 1\n"));
        assert!(out.contains("maglevd_rx_frames_total 4\n"));
    }
}
