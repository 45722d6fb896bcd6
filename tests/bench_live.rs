//! `maglevd bench live` end to end: builds its three namespaces, measures kernel forwarding and
//! maglevd's datapath — UDP frames, iperf3 (`--traffic tcp`) and wrk against nginx (`--traffic
//! http`) — and removes everything. Runs as root (tests/run-all.sh, which installs iperf3, wrk and
//! nginx); fails, never skips, without them. Asserts behaviour only — no timing thresholds.

use std::process::Command;
use std::sync::Mutex;

use serde_json::Value;

/// One live benchmark at a time: each pins its threads and programs to both CPUs and would count
/// another's load as foreign (and wait for it to pass).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn require_root() {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let uid = status.lines().find(|l| l.starts_with("Uid:")).expect("Uid line");
    assert!(
        uid.split_whitespace().nth(1) == Some("0"),
        "bench live builds network namespaces and must run as root (tests/run-all.sh as root)"
    );
}

fn namespaces() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.split_whitespace().next()).map(String::from).collect()
}

fn delivered(v: &Value, mode: &str) -> f64 {
    v["summary"][mode]["delivered_pps"].as_f64().unwrap_or_else(|| panic!("no summary.{mode}.delivered_pps in {v}"))
}

#[test]
fn bench_live_compares_kernel_and_maglevd_and_cleans_up() {
    require_root();
    let _one = serial();
    let child = Command::new(env!("CARGO_BIN_EXE_maglevd"))
        .args(["bench", "live", "--seconds", "1", "--repeat", "1", "--probes", "100", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn maglevd bench live");
    let prefix = format!("mlvb{}-", child.id());
    let out = child.wait_with_output().expect("wait for maglevd bench live");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench live failed ({}):\n{stdout}\n{stderr}", out.status);

    let leftovers: Vec<String> = namespaces().into_iter().filter(|n| n.starts_with(&prefix)).collect();
    assert!(leftovers.is_empty(), "namespaces left behind: {leftovers:?}");

    let v: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}"));
    assert_eq!(v["bench"], "live");
    assert_eq!(v["traffic"], "udp");
    assert!(delivered(&v, "kernel") > 0.0, "kernel delivered nothing:\n{stdout}\n{stderr}");
    assert!(delivered(&v, "maglevd") > 0.0, "maglevd delivered nothing:\n{stdout}\n{stderr}");
    assert!(v["summary"]["ratio_maglevd_kernel"].as_f64().is_some());
    let runs = v["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 2, "one run per mode");
    // maglevd tracks connections as the daemon does: the default 4096 flows (UDP source ports),
    // each tracked once.
    assert_eq!(v["config"]["tracking"], true, "{}", v["config"]);
    let maglevd = runs.iter().find(|r| r["mode"] == "maglevd").expect("a maglevd run");
    assert_eq!(maglevd["flows_tracked"], 4096, "{maglevd}");
    // The daemon's kernel drop filter is on lbin during the maglevd runs, and gone for the kernel
    // runs after them (the kernel latency probes below come after a maglevd run).
    assert_eq!(v["config"]["kernel_drop"], true, "{}", v["config"]);
    assert_eq!(maglevd["kernel_drop"], true, "{maglevd}");

    let lat = v["latency"].as_array().expect("latency");
    let modes: Vec<&str> = lat.iter().filter_map(|l| l["mode"].as_str()).collect();
    assert_eq!(modes, ["kernel", "maglevd_v2", "maglevd_v3"]);
    for l in lat {
        assert_eq!(l["sent"], 100);
        assert!(l["received"].as_u64().unwrap_or(0) > 0, "no probe came through: {l}");
        assert!(l["median_us"].as_f64().is_some() && l["p99_us"].as_f64().is_some(), "{l}");
    }
    assert!(lat[1]["added_us"].as_f64().is_some(), "no added latency for maglevd: {}", lat[1]);
}

/// `--spread` (a worker per CPU, the kernel with RPS on all) and `--latency-load` (probes over
/// background traffic at a share of the measured rate).
#[test]
fn bench_live_spreads_workers_and_measures_latency_under_load() {
    require_root();
    let _one = serial();
    let out = Command::new(env!("CARGO_BIN_EXE_maglevd"))
        .args(["bench", "live", "--seconds", "1", "--repeat", "1", "--probes", "100", "--json"])
        .args(["--spread", "--workers", "2", "--latency-load", "0.3"])
        .output()
        .expect("run maglevd bench live");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench live failed ({}):\n{stdout}\n{stderr}", out.status);
    let v: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}"));
    assert_eq!(v["config"]["spread"], true, "{}", v["config"]);
    assert_eq!(v["config"]["workers"], 2, "{}", v["config"]);
    let placement = v["placement"].to_string();
    assert!(placement.contains("w0 on CPU 0, w1 on CPU 1") && placement.contains("RPS on lbin, mask 3"), "{placement}");
    assert!(delivered(&v, "maglevd") > 0.0 && delivered(&v, "kernel") > 0.0, "{stdout}");
    // 0.3 of the slower median, the same for every mode.
    let slower = delivered(&v, "kernel").min(delivered(&v, "maglevd"));
    let bg = v["config"]["latency_background_pps"].as_f64().expect("latency_background_pps");
    assert!((bg - 0.3 * slower).abs() <= 1.0, "background {bg} for a slower median of {slower}");
    for l in v["latency"].as_array().expect("latency") {
        assert!(l["received"].as_u64().unwrap_or(0) > 0, "no probe came through the load: {l}");
    }
    assert!(v["latency"][1]["added_p99_us"].as_f64().is_some(), "{}", v["latency"][1]);
}

#[test]
fn bench_live_rejects_bad_arguments_without_touching_anything() {
    let child = Command::new(env!("CARGO_BIN_EXE_maglevd"))
        .args(["bench", "live", "--size", "10", "--flows", "0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run maglevd");
    let prefix = format!("mlvb{}-", child.id());
    let out = child.wait_with_output().expect("wait for maglevd");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--size") && err.contains("--flows"), "{err}");
    assert!(namespaces().iter().all(|n| !n.starts_with(&prefix)));
}

/// Runs `maglevd bench live ARGS` and checks that it succeeded and left no namespace, no program
/// and no temporary directory behind; its stdout and stderr.
fn run_live(args: &[&str]) -> (String, String) {
    let child = Command::new(env!("CARGO_BIN_EXE_maglevd"))
        .args(["bench", "live"])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn maglevd bench live");
    let pid = child.id();
    let out = child.wait_with_output().expect("wait for maglevd bench live");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "bench live {args:?} failed ({}):\n{stdout}\n{stderr}", out.status);
    let prefix = format!("mlvb{pid}-");
    let leftovers: Vec<String> = namespaces().into_iter().filter(|n| n.starts_with(&prefix)).collect();
    assert!(leftovers.is_empty(), "namespaces left behind: {leftovers:?}");
    // Its programs (nginx is started with -p on this directory) and the directory are gone.
    let dir = std::env::temp_dir().join(format!("maglevd-bench-live-{pid}"));
    assert!(!dir.exists(), "{} left behind", dir.display());
    let marker = dir.display().to_string();
    let running: Vec<String> = std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&marker))
        .collect();
    assert!(running.is_empty(), "programs left running: {running:?}");
    (stdout, stderr)
}

