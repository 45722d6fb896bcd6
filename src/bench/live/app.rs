//! `bench live --traffic tcp|http`: real programs through the two forwarders, on the topology
//! with the return path ([`Topology::create_with_return`]).
//!
//! Each measurement starts its server in `sink` (bound to the VIP on `lo`), waits until it
//! listens, waits for the machine to be quiet, runs its client in `gen` and reads the client's own
//! figures; the server is stopped after it. Every program runs as
//! `ip netns exec NS timeout -k 2 BOUND taskset -c CPU PROGRAM …` in a process group of its own:
//! `timeout` bounds it even if the benchmark dies, the group is killed when its handle
//! (`Proc`) is dropped (on success, on error, on SIGINT/SIGTERM), and `taskset` pins it. The
//! configuration files and outputs live in a temporary directory removed at the end.
//!
//! * **tcp**: `iperf3 -s -B VIP -p 5201 -1` in `sink`; `iperf3 -c VIP -t SECONDS -O WARMUP -P
//!   STREAMS --json` in `gen`. The rate is the receiver's bits per second over the window (the
//!   omitted warm-up excluded); retransmits are the sender's.
//! * **http**: nginx in `sink` (generated configuration: one process, `listen VIP:80`, `return
//!   200` with a 14-byte body, keep-alive for 1,000,000 requests, no access log); wrk in `gen`,
//!   one thread and `--connections` connections, first keep-alive, then with `Connection: close`
//!   (one TCP connection per request). A warm-up run of wrk precedes each measured one. A Lua
//!   `done` hook prints wrk's totals as one JSON line: requests, duration, errors, latency
//!   percentiles.

use std::fmt::Write as _;
use std::fs::File;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{
    ATTEMPTS, Conditions, FOREIGN_LIMIT, LB_IN, LiveArgs, LiveReport, Mode, Traffic, Workers, sleep_checked, wait_quiet,
};
use crate::bench::json::Json;
use crate::bench::netns::{SINK_IF, Topology, VIP};
use crate::bench::stats::{self, LoadMeter, median};
use crate::bench::{BenchError, fmt_load};
use crate::io::RingVersion;

/// iperf3's port (its default).
pub const IPERF_PORT: u16 = 5201;
/// nginx's port.
pub const HTTP_PORT: u16 = 80;
/// How long a server may take to listen.
const LISTEN_WAIT: Duration = Duration::from_secs(5);
/// Extra time a client gets past its own duration before it counts as hung.
const CLIENT_GRACE: Duration = Duration::from_secs(15);
/// The body nginx returns.
const BODY: &str = "maglevd bench";

/// One measurement of a traffic mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppTest {
    /// iperf3, bits per second.
    TcpBulk,
    /// wrk keep-alive, requests per second.
    HttpKeepAlive,
    /// wrk with `Connection: close`, requests per second.
    HttpClose,
}

impl AppTest {
    /// The measurements of `traffic` (none for udp).
    pub fn of(traffic: Traffic) -> &'static [AppTest] {
        match traffic {
            Traffic::Udp => &[],
            Traffic::Tcp => &[AppTest::TcpBulk],
            Traffic::Http => &[AppTest::HttpKeepAlive, AppTest::HttpClose],
        }
    }

    /// Key in the JSON summary.
    pub fn key(self) -> &'static str {
        match self {
            AppTest::TcpBulk => "tcp_bulk",
            AppTest::HttpKeepAlive => "http_keepalive",
            AppTest::HttpClose => "http_close",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            AppTest::TcpBulk => "TCP bulk (iperf3)",
            AppTest::HttpKeepAlive => "HTTP keep-alive (wrk)",
            AppTest::HttpClose => "HTTP connection per request (wrk)",
        }
    }

    /// JSON key of the rate.
    pub fn unit_key(self) -> &'static str {
        match self {
            AppTest::TcpBulk => "bits_per_second",
            AppTest::HttpKeepAlive | AppTest::HttpClose => "requests_per_second",
        }
    }

    /// The rate for people: `9.41 Gbit/s` or `51234 req/s`.
    pub fn fmt_rate(self, v: f64) -> String {
        match self {
            AppTest::TcpBulk => format!("{:.2} Gbit/s", v / 1e9),
            AppTest::HttpKeepAlive | AppTest::HttpClose => format!("{v:.0} req/s"),
        }
    }
}

/// One run of one measurement through one forwarder.
#[derive(Debug, Clone, PartialEq)]
pub struct AppRun {
    pub mode: Mode,
    pub test: AppTest,
    pub run: u32,
    /// The client's own window, seconds.
    pub seconds: f64,
    /// Bits per second received (tcp) or requests per second completed (http).
    pub rate: f64,
    /// tcp: the sender's retransmitted segments.
    pub retransmits: Option<u64>,
    /// http: requests completed in the window.
    pub requests: Option<u64>,
    /// http: wrk's errors (connect, read, write, timeout, non-2xx/3xx status).
    pub errors: Option<u64>,
    /// http: wrk's latency percentiles, µs.
    pub latency_p50_us: Option<f64>,
    pub latency_p99_us: Option<f64>,
    /// The machine's load around the window, and what maglevd's workers reported.
    pub cond: Conditions,
}

