//! Health checks end to end: the real `maglevd run` on the lab's frontends (tests/lab/lab.sh),
//! checking the three nginx backends, while a client in the client namespace opens new
//! connections through the VIP and the test reads the daemons' metrics and `/ready`.
//!
//! * A backend's server stops: no new connection reaches it after `fall × interval + 1 s`, no
//!   request fails after the daemons marked it down, and it serves again `rise × interval` after
//!   its server starts (`tcp` check).
//! * A backend loses the VIP from its loopback (a DSR blackhole): the `dsr` check takes it down
//!   and clients stop failing; a `tcp` check on its real IP keeps it up while clients hashed to it
//!   fail.
//! * Every backend down: `when_all_down = "drop"` drops the traffic and `/ready` names the
//!   service; `"all"` keeps forwarding to every backend.
//!
//! Each scenario is its own test with its own lab; they run one at a time (timing is measured,
//! and the machine has two cores). Every test prints what it measured. Runs as root; fails, never
//! skips, without it. All traffic stays inside the namespaces each test creates and removes.

mod common;
mod support;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::lab::{CLIENT, Lab, Load, Req, VIP, backend_listeners, http_get, tally, text, vip_request as request};

const INTERVAL: Duration = Duration::from_millis(500);
const TIMEOUT_MS: u64 = 300;
const RISE: u32 = 2;
const FALL: u32 = 3;
/// The slack the requirement allows on top of `fall × interval` and `rise × interval`.
const SLACK: Duration = Duration::from_secs(1);

const BACKENDS: [&str; 3] = ["10.158.200.251", "10.158.200.252", "10.158.200.253"];
const BE2: &str = "10.158.200.252";
const FE1_NET1: &str = "10.158.100.2";
const FE2_NET1: &str = "10.158.100.3";

/// One service `web` (VIP:80/tcp, the lab's three backends) with a health check of `check` on
/// `port` every [`INTERVAL`], and `when_all_down`.
fn config(check: &str, port: u16, when_all_down: &str) -> String {
    let mut c = format!(
        "[interfaces]\ningress = \"net1\"\negress = \"net2\"\n\n\
         [daemon]\nworkers = 1\nmetrics = \"127.0.0.1:9100\"\nconfig_check_secs = 0\n\n\
         [[service]]\nname = \"web\"\nvip = \"{VIP}\"\nprotocol = \"tcp\"\nport = 80\ntable_size = 65537\n\
         when_all_down = \"{when_all_down}\"\n\n\
         [service.health]\ncheck = \"{check}\"\nport = {port}\ninterval_ms = {}\ntimeout_ms = {TIMEOUT_MS}\n\
         rise = {RISE}\nfall = {FALL}\n",
        INTERVAL.as_millis()
    );
    for b in BACKENDS {
        c.push_str(&format!("\n[[service.backend]]\nip = \"{b}\"\n"));
    }
    c
}

/// A lab with maglevd on each of `daemons` (frontend, configuration); `tag` makes its prefix
/// unique. The router keeps sending the VIP to both frontends (ECMP) until a test routes it.
fn lab_with(tag: &str, daemons: &[(&str, String)]) -> Lab {
    let mut lab = Lab::up(&format!("{tag}{}", std::process::id() % 100_000));
    for (fe, cfg) in daemons {
        let path: PathBuf = lab.dir().join(format!("maglevd-{fe}.toml"));
        std::fs::write(&path, cfg).expect("write the configuration");
        lab.start_maglevd(fe, &path, &[]);
    }
    lab
}

/// Send the router's VIP traffic to one frontend (its net1 address).
fn route_vip_via(lab: &Lab, via: &str) {
    lab.sh("router", &["ip", "route", "replace", &format!("{VIP}/32"), "via", via, "dev", "vlan100"]);
}

/// The metrics of the maglevd in `fe`, scraped from inside its namespace (faster than curl, for
/// timing): `name{labels}` → value.
fn scrape(lab: &Lab, fe: &str) -> BTreeMap<String, f64> {
    let body = lab
        .in_ns(fe, || http_get(SocketAddr::from(([127, 0, 0, 1], 9100)), "/metrics"))
        .unwrap_or_else(|e| panic!("{fe}: /metrics: {e}"));
    support::lab::parse_metrics(&body)
}

