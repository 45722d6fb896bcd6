//! Scaling out through BGP end to end (issue 13): the lab's router learns the VIP from BIRD on
//! each frontend (`tests/lab/lab.sh bgp on`; the frontends run the shipped `config/bird.conf`
//! unchanged) instead of its static ECMP route, and the real `maglevd run` on fe1 and fe2, each
//! with an `[announce]` section, tells its BIRD when it can serve the VIP (a route
//! `VIP/32 dev maglevd0 table 4711 proto 240`). The test watches the router's route for the VIP
//! while a client opens new connections through it:
//!
//! * both frontends announce: the route gets both next hops (not before `settle_secs`), and
//!   connections reach the backends through both frontends;
//! * every backend down in fe1's view (its health checks probe a port that stops listening; fe2
//!   checks another): fe1's next hop leaves the route within its health and announce `fall`
//!   times, requests started after that all succeed through fe2, and fe1 comes back with its
//!   backends;
//! * graceful restart of fe1's maglevd (SIGTERM: withdraw at once, forward `drain_secs` longer,
//!   exit; then start again): no request lost, fe1 back after `settle_secs`;
//! * kill -9 of fe1's maglevd: its TUN device goes with it and so does the route, in well under a
//!   second, and no request is lost (a SYN sent to fe1 before that is retransmitted through fe2);
//!   fe1 dying whole (net1 down, then maglevd and BIRD killed, so no TCP FIN reaches the router):
//!   requests hashed to fe1 fail until the router's BGP hold timer expires;
//! * `maglevd drain` on fe1: withdrawn while maglevd keeps running and forwarding, no request
//!   lost; `maglevd drain --undo` announces again.
//!
//! Each scenario is its own test with its own lab (prefix `bg<letter><pid>`); they run one at a
//! time. Every test prints what it measured. Runs as root with BIRD 2 installed (tests/setup.sh
//! installs bird2); fails, never skips, without either. All traffic stays inside the namespaces
//! each test creates and removes.

mod common;
mod support;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::lab::{Lab, Load, Req, RouteWatch, VIP, backend_listeners, require_bird, tally, vip_request};

const FE1: Ipv4Addr = Ipv4Addr::new(10, 158, 100, 2);
const FE2: Ipv4Addr = Ipv4Addr::new(10, 158, 100, 3);
const BACKENDS: [&str; 3] = ["10.158.200.251", "10.158.200.252", "10.158.200.253"];

/// maglevd's `[announce]` in these tests.
const TABLE: u32 = 4711;
const SETTLE: Duration = Duration::from_secs(1);
const ANNOUNCE_INTERVAL: Duration = Duration::from_millis(200);
const ANNOUNCE_RISE: u32 = 2;
const ANNOUNCE_FALL: u32 = 2;
const DRAIN: Duration = Duration::from_secs(2);
/// The health checks (`tcp`).
const CHECK_INTERVAL: Duration = Duration::from_millis(200);
const CHECK_RISE: u32 = 2;
const CHECK_FALL: u32 = 2;
/// On top of each bound: a poll interval or two, netlink, BIRD, BGP, the router's kernel, and a
/// loaded 2-core machine.
const SLACK: Duration = Duration::from_secs(1);
/// On top of the hold time: BIRD's timer, the router's kernel route, a loaded machine.
const HOLD_SLACK: Duration = Duration::from_millis(1500);
/// The port fe1's checks probe in [`one_frontends_backends_down_withdraws_it`] (fe2's: 80).
const FE1_CHECK_PORT: u16 = 8081;

