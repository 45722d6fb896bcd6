//! A service's lookup table under either algorithm: maglevd's own Maglev table or the kernel's
//! `ip_vs_mh` table. Both map a slot to an index into the service's backend list, with `u32::MAX`
//! for "none"; they differ in how they are built and looked up:
//!
//! | | Maglev | ipvs-mh |
//! |---|---|---|
//! | built from | backends that are usable now, by `weight` | every backend, by `last_weight` (kernel rule) |
//! | a backend that is drained or unresolved | owns no slot | keeps its slots, is *unavailable* |
//! | lookup key | flow hash of the service's flow key | client address (+ port with `mh-port`) |
//! | unavailable owner of the slot | cannot happen | no backend, or the kernel's fallback walk with `mh-fallback` (bounded: [`crate::ipvs_mh`], "Bounded lookup cost") |
//!
//! For `ipvs-mh`, "available" is the kernel's rule (current weight > 0) and, in addition, a known
//! MAC: a backend maglevd cannot reach is unavailable. While every backend resolves, maglevd picks
//! exactly the kernel's backend for every new flow.

use std::net::IpAddr;

use crate::config::{Algorithm, Service};
use crate::ipvs_mh::{self, Family, MhAvailability, MhDest, MhError, MhFlags, MhTable};
use crate::maglev::{self, TableBackend, TableError};

/// Why a service's table cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    #[error("service {service}: {source}")]
    Maglev { service: String, source: TableError },
    #[error("service {service}: {source}")]
    IpvsMh { service: String, source: MhError },
    #[error("service {service}: backend {ip} is not IPv4 (the Maglev algorithm and the forwarder are IPv4 only)")]
    NotIpv4 { service: String, ip: IpAddr },
    #[error("service {service}: {reason}")]
    NotForwardable { service: String, reason: &'static str },
    #[error(
        "service {service}: backend {ip} has the MAC {mac} of one of this frontend's own interfaces: frames sent \
         to it would come back and loop"
    )]
    OwnMac { service: String, ip: IpAddr, mac: crate::wire::MacAddr },
}

/// The `ipvs-mh` state of a service: the kernel table plus what its lookup needs.
#[derive(Debug, Clone)]
pub struct MhService {
    pub table: MhTable,
    pub flags: MhFlags,
    /// The dests in kernel list order, as the kernel would hold them.
    pub dests: Box<[MhDest]>,
    /// Per dest: weight > 0 and reachable (MAC known), prepared for lookups.
    pub state: MhAvailability,
}

#[derive(Debug, Clone)]
pub enum ServiceTable {
    Maglev(maglev::Table),
    IpvsMh(MhService),
}

impl ServiceTable {
    /// Build the table of `service`; `reachable(i)` says whether backend `i` can be sent to now.
    pub fn build(service: &Service, reachable: impl Fn(usize) -> bool) -> Result<ServiceTable, BuildError> {
        match service.algorithm {
            Algorithm::Maglev => {
                let mut inputs = Vec::with_capacity(service.backends.len());
                for (i, b) in service.backends.iter().enumerate() {
                    let Some(ip) = b.ipv4() else {
                        return Err(BuildError::NotIpv4 { service: service.name.clone(), ip: b.ip });
                    };
                    inputs.push(TableBackend { ip, weight: if reachable(i) { b.weight } else { 0 } });
                }
                maglev::build(&inputs, service.table_size)
                    .map(ServiceTable::Maglev)
                    .map_err(|source| BuildError::Maglev { service: service.name.clone(), source })
            }
            Algorithm::IpvsMh { tab_index, flags } => {
                let dests: Box<[MhDest]> = service
                    .backends
                    .iter()
                    .map(|b| MhDest { last_weight: b.last_weight as i32, ..MhDest::new(b.ip, b.port, b.weight as i32) })
                    .collect();
                let table = ipvs_mh::build(Family::of(service.vip), &dests, tab_index)
                    .map_err(|source| BuildError::IpvsMh { service: service.name.clone(), source })?;
                let state = table.availability(|i| dests.get(i).is_some_and(MhDest::is_available) && reachable(i));
                Ok(ServiceTable::IpvsMh(MhService { table, flags, dests, state }))
            }
        }
    }