/// The labels of backend `ip` of service `web` with `extra` labels after them (a Maglev backend
/// is labelled by its IP).
fn labels(name: &str, ip: &str, extra: &str) -> String {
    format!("{name}{{service=\"web\",backend=\"{ip}\"{extra}")
}

/// A per-backend metric of service `web` (panics if absent: the name or labels changed).
fn backend_metric(m: &BTreeMap<String, f64>, name: &str, ip: &str) -> f64 {
    let key = labels(name, ip, "}");
    *m.get(&key).unwrap_or_else(|| panic!("no {key} in the metrics: {:?}", m.keys().collect::<Vec<_>>()))
}

fn transitions(m: &BTreeMap<String, f64>, ip: &str, to: &str) -> f64 {
    let key = labels("maglevd_backend_health_transitions_total", ip, &format!(",to=\"{to}\"}}"));
    *m.get(&key).unwrap_or_else(|| panic!("no {key} in the metrics"))
}

/// The `error` label of the backend's `maglevd_backend_last_probe_error_info`, if any.
fn last_probe_error(m: &BTreeMap<String, f64>, ip: &str) -> Option<String> {
    let prefix = labels("maglevd_backend_last_probe_error_info", ip, ",error=\"");
    m.keys().find_map(|k| k.strip_prefix(&prefix).map(|e| e.trim_end_matches("\"}").to_string()))
}

/// Polls `ok` every 10 ms until it holds; returns when it first held. Panics after `within`.
fn wait_until(what: &str, within: Duration, ok: impl FnMut() -> bool) -> Instant {
    support::lab::wait_until(what, within, Duration::from_millis(10), ok)
}

fn outcomes<'a>(reqs: &'a [&Req]) -> impl Iterator<Item = &'a Result<String, String>> {
    reqs.iter().map(|r| &r.outcome)
}

/// The nginx of backend `be` (as tests/lab/lab.sh starts it): stopped by its pid file and
/// started again with the same command line.
fn stop_nginx(lab: &Lab, be: &str) {
    let pid = std::fs::read_to_string(lab.dir().join(be).join("nginx.pid")).expect("nginx pid file");
    let pid = pid.trim();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    assert_eq!(comm.trim(), "nginx", "pid {pid} of {be}'s pid file is no nginx");
    assert!(Command::new("kill").args(["-TERM", pid]).status().is_ok_and(|s| s.success()), "kill nginx {pid}");
    wait_until(&format!("{be}: nothing listens on port 80 after nginx stopped"), Duration::from_secs(5), || {
        lab.sh(be, &["ss", "-Hltn", "sport = :80"]).trim().is_empty()
    });
}

fn start_nginx(lab: &Lab, be: &str) {
    let d = lab.dir().join(be).display().to_string();
    // nginx binds its listening sockets before it daemonizes: they listen when this returns.
    lab.sh(be, &["nginx", "-q", "-p", &d, "-c", &format!("{d}/nginx.conf"), "-e", &format!("{d}/error.log")]);
}

/// tcpdump in a backend's namespace: the time of every new client connection (a SYN from the
/// client to the VIP) that reaches it.
struct SynCapture {
    child: Option<Child>,
}

impl SynCapture {
    fn start(lab: &Lab, be: &str) -> SynCapture {
        let filter = format!("src host {CLIENT} and dst host {VIP} and tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn");
        let child = lab
            .netns(be)
            .command("tcpdump")
            .args(["-i", "net1", "-nn", "-q", "-tt", "-l", "-p", &filter])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tcpdump");
        SynCapture { child: Some(child) }
    }

    /// SIGINT, then the capture times (wall clock).
    fn stop(mut self) -> Vec<SystemTime> {
        let child = self.child.take().expect("running");
        let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
        let out = child.wait_with_output().expect("wait for tcpdump");
        text(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next()?.parse::<f64>().ok())
            .map(|secs| UNIX_EPOCH + Duration::from_secs_f64(secs))
            .collect()
    }
}

