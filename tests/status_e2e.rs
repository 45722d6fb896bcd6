//! `maglevd status` end to end: the real binary (`maglevd run` on the lab's frontends,
//! tests/lab/lab.sh, and `maglevd status` run inside a frontend's namespace, where it reaches the
//! daemon's 127.0.0.1 listener) against what a client in the client namespace really sent.
//!
//! * [`totals_and_rates_agree_with_what_the_client_sent`]: 300 new HTTP connections through
//!   both frontends (ECMP): per backend, the `flows` of fe1 and fe2 add up to the connections that
//!   backend served and their `packets` to the segments the client sent on those connections
//!   (captured on the client's link), the total to the client's own TCP counters
//!   (`/proc/net/snmp` OutSegs + RetransSegs); then a UDP stream paced at 2000 datagrams/s: the
//!   backends' `rates` of `status --interval 2` on fe1 and fe2 add up to the paced rate.
//! * [`states_change_and_the_text_report_shows_them`]: a backend nothing answers ARP for is
//!   `unresolved`; nginx stopped on be2 makes it `down` within `fall × interval + 1 s`, the text
//!   report giving its last probe error; a reload with be3 at weight 0 makes it `drained`; a
//!   reload of a broken file is shown as the last refused reload, the states unchanged.
//! * [`flows_are_listed_to_local_clients`]: keep-alive connections from known client ports are
//!   listed (text and JSON) with the backend that served them, `established` (`closing` once the
//!   client sent its FIN); another service's listing is empty; `--limit` bounds it; a listing
//!   asked through a non-loopback address of the listener is refused (exit 1, "local clients
//!   only"), and so is a second listing within a second.
//! * [`errors_exit_with_their_codes`]: nothing listening on `--address` exits 1 ("no maglevd
//!   answers on"); `-c` of a configuration with `metrics = ""` exits 2 naming daemon.metrics.
//!
//! Each scenario is its own test with its own lab (or namespace), one at a time. Every test prints
//! what it measured. Runs as root; fails, never skips, without it. All traffic stays inside the
//! namespaces each test creates and removes; every loop is bounded in count and time.

mod common;
mod support;

use std::collections::BTreeMap;
use std::io::{BufReader, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use maglevd::status::{FlowList, ServiceStatus, Status};
use support::lab::{GetOptions, Lab, VIP, http_get_with, keepalive_get, text};

const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 1);
const BACKENDS: [&str; 3] = ["be1", "be2", "be3"];
const BACKEND_IPS: [&str; 3] = ["10.158.200.251", "10.158.200.252", "10.158.200.253"];
/// On the backends' subnet; nothing answers ARP for it.
const NOBODY: &str = "10.158.200.240";
const UDP_PORT: u16 = 7000;
const FE1_NET1: &str = "10.158.100.2";

const INTERVAL_MS: u64 = 500;
const FALL: u32 = 3;

// ------------------------------------------------------------------------------------------------
// Configurations

/// One backend of a configuration: IP, weight, and whether its own health check is `none`.
struct Be<'a> {
    ip: &'a str,
    weight: u32,
    no_check: bool,
}

fn be(ip: &str, weight: u32) -> Be<'_> {
    Be { ip, weight, no_check: false }
}

/// The daemon's settings and services: `web` (VIP:80/tcp, a `tcp` check on port 80 when `check`)
/// over `web`, and, when `echo` is given, `echo` (VIP:[`UDP_PORT`]/udp, no check) over it.
fn config_text(metrics: &str, workers: u32, check: bool, web: &[Be], echo: &[Be]) -> String {
    let mut s = format!(
        "[interfaces]\ningress = \"net1\"\negress = \"net2\"\n\n\
         [daemon]\nworkers = {workers}\nmetrics = \"{metrics}\"\nconfig_check_secs = 0\n"
    );
    let services: [(&str, &str, u16, bool, &[Be]); 2] =
        [("web", "tcp", 80, check, web), ("echo", "udp", UDP_PORT, false, echo)];
    for (name, proto, port, check, backends) in services {
        if backends.is_empty() {
            continue;
        }
        s.push_str(&format!(
            "\n[[service]]\nname = \"{name}\"\nvip = \"{VIP}\"\nprotocol = \"{proto}\"\nport = {port}\n"
        ));
        if check {
            s.push_str(&format!(
                "\n[service.health]\ncheck = \"tcp\"\nport = 80\ninterval_ms = {INTERVAL_MS}\ntimeout_ms = 300\n\
                 rise = 2\nfall = {FALL}\n"
            ));
        }
        for b in backends {
            s.push_str(&format!("\n[[service.backend]]\nip = \"{}\"\nweight = {}\n", b.ip, b.weight));
            if b.no_check {
                s.push_str("\n[service.backend.health]\ncheck = \"none\"\n");
            }
        }
    }
    s
}

/// Writes `text` to `path` in one step (a reload never reads a half-written file).
fn write_config(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write the config");
    std::fs::rename(&tmp, path).expect("move the config in place");
}

