//! Operator reports: the `check` summary, per-backend slot shares, the disruption preview between
//! two configurations (`table --compare`), the slot dump (`table --dump`) and the backend a
//! given client reaches (`lookup`). Pure functions from validated configs to text; every table
//! is built as if all backends were reachable (weights decide, as on a healthy frontend).

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use crate::config::{self, Algorithm, Config, Protocol, Service};
use crate::dataplane::flow_hash;
use crate::table::{BuildError, ServiceTable};

/// A backend as the reports name it: its identity in its service. In a Maglev service that is
/// its IP (`10.0.2.1`); in an ipvs-mh service its IP and destination port (`10.0.2.1:8080`,
/// `[2001:db8::1]:80`), since IPVS may have one IP on several ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BackendName {
    pub ip: IpAddr,
    /// The destination port, for ipvs-mh services only.
    pub port: Option<u16>,
}

impl BackendName {
    /// The name of `backend`, a backend of `service`.
    pub fn of(service: &Service, backend: &config::Backend) -> BackendName {
        let port = match service.algorithm {
            Algorithm::Maglev => None,
            Algorithm::IpvsMh { .. } => Some(backend.port),
        };
        BackendName { ip: backend.ip, port }
    }
}

impl std::fmt::Display for BackendName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.port {
            // Padding applies to the whole name (`{:<15}`).
            None => f.pad(&self.ip.to_string()),
            Some(port) => f.pad(&SocketAddr::new(self.ip, port).to_string()),
        }
    }
}

/// A service's table as built from the configuration alone, with its backends' names.
#[derive(Debug)]
pub struct ServiceTables<'a> {
    pub service: &'a Service,
    pub table: ServiceTable,
    /// Per backend index.
    pub names: Vec<BackendName>,
}

/// Build every service's table from the configuration.
pub fn tables(cfg: &Config) -> Result<Vec<ServiceTables<'_>>, BuildError> {
    cfg.services
        .iter()
        .map(|s| {
            let table = ServiceTable::build(s, |_| true)?;
            Ok(ServiceTables { service: s, table, names: s.backends.iter().map(|b| BackendName::of(s, b)).collect() })
        })
        .collect()
}

fn slot_backend(t: &ServiceTables<'_>, slot: usize) -> Option<BackendName> {
    t.table.slots().get(slot).and_then(|&i| t.names.get(i as usize).copied())
}

/// The `check` summary.
pub fn summary(cfg: &Config) -> String {
    let mut out = String::new();
    let mode = if cfg.one_arm() { " (one-arm)" } else { "" };
    let _ = writeln!(out, "interfaces: ingress {} → egress {}{mode}", cfg.ingress, cfg.egress);
    for s in &cfg.services {
        let total: u64 = s.backends.iter().map(|b| b.weight as u64).sum();
        let how = match s.algorithm {
            Algorithm::Maglev => format!("maglev flow-key {}", s.flow_key),
            mh => format!("{mh}, backends in kernel list order"),
        };
        let _ = writeln!(
            out,
            "service {}: {} {how} table-size {} backends {}",
            s.name,
            s.endpoint(),
            s.table_size,
            s.backends.len()
        );
        for b in &s.backends {
            let share = if total == 0 { 0.0 } else { 100.0 * b.weight as f64 / total as f64 };
            let mac = b.mac.map_or("resolved by ARP".to_string(), |m| format!("static mac {m}"));
            let extra = match s.algorithm {
                Algorithm::IpvsMh { .. } => format!(" port {} last_weight {}", b.port, b.last_weight),
                Algorithm::Maglev => String::new(),
            };
            let _ = writeln!(
                out,
                "  backend {:<15} weight {:>5}{extra} ({share:5.1}% of new flows), {mac}",
                b.ip.to_string(),
                b.weight
            );
        }
    }
    for w in config::warnings(cfg) {
        let _ = writeln!(out, "warning: {w}");
    }
    out
}

