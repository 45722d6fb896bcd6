//! Configuration: the TOML file (serde types with `deny_unknown_fields`) and its validation into
//! the runtime types the rest of the daemon uses.
//!
//! The file types (`File*`) mirror the TOML exactly and keep the byte span of every value that is
//! validated after parsing, so every problem is reported as `FILE:LINE:COL: key.path: what is
//! wrong`. Validation collects *all* problems instead of stopping at the first. Nothing here panics
//! on any input.
//!
//! Interface addresses and MACs are deliberately *not* part of the file: they are read from the
//! interfaces at run time, so one file runs unchanged on every frontend built alike.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use toml::Spanned;

use crate::flow;
use crate::ipvs_mh::{self, MhFlags};
use crate::maglev::{self, DEFAULT_TABLE_SIZE, MAX_TABLE_SIZE, MAX_TOTAL_SLOTS, MAX_WEIGHT, MIN_SLOTS_PER_BACKEND};
use crate::wire::MacAddr;

// ---------------------------------------------------------------------------------------------
// Runtime types

/// A validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Interface VIP traffic arrives on (the seed's `net1`, vlan100).
    pub ingress: String,
    /// Interface frames to backends leave on (the seed's `net2`, vlan200). May equal `ingress`.
    pub egress: String,
    /// The ingress interface's real IP when the kernel does not hold it: maglevd then answers ARP
    /// for it. `None`: the kernel owns the interface's addresses and answers for them.
    pub ingress_address: Option<Ipv4Addr>,
    /// Sender address of ARP probes for backends; `None`: the egress interface's first IPv4.
    pub egress_address: Option<Ipv4Addr>,
    /// `interfaces.kernel_drop` (default true): a tc ingress filter on the ingress interface drops
    /// VIP frames once the RX rings have their copy, so the kernel's IP stack does not process
    /// (and drop) every one of them too. See [`crate::io::tc`].
    pub kernel_drop: bool,
    pub daemon: Daemon,
    pub flows: Flows,
    /// `[announce]`: VIP announcement for a BGP daemon; `None` when the section is absent.
    pub announce: Option<Announce>,
    pub services: Vec<Service>,
}

/// VIP announcement settings (`[announce]`); see [`crate::announce`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announce {
    /// Kernel routing table of the announced VIPs' routes (for a BGP daemon to learn); `None`:
    /// no routes (readiness per VIP and state files only).
    pub table: Option<u32>,
    /// The TUN device those routes go through.
    pub device: String,
    /// After start, nothing is announced for this long.
    pub settle: std::time::Duration,
    /// How often every VIP's readiness is evaluated.
    pub interval: std::time::Duration,
    /// Consecutive ready evaluations before a VIP is announced.
    pub rise: u32,
    /// Consecutive not-ready evaluations before it is withdrawn.
    pub fall: u32,
    /// On SIGTERM: every VIP withdrawn at once, forwarding goes on this long, then the stop.
    pub drain: std::time::Duration,
    /// A file per announced VIP appears here (named by the VIP) and disappears on withdrawal.
    pub state_dir: Option<std::path::PathBuf>,
    /// While this file exists every VIP is withdrawn (maintenance).
    pub drain_file: Option<std::path::PathBuf>,
}

/// Defaults of `[announce]`.
pub const DEFAULT_ANNOUNCE_DEVICE: &str = "maglevd0";
pub const DEFAULT_SETTLE_SECS: u64 = 5;
pub const DEFAULT_ANNOUNCE_INTERVAL_MS: u64 = 500;
pub const DEFAULT_ANNOUNCE_RISE: u32 = 2;
pub const DEFAULT_ANNOUNCE_FALL: u32 = 1;
pub const DEFAULT_DRAIN_SECS: u64 = 5;

impl Default for Announce {
    fn default() -> Self {
        Announce {
            table: None,
            device: DEFAULT_ANNOUNCE_DEVICE.into(),
            settle: std::time::Duration::from_secs(DEFAULT_SETTLE_SECS),
            interval: std::time::Duration::from_millis(DEFAULT_ANNOUNCE_INTERVAL_MS),
            rise: DEFAULT_ANNOUNCE_RISE,
            fall: DEFAULT_ANNOUNCE_FALL,
            drain: std::time::Duration::from_secs(DEFAULT_DRAIN_SECS),
            state_dir: None,
            drain_file: None,
        }
    }
}

/// Process settings (`[daemon]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Daemon {
    /// Worker threads; `None` = one per CPU.
    pub workers: Option<usize>,
    /// Listen address of the `/metrics` and `/healthz` HTTP endpoint; `None` disables it.
    pub metrics: Option<std::net::SocketAddr>,
    /// How often the file is re-read to reload it when it changed (besides SIGHUP); `None` =
    /// only on SIGHUP.
    pub config_check: Option<std::time::Duration>,
    /// Busy polling: how long an idle worker spins on its RX ring before it sleeps in `poll()`
    /// (zero: it sleeps at once). Spinning spares the wake-up of a sleeping thread (tens of µs on
    /// a VM) at the price of a busy CPU per worker.
    pub busy_poll: std::time::Duration,
}

/// Default interval of the configuration file check.
pub const DEFAULT_CONFIG_CHECK_SECS: u64 = 5;

/// Default metrics listen address: loopback of the frontend's network namespace.
pub const DEFAULT_METRICS: &str = "127.0.0.1:9100";

/// Most workers accepted (one RX and one TX ring each).
pub const MAX_WORKERS: usize = 64;

impl Default for Daemon {
    fn default() -> Self {
        Daemon {
            workers: None,
            metrics: DEFAULT_METRICS.parse().ok(),
            config_check: Some(std::time::Duration::from_secs(DEFAULT_CONFIG_CHECK_SECS)),
            busy_poll: std::time::Duration::ZERO,
        }
    }
}

/// Connection tracking settings (`[flows]`); see [`crate::flow`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flows {
    /// Flow entries across all workers; each worker gets [`crate::flow::per_worker`] of it.
    pub capacity: usize,
    /// Idle timeouts of TCP (open and after FIN/RST) and of UDP and other protocols.
    pub timeouts: flow::Timeouts,
    /// How long the later fragments of a datagram follow its first fragment's backend.
    pub fragment_timeout: std::time::Duration,
}

impl Default for Flows {
    fn default() -> Self {
        Flows {
            capacity: flow::DEFAULT_CAPACITY,
            timeouts: flow::Timeouts::default(),
            fragment_timeout: flow::DEFAULT_FRAGMENT_TIMEOUT,
        }
    }
}

/// Smallest `[flows] capacity` accepted.
pub const MIN_FLOW_CAPACITY: usize = flow::MIN_PER_WORKER;
/// Longest TCP or UDP idle timeout accepted (7 days).
pub const MAX_FLOW_TIMEOUT_SECS: i64 = 7 * 24 * 3600;
/// Longest TCP timeout after FIN/RST accepted.
pub const MAX_FIN_TIMEOUT_SECS: i64 = 3600;
/// Longest fragment timeout accepted (the kernel reassembles for 30 s by default).
pub const MAX_FRAGMENT_TIMEOUT_SECS: i64 = 60;

