//! Least privilege after start.
//!
//! maglevd needs CAP_NET_RAW (AF_PACKET sockets: the rings, ARP, the `dsr` health probe) and
//! CAP_NET_ADMIN (`SO_SNDBUFFORCE` for the TX ring's buffer, the kernel drop filter over
//! rtnetlink). Both are needed again after start, but rarely: when an interface is re-created
//! (every ring and ARP socket is re-opened), when a reload changes the VIPs (the kernel drop
//! filter is replaced), at each `dsr` probe (a packet socket), and at a clean stop (the filter
//! is removed). So once everything is open, [`drop_after_start`] leaves the process with
//! *nothing effective*: the permitted set keeps only those two (every other capability, e.g. the
//! whole set of a daemon started as root, is gone for good), and the effective, inheritable and
//! ambient sets are empty. The few places that open a privileged socket or send a privileged
//! netlink request raise the two into their own thread's effective set for just that
//! ([`raised`], a guard that restores what the thread had).
//!
//! Capabilities are per thread, and a new thread starts with its creator's sets: the daemon
//! calls [`drop_after_start`] in its main thread before it starts any other thread, so every
//! thread runs with an empty effective set. `/proc/PID/task/*/status` shows `CapEff: 0` for all
//! of them while nothing is being re-opened.
//!
//! The capability system calls are the `caps` crate's (a safe wrapper of `capget`/`capset` and
//! `prctl`), no hand-written unsafe code.

use caps::{CapSet, Capability, CapsHashSet};

/// What the daemon keeps in its permitted set after start.
pub const KEPT: [Capability; 2] = [Capability::CAP_NET_RAW, Capability::CAP_NET_ADMIN];

/// Why the capability sets could not be changed.
#[derive(Debug, thiserror::Error)]
#[error("changing the capability sets ({what}): {source}")]
pub struct PrivError {
    what: &'static str,
    #[source]
    source: caps::errors::CapsError,
}

fn err(what: &'static str) -> impl FnOnce(caps::errors::CapsError) -> PrivError {
    move |source| PrivError { what, source }
}

/// The permitted set after start: what the process had of [`KEPT`].
pub fn kept() -> Result<CapsHashSet, PrivError> {
    let permitted = caps::read(None, CapSet::Permitted).map_err(err("reading the permitted set"))?;
    Ok(KEPT.into_iter().filter(|c| permitted.contains(c)).collect())
}

/// Drop every capability but [`KEPT`] from the calling thread's permitted set, and empty its
/// effective, inheritable and ambient sets. Returns what stays permitted. Call it before any
/// other thread starts (threads inherit their creator's sets).
pub fn drop_after_start() -> Result<CapsHashSet, PrivError> {
    let keep = kept()?;
    caps::clear(None, CapSet::Ambient).map_err(err("clearing the ambient set"))?;
    caps::clear(None, CapSet::Effective).map_err(err("clearing the effective set"))?;
    caps::clear(None, CapSet::Inheritable).map_err(err("clearing the inheritable set"))?;
    caps::set(None, CapSet::Permitted, &keep).map_err(err("reducing the permitted set"))?;
    Ok(keep)
}

/// While alive, the calling thread has the permitted ones of [`KEPT`] in its effective set; on
/// drop it gets back the effective set it had.
#[derive(Debug)]
#[must_use = "the capabilities are lowered again when the guard is dropped"]
pub struct Raised {
    previous: Option<CapsHashSet>,
}

/// Raise the permitted ones of [`KEPT`] into the calling thread's effective set until the guard
/// is dropped. Best effort: if the sets cannot be read or changed, nothing changes and the
/// operation that needed them fails with its own "operation not permitted", which its caller
/// reports. Costs two or three system calls: for opening sockets, never per packet.
pub fn raised() -> Raised {
    let Ok(effective) = caps::read(None, CapSet::Effective) else { return Raised { previous: None } };
    let Ok(permitted) = caps::read(None, CapSet::Permitted) else { return Raised { previous: None } };
    let mut want = effective.clone();
    want.extend(KEPT.into_iter().filter(|c| permitted.contains(c)));
    if want == effective || caps::set(None, CapSet::Effective, &want).is_err() {
        return Raised { previous: None };
    }
    Raised { previous: Some(effective) }
}

impl Drop for Raised {
    fn drop(&mut self) {
        if let Some(previous) = self.previous.take() {
            let _ = caps::set(None, CapSet::Effective, &previous);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In a thread of its own (capabilities are per thread, the test harness's other threads
    /// keep theirs): after the drop nothing is effective and only the kept ones are permitted;
    /// a raise brings exactly those back into the effective set, and its end takes them away.
    /// As root (tests/run-all.sh) the drop takes away everything else; as another user with
    /// no capabilities, every set stays empty.
    #[test]
    fn after_the_drop_only_raised_sections_have_capabilities() {
        std::thread::spawn(|| {
            let before = caps::read(None, CapSet::Permitted).unwrap();
            let keep = drop_after_start().unwrap();
            let want: CapsHashSet = KEPT.into_iter().filter(|c| before.contains(c)).collect();
            assert_eq!(keep, want);
            assert_eq!(caps::read(None, CapSet::Permitted).unwrap(), want);
            assert!(caps::read(None, CapSet::Effective).unwrap().is_empty());
            assert!(caps::read(None, CapSet::Ambient).unwrap().is_empty());
            {
                let _g = raised();
                assert_eq!(caps::read(None, CapSet::Effective).unwrap(), want);
                {
                    let _nested = raised();
                    assert_eq!(caps::read(None, CapSet::Effective).unwrap(), want);
                }
                assert_eq!(caps::read(None, CapSet::Effective).unwrap(), want, "a nested guard keeps the outer one's");
            }
            assert!(caps::read(None, CapSet::Effective).unwrap().is_empty());
            if before.contains(&Capability::CAP_SYS_ADMIN) {
                assert!(!caps::has_cap(None, CapSet::Permitted, Capability::CAP_SYS_ADMIN).unwrap(), "gone for good");
            }
        })
        .join()
        .unwrap();
    }
}