/// Per-backend slot counts and shares of every service.
pub fn shares(tables: &[ServiceTables<'_>]) -> String {
    let mut out = String::new();
    for t in tables {
        let s = t.service;
        let _ = writeln!(out, "service {} ({}), table size {}", s.name, s.endpoint(), t.table.size());
        if t.table.is_empty() {
            let _ = writeln!(out, "  no backend has a positive weight: every packet is dropped (no_backend)");
            continue;
        }
        // ipvs-mh builds from last_weight; Maglev from weight.
        let table_weight = |b: &config::Backend| match s.algorithm {
            Algorithm::Maglev => b.weight,
            Algorithm::IpvsMh { .. } => b.last_weight,
        };
        let total: u64 = s.backends.iter().map(|b| table_weight(b) as u64).sum();
        for (b, slots) in s.backends.iter().zip(t.table.shares(s.backends.len())) {
            let want = 100.0 * table_weight(b) as f64 / total.max(1) as f64;
            let got = 100.0 * slots as f64 / t.table.size() as f64;
            let _ = writeln!(
                out,
                "  {:<15} weight {:>5}  slots {:>8}  share {got:6.2}%  (weight share {want:6.2}%)",
                BackendName::of(s, b),
                table_weight(b),
                slots
            );
        }
    }
    out
}

/// The disruption preview: for each service present in both configurations (matched by VIP,
/// protocol and port), how many slots would map to another backend.
pub fn compare(new: &[ServiceTables<'_>], old: &[ServiceTables<'_>]) -> String {
    let mut out = String::new();
    for n in new {
        let endpoint = n.service.endpoint();
        let Some(o) = old.iter().find(|o| o.service.endpoint() == endpoint) else {
            let _ = writeln!(out, "service {} ({endpoint}): new; no flow moves", n.service.name);
            continue;
        };
        if o.table.size() != n.table.size() {
            let _ = writeln!(
                out,
                "service {} ({endpoint}): table size changes {} → {}: every flow may move",
                n.service.name,
                o.table.size(),
                n.table.size()
            );
            continue;
        }
        let size = n.table.size() as u64;
        // Slots of backends that lose slots (removed or drained) must move; the rest is churn.
        let (mut forced, mut churn) = (0u64, 0u64);
        for slot in 0..size as usize {
            let (before, after) = (slot_backend(o, slot), slot_backend(n, slot));
            if before == after {
                continue;
            }
            let still_serving = before.is_some_and(|name| {
                n.service.backends.iter().any(|b| BackendName::of(n.service, b) == name && b.weight > 0)
            });
            if still_serving { churn += 1 } else { forced += 1 }
        }
        let moved = forced + churn;
        let _ = writeln!(
            out,
            "service {} ({endpoint}): {moved} of {size} slots move ({:.3}% of new flows); {forced} from backends removed or drained, {churn} between backends that stay ({:.3}%)",
            n.service.name,
            100.0 * moved as f64 / size as f64,
            100.0 * churn as f64 / size as f64,
        );
    }
    for o in old {
        if !new.iter().any(|n| n.service.endpoint() == o.service.endpoint()) {
            let _ = writeln!(out, "service {} ({}): removed; all its flows stop", o.service.name, o.service.endpoint());
        }
    }
    out
}

/// `table --dump`: per service a `# service …` header, then one `SLOT BACKEND` line per slot:
/// the backend's [`BackendName`] (`IP`, or `IP:port` in an ipvs-mh service), `-` for none.
pub fn dump(tables: &[ServiceTables<'_>], out: &mut impl std::io::Write) -> std::io::Result<()> {
    for t in tables {
        let s = t.service;
        let algorithm = match s.algorithm {
            Algorithm::Maglev => "maglev".to_string(),
            mh => mh.to_string(),
        };
        writeln!(out, "# service {} {} {algorithm} size {}", s.name, s.endpoint(), t.table.size())?;
        for slot in 0..t.table.size() as usize {
            match slot_backend(t, slot) {
                Some(name) => writeln!(out, "{slot} {name}")?,
                None => writeln!(out, "{slot} -")?,
            }
        }
    }
    Ok(())
}

/// Why `lookup` found no answer to give.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("no service matches `{0}` (give NAME, VIP:PORT or VIP:PORT/PROTO; see `maglevd check`)")]
    NoService(String),
    #[error("`{0}` matches several services ({1}); add /tcp or /udp")]
    Ambiguous(String, String),
    #[error("`{0}` is not NAME, VIP:PORT or VIP:PORT/PROTO")]
    BadSelector(String),
    #[error("client {client} and service {service} are of different address families")]
    Family { client: IpAddr, service: String },
}

/// The service a selector names: a service name, or the destination `VIP:PORT[/PROTO]` of a
/// packet (which may fall into an "all ports" service). Returns the service and the packet's
/// destination port.
pub fn find_service<'a>(cfg: &'a Config, selector: &str) -> Result<(&'a Service, u16), LookupError> {
    if let Some(s) = cfg.services.iter().find(|s| s.name == selector) {
        return s
            .port
            .map(|p| (s, p))
            .ok_or_else(|| LookupError::BadSelector(format!("{selector} serves all ports: give VIP:PORT")));
    }
    let (addr, proto) = match selector.rsplit_once('/') {
        Some((a, "tcp")) => (a, Some(Protocol::Tcp)),
        Some((a, "udp")) => (a, Some(Protocol::Udp)),
        Some(_) => return Err(LookupError::BadSelector(selector.to_string())),
        None => (selector, None),
    };
    let dst: SocketAddr = addr.parse().map_err(|_| LookupError::BadSelector(selector.to_string()))?;
    let matches = |s: &&Service| {
        s.vip == dst.ip() && proto.is_none_or(|p| s.protocol == p) && s.port.is_none_or(|p| p == dst.port())
    };
    let found: Vec<&Service> = cfg.services.iter().filter(matches).collect();
    match found.as_slice() {
        [] => Err(LookupError::NoService(selector.to_string())),
        [s] => Ok((s, dst.port())),
        many => {
            // An exact port beats "all ports" (the forwarder's rule); otherwise it is ambiguous.
            let exact: Vec<&&Service> = many.iter().filter(|s| s.port.is_some()).collect();
            match exact.as_slice() {
                [s] if proto.is_some() => Ok((s, dst.port())),
                _ => Err(LookupError::Ambiguous(
                    selector.to_string(),
                    many.iter().map(|s| s.endpoint()).collect::<Vec<_>>().join(", "),
                )),
            }
        }
    }
}

