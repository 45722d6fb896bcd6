#![allow(unsafe_code)]
//! The one `unsafe` boundary of the crate: thin, bounds-checked wrappers over
//! the `libc` calls the packet I/O layer needs.
//!
//! Rules kept here:
//! * every function is safe to call with any argument: pointers handed to the
//!   kernel are derived from Rust references with their true length;
//! * [`Mmap`] never hands out a reference or atomic outside the mapping:
//!   every accessor checks `offset + size <= len` (and alignment for atomics)
//!   and returns `None`/`false` instead of panicking;
//! * file descriptors are [`OwnedFd`], so they close exactly once;
//! * errors are returned as `std::io::Error` (errno); callers in `ring.rs`
//!   add the interface name and the syscall name.

use std::ffi::{CStr, CString};
use std::io;
use std::mem::{size_of, zeroed};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use libc::{c_int, c_void, socklen_t};

fn cvt(r: c_int) -> io::Result<c_int> {
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

fn cvt_size(r: libc::ssize_t) -> io::Result<usize> {
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r as usize) }
}

/// `socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(protocol))`.
/// `protocol == 0` creates a socket that receives nothing until `bind()`
/// gives it a protocol: that is how rings and filters are set up before the
/// first frame can arrive.
pub(crate) fn packet_socket(protocol: u16) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments; the returned descriptor
    // is owned by nobody else, so wrapping it in OwnedFd is sound.
    unsafe {
        let fd =
            cvt(libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, c_int::from(protocol.to_be())))?;
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// `socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE)`: an rtnetlink socket (the tc
/// filter of [`super::tc`]). It acts in the calling thread's network namespace, for as long as it
/// lives.
pub(crate) fn rtnetlink_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments; the returned descriptor is owned by nobody
    // else, so wrapping it in OwnedFd is sound.
    unsafe {
        let fd = cvt(libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE))?;
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// Plain-old-data option values we pass to setsockopt/getsockopt.
///
/// # Safety
/// Implementors must be `repr(C)` types with no padding-sensitive invariants
/// and valid for any bit pattern (the kernel writes them in getsockopt).
unsafe trait SockOpt: Copy {}
// SAFETY: integers and the libc option structs are repr(C) POD.
unsafe impl SockOpt for c_int {}
// SAFETY: see above.
unsafe impl SockOpt for libc::tpacket_req {}
// SAFETY: see above.
unsafe impl SockOpt for libc::tpacket_req3 {}
// SAFETY: see above.
unsafe impl SockOpt for libc::tpacket_stats {}
// SAFETY: see above.
unsafe impl SockOpt for libc::tpacket_stats_v3 {}

fn setsockopt<T: SockOpt>(fd: &OwnedFd, level: c_int, name: c_int, val: &T) -> io::Result<()> {
    // SAFETY: `val` is a valid reference to a POD value of exactly
    // size_of::<T>() bytes, which is the length we pass.
    unsafe {
        cvt(libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (val as *const T).cast::<c_void>(),
            size_of::<T>() as socklen_t,
        ))?;
    }
    Ok(())
}

fn getsockopt<T: SockOpt>(fd: &OwnedFd, level: c_int, name: c_int) -> io::Result<T> {
    // SAFETY: T is POD (SockOpt contract), so zeroed() is a valid value and
    // the kernel writes at most `len` = size_of::<T>() bytes into it.
    unsafe {
        let mut val: T = zeroed();
        let mut len = size_of::<T>() as socklen_t;
        cvt(libc::getsockopt(fd.as_raw_fd(), level, name, (&mut val as *mut T).cast::<c_void>(), &mut len))?;
        Ok(val)
    }
}

pub(crate) fn set_int(fd: &OwnedFd, level: c_int, name: c_int, val: c_int) -> io::Result<()> {
    setsockopt(fd, level, name, &val)
}

pub(crate) fn get_int(fd: &OwnedFd, level: c_int, name: c_int) -> io::Result<c_int> {
    getsockopt(fd, level, name)
}