impl Config {
    /// One-arm mode: one interface for both directions.
    pub fn one_arm(&self) -> bool {
        self.ingress == self.egress
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => crate::wire::IPPROTO_TCP,
            Protocol::Udp => crate::wire::IPPROTO_UDP,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// Which fields of a packet choose its backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum FlowKey {
    /// Source and destination address, protocol, source and destination port (the default).
    #[default]
    #[serde(rename = "5-tuple")]
    FiveTuple,
    /// Source address only: every connection of a client reaches the same backend.
    #[serde(rename = "src-ip")]
    SrcIp,
    /// Source address and source port.
    #[serde(rename = "src-ip-port")]
    SrcIpPort,
}

impl fmt::Display for FlowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FlowKey::FiveTuple => "5-tuple",
            FlowKey::SrcIp => "src-ip",
            FlowKey::SrcIpPort => "src-ip-port",
        })
    }
}

/// How a service's lookup table is built and consulted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// maglevd's own Maglev table (`src/maglev/`), flow hash per [`FlowKey`]. The default.
    Maglev,
    /// The Linux kernel's `ip_vs_mh` scheduler, bit for bit (`src/ipvs_mh/`): the same backend as an
    /// IPVS frontend for every new flow, for a gradual migration behind one ECMP router.
    IpvsMh {
        /// `CONFIG_IP_VS_MH_TAB_INDEX` (8..=17; the table size is the kernel's prime for it).
        tab_index: u8,
        flags: MhFlags,
    },
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Algorithm::Maglev => f.write_str("maglev"),
            Algorithm::IpvsMh { tab_index, flags } => {
                write!(f, "ipvs-mh (tab_index {tab_index}")?;
                if flags.mh_port {
                    f.write_str(", mh-port")?;
                }
                if flags.mh_fallback {
                    f.write_str(", mh-fallback")?;
                }
                f.write_str(")")
            }
        }
    }
}

/// One virtual service: a VIP, a protocol and a port (or all ports), with its backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    /// IPv4 for every service the forwarder runs; IPv6 only in `ipvs-mh` services, which the
    /// table/lookup/import tools handle but `maglevd run` refuses.
    pub vip: IpAddr,
    pub protocol: Protocol,
    /// `None` = every port of the VIP for this protocol (Maglev only).
    pub port: Option<u16>,
    /// Maglev only; `ipvs-mh` hashes the client address (and port with `mh-port`).
    pub flow_key: FlowKey,
    /// Slots in the table (for `ipvs-mh`, the kernel's prime for the tab index).
    pub table_size: u32,
    pub algorithm: Algorithm,
    /// In configuration order; for `ipvs-mh` that is the kernel's list order.
    pub backends: Vec<Backend>,
    /// The service's health check (`[service.health]`); each backend's own, with its overrides,
    /// is [`Backend::health`].
    pub health: HealthCheck,
    /// What the data plane does when every backend of the service is down.
    pub when_all_down: WhenAllDown,
}

impl Service {
    /// Would `self` and `other` build the same table for the same reachability? Everything but
    /// the health-check settings and `when_all_down` counts (those act through reachability).
    pub fn same_table(&self, other: &Service) -> bool {
        let backend = |a: &Backend, b: &Backend| {
            (a.ip, a.port, a.weight, a.last_weight, a.mac) == (b.ip, b.port, b.weight, b.last_weight, b.mac)
        };
        (&self.name, self.vip, self.protocol, self.port, self.flow_key, self.table_size, &self.algorithm)
            == (&other.name, other.vip, other.protocol, other.port, other.flow_key, other.table_size, &other.algorithm)
            && self.backends.len() == other.backends.len()
            && self.backends.iter().zip(&other.backends).all(|(a, b)| backend(a, b))
    }
}

/// What a backend health check probes (`check = "..."` in `[service.health]`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CheckKind {
    /// No checks: every backend counts as up (the default, and the behaviour without a
    /// `[service.health]` table).
    #[default]
    None,
    /// A TCP connection to the backend's real IP and [`HealthCheck::port`].
    Tcp,
    /// An HTTP/1.0 `GET path` to the backend's real IP; up when the status line has `status`.
    Http {
        path: String,
        status: u16,
        /// The `Host` header; `None`: the backend's IP.
        host: Option<String>,
    },
    /// A TCP SYN to **VIP:port** sent to the backend's MAC, as maglevd forwards client traffic:
    /// up when the backend answers with a SYN-ACK from the VIP (it holds the VIP and listens).
    Dsr,
}

impl CheckKind {
    /// `none`, `tcp`, `http`, `dsr`.
    pub fn name(&self) -> &'static str {
        match self {
            CheckKind::None => "none",
            CheckKind::Tcp => "tcp",
            CheckKind::Http { .. } => "http",
            CheckKind::Dsr => "dsr",
        }
    }
}

/// One backend's health-check settings, resolved: `[service.health]` with the backend's
/// `[service.backend.health]` keys over it, and the defaults below for keys given nowhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub kind: CheckKind,
    /// The TCP port probed (for `dsr`, the port on the VIP); default: the service port. 0 only
    /// with [`CheckKind::None`].
    pub port: u16,
    /// Time from the start of one probe to the start of the next.
    pub interval: std::time::Duration,
    /// A probe without an answer within this time failed (at most `interval`).
    pub timeout: std::time::Duration,
    /// Consecutive successes that bring a down backend up.
    pub rise: u32,
    /// Consecutive failures that take an up backend down.
    pub fall: u32,
}

/// Default `interval_ms`. The interval, `rise` and `fall` defaults are HAProxy's (`inter 2s`,
/// `rise 2`, `fall 3`): a dead backend is out after about `fall × interval` = 6 s, and one lucky
/// probe does not bring a flapping one back.
pub const DEFAULT_HEALTH_INTERVAL_MS: u64 = 2000;
/// Default `timeout_ms` (or the interval, when that is shorter): backends on the frontend's own
/// L2 segment answer within milliseconds.
pub const DEFAULT_HEALTH_TIMEOUT_MS: u64 = 1000;
/// Default `rise`.
pub const DEFAULT_HEALTH_RISE: u32 = 2;
/// Default `fall`.
pub const DEFAULT_HEALTH_FALL: u32 = 3;
/// Default HTTP path and status.
pub const DEFAULT_HEALTH_PATH: &str = "/";
pub const DEFAULT_HEALTH_STATUS: u16 = 200;

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            kind: CheckKind::None,
            port: 0,
            interval: std::time::Duration::from_millis(DEFAULT_HEALTH_INTERVAL_MS),
            timeout: std::time::Duration::from_millis(DEFAULT_HEALTH_TIMEOUT_MS),
            rise: DEFAULT_HEALTH_RISE,
            fall: DEFAULT_HEALTH_FALL,
        }
    }
}

/// What a service does when every backend is down (`when_all_down`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WhenAllDown {
    /// Drop the service's traffic (counted as `no_backend`): fail closed. The default.
    #[default]
    Drop,
    /// Forward to every configured backend as if all were up: when the checks themselves are
    /// wrong (a firewall dropping probes), traffic still flows.
    All,
}

