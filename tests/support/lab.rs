//! Drives the namespace lab (`tests/lab/lab.sh`) from Rust tests: builds it, runs commands and
//! maglevd processes in its namespaces, reads maglevd's metrics, and tears everything down on drop
//! (also when a test fails) and, in any case, when the test process exits (a lab kept in a
//! `static` for several tests is never dropped). Requires root; fails loudly, never skips.
//!
//! Commands and closures run in the lab's namespaces through [`maglevd::netns::Netns`], the one
//! namespace helper of the crate (shared with `maglevd bench live`).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use maglevd::netns::Netns;

pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 1);
/// The client namespace's address.
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 1);

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn lab_sh() -> PathBuf {
    repo().join("tests/lab/lab.sh")
}

/// A running lab; `down` on drop.
pub struct Lab {
    pub prefix: String,
    daemons: Vec<(String, Child)>,
}

pub fn require_root() {
    assert!(
        maglevd::netns::is_root(),
        "the end-to-end tests build network namespaces and must run as root (tests/run-all.sh as root)"
    );
}

impl Lab {
    pub fn up(prefix: &str) -> Lab {
        require_root();
        let lab = Lab { prefix: prefix.to_string(), daemons: Vec::new() };
        lab.down_when_process_exits();
        let out = lab.script(&["up"]);
        assert!(out.status.success(), "lab.sh up failed:\n{}{}", text(&out.stdout), text(&out.stderr));
        eprintln!("{}", text(&out.stdout).trim());
        lab
    }

