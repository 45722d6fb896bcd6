//! Connection tracking end to end, with the real `maglevd` binary in the namespace lab
//! (tests/lab/lab.sh): real clients in the client namespace, nginx and UDP echo servers in the
//! backends (which hold the VIP on `lo` and answer straight to the router), the router sending
//! every VIP packet to fe1 (one frontend keeps the scenarios deterministic; fe2 would build the
//! same tables).
//!
//! * [`reload_under_continuous_load`]: 50 long-lived keep-alive HTTP connections, short-lived
//!   ones and a UDP stream while the configuration is reloaded 20 times (a backend removed and
//!   added back, one reweighted, one drained and undrained).
//! * [`a_fragmented_datagram_follows_its_flow`]: a datagram the client's kernel fragments reaches
//!   the backend of its flow, not the one the addresses alone would pick.
//! * [`fanout_keeps_each_flow_on_one_worker`]: with two workers, every flow is tracked by exactly
//!   one worker and none is re-chosen when nothing changes.
//! * [`a_reused_port_opens_no_new_connection_on_a_drained_backend`]: a client that closes a
//!   connection and opens a new one from the same port while its backend is drained reaches the
//!   table's backend, not the drained one.
//!
//! Where a flow *should* go is asked from the table itself ([`maglevd::report::lookup`], the
//! library behind `maglevd lookup`, or the command), for the configuration of every step a
//! request may have seen. Each scenario is its own test with its own lab, so one failure hides
//! nothing else. Runs as root (tests/run-all.sh); fails, never skips, without it. All traffic
//! stays inside the namespaces each test creates and removes; every loop is bounded in count
//! and time.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufReader;
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use maglevd::config::{Config, Protocol};
use maglevd::report::{self, Answer, Packet, Question};
use support::lab::{Lab, VIP, text};

const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 1);
/// The UDP echo service's port on the VIP.
const UDP_PORT: u16 = 7000;
const BACKENDS: [&str; 3] = ["be1", "be2", "be3"];
const BACKEND_IPS: [&str; 3] = ["10.158.200.251", "10.158.200.252", "10.158.200.253"];

/// One configuration: each backend's weight, `None` when it is not configured.
type Weights = [Option<u16>; 3];

const FULL: Weights = [Some(100), Some(100), Some(100)];