impl fmt::Display for WhenAllDown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WhenAllDown::Drop => "drop",
            WhenAllDown::All => "all",
        })
    }
}

/// `10.201.0.1:80/tcp`, `10.201.0.1:*/udp`, `[2001:db8::1]:80/tcp`.
pub fn endpoint(vip: IpAddr, port: Option<u16>, protocol: Protocol) -> String {
    let addr = match vip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    };
    match port {
        Some(p) => format!("{addr}:{p}/{protocol}"),
        None => format!("{addr}:*/{protocol}"),
    }
}

impl Service {
    /// `10.201.0.1:80/tcp` or `10.201.0.1:*/udp`.
    pub fn endpoint(&self) -> String {
        endpoint(self.vip, self.port, self.protocol)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// The backend's real IP on the egress network: its identity in a Maglev service (in an
    /// `ipvs-mh` service the identity is IP and `port`, as in IPVS).
    pub ip: IpAddr,
    /// `ipvs-mh` only: the destination port, an input of the kernel's permutation hash
    /// (default: the service port, which ipvsadm forces for direct routing).
    pub port: u16,
    /// Relative share of new flows; 0 = drained (Maglev: no slots; `ipvs-mh`: keeps its slots but
    /// is unavailable, as `ipvsadm -e -w 0` does).
    pub weight: u32,
    /// `ipvs-mh` only: the weight the kernel built the table from (`last_weight`, [`crate::ipvs_mh`] §9); equal
    /// to `weight` unless the backend was drained with `ipvsadm -e -w 0`.
    pub last_weight: u32,
    /// A static MAC skips ARP resolution for this backend.
    pub mac: Option<MacAddr>,
    /// Its health check: the service's, with this backend's overrides.
    pub health: HealthCheck,
}

impl Backend {
    pub fn ipv4(&self) -> Option<Ipv4Addr> {
        match self.ip {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

/// One problem found in a configuration file, with its location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub column: usize,
    /// Dotted key path, e.g. `service[0].backend[2].weight`.
    pub key: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read the configuration file: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}:{} {message}", path.display(), location.map_or(String::new(), |(l, c)| format!("{l}:{c}:")))]
    Parse { path: PathBuf, location: Option<(usize, usize)>, message: String },
    #[error("{}", render_problems(path, problems))]
    Invalid { path: PathBuf, problems: Vec<Problem> },
}

fn render_problems(path: &Path, problems: &[Problem]) -> String {
    let mut out = String::new();
    for (i, p) in problems.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&format!("{}:{}:{}: {}: {}", path.display(), p.line, p.column, p.key, p.message));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// File types

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    interfaces: FileInterfaces,
    daemon: Option<FileDaemon>,
    flows: Option<FileFlows>,
    announce: Option<FileAnnounce>,
    #[serde(rename = "service", default)]
    services: Vec<Spanned<FileService>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileInterfaces {
    ingress: Spanned<String>,
    egress: Spanned<String>,
    ingress_address: Option<Spanned<String>>,
    egress_address: Option<Spanned<String>>,
    /// A boolean (TOML checks the type); absent = true.
    kernel_drop: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDaemon {
    workers: Option<Spanned<i64>>,
    /// `"ADDR:PORT"`, or `""` to disable.
    metrics: Option<Spanned<String>>,
    config_check_secs: Option<Spanned<i64>>,
    busy_poll_us: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFlows {
    capacity: Option<Spanned<i64>>,
    tcp_timeout_secs: Option<Spanned<i64>>,
    tcp_fin_timeout_secs: Option<Spanned<i64>>,
    udp_timeout_secs: Option<Spanned<i64>>,
    fragment_timeout_secs: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAnnounce {
    table: Option<Spanned<i64>>,
    device: Option<Spanned<String>>,
    settle_secs: Option<Spanned<i64>>,
    interval_ms: Option<Spanned<i64>>,
    rise: Option<Spanned<i64>>,
    fall: Option<Spanned<i64>>,
    drain_secs: Option<Spanned<i64>>,
    state_dir: Option<Spanned<String>>,
    drain_file: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileService {
    name: Option<Spanned<String>>,
    vip: Spanned<String>,
    protocol: Protocol,
    port: Spanned<PortSpec>,
    flow_key: Option<Spanned<FlowKey>>,
    table_size: Option<Spanned<i64>>,
    algorithm: Option<Spanned<FileAlgorithm>>,
    ipvs_tab_index: Option<Spanned<i64>>,
    ipvs_flags: Option<Spanned<Vec<Spanned<String>>>>,
    when_all_down: Option<WhenAllDown>,
    health: Option<Spanned<FileHealth>>,
    #[serde(rename = "backend", default)]
    backends: Vec<Spanned<FileBackend>>,
}

/// `[service.health]` and `[service.backend.health]`: every key optional (a backend's table
/// overrides only the keys it gives).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileHealth {
    check: Option<Spanned<FileCheck>>,
    port: Option<Spanned<i64>>,
    interval_ms: Option<Spanned<i64>>,
    timeout_ms: Option<Spanned<i64>>,
    rise: Option<Spanned<i64>>,
    fall: Option<Spanned<i64>>,
    path: Option<Spanned<String>>,
    status: Option<Spanned<i64>>,
    host: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum FileCheck {
    None,
    Tcp,
    Http,
    Dsr,
}

type Span = std::ops::Range<usize>;

/// The keys of one `health` table after their own checks, with their spans for problems that
/// combine keys.
#[derive(Debug, Clone)]
struct HealthLayer {
    check: Option<(FileCheck, Span)>,
    port: Option<(u16, Span)>,
    interval_ms: Option<(u64, Span)>,
    timeout_ms: Option<(u64, Span)>,
    rise: Option<(u32, Span)>,
    fall: Option<(u32, Span)>,
    path: Option<(String, Span)>,
    status: Option<(u16, Span)>,
    host: Option<(String, Span)>,
}

impl HealthLayer {
    fn empty() -> HealthLayer {
        HealthLayer {
            check: None,
            port: None,
            interval_ms: None,
            timeout_ms: None,
            rise: None,
            fall: None,
            path: None,
            status: None,
            host: None,
        }
    }

    /// These keys, and `base`'s where this table does not give them.
    fn over(&self, base: &HealthLayer) -> HealthLayer {
        HealthLayer {
            check: self.check.clone().or_else(|| base.check.clone()),
            port: self.port.clone().or_else(|| base.port.clone()),
            interval_ms: self.interval_ms.clone().or_else(|| base.interval_ms.clone()),
            timeout_ms: self.timeout_ms.clone().or_else(|| base.timeout_ms.clone()),
            rise: self.rise.clone().or_else(|| base.rise.clone()),
            fall: self.fall.clone().or_else(|| base.fall.clone()),
            path: self.path.clone().or_else(|| base.path.clone()),
            status: self.status.clone().or_else(|| base.status.clone()),
            host: self.host.clone().or_else(|| base.host.clone()),
        }
    }
}

/// Bounds of `interval_ms`: at least 100 ms (a probe per backend ten times a second is plenty),
/// at most an hour.
pub const MIN_HEALTH_INTERVAL_MS: i64 = 100;
pub const MAX_HEALTH_INTERVAL_MS: i64 = 3_600_000;
/// Bounds of `timeout_ms` (and it may not exceed the interval).
pub const MIN_HEALTH_TIMEOUT_MS: i64 = 10;
pub const MAX_HEALTH_TIMEOUT_MS: i64 = 60_000;
/// Largest `rise` and `fall`.
pub const MAX_HEALTH_RISE_FALL: i64 = 100;
/// Longest HTTP `path`.
pub const MAX_HEALTH_TEXT: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
enum FileAlgorithm {
    #[serde(rename = "maglev")]
    Maglev,
    #[serde(rename = "ipvs-mh")]
    IpvsMh,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBackend {
    ip: Spanned<String>,
    port: Option<Spanned<i64>>,
    weight: Option<Spanned<i64>>,
    last_weight: Option<Spanned<i64>>,
    mac: Option<Spanned<String>>,
    health: Option<Spanned<FileHealth>>,
}

/// `port = 80` or `port = "all"`; range problems are reported by validation with a location.
#[derive(Debug, Clone, Copy)]
enum PortSpec {
    Number(i64),
    All,
}

impl<'de> Deserialize<'de> for PortSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = PortSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a port number 1..=65535 or the string \"all\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortSpec, E> {
                Ok(PortSpec::Number(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortSpec, E> {
                Ok(PortSpec::Number(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortSpec, E> {
                if v == "all" { Ok(PortSpec::All) } else { Err(E::invalid_value(de::Unexpected::Str(v), &self)) }
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------------------------
// Loading and validation

/// The largest configuration file accepted (a real one is a few KiB; thousands of backends fit).
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// Read and validate a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let bytes = read_file(path)?;
    let text = String::from_utf8(bytes).map_err(|_| ConfigError::Read {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"),
    })?;
    parse(&text, path)
}

/// The bytes of the configuration file, read safely for a daemon that must never stall: opened
/// without blocking (a FIFO at the path would otherwise block `open` until a writer appears),
/// accepted only if it is a regular file (after symlinks, so a Kubernetes ConfigMap mount works;
/// a device such as `/dev/zero` is refused) of at most [`MAX_CONFIG_BYTES`] (checked before and
/// while reading, so a file that grows cannot exhaust memory).
pub fn read_file(path: &Path) -> Result<Vec<u8>, ConfigError> {
    use std::io::Read as _;
    use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
    let err = |source: std::io::Error| ConfigError::Read { path: path.to_path_buf(), source };
    let invalid = |what: String| err(std::io::Error::new(std::io::ErrorKind::InvalidInput, what));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(err)?;
    let meta = file.metadata().map_err(err)?;
    let kind = meta.file_type();
    if !kind.is_file() {
        let what = if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else if kind.is_socket() {
            "a socket"
        } else if kind.is_dir() {
            "a directory"
        } else {
            "a special file"
        };
        return Err(invalid(format!("not a regular file ({what})")));
    }
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(invalid(format!("larger than {MAX_CONFIG_BYTES} bytes ({} bytes)", meta.len())));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_CONFIG_BYTES + 1).read_to_end(&mut bytes).map_err(err)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(invalid(format!("larger than {MAX_CONFIG_BYTES} bytes (it grew while being read)")));
    }
    Ok(bytes)
}

/// Parse and validate configuration text; `path` is used in messages only.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let file: FileConfig = toml::from_str(text).map_err(|e| {
        let (location, message) = toml_error_message(text, &e);
        ConfigError::Parse { path: path.to_path_buf(), location, message }
    })?;
    let mut v = Validator { text, problems: Vec::new() };
    let cfg = v.config(file);
    if v.problems.is_empty() {
        Ok(cfg)
    } else {
        Err(ConfigError::Invalid { path: path.to_path_buf(), problems: v.problems })
    }
}

/// toml's message, with the offending line quoted under it, and its location.
fn toml_error_message(text: &str, e: &toml::de::Error) -> (Option<(usize, usize)>, String) {
    let msg = e.message().trim_end();
    match e.span() {
        Some(span) => {
            let (line, col) = line_col(text, span.start);
            let snippet = text.lines().nth(line - 1).unwrap_or("").trim_end();
            (Some((line, col)), format!("{msg}\n    | {snippet}"))
        }
        None => (None, msg.to_string()),
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(before.chars().count(), |nl| before[nl + 1..].chars().count()) + 1;
    (line, col)
}

struct Validator<'t> {
    text: &'t str,
    problems: Vec<Problem>,
}

impl Validator<'_> {
    fn problem(&mut self, span: std::ops::Range<usize>, key: impl Into<String>, message: impl Into<String>) {
        let (line, column) = line_col(self.text, span.start);
        self.problems.push(Problem { line, column, key: key.into(), message: message.into() });
    }

    fn interface(&mut self, name: &Spanned<String>, key: &str) -> String {
        let n = name.get_ref();
        if n.is_empty() || n.len() > 15 || n.contains(['/', ' ', '\t', ':']) || n == "." || n == ".." {
            self.problem(
                name.span(),
                key,
                format!("`{n}` is not a valid interface name (1..=15 characters, no '/', ':' or spaces)"),
            );
        }
        n.clone()
    }

    fn ipv4(&mut self, s: &Spanned<String>, key: &str) -> Option<Ipv4Addr> {
        match self.ip(s, key, true)? {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        }
    }

    /// An address; with `v4_only`, an IPv6 one is reported as unsupported here.
    fn ip(&mut self, s: &Spanned<String>, key: &str, v4_only: bool) -> Option<IpAddr> {
        match s.get_ref().parse::<IpAddr>() {
            Ok(IpAddr::V6(_)) if v4_only => {
                let what = if key.ends_with(".vip") || key.contains(".backend[") {
                    "is an IPv6 address; only `ipvs-mh` services may be IPv6 (for table, lookup and import-ipvs), the forwarder is IPv4"
                } else {
                    "is an IPv6 address; an IPv4 address is needed here"
                };
                self.problem(s.span(), key, format!("`{}` {what}", s.get_ref()));
                None
            }
            Ok(ip) => Some(ip),
            Err(_) => {
                let what = if v4_only { "IPv4" } else { "IP" };
                self.problem(s.span(), key, format!("`{}` is not an {what} address", s.get_ref()));
                None
            }
        }
    }

    /// A weight-like integer in 0..=MAX_WEIGHT.
    fn weight(&mut self, w: &Spanned<i64>, key: String) -> u32 {
        let v = *w.get_ref();
        if (0..=MAX_WEIGHT as i64).contains(&v) {
            v as u32
        } else {
            self.problem(w.span(), key, format!("{v} is out of range 0..={MAX_WEIGHT} (0 drains the backend)"));
            0
        }
    }

    fn config(&mut self, file: FileConfig) -> Config {
        let ingress = self.interface(&file.interfaces.ingress, "interfaces.ingress");
        let egress = self.interface(&file.interfaces.egress, "interfaces.egress");
        let ingress_address =
            file.interfaces.ingress_address.as_ref().and_then(|a| self.ipv4(a, "interfaces.ingress_address"));
        let egress_address =
            file.interfaces.egress_address.as_ref().and_then(|a| self.ipv4(a, "interfaces.egress_address"));
        let daemon = file.daemon.as_ref().map_or_else(Daemon::default, |d| self.daemon(d));
        let flows = file.flows.as_ref().map_or_else(Flows::default, |f| self.flows(f));
        let announce = file.announce.as_ref().map(|a| self.announce(a));
        if file.services.is_empty() {
            self.problem(0..0, "service", "no [[service]] is configured; maglevd would forward nothing");
        }
        // Keep each service's index in the file: a service whose VIP is invalid is left out, and
        // later messages must still name the right `service[i]`.
        let services: Vec<(usize, Service)> =
            file.services.iter().enumerate().filter_map(|(i, s)| Some((i, self.service(i, s)?))).collect();
        self.cross_service(&file.services, &services);
        let services: Vec<Service> = services.into_iter().map(|(_, s)| s).collect();
        if let (Some(a), Some(span)) = (ingress_address, file.interfaces.ingress_address.as_ref())
            && services.iter().any(|s| s.vip == IpAddr::V4(a))
        {
            self.problem(
                span.span(),
                "interfaces.ingress_address",
                format!("{a} is a VIP; maglevd never answers ARP for a VIP"),
            );
        }
        let kernel_drop = file.interfaces.kernel_drop.unwrap_or(true);
        Config { ingress, egress, ingress_address, egress_address, kernel_drop, daemon, flows, announce, services }
    }

    fn flows(&mut self, f: &FileFlows) -> Flows {
        let mut out = Flows::default();
        if let Some(c) = &f.capacity {
            let (min, max) = (MIN_FLOW_CAPACITY as i64, flow::MAX_CAPACITY as i64);
            match *c.get_ref() {
                n if (min..=max).contains(&n) => out.capacity = n as usize,
                n => self.problem(
                    c.span(),
                    "flows.capacity",
                    format!(
                        "{n} is out of range {min}..={max} (flow entries across all workers, {} bytes each)",
                        flow::ENTRY_BYTES
                    ),
                ),
            }
        }
        let mut secs = |v: &Option<Spanned<i64>>, key: &str, max: i64, out: &mut std::time::Duration| {
            if let Some(v) = v {
                match *v.get_ref() {
                    n if (1..=max).contains(&n) => *out = std::time::Duration::from_secs(n as u64),
                    n => self.problem(
                        v.span(),
                        format!("flows.{key}"),
                        format!("{n} is out of range 1..={max} (seconds)"),
                    ),
                }
            }
        };
        secs(&f.tcp_timeout_secs, "tcp_timeout_secs", MAX_FLOW_TIMEOUT_SECS, &mut out.timeouts.tcp);
        secs(&f.tcp_fin_timeout_secs, "tcp_fin_timeout_secs", MAX_FIN_TIMEOUT_SECS, &mut out.timeouts.tcp_fin);
        secs(&f.udp_timeout_secs, "udp_timeout_secs", MAX_FLOW_TIMEOUT_SECS, &mut out.timeouts.udp);
        secs(&f.fragment_timeout_secs, "fragment_timeout_secs", MAX_FRAGMENT_TIMEOUT_SECS, &mut out.fragment_timeout);
        out
    }

    fn announce(&mut self, a: &FileAnnounce) -> Announce {
        let mut out = Announce::default();
        let key = |k: &str| format!("announce.{k}");
        if let Some(t) = &a.table {
            // 0 is "unspecified"; 253..=255 are the kernel's default, main and local tables.
            match *t.get_ref() {
                n @ (1..=252 | 256..=0xffff_fffe) => out.table = Some(n as u32),
                n => self.problem(
                    t.span(),
                    key("table"),
                    format!(
                        "{n} is not a free routing table: want 1..=252 or 256..=4294967294 (not default 253, \
                         main 254, local 255); a table no ip rule consults"
                    ),
                ),
            }
        }
        if let Some(d) = &a.device {
            let name = self.interface(d, "announce.device");
            out.device = name;
        }
        if let Some(v) = &a.settle_secs
            && let Some(n) = self.int_in(v, key("settle_secs"), 0..=3600, " (seconds)")
        {
            out.settle = std::time::Duration::from_secs(n as u64);
        }
        if let Some(v) = &a.interval_ms
            && let Some(n) = self.int_in(v, key("interval_ms"), 100..=60_000, " (milliseconds)")
        {
            out.interval = std::time::Duration::from_millis(n as u64);
        }
        if let Some(v) = &a.rise
            && let Some(n) = self.int_in(v, key("rise"), 1..=100, " (evaluations)")
        {
            out.rise = n as u32;
        }
        if let Some(v) = &a.fall
            && let Some(n) = self.int_in(v, key("fall"), 1..=100, " (evaluations)")
        {
            out.fall = n as u32;
        }
        if let Some(v) = &a.drain_secs
            && let Some(n) = self.int_in(v, key("drain_secs"), 0..=3600, " (seconds)")
        {
            out.drain = std::time::Duration::from_secs(n as u64);
        }
        let mut path = |v: &Option<Spanned<String>>, k: &str| -> Option<std::path::PathBuf> {
            let v = v.as_ref()?;
            let p = std::path::PathBuf::from(v.get_ref().trim());
            if p.is_absolute() {
                Some(p)
            } else {
                self.problem(v.span(), key(k), format!("`{}` is not an absolute path", v.get_ref()));
                None
            }
        };
        out.state_dir = path(&a.state_dir, "state_dir");
        out.drain_file = path(&a.drain_file, "drain_file");
        out
    }

    fn daemon(&mut self, d: &FileDaemon) -> Daemon {
        let mut out = Daemon::default();
        if let Some(w) = &d.workers {
            match *w.get_ref() {
                0 => out.workers = None,
                n if (1..=MAX_WORKERS as i64).contains(&n) => out.workers = Some(n as usize),
                n => self.problem(
                    w.span(),
                    "daemon.workers",
                    format!("{n} is out of range 0..={MAX_WORKERS} (0 = one per CPU)"),
                ),
            }
        }
        if let Some(c) = &d.config_check_secs {
            match *c.get_ref() {
                0 => out.config_check = None,
                n if (1..=3600).contains(&n) => out.config_check = Some(std::time::Duration::from_secs(n as u64)),
                n => self.problem(
                    c.span(),
                    "daemon.config_check_secs",
                    format!("{n} is out of range 0..=3600 (0 = reload on SIGHUP only)"),
                ),
            }
        }
        if let Some(v) = &d.busy_poll_us
            && let Some(n) = self.int_in(v, "daemon.busy_poll_us".into(), 0..=1_000_000, " (microseconds; 0 = off)")
        {
            out.busy_poll = std::time::Duration::from_micros(n as u64);
        }
        if let Some(m) = &d.metrics {
            let text = m.get_ref().trim();
            if text.is_empty() {
                out.metrics = None;
            } else {
                match text.parse::<std::net::SocketAddr>() {
                    Ok(a) => out.metrics = Some(a),
                    Err(_) => self.problem(
                        m.span(),
                        "daemon.metrics",
                        format!("`{text}` is not ADDRESS:PORT (or \"\" to disable)"),
                    ),
                }
            }
        }
        out
    }

    fn service(&mut self, i: usize, spanned: &Spanned<FileService>) -> Option<Service> {
        let s = spanned.get_ref();
        let key = format!("service[{i}]");
        let mh = matches!(s.algorithm.as_ref().map(|a| *a.get_ref()), Some(FileAlgorithm::IpvsMh));
        // Keys that belong to the other algorithm are mistakes, not silently ignored settings.
        if mh {
            if let Some(t) = &s.table_size {
                self.problem(
                    t.span(),
                    format!("{key}.table_size"),
                    "not used with algorithm = \"ipvs-mh\": the kernel's table size follows ipvs_tab_index",
                );
            }
            if let Some(k) = &s.flow_key {
                self.problem(k.span(), format!("{key}.flow_key"), "not used with algorithm = \"ipvs-mh\": it hashes the client address, and its port with ipvs_flags = [\"mh-port\"]");
            }
        } else {
            if let Some(t) = &s.ipvs_tab_index {
                self.problem(t.span(), format!("{key}.ipvs_tab_index"), "only used with algorithm = \"ipvs-mh\"");
            }
            if let Some(f) = &s.ipvs_flags {
                self.problem(f.span(), format!("{key}.ipvs_flags"), "only used with algorithm = \"ipvs-mh\"");
            }
            for (j, b) in s.backends.iter().enumerate() {
                let b = b.get_ref();
                if let Some(p) = &b.port {
                    self.problem(p.span(), format!("{key}.backend[{j}].port"), "only used with algorithm = \"ipvs-mh\" (maglevd forwards to the VIP's own port: direct server return)");
                }
                if let Some(w) = &b.last_weight {
                    self.problem(
                        w.span(),
                        format!("{key}.backend[{j}].last_weight"),
                        "only used with algorithm = \"ipvs-mh\"",
                    );
                }
            }
        }
        let vip = self.ip(&s.vip, &format!("{key}.vip"), !mh);
        if let Some(vip) = vip
            && (vip.is_unspecified()
                || vip.is_multicast()
                || vip.is_loopback()
                || vip == IpAddr::V4(Ipv4Addr::BROADCAST))
        {
            self.problem(
                s.vip.span(),
                format!("{key}.vip"),
                format!("`{vip}` cannot be a VIP (unspecified, loopback, multicast or broadcast)"),
            );
        }
        let port = match *s.port.get_ref() {
            PortSpec::All if mh => {
                self.problem(
                    s.port.span(),
                    format!("{key}.port"),
                    "an ipvs-mh service has one port (IPVS services are per port)",
                );
                None
            }
            PortSpec::All => None,
            PortSpec::Number(p) if (1..=65535).contains(&p) => Some(p as u16),
            PortSpec::Number(p) => {
                self.problem(
                    s.port.span(),
                    format!("{key}.port"),
                    format!("{p} is out of range 1..=65535 (or \"all\")"),
                );
                None
            }
        };
        let (algorithm, table_size) =
            if mh { self.ipvs_params(s, &key) } else { (Algorithm::Maglev, self.table_size(s, &key)) };
        let min = s.backends.len() as u64 * MIN_SLOTS_PER_BACKEND;
        if !mh && (table_size as u64) < min {
            let span = s.table_size.as_ref().map_or(spanned.span(), |t| t.span());
            self.problem(span, format!("{key}.table_size"), format!(
                "{table_size} is too small for {} backends: at least {MIN_SLOTS_PER_BACKEND} slots per backend ({min}) are needed",
                s.backends.len()
            ));
        }
        if mh && s.backends.len() as u64 > table_size as u64 {
            self.problem(
                spanned.span(),
                format!("{key}.backend"),
                format!(
                    "{} backends are more than the {table_size} slots: the kernel refuses such a table",
                    s.backends.len()
                ),
            );
        }

        let ipv6 = vip.is_some_and(|v| v.is_ipv6());
        let service_layer = s.health.as_ref().map_or_else(HealthLayer::empty, |h| self.health_layer(h, &key));
        let health =
            self.health_check(&service_layer, &service_layer, &format!("{key}.health"), port, s.protocol, ipv6);

        let mut backends = Vec::new();
        // A backend's identity: its IP in a Maglev service; its IP and destination port in an
        // ipvs-mh service, as in IPVS (`-r 10.0.2.1:8080` and `-r 10.0.2.1:8081` are two dests).
        let mut seen: HashMap<(IpAddr, Option<u16>), usize> = HashMap::new();
        // ipvs-mh: the static MAC given for each IP, which the IP's backends must share.
        let mut macs: HashMap<IpAddr, (MacAddr, usize)> = HashMap::new();
        for (j, b) in s.backends.iter().enumerate() {
            let bkey = format!("{key}.backend[{j}]");
            let b = b.get_ref();
            let ip = self.ip(&b.ip, &format!("{bkey}.ip"), !mh);
            if let Some(ip) = ip {
                if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() || ip == IpAddr::V4(Ipv4Addr::BROADCAST)
                {
                    self.problem(b.ip.span(), format!("{bkey}.ip"), format!("`{ip}` cannot be a backend address"));
                }
                if let Some(v) = vip
                    && v.is_ipv4() != ip.is_ipv4()
                {
                    self.problem(
                        b.ip.span(),
                        format!("{bkey}.ip"),
                        format!(
                            "{ip} is not of the VIP's address family (direct server return keeps the packet as it is)"
                        ),
                    );
                }
            }
            let weight = b.weight.as_ref().map_or(1, |w| self.weight(w, format!("{bkey}.weight")));
            let last_weight = b.last_weight.as_ref().map_or(weight, |w| self.weight(w, format!("{bkey}.last_weight")));
            let dest_port = match &b.port {
                Some(p) if (0..=65535).contains(p.get_ref()) => *p.get_ref() as u16,
                Some(p) => {
                    self.problem(
                        p.span(),
                        format!("{bkey}.port"),
                        format!("{} is out of range 0..=65535", p.get_ref()),
                    );
                    0
                }
                None => port.unwrap_or(0),
            };
            let mac = match &b.mac {
                None => None,
                Some(m) => match m.get_ref().parse::<MacAddr>() {
                    Ok(mac) if mac.is_unicast() => Some(mac),
                    Ok(mac) => {
                        self.problem(m.span(), format!("{bkey}.mac"), format!("{mac} is not a unicast MAC address"));
                        None
                    }
                    Err(e) => {
                        self.problem(m.span(), format!("{bkey}.mac"), e.to_string());
                        None
                    }
                },
            };
            if let Some(ip) = ip {
                if let Some(first) = seen.insert((ip, mh.then_some(dest_port)), j) {
                    let (span, key, message) = if mh {
                        let endpoint = std::net::SocketAddr::new(ip, dest_port);
                        let span = b.port.as_ref().map_or(b.ip.span(), |p| p.span());
                        (span, "port", format!("{endpoint} is already backend[{first}] of this service"))
                    } else {
                        (b.ip.span(), "ip", format!("{ip} is already backend[{first}] of this service"))
                    };
                    self.problem(span, format!("{bkey}.{key}"), message);
                }
                if let (true, Some(mac), Some(m)) = (mh, mac, &b.mac) {
                    match macs.get(&ip) {
                        Some(&(other, first)) if other != mac => self.problem(
                            m.span(),
                            format!("{bkey}.mac"),
                            format!(
                                "{ip} already has mac {other} in backend[{first}]; backends on one IP share its MAC"
                            ),
                        ),
                        Some(_) => {}
                        None => {
                            macs.insert(ip, (mac, j));
                        }
                    }
                }
                let health = match &b.health {
                    None => health.clone(),
                    Some(h) => {
                        let own = self.health_layer(h, &bkey);
                        let merged = own.over(&service_layer);
                        self.health_check(&own, &merged, &format!("{bkey}.health"), port, s.protocol, ipv6)
                    }
                };
                backends.push(Backend { ip, port: dest_port, weight, last_weight, mac, health });
            }
        }
        let vip = vip?;
        let name = match &s.name {
            Some(n) if n.get_ref().trim().is_empty() => {
                self.problem(n.span(), format!("{key}.name"), "the name is empty");
                String::new()
            }
            Some(n) => n.get_ref().clone(),
            None => endpoint(vip, port, s.protocol),
        };
        let flow_key = s.flow_key.as_ref().map_or(FlowKey::default(), |k| *k.get_ref());
        let when_all_down = s.when_all_down.unwrap_or_default();
        Some(Service {
            name,
            vip,
            protocol: s.protocol,
            port,
            flow_key,
            table_size,
            algorithm,
            backends,
            health,
            when_all_down,
        })
    }

    /// An integer key in `range`, or a problem naming the range (`hint` explains it).
    fn int_in(
        &mut self,
        v: &Spanned<i64>,
        key: String,
        range: std::ops::RangeInclusive<i64>,
        hint: &str,
    ) -> Option<i64> {
        let n = *v.get_ref();
        if range.contains(&n) {
            Some(n)
        } else {
            self.problem(v.span(), key, format!("{n} is out of range {}..={}{hint}", range.start(), range.end()));
            None
        }
    }

    /// The keys of one `health` table, each checked on its own; `key` is the table's owner
    /// (`service[0]` or `service[0].backend[1]`).
    fn health_layer(&mut self, h: &Spanned<FileHealth>, key: &str) -> HealthLayer {
        let f = h.get_ref();
        let key = format!("{key}.health");
        let mut l = HealthLayer::empty();
        l.check = f.check.as_ref().map(|c| (*c.get_ref(), c.span()));
        let mut int = |v: &Option<Spanned<i64>>, name: &str, range: std::ops::RangeInclusive<i64>, hint: &str| {
            v.as_ref().and_then(|v| Some((self.int_in(v, format!("{key}.{name}"), range, hint)?, v.span())))
        };
        l.port = int(&f.port, "port", 1..=65535, "").map(|(v, sp)| (v as u16, sp));
        l.interval_ms = int(&f.interval_ms, "interval_ms", MIN_HEALTH_INTERVAL_MS..=MAX_HEALTH_INTERVAL_MS, "")
            .map(|(v, sp)| (v as u64, sp));
        l.timeout_ms = int(&f.timeout_ms, "timeout_ms", MIN_HEALTH_TIMEOUT_MS..=MAX_HEALTH_TIMEOUT_MS, "")
            .map(|(v, sp)| (v as u64, sp));
        l.rise =
            int(&f.rise, "rise", 1..=MAX_HEALTH_RISE_FALL, " (consecutive successes)").map(|(v, sp)| (v as u32, sp));
        l.fall =
            int(&f.fall, "fall", 1..=MAX_HEALTH_RISE_FALL, " (consecutive failures)").map(|(v, sp)| (v as u32, sp));
        l.status = int(&f.status, "status", 100..=599, " (an HTTP status code)").map(|(v, sp)| (v as u16, sp));
        if let Some(p) = &f.path {
            let v = p.get_ref();
            if !v.starts_with('/') || v.len() > MAX_HEALTH_TEXT || !v.bytes().all(|c| c.is_ascii_graphic()) {
                self.problem(
                    p.span(),
                    format!("{key}.path"),
                    format!(
                        "`{}` is not a request path: it must start with '/' and have at most {MAX_HEALTH_TEXT} \
                         printable ASCII characters without spaces (percent-encode others)",
                        v.escape_debug()
                    ),
                );
            } else {
                l.path = Some((v.clone(), p.span()));
            }
        }
        if let Some(h) = &f.host {
            let v = h.get_ref();
            if v.is_empty() || v.len() > 255 || !v.bytes().all(|c| c.is_ascii_graphic()) {
                self.problem(
                    h.span(),
                    format!("{key}.host"),
                    format!(
                        "`{}` is not a Host header value (1..=255 printable ASCII characters, no spaces)",
                        v.escape_debug()
                    ),
                );
            } else {
                l.host = Some((v.clone(), h.span()));
            }
        }
        l
    }

    /// The resolved check of `merged` (a table over the service's); problems that combine keys
    /// are reported only when `own` (the table being checked) gives one of them, so a service's
    /// mistake is reported once, not again for each backend.
    fn health_check(
        &mut self,
        own: &HealthLayer,
        merged: &HealthLayer,
        key: &str,
        service_port: Option<u16>,
        protocol: Protocol,
        ipv6: bool,
    ) -> HealthCheck {
        let d = HealthCheck::default();
        let interval = merged.interval_ms.as_ref().map_or(d.interval, |(v, _)| Duration::from_millis(*v));
        // The default timeout shrinks with a shorter interval, so `interval_ms` alone is valid.
        let timeout = merged.timeout_ms.as_ref().map_or(d.timeout.min(interval), |(v, _)| Duration::from_millis(*v));
        if timeout > interval
            && let Some(span) = own.timeout_ms.as_ref().or(own.interval_ms.as_ref()).map(|(_, sp)| sp.clone())
        {
            self.problem(
                span,
                format!("{key}.timeout_ms"),
                format!(
                    "timeout {} ms is longer than the interval {} ms: a probe must end before the next starts",
                    timeout.as_millis(),
                    interval.as_millis()
                ),
            );
        }
        let check = merged.check.as_ref().map_or(FileCheck::None, |(c, _)| *c);
        for (given, name) in [
            (own.path.as_ref().map(|(_, sp)| sp), "path"),
            (own.status.as_ref().map(|(_, sp)| sp), "status"),
            (own.host.as_ref().map(|(_, sp)| sp), "host"),
        ] {
            if let Some(span) = given
                && check != FileCheck::Http
            {
                self.problem(span.clone(), format!("{key}.{name}"), "only used with check = \"http\"");
            }
        }
        let kind = match check {
            FileCheck::None => CheckKind::None,
            FileCheck::Tcp => CheckKind::Tcp,
            FileCheck::Dsr => CheckKind::Dsr,
            FileCheck::Http => CheckKind::Http {
                path: merged.path.as_ref().map_or_else(|| DEFAULT_HEALTH_PATH.to_string(), |(v, _)| v.clone()),
                status: merged.status.as_ref().map_or(DEFAULT_HEALTH_STATUS, |(v, _)| *v),
                host: merged.host.as_ref().map(|(v, _)| v.clone()),
            },
        };
        let own_check = own.check.as_ref().map(|(_, sp)| sp.clone());
        if check == FileCheck::Dsr
            && ipv6
            && let Some(span) = own_check.clone()
        {
            self.problem(span, format!("{key}.check"), "the dsr check is IPv4 only (the forwarder is IPv4)");
        }
        let port = match (check, merged.port.as_ref()) {
            (FileCheck::None, _) => 0,
            (_, Some((p, _))) => *p,
            (_, None) => match (service_port, protocol) {
                (Some(p), Protocol::Tcp) => p,
                (p, _) => {
                    if let Some(span) = own_check {
                        let why = if p.is_none() {
                            "the service has port = \"all\""
                        } else {
                            "the service is udp and the check is over tcp"
                        };
                        self.problem(
                            span,
                            format!("{key}.port"),
                            format!("{why}: give the TCP port to check (`port = N` in this table)"),
                        );
                    }
                    0
                }
            },
        };
        HealthCheck {
            kind,
            port,
            interval,
            timeout,
            rise: merged.rise.as_ref().map_or(d.rise, |(v, _)| *v),
            fall: merged.fall.as_ref().map_or(d.fall, |(v, _)| *v),
        }
    }

    fn table_size(&mut self, s: &FileService, key: &str) -> u32 {
        let Some(t) = &s.table_size else { return DEFAULT_TABLE_SIZE };
        let v = *t.get_ref();
        if !(3..=MAX_TABLE_SIZE as i64).contains(&v) {
            self.problem(t.span(), format!("{key}.table_size"), format!("{v} is out of range 3..={MAX_TABLE_SIZE}"));
            DEFAULT_TABLE_SIZE
        } else if !maglev::is_prime(v as u32) {
            self.problem(
                t.span(),
                format!("{key}.table_size"),
                format!("{v} is not a prime (Maglev needs a prime table size; e.g. 65537, 131071, 262139)"),
            );
            DEFAULT_TABLE_SIZE
        } else {
            v as u32
        }
    }

    /// `ipvs_tab_index` and `ipvs_flags` of an `ipvs-mh` service, and the table size they imply.
    fn ipvs_params(&mut self, s: &FileService, key: &str) -> (Algorithm, u32) {
        let tab_index = match &s.ipvs_tab_index {
            None => ipvs_mh::DEFAULT_TAB_INDEX,
            Some(t) => match u8::try_from(*t.get_ref()) {
                Ok(v) if (ipvs_mh::MIN_TAB_INDEX..=ipvs_mh::MAX_TAB_INDEX).contains(&v) => v,
                _ => {
                    self.problem(
                        t.span(),
                        format!("{key}.ipvs_tab_index"),
                        format!(
                            "{} is out of range {}..={} (CONFIG_IP_VS_MH_TAB_INDEX; the kernel default is 12)",
                            t.get_ref(),
                            ipvs_mh::MIN_TAB_INDEX,
                            ipvs_mh::MAX_TAB_INDEX
                        ),
                    );
                    ipvs_mh::DEFAULT_TAB_INDEX
                }
            },
        };
        let mut flags = MhFlags::default();
        for f in s.ipvs_flags.iter().flat_map(|f| f.get_ref().iter()) {
            match f.get_ref().as_str() {
                "mh-port" => flags.mh_port = true,
                "mh-fallback" => flags.mh_fallback = true,
                other => self.problem(
                    f.span(),
                    format!("{key}.ipvs_flags"),
                    format!("unknown flag `{other}` (known: \"mh-port\", \"mh-fallback\")"),
                ),
            }
        }
        let size = ipvs_mh::table_size(tab_index).unwrap_or(4093);
        (Algorithm::IpvsMh { tab_index, flags }, size)
    }

    /// Checks across services: unique names, no two services claiming the same VIP/protocol/port,
    /// and no backend that is also a VIP.
    fn cross_service(&mut self, files: &[Spanned<FileService>], services: &[(usize, Service)]) {
        let mut names: BTreeMap<&str, usize> = BTreeMap::new();
        // (VIP, protocol) → the (port, file index) of every service claiming it so far.
        type Claims = BTreeMap<(IpAddr, Protocol), Vec<(Option<u16>, usize)>>;
        let mut claims = Claims::new();
        let mut slots = 0u64;
        let mut over = false;
        for (i, s) in services {
            slots += u64::from(s.table_size);
            if slots > MAX_TOTAL_SLOTS && !over {
                over = true;
                let file = files[*i].get_ref();
                let span = file.table_size.as_ref().map_or(file.vip.span(), |t| t.span());
                self.problem(
                    span,
                    format!("service[{i}].table_size"),
                    format!(
                        "all tables together would exceed {MAX_TOTAL_SLOTS} slots ({} MiB; this service brings \
                         the total to {slots}): use smaller tables (the default is {DEFAULT_TABLE_SIZE}) or \
                         fewer services",
                        (MAX_TOTAL_SLOTS * 4) >> 20
                    ),
                );
            }
            let file = files[*i].get_ref();
            let span = file.vip.span();
            if let Some(first) = names.insert(&s.name, *i) {
                let span = file.name.as_ref().map_or(span.clone(), |n| n.span());
                self.problem(
                    span,
                    format!("service[{i}].name"),
                    format!("`{}` is already the name of service[{first}]", s.name),
                );
            }
            let entry = claims.entry((s.vip, s.protocol)).or_default();
            for &(port, other) in entry.iter() {
                if port == s.port || port.is_none() || s.port.is_none() {
                    let what = if port == s.port {
                        "the same VIP, protocol and port as"
                    } else {
                        "overlapping ports (\"all\") with"
                    };
                    self.problem(
                        span.clone(),
                        format!("service[{i}]"),
                        format!("{} has {what} service[{other}]", s.endpoint()),
                    );
                }
            }
            entry.push((s.port, *i));
            for (j, b) in s.backends.iter().enumerate() {
                if services.iter().any(|(_, o)| o.vip == b.ip) {
                    let span = file.backends.get(j).map_or(span.clone(), |f| f.get_ref().ip.span());
                    self.problem(
                        span,
                        format!("service[{i}].backend[{j}].ip"),
                        format!("{} is a VIP; a backend must be a real address", b.ip),
                    );
                }
            }
        }
    }
}

/// Warnings about a valid configuration that still deserves attention (printed by `check`).
pub fn warnings(cfg: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for s in &cfg.services {
        let n = s.backends.len() as u64;
        if s.algorithm == Algorithm::Maglev && (s.table_size as u64) < 100 * n {
            out.push(format!(
                "service {}: table_size {} gives {} slots per backend; the Maglev paper recommends at least 100 (table_size ≥ {}) for even balance",
                s.name, s.table_size, s.table_size as u64 / n.max(1), 100 * n
            ));
        }
        if s.backends.is_empty() {
            out.push(format!(
                "service {}: no [[service.backend]]: all its traffic will be dropped (no_backend)",
                s.name
            ));
        } else if s.backends.iter().all(|b| b.weight == 0) {
            out.push(format!("service {}: every backend has weight 0: all its traffic will be dropped", s.name));
        }
    }
    out
}

#[cfg(test)]
mod tests;
