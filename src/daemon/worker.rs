//! One forwarding worker: drain the RX ring in batches, run `forward()` on each frame in place,
//! copy forwarded frames into the TX ring, and flush the TX ring with one `send()` per batch.
//!
//! Per batch: one snapshot load (wait-free `arc-swap`), no allocation, no lock, no syscall except
//! the single `send()` of the flush and the `poll()` when the ring is empty. Counters are the
//! worker's own ([`WorkerCounters`]).

use std::sync::atomic::Ordering;
use std::time::Duration;

use std::net::Ipv4Addr;

use crate::dataplane::{Verdict, forward};
use crate::io::{FlushStatus, IoError, MemRx, RxDevice, RxRing, TxDevice, TxError, VipFilter};
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

/// The in-memory device has no kernel filter: `forward()` sees everything.
impl VipFiltered for MemRx {
    fn set_vips(&mut self, _vips: &[Ipv4Addr]) -> Result<(), IoError> {
        Ok(())
    }
}

/// Run until `shared.stop` is set.
pub fn run<R: RxDevice + VipFiltered, T: TxDevice>(rx: &mut R, tx: &mut T, shared: &Shared, counters: &WorkerCounters) {
    let mut backlog = 0u32;
    let mut generation = shared.snapshot.load().generation();
    let mut vips: Vec<Ipv4Addr> = shared.snapshot.load().vip_addrs().collect();
    while !shared.stop.load(Ordering::Relaxed) {
        // A new snapshot may bring other VIPs (a reload): follow them in the kernel filter. Only
        // on a generation change, never per packet.
        let g = shared.snapshot.load().generation();
        if g != generation {
            generation = g;
            let now: Vec<Ipv4Addr> = shared.snapshot.load().vip_addrs().collect();
            if now != vips {
                match rx.set_vips(&now) {
                    Ok(()) => vips = now,
                    Err(e) => tracing::error!(error = %e, "cannot update the VIP filter"),
                }
            }
        }
        let n = run_batch(rx, tx, shared, counters);
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
    shared: &Shared,
    counters: &WorkerCounters,
) -> usize {
    let snap = shared.snapshot.load();
    let io = &counters.io;
    let n = rx.recv_batch(BATCH, |frame| {
        bump(&io.rx_frames, 1);
        bump(&io.rx_bytes, frame.data.len() as u64);
        if frame.truncated {
            // Cut to the slot size: forwarding it would corrupt the flow.
            bump(&io.rx_truncated, 1);
            return;
        }
        let verdict = forward(frame.data, &snap);
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
