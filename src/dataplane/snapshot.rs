//! The immutable forwarding state: every service, its table and its backends' MACs, plus the
//! interfaces' MACs, under one generation number. The control plane builds a new snapshot on every
//! change and publishes it whole (workers load it once per batch), so a worker never sees a table
//! from one generation with MACs from another.

use std::net::Ipv4Addr;

use crate::config::{Backend, Config, FlowKey, Protocol};
use std::sync::Arc;

use crate::table::{BuildError, ServiceTable, TableCache};
use crate::wire::MacAddr;

/// The MAC addresses of the interfaces the daemon serves (read from the interfaces at run time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Links {
    /// VIP frames arrive addressed to this MAC.
    pub ingress_mac: MacAddr,
    /// Forwarded frames leave with this source MAC.
    pub egress_mac: MacAddr,
}

/// One backend in a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendState {
    pub ip: Ipv4Addr,
    pub weight: u32,
    /// Known MAC (static or resolved); `None` keeps the backend out of the table.
    pub mac: Option<MacAddr>,
}

impl BackendState {
    /// In the table: a positive weight and a known MAC.
    pub fn usable(&self) -> bool {
        self.weight > 0 && self.mac.is_some()
    }
}

/// One service in a snapshot. Backend indices (in verdicts and table slots) index `backends`,
/// which keeps the configuration's order.
#[derive(Debug, Clone)]
pub struct ServiceState {
    pub name: String,
    pub vip: Ipv4Addr,
    pub protocol: Protocol,
    pub port: Option<u16>,
    pub flow_key: FlowKey,
    /// Shared with the next snapshot when neither the service nor its backends' reachability
    /// changed (see [`TableCache`]).
    pub table: Arc<ServiceTable>,
    pub backends: Box<[BackendState]>,
}

/// Marks "all ports" in a service key (ports are 16 bits, so this cannot collide).
const ALL_PORTS: u64 = 1 << 16;

fn service_key(vip: u32, proto: u8, port: Option<u16>) -> u64 {
    (vip as u64) << 24 | (proto as u64) << 17 | port.map_or(ALL_PORTS, u64::from)
}