/// maglevd's configuration for frontend `fe` of `lab`: service `web` (VIP:80/tcp, the three
/// backends, `tcp` checks of `check_port`), announced by route in table [`TABLE`].
fn config(lab: &Lab, fe: &str, check_port: u16) -> PathBuf {
    let state = lab.dir().join(format!("state-{fe}"));
    std::fs::create_dir_all(&state).expect("state dir");
    let mut c = format!(
        "[interfaces]\ningress = \"net1\"\negress = \"net2\"\n\n\
         [daemon]\nworkers = 1\nmetrics = \"127.0.0.1:9100\"\nconfig_check_secs = 0\n\n\
         [announce]\ntable = {TABLE}\nsettle_secs = {}\ninterval_ms = {}\nrise = {ANNOUNCE_RISE}\n\
         fall = {ANNOUNCE_FALL}\ndrain_secs = {}\nstate_dir = \"{}\"\n\n\
         [[service]]\nname = \"web\"\nvip = \"{VIP}\"\nprotocol = \"tcp\"\nport = 80\ntable_size = 65537\n\
         when_all_down = \"drop\"\n\n\
         [service.health]\ncheck = \"tcp\"\nport = {check_port}\ninterval_ms = {}\ntimeout_ms = 150\n\
         rise = {CHECK_RISE}\nfall = {CHECK_FALL}\n",
        SETTLE.as_secs(),
        ANNOUNCE_INTERVAL.as_millis(),
        DRAIN.as_secs(),
        state.display(),
        CHECK_INTERVAL.as_millis(),
    );
    for b in BACKENDS {
        c.push_str(&format!("\n[[service.backend]]\nip = \"{b}\"\n"));
    }
    lab.write_file(&format!("maglevd-{fe}.toml"), &c)
}

/// A lab (prefix `tag` + pid) in BGP mode: BIRD on the router, fe1 and fe2, sessions up, no
/// static route for the VIP (and no route at all until a frontend announces it).
fn bgp_lab(tag: &str) -> Lab {
    require_bird();
    let lab = Lab::up(&format!("{tag}{}", std::process::id() % 100_000));
    lab.bgp(true);
    lab
}

fn both(h: &[Ipv4Addr]) -> bool {
    h.len() == 2 && h.contains(&FE1) && h.contains(&FE2)
}

fn fe2_only(h: &[Ipv4Addr]) -> bool {
    h == [FE2]
}

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

/// `maglevd_forwarded_total` of the maglevd in `fe`.
fn forwarded(lab: &Lab, fe: &str) -> f64 {
    lab.metric(fe, "maglevd_forwarded_total")
}

/// The status of `GET /ready/VIP` on the maglevd in `fe`.
fn vip_ready(lab: &Lab, fe: &str) -> u16 {
    lab.http_local(fe, &format!("/ready/{VIP}")).0
}

/// The requests of `reqs` that started in `[from, to)`.
fn between(reqs: &[Req], from: Instant, to: Instant) -> Vec<&Req> {
    reqs.iter().filter(|r| r.start >= from && r.start < to).collect()
}

/// The requests of `reqs` that started before `t`.
fn until(reqs: &[Req], t: Instant) -> Vec<&Req> {
    reqs.iter().filter(|r| r.start < t).collect()
}

fn failed<'a>(reqs: &[&'a Req]) -> Vec<&'a Req> {
    reqs.iter().copied().filter(|r| r.outcome.is_err()).collect()
}

/// How a phase went: requests by backend (or failed), and the slowest.
fn summary(reqs: &[&Req]) -> String {
    let slowest = reqs.iter().map(|r| r.took).max().unwrap_or_default();
    format!("{} requests {:?}, slowest {}", reqs.len(), tally(reqs.iter().map(|r| &r.outcome)), ms(slowest))
}

/// The hold time the router's session to `fe` negotiated (`Hold timer: LEFT/HOLD`).
fn hold_time(lab: &Lab, fe: &str) -> Duration {
    let out = lab.birdc("router", &["show", "protocols", "all", fe]);
    let secs = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Hold timer:"))
        .and_then(|v| v.trim().rsplit('/').next())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no hold time for {fe} in:\n{out}"));
    Duration::from_secs(secs)
}