/// The backend a new flow from `client` to the service reaches, on a frontend where every backend
/// with a positive weight is up. `None` = no backend (the packet would be dropped).
pub fn lookup(t: &ServiceTables<'_>, dport: u16, client: SocketAddr) -> Result<Option<BackendName>, LookupError> {
    let s = t.service;
    if client.is_ipv4() != s.vip.is_ipv4() {
        return Err(LookupError::Family { client: client.ip(), service: s.endpoint() });
    }
    let index = match (&t.table, client.ip(), s.vip) {
        (ServiceTable::Maglev(table), IpAddr::V4(src), IpAddr::V4(vip)) => {
            let h = flow_hash(s.flow_key, src.into(), vip.into(), s.protocol.number(), client.port(), dport);
            table.lookup(h).map(|i| i as usize)
        }
        (ServiceTable::IpvsMh(m), ip, _) => m.table.lookup(&m.dests, ip, client.port(), m.flags, true),
        _ => return Err(LookupError::Family { client: client.ip(), service: s.endpoint() }),
    };
    Ok(index.and_then(|i| t.names.get(i).copied()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn cfg(backends: &[(&str, u32)]) -> Config {
        let mut t = String::from(
            "[interfaces]\ningress = \"net1\"\negress = \"net2\"\n[[service]]\nname = \"web\"\nvip = \"10.201.0.1\"\nprotocol = \"tcp\"\nport = 80\n",
        );
        for (ip, w) in backends {
            t.push_str(&format!("[[service.backend]]\nip = \"{ip}\"\nweight = {w}\n"));
        }
        config::parse(&t, Path::new("t.toml")).unwrap()
    }

    #[test]
    fn summary_lists_services_and_shares() {
        let c = cfg(&[("10.0.0.1", 1), ("10.0.0.2", 3)]);
        let s = summary(&c);
        assert!(
            s.contains("service web: 10.201.0.1:80/tcp maglev flow-key 5-tuple table-size 65537 backends 2"),
            "{s}"
        );
        assert!(s.contains("10.0.0.2        weight     3 ( 75.0% of new flows), resolved by ARP"), "{s}");
    }

    #[test]
    fn shares_match_weights() {
        let c = cfg(&[("10.0.0.1", 1), ("10.0.0.2", 1), ("10.0.0.3", 0)]);
        let t = tables(&c).unwrap();
        let s = shares(&t);
        assert!(s.contains("10.0.0.3        weight     0  slots        0  share   0.00%"), "{s}");
        assert!(s.contains("slots    32768") && s.contains("slots    32769"), "{s}");
    }

    #[test]
    fn compare_counts_forced_and_churn() {
        let old = cfg(&[("10.0.0.1", 1), ("10.0.0.2", 1), ("10.0.0.3", 1)]);
        let same = cfg(&[("10.0.0.3", 1), ("10.0.0.1", 1), ("10.0.0.2", 1)]);
        let drained = cfg(&[("10.0.0.1", 1), ("10.0.0.2", 1), ("10.0.0.3", 0)]);
        let (to, ts, td) = (tables(&old).unwrap(), tables(&same).unwrap(), tables(&drained).unwrap());
        let r = compare(&ts, &to);
        assert!(r.contains(": 0 of 65537 slots move"), "{r}");
        let r = compare(&td, &to);
        let owned = to[0].table.shares(3)[2];
        assert!(r.contains(&format!("{owned} from backends removed or drained")), "{r}");
    }
}