/// The configuration: a TCP service on port 80 (nginx) and a UDP service on [`UDP_PORT`] (the
/// echo servers), both with the backends and weights of `w`. No health checks (every configured
/// backend with a MAC is up), reloads by SIGHUP only.
fn config_text(w: &Weights) -> String {
    let mut s = String::from(
        "[interfaces]\ningress = \"net1\"\negress = \"net2\"\n\n\
         [daemon]\nmetrics = \"127.0.0.1:9100\"\nconfig_check_secs = 0\n",
    );
    for (name, proto, port) in [("web", "tcp", 80), ("echo", "udp", UDP_PORT)] {
        s.push_str(&format!(
            "\n[[service]]\nname = \"{name}\"\nvip = \"{VIP}\"\nprotocol = \"{proto}\"\nport = {port}\ntable_size = 1021\n"
        ));
        for (ip, weight) in BACKEND_IPS.iter().zip(w) {
            if let Some(weight) = weight {
                s.push_str(&format!("\n[[service.backend]]\nip = \"{ip}\"\nweight = {weight}\n"));
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

/// A lab with maglevd (`--workers N`) on fe1 running `w`; the router sends every VIP packet to fe1.
fn lab_on_fe1(tag: &str, w: &Weights, workers: u32) -> (Lab, PathBuf) {
    let mut lab = Lab::up(&format!("{tag}{}", std::process::id() % 100_000));
    let path = lab.dir().join("maglevd.toml");
    write_config(&path, &config_text(w));
    lab.start_maglevd("fe1", &path, &["--workers", &workers.to_string()]);
    lab.sh("router", &["ip", "route", "replace", &format!("{VIP}/32"), "via", "10.158.100.2", "dev", "vlan100"]);
    lab.wait_ready("fe1", Duration::from_secs(15));
    (lab, path)
}

fn backend_index(name: &str) -> Option<usize> {
    BACKENDS.iter().position(|b| *b == name)
}

/// The sum over workers of a per-worker figure (`name{worker="…"}`).
fn per_worker(lab: &Lab, name: &str) -> Vec<f64> {
    let prefix = format!("{name}{{worker=");
    lab.metrics("fe1").iter().filter(|(k, _)| k.starts_with(&prefix)).map(|(_, v)| *v).collect()
}

fn sum(v: &[f64]) -> f64 {
    v.iter().sum()
}

/// Reload fe1 and wait (bounded) until it published a new snapshot whose tables hold every
/// backend of `w` with weight > 0. A backend added back is resolved by ARP again before it enters
/// the tables (a few hundred milliseconds after the reload's own snapshot).
fn reload_and_wait(lab: &mut Lab, w: &Weights) {
    let g = lab.metric("fe1", "maglevd_snapshot_generation");
    lab.reload_maglevd("fe1");
    let want = 2 * w.iter().filter(|x| x.is_some_and(|x| x > 0)).count();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = lab.metrics("fe1");
        let up = m.iter().filter(|(k, v)| k.starts_with("maglevd_backend_up{") && **v == 1.0).count();
        if m.get("maglevd_snapshot_generation").is_some_and(|x| *x > g) && up == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no snapshot with {want} usable backends within 5 s of SIGHUP:\n{}",
            lab.maglevd_log("fe1")
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ------------------------------------------------------------------------------------------------
// Where the table sends a flow

/// The tables of every configuration step, asked through [`report::lookup`] (the data plane's
/// own decision on a frontend where every backend with weight > 0 is up).
struct Tables {
    cfgs: Vec<Config>,
}

impl Tables {
    fn new(steps: &[Weights]) -> Tables {
        let cfgs = steps
            .iter()
            .map(|w| maglevd::config::parse(&config_text(w), Path::new("step.toml")).expect("a step's configuration"))
            .collect();
        Tables { cfgs }
    }

    /// The backend (index) a new flow from the client's `port` reaches in step `step`.
    fn backend(&self, step: usize, protocol: Protocol, port: u16) -> Option<usize> {
        let dport = if protocol == Protocol::Tcp { 80 } else { UDP_PORT };
        let q = Question {
            dst: SocketAddr::from((VIP, dport)),
            protocol,
            client: SocketAddr::from((CLIENT, port)),
            packet: Packet::First,
        };
        match report::lookup(&self.cfgs[step], &q).expect("lookup") {
            Answer::Backend { backend, .. } => BACKEND_IPS.iter().position(|ip| *ip == backend.to_string()),
            Answer::None(_) => None,
        }
    }

    /// The backends a new flow may have reached while the configuration was any step of `w`.
    fn candidates(&self, w: Window, protocol: Protocol, port: u16) -> BTreeSet<usize> {
        (w.0..=w.1).filter_map(|s| self.backend(s, protocol, port)).collect()
    }
}

// ------------------------------------------------------------------------------------------------
// Which configuration a request may have seen

/// The reload driver's progress: `requested` is the last step whose SIGHUP may have been sent,
/// `applied` the last step whose snapshot the daemon reported. The configuration in force is
/// always a step between them, so an event that began when `applied` was `lo` and ended when
/// `requested` was `hi` saw only steps `lo..=hi` (its [`Window`]).
#[derive(Default)]
struct Progress {
    requested: AtomicUsize,
    applied: AtomicUsize,
}

impl Progress {
    fn begin(&self) -> usize {
        self.applied.load(Ordering::SeqCst)
    }
    fn end(&self) -> usize {
        self.requested.load(Ordering::SeqCst)
    }
}

/// The steps an event may have seen, inclusive.
type Window = (usize, usize);

// ------------------------------------------------------------------------------------------------
// HTTP over keep-alive connections

/// How a request failed, for the summary.
fn failure_kind(e: &std::io::Error) -> &'static str {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionReset | K::BrokenPipe | K::ConnectionAborted => "reset",
        K::UnexpectedEof => "closed",
        K::WouldBlock | K::TimedOut => "timeout",
        _ => "other",
    }
}

#[derive(Debug)]
struct Failure {
    kind: &'static str,
    window: Window,
    error: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} in steps {:?}: {}", self.kind, self.window, self.error)
    }
}

/// One TCP connection's life.
#[derive(Debug)]
struct Conn {
    /// The client's source port (0 if the connection was never established).
    port: u16,
    long_lived: bool,
    /// From the start of `connect` to the first answer: where the SYN may have been sent.
    open: Window,
    /// Who answered the first request.
    backend: Option<usize>,
    ok: u64,
    /// Requests answered that were sent and answered while the connection's backend was
    /// drained (weight 0) in every step they may have seen.
    ok_while_drained: u64,
    /// Answers from another backend than the first one.
    changes: u64,
    /// From the start of the last request to the connection's close.
    last: Window,
    /// How it ended, unless the test stopped it or it did its requests.
    failure: Option<Failure>,
}

/// Connections one after another until `stop`: each does `per_conn` requests (or requests until
/// `stop`) `gap` apart, and is replaced by a new one when it ends or fails. Runs in the client
/// namespace.
fn http_sessions(
    steps: Arc<Vec<Weights>>,
    progress: Arc<Progress>,
    stop: Arc<AtomicBool>,
    per_conn: Option<u32>,
    gap: Duration,
) -> Vec<Conn> {
    let addr = SocketAddr::from((VIP, 80));
    let mut conns = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        let lo = progress.begin();
        let mut conn = Conn {
            port: 0,
            long_lived: per_conn.is_none(),
            open: (lo, lo),
            backend: None,
            ok: 0,
            ok_while_drained: 0,
            changes: 0,
            last: (lo, lo),
            failure: None,
        };
        let stream = match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(s) => s,
            Err(e) => {
                conn.failure =
                    Some(Failure { kind: failure_kind(&e), window: (lo, progress.end()), error: e.to_string() });
                conns.push(conn);
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        stream.set_read_timeout(Some(Duration::from_secs(3))).expect("read timeout");
        stream.set_nodelay(true).expect("nodelay");
        conn.port = stream.local_addr().map(|a| a.port()).unwrap_or(0);
        let mut r = BufReader::new(stream);
        let mut n = 0;
        while !stop.load(Ordering::SeqCst) && per_conn.is_none_or(|m| n < m) && Instant::now() < deadline {
            let lo = progress.begin();
            conn.last.0 = lo;
            let res = support::lab::keepalive_get(&mut r);
            let hi = progress.end();
            let res = res.and_then(|body| {
                backend_index(&body).ok_or_else(|| std::io::Error::other(format!("unknown backend {body:?}")))
            });
            match res {
                Ok(b) => {
                    match conn.backend {
                        None => {
                            conn.backend = Some(b);
                            conn.open.1 = hi;
                        }
                        Some(first) if first != b => conn.changes += 1,
                        Some(_) => {}
                    }
                    conn.ok += 1;
                    if (lo..=hi).all(|s| steps[s][b] == Some(0)) {
                        conn.ok_while_drained += 1;
                    }
                }
                Err(e) => {
                    conn.failure = Some(Failure { kind: failure_kind(&e), window: (lo, hi), error: e.to_string() });
                    break;
                }
            }
            n += 1;
            std::thread::sleep(gap);
        }
        drop(r);
        conn.last.1 = progress.end();
        // Connected, but the run stopped before its first request: nothing to judge.
        if conn.backend.is_none() && conn.failure.is_none() {
            continue;
        }
        conns.push(conn);
    }
    conns
}

// ------------------------------------------------------------------------------------------------
// UDP

/// A UDP echo server on VIP:[`UDP_PORT`] in each backend, answering every datagram with
/// `"<backend> <bytes received> <first bytes of the datagram>"`. Stops when `stop` is set.
fn start_echo_servers(lab: &Lab, stop: &Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<u64>> {
    BACKENDS
        .iter()
        .map(|be| {
            let sock = lab.in_ns(be, || UdpSocket::bind((VIP, UDP_PORT))).expect("bind the echo server on the VIP");
            sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
            let stop = stop.clone();
            let name = be.to_string();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                let mut answered = 0;
                let deadline = Instant::now() + Duration::from_secs(180);
                while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    if let Ok((n, from)) = sock.recv_from(&mut buf) {
                        let head = String::from_utf8_lossy(&buf[..n.min(40)]).into_owned();
                        let head = head.trim_end_matches('\0');
                        if sock.send_to(format!("{name} {n} {head}").as_bytes(), from).is_ok() {
                            answered += 1;
                        }
                    }
                }
                answered
            })
        })
        .collect()
}