/// A lab with maglevd on each of `fes`, all with configuration `cfg` (one file per frontend).
fn lab_with(tag: &str, fes: &[&str], cfg: &str) -> (Lab, Vec<PathBuf>) {
    let mut lab = Lab::up(&format!("{tag}{}", std::process::id() % 100_000));
    let mut paths = Vec::new();
    for fe in fes {
        let path = lab.dir().join(format!("maglevd-{fe}.toml"));
        write_config(&path, cfg);
        lab.start_maglevd(fe, &path, &[]);
        paths.push(path);
    }
    (lab, paths)
}

// ------------------------------------------------------------------------------------------------
// Running `maglevd status`

/// `maglevd status ARGS` in namespace `short` (its requests are bounded by 5 s each).
fn status_cmd(lab: &Lab, short: &str) -> Command {
    let mut c = lab.netns(short).command(env!("CARGO_BIN_EXE_maglevd"));
    c.arg("status").stdin(Stdio::null());
    c
}

fn status_out(lab: &Lab, short: &str, args: &[&str]) -> Output {
    status_cmd(lab, short).args(args).output().expect("run maglevd status")
}

/// `maglevd status ARGS` must succeed; its stdout.
fn status_ok(lab: &Lab, short: &str, args: &[&str]) -> String {
    let out = status_out(lab, short, args);
    assert!(
        out.status.success(),
        "{short}: maglevd status {args:?} exited {:?}:\n{}{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// The `{"status": …, "rates": …}` document of `status --json`.
fn parse_status(json: &str) -> (Status, serde_json::Value) {
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("status --json: {e}:\n{json}"));
    let s: Status =
        serde_json::from_value(v["status"].clone()).unwrap_or_else(|e| panic!("status --json's status: {e}:\n{json}"));
    (s, v["rates"].clone())
}

/// `status --json --interval 0` of the maglevd in `short`.
fn status_now(lab: &Lab, short: &str) -> Status {
    parse_status(&status_ok(lab, short, &["--json", "--interval", "0"])).0
}

fn service<'a>(s: &'a Status, name: &str) -> &'a ServiceStatus {
    s.services.iter().find(|x| x.name == name).unwrap_or_else(|| panic!("no service {name} in {s:#?}"))
}

/// Backend `ip`'s state in service `name`.
fn state(s: &Status, name: &str, ip: &str) -> String {
    let svc = service(s, name);
    svc.backends.iter().find(|b| b.backend == ip).map(|b| b.state.clone()).unwrap_or_else(|| "absent".into())
}

/// The state column of backend `ip` in a text report (`  IP  STATE  MAC …`), and the line after it.
fn text_row<'a>(report: &'a str, ip: &str) -> (&'a str, Option<&'a str>) {
    let lines: Vec<&str> = report.lines().collect();
    let i = lines
        .iter()
        .position(|l| l.split_whitespace().next() == Some(ip))
        .unwrap_or_else(|| panic!("no row for {ip} in:\n{report}"));
    (lines[i].split_whitespace().nth(1).unwrap_or(""), lines.get(i + 1).copied())
}

/// Polls `ok` every 50 ms until it holds; returns when it first held. Panics after `within`.
fn wait_until(what: &str, within: Duration, ok: impl FnMut() -> bool) -> Instant {
    support::lab::wait_until(what, within, Duration::from_millis(50), ok)
}

// ------------------------------------------------------------------------------------------------
// Client traffic

/// One HTTP/1.0 GET through VIP:80 on a new connection from the client's `port` (closed
/// normally: the server's FIN first, then the client's): the backend that answered.
fn get_from(port: u16) -> Result<String, String> {
    let o = GetOptions {
        src: Some(SocketAddr::from((CLIENT, port))),
        reset: false,
        connect_timeout: Duration::from_secs(2),
    };
    http_get_with(SocketAddr::from((VIP, 80)), "/", &o)
        .map(|b| b.trim().to_string())
        .map_err(|e| format!("{:?}: {e}", e.kind()))
}

/// The client's TCP counters (`/proc/net/snmp`, its namespace): name → value.
fn client_tcp(lab: &Lab) -> BTreeMap<String, u64> {
    let snmp = lab.sh("client", &["cat", "/proc/net/snmp"]);
    let rows: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Tcp:")).collect();
    assert_eq!(rows.len(), 2, "/proc/net/snmp Tcp rows:\n{snmp}");
    rows[0]
        .split_whitespace()
        .zip(rows[1].split_whitespace())
        .skip(1)
        .map(|(k, v)| (k.into(), v.parse().unwrap_or(0)))
        .collect()
}

/// tcpdump on the client's link: the client's TCP segments to VIP:80.
struct Capture {
    child: Option<Child>,
    /// Reads tcpdump's output as it comes (a full pipe would block it).
    reader: Option<std::thread::JoinHandle<String>>,
}

impl Capture {
    fn start(lab: &Lab) -> Capture {
        let filter = format!("src host {CLIENT} and dst host {VIP} and tcp dst port 80");
        let mut child = lab
            .netns("client")
            .command("tcpdump")
            .args(["-i", "eth0", "-nn", "-q", "-t", "-l", "-p", &filter])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tcpdump");
        let mut stdout = child.stdout.take().expect("tcpdump's stdout");
        let reader = std::thread::spawn(move || {
            let mut out = String::new();
            let _ = stdout.read_to_string(&mut out);
            out
        });
        Capture { child: Some(child), reader: Some(reader) }
    }

