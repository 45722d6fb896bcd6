//! The daemon's side of `maglevd status`: the [`Status`] and [`FlowList`] documents served on
//! `/status` and `/status/flows` (see [`crate::status`] for why there and how they are read).

use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::Shared;
use super::flows::{FlowQuery, MAX_LIMIT};
use super::http::{backend_label, backend_views};
use crate::config::{Protocol, WhenAllDown};
use crate::status::{BackendStatus, FlowList, FlowRow, ReloadError, ServiceStatus, Status, WorkerStatus};

/// How long a flow listing waits for the workers.
const FLOWS_WAIT: Duration = Duration::from_millis(500);
/// Flows listed when the query names no limit.
const DEFAULT_LIMIT: usize = 1000;

/// The daemon's state now.
pub fn collect(shared: &Shared) -> Status {
    let now = Instant::now();
    let snap = shared.snapshot.load();
    let health = shared.health.load();
    let stalled = shared.stalled_workers(now);
    let workers = (0..shared.counters.workers())
        .filter_map(|i| {
            let c = shared.counters.worker(i)?;
            let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
            Some(WorkerStatus {
                index: i,
                alive: !stalled.iter().any(|(w, _)| *w == i),
                rx_frames: get(&c.io.rx_frames),
                rx_bytes: get(&c.io.rx_bytes),
                tx_frames: get(&c.io.tx_frames),
                tx_bytes: get(&c.io.tx_bytes),
                ring_drops: get(&c.io.rx_ring_drops),
                drops: c.drops.iter().map(get).sum(),
                flows: get(&c.flows.entries),
                flow_capacity: get(&c.flows.capacity),
            })
        })
        .collect();
    let services = snap
        .services()
        .iter()
        .map(|s| {
            let backends = backend_views(s, &health)
                .map(|v| BackendStatus {
                    mac: v.backend.mac.map(|m| m.to_string()),
                    weight: v.backend.weight,
                    state: v.backend.state_name().to_string(),
                    last_probe_error: v.checked.and_then(|h| h.last_error.clone()),
                    slots: v.slots,
                    share: v.share,
                    packets: v.traffic.packets,
                    bytes: v.traffic.bytes,
                    flows: v.traffic.flows,
                    backend: v.label,
                })
                .collect();
            ServiceStatus {
                name: s.name.clone(),
                endpoint: endpoint(s.vip, s.port, s.protocol),
                algorithm: if s.ipvs_mh() { "ipvs-mh" } else { "maglev" }.to_string(),
                all_down: s.all_down,
                when_all_down: match s.when_all_down {
                    WhenAllDown::Drop => "drop",
                    WhenAllDown::All => "all",
                }
                .to_string(),
                backends,
            }
        })
        .collect();
    Status {
        version: env!("CARGO_PKG_VERSION").to_string(),
        pid: std::process::id(),
        uptime_secs: now.saturating_duration_since(shared.started).as_secs(),
        config: shared.config_path.get().map_or_else(|| "-".to_string(), |p| p.display().to_string()),
        config_applied_unix: shared.reloads.applied_unix.load(Ordering::Relaxed),
        generation: snap.generation(),
        reload_failures: shared.reload_failures.load(Ordering::Relaxed),
        last_reload_error: shared.reloads.last_error.load_full().map(|e| ReloadError { unix: e.0, error: e.1.clone() }),
        live_problem: shared.liveness(now).err(),
        ready_problem: shared.readiness(now).err(),
        workers,
        services,
        announce: shared.announce.load_full().map(|a| (*a).clone()),
    }
}

fn endpoint(vip: Ipv4Addr, port: Option<u16>, protocol: Protocol) -> String {
    match port {
        Some(p) => format!("{vip}:{p}/{protocol}"),
        None => format!("{vip}:*/{protocol}"),
    }
}

/// A bad `/status/flows` query.
#[derive(Debug, PartialEq, Eq)]
pub struct BadQuery(pub String);

/// Parse `limit=N&service=S` (S: a service name, `VIP`, `VIP:PORT` or `VIP:PORT/PROTO`).
fn query(q: &str, shared: &Shared) -> Result<FlowQuery, BadQuery> {
    let mut out = FlowQuery { limit: DEFAULT_LIMIT, ..FlowQuery::default() };
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = v.replace("%2F", "/").replace("%2f", "/").replace("%3A", ":").replace("%3a", ":");
        match k {
            "limit" => {
                out.limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| BadQuery(format!("limit: {v:?} is not a number in 1..={MAX_LIMIT}")))?;
            }
            "service" => {
                let snap = shared.snapshot.load();
                if let Some(s) = snap.services().iter().find(|s| s.name == v) {
                    (out.vip, out.port, out.protocol) = (Some(s.vip), s.port, Some(s.protocol.number()));
                    continue;
                }
                let (addr, proto) = match v.split_once('/') {
                    Some((a, p)) => (a, Some(p)),
                    None => (v.as_str(), None),
                };
                out.protocol = match proto {
                    None => None,
                    Some("tcp") => Some(Protocol::Tcp.number()),
                    Some("udp") => Some(Protocol::Udp.number()),
                    Some(p) => return Err(BadQuery(format!("service: unknown protocol {p:?} (tcp or udp)"))),
                };
                let bad = || BadQuery(format!("service: {v:?} is neither a service name nor VIP[:PORT][/tcp|udp]"));
                let (vip, port) = match addr.rsplit_once(':') {
                    Some((ip, port)) => (ip, Some(port.parse::<u16>().map_err(|_| bad())?)),
                    None => (addr, None),
                };
                out.vip = Some(vip.parse().map_err(|_| bad())?);
                out.port = port;
            }
            _ => return Err(BadQuery(format!("unknown parameter {k:?} (limit, service)"))),
        }
    }
    Ok(out)
}

