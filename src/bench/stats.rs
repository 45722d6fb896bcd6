//! Statistics and machine-load helpers shared by the benchmarks: order statistics over samples,
//! `/proc/stat` CPU accounting (to detect foreign load, docs/lab.md pitfall 12), `/proc/net/dev`
//! counters, and list parsing for the command line. Everything here is pure or reads `/proc` only.

use std::time::Duration;

/// Median of `v` (mean of the two middle values for an even count); `None` when empty.
pub fn median(v: &[f64]) -> Option<f64> {
    let s = sorted(v)?;
    let n = s.len();
    Some(if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 })
}

/// The `p`-th percentile (0..=100) by the nearest-rank method: the smallest sample such that at
/// least `p` % of the samples are ≤ it. `None` when empty or `p` is out of range.
pub fn percentile(v: &[f64], p: f64) -> Option<f64> {
    if !(0.0..=100.0).contains(&p) {
        return None;
    }
    let s = sorted(v)?;
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    Some(s[rank.clamp(1, s.len()) - 1])
}

/// Smallest sample; `None` when empty.
pub fn min(v: &[f64]) -> Option<f64> {
    sorted(v).map(|s| s[0])
}

/// Largest sample; `None` when empty.
pub fn max(v: &[f64]) -> Option<f64> {
    sorted(v).map(|s| s[s.len() - 1])
}

fn sorted(v: &[f64]) -> Option<Vec<f64>> {
    if v.is_empty() || v.iter().any(|x| x.is_nan()) {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    Some(s)
}

/// Parses a comma-separated list of positive integers (`"3,100,1000"`).
pub fn parse_list(s: &str) -> Result<Vec<u32>, String> {
    let mut out = Vec::new();
    for part in s.split(',') {
        let p = part.trim();
        let n: u32 = p.parse().map_err(|_| format!("'{p}' is not a positive integer"))?;
        if n == 0 {
            return Err("0 is not a positive integer".into());
        }
        out.push(n);
    }
    Ok(out)
}

/// CPU time from `/proc/stat` in USER_HZ ticks: the aggregate `cpu ` line, plus (total, idle) of
/// every `cpuN` line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CpuTimes {
    /// All columns (user … steal).
    pub total: u64,
    /// idle + iowait.
    pub idle: u64,
    /// irq + softirq (packet processing outside any process).
    pub interrupt: u64,
    /// Time the hypervisor ran something else on our vCPUs.
    pub steal: u64,
    /// Number of `cpuN` lines.
    pub cpus: u32,
    /// (total, idle + iowait) per CPU, indexed by N.
    pub per_cpu: Vec<(u64, u64)>,
}

fn cpu_columns(line: &str) -> Option<(u64, u64, u64, u64)> {
    let f: Vec<u64> = line.split_whitespace().skip(1).map(|x| x.parse().unwrap_or(0)).collect();
    if f.len() < 4 {
        return None;
    }
    let col = |i: usize| f.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal (guest columns are included in user).
    Some(((0..8).map(col).sum(), col(3) + col(4), col(5) + col(6), col(7)))
}

impl CpuTimes {
    /// Parses a `/proc/stat` text. `None` if there is no `cpu ` line.
    pub fn parse(text: &str) -> Option<CpuTimes> {
        let (total, idle, interrupt, steal) = cpu_columns(text.lines().find(|l| l.starts_with("cpu "))?)?;
        let mut per_cpu = Vec::new();
        for line in text.lines().filter(|l| l.starts_with("cpu") && !l.starts_with("cpu ")) {
            let n: usize = line[3..].split_whitespace().next().and_then(|n| n.parse().ok())?;
            let (t, i, _, _) = cpu_columns(line)?;
            if per_cpu.len() <= n {
                per_cpu.resize(n + 1, (0, 0));
            }
            per_cpu[n] = (t, i);
        }
        let cpus = per_cpu.len().max(1) as u32;
        Some(CpuTimes { total, idle, interrupt, steal, cpus, per_cpu })
    }

    /// Reads `/proc/stat` now.
    pub fn now() -> Option<CpuTimes> {
        CpuTimes::parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }
}

