//! The immutable forwarding state: every service, its table and its backends' MACs, plus the
//! interfaces' MACs, under one generation number. The control plane builds a new snapshot on every
//! change and publishes it whole (workers load it once per batch), so a worker never sees a table
//! from one generation with MACs from another.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use crate::config::{Backend, Config, FlowKey, Protocol, Service, WhenAllDown};
use crate::metrics::BackendCounters;

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
    /// The backend's port (its own, else the service's): part of its identity in `ipvs-mh`
    /// services; `maglev` forwards to the VIP's port and labels backends by IP alone.
    pub port: u16,
    /// Stable identity of this backend *in this service* across snapshots (see [`BackendIds`]):
    /// what a tracked flow remembers, so it survives reloads that reorder backends.
    pub id: u32,
    pub weight: u32,
    /// Known MAC (static or resolved); `None` keeps the backend out of the table.
    pub mac: Option<MacAddr>,
    /// What its health check says now (true without a check, and while still unknown).
    pub healthy: bool,
    /// It may carry flows: healthy, or its service has every backend down and the policy
    /// `when_all_down = "all"` (then every backend serves as if up).
    pub serving: bool,
}

impl BackendState {
    /// In the table (gets new flows): a positive weight, a known MAC, serving.
    pub fn usable(&self) -> bool {
        self.weight > 0 && self.mac.is_some() && self.serving
    }

    /// Keeps the flows it has: a known MAC and serving, whatever its weight (weight 0 is a drain:
    /// no new flows, established ones stay).
    pub fn keeps_flows(&self) -> bool {
        self.mac.is_some() && self.serving
    }

    /// `drained` (weight 0), `down` (its check failed), `unresolved` (no MAC), or `up`; the
    /// first that applies, in the order an operator acts on them.
    pub fn state_name(&self) -> &'static str {
        if !self.healthy {
            "down"
        } else if self.mac.is_none() {
            "unresolved"
        } else if self.weight == 0 {
            "drained"
        } else {
            "up"
        }
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
    /// Each backend's traffic counters (parallel to `backends`), the same across snapshots while
    /// the backend stays configured.
    pub counters: Box<[Arc<BackendCounters>]>,
    /// Every backend with a weight and a MAC is down by its health check.
    pub all_down: bool,
    pub when_all_down: WhenAllDown,
}

impl ServiceState {
    /// An `ipvs-mh` service (its backends are `IP:port`), not a `maglev` one.
    pub fn ipvs_mh(&self) -> bool {
        matches!(&*self.table, ServiceTable::IpvsMh(_))
    }
}

/// Who a backend is, for [`BackendIds`]: its service's endpoint and its own address and port.
type Identity = (IpAddr, u8, Option<u16>, IpAddr, u16);

fn identity(s: &Service, b: &Backend) -> Identity {
    (s.vip, s.protocol.number(), s.port, b.ip, b.port)
}

/// Stable backend ids across snapshots: the same (service endpoint, backend address, port) gets
/// the same id in every snapshot built with one `BackendIds`, whatever the order of services and
/// backends in the file. Ids are dense and never reused while the process runs (a flow that
/// remembers a removed backend's id must never land on a newcomer), so a snapshot can map an id
/// to its backend with one array index. A million backend additions cost 8 MB of that array.
#[derive(Debug, Default)]
pub struct BackendIds {
    ids: BTreeMap<Identity, u32>,
    next: u32,
    /// The counters of the backends of the last snapshot built, by id.
    counters: BTreeMap<u32, Arc<BackendCounters>>,
    /// Workers the counters have cells for (0 counts as 1).
    workers: usize,
}

impl BackendIds {
    pub fn new() -> BackendIds {
        BackendIds::default()
    }

    /// The counters of backend `id`: the ones it had in the last snapshot, else new ones.
    fn counters(&mut self, id: u32) -> Arc<BackendCounters> {
        let workers = self.workers;
        Arc::clone(self.counters.entry(id).or_insert_with(|| Arc::new(BackendCounters::new(workers))))
    }

    /// Forget the counters of backends not in `kept` (a backend removed and added again starts
    /// from zero, and the map stays as small as the configuration).
    fn keep_counters(&mut self, kept: &[u32]) {
        self.counters.retain(|id, _| kept.binary_search(id).is_ok());
    }

