//! The metrics endpoint (`daemon::http::serve`) on a real loopback socket over the daemon's real
//! shared state: `/metrics` is parsed by a real Prometheus text-format parser, the Python
//! `prometheus-client` package that tests/setup.sh installs into a venv (`MAGLEVD_TEST_VENV`,
//! default `/tmp/maglevd-test-venv`): the test fails, never skips, without it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

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
    Arc::new(Shared::new(snap, 2, Arc::new(AtomicBool::new(false))))
}

/// The endpoint on 127.0.0.1:<ephemeral>, served on its own thread.
fn start(shared: &Arc<Shared>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local address");
    let shared = Arc::clone(shared);
    std::thread::spawn(move || http::serve(listener, &shared));
    addr
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
    let addr = start(&sh);
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

    // Every metric name of the daemon, exactly as before.
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
        "maglevd_reload_failures_total",
        "maglevd_snapshot_generation",
        "maglevd_workers",
        "maglevd_backend_up",
        "maglevd_backend_slots",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    want.extend(IoCounters::default().values().into_iter().map(|(n, _)| format!("maglevd_{n}_total")));
    let got: BTreeSet<String> = samples.keys().cloned().collect();
    assert_eq!(got, want, "metric names");

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
}
