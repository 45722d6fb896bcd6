//! Backend health checks: what the checks are ([`check`], [`dsr`]), the per-backend state machine
//! ([`state`]) and the [`Prober`] that runs them.
//!
//! # Checks
//! * `tcp`: a TCP connection to the backend's real IP and the check port.
//! * `http`: `GET path` (HTTP/1.0, with a `Host` header) on the real IP; up when the status is the
//!   expected one. At most [`check::MAX_HTTP_RESPONSE`] bytes are read.
//! * `dsr`: a SYN to **VIP:port** sent to the backend's MAC on the egress interface, as client
//!   traffic is forwarded; up on a SYN-ACK from the VIP. It is the only check that sees a backend
//!   without the VIP on its loopback (see [`dsr`]).
//!
//! # The prober
//! [`Prober::start`] runs one scheduler thread and a fixed pool of probe threads (never a
//! forwarding thread). The scheduler starts each target's probe every `interval` (from the start
//! of one probe to the start of the next; a target never has two probes at once; first probes are
//! spread over one interval), hands it to a free probe thread, and feeds the results into each
//! backend's [`BackendHealth`]. With more slow probes than threads, probes wait for a thread and
//! intervals stretch: concurrency stays bounded by the pool.
//!
//! Results reach the caller two ways: [`Prober::view`] is the current [`HealthView`] (every
//! target's state, a `generation` that grows with each transition), published through an
//! `ArcSwap`; and the `Receiver<Change>` returned by [`Prober::start`] carries each transition as
//! it happens, for a control thread that rebuilds the forwarding snapshot.
//!
//! Logging: one line per transition (with the last error); a probe that fails like the one before
//! is not logged above `debug`.

pub mod check;
pub mod dsr;
pub mod state;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tracing::{debug, info, warn};

pub use dsr::Egress;
pub use state::{BackendHealth, Health, Transition};

use crate::config::{CheckKind, Config, HealthCheck};
use crate::wire::MacAddr;

/// Default number of probe threads.
pub const DEFAULT_PROBE_THREADS: usize = 4;

/// Names one checked backend: its service and its identity in it (IP, and for `ipvs-mh` the
/// destination port; [`crate::config::Backend::port`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TargetKey {
    pub service: String,
    pub backend: IpAddr,
    pub port: u16,
}

/// One backend to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub key: TargetKey,
    /// The service's VIP (the `dsr` check's destination).
    pub vip: IpAddr,
    pub check: HealthCheck,
    /// The backend's MAC when known (static or resolved): the `dsr` check needs it.
    pub mac: Option<MacAddr>,
}

/// Every backend of `cfg` with a check (`check = "none"` ones are left out: they are up), with
/// their MACs from `mac` (static MACs of the configuration come first).
pub fn targets(cfg: &Config, mac: impl Fn(IpAddr) -> Option<MacAddr>) -> Vec<Target> {
    cfg.services
        .iter()
        .flat_map(|s| {
            let mac = &mac;
            s.backends.iter().filter(|b| b.health.kind != CheckKind::None).map(move |b| Target {
                key: TargetKey { service: s.name.clone(), backend: b.ip, port: b.port },
                vip: s.vip,
                check: b.health.clone(),
                mac: b.mac.or_else(|| mac(b.ip)),
            })
        })
        .collect()
}

/// One target's state in a [`HealthView`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetStatus {
    pub target: Target,
    pub health: BackendHealth,
}

/// Every target's health at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HealthView {
    /// Grows by one with every transition.
    pub generation: u64,
    pub targets: BTreeMap<TargetKey, TargetStatus>,
}

impl HealthView {
    /// Does the backend get new flows? A backend without a check (not in the view) does.
    pub fn is_up(&self, service: &str, backend: IpAddr, port: u16) -> bool {
        let key = TargetKey { service: service.to_string(), backend, port };
        self.targets.get(&key).is_none_or(|t| t.health.health.is_up())
    }
}

/// A transition, as delivered on the prober's channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub key: TargetKey,
    pub transition: Transition,
    /// The failed probe's error for a transition to down.
    pub error: Option<String>,
    /// The view's generation after this change.
    pub generation: u64,
    pub at: Instant,
}