/// utime + stime of this process (all threads), in USER_HZ ticks, from a `/proc/self/stat` text.
pub fn parse_self_ticks(text: &str) -> Option<u64> {
    // The command name (field 2) may contain spaces; fields after the last ')' are fixed.
    parse_stat(text).map(|(_, _, ticks, _)| ticks)
}

/// `(ppid, utime + stime, cutime + cstime)` from a `/proc/PID/stat` text, and the command name.
pub fn parse_stat(text: &str) -> Option<(&str, u32, u64, u64)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?;
    let f: Vec<&str> = text[close + 1..].split_whitespace().collect();
    // f[0] is field 3 (state): ppid is field 4, utime 14, stime 15, cutime 16, cstime 17.
    let num = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok());
    let ppid = u32::try_from(num(1)?).ok()?;
    Some((comm, ppid, num(11)? + num(12)?, num(13)? + num(14)?))
}

/// CPU ticks of this process, of its children (alive, or exited and waited for), and of the
/// `ksoftirqd/N` kernel threads: softirq work (packet forwarding) deferred to them, and the
/// programs the benchmark runs (iperf3, wrk, nginx), are work of the benchmark, not foreign load.
fn self_ticks() -> Option<u64> {
    let me = std::process::id();
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    let (_, _, own, reaped) = parse_stat(&text)?;
    let mut procs: Vec<(u32, u32, u64)> = Vec::new();
    let mut softirqd = 0;
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let name = e.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            if pid == me {
                continue;
            }
            let Ok(t) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
            let Some((comm, ppid, ticks, _)) = parse_stat(&t) else { continue };
            if comm.starts_with("ksoftirqd/") {
                softirqd += ticks;
            } else {
                procs.push((pid, ppid, ticks));
            }
        }
    }
    Some(own + reaped + softirqd + descendant_ticks(me, &procs))
}

/// Ticks of every descendant of `root` among `(pid, ppid, ticks)`.
pub fn descendant_ticks(root: u32, procs: &[(u32, u32, u64)]) -> u64 {
    let mut parents = vec![root];
    let mut total = 0;
    while let Some(p) = parents.pop() {
        for &(pid, ppid, ticks) in procs {
            if ppid == p && pid != root {
                total += ticks;
                parents.push(pid);
            }
        }
    }
    total
}

/// CPU use over an interval, split into this process, interrupt/softirq work, and the rest.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LoadSample {
    /// Busy share of all CPUs (0..=1).
    pub busy: f64,
    /// Share of all CPUs spent by other processes (busy − ours − ksoftirqd − irq/softirq − steal),
    /// 0..=1.
    pub foreign: f64,
    /// Share of all CPUs stolen by the hypervisor (0..=1).
    pub steal: f64,
    /// Busy share of each CPU (0..=1), indexed by CPU number.
    pub per_cpu: Vec<f64>,
}

/// A running measurement of CPU use; [`LoadMeter::finish`] gives the shares since `start`.
#[derive(Debug, Clone)]
pub struct LoadMeter {
    cpu: Option<CpuTimes>,
    own: Option<u64>,
}

impl LoadMeter {
    pub fn start() -> LoadMeter {
        LoadMeter { cpu: CpuTimes::now(), own: self_ticks() }
    }

    pub fn finish(&self) -> Option<LoadSample> {
        let (a, b) = (self.cpu.as_ref()?, CpuTimes::now()?);
        let own = self_ticks()?.saturating_sub(self.own?);
        load_between(a, &b, own)
    }
}

/// Shares of CPU time between two `/proc/stat` readings, given this process's ticks in between.
pub fn load_between(a: &CpuTimes, b: &CpuTimes, own_ticks: u64) -> Option<LoadSample> {
    let total = b.total.checked_sub(a.total)?;
    if total == 0 {
        return None;
    }
    let idle = b.idle.saturating_sub(a.idle);
    let busy = total.saturating_sub(idle);
    let irq = b.interrupt.saturating_sub(a.interrupt);
    let steal = b.steal.saturating_sub(a.steal);
    let foreign = busy.saturating_sub(own_ticks).saturating_sub(irq).saturating_sub(steal);
    let per_cpu = a
        .per_cpu
        .iter()
        .zip(&b.per_cpu)
        .map(|(x, y)| {
            let t = y.0.saturating_sub(x.0);
            if t == 0 { 0.0 } else { t.saturating_sub(y.1.saturating_sub(x.1)) as f64 / t as f64 }
        })
        .collect();
    let share = |x: u64| x as f64 / total as f64;
    Some(LoadSample { busy: share(busy), foreign: share(foreign), steal: share(steal), per_cpu })
}