    fn id(&mut self, s: &Service, b: &Backend) -> u32 {
        let next = &mut self.next;
        *self.ids.entry(identity(s, b)).or_insert_with(|| {
            *next += 1;
            *next - 1
        })
    }

    /// One past the largest id handed out.
    pub fn end(&self) -> u32 {
        self.next
    }
}

/// What one snapshot build hands to the next: the tables to reuse and the backend ids.
#[derive(Debug, Default)]
pub struct BuildState {
    pub tables: TableCache,
    pub ids: BackendIds,
}

impl BuildState {
    /// A build state whose snapshots count traffic for `workers` workers (the daemon's; the
    /// default has one cell, enough for tools that forward on one thread).
    pub fn for_workers(workers: usize) -> BuildState {
        BuildState { ids: BackendIds { workers, ..BackendIds::default() }, ..BuildState::default() }
    }
}

/// Where a backend id lives in a snapshot: (service index, backend index), or nowhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IdSlot {
    service: u16,
    backend: u32,
}

const NO_SLOT: IdSlot = IdSlot { service: u16::MAX, backend: u32::MAX };

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
    /// Backend id → where it is now (see [`BackendIds`]).
    id_slots: Box<[IdSlot]>,
}

/// The MAC of a backend if it is usable now: static from the configuration, else resolved.
pub type Resolver<'a> = &'a dyn Fn(&Backend) -> Option<MacAddr>;

/// Whether a backend of a service passes its health check now (true without a check).
pub type Healthy<'a> = &'a dyn Fn(&Service, &Backend) -> bool;

impl Snapshot {
    /// Build the snapshot for `cfg`. `resolve` supplies the MAC of each backend without a static
    /// one (`None`: unresolved or otherwise unusable, so it gets no slots).
    pub fn build(cfg: &Config, links: Links, resolve: Resolver<'_>, generation: u64) -> Result<Snapshot, BuildError> {
        Self::build_cached(cfg, links, resolve, generation, &mut BuildState::default())
    }