/// What `/status/flows?QUERY` answers: the flows, or (HTTP status, why not).
pub fn flows(shared: &Shared, q: &str) -> Result<FlowList, (&'static str, String)> {
    let q = query(q, shared).map_err(|e| ("400 Bad Request", format!("{}\n", e.0)))?;
    let stalled = shared.stalled_workers(Instant::now());
    let (listed, answered) = shared
        .flow_dump
        .list(q, |i| !stalled.iter().any(|(w, _)| *w == i), FLOWS_WAIT)
        .map_err(|e| ("429 Too Many Requests", format!("{e}\n")))?;
    let snap = shared.snapshot.load();
    let flows = listed
        .into_iter()
        .map(|(worker, e)| {
            let (service, backend) = match snap.backend_by_id(e.backend) {
                Some((si, bi)) => {
                    let s = &snap.services()[si as usize];
                    let b = &s.backends[bi as usize];
                    (s.name.clone(), backend_label(s, b))
                }
                None => ("-".to_string(), "-".to_string()),
            };
            let k = e.key;
            FlowRow {
                protocol: match k.proto {
                    6 => "TCP".to_string(),
                    17 => "UDP".to_string(),
                    n => n.to_string(),
                },
                client: format!("{}:{}", Ipv4Addr::from(k.src), k.sport),
                vip: format!("{}:{}", Ipv4Addr::from(k.dst), k.dport),
                backend,
                service,
                state: match (k.proto, e.closing) {
                    (6, true) => "closing",
                    (6, false) => "established",
                    _ => "-",
                }
                .to_string(),
                idle_secs: e.idle.as_secs_f64(),
                expires_secs: e.expires_in.as_secs_f64(),
                worker,
            }
        })
        .collect();
    Ok(FlowList { flows, workers: shared.counters.workers(), answered })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    use super::*;
    use crate::dataplane::{Links, Snapshot};
    use crate::wire::MacAddr;

    fn shared() -> Shared {
        let text = "[interfaces]\ningress = \"in\"\negress = \"out\"\n[[service]]\nname = \"web\"\nvip = \"10.201.0.1\"\nprotocol = \"tcp\"\nport = 80\n[[service.backend]]\nip = \"10.0.0.7\"\nmac = \"02:00:00:00:00:07\"\n[[service.backend]]\nip = \"10.0.0.8\"\nweight = 0\nmac = \"02:00:00:00:00:08\"\n";
        let cfg = crate::config::parse(text, std::path::Path::new("t.toml")).unwrap();
        let links = Links { ingress_mac: MacAddr([2, 0, 0, 0, 0, 1]), egress_mac: MacAddr([2, 0, 0, 0, 0, 2]) };
        let snap = Snapshot::build(&cfg, links, &|_| None, 4).unwrap();
        Shared::new(snap, 2, Arc::new(AtomicBool::new(false)))
    }

    #[test]
    fn status_names_states_shares_and_the_reload_log() {
        let sh = shared();
        sh.reloads.refused("t.toml:1:1: broken");
        let s = collect(&sh);
        assert_eq!((s.generation, s.workers.len(), s.reload_failures), (4, 2, 0));
        assert_eq!(s.last_reload_error.as_ref().map(|e| e.error.as_str()), Some("t.toml:1:1: broken"));
        let web = &s.services[0];
        assert_eq!(
            (web.name.as_str(), web.endpoint.as_str(), web.algorithm.as_str()),
            ("web", "10.201.0.1:80/tcp", "maglev")
        );
        let states: Vec<(&str, &str, f64)> =
            web.backends.iter().map(|b| (b.backend.as_str(), b.state.as_str(), b.share)).collect();
        assert_eq!(states, vec![("10.0.0.7", "up", 1.0), ("10.0.0.8", "drained", 0.0)]);
        assert_eq!(web.backends[0].mac.as_deref(), Some("02:00:00:00:00:07"));
    }

    #[test]
    fn flow_queries_are_checked() {
        let sh = shared();
        let q = query("service=web&limit=5", &sh).unwrap();
        assert_eq!((q.vip, q.port, q.protocol, q.limit), (Some(Ipv4Addr::new(10, 201, 0, 1)), Some(80), Some(6), 5));
        let q = query("service=10.201.0.9%3A53%2Fudp", &sh).unwrap();
        assert_eq!((q.vip, q.port, q.protocol), (Some(Ipv4Addr::new(10, 201, 0, 9)), Some(53), Some(17)));
        assert_eq!(query("", &sh).unwrap().limit, DEFAULT_LIMIT);
        for bad in ["limit=0", "limit=x", "service=nope", "service=10.0.0.1/sctp", "color=red"] {
            assert!(query(bad, &sh).is_err(), "{bad}");
        }
    }
}
