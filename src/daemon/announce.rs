//! The announce thread (`[announce]`): every `interval_ms` it asks [`Shared`] whether each VIP
//! can be served, lets [`Announcer`] decide what to announce, and makes the outside match: the
//! VIP routes a BGP daemon learns ([`VipRoutes`]), the state files, and the view behind
//! `/ready/VIP`, `status` and the metrics. Its own thread, so a slow netlink answer or file
//! system never holds up the control loop, and the control loop's work never delays a
//! withdrawal.
//!
//! A hold (stop, `maglevd drain`, the drain file) is seen within [`HOLD_POLL`], not at the next
//! interval: the routes go at once.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::{Shared, throttle::Throttle, unix_now};
use crate::announce::Announcer;
use crate::config;
use crate::io::VipRoutes;
use crate::reconcile::{Change, reconcile};
use crate::status::{AnnounceStatus, VipAnnounce};

/// How often a hold (stop, drain) is looked for between evaluations.
pub const HOLD_POLL: Duration = Duration::from_millis(50);

/// Why every VIP must be withdrawn now, if one reason holds them all.
fn hold(shared: &Shared, cfg: &config::Announce) -> Option<String> {
    if shared.stopping.load(Ordering::Relaxed) {
        return Some(format!("stopping: every VIP withdrawn, forwarding for {}s before exit", cfg.drain.as_secs()));
    }
    if shared.drain_requested.load(Ordering::Relaxed) {
        return Some("drained (maglevd drain; `maglevd drain --undo` ends it)".into());
    }
    if let Some(f) = &cfg.drain_file
        && f.exists()
    {
        return Some(format!("drained: the drain file {} exists", f.display()));
    }
    None
}

/// Files named by the announced VIPs in `state_dir`.
#[derive(Debug, Default)]
struct StateFiles {
    dir: Option<PathBuf>,
    written: BTreeSet<Ipv4Addr>,
}

impl StateFiles {
    /// Removes files named by a VIP (left by an earlier run) from `dir`.
    fn clean(dir: &Path) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            let vip_named = name.parse::<Ipv4Addr>().is_ok()
                || name
                    .strip_prefix('.')
                    .and_then(|n| n.strip_suffix(".tmp"))
                    .is_some_and(|n| n.parse::<Ipv4Addr>().is_ok());
            if vip_named {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// Makes the files in `dir` exactly `want` (each created by rename, so it appears whole).
    fn sync(&mut self, dir: Option<&Path>, want: &BTreeSet<Ipv4Addr>, now_unix: u64) -> Result<(), String> {
        if self.dir.as_deref() != dir {
            let old = std::mem::take(&mut self.written);
            if let Some(d) = &self.dir {
                for vip in old {
                    let _ = std::fs::remove_file(d.join(vip.to_string()));
                }
            }
            self.dir = dir.map(Path::to_path_buf);
            if let Some(d) = dir {
                std::fs::create_dir_all(d).map_err(|e| format!("announce.state_dir {}: {e}", d.display()))?;
                Self::clean(d);
            }
        }
        let Some(d) = self.dir.clone() else { return Ok(()) };
        reconcile(&mut self.written, want, |vip, change| {
            let path = d.join(vip.to_string());
            match change {
                Change::Remove => match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        Err(format!("removing {}: {e}", path.display()))
                    }
                    _ => Ok(()),
                },
                Change::Add => {
                    let tmp = d.join(format!(".{vip}.tmp"));
                    std::fs::write(&tmp, format!("{vip} announced {now_unix}\n"))
                        .and_then(|()| std::fs::rename(&tmp, &path))
                        .map_err(|e| {
                            let _ = std::fs::remove_file(&tmp);
                            format!("writing {}: {e}", path.display())
                        })
                }
            }
        })
    }
}

/// Start the announce thread; `routes` is the VIP route device opened at start (when
/// `announce.table` is set). It ends after `shared.stop` with every route and file removed.
pub fn spawn(shared: Arc<Shared>, routes: Option<VipRoutes>) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("maglevd-announce".into()).spawn(move || run(&shared, routes))
}

fn run(shared: &Shared, mut routes: Option<VipRoutes>) {
    let Some(cfg) = shared.announce_cfg.load_full() else { return };
    let mut announcer = Announcer::new(&cfg, shared.started, unix_now());
    let mut files = StateFiles::default();
    let mut warnings = Throttle::default();
    let mut last: Vec<VipAnnounce> = Vec::new();
    while let Some(cfg) = shared.announce_cfg.load_full() {
        announcer.configure(&cfg);
        let finished = shared.stop.load(Ordering::Relaxed);
        let held = if finished { Some("stopped".to_string()) } else { hold(shared, &cfg) };
        let now = Instant::now();
        let mut vips: Vec<Ipv4Addr> = shared.snapshot.load().vip_addrs().collect();
        vips.sort_unstable();
        vips.dedup();
        let ready: Vec<(Ipv4Addr, Result<(), String>)> =
            vips.into_iter().map(|v| (v, shared.vip_serving(v, now))).collect();
        let now_unix = unix_now();
        let state = announcer.step(now, now_unix, &ready, held.as_deref());
        let want: BTreeSet<Ipv4Addr> = state.iter().filter(|v| v.announced).map(|v| v.vip).collect();
        let mut error = None;
        if let Some(r) = routes.as_mut()
            && let Err(e) = r.set(&want)
        {
            error = Some(e.to_string());
        }
        if let Err(e) = files.sync(cfg.state_dir.as_deref(), &want, now_unix) {
            error.get_or_insert(e);
        }
        if let Some(e) = &error
            && let Some(held) = warnings.allow(now)
        {
            warn!(error = %e, suppressed = held, "cannot bring the VIP announcement in line");
        }
        for v in &state {
            let was = last.iter().find(|l| l.vip == v.vip).is_some_and(|l| l.announced);
            if v.announced && !was {
                info!(vip = %v.vip, "VIP announced");
            } else if !v.announced && was {
                info!(vip = %v.vip, reason = %v.reason, "VIP withdrawn");
            }
        }
        shared.announce.store(Some(Arc::new(AnnounceStatus {
            table: routes.as_ref().map(VipRoutes::table),
            device: routes.as_ref().map(|r| r.device().to_string()),
            hold: held.clone(),
            error,
            vips: state.clone(),
        })));
        last = state;
        if finished {
            break;
        }
        // Until the next evaluation, but at once when a hold begins or ends, or at the stop.
        let deadline = now + cfg.interval;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || shared.stop.load(Ordering::Relaxed) || hold(shared, &cfg).is_some() != held.is_some() {
                break;
            }
            std::thread::sleep(left.min(HOLD_POLL));
        }
    }
    // The device goes with `routes`, and the kernel deletes its routes; say so explicitly first.
    if let Some(mut r) = routes.take() {
        let _ = r.set(&BTreeSet::new());
    }
    let dir = files.dir.clone();
    let _ = files.sync(dir.as_deref(), &BTreeSet::new(), 0);
}
