//! The per-backend health state machine: pure, time passed in.
//!
//! # Start state
//! A backend starts **unknown, treated as up**: its first success makes it up, `fall`
//! consecutive failures make it down. Starting down ("down until `rise` successes") would drop
//! every service for `rise × interval` after each start and each reload although the backends were
//! serving a moment before, and would turn a frontend restart into an outage; starting unknown-up
//! costs nothing for a healthy backend, and a dead one is taken out after `fall` probes, exactly
//! as fast as a backend that dies while maglevd runs. This is also how maglevd behaved before it
//! had checks.
//!
//! # Hysteresis
//! Up → down after `fall` consecutive failures; down → up after `rise` consecutive successes. A
//! result of the other kind resets the count.

use std::time::Instant;

/// What the checks say about a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Not probed to a conclusion yet: treated as up (see the module docs).
    Unknown,
    Up,
    Down,
}

impl Health {
    /// Does the data plane send new flows to it?
    pub fn is_up(self) -> bool {
        self != Health::Down
    }

    pub fn name(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Up => "up",
            Health::Down => "down",
        }
    }
}

/// A change of [`Health`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: Health,
    pub to: Health,
}

impl Transition {
    /// Did it change whether the backend gets traffic (unknown → up does not)?
    pub fn changes_forwarding(&self) -> bool {
        self.from.is_up() != self.to.is_up()
    }
}

/// One backend's check history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendHealth {
    pub health: Health,
    /// Consecutive successes (0 after a failure).
    pub successes: u32,
    /// Consecutive failures (0 after a success).
    pub failures: u32,
    /// Probes finished.
    pub probes: u64,
    /// Why the last failed probe failed (kept after later successes).
    pub last_error: Option<String>,
    /// Transitions to up and to down so far.
    pub ups: u64,
    pub downs: u64,
    /// When the health last changed (the start for a backend still unknown).
    pub last_change: Instant,
}

impl BackendHealth {
    pub fn new(now: Instant) -> BackendHealth {
        BackendHealth {
            health: Health::Unknown,
            successes: 0,
            failures: 0,
            probes: 0,
            last_error: None,
            ups: 0,
            downs: 0,
            last_change: now,
        }
    }

    /// Records one probe's result; returns the transition it caused, if any.
    pub fn record(&mut self, result: Result<(), String>, rise: u32, fall: u32, now: Instant) -> Option<Transition> {
        self.probes += 1;
        let from = self.health;
        let to = match result {
            Ok(()) => {
                self.failures = 0;
                self.successes = self.successes.saturating_add(1);
                match from {
                    Health::Unknown => Health::Up,
                    Health::Down if self.successes >= rise.max(1) => Health::Up,
                    h => h,
                }
            }
            Err(e) => {
                self.successes = 0;
                self.failures = self.failures.saturating_add(1);
                self.last_error = Some(e);
                if from != Health::Down && self.failures >= fall.max(1) { Health::Down } else { from }
            }
        };
        if to == from {
            return None;
        }
        self.health = to;
        self.last_change = now;
        match to {
            Health::Up => self.ups += 1,
            Health::Down => self.downs += 1,
            Health::Unknown => {}
        }
        Some(Transition { from, to })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const OK: Result<(), String> = Ok(());
    fn fail() -> Result<(), String> {
        Err("connection refused".into())
    }

    #[test]
    fn starts_unknown_and_up_and_the_first_success_confirms_it() {
        let t0 = Instant::now();
        let mut h = BackendHealth::new(t0);
        assert_eq!(h.health, Health::Unknown);
        assert!(h.health.is_up());
        let t = h.record(OK, 2, 3, t0 + Duration::from_secs(2)).unwrap();
        assert_eq!(t, Transition { from: Health::Unknown, to: Health::Up });
        assert!(!t.changes_forwarding());
        assert_eq!((h.ups, h.downs, h.last_change), (1, 0, t0 + Duration::from_secs(2)));
    }

    #[test]
    fn unknown_goes_down_after_fall_failures() {
        let t0 = Instant::now();
        let mut h = BackendHealth::new(t0);
        assert_eq!(h.record(fail(), 2, 3, t0), None);
        assert_eq!(h.record(fail(), 2, 3, t0), None);
        assert!(h.health.is_up());
        let t = h.record(fail(), 2, 3, t0 + Duration::from_secs(4)).unwrap();
        assert_eq!(t, Transition { from: Health::Unknown, to: Health::Down });
        assert!(t.changes_forwarding());
        assert_eq!(h.last_error.as_deref(), Some("connection refused"));
        assert_eq!(h.last_change, t0 + Duration::from_secs(4));
    }

    #[test]
    fn hysteresis_rise_and_fall() {
        let t0 = Instant::now();
        let mut h = BackendHealth::new(t0);
        h.record(OK, 2, 3, t0);
        // Two failures, a success, two failures: never three in a row, stays up.
        for r in [fail(), fail(), OK, fail(), fail()] {
            assert_eq!(h.record(r, 2, 3, t0), None);
        }
        assert_eq!(h.health, Health::Up);
        assert_eq!(h.record(fail(), 2, 3, t0).map(|t| t.to), Some(Health::Down));
        assert_eq!(h.record(fail(), 2, 3, t0), None, "already down: no second transition");
        // One success is not enough to come back (rise 2); a failure resets the count.
        assert_eq!(h.record(OK, 2, 3, t0), None);
        assert_eq!(h.record(fail(), 2, 3, t0), None);
        assert_eq!(h.record(OK, 2, 3, t0), None);
        let t1 = t0 + Duration::from_secs(30);
        assert_eq!(h.record(OK, 2, 3, t1), Some(Transition { from: Health::Down, to: Health::Up }));
        assert_eq!((h.ups, h.downs, h.probes, h.last_change), (2, 1, 12, t1));
        // The last error is kept after the backend recovered.
        assert_eq!(h.last_error.as_deref(), Some("connection refused"));
    }

    #[test]
    fn rise_and_fall_of_one_flip_at_once() {
        let t0 = Instant::now();
        let mut h = BackendHealth::new(t0);
        assert_eq!(h.record(fail(), 1, 1, t0).map(|t| t.to), Some(Health::Down));
        assert_eq!(h.record(OK, 1, 1, t0).map(|t| t.to), Some(Health::Up));
        // 0 is treated as 1 (config validation never gives 0).
        assert_eq!(h.record(fail(), 0, 0, t0).map(|t| t.to), Some(Health::Down));
    }
}
