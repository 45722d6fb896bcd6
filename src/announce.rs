//! VIP announcement: when this frontend tells the network that it serves a VIP.
//!
//! Frontends scale out the way the seed's router spreads a VIP over them, by ECMP; what the
//! seed lacks is a route that follows the frontends. With `[announce]`, maglevd decides per VIP
//! whether it should receive that VIP's traffic, and says so in the forms BGP tooling reads:
//! * a route `VIP/32` in a kernel table no rule consults, through a TUN device that dies with the
//!   process ([`crate::io::route`]): BIRD 2's `kernel` protocol learns it and announces it
//!   (first-class; `config/bird.conf`);
//! * `GET /ready/VIP` on the daemon's HTTP listener: 200 while announced (for ExaBGP's
//!   healthcheck, GoBGP scripts, load balancer health checks);
//! * optionally a file per announced VIP in `state_dir` (created and removed atomically,
//!   keepalived-style notify files for scripts).
//!
//! # The decision ([`Announcer::step`], every `interval_ms`)
//! A VIP is *ready* when the daemon is live, the data path and VIP filter are in place and every
//! service of the VIP has a usable backend (`/ready/VIP` without `[announce]`). Readiness is
//! raw; the announcement adds:
//! * **hysteresis**: a withdrawn VIP is announced after `rise` consecutive ready evaluations, an
//!   announced one withdrawn after `fall` consecutive not-ready ones, so one flapping backend
//!   check or a slow evaluation does not flap the route (and every router's FIB behind it);
//! * **settle time**: nothing is announced for `settle_secs` after start (vc5's lesson: let ARP
//!   resolve the backends and the health checks conclude before traffic is invited);
//! * **holds**, which withdraw every VIP at once, without waiting for `fall`: a drain
//!   (`maglevd drain`, or the `drain_file` existing) and the stop (SIGTERM: withdraw, keep
//!   forwarding `drain_secs` while the routers converge, then exit).
//!
//! The decision is a pure function of the configuration, the clock and the readiness it is
//! given, so it is tested without a daemon; the daemon's announce thread applies it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::config;
use crate::status::VipAnnounce;

/// One VIP's announcement state.
#[derive(Debug, Clone)]
struct Vip {
    announced: bool,
    /// Consecutive evaluations that disagree with `announced` (capped at the threshold).
    streak: u32,
    since_unix: u64,
    changes: u64,
    reason: String,
}

/// The decision of every VIP over time.
#[derive(Debug)]
pub struct Announcer {
    settle: Duration,
    rise: u32,
    fall: u32,
    started: Instant,
    started_unix: u64,
    vips: BTreeMap<Ipv4Addr, Vip>,
}

impl Announcer {
    /// Starts with every VIP withdrawn; `started` begins the settle time.
    pub fn new(cfg: &config::Announce, started: Instant, started_unix: u64) -> Announcer {
        let mut a = Announcer {
            settle: cfg.settle,
            rise: cfg.rise,
            fall: cfg.fall,
            started,
            started_unix,
            vips: BTreeMap::new(),
        };
        a.configure(cfg);
        a
    }

    /// Takes new timings (a reload); the VIPs keep their state.
    pub fn configure(&mut self, cfg: &config::Announce) {
        self.settle = cfg.settle;
        self.rise = cfg.rise.max(1);
        self.fall = cfg.fall.max(1);
    }