/// Samples the machine for `window` while this process is idle and returns the busy share.
pub fn sample_idle_load(window: Duration) -> Option<LoadSample> {
    let m = LoadMeter::start();
    std::thread::sleep(window);
    m.finish()
}

/// `(rx_packets, tx_packets)` of interface `iface` from a `/proc/net/dev` text.
pub fn parse_net_dev(text: &str, iface: &str) -> Option<(u64, u64)> {
    for line in text.lines() {
        let Some((name, rest)) = line.split_once(':') else { continue };
        if name.trim() != iface {
            continue;
        }
        let f: Vec<u64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
        // rx: bytes packets errs drop fifo frame compressed multicast; tx: bytes packets …
        return Some((*f.get(1)?, *f.get(9)?));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_statistics() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[1.0, f64::NAN]), None);
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&v, 101.0), None);
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(min(&[2.0, -1.0, 5.0]), Some(-1.0));
        assert_eq!(max(&[2.0, -1.0, 5.0]), Some(5.0));
    }

    #[test]
    fn lists() {
        assert_eq!(parse_list("3,100, 1000"), Ok(vec![3, 100, 1000]));
        assert!(parse_list("3,,4").is_err());
        assert!(parse_list("0").is_err());
        assert!(parse_list("x").unwrap_err().contains("'x'"));
    }

    #[test]
    fn proc_stat() {
        let a = CpuTimes::parse("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 50 0 0 450 0\ncpu1 100 0 0 400 0\n").unwrap();
        assert_eq!(
            a,
            CpuTimes { total: 1000, idle: 850, interrupt: 0, steal: 0, cpus: 2, per_cpu: vec![(500, 450), (500, 400)] }
        );
        let b = CpuTimes::parse("cpu  200 0 100 1400 50 10 40 0 0 0\ncpu0 50 0 0 850 0\ncpu1 500 0 0 400 0\n").unwrap();
        // 800 ticks passed: 600 idle, 200 busy of which 50 irq/softirq and 100 ours.
        let s = load_between(&a, &b, 100).unwrap();
        assert!((s.busy - 0.25).abs() < 1e-9, "{s:?}");
        assert!((s.foreign - 50.0 / 800.0).abs() < 1e-9, "{s:?}");
        assert_eq!(s.per_cpu, vec![0.0, 1.0]);
        assert!(load_between(&a, &a, 0).is_none());
        assert!(CpuTimes::parse("intr 1 2").is_none());
        assert!(CpuTimes::now().is_some());
    }

    #[test]
    fn self_stat() {
        let text = "1234 (my (odd) prog) S 1 2 3 4 5 6 7 8 9 10 11 22 3 4 20 0";
        assert_eq!(parse_self_ticks(text), Some(33));
        assert_eq!(parse_stat(text), Some(("my (odd) prog", 1, 33, 7)));
        assert!(parse_self_ticks("garbage").is_none());
        // 10 -> 11 -> 12, 10 -> 13; 20 is someone else's.
        let procs = [(11, 10, 5), (12, 11, 7), (13, 10, 1), (20, 1, 100), (14, 20, 50)];
        assert_eq!(descendant_ticks(10, &procs), 13);
        assert_eq!(descendant_ticks(99, &procs), 0);
        assert!(LoadMeter::start().finish().is_some() || CpuTimes::now().is_some());
    }

    #[test]
    fn net_dev() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
            face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n  \
            lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0\n\
            sink0: 6400 100 0 0 0 0 0 0 128 2 0 0 0 0 0 0\n";
        assert_eq!(parse_net_dev(text, "sink0"), Some((100, 2)));
        assert_eq!(parse_net_dev(text, "lo"), Some((0, 0)));
        assert_eq!(parse_net_dev(text, "eth9"), None);
    }
}
