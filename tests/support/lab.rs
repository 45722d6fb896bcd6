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
use std::time::{Duration, Instant};

use maglevd::netns::Netns;

pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 1);

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

    /// Send `signal` (`"TERM"`, `"KILL"`, ...) to the maglevd in `short`, without waiting.
    pub fn signal_maglevd(&mut self, short: &str, signal: &str) {
        let (_, child) = self.daemons.iter().find(|(s, _)| s == short).expect("a maglevd runs there");
        let ok = Command::new("kill").args([&format!("-{signal}"), &child.id().to_string()]).status();
        assert!(ok.is_ok_and(|s| s.success()), "kill -{signal} maglevd in {short}");
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
        let _ = self.script(&["down"]);
        // What the tests wrote there (configurations, daemon logs; printed above on a failure).
        let _ = std::fs::remove_dir_all(self.dir());
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// One HTTP/1.0 GET (a new TCP connection), returning the body. Runs in the caller's namespace.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    get_on(TcpStream::connect_timeout(&addr, Duration::from_secs(2))?, addr, path)
}

/// Send an HTTP/1.0 GET on a connected stream and return the body of a 200 response.
fn get_on(mut s: TcpStream, dst: SocketAddr, path: &str) -> std::io::Result<String> {
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
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
    get_on(s.into(), dst, path)
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
