//! The metrics/health endpoint (`daemon::http::serve`) on a real loopback socket over the daemon's
//! real shared state:
//! * slow clients trickling bytes must not hold `/healthz`, and are closed at the connection
//!   deadline;
//! * connections beyond the limit are closed at once; timed-out and refused connections are
//!   counted in `/metrics`;
//! * the server returns when the daemon's stop flag is set;
//! * `/metrics` is parsed by a real Prometheus text-format parser, the Python `prometheus-client`
//!   package that tests/setup.sh installs into a venv (`MAGLEVD_TEST_VENV`, default
//!   `/tmp/maglevd-test-venv`): the test fails, never skips, without it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use maglevd::config;
use maglevd::daemon::{Shared, http};
use maglevd::dataplane::{DropReason, Links, PassReason, Snapshot, Verdict};
use maglevd::metrics::{IoCounters, bump};
use maglevd::wire::MacAddr;

/// Two services: `service` (one backend with a static MAC, usable; one without, not usable) and
/// `plain` (one usable backend), so `/healthz` answers 200.
fn shared(service: &str) -> Arc<Shared> {
    let toml_name = service.replace('\\', "\\\\").replace('"', "\\\"");
    let text = format!(
        "[interfaces]\ningress = \"in\"\negress = \"out\"\n\
         [[service]]\nname = \"{toml_name}\"\nvip = \"10.201.0.1\"\nprotocol = \"tcp\"\nport = 80\ntable_size = 251\n\
         [[service.backend]]\nip = \"10.0.0.7\"\nmac = \"02:00:00:00:00:07\"\n\
         [[service.backend]]\nip = \"10.0.0.8\"\n\
         [[service]]\nname = \"plain\"\nvip = \"10.201.0.2\"\nprotocol = \"tcp\"\nport = 80\ntable_size = 251\n\
         [[service.backend]]\nip = \"10.0.0.9\"\nmac = \"02:00:00:00:00:09\"\n"
    );
    let cfg = config::parse(&text, Path::new("t.toml")).expect("test configuration");
    assert_eq!(cfg.services[0].name, service);
    let links = Links { ingress_mac: MacAddr([2, 0, 0, 0, 0, 1]), egress_mac: MacAddr([2, 0, 0, 0, 0, 2]) };
    let snap = Snapshot::build(&cfg, links, &|_| None, 7).expect("snapshot");
    let shared = Arc::new(Shared::new(snap, 2, Arc::new(AtomicBool::new(false))));
    keep_alive(&shared);
    shared
}

/// Beat the heartbeats of the (absent) workers and control thread every 50 ms while `shared`
/// lives, as the daemon's threads do, so `/live` and `/ready` judge only what these tests set up.
fn keep_alive(shared: &Arc<Shared>) {
    let weak = Arc::downgrade(shared);
    std::thread::spawn(move || {
        while let Some(sh) = weak.upgrade() {
            let ms = sh.millis(Instant::now());
            sh.control_heartbeat_ms.store(ms, Ordering::Relaxed);
            for i in 0..sh.counters.workers() {
                if let Some(w) = sh.counters.worker(i) {
                    w.heartbeat_ms.store(ms, Ordering::Relaxed);
                }
            }
            drop(sh);
            std::thread::sleep(Duration::from_millis(50));
        }
    });
}

/// The endpoint on 127.0.0.1:<ephemeral>, served on its own thread; the receiver gets a message
/// when `serve` returns.
fn start(shared: &Arc<Shared>) -> (SocketAddr, mpsc::Receiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local address");
    let (done_tx, done_rx) = mpsc::channel();
    let shared = Arc::clone(shared);
    std::thread::spawn(move || {
        http::serve(listener, &shared);
        let _ = done_tx.send(());
    });
    (addr, done_rx)
}

/// Set the stop flag and require `serve` to return within a second.
fn stop(shared: &Shared, done: &mpsc::Receiver<()>) {
    shared.stop.store(true, Ordering::Relaxed);
    let t = Instant::now();
    assert!(done.recv_timeout(Duration::from_secs(1)).is_ok(), "serve() still running 1 s after the stop flag was set");
    eprintln!("serve() returned {} ms after the stop flag was set", t.elapsed().as_millis());
}

