//! The namespace tests' shared preamble: one test at a time per binary (they share fixed
//! addresses and CPU), a loud failure without the privileges they need, and fresh namespaces.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use maglevd::io::Capabilities;
use maglevd::netns::Netns;

static SERIAL: Mutex<()> = Mutex::new(());
static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Held for the whole of a test: the tests of one binary run one at a time.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Fails (never skips) without root or `ip netns`; `file` names the test file in the message.
pub fn require_lab(file: &str) {
    let caps = Capabilities::current().expect("read capabilities");
    assert!(
        caps.net_raw && caps.net_admin && caps.effective & (1 << 21) != 0,
        "these tests need root (CAP_NET_RAW, CAP_NET_ADMIN, CAP_SYS_ADMIN); CapEff={:#x}",
        caps.effective
    );
    maglevd::netns::preflight(file).expect("namespaces can be built here");
}

/// A fresh namespace `<prefix>-<pid>-<n>` (lo up, IPv6 off, no forwarding, rp_filter 0), deleted
/// on drop.
pub fn new_ns(prefix: &str) -> Netns {
    let name = format!("{prefix}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
    Netns::create(&name).expect("create a network namespace")
}
