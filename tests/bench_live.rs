//! `maglevd bench live` end to end: builds its three namespaces, measures kernel forwarding and
//! maglevd's datapath, and removes everything. Runs as root (tests/run-all.sh); fails, never
//! skips, without it. Asserts behaviour only — no timing thresholds.

use std::process::Command;

use serde_json::Value;

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
