//! `/metrics` (Prometheus text format 0.0.4) and `/healthz` over HTTP/1.0.
//!
//! # Serving
//! One thread serves every connection over non-blocking sockets, woken by readiness events from
//! `mio` (a thin, safe layer over epoll: no futures, no async runtime). Each connection lives at
//! most [`CONNECTION_DEADLINE`], from accept to its last byte written, whatever its client does,
//! and at most [`MAX_CONNECTIONS`] are open at once: one more is closed as soon as it is accepted.
//! Both closings are counted (`maglevd_http_connections_{timed_out,refused}_total`). A client that
//! trickles its request or never reads the answer therefore costs one slot for two seconds, never
//! the endpoint, which matters because `/healthz` and `/metrics` are the Kubernetes probes' targets
//! and the port is reachable from the pod network.
//!
//! Why this shape: std has no readiness API, and `poll(2)` through `libc` would need `unsafe`, which
//! this crate keeps in `io::sys` (mio is the well-kept safe wrapper). A thread per connection would
//! put up to [`MAX_CONNECTIONS`] threads in the forwarder; a fixed pool of threads doing blocking
//! I/O lets as many slow clients as there are threads stall it. Here the memory is bounded
//! ([`MAX_CONNECTIONS`] × at most [`MAX_REQUEST`] bytes of request plus one answer) and the accept
//! loop never waits on a client. The thread wakes at least every 100 ms to see the daemon's stop
//! flag, and returns when it is set.
//!
//! A request is answered once its header is complete (an empty line), or at end of input after
//! its request line; only its request line is looked at.
//!
//! # Exposition
//! `prometheus-client`'s text encoder for the 0.0.4 format (the format and names maglevd has always
//! served, so the `_total` names and dashboards stay as they are): it escapes label values (service
//! names are free text), writes HELP and TYPE for every family and each family in one block.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use tracing::{error, warn};

use super::Shared;
use crate::metrics;

/// Most connections open at once; one more is closed when accepted (and counted).
pub const MAX_CONNECTIONS: usize = 256;
/// How long a connection may stay open, from accept to the last byte of its answer.
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(2);
/// Longest request header read; a longer one is answered 431.
pub const MAX_REQUEST: usize = 8 * 1024;
/// Longest sleep before the stop flag is looked at again.
const STOP_CHECK: Duration = Duration::from_millis(100);
const LISTENER: Token = Token(usize::MAX);

/// Connections the endpoint closed on its own.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionStats {
    /// Closed when accepted: [`MAX_CONNECTIONS`] were open.
    pub refused: u64,
    /// Closed at [`CONNECTION_DEADLINE`] before the answer was written.
    pub timed_out: u64,
}

/// Serve until `shared.stop` is set.
pub fn serve(listener: TcpListener, shared: &Shared) {
    if let Err(e) = Server::new(listener).and_then(|mut s| s.run(shared)) {
        error!(error = %e, "the metrics endpoint stopped");
    }
}

struct Server {
    poll: Poll,
    listener: mio::net::TcpListener,
    /// Slot `i` is the connection of `Token(i)`.
    conns: Vec<Option<Conn>>,
    open: usize,
    stats: ConnectionStats,
    last_accept_warning: Option<Instant>,
}

struct Conn {
    stream: TcpStream,
    deadline: Instant,
    request: Vec<u8>,
    /// The peer is on a loopback address (flow listings are served to those only).
    loopback: bool,
    /// The answer and how much of it is written, once the request is complete.
    answer: Option<(Vec<u8>, usize)>,
}

impl Server {
    fn new(listener: TcpListener) -> io::Result<Server> {
        listener.set_nonblocking(true)?;
        let mut listener = mio::net::TcpListener::from_std(listener);
        let poll = Poll::new()?;
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        Ok(Server {
            poll,
            listener,
            conns: (0..MAX_CONNECTIONS).map(|_| None).collect(),
            open: 0,
            stats: ConnectionStats::default(),
            last_accept_warning: None,
        })
    }