/// A connected UDP socket from the client's `port` to the echo service, in the client namespace.
fn udp_flow(lab: &Lab, port: u16) -> UdpSocket {
    lab.in_ns("client", move || {
        let s = UdpSocket::bind((CLIENT, port))?;
        s.connect((VIP, UDP_PORT))?;
        s.set_read_timeout(Some(Duration::from_millis(500)))?;
        Ok::<_, std::io::Error>(s)
    })
    .unwrap_or_else(|e| panic!("UDP socket from port {port}: {e}"))
}

/// Send `payload` on `s` and wait for the echo whose head starts with `tag`: (backend, bytes the
/// backend received), or `None` if none came within the socket's timeout.
fn echo(s: &UdpSocket, payload: &[u8], tag: &str) -> Option<(String, usize)> {
    s.send(payload).ok()?;
    let mut buf = [0u8; 256];
    for _ in 0..8 {
        let n = s.recv(&mut buf).ok()?;
        let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
        let mut parts = reply.splitn(3, ' ');
        let (be, len, head) = (parts.next()?, parts.next()?, parts.next().unwrap_or(""));
        if head.starts_with(tag) {
            return Some((be.to_string(), len.parse().ok()?));
        }
    }
    None
}

/// One UDP flow's answers: (window, backend) per reply, in order, and the datagrams unanswered.
struct UdpRecord {
    port: u16,
    replies: Vec<(Window, usize)>,
    lost: u64,
}

/// Datagrams on every flow of `socks` in rounds `gap` apart until `stop`; each waits for its echo.
fn udp_stream(
    socks: Vec<(u16, UdpSocket)>,
    progress: Arc<Progress>,
    stop: Arc<AtomicBool>,
    gap: Duration,
) -> Vec<UdpRecord> {
    let mut recs: Vec<UdpRecord> =
        socks.iter().map(|(p, _)| UdpRecord { port: *p, replies: Vec::new(), lost: 0 }).collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seq = 0u64;
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        seq += 1;
        for ((port, s), rec) in socks.iter().zip(&mut recs) {
            let lo = progress.begin();
            let tag = format!("u {port} {seq};");
            match echo(s, tag.as_bytes(), &tag).and_then(|(be, _)| backend_index(&be)) {
                Some(b) => rec.replies.push(((lo, progress.end()), b)),
                None => rec.lost += 1,
            }
        }
        std::thread::sleep(gap);
    }
    recs
}

