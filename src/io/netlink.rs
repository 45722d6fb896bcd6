//! rtnetlink, the little this crate asks of it: requests with an acknowledgement, and dumps.
//!
//! Used by [`super::tc`] (the kernel drop filter) and [`super::route`] (the VIP routes a BGP
//! daemon announces). Hand-written rather than the `rtnetlink` crate: a few requests with fixed
//! layouts, where that crate is asynchronous (tokio) and brings a large dependency tree, and
//! `netlink-packet-route` alone still needs its own socket layer. Messages are built with
//! bounds-checked byte writes and parsed with bounds-checked reads; the only system calls are the
//! socket, `send`, `poll` and `recv` of [`super::sys`].

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use super::sys;

pub(crate) const NLMSG_ERROR: u16 = 2;
pub(crate) const NLMSG_DONE: u16 = 3;
pub(crate) const NLM_F_REQUEST: u16 = 0x1;
pub(crate) const NLM_F_ACK: u16 = 0x4;
pub(crate) const NLM_F_DUMP: u16 = 0x300;
pub(crate) const NLM_F_REPLACE: u16 = 0x100;
pub(crate) const NLM_F_EXCL: u16 = 0x200;
pub(crate) const NLM_F_CREATE: u16 = 0x400;
/// In an error message: the request was not echoed (`NETLINK_CAP_ACK`).
const NLM_F_CAPPED: u16 = 0x100;
/// In an error message: extended-ack attributes follow.
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;
const NETLINK_CAP_ACK: i32 = 10;
const NETLINK_EXT_ACK: i32 = 11;
pub(crate) const NLA_F_NESTED: u16 = 0x8000;

pub(crate) const NLMSG_HDR: usize = 16;
/// How long one request may wait for the kernel's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// A failed request: the errno (or a malformed answer) and the kernel's extended-ack message.
pub(crate) type Failure = (std::io::Error, Option<String>);

/// A request the kernel refused, for the caller's error: what was asked (naming the interface,
/// device, table or VIP), the errno, and the kernel's extended-ack message or a hint.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}{}", detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
pub struct NetlinkError {
    /// What was asked of the kernel.
    pub what: String,
    /// The errno (or a malformed answer).
    pub source: std::io::Error,
    /// The kernel's extended-ack message or a hint, if any.
    pub detail: Option<String>,
}

impl NetlinkError {
    pub(crate) fn new(what: impl Into<String>, (source, detail): Failure) -> NetlinkError {
        NetlinkError { what: what.into(), source, detail }
    }

    /// The kernel refused for lack of privileges (CAP_NET_ADMIN).
    pub fn is_permission(&self) -> bool {
        matches!(self.source.raw_os_error(), Some(libc::EPERM | libc::EACCES))
    }
}

/// A netlink message under construction: header, the family's fixed header, attributes.
pub(crate) struct Msg {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

impl Msg {
    /// A request of `kind` with `flags` (plus `NLM_F_REQUEST`) whose fixed header is `header`
    /// (`struct tcmsg`, `struct rtmsg`, ...).
    pub(crate) fn new(kind: u16, flags: u16, seq: u32, header: &[u8]) -> Msg {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len, set by finish()
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: the kernel
        buf.extend_from_slice(header);
        let mut m = Msg { buf, nests: Vec::new() };
        m.pad();
        m
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    pub(crate) fn attr(&mut self, kind: u16, payload: &[u8]) {
        let len = u16::try_from(4 + payload.len()).unwrap_or(u16::MAX);
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.pad();
    }

    pub(crate) fn attr_str(&mut self, kind: u16, s: &str) {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.attr(kind, &v);
    }

    pub(crate) fn begin(&mut self, kind: u16) {
        self.nests.push(self.buf.len());
        self.attr(kind | NLA_F_NESTED, &[]);
    }

    pub(crate) fn end(&mut self) {
        if let Some(at) = self.nests.pop() {
            let len = u16::try_from(self.buf.len() - at).unwrap_or(u16::MAX);
            self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
        }
    }

    pub(crate) fn finish(mut self) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

pub(crate) fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

pub(crate) fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The attributes in `b` as (type without flags, payload).
pub(crate) fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = usize::from(u16_at(b, 0)?);
        let kind = u16_at(b, 2)? & !NLA_F_NESTED;
        let payload = b.get(4..len)?;
        b = b.get((len + 3) & !3..).unwrap_or(&[]);
        Some((kind, payload))
    })
}