pub(crate) fn set_tpacket_req(fd: &OwnedFd, name: c_int, req: &libc::tpacket_req) -> io::Result<()> {
    setsockopt(fd, libc::SOL_PACKET, name, req)
}

pub(crate) fn set_tpacket_req3(fd: &OwnedFd, req: &libc::tpacket_req3) -> io::Result<()> {
    setsockopt(fd, libc::SOL_PACKET, libc::PACKET_RX_RING, req)
}

/// PACKET_STATISTICS: (packets, drops, freeze_q_cnt). The kernel resets the
/// counters on every read.
pub(crate) fn packet_stats(fd: &OwnedFd, v3: bool) -> io::Result<(u32, u32, u32)> {
    if v3 {
        let s: libc::tpacket_stats_v3 = getsockopt(fd, libc::SOL_PACKET, libc::PACKET_STATISTICS)?;
        Ok((s.tp_packets, s.tp_drops, s.tp_freeze_q_cnt))
    } else {
        let s: libc::tpacket_stats = getsockopt(fd, libc::SOL_PACKET, libc::PACKET_STATISTICS)?;
        Ok((s.tp_packets, s.tp_drops, 0))
    }
}

/// One classic BPF instruction, layout-identical to `struct sock_filter`.
pub(crate) type RawInsn = (u16, u8, u8, u32);

/// SO_ATTACH_FILTER with a classic BPF program.
pub(crate) fn attach_filter(fd: &OwnedFd, insns: &[RawInsn]) -> io::Result<()> {
    let mut filters: Vec<libc::sock_filter> =
        insns.iter().map(|&(code, jt, jf, k)| libc::sock_filter { code, jt, jf, k }).collect();
    let len = u16::try_from(filters.len()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let prog = libc::sock_fprog { len, filter: filters.as_mut_ptr() };
    // SAFETY: `prog` points at `filters`, which lives until after the call;
    // the kernel copies the program and does not keep the pointer.
    unsafe {
        cvt(libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&prog as *const libc::sock_fprog).cast::<c_void>(),
            size_of::<libc::sock_fprog>() as socklen_t,
        ))?;
    }
    Ok(())
}

/// `bind()` to an interface with a protocol (host order; 0 = receive nothing).
pub(crate) fn bind_ll(fd: &OwnedFd, ifindex: u32, protocol: u16) -> io::Result<()> {
    // SAFETY: sockaddr_ll is POD, zero is a valid value; we pass its exact size.
    unsafe {
        let mut sll: libc::sockaddr_ll = zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = protocol.to_be();
        sll.sll_ifindex = ifindex as c_int;
        cvt(libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast::<libc::sockaddr>(),
            size_of::<libc::sockaddr_ll>() as socklen_t,
        ))?;
    }
    Ok(())
}

/// Result of [`poll_in`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PollResult {
    pub readable: bool,
    pub error: bool,
}

/// poll() one descriptor for POLLIN. EINTR counts as "nothing ready".
pub(crate) fn poll_in(fd: &OwnedFd, timeout: Duration) -> io::Result<PollResult> {
    let ms = c_int::try_from(timeout.as_millis()).unwrap_or(c_int::MAX);
    // Round sub-millisecond non-zero timeouts up so a 200 µs wait still sleeps.
    let ms = if ms == 0 && !timeout.is_zero() { 1 } else { ms };
    let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd, count 1.
    let r = unsafe { libc::poll(&mut pfd, 1, ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EINTR) {
            return Ok(PollResult { readable: false, error: false });
        }
        return Err(e);
    }
    Ok(PollResult {
        readable: pfd.revents & libc::POLLIN != 0,
        error: pfd.revents & (libc::POLLERR | libc::POLLNVAL) != 0,
    })
}

/// Reads and clears SO_ERROR.
pub(crate) fn take_socket_error(fd: &OwnedFd) -> Option<io::Error> {
    match get_int(fd, libc::SOL_SOCKET, libc::SO_ERROR) {
        Ok(0) => None,
        Ok(e) => Some(io::Error::from_raw_os_error(e)),
        Err(e) => Some(e),
    }
}

