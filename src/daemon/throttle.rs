//! Rate limits for repeated warnings: a failing ARP socket or probe would otherwise write a log
//! line per attempt. A [`Throttle`] lets one line through per period and counts what it held
//! back, so the next line says how many were suppressed.

use std::time::{Duration, Instant};

/// One warning's rate limit (see the module docs).
#[derive(Debug, Clone)]
pub struct Throttle {
    period: Duration,
    next: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    /// At most one line per `period`.
    pub fn new(period: Duration) -> Throttle {
        Throttle { period, next: None, suppressed: 0 }
    }

    /// `Some(n)` if a line may be written at `now` (`n` lines were held back since the last one);
    /// `None` if this one is held back.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        if self.next.is_some_and(|t| now < t) {
            self.suppressed += 1;
            return None;
        }
        self.next = Some(now + self.period);
        Some(std::mem::take(&mut self.suppressed))
    }
}

impl Default for Throttle {
    /// One line per 30 s.
    fn default() -> Throttle {
        Throttle::new(Duration::from_secs(30))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_period_and_the_count_of_the_others() {
        let t0 = Instant::now();
        let mut t = Throttle::new(Duration::from_secs(10));
        assert_eq!(t.allow(t0), Some(0));
        for s in 1..10 {
            assert_eq!(t.allow(t0 + Duration::from_secs(s)), None);
        }
        assert_eq!(t.allow(t0 + Duration::from_secs(10)), Some(9));
        assert_eq!(t.allow(t0 + Duration::from_secs(11)), None);
        assert_eq!(t.allow(t0 + Duration::from_secs(25)), Some(1));
    }
}