impl Drop for SynCapture {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Converts wall-clock times into [`Instant`]s through one pair read together.
struct Clock {
    instant: Instant,
    wall: SystemTime,
}

impl Clock {
    fn now() -> Clock {
        Clock { instant: Instant::now(), wall: SystemTime::now() }
    }

    fn instant(&self, t: SystemTime) -> Instant {
        match t.duration_since(self.wall) {
            Ok(after) => self.instant + after,
            Err(e) => self.instant - e.duration(),
        }
    }
}

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

/// nginx on be2 stops: both frontends' `tcp` checks take be2 down within `fall × interval + 1 s`,
/// after which no new connection reaches be2 and no request fails; nginx starts again: be2 serves
/// new connections within `rise × interval + 1 s`.
#[test]
fn a_stopped_server_is_out_within_fall_intervals_and_back_within_rise() {
    let _serial = common::ns::serial();
    let cfg = config("tcp", 80, "drop");
    let mut lab = lab_with("hs", &[("fe1", cfg.clone()), ("fe2", cfg)]);
    for fe in ["fe1", "fe2"] {
        lab.wait_ready(fe, Duration::from_secs(15));
    }
    let healthy = |lab: &Lab, fe: &str| backend_metric(&scrape(lab, fe), "maglevd_backend_healthy", BE2);
    let capture = SynCapture::start(&lab, "be2");
    std::thread::sleep(Duration::from_millis(800)); // tcpdump attaches
    let load = Load::start(&lab, Duration::from_secs(1));
    std::thread::sleep(Duration::from_secs(1));

    // Stop: each frontend's time until be2 is down in its published snapshot.
    let stopped = Instant::now();
    stop_nginx(&lab, "be2");
    let mut down = BTreeMap::new();
    wait_until("be2 marked down on fe1 and fe2", Duration::from_secs(10), || {
        for fe in ["fe1", "fe2"] {
            if !down.contains_key(fe) && healthy(&lab, fe) == 0.0 {
                down.insert(fe, stopped.elapsed());
            }
        }
        down.len() == 2
    });
    let marked_down = stopped + down.values().copied().max().unwrap();
    std::thread::sleep(Duration::from_secs(2)); // traffic with be2 out

    // Start: each frontend's time until be2 is up again, and the first connection it serves.
    let started = Instant::now();
    start_nginx(&lab, "be2");
    let mut up = BTreeMap::new();
    wait_until("be2 marked up on fe1 and fe2", Duration::from_secs(10), || {
        for fe in ["fe1", "fe2"] {
            if !up.contains_key(fe) && healthy(&lab, fe) == 1.0 {
                up.insert(fe, started.elapsed());
            }
        }
        up.len() == 2
    });
    std::thread::sleep(Duration::from_secs(1)); // traffic with be2 back
    let clock = Clock::now();
    let reqs = load.finish();
    let syns: Vec<Instant> = capture.stop().into_iter().map(|t| clock.instant(t)).collect();

    let fall_bound = INTERVAL * FALL + SLACK;
    let rise_bound = INTERVAL * RISE + SLACK;
    let before: Vec<&Req> = reqs.iter().filter(|r| r.start < stopped).collect();
    let stopping: Vec<&Req> = reqs.iter().filter(|r| r.start >= stopped && r.start < marked_down).collect();
    let out: Vec<&Req> = reqs.iter().filter(|r| r.start >= marked_down && r.start < started).collect();
    let back: Vec<&Req> = reqs.iter().filter(|r| r.start >= started).collect();
    let last_syn = syns.iter().filter(|t| **t >= stopped && **t < started).max().map(|t| *t - stopped);
    let first_served = back.iter().find(|r| r.outcome.as_deref() == Ok("be2")).map(|r| r.start - started);
    let first_syn = syns.iter().filter(|t| **t >= started).min().map(|t| *t - started);
    eprintln!(
        "tcp check, interval {}, fall {FALL}, rise {RISE}; {} requests, {} SYNs to be2 seen on be2",
        ms(INTERVAL),
        reqs.len(),
        syns.len()
    );
    eprintln!("before the stop: {:?}", tally(outcomes(&before)));
    eprintln!(
        "nginx on be2 stopped: be2 marked down after {} (fe1) and {} (fe2), bound {}; last new connection reached be2 {} after the stop",
        ms(down["fe1"]),
        ms(down["fe2"]),
        ms(fall_bound),
        last_syn.map_or("never".into(), ms)
    );
    eprintln!("  between the stop and the mark-down: {:?}", tally(outcomes(&stopping)));
    eprintln!("  after the mark-down until the start: {:?}", tally(outcomes(&out)));
    eprintln!(
        "nginx on be2 started: be2 marked up after {} (fe1) and {} (fe2); first new connection reached be2 {} and was served by it {} after the start, bound {}",
        ms(up["fe1"]),
        ms(up["fe2"]),
        first_syn.map_or("never".into(), ms),
        first_served.map_or("never".into(), ms),
        ms(rise_bound)
    );
    eprintln!("  after the start: {:?}", tally(outcomes(&back)));

    assert!(before.len() >= 50 && before.iter().all(|r| r.outcome.is_ok()), "before the stop: {before:?}");
    assert_eq!(tally(outcomes(&before)).len(), 3, "every backend served before the stop: {before:?}");
    assert!(down.values().all(|d| *d <= fall_bound), "be2 marked down after {down:?}, over {fall_bound:?}");
    let late: Vec<Duration> =
        syns.iter().filter(|t| **t >= stopped + fall_bound && **t < started).map(|t| *t - stopped).collect();
    assert!(late.is_empty(), "new connections reached be2 later than {fall_bound:?} after the stop: {late:?}");
    let failed_out: Vec<&&Req> = out.iter().filter(|r| r.outcome.is_err()).collect();
    assert!(failed_out.is_empty(), "requests failed after be2 was marked down: {failed_out:?}");
    assert!(out.len() >= 50, "too few requests while be2 was out: {}", out.len());
    assert!(!out.iter().any(|r| r.outcome.as_deref() == Ok("be2")), "be2 served while out");
    assert!(up.values().all(|d| *d <= rise_bound), "be2 marked up after {up:?}, over {rise_bound:?}");
    let first_served = first_served.expect("be2 served no new connection after nginx started");
    assert!(first_served <= rise_bound, "be2 served again only {first_served:?} after the start");
    let failed_back: Vec<&&Req> = back.iter().filter(|r| r.outcome.is_err()).collect();
    assert!(failed_back.is_empty(), "requests failed after nginx on be2 started: {failed_back:?}");
    assert!(syns.iter().any(|t| *t < stopped), "the capture on be2 saw no SYN before the stop (positive control)");
}

/// Source ports whose flows (new connections from the client) reach `backend` through the
/// frontend the VIP is routed to; at most 200 tried.
fn ports_reaching(lab: &Lab, backend: &str, want: usize) -> Vec<u16> {
    let backend = backend.to_string();
    lab.in_ns("client", move || {
        let mut found = Vec::new();
        for port in 42000..42200u16 {
            if request(Some(port), Duration::from_secs(1)).as_deref() == Ok(backend.as_str()) {
                found.push(port);
                if found.len() == want {
                    break;
                }
            }
        }
        found
    })
}

/// Requests from each of `ports`, in parallel: (port, outcome).
fn from_ports(lab: &Lab, ports: &[u16], connect_timeout: Duration) -> Vec<(u16, Result<String, String>)> {
    let handles: Vec<_> =
        ports.iter().map(|&p| (p, lab.spawn_in_ns("client", move || request(Some(p), connect_timeout)))).collect();
    handles.into_iter().map(|(p, h)| (p, h.join().expect("request thread"))).collect()
}

/// be2 loses the VIP from its loopback: its real IP still serves, but every client packet sent
/// to it is dropped. fe2 (`dsr` check) takes be2 down and its clients stop failing; fe1 (`tcp`
/// check on the real IP) keeps be2 up while the flows it sends to be2 fail.
#[test]
fn only_the_dsr_check_sees_a_backend_without_the_vip() {
    let _serial = common::ns::serial();
    let mut lab = lab_with("hd", &[("fe1", config("tcp", 80, "drop")), ("fe2", config("dsr", 80, "drop"))]);
    for fe in ["fe1", "fe2"] {
        lab.wait_ready(fe, Duration::from_secs(15));
    }
    // The same table on both frontends: the same flows go to be2 through either.
    route_vip_via(&lab, FE1_NET1);
    let to_be2 = ports_reaching(&lab, "be2", 4);
    assert_eq!(to_be2.len(), 4, "fewer than 4 of 200 flows reach be2 through fe1: {to_be2:?}");
    route_vip_via(&lab, FE2_NET1);
    let via_fe2 = from_ports(&lab, &to_be2, Duration::from_secs(1));
    assert!(via_fe2.iter().all(|(_, o)| o.as_deref() == Ok("be2")), "fe2 sends them elsewhere: {via_fe2:?}");

    // Through fe2 (dsr): new connections from the client while the VIP goes.
    let load = Load::start(&lab, Duration::from_millis(500));
    std::thread::sleep(Duration::from_secs(1));
    let removed = Instant::now();
    lab.sh("be2", &["ip", "addr", "del", &format!("{VIP}/32"), "dev", "lo"]);
    let mut m = BTreeMap::new();
    let marked_down = wait_until("fe2's dsr check takes be2 down", Duration::from_secs(10), || {
        m = scrape(&lab, "fe2");
        backend_metric(&m, "maglevd_backend_healthy", BE2) == 0.0
    });
    let down_after = marked_down - removed;
    let error = last_probe_error(&m, BE2);
    std::thread::sleep(Duration::from_secs(2)); // traffic with be2 out
    let reqs = load.finish();
    let before: Vec<&Req> = reqs.iter().filter(|r| r.start < removed).collect();
    let removing: Vec<&Req> = reqs.iter().filter(|r| r.start >= removed && r.start < marked_down).collect();
    let out: Vec<&Req> = reqs.iter().filter(|r| r.start >= marked_down).collect();
    let re_chosen = from_ports(&lab, &to_be2, Duration::from_secs(1));

    // Through fe1 (tcp): be2 stays up while the flows sent to it fail.
    route_vip_via(&lab, FE1_NET1);
    let via_fe1 = from_ports(&lab, &to_be2, Duration::from_secs(1));
    let others = ports_reaching(&lab, "be1", 2);
    let since = removed.elapsed();
    let m1 = scrape(&lab, "fe1");
    let fe1_healthy = backend_metric(&m1, "maglevd_backend_healthy", BE2);
    let fe1_downs = transitions(&m1, BE2, "down");

    // The VIP back: fe2 brings be2 back.
    let restored = Instant::now();
    lab.sh("be2", &["ip", "addr", "add", &format!("{VIP}/32"), "dev", "lo"]);
    let up_after = wait_until("fe2's dsr check brings be2 back", Duration::from_secs(10), || {
        backend_metric(&scrape(&lab, "fe2"), "maglevd_backend_healthy", BE2) == 1.0
    }) - restored;
    let via_fe1_again = from_ports(&lab, &to_be2, Duration::from_secs(1));

    eprintln!("flows reaching be2 (through fe1 and fe2 alike) from client ports {to_be2:?}");
    eprintln!("through fe2 (dsr) before the VIP went from be2's lo: {:?}", tally(outcomes(&before)));
    eprintln!(
        "VIP removed from be2's lo: fe2's dsr check marked be2 down after {} (bound {}), last probe error {error:?}",
        ms(down_after),
        ms(INTERVAL * FALL + SLACK)
    );
    eprintln!("  through fe2, between the removal and the mark-down: {:?}", tally(outcomes(&removing)));
    eprintln!("  through fe2, after the mark-down: {:?}", tally(outcomes(&out)));
    eprintln!("  through fe2, the flows that went to be2: {re_chosen:?}");
    eprintln!(
        "  through fe1 (tcp), {} after the removal: be2 healthy {fe1_healthy}, {fe1_downs} transitions to down; the flows to be2: {via_fe1:?}; flows to be1 from {others:?} fine",
        ms(since)
    );
    eprintln!(
        "VIP back on be2's lo: fe2 marked be2 up after {}; through fe1 the flows to be2: {via_fe1_again:?}",
        ms(up_after)
    );

    assert!(before.len() >= 30 && before.iter().all(|r| r.outcome.is_ok()), "before the removal: {before:?}");
    assert!(down_after <= INTERVAL * FALL + SLACK, "dsr took {down_after:?} to mark be2 down");
    let error = error.expect("fe2 reports be2's last probe error");
    assert!(error.contains("no answer from 10.201.0.1:80"), "{error}");
    let failed_out: Vec<&&Req> = out.iter().filter(|r| r.outcome.is_err()).collect();
    assert!(failed_out.is_empty(), "requests through fe2 failed after be2 was marked down: {failed_out:?}");
    assert!(out.len() >= 30 && !out.iter().any(|r| r.outcome.as_deref() == Ok("be2")), "after the mark-down: {out:?}");
    assert!(
        re_chosen.iter().all(|(_, o)| o.as_ref().is_ok_and(|b| b != "be2")),
        "be2's flows through fe2 must go elsewhere: {re_chosen:?}"
    );
    assert!(since >= INTERVAL * (FALL + 3), "fe1 was watched only {since:?}");
    assert_eq!((fe1_healthy, fe1_downs), (1.0, 0.0), "the tcp check on fe1 must not see the missing VIP");
    assert!(via_fe1.iter().all(|(_, o)| o.is_err()), "flows to be2 through fe1 must fail without the VIP: {via_fe1:?}");
    assert_eq!(others.len(), 2, "flows to be1 through fe1 still work");
    assert!(up_after <= INTERVAL * RISE + SLACK, "dsr took {up_after:?} to bring be2 back");
    assert!(via_fe1_again.iter().all(|(_, o)| o.as_deref() == Ok("be2")), "be2 back: {via_fe1_again:?}");
}

/// Every check fails (they probe port 8080, where nobody listens; nginx still serves port 80):
/// fe1 (`when_all_down = "drop"`) drops the traffic and is not ready, naming the service; fe2
/// (`"all"`) forwards it to every backend. A listener on 8080 brings the backends back.
#[test]
fn when_all_down_drop_or_all() {
    let _serial = common::ns::serial();
    let lab = lab_with("ha", &[("fe1", config("tcp", 8080, "drop")), ("fe2", config("tcp", 8080, "all"))]);
    let t0 = Instant::now();
    let all_down = |fe: &str| scrape(&lab, fe).get("maglevd_service_all_down{service=\"web\"}").copied();
    let mut after = BTreeMap::new();
    wait_until("every backend down on fe1 and fe2", Duration::from_secs(15), || {
        for fe in ["fe1", "fe2"] {
            if !after.contains_key(fe)
                && lab.in_ns(fe, || TcpStream::connect(("127.0.0.1", 9100)).is_ok())
                && all_down(fe) == Some(1.0)
            {
                after.insert(fe, t0.elapsed());
            }
        }
        after.len() == 2
    });
    let (m1, m2) = (scrape(&lab, "fe1"), scrape(&lab, "fe2"));
    let (ready1, ready2) = (lab.http_local("fe1", "/ready"), lab.http_local("fe2", "/ready"));
    let vip_ready1 = lab.http_local("fe1", &format!("/ready/{VIP}"));

    route_vip_via(&lab, FE1_NET1);
    let dropped_before = m1.get("maglevd_drop_total{reason=\"no_backend\"}").copied().unwrap_or(0.0);
    let via_fe1 = lab.in_ns("client", || (0..5).map(|_| request(None, Duration::from_millis(500))).collect::<Vec<_>>());
    let dropped =
        scrape(&lab, "fe1").get("maglevd_drop_total{reason=\"no_backend\"}").copied().unwrap_or(0.0) - dropped_before;
    route_vip_via(&lab, FE2_NET1);
    let via_fe2 = lab.in_ns("client", || (0..150).map(|_| request(None, Duration::from_secs(1))).collect::<Vec<_>>());
    let spread = tally(&via_fe2);

    // Something listens on the check port again: the backends come back, fe1 is ready.
    let stop = Arc::new(AtomicBool::new(false));
    let servers = backend_listeners(&lab, 8080, &stop, Duration::from_secs(30));
    let t1 = Instant::now();
    let back = wait_until("a backend of fe1 back", Duration::from_secs(10), || all_down("fe1") == Some(0.0)) - t1;
    let ready_back =
        wait_until("fe1 ready again", Duration::from_secs(5), || lab.http_local("fe1", "/ready").0 == 200) - t1;
    let all_back = wait_until("every backend of fe1 back", Duration::from_secs(10), || {
        let m = scrape(&lab, "fe1");
        BACKENDS.iter().all(|b| backend_metric(&m, "maglevd_backend_healthy", b) == 1.0)
    }) - t1;
    route_vip_via(&lab, FE1_NET1);
    let via_fe1_back =
        lab.in_ns("client", || (0..60).map(|_| request(None, Duration::from_secs(1))).collect::<Vec<_>>());
    stop.store(true, Ordering::Relaxed);
    for s in servers {
        s.join().expect("check-port listener");
    }

    eprintln!(
        "checks on port 8080 (nobody listens), interval {}, fall {FALL}: every backend down after {} (fe1, drop) and {} (fe2, all)",
        ms(INTERVAL),
        ms(after["fe1"]),
        ms(after["fe2"])
    );
    eprintln!(
        "fe1 (drop): /ready {} {:?}; 5 requests: {via_fe1:?}; no_backend drops +{dropped}",
        ready1.0,
        ready1.1.trim()
    );
    eprintln!("fe2 (all): /ready {} {:?}; 150 requests: {spread:?}", ready2.0, ready2.1.trim());
    eprintln!(
        "listeners on 8080: fe1's first backend back after {}, ready after {}, every backend back after {}; 60 requests through fe1: {:?}",
        ms(back),
        ms(ready_back),
        ms(all_back),
        tally(&via_fe1_back)
    );

    for (fe, m) in [("fe1", &m1), ("fe2", &m2)] {
        for b in BACKENDS {
            assert_eq!(backend_metric(m, "maglevd_backend_healthy", b), 0.0, "{fe} {b}");
            let error = last_probe_error(m, b).unwrap_or_else(|| panic!("{fe}: no last probe error for {b}"));
            assert!(error.contains("refused"), "{fe} {b}: {error}");
        }
    }
    assert_eq!(ready1.0, 503, "fe1 (drop) with every backend down must not be ready: {ready1:?}");
    assert_eq!(vip_ready1.0, 503, "nor its VIP (what a BGP speaker would withdraw): {vip_ready1:?}");
    let vip_ready_back = lab.http_local("fe1", &format!("/ready/{VIP}"));
    assert_eq!(vip_ready_back.0, 200, "fe1's VIP ready again: {vip_ready_back:?}");
    assert!(ready1.1.contains("no usable backend") && ready1.1.contains("web"), "{ready1:?}");
    assert!(BACKENDS.iter().all(|b| backend_metric(&m1, "maglevd_backend_up", b) == 0.0), "fe1 forwards to none");
    assert!(via_fe1.iter().all(Result::is_err), "fe1 (drop) forwarded: {via_fe1:?}");
    assert!(dropped >= 5.0, "fe1 counted {dropped} no_backend drops for 5 connections");
    assert_eq!(ready2.0, 200, "fe2 (all) forwards, so it is ready: {ready2:?}");
    assert!(BACKENDS.iter().all(|b| backend_metric(&m2, "maglevd_backend_up", b) == 1.0), "fe2 forwards to all");
    assert!(via_fe2.iter().all(Result::is_ok), "fe2 (all) must forward: {via_fe2:?}");
    assert_eq!(spread.len(), 3, "fe2 (all) spreads over every backend: {spread:?}");
    assert!(back <= INTERVAL * RISE + SLACK, "backends back after {back:?}");
    assert!(all_back <= INTERVAL * RISE + SLACK, "every backend back after {all_back:?}");
    assert!(via_fe1_back.iter().all(Result::is_ok), "fe1 forwards again: {via_fe1_back:?}");
    assert_eq!(tally(&via_fe1_back).len(), 3, "fe1 spreads over every backend again");
}
