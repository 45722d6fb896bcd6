//! `maglevd status`: what the running daemon is doing, for an operator (the questions
//! `ipvsadm -Ln --stats --rate`, `ipvsadm -Lnc` and keepalived's logs answer).
//!
//! # Where it reads from
//! The daemon's HTTP listener (`daemon.metrics`), which already serves `/metrics`, `/live` and
//! `/ready`: `GET /status` (this module's [`Status`] as JSON) and `GET /status/flows` ([`FlowList`]).
//! Reusing it rather than adding a Unix control socket keeps one listener, with its bounds
//! (connection deadline, connection limit, no client can stall it), one place to configure, and
//! it works unchanged inside a pod (`kubectl exec … maglevd status`) or next to the unit. What it
//! adds over `/metrics` is the flow listing, which names clients: it is served to loopback peers
//! only (403 otherwise), and at most once a second, because the workers walk their tables for it.
//!
//! # Rates
//! The daemon keeps totals only; `status` reads twice, `--interval` apart (default 1 s), and
//! shows the differences per second next to the totals (`--interval 0`: totals only).

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Everything `status` shows, as the daemon reports it (totals since start).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    pub uptime_secs: u64,
    /// The configuration file, when it was applied (Unix seconds) and the snapshot generation.
    pub config: String,
    pub config_applied_unix: u64,
    pub generation: u64,
    pub reload_failures: u64,
    pub last_reload_error: Option<ReloadError>,
    /// Why `/live` or `/ready` fail, if they do.
    pub live_problem: Option<String>,
    pub ready_problem: Option<String>,
    pub workers: Vec<WorkerStatus>,
    pub services: Vec<ServiceStatus>,
    /// VIP announcement (`[announce]`), when configured.
    #[serde(default)]
    pub announce: Option<AnnounceStatus>,
}

