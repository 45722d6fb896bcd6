//! One forwarding worker: drain the RX ring in batches, run `forward()` on each frame in place,
//! copy forwarded frames into the TX ring, and flush the TX ring with one `send()` per batch.
//!
//! Per batch: one snapshot load (wait-free `arc-swap`), no allocation, no lock, no syscall except
//! the single `send()` of the flush and the `poll()` when the ring is empty. Counters are the
//! worker's own ([`WorkerCounters`]).

use std::sync::atomic::Ordering;
use std::time::Duration;

use std::net::Ipv4Addr;

use crate::dataplane::{Snapshot, Verdict, forward};
use crate::io::{FlushStatus, IoError, RxDevice, RxRing, TxDevice, TxError, VipFilter};
use crate::metrics::{WorkerCounters, bump};

use super::Shared;

/// Frames handled per batch before the TX ring is flushed.
pub const BATCH: usize = 256;
/// How long an idle worker sleeps in `poll()` before it checks for shutdown.
pub const IDLE_WAIT: Duration = Duration::from_millis(100);

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

/// Run until `shared.stop` is set.
pub fn run<R: RxDevice + VipFiltered, T: TxDevice>(rx: &mut R, tx: &mut T, shared: &Shared, counters: &WorkerCounters) {
    let mut backlog = 0u32;
    let first = shared.snapshot.load();
    let mut generation = first.generation();
    let mut vips: Vec<Ipv4Addr> = first.vip_addrs().collect();
    drop(first);
    while !shared.stop.load(Ordering::Relaxed) {
        // One snapshot per batch: every frame of the batch sees the same generation.
        let snap = shared.snapshot.load();
        // A new snapshot may bring other VIPs (a reload): follow them in the kernel filter. Only
        // on a generation change, never per packet.
        if snap.generation() != generation {
            generation = snap.generation();
            let now: Vec<Ipv4Addr> = snap.vip_addrs().collect();
            if now != vips {
                match rx.set_vips(&now) {
                    Ok(()) => vips = now,
                    Err(e) => tracing::error!(error = %e, "cannot update the VIP filter"),
                }
            }
        }
        let n = run_batch(rx, tx, &snap, counters);
        // Not held while sleeping: arc-swap guards are meant to be short-lived.
        drop(snap);
        if n > 0 || backlog > 0 {
            backlog = flush(tx, counters);
        }
        if n == 0 {
            // Frames still queued after EAGAIN/ENOBUFS: retry soon rather than sleep long.
            let wait = if backlog > 0 { Duration::from_millis(1) } else { IDLE_WAIT };
            if rx.wait(wait).is_err() {
                bump(&counters.io.rx_wait_errors, 1);
                std::thread::sleep(wait);
            }
        }
    }
    flush(tx, counters);
}

/// Handle one batch of received frames; returns how many were taken from the ring.
pub fn run_batch<R: RxDevice, T: TxDevice>(
    rx: &mut R,
    tx: &mut T,
    snap: &Snapshot,
    counters: &WorkerCounters,
) -> usize {
    let io = &counters.io;
    let n = rx.recv_batch(BATCH, |frame| {
        bump(&io.rx_frames, 1);
        bump(&io.rx_bytes, frame.data.len() as u64);
        if frame.truncated {
            // Cut to the slot size: forwarding it would corrupt the flow.
            bump(&io.rx_truncated, 1);
            return;
        }
        let verdict = forward(frame.data, snap);
        counters.record(&verdict);
        if let Verdict::Forward { .. } = verdict {
            match tx.push(frame.vnet.as_ref(), frame.data) {
                Ok(()) => {
                    bump(&io.tx_frames, 1);
                    bump(&io.tx_bytes, frame.data.len() as u64);
                }
                Err(TxError::RingFull) => bump(&io.tx_ring_full, 1),
                Err(TxError::FrameTooBig { .. }) => bump(&io.tx_too_big, 1),
                Err(TxError::BadVnetHdr(_)) => bump(&io.tx_bad_vnet, 1),
            }
        }
    });
    if n > 0 {
        bump(&io.rx_batches, 1);
    }
    n
}