    /// Starts a small watcher process that runs `lab.sh down` for this prefix and removes the lab
    /// directory once the test process has exited, however it exits (a test failure, a lab held in
    /// a `static` that is never dropped, SIGKILL). Harmless after a normal drop: `down` is
    /// idempotent.
    fn down_when_process_exits(&self) {
        let watch = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.2; done; \"$0\" down; rm -rf \"$1\"",
            pid = std::process::id()
        );
        let spawned = Command::new("sh")
            .args(["-c", &watch])
            .arg(lab_sh())
            .arg(self.dir())
            .env("LAB_PREFIX", &self.prefix)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        // Never waited for: it must outlive this process (init reaps it).
        drop(spawned.expect("start the lab's exit watcher (sh)"));
    }

    fn script(&self, args: &[&str]) -> Output {
        Command::new(lab_sh()).args(args).env("LAB_PREFIX", &self.prefix).output().expect("run tests/lab/lab.sh")
    }

    /// Full name of a lab namespace.
    pub fn ns(&self, short: &str) -> String {
        format!("{}-{short}", self.prefix)
    }

    pub fn ns_path(&self, short: &str) -> PathBuf {
        self.netns(short).path()
    }

    /// A handle on a lab namespace (the lab, not the handle, decides when it goes away).
    pub fn netns(&self, short: &str) -> Netns {
        Netns::attach(&self.ns(short))
    }

    pub fn dir(&self) -> PathBuf {
        PathBuf::from(format!("/tmp/{}-lab", self.prefix))
    }

    /// Run a command in a namespace and return its output (whatever its exit status).
    pub fn exec(&self, short: &str, cmd: &[&str]) -> Output {
        self.netns(short).command(cmd[0]).args(&cmd[1..]).output().expect("ip netns exec")
    }

    /// Run a command in a namespace; panic with its output if it fails.
    pub fn sh(&self, short: &str, cmd: &[&str]) -> String {
        let out = self.exec(short, cmd);
        assert!(out.status.success(), "{short}: {cmd:?} failed:\n{}{}", text(&out.stdout), text(&out.stderr));
        text(&out.stdout)
    }

    /// Start `maglevd run` in a namespace with the given config; stdout/stderr go to a log file in
    /// the lab dir.
    pub fn start_maglevd(&mut self, short: &str, config: &Path, extra: &[&str]) {
        self.start_maglevd_env(short, config, extra, &[]);
    }

    /// [`Lab::start_maglevd`] with extra environment variables.
    pub fn start_maglevd_env(&mut self, short: &str, config: &Path, extra: &[&str], env: &[(&str, &str)]) {
        // Forget a daemon that already exited there, so the name means the new one.
        self.daemons.retain_mut(|(s, c)| s != short || matches!(c.try_wait(), Ok(None)));
        let log = std::fs::File::create(self.dir().join(format!("maglevd-{short}.log"))).expect("log file");
        let child = self
            .netns(short)
            .command(env!("CARGO_BIN_EXE_maglevd"))
            .args(["run", "-c"])
            .arg(config)
            .args(extra)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn maglevd");
        self.daemons.push((short.to_string(), child));
    }

    pub fn maglevd_log(&self, short: &str) -> String {
        std::fs::read_to_string(self.dir().join(format!("maglevd-{short}.log"))).unwrap_or_default()
    }

    /// Is the maglevd in `short` still running?
    pub fn maglevd_alive(&mut self, short: &str) -> bool {
        self.daemons.iter_mut().any(|(s, c)| s == short && matches!(c.try_wait(), Ok(None)))
    }

    /// Wait (bounded) for the maglevd in `short` to exit by itself; returns its exit status.
    pub fn wait_maglevd_exit(&mut self, short: &str, timeout: Duration) -> std::process::ExitStatus {
        let i = self.daemons.iter().position(|(s, _)| s == short).expect("a maglevd runs there");
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.daemons[i].1.try_wait() {
                self.daemons.remove(i);
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "maglevd in {short} still runs after {timeout:?}:\n{}",
                self.maglevd_log(short)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM the maglevd in `short` and wait for it; returns its exit status.
    pub fn stop_maglevd(&mut self, short: &str) -> std::process::ExitStatus {
        let i = self.daemons.iter().position(|(s, _)| s == short).expect("a maglevd runs there");
        let (_, mut child) = self.daemons.remove(i);
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("maglevd in {short} did not stop within 10 s of SIGTERM:\n{}", self.maglevd_log(short));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The pid of the maglevd started last in `short`.
    pub fn maglevd_pid(&self, short: &str) -> u32 {
        self.daemons.iter().rev().find(|(s, _)| s == short).expect("a maglevd runs there").1.id()
    }

    /// Send `signal` (a `kill` name: TERM, KILL, ...) to the maglevd in `short`; returns at once
    /// ([`Lab::wait_maglevd_exit`] waits for it).
    pub fn signal_maglevd(&self, short: &str, signal: &str) {
        let pid = self.maglevd_pid(short).to_string();
        let ok = Command::new("kill").args([&format!("-{signal}"), &pid]).status().is_ok_and(|s| s.success());
        assert!(ok, "kill -{signal} maglevd {pid} in {short}");
    }

    /// Write `text` into the lab dir as `name` (a configuration); returns its path.
    pub fn write_file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir().join(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    /// `lab.sh bgp on` or `off`: BIRD in router, fe1 and fe2, the router's VIP route from BGP
    /// (see tests/lab/README.md, *BGP mode*); panics with its output if it fails.
    pub fn bgp(&self, on: bool) {
        let out = self.script(&["bgp", if on { "on" } else { "off" }]);
        assert!(out.status.success(), "lab.sh bgp failed:\n{}{}", text(&out.stdout), text(&out.stderr));
        eprintln!("{}", text(&out.stdout).trim());
    }

    /// `birdc CMD...` on the BIRD in `short` (router, fe1, fe2); panics if birdc fails.
    pub fn birdc(&self, short: &str, cmd: &[&str]) -> String {
        let mut args = vec!["birdc", short];
        args.extend_from_slice(cmd);
        let out = self.script(&args);
        assert!(out.status.success(), "lab.sh birdc {short} {cmd:?}:\n{}{}", text(&out.stdout), text(&out.stderr));
        text(&out.stdout)
    }

    /// The pid of the BIRD in `short` (from its pid file in the lab dir).
    pub fn bird_pid(&self, short: &str) -> u32 {
        let f = self.dir().join("bird").join(format!("{short}.pid"));
        let pid = std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        pid.trim().parse().unwrap_or_else(|_| panic!("{}: no pid: {pid:?}", f.display()))
    }

    /// The BIRD log of `short`.
    pub fn bird_log(&self, short: &str) -> String {
        std::fs::read_to_string(self.dir().join("bird").join(format!("{short}.log"))).unwrap_or_default()
    }

    /// The next hops of the router's route for the VIP (empty: no route).
    pub fn vip_next_hops(&self) -> Vec<Ipv4Addr> {
        vip_next_hops_in(&self.ns("router"))
    }

    /// Send SIGHUP (reload) to the maglevd in `short`.
    pub fn reload_maglevd(&mut self, short: &str) {
        let (_, child) = self.daemons.iter().find(|(s, _)| s == short).expect("a maglevd runs there");
        let ok = Command::new("kill").args(["-HUP", &child.id().to_string()]).status().is_ok_and(|s| s.success());
        assert!(ok, "kill -HUP maglevd in {short}");
    }

    /// A metric of the maglevd in `short` (0 if absent).
    pub fn metric(&self, short: &str, name: &str) -> f64 {
        self.metrics(short).get(name).copied().unwrap_or(0.0)
    }

    /// GET a path of the maglevd HTTP endpoint in a namespace.
    pub fn http_local(&self, short: &str, path: &str) -> (u16, String) {
        let out = self
            .exec(short, &["curl", "-s", "-m", "2", "-w", "\n%{http_code}", &format!("http://127.0.0.1:9100{path}")]);
        let t = text(&out.stdout);
        let (body, code) = t.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// maglevd's metrics in a namespace: `name{labels}` → value.
    pub fn metrics(&self, short: &str) -> BTreeMap<String, f64> {
        let (code, body) = self.http_local(short, "/metrics");
        assert_eq!(code, 200, "{short}: /metrics answered {code}:\n{body}");
        parse_metrics(&body)
    }

    /// Plumb fe1's `net1` again as the lab (and a CNI plugin) does after it was deleted: a macvlan
    /// on node w1's vlan100 with fe1's MAC and address, moved into fe1, renamed and up.
    pub fn recreate_fe1_net1(&self) {
        let fe1 = self.ns("fe1");
        self.sh(
            "w1",
            &[
                "ip",
                "link",
                "add",
                "link",
                "vlan100",
                "name",
                "fe1-net1",
                "address",
                "c2:b0:57:49:47:f1",
                "type",
                "macvlan",
                "mode",
                "bridge",
            ],
        );
        self.sh("w1", &["ip", "link", "set", "fe1-net1", "netns", &fe1]);
        self.sh("fe1", &["ip", "link", "set", "fe1-net1", "name", "net1"]);
        self.sh("fe1", &["ip", "addr", "add", "10.158.100.2/24", "dev", "net1"]);
        self.sh("fe1", &["ip", "link", "set", "net1", "up"]);
    }

    /// Wait until maglevd in `short` reports every backend usable (`/healthz` 200 and all
    /// `maglevd_backend_up` 1).
    pub fn wait_ready(&mut self, short: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            assert!(self.maglevd_alive(short), "maglevd in {short} exited:\n{}", self.maglevd_log(short));
            let (code, _) = self.http_local(short, "/healthz");
            if code == 200 {
                let m = self.metrics(short);
                let ups: Vec<f64> =
                    m.iter().filter(|(k, _)| k.starts_with("maglevd_backend_up")).map(|(_, v)| *v).collect();
                if !ups.is_empty() && ups.iter().all(|v| *v == 1.0) {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "maglevd in {short} not ready after {timeout:?}:\n{}",
                self.maglevd_log(short)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Run `f` on a thread inside namespace `short` (for sockets opened by the test itself).
    pub fn in_ns<T: Send>(&self, short: &str, f: impl FnOnce() -> T + Send) -> T {
        self.netns(short).run(f).expect("run in the lab namespace")
    }

    /// Start `f` on a thread inside namespace `short` and return at once.
    pub fn spawn_in_ns<T: Send + 'static>(
        &self,
        short: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let ns = self.netns(short);
        std::thread::spawn(move || {
            ns.enter().expect("setns into the lab namespace");
            f()
        })
    }

    /// An interface counter from /sys in a namespace.
    pub fn counter(&self, short: &str, iface: &str, name: &str) -> u64 {
        self.sh(short, &["cat", &format!("/sys/class/net/{iface}/statistics/{name}")]).trim().parse().expect("counter")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let daemons = std::mem::take(&mut self.daemons);
        for (short, mut child) in daemons {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            if std::thread::panicking() {
                eprintln!("--- maglevd log of {short}:\n{}", self.maglevd_log(&short));
            }
        }
        if std::thread::panicking() && self.dir().join("bird").is_dir() {
            for short in ["router", "fe1", "fe2"] {
                eprintln!("--- BIRD log of {short}:\n{}", self.bird_log(short));
            }
            let out = self.script(&["birdc", "router", "show", "protocols", "all"]);
            eprintln!("--- birdc router show protocols all:\n{}", text(&out.stdout));
        }
        let _ = self.script(&["down"]);
        // What the tests wrote there (configurations, daemon logs; printed above on a failure).
        let _ = std::fs::remove_dir_all(self.dir());
    }
}

/// Fails (never skips) without BIRD 2's `bird` and `birdc` (tests/setup.sh installs bird2).
pub fn require_bird() {
    for c in ["bird", "birdc"] {
        let found =
            Command::new("sh").args(["-c", &format!("command -v {c}")]).output().is_ok_and(|o| o.status.success());
        assert!(found, "{c} not found: these tests need BIRD 2 (apt-get install bird2, or tests/setup.sh)");
    }
}

/// The gateways (`via ADDR`) of an `ip route show` listing, in order.
pub fn next_hops(listing: &str) -> Vec<Ipv4Addr> {
    let words: Vec<&str> = listing.split_whitespace().collect();
    words.windows(2).filter(|w| w[0] == "via").filter_map(|w| w[1].parse().ok()).collect()
}

/// Watches the router's route for the VIP: `ip monitor route` in the router's namespace wakes a
/// thread at each route change there, which reads the VIP's route (`ip route show`) and records
/// its next hops when they changed, with the time of the change's notification.
pub struct RouteWatch {
    seen: Arc<Mutex<Vec<RouteSeen>>>,
    monitor: Child,
    handle: Option<std::thread::JoinHandle<()>>,
}

/// When a route's next hops were seen, and the next hops.
type RouteSeen = (Instant, Vec<Ipv4Addr>);

/// The next hops of the VIP's route in namespace `ns` (empty: no route).
fn vip_next_hops_in(ns: &str) -> Vec<Ipv4Addr> {
    let out =
        Command::new("ip").args(["-n", ns, "route", "show", &format!("{VIP}/32")]).output().expect("ip route show");
    assert!(out.status.success(), "ip route show in {ns}: {}", text(&out.stderr));
    next_hops(&text(&out.stdout))
}

impl RouteWatch {
    pub fn start(lab: &Lab) -> RouteWatch {
        use std::io::BufRead;
        let ns = lab.ns("router");
        let mut monitor = Command::new("ip")
            .args(["-n", &ns, "-o", "monitor", "route"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start ip monitor route");
        let lines = std::io::BufReader::new(monitor.stdout.take().expect("piped"));
        // Read once the monitor runs, so no change falls between the two.
        std::thread::sleep(Duration::from_millis(50));
        let seen = Arc::new(Mutex::new(vec![(Instant::now(), vip_next_hops_in(&ns))]));
        let s = Arc::clone(&seen);
        let handle = std::thread::spawn(move || {
            // Ends when the monitor is killed (end of its output).
            for line in lines.lines() {
                if line.is_err() {
                    break;
                }
                let at = Instant::now();
                let hops = vip_next_hops_in(&ns);
                let mut seen = s.lock().unwrap();
                if seen.last().map(|(_, h)| h) != Some(&hops) {
                    seen.push((at, hops));
                }
            }
        });
        RouteWatch { seen, monitor, handle: Some(handle) }
    }

    /// The first time at or after `since` the next hops were seen to satisfy `ok`, if any.
    pub fn first(&self, since: Instant, ok: impl Fn(&[Ipv4Addr]) -> bool) -> Option<Instant> {
        let seen = self.seen.lock().unwrap();
        // The state in force at `since` counts too (seen before it, still current).
        let current = seen.iter().rposition(|(t, _)| *t <= since);
        let from = current.unwrap_or(0);
        seen[from..].iter().find(|(_, h)| ok(h)).map(|(t, _)| (*t).max(since))
    }

    /// Waits (bounded) until the next hops satisfy `ok` at or after `since`; returns when they
    /// were first seen to.
    pub fn wait_for(&self, what: &str, since: Instant, within: Duration, ok: impl Fn(&[Ipv4Addr]) -> bool) -> Instant {
        let deadline = Instant::now() + within;
        loop {
            if let Some(t) = self.first(since, &ok) {
                return t;
            }
            assert!(Instant::now() < deadline, "{what}: not within {within:?}; seen: {:?}", self.changes(since));
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The next hops now (as last seen).
    pub fn now(&self) -> Vec<Ipv4Addr> {
        self.seen.lock().unwrap().last().map(|(_, h)| h.clone()).unwrap_or_default()
    }

    /// Every change seen from `since` on, as (ms after `since`, next hops).
    pub fn changes(&self, since: Instant) -> Vec<(u128, Vec<Ipv4Addr>)> {
        let seen = self.seen.lock().unwrap();
        seen.iter().filter(|(t, _)| *t >= since).map(|(t, h)| ((*t - since).as_millis(), h.clone())).collect()
    }
}

impl Drop for RouteWatch {
    fn drop(&mut self) {
        let _ = self.monitor.kill();
        let _ = self.monitor.wait();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// One request of a [`Load`]: when it started, how long it took, and the backend that answered
/// (or the error).
#[derive(Debug)]
pub struct Req {
    pub start: Instant,
    pub took: Duration,
    pub outcome: Result<String, String>,
}

/// One HTTP/1.0 GET / through the VIP on a new connection from the client (from `src_port`, or an
/// ephemeral port), giving up on the connect after `connect_timeout`: the name of the backend
/// that answered, or the error. Runs in the caller's namespace (the client's).
pub fn vip_request(src_port: Option<u16>, connect_timeout: Duration) -> Result<String, String> {
    vip_request_within(src_port, connect_timeout, READ_TIMEOUT)
}

/// [`vip_request`], giving up on the answer after `read_timeout`.
fn vip_request_within(
    src_port: Option<u16>,
    connect_timeout: Duration,
    read_timeout: Duration,
) -> Result<String, String> {
    let o =
        GetOptions { src: src_port.map(|p| SocketAddr::from((CLIENT, p))), reset: src_port.is_some(), connect_timeout };
    http_get_within(SocketAddr::from((VIP, 80)), "/", &o, read_timeout)
        .map(|b| b.trim().to_string())
        .map_err(|e| format!("{:?}: {e}", e.kind()))
}

/// New connections through the VIP from the client, one after another (3 ms apart), until
/// stopped (at most 20,000 requests and 60 s). Each gives up on its answer after the connect
/// timeout (at least 1 s): a connection made just before its backend stopped answering must not
/// hold the loop up for long, or the requests after it would go missing from the count.
pub struct Load {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Vec<Req>>,
}

impl Load {
    pub fn start(lab: &Lab, connect_timeout: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = lab.spawn_in_ns("client", move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut reqs = Vec::new();
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline && reqs.len() < 20_000 {
                let start = Instant::now();
                let outcome = vip_request_within(None, connect_timeout, connect_timeout.max(Duration::from_secs(1)));
                reqs.push(Req { start, took: start.elapsed(), outcome });
                std::thread::sleep(Duration::from_millis(3));
            }
            reqs
        });
        Load { stop, handle }
    }

    pub fn finish(self) -> Vec<Req> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("client load thread")
    }
}

/// A listener on `port` of each backend's real IP (be1..be3), accepting (and closing) connections
/// until `stop` is set or `within` passed: something for a health check of that port to find.
pub fn backend_listeners(
    lab: &Lab,
    port: u16,
    stop: &Arc<AtomicBool>,
    within: Duration,
) -> Vec<std::thread::JoinHandle<()>> {
    [("be1", "10.158.200.251"), ("be2", "10.158.200.252"), ("be3", "10.158.200.253")]
        .into_iter()
        .map(|(be, ip)| {
            let stop = Arc::clone(stop);
            let addr: SocketAddr = format!("{ip}:{port}").parse().unwrap();
            lab.spawn_in_ns(be, move || {
                let l = std::net::TcpListener::bind(addr).expect("bind the check port");
                l.set_nonblocking(true).unwrap();
                let deadline = Instant::now() + within;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    match l.accept() {
                        Ok((c, _)) => drop(c),
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        })
        .collect()
}

/// Requests by the backend that served them (or `failed`).
pub fn tally<'a>(outcomes: impl IntoIterator<Item = &'a Result<String, String>>) -> BTreeMap<String, u32> {
    let mut t = BTreeMap::new();
    for o in outcomes {
        *t.entry(o.clone().unwrap_or_else(|_| "failed".into())).or_default() += 1;
    }
    t
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// One HTTP/1.0 GET (a new TCP connection), returning the body. Runs in the caller's namespace.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    get_on(TcpStream::connect_timeout(&addr, Duration::from_secs(2))?, addr, path, READ_TIMEOUT)
}

/// How long the requests here wait for an answer unless told otherwise.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Send an HTTP/1.0 GET on a connected stream and return the body of a 200 response.
fn get_on(mut s: TcpStream, dst: SocketAddr, path: &str, read_timeout: Duration) -> std::io::Result<String> {
    s.set_read_timeout(Some(read_timeout))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", dst.ip()).as_bytes())?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let resp = String::from_utf8_lossy(&resp).into_owned();
    match resp.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200") => {
            Ok(body.to_string())
        }
        _ => Err(std::io::Error::other(format!("bad response: {resp:.200}"))),
    }
}

/// One HTTP/1.0 GET from a fixed source address and port, so a test can send *the same flow* more
/// than once. The socket is closed with an RST (SO_LINGER 0), which leaves no TIME_WAIT behind on
/// either end, so the same 5-tuple can be used again at once. Runs in the caller's namespace.
pub fn http_get_from(src: SocketAddr, dst: SocketAddr, path: &str) -> std::io::Result<String> {
    http_get_with(dst, path, &GetOptions { src: Some(src), reset: true, connect_timeout: Duration::from_secs(2) })
}

/// How [`http_get_with`] connects and closes.
#[derive(Debug, Clone, Copy)]
pub struct GetOptions {
    /// Bind to this source address and port first (`None`: an ephemeral port).
    pub src: Option<SocketAddr>,
    /// Close with an RST (SO_LINGER 0: no TIME_WAIT, the 5-tuple is free again at once); else
    /// the usual close (the server's FIN first, then ours).
    pub reset: bool,
    pub connect_timeout: Duration,
}

/// One HTTP/1.0 GET on a new connection made as `o` says: the body of a 200 answer. Runs in the
/// caller's namespace.
pub fn http_get_with(dst: SocketAddr, path: &str, o: &GetOptions) -> std::io::Result<String> {
    http_get_within(dst, path, o, READ_TIMEOUT)
}

/// [`http_get_with`], giving up on the answer after `read_timeout`.
fn http_get_within(dst: SocketAddr, path: &str, o: &GetOptions, read_timeout: Duration) -> std::io::Result<String> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    if let Some(src) = o.src {
        s.set_reuse_address(o.reset)?;
        s.bind(&src.into())?;
    }
    s.connect_timeout(&dst.into(), o.connect_timeout)?;
    if o.reset {
        s.set_linger(Some(Duration::ZERO))?;
    }
    get_on(s.into(), dst, path, read_timeout)
}

/// Polls `ok` every `every` until it holds; returns when it first held. Panics after `within`.
pub fn wait_until(what: &str, within: Duration, every: Duration, mut ok: impl FnMut() -> bool) -> std::time::Instant {
    let deadline = std::time::Instant::now() + within;
    loop {
        if ok() {
            return std::time::Instant::now();
        }
        assert!(std::time::Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(every);
    }
}

/// A Prometheus text exposition as `name{labels}` → value (comments and blank lines skipped).
pub fn parse_metrics(body: &str) -> BTreeMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// One keep-alive HTTP/1.1 GET / to the VIP on `r`'s connection (at most 50 header lines): the
/// body of a 200 answer (the backend's name, at most 64 bytes), trimmed.
pub fn keepalive_get(r: &mut std::io::BufReader<TcpStream>) -> std::io::Result<String> {
    use std::io::BufRead;
    r.get_mut().write_all(format!("GET / HTTP/1.1\r\nHost: {VIP}\r\n\r\n").as_bytes())?;
    let mut line = String::new();
    let mut len = None;
    let mut status = String::new();
    for _ in 0..50 {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if status.is_empty() {
            status = l.to_string();
        } else if let Some((k, v)) = l.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse::<usize>().ok();
        }
    }
    let Some(len) = len.filter(|n| status.starts_with("HTTP/1.1 200") && *n <= 64) else {
        return Err(std::io::Error::other(format!("unexpected response: {status}")));
    };
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    Ok(String::from_utf8_lossy(&body).trim().to_string())
}