/// Median, min and max of one measurement through one forwarder.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AppSummary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub runs: usize,
    pub flagged: usize,
}

/// Summary of `test` through `mode` (`None` without runs).
pub fn summarize(runs: &[AppRun], test: AppTest, mode: Mode) -> Option<AppSummary> {
    let r: Vec<&AppRun> = runs.iter().filter(|r| r.mode == mode && r.test == test).collect();
    let v: Vec<f64> = r.iter().map(|x| x.rate).collect();
    Some(AppSummary {
        median: median(&v)?,
        min: stats::min(&v)?,
        max: stats::max(&v)?,
        runs: r.len(),
        flagged: r.iter().filter(|x| x.cond.flagged).count(),
    })
}

/// Median rate of `test`, maglevd over kernel.
pub fn ratio(runs: &[AppRun], test: AppTest) -> Option<f64> {
    let k = summarize(runs, test, Mode::Kernel)?;
    let m = summarize(runs, test, Mode::Maglevd)?;
    (k.median > 0.0).then(|| m.median / k.median)
}

/// Whole seconds of warm-up (iperf3's `-O` and wrk's `-d` take whole seconds).
fn warmup_secs(args: &LiveArgs) -> u64 {
    args.warmup.ceil() as u64
}

/// Checks that the programs of `traffic` are installed.
pub fn preflight(traffic: Traffic) -> Result<(), BenchError> {
    let progs: &[&str] = match traffic {
        Traffic::Udp => &[],
        Traffic::Tcp => &["iperf3", "timeout", "taskset", "kill"],
        Traffic::Http => &["wrk", "nginx", "timeout", "taskset", "kill"],
    };
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> =
        std::env::split_paths(&path).chain(["/usr/sbin", "/sbin"].iter().map(PathBuf::from)).collect();
    let missing: Vec<&str> = progs.iter().copied().filter(|p| !dirs.iter().any(|d| d.join(p).is_file())).collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(BenchError::Env(format!(
            "bench live --traffic {} needs {} (Debian: apt-get install iperf3 wrk nginx-light coreutils util-linux procps; \
             tests/setup.sh installs them)",
            traffic.name(),
            missing.join(", ")
        )))
    }
}

// ---------------------------------------------------------------------------------------------
// Child processes