    pub fn size(&self) -> u32 {
        match self {
            ServiceTable::Maglev(t) => t.size(),
            ServiceTable::IpvsMh(m) => m.table.size(),
        }
    }

    /// Every slot's backend index (`u32::MAX` = none); empty for an empty Maglev table.
    pub fn slots(&self) -> &[u32] {
        match self {
            ServiceTable::Maglev(t) => t.slots(),
            ServiceTable::IpvsMh(m) => m.table.slots(),
        }
    }

    /// True when no packet can be forwarded: no slot owner (Maglev) or no available dest (ipvs-mh).
    pub fn is_empty(&self) -> bool {
        match self {
            ServiceTable::Maglev(t) => t.is_empty(),
            ServiceTable::IpvsMh(m) => m.table.is_empty() || !m.state.any_available(),
        }
    }

    /// Slots owned by each backend index `0..n`.
    pub fn shares(&self, n: usize) -> Vec<u64> {
        maglev::slot_counts(self.slots(), n)
    }
}

impl MhService {
    /// The `ipvs-mh` lookup for a new TCP/UDP flow from `client`:`port` (either family), with the
    /// service's flags. `None` = no destination. Off the hot path (IPv6 services, which the
    /// forwarder does not run, are answered here by `maglevd lookup`).
    pub fn lookup(&self, client: IpAddr, port: u16) -> Option<usize> {
        let port = if self.flags.mh_port { port } else { 0 };
        self.table.lookup_by(ipvs_mh::fold(self.table.family(), client), port, self.flags.mh_fallback, &self.state)
    }

    /// The `ipvs-mh` lookup for an IPv4 client on the hot path: `src` in host order, `sport` the
    /// client's port (0 for fragments). `None` = no destination.
    #[inline]
    pub fn lookup_v4(&self, src: u32, sport: u16) -> Option<u32> {
        let port = if self.flags.mh_port { sport } else { 0 };
        self.table.lookup_by(src, port, self.flags.mh_fallback, &self.state).map(|i| i as u32)
    }
}

/// The tables of the last snapshot, reused by the next build when a service's definition and its
/// backends' reachability are unchanged: an ARP event or a reload that touches one service
/// rebuilds that service's table only, never the others.
#[derive(Debug, Default)]
pub struct TableCache {
    entries: Vec<CacheEntry>,
    built: u64,
}

#[derive(Debug)]
struct CacheEntry {
    service: Service,
    reachable: Box<[bool]>,
    table: std::sync::Arc<ServiceTable>,
}

impl TableCache {
    pub fn new() -> TableCache {
        TableCache::default()
    }

    /// Tables built (not reused) since this cache was created.
    pub fn built(&self) -> u64 {
        self.built
    }

    /// The table of `service` for this reachability, reused when the cache holds it.
    pub fn get(&mut self, service: &Service, reachable: &[bool]) -> Result<std::sync::Arc<ServiceTable>, BuildError> {
        if let Some(e) = self.entries.iter().find(|e| e.service.same_table(service) && *e.reachable == *reachable) {
            return Ok(std::sync::Arc::clone(&e.table));
        }
        self.built += 1;
        let table = ServiceTable::build(service, |i| reachable.get(i).copied().unwrap_or(false))?;
        Ok(std::sync::Arc::new(table))
    }

    /// Keep exactly the tables of a finished build (`used`), so the cache never outgrows one
    /// snapshot.
    pub fn retain(&mut self, used: Vec<(Service, Box<[bool]>, std::sync::Arc<ServiceTable>)>) {
        self.entries =
            used.into_iter().map(|(service, reachable, table)| CacheEntry { service, reachable, table }).collect();
    }
}