    /// One evaluation: `ready` holds every VIP of the running configuration with its raw
    /// readiness (`Err`: why not), `hold` a reason to withdraw every VIP now. VIPs not in `ready`
    /// are forgotten (their routes go). Returns every VIP's state, in address order.
    pub fn step(
        &mut self,
        now: Instant,
        now_unix: u64,
        ready: &[(Ipv4Addr, Result<(), String>)],
        hold: Option<&str>,
    ) -> Vec<VipAnnounce> {
        self.vips.retain(|vip, _| ready.iter().any(|(v, _)| v == vip));
        let settle_left = self.settle.saturating_sub(now.saturating_duration_since(self.started));
        for (vip, r) in ready {
            let v = self.vips.entry(*vip).or_insert_with(|| Vip {
                announced: false,
                streak: 0,
                since_unix: self.started_unix,
                changes: 0,
                reason: String::new(),
            });
            let flip = |v: &mut Vip| {
                v.announced = !v.announced;
                v.streak = 0;
                v.since_unix = now_unix;
                v.changes += 1;
            };
            if let Some(why) = hold {
                if v.announced {
                    flip(v);
                }
                v.streak = 0;
                v.reason = why.to_string();
                continue;
            }
            match (v.announced, r) {
                (true, Ok(())) => {
                    v.streak = 0;
                    v.reason = "ready".into();
                }
                (true, Err(why)) => {
                    v.streak = (v.streak + 1).min(self.fall);
                    if v.streak >= self.fall {
                        flip(v);
                        v.reason = why.clone();
                    } else {
                        v.reason = format!("not ready {}/{}: {why}", v.streak, self.fall);
                    }
                }
                (false, Ok(())) => {
                    v.streak = (v.streak + 1).min(self.rise);
                    if v.streak < self.rise {
                        v.reason = format!("ready {}/{}", v.streak, self.rise);
                    } else if !settle_left.is_zero() {
                        v.reason = format!("settling: {:.1}s left", settle_left.as_secs_f64());
                    } else {
                        flip(v);
                        v.reason = "ready".into();
                    }
                }
                (false, Err(why)) => {
                    v.streak = 0;
                    v.reason = why.clone();
                }
            }
        }
        self.vips
            .iter()
            .map(|(vip, v)| VipAnnounce {
                vip: *vip,
                announced: v.announced,
                reason: v.reason.clone(),
                since_unix: v.since_unix,
                changes: v.changes,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VIP: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 1);
    const VIP2: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 2);

    fn cfg(settle_ms: u64, rise: u32, fall: u32) -> config::Announce {
        config::Announce { settle: Duration::from_millis(settle_ms), rise, fall, ..config::Announce::default() }
    }

    /// Steps at 500 ms intervals from `t0`, with VIP's readiness from `ready`; the announced
    /// state after each step.
    fn run(a: &mut Announcer, t0: Instant, ready: &[bool]) -> Vec<bool> {
        ready
            .iter()
            .enumerate()
            .map(|(i, ok)| {
                let now = t0 + Duration::from_millis(500 * i as u64);
                let r = if *ok { Ok(()) } else { Err("no usable backend: web".to_string()) };
                a.step(now, i as u64, &[(VIP, r)], None)[0].announced
            })
            .collect()
    }

    #[test]
    fn rise_and_fall_need_consecutive_evaluations() {
        let t0 = Instant::now();
        let mut a = Announcer::new(&cfg(0, 2, 3), t0, 0);
        let got = run(&mut a, t0, &[true, false, true, true, true, false, false, true, false, false, false, true]);
        //                          1/2   reset  1/2   up    up    1/3    2/3   ok    1/3    2/3    down   1/2
        assert_eq!(got, [false, false, false, true, true, true, true, true, true, true, false, false]);
    }

    #[test]
    fn nothing_is_announced_before_the_settle_time_and_then_at_once() {
        let t0 = Instant::now();
        let mut a = Announcer::new(&cfg(2000, 2, 2), t0, 0);
        // Ready throughout: rise is met at 0.5 s, but the settle time lasts until 2 s.
        let got = run(&mut a, t0, &[true, true, true, true, true, true]);
        assert_eq!(got, [false, false, false, false, true, true]);
        let mut b = Announcer::new(&cfg(2000, 2, 2), t0, 0);
        let v = b.step(t0 + Duration::from_millis(500), 0, &[(VIP, Ok(()))], None);
        assert_eq!(v[0].reason, "ready 1/2");
        let v = b.step(t0 + Duration::from_millis(1000), 0, &[(VIP, Ok(()))], None);
        assert_eq!(v[0].reason, "settling: 1.0s left");
    }

    #[test]
    fn a_hold_withdraws_every_vip_at_once_and_rise_starts_over_after_it() {
        let t0 = Instant::now();
        let mut a = Announcer::new(&cfg(0, 2, 3), t0, 100);
        let both = [(VIP, Ok(())), (VIP2, Ok(()))];
        a.step(t0, 100, &both, None);
        let v = a.step(t0, 101, &both, None);
        assert!(v.iter().all(|v| v.announced));
        let v = a.step(t0, 102, &both, Some("stopping"));
        assert!(v.iter().all(|v| !v.announced && v.reason == "stopping" && v.since_unix == 102 && v.changes == 2));
        let v = a.step(t0, 103, &both, None);
        assert!(v.iter().all(|v| !v.announced), "after a hold, rise counts again from zero");
        let v = a.step(t0, 104, &both, None);
        assert!(v.iter().all(|v| v.announced));
    }

    #[test]
    fn a_vip_leaving_the_configuration_is_forgotten_and_a_new_one_starts_withdrawn() {
        let t0 = Instant::now();
        let mut a = Announcer::new(&cfg(0, 1, 1), t0, 0);
        let v = a.step(t0, 0, &[(VIP, Ok(()))], None);
        assert_eq!(v.len(), 1);
        assert!(v[0].announced);
        let v = a.step(t0, 1, &[(VIP2, Err("no usable backend: dns".into()))], None);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].vip, VIP2);
        assert!(!v[0].announced);
        assert_eq!(v[0].reason, "no usable backend: dns");
    }

    #[test]
    fn the_reason_names_the_problem_while_falling() {
        let t0 = Instant::now();
        let mut a = Announcer::new(&cfg(0, 1, 2), t0, 0);
        a.step(t0, 0, &[(VIP, Ok(()))], None);
        let v = a.step(t0, 1, &[(VIP, Err("worker 1: no progress".into()))], None);
        assert!(v[0].announced);
        assert_eq!(v[0].reason, "not ready 1/2: worker 1: no progress");
        let v = a.step(t0, 2, &[(VIP, Err("worker 1: no progress".into()))], None);
        assert!(!v[0].announced);
        assert_eq!(v[0].reason, "worker 1: no progress");
        assert_eq!(v[0].since_unix, 2);
    }
}