/// `send(fd, NULL, 0, MSG_DONTWAIT)`: asks the kernel to transmit every
/// TX-ring slot marked TP_STATUS_SEND_REQUEST, without waiting.
pub(crate) fn send_kick(fd: &OwnedFd) -> io::Result<usize> {
    // SAFETY: a NULL buffer of length 0 is valid for send(); with a TX ring
    // the kernel reads the frames from the ring, not from the buffer.
    cvt_size(unsafe { libc::send(fd.as_raw_fd(), std::ptr::null(), 0, libc::MSG_DONTWAIT) })
}

/// send() one frame on a bound packet socket.
pub(crate) fn send_buf(fd: &OwnedFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: pointer and length come from a valid slice.
    cvt_size(unsafe { libc::send(fd.as_raw_fd(), buf.as_ptr().cast::<c_void>(), buf.len(), libc::MSG_DONTWAIT) })
}

/// recv() one frame without blocking; returns the full frame length
/// (MSG_TRUNC), which may exceed `buf.len()`.
pub(crate) fn recv_buf(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: pointer and length come from a valid mutable slice.
    cvt_size(unsafe {
        libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast::<c_void>(), buf.len(), libc::MSG_DONTWAIT | libc::MSG_TRUNC)
    })
}

fn c_name(name: &str) -> io::Result<CString> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::from_raw_os_error(libc::ENODEV));
    }
    CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::ENODEV))
}

/// if_nametoindex(); a missing interface gives ENODEV.
pub(crate) fn if_nametoindex(name: &str) -> io::Result<u32> {
    let c = c_name(name)?;
    // SAFETY: `c` is a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        let e = io::Error::last_os_error();
        // glibc reports ENODEV for a missing name; keep whatever it said.
        return Err(if e.raw_os_error().unwrap_or(0) == 0 { io::Error::from_raw_os_error(libc::ENODEV) } else { e });
    }
    Ok(idx)
}

/// MTU through ioctl(SIOCGIFMTU). Uses a socket of the calling thread's
/// network namespace (unlike /sys/class/net, which shows the mount's).
pub(crate) fn if_mtu(name: &str) -> io::Result<u32> {
    let c = c_name(name)?;
    // SAFETY: AF_INET datagram socket creation; owned immediately.
    let sock =
        unsafe { OwnedFd::from_raw_fd(cvt(libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0))?) };
    // SAFETY: ifreq is POD; the name is copied with its length checked
    // (< IFNAMSIZ, so the terminating NUL fits); the kernel fills ifru_mtu.
    unsafe {
        let mut req: libc::ifreq = zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(c.as_bytes()) {
            *dst = *src as libc::c_char;
        }
        cvt(libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFMTU, &mut req as *mut libc::ifreq))?;
        Ok(req.ifr_ifru.ifru_mtu.max(0) as u32)
    }
}

/// One entry of getifaddrs(), reduced to what the datapath needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IfAddr {
    /// AF_PACKET entry: link-layer info.
    Link { name: String, ifindex: u32, mac: Option<[u8; 6]> },
    /// AF_INET entry with its prefix length (from the netmask; 32 when there is none).
    V4 { name: String, addr: Ipv4Addr, prefix: u8 },
}