/// Flush the TX ring once and count the outcome; returns the frames still queued.
pub fn flush<T: TxDevice>(tx: &mut T, counters: &WorkerCounters) -> u32 {
    let io = &counters.io;
    let o = tx.flush();
    if o.syscalls > 0 {
        bump(&io.tx_flushes, o.syscalls as u64);
    }
    match o.status {
        FlushStatus::Idle | FlushStatus::Sent => {}
        FlushStatus::Again => bump(&io.tx_eagain, 1),
        FlushStatus::NoBufs => bump(&io.tx_enobufs, 1),
        FlushStatus::Error(_) => bump(&io.tx_errors, 1),
    }
    o.backlog
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
        let b = PacketBuilder::ethernet2([2, 0, 0, 0, 9, 9], INGRESS)
            .ipv4([192, 168, 1, 1], dst, 64)
            .tcp(40000, 80, 1, 512);
        let mut v = Vec::new();
        b.write(&mut v, &vec![0u8; payload]).unwrap();
        v
    }

    /// A receive device that records the VIP filters it was given.
    #[derive(Default)]
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

    #[test]
    fn a_batch_forwards_counts_and_keeps_the_vnet_header() {
        let snap = snapshot("10.201.0.1", 1);
        let counters = Counters::new(1);
        let c = counters.worker(0).unwrap();
        let (mut rx, mut tx) = (MemRx::new(), MemTx::new(8));
        let gso = VnetHdr { flags: 1, gso_type: 1, hdr_len: 54, gso_size: 1448, csum_start: 34, csum_offset: 16 };
        rx.inject(MemFrame { vnet: Some(gso), ..MemFrame::new(tcp([10, 201, 0, 1], 3000)) });
        rx.inject(MemFrame::new(tcp([10, 9, 9, 9], 0)));
        let mut bad = tcp([10, 201, 0, 1], 0);
        bad[24] ^= 0xff;
        rx.inject(MemFrame::new(bad));
        // Cut by the kernel to the slot size: never forwarded, counted apart.
        rx.inject(MemFrame { wire_len: Some(70_000), ..MemFrame::new(tcp([10, 201, 0, 1], 100)) });

        assert_eq!(run_batch(&mut rx, &mut tx, &snap, c), 4);
        assert_eq!(flush(&mut tx, c), 0);
        assert_eq!(tx.sent.len(), 1);
        let out = &tx.sent[0];
        assert_eq!(&out.data[..6], &[2, 0, 0, 0, 0, 7], "backend MAC");
        assert_eq!(&out.data[6..12], &EGRESS);
        assert_eq!(&out.data[12..], &tcp([10, 201, 0, 1], 3000)[12..], "nothing else changed");
        assert_eq!(out.vnet, Some(gso), "the GSO/checksum state travels with the frame");
        assert_eq!((get(&c.io.rx_frames), get(&c.io.rx_batches), get(&c.io.rx_truncated)), (4, 1, 1));
        assert_eq!((get(&c.forwarded), get(&c.io.tx_frames), get(&c.io.tx_flushes)), (1, 1, 1));
        assert_eq!(get(&c.passes[PassReason::NotVip.index()]), 1);
        assert_eq!(get(&c.drops[DropReason::Ipv4Checksum.index()]), 1);
    }

    #[test]
    fn a_full_ring_and_a_refused_send_are_counted_and_retried() {
        let snap = snapshot("10.201.0.1", 1);
        let counters = Counters::new(1);
        let c = counters.worker(0).unwrap();
        let (mut rx, mut tx) = (MemRx::new(), MemTx::new(2));
        for _ in 0..3 {
            rx.inject(MemFrame::new(tcp([10, 201, 0, 1], 0)));
        }
        run_batch(&mut rx, &mut tx, &snap, c);
        assert_eq!(get(&c.io.tx_ring_full), 1);
        tx.fail_next = Some(FlushStatus::Again);
        assert_eq!(flush(&mut tx, c), 2, "EAGAIN keeps the frames queued");
        assert_eq!(get(&c.io.tx_eagain), 1);
        assert_eq!(flush(&mut tx, c), 0);
        assert_eq!(tx.sent.len(), 2);
        assert_eq!(get(&c.io.tx_flushes), 2);
    }

    #[test]
    fn the_loop_follows_a_new_snapshot_and_stops() {
        let sh = Arc::new(shared(snapshot("10.201.0.1", 1)));
        let mut rx = FilteredRx::default();
        rx.inner.inject(MemFrame::new(tcp([10, 201, 0, 1], 0)));
        let worker_shared = Arc::clone(&sh);
        let worker = std::thread::spawn(move || {
            let mut tx = MemTx::new(16);
            let counters = worker_shared.counters.worker(0).unwrap();
            run(&mut rx, &mut tx, &worker_shared, counters);
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
}