// ------------------------------------------------------------------------------------------------
// RSTs the backends send

/// tcpdump on a backend's net1, printing every TCP RST it sends from the VIP.
struct RstCapture {
    child: Option<Child>,
}

impl RstCapture {
    fn start(lab: &Lab, backend: usize) -> RstCapture {
        let child = lab
            .netns(BACKENDS[backend])
            .command("tcpdump")
            .args(["-i", "net1", "-nn", "-l", "-p", "-Q", "out"])
            .arg(format!("tcp and src host {VIP} and (tcp[13] & 4 != 0)"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tcpdump");
        RstCapture { child: Some(child) }
    }

    /// SIGINT, then the client ports the RSTs went to.
    fn stop(mut self) -> Vec<u16> {
        let child = self.child.take().expect("running");
        let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
        let out = child.wait_with_output().expect("wait for tcpdump");
        let dst = format!(" > {CLIENT}.");
        text(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once(&dst).and_then(|(_, rest)| rest.split(':').next()?.parse().ok()))
            .collect()
    }
}

impl Drop for RstCapture {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Test 1

/// The 20 reloads, in order (step 0 is the starting configuration): be3 removed and added back,
/// be1 reweighted, be2 drained and undrained, twice over.
fn reload_plan() -> Vec<Weights> {
    let cycle: [Weights; 10] = [
        [Some(100), Some(100), None],      // be3 removed
        [Some(100), Some(100), Some(100)], // be3 added back
        [Some(50), Some(100), Some(100)],  // be1 reweighted
        [Some(50), Some(0), Some(100)],    // be2 drained
        [Some(200), Some(0), Some(100)],   // be1 reweighted while be2 is drained
        [Some(200), Some(0), None],        // be3 removed while be2 is drained
        [Some(200), Some(100), None],      // be2 undrained
        [Some(200), Some(100), Some(100)], // be3 added back
        [Some(200), Some(0), Some(100)],   // be2 drained
        FULL,                              // everything back
    ];
    std::iter::once(FULL).chain(cycle.iter().chain(cycle.iter()).copied()).collect()
}

/// Tallies of one category of connections for the summary.
#[derive(Default, Debug)]
struct Tally {
    conns: u64,
    requests: u64,
    failed: u64,
    resets: u64,
}

/// The scenario: 50 long-lived keep-alive HTTP connections doing requests the whole time
/// (plus short-lived ones, so that connections are opened during every step), and a UDP stream on
/// 12 flows, while the configuration is reloaded 20 times. Checked:
/// * a connection whose backend stays configured (drained included) never fails, is never reset
///   and never changes backend;
/// * a drained backend keeps answering its established connections and gets no new ones; every
///   new connection reaches the table's backend of a step it may have seen;
/// * a removed backend's connections are reset by the backend the table names for them (their
///   flows are re-chosen, `maglevd_flow_rechosen_total` > 0), and the removed backend's UDP flows
///   move to the table's backend and stay there when it comes back.
#[test]
fn reload_under_continuous_load() {
    let steps = reload_plan();
    assert_eq!(steps.len(), 21, "20 reloads");
    let tables = Tables::new(&steps);
    let (mut lab, path) = lab_on_fe1("ctr", &FULL, 2);
    let stop = Arc::new(AtomicBool::new(false));
    // The echo servers stop after the UDP client, not with it: a datagram the client sends just
    // before the stop must still find a server (under CPU contention one did not, and counted as
    // lost).
    let servers_stop = Arc::new(AtomicBool::new(false));
    let servers = start_echo_servers(&lab, &servers_stop);
    let captures: Vec<RstCapture> = (0..3).map(|b| RstCapture::start(&lab, b)).collect();
    std::thread::sleep(Duration::from_millis(800)); // tcpdump attaches

    let progress = Arc::new(Progress::default());
    let steps_arc = Arc::new(steps.clone());
    let mut clients = Vec::new();
    for _ in 0..50 {
        let (s, p, st) = (steps_arc.clone(), progress.clone(), stop.clone());
        clients.push(lab.spawn_in_ns("client", move || http_sessions(s, p, st, None, Duration::from_millis(20))));
    }
    for _ in 0..4 {
        let (s, p, st) = (steps_arc.clone(), progress.clone(), stop.clone());
        clients.push(lab.spawn_in_ns("client", move || http_sessions(s, p, st, Some(15), Duration::from_millis(10))));
    }
    let udp_ports: Vec<u16> = (0..12).map(|i| 50_000 + 7 * i).collect();
    let socks: Vec<(u16, UdpSocket)> = udp_ports.iter().map(|&p| (p, udp_flow(&lab, p))).collect();
    let udp = {
        let (p, st) = (progress.clone(), stop.clone());
        std::thread::spawn(move || udp_stream(socks, p, st, Duration::from_millis(20)))
    };

    // Let every connection answer a few requests on the first configuration, then reload.
    std::thread::sleep(Duration::from_millis(700));
    let t0 = Instant::now();
    for (k, w) in steps.iter().enumerate().skip(1) {
        let started = Instant::now();
        progress.requested.store(k, Ordering::SeqCst);
        write_config(&path, &config_text(w));
        reload_and_wait(&mut lab, w);
        progress.applied.store(k, Ordering::SeqCst);
        if let Some(left) = Duration::from_millis(400).checked_sub(started.elapsed()) {
            std::thread::sleep(left);
        }
    }
    let reload_secs = t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    let conns: Vec<Conn> = clients.into_iter().flat_map(|h| h.join().expect("client thread")).collect();
    let udp = udp.join().expect("UDP client");
    servers_stop.store(true, Ordering::SeqCst);
    let answered: u64 = servers.into_iter().map(|h| h.join().expect("echo server")).sum();
    let rsts: Vec<Vec<u16>> = captures.into_iter().map(RstCapture::stop).collect();
    let rechosen = sum(&per_worker(&lab, "maglevd_flow_rechosen_total"));
    let mut violations: Vec<String> = Vec::new();

    // Where each client port was reset from.
    let mut reset_by: BTreeMap<u16, BTreeSet<usize>> = BTreeMap::new();
    for (b, ports) in rsts.iter().enumerate() {
        for p in ports {
            reset_by.entry(*p).or_default().insert(b);
        }
    }

    // TCP.
    let (mut staying, mut moved, mut unanswered) = (Tally::default(), Tally::default(), Tally::default());
    let (mut drained_requests, mut new_during_drain, mut new_during_drain_on_drained) = (0u64, 0u64, 0u64);
    let mut moved_to: BTreeMap<&str, u64> = BTreeMap::new();
    let mut moved_ports = BTreeSet::new();
    for c in &conns {
        let Some(b) = c.backend else {
            // Never answered: only acceptable if the backend the table chose for it was removed
            // before its first request was answered.
            let f = c.failure.as_ref().expect("a connection without an answer failed");
            let w = (c.open.0, f.window.1);
            let lost_backend = tables
                .candidates(w, Protocol::Tcp, c.port)
                .into_iter()
                .any(|cand| (w.0..=w.1).any(|s| steps[s][cand].is_none()));
            unanswered.conns += 1;
            unanswered.failed += 1;
            if !lost_backend || c.port == 0 {
                violations.push(format!("connection from port {} failed before any answer: {f}", c.port));
            } else {
                moved_ports.insert(c.port);
            }
            continue;
        };
        let want = tables.candidates(c.open, Protocol::Tcp, c.port);
        if !want.contains(&b) {
            violations.push(format!(
                "new connection from port {} (steps {:?}) reached {}, the table says {want:?}",
                c.port, c.open, BACKENDS[b]
            ));
        }
        if (c.open.0..=c.open.1).all(|s| steps[s][1] == Some(0)) {
            new_during_drain += 1;
            new_during_drain_on_drained += u64::from(b == 1);
        }
        drained_requests += c.ok_while_drained;
        if c.changes > 0 {
            violations.push(format!("connection from port {} changed backend {} times", c.port, c.changes));
        }
        let removed_in = |w: Window| (w.0..=w.1).filter(|s| steps[*s][b].is_none()).collect::<Vec<usize>>();
        match &c.failure {
            Some(f) if !removed_in(f.window).is_empty() => {
                // Its backend was removed: the flow was re-chosen and the new backend, which does
                // not have the connection, reset it. It must be the table's choice.
                moved.conns += 1;
                moved.requests += c.ok;
                moved.failed += 1;
                moved.resets += u64::from(f.kind == "reset");
                moved_ports.insert(c.port);
                let table: BTreeSet<usize> =
                    removed_in(f.window).into_iter().filter_map(|s| tables.backend(s, Protocol::Tcp, c.port)).collect();
                let from = reset_by.get(&c.port).cloned().unwrap_or_default();
                if from.is_empty() || !from.is_subset(&table) {
                    violations.push(format!(
                        "connection from port {} on removed {} was reset by {from:?}, the table says {table:?} ({f})",
                        c.port, BACKENDS[b]
                    ));
                }
                for r in from {
                    *moved_to.entry(BACKENDS[r]).or_default() += 1;
                }
            }
            failure => {
                staying.conns += 1;
                staying.requests += c.ok;
                if let Some(f) = failure {
                    staying.failed += 1;
                    staying.resets += u64::from(f.kind == "reset");
                    violations.push(format!(
                        "connection from port {} on {} (still configured) failed: {f}",
                        c.port, BACKENDS[b]
                    ));
                }
            }
        }
    }
    // A connection the client closed just before its backend was removed: its last packets (the
    // ACK of the server's FIN) are re-chosen like any packet of the flow and answered with an RST
    // the client no longer sees. Anything else reset by a backend is a flow that moved wrongly.
    let mut closing_moved = 0;
    for (port, from) in &reset_by {
        if moved_ports.contains(port) {
            continue;
        }
        let explained = conns.iter().filter(|c| c.port == *port && c.failure.is_none()).any(|c| {
            let Some(b) = c.backend else { return false };
            let table: BTreeSet<usize> = (c.last.0..=(c.last.1 + 1).min(steps.len() - 1))
                .filter(|s| steps[*s][b].is_none())
                .filter_map(|s| tables.backend(s, Protocol::Tcp, c.port))
                .collect();
            !table.is_empty() && from.is_subset(&table)
        });
        if explained {
            closing_moved += 1;
        } else {
            let c: Vec<&Conn> = conns.iter().filter(|c| c.port == *port).collect();
            violations.push(format!("port {port} was reset by {from:?}, but its connection's backend stayed: {c:?}"));
        }
    }
    let long_lived = conns.iter().filter(|c| c.long_lived).count();
    let long_to_the_end = conns.iter().filter(|c| c.long_lived && c.failure.is_none()).count();
    let long_whole_run = conns.iter().filter(|c| c.long_lived && c.failure.is_none() && c.open.0 == 0).count();
    let on_drained_long = conns.iter().filter(|c| c.long_lived && c.ok_while_drained > 0).count();

    // UDP: each flow keeps its backend; it moves only when its backend is removed, to the table's.
    let (mut datagrams, mut lost, mut udp_moved) = (0u64, 0u64, Vec::new());
    for r in &udp {
        datagrams += r.replies.len() as u64 + r.lost;
        lost += r.lost;
        let Some(((w0, b0), rest)) = r.replies.split_first() else {
            violations.push(format!("UDP flow from port {} got no answer", r.port));
            continue;
        };
        if !tables.candidates(*w0, Protocol::Udp, r.port).contains(b0) {
            violations.push(format!("UDP flow from port {} started on {}, not the table's", r.port, BACKENDS[*b0]));
        }
        let mut cur = *b0;
        for (w, b) in rest {
            if *b == cur {
                continue;
            }
            let ok =
                (w.0..=w.1).any(|s| steps[s][cur].is_none() && tables.backend(s, Protocol::Udp, r.port) == Some(*b));
            if !ok {
                violations.push(format!(
                    "UDP flow from port {} moved {} -> {} in steps {w:?}: not a removal, or not the table's backend",
                    r.port, BACKENDS[cur], BACKENDS[*b]
                ));
            }
            udp_moved.push(format!("{}:{}->{}", r.port, BACKENDS[cur], BACKENDS[*b]));
            cur = *b;
        }
    }
    if lost > 0 {
        violations.push(format!("{lost} UDP datagrams got no echo"));
        // Where they went: fe1's drops, passes and ring counters (rx_ring_drops: the ring was
        // full; none of these: lost before fe1 or after its TX ring).
        let m = lab.metrics("fe1");
        let where_: Vec<_> = m
            .iter()
            .filter(|(k, v)| **v > 0.0 && ["drop", "pass", "rx_", "tx_"].iter().any(|w| k.contains(w)))
            .collect();
        eprintln!("  fe1 counters after the UDP loss: {where_:?}");
    }

    eprintln!(
        "reload under load: 20 reloads in {reload_secs:.1} s; {} TCP connections ({long_lived} long-lived: {long_whole_run} lasted the whole run, {long_to_the_end} to the end), {} requests answered",
        conns.len(),
        staying.requests + moved.requests
    );
    eprintln!(
        "  staying backend: {} connections, {} requests, {} failed, {} resets",
        staying.conns, staying.requests, staying.failed, staying.resets
    );
    eprintln!(
        "  drained be2: {drained_requests} requests answered on established connections while drained ({on_drained_long} long-lived connections), {new_during_drain_on_drained} of {new_during_drain} connections opened during a drain on be2"
    );
    eprintln!(
        "  removed be3: {} connections, {} requests before removal, {} failed ({} resets), reset by {moved_to:?} as the table says; {closing_moved} closing flows moved (RST unseen by the client); maglevd_flow_rechosen_total {rechosen}",
        moved.conns, moved.requests, moved.failed, moved.resets
    );
    eprintln!("  never answered: {} connections", unanswered.conns);
    eprintln!(
        "  UDP: {} flows, {datagrams} datagrams, {lost} lost, echo servers answered {answered}; moved flows (table's choice): {udp_moved:?}",
        udp.len()
    );

    assert!(violations.is_empty(), "{} violations:\n{}", violations.len(), violations.join("\n"));
    assert_eq!(long_to_the_end, 50, "each of the 50 long-lived clients must hold a connection to the end");
    assert!(moved.conns > 0, "no connection was on be3 when it was removed: the test cannot see a move");
    // Every moved flow was re-chosen once: the reset connections, the UDP flows, the closing ones.
    let moved_flows = moved.conns + udp_moved.len() as u64 + closing_moved;
    assert!(rechosen >= moved_flows as f64, "{moved_flows} flows moved, but maglevd_flow_rechosen_total is {rechosen}");
    assert!(on_drained_long > 0, "no long-lived connection was served by be2 while it was drained");
    assert!(new_during_drain > 0, "no connection was opened during a drain: the drain check saw nothing");
    assert!(!udp_moved.is_empty(), "no UDP flow was on be3 when it was removed");
    assert!(staying.requests > 10_000, "too few requests to mean anything: {}", staying.requests);
}

// ------------------------------------------------------------------------------------------------
// Test 2

/// `maglevd lookup` on `cfg`: the backend (name) the question reaches.
fn lookup_cli(cfg: &Path, client_port: u16, extra: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_maglevd"))
        .args(["lookup", "-c"])
        .arg(cfg)
        .args(["--service", "echo", "--client", &format!("{CLIENT}:{client_port}")])
        .args(extra)
        .output()
        .expect("run maglevd lookup");
    assert!(out.status.success(), "maglevd lookup failed: {}", text(&out.stderr));
    let ip = text(&out.stdout).trim().to_string();
    let i = BACKEND_IPS.iter().position(|b| *b == ip).unwrap_or_else(|| panic!("lookup answered {ip}"));
    BACKENDS[i].to_string()
}

/// A UDP datagram larger than the path MTU, which the client's kernel fragments, reaches the
/// backend of its flow (the one its small datagrams reach), not the one a hash of the addresses
/// alone picks: the first fragment carries the ports and is routed as the flow's packet, the later
/// ones follow it by IP ID (`maglevd_fragments_followed_total`). The flow's port is chosen so that
/// the two backends differ (`maglevd lookup` with and without `--fragment`); before connection
/// tracking every fragment was hashed with ports 0 and the datagram reached the other one.
#[test]
fn a_fragmented_datagram_follows_its_flow() {
    let (lab, path) = lab_on_fe1("ctf", &FULL, 2);
    let stop = Arc::new(AtomicBool::new(false));
    let servers = start_echo_servers(&lab, &stop);
    let fallback = lookup_cli(&path, 1, &["--fragment"]);
    let (port, flow_backend) = (50_000..50_064)
        .map(|p| (p, lookup_cli(&path, p, &[])))
        .find(|(_, b)| *b != fallback)
        .expect("a flow whose backend differs from the fragments' fallback");
    eprintln!("flow from port {port}: table → {flow_backend}; fragments hashed without ports → {fallback}");
    let sock = udp_flow(&lab, port);
    let mut got = Vec::new();
    const BIG: usize = 4000;
    for i in 0..13 {
        let big = i % 4 == 2; // 3 large datagrams between small ones
        let tag = format!("f {port} {i};");
        let mut payload = tag.clone().into_bytes();
        if big {
            payload.resize(BIG, b'x');
        }
        let (be, len) =
            echo(&sock, &payload, &tag).unwrap_or_else(|| panic!("datagram {i} ({} bytes): no echo", payload.len()));
        assert_eq!(len, payload.len(), "the backend received {len} bytes of datagram {i}");
        got.push((payload.len(), be));
    }
    stop.store(true, Ordering::SeqCst);
    for h in servers {
        h.join().expect("echo server");
    }
    std::thread::sleep(Duration::from_millis(100)); // the workers publish their figures
    let followed = sum(&per_worker(&lab, "maglevd_fragments_followed_total"));
    let untracked = sum(&per_worker(&lab, "maglevd_fragments_untracked_total"));
    let tx = lab.counter("client", "eth0", "tx_packets");
    eprintln!(
        "datagrams (bytes, backend): {got:?}; maglevd_fragments_followed_total {followed}, fragments_untracked {untracked}; client sent {tx} packets"
    );
    for (len, be) in &got {
        assert_eq!(
            be, &flow_backend,
            "a {len}-byte datagram of the flow reached {be}, its flow's backend is {flow_backend}"
        );
    }
    // 4000 bytes of UDP in 1500-byte packets: 3 fragments, the 2 later ones followed.
    assert_eq!((followed, untracked), (6.0, 0.0), "3 large datagrams = 6 later fragments followed");
}

// ------------------------------------------------------------------------------------------------
// Test 3

/// With two workers (PACKET_FANOUT by flow hash) and no configuration change: 40 keep-alive TCP
/// connections and 10 UDP flows, each tracked by exactly one worker (the workers' flow misses add
/// up to the number of flows: a flow whose packets were split between workers would miss once on
/// each), both workers track some, no flow is re-chosen, and every flow reaches the table's backend.
#[test]
fn fanout_keeps_each_flow_on_one_worker() {
    let (lab, _path) = lab_on_fe1("ctw", &FULL, 2);
    let tables = Tables::new(&[FULL]);
    let stop = Arc::new(AtomicBool::new(false));
    let servers = start_echo_servers(&lab, &stop);
    let before = per_worker(&lab, "maglevd_flow_misses_total");
    assert_eq!(before.len(), 2, "two workers' figures");
    assert_eq!(sum(&before), 0.0, "no VIP traffic yet");

    const TCP_FLOWS: usize = 40;
    const UDP_FLOWS: u16 = 10;
    let tcp: Vec<(u16, Vec<String>)> = lab.in_ns("client", || {
        let addr = SocketAddr::from((VIP, 80));
        let mut conns: Vec<BufReader<TcpStream>> = (0..TCP_FLOWS)
            .map(|_| {
                let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
                s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                BufReader::new(s)
            })
            .collect();
        let mut answers: Vec<Vec<String>> = vec![Vec::new(); TCP_FLOWS];
        for _ in 0..10 {
            for (c, a) in conns.iter_mut().zip(&mut answers) {
                a.push(support::lab::keepalive_get(c).expect("request on a keep-alive connection"));
            }
        }
        conns.iter().map(|c| c.get_ref().local_addr().unwrap().port()).zip(answers).collect()
    });
    let udp_ports: Vec<u16> = (0..UDP_FLOWS).map(|i| 51_000 + 11 * i).collect();
    let mut udp: Vec<(u16, Vec<String>)> = Vec::new();
    for &p in &udp_ports {
        let s = udp_flow(&lab, p);
        let answers = (0..10)
            .map(|i| {
                let tag = format!("w {p} {i};");
                echo(&s, tag.as_bytes(), &tag).expect("echo").0
            })
            .collect();
        udp.push((p, answers));
    }
    stop.store(true, Ordering::SeqCst);
    for h in servers {
        h.join().expect("echo server");
    }
    std::thread::sleep(Duration::from_millis(200)); // the workers publish their figures

    let mut violations = Vec::new();
    for (proto, flows) in [(Protocol::Tcp, &tcp), (Protocol::Udp, &udp)] {
        for (port, answers) in flows {
            let want = tables.backend(0, proto, *port).map(|b| BACKENDS[b].to_string());
            if answers.iter().any(|a| Some(a) != want.as_ref()) {
                violations.push(format!("{proto:?} flow from port {port}: answers {answers:?}, table {want:?}"));
            }
        }
    }
    let flows = (TCP_FLOWS + usize::from(UDP_FLOWS)) as f64;
    let misses = per_worker(&lab, "maglevd_flow_misses_total");
    let hits = per_worker(&lab, "maglevd_flow_hits_total");
    let inserts = per_worker(&lab, "maglevd_flow_inserts_total");
    let entries = per_worker(&lab, "maglevd_flow_entries");
    let rechosen = sum(&per_worker(&lab, "maglevd_flow_rechosen_total"));
    let evictions = sum(&per_worker(&lab, "maglevd_flow_evictions_total"));
    eprintln!(
        "fanout, 2 workers, {flows} flows ({TCP_FLOWS} TCP × 10 requests, {UDP_FLOWS} UDP × 10 datagrams): misses per worker {misses:?}, hits {hits:?}, inserts {inserts:?}, entries {entries:?}, rechosen {rechosen}, evictions {evictions}"
    );
    assert!(violations.is_empty(), "{}", violations.join("\n"));
    assert_eq!(sum(&misses), flows, "each flow must miss exactly once, on one worker: {misses:?}");
    assert_eq!(sum(&inserts), flows, "{inserts:?}");
    assert_eq!(sum(&entries), flows, "{entries:?}");
    assert!(entries.iter().all(|e| *e > 0.0), "both workers must track flows: {entries:?}");
    assert_eq!((rechosen, evictions), (0.0, 0.0), "nothing changed: no flow may be re-chosen or evicted");
    // At least 11 later packets per TCP flow (handshake ACK, 10 requests) and 9 per UDP flow.
    assert!(sum(&hits) >= 9.0 * flows, "every later packet of a flow is a hit: {hits:?}");
}

// ------------------------------------------------------------------------------------------------
// Test 4

/// A new connection that reuses the 5-tuple of a closed one (the client closed the first with an
/// RST, as SO_LINGER 0 does, so the port is free at once; NAT gateways and busy clients reuse ports
/// too) is a new connection: while the old connection's backend is drained it must go to the
/// table's backend, not to the drained one. (IPVS reschedules a SYN that finds a closed
/// connection entry: `conn_reuse_mode`.)
#[test]
fn a_reused_port_opens_no_new_connection_on_a_drained_backend() {
    let drained: Weights = [Some(100), Some(0), Some(100)];
    let (mut lab, path) = lab_on_fe1("ctd", &FULL, 1);
    let tables = Tables::new(&[FULL, drained]);
    let port = (41_000..41_100).find(|p| tables.backend(0, Protocol::Tcp, *p) == Some(1)).expect("a flow on be2");
    let want = BACKENDS[tables.backend(1, Protocol::Tcp, port).expect("a backend when be2 is drained")];
    let get = |lab: &Lab| {
        let src = SocketAddr::from((CLIENT, port));
        lab.in_ns("client", move || support::lab::http_get_from(src, SocketAddr::from((VIP, 80)), "/"))
            .unwrap_or_else(|e| panic!("request from port {port}: {e}"))
            .trim()
            .to_string()
    };
    let before = get(&lab);
    assert_eq!(before, "be2", "the table sends port {port} to be2");
    write_config(&path, &config_text(&drained));
    reload_and_wait(&mut lab, &drained);
    let after = get(&lab);
    let other = get(&lab);
    eprintln!(
        "port {port}: {before} before the drain; a new connection from the same port after be2 was drained: {after}, then {other} (the table says {want})"
    );
    assert_eq!((after.as_str(), other.as_str()), (want, want), "a new connection reached the drained be2");
}