/// getifaddrs(), copied into owned Rust values, then freeifaddrs().
pub(crate) fn ifaddrs() -> io::Result<Vec<IfAddr>> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we own until freeifaddrs.
    cvt(unsafe { libc::getifaddrs(&mut head) })?;
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list returned by getifaddrs, valid
        // until freeifaddrs below; name is a NUL-terminated C string; the
        // address is only reinterpreted after checking its family, and the
        // family fixes the concrete sockaddr type glibc allocated.
        unsafe {
            let ifa = &*cur;
            if !ifa.ifa_name.is_null() && !ifa.ifa_addr.is_null() {
                let name = CStr::from_ptr(ifa.ifa_name).to_string_lossy().into_owned();
                match c_int::from((*ifa.ifa_addr).sa_family) {
                    libc::AF_PACKET => {
                        let sll = &*(ifa.ifa_addr as *const libc::sockaddr_ll);
                        let mac = (sll.sll_halen == 6).then(|| {
                            let mut m = [0u8; 6];
                            m.copy_from_slice(&sll.sll_addr[..6]);
                            m
                        });
                        out.push(IfAddr::Link { name, ifindex: sll.sll_ifindex.max(0) as u32, mac });
                    }
                    libc::AF_INET => {
                        let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                        // An AF_INET entry's netmask, when present, is a sockaddr_in too.
                        let prefix = if ifa.ifa_netmask.is_null() {
                            32
                        } else {
                            let mask = &*(ifa.ifa_netmask as *const libc::sockaddr_in);
                            u32::from_be(mask.sin_addr.s_addr).leading_ones() as u8
                        };
                        out.push(IfAddr::V4 { name, addr: Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)), prefix });
                    }
                    _ => {}
                }
            }
            cur = ifa.ifa_next;
        }
    }
    // SAFETY: `head` came from getifaddrs and is freed exactly once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// Moves the **calling thread** into the network namespace at `path`
/// (e.g. `/var/run/netns/NAME`). Other threads are unaffected. Needs
/// CAP_SYS_ADMIN. Used by tests, the lab and benchmarks.
pub fn enter_netns(path: &Path) -> io::Result<()> {
    let f = std::fs::File::open(path)?;
    // SAFETY: `f` is an open namespace file descriptor for the whole call.
    cvt(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) })?;
    Ok(())
}

/// Pins the **calling thread** to one CPU (`sched_setaffinity(0, …)`).
/// Other threads keep their affinity. Used by benchmarks to put the
/// generator and the forwarder on different cores.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: cpu_set_t is a plain bit array for which all-zero is a valid
    // (empty) set; CPU_SET writes one bit inside it (`cpu` is checked
    // against CPU_SETSIZE above); sched_setaffinity reads exactly
    // size_of::<cpu_set_t>() bytes from the reference we pass.
    unsafe {
        let mut set: libc::cpu_set_t = zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        cvt(libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set))?;
    }
    Ok(())
}

/// The CPU the calling thread runs on now (`sched_getcpu`).
#[cfg(test)]
pub(crate) fn current_cpu() -> io::Result<usize> {
    // SAFETY: sched_getcpu has no arguments and no memory-safety preconditions.
    let r = unsafe { libc::sched_getcpu() };
    cvt(r).map(|c| c as usize)
}

/// The CPUs the calling thread may run on (`sched_getaffinity(0, …)`), in ascending order. A
/// container or `taskset` may leave out any CPU, CPU 0 included.
pub(crate) fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: all-zero is a valid (empty) cpu_set_t; sched_getaffinity writes at most
    // size_of::<cpu_set_t>() bytes into it; CPU_ISSET reads one bit of it, `cpu` < CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = zeroed();
        cvt(libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set))?;
        Ok((0..libc::CPU_SETSIZE as usize).filter(|&cpu| libc::CPU_ISSET(cpu, &set)).collect())
    }
}

/// Hints the CPU that the bytes of `*value` will be read soon: one prefetch (into every cache
/// level) per 64-byte cache line the value spans. Only a hint: it never faults, changes no
/// memory and has no effect a program can observe but time; the address comes from a reference, so
/// it is valid anyway. A no-op on architectures other than x86_64.
#[inline(always)]
pub(crate) fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let start = (value as *const T).cast::<u8>();
        let first = start as usize & !63;
        let end = start as usize + size_of::<T>().max(1);
        let mut line = first;
        while line < end {
            // `wrapping_add` keeps the pointer's provenance without asserting it stays in bounds
            // (the first line may begin before `value`); a prefetch never dereferences.
            let p = start.wrapping_add(line.wrapping_sub(start as usize)).cast::<i8>();
            // SAFETY: `_mm_prefetch` is a hint that does not access memory architecturally and
            // cannot fault, whatever the address; SSE is part of the x86_64 baseline.
            #[allow(unused_unsafe)]
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(p)
            };
            line += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