    /// [`Snapshot::build`], reusing from `state` every table whose service and reachability did
    /// not change (on success it holds exactly this snapshot's tables) and keeping every
    /// backend's id from earlier builds.
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
        state: &mut BuildState,
    ) -> Result<Snapshot, BuildError> {
        Self::build_observed(cfg, links, resolve, &|_, _| true, generation, state)
    }

    /// [`Snapshot::build_cached`] with the health checks' verdicts: a backend that is not
    /// `healthy` gets no slots and keeps no flows, unless every backend of its service is down and
    /// the service says `when_all_down = "all"`.
    pub fn build_observed(
        cfg: &Config,
        links: Links,
        resolve: Resolver<'_>,
        healthy: Healthy<'_>,
        generation: u64,
        state: &mut BuildState,
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
            let mut counters = Vec::with_capacity(s.backends.len());
            for b in &s.backends {
                let Some(ip) = b.ipv4() else {
                    return Err(BuildError::NotIpv4 { service: s.name.clone(), ip: b.ip });
                };
                if let Some(mac) = b.mac.filter(|m| own.contains(m)) {
                    return Err(BuildError::OwnMac { service: s.name.clone(), ip: b.ip, mac });
                }
                let mac = b.mac.or_else(|| resolve(b)).filter(|m| !own.contains(m));
                let id = state.ids.id(s, b);
                counters.push(state.ids.counters(id));
                let ok = healthy(s, b);
                backends.push(BackendState { ip, port: b.port, id, weight: b.weight, mac, healthy: ok, serving: ok });
            }
            // Down means every backend that could take flows (weight and MAC) failed its check.
            let candidates = || backends.iter().filter(|b| b.weight > 0 && b.mac.is_some());
            let all_down = candidates().next().is_some() && candidates().all(|b| !b.healthy);
            if all_down && s.when_all_down == WhenAllDown::All {
                for b in &mut backends {
                    b.serving = true;
                }
            }
            let reachable: Box<[bool]> = backends.iter().map(|b| b.mac.is_some() && b.serving).collect();
            let table = state.tables.get(s, &reachable)?;
            used.push((s.clone(), reachable, Arc::clone(&table)));
            services.push(ServiceState {
                name: s.name.clone(),
                vip,
                protocol: s.protocol,
                port: s.port,
                flow_key: s.flow_key,
                table,
                backends: backends.into(),
                counters: counters.into(),
                all_down,
                when_all_down: s.when_all_down,
            });
        }
        state.tables.retain(used);
        let mut kept: Vec<u32> = services.iter().flat_map(|s| s.backends.iter().map(|b| b.id)).collect();
        kept.sort_unstable();
        state.ids.keep_counters(&kept);
        Ok(Self::from_services(services, links, generation, state.ids.end()))
    }

    fn from_services(services: Vec<ServiceState>, links: Links, generation: u64, ids_end: u32) -> Snapshot {
        let mut id_slots = vec![NO_SLOT; ids_end as usize];
        for (si, s) in services.iter().enumerate() {
            for (bi, b) in s.backends.iter().enumerate() {
                if let Some(slot) = id_slots.get_mut(b.id as usize) {
                    *slot = IdSlot { service: si as u16, backend: bi as u32 };
                }
            }
        }
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
            id_slots: id_slots.into(),
        }
    }

    /// Where backend `id` is in this snapshot: (service index, backend index), if it is.
    #[inline]
    pub fn backend_by_id(&self, id: u32) -> Option<(u16, u32)> {
        match self.id_slots.get(id as usize) {
            Some(&s) if s != NO_SLOT => Some((s.service, s.backend)),
            _ => None,
        }
    }

    /// The stable id of backend `backend` of service `svc`, if both exist.
    #[inline]
    pub fn backend_id(&self, svc: u16, backend: u32) -> Option<u32> {
        Some(self.services.get(svc as usize)?.backends.get(backend as usize)?.id)
    }

    /// The traffic counters of backend `backend` of service `svc`.
    #[inline]
    pub fn backend_counters(&self, svc: u16, backend: u32) -> Option<&BackendCounters> {
        self.services.get(svc as usize)?.counters.get(backend as usize).map(|c| &**c)
    }

    /// Does backend `backend` of service `svc` keep its tracked flows ([`BackendState::keeps_flows`])?
    #[inline]
    pub fn keeps(&self, svc: u16, backend: u32) -> bool {
        self.services
            .get(svc as usize)
            .and_then(|s| s.backends.get(backend as usize))
            .is_some_and(BackendState::keeps_flows)
    }

    /// Does backend `backend` of service `svc` take new flows ([`BackendState::usable`])?
    #[inline]
    pub fn takes_new(&self, svc: u16, backend: u32) -> bool {
        self.services.get(svc as usize).and_then(|s| s.backends.get(backend as usize)).is_some_and(BackendState::usable)
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
        let mut cache = BuildState::default();
        let s1 = Snapshot::build_cached(&cfg, links(), &mac_of, 1, &mut cache).unwrap();
        assert_eq!(cache.tables.built(), 2);
        // Same state: nothing is rebuilt, the tables are the same objects.
        let s2 = Snapshot::build_cached(&cfg, links(), &mac_of, 2, &mut cache).unwrap();
        assert_eq!(cache.tables.built(), 2);
        for (a, b) in s1.services().iter().zip(s2.services()) {
            assert!(Arc::ptr_eq(&a.table, &b.table));
        }
        // 10.0.0.1 loses its MAC: only service "a" is rebuilt.
        let lost = |b: &Backend| if b.ip.to_string() == "10.0.0.1" { None } else { mac_of(b) };
        let s3 = Snapshot::build_cached(&cfg, links(), &lost, 3, &mut cache).unwrap();
        assert_eq!(cache.tables.built(), 3);
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

    #[test]
    fn backend_ids_follow_identity_not_order() {
        let cfg = config::parse(CFG, Path::new("t.toml")).unwrap();
        let mut state = BuildState::default();
        let s1 = Snapshot::build_cached(&cfg, links(), &mac_of, 1, &mut state).unwrap();
        let id_of = |s: &Snapshot, svc: &str, ip: &str| {
            let sv = s.services().iter().find(|x| x.name == svc).unwrap();
            sv.backends.iter().find(|b| b.ip.to_string() == ip).unwrap().id
        };
        let a1 = id_of(&s1, "a", "10.0.0.2");
        // Services and backends in another order, one backend removed, one added.
        let text = "[interfaces]\ningress = \"net1\"\negress = \"net2\"\n\
            [[service]]\nname = \"b\"\nvip = \"10.201.0.2\"\nprotocol = \"tcp\"\nport = 80\n\
            [[service.backend]]\nip = \"10.0.0.3\"\n\
            [[service]]\nname = \"a\"\nvip = \"10.201.0.1\"\nprotocol = \"tcp\"\nport = 80\n\
            [[service.backend]]\nip = \"10.0.0.9\"\n[[service.backend]]\nip = \"10.0.0.2\"\n";
        let cfg2 = config::parse(text, Path::new("t.toml")).unwrap();
        let s2 = Snapshot::build_cached(&cfg2, links(), &mac_of, 2, &mut state).unwrap();
        assert_eq!(id_of(&s2, "a", "10.0.0.2"), a1, "same backend of the same service, same id");
        assert_eq!(s2.backend_by_id(a1), Some((1, 1)), "found where it is now");
        let removed = id_of(&s1, "a", "10.0.0.1");
        assert_eq!(s2.backend_by_id(removed), None, "a removed backend is nowhere");
        let new = id_of(&s2, "a", "10.0.0.9");
        assert!(new >= 3 && new != removed, "a newcomer never takes a removed backend's id");
        // The same IP in another service is another backend.
        assert_ne!(id_of(&s2, "b", "10.0.0.3"), id_of(&s2, "a", "10.0.0.2"));
        assert_eq!(s2.backend_by_id(u32::MAX), None);
    }

    /// A backend keeps its counters across snapshots while it stays configured (whatever the
    /// order); a removed backend's are forgotten, so it starts from zero when it comes back.
    #[test]
    fn backend_counters_live_as_long_as_the_backend() {
        let cfg = |ips: &[&str]| {
            let mut t = String::from(
                "[interfaces]\ningress = \"in\"\negress = \"out\"\n[[service]]\nvip = \"10.201.0.1\"\nprotocol = \"tcp\"\nport = 80\n",
            );
            for ip in ips {
                t.push_str(&format!("[[service.backend]]\nip = \"{ip}\"\nmac = \"02:00:00:00:00:07\"\n"));
            }
            crate::config::parse(&t, std::path::Path::new("t.toml")).unwrap()
        };
        let links = Links { ingress_mac: MacAddr([2, 0, 0, 0, 0, 1]), egress_mac: MacAddr([2, 0, 0, 0, 0, 2]) };
        let mut state = BuildState::for_workers(3);
        let mut build = |ips: &[&str], generation| {
            Snapshot::build_observed(&cfg(ips), links, &|_| None, &|_, _| true, generation, &mut state).unwrap()
        };
        let s1 = build(&["10.0.0.1", "10.0.0.2"], 1);
        s1.backend_counters(0, 0).unwrap().record(2, 100, true);
        s1.backend_counters(0, 1).unwrap().record(0, 60, false);
        let s2 = build(&["10.0.0.2", "10.0.0.3", "10.0.0.1"], 2);
        let totals = |s: &Snapshot, b| s.backend_counters(0, b).unwrap().totals();
        assert_eq!(totals(&s2, 2), crate::metrics::BackendTotals { packets: 1, bytes: 100, flows: 1 }, "10.0.0.1 kept");
        assert_eq!(totals(&s2, 0).bytes, 60, "10.0.0.2 kept");
        assert_eq!(totals(&s2, 1), Default::default(), "10.0.0.3 is new");
        let s3 = build(&["10.0.0.2"], 3);
        assert_eq!(totals(&s3, 0).bytes, 60);
        let s4 = build(&["10.0.0.2", "10.0.0.1"], 4);
        assert_eq!(totals(&s4, 1), Default::default(), "10.0.0.1 was removed: it starts again from zero");
        assert!(s4.backend_counters(0, 2).is_none());
    }
}