/// Runs the checks (see the module docs); stops when dropped.
#[derive(Debug)]
pub struct Prober {
    tx: Sender<Msg>,
    view: Arc<ArcSwap<HealthView>>,
    /// Where probes leave from, read by the probe threads at each probe.
    egress: Arc<ArcSwap<Egress>>,
    scheduler: Option<JoinHandle<()>>,
}

#[derive(Debug)]
enum Msg {
    Targets(Vec<Target>),
    Result { key: TargetKey, id: u64, result: Result<(), String>, at: Instant },
    Stop,
}

#[derive(Debug)]
struct Job {
    key: TargetKey,
    id: u64,
    target: Target,
}

impl Prober {
    /// Starts probing `targets` from `egress` with `threads` probe threads (at least one). The
    /// threads are created in the caller's network namespace.
    pub fn start(egress: Egress, threads: usize, targets: Vec<Target>) -> std::io::Result<(Prober, Receiver<Change>)> {
        let (tx, rx) = mpsc::channel();
        let (changes_tx, changes_rx) = mpsc::channel();
        let view = Arc::new(ArcSwap::from_pointee(HealthView::default()));
        let (job_tx, job_rx) = mpsc::channel::<Job>();
        let job_rx = Arc::new(Mutex::new(job_rx));
        let egress = Arc::new(ArcSwap::from_pointee(egress));
        let mut workers = Vec::new();
        for i in 0..threads.max(1) {
            let (job_rx, tx, egress) = (Arc::clone(&job_rx), tx.clone(), Arc::clone(&egress));
            workers.push(
                std::thread::Builder::new()
                    .name(format!("health-{i}"))
                    .spawn(move || probe_thread(&egress, &job_rx, &tx))?,
            );
        }
        let mut s =
            Scheduler { entries: BTreeMap::new(), next_id: 0, generation: 0, jobs: job_tx, changes: changes_tx };
        s.set_targets(targets, Instant::now());
        // The first view names every target (all unknown) before `start` returns: a caller that
        // looks at once must not find them missing.
        s.publish(&view);
        let view2 = Arc::clone(&view);
        let scheduler = std::thread::Builder::new().name("health".into()).spawn(move || {
            s.run(&rx, &view2);
            drop(s);
            for w in workers {
                let _ = w.join();
            }
        })?;
        Ok((Prober { tx, view, egress, scheduler: Some(scheduler) }, changes_rx))
    }

    /// Replaces the targets (after a reload, or when a backend's MAC changed). A target whose key
    /// and check settings are unchanged keeps its state; a new or changed one starts unknown.
    pub fn set_targets(&self, targets: Vec<Target>) {
        let _ = self.tx.send(Msg::Targets(targets));
    }

    /// The egress interface was re-created or changed (MAC, address): the next probes leave
    /// from it as it is now.
    pub fn set_egress(&self, egress: Egress) {
        self.egress.store(Arc::new(egress));
    }

    /// The current health of every target.
    pub fn view(&self) -> Arc<HealthView> {
        self.view.load_full()
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Stop);
        if let Some(h) = self.scheduler.take() {
            let _ = h.join();
        }
    }
}

fn probe_thread(egress: &ArcSwap<Egress>, jobs: &Mutex<Receiver<Job>>, results: &Sender<Msg>) {
    loop {
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        let result = run_probe(&egress.load(), &job.target);
        if results.send(Msg::Result { key: job.key, id: job.id, result, at: Instant::now() }).is_err() {
            return;
        }
    }
}

/// One probe of `t`.
pub fn run_probe(egress: &Egress, t: &Target) -> Result<(), String> {
    let c = &t.check;
    let addr = SocketAddr::new(t.key.backend, c.port);
    match &c.kind {
        CheckKind::None => Ok(()),
        CheckKind::Tcp => check::tcp(&egress.name, addr, c.timeout),
        CheckKind::Http { path, status, host } => {
            let host = host.clone().unwrap_or_else(|| check::default_host(t.key.backend, c.port));
            check::http(&egress.name, addr, path, &host, *status, c.timeout)
        }
        CheckKind::Dsr => {
            let IpAddr::V4(vip) = t.vip else { return Err("the dsr check is IPv4 only".into()) };
            let Some(mac) = t.mac else {
                return Err(format!("no MAC known for {} (ARP unresolved): cannot send the dsr probe", t.key.backend));
            };
            dsr::probe(egress, mac, SocketAddrV4::new(vip, c.port), c.timeout)
        }
    }
}