/// Asks the kernel to back the 2 MiB-aligned part of `mem` with transparent huge pages
/// (`madvise(MADV_HUGEPAGE)`), which saves TLB misses on large tables read at random. Call it
/// before `mem` is first written: pages already faulted in stay small until the kernel's
/// background collapsing gets to them. Only advice: with THP `never` (or a kernel without THP)
/// it fails or does nothing, and the memory works the same. Returns whether the kernel took the
/// advice; a slice with no whole aligned 2 MiB inside it is left alone (`Ok(false)`).
pub(crate) fn advise_hugepages<T>(mem: &mut [T]) -> io::Result<bool> {
    const HUGE: usize = 2 << 20;
    let start = mem.as_mut_ptr().cast::<u8>();
    let begin = (start as usize).next_multiple_of(HUGE);
    let end = (start as usize + std::mem::size_of_val(mem)) & !(HUGE - 1);
    if end <= begin {
        return Ok(false);
    }
    let p = start.wrapping_add(begin - start as usize).cast::<c_void>();
    // SAFETY: [begin, end) lies inside `mem`, memory this process owns and holds a unique borrow
    // of; MADV_HUGEPAGE changes how the kernel backs those pages, never their contents.
    cvt(unsafe { libc::madvise(p, end - begin, libc::MADV_HUGEPAGE) })?;
    Ok(true)
}

/// The system page size.
pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p <= 0 { 4096 } else { p as usize }
}

/// A shared, populated mapping of a packet ring.
pub(crate) struct Mmap {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory shared with the kernel; ownership of
// the Mmap moves the only Rust handle to it, so sending it between threads
// is sound (it is not Sync-shared: methods that write take &mut self or use
// atomics).
unsafe impl Send for Mmap {}

impl std::fmt::Debug for Mmap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mmap").field("ptr", &self.ptr).field("len", &self.len).finish()
    }
}

impl Mmap {
    /// mmap(NULL, len, PROT_READ|PROT_WRITE, MAP_SHARED|MAP_POPULATE, fd, 0).
    /// MAP_POPULATE pre-faults the ring so the first packets do not take page
    /// faults; MAP_LOCKED is deliberately not used (RLIMIT_MEMLOCK, and the
    /// ring pages are kernel-allocated and never swapped anyway).
    pub(crate) fn map(fd: &OwnedFd, len: usize) -> io::Result<Mmap> {
        if len == 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: a fresh shared mapping chosen by the kernel; we check
        // MAP_FAILED and own the region until munmap in Drop.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        Ok(Mmap { ptr, len })
    }

    fn in_bounds(&self, off: usize, size: usize) -> bool {
        off.checked_add(size).is_some_and(|end| end <= self.len)
    }

    fn atomic(&self, off: usize) -> Option<&AtomicU32> {
        if !self.in_bounds(off, 4) || !off.is_multiple_of(4) {
            return None;
        }
        // SAFETY: in bounds and 4-byte aligned (the mapping is page aligned);
        // the memory lives as long as &self; the kernel accesses the status
        // word concurrently, which is exactly what an atomic is for.
        Some(unsafe { AtomicU32::from_ptr(self.ptr.as_ptr().add(off).cast::<u32>()) })
    }

    /// Acquire load of a status word (pairs with the kernel's smp_wmb()
    /// before it publishes a frame/block).
    pub(crate) fn load_acquire(&self, off: usize) -> Option<u32> {
        self.atomic(off).map(|a| a.load(Ordering::Acquire))
    }

    /// Release store of a status word: every read/write of the frame before
    /// it is ordered before the hand-back to the kernel.
    pub(crate) fn store_release(&self, off: usize, val: u32) -> bool {
        self.atomic(off).map(|a| a.store(val, Ordering::Release)).is_some()
    }

    pub(crate) fn read_u32(&self, off: usize) -> Option<u32> {
        if !self.in_bounds(off, 4) {
            return None;
        }
        // SAFETY: in bounds; unaligned read of plain bytes.
        Some(unsafe { self.ptr.as_ptr().add(off).cast::<u32>().read_unaligned() })
    }

