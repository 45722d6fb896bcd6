//! One forwarding worker: drain the RX ring in batches, run [`forward_frame`] on each frame in
//! place, copy forwarded frames into the TX ring, and flush the TX ring with one `send()` per batch.
//!
//! Per batch: one snapshot load (wait-free `arc-swap`), one clock read, no allocation, no lock, no
//! syscall except the single `send()` of the flush and the `poll()` when the ring is empty. Counters
//! are the worker's own ([`WorkerCounters`]).
//!
//! # What the counters mean
//! * A frame counts as **forwarded** (and in `tx_frames`) only when the kernel took it from the TX
//!   ring (at flush, from [`crate::io::FlushOutcome::frames`]). A frame the TX ring refused is a
//!   drop (`tx_ring_full`, `tx_rejected`); a queued frame the kernel never took is a drop too
//!   (`tx_send_failed`): after a hard `send()` error (e.g. ENETDOWN: the egress is down) at once, and
//!   after [`TX_STALL_LIMIT`] without progress on EAGAIN/ENOBUFS, so the ring never wedges and a
//!   stale frame is never sent late.
//! * **RX ring overflow**: the kernel counts frames it could not put in the ring
//!   (`PACKET_STATISTICS`, reset on read). The worker reads them when a frame is marked
//!   `TP_STATUS_LOSING` (at most once per batch), at least every [`RX_STATS_EVERY`], and when it
//!   stops, into `rx_ring_drops`.
//! * **Too big for the egress**: a DF frame above the egress MTU is dropped before the copy
//!   (`frag_needed`) and answered with an ICMP fragmentation-needed to the client out of the
//!   ingress interface (see [`crate::dataplane::pmtu`]): one send per message, at most
//!   [`TokenBucket::ICMP_RATE`] per second and worker (bursts of [`TokenBucket::ICMP_BURST`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use std::net::Ipv4Addr;

use crate::dataplane::pmtu::{self, FRAG_NEEDED_LEN, TokenBucket};
use crate::dataplane::{DropReason, FrameMeta, Lookahead, Snapshot, Verdict, forward_frame};
use crate::flow::{Tick, Tracker};
use crate::io::{FlushStatus, FrameSender, IoError, RxDevice, RxRing, TxDevice, TxError, VipFilter};
use crate::metrics::{WorkerCounters, bump};

use super::Shared;

/// Frames handled per batch before the TX ring is flushed.
pub const BATCH: usize = 256;
/// Spins on `rx` for up to `budget` (or until `stop`): true as soon as a frame is ready. No
/// system call; the clock and the stop flag are read every 256 turns (a few µs).
pub fn spin_until_ready<R: RxDevice + ?Sized>(rx: &R, budget: Duration, stop: &AtomicBool) -> bool {
    let t0 = Instant::now();
    let mut turns = 0u32;
    loop {
        if rx.ready() {
            return true;
        }
        turns = turns.wrapping_add(1);
        if turns.is_multiple_of(256) && (t0.elapsed() >= budget || stop.load(Ordering::Relaxed)) {
            return false;
        }
        std::hint::spin_loop();
    }
}

/// How long an idle worker sleeps in `poll()` before it checks for shutdown.
pub const IDLE_WAIT: Duration = Duration::from_millis(100);
/// The kernel's RX drop count is read at least this often (and at once on `TP_STATUS_LOSING`).
pub const RX_STATS_EVERY: Duration = Duration::from_secs(1);
/// Queued TX frames that make no progress (EAGAIN/ENOBUFS) for this long are discarded.
pub const TX_STALL_LIMIT: Duration = Duration::from_millis(100);

/// An RX device whose kernel-side filter follows the configured VIPs.
pub trait VipFiltered {
    /// Accept IPv4 frames to exactly these VIPs from now on.
    fn set_vips(&mut self, vips: &[Ipv4Addr]) -> Result<(), IoError>;
}

impl VipFiltered for RxRing {
    fn set_vips(&mut self, vips: &[Ipv4Addr]) -> Result<(), IoError> {
        self.set_filter(&VipFilter::new(vips, false).build()?)
    }
}

/// The in-memory device (unit tests only) has no kernel filter: `forward()` sees everything.
#[cfg(test)]
impl VipFiltered for crate::io::MemRx {
    fn set_vips(&mut self, _vips: &[Ipv4Addr]) -> Result<(), IoError> {
        Ok(())
    }
}

/// Run until `shared.stop` is set: RX ring `rx` (ingress), TX ring `tx` (egress), and `icmp`, a
/// sender on the ingress interface for ICMP errors to clients.
pub fn run<R: RxDevice + VipFiltered, T: TxDevice, S: FrameSender>(
    rx: &mut R,
    tx: &mut T,
    icmp: &mut S,
    shared: &Shared,
    counters: &WorkerCounters,
) {
    Worker::new(rx, tx, icmp, counters, Instant::now()).run(shared);
}

/// Re-opens a worker's devices for a rings epoch (see [`Worker::run_reopening`]).
pub type Reopen<'f, R, T, S> = dyn FnMut(u64) -> Result<(R, T, S), IoError> + 'f;

