//! End to end through the seed's topology in network namespaces (tests/lab/lab.sh): a client behind
//! an ECMP router, two frontends running the real `maglevd` binary with config/maglevd.toml, three
//! nginx backends holding the VIP on `lo` and replying straight to the router (DSR).
//!
//! Each phase is its own test, so one failure does not hide the others. Building a lab takes about
//! a second, so the tests share two: one for the tests that only send traffic and read counters,
//! one for those that send malformed frames, restart, reload or reconfigure a daemon. A test holds
//! its lab's lock for its whole run and starts from the same baseline (see `Shared::baseline`),
//! whatever order the harness picks and whether an earlier test failed. Both labs are removed when
//! the test process exits.
//!
//! Runs as root (tests/run-all.sh); fails, never skips, when the environment is missing. All
//! traffic stays inside the namespaces the test creates and removes.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use maglevd::io::{InterfaceInfo, PacketSocket};
use maglevd::neigh::{Arp, build_arp, parse_arp};
use maglevd::wire::{MacAddr, internet_checksum};
use support::lab::{Lab, VIP, http_get, http_get_from, repo, text};

const UPLOAD_PORT: u16 = 9000;
const UPLOAD_SERVICE: &str = "
[[service]]
name = \"upload\"
vip = \"10.201.0.1\"
protocol = \"tcp\"
port = 9000
[[service.backend]]
ip = \"10.158.200.251\"
[[service.backend]]
ip = \"10.158.200.252\"
[[service.backend]]
ip = \"10.158.200.253\"
";

const FE1_NET1_MAC: [u8; 6] = [0xc2, 0xb0, 0x57, 0x49, 0x47, 0xf1];

fn total(m: &BTreeMap<String, f64>, prefix: &str) -> f64 {
    m.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(_, v)| v).sum()
}

fn drops(lab: &Lab, fe: &str) -> f64 {
    total(&lab.metrics(fe), "maglevd_drop_total")
}

fn forwarded(lab: &Lab, fe: &str) -> f64 {
    lab.metrics(fe).get("maglevd_forwarded_total").copied().unwrap_or(0.0)
}

/// A request from the client with a fixed source port: the same flow every time for one port.
/// Returns the name of the backend that answered.
fn get_from_port(lab: &Lab, port: u16) -> String {
    let src = SocketAddr::from(([192, 168, 100, 1], port));
    match lab.in_ns("client", move || http_get_from(src, SocketAddr::from((VIP, 80)), "/")) {
        Ok(body) => body.trim().to_string(),
        Err(e) => panic!("request from port {port} failed: {e}"),
    }
}

/// Send the router's VIP traffic to one frontend only (`Some(net1 ip)`), or restore ECMP.
fn route_vip_via(lab: &Lab, via: Option<&str>) {
    match via {
        Some(ip) => lab.sh("router", &["ip", "route", "replace", "10.201.0.1/32", "via", ip, "dev", "vlan100"]),
        None => lab.sh(
            "router",
            &[
                "ip",
                "route",
                "replace",
                "10.201.0.1/32",
                "nexthop",
                "via",
                "10.158.100.2",
                "dev",
                "vlan100",
                "nexthop",
                "via",
                "10.158.100.3",
                "dev",
                "vlan100",
            ],
        ),
    };
}

/// One lab and what the tests sharing it need. The tests of one lab hold its lock for their whole
/// run, so a test never sees another test's traffic, restart or reload.
struct Shared {
    lab: Lab,
    /// The configuration both daemons run: the example file plus [`UPLOAD_SERVICE`]. Tests may
    /// rewrite it; [`Shared::baseline`] puts it back.
    cfg: PathBuf,
    base: String,
    /// Frontends whose daemon a test stopped or started with another configuration; restarted
    /// with `cfg` by the next [`Shared::baseline`] unless the test put them back itself.
    dirty: BTreeSet<&'static str>,
}

/// Tests that only send traffic and read counters.
static MEASURING: OnceLock<Mutex<Shared>> = OnceLock::new();
/// Tests that send malformed frames, restart, reload or reconfigure the daemons: their own lab, so
/// no measurement ever runs against a daemon they disturbed.
static DISTURBING: OnceLock<Mutex<Shared>> = OnceLock::new();