/// What maglevd tells the network, per VIP ([`crate::announce`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnnounceStatus {
    /// The routing table and device of the VIP routes, when `announce.table` is set.
    pub table: Option<u32>,
    pub device: Option<String>,
    /// Why every VIP is withdrawn now, if one reason holds them all (drain, stop).
    pub hold: Option<String>,
    /// The last failure to change a route or state file, if the last attempt failed.
    pub error: Option<String>,
    pub vips: Vec<VipAnnounce>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipAnnounce {
    pub vip: std::net::Ipv4Addr,
    pub announced: bool,
    /// Why it is (or is about to be) in that state: `ready`, `ready 1/2`, `settling: 3s left`,
    /// `not ready 1/2: ...`, the readiness problem, or the hold.
    pub reason: String,
    /// When it last changed (Unix seconds; when maglevd started if it never did).
    pub since_unix: u64,
    /// Announcements and withdrawals since start.
    pub changes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadError {
    pub unix: u64,
    pub error: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub index: usize,
    /// Thread running and making progress.
    pub alive: bool,
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Frames the RX ring dropped because it was full.
    pub ring_drops: u64,
    /// Frames dropped by the data plane (every reason).
    pub drops: u64,
    pub flows: u64,
    pub flow_capacity: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    /// `VIP:PORT/PROTO` (`VIP:*/PROTO` for every port).
    pub endpoint: String,
    pub algorithm: String,
    pub all_down: bool,
    pub when_all_down: String,
    pub backends: Vec<BackendStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendStatus {
    /// As in the metrics' `backend` label: IP, or `IP:PORT` in an `ipvs-mh` service.
    pub backend: String,
    pub mac: Option<String>,
    pub weight: u32,
    /// `up`, `down`, `drained` or `unresolved`.
    pub state: String,
    pub last_probe_error: Option<String>,
    /// Lookup-table slots and their share of the table.
    pub slots: u64,
    pub share: f64,
    pub packets: u64,
    pub bytes: u64,
    pub flows: u64,
}

/// `maglevd drain`: withdraw every VIP from the network without stopping (maintenance), or end
/// that with `--undo`. Needs `[announce]` in the daemon's configuration.
#[derive(Debug, Clone, clap::Args)]
pub struct DrainArgs {
    /// The daemon's configuration file: drain reaches the daemon at its daemon.metrics address.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// The daemon's HTTP listener (default: daemon.metrics of --config, else 127.0.0.1:9100).
    #[arg(long, value_name = "ADDR:PORT", conflicts_with = "config")]
    pub address: Option<SocketAddr>,
    /// End the drain: VIPs are announced again once ready.
    #[arg(long)]
    pub undo: bool,
}

/// `maglevd drain`: 0 when the daemon took it, 1 when it could not be reached or refused, 2 for
/// bad arguments.
pub fn drain_main(a: &DrainArgs) -> std::process::ExitCode {
    use std::process::ExitCode;
    let addr = match daemon_address(a.address, a.config.as_deref()) {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let path = if a.undo { "/undrain" } else { "/drain" };
    match request(addr, "POST", path, Duration::from_secs(5)) {
        Ok(body) => {
            print!("{body}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `GET /status/flows`: the tracked flows (at most the limit asked).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowList {
    pub flows: Vec<FlowRow>,
    /// Workers asked, and those that answered in time.
    pub workers: usize,
    pub answered: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowRow {
    /// `TCP`, `UDP`, or the protocol number.
    pub protocol: String,
    pub client: String,
    pub vip: String,
    /// The backend's label, or `-` when the backend is no longer configured (the next packet of
    /// the flow re-chooses it).
    pub backend: String,
    pub service: String,
    /// `established`, `closing` (FIN or RST seen) or `-` (not TCP).
    pub state: String,
    pub idle_secs: f64,
    pub expires_secs: f64,
    pub worker: usize,
}

/// Why `status` could not read the daemon.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(
        "no maglevd answers on {addr}: {source} (is it running, and is daemon.metrics this address? give -c CONFIG or --address)"
    )]
    Connect { addr: SocketAddr, source: std::io::Error },
    #[error("reading from maglevd on {addr}: {source}")]
    Io { addr: SocketAddr, source: std::io::Error },
    #[error("maglevd on {addr} answered {status}: {body}")]
    Refused { addr: SocketAddr, status: String, body: String },
    #[error("maglevd on {addr} sent what status cannot read ({what}); is it the same version as this maglevd?")]
    Bad { addr: SocketAddr, what: String },
}

/// `GET path` from the daemon at `addr` (HTTP/1.0, bounded by `timeout` per step): the body of
/// a 200 answer.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<String, StatusError> {
    request(addr, "GET", path, timeout)
}

/// `METHOD path` to the daemon at `addr`, as [`get`].
pub fn request(addr: SocketAddr, method: &str, path: &str, timeout: Duration) -> Result<String, StatusError> {
    let io = |source| StatusError::Io { addr, source };
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|source| StatusError::Connect { addr, source })?;
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    s.write_all(format!("{method} {path} HTTP/1.0\r\nHost: maglevd\r\nContent-Length: 0\r\n\r\n").as_bytes())
        .map_err(io)?;
    let mut raw = Vec::new();
    s.take(64 << 20).read_to_end(&mut raw).map_err(io)?;
    let text = String::from_utf8_lossy(&raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Err(StatusError::Bad { addr, what: "no HTTP header".into() });
    };
    let status = head.lines().next().unwrap_or("").split_once(' ').map_or("", |x| x.1).to_string();
    if !status.starts_with("200") {
        return Err(StatusError::Refused { addr, status, body: body.trim().to_string() });
    }
    Ok(body.to_string())
}

/// The daemon's [`Status`].
pub fn fetch(addr: SocketAddr, timeout: Duration) -> Result<Status, StatusError> {
    let body = get(addr, "/status", timeout)?;
    serde_json::from_str(&body).map_err(|e| StatusError::Bad { addr, what: e.to_string() })
}

/// The daemon's tracked flows (`query` is the URL query, e.g. `limit=100&service=10.0.0.1:80/tcp`).
pub fn fetch_flows(addr: SocketAddr, query: &str, timeout: Duration) -> Result<FlowList, StatusError> {
    let body = get(addr, &format!("/status/flows?{query}"), timeout)?;
    serde_json::from_str(&body).map_err(|e| StatusError::Bad { addr, what: e.to_string() })
}

/// Per-second rates between two readings `secs` apart (`None` if the counter went backwards:
/// a restart or a backend removed and added again).
fn rate(new: u64, old: u64, secs: f64) -> Option<f64> {
    (new >= old && secs > 0.0).then(|| (new - old) as f64 / secs)
}

/// A count with a k/M/G suffix.
fn human(v: f64) -> String {
    match v {
        v if v >= 1e9 => format!("{:.1}G", v / 1e9),
        v if v >= 1e6 => format!("{:.1}M", v / 1e6),
        v if v >= 1e4 => format!("{:.1}k", v / 1e3),
        v => format!("{v:.0}"),
    }
}

/// Per-second rates of `cur` against an earlier reading `secs` before, by worker and by
/// (service, backend): (packets, bits) per second.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Rates {
    pub secs: f64,
    /// Per worker: (RX frames/s, RX bits/s, TX frames/s, TX bits/s).
    pub workers: Vec<Option<(f64, f64, f64, f64)>>,
    /// Per service, per backend: (packets/s, bits/s).
    pub backends: Vec<Vec<Option<(f64, f64)>>>,
}

pub fn rates(old: &Status, cur: &Status, secs: f64) -> Rates {
    let workers = cur
        .workers
        .iter()
        .map(|w| {
            let o = old.workers.iter().find(|o| o.index == w.index)?;
            Some((
                rate(w.rx_frames, o.rx_frames, secs)?,
                rate(w.rx_bytes, o.rx_bytes, secs)? * 8.0,
                rate(w.tx_frames, o.tx_frames, secs)?,
                rate(w.tx_bytes, o.tx_bytes, secs)? * 8.0,
            ))
        })
        .collect();
    let backends = cur
        .services
        .iter()
        .map(|s| {
            let os = old.services.iter().find(|o| o.name == s.name);
            s.backends
                .iter()
                .map(|b| {
                    let o = os?.backends.iter().find(|o| o.backend == b.backend)?;
                    Some((rate(b.packets, o.packets, secs)?, rate(b.bytes, o.bytes, secs)? * 8.0))
                })
                .collect()
        })
        .collect();
    Rates { secs, workers, backends }
}

/// The text report (with rates when given).
pub fn render(s: &Status, r: Option<&Rates>, now_unix: u64) -> String {
    let mut o = String::new();
    let ago = |t: u64| match now_unix.checked_sub(t) {
        Some(d) => format!("{d}s ago"),
        None => "just now".into(),
    };
    let _ = writeln!(
        o,
        "maglevd {} (pid {}), up {}s; config {} applied {}, generation {}",
        s.version,
        s.pid,
        s.uptime_secs,
        s.config,
        ago(s.config_applied_unix),
        s.generation
    );
    match &s.last_reload_error {
        Some(e) => {
            let _ = writeln!(o, "last refused reload ({}, {} in all): {}", ago(e.unix), s.reload_failures, e.error);
        }
        None => o.push_str("no reload refused\n"),
    }
    let _ = writeln!(
        o,
        "live: {}; ready: {}",
        s.live_problem.as_deref().unwrap_or("yes"),
        s.ready_problem.as_deref().unwrap_or("yes")
    );
    if let Some(a) = &s.announce {
        let routes = match (a.table, &a.device) {
            (Some(t), Some(d)) => format!("routes in table {t} via {d}"),
            _ => "no routes (announce.table unset)".into(),
        };
        let _ = writeln!(o, "\nannounce: {routes}{}", a.hold.as_deref().map(|h| format!("; {h}")).unwrap_or_default());
        if let Some(e) = &a.error {
            let _ = writeln!(o, "  ERROR: {e}");
        }
        for v in &a.vips {
            let _ = writeln!(
                o,
                "  {:<16} {:<10} since {:<12} {}",
                v.vip.to_string(),
                if v.announced { "announced" } else { "withdrawn" },
                ago(v.since_unix),
                v.reason
            );
        }
    }
    for (si, svc) in s.services.iter().enumerate() {
        let _ = writeln!(
            o,
            "\nservice {} {} ({}){}",
            svc.name,
            svc.endpoint,
            svc.algorithm,
            if svc.all_down {
                format!(" EVERY BACKEND DOWN: when_all_down = {}", svc.when_all_down)
            } else {
                String::new()
            }
        );
        let _ = writeln!(
            o,
            "  {:<21} {:<10} {:<17} {:>6} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "backend", "state", "mac", "weight", "share", "pkts/s", "bits/s", "packets", "bytes", "flows"
        );
        for (bi, b) in svc.backends.iter().enumerate() {
            let rate = r.and_then(|r| *r.backends.get(si)?.get(bi)?);
            let (pps, bps) = rate.map_or(("-".to_string(), "-".to_string()), |(p, b)| (human(p), human(b)));
            let _ = writeln!(
                o,
                "  {:<21} {:<10} {:<17} {:>6} {:>5.1}% {:>9} {:>9} {:>9} {:>9} {:>9}",
                b.backend,
                b.state,
                b.mac.as_deref().unwrap_or("-"),
                b.weight,
                b.share * 100.0,
                pps,
                bps,
                human(b.packets as f64),
                human(b.bytes as f64),
                human(b.flows as f64)
            );
            if let Some(e) = b.last_probe_error.as_ref().filter(|_| b.state == "down") {
                let _ = writeln!(o, "    last probe error: {e}");
            }
        }
    }
    let _ = writeln!(
        o,
        "\n  {:<7} {:>6} {:>9} {:>9} {:>9} {:>9} {:>10} {:>9} {:>17}",
        "worker", "alive", "rx pps", "rx bit/s", "tx pps", "tx bit/s", "ring drops", "drops", "flows/capacity"
    );
    for (i, w) in s.workers.iter().enumerate() {
        let rate = r.and_then(|r| *r.workers.get(i)?);
        let f = |v: Option<f64>| v.map_or("-".to_string(), human);
        let _ = writeln!(
            o,
            "  {:<7} {:>6} {:>9} {:>9} {:>9} {:>9} {:>10} {:>9} {:>17}",
            w.index,
            if w.alive { "yes" } else { "NO" },
            f(rate.map(|r| r.0)),
            f(rate.map(|r| r.1)),
            f(rate.map(|r| r.2)),
            f(rate.map(|r| r.3)),
            w.ring_drops,
            w.drops,
            format!("{}/{}", w.flows, w.flow_capacity)
        );
    }
    if r.is_none() {
        o.push_str("(totals since start; rates need two readings: --interval SECS)\n");
    }
    o
}

/// The flow listing as text, like `ipvsadm -Lnc`.
pub fn render_flows(l: &FlowList) -> String {
    let mut o = format!(
        "{:<5} {:<12} {:>8} {:<21} {:<21} {:<21} {:>6}\n",
        "pro", "state", "expire", "client", "virtual", "backend", "worker"
    );
    for f in &l.flows {
        let _ = writeln!(
            o,
            "{:<5} {:<12} {:>8} {:<21} {:<21} {:<21} {:>6}",
            f.protocol,
            f.state,
            format!("{:.0}s", f.expires_secs),
            f.client,
            f.vip,
            f.backend,
            f.worker
        );
    }
    let _ = writeln!(o, "{} flow(s); {} of {} workers answered", l.flows.len(), l.answered.len(), l.workers);
    o
}

/// `maglevd status` arguments.
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct StatusArgs {
    /// The daemon's configuration file: status reads the daemon at its daemon.metrics address.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// The daemon's HTTP listener (default: daemon.metrics of --config, else 127.0.0.1:9100).
    #[arg(long, value_name = "ADDR:PORT", conflicts_with = "config")]
    pub address: Option<SocketAddr>,
    /// Print JSON (the daemon's document, with the rates) instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Refresh in place every --interval seconds until interrupted.
    #[arg(long, conflicts_with = "flows")]
    pub watch: bool,
    /// Seconds between the two readings the rates come from (0: totals only).
    #[arg(long, default_value_t = 1.0)]
    pub interval: f64,
    /// List the tracked flows instead (like ipvsadm -Lnc; served to local clients only).
    #[arg(long)]
    pub flows: bool,
    /// With --flows: only this service (its name, VIP, VIP:PORT or VIP:PORT/PROTO).
    #[arg(long, requires = "flows")]
    pub service: Option<String>,
    /// With --flows: at most this many flows.
    #[arg(long, default_value_t = 1000, requires = "flows")]
    pub limit: usize,
}

/// How long one request to the daemon may take (a flow listing waits up to 0.5 s for workers).
const TIMEOUT: Duration = Duration::from_secs(5);

/// `maglevd status`: exit 0, 1 when the daemon cannot be read, 2 for bad arguments or config.
pub fn main(a: &StatusArgs) -> std::process::ExitCode {
    use std::process::ExitCode;
    let addr = match address(a) {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if !(a.interval.is_finite() && (0.0..=3600.0).contains(&a.interval)) || (a.watch && a.interval <= 0.0) {
        eprintln!("error: --interval must be between 0 and 3600 seconds (above 0 with --watch)");
        return ExitCode::from(2);
    }
    match run(a, addr) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Where the daemon listens: --address, or the configuration's daemon.metrics (an unspecified
/// address such as 0.0.0.0 is reached on loopback), or the default.
fn address(a: &StatusArgs) -> Result<SocketAddr, String> {
    daemon_address(a.address, a.config.as_deref())
}

/// The daemon's HTTP listener: `address`, else `daemon.metrics` of `config`, else the default;
/// an unspecified IP becomes loopback.
pub fn daemon_address(address: Option<SocketAddr>, config: Option<&std::path::Path>) -> Result<SocketAddr, String> {
    if let Some(addr) = address {
        return Ok(addr);
    }
    let mut addr = match config {
        None => crate::config::DEFAULT_METRICS.parse().map_err(|e| format!("{e}"))?,
        Some(path) => match crate::config::load(path).map_err(|e| e.to_string())?.daemon.metrics {
            Some(addr) => addr,
            None => {
                return Err(format!(
                    "{}: daemon.metrics is off (\"\"): maglevd reaches the daemon through that listener",
                    path.display()
                ));
            }
        },
    };
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    Ok(addr)
}

fn run(a: &StatusArgs, addr: SocketAddr) -> Result<(), StatusError> {
    let mut out = std::io::stdout().lock();
    if a.flows {
        let mut q = format!("limit={}", a.limit);
        if let Some(s) = &a.service {
            q.push_str("&service=");
            q.push_str(&s.replace('/', "%2F"));
        }
        let list = fetch_flows(addr, &q, TIMEOUT)?;
        let text =
            if a.json { serde_json::to_string_pretty(&list).unwrap_or_default() + "\n" } else { render_flows(&list) };
        let _ = out.write_all(text.as_bytes());
        return Ok(());
    }
    let pause = Duration::from_secs_f64(a.interval);
    let mut prev = fetch(addr, TIMEOUT)?;
    let mut prev_at = std::time::Instant::now();
    loop {
        let (cur, r) = if pause.is_zero() {
            (prev.clone(), None)
        } else {
            std::thread::sleep(pause);
            let cur = fetch(addr, TIMEOUT)?;
            let at = std::time::Instant::now();
            let r = rates(&prev, &cur, at.duration_since(prev_at).as_secs_f64());
            prev_at = at;
            (cur, Some(r))
        };
        let text = if a.json {
            let doc = serde_json::json!({ "status": &cur, "rates": &r });
            serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n"
        } else {
            render(&cur, r.as_ref(), crate::daemon::unix_now())
        };
        if a.watch && !a.json {
            // Home and clear, then the report: refreshed in place.
            let _ = out.write_all(b"\x1b[H\x1b[2J");
        }
        if out.write_all(text.as_bytes()).and_then(|()| out.flush()).is_err() || !a.watch {
            return Ok(());
        }
        prev = cur;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(packets: u64, rx: u64) -> Status {
        Status {
            version: "0.1.0".into(),
            pid: 1,
            uptime_secs: 10,
            config: "/etc/maglevd.toml".into(),
            config_applied_unix: 100,
            generation: 3,
            reload_failures: 1,
            last_reload_error: Some(ReloadError { unix: 90, error: "x.toml:3:1: bad".into() }),
            live_problem: None,
            ready_problem: Some("no usable backend: web".into()),
            workers: vec![WorkerStatus {
                index: 0,
                alive: true,
                rx_frames: rx,
                rx_bytes: rx * 100,
                tx_frames: rx,
                tx_bytes: rx * 100,
                ring_drops: 0,
                drops: 2,
                flows: 5,
                flow_capacity: 1024,
            }],
            announce: None,
            services: vec![ServiceStatus {
                name: "web".into(),
                endpoint: "10.201.0.1:80/tcp".into(),
                algorithm: "maglev".into(),
                all_down: false,
                when_all_down: "drop".into(),
                backends: vec![BackendStatus {
                    backend: "10.0.0.1".into(),
                    mac: Some("02:00:00:00:00:01".into()),
                    weight: 1,
                    state: "down".into(),
                    last_probe_error: Some("connection refused".into()),
                    slots: 65537,
                    share: 1.0,
                    packets,
                    bytes: packets * 100,
                    flows: 7,
                }],
            }],
        }
    }

    #[test]
    fn rates_come_from_two_readings_and_the_report_shows_them() {
        let (a, b) = (status(1000, 2000), status(3000, 4000));
        let r = rates(&a, &b, 2.0);
        assert_eq!(r.backends, vec![vec![Some((1000.0, 800_000.0))]]);
        assert_eq!(r.workers, vec![Some((1000.0, 800_000.0, 1000.0, 800_000.0))]);
        let text = render(&b, Some(&r), 110);
        assert!(text.contains("applied 10s ago, generation 3"), "{text}");
        assert!(text.contains("last refused reload (20s ago, 1 in all): x.toml:3:1: bad"), "{text}");
        assert!(text.contains("ready: no usable backend: web"), "{text}");
        assert!(text.contains("10.0.0.1") && text.contains("down") && text.contains("800.0k"), "{text}");
        assert!(text.contains("last probe error: connection refused"), "{text}");
        // A counter that went backwards (restart) has no rate.
        assert_eq!(rates(&b, &a, 1.0).backends, vec![vec![None]]);
        assert!(render(&b, None, 110).contains("rates need two readings"));
        // JSON round trip: what the daemon sends is what status reads.
        let json = serde_json::to_string(&b).unwrap();
        assert_eq!(serde_json::from_str::<Status>(&json).unwrap(), b);
    }

    #[test]
    fn a_closed_port_is_a_clear_error() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let e = fetch(addr, Duration::from_secs(1)).unwrap_err().to_string();
        assert!(e.starts_with(&format!("no maglevd answers on {addr}")), "{e}");
    }
}