/// Waits (at most 20 s) until the router routes the VIP to fe1 and fe2 at or after `since`;
/// fails at once, with its log, if a maglevd exits meanwhile.
fn wait_both(lab: &mut Lab, watch: &RouteWatch, since: Instant) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(t) = watch.first(since, both) {
            return t;
        }
        for fe in ["fe1", "fe2"] {
            assert!(lab.maglevd_alive(fe), "maglevd in {fe} exited:\n{}", lab.maglevd_log(fe));
        }
        assert!(
            Instant::now() < deadline,
            "the router does not route the VIP to fe1 and fe2 within 20 s; seen: {:?}",
            watch.changes(since)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Starts maglevd on both frontends and waits until the router routes the VIP to both; returns
/// when each frontend's next hop first appeared, after the start.
fn start_both(lab: &mut Lab, watch: &RouteWatch, fe1_check_port: u16) -> (Duration, Duration) {
    let (c1, c2) = (config(lab, "fe1", fe1_check_port), config(lab, "fe2", 80));
    let t0 = Instant::now();
    lab.start_maglevd("fe1", &c1, &[]);
    lab.start_maglevd("fe2", &c2, &[]);
    wait_both(lab, watch, t0);
    let seen = |hop| watch.first(t0, |h| h.contains(&hop)).expect("seen") - t0;
    (seen(FE1), seen(FE2))
}

/// Both frontends announce the VIP: the router's route gets both next hops, not before
/// `settle_secs`, and new connections from the client reach the backends through both.
#[test]
fn both_frontends_announce_and_share_the_vip() {
    let _serial = common::ns::serial();
    let mut lab = bgp_lab("bga");
    let watch = RouteWatch::start(&lab);
    let none_before = watch.now();
    let (fe1_after, fe2_after) = start_both(&mut lab, &watch, 80);
    let table = lab.sh("fe1", &["ip", "route", "show", "table", &TABLE.to_string()]);
    let router_route = lab.sh("router", &["ip", "route", "show", &format!("{VIP}/32")]);
    let bird_route = lab.birdc("router", &["show", "route", &format!("{VIP}/32")]);
    let ready = (vip_ready(&lab, "fe1"), vip_ready(&lab, "fe2"));

    let before = (forwarded(&lab, "fe1"), forwarded(&lab, "fe2"));
    let t0 = Instant::now();
    let outcomes: Vec<_> =
        lab.in_ns("client", || (0..400).map(|_| vip_request(None, Duration::from_secs(1))).collect());
    let took = t0.elapsed();
    let frames = (forwarded(&lab, "fe1") - before.0, forwarded(&lab, "fe2") - before.1);

    eprintln!(
        "announce: settle {}, interval {}, rise {ANNOUNCE_RISE}; BGP sessions were up before maglevd started",
        ms(SETTLE),
        ms(ANNOUNCE_INTERVAL)
    );
    eprintln!("router's next hops before maglevd started: {none_before:?}");
    eprintln!(
        "maglevd started on fe1 and fe2: next hop fe1 on the router after {}, fe2 after {}",
        ms(fe1_after),
        ms(fe2_after)
    );
    eprintln!("fe1's table {TABLE}: {}", table.trim());
    eprintln!("router's route: {}", router_route.split_whitespace().collect::<Vec<_>>().join(" "));
    eprintln!("router's BIRD:\n{}", bird_route.trim());
    eprintln!(
        "400 new connections in {}: {:?}; frames forwarded by fe1 {}, by fe2 {}",
        ms(took),
        tally(&outcomes),
        frames.0,
        frames.1
    );

    assert!(none_before.is_empty(), "a route for the VIP before any frontend announced it: {none_before:?}");
    assert!(fe1_after >= SETTLE && fe2_after >= SETTLE, "announced before settle_secs: {fe1_after:?} {fe2_after:?}");
    assert!(
        table.contains(&format!("{VIP} dev maglevd0")) && table.contains("proto 240"),
        "fe1's table {TABLE} lacks maglevd's route: {table}"
    );
    assert_eq!(ready, (200, 200), "/ready/{VIP} of fe1 and fe2 while announced");
    assert!(bird_route.contains("[fe1 ") && bird_route.contains("[fe2 "), "router's BIRD: {bird_route}");
    assert!(outcomes.iter().all(Result::is_ok), "failed requests: {:?}", tally(&outcomes));
    assert!(frames.0 > 0.0 && frames.1 > 0.0, "traffic through both frontends: {frames:?}");
}

/// fe1's checks probe port 8081, where listeners on the backends answer, fe2's probe nginx on 80.
/// The listeners stop: every backend is down in fe1's view, fe1 withdraws, and the router drops
/// its next hop within fe1's health and announce fall times; requests hashed to fe1 fail only
/// until then. The listeners come back: so does fe1.
#[test]
fn one_frontends_backends_down_withdraws_it() {
    let _serial = common::ns::serial();
    let mut lab = bgp_lab("bgb");
    let stop = Arc::new(AtomicBool::new(false));
    let listeners = backend_listeners(&lab, FE1_CHECK_PORT, &stop, Duration::from_secs(90));
    let watch = RouteWatch::start(&lab);
    start_both(&mut lab, &watch, FE1_CHECK_PORT);
    let load = Load::start(&lab, Duration::from_millis(500));
    std::thread::sleep(Duration::from_millis(1500));

    let stopped = Instant::now();
    stop.store(true, Ordering::Relaxed);
    for l in listeners {
        l.join().expect("check-port listener");
    }
    let withdrawn = watch.wait_for("the router drops fe1's next hop", stopped, Duration::from_secs(10), fe2_only);
    let ready_down = vip_ready(&lab, "fe1");
    let fe2_ready = vip_ready(&lab, "fe2");
    std::thread::sleep(Duration::from_secs(2)); // traffic through fe2 alone

    let restarted = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let listeners = backend_listeners(&lab, FE1_CHECK_PORT, &stop, Duration::from_secs(60));
    let back = watch.wait_for("the router routes to fe1 again", restarted, Duration::from_secs(10), both);
    std::thread::sleep(Duration::from_secs(1)); // traffic through both again
    let reqs = load.finish();
    stop.store(true, Ordering::Relaxed);
    for l in listeners {
        l.join().expect("check-port listener");
    }

    let down_bound = CHECK_INTERVAL * (CHECK_FALL + 1) + ANNOUNCE_INTERVAL * (ANNOUNCE_FALL + 1) + SLACK;
    let up_bound = CHECK_INTERVAL * (CHECK_RISE + 1) + ANNOUNCE_INTERVAL * (ANNOUNCE_RISE + 1) + SLACK;
    let before = until(&reqs, stopped);
    let detecting = between(&reqs, stopped, withdrawn);
    let fe2_alone = between(&reqs, withdrawn, restarted);
    let coming_back = between(&reqs, restarted, back);
    let after = between(&reqs, back, Instant::now());
    eprintln!(
        "fe1 checks tcp port {FE1_CHECK_PORT} (interval {}, fall {CHECK_FALL}), announces with interval {} and fall {ANNOUNCE_FALL}; fe2 checks port 80",
        ms(CHECK_INTERVAL),
        ms(ANNOUNCE_INTERVAL)
    );
    eprintln!("before the listeners stopped: {}", summary(&before));
    eprintln!(
        "listeners on {FE1_CHECK_PORT} stopped: fe1's next hop left the router's route after {} (bound {}); fe1 /ready/{VIP} {ready_down}, fe2 {fe2_ready}",
        ms(withdrawn - stopped),
        ms(down_bound)
    );
    eprintln!("  until then (requests hashed to fe1 are dropped there): {}", summary(&detecting));
    eprintln!("  after, through fe2 alone: {}", summary(&fe2_alone));
    eprintln!("listeners back: fe1's next hop back after {} (bound {})", ms(back - restarted), ms(up_bound));
    eprintln!("  until then: {}; after: {}", summary(&coming_back), summary(&after));
    eprintln!("route changes from the stop on (ms, next hops): {:?}", watch.changes(stopped));

    assert!(before.len() >= 30 && failed(&before).is_empty(), "before the stop: {}", summary(&before));
    assert!(withdrawn - stopped <= down_bound, "fe1 withdrawn after {:?}", withdrawn - stopped);
    assert_eq!((ready_down, fe2_ready), (503, 200), "/ready/{VIP} of fe1 and fe2 with fe1's backends down");
    assert!(
        fe2_alone.len() >= 30 && failed(&fe2_alone).is_empty(),
        "requests after fe1 was withdrawn: {:?}",
        failed(&fe2_alone)
    );
    assert!(back - restarted <= up_bound, "fe1 back after {:?}", back - restarted);
    assert!(failed(&coming_back).is_empty() && failed(&after).is_empty(), "requests failed while fe1 came back");
    assert!(after.len() >= 10, "too few requests after fe1 came back: {}", summary(&after));
}

/// SIGTERM to fe1's maglevd under a request loop: it withdraws at once and forwards `drain_secs`
/// longer, so the router has moved fe1's share to fe2 before fe1 stops forwarding; started again,
/// it is back on the route after `settle_secs`. No request is lost.
#[test]
fn graceful_restart_loses_no_request() {
    let _serial = common::ns::serial();
    let mut lab = bgp_lab("bgc");
    let watch = RouteWatch::start(&lab);
    start_both(&mut lab, &watch, 80);
    let load = Load::start(&lab, Duration::from_secs(1));
    std::thread::sleep(Duration::from_secs(1));

    let term = Instant::now();
    lab.signal_maglevd("fe1", "TERM");
    let withdrawn = watch.wait_for("the router drops fe1 after SIGTERM", term, Duration::from_secs(5), fe2_only);
    let status = lab.wait_maglevd_exit("fe1", DRAIN + Duration::from_secs(5));
    let exited = Instant::now();
    std::thread::sleep(Duration::from_millis(500)); // fe2 alone

    let started = Instant::now();
    let cfg = lab.dir().join("maglevd-fe1.toml");
    lab.start_maglevd("fe1", &cfg, &[]);
    let back = wait_both(&mut lab, &watch, started);
    let fe1_before = forwarded(&lab, "fe1");
    std::thread::sleep(Duration::from_millis(1500)); // both again
    let reqs = load.finish();
    let fe1_after = forwarded(&lab, "fe1");

    let all: Vec<&Req> = reqs.iter().collect();
    let draining = between(&reqs, term, exited);
    let restarting = between(&reqs, exited, back);
    let after = between(&reqs, back, Instant::now());
    eprintln!(
        "announce: settle {}, interval {}, rise {ANNOUNCE_RISE}; drain {}",
        ms(SETTLE),
        ms(ANNOUNCE_INTERVAL),
        ms(DRAIN)
    );
    eprintln!(
        "SIGTERM to fe1's maglevd: fe1's next hop left the router's route after {}; maglevd exited ({status}) after {}",
        ms(withdrawn - term),
        ms(exited - term)
    );
    eprintln!(
        "started again: fe1's next hop back after {} (settle {}); fe1 forwarded {} frames in the next 1.5 s",
        ms(back - started),
        ms(SETTLE),
        fe1_after - fe1_before
    );
    eprintln!("requests: all {}", summary(&all));
    eprintln!(
        "  draining: {}; fe2 alone, restarting: {}; after: {}",
        summary(&draining),
        summary(&restarting),
        summary(&after)
    );
    eprintln!("route changes from SIGTERM on (ms, next hops): {:?}", watch.changes(term));

    assert!(status.success(), "maglevd on fe1 exited with {status}");
    assert!(withdrawn - term < Duration::from_secs(1), "withdrawn {:?} after SIGTERM", withdrawn - term);
    assert!(
        exited - term >= DRAIN && exited - term <= DRAIN + SLACK,
        "maglevd exited {:?} after SIGTERM (drain {DRAIN:?})",
        exited - term
    );
    assert!(back - started >= SETTLE, "re-announced {:?} after the start, before settle_secs", back - started);
    assert!(
        back - started <= SETTLE + Duration::from_secs(5),
        "re-announced only {:?} after the start",
        back - started
    );
    assert!(failed(&all).is_empty(), "requests lost across the restart: {:?}", failed(&all));
    assert!(all.len() >= 100 && after.len() >= 20, "too few requests: {}", summary(&all));
    assert!(fe1_after > fe1_before, "no traffic through fe1 after it came back");
}

/// kill -9 of fe1's maglevd under a request loop: its TUN device and route go with the process,
/// BIRD withdraws, and the router drops fe1 in well under a second; no request fails (a SYN lost
/// on fe1 meanwhile is retransmitted, through fe2). Then fe1 dies whole: net1 down first, so
/// nothing reaches the router, then maglevd and BIRD killed: requests hashed to fe1 fail until
/// the router's hold timer expires, and only until then.
#[test]
fn killed_maglevd_withdraws_at_once_a_dead_frontend_after_the_hold_time() {
    let _serial = common::ns::serial();
    let mut lab = bgp_lab("bgd");
    let watch = RouteWatch::start(&lab);
    start_both(&mut lab, &watch, 80);

    // 1. maglevd killed.
    let load = Load::start(&lab, Duration::from_secs(3));
    std::thread::sleep(Duration::from_secs(1));
    let killed = Instant::now();
    lab.signal_maglevd("fe1", "KILL");
    let withdrawn = watch.wait_for("the router drops fe1 after kill -9", killed, Duration::from_secs(5), fe2_only);
    lab.wait_maglevd_exit("fe1", Duration::from_secs(5));
    let tun_left = lab.sh("fe1", &["ip", "-o", "link", "show"]).contains("maglevd0");
    std::thread::sleep(Duration::from_millis(1500));
    let reqs = load.finish();
    let after_kill = between(&reqs, killed, Instant::now());
    let slow = after_kill.iter().filter(|r| r.took >= Duration::from_millis(900)).count();

    // 2. fe1 dies whole.
    let cfg = lab.dir().join("maglevd-fe1.toml");
    let restarted = Instant::now();
    lab.start_maglevd("fe1", &cfg, &[]);
    wait_both(&mut lab, &watch, restarted);
    let hold = hold_time(&lab, "fe1");
    let load = Load::start(&lab, Duration::from_secs(1));
    std::thread::sleep(Duration::from_secs(1));
    let died = Instant::now();
    lab.sh("fe1", &["ip", "link", "set", "net1", "down"]);
    let bird = lab.bird_pid("fe1").to_string();
    assert!(std::process::Command::new("kill").args(["-KILL", &bird]).status().is_ok_and(|s| s.success()));
    lab.signal_maglevd("fe1", "KILL");
    let expired = watch.wait_for("the router drops dead fe1", died, hold + Duration::from_secs(5), fe2_only);
    std::thread::sleep(Duration::from_millis(1500));
    let reqs2 = load.finish();
    lab.wait_maglevd_exit("fe1", Duration::from_secs(5));
    let session = lab.birdc("router", &["show", "protocols", "fe1"]);
    let before_death = until(&reqs2, died);
    let dead = between(&reqs2, died, expired);
    let after_expiry = between(&reqs2, expired, Instant::now());
    let lost = failed(&dead);

    eprintln!(
        "kill -9 of fe1's maglevd: fe1's next hop left the router's route after {} (maglevd0 left behind: {tun_left})",
        ms(withdrawn - killed)
    );
    eprintln!(
        "  requests from the kill on (connect timeout 3 s): {}; {slow} took 0.9 s or more (a SYN retransmitted)",
        summary(&after_kill)
    );
    eprintln!(
        "fe1 dies whole (net1 down, BIRD and maglevd killed -9): the router dropped fe1 after {} (hold time {}, keepalive a third; bound {})",
        ms(expired - died),
        ms(hold),
        ms(hold + HOLD_SLACK)
    );
    eprintln!("  router's session to fe1: {}", session.lines().last().unwrap_or("").trim());
    eprintln!(
        "  requests (connect timeout 1 s) before: {}; until the drop: {} ({} lost); after: {}",
        summary(&before_death),
        summary(&dead),
        lost.len(),
        summary(&after_expiry)
    );

    assert!(withdrawn - killed < Duration::from_secs(1), "fe1 withdrawn {:?} after kill -9", withdrawn - killed);
    assert!(!tun_left, "maglevd0 outlived the killed maglevd");
    assert!(failed(&after_kill).is_empty(), "requests lost after kill -9: {:?}", failed(&after_kill));
    assert!(after_kill.len() >= 50, "too few requests after the kill: {}", summary(&after_kill));
    assert!(failed(&before_death).is_empty(), "requests failed before fe1 died: {:?}", failed(&before_death));
    // Not sooner than a hold time less one keepalive interval: nothing but the hold timer told
    // the router.
    assert!(
        expired - died >= hold - hold / 3 - Duration::from_millis(500),
        "the router dropped dead fe1 after {:?}, before its hold time ({hold:?}) could expire",
        expired - died
    );
    assert!(expired - died <= hold + HOLD_SLACK, "the router dropped dead fe1 only after {:?}", expired - died);
    assert!(session.contains("Hold timer expired"), "router's session to fe1: {session}");
    assert!(
        !lost.is_empty(),
        "no request was lost while dead fe1 was still routed (positive control): {}",
        summary(&dead)
    );
    assert!(failed(&after_expiry).is_empty(), "requests failed after the drop: {:?}", failed(&after_expiry));
}

/// `maglevd drain` on fe1 under a request loop: fe1 withdraws the VIP but keeps running and
/// forwarding, so the router moves fe1's share to fe2 and no request is lost; `/ready/VIP` answers
/// 503 meanwhile. `maglevd drain --undo` announces it again.
#[test]
fn drain_command_withdraws_without_stopping() {
    let _serial = common::ns::serial();
    let mut lab = bgp_lab("bge");
    let watch = RouteWatch::start(&lab);
    start_both(&mut lab, &watch, 80);
    let cfg = lab.dir().join("maglevd-fe1.toml").display().to_string();
    let load = Load::start(&lab, Duration::from_secs(1));
    std::thread::sleep(Duration::from_secs(1));

    let drained = Instant::now();
    let out = lab.sh("fe1", &[env!("CARGO_BIN_EXE_maglevd"), "drain", "-c", &cfg]);
    let withdrawn = watch.wait_for("the router drops drained fe1", drained, Duration::from_secs(5), fe2_only);
    let ready = vip_ready(&lab, "fe1");
    std::thread::sleep(Duration::from_secs(1));
    let alive = lab.maglevd_alive("fe1");

    let undone = Instant::now();
    let out_undo = lab.sh("fe1", &[env!("CARGO_BIN_EXE_maglevd"), "drain", "--undo", "-c", &cfg]);
    let back = wait_both(&mut lab, &watch, undone);
    let fe1_before = forwarded(&lab, "fe1");
    std::thread::sleep(Duration::from_secs(1));
    let reqs = load.finish();
    let fe1_after = forwarded(&lab, "fe1");
    let all: Vec<&Req> = reqs.iter().collect();

    eprintln!(
        "maglevd drain: {:?}; fe1's next hop left the router's route after {}",
        out.trim(),
        ms(withdrawn - drained)
    );
    eprintln!("  fe1 /ready/{VIP} {ready} while drained; maglevd still running: {alive}");
    eprintln!(
        "maglevd drain --undo: {:?}; fe1's next hop back after {}; fe1 forwarded {} frames in the next second",
        out_undo.trim(),
        ms(back - undone),
        fe1_after - fe1_before
    );
    eprintln!("requests: {}", summary(&all));

    assert!(withdrawn - drained < Duration::from_secs(1), "withdrawn {:?} after maglevd drain", withdrawn - drained);
    assert_eq!(ready, 503, "/ready/{VIP} of drained fe1");
    assert!(alive, "maglevd on fe1 stopped on drain");
    assert!(back - undone <= ANNOUNCE_INTERVAL * (ANNOUNCE_RISE + 1) + SLACK, "back {:?} after --undo", back - undone);
    assert!(failed(&all).is_empty(), "requests lost across drain and undo: {:?}", failed(&all));
    assert!(fe1_after > fe1_before, "no traffic through fe1 after drain --undo");
}

/// The shipped BIRD configuration parses (`bird -p`) and learns the kernel table these tests'
/// maglevd announces in.
#[test]
fn shipped_bird_conf_parses_and_learns_the_announce_table() {
    require_bird();
    let path = support::lab::repo().join("config/bird.conf");
    let out = std::process::Command::new("bird").arg("-p").arg("-c").arg(&path).output().expect("run bird -p");
    assert!(out.status.success(), "bird -p -c {}: {}", path.display(), support::lab::text(&out.stderr));
    let conf = std::fs::read_to_string(&path).expect("read config/bird.conf");
    assert!(conf.contains(&format!("kernel table {TABLE};")), "config/bird.conf does not learn table {TABLE}");
}