impl Shared {
    /// Builds a lab (`tests/lab/lab.sh up`) and starts maglevd on fe1 and fe2. Its namespaces,
    /// daemons and nginx are removed when the test process exits ([`Lab`]'s exit watcher), also
    /// when a test failed.
    fn up(tag: &str) -> Shared {
        let t0 = Instant::now();
        // Unique per process, so concurrent test runs never share (or tear down) one lab.
        let lab = Lab::up(&format!("m{tag}{}", std::process::id() % 1_000_000));
        let cfg = lab.dir().join("maglevd.toml");
        let example = std::fs::read_to_string(repo().join("config/maglevd.toml")).expect("example config");
        let base = format!("{example}{UPLOAD_SERVICE}");
        std::fs::write(&cfg, &base).expect("write the config");
        let mut shared = Shared { lab, cfg, base, dirty: BTreeSet::new() };
        for fe in ["fe1", "fe2"] {
            shared.lab.start_maglevd(fe, &shared.cfg, &["--workers", "2"]);
        }
        for fe in ["fe1", "fe2"] {
            shared.lab.wait_ready(fe, Duration::from_secs(15));
        }
        eprintln!("lab {}: maglevd ready on fe1 and fe2 after {:?}", shared.lab.prefix, t0.elapsed());
        shared
    }

    /// Puts the lab back into the state every test starts from, whatever an earlier (possibly
    /// failed) test left: the example configuration, ECMP over both frontends, fe1's kernel
    /// address, no VIP on fe2, and both daemons running the configuration and ready.
    fn baseline(&mut self) {
        if std::fs::read_to_string(&self.cfg).ok().as_deref() != Some(self.base.as_str()) {
            std::fs::write(&self.cfg, &self.base).expect("restore the config");
        }
        route_vip_via(&self.lab, None);
        let lab = &self.lab;
        let _ = lab.exec("fe1", &["ip", "addr", "replace", "10.158.100.2/24", "dev", "net1"]);
        let _ = lab.exec("fe1", &["ip", "route", "replace", "default", "via", "10.158.100.254", "dev", "net1"]);
        let _ = lab.exec("fe2", &["ip", "addr", "del", "10.201.0.1/32", "dev", "lo"]);
        for fe in ["fe1", "fe2"] {
            let dirty = self.dirty.remove(fe);
            if self.lab.maglevd_alive(fe) && !dirty {
                continue;
            }
            if self.lab.maglevd_alive(fe) {
                self.lab.stop_maglevd(fe);
            }
            eprintln!("lab {}: restarting maglevd on {fe} with the example configuration", self.lab.prefix);
            self.lab.start_maglevd(fe, &self.cfg, &["--workers", "2"]);
        }
        for fe in ["fe1", "fe2"] {
            self.lab.wait_ready(fe, Duration::from_secs(15));
        }
    }
}

/// A lab locked for one test; on a failure it prints both daemons' logs.
struct Locked(MutexGuard<'static, Shared>);

impl Deref for Locked {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl DerefMut for Locked {
    fn deref_mut(&mut self) -> &mut Shared {
        &mut self.0
    }
}

impl Drop for Locked {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for fe in ["fe1", "fe2"] {
                eprintln!("--- maglevd log of {fe} (lab {}):\n{}", self.0.lab.prefix, self.0.lab.maglevd_log(fe));
            }
        }
    }
}

/// The lab of `cell`, built by the first test that asks, locked and in its baseline state.
fn lock(cell: &'static OnceLock<Mutex<Shared>>, tag: &str) -> Locked {
    let m = cell.get_or_init(|| Mutex::new(Shared::up(tag)));
    // A test that failed while holding the lock poisons it; baseline() repairs what it left.
    let mut locked = Locked(m.lock().unwrap_or_else(PoisonError::into_inner));
    locked.baseline();
    locked
}

fn measuring_lab() -> Locked {
    lock(&MEASURING, "m")
}

fn disturbing_lab() -> Locked {
    lock(&DISTURBING, "d")
}

/// Counters of both frontends, printed at the end of each test.
fn summary(lab: &Lab) {
    for fe in ["fe1", "fe2"] {
        let m = lab.metrics(fe);
        eprintln!(
            "{fe}: forwarded {} dropped {} tx_enobufs {} tx_eagain {} rx_truncated {}",
            forwarded(lab, fe),
            drops(lab, fe),
            m["maglevd_tx_enobufs_total"],
            m["maglevd_tx_eagain_total"],
            m["maglevd_rx_truncated_total"]
        );
    }
}

/// tcpdump in a lab namespace, counting packets from the VIP; killed if the test fails.
struct Capture {
    name: String,
    child: Option<std::process::Child>,
}