#[derive(Debug)]
struct Entry {
    target: Target,
    id: u64,
    health: BackendHealth,
    next_due: Instant,
    in_flight: bool,
}

#[derive(Debug)]
struct Scheduler {
    entries: BTreeMap<TargetKey, Entry>,
    next_id: u64,
    generation: u64,
    jobs: Sender<Job>,
    changes: Sender<Change>,
}

impl Scheduler {
    fn set_targets(&mut self, targets: Vec<Target>, now: Instant) {
        let mut old = std::mem::take(&mut self.entries);
        let n = targets.len().max(1) as u32;
        for (i, t) in targets.into_iter().enumerate() {
            let was = old.remove(&t.key);
            let entry = match was {
                Some(mut e) if e.target.check == t.check && e.target.vip == t.vip => {
                    e.target = t;
                    e
                }
                was => {
                    // A changed check starts over (unknown, which forwards): a backend that was
                    // down gets traffic again, and the control thread must hear of it (unknown →
                    // up later is no transition that changes forwarding).
                    if let Some(was) = was.filter(|e| !e.health.health.is_up()) {
                        self.generation += 1;
                        let transition = Transition { from: was.health.health, to: Health::Unknown };
                        let change = Change {
                            key: t.key.clone(),
                            transition,
                            error: None,
                            generation: self.generation,
                            at: now,
                        };
                        let _ = self.changes.send(change);
                    }
                    self.next_id += 1;
                    // Spread the first probes over one interval.
                    let offset = t.check.interval / n * i as u32;
                    Entry {
                        id: self.next_id,
                        health: BackendHealth::new(now),
                        next_due: now + offset,
                        in_flight: false,
                        target: t,
                    }
                }
            };
            self.entries.insert(entry.target.key.clone(), entry);
        }
    }

    fn publish(&self, view: &ArcSwap<HealthView>) {
        let targets = self
            .entries
            .iter()
            .map(|(k, e)| (k.clone(), TargetStatus { target: e.target.clone(), health: e.health.clone() }))
            .collect();
        view.store(Arc::new(HealthView { generation: self.generation, targets }));
    }

    fn run(&mut self, rx: &Receiver<Msg>, view: &ArcSwap<HealthView>) {
        self.publish(view);
        loop {
            let now = Instant::now();
            for (key, e) in self.entries.iter_mut() {
                if !e.in_flight && e.next_due <= now {
                    e.in_flight = true;
                    e.next_due = now + e.target.check.interval;
                    let job = Job { key: key.clone(), id: e.id, target: e.target.clone() };
                    if self.jobs.send(job).is_err() {
                        return;
                    }
                }
            }
            let wait = self
                .entries
                .values()
                .filter(|e| !e.in_flight)
                .map(|e| e.next_due.saturating_duration_since(now))
                .min()
                .unwrap_or(Duration::from_secs(1))
                .min(Duration::from_secs(1));
            let msg = match rx.recv_timeout(wait) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let mut msgs = vec![msg];
            msgs.extend(rx.try_iter());
            for m in msgs {
                match m {
                    Msg::Stop => return,
                    Msg::Targets(t) => self.set_targets(t, Instant::now()),
                    Msg::Result { key, id, result, at } => self.record(key, id, result, at),
                }
            }
            self.publish(view);
        }
    }