    fn run(&mut self, shared: &Shared) -> io::Result<()> {
        let mut events = Events::with_capacity(MAX_CONNECTIONS);
        // Readiness is edge-triggered: accept until WouldBlock, and after a failed accept try
        // again at the next wake-up rather than wait for a new connection.
        let mut accept_pending = true;
        while !shared.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            let wait = self
                .conns
                .iter()
                .flatten()
                .map(|c| c.deadline.saturating_duration_since(now))
                .fold(STOP_CHECK, Duration::min);
            match self.poll.poll(&mut events, Some(wait)) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => accept_pending = true,
                    Token(slot) => self.drive(slot, shared),
                }
            }
            if accept_pending {
                accept_pending = !self.accept_all();
            }
            self.expire(Instant::now());
        }
        Ok(())
    }

    /// Accept every queued connection; false if accepting failed (e.g. out of descriptors).
    fn accept_all(&mut self) -> bool {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => self.admit(stream),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(e) if matches!(e.kind(), ErrorKind::Interrupted | ErrorKind::ConnectionAborted) => {}
                Err(e) => {
                    if self.last_accept_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                        warn!(error = %e, "metrics endpoint: accept failed");
                        self.last_accept_warning = Some(Instant::now());
                    }
                    return false;
                }
            }
        }
    }

    fn admit(&mut self, mut stream: TcpStream) {
        let free = if self.open < MAX_CONNECTIONS { self.conns.iter().position(Option::is_none) } else { None };
        let Some(slot) = free else {
            // Closed at once: the client sees the end of input (a reset if it had sent data).
            self.stats.refused += 1;
            return;
        };
        if self.poll.registry().register(&mut stream, Token(slot), Interest::READABLE | Interest::WRITABLE).is_err() {
            return;
        }
        let deadline = Instant::now() + CONNECTION_DEADLINE;
        let loopback = stream.peer_addr().is_ok_and(|a| a.ip().is_loopback());
        self.conns[slot] = Some(Conn { stream, deadline, request: Vec::new(), loopback, answer: None });
        self.open += 1;
    }

    /// Move connection `slot` on after a readiness event; close it when it is done or broken.
    fn drive(&mut self, slot: usize, shared: &Shared) {
        let stats = self.stats;
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else { return };
        if conn.step(shared, stats).unwrap_or(true) {
            self.close(slot);
        }
    }

    /// Close the connections past their deadline.
    fn expire(&mut self, now: Instant) {
        for slot in 0..self.conns.len() {
            if self.conns[slot].as_ref().is_some_and(|c| c.deadline <= now) {
                self.stats.timed_out += 1;
                self.close(slot);
            }
        }
    }

    fn close(&mut self, slot: usize) {
        if let Some(mut conn) = self.conns.get_mut(slot).and_then(Option::take) {
            let _ = self.poll.registry().deregister(&mut conn.stream);
            self.open -= 1;
        }
    }
}