/// One worker's devices and the state it keeps between batches.
#[derive(Debug)]
pub struct Worker<'a, R, T, S> {
    rx: &'a mut R,
    tx: &'a mut T,
    icmp: &'a mut S,
    counters: &'a WorkerCounters,
    icmp_limit: TokenBucket,
    /// The kernel's cumulative RX drop count at the last read.
    rx_drops_seen: u64,
    next_rx_stats: Instant,
    /// A frame of the current batch was marked `TP_STATUS_LOSING`.
    losing: bool,
    /// Since when queued TX frames have made no progress.
    tx_stalled_since: Option<Instant>,
    /// Connection tracking (the daemon always tracks; see [`Worker::tracking`]).
    tracker: Option<Tracker>,
    /// When an empty poll may next run the long sweep ([`SWEEP_WHEN_IDLE`]).
    next_idle_sweep: Instant,
    /// The origin of the tracker's [`Tick`]s.
    epoch: Instant,
    /// The first pass's flow keys of the current batch (see [`Worker::run_batch`]).
    ahead: Box<Lookahead<BATCH>>,
}

/// Flow-table buckets whose expired entries a worker reclaims after each batch, and when idle
/// (the long sweep, at most once per [`IDLE_WAIT`]). Bounded work: 16 buckets are 128 entries in
/// 48 cache lines; an idle worker (a wake-up every [`IDLE_WAIT`]) walks a 512 K-entry table in
/// about 6 s.
pub const SWEEP_PER_BATCH: usize = 16;
pub const SWEEP_WHEN_IDLE: usize = 1024;

impl<'a, R: RxDevice, T: TxDevice, S: FrameSender> Worker<'a, R, T, S> {
    pub fn new(rx: &'a mut R, tx: &'a mut T, icmp: &'a mut S, counters: &'a WorkerCounters, now: Instant) -> Self {
        Worker {
            rx,
            tx,
            icmp,
            counters,
            icmp_limit: TokenBucket::icmp(now),
            rx_drops_seen: 0,
            next_rx_stats: now + RX_STATS_EVERY,
            losing: false,
            tx_stalled_since: None,
            tracker: None,
            next_idle_sweep: now,
            epoch: now,
            ahead: Box::default(),
        }
    }

    /// Track connections in `tracker` (see [`crate::dataplane::forward_tracked`]) from now on.
    pub fn tracking(mut self, tracker: Tracker) -> Self {
        self.tracker = Some(tracker);
        self
    }

    /// The worker's connection tracking, if on.
    pub fn tracker(&self) -> Option<&Tracker> {
        self.tracker.as_ref()
    }

    /// The tracker's time at `now`.
    fn tick(&self, now: Instant) -> Tick {
        Tick::since(self.epoch, now)
    }

    pub fn rx(&mut self) -> &mut R {
        self.rx
    }

    pub fn tx(&mut self) -> &mut T {
        self.tx
    }

    pub fn icmp(&mut self) -> &mut S {
        self.icmp
    }

    /// Run until `shared.stop` is set.
    pub fn run(&mut self, shared: &Shared)
    where
        R: VipFiltered,
    {
        self.run_inner(shared, None);
    }