/// One message of an answer.
#[derive(Debug)]
pub(crate) struct Answer<'a> {
    pub(crate) kind: u16,
    pub(crate) flags: u16,
    pub(crate) seq: u32,
    /// What follows the netlink header.
    pub(crate) payload: &'a [u8],
}

pub(crate) fn messages(mut b: &[u8]) -> impl Iterator<Item = Answer<'_>> {
    std::iter::from_fn(move || {
        let len = u32_at(b, 0)? as usize;
        if len < NLMSG_HDR {
            return None;
        }
        let m =
            Answer { kind: u16_at(b, 4)?, flags: u16_at(b, 6)?, seq: u32_at(b, 8)?, payload: b.get(NLMSG_HDR..len)? };
        b = b.get((len + 3) & !3..).unwrap_or(&[]);
        Some(m)
    })
}

/// An error message's errno (0 for an acknowledgement) and extended-ack text.
pub(crate) fn error_of(m: &Answer<'_>) -> (i32, Option<String>) {
    let errno = u32_at(m.payload, 0).map_or(libc::EPROTO, |e| -(e as i32));
    let mut detail = None;
    if m.flags & NLM_F_ACK_TLVS != 0 {
        // After the error code comes the request's header, and its payload unless capped.
        let echoed = if m.flags & NLM_F_CAPPED != 0 {
            NLMSG_HDR
        } else {
            u32_at(m.payload, 4).map_or(NLMSG_HDR, |l| l as usize)
        };
        let tlvs = m.payload.get(4 + ((echoed + 3) & !3)..).unwrap_or(&[]);
        detail = attrs(tlvs).find(|(k, _)| *k == NLMSGERR_ATTR_MSG).map(|(_, v)| {
            let text = v.split(|c| *c == 0).next().unwrap_or(&[]);
            String::from_utf8_lossy(text).into_owned()
        });
    }
    (errno, detail)
}

