//! Operator reports: the `check` summary, per-backend slot shares, the disruption preview between
//! two configurations (`table --compare`), the slot dump (`table --dump`) and the backend a
//! given client reaches (`lookup`). Pure functions from validated configs to text; every table
//! is built as if all backends were reachable (weights decide, as on a healthy frontend).
//!
//! `lookup` does not choose a backend itself: it asks the data plane ([`lookup`] builds the
//! frame and runs [`dataplane::forward`]), so its answer is the forwarder's by construction. Its
//! one exception, IPv6 `ipvs-mh` services, which the forwarder does not run, is documented there.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::config::{self, Algorithm, Config, Protocol, Service};
use crate::dataplane::{self, DropReason, Links, Snapshot, Verdict};
use crate::table::{BuildError, ServiceTable};
use crate::wire::MacAddr;

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
    #[error("`{0}` matches several services ({1}); add /tcp or /udp, or --protocol")]
    Ambiguous(String, String),
    #[error("`{0}` is not NAME, VIP:PORT or VIP:PORT/PROTO")]
    BadSelector(String),
    #[error("client {client} and service {service} are of different address families")]
    Family { client: IpAddr, service: String },
    #[error("service {0}: {1} questions are about the forwarder, which is IPv4 only")]
    Ipv4Only(String, &'static str),
    #[error(transparent)]
    Table(#[from] BuildError),
}

/// The service a selector names: a service name, or the destination `VIP:PORT[/PROTO]` of a
/// packet (which may fall into an "all ports" service); `protocol` (e.g. `--protocol`) narrows a
/// `VIP:PORT` like `/PROTO` does. Returns the service and the packet's destination port.
pub fn find_service<'a>(
    cfg: &'a Config,
    selector: &str,
    protocol: Option<Protocol>,
) -> Result<(&'a Service, u16), LookupError> {
    if let Some(s) = cfg.services.iter().find(|s| s.name == selector) {
        if protocol.is_some_and(|p| p != s.protocol) {
            return Err(LookupError::BadSelector(format!("{selector} is a {} service", s.protocol)));
        }
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
    let proto = match (proto, protocol) {
        (Some(a), Some(b)) if a != b => {
            return Err(LookupError::BadSelector(format!("{selector} contradicts --protocol {b}")));
        }
        (a, b) => a.or(b),
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

/// Which packet of a flow `lookup` asks about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Packet {
    /// The flow's first packet (a TCP SYN, a UDP datagram).
    #[default]
    First,
    /// A later IP fragment (no ports) of one of the flow's datagrams, whose first fragment this
    /// frontend did not see.
    Fragment,
    /// An ICMP error (fragmentation needed) about the flow, quoting a packet the backend sent
    /// from the VIP to the client.
    IcmpError,
}

impl Packet {
    fn name(self) -> &'static str {
        match self {
            Packet::First => "new-flow",
            Packet::Fragment => "fragment",
            Packet::IcmpError => "ICMP error",
        }
    }
}

/// What `maglevd lookup` asks: where does a packet of the flow from `client` to `dst` go?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Question {
    /// The packet's destination: a VIP and port.
    pub dst: SocketAddr,
    pub protocol: Protocol,
    /// The client's address and source port.
    pub client: SocketAddr,
    pub packet: Packet,
}

/// The answer to a [`Question`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Forwarded to `backend` by the service named `service`.
    Backend { service: String, backend: BackendName },
    /// Not forwarded: the data plane's drop (or pass) reason, as its counters name it.
    None(String),
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Answer::Backend { backend, .. } => write!(f, "{backend}"),
            Answer::None(reason) => write!(f, "none ({reason})"),
        }
    }
}

/// The question for a selector (see [`find_service`]), a client and a packet kind.
pub fn question(
    cfg: &Config,
    selector: &str,
    protocol: Option<Protocol>,
    client: SocketAddr,
    packet: Packet,
) -> Result<Question, LookupError> {
    let (service, dport) = find_service(cfg, selector, protocol)?;
    Ok(Question { dst: SocketAddr::new(service.vip, dport), protocol: service.protocol, client, packet })
}

/// MAC addresses of the frames `lookup` makes up: the frontend's interfaces, the client's router,
/// and every backend's (all locally administered, never sent anywhere).
const LOOKUP_INGRESS_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x01]);
const LOOKUP_EGRESS_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x02]);
const LOOKUP_ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x03];
const LOOKUP_BACKEND_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x04]);