    /// [`Worker::run`] as the daemon's worker `index` runs it: when `shared.rings_epoch` moves
    /// (an interface was re-created or changed), replace the devices by `reopen(epoch)`'s — the
    /// same rings on the interfaces as they are now — and put the current VIP filter on them.
    /// Queued frames of the old TX ring are discarded (counted). A failed re-open marks the
    /// worker's rings dead in `shared.rings_ok` (readiness fails) and is retried every second.
    pub fn run_reopening(&mut self, shared: &Shared, index: usize, reopen: &mut Reopen<'_, R, T, S>)
    where
        R: VipFiltered,
    {
        self.run_inner(shared, Some((index, reopen)));
    }

    fn run_inner(&mut self, shared: &Shared, mut reopen: Option<(usize, &mut Reopen<'_, R, T, S>)>)
    where
        R: VipFiltered,
    {
        let mut backlog = 0u32;
        let first = shared.snapshot.load();
        let mut generation = first.generation();
        let mut vips: Vec<Ipv4Addr> = first.vip_addrs().collect();
        drop(first);
        let mut epoch = shared.rings_epoch.load(Ordering::Relaxed);
        let mut retry_at: Option<Instant> = None;
        while !shared.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            self.counters.heartbeat_ms.store(shared.millis(now), Ordering::Relaxed);
            // One relaxed load per batch: has an interface been re-created?
            let want = shared.rings_epoch.load(Ordering::Relaxed);
            if let Some((index, f)) = reopen.as_mut()
                && (want != epoch || retry_at.is_some_and(|t| now >= t))
            {
                epoch = want;
                match f(want) {
                    Ok((rx, tx, icmp)) => {
                        self.discard_queued();
                        *self.rx = rx;
                        *self.tx = tx;
                        *self.icmp = icmp;
                        backlog = 0;
                        self.rx_drops_seen = 0;
                        if let Err(e) = self.rx.set_vips(&vips) {
                            tracing::error!(worker = *index, error = %e, "cannot put the VIP filter on the re-opened ring");
                        }
                        retry_at = None;
                        if let Some(ok) = shared.rings_ok.get(*index) {
                            ok.store(true, Ordering::Relaxed);
                        }
                        tracing::info!(worker = *index, "rings re-opened");
                    }
                    Err(e) => {
                        if retry_at.is_none() {
                            tracing::error!(worker = *index, error = %e, "cannot re-open the rings; retrying every second");
                        }
                        retry_at = Some(now + Duration::from_secs(1));
                        if let Some(ok) = shared.rings_ok.get(*index) {
                            ok.store(false, Ordering::Relaxed);
                        }
                    }
                }
            }
            // One snapshot per batch: every frame of the batch sees the same generation.
            let snap = shared.snapshot.load();
            // A new snapshot may bring other VIPs (a reload): follow them in the kernel filter.
            // Only on a generation change, never per packet.
            if snap.generation() != generation {
                generation = snap.generation();
                let now: Vec<Ipv4Addr> = snap.vip_addrs().collect();
                if now != vips {
                    let ok = match self.rx.set_vips(&now) {
                        Ok(()) => {
                            vips = now;
                            true
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "cannot update the VIP filter");
                            false
                        }
                    };
                    if let Some(flag) = reopen.as_ref().and_then(|(i, _)| shared.filter_ok.get(*i)) {
                        flag.store(ok, Ordering::Relaxed);
                    }
                }
            }
            let n = self.run_batch(&snap, now);
            // Not held while sleeping: arc-swap guards are meant to be short-lived.
            drop(snap);
            let tick = self.tick(now);
            if let Some(t) = self.tracker.as_mut() {
                // The long sweep at most once per IDLE_WAIT: a worker woken for a frame or two at
                // a time finds the ring empty right after each, and used to walk 1024 buckets
                // (~200 KB) every time (7 % of its CPU under bulk TCP, 18 % under HTTP in perf).
                let long = n == 0 && now >= self.next_idle_sweep;
                if long {
                    self.next_idle_sweep = now + IDLE_WAIT;
                }
                t.sweep(tick, if long { SWEEP_WHEN_IDLE } else { SWEEP_PER_BATCH });
                self.counters.flows.publish(t);
                // One relaxed load unless `status --flows` asked for a listing.
                shared.flow_dump.serve(self.counters.index, t, tick);
            }
            if n > 0 || backlog > 0 {
                backlog = self.flush(now);
            }
            if self.losing || now >= self.next_rx_stats {
                self.read_rx_drops(now);
            }
            if n == 0 {
                // Busy polling (`daemon.busy_poll_us`): spin on the ring before sleeping, so a
                // frame arriving meanwhile costs no wake-up.
                let spin = shared.busy_poll_us.load(Ordering::Relaxed);
                if backlog == 0 && spin > 0 && spin_until_ready(&*self.rx, Duration::from_micros(spin), &shared.stop) {
                    continue;
                }
                // Frames still queued after EAGAIN/ENOBUFS: retry soon rather than sleep long.
                let wait = if backlog > 0 { Duration::from_millis(1) } else { IDLE_WAIT };
                if self.rx.wait(wait).is_err() {
                    bump(&self.counters.io.rx_wait_errors, 1);
                    std::thread::sleep(wait);
                }
            }
        }
        // Stopping: what the kernel does not take now is never sent.
        if self.flush(Instant::now()) > 0 {
            self.discard_queued();
        }
        self.read_rx_drops(Instant::now());
    }

    /// Handle one batch of received frames at time `now`; returns how many were taken from the
    /// ring. Forwarded frames are queued in the TX ring, not yet counted (see [`Worker::flush`]).
    ///
    /// With connection tracking the batch is handled in two passes over the ring's ready frames:
    /// the first ([`RxDevice::peek_batch`], [`Lookahead::prefetch`]) only hashes each frame's
    /// flow key and starts loading its flow-table bucket into the CPU caches; the second takes the
    /// frames and forwards them ([`Lookahead::forward`]), by then finding most buckets in cache
    /// (see "Batches" in [`crate::dataplane`]).
    pub fn run_batch(&mut self, snap: &Snapshot, now: Instant) -> usize {
        let tick = self.tick(now);
        let Worker { rx, tx, icmp, counters, icmp_limit, losing, tracker, ahead, .. } = self;
        let io = &counters.io;
        let egress_mtu = tx.mtu();
        let ingress_mac = snap.links().ingress_mac;
        let max = match tracker.as_ref() {
            Some(t) => match rx.peek_batch(BATCH, |i, data| ahead.prefetch(i, data, t)) {
                0 => BATCH,
                walked => walked,
            },
            None => BATCH,
        };
        let mut next = 0;
        let n = rx.recv_batch(max, |frame| {
            // The frame's index in the batch: the same as in the first pass.
            let i = next;
            next += 1;
            bump(&io.rx_frames, 1);
            bump(&io.rx_bytes, frame.data.len() as u64);
            *losing |= frame.status.losing();
            if frame.truncated {
                // Cut to the slot size: forwarding it would corrupt the flow.
                bump(&io.rx_truncated, 1);
                return;
            }
            let meta = FrameMeta {
                vlan_tci: frame.vlan_tci,
                gso: frame.vnet.is_some_and(|v| v.is_gso()),
                egress_mtu: Some(egress_mtu),
            };
            let (verdict, new_flow) = match tracker {
                Some(t) => {
                    let inserts = t.flows.inserts();
                    let v = ahead.forward(i, frame.data, &meta, snap, t, tick);
                    (v, t.flows.inserts() != inserts)
                }
                None => (forward_frame(frame.data, &meta, snap), false),
            };
            match verdict {
                Verdict::Forward { service, backend } => {
                    let reason = match tx.push(frame.vnet.as_ref(), frame.data) {
                        Ok(()) => {
                            if let Some(c) = snap.backend_counters(service, backend) {
                                c.record(counters.index, frame.data.len(), new_flow);
                            }
                            return;
                        }
                        Err(TxError::RingFull) => {
                            bump(&io.tx_ring_full, 1);
                            DropReason::TxRingFull
                        }
                        Err(TxError::FrameTooBig { .. }) => {
                            bump(&io.tx_too_big, 1);
                            DropReason::TxRejected
                        }
                        Err(TxError::BadVnetHdr(_)) => {
                            bump(&io.tx_bad_vnet, 1);
                            DropReason::TxRejected
                        }
                    };
                    counters.record(&Verdict::Drop(reason));
                }
                Verdict::Drop(DropReason::FragNeeded) => {
                    counters.record(&verdict);
                    // The frame is unchanged on a drop: its source MAC is still the sender's.
                    if !icmp_limit.take(now) {
                        bump(&io.icmp_frag_needed_suppressed, 1);
                        return;
                    }
                    let mut out = [0u8; FRAG_NEEDED_LEN];
                    let mtu = u16::try_from(egress_mtu).unwrap_or(u16::MAX);
                    let sent = pmtu::frag_needed(frame.data, ingress_mac, mtu, &mut out)
                        .is_some_and(|()| icmp.send_frame(&out).is_ok());
                    bump(if sent { &io.icmp_frag_needed_sent } else { &io.icmp_frag_needed_errors }, 1);
                }
                _ => counters.record(&verdict),
            }
        });
        if n > 0 {
            bump(&io.rx_batches, 1);
        }
        n
    }

    /// Flush the TX ring once at time `now` and count the outcome; returns the frames still
    /// queued. Frames the kernel took count as forwarded; after a hard error, or no progress for
    /// [`TX_STALL_LIMIT`], the queued frames are discarded (counted as `tx_send_failed`).
    pub fn flush(&mut self, now: Instant) -> u32 {
        let io = &self.counters.io;
        let o = self.tx.flush();
        if o.syscalls > 0 {
            bump(&io.tx_flushes, o.syscalls as u64);
        }
        if o.frames > 0 {
            bump(&self.counters.forwarded, u64::from(o.frames));
            bump(&io.tx_frames, u64::from(o.frames));
            bump(&io.tx_bytes, o.bytes);
            self.tx_stalled_since = None;
        }
        bump(&io.tx_kernel_dropped_bytes, o.dropped_bytes);
        let give_up = match o.status {
            FlushStatus::Idle | FlushStatus::Sent => {
                self.tx_stalled_since = None;
                false
            }
            FlushStatus::Again | FlushStatus::NoBufs => {
                bump(if o.status == FlushStatus::Again { &io.tx_eagain } else { &io.tx_enobufs }, 1);
                let since = *self.tx_stalled_since.get_or_insert(now);
                now.saturating_duration_since(since) >= TX_STALL_LIMIT
            }
            // ENETDOWN, ENXIO…: the queued frames will not go out soon, and would be stale if they did.
            FlushStatus::Error(_) => {
                bump(&io.tx_errors, 1);
                true
            }
        };
        if give_up && o.backlog > 0 {
            self.discard_queued();
            return 0;
        }
        o.backlog
    }

    fn discard_queued(&mut self) {
        let n = self.tx.discard_queued();
        bump(&self.counters.drops[DropReason::TxSendFailed.index()], n as u64);
        self.tx_stalled_since = None;
    }

    /// Add the frames the kernel could not put in the RX ring since the last read to
    /// `rx_ring_drops`.
    pub fn read_rx_drops(&mut self, now: Instant) {
        match self.rx.kernel_drops() {
            Ok(total) => {
                bump(&self.counters.io.rx_ring_drops, total.saturating_sub(self.rx_drops_seen));
                self.rx_drops_seen = self.rx_drops_seen.max(total);
            }
            Err(_) => bump(&self.counters.io.rx_stats_errors, 1),
        }
        self.losing = false;
        self.next_rx_stats = now + RX_STATS_EVERY;
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::path::Path;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use etherparse::PacketBuilder;

    use super::*;
    use crate::config;
    use crate::dataplane::{DropReason, Links, PassReason};
    use crate::io::{MemFrame, MemRx, MemTx, VnetHdr};
    use crate::metrics::Counters;
    use crate::wire::MacAddr;

    const INGRESS: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const EGRESS: [u8; 6] = [2, 0, 0, 0, 0, 2];
    const ROUTER: [u8; 6] = [2, 0, 0, 0, 9, 9];

    fn snapshot(vip: &str, generation: u64) -> Snapshot {
        let text = format!(
            "[interfaces]\ningress = \"in\"\negress = \"out\"\n[[service]]\nvip = \"{vip}\"\nprotocol = \"tcp\"\nport = 80\n[[service.backend]]\nip = \"10.0.0.7\"\nmac = \"02:00:00:00:00:07\"\n"
        );
        let cfg = config::parse(&text, Path::new("t.toml")).unwrap();
        let links = Links { ingress_mac: MacAddr(INGRESS), egress_mac: MacAddr(EGRESS) };
        Snapshot::build(&cfg, links, &|_| None, generation).unwrap()
    }

    fn shared(snap: Snapshot) -> Shared {
        Shared::new(snap, 1, Arc::new(AtomicBool::new(false)))
    }

    fn tcp(dst: [u8; 4], payload: usize) -> Vec<u8> {
        let b = PacketBuilder::ethernet2(ROUTER, INGRESS).ipv4([192, 168, 1, 1], dst, 64).tcp(40000, 80, 1, 512);
        let mut v = Vec::new();
        b.write(&mut v, &vec![0u8; payload]).unwrap();
        v
    }

    /// A receive device that records the VIP filters it was given.
    #[derive(Debug, Default)]
    struct FilteredRx {
        inner: MemRx,
        filters: Vec<Vec<Ipv4Addr>>,
    }

    impl RxDevice for FilteredRx {
        fn recv_batch<F: FnMut(crate::io::RxFrame<'_>)>(&mut self, max: usize, f: F) -> usize {
            self.inner.recv_batch(max, f)
        }
        fn wait(&mut self, timeout: Duration) -> Result<bool, IoError> {
            std::thread::sleep(Duration::from_millis(1));
            self.inner.wait(timeout)
        }
        fn kernel_drops(&mut self) -> Result<u64, IoError> {
            self.inner.kernel_drops()
        }
    }

    impl VipFiltered for FilteredRx {
        fn set_vips(&mut self, vips: &[Ipv4Addr]) -> Result<(), IoError> {
            self.filters.push(vips.to_vec());
            Ok(())
        }
    }

    fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    fn dropped(c: &WorkerCounters, r: DropReason) -> u64 {
        get(&c.drops[r.index()])
    }

    #[test]
    fn a_batch_forwards_counts_and_keeps_the_vnet_header() {
        let snap = snapshot("10.201.0.1", 1);
        let counters = Counters::new(1);
        let c = counters.worker(0).unwrap();
        let (mut rx, mut tx, mut icmp) = (MemRx::new(), MemTx::new(8), MemTx::new(8));
        let gso = VnetHdr { flags: 1, gso_type: 1, hdr_len: 54, gso_size: 1448, csum_start: 34, csum_offset: 16 };
        rx.inject(MemFrame { vnet: Some(gso), ..MemFrame::new(tcp([10, 201, 0, 1], 3000)) });
        rx.inject(MemFrame::new(tcp([10, 9, 9, 9], 0)));
        let mut bad = tcp([10, 201, 0, 1], 0);
        bad[24] ^= 0xff;
        rx.inject(MemFrame::new(bad));
        // Cut by the kernel to the slot size: never forwarded, counted apart.
        rx.inject(MemFrame { wire_len: Some(70_000), ..MemFrame::new(tcp([10, 201, 0, 1], 100)) });

        let mut w = Worker::new(&mut rx, &mut tx, &mut icmp, c, Instant::now());
        assert_eq!(w.run_batch(&snap, Instant::now()), 4);
        assert_eq!(get(&c.forwarded), 0, "queued is not forwarded yet");
        assert_eq!(w.flush(Instant::now()), 0);
        assert_eq!(tx.sent.len(), 1);
        let out = &tx.sent[0];
        assert_eq!(&out.data[..6], &[2, 0, 0, 0, 0, 7], "backend MAC");
        assert_eq!(&out.data[6..12], &EGRESS);
        assert_eq!(&out.data[12..], &tcp([10, 201, 0, 1], 3000)[12..], "nothing else changed");
        assert_eq!(out.vnet, Some(gso), "the GSO/checksum state travels with the frame");
        assert_eq!((get(&c.io.rx_frames), get(&c.io.rx_batches), get(&c.io.rx_truncated)), (4, 1, 1));
        assert_eq!((get(&c.forwarded), get(&c.io.tx_frames), get(&c.io.tx_flushes)), (1, 1, 1));
        assert_eq!(get(&c.io.tx_bytes), out.data.len() as u64);
        assert_eq!(get(&c.passes[PassReason::NotVip.index()]), 1);
        assert_eq!(dropped(c, DropReason::Ipv4Checksum), 1);
    }

    /// Each forwarded frame is counted for its backend, in the worker's own cell: frames, bytes,
    /// and with tracking the flow once, when it is first seen. Frames not forwarded count nothing.
    #[test]
    fn forwarded_frames_are_counted_per_backend_and_worker() {
        use crate::dataplane::BuildState;
        use crate::flow::{Timeouts, Tracker};
        let text = "[interfaces]\ningress = \"in\"\negress = \"out\"\n[[service]]\nvip = \"10.201.0.1\"\nprotocol = \"tcp\"\nport = 80\n[[service.backend]]\nip = \"10.0.0.7\"\nmac = \"02:00:00:00:00:07\"\n";
        let cfg = config::parse(text, Path::new("t.toml")).unwrap();
        let links = Links { ingress_mac: MacAddr(INGRESS), egress_mac: MacAddr(EGRESS) };
        let mut state = BuildState::for_workers(2);
        let snap = Snapshot::build_observed(&cfg, links, &|_| None, &|_, _| true, 1, &mut state).unwrap();
        let counters = Counters::new(2);
        let c = counters.worker(1).unwrap();
        let (mut rx, mut tx, mut icmp) = (MemRx::new(), MemTx::new(64), MemTx::new(8));
        let flow = |sport: u16, payload: usize| {
            let b = PacketBuilder::ethernet2(ROUTER, INGRESS)
                .ipv4([192, 168, 1, 1], [10, 201, 0, 1], 64)
                .tcp(sport, 80, 1, 512);
            let mut v = Vec::new();
            b.write(&mut v, &vec![0u8; payload]).unwrap();
            v
        };
        let mut bytes = 0;
        for (sport, payload) in [(40000, 0), (40000, 100), (40001, 0), (40000, 10), (40002, 1400)] {
            let f = flow(sport, payload);
            bytes += f.len() as u64;
            rx.inject(MemFrame::new(f));
        }
        rx.inject(MemFrame::new(tcp([10, 9, 9, 9], 0)));
        let mut w = Worker::new(&mut rx, &mut tx, &mut icmp, c, Instant::now()).tracking(Tracker::new(
            64,
            Timeouts::default(),
            Duration::from_secs(5),
        ));
        assert_eq!(w.run_batch(&snap, Instant::now()), 6);
        let b = snap.backend_counters(0, 0).unwrap();
        let want = crate::metrics::BackendTotals { packets: 5, bytes, flows: 3 };
        assert_eq!(b.totals(), want);
        assert_eq!(get(&b.cell(1).packets), 5, "worker 1's cell");
        assert_eq!(get(&b.cell(0).packets), 0, "worker 0 forwarded nothing");
    }

    /// With tracking, a batch goes through the two passes and gives what forwarding each frame on
    /// its own gives: the same frames out, the same table; frames beyond one batch too.
    #[test]
    fn a_tracked_batch_in_two_passes_forwards_like_one_frame_at_a_time() {
        use crate::dataplane::forward_tracked;
        use crate::flow::{Timeouts, Tracker};
        let snap = snapshot("10.201.0.1", 1);
        let counters = Counters::new(1);
        let c = counters.worker(0).unwrap();
        let tracker = || Tracker::new(64, Timeouts::default(), Duration::from_secs(5));
        let frames: Vec<Vec<u8>> = (0..BATCH as u16 + 40)
            .map(|n| {
                let b = PacketBuilder::ethernet2(ROUTER, INGRESS)
                    .ipv4([192, 168, 0, (n % 50) as u8], [10, 201, 0, if n % 7 == 0 { 2 } else { 1 }], 64)
                    .tcp(1024 + n % 100, 80, 1, 512);
                let mut v = Vec::new();
                b.write(&mut v, &[]).unwrap();
                if n % 11 == 0 {
                    v.truncate(30);
                }
                v
            })
            .collect();
        let (mut rx, mut tx, mut icmp) = (MemRx::new(), MemTx::new(1024), MemTx::new(8));
        for f in &frames {
            rx.inject(MemFrame::new(f.clone()));
        }
        let t0 = Instant::now();
        let mut w = Worker::new(&mut rx, &mut tx, &mut icmp, c, t0).tracking(tracker());
        assert_eq!(w.run_batch(&snap, t0), BATCH);
        assert_eq!(w.run_batch(&snap, t0), 40);
        w.flush(t0);
        let table = w.tracker().unwrap().flows.stats();

        let mut alone = tracker();
        let want: Vec<Vec<u8>> = frames
            .iter()
            .filter_map(|f| {
                let mut f = f.clone();
                let v = forward_tracked(
                    &mut f,
                    &FrameMeta { egress_mtu: Some(65535), ..FrameMeta::default() },
                    &snap,
                    &mut alone,
                    Tick(0),
                );
                matches!(v, Verdict::Forward { .. }).then_some(f)
            })
            .collect();
        let sent: Vec<Vec<u8>> = tx.sent.iter().map(|f| f.data.clone()).collect();
        assert_eq!(sent, want);
        assert_eq!(table, alone.flows.stats());
        assert!(table.hits > 0 && table.evictions > 0, "{table:?}");
    }

    #[test]
    fn a_full_ring_and_a_refused_send_are_counted_and_retried() {
        let snap = snapshot("10.201.0.1", 1);
        let counters = Counters::new(1);
        let c = counters.worker(0).unwrap();
        let (mut rx, mut tx, mut icmp) = (MemRx::new(), MemTx::new(2), MemTx::new(2));
        for _ in 0..3 {
            rx.inject(MemFrame::new(tcp([10, 201, 0, 1], 0)));
        }
        let t0 = Instant::now();
        let mut w = Worker::new(&mut rx, &mut tx, &mut icmp, c, t0);
        w.run_batch(&snap, t0);
        assert_eq!((get(&c.io.tx_ring_full), dropped(c, DropReason::TxRingFull)), (1, 1));
        w.tx().fail_next = Some(FlushStatus::Again);
        assert_eq!(w.flush(t0), 2, "EAGAIN keeps the frames queued");
        assert_eq!((get(&c.io.tx_eagain), get(&c.forwarded), get(&c.io.tx_frames)), (1, 0, 0));
        assert_eq!(w.flush(t0 + Duration::from_millis(1)), 0);
        assert_eq!(tx.sent.len(), 2);
        assert_eq!((get(&c.io.tx_flushes), get(&c.forwarded), get(&c.io.tx_frames)), (2, 2, 2));
    }

    /// Only frames the kernel took are forwarded: frames the TX ring refuses are drops, and with
    /// the egress down (every send() fails with ENETDOWN) nothing is forwarded, every frame is a
    /// counted drop and the ring never wedges.
    #[test]
    fn forwarded_counts_only_frames_the_kernel_took() {
        let snap = snapshot("10.201.0.1", 1);
        let counters = Counters::new(1);
        let c = counters.worker(0).unwrap();
        let (mut rx, mut tx, mut icmp) = (MemRx::new(), MemTx::new(4), MemTx::new(4));
        // Super-frames larger than a TX slot: refused at push.
        tx.max_frame = 2048;
        let gso = VnetHdr { flags: 1, gso_type: 1, hdr_len: 54, gso_size: 1448, csum_start: 34, csum_offset: 16 };
        for _ in 0..10 {
            rx.inject(MemFrame { vnet: Some(gso), ..MemFrame::new(tcp([10, 201, 0, 1], 9000)) });
        }
        let t0 = Instant::now();
        let mut w = Worker::new(&mut rx, &mut tx, &mut icmp, c, t0);
        w.run_batch(&snap, t0);
        w.flush(t0);
        assert_eq!((get(&c.forwarded), get(&c.io.tx_frames)), (0, 0), "none was sent");
        assert_eq!((dropped(c, DropReason::TxRejected), get(&c.io.tx_too_big)), (10, 10));

        // The egress goes down.
        w.tx().fail_always = Some(FlushStatus::Error(libc::ENETDOWN));
        for round in 0..5u32 {
            for _ in 0..3 {
                w.rx().inject(MemFrame::new(tcp([10, 201, 0, 1], 0)));
            }
            let now = t0 + Duration::from_millis(u64::from(round));
            assert_eq!(w.run_batch(&snap, now), 3);
            assert_eq!(w.flush(now), 0, "discarded, not left queued");
            assert_eq!(w.tx().queued(), 0);
        }
        assert_eq!((get(&c.forwarded), get(&c.io.tx_frames)), (0, 0));
        assert_eq!(get(&c.io.tx_errors), 5);
        assert_eq!(dropped(c, DropReason::TxSendFailed), 15);
        assert_eq!(dropped(c, DropReason::TxRingFull), 0, "the ring never filled up");

        // Back up: frames flow again.
        w.tx().fail_always = None;
        w.rx().inject(MemFrame::new(tcp([10, 201, 0, 1], 0)));
        w.run_batch(&snap, t0);
        w.flush(t0);
        assert_eq!((get(&c.forwarded), get(&c.io.tx_frames)), (1, 1));
        assert_eq!(tx.sent.len(), 1);
    }

    /// EAGAIN/ENOBUFS keep frames queued for a retry, but not forever.
    #[test]
    fn frames_stuck_on_eagain_are_discarded_after_the_stall_limit() {
        let snap = snapshot("10.201.0.1", 1);
        let counters = Counters::new(1);
        let c = counters.worker(0).unwrap();
        let (mut rx, mut tx, mut icmp) = (MemRx::new(), MemTx::new(4), MemTx::new(4));
        rx.inject(MemFrame::new(tcp([10, 201, 0, 1], 0)));
        rx.inject(MemFrame::new(tcp([10, 201, 0, 1], 0)));
        tx.fail_always = Some(FlushStatus::NoBufs);
        let t0 = Instant::now();
        let mut w = Worker::new(&mut rx, &mut tx, &mut icmp, c, t0);
        w.run_batch(&snap, t0);
        assert_eq!(w.flush(t0), 2);
        assert_eq!(w.flush(t0 + TX_STALL_LIMIT / 2), 2, "retried within the limit");
        assert_eq!(w.flush(t0 + TX_STALL_LIMIT), 0);
        assert_eq!((dropped(c, DropReason::TxSendFailed), get(&c.forwarded)), (2, 0));
        assert_eq!(get(&c.io.tx_enobufs), 3);
    }

    #[test]
    fn a_frame_of_another_vlan_is_not_forwarded() {
        let snap = snapshot("10.201.0.1", 1);
        let counters = Counters::new(1);
        let c = counters.worker(0).unwrap();
        let (mut rx, mut tx, mut icmp) = (MemRx::new(), MemTx::new(8), MemTx::new(8));
        for tci in [Some(100), Some(0x2000 | 7), None, Some(0x2000)] {
            rx.inject(MemFrame { vlan_tci: tci, ..MemFrame::new(tcp([10, 201, 0, 1], 0)) });
        }
        let mut w = Worker::new(&mut rx, &mut tx, &mut icmp, c, Instant::now());
        w.run_batch(&snap, Instant::now());
        w.flush(Instant::now());
        assert_eq!(get(&c.passes[PassReason::ForeignVlan.index()]), 2);
        assert_eq!((get(&c.forwarded), tx.sent.len()), (2, 2), "untagged and VLAN 0 (priority) only");
    }

    /// A DF frame above the egress MTU: no TX copy, one ICMP fragmentation-needed to the client per
    /// frame up to the rate limit.
    #[test]
    fn too_big_df_frames_get_rate_limited_icmp_and_no_tx_copy() {
        let snap = snapshot("10.201.0.1", 1);
        let counters = Counters::new(1);
        let c = counters.worker(0).unwrap();
        let (mut rx, mut tx, mut icmp) = (MemRx::new(), MemTx::new(64), MemTx::new(64));
        tx.mtu = 1400;
        let big = tcp([10, 201, 0, 1], 1500);
        rx.inject(MemFrame::new(big.clone()));
        let t0 = Instant::now();
        let mut w = Worker::new(&mut rx, &mut tx, &mut icmp, c, t0);
        w.run_batch(&snap, t0);
        w.flush(t0);
        assert_eq!(w.tx().pending.len() + w.tx().sent.len(), 0, "no copy into the TX ring");
        assert_eq!(w.icmp().sent.len(), 1);
        let mut want = [0u8; FRAG_NEEDED_LEN];
        pmtu::frag_needed(&big, MacAddr(INGRESS), 1400, &mut want).unwrap();
        assert_eq!(w.icmp().sent[0].data, want, "the ICMP for this frame and MTU");
        assert_eq!(&w.icmp().sent[0].data[..6], &ROUTER);
        assert_eq!((dropped(c, DropReason::FragNeeded), get(&c.io.icmp_frag_needed_sent)), (1, 1));

        // A flood in the same instant: the rest of the burst goes out, then the limit holds.
        for _ in 0..100 {
            w.rx().inject(MemFrame::new(big.clone()));
        }
        w.run_batch(&snap, t0);
        let burst = TokenBucket::ICMP_BURST as usize;
        assert_eq!(w.icmp().sent.len(), burst);
        assert_eq!(get(&c.io.icmp_frag_needed_suppressed), 101 - burst as u64);
        // One second later, the rate refills it.
        for _ in 0..300 {
            w.rx().inject(MemFrame::new(big.clone()));
        }
        w.run_batch(&snap, t0 + Duration::from_secs(1));
        w.run_batch(&snap, t0 + Duration::from_secs(1));
        assert_eq!(w.icmp().sent.len(), 2 * burst);
        assert_eq!(dropped(c, DropReason::FragNeeded), 401);
        assert_eq!(get(&c.io.icmp_frag_needed_sent) + get(&c.io.icmp_frag_needed_suppressed), 401);
        assert_eq!((get(&c.forwarded), tx.sent.len(), tx.pending.len()), (0, 0, 0));
    }

    #[test]
    fn the_loop_follows_a_new_snapshot_and_stops() {
        let sh = Arc::new(shared(snapshot("10.201.0.1", 1)));
        let mut rx = FilteredRx::default();
        rx.inner.inject(MemFrame::new(tcp([10, 201, 0, 1], 0)));
        let worker_shared = Arc::clone(&sh);
        let worker = std::thread::spawn(move || {
            let (mut tx, mut icmp) = (MemTx::new(16), MemTx::new(16));
            let counters = worker_shared.counters.worker(0).unwrap();
            run(&mut rx, &mut tx, &mut icmp, &worker_shared, counters);
            (rx.filters, tx.sent.len())
        });
        // The first frame is forwarded under generation 1 ...
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while get(&sh.counters.worker(0).unwrap().forwarded) == 0 {
            assert!(std::time::Instant::now() < deadline, "the worker never forwarded");
            std::thread::sleep(Duration::from_millis(1));
        }
        // ... then a reload moves the service to another VIP: the worker re-filters once.
        sh.snapshot.store(Arc::new(snapshot("10.201.0.2", 2)));
        std::thread::sleep(Duration::from_millis(50));
        sh.stop.store(true, Ordering::Relaxed);
        let (filters, sent) = worker.join().unwrap();
        assert_eq!(filters, vec![vec![Ipv4Addr::new(10, 201, 0, 2)]]);
        assert_eq!(sent, 1);
        assert_eq!(get(&sh.counters.worker(0).unwrap().forwarded), 1);
    }

    /// The kernel's RX drops reach `rx_ring_drops` when a frame says the kernel is losing frames,
    /// without a statistics read per frame.
    #[test]
    fn kernel_rx_drops_are_counted_on_losing_without_a_read_per_frame() {
        let sh = Arc::new(shared(snapshot("10.201.0.1", 1)));
        let mut rx = FilteredRx::default();
        rx.inner.drops = 1234;
        for _ in 0..1000 {
            let f = MemFrame::new(tcp([10, 201, 0, 1], 0));
            rx.inner.inject(MemFrame { status: libc::TP_STATUS_LOSING | libc::TP_STATUS_USER, ..f });
        }
        let worker_shared = Arc::clone(&sh);
        let worker = std::thread::spawn(move || {
            let (mut tx, mut icmp) = (MemTx::new(1024), MemTx::new(16));
            let counters = worker_shared.counters.worker(0).unwrap();
            run(&mut rx, &mut tx, &mut icmp, &worker_shared, counters);
            rx.inner.drop_reads
        });
        let c = sh.counters.worker(0).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_millis(500);
        // Well before the periodic read (1 s): the LOSING flag triggers it.
        while get(&c.io.rx_ring_drops) != 1234 {
            assert!(std::time::Instant::now() < deadline, "rx_ring_drops = {}", get(&c.io.rx_ring_drops));
            std::thread::sleep(Duration::from_millis(1));
        }
        // Let the worker take every frame before it is stopped.
        while get(&c.io.rx_frames) != 1000 {
            assert!(
                std::time::Instant::now() < deadline + Duration::from_secs(5),
                "rx_frames = {}",
                get(&c.io.rx_frames)
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        sh.stop.store(true, Ordering::Relaxed);
        let reads = worker.join().unwrap();
        assert_eq!(get(&c.io.rx_ring_drops), 1234, "counted once");
        let batches = get(&c.io.rx_batches);
        assert!(reads <= batches + 2, "{reads} statistics reads for {batches} batches of 1000 frames");
        assert_eq!(get(&c.io.rx_frames), 1000);
    }
}