    pub(crate) fn read_u16(&self, off: usize) -> Option<u16> {
        if !self.in_bounds(off, 2) {
            return None;
        }
        // SAFETY: in bounds; unaligned read of plain bytes.
        Some(unsafe { self.ptr.as_ptr().add(off).cast::<u16>().read_unaligned() })
    }

    pub(crate) fn write_u32(&mut self, off: usize, val: u32) -> bool {
        if !self.in_bounds(off, 4) {
            return false;
        }
        // SAFETY: in bounds; we own this slot (status says user/available).
        unsafe { self.ptr.as_ptr().add(off).cast::<u32>().write_unaligned(val) };
        true
    }

    pub(crate) fn bytes(&self, off: usize, len: usize) -> Option<&[u8]> {
        if !self.in_bounds(off, len) {
            return None;
        }
        // SAFETY: in bounds, lives as long as &self; callers only ask for
        // frames whose status gives them to user space, so the kernel does
        // not write these bytes while the slice exists.
        Some(unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(off), len) })
    }

    pub(crate) fn bytes_mut(&mut self, off: usize, len: usize) -> Option<&mut [u8]> {
        if !self.in_bounds(off, len) {
            return None;
        }
        // SAFETY: as in `bytes`, plus &mut self guarantees no other Rust
        // reference into the mapping exists while this one lives.
        Some(unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(off), len) })
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly what mmap returned; unmapped once.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast::<c_void>(), self.len);
        }
    }
}

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags (the rest of the union unused).
#[repr(C)]
struct TunReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _rest: [u8; 22],
}

/// Creates the TUN device `name` (IFF_TUN, no packet information) and returns the descriptor
/// that holds it: the kernel deletes the device, and every route through it, when the last copy
/// of this descriptor is closed, whether the process exits or is killed. Needs CAP_NET_ADMIN and
/// `/dev/net/tun`.
pub(crate) fn open_tun(name: &str) -> io::Result<OwnedFd> {
    let c = c_name(name)?;
    let path = c"/dev/net/tun";
    // SAFETY: `path` is NUL-terminated; the descriptor returned is ours alone.
    let fd = unsafe { OwnedFd::from_raw_fd(cvt(libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC))?) };
    let mut req =
        TunReq { name: [0; libc::IFNAMSIZ], flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short, _rest: [0; 22] };
    req.name[..c.as_bytes().len()].copy_from_slice(c.as_bytes());
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `TunReq` lays out (40 bytes).
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut TunReq) })?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_interface_is_enodev() {
        let e = if_nametoindex("mlv-no-such-if0").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENODEV));
        assert_eq!(if_nametoindex("").unwrap_err().raw_os_error(), Some(libc::ENODEV));
        assert_eq!(if_nametoindex("a-name-way-too-long-for-linux").unwrap_err().raw_os_error(), Some(libc::ENODEV));
    }

    /// The MTU the kernel reports for an interface in /sys (not assumed: `lo` is 65536 by
    /// default, but anyone may change it).
    fn sysfs_mtu(name: &str) -> u32 {
        let path = format!("/sys/class/net/{name}/mtu");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        text.trim().parse().unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn loopback_is_visible() {
        assert!(if_nametoindex("lo").unwrap() > 0);
        assert_eq!(if_mtu("lo").unwrap(), sysfs_mtu("lo"));
        assert!(page_size() >= 4096);
    }

    /// Pins to the last CPU this thread may use (never assumes CPU 0 is in the cpuset).
    #[test]
    fn pin_to_an_allowed_cpu() {
        std::thread::spawn(|| {
            let allowed = allowed_cpus().unwrap();
            let cpu = *allowed.last().expect("at least one allowed CPU");
            pin_current_thread(cpu).unwrap();
            assert_eq!(current_cpu().unwrap(), cpu);
            assert_eq!(allowed_cpus().unwrap(), [cpu]);
            assert!(pin_current_thread(libc::CPU_SETSIZE as usize).is_err());
        })
        .join()
        .unwrap();
    }
}