/// Answer `q` on a frontend where every backend is reachable (weights decide).
///
/// For an IPv4 VIP this is the data plane's own decision, not a copy of it: the services of the
/// VIP go into a [`Snapshot`] with every backend's MAC known, the packet the question describes
/// is built as an Ethernet frame, and [`dataplane::forward`] decides. The answer is therefore what
/// the forwarder does, for fragments and ICMP errors too, including its drop reasons.
///
/// The one exception is an **IPv6** `ipvs-mh` service: the forwarder is IPv4 only, so its new
/// flows are looked up in the service's kernel table directly
/// ([`crate::table::MhService::lookup`]), as the
/// kernel's IPVS would; fragments and ICMP errors cannot be asked about there.
pub fn lookup(cfg: &Config, q: &Question) -> Result<Answer, LookupError> {
    let vip = q.dst.ip();
    if vip.is_ipv4() != q.client.ip().is_ipv4() {
        return Err(LookupError::Family { client: q.client.ip(), service: q.dst.to_string() });
    }
    // The forwarder only ever considers the services of the packet's VIP.
    let services: Vec<Service> = cfg.services.iter().filter(|s| s.vip == vip).cloned().collect();
    let (IpAddr::V4(vip4), IpAddr::V4(client4)) = (vip, q.client.ip()) else {
        return lookup_ipv6_mh(&services, q);
    };
    let one = Config { services, ..cfg.clone() };
    let links = Links { ingress_mac: LOOKUP_INGRESS_MAC, egress_mac: LOOKUP_EGRESS_MAC };
    let snap = Snapshot::build(&one, links, &|_| Some(LOOKUP_BACKEND_MAC), 0)?;
    let mut frame = frame_for(q, vip4, client4);
    Ok(match dataplane::forward(&mut frame, &snap) {
        Verdict::Forward { service, backend } => {
            let s = &one.services[usize::from(service)];
            // A verdict's indices come from the snapshot built from `one` just above.
            match s.backends.get(backend as usize) {
                Some(b) => Answer::Backend { service: s.name.clone(), backend: BackendName::of(s, b) },
                None => Answer::None(DropReason::NoBackend.name().to_string()),
            }
        }
        Verdict::Drop(reason) => Answer::None(reason.name().to_string()),
        Verdict::Pass(reason) => Answer::None(format!("left to the kernel: {}", reason.name())),
    })
}

/// The exception for IPv6 `ipvs-mh` services (see [`lookup`]).
fn lookup_ipv6_mh(services: &[Service], q: &Question) -> Result<Answer, LookupError> {
    if q.packet != Packet::First {
        return Err(LookupError::Ipv4Only(q.dst.to_string(), q.packet.name()));
    }
    let service = services
        .iter()
        .find(|s| s.protocol == q.protocol && s.port == Some(q.dst.port()))
        .ok_or_else(|| LookupError::NoService(format!("{}/{}", q.dst, q.protocol)))?;
    let ServiceTable::IpvsMh(m) = ServiceTable::build(service, |_| true)? else {
        return Err(LookupError::Ipv4Only(service.endpoint(), "maglev-algorithm"));
    };
    Ok(match m.lookup(q.client.ip(), q.client.port()) {
        Some(i) => match service.backends.get(i) {
            Some(b) => Answer::Backend { service: service.name.clone(), backend: BackendName::of(service, b) },
            None => Answer::None(DropReason::NoBackend.name().to_string()),
        },
        None => Answer::None(DropReason::NoBackend.name().to_string()),
    })
}

/// The Ethernet frame the question describes, addressed to the frontend's ingress MAC.
fn frame_for(q: &Question, vip: Ipv4Addr, client: Ipv4Addr) -> Vec<u8> {
    use etherparse::{IpHeaders, IpNumber, Ipv4Header, PacketBuilder, icmpv4};
    let (vip, client, vport, cport) = (vip.octets(), client.octets(), q.dst.port(), q.client.port());
    let eth = PacketBuilder::ethernet2(LOOKUP_ROUTER_MAC, LOOKUP_INGRESS_MAC.0);
    let tcp = q.protocol == Protocol::Tcp;
    let payload = [0u8; 32];
    let mut out = Vec::new();
    // Writing into a Vec cannot fail and every header below is within etherparse's limits, so
    // an error here is impossible; the empty frame it would leave is dropped as eth_truncated.
    let _ = match q.packet {
        Packet::First | Packet::Fragment => {
            let number = if tcp { IpNumber::TCP } else { IpNumber::UDP };
            let Ok(mut ip) = Ipv4Header::new(0, 64, number, client, vip) else { return out };
            // A fragment is a later one (offset 1480 bytes, no ports in it) whose first fragment
            // this frontend did not see: the forwarder hashes it without ports. (A first
            // fragment carries the ports and goes where the flow goes: that is `First`.)
            if q.packet == Packet::Fragment {
                ip.fragment_offset = etherparse::IpFragOffset::try_new(185).unwrap_or(etherparse::IpFragOffset::ZERO);
            }
            let ip = eth.ip(IpHeaders::Ipv4(ip, Default::default()));
            if tcp {
                ip.tcp(cport, vport, 1, 65535).syn().write(&mut out, &payload)
            } else {
                ip.udp(cport, vport).write(&mut out, &payload)
            }
        }
        Packet::IcmpError => {
            // A router on the way to the client cannot pass the backend's reply (VIP → client)
            // and reports it to the VIP, quoting the reply's IP header and first 8 bytes.
            let reply = PacketBuilder::ipv4(vip, client, 64);
            let mut quoted = Vec::new();
            let _ = if tcp {
                reply.tcp(vport, cport, 1, 65535).ack(1).write(&mut quoted, &payload)
            } else {
                reply.udp(vport, cport).write(&mut quoted, &payload)
            };
            quoted.truncate(28);
            let unreachable = icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 };
            eth.ipv4(client, vip, 64)
                .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(unreachable))
                .write(&mut out, &quoted)
        }
    };
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
