//! The snapshot builder thread: builds and publishes every forwarding snapshot after start-up, so
//! that table builds never hold up the control thread (ARP refresh, signals, the file check).
//!
//! The control thread posts what changed into a mailbox — a new configuration to try (a reload),
//! the backend MACs now known, the interfaces' MACs — and goes on at once. The builder takes
//! everything posted since its last build in one go (later posts of the same kind replace
//! earlier ones; a reload is never dropped), builds with [`super::prepare`] — the same function
//! `maglevd check` and start-up use — reusing every table that did not change, and publishes.
//!
//! A reload is applied whole or refused whole: if its snapshot or VIP filter cannot be built,
//! nothing of it is published, `reload_failures` is counted, the error is logged, and the running
//! configuration stays; the control thread hears the outcome through a channel and only then
//! switches its ARP targets and responders to the new configuration.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};

use tracing::{error, info};

use super::{Shared, prepare};
use crate::config::Config;
use crate::dataplane::{BuildState, Links};
use crate::health::HealthView;
use crate::wire::MacAddr;

/// Backend MACs known to the neighbour table.
pub type Macs = BTreeMap<Ipv4Addr, MacAddr>;

/// What the builder tells the control thread about a reload.
#[derive(Debug)]
pub enum Outcome {
    /// Published: this configuration is now the running one.
    Applied(Arc<Config>),
    /// Refused (logged and counted); the running configuration stays.
    Refused,
}

#[derive(Debug, Default)]
struct Mail {
    reload: Option<Arc<Config>>,
    macs: Option<Macs>,
    links: Option<Links>,
    health: Option<Arc<HealthView>>,
    stop: bool,
}

impl Mail {
    fn empty(&self) -> bool {
        self.reload.is_none() && self.macs.is_none() && self.links.is_none() && self.health.is_none()
    }
}

#[derive(Debug, Default)]
struct Mailbox {
    mail: Mutex<Mail>,
    ready: Condvar,
}

/// The control thread's handle on the builder.
#[derive(Debug)]
pub struct Builder {
    mailbox: Arc<Mailbox>,
    outcomes: mpsc::Receiver<Outcome>,
}

/// What the builder starts from: the running configuration, the state its first snapshot was
/// built with, and the table cache of that build.
#[derive(Debug)]
pub struct Start {
    pub cfg: Arc<Config>,
    pub links: Links,
    pub macs: Macs,
    pub cache: BuildState,
    pub health: Arc<HealthView>,
    pub generation: u64,
}

impl Builder {
    /// Start the builder thread.
    pub fn spawn(start: Start, shared: Arc<Shared>) -> std::io::Result<Builder> {
        let mailbox = Arc::new(Mailbox::default());
        let (tx, outcomes) = mpsc::channel();
        let mb = Arc::clone(&mailbox);
        std::thread::Builder::new().name("maglevd-build".into()).spawn(move || run(start, &mb, &shared, &tx))?;
        Ok(Builder { mailbox, outcomes })
    }

    fn post(&self, f: impl FnOnce(&mut Mail)) {
        // A poisoned lock means the builder panicked; the posts are plain data, so go on.
        let mut mail = self.mailbox.mail.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut mail);
        self.mailbox.ready.notify_one();
    }

    /// Try this configuration (a reload); the outcome arrives through [`Builder::outcome`].
    pub fn reload(&self, cfg: Arc<Config>) {
        self.post(|m| m.reload = Some(cfg));
    }

    /// The backend MACs known now.
    pub fn macs(&self, macs: Macs) {
        self.post(|m| m.macs = Some(macs));
    }

    /// The interfaces' MACs changed.
    pub fn links(&self, links: Links) {
        self.post(|m| m.links = Some(links));
    }

    /// The health checks' verdicts changed.
    pub fn health(&self, view: Arc<HealthView>) {
        self.post(|m| m.health = Some(view));
    }

    /// The next reload outcome, if one is ready (never blocks).
    pub fn outcome(&self) -> Option<Outcome> {
        self.outcomes.try_recv().ok()
    }
}

