//! Operator reports: the `check` summary, per-backend slot shares, and the disruption preview
//! between two configurations (`table --compare`). Pure functions from validated configs to text.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use crate::config::{self, Config, Service};
use crate::maglev::{self, Table, TableError};

/// A service's table as built from the configuration alone (every backend with weight > 0 is
/// assumed up and resolved), with its backend IPs.
#[derive(Debug)]
pub struct ServiceTable<'a> {
    pub service: &'a Service,
    pub table: Table,
    pub ips: Vec<Ipv4Addr>,
}

/// Build every service's table from the configuration.
pub fn tables(cfg: &Config) -> Result<Vec<ServiceTable<'_>>, TableError> {
    cfg.services
        .iter()
        .map(|s| {
            let table = maglev::build(&s.table_backends(), s.table_size)?;
            Ok(ServiceTable { service: s, table, ips: s.backends.iter().map(|b| b.ip).collect() })
        })
        .collect()
}

/// The `check` summary.
pub fn summary(cfg: &Config) -> String {
    let mut out = String::new();
    let mode = if cfg.one_arm() { " (one-arm)" } else { "" };
    let _ = writeln!(out, "interfaces: ingress {} → egress {}{mode}", cfg.ingress, cfg.egress);
    for s in &cfg.services {
        let total: u64 = s.backends.iter().map(|b| b.weight as u64).sum();
        let _ = writeln!(
            out,
            "service {}: {} flow-key {} table-size {} backends {}",
            s.name,
            s.endpoint(),
            s.flow_key,
            s.table_size,
            s.backends.len()
        );
        for b in &s.backends {
            let share = if total == 0 { 0.0 } else { 100.0 * b.weight as f64 / total as f64 };
            let mac = b.mac.map_or("resolved by ARP".to_string(), |m| format!("static mac {m}"));
            let _ = writeln!(out, "  backend {:<15} weight {:>5} ({share:5.1}% of new flows), {mac}", b.ip, b.weight);
        }
    }
    for w in config::warnings(cfg) {
        let _ = writeln!(out, "warning: {w}");
    }
    out
}

/// Per-backend slot counts and shares of every service.
pub fn shares(tables: &[ServiceTable<'_>]) -> String {
    let mut out = String::new();
    for t in tables {
        let s = t.service;
        let _ = writeln!(out, "service {} ({}), table size {}", s.name, s.endpoint(), t.table.size());
        if t.table.is_empty() {
            let _ = writeln!(out, "  no backend has a positive weight: every packet is dropped (no_backend)");
            continue;
        }
        let total: u64 = s.backends.iter().map(|b| b.weight as u64).sum();
        for (b, slots) in s.backends.iter().zip(t.table.shares(s.backends.len())) {
            let want = 100.0 * b.weight as f64 / total as f64;
            let got = 100.0 * slots as f64 / t.table.size() as f64;
            let _ = writeln!(
                out,
                "  {:<15} weight {:>5}  slots {:>8}  share {got:6.2}%  (weight share {want:6.2}%)",
                b.ip, b.weight, slots
            );
        }
    }
    out
}

/// The disruption preview: for each service present in both configurations (matched by VIP,
/// protocol and port), how many slots would map to another backend.
pub fn compare(new: &[ServiceTable<'_>], old: &[ServiceTable<'_>]) -> String {
    let mut out = String::new();
    for n in new {
        let endpoint = n.service.endpoint();
        let Some(o) = old.iter().find(|o| o.service.endpoint() == endpoint) else {
            let _ = writeln!(out, "service {} ({endpoint}): new; no flow moves", n.service.name);
            continue;
        };
        let Some(moved) = maglev::moved_slots(&o.table, &o.ips, &n.table, &n.ips) else {
            let _ = writeln!(
                out,
                "service {} ({endpoint}): table size changes {} → {}: every flow may move",
                n.service.name,
                o.table.size(),
                n.table.size()
            );
            continue;
        };
        let size = n.table.size() as u64;
        // Slots of backends that lose slots (removed or drained) must move; the rest is churn.
        let mut forced = 0u64;
        let mut churn = 0u64;
        for slot in 0..size as usize {
            let before = o.table.slots().get(slot).and_then(|&i| o.ips.get(i as usize));
            let after = n.table.slots().get(slot).and_then(|&i| n.ips.get(i as usize));
            if before == after {
                continue;
            }
            let still_serving = before.is_some_and(|ip| n.service.backends.iter().any(|b| b.ip == *ip && b.weight > 0));
            if still_serving { churn += 1 } else { forced += 1 }
        }
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
        assert!(s.contains("service web: 10.201.0.1:80/tcp flow-key 5-tuple table-size 65537 backends 2"), "{s}");
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
