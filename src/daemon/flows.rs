//! Listing the tracked flows for an operator (`maglevd status --flows`, like `ipvsadm -Lnc`).
//!
//! Each worker owns its flow table (no locks on the forwarding path), so no other thread may read
//! it. A listing is a request the workers answer themselves: the asking thread writes the query
//! under a lock and bumps a sequence number; each worker checks that number once per loop turn
//! (one relaxed load: nothing per packet), and when it changed, walks its table for at most
//! `limit` matching entries, appends them under a lock and marks the sequence served. The asker
//! waits a bounded time for the live workers. An idle worker turns at least every 100 ms, so the
//! answer comes within about that. A walk costs a worker up to a pass over its table (≈ 1 ms
//! per 512 Ki entries), so listings are for people, not for scrapers: the HTTP endpoint serves
//! them to local clients only and at most one per [`MIN_INTERVAL`].

use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::flow::{FlowEntry, Tick, Tracker};

/// Shortest time between two listings.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Most flows one listing returns (per worker and in total).
pub const MAX_LIMIT: usize = 100_000;

/// Which flows to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FlowQuery {
    /// Only flows to this VIP (and port, and protocol number), when given.
    pub vip: Option<Ipv4Addr>,
    pub port: Option<u16>,
    pub protocol: Option<u8>,
    /// At most this many (per worker, then in total).
    pub limit: usize,
}

impl FlowQuery {
    fn matches(&self, e: &FlowEntry) -> bool {
        self.vip.is_none_or(|v| u32::from(v) == e.key.dst)
            && self.port.is_none_or(|p| p == e.key.dport)
            && self.protocol.is_none_or(|p| p == e.key.proto)
    }
}

/// One listed flow: the worker that tracks it and its entry.
pub type ListedFlow = (usize, FlowEntry);

/// The request and the answers; see the module doc.
#[derive(Debug)]
pub struct FlowDump {
    seq: AtomicU64,
    /// Per worker: the last sequence it answered.
    served: Box<[AtomicU64]>,
    query: Mutex<FlowQuery>,
    /// (sequence, flow) answers.
    replies: Mutex<Vec<(u64, ListedFlow)>>,
    /// When the last listing was asked (for [`MIN_INTERVAL`]).
    last: Mutex<Option<Instant>>,
}

/// Why a listing was not made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DumpError {
    #[error("a flow listing was made less than {}s ago; try again", MIN_INTERVAL.as_secs())]
    TooSoon,
}

impl FlowDump {
    pub fn new(workers: usize) -> FlowDump {
        FlowDump {
            seq: AtomicU64::new(0),
            served: (0..workers).map(|_| AtomicU64::new(0)).collect(),
            query: Mutex::new(FlowQuery::default()),
            replies: Mutex::new(Vec::new()),
            last: Mutex::new(None),
        }
    }

    /// Worker `worker`'s side, once per loop turn: answers a pending request from `tracker`.
    pub fn serve(&self, worker: usize, tracker: &Tracker, now: Tick) {
        let Some(served) = self.served.get(worker) else { return };
        let seq = self.seq.load(Ordering::Acquire);
        if served.load(Ordering::Relaxed) == seq {
            return;
        }
        let q = *self.query.lock().unwrap_or_else(|e| e.into_inner());
        let found: Vec<(u64, ListedFlow)> = tracker
            .flows
            .entries(now, usize::MAX)
            .filter(|e| q.matches(e))
            .take(q.limit)
            .map(|e| (seq, (worker, e)))
            .collect();
        self.replies.lock().unwrap_or_else(|e| e.into_inner()).extend(found);
        served.store(seq, Ordering::Release);
    }