impl Conn {
    /// Read what has arrived, answer once the request is complete, write what the socket takes.
    /// True when the connection is finished.
    fn step(&mut self, shared: &Shared, stats: ConnectionStats) -> io::Result<bool> {
        if self.answer.is_none() {
            let mut buf = [0u8; 1024];
            let mut eof = false;
            while self.request.len() < MAX_REQUEST {
                match self.stream.read(&mut buf) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => {
                        let room = MAX_REQUEST - self.request.len();
                        self.request.extend_from_slice(&buf[..n.min(room)]);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            let answer = match request(&self.request, eof) {
                Request::Line(line) => answer(Some(line), shared, stats, self.loopback),
                Request::TooLarge => answer(None, shared, stats, self.loopback),
                // The client gave up before finishing its request.
                Request::Incomplete if eof => return Ok(true),
                Request::Incomplete => return Ok(false),
            };
            self.answer = Some((answer, 0));
        }
        let Some((out, sent)) = &mut self.answer else { return Ok(false) };
        while *sent < out.len() {
            match self.stream.write(&out[*sent..]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => *sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let _ = self.stream.shutdown(Shutdown::Write);
        Ok(true)
    }
}

/// How far a request has come.
#[derive(Debug, PartialEq, Eq)]
enum Request<'a> {
    /// Its header goes on.
    Incomplete,
    /// [`MAX_REQUEST`] bytes and its header goes on.
    TooLarge,
    /// Complete (header ended by an empty line, or input ended after the request line): its
    /// request line.
    Line(&'a str),
}

fn request(buf: &[u8], eof: bool) -> Request<'_> {
    let header_done = buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n");
    if header_done || (eof && buf.contains(&b'\n')) {
        let line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
        Request::Line(std::str::from_utf8(line).unwrap_or("").trim_end_matches('\r'))
    } else if buf.len() >= MAX_REQUEST {
        Request::TooLarge
    } else {
        Request::Incomplete
    }
}

/// The whole HTTP/1.0 answer to a request line (`None`: the request was too large).
fn answer(line: Option<&str>, shared: &Shared, stats: ConnectionStats, loopback: bool) -> Vec<u8> {
    let text = "text/plain; charset=utf-8";
    let (status, content_type, body) = match line {
        None => ("431 Request Header Fields Too Large", text, format!("request header over {MAX_REQUEST} bytes\n")),
        Some(line) => {
            let mut parts = line.split_whitespace();
            let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            let json = "application/json";
            match (method, path) {
                ("GET", p) if p.starts_with("/ready/") => {
                    let (status, body) = match p["/ready/".len()..].parse::<std::net::Ipv4Addr>() {
                        Ok(vip) => match shared.vip_readiness(vip, std::time::Instant::now()) {
                            Some(r) => probe(r),
                            None => ("404 Not Found", format!("{vip} is not a VIP of the running configuration\n")),
                        },
                        Err(_) => ("400 Bad Request", "want /ready/VIP with an IPv4 VIP\n".to_string()),
                    };
                    (status, text, body)
                }
                ("GET", "/status") => match serde_json::to_string(&super::status::collect(shared)) {
                    Ok(body) => ("200 OK", json, body),
                    Err(e) => ("500 Internal Server Error", text, format!("{e}\n")),
                },
                ("GET", "/status/flows") if !loopback => {
                    ("403 Forbidden", text, "flows are listed to local clients only (they name clients)\n".to_string())
                }
                ("GET", "/status/flows") => match super::status::flows(shared, query) {
                    Ok(list) => match serde_json::to_string(&list) {
                        Ok(body) => ("200 OK", json, body),
                        Err(e) => ("500 Internal Server Error", text, format!("{e}\n")),
                    },
                    Err((status, why)) => (status, text, why),
                },
                ("GET", "/metrics") => ("200 OK", metrics::CONTENT_TYPE, render(shared, stats)),
                ("GET", "/live") => {
                    let (status, body) = probe(shared.liveness(std::time::Instant::now()));
                    (status, text, body)
                }
                // `/healthz` is `/ready` under its older name.
                ("GET", "/ready" | "/healthz") => {
                    let (status, body) = probe(shared.readiness(std::time::Instant::now()));
                    (status, text, body)
                }
                ("GET", _) => (
                    "404 Not Found",
                    text,
                    "not found: try /metrics, /live, /ready, /ready/VIP, /status or /status/flows\n".to_string(),
                ),
                ("POST", "/drain" | "/undrain") if !loopback => {
                    ("403 Forbidden", text, "drains are asked by local clients only\n".to_string())
                }
                ("POST", "/drain" | "/undrain") => {
                    let (status, body) = drain(shared, path == "/drain");
                    (status, text, body)
                }
                _ => ("405 Method Not Allowed", text, "only GET, and POST to /drain or /undrain\n".to_string()),
            }
        }
    };
    let mut out = format!(
        "HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// A probe's answer: 200 `ok`, or 503 with what is wrong.
fn probe(result: Result<(), String>) -> (&'static str, String) {
    match result {
        Ok(()) => ("200 OK", "ok\n".to_string()),
        Err(problem) => ("503 Service Unavailable", format!("{problem}\n")),
    }
}

/// `POST /drain` (`on`) or `/undrain`: withdraw every VIP without stopping, or end that.
fn drain(shared: &Shared, on: bool) -> (&'static str, String) {
    if shared.announce_cfg.load().is_none() {
        return ("409 Conflict", "nothing to drain: the configuration has no [announce] section\n".into());
    }
    let was = shared.drain_requested.swap(on, Ordering::Relaxed);
    let body = match (on, was) {
        (true, false) => {
            tracing::info!("drain asked (maglevd drain): every VIP withdrawn, forwarding goes on");
            "drained: every VIP is withdrawn; forwarding goes on\n"
        }
        (true, true) => "already drained\n",
        (false, true) => {
            tracing::info!("drain ended (maglevd drain --undo): VIPs announced again as they are ready");
            "drain ended: VIPs are announced again once ready (rise)\n"
        }
        (false, false) => "not drained\n",
    };
    ("200 OK", body.into())
}

/// Every metric of the daemon, in the 0.0.4 text format ([`metrics::CONTENT_TYPE`]).
pub fn render(shared: &Shared, connections: ConnectionStats) -> String {
    metrics::encode(vec![
        Box::new(shared.counters.totals()),
        Box::new(shared.counters.flow_figures()),
        Box::new(DaemonMetrics::collect(shared, connections)),
    ])
}

/// The daemon's metrics other than the packet counters, read at scrape time.
#[derive(Debug)]
struct DaemonMetrics {
    /// (name without `_total`, help, value).
    counters: Vec<(&'static str, &'static str, u64)>,
    generation: u64,
    workers: usize,
    kernel_drop: bool,
    backends: Vec<BackendState>,
    /// (service, every backend down).
    all_down: Vec<(String, bool)>,
    /// (VIP, announced, announcements and withdrawals) with `[announce]`.
    announce: Vec<(String, bool, u64)>,
    draining: bool,
}

/// Backend `b` of service `s` in labels: its IP, and `IP:port` in an `ipvs-mh` service (where
/// the port is part of its identity, as in `ipvsadm -L`).
pub fn backend_label(s: &crate::dataplane::ServiceState, b: &crate::dataplane::BackendState) -> String {
    if s.ipvs_mh() { format!("{}:{}", b.ip, b.port) } else { b.ip.to_string() }
}

/// One backend of a running service as an operator sees it: what `maglevd status` and
/// `/metrics` both show, from the one walk over the snapshot and the health view
/// ([`backend_views`]).
#[derive(Debug)]
pub struct BackendView<'a> {
    pub backend: &'a crate::dataplane::BackendState,
    /// [`backend_label`].
    pub label: String,
    /// Lookup-table slots and their share of the table.
    pub slots: u64,
    pub share: f64,
    /// The health check's record, when the backend is checked.
    pub checked: Option<&'a crate::health::BackendHealth>,
    /// Traffic totals over the workers.
    pub traffic: crate::metrics::BackendTotals,
}

/// Every backend of `s`, in configuration order.
pub fn backend_views<'a>(
    s: &'a crate::dataplane::ServiceState,
    health: &'a crate::health::HealthView,
) -> impl Iterator<Item = BackendView<'a>> + 'a {
    let shares = s.table.shares(s.backends.len());
    let total: u64 = shares.iter().sum();
    s.backends.iter().zip(shares).zip(&s.counters).map(move |((b, slots), counters)| {
        let key = crate::health::TargetKey { service: s.name.clone(), backend: b.ip.into(), port: b.port };
        BackendView {
            backend: b,
            label: backend_label(s, b),
            slots,
            share: if total == 0 { 0.0 } else { slots as f64 / total as f64 },
            checked: health.targets.get(&key).map(|t| &t.health),
            traffic: counters.totals(),
        }
    })
}

#[derive(Debug)]
struct BackendState {
    service: String,
    backend: String,
    up: bool,
    healthy: bool,
    slots: u64,
    /// Transitions to up and to down, and the last probe error, when the backend is checked.
    ups: u64,
    downs: u64,
    last_error: Option<String>,
    traffic: crate::metrics::BackendTotals,
}

impl BackendState {
    fn labels(&self) -> [(&'static str, &str); 2] {
        [("service", self.service.as_str()), ("backend", self.backend.as_str())]
    }
}

impl DaemonMetrics {
    fn collect(shared: &Shared, connections: ConnectionStats) -> DaemonMetrics {
        let arp = &shared.arp;
        let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        let counters = vec![
            ("maglevd_arp_replies_sent", "ARP requests for our address answered by maglevd.", get(&arp.replies_sent)),
            (
                "maglevd_arp_vip_requests_refused",
                "ARP requests for a VIP left unanswered (by design).",
                get(&arp.vip_requests_refused),
            ),
            ("maglevd_arp_probes_sent", "ARP probes sent to resolve or refresh backend MACs.", get(&arp.probes_sent)),
            ("maglevd_arp_macs_learned", "Backend MACs learned or changed.", get(&arp.macs_learned)),
            ("maglevd_arp_macs_expired", "Backend MACs forgotten after unanswered refreshes.", get(&arp.macs_expired)),
            ("maglevd_arp_errors", "ARP socket errors.", get(&arp.errors)),
            (
                "maglevd_arp_own_mac_refused",
                "ARP packets offering one of our own MACs for a backend (refused: frames would loop).",
                get(&arp.own_mac_refused),
            ),
            (
                "maglevd_arp_mac_claims",
                "Another MAC claimed for a resolved backend (used only once confirmed by a broadcast request).",
                get(&arp.mac_claims),
            ),
            (
                "maglevd_arp_mac_changes_confirmed",
                "Backend MAC changes confirmed by a broadcast request.",
                get(&arp.mac_changes_confirmed),
            ),
            (
                "maglevd_arp_mac_conflicts_kept",
                "MAC claims rejected because the known MAC still answered.",
                get(&arp.mac_conflicts_kept),
            ),
            (
                "maglevd_reload_failures",
                "Reloads refused; the running configuration was kept.",
                get(&shared.reload_failures),
            ),
            (
                "maglevd_http_connections_refused",
                "Connections to this endpoint closed when accepted because the most allowed were open.",
                connections.refused,
            ),
            (
                "maglevd_http_connections_timed_out",
                "Connections to this endpoint closed at their deadline before the answer was written.",
                connections.timed_out,
            ),
        ];
        let snap = shared.snapshot.load();
        let health = shared.health.load();
        let mut backends = Vec::new();
        let mut all_down = Vec::new();
        for s in snap.services() {
            all_down.push((s.name.clone(), s.all_down));
            for v in backend_views(s, &health) {
                backends.push(BackendState {
                    service: s.name.clone(),
                    up: v.backend.usable(),
                    healthy: v.backend.healthy,
                    slots: v.slots,
                    ups: v.checked.map_or(0, |h| h.ups),
                    downs: v.checked.map_or(0, |h| h.downs),
                    last_error: v.checked.and_then(|h| h.last_error.clone()),
                    traffic: v.traffic,
                    backend: v.label,
                });
            }
        }
        let live = shared.counters.workers() - shared.stalled_workers(std::time::Instant::now()).len();
        let kernel_drop = shared.kernel_drop.load(std::sync::atomic::Ordering::Relaxed);
        let view = shared.announce.load_full();
        let announce = view
            .as_ref()
            .map_or_else(Vec::new, |a| a.vips.iter().map(|v| (v.vip.to_string(), v.announced, v.changes)).collect());
        let draining = view.as_ref().is_some_and(|a| a.hold.is_some());
        DaemonMetrics {
            counters,
            generation: snap.generation(),
            workers: live,
            kernel_drop,
            backends,
            all_down,
            announce,
            draining,
        }
    }
}

impl Collector for DaemonMetrics {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        for (name, help, v) in &self.counters {
            metrics::counter(&mut enc, name, help, *v)?;
        }
        metrics::gauge(
            &mut enc,
            "maglevd_snapshot_generation",
            "Generation of the forwarding snapshot in use.",
            self.generation,
        )?;
        metrics::gauge(
            &mut enc,
            "maglevd_workers",
            "Forwarding worker threads alive and making progress.",
            self.workers as u64,
        )?;
        metrics::gauge(
            &mut enc,
            "maglevd_kernel_drop_installed",
            "1 if the tc filter that drops VIP frames after the rings' copy is on the ingress interface.",
            u64::from(self.kernel_drop),
        )?;
        metrics::gauge_family(
            &mut enc,
            "maglevd_backend_up",
            "1 if the backend gets new flows (in the table: weight > 0, MAC known, healthy).",
            self.backends.iter().map(|b| (b.labels(), u64::from(b.up))),
        )?;
        metrics::gauge_family(
            &mut enc,
            "maglevd_backend_healthy",
            "1 unless the backend's health check says it is down (1 without a check).",
            self.backends.iter().map(|b| (b.labels(), u64::from(b.healthy))),
        )?;
        let mut family = enc.encode_descriptor(
            "maglevd_backend_health_transitions",
            "Health-check transitions of the backend, by the state it went to.",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for b in &self.backends {
            for (to, n) in [("up", b.ups), ("down", b.downs)] {
                let [s, be] = b.labels();
                let labels = [s, be, ("to", to)];
                use prometheus_client::encoding::EncodeMetric;
                prometheus_client::metrics::counter::ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        metrics::gauge_family(
            &mut enc,
            "maglevd_backend_last_probe_error_info",
            "The backend's last failed health probe (label error); absent while none failed.",
            self.backends.iter().filter_map(|b| {
                let [s, be] = b.labels();
                b.last_error.as_deref().map(|e| ([s, be, ("error", e)], 1))
            }),
        )?;
        metrics::gauge_family(
            &mut enc,
            "maglevd_service_all_down",
            "1 while every backend of the service is down by its health check (then when_all_down applies).",
            self.all_down.iter().map(|(s, d)| ([("service", s.as_str())], u64::from(*d))),
        )?;
        metrics::counter_family(
            &mut enc,
            "maglevd_backend_packets",
            "Frames forwarded to the backend (queued in a TX ring), over all workers.",
            self.backends.iter().map(|b| (b.labels(), b.traffic.packets)),
        )?;
        metrics::counter_family(
            &mut enc,
            "maglevd_backend_bytes",
            "Bytes of the frames forwarded to the backend (Ethernet header included).",
            self.backends.iter().map(|b| (b.labels(), b.traffic.bytes)),
        )?;
        metrics::counter_family(
            &mut enc,
            "maglevd_backend_flows",
            "Flows assigned to the backend: new tracked flows and tracked flows re-chosen to it.",
            self.backends.iter().map(|b| (b.labels(), b.traffic.flows)),
        )?;
        metrics::gauge_family(
            &mut enc,
            "maglevd_backend_slots",
            "Lookup-table slots owned by the backend.",
            self.backends.iter().map(|b| (b.labels(), b.slots)),
        )?;
        metrics::gauge_family(
            &mut enc,
            "maglevd_vip_announced",
            "1 while the VIP is announced ([announce]: its route is in the table a BGP daemon learns).",
            self.announce.iter().map(|(v, a, _)| ([("vip", v.as_str())], u64::from(*a))),
        )?;
        metrics::counter_family(
            &mut enc,
            "maglevd_vip_announce_changes",
            "Announcements and withdrawals of the VIP since start.",
            self.announce.iter().map(|(v, _, n)| ([("vip", v.as_str())], *n)),
        )?;
        if !self.announce.is_empty() {
            metrics::gauge(
                &mut enc,
                "maglevd_announce_held",
                "1 while every VIP is withdrawn by a drain or the stop.",
                u64::from(self.draining),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    use super::*;
    use crate::dataplane::{Links, Snapshot};
    use crate::wire::MacAddr;

    #[test]
    fn a_request_is_complete_at_the_end_of_its_header_or_of_input() {
        let full = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(request(full, false), Request::Line("GET /metrics HTTP/1.1"));
        assert_eq!(request(b"GET /healthz HTTP/1.0\n\n", false), Request::Line("GET /healthz HTTP/1.0"));
        assert_eq!(request(b"GET /metrics HTTP/1.1\r\nHost: x\r\n", false), Request::Incomplete);
        assert_eq!(request(b"GET /metrics\n", true), Request::Line("GET /metrics"), "line, then end of input");
        assert_eq!(request(b"GET /metr", true), Request::Incomplete);
        assert_eq!(request(&[b'x'; MAX_REQUEST], false), Request::TooLarge);
        assert_eq!(request(&[0xff, b'\n', b'\n'], false), Request::Line(""), "not UTF-8: no route");
    }

    #[test]
    fn answers_carry_status_type_and_length() {
        let text = |v: Vec<u8>| String::from_utf8(v).unwrap();
        let text_cfg = "[interfaces]\ningress = \"in\"\negress = \"out\"\n[[service]]\nvip = \"10.201.0.1\"\nprotocol = \"tcp\"\nport = 80\ntable_size = 251\n[[service.backend]]\nip = \"10.0.0.7\"\n";
        let cfg = crate::config::parse(text_cfg, std::path::Path::new("t.toml")).unwrap();
        let links = Links { ingress_mac: MacAddr([2, 0, 0, 0, 0, 1]), egress_mac: MacAddr([2, 0, 0, 0, 0, 2]) };
        let snap = Snapshot::build(&cfg, links, &|_| None, 1).unwrap();
        let shared = Shared::new(snap, 1, Arc::new(AtomicBool::new(false)));
        let stats = ConnectionStats::default();
        let a = text(answer(Some("GET /nope HTTP/1.0"), &shared, stats, true));
        assert!(a.starts_with("HTTP/1.0 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\n"), "{a}");
        let a = text(answer(Some("POST /metrics HTTP/1.0"), &shared, stats, true));
        assert!(a.starts_with("HTTP/1.0 405 "), "{a}");
        let a = text(answer(None, &shared, stats, true));
        assert!(a.starts_with("HTTP/1.0 431 ") && a.ends_with(&format!("over {MAX_REQUEST} bytes\n")), "{a}");
        let a = text(answer(Some("GET /metrics?x=1 HTTP/1.1"), &shared, stats, true));
        let (head, body) = a.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Type: {}\r\n", metrics::CONTENT_TYPE)), "{head}");
        assert!(head.contains(&format!("Content-Length: {}\r\n", body.len())), "{head}");
        assert!(body.contains("\nmaglevd_workers 1\n"), "{body}");
        // No backend MAC: the service has no usable backend.
        let a = text(answer(Some("GET /healthz HTTP/1.1"), &shared, stats, true));
        assert!(a.starts_with("HTTP/1.0 503 ") && a.ends_with("no usable backend: 10.201.0.1:80/tcp\n"), "{a}");
    }

    /// `/status` is JSON for anyone who may read the metrics; `/status/flows` names clients, so
    /// only loopback peers get it.
    #[test]
    fn status_is_json_and_flows_are_for_local_clients() {
        let text_cfg = "[interfaces]\ningress = \"in\"\negress = \"out\"\n[[service]]\nvip = \"10.201.0.1\"\nprotocol = \"tcp\"\nport = 80\n[[service.backend]]\nip = \"10.0.0.7\"\n";
        let cfg = crate::config::parse(text_cfg, std::path::Path::new("t.toml")).unwrap();
        let links = Links { ingress_mac: MacAddr([2, 0, 0, 0, 0, 1]), egress_mac: MacAddr([2, 0, 0, 0, 0, 2]) };
        let shared =
            Shared::new(Snapshot::build(&cfg, links, &|_| None, 1).unwrap(), 1, Arc::new(AtomicBool::new(false)));
        let get = |line: &str, loopback| {
            String::from_utf8(answer(Some(line), &shared, ConnectionStats::default(), loopback)).unwrap()
        };
        let a = get("GET /status HTTP/1.0", false);
        let (head, body) = a.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n"), "{head}");
        let s: crate::status::Status = serde_json::from_str(body).unwrap();
        assert_eq!(s.services[0].backends[0].state, "unresolved");
        let a = get("GET /status/flows?limit=3 HTTP/1.0", false);
        assert!(a.starts_with("HTTP/1.0 403 Forbidden\r\n") && a.ends_with("only (they name clients)\n"), "{a}");
        // The worker never answers here (none runs): the listing ends at its deadline, empty.
        let a = get("GET /status/flows?limit=3 HTTP/1.0", true);
        let body = a.split_once("\r\n\r\n").unwrap().1;
        let l: crate::status::FlowList = serde_json::from_str(body).unwrap();
        assert_eq!((l.flows.len(), l.workers, l.answered.len()), (0, 1, 0));
        let a = get("GET /status/flows?limit=3 HTTP/1.0", true);
        assert!(a.starts_with("HTTP/1.0 429 "), "a second listing within a second: {a}");
        let a = get("GET /status/flows?limit=zero HTTP/1.0", true);
        assert!(a.starts_with("HTTP/1.0 400 "), "{a}");
    }

    /// `/ready/VIP` is readiness for one VIP: only that VIP's services need a usable backend; an
    /// address that is not a VIP is 404, a malformed one 400.
    #[test]
    fn readiness_per_vip() {
        let text_cfg = "[interfaces]\ningress = \"in\"\negress = \"out\"\n\
            [[service]]\nname = \"a\"\nvip = \"10.201.0.1\"\nprotocol = \"tcp\"\nport = 80\n[[service.backend]]\nip = \"10.0.0.7\"\nmac = \"02:00:00:00:00:07\"\n\
            [[service]]\nname = \"b\"\nvip = \"10.201.0.2\"\nprotocol = \"tcp\"\nport = 80\n[[service.backend]]\nip = \"10.0.0.8\"\n\
            [[service]]\nname = \"c\"\nvip = \"10.201.0.1\"\nprotocol = \"udp\"\nport = 53\n[[service.backend]]\nip = \"10.0.0.7\"\nmac = \"02:00:00:00:00:07\"\n";
        let cfg = crate::config::parse(text_cfg, std::path::Path::new("t.toml")).unwrap();
        let links = Links { ingress_mac: MacAddr([2, 0, 0, 0, 0, 1]), egress_mac: MacAddr([2, 0, 0, 0, 0, 2]) };
        let shared =
            Shared::new(Snapshot::build(&cfg, links, &|_| None, 1).unwrap(), 1, Arc::new(AtomicBool::new(false)));
        shared
            .control_heartbeat_ms
            .store(shared.millis(std::time::Instant::now()), std::sync::atomic::Ordering::Relaxed);
        shared
            .counters
            .worker(0)
            .unwrap()
            .heartbeat_ms
            .store(shared.millis(std::time::Instant::now()), std::sync::atomic::Ordering::Relaxed);
        let get =
            |line: &str| String::from_utf8(answer(Some(line), &shared, ConnectionStats::default(), true)).unwrap();
        let a = get("GET /ready/10.201.0.1 HTTP/1.0");
        assert!(a.starts_with("HTTP/1.0 200 ") && a.ends_with("\r\n\r\nok\n"), "{a}");
        let a = get("GET /ready/10.201.0.2 HTTP/1.0");
        assert!(a.starts_with("HTTP/1.0 503 ") && a.ends_with("no usable backend: b\n"), "b has no MAC: {a}");
        let a = get("GET /ready HTTP/1.0");
        assert!(a.starts_with("HTTP/1.0 503 ") && a.ends_with("no usable backend: b\n"), "the whole daemon: {a}");
        let a = get("GET /ready/10.9.9.9 HTTP/1.0");
        assert!(a.starts_with("HTTP/1.0 404 ") && a.contains("10.9.9.9 is not a VIP"), "{a}");
        let a = get("GET /ready/nope HTTP/1.0");
        assert!(a.starts_with("HTTP/1.0 400 "), "{a}");
    }

    #[test]
    fn with_announce_ready_per_vip_is_the_announcement_and_drain_is_local_only() {
        let text_cfg = "[interfaces]\ningress = \"in\"\negress = \"out\"\n\
            [[service]]\nvip = \"10.201.0.1\"\nprotocol = \"tcp\"\nport = 80\n[[service.backend]]\nip = \"10.0.0.7\"\nmac = \"02:00:00:00:00:07\"\n";
        let cfg = crate::config::parse(text_cfg, std::path::Path::new("t.toml")).unwrap();
        let links = Links { ingress_mac: MacAddr([2, 0, 0, 0, 0, 1]), egress_mac: MacAddr([2, 0, 0, 0, 0, 2]) };
        let shared =
            Shared::new(Snapshot::build(&cfg, links, &|_| None, 1).unwrap(), 1, Arc::new(AtomicBool::new(false)));
        let ask = |line: &str, local: bool| {
            String::from_utf8(answer(Some(line), &shared, ConnectionStats::default(), local)).unwrap()
        };
        let a = ask("POST /drain HTTP/1.0", true);
        assert!(a.starts_with("HTTP/1.0 409 ") && a.contains("no [announce] section"), "{a}");
        shared.announce_cfg.store(Some(Arc::new(crate::config::Announce::default())));
        let a = ask("GET /ready/10.201.0.1 HTTP/1.0", true);
        assert!(a.starts_with("HTTP/1.0 503 ") && a.ends_with("withdrawn: not evaluated yet\n"), "{a}");
        let vip = |announced: bool, reason: &str| crate::status::AnnounceStatus {
            table: None,
            device: None,
            hold: None,
            error: None,
            vips: vec![crate::status::VipAnnounce {
                vip: "10.201.0.1".parse().unwrap(),
                announced,
                reason: reason.into(),
                since_unix: 0,
                changes: 0,
            }],
        };
        shared.announce.store(Some(Arc::new(vip(false, "settling: 2.0s left"))));
        let a = ask("GET /ready/10.201.0.1 HTTP/1.0", true);
        assert!(a.starts_with("HTTP/1.0 503 ") && a.ends_with("withdrawn: settling: 2.0s left\n"), "{a}");
        shared.announce.store(Some(Arc::new(vip(true, "ready"))));
        let a = ask("GET /ready/10.201.0.1 HTTP/1.0", true);
        assert!(a.starts_with("HTTP/1.0 200 "), "{a}");
        let a = ask("POST /drain HTTP/1.0", false);
        assert!(a.starts_with("HTTP/1.0 403 "), "{a}");
        assert!(!shared.drain_requested.load(Ordering::Relaxed));
        let a = ask("POST /drain HTTP/1.0", true);
        assert!(a.starts_with("HTTP/1.0 200 ") && a.contains("every VIP is withdrawn"), "{a}");
        assert!(shared.drain_requested.load(Ordering::Relaxed));
        let a = ask("POST /undrain HTTP/1.0", true);
        assert!(a.starts_with("HTTP/1.0 200 ") && a.contains("drain ended"), "{a}");
        assert!(!shared.drain_requested.load(Ordering::Relaxed));
        let a = ask("POST /status HTTP/1.0", true);
        assert!(a.starts_with("HTTP/1.0 405 "), "{a}");
    }

    /// A `maglev` backend is its IP in the labels (its port is the service's); an `ipvs-mh`
    /// backend is `IP:port`. (Maglev backends were labelled `IP:80`.)
    #[test]
    fn backends_are_labelled_by_ip_or_by_ip_and_port_in_ipvs_mh() {
        for (algorithm, label) in [("maglev", "10.0.0.7"), ("ipvs-mh", "10.0.0.7:8080")] {
            let port = if algorithm == "maglev" { "" } else { "port = 8080\n" };
            let text_cfg = format!(
                "[interfaces]\ningress = \"in\"\negress = \"out\"\n[[service]]\nname = \"web\"\nvip = \"10.201.0.1\"\n\
                 protocol = \"tcp\"\nport = 80\nalgorithm = \"{algorithm}\"\n[[service.backend]]\nip = \"10.0.0.7\"\n{port}"
            );
            let cfg = crate::config::parse(&text_cfg, std::path::Path::new("t.toml")).unwrap();
            let links = Links { ingress_mac: MacAddr([2, 0, 0, 0, 0, 1]), egress_mac: MacAddr([2, 0, 0, 0, 0, 2]) };
            let snap = Snapshot::build(&cfg, links, &|_| Some(MacAddr([2, 0, 0, 0, 0, 7])), 1).unwrap();
            let shared = Shared::new(snap, 1, Arc::new(AtomicBool::new(false)));
            let a = String::from_utf8(answer(Some("GET /metrics HTTP/1.1"), &shared, ConnectionStats::default(), true))
                .unwrap();
            let want = format!("maglevd_backend_up{{service=\"web\",backend=\"{label}\"}} 1\n");
            assert!(a.contains(&want), "{algorithm}: no {want:?} in\n{a}");
        }
    }
}
