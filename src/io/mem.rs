//! In-memory [`RxDevice`]/[`TxDevice`] for testing the worker loop without
//! sockets or privileges. Unit tests only: not part of the library (`#[cfg(test)]`).

use std::collections::VecDeque;
use std::time::Duration;

use super::{FlushOutcome, FlushStatus, FrameSender, IoError, RxDevice, RxFrame, RxStatus, TxDevice, TxError, VnetHdr};

/// A frame queued in a [`MemRx`] or sent through a [`MemTx`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MemFrame {
    /// Frame bytes from the Ethernet header.
    pub data: Vec<u8>,
    /// Optional virtio-net header.
    pub vnet: Option<VnetHdr>,
    /// Original length if the frame is to look truncated (else `data.len()`).
    pub wire_len: Option<u32>,
    /// VLAN TCI to report.
    pub vlan_tci: Option<u16>,
    /// Status flags to report.
    pub status: u32,
}

impl MemFrame {
    /// A plain frame.
    pub fn new(data: Vec<u8>) -> MemFrame {
        MemFrame { data, ..MemFrame::default() }
    }
}

/// In-memory receive queue.
#[derive(Debug, Default)]
pub struct MemRx {
    /// Frames waiting to be received.
    pub queue: VecDeque<MemFrame>,
    /// Number of `wait` calls.
    pub waits: u64,
    /// What `kernel_drops` reports: frames "the kernel" could not queue.
    pub drops: u64,
    /// Number of `kernel_drops` calls (each would be a system call on a ring).
    pub drop_reads: u64,
}

impl MemRx {
    /// Empty queue.
    pub fn new() -> MemRx {
        MemRx::default()
    }

    /// Queues a frame.
    pub fn inject(&mut self, f: MemFrame) {
        self.queue.push_back(f);
    }
}

impl RxDevice for MemRx {
    fn recv_batch<F: FnMut(RxFrame<'_>)>(&mut self, max: usize, mut f: F) -> usize {
        let mut n = 0;
        while n < max {
            let Some(mut m) = self.queue.pop_front() else {
                break;
            };
            let snap = m.data.len() as u32;
            let wire_len = m.wire_len.unwrap_or(snap).max(snap);
            f(RxFrame {
                data: &mut m.data,
                wire_len,
                vnet: m.vnet,
                truncated: wire_len > snap,
                vlan_tci: m.vlan_tci,
                status: RxStatus(m.status),
                stamp_ns: 0,
            });
            n += 1;
        }
        n
    }

    fn peek_batch<F: FnMut(usize, &[u8])>(&mut self, max: usize, mut f: F) -> usize {
        let n = self.queue.len().min(max);
        for (i, m) in self.queue.iter().take(n).enumerate() {
            f(i, &m.data);
        }
        n
    }

    /// Returns at once: `Ok(true)` if frames are queued.
    fn wait(&mut self, _timeout: Duration) -> Result<bool, IoError> {
        self.waits += 1;
        Ok(!self.queue.is_empty())
    }

    fn kernel_drops(&mut self) -> Result<u64, IoError> {
        self.drop_reads += 1;
        Ok(self.drops)
    }
}

/// In-memory transmit ring: `push` fills up to `capacity` slots, `flush`
/// moves them to `sent`.
#[derive(Debug)]
pub struct MemTx {
    /// Slot count; `push` returns `RingFull` beyond it.
    pub capacity: usize,
    /// Largest frame accepted.
    pub max_frame: usize,
    /// Frames pushed, not flushed yet.
    pub pending: Vec<MemFrame>,
    /// Frames "transmitted".
    pub sent: Vec<MemFrame>,
    /// Number of flushes that made a "system call".
    pub syscalls: u64,
    /// If set, the next flush reports this status and keeps the frames.
    pub fail_next: Option<FlushStatus>,
    /// If set, every flush reports this status and keeps the frames.
    pub fail_always: Option<FlushStatus>,
    /// Frames given up by `discard_queued`.
    pub discarded: usize,
    /// MTU reported to the worker.
    pub mtu: u32,
}

impl MemTx {
    /// A ring of `capacity` slots accepting frames up to 64 KiB.
    pub fn new(capacity: usize) -> MemTx {
        MemTx {
            capacity,
            max_frame: super::MAX_SUPER_FRAME,
            pending: Vec::new(),
            sent: Vec::new(),
            syscalls: 0,
            fail_next: None,
            fail_always: None,
            discarded: 0,
            mtu: 65535,
        }
    }
}

impl TxDevice for MemTx {
    fn push(&mut self, vnet: Option<&VnetHdr>, frame: &[u8]) -> Result<(), TxError> {
        if frame.len() < 14 || frame.len() > self.max_frame {
            return Err(TxError::FrameTooBig { len: frame.len(), max: self.max_frame });
        }
        if self.pending.len() >= self.capacity {
            return Err(TxError::RingFull);
        }
        self.pending.push(MemFrame { data: frame.to_vec(), vnet: vnet.copied(), ..MemFrame::default() });
        Ok(())
    }