/// `summary.TEST`: both medians > 0 and a ratio.
fn check_summary(v: &Value, test: &str, unit: &str, context: &str) {
    let t = &v["summary"][test];
    assert_eq!(t["unit"], unit, "{context}");
    for mode in ["kernel", "maglevd"] {
        let m = &t[mode];
        let median = m["median"].as_f64().unwrap_or_else(|| panic!("no summary.{test}.{mode}.median:\n{context}"));
        assert!(median > 0.0, "{test} through {mode}: nothing measured:\n{context}");
        assert!(m["min"].as_f64().unwrap() <= median && median <= m["max"].as_f64().unwrap(), "{m}");
        assert_eq!(m["runs"], 1, "{m}");
    }
    let ratio = t["ratio_maglevd_kernel"].as_f64().unwrap_or_else(|| panic!("no ratio for {test}:\n{context}"));
    assert!(ratio > 0.0, "{context}");
}

#[test]
fn bench_live_tcp_runs_iperf3_through_both_forwarders() {
    require_root();
    let _one = serial();
    let (stdout, stderr) = run_live(&["--traffic", "tcp", "--seconds", "1", "--repeat", "1", "--json"]);
    let context = format!("{stdout}\n{stderr}");
    let v: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}):\n{context}"));
    assert_eq!((&v["bench"], &v["traffic"]), (&"live".into(), &"tcp".into()), "{context}");
    assert_eq!(v["config"]["streams"], 1, "{context}");
    assert!(v["placement"].as_array().is_some_and(|p| p.len() >= 2), "{context}");
    check_summary(&v, "tcp_bulk", "bits_per_second", &context);
    let runs = v["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 2, "one run per forwarder:\n{context}");
    for r in runs {
        assert_eq!(r["test"], "tcp_bulk", "{r}");
        assert!(r["bits_per_second"].as_f64().is_some_and(|b| b > 0.0), "{r}");
        assert!(r["retransmits"].as_u64().is_some(), "{r}");
    }
    // maglevd forwarded the stream and tracked its connections (iperf3's control and data).
    let m = runs.iter().find(|r| r["mode"] == "maglevd").expect("a maglevd run");
    assert!(m["maglevd_forwarded_pps"].as_f64().is_some_and(|f| f > 0.0), "{m}");
    assert!(m["flows_tracked"].as_u64().is_some_and(|f| f >= 2), "{m}");
    assert_eq!(m["kernel_drop"], true, "{m}");

    // The readable report has the table and the ratio.
    let (text, _) = run_live(&["--traffic", "tcp", "--seconds", "1", "--repeat", "1", "--warmup", "0"]);
    assert!(text.contains("TCP bulk (iperf3)") && text.contains("ratio maglevd/kernel: "), "{text}");
}

#[test]
fn bench_live_http_runs_wrk_against_nginx_through_both_forwarders() {
    require_root();
    let _one = serial();
    let (stdout, stderr) = run_live(&["--traffic", "http", "--seconds", "1", "--repeat", "1", "--json"]);
    let context = format!("{stdout}\n{stderr}");
    let v: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}):\n{context}"));
    assert_eq!(v["traffic"], "http", "{context}");
    assert_eq!(v["config"]["connections"], 32, "{context}");
    check_summary(&v, "http_keepalive", "requests_per_second", &context);
    check_summary(&v, "http_close", "requests_per_second", &context);
    let runs = v["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 4, "keep-alive and close through each forwarder:\n{context}");
    for r in runs {
        assert!(r["requests"].as_u64().is_some_and(|n| n > 0), "{r}");
        assert!(r["errors"].as_u64().is_some(), "{r}");
        assert!(r["latency_p50_us"].as_f64().is_some() && r["latency_p99_us"].as_f64().is_some(), "{r}");
    }
    // One connection per request: maglevd saw (and tracked) many connections, keep-alive 32.
    let flows = |test: &str| {
        runs.iter().find(|r| r["mode"] == "maglevd" && r["test"] == test).expect("a maglevd run")["flows_tracked"]
            .as_u64()
            .unwrap_or(0)
    };
    assert!(flows("http_close") > flows("http_keepalive"), "{context}");
}