fn fragment_key(vip: u32, proto: u8) -> u64 {
    (vip as u64) << 8 | proto as u64
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct Snapshot {
    generation: u64,
    links: Links,
    /// Sorted, unique VIP addresses (host order).
    vips: Box<[u32]>,
    /// Sorted (service key, service index).
    keys: Box<[(u64, u16)]>,
    /// Sorted (fragment key, service index): the service that takes a VIP's fragments.
    fragments: Box<[(u64, u16)]>,
    services: Box<[ServiceState]>,
}

/// The MAC of a backend if it is usable now: static from the configuration, else resolved.
pub type Resolver<'a> = &'a dyn Fn(&Backend) -> Option<MacAddr>;

impl Snapshot {
    /// Build the snapshot for `cfg`. `resolve` supplies the MAC of each backend without a static
    /// one (`None`: unresolved or otherwise unusable, so it gets no slots).
    pub fn build(cfg: &Config, links: Links, resolve: Resolver<'_>, generation: u64) -> Result<Snapshot, BuildError> {
        Self::build_cached(cfg, links, resolve, generation, &mut TableCache::new())
    }

    /// [`Snapshot::build`], reusing from `cache` every table whose service and reachability did
    /// not change; on success `cache` holds exactly this snapshot's tables.
    ///
    /// A backend MAC equal to one of our own interfaces' MACs is refused: frames "forwarded" to
    /// it come back to us (in one-arm mode macvlan hands them straight back) and loop. A static
    /// one is an error; a resolved one (the neighbour table refuses to learn it, this is defence
    /// in depth) leaves the backend unresolved.
    pub fn build_cached(
        cfg: &Config,
        links: Links,
        resolve: Resolver<'_>,
        generation: u64,
        cache: &mut TableCache,
    ) -> Result<Snapshot, BuildError> {
        let own = [links.ingress_mac, links.egress_mac];
        let mut services = Vec::with_capacity(cfg.services.len());
        let mut used = Vec::with_capacity(cfg.services.len());
        for s in &cfg.services {
            let std::net::IpAddr::V4(vip) = s.vip else {
                return Err(BuildError::NotForwardable {
                    service: s.name.clone(),
                    reason: "IPv6 services are supported by table, lookup and import-ipvs (migration tooling); the forwarder is IPv4 only",
                });
            };
            let mut backends = Vec::with_capacity(s.backends.len());
            for b in &s.backends {
                let Some(ip) = b.ipv4() else {
                    return Err(BuildError::NotIpv4 { service: s.name.clone(), ip: b.ip });
                };
                if let Some(mac) = b.mac.filter(|m| own.contains(m)) {
                    return Err(BuildError::OwnMac { service: s.name.clone(), ip: b.ip, mac });
                }
                let mac = b.mac.or_else(|| resolve(b)).filter(|m| !own.contains(m));
                backends.push(BackendState { ip, weight: b.weight, mac });
            }
            let reachable: Box<[bool]> = backends.iter().map(|b| b.mac.is_some()).collect();
            let table = cache.get(s, &reachable)?;
            used.push((s.clone(), reachable, Arc::clone(&table)));
            services.push(ServiceState {
                name: s.name.clone(),
                vip,
                protocol: s.protocol,
                port: s.port,
                flow_key: s.flow_key,
                table,
                backends: backends.into(),
            });
        }
        cache.retain(used);
        Ok(Self::from_services(services, links, generation))
    }

    fn from_services(services: Vec<ServiceState>, links: Links, generation: u64) -> Snapshot {
        let mut vips: Vec<u32> = services.iter().map(|s| u32::from(s.vip)).collect();
        vips.sort_unstable();
        vips.dedup();
        let mut keys: Vec<(u64, u16)> = services
            .iter()
            .enumerate()
            .map(|(i, s)| (service_key(s.vip.into(), s.protocol.number(), s.port), i as u16))
            .collect();
        keys.sort_unstable();
        // Fragment service per (VIP, protocol): the "all ports" service, else the only one.
        let mut fragments = Vec::new();
        let mut by_vip_proto: Vec<(u64, Option<u16>, u16)> = services
            .iter()
            .enumerate()
            .map(|(i, s)| (fragment_key(s.vip.into(), s.protocol.number()), s.port, i as u16))
            .collect();
        by_vip_proto.sort_unstable();
        for group in by_vip_proto.chunk_by(|a, b| a.0 == b.0) {
            let all = group.iter().find(|g| g.1.is_none());
            match (all, group) {
                (Some(&(k, _, i)), _) | (None, &[(k, _, i)]) => fragments.push((k, i)),
                _ => {}
            }
        }
        Snapshot {
            generation,
            links,
            vips: vips.into(),
            keys: keys.into(),
            fragments: fragments.into(),
            services: services.into(),
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn links(&self) -> &Links {
        &self.links
    }

    pub fn services(&self) -> &[ServiceState] {
        &self.services
    }

    /// Every VIP, ascending.
    pub fn vip_addrs(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.vips.iter().map(|&v| Ipv4Addr::from(v))
    }

    /// Is `addr` (host order) a VIP of any service?
    #[inline]
    pub fn is_vip(&self, addr: u32) -> bool {
        self.vips.binary_search(&addr).is_ok()
    }

    /// The service for a VIP, protocol and destination port: the exact port first, then the VIP's
    /// "all ports" service.
    #[inline]
    pub fn service(&self, vip: u32, proto: u8, port: u16) -> Option<u16> {
        let find = |k: u64| self.keys.binary_search_by_key(&k, |e| e.0).ok().map(|i| self.keys[i].1);
        find(service_key(vip, proto, Some(port))).or_else(|| find(service_key(vip, proto, None)))
    }

    /// The service that takes fragments for a VIP and protocol, if one is unambiguous.
    #[inline]
    pub fn fragment_service(&self, vip: u32, proto: u8) -> Option<u16> {
        let k = fragment_key(vip, proto);
        self.fragments.binary_search_by_key(&k, |e| e.0).ok().map(|i| self.fragments[i].1)
    }

    /// The state of service `svc`, if it exists.
    #[inline]
    pub fn service_state(&self, svc: u16) -> Option<&ServiceState> {
        self.services.get(svc as usize)
    }

    /// The MAC of a backend of a service, if both exist and the MAC is known.
    #[inline]
    pub fn backend_mac(&self, svc: u16, backend: u32) -> Option<MacAddr> {
        self.services.get(svc as usize)?.backends.get(backend as usize)?.mac
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config;

    const CFG: &str = "[interfaces]\ningress = \"net1\"\negress = \"net2\"\n\
        [[service]]\nname = \"a\"\nvip = \"10.201.0.1\"\nprotocol = \"tcp\"\nport = 80\n\
        [[service.backend]]\nip = \"10.0.0.1\"\n[[service.backend]]\nip = \"10.0.0.2\"\n\
        [[service]]\nname = \"b\"\nvip = \"10.201.0.2\"\nprotocol = \"tcp\"\nport = 80\n\
        [[service.backend]]\nip = \"10.0.0.3\"\n";

    fn links() -> Links {
        Links { ingress_mac: MacAddr([2, 0, 0, 0, 0xee, 1]), egress_mac: MacAddr([2, 0, 0, 0, 0xee, 2]) }
    }

    fn mac_of(b: &Backend) -> Option<MacAddr> {
        b.ipv4().map(|ip| MacAddr([2, 0, 0, 0, 0, ip.octets()[3]]))
    }

    #[test]
    fn unchanged_tables_are_reused_and_a_changed_service_is_rebuilt_alone() {
        let cfg = config::parse(CFG, Path::new("t.toml")).unwrap();
        let mut cache = TableCache::new();
        let s1 = Snapshot::build_cached(&cfg, links(), &mac_of, 1, &mut cache).unwrap();
        assert_eq!(cache.built(), 2);
        // Same state: nothing is rebuilt, the tables are the same objects.
        let s2 = Snapshot::build_cached(&cfg, links(), &mac_of, 2, &mut cache).unwrap();
        assert_eq!(cache.built(), 2);
        for (a, b) in s1.services().iter().zip(s2.services()) {
            assert!(Arc::ptr_eq(&a.table, &b.table));
        }
        // 10.0.0.1 loses its MAC: only service "a" is rebuilt.
        let lost = |b: &Backend| if b.ip.to_string() == "10.0.0.1" { None } else { mac_of(b) };
        let s3 = Snapshot::build_cached(&cfg, links(), &lost, 3, &mut cache).unwrap();
        assert_eq!(cache.built(), 3);
        assert!(!Arc::ptr_eq(&s2.services()[0].table, &s3.services()[0].table));
        assert!(Arc::ptr_eq(&s2.services()[1].table, &s3.services()[1].table));
        assert_eq!(s3.services()[0].table.shares(2)[0], 0);
    }

    #[test]
    fn our_own_mac_is_never_a_backend_mac() {
        // A static MAC equal to an interface's own is a configuration error naming the backend.
        let text = CFG.replace("ip = \"10.0.0.3\"\n", "ip = \"10.0.0.3\"\nmac = \"02:00:00:00:ee:02\"\n");
        let cfg = config::parse(&text, Path::new("t.toml")).unwrap();
        let err = Snapshot::build(&cfg, links(), &mac_of, 1).unwrap_err().to_string();
        assert!(err.contains("10.0.0.3") && err.contains("02:00:00:00:ee:02") && err.contains("loop"), "{err}");
        // A resolved one leaves the backend out of the table.
        let cfg = config::parse(CFG, Path::new("t.toml")).unwrap();
        let ours = |b: &Backend| if b.ip.to_string() == "10.0.0.2" { Some(links().ingress_mac) } else { mac_of(b) };
        let s = Snapshot::build(&cfg, links(), &ours, 1).unwrap();
        assert_eq!(s.services()[0].backends[1].mac, None);
        assert_eq!(s.services()[0].table.shares(2)[1], 0);
    }
}