    /// The asking side: lists up to `q.limit` flows from every worker for which `alive(i)`,
    /// waiting at most `wait`; also returns the workers that answered. Refused within
    /// [`MIN_INTERVAL`] of the previous listing.
    pub fn list(
        &self,
        mut q: FlowQuery,
        alive: impl Fn(usize) -> bool,
        wait: Duration,
    ) -> Result<(Vec<ListedFlow>, Vec<usize>), DumpError> {
        {
            let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| t.elapsed() < MIN_INTERVAL) {
                return Err(DumpError::TooSoon);
            }
            *last = Some(Instant::now());
        }
        q.limit = q.limit.clamp(1, MAX_LIMIT);
        *self.query.lock().unwrap_or_else(|e| e.into_inner()) = q;
        self.replies.lock().unwrap_or_else(|e| e.into_inner()).clear();
        let seq = self.seq.fetch_add(1, Ordering::AcqRel) + 1;
        let deadline = Instant::now() + wait;
        let pending = |i: usize| alive(i) && self.served[i].load(Ordering::Acquire) != seq;
        while (0..self.served.len()).any(pending) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        let answered: Vec<usize> =
            (0..self.served.len()).filter(|&i| self.served[i].load(Ordering::Acquire) == seq).collect();
        let mut flows: Vec<ListedFlow> = std::mem::take(&mut *self.replies.lock().unwrap_or_else(|e| e.into_inner()))
            .into_iter()
            .filter(|(s, _)| *s == seq)
            .map(|(_, f)| f)
            .collect();
        flows.sort_by_key(|(w, e)| (e.key.dst, e.key.dport, e.key.src, e.key.sport, *w));
        flows.truncate(q.limit);
        Ok((flows, answered))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    use super::*;
    use crate::flow::{FiveTuple, Timeouts};

    fn key(src: u32, dport: u16) -> FiveTuple {
        FiveTuple { src, dst: u32::from(Ipv4Addr::new(10, 201, 0, 1)), sport: 40000, dport, proto: 6 }
    }

    /// Two workers answer from their own tables while they run; the query filters and limits;
    /// a dead worker is not waited for beyond the deadline; a second listing too soon is refused.
    #[test]
    fn workers_list_their_own_flows_on_request() {
        let dump = Arc::new(FlowDump::new(3));
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (0..2usize)
            .map(|w| {
                let (dump, stop) = (Arc::clone(&dump), Arc::clone(&stop));
                std::thread::spawn(move || {
                    let mut t = Tracker::new(1024, Timeouts::default(), Duration::from_secs(5));
                    for i in 0..10 {
                        t.flows.insert(&key(100 * w as u32 + i, if i < 6 { 80 } else { 443 }), w as u32, 0x02, Tick(0));
                    }
                    while !stop.load(Ordering::Relaxed) {
                        dump.serve(w, &t, Tick(16));
                        std::thread::sleep(Duration::from_millis(5));
                    }
                })
            })
            .collect();
        let q = FlowQuery { port: Some(80), limit: 100, ..FlowQuery::default() };
        let (flows, answered) = dump.list(q, |i| i < 2, Duration::from_secs(5)).unwrap();
        assert_eq!(answered, vec![0, 1]);
        assert_eq!(flows.len(), 12, "6 port-80 flows per worker");
        assert!(flows.iter().all(|(w, e)| e.key.dport == 80 && e.backend == *w as u32 && e.idle.as_secs() == 1));
        assert!(flows.iter().all(|(_, e)| e.expires_in == Duration::from_secs(899)), "{flows:?}");
        assert_eq!(dump.list(q, |_| true, Duration::ZERO).unwrap_err(), DumpError::TooSoon);
        *dump.last.lock().unwrap() = None;
        // Worker 2 is "alive" but never answers: the listing ends at the deadline without it.
        let t0 = Instant::now();
        let q = FlowQuery { limit: 5, ..FlowQuery::default() };
        let (flows, answered) = dump.list(q, |_| true, Duration::from_millis(300)).unwrap();
        assert!(t0.elapsed() >= Duration::from_millis(300));
        assert_eq!((flows.len(), answered), (5, vec![0, 1]));
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.join().unwrap();
        }
    }
}