impl Drop for Builder {
    fn drop(&mut self) {
        self.post(|m| m.stop = true);
    }
}

fn run(start: Start, mailbox: &Mailbox, shared: &Shared, outcomes: &mpsc::Sender<Outcome>) {
    let Start { mut cfg, mut links, mut macs, mut cache, mut health, mut generation } = start;
    let mut all_down = AllDown::default();
    loop {
        let mail = {
            let mut guard = mailbox.mail.lock().unwrap_or_else(|p| p.into_inner());
            while !guard.stop && guard.empty() {
                guard = mailbox.ready.wait(guard).unwrap_or_else(|p| p.into_inner());
            }
            std::mem::take(&mut *guard)
        };
        if mail.stop || shared.stop.load(Ordering::Relaxed) {
            return;
        }
        let state_changed = mail.macs.is_some() || mail.links.is_some() || mail.health.is_some();
        if let Some(h) = mail.health {
            health = h;
        }
        if let Some(m) = mail.macs {
            macs = m;
        }
        if let Some(l) = mail.links {
            links = l;
        }
        let resolve = |b: &crate::config::Backend| b.ipv4().and_then(|ip| macs.get(&ip).copied());
        let healthy = |s: &crate::config::Service, b: &crate::config::Backend| health.is_up(&s.name, b.ip, b.port);
        if let Some(new) = mail.reload {
            match prepare(&new, links, &resolve, &healthy, generation + 1, &mut cache) {
                Ok(p) => {
                    generation += 1;
                    cfg = new;
                    all_down.report(&p.snapshot);
                    shared.snapshot.store(Arc::new(p.snapshot));
                    shared.reloads.applied();
                    info!(generation, services = cfg.services.len(), "configuration reloaded");
                    let _ = outcomes.send(Outcome::Applied(Arc::clone(&cfg)));
                    continue;
                }
                Err(e) => {
                    shared.reload_failures.fetch_add(1, Ordering::Relaxed);
                    shared.reloads.refused(&e.to_string());
                    error!("reload refused, running configuration kept: {e}");
                    let _ = outcomes.send(Outcome::Refused);
                    // The MACs or links that came with it still apply to the running configuration.
                    if !state_changed {
                        continue;
                    }
                }
            }
        }
        match prepare(&cfg, links, &resolve, &healthy, generation + 1, &mut cache) {
            Ok(p) => {
                generation += 1;
                all_down.report(&p.snapshot);
                let usable: usize =
                    p.snapshot.services().iter().map(|s| s.backends.iter().filter(|b| b.usable()).count()).sum();
                shared.snapshot.store(Arc::new(p.snapshot));
                info!(generation, usable_backends = usable, "snapshot published");
            }
            Err(e) => error!(error = %e, "cannot build the forwarding snapshot; keeping the previous one"),
        }
    }
}

/// The services whose every backend is down, as last reported: each change is logged once, at
/// error level while a service is down (its traffic is dropped, or sent to backends that failed
/// their checks).
#[derive(Debug, Default)]
struct AllDown {
    down: std::collections::BTreeSet<String>,
}

impl AllDown {
    fn report(&mut self, snap: &crate::dataplane::Snapshot) {
        let now: std::collections::BTreeSet<String> =
            snap.services().iter().filter(|s| s.all_down).map(|s| s.name.clone()).collect();
        for s in snap.services().iter().filter(|s| s.all_down && !self.down.contains(&s.name)) {
            match s.when_all_down {
                crate::config::WhenAllDown::Drop => error!(
                    service = %s.name,
                    "every backend of the service is down: its traffic is dropped (when_all_down = \"drop\")"
                ),
                crate::config::WhenAllDown::All => error!(
                    service = %s.name,
                    "every backend of the service is down: forwarding to all of them anyway (when_all_down = \"all\")"
                ),
            }
        }
        for name in self.down.difference(&now) {
            info!(service = %name, "the service has a healthy backend again");
        }
        self.down = now;
    }
}