    /// SIGINT, then segments by client port, and tcpdump's summary ("N packets dropped by kernel").
    fn stop(mut self) -> (BTreeMap<u16, u64>, String) {
        let child = self.child.take().expect("running");
        let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
        let out = child.wait_with_output().expect("wait for tcpdump");
        let lines = self.reader.take().expect("reader").join().expect("tcpdump reader");
        let mut by_port = BTreeMap::new();
        // "IP 192.168.100.1.44000 > 10.201.0.1.80: tcp 0"
        for l in lines.lines() {
            let Some(src) = l.split_whitespace().nth(1) else { continue };
            if let Some(port) = src.rsplit_once('.').and_then(|(_, p)| p.parse::<u16>().ok()) {
                *by_port.entry(port).or_insert(0) += 1;
            }
        }
        (by_port, text(&out.stderr))
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

// ------------------------------------------------------------------------------------------------
// 1. Totals and rates

const CONNECTIONS: u16 = 300;
const FIRST_PORT: u16 = 44000;
const UDP_RATE: f64 = 2000.0;
const UDP_SECS: f64 = 6.0;
const UDP_FLOWS: u16 = 16;

/// 300 HTTP connections (one after another, from client ports 44000..44300) through both
/// frontends, then a paced UDP stream: `status --json` of fe1 and fe2 add up to what the client
/// sent (per backend: flows = connections served, packets = segments the client sent on them;
/// in all: the client's OutSegs + RetransSegs), and their `rates` to the paced rate.
#[test]
fn totals_and_rates_agree_with_what_the_client_sent() {
    let _serial = common::ns::serial();
    let all: Vec<Be> = BACKEND_IPS.iter().map(|ip| be(ip, 100)).collect();
    let cfg = config_text("127.0.0.1:9100", 2, true, &all, &all);
    let (mut lab, _) = lab_with("st", &["fe1", "fe2"], &cfg);
    for fe in ["fe1", "fe2"] {
        lab.wait_ready(fe, Duration::from_secs(15));
    }
    let before: Vec<Status> = ["fe1", "fe2"].iter().map(|fe| status_now(&lab, fe)).collect();

    // New connections, each served by one backend, counted on the client's link and by its kernel.
    let capture = Capture::start(&lab);
    std::thread::sleep(Duration::from_millis(800)); // tcpdump attaches
    let snmp0 = client_tcp(&lab);
    let t0 = Instant::now();
    let served: Vec<(u16, Result<String, String>)> =
        lab.in_ns("client", || (FIRST_PORT..FIRST_PORT + CONNECTIONS).map(|p| (p, get_from(p))).collect());
    let took = t0.elapsed();
    std::thread::sleep(Duration::from_millis(300)); // the last FINs reach the frontends
    let snmp1 = client_tcp(&lab);
    std::thread::sleep(Duration::from_millis(200));
    let (segments, summary) = capture.stop();
    let after: Vec<Status> = ["fe1", "fe2"].iter().map(|fe| status_now(&lab, fe)).collect();

    let failed: Vec<&(u16, Result<String, String>)> = served.iter().filter(|(_, r)| r.is_err()).collect();
    let mut conns_by_backend: BTreeMap<String, u64> = BTreeMap::new();
    let mut segs_by_backend: BTreeMap<String, u64> = BTreeMap::new();
    for (port, r) in &served {
        if let Ok(b) = r {
            let ip = BACKENDS.iter().position(|x| x == b).map_or(b.clone(), |i| BACKEND_IPS[i].to_string());
            *conns_by_backend.entry(ip.clone()).or_default() += 1;
            *segs_by_backend.entry(ip).or_default() += segments.get(port).copied().unwrap_or(0);
        }
    }
    let d = |k: &str| snmp1[k] - snmp0[k];
    let (out_segs, retrans) = (d("OutSegs"), d("RetransSegs"));
    let captured: u64 = segments.values().sum();
    // Per backend of `web`: (flows, packets) summed over fe1 and fe2, and per frontend.
    let mut reported: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut per_fe = Vec::new();
    for (fe, (b, a)) in ["fe1", "fe2"].iter().zip(before.iter().zip(&after)) {
        let (mut flows, mut packets) = (0, 0);
        for (x, y) in service(b, "web").backends.iter().zip(&service(a, "web").backends) {
            assert_eq!(x.backend, y.backend);
            let e = reported.entry(y.backend.clone()).or_default();
            e.0 += y.flows - x.flows;
            e.1 += y.packets - x.packets;
            flows += y.flows - x.flows;
            packets += y.packets - x.packets;
        }
        per_fe.push(format!("{fe}: {flows} flows, {packets} packets"));
    }
    let reported_packets: u64 = reported.values().map(|v| v.1).sum();
    eprintln!(
        "{CONNECTIONS} connections in {} ms; {} failed; served: {conns_by_backend:?}",
        took.as_millis(),
        failed.len()
    );
    eprintln!("before: web totals on fe1/fe2 {:?}", before.iter().map(web_totals).collect::<Vec<_>>());
    eprintln!("client: OutSegs +{out_segs}, RetransSegs +{retrans}, OutRsts +{}", d("OutRsts"));
    eprintln!(
        "captured on the client's link: {captured} segments to VIP:80; by backend {segs_by_backend:?} ({})",
        summary.trim().replace('\n', "; ")
    );
    eprintln!("status (fe1 + fe2) per backend (flows, packets): {reported:?}; {}", per_fe.join(", "));

    assert!(failed.is_empty(), "connections failed: {failed:?}");
    assert_eq!(conns_by_backend.len(), 3, "every backend served: {conns_by_backend:?}");
    assert!(summary.lines().any(|l| l.trim() == "0 packets dropped by kernel"), "tcpdump dropped packets: {summary}");
    for (i, s) in before.iter().enumerate() {
        assert_eq!(web_totals(s), (0, 0), "fe{}: traffic counted before the client sent any", i + 1);
    }
    for ip in BACKEND_IPS {
        let (flows, packets) = reported.get(ip).copied().unwrap_or_default();
        assert_eq!(flows, conns_by_backend.get(ip).copied().unwrap_or(0), "{ip}: flows vs connections served");
        assert_eq!(packets, segs_by_backend.get(ip).copied().unwrap_or(0), "{ip}: packets vs segments the client sent");
    }
    assert_eq!(captured, out_segs + retrans, "the capture vs the client's OutSegs + RetransSegs");
    assert_eq!(reported_packets, out_segs + retrans, "status packets vs the client's OutSegs + RetransSegs");
    for (fe, s) in ["fe1", "fe2"].iter().zip(&after) {
        let share: f64 = service(s, "web").backends.iter().map(|b| b.share).sum();
        assert!((share - 1.0).abs() < 1e-9, "{fe}: shares add up to {share}");
        assert!(s.workers.len() == 2 && s.workers.iter().all(|w| w.alive), "{fe}: workers {:?}", s.workers);
    }
    assert!(per_fe.iter().all(|l| !l.contains(": 0 flows")), "ECMP sent every connection to one frontend: {per_fe:?}");

    // Rates: a paced UDP stream over 16 flows, read by `status --interval 2` on both frontends.
    let sender = lab.spawn_in_ns("client", || {
        let socks: Vec<UdpSocket> = (0..UDP_FLOWS)
            .map(|_| {
                // Not connected: the backends' ICMP port unreachables (nobody listens) would fail
                // the next send of a connected socket.
                UdpSocket::bind((CLIENT, 0)).expect("bind a UDP socket")
            })
            .collect();
        let n = (UDP_RATE * UDP_SECS) as u64;
        let start = Instant::now();
        let mut sent = 0u64;
        for i in 0..n {
            let due = start + Duration::from_secs_f64(i as f64 / UDP_RATE);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if socks[(i % u64::from(UDP_FLOWS)) as usize].send_to(&[0x5a; 64], (VIP, UDP_PORT)).is_ok() {
                sent += 1;
            }
        }
        (sent, start.elapsed())
    });
    std::thread::sleep(Duration::from_millis(1500)); // the stream is steady
    let readers: Vec<(String, Child)> = ["fe1", "fe2"]
        .iter()
        .map(|fe| {
            let c = status_cmd(&lab, fe)
                .args(["--json", "--interval", "2"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn maglevd status");
            (fe.to_string(), c)
        })
        .collect();
    let mut pps = BTreeMap::new();
    for (fe, c) in readers {
        let out = c.wait_with_output().expect("maglevd status");
        assert!(out.status.success(), "{fe}: status --interval 2: {}{}", text(&out.stdout), text(&out.stderr));
        let (s, rates) = parse_status(&text(&out.stdout));
        let si = s.services.iter().position(|x| x.name == "echo").expect("echo service");
        let secs = rates["secs"].as_f64().unwrap_or(0.0);
        let per_backend: Vec<f64> = rates["backends"][si]
            .as_array()
            .unwrap_or_else(|| panic!("{fe}: no rates for echo: {rates}"))
            .iter()
            .map(|r| r[0].as_f64().unwrap_or_else(|| panic!("{fe}: a backend without a rate: {rates}")))
            .collect();
        pps.insert(fe, (secs, per_backend));
    }
    let (sent, elapsed) = sender.join().expect("UDP sender");
    std::thread::sleep(Duration::from_millis(200)); // the last datagrams reach the frontends
    let echo: Vec<(u64, u64)> = ["fe1", "fe2"]
        .iter()
        .map(|fe| {
            let s = status_now(&lab, fe);
            service(&s, "echo").backends.iter().fold((0, 0), |(f, p), b| (f + b.flows, p + b.packets))
        })
        .collect();
    let (echo_flows, echo_packets) = echo.iter().fold((0, 0), |(f, p), x| (f + x.0, p + x.1));
    let achieved = sent as f64 / elapsed.as_secs_f64();
    let total: f64 = pps.values().flat_map(|(_, v)| v.iter()).sum();
    eprintln!(
        "UDP stream: {sent} datagrams in {:.2} s = {achieved:.0}/s (paced at {UDP_RATE}/s over {UDP_FLOWS} flows); \
         status --interval 2 rates (secs, packets/s per backend): {pps:?}; sum {total:.0}/s ({:+.1} % of the paced rate)",
        elapsed.as_secs_f64(),
        (total / UDP_RATE - 1.0) * 100.0
    );
    eprintln!("echo totals (flows, packets) on fe1, fe2: {echo:?}");
    assert_eq!(sent, (UDP_RATE * UDP_SECS) as u64, "every datagram sent");
    assert_eq!(
        (echo_flows, echo_packets),
        (u64::from(UDP_FLOWS), sent),
        "echo totals: one flow per socket, every datagram"
    );
    assert!((achieved / UDP_RATE - 1.0).abs() < 0.05, "the sender kept only {achieved:.0}/s");
    assert!((total / UDP_RATE - 1.0).abs() < 0.10, "status rates add up to {total:.0}/s, paced {UDP_RATE}/s");
    assert!(pps.values().all(|(_, v)| v.iter().sum::<f64>() > 0.0), "both frontends carry some: {pps:?}");
}

/// (flows, packets) of service `web`, summed over its backends.
fn web_totals(s: &Status) -> (u64, u64) {
    service(s, "web").backends.iter().fold((0, 0), |(f, p), b| (f + b.flows, p + b.packets))
}

// ------------------------------------------------------------------------------------------------
// 2. States

/// `web` over be1..be3 and [`NOBODY`] (no check of its own): NOBODY is `unresolved`; nginx on be2
/// stops → be2 `down` within `fall × interval + 1 s`, the text report naming its last probe error;
/// a reload with be3 at weight 0 → `drained`. The text report shows every state.
#[test]
fn states_change_and_the_text_report_shows_them() {
    let _serial = common::ns::serial();
    let web = |w3: u32| {
        let mut v = vec![be(BACKEND_IPS[0], 100), be(BACKEND_IPS[1], 100), be(BACKEND_IPS[2], w3)];
        v.push(Be { ip: NOBODY, weight: 100, no_check: true });
        config_text("127.0.0.1:9100", 1, true, &v, &[])
    };
    let (mut lab, paths) = lab_with("ss", &["fe1"], &web(100));
    let t0 = Instant::now();
    wait_until("fe1: be1..be3 up", Duration::from_secs(15), || {
        assert!(lab.maglevd_alive("fe1"), "maglevd exited:\n{}", lab.maglevd_log("fe1"));
        status_out(&lab, "fe1", &["--json", "--interval", "0"]).status.success()
            && BACKEND_IPS.iter().all(|ip| state(&status_now(&lab, "fe1"), "web", ip) == "up")
    });
    let ready_after = t0.elapsed();
    // Well past fall × interval: the NOBODY backend has no check, so it stays unresolved.
    std::thread::sleep(Duration::from_millis(INTERVAL_MS * u64::from(FALL) + 500));
    let s0 = status_now(&lab, "fe1");
    let text0 = status_ok(&lab, "fe1", &["--interval", "0"]);

    // nginx on be2 stops.
    let stopped = Instant::now();
    stop_nginx(&lab, "be2");
    let mut s1 = s0.clone();
    let down = wait_until("be2 down in status", Duration::from_secs(10), || {
        s1 = status_now(&lab, "fe1");
        state(&s1, "web", BACKEND_IPS[1]) == "down"
    }) - stopped;
    let text1 = status_ok(&lab, "fe1", &["--interval", "0"]);

    // be3 drained by a reload.
    write_config(&paths[0], &web(0));
    let reloaded = Instant::now();
    lab.reload_maglevd("fe1");
    let mut s2 = s1.clone();
    let drained = wait_until("be3 drained in status", Duration::from_secs(5), || {
        s2 = status_now(&lab, "fe1");
        state(&s2, "web", BACKEND_IPS[2]) == "drained"
    }) - reloaded;
    let text2 = status_ok(&lab, "fe1", &["--interval", "0"]);

    // A reload refused (not TOML): status names it, and the previous configuration stays.
    write_config(&paths[0], "this is not [toml\n");
    let refused_at = Instant::now();
    lab.reload_maglevd("fe1");
    let mut s3 = s2.clone();
    let refused = wait_until("the refused reload in status", Duration::from_secs(5), || {
        s3 = status_now(&lab, "fe1");
        s3.reload_failures > s2.reload_failures
    }) - refused_at;
    let text3 = status_ok(&lab, "fe1", &["--interval", "0"]);

    let states = |s: &Status| {
        service(s, "web").backends.iter().map(|b| format!("{} {}", b.backend, b.state)).collect::<Vec<_>>()
    };
    let be2_error = service(&s1, "web").backends[1].last_probe_error.clone();
    eprintln!("ready after {} ms; states {:?}", ready_after.as_millis(), states(&s0));
    eprintln!(
        "nginx on be2 stopped: down in status after {} ms (bound {} ms), last probe error {be2_error:?}; states {:?}",
        down.as_millis(),
        INTERVAL_MS * u64::from(FALL) + 1000,
        states(&s1)
    );
    eprintln!(
        "reload with be3 at weight 0: drained in status after {} ms, generation {} → {}; states {:?}",
        drained.as_millis(),
        s1.generation,
        s2.generation,
        states(&s2)
    );
    eprintln!("text report after the reload:\n{text2}");
    eprintln!(
        "a reload of a broken file: in status after {} ms, {} failure(s), {:?}; generation {}",
        refused.as_millis(),
        s3.reload_failures,
        s3.last_reload_error,
        s3.generation
    );

    assert_eq!(state(&s0, "web", NOBODY), "unresolved", "{:?}", states(&s0));
    assert_eq!(service(&s0, "web").backends.iter().find(|b| b.backend == NOBODY).unwrap().mac, None);
    assert!(BACKEND_IPS.iter().all(|ip| state(&s0, "web", ip) == "up"), "{:?}", states(&s0));
    assert_eq!(text_row(&text0, NOBODY).0, "unresolved", "{text0}");
    assert_eq!(text_row(&text0, BACKEND_IPS[1]).0, "up", "{text0}");

    assert!(down <= Duration::from_millis(INTERVAL_MS * u64::from(FALL) + 1000), "be2 down after {down:?}");
    let error = be2_error.expect("be2 down has a last probe error");
    assert!(error.contains("refused"), "be2's last probe error: {error}");
    let (st, next) = text_row(&text1, BACKEND_IPS[1]);
    assert_eq!(st, "down", "{text1}");
    let next = next.unwrap_or("").trim();
    assert_eq!(next, format!("last probe error: {error}"), "the line after be2's row:\n{text1}");
    assert_eq!(text_row(&text1, NOBODY).0, "unresolved", "{text1}");

    assert!(s2.generation > s1.generation, "the reload made a new generation: {} → {}", s1.generation, s2.generation);
    assert!(drained <= Duration::from_secs(2), "be3 drained {drained:?} after the reload");
    let expect =
        [(BACKEND_IPS[0], "up"), (BACKEND_IPS[1], "down"), (BACKEND_IPS[2], "drained"), (NOBODY, "unresolved")];
    for (ip, st) in expect {
        assert_eq!(state(&s2, "web", ip), st, "{ip}: {:?}", states(&s2));
        assert_eq!(text_row(&text2, ip).0, st, "{ip} in the text report:\n{text2}");
    }
    let b3 = service(&s2, "web").backends.iter().find(|b| b.backend == BACKEND_IPS[2]).unwrap();
    assert_eq!((b3.weight, b3.slots), (0, 0), "drained be3: weight and slots");

    let error = s3.last_reload_error.as_ref().expect("the refused reload's error");
    assert!(error.error.contains(&paths[0].display().to_string()), "{error:?}");
    assert_eq!(s3.reload_failures, s2.reload_failures + 1);
    assert_eq!(s3.generation, s2.generation, "a refused reload publishes nothing");
    assert!(text3.contains("last refused reload (") && text3.contains(&error.error), "{text3}");
    assert_eq!(states(&s3), states(&s2), "the previous configuration stays");
}

/// The nginx of backend `be` (as tests/lab/lab.sh starts it), stopped by its pid file.
fn stop_nginx(lab: &Lab, be: &str) {
    let pid = std::fs::read_to_string(lab.dir().join(be).join("nginx.pid")).expect("nginx pid file");
    let pid = pid.trim();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    assert_eq!(comm.trim(), "nginx", "pid {pid} of {be}'s pid file is no nginx");
    assert!(Command::new("kill").args(["-TERM", pid]).status().is_ok_and(|s| s.success()), "kill nginx {pid}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !lab.sh(be, &["ss", "-Hltn", "sport = :80"]).trim().is_empty() {
        assert!(Instant::now() < deadline, "{be}: nginx still listens 5 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ------------------------------------------------------------------------------------------------
// 3. Flows

const KEEPALIVE_PORTS: [u16; 6] = [45001, 45002, 45003, 45004, 45005, 45006];

/// Spacing between two flow listings (the daemon serves at most one a second).
fn next_listing() {
    std::thread::sleep(Duration::from_millis(1100));
}

/// Six keep-alive connections from known client ports through fe1 (the listener on 0.0.0.0:9100):
/// `status --flows --service web` lists each with the backend that served it, `established`, in
/// text and JSON; the `echo` service's listing is empty; a listing asked through fe1's net1
/// address (from fe1 itself and from the router) is refused, exit 1; a second listing within a
/// second is refused, exit 1.
#[test]
fn flows_are_listed_to_local_clients() {
    let _serial = common::ns::serial();
    let all: Vec<Be> = BACKEND_IPS.iter().map(|ip| be(ip, 100)).collect();
    let cfg = config_text("0.0.0.0:9100", 2, true, &all, &all);
    let (mut lab, paths) = lab_with("sf", &["fe1"], &cfg);
    lab.wait_ready("fe1", Duration::from_secs(15));
    lab.sh("router", &["ip", "route", "replace", &format!("{VIP}/32"), "via", FE1_NET1, "dev", "vlan100"]);

    // Keep-alive connections, each asked once; held open until the end.
    let conns: Vec<(u16, BufReader<TcpStream>, String)> = lab.in_ns("client", || {
        KEEPALIVE_PORTS
            .iter()
            .map(|&port| {
                use socket2::{Domain, Protocol, Socket, Type};
                let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
                s.bind(&SocketAddr::from((CLIENT, port)).into()).expect("bind the client port");
                s.connect_timeout(&SocketAddr::from((VIP, 80)).into(), Duration::from_secs(2)).expect("connect");
                let s: TcpStream = s.into();
                s.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
                let mut r = BufReader::new(s);
                let b = keepalive_get(&mut r).unwrap_or_else(|e| panic!("request from port {port}: {e}"));
                (port, r, b)
            })
            .collect()
    });
    let expected: BTreeMap<String, String> = conns
        .iter()
        .map(|(port, _, b)| {
            let i = BACKENDS.iter().position(|x| x == b).unwrap_or_else(|| panic!("unknown backend {b}"));
            (format!("{CLIENT}:{port}"), BACKEND_IPS[i].to_string())
        })
        .collect();

    let listing = status_ok(&lab, "fe1", &["--flows", "--service", "web", "--limit", "100"]);
    next_listing();
    let json = status_ok(&lab, "fe1", &["--flows", "--service", "web", "--limit", "100", "--json"]);
    let list: FlowList = serde_json::from_str(&json).unwrap_or_else(|e| panic!("--flows --json: {e}:\n{json}"));
    next_listing();
    let echo = status_ok(&lab, "fe1", &["--flows", "--service", "echo", "--json"]);
    let echo: FlowList = serde_json::from_str(&echo).unwrap_or_else(|e| panic!("--flows --json: {e}:\n{echo}"));
    next_listing();
    // By the configuration (its 0.0.0.0 is reached on loopback), then too soon after that.
    let by_config = status_out(&lab, "fe1", &["-c", &paths[0].display().to_string(), "--flows", "--json"]);
    let too_soon = status_out(&lab, "fe1", &["--flows"]);
    next_listing();
    // By endpoint, at most 3.
    let endpoint = format!("{VIP}:80/tcp");
    let limited = status_ok(&lab, "fe1", &["--flows", "--service", &endpoint, "--limit", "3", "--json"]);
    let limited: FlowList =
        serde_json::from_str(&limited).unwrap_or_else(|e| panic!("--flows --json: {e}:\n{limited}"));
    // The client closes its last connection (its FIN goes through fe1): that flow is closing.
    let (closed_port, closed, _) = conns.last().expect("connections");
    let closed_client = format!("{CLIENT}:{closed_port}");
    closed.get_ref().shutdown(std::net::Shutdown::Write).expect("shutdown");
    std::thread::sleep(Duration::from_millis(200));
    next_listing();
    let after_close = status_ok(&lab, "fe1", &["--flows", "--service", "web", "--json"]);
    let after_close: FlowList =
        serde_json::from_str(&after_close).unwrap_or_else(|e| panic!("--flows --json: {e}:\n{after_close}"));
    // Through a non-loopback address of the listener: from fe1 itself and from the router.
    let remote = format!("{FE1_NET1}:9100");
    let from_self = status_out(&lab, "fe1", &["--flows", "--address", &remote]);
    let from_router = status_out(&lab, "router", &["--flows", "--address", &remote]);
    let status_from_router = status_out(&lab, "router", &["--json", "--interval", "0", "--address", &remote]);
    // The connections are still open (the listing did not disturb them).
    let again: Vec<String> = conns
        .into_iter()
        .filter(|(port, _, _)| format!("{CLIENT}:{port}") != closed_client)
        .map(|(port, mut r, _)| keepalive_get(&mut r).unwrap_or_else(|e| format!("port {port}: {e}")))
        .collect();

    eprintln!("keep-alive connections (client → backend): {expected:?}");
    eprintln!("status --flows --service web --limit 100:\n{listing}");
    eprintln!("--json: {} flows, workers {} answered {:?}", list.flows.len(), list.workers, list.answered);
    eprintln!("--service echo: {} flows", echo.flows.len());
    eprintln!("--service {endpoint} --limit 3: {:?}", limited.flows.iter().map(|f| &f.client).collect::<Vec<_>>());
    eprintln!(
        "after the client closed {closed_client}: {:?}",
        after_close.flows.iter().map(|f| format!("{} {}", f.client, f.state)).collect::<Vec<_>>()
    );
    eprintln!(
        "-c {}: exit {:?}; a second listing at once: exit {:?} {:?}",
        paths[0].display(),
        by_config.status.code(),
        too_soon.status.code(),
        text(&too_soon.stderr).trim()
    );
    for (who, o) in [("fe1 via net1", &from_self), ("router", &from_router)] {
        eprintln!("--flows --address {remote} from {who}: exit {:?} {:?}", o.status.code(), text(&o.stderr).trim());
    }
    eprintln!("status --address {remote} from the router: exit {:?}", status_from_router.status.code());

    // Text: one row per connection, with its backend, established.
    for (client, backend) in &expected {
        let row = listing
            .lines()
            .find(|l| l.split_whitespace().nth(3) == Some(client.as_str()))
            .unwrap_or_else(|| panic!("no row for {client} in:\n{listing}"));
        let f: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            (f[0], f[1], f[4], f[5]),
            ("TCP", "established", format!("{VIP}:80").as_str(), backend.as_str()),
            "{row}"
        );
    }
    assert!(listing.contains(&format!("{} flow(s); 2 of 2 workers answered", expected.len())), "{listing}");
    // JSON: exactly these flows.
    let listed: BTreeMap<String, String> = list.flows.iter().map(|f| (f.client.clone(), f.backend.clone())).collect();
    assert_eq!(listed, expected, "--json lists exactly the open connections with their backends");
    for f in &list.flows {
        assert_eq!(
            (f.protocol.as_str(), f.state.as_str(), f.service.as_str(), f.vip.clone()),
            ("TCP", "established", "web", format!("{VIP}:80")),
            "{f:?}"
        );
        assert!(f.expires_secs > 60.0, "{f:?}");
    }
    assert_eq!((list.workers, list.answered.clone()), (2, vec![0, 1]));
    assert!(echo.flows.is_empty(), "the echo service has no flow: {:?}", echo.flows);
    assert_eq!(limited.flows.len(), 3, "--limit 3: {:?}", limited.flows);
    assert!(limited.flows.iter().all(|f| expected.get(&f.client) == Some(&f.backend)), "{:?}", limited.flows);
    let states: BTreeMap<String, String> =
        after_close.flows.iter().map(|f| (f.client.clone(), f.state.clone())).collect();
    assert_eq!(states.len(), expected.len(), "after the close: {states:?}");
    for (client, st) in &states {
        let want = if *client == closed_client { "closing" } else { "established" };
        assert_eq!(st, want, "{client} after {closed_client} closed: {states:?}");
    }
    assert!(by_config.status.success(), "-c with metrics 0.0.0.0: {}", text(&by_config.stderr));
    let by_config: FlowList = serde_json::from_slice(&by_config.stdout).expect("-c --flows --json");
    assert_eq!(by_config.flows.len(), expected.len());
    assert_eq!(too_soon.status.code(), Some(1), "a second listing at once: {}", text(&too_soon.stdout));
    assert!(text(&too_soon.stderr).contains("less than 1s ago"), "{}", text(&too_soon.stderr));
    for (who, o) in [("fe1 via net1", &from_self), ("router", &from_router)] {
        assert_eq!(o.status.code(), Some(1), "{who}: {}{}", text(&o.stdout), text(&o.stderr));
        let err = text(&o.stderr);
        assert!(err.contains("403") && err.contains("flows are listed to local clients only"), "{who}: {err}");
        assert!(o.stdout.is_empty(), "{who}: printed {}", text(&o.stdout));
    }
    assert!(status_from_router.status.success(), "/status is served to anyone: {}", text(&status_from_router.stderr));
    assert!(again.iter().all(|b| BACKENDS.contains(&b.as_str())), "connections after the listings: {again:?}");
}

// ------------------------------------------------------------------------------------------------
// 4. Errors

/// In a fresh namespace (nothing listens there): `--address 127.0.0.1:9100` exits 1 naming the
/// address; `-c` of a configuration with `metrics = ""` exits 2 naming daemon.metrics.
#[test]
fn errors_exit_with_their_codes() {
    let _serial = common::ns::serial();
    common::ns::require_lab("status_e2e");
    let ns = common::ns::new_ns("ste");
    ns.ip(&["link", "set", "lo", "up"]).expect("lo up");
    let run = |args: &[&str]| -> Output {
        ns.command(env!("CARGO_BIN_EXE_maglevd")).arg("status").args(args).stdin(Stdio::null()).output().expect("run")
    };
    let t0 = Instant::now();
    let closed = run(&["--address", "127.0.0.1:9100"]);
    let closed_took = t0.elapsed();
    let closed_flows = run(&["--address", "127.0.0.1:9100", "--flows"]);

    let dir = std::env::temp_dir().join(format!("status-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("no-metrics.toml");
    let all: Vec<Be> = BACKEND_IPS.iter().map(|ip| be(ip, 100)).collect();
    std::fs::write(&path, config_text("", 1, false, &all, &[])).expect("write the config");
    let off = run(&["-c", &path.display().to_string()]);
    let _ = std::fs::remove_dir_all(&dir);

    for (what, o) in [("--address", &closed), ("--address --flows", &closed_flows), ("-c metrics=\"\"", &off)] {
        eprintln!("{what}: exit {:?}: {}", o.status.code(), text(&o.stderr).trim());
    }
    eprintln!("the refused connection took {} ms", closed_took.as_millis());
    for o in [&closed, &closed_flows] {
        assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
        assert!(text(&o.stderr).contains("no maglevd answers on 127.0.0.1:9100"), "{}", text(&o.stderr));
        assert!(o.stdout.is_empty());
    }
    assert_eq!(off.status.code(), Some(2), "{}", text(&off.stderr));
    let err = text(&off.stderr);
    assert!(err.contains("daemon.metrics") && err.contains(&path.display().to_string()), "{err}");
}