struct Response {
    code: u16,
    head: String,
    body: String,
}

/// One HTTP/1.0 GET; every read and write bounded by `timeout`.
fn get(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<Response> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\nUser-Agent: maglevd-test\r\n\r\n").as_bytes())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Err(std::io::Error::new(ErrorKind::InvalidData, format!("no HTTP header in {text:?}")));
    };
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok(Response { code, head: head.to_string(), body: body.to_string() })
}

/// Open (true), closed by the server (false), judged by a non-blocking read.
fn still_open(s: &TcpStream) -> bool {
    let mut b = [0u8; 64];
    s.set_nonblocking(true).expect("non-blocking");
    let mut reader = s;
    loop {
        match reader.read(&mut b) {
            Ok(0) => return false,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
}

/// One value of `/metrics` (0.0.4 text: `name value` lines).
fn metric(addr: SocketAddr, name: &str) -> u64 {
    let r = get(addr, "/metrics", Duration::from_secs(2)).expect("GET /metrics");
    assert_eq!(r.code, 200, "/metrics: {}\n{}", r.head, r.body);
    r.body
        .lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{}", r.body))
}

/// A slow client: connected, sending its request line one byte at a time, never finishing it.
struct Slow {
    stream: TcpStream,
    since: Instant,
    sent: usize,
}

impl Slow {
    const LINE: &'static [u8] = b"GET /healthz?padding=";

    fn connect(addr: SocketAddr) -> Slow {
        let stream = TcpStream::connect(addr).expect("connect a slow client");
        Slow { stream, since: Instant::now(), sent: 0 }
    }

    /// Send one more byte; false if the server has closed the connection.
    fn trickle(&mut self) -> bool {
        if !still_open(&self.stream) {
            return false;
        }
        let b = Self::LINE.get(self.sent).copied().unwrap_or(b'x');
        self.sent += 1;
        self.stream.write(&[b]).is_ok()
    }
}

/// Bug: the server handled one connection at a time with per-read timeouts, so one client
/// sending a byte every 0.5 s held `/healthz` (the liveness probe's target) indefinitely.
#[test]
fn slow_clients_do_not_hold_healthz() {
    const SLOW: usize = 100;
    let sh = shared("web");
    let (addr, done) = start(&sh);
    let mut slow: Vec<Slow> = (0..SLOW).map(|_| Slow::connect(addr)).collect();
    let quit = Arc::new(AtomicBool::new(false));
    // The slow clients, on their own thread: a byte every 0.5 s each; one the server closed is
    // replaced, so SLOW slow connections stay open the whole time.
    let trickler = {
        let quit = Arc::clone(&quit);
        std::thread::spawn(move || {
            let (mut replaced, mut longest) = (0usize, Duration::ZERO);
            while !quit.load(Ordering::Relaxed) {
                for s in &mut slow {
                    if !s.trickle() {
                        longest = longest.max(s.since.elapsed());
                        *s = Slow::connect(addr);
                        replaced += 1;
                    }
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            (replaced, longest)
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let (mut probes, mut worst, mut failures) = (0, Duration::ZERO, Vec::new());
    while started.elapsed() < Duration::from_secs(5) {
        let t = Instant::now();
        let r = get(addr, "/healthz", Duration::from_secs(1));
        let took = t.elapsed();
        probes += 1;
        worst = worst.max(took);
        match r {
            Ok(r) if r.code == 200 && took < Duration::from_secs(1) => {}
            Ok(r) => failures.push(format!("{} after {} ms", r.code, took.as_millis())),
            Err(e) => failures.push(format!("{e} after {} ms", took.as_millis())),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    quit.store(true, Ordering::Relaxed);
    let (replaced, longest) = trickler.join().expect("trickler");
    eprintln!(
        "{probes} /healthz probes with {SLOW} slow clients connected: slowest {} ms, {} failed; \
         slow connections closed by the server: {replaced}, the longest after {} ms",
        worst.as_millis(),
        failures.len(),
        longest.as_millis()
    );
    assert!(failures.is_empty(), "/healthz probes failed while slow clients were connected: {failures:?}");
    assert!(replaced >= SLOW, "slow clients were not closed at the connection deadline ({replaced} closed)");
    // A closed connection is noticed at the next 0.5 s tick (1 s of slack for a loaded machine).
    assert!(longest < http::CONNECTION_DEADLINE + Duration::from_secs(1), "a slow client stayed {longest:?}");
    assert!(metric(addr, "maglevd_http_connections_timed_out_total") >= SLOW as u64);
    stop(&sh, &done);
}

/// Connections beyond the limit are closed at once and counted; idle ones are closed at the
/// deadline and counted.
#[test]
fn connections_beyond_the_limit_are_refused_and_counted() {
    const EXTRA: usize = 20;
    let sh = shared("web");
    let (addr, done) = start(&sh);
    let conns: Vec<TcpStream> =
        (0..http::MAX_CONNECTIONS + EXTRA).map(|_| TcpStream::connect(addr).expect("connect")).collect();
    std::thread::sleep(Duration::from_millis(500));
    let open = conns.iter().filter(|s| still_open(s)).count();
    eprintln!("{} idle connections opened: {open} still open after 0.5 s", conns.len());
    assert_eq!(open, http::MAX_CONNECTIONS, "open connections after 0.5 s");
    std::thread::sleep(http::CONNECTION_DEADLINE);
    let open = conns.iter().filter(|s| still_open(s)).count();
    assert_eq!(open, 0, "idle connections still open after the deadline");
    drop(conns);
    let (refused, timed_out) = (
        metric(addr, "maglevd_http_connections_refused_total"),
        metric(addr, "maglevd_http_connections_timed_out_total"),
    );
    eprintln!("refused {refused}, timed out {timed_out}");
    assert_eq!(refused, EXTRA as u64);
    assert_eq!(timed_out, http::MAX_CONNECTIONS as u64);
    let r = get(addr, "/healthz", Duration::from_secs(1)).expect("GET /healthz after the flood");
    assert_eq!(r.code, 200);
    stop(&sh, &done);
}

/// The server returns when the stop flag is set, even with a connection open and no new one
/// coming.
#[test]
fn serve_returns_when_the_stop_flag_is_set() {
    let sh = shared("web");
    let (addr, done) = start(&sh);
    let _idle = TcpStream::connect(addr).expect("connect");
    std::thread::sleep(Duration::from_millis(200));
    stop(&sh, &done);
}

fn venv_python() -> PathBuf {
    let venv =
        std::env::var_os("MAGLEVD_TEST_VENV").map_or_else(|| PathBuf::from("/tmp/maglevd-test-venv"), PathBuf::from);
    let python = venv.join("bin/python3");
    assert!(
        python.exists(),
        "{} missing: run tests/setup.sh (it installs the Python prometheus-client parser into that venv)",
        python.display()
    );
    python
}

/// Parse a 0.0.4 exposition with `prometheus_client.parser` and return its families as JSON.
const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for f in text_string_to_metric_families(sys.stdin.read()):
    out.append({"name": f.name, "type": f.type, "help": f.documentation,
                "samples": [{"name": s.name, "labels": s.labels, "value": s.value} for s in f.samples]})
json.dump(out, sys.stdout)
"#;

/// A sample's labels, as the parser read them.
type Labels = BTreeMap<String, String>;

fn parse_with_prometheus_client(text: &str) -> Vec<serde_json::Value> {
    let mut child = Command::new(venv_python())
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the venv's python3");
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write the exposition");
    let out = child.wait_with_output().expect("python3");
    assert!(
        out.status.success(),
        "prometheus_client.parser rejected /metrics:\n{}\n--- exposition:\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("parser output")
}

/// Bug: label values were written unescaped (a `"` in a service name broke the whole scrape),
/// `maglevd_backend_up` and `maglevd_backend_slots` were interleaved, and the I/O counters had
/// no HELP.
#[test]
fn metrics_parse_with_a_real_prometheus_parser() {
    let weird = "we\"ird\\name";
    let sh = shared(weird);
    let w = sh.counters.worker(1).expect("worker 1");
    w.record(&Verdict::Drop(DropReason::Ipv4Checksum));
    w.record(&Verdict::Pass(PassReason::NotVip));
    bump(&w.io.rx_frames, 5);
    bump(&sh.counters.worker(0).expect("worker 0").io.rx_frames, 2);
    let (addr, done) = start(&sh);
    let r = get(addr, "/metrics", Duration::from_secs(2)).expect("GET /metrics");
    assert_eq!(r.code, 200, "{}", r.head);
    assert!(
        r.head.lines().any(|l| l.eq_ignore_ascii_case("content-type: text/plain; version=0.0.4; charset=utf-8")),
        "content type of the 0.0.4 text format:\n{}",
        r.head
    );
    let families = parse_with_prometheus_client(&r.body);

    // Every family once (a family split by another one comes out twice), with HELP and TYPE.
    let mut seen = BTreeSet::new();
    let mut samples: BTreeMap<String, Vec<(Labels, f64)>> = BTreeMap::new();
    for f in &families {
        let name = f["name"].as_str().expect("name");
        assert!(seen.insert(name.to_string()), "family {name} appears twice (interleaved):\n{}", r.body);
        let typ = f["type"].as_str().expect("type");
        assert!(matches!(typ, "counter" | "gauge"), "family {name} has type {typ}:\n{}", r.body);
        assert!(!f["help"].as_str().unwrap_or("").trim().is_empty(), "family {name} has no HELP:\n{}", r.body);
        for s in f["samples"].as_array().expect("samples") {
            let labels = s["labels"]
                .as_object()
                .expect("labels")
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().expect("label value").to_string()))
                .collect();
            samples
                .entry(s["name"].as_str().expect("sample name").to_string())
                .or_default()
                .push((labels, s["value"].as_f64().expect("value")));
        }
    }

    // Every metric name of the daemon.
    let mut want: BTreeSet<String> = [
        "maglevd_forwarded_total",
        "maglevd_drop_total",
        "maglevd_pass_total",
        "maglevd_arp_replies_sent_total",
        "maglevd_arp_vip_requests_refused_total",
        "maglevd_arp_probes_sent_total",
        "maglevd_arp_macs_learned_total",
        "maglevd_arp_macs_expired_total",
        "maglevd_arp_errors_total",
        "maglevd_arp_own_mac_refused_total",
        "maglevd_arp_mac_claims_total",
        "maglevd_arp_mac_changes_confirmed_total",
        "maglevd_arp_mac_conflicts_kept_total",
        "maglevd_reload_failures_total",
        "maglevd_snapshot_generation",
        "maglevd_workers",
        "maglevd_kernel_drop_installed",
        "maglevd_backend_up",
        "maglevd_backend_slots",
        "maglevd_http_connections_refused_total",
        "maglevd_http_connections_timed_out_total",
        // Per backend traffic.
        "maglevd_backend_packets_total",
        "maglevd_backend_bytes_total",
        "maglevd_backend_flows_total",
        // Health (maglevd_backend_last_probe_error_info has a sample only after a failed probe).
        "maglevd_backend_healthy",
        "maglevd_backend_health_transitions_total",
        "maglevd_service_all_down",
        // Connection tracking, per worker.
        "maglevd_flow_entries",
        "maglevd_flow_capacity",
        "maglevd_flow_hits_total",
        "maglevd_flow_misses_total",
        "maglevd_flow_inserts_total",
        "maglevd_flow_evictions_total",
        "maglevd_flow_timeouts_total",
        "maglevd_flow_rechosen_total",
        "maglevd_fragment_entries",
        "maglevd_fragments_followed_total",
        "maglevd_fragments_untracked_total",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    want.extend(IoCounters::default().values().into_iter().map(|(n, _)| format!("maglevd_{n}_total")));
    let got: BTreeSet<String> = samples.keys().cloned().collect();
    assert_eq!(got, want, "metric names");
    dashboard_queries_use_exported_metrics(&samples);

    let one = |name: &str| -> f64 {
        let v = &samples[name];
        assert_eq!(v.len(), 1, "{name}: {v:?}");
        v[0].1
    };
    assert_eq!(one("maglevd_rx_frames_total"), 7.0, "summed over workers");
    assert_eq!(one("maglevd_workers"), 2.0);
    assert_eq!(one("maglevd_snapshot_generation"), 7.0);
    let by_label = |name: &str, key: &str, value: &str| -> f64 {
        samples[name].iter().find(|(l, _)| l.get(key).map(String::as_str) == Some(value)).map_or(-1.0, |s| s.1)
    };
    assert_eq!(by_label("maglevd_drop_total", "reason", "ipv4_checksum"), 1.0);
    assert_eq!(by_label("maglevd_pass_total", "reason", "not_vip"), 1.0);

    // The weird service name round-trips as a label value.
    let backend = |name: &str, service: &str, ip: &str| -> f64 {
        let want =
            BTreeMap::from([("service".to_string(), service.to_string()), ("backend".to_string(), ip.to_string())]);
        samples[name]
            .iter()
            .find(|(l, _)| *l == want)
            .unwrap_or_else(|| panic!("no {name}{want:?}: {:?}", samples[name]))
            .1
    };
    assert_eq!(backend("maglevd_backend_up", weird, "10.0.0.7"), 1.0);
    assert_eq!(backend("maglevd_backend_up", weird, "10.0.0.8"), 0.0);
    assert_eq!(backend("maglevd_backend_up", "plain", "10.0.0.9"), 1.0);
    assert_eq!(backend("maglevd_backend_slots", weird, "10.0.0.7"), 251.0);
    assert_eq!(backend("maglevd_backend_slots", weird, "10.0.0.8"), 0.0);
    assert_eq!(backend("maglevd_backend_slots", "plain", "10.0.0.9"), 251.0);
    eprintln!(
        "prometheus_client.parser read {} families, each with HELP and TYPE; service label {:?} round-tripped",
        families.len(),
        weird
    );
    stop(&sh, &done);
}

/// docker/grafana/maglevd-dashboard.json: valid JSON, and every metric its queries use is one
/// the endpoint exports, with the labels the queries group by. (The last-probe-error family has
/// samples only after a failed probe: its name is checked against the daemon's code instead.)
fn dashboard_queries_use_exported_metrics(samples: &BTreeMap<String, Vec<(Labels, f64)>>) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docker/grafana/maglevd-dashboard.json");
    let text = std::fs::read_to_string(path).expect("read the dashboard");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let panels = dash["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10, "{} panels", panels.len());
    let mut used = BTreeSet::new();
    for p in panels {
        let title = p["title"].as_str().expect("title");
        assert!(p["gridPos"]["w"].as_u64().is_some(), "{title}: no gridPos");
        for t in p["targets"].as_array().expect("targets") {
            let expr = t["expr"].as_str().expect("expr");
            let names: Vec<&str> = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("maglevd_"))
                .collect();
            assert!(!names.is_empty(), "{title}: {expr}");
            // Labels grouped by: `by (a, b)`.
            let grouped: Vec<&str> = expr
                .split("by (")
                .skip(1)
                .flat_map(|rest| rest.split(')').next().unwrap_or("").split(','))
                .map(str::trim)
                .filter(|l| *l != "instance")
                .collect();
            for name in names {
                used.insert(name.to_string());
                if name == "maglevd_backend_last_probe_error_info" {
                    assert!(
                        include_str!("../src/daemon/http.rs").contains(&format!("\"{name}\"")),
                        "{title}: {name} is not a metric of the daemon"
                    );
                    continue;
                }
                let s = samples.get(name).unwrap_or_else(|| panic!("{title}: {name} is not exported"));
                for label in &grouped {
                    assert!(
                        s.iter().any(|(l, _)| l.contains_key(*label)),
                        "{title}: {name} has no label {label:?} ({expr})"
                    );
                }
            }
        }
    }
    for needed in ["maglevd_backend_packets_total", "maglevd_drop_total", "maglevd_flow_entries", "maglevd_backend_up"]
    {
        assert!(used.contains(needed), "the dashboard does not show {needed}");
    }
}