/// A program running in one of the bench's namespaces; killed (its whole process group) and
/// reaped when dropped.
#[derive(Debug)]
struct Proc {
    what: String,
    child: Option<Child>,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Proc {
    /// Starts `argv` in namespace `ns`, pinned to `cpu`, ended by `timeout` after `bound`; its
    /// stdout and stderr go to files named after `tag` in `dir`.
    fn spawn(
        topo: &Topology,
        ns: &str,
        cpu: usize,
        bound: Duration,
        argv: &[String],
        dir: &Path,
        tag: &str,
    ) -> Result<Proc, BenchError> {
        let what = format!("{} in {ns}", argv.first().map_or("?", String::as_str));
        let stdout = dir.join(format!("{tag}.out"));
        let stderr = dir.join(format!("{tag}.err"));
        let file = |p: &Path| File::create(p).map_err(|e| BenchError::Setup(format!("creating {}: {e}", p.display())));
        let (out, err) = (file(&stdout)?, file(&stderr)?);
        let mut cmd = topo.netns(ns)?.command("timeout");
        cmd.args(["-k", "2", &format!("{}s", bound.as_secs().max(1)), "taskset", "-c", &cpu.to_string()])
            .args(argv)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Its own process group (timeout keeps it): one kill reaches timeout and the program.
            .process_group(0);
        let child = cmd.spawn().map_err(|e| BenchError::Setup(format!("starting {what}: {e}")))?;
        Ok(Proc { what, child: Some(child), stdout, stderr })
    }

    /// Still running?
    fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Waits for the program to end by itself, at most until `deadline`.
    fn wait(&mut self, deadline: Instant, intr: &AtomicBool) -> Result<ExitStatus, BenchError> {
        let child = self.child.as_mut().ok_or_else(|| BenchError::Setup(format!("{}: already reaped", self.what)))?;
        loop {
            if intr.load(Ordering::Relaxed) {
                return Err(BenchError::Interrupted);
            }
            match child.try_wait() {
                Ok(Some(st)) => {
                    self.child = None;
                    return Ok(st);
                }
                Ok(None) if Instant::now() >= deadline => {
                    return Err(BenchError::Setup(format!("{} did not finish in time (killed)", self.what)));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => return Err(BenchError::Setup(format!("waiting for {}: {e}", self.what))),
            }
        }
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// The end of its stderr, for error messages.
    fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if matches!(c.try_wait(), Ok(None)) {
                // The process group is the child's pid (process_group(0)); it cannot be reused
                // before the child is reaped below.
                let _ = Command::new("kill")
                    .args(["-s", "KILL", "--", &format!("-{}", c.id())])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

/// A temporary directory, removed when dropped.
#[derive(Debug)]
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir, BenchError> {
        let p = std::env::temp_dir().join(format!("maglevd-bench-live-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        // tmp/: nginx's temporary paths (it creates their last component only).
        std::fs::create_dir_all(p.join("tmp"))
            .map_err(|e| BenchError::Setup(format!("creating {}: {e}", p.display())))?;
        Ok(TempDir(p))
    }
    fn write(&self, name: &str, text: &str) -> Result<PathBuf, BenchError> {
        let p = self.0.join(name);
        std::fs::write(&p, text).map_err(|e| BenchError::Setup(format!("writing {}: {e}", p.display())))?;
        Ok(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Is something listening on `ip:port` (or the wildcard) in a `/proc/net/tcp` text?
pub fn tcp_listening(text: &str, ip: std::net::Ipv4Addr, port: u16) -> bool {
    // Addresses are the in-memory (network order) bytes printed as a host-order u32.
    let want = [format!("{:08X}:{port:04X}", u32::from_le_bytes(ip.octets())), format!("00000000:{port:04X}")];
    text.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && want.iter().any(|w| w == f[1]) && f[3] == "0A"
    })
}

/// Waits until a server listens on the VIP's `port` in `sink`, or `proc` exits.
fn wait_listening(topo: &Topology, proc: &mut Proc, port: u16, intr: &AtomicBool) -> Result<(), BenchError> {
    let end = Instant::now() + LISTEN_WAIT;
    loop {
        let text = topo.in_ns("sink", || std::fs::read_to_string("/proc/thread-self/net/tcp"))?;
        if tcp_listening(&text.unwrap_or_default(), VIP, port) {
            return Ok(());
        }
        if !proc.running() {
            return Err(BenchError::Setup(format!("{} exited at start: {}", proc.what, proc.stderr_tail())));
        }
        if Instant::now() >= end {
            return Err(BenchError::Setup(format!("{} does not listen on {VIP}:{port}", proc.what)));
        }
        sleep_checked(Duration::from_millis(20), intr)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Programs and their output

/// nginx's configuration (see the module docs).
pub fn nginx_conf(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "# generated by maglevd bench live\n\
         daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n    access_log off;\n\
         \x20   client_body_temp_path {d}/tmp/body;\n    proxy_temp_path {d}/tmp/proxy;\n    fastcgi_temp_path {d}/tmp/fastcgi;\n\
         \x20   uwsgi_temp_path {d}/tmp/uwsgi;\n    scgi_temp_path {d}/tmp/scgi;\n\
         \x20   keepalive_timeout 65;\n    keepalive_requests 1000000;\n    default_type text/plain;\n\
         \x20   server {{\n        listen {VIP}:{HTTP_PORT} backlog=4096;\n        location / {{ return 200 \"{BODY}\\n\"; }}\n    }}\n}}\n"
    )
}

/// wrk's `done` hook: one JSON line with its totals.
const WRK_LUA: &str = r#"-- generated by maglevd bench live: wrk's totals as one JSON line
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    math.floor(latency:percentile(50)), math.floor(latency:percentile(99))))
end
"#;

/// What iperf3 reported.
#[derive(Debug, Clone, PartialEq)]
pub struct IperfResult {
    pub bits_per_second: f64,
    pub seconds: f64,
    pub retransmits: Option<u64>,
}

/// Parses `iperf3 -c … --json`: the receiver's rate and window, the sender's retransmits.
pub fn parse_iperf3(text: &str) -> Result<IperfResult, String> {
    let v: Value = serde_json::from_str(text.trim()).map_err(|e| format!("iperf3 output is not JSON ({e})"))?;
    if let Some(e) = v.get("error").and_then(Value::as_str) {
        return Err(format!("iperf3: {e}"));
    }
    let recv = &v["end"]["sum_received"];
    let bits_per_second =
        recv["bits_per_second"].as_f64().ok_or("iperf3 output has no end.sum_received.bits_per_second")?;
    Ok(IperfResult {
        bits_per_second,
        seconds: recv["seconds"].as_f64().unwrap_or(0.0),
        retransmits: v["end"]["sum_sent"]["retransmits"].as_u64(),
    })
}

/// What wrk reported (through its `done` hook, `WRK_LUA`).
#[derive(Debug, Clone, PartialEq)]
pub struct WrkResult {
    pub requests: u64,
    pub seconds: f64,
    pub errors: u64,
    pub p50_us: f64,
    pub p99_us: f64,
}

impl WrkResult {
    pub fn rate(&self) -> f64 {
        if self.seconds > 0.0 { self.requests as f64 / self.seconds } else { 0.0 }
    }
}

/// Parses wrk's output: the last JSON line the `done` hook printed.
pub fn parse_wrk(text: &str) -> Result<WrkResult, String> {
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with("{\"requests\""))
        .ok_or("wrk printed no totals (its done hook did not run)")?;
    let v: Value = serde_json::from_str(line.trim()).map_err(|e| format!("wrk totals are not JSON ({e}): {line}"))?;
    let n = |k: &str| v[k].as_u64().ok_or_else(|| format!("wrk totals lack {k}: {line}"));
    Ok(WrkResult {
        requests: n("requests")?,
        seconds: n("duration_us")? as f64 / 1e6,
        errors: n("connect")? + n("read")? + n("write")? + n("status")? + n("timeout")?,
        p50_us: n("p50_us")? as f64,
        p99_us: n("p99_us")? as f64,
    })
}

/// What the client of one measurement reported.
enum ClientResult {
    Iperf(IperfResult),
    Wrk(WrkResult),
}

// ---------------------------------------------------------------------------------------------
// The measurements

/// Runs every measurement of `args.traffic`, `--repeat` times through each forwarder, alternating.
pub(super) fn measure(lab: &super::Lab, args: &LiveArgs, intr: &AtomicBool) -> Result<Vec<AppRun>, BenchError> {
    let dir = TempDir::new()?;
    let lua = dir.write("report.lua", WRK_LUA)?;
    let nginx = dir.write("nginx.conf", &nginx_conf(&dir.0))?;
    let mut runs = Vec::new();
    for run in 1..=args.repeat {
        for mode in [Mode::Kernel, Mode::Maglevd] {
            for &test in AppTest::of(args.traffic) {
                let paths = Paths { dir: &dir.0, lua: &lua, nginx: &nginx };
                let r = run_once(lab, mode, test, run, args, &paths, intr)?;
                eprintln!(
                    "bench live: {:<7} run {run}: {:<34} {:>14}{}{}",
                    mode.name(),
                    test.label(),
                    test.fmt_rate(r.rate),
                    r.errors.filter(|e| *e > 0).map_or(String::new(), |e| format!(", {e} errors")),
                    if r.cond.flagged { " (foreign load)" } else { "" }
                );
                runs.push(r);
            }
        }
    }
    Ok(runs)
}

struct Paths<'a> {
    dir: &'a Path,
    lua: &'a Path,
    nginx: &'a Path,
}

fn run_once(
    lab: &super::Lab,
    mode: Mode,
    test: AppTest,
    run: u32,
    args: &LiveArgs,
    paths: &Paths<'_>,
    intr: &AtomicBool,
) -> Result<AppRun, BenchError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let r = attempt_once(lab, mode, test, run, attempt, args, paths, intr)?;
        if !r.cond.flagged || attempt >= ATTEMPTS {
            return Ok(r);
        }
        eprintln!(
            "bench live: {} run {run} ({}) taken under foreign load ({} before, {} during); repeating",
            mode.name(),
            test.key(),
            fmt_load(r.cond.pre_foreign),
            fmt_load(r.cond.foreign)
        );
        sleep_checked(Duration::from_secs(2), intr)?;
    }
}

/// The server of `test` in `sink`, listening when this returns.
fn start_server(
    topo: &Topology,
    test: AppTest,
    args: &LiveArgs,
    paths: &Paths<'_>,
    bound: Duration,
    intr: &AtomicBool,
) -> Result<Proc, BenchError> {
    let (argv, port): (Vec<String>, u16) = match test {
        AppTest::TcpBulk => (
            ["iperf3", "-s", "-1", "-B", &VIP.to_string(), "-p", &IPERF_PORT.to_string()].map(String::from).to_vec(),
            IPERF_PORT,
        ),
        AppTest::HttpKeepAlive | AppTest::HttpClose => {
            let (d, c) = (paths.dir.display().to_string(), paths.nginx.display().to_string());
            let e = paths.dir.join("nginx-error.log").display().to_string();
            (["nginx", "-p", &d, "-c", &c, "-e", &e].map(String::from).to_vec(), HTTP_PORT)
        }
    };
    let mut p = Proc::spawn(topo, "sink", args.gen_cpu, bound, &argv, paths.dir, "server")?;
    wait_listening(topo, &mut p, port, intr)?;
    Ok(p)
}

/// The client's command line for a window of `seconds` (after `omit` seconds for iperf3).
fn client_argv(test: AppTest, args: &LiveArgs, seconds: u64, omit: u64, lua: &Path) -> Vec<String> {
    match test {
        AppTest::TcpBulk => vec![
            "iperf3".into(),
            "-c".into(),
            VIP.to_string(),
            "-p".into(),
            IPERF_PORT.to_string(),
            "-t".into(),
            seconds.to_string(),
            "-O".into(),
            omit.to_string(),
            "-P".into(),
            args.streams.to_string(),
            "--connect-timeout".into(),
            "3000".into(),
            "--json".into(),
        ],
        AppTest::HttpKeepAlive | AppTest::HttpClose => {
            let mut v: Vec<String> = vec![
                "wrk".into(),
                "-t1".into(),
                format!("-c{}", args.connections),
                format!("-d{seconds}s"),
                "--timeout".into(),
                "2s".into(),
                "-s".into(),
                lua.display().to_string(),
            ];
            if test == AppTest::HttpClose {
                v.extend(["-H".into(), "Connection: close".into()]);
            }
            v.push(format!("http://{VIP}:{HTTP_PORT}/"));
            v
        }
    }
}

/// Runs a client to its end and returns its stdout.
fn run_client(
    topo: &Topology,
    argv: &[String],
    args: &LiveArgs,
    duration: Duration,
    dir: &Path,
    tag: &str,
    intr: &AtomicBool,
) -> Result<(Proc, String), BenchError> {
    let mut p = Proc::spawn(topo, "gen", args.gen_cpu, duration + CLIENT_GRACE, argv, dir, tag)?;
    let st = p.wait(Instant::now() + duration + CLIENT_GRACE, intr)?;
    let out = p.stdout();
    if !st.success() && out.trim().is_empty() {
        return Err(BenchError::Setup(format!("{} failed ({st}): {}", p.what, p.stderr_tail())));
    }
    Ok((p, out))
}

#[allow(clippy::too_many_arguments)]
fn attempt_once(
    lab: &super::Lab,
    mode: Mode,
    test: AppTest,
    run: u32,
    attempt: u32,
    args: &LiveArgs,
    paths: &Paths<'_>,
    intr: &AtomicBool,
) -> Result<AppRun, BenchError> {
    let topo = &lab.topo;
    lab.configure(mode, args)?;
    let workers = match mode {
        Mode::Maglevd => Some(Workers::start(topo, &lab.snap, args, RingVersion::V2)?),
        Mode::Kernel => None,
    };
    let (secs, omit) = (args.seconds as u64, warmup_secs(args));
    let server_bound = Duration::from_secs_f64(args.load_wait) + Duration::from_secs(2 * (secs + omit)) + CLIENT_GRACE;
    let result = (|| {
        let server = start_server(topo, test, args, paths, server_bound, intr)?;
        let pre_foreign = wait_quiet(args.load_wait, &format!("{} run {run} ({})", mode.name(), test.key()), intr)?;
        if test != AppTest::TcpBulk && omit > 0 {
            // wrk has no warm-up of its own: a short run first, not counted.
            let argv = client_argv(test, args, omit, 0, paths.lua);
            run_client(topo, &argv, args, Duration::from_secs(omit), paths.dir, "warmup", intr)?;
        }
        let argv = client_argv(test, args, secs, omit, paths.lua);
        let lead = if test == AppTest::TcpBulk { omit } else { 0 };
        let total = Duration::from_secs(secs + lead);
        let mut client = Proc::spawn(topo, "gen", args.gen_cpu, total + CLIENT_GRACE, &argv, paths.dir, "client")?;
        sleep_checked(Duration::from_secs(lead), intr)?;
        let read = || (Instant::now(), workers.as_ref().map_or(0, Workers::forwarded));
        let load = LoadMeter::start();
        let a = read();
        // The client's window (a little less, so that it still runs when the meter stops).
        sleep_checked(Duration::from_secs(secs).saturating_sub(Duration::from_millis(100)), intr)?;
        let b = read();
        let load = load.finish();
        let st = client.wait(Instant::now() + CLIENT_GRACE, intr)?;
        let out = client.stdout();
        let parsed = match test {
            AppTest::TcpBulk => parse_iperf3(&out).map(ClientResult::Iperf),
            AppTest::HttpKeepAlive | AppTest::HttpClose => parse_wrk(&out).map(ClientResult::Wrk),
        }
        .map_err(|e| BenchError::Setup(format!("{e} ({} exited {st}: {})", client.what, client.stderr_tail())))?;
        drop(server);
        let dt = b.0.duration_since(a.0).as_secs_f64();
        let fwd_pps = (dt > 0.0).then(|| b.1.saturating_sub(a.1) as f64 / dt);
        Ok::<_, BenchError>((parsed, pre_foreign, load, fwd_pps))
    })();
    let kernel_drop = workers.as_ref().map(Workers::kernel_drop);
    let drops = match workers {
        Some(w) => Some(w.finish()?),
        None => None,
    };
    let (parsed, pre_foreign, load, fwd_pps) = result?;
    let mut r = AppRun {
        mode,
        test,
        run,
        seconds: 0.0,
        rate: 0.0,
        retransmits: None,
        requests: None,
        errors: None,
        latency_p50_us: None,
        latency_p99_us: None,
        cond: Conditions::measured(args, attempt, pre_foreign, load.as_ref()).maglevd(
            if mode == Mode::Maglevd { fwd_pps } else { None },
            drops,
            kernel_drop,
        ),
    };
    match parsed {
        ClientResult::Iperf(i) => {
            r.seconds = i.seconds;
            r.rate = i.bits_per_second;
            r.retransmits = i.retransmits;
        }
        ClientResult::Wrk(w) => {
            r.seconds = w.seconds;
            r.rate = w.rate();
            r.requests = Some(w.requests);
            r.errors = Some(w.errors);
            r.latency_p50_us = Some(w.p50_us);
            r.latency_p99_us = Some(w.p99_us);
        }
    }
    Ok(r)
}

// ---------------------------------------------------------------------------------------------
// Reports

/// Where everything ran (tcp, http).
pub fn placement(args: &LiveArgs, rps: bool) -> Vec<String> {
    let (g, f) = (args.gen_cpu, args.fwd_cpu);
    let (client, server) = match args.traffic {
        Traffic::Http => ("wrk", "nginx"),
        _ => ("iperf3 client", "iperf3 server"),
    };
    let mut v = vec![format!(
        "endpoints: {client} (gen) and {server} (sink) pinned to CPU {g} (taskset); replies go sink -> gen \
         on the return path, not through lb"
    )];
    if rps {
        v.push(format!(
            "kernel:  lb forwards in softirq on CPU {f} (RPS on {LB_IN} -> CPU {f}); the receive of {SINK_IF} \
             (and of the replies' ACKs it sends) follows the forwarder's transmit onto CPU {f}"
        ));
        v.push(format!(
            "maglevd: {} worker(s) pinned to CPU {f} (RX TPACKET_V2 {} slots of 64 KiB super-frames, fanout hash, \
             VIP filter, vnet hdr; TX {} slots, qdisc bypass); RPS on {LB_IN} -> CPU {f}: {LB_IN}'s receive \
             (the copy into the RX ring, {}) runs there too, as a NIC's receive queue would on the balancer; \
             {SINK_IF}'s receive follows the TX ring onto CPU {f}",
            args.workers,
            args.rx_slots,
            args.tx_slots,
            if args.no_kernel_drop { "then lb's IP stack drop" } else { "then the tc kernel drop filter" }
        ));
    } else {
        v.push(format!(
            "RPS unavailable on this kernel: {LB_IN}'s receive (kernel forwarding, maglevd's ring copy) runs on \
             the endpoints' CPU {g}; maglevd's workers are pinned to CPU {f}"
        ));
    }
    v
}

fn fmt_opt_us(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| if v >= 1000.0 { format!("{:.2} ms", v / 1e3) } else { format!("{v:.0} µs") })
}

/// Text report (tcp, http).
pub fn render(r: &LiveReport) -> String {
    let a = &r.args;
    let mut s = String::new();
    let w = warmup_secs(a);
    match a.traffic {
        Traffic::Tcp => {
            let _ = writeln!(
                s,
                "live forwarding, TCP: iperf3 gen -> {VIP}:{IPERF_PORT} through lb -> sink, replies sink -> gen \
                 directly (DSR); {} stream(s), default offloads (TSO/GSO on), {} s windows after {w} s omitted, \
                 {} run(s) per mode",
                a.streams, a.seconds, a.repeat
            );
        }
        _ => {
            let _ = writeln!(
                s,
                "live forwarding, HTTP: wrk (1 thread, {} connections) gen -> nginx on {VIP}:{HTTP_PORT} through lb \
                 -> sink, replies sink -> gen directly (DSR); keep-alive, then one connection per request \
                 (Connection: close); {} s windows after a {w} s warm-up run, {} run(s) per mode",
                a.connections, a.seconds, a.repeat
            );
        }
    }
    let _ = writeln!(
        s,
        "maglevd: {} worker(s), {}; {}",
        a.workers,
        if a.no_tracking { "no connection tracking" } else { "connection tracking on (default [flows] table)" },
        if a.no_kernel_drop {
            "no kernel drop filter (--no-kernel-drop)"
        } else {
            "kernel drop filter on lbin (as maglevd run)"
        }
    );
    let _ = writeln!(s, "placement (2 cores: endpoints and forwarder apart, docs/lab.md pitfall 10):");
    for p in &r.placement {
        let _ = writeln!(s, "  {p}");
    }
    for &test in AppTest::of(a.traffic) {
        let _ = writeln!(s);
        let _ = writeln!(s, "{}:", test.label());
        let http = test != AppTest::TcpBulk;
        let _ = writeln!(
            s,
            "{:<8} {:>3} {:>14} {:>9} {:>10} {:>10} {:>9} {:>9}  notes",
            "mode",
            "run",
            if http { "req/s" } else { "Gbit/s" },
            if http { "errors" } else { "retrans" },
            if http { "lat p50" } else { "" },
            if http { "lat p99" } else { "" },
            "load pre",
            "load run"
        );
        for x in r.app_runs.iter().filter(|x| x.test == test) {
            let mut notes = x.cond.notes_before("endpoints");
            if let Some(f) = x.cond.forwarded_pps {
                if test == AppTest::TcpBulk && f > 0.0 {
                    notes.push(format!("maglevd forwarded {f:.0} frames/s (≈ {:.1} KB each)", x.rate / 8.0 / f / 1e3));
                } else {
                    notes.push(format!("maglevd forwarded {f:.0} frames/s"));
                }
            }
            x.cond.notes_after(&mut notes);
            let value = if http { format!("{:.0}", x.rate) } else { format!("{:.3}", x.rate / 1e9) };
            let count = if http { x.errors } else { x.retransmits };
            let _ = writeln!(
                s,
                "{:<8} {:>3} {:>14} {:>9} {:>10} {:>10} {:>9} {:>9}{} {}",
                x.mode.name(),
                x.run,
                value,
                count.map_or_else(|| "-".into(), |c| c.to_string()),
                if http { fmt_opt_us(x.latency_p50_us) } else { String::new() },
                if http { fmt_opt_us(x.latency_p99_us) } else { String::new() },
                fmt_load(x.cond.pre_foreign),
                fmt_load(x.cond.foreign),
                if x.cond.flagged { "*" } else { " " },
                notes.join(", ")
            );
        }
    }
    let _ = writeln!(
        s,
        "(load pre/run: CPU share of other processes just before / during the window; * = above {:.0}%)",
        FOREIGN_LIMIT * 100.0
    );
    let _ = writeln!(s);
    let _ = writeln!(s, "medians [min – max]:");
    for &test in AppTest::of(a.traffic) {
        for mode in [Mode::Kernel, Mode::Maglevd] {
            if let Some(m) = summarize(&r.app_runs, test, mode) {
                let _ = writeln!(
                    s,
                    "  {:<34} {:<8} {:>14}  [{} – {}]  ({} runs{})",
                    test.label(),
                    mode.name(),
                    test.fmt_rate(m.median),
                    test.fmt_rate(m.min),
                    test.fmt_rate(m.max),
                    m.runs,
                    if m.flagged > 0 { format!(", {} under foreign load (*)", m.flagged) } else { String::new() }
                );
            }
        }
        match ratio(&r.app_runs, test) {
            Some(x) => {
                let _ = writeln!(s, "  {:<34} ratio maglevd/kernel: {x:.2}", test.label());
            }
            None => {
                let _ = writeln!(s, "  {:<34} ratio maglevd/kernel: n/a", test.label());
            }
        }
    }
    s
}

/// JSON document (tcp, http; schema in the module docs of [`super`]).
pub fn to_json(r: &LiveReport) -> Json {
    let a = &r.args;
    let mut cfg = Json::obj().with("seconds", a.seconds).with("warmup", warmup_secs(a));
    cfg = match a.traffic {
        Traffic::Tcp => cfg.with("streams", a.streams),
        _ => cfg.with("connections", a.connections).with("wrk_threads", 1u32),
    };
    let cfg = cfg
        .with("workers", a.workers)
        .with("repeat", a.repeat)
        .with("rx_slots", a.rx_slots)
        .with("tx_slots", a.tx_slots)
        .with("tracking", !a.no_tracking)
        .with("kernel_drop", !a.no_kernel_drop)
        .with("gen_cpu", a.gen_cpu)
        .with("fwd_cpu", a.fwd_cpu)
        .with("load_wait", a.load_wait);
    let runs: Vec<Json> = r
        .app_runs
        .iter()
        .map(|x| {
            let j = Json::obj()
                .with("test", x.test.key())
                .with("mode", x.mode.name())
                .with("run", x.run)
                .with("seconds", x.seconds)
                .with(x.test.unit_key(), x.rate);
            let j = match x.test {
                AppTest::TcpBulk => j.with("retransmits", x.retransmits),
                AppTest::HttpKeepAlive | AppTest::HttpClose => j
                    .with("requests", x.requests)
                    .with("errors", x.errors)
                    .with("latency_p50_us", x.latency_p50_us)
                    .with("latency_p99_us", x.latency_p99_us),
            };
            x.cond.json(j)
        })
        .collect();
    let mut summary = Json::obj();
    for &test in AppTest::of(a.traffic) {
        let mut t = Json::obj().with("unit", test.unit_key());
        for mode in [Mode::Kernel, Mode::Maglevd] {
            if let Some(m) = summarize(&r.app_runs, test, mode) {
                t = t.with(
                    mode.name(),
                    Json::obj()
                        .with("median", m.median)
                        .with("min", m.min)
                        .with("max", m.max)
                        .with("runs", m.runs)
                        .with("flagged", m.flagged),
                );
            }
        }
        summary = summary.with(test.key(), t.with("ratio_maglevd_kernel", ratio(&r.app_runs, test)));
    }
    Json::obj()
        .with("bench", "live")
        .with("traffic", a.traffic.name())
        .with("config", cfg)
        .with("placement", r.placement.clone())
        .with("runs", Json::Arr(runs))
        .with("summary", summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    const IPERF: &str = r#"{"start":{},"intervals":[],"end":{"sum_sent":{"start":0,"end":5,"seconds":5.0,"bytes":6000000000,"bits_per_second":9.6e9,"retransmits":3,"sender":true},
        "sum_received":{"start":0,"end":5.0002,"seconds":5.0002,"bytes":5990000000,"bits_per_second":9.58e9,"sender":true}}}"#;