    fn flush(&mut self) -> FlushOutcome {
        if self.pending.is_empty() {
            return FlushOutcome::default();
        }
        self.syscalls += 1;
        if let Some(status) = self.fail_next.take().or(self.fail_always) {
            let backlog = self.pending.len() as u32;
            return FlushOutcome { syscalls: 1, backlog, status, ..FlushOutcome::default() };
        }
        let frames = self.pending.len() as u32;
        let bytes = self.pending.iter().map(|f| f.data.len() as u64).sum();
        self.sent.append(&mut self.pending);
        FlushOutcome { syscalls: 1, frames, bytes, backlog: 0, status: FlushStatus::Sent, dropped_bytes: 0 }
    }

    fn queued(&self) -> usize {
        self.pending.len()
    }

    fn discard_queued(&mut self) -> usize {
        let n = self.pending.len();
        self.pending.clear();
        self.discarded += n;
        n
    }

    fn mtu(&self) -> u32 {
        self.mtu
    }
}

/// As a single-frame sender (e.g. the worker's ICMP path) a `MemTx` records
/// each frame in `sent` at once.
impl FrameSender for MemTx {
    fn send_frame(&mut self, frame: &[u8]) -> Result<(), IoError> {
        self.sent.push(MemFrame::new(frame.to_vec()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A miniature worker loop generic over the devices: rewrite MACs, push,
    /// flush once per batch.
    fn forward<R: RxDevice, T: TxDevice>(rx: &mut R, tx: &mut T, dst: [u8; 6], src: [u8; 6]) -> (usize, u32) {
        let mut dropped = 0u32;
        let n = rx.recv_batch(64, |f| {
            if f.truncated || f.data.len() < 14 {
                dropped += 1;
                return;
            }
            f.data[0..6].copy_from_slice(&dst);
            f.data[6..12].copy_from_slice(&src);
            if tx.push(f.vnet.as_ref(), f.data).is_err() {
                dropped += 1;
            }
        });
        tx.flush();
        (n, dropped)
    }

    #[test]
    fn worker_loop_over_memory_devices() {
        let mut rx = MemRx::new();
        for i in 0..5u8 {
            rx.inject(MemFrame::new(vec![i; 60]));
        }
        rx.inject(MemFrame { data: vec![9; 60], wire_len: Some(9000), ..MemFrame::default() });
        let mut tx = MemTx::new(4);
        let (n, dropped) = forward(&mut rx, &mut tx, [0xaa; 6], [0xbb; 6]);
        assert_eq!(n, 6);
        assert_eq!(dropped, 2); // one truncated, one ring full
        assert_eq!(tx.sent.len(), 4);
        assert_eq!(tx.syscalls, 1);
        assert_eq!(&tx.sent[0].data[..12], &[0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb]);
        assert_eq!(tx.sent[3].data[12], 3);
        assert!(!rx.wait(Duration::from_millis(1)).unwrap());
        assert_eq!(tx.flush(), FlushOutcome::default());
    }

    /// The first pass sees the frames the next `recv_batch` takes, in order, without taking them.
    #[test]
    fn peek_batch_hands_the_frames_recv_batch_takes_next() {
        let mut rx = MemRx::new();
        for i in 0..5u8 {
            rx.inject(MemFrame::new(vec![i; 20]));
        }
        let mut seen = Vec::new();
        let max = rx.peek_batch(3, |i, data| seen.push((i, data[0])));
        assert_eq!((max, seen), (3, vec![(0, 0), (1, 1), (2, 2)]));
        let mut taken = Vec::new();
        assert_eq!(rx.recv_batch(max, |f| taken.push(f.data[0])), 3);
        assert_eq!(taken, [0, 1, 2]);
        assert_eq!(rx.peek_batch(64, |_, _| {}), 2);
        assert_eq!(rx.recv_batch(64, |_| {}), 2);
        assert_eq!(rx.peek_batch(64, |_, _| panic!("no frame")), 0);
    }

    #[test]
    fn flush_failure_keeps_frames() {
        let mut tx = MemTx::new(8);
        tx.push(None, &[0u8; 60]).unwrap();
        tx.fail_next = Some(FlushStatus::Again);
        let o = tx.flush();
        assert_eq!((o.status, o.backlog, tx.queued()), (FlushStatus::Again, 1, 1));
        let o = tx.flush();
        assert_eq!((o.status, o.frames, tx.queued()), (FlushStatus::Sent, 1, 0));
        assert!(matches!(tx.push(None, &[0u8; 4]), Err(TxError::FrameTooBig { .. })));
    }
}