/// An rtnetlink socket in the namespace where it was opened.
#[derive(Debug)]
pub(crate) struct Rtnl {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl Rtnl {
    pub(crate) fn open() -> std::io::Result<Rtnl> {
        let fd = sys::rtnetlink_socket()?;
        // Error messages with the kernel's reason, without an echo of the (up to 32 KiB) request.
        let _ = sys::set_int(&fd, libc::SOL_NETLINK, NETLINK_EXT_ACK, 1);
        let _ = sys::set_int(&fd, libc::SOL_NETLINK, NETLINK_CAP_ACK, 1);
        Ok(Rtnl { fd, seq: 0, buf: vec![0; 128 * 1024] })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Receives the next datagram into `self.buf`; its length.
    fn recv(&mut self, deadline: Instant) -> std::io::Result<usize> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(std::io::Error::from_raw_os_error(libc::ETIMEDOUT));
            }
            if !sys::poll_in(&self.fd, left)?.readable {
                continue;
            }
            match sys::recv_buf(&self.fd, &mut self.buf) {
                Ok(n) if n > self.buf.len() => return Err(std::io::Error::from_raw_os_error(libc::EMSGSIZE)),
                Ok(n) => return Ok(n),
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends a request with `NLM_F_ACK` and waits for its acknowledgement.
    pub(crate) fn request(
        &mut self,
        kind: u16,
        flags: u16,
        header: &[u8],
        body: impl FnOnce(&mut Msg),
    ) -> Result<(), Failure> {
        let seq = self.next_seq();
        let mut msg = Msg::new(kind, flags | NLM_F_ACK, seq, header);
        body(&mut msg);
        sys::send_buf(&self.fd, &msg.finish()).map_err(|e| (e, None))?;
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        loop {
            let n = self.recv(deadline).map_err(|e| (e, None))?;
            for m in messages(&self.buf[..n]) {
                if m.kind == NLMSG_ERROR && m.seq == seq {
                    let (errno, detail) = error_of(&m);
                    return if errno == 0 { Ok(()) } else { Err((std::io::Error::from_raw_os_error(errno), detail)) };
                }
            }
        }
    }

    /// Sends a dump request of `kind` with the fixed header `header` and hands every message of
    /// the answer to `each`, until the kernel says it is done.
    pub(crate) fn dump(&mut self, kind: u16, header: &[u8], mut each: impl FnMut(&Answer<'_>)) -> Result<(), Failure> {
        let seq = self.next_seq();
        sys::send_buf(&self.fd, &Msg::new(kind, NLM_F_DUMP, seq, header).finish()).map_err(|e| (e, None))?;
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        loop {
            let n = self.recv(deadline).map_err(|e| (e, None))?;
            for m in messages(&self.buf[..n]) {
                if m.seq != seq {
                    continue;
                }
                match m.kind {
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => {
                        let (errno, detail) = error_of(&m);
                        let errno = if errno == 0 { libc::EPROTO } else { errno };
                        return Err((std::io::Error::from_raw_os_error(errno), detail));
                    }
                    _ => each(&m),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIND: u16 = 1;
    const OPTIONS: u16 = 2;

    #[test]
    fn messages_are_aligned_and_nested_lengths_cover_their_attributes() {
        // A 20-byte fixed header (as `struct tcmsg`), then attributes, one of them nested.
        let mut header = [0u8; 20];
        header[4..8].copy_from_slice(&7u32.to_ne_bytes());
        let mut m = Msg::new(44, NLM_F_CREATE, 9, &header);
        m.attr_str(KIND, "bpf");
        m.begin(OPTIONS);
        m.attr(4, &1u16.to_ne_bytes());
        m.attr(5, &[6, 0, 0, 0, 2, 0, 0, 0]);
        m.end();
        let b = m.finish();
        assert_eq!(u32_at(&b, 0), Some(b.len() as u32));
        assert_eq!(u16_at(&b, 6), Some(NLM_F_CREATE | NLM_F_REQUEST));
        assert_eq!(u32_at(&b, NLMSG_HDR + 4), Some(7));
        let a: Vec<(u16, Vec<u8>)> = attrs(&b[NLMSG_HDR + 20..]).map(|(k, v)| (k, v.to_vec())).collect();
        assert_eq!(a.len(), 2);
        assert_eq!(a[0], (KIND, b"bpf\0".to_vec()));
        assert_eq!(a[1].0, OPTIONS);
        let inner: Vec<u16> = attrs(&a[1].1).map(|(k, _)| k).collect();
        assert_eq!(inner, [4, 5]);
        assert!(b.len().is_multiple_of(4));
    }

    #[test]
    fn a_fixed_header_of_unaligned_length_is_padded() {
        // `struct ifinfomsg` is 16 bytes, `struct rtmsg` 12: both aligned; a 6-byte one is padded.
        let m = Msg::new(16, 0, 1, &[1, 2, 3, 4, 5, 6]);
        let b = m.finish();
        assert_eq!(b.len(), NLMSG_HDR + 8);
        assert_eq!(&b[NLMSG_HDR..], &[1, 2, 3, 4, 5, 6, 0, 0]);
    }

    #[test]
    fn error_messages_give_errno_and_the_kernels_reason() {
        // nlmsgerr: -EPERM, then the capped request header, then NLMSGERR_ATTR_MSG.
        let mut payload = (-libc::EPERM).to_ne_bytes().to_vec();
        payload.extend_from_slice(&[0u8; NLMSG_HDR]);
        payload.extend_from_slice(&12u16.to_ne_bytes());
        payload.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        payload.extend_from_slice(b"no perm\0");
        let m = Answer { kind: NLMSG_ERROR, flags: NLM_F_CAPPED | NLM_F_ACK_TLVS, seq: 1, payload: &payload };
        assert_eq!(error_of(&m), (libc::EPERM, Some("no perm".into())));
        let ack = 0i32.to_ne_bytes();
        let m = Answer { kind: NLMSG_ERROR, flags: 0, seq: 1, payload: &ack };
        assert_eq!(error_of(&m), (0, None));
        // Garbage never panics.
        for n in 0..payload.len() {
            let m = Answer { kind: NLMSG_ERROR, flags: NLM_F_ACK_TLVS, seq: 1, payload: &payload[..n] };
            let _ = error_of(&m);
            let _ = messages(&payload[..n]).count();
            let _ = attrs(&payload[..n]).count();
        }
    }
}