    fn record(&mut self, key: TargetKey, id: u64, result: Result<(), String>, at: Instant) {
        let Some(e) = self.entries.get_mut(&key) else { return };
        if e.id != id {
            return; // a result for a target replaced since
        }
        e.in_flight = false;
        if let Err(err) = &result {
            debug!(service = %key.service, backend = %key.backend, "health probe failed: {err}");
        }
        let error = result.as_ref().err().cloned();
        let (rise, fall) = (e.target.check.rise, e.target.check.fall);
        let Some(t) = e.health.record(result, rise, fall, at) else { return };
        self.generation += 1;
        let check = e.target.check.kind.name();
        if t.to == Health::Down {
            warn!(
                "service {}: backend {} is down ({check} check, {} failures): {}",
                key.service,
                key.backend,
                e.health.failures,
                error.as_deref().unwrap_or("")
            );
        } else {
            info!("service {}: backend {} is up ({check} check, {} → up)", key.service, key.backend, t.from.name());
        }
        let _ = self.changes.send(Change { key, transition: t, error, generation: self.generation, at });
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    /// The view names every target as soon as `start` returns (the scheduler thread used to
    /// publish the first view itself, so a caller looking at once could find it empty: seen as
    /// "no entry found for key" in tests/health_probes.rs on a loaded machine).
    #[test]
    fn the_first_view_names_every_target_before_start_returns() {
        let egress = Egress { name: "lo".into(), mac: MacAddr([2, 0, 0, 0, 0, 1]), ip: Ipv4Addr::LOCALHOST };
        let check = HealthCheck {
            kind: CheckKind::Tcp,
            port: 1,
            interval: Duration::from_secs(3600),
            timeout: Duration::from_millis(10),
            rise: 2,
            fall: 3,
        };
        for round in 0..20 {
            let targets: Vec<Target> = (1..=3u8)
                .map(|n| Target {
                    key: TargetKey { service: "s".into(), backend: IpAddr::V4(Ipv4Addr::new(127, 0, 0, n)), port: 1 },
                    vip: IpAddr::V4(Ipv4Addr::new(10, 201, 0, 1)),
                    check: check.clone(),
                    mac: None,
                })
                .collect();
            let keys: Vec<TargetKey> = targets.iter().map(|t| t.key.clone()).collect();
            let (prober, _changes) = Prober::start(egress.clone(), 1, targets).unwrap();
            let view = prober.view();
            for k in &keys {
                assert!(view.targets.contains_key(k), "round {round}: {k:?} missing from the first view");
            }
        }
    }

    /// A reload that changes a down backend's check (here its port) starts the check over as
    /// unknown, which forwards: the scheduler must say so. It used to stay silent, the control
    /// thread kept its view with the backend down, and unknown → up is no forwarding change, so
    /// the backend stayed out of the table for good (found by tests/announce_e2e.rs: a reload
    /// fixing every check never announced the VIP).
    #[test]
    fn a_changed_check_of_a_down_backend_is_a_change_that_forwards_again() {
        let (jobs, _jobs_rx) = mpsc::channel();
        let (changes, changes_rx) = mpsc::channel();
        let mut s = Scheduler { entries: BTreeMap::new(), next_id: 0, generation: 0, jobs, changes };
        let check = |port| HealthCheck {
            kind: CheckKind::Tcp,
            port,
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(100),
            rise: 1,
            fall: 1,
        };
        let key = TargetKey { service: "web".into(), backend: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), port: 80 };
        let target = |port| Target {
            key: key.clone(),
            vip: IpAddr::V4(Ipv4Addr::new(10, 201, 0, 1)),
            check: check(port),
            mac: None,
        };
        let t0 = Instant::now();
        s.set_targets(vec![target(81)], t0);
        let id = s.entries[&key].id;
        s.record(key.clone(), id, Err("connection refused".into()), t0);
        let down = changes_rx.try_recv().expect("unknown → down");
        assert!(down.transition.changes_forwarding());
        // Same check again: nothing changes.
        s.set_targets(vec![target(81)], t0);
        assert!(changes_rx.try_recv().is_err());
        // The check's port changes: down → unknown, which forwards.
        s.set_targets(vec![target(80)], t0);
        let c = changes_rx.try_recv().expect("a change for the reset check");
        assert_eq!(c.transition, Transition { from: Health::Down, to: Health::Unknown });
        assert!(c.transition.changes_forwarding());
        assert_eq!(c.generation, s.generation);
        assert!(s.entries[&key].health.health.is_up());
        // An up backend whose check changes: unknown forwards as up did, no change.
        s.set_targets(vec![target(82)], t0);
        assert!(changes_rx.try_recv().is_err());
    }
}