    #[test]
    fn iperf3_output() {
        let r = parse_iperf3(IPERF).unwrap();
        assert_eq!(r, IperfResult { bits_per_second: 9.58e9, seconds: 5.0002, retransmits: Some(3) });
        let e = parse_iperf3(r#"{"start":{},"error":"unable to connect to server: Connection refused"}"#).unwrap_err();
        assert!(e.contains("Connection refused"), "{e}");
        assert!(parse_iperf3("iperf3: error").is_err());
        assert!(parse_iperf3(r#"{"end":{}}"#).is_err());
    }

    #[test]
    fn wrk_output() {
        let text = "Running 5s test @ http://10.201.0.1:80/\n  1 threads and 32 connections\n\
                    Requests/sec:  51234.00\n\
                    {\"requests\":256170,\"duration_us\":5000000,\"bytes\":40000000,\"connect\":0,\"read\":2,\"write\":0,\"status\":1,\"timeout\":0,\"p50_us\":590,\"p99_us\":2100}\n";
        let w = parse_wrk(text).unwrap();
        assert_eq!((w.requests, w.errors, w.p50_us, w.p99_us), (256_170, 3, 590.0, 2100.0));
        assert!((w.rate() - 51_234.0).abs() < 1e-6);
        assert!(parse_wrk("Requests/sec: 5\n").unwrap_err().contains("done hook"));
        assert!(parse_wrk("{\"requests\":1}\n").unwrap_err().contains("duration_us"));
    }

    #[test]
    fn listening_sockets() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
                    0: 0100C90A:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1\n   \
                    1: 0100C90A:1451 0101CB0A:9C40 01 00000000:00000000 00:00000000 00000000     0        0 2\n";
        assert!(tcp_listening(text, VIP, 80));
        assert!(!tcp_listening(text, VIP, IPERF_PORT), "an established socket is no listener");
        assert!(tcp_listening("hdr\n 0: 00000000:1451 00000000:0000 0A x\n", VIP, IPERF_PORT));
        assert!(!tcp_listening("", VIP, 80));
    }

    #[test]
    fn nginx_configuration() {
        let c = nginx_conf(Path::new("/tmp/x"));
        assert!(c.contains("listen 10.201.0.1:80 backlog=4096;"), "{c}");
        assert!(c.contains("daemon off;") && c.contains("pid /tmp/x/nginx.pid;"), "{c}");
        assert!(c.contains("return 200 \"maglevd bench\\n\";"), "{c}");
        assert_eq!(c.matches('{').count(), c.matches('}').count());
    }

    #[test]
    fn client_command_lines() {
        let a = LiveArgs { traffic: Traffic::Http, connections: 8, ..LiveArgs::default() };
        let v = client_argv(AppTest::HttpClose, &a, 5, 1, Path::new("/d/r.lua"));
        assert_eq!(v[..4], ["wrk", "-t1", "-c8", "-d5s"]);
        assert!(v.windows(2).any(|w| w == ["-H", "Connection: close"]), "{v:?}");
        assert_eq!(v.last().unwrap(), "http://10.201.0.1:80/");
        let v = client_argv(AppTest::HttpKeepAlive, &a, 5, 1, Path::new("/d/r.lua"));
        assert!(!v.iter().any(|x| x == "-H"), "{v:?}");
        let a = LiveArgs { traffic: Traffic::Tcp, streams: 4, ..LiveArgs::default() };
        let v = client_argv(AppTest::TcpBulk, &a, 5, 1, Path::new("/d/r.lua"));
        assert!(v.windows(2).any(|w| w == ["-P", "4"]) && v.windows(2).any(|w| w == ["-O", "1"]), "{v:?}");
        assert_eq!(warmup_secs(&a), 1);
    }

    fn run(mode: Mode, test: AppTest, rate: f64) -> AppRun {
        AppRun {
            mode,
            test,
            run: 1,
            seconds: 5.0,
            rate,
            retransmits: (test == AppTest::TcpBulk).then_some(0),
            requests: None,
            errors: (test != AppTest::TcpBulk).then_some(0),
            latency_p50_us: None,
            latency_p99_us: None,
            cond: Conditions {
                pre_foreign: Some(0.0),
                foreign: Some(0.0),
                cpu_busy: Some((1.0, 0.5)),
                attempts: 1,
                forwarded_pps: (mode == Mode::Maglevd).then_some(20_000.0),
                ..Conditions::default()
            },
        }
    }

    #[test]
    fn summaries_reports_and_json() {
        let t = AppTest::TcpBulk;
        let runs = vec![
            run(Mode::Kernel, t, 8e9),
            run(Mode::Kernel, t, 10e9),
            run(Mode::Kernel, t, 9e9),
            run(Mode::Maglevd, t, 4.5e9),
            run(Mode::Maglevd, t, 6e9),
            run(Mode::Maglevd, t, 3e9),
        ];
        let k = summarize(&runs, t, Mode::Kernel).unwrap();
        assert_eq!((k.median, k.min, k.max, k.runs), (9e9, 8e9, 10e9, 3));
        assert_eq!(ratio(&runs, t), Some(0.5));
        assert!(summarize(&runs, AppTest::HttpClose, Mode::Kernel).is_none());
        let args = LiveArgs { traffic: Traffic::Tcp, ..LiveArgs::default() };
        let report = LiveReport {
            placement: placement(&args, true),
            args,
            gen_sndbuf: 0,
            runs: Vec::new(),
            latency: Vec::new(),
            latency_background_pps: 0,
            app_runs: runs,
        };
        let text = super::super::render(&report);
        assert!(text.contains("TCP bulk (iperf3)                  ratio maglevd/kernel: 0.50"), "{text}");
        assert!(text.contains("9.00 Gbit/s  [8.00 Gbit/s – 10.00 Gbit/s]"), "{text}");
        assert!(text.contains("RPS on lbin -> CPU 1"), "{text}");
        let j: Value = serde_json::from_str(&super::super::to_json(&report).render()).unwrap();
        assert_eq!(j["traffic"], "tcp");
        assert_eq!(j["summary"]["tcp_bulk"]["ratio_maglevd_kernel"], 0.5);
        assert_eq!(j["summary"]["tcp_bulk"]["kernel"]["median"], 9e9);
        assert_eq!(j["summary"]["tcp_bulk"]["unit"], "bits_per_second");
        assert_eq!(j["runs"][0]["bits_per_second"], 8e9);
        assert_eq!(j["config"]["streams"], 1);
    }
}