impl Capture {
    fn start(lab: &Lab, ns: &str, iface: &str) -> Capture {
        let child = lab
            .netns(ns)
            .command("tcpdump")
            // Replies to clients; the health checks' SYN-ACKs to the frontend's own vlan200 address
            // are not client traffic.
            .args(["-i", iface, "-nn", "-q", "-p", "src host 10.201.0.1 and not dst net 10.158.200.0/24"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tcpdump");
        Capture { name: format!("{}/{iface}", lab.ns(ns)), child: Some(child) }
    }

    /// SIGINT, then the packet count tcpdump prints on exit.
    fn stop(mut self) -> u64 {
        let child = self.child.take().expect("running");
        let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
        let out = child.wait_with_output().expect("wait for tcpdump");
        let err = text(&out.stderr);
        err.lines()
            .find_map(|l| l.strip_suffix(" packets captured").and_then(|n| n.trim().parse::<u64>().ok()))
            .unwrap_or_else(|| panic!("tcpdump on {} printed no count: {err}", self.name))
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// (a) ≥ 3000 connections all succeed and spread within 15 % of an even share; (b) no reply ever
/// crosses a frontend.
#[test]
fn spread_and_direct_return() {
    let shared = measuring_lab();
    let lab = &shared.lab;
    // Watch for packets from the VIP (replies) on every interface of both frontends; a capture on
    // the router's vlan200 is the positive control that replies exist and are seen. Each capture
    // runs until the requests are done (SIGINT), however long they take.
    let captures: Vec<Capture> = [("fe1", "any"), ("fe2", "any"), ("router", "vlan200")]
        .iter()
        .map(|(ns, i)| Capture::start(lab, ns, i))
        .collect();
    std::thread::sleep(Duration::from_millis(800)); // tcpdump attaches

    let n = 3000;
    let addr = SocketAddr::from((VIP, 80));
    let (counts, failures) = lab.in_ns("client", move || {
        let mut counts: BTreeMap<String, u32> = BTreeMap::new();
        let mut failures = Vec::new();
        for i in 0..n {
            match http_get(addr, "/") {
                Ok(body) => *counts.entry(body.trim().to_string()).or_default() += 1,
                Err(e) => failures.push(format!("request {i}: {e}")),
            }
        }
        (counts, failures)
    });
    let counts_seen: Vec<u64> = captures.into_iter().map(Capture::stop).collect();
    let (fe1, fe2, router) = (counts_seen[0], counts_seen[1], counts_seen[2]);
    eprintln!("(a) {n} connections through the VIP: {counts:?}");
    eprintln!("(b) packets from the VIP seen on fe1: {fe1}, fe2: {fe2}; on the router's vlan200: {router}");
    assert!(failures.is_empty(), "{} of {n} requests failed: {:?}", failures.len(), &failures[..failures.len().min(5)]);
    assert_eq!(counts.keys().map(String::as_str).collect::<Vec<_>>(), ["be1", "be2", "be3"]);
    for (be, c) in &counts {
        let share = *c as f64 / (n as f64 / 3.0);
        assert!((0.85..=1.15).contains(&share), "{be} got {c} of {n}: outside 15 % of an even share");
    }
    assert_eq!((fe1, fe2), (0, 0), "replies crossed a frontend");
    assert!(router >= n as u64, "the positive control saw only {router} reply packets on the router");
    assert!(forwarded(lab, "fe1") > 0.0 && forwarded(lab, "fe2") > 0.0, "ECMP used only one frontend");
}

/// wrk, bounded in time, through the VIP: every request answered.
#[test]
fn wrk_through_the_vip() {
    let shared = measuring_lab();
    let lab = &shared.lab;
    let out = lab.sh("client", &["wrk", "-t", "2", "-c", "32", "-d", "3s", "--timeout", "2s", "http://10.201.0.1/"]);
    let rate = out.lines().find_map(|l| l.strip_prefix("Requests/sec:")).map(str::trim).unwrap_or("?");
    eprintln!("(a) wrk keep-alive through the VIP: {rate} req/s");
    assert!(!out.contains("Socket errors") && !out.contains("Non-2xx"), "wrk saw errors:\n{out}");
    assert!(rate.parse::<f64>().unwrap_or(0.0) > 100.0, "wrk rate too low:\n{out}");
}

/// (c) Nobody answers ARP for the VIP on either segment; the frontends' and backends' real IPs
/// do resolve.
#[test]
fn arp_never_for_the_vip() {
    let shared = measuring_lab();
    let lab = &shared.lab;
    let ask = |ns: &'static str, iface: &'static str, target: Ipv4Addr, sender: Ipv4Addr| {
        lab.in_ns(ns, move || {
            let me = InterfaceInfo::lookup(iface).expect("router interface");
            let mut sock = PacketSocket::open(iface, 0x0806).expect("ARP socket");
            let req = Arp {
                request: true,
                sender_mac: MacAddr(me.mac),
                sender_ip: sender,
                target_mac: MacAddr::ZERO,
                target_ip: target,
            };
            let mut answers = Vec::new();
            for _ in 0..3 {
                sock.send(&build_arp(MacAddr::BROADCAST, &req)).expect("send ARP");
                let until = Instant::now() + Duration::from_millis(300);
                let mut buf = [0u8; 128];
                while let Some(left) = until.checked_duration_since(Instant::now()) {
                    if let Ok(Some(n)) = sock.recv(&mut buf, left)
                        && let Some(a) = parse_arp(&buf[..n]).filter(|a| !a.request && a.sender_ip == target)
                    {
                        answers.push(a.sender_mac);
                    }
                }
            }
            answers
        })
    };
    let r100 = Ipv4Addr::new(10, 158, 100, 254);
    let r200 = Ipv4Addr::new(10, 158, 200, 254);
    let refused_before = lab.metrics("fe1")["maglevd_arp_vip_requests_refused_total"];
    assert_eq!(ask("router", "vlan100", VIP, r100), vec![], "someone answered ARP for the VIP on vlan100");
    assert_eq!(ask("router", "vlan200", VIP, r200), vec![], "someone answered ARP for the VIP on vlan200");
    let fe1 = ask("router", "vlan100", Ipv4Addr::new(10, 158, 100, 2), r100);
    assert!(fe1.contains(&MacAddr(FE1_NET1_MAC)), "fe1's real IP did not resolve: {fe1:?}");
    let refused = lab.metrics("fe1")["maglevd_arp_vip_requests_refused_total"] - refused_before;
    assert!(refused >= 3.0, "fe1's maglevd saw {refused} VIP requests, expected the 3 sent");
    // maglevd resolved every backend by ARP on net2 (wait_ready checked backend_up), e.g.:
    let m = lab.metrics("fe1");
    eprintln!(
        "(c) no ARP answer for the VIP on vlan100/vlan200; fe1 real IP resolves to {:?}; fe1 maglevd refused {refused} VIP requests, learned {} backend MACs",
        fe1, m["maglevd_arp_macs_learned_total"]
    );
}

/// Client source ports of the flows that (d) and (g) send more than once.
fn flow_ports() -> Vec<u16> {
    (0..24).map(|i| 41000 + i * 37).collect()
}

/// (d) The same flow sent to fe1 and to fe2 reaches the same backend.
#[test]
fn same_flow_same_backend_on_both_frontends() {
    let shared = measuring_lab();
    let lab = &shared.lab;
    let ports = flow_ports();
    let (f1, f2) = (forwarded(lab, "fe1"), forwarded(lab, "fe2"));
    route_vip_via(lab, Some("10.158.100.2"));
    let via_fe1: Vec<String> = ports.iter().map(|&p| get_from_port(lab, p)).collect();
    route_vip_via(lab, Some("10.158.100.3"));
    let via_fe2: Vec<String> = ports.iter().map(|&p| get_from_port(lab, p)).collect();
    route_vip_via(lab, None);
    assert!(forwarded(lab, "fe1") > f1 && forwarded(lab, "fe2") > f2, "the forced routes did not use both frontends");
    assert_eq!(via_fe1, via_fe2, "a flow reached different backends through fe1 and fe2");
    let distinct: BTreeSet<&String> = via_fe1.iter().collect();
    assert!(distinct.len() == 3, "24 flows should reach all three backends: {via_fe1:?}");
    eprintln!("(d) 24 flows, each sent via fe1 then via fe2: same backend every time ({via_fe1:?})");
}

/// (e) 100 MB download through the VIP, intact. Only the client's ACKs cross maglevd here (the
/// data returns directly from the backend); the upload below pushes the data through it.
#[test]
fn large_transfer_intact() {
    let shared = measuring_lab();
    let lab = &shared.lab;
    let want = std::fs::read_to_string(lab.dir().join("big.sha256")).expect("lab big.sha256");
    for port in [45001u16, 45002, 45003] {
        let t = Instant::now();
        let out = lab.sh(
            "client",
            &["sh", "-c", &format!("curl -sS --http1.0 -m 60 --local-port {port} http://10.201.0.1/big | sha256sum")],
        );
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(out.split_whitespace().next(), Some(want.trim()), "100 MB transfer from port {port} corrupted");
        eprintln!(
            "(e) 100 MB via the VIP from port {port}: sha256 ok, {:.2} Gbit/s",
            100.0 * 8.0 / 1024.0 * 1.048_576 / secs
        );
    }
    for fe in ["fe1", "fe2"] {
        let m = lab.metrics(fe);
        assert_eq!(m["maglevd_rx_truncated_total"], 0.0, "{fe} truncated super-frames");
        assert_eq!(m["maglevd_tx_too_big_total"], 0.0, "{fe} could not send a super-frame");
    }
}

/// Deterministic pseudo-random numbers (xorshift64*).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// A malformed frame for the VIP that passes the kernel filter (IPv4 ethertype, destination VIP) and
/// that maglevd must drop: each has at least one defect of the header or length.
fn malformed_vip_frame(rng: &mut Rng, src_mac: [u8; 6]) -> Vec<u8> {
    let payload = (rng.next() % 64) as usize;
    let mut f = vec![0u8; 14 + 20 + 20 + payload];
    f[..6].copy_from_slice(&FE1_NET1_MAC);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let total = (f.len() - 14) as u16;
    let ip = &mut f[14..34];
    ip.copy_from_slice(&[0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 6, 0, 0, 192, 168, 100, 1, 10, 201, 0, 1]);
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    for b in &mut f[34..] {
        *b = rng.next() as u8;
    }
    let defect = rng.next() % 7;
    match defect {
        0 => f[14] = 0x40 | (rng.next() % 5) as u8,          // IHL below 5
        1 => f[14] = 0x46 + (rng.next() % 9) as u8,          // options
        2 => f[14] = ((rng.next() % 15) as u8 + 5) << 4 | 5, // version ≠ 4 (5..19 & 0xf → never 4 after the fix below)
        3 => f[16..18].copy_from_slice(&(total + 1 + (rng.next() % 1000) as u16).to_be_bytes()), // beyond the frame
        4 => f[22] = (rng.next() % 2) as u8,                 // TTL 0 or 1
        5 => f.truncate(34 + (rng.next() % 19) as usize),    // TCP header cut short
        _ => {}                                              // 6: only the bad checksum below
    }
    if defect == 2 && f[14] >> 4 == 4 {
        f[14] = 0x65;
    }
    if defect == 5 {
        let total = (f.len() - 14) as u16;
        f[16..18].copy_from_slice(&total.to_be_bytes());
    }
    let c = internet_checksum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    if defect == 6 || defect == 4 && rng.next().is_multiple_of(2) {
        f[25] ^= 0x5a; // a wrong checksum
    }
    f
}

/// (f) 10,000 malformed, truncated and random frames into fe1's net1: maglevd keeps running, counts
/// every one that reached it as a drop, and still forwards.
#[test]
fn malformed_frames_are_counted() {
    let mut shared = disturbing_lab();
    let lab = &mut shared.lab;
    let before = lab.metrics("fe1");
    let (vip_frames, other_frames) = lab.in_ns("router", || {
        let me = InterfaceInfo::lookup("vlan100").expect("router vlan100");
        let mut sock = PacketSocket::open("vlan100", 0x88b5).expect("raw socket");
        let mut rng = Rng(0x6d61_676c_6576_6421);
        let (mut vip, mut other) = (0u64, 0u64);
        for i in 0..10_000u32 {
            let frame = if i % 2 == 0 {
                malformed_vip_frame(&mut rng, me.mac)
            } else {
                // Random bytes and truncations addressed to fe1: never for a VIP, so the kernel
                // filter keeps them away from maglevd (or maglevd passes them).
                let len = 14 + (rng.next() % 300) as usize;
                let mut f: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                f[..6].copy_from_slice(&FE1_NET1_MAC);
                f[6..12].copy_from_slice(&me.mac);
                if f.len() >= 34 && f[12..14] == [0x08, 0x00] && f[30..34] == [10, 201, 0, 1] {
                    f[33] = 2;
                }
                f
            };
            let is_vip = i % 2 == 0;
            if sock.send(&frame).is_ok() {
                if is_vip { vip += 1 } else { other += 1 }
            }
            if i % 100 == 99 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        (vip, other)
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(lab.maglevd_alive("fe1"), "maglevd on fe1 died:\n{}", lab.maglevd_log("fe1"));
    let after = lab.metrics("fe1");
    let d = |k: &str| after.get(k).copied().unwrap_or(0.0) - before.get(k).copied().unwrap_or(0.0);
    let dropped = total(&after, "maglevd_drop_total") - total(&before, "maglevd_drop_total");
    let by_reason: Vec<String> = after
        .iter()
        .filter(|(k, _)| k.starts_with("maglevd_drop_total"))
        .map(|(k, v)| (k, v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .map(|(k, v)| format!("{}={v}", k.trim_start_matches("maglevd_drop_total{reason=\"").trim_end_matches("\"}")))
        .collect();
    eprintln!(
        "(f) sent {vip_frames} malformed VIP frames + {other_frames} random frames to fe1; maglevd dropped {dropped} [{}], ring drops {}",
        by_reason.join(" "),
        d("maglevd_rx_ring_drops_total")
    );
    // Every frame maglevd gets is forwarded, passed or dropped: all of them dropped means none was
    // forwarded. (`forwarded` itself moves during the flood: the frontends' kernels answer the
    // dsr health checks' SYN-ACKs with RSTs to the VIP, which come back through the router.)
    assert_eq!(dropped, vip_frames as f64, "every malformed VIP frame must be counted as a drop");
    // Still forwarding.
    route_vip_via(lab, Some("10.158.100.2"));
    let be = get_from_port(lab, 46000);
    route_vip_via(lab, None);
    assert!(be.starts_with("be"), "fe1 no longer forwards: {be}");
}

/// (g) Stopping and starting maglevd does not change which backend a flow reaches.
#[test]
fn restart_keeps_flows() {
    let mut shared = disturbing_lab();
    let Shared { lab, cfg, dirty, .. } = &mut *shared;
    let cfg: &Path = cfg;
    route_vip_via(lab, Some("10.158.100.2"));
    let flows: Vec<(u16, String)> = flow_ports().into_iter().map(|p| (p, get_from_port(lab, p))).collect();
    route_vip_via(lab, None);
    dirty.insert("fe1");
    let status = lab.stop_maglevd("fe1");
    assert!(status.success(), "maglevd exited with {status} on SIGTERM:\n{}", lab.maglevd_log("fe1"));
    lab.start_maglevd("fe1", cfg, &["--workers", "2"]);
    lab.wait_ready("fe1", Duration::from_secs(15));
    route_vip_via(lab, Some("10.158.100.2"));
    let again: Vec<(u16, String)> = flows.iter().map(|(p, _)| (*p, get_from_port(lab, *p))).collect();
    route_vip_via(lab, None);
    assert_eq!(again, flows, "flows moved across a restart");
    dirty.remove("fe1");
    eprintln!("(g) after a restart of fe1's maglevd, all {} flows reach the same backends", flows.len());
}

fn wait_generation(lab: &Lab, fe: &str, above: f64) -> f64 {
    wait_generation_within(lab, fe, above, Duration::from_secs(5))
}

fn wait_generation_within(lab: &Lab, fe: &str, above: f64, within: Duration) -> f64 {
    let deadline = Instant::now() + within;
    loop {
        let g = lab.metric(fe, "maglevd_snapshot_generation");
        if g > above {
            return g;
        }
        assert!(Instant::now() < deadline, "{fe}: no new snapshot within {within:?}:\n{}", lab.maglevd_log(fe));
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn spread(lab: &Lab, n: usize) -> BTreeMap<String, u32> {
    let addr = SocketAddr::from((VIP, 80));
    lab.in_ns("client", move || {
        let mut counts = BTreeMap::new();
        for _ in 0..n {
            let body = http_get(addr, "/").expect("request through the VIP");
            *counts.entry(body.trim().to_string()).or_default() += 1;
        }
        counts
    })
}

/// (h) SIGHUP applies a changed file (be3 drained: no new flow reaches it); (i) a broken file is
/// refused and the running configuration keeps forwarding.
#[test]
fn reload_applies_good_and_refuses_bad() {
    let mut shared = disturbing_lab();
    let Shared { lab, cfg, dirty, .. } = &mut *shared;
    let cfg: &Path = cfg;
    dirty.extend(["fe1", "fe2"]);
    let original = std::fs::read_to_string(cfg).unwrap();
    let drained = original.replacen("ip = \"10.158.200.253\"\nweight = 1", "ip = \"10.158.200.253\"\nweight = 0", 1);
    assert_ne!(drained, original, "the example config lists .253 with weight 1");
    std::fs::write(cfg, &drained).unwrap();
    for fe in ["fe1", "fe2"] {
        let g = lab.metric(fe, "maglevd_snapshot_generation");
        lab.reload_maglevd(fe);
        wait_generation(lab, fe, g);
    }
    let counts = spread(lab, 600);
    eprintln!("(h) after draining be3 by SIGHUP: {counts:?}");
    assert!(!counts.contains_key("be3") && counts.len() == 2, "be3 still gets flows: {counts:?}");

    std::fs::write(cfg, original.replace("port = 80", "port = 80\nport = 81")).unwrap();
    let (g, failures) =
        (lab.metric("fe1", "maglevd_snapshot_generation"), lab.metric("fe1", "maglevd_reload_failures_total"));
    lab.reload_maglevd("fe1");
    let deadline = Instant::now() + Duration::from_secs(5);
    while lab.metric("fe1", "maglevd_reload_failures_total") == failures {
        assert!(Instant::now() < deadline, "a broken file was not refused:\n{}", lab.maglevd_log("fe1"));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(lab.metric("fe1", "maglevd_snapshot_generation"), g, "a refused reload published a snapshot");
    assert!(
        lab.maglevd_log("fe1").contains("reload refused, running configuration kept"),
        "{}",
        lab.maglevd_log("fe1")
    );
    let counts = spread(lab, 300);
    assert!(!counts.contains_key("be3"), "the running (drained) configuration must stay: {counts:?}");
    eprintln!("(i) a broken file on SIGHUP was refused (logged, counted); still forwarding: {counts:?}");

    // Restored without a signal: the periodic check (daemon.config_check_secs = 5) notices the
    // changed file, as it must for a Kubernetes ConfigMap update.
    let gens: Vec<f64> = ["fe1", "fe2"].iter().map(|fe| lab.metric(fe, "maglevd_snapshot_generation")).collect();
    std::fs::write(cfg, &original).unwrap();
    for (fe, g) in ["fe1", "fe2"].iter().zip(gens) {
        wait_generation_within(lab, fe, g, Duration::from_secs(12));
    }
    let counts = spread(lab, 300);
    assert!(counts.contains_key("be3"), "the restored file must bring be3 back: {counts:?}");
    dirty.clear();
    eprintln!("(i) the restored file was picked up without SIGHUP (periodic check): {counts:?}");
}

/// (j) With no kernel address on net1, maglevd answers ARP for the configured ingress address
/// itself (and still never for the VIP), so the router keeps sending it VIP traffic.
#[test]
fn answers_arp_when_the_kernel_does_not() {
    let mut shared = disturbing_lab();
    let Shared { lab, cfg, dirty, .. } = &mut *shared;
    let cfg: &Path = cfg;
    // fe1 keeps the changed setup after this test; the next test's baseline puts it back.
    dirty.insert("fe1");
    lab.stop_maglevd("fe1");
    lab.sh("fe1", &["ip", "addr", "del", "10.158.100.2/24", "dev", "net1"]);
    let own = lab.dir().join("maglevd-fe1-own-arp.toml");
    let text = std::fs::read_to_string(cfg)
        .unwrap()
        .replace("egress = \"net2\"\n", "egress = \"net2\"\ningress_address = \"10.158.100.2\"\n");
    std::fs::write(&own, text).unwrap();
    lab.start_maglevd("fe1", &own, &["--workers", "2"]);
    lab.wait_ready("fe1", Duration::from_secs(15));
    lab.sh("router", &["ip", "neigh", "flush", "dev", "vlan100"]);
    route_vip_via(lab, Some("10.158.100.2"));
    let be = get_from_port(lab, 47000);
    route_vip_via(lab, None);
    let replies = lab.metric("fe1", "maglevd_arp_replies_sent_total");
    let neigh = lab.sh("router", &["ip", "neigh", "show", "10.158.100.2", "dev", "vlan100"]);
    eprintln!(
        "(j) fe1 without a kernel address on net1: maglevd sent {replies} ARP replies; router: {}; request served by {be}",
        neigh.trim()
    );
    assert!(replies >= 1.0, "maglevd did not answer ARP for its own address");
    assert!(neigh.contains("c2:b0:57:49:47:f1"), "router did not learn fe1's MAC: {neigh}");
    assert!(be.starts_with("be"));
}

/// Deterministic upload data: 64 KiB blocks of xorshift bytes.
fn upload_block(i: u64) -> Vec<u8> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ i.wrapping_mul(0x1000_0000_01b3));
    (0..8192).flat_map(|_| rng.next().to_le_bytes()).collect()
}

/// (e) 100 MB uploaded through the VIP with default offloads: the data crosses maglevd as GSO
/// super-frames (with their virtio-net header) and arrives intact at the backend.
#[test]
fn large_upload_through_maglevd() {
    let shared = measuring_lab();
    let lab = &shared.lab;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    const BLOCKS: u64 = 1600; // 100 MiB
    let before: Vec<_> = ["fe1", "fe2"].iter().map(|fe| lab.metrics(fe)).collect();
    // A sink on the VIP in every backend: the one maglevd picks receives and hashes the upload.
    let sinks: Vec<_> = ["be1", "be2", "be3"]
        .iter()
        .map(|be| {
            let be = be.to_string();
            lab.spawn_in_ns(&be.clone(), move || {
                let l = TcpListener::bind((VIP, UPLOAD_PORT)).expect("bind the sink on the VIP");
                l.set_nonblocking(true).unwrap();
                let deadline = Instant::now() + Duration::from_secs(30);
                while Instant::now() < deadline {
                    match l.accept() {
                        Ok((mut c, _)) => {
                            c.set_nonblocking(false).unwrap();
                            let mut h = xxhash_rust::xxh3::Xxh3::new();
                            let (mut n, mut buf) = (0u64, vec![0u8; 1 << 20]);
                            loop {
                                let k = c.read(&mut buf).expect("sink read");
                                if k == 0 {
                                    break;
                                }
                                h.update(&buf[..k]);
                                n += k as u64;
                            }
                            c.write_all(b"done").expect("sink reply");
                            return Some((be, n, h.digest()));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
                None
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let (sent, hash, secs) = lab.in_ns("client", || {
        let mut s = TcpStream::connect((VIP, UPLOAD_PORT)).expect("connect to the VIP");
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        let t = Instant::now();
        for i in 0..BLOCKS {
            let b = upload_block(i);
            h.update(&b);
            s.write_all(&b).expect("upload");
        }
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut ack = [0u8; 4];
        s.read_exact(&mut ack).expect("sink acknowledgement");
        (BLOCKS * 65536, h.digest(), t.elapsed().as_secs_f64())
    });
    let got: Vec<_> = sinks.into_iter().filter_map(|h| h.join().expect("sink thread")).collect();
    assert_eq!(got.len(), 1, "exactly one backend must receive the upload: {got:?}");
    let (be, n, h) = &got[0];
    assert_eq!((*n, *h), (sent, hash), "upload corrupted on the way to {be}");
    let mut frames = 0.0;
    let mut bytes = 0.0;
    for (fe, b) in ["fe1", "fe2"].iter().zip(&before) {
        let m = lab.metrics(fe);
        let d = |k: &str| m[k] - b[k];
        frames += d("maglevd_rx_frames_total");
        bytes += d("maglevd_rx_bytes_total");
        assert_eq!(
            d("maglevd_rx_truncated_total") + d("maglevd_tx_too_big_total") + d("maglevd_tx_bad_vnet_total"),
            0.0,
            "{fe}"
        );
    }
    let avg = bytes / frames;
    eprintln!(
        "(e) 100 MiB uploaded through the VIP to {be}: xxh3 intact, {:.2} Gbit/s; maglevd carried {bytes} bytes in {frames} frames (avg {avg:.0} bytes: GSO super-frames)",
        sent as f64 * 8.0 / secs / 1e9
    );
    assert!(bytes >= sent as f64, "the upload did not cross maglevd");
    assert!(avg > 9000.0, "no super-frames crossed maglevd (avg {avg:.0} bytes per frame)");
    summary(lab);
}

/// (k) A frontend that still holds the VIP (the seed's `dummy1`) would answer or reset VIP traffic
/// itself: maglevd refuses to start and says where the VIP is.
#[test]
fn refuses_a_frontend_holding_the_vip() {
    let mut shared = disturbing_lab();
    let Shared { lab, cfg, dirty, .. } = &mut *shared;
    let cfg: &Path = cfg;
    dirty.insert("fe2");
    lab.stop_maglevd("fe2");
    lab.sh("fe2", &["ip", "addr", "add", "10.201.0.1/32", "dev", "lo"]);
    lab.start_maglevd("fe2", cfg, &["--workers", "2"]);
    let status = lab.wait_maglevd_exit("fe2", Duration::from_secs(10));
    let log = lab.maglevd_log("fe2");
    lab.sh("fe2", &["ip", "addr", "del", "10.201.0.1/32", "dev", "lo"]);
    assert!(!status.success(), "maglevd started on a frontend holding the VIP:\n{log}");
    assert!(log.contains("lo holds the VIP 10.201.0.1"), "{log}");
    eprintln!("(k) with the VIP on fe2's lo, maglevd refused to start: {}", log.lines().last().unwrap_or(""));
    // Without the VIP it starts again.
    lab.start_maglevd("fe2", cfg, &["--workers", "2"]);
    lab.wait_ready("fe2", Duration::from_secs(15));
    dirty.remove("fe2");
}
