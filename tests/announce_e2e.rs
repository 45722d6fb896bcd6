//! VIP announcement end to end, maglevd's side (`[announce]`), in the namespace lab without a
//! BGP daemon (tests/bgp_e2e.rs adds BIRD): the real `maglevd run` on fe1 and what a BGP daemon
//! would learn from it, the route `VIP/32 dev maglevd0 table 4711 proto 240`.
//!
//! * The route appears only after the settle time and `rise` ready evaluations, and goes after
//!   `fall` not-ready ones (every backend down by its health check), without flapping.
//! * `maglevd drain`, `--undo` and the drain file take it away and back at once, with the state
//!   file, while forwarding goes on.
//! * SIGTERM withdraws at once, forwards through the drain period (requests keep working), then
//!   exits cleanly.
//! * `kill -9` takes the route and the device with the process; the next start cleans the state
//!   file left behind and announces again.
//!
//! Each scenario is its own test with its own lab. Runs as root; fails, never skips, without it.
//! All traffic stays inside the namespaces each test creates and removes.

mod common;
mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::lab::{GetOptions, Lab, VIP, http_get_with, wait_until};

const TABLE: u32 = 4711;
const FE1_NET1: &str = "10.158.100.2";
const BE1: &str = "10.158.200.251";

/// One service (VIP:80/tcp on be1 and be2) with a tcp check on `check_port` (80 serves, 81 does
/// not), and `[announce]` with `announce` appended to the table setting.
fn config(check_port: u16, announce: &str) -> String {
    format!(
        "[interfaces]\ningress = \"net1\"\negress = \"net2\"\n\n\
         [daemon]\nworkers = 1\nmetrics = \"127.0.0.1:9100\"\nconfig_check_secs = 0\n\n\
         [announce]\ntable = {TABLE}\n{announce}\n\n\
         [[service]]\nname = \"web\"\nvip = \"{VIP}\"\nprotocol = \"tcp\"\nport = 80\n\
         [service.health]\ncheck = \"tcp\"\nport = {check_port}\ninterval_ms = 200\ntimeout_ms = 150\nrise = 1\nfall = 2\n\n\
         [[service.backend]]\nip = \"{BE1}\"\n[[service.backend]]\nip = \"10.158.200.252\"\n"
    )
}

fn lab(tag: &str) -> Lab {
    let lab = Lab::up(&format!("{tag}{}", std::process::id() % 100_000));
    // Only fe1 forwards in these tests: the router sends it all of the VIP's traffic.
    lab.sh("router", &["ip", "route", "replace", &format!("{VIP}/32"), "via", FE1_NET1, "dev", "vlan100"]);
    lab
}

fn start(lab: &mut Lab, cfg: &str) -> PathBuf {
    let path = lab.dir().join("maglevd-fe1.toml");
    std::fs::write(&path, cfg).expect("write the configuration");
    lab.start_maglevd("fe1", &path, &[]);
    path
}

/// Is the VIP route in fe1's table (and through maglevd's device, with maglevd's protocol)?
///
/// While the kernel unregisters the device (the process died), the device has already lost its
/// name but its routes are not flushed yet: `ip` then prints the route as `dev if<index>`. That
/// route is still there (it is on its way out), so it counts as present.
fn routed(lab: &Lab) -> bool {
    let out = lab.exec("fe1", &["ip", "route", "show", "table", &TABLE.to_string()]);
    let t = String::from_utf8_lossy(&out.stdout);
    let line = t.lines().find(|l| l.starts_with(&format!("{VIP} ")));
    if let Some(l) = line {
        let unregistering = l.split_whitespace().skip_while(|w| *w != "dev").nth(1).is_some_and(|d| {
            d.strip_prefix("if").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        });
        assert!((l.contains("dev maglevd0") || unregistering) && l.contains("proto 240"), "unexpected route: {l}");
    }
    line.is_some()
}

fn device_exists(lab: &Lab) -> bool {
    lab.exec("fe1", &["ip", "link", "show", "maglevd0"]).status.success()
}

/// Wait for the route to be `present`; how long it took.
fn wait_route(lab: &Lab, present: bool, within: Duration) -> Duration {
    let t0 = Instant::now();
    wait_until(
        &format!("the VIP route {}", if present { "in place" } else { "gone" }),
        within,
        Duration::from_millis(10),
        || routed(lab) == present,
    );
    t0.elapsed()
}

/// One request through the VIP from the client (new connection); its body.
fn request(lab: &Lab) -> std::io::Result<String> {
    let o = GetOptions { src: None, reset: false, connect_timeout: Duration::from_secs(2) };
    lab.in_ns("client", || http_get_with(SocketAddr::from((VIP, 80)), "/", &o))
}

fn maglevd(lab: &Lab, args: &[&str]) -> (bool, String) {
    let mut cmd = vec![env!("CARGO_BIN_EXE_maglevd")];
    cmd.extend_from_slice(args);
    let out = lab.exec("fe1", &cmd);
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn a_vip_is_announced_after_settle_and_rise_and_withdrawn_after_fall() {
    let mut lab = lab("an");
    let announce = "settle_secs = 2\ninterval_ms = 200\nrise = 2\nfall = 3";
    // Every backend's check fails (nothing listens on 81): never ready, never announced.
    let path = start(&mut lab, &config(81, announce));
    let started = Instant::now();
    wait_until("fe1 to report the VIP not ready", Duration::from_secs(10), Duration::from_millis(50), || {
        let (code, body) = lab.http_local("fe1", &format!("/ready/{VIP}"));
        code == 503 && body.contains("no usable backend: web")
    });
    assert!(!routed(&lab));
    // The checks pass: announced, but not before the settle time.
    std::fs::write(&path, config(80, announce)).unwrap();
    lab.reload_maglevd("fe1");
    wait_route(&lab, true, Duration::from_secs(10));
    let up_after = started.elapsed();
    eprintln!("announced {:.2} s after start (settle 2 s)", up_after.as_secs_f64());
    assert!(up_after >= Duration::from_secs(2), "announced before the settle time: {up_after:?}");
    assert_eq!(lab.http_local("fe1", &format!("/ready/{VIP}")).0, 200);
    assert!(request(&lab).is_ok_and(|b| b.starts_with("be")), "forwarding through fe1");
    // The checks fail again: both backends down after 2 failed probes (≤ 0.6 s with the
    // timeouts), then 3 not-ready evaluations 200 ms apart.
    std::fs::write(&path, config(81, announce)).unwrap();
    lab.reload_maglevd("fe1");
    let t = wait_route(&lab, false, Duration::from_secs(5));
    eprintln!("withdrawn {:.2} s after the reload that broke every check", t.as_secs_f64());
    assert!(t >= Duration::from_millis(600), "withdrawn before fall evaluations: {t:?}");
    let m = lab.metrics("fe1");
    let changes = m.get(&format!("maglevd_vip_announce_changes_total{{vip=\"{VIP}\"}}")).copied();
    assert_eq!(changes, Some(2.0), "one announcement and one withdrawal, no flapping: {m:?}");
    assert_eq!(m.get(&format!("maglevd_vip_announced{{vip=\"{VIP}\"}}")).copied(), Some(0.0));
    let (_, status) = maglevd(&lab, &["status", "--interval", "0"]);
    assert!(status.contains(&format!("announce: routes in table {TABLE} via maglevd0")), "{status}");
    assert!(status.contains("withdrawn") && status.contains("no usable backend: web"), "{status}");
}

#[test]
fn drain_and_the_drain_file_withdraw_at_once_while_forwarding_goes_on() {
    let mut lab = lab("ad");
    let (state, drain_file) = (lab.dir().join("vips"), lab.dir().join("drain"));
    let announce = format!(
        "settle_secs = 0\ninterval_ms = 500\nrise = 1\nfall = 2\nstate_dir = \"{}\"\ndrain_file = \"{}\"",
        state.display(),
        drain_file.display()
    );
    start(&mut lab, &config(80, &announce));
    wait_route(&lab, true, Duration::from_secs(10));
    let file = state.join(VIP.to_string());
    assert!(std::fs::read_to_string(&file).is_ok_and(|t| t.starts_with(&format!("{VIP} announced "))));

    let (ok, out) = maglevd(&lab, &["drain"]);
    assert!(ok && out.contains("every VIP is withdrawn"), "{out}");
    // A hold is seen within 50 ms, not at the next 500 ms evaluation.
    let t = wait_route(&lab, false, Duration::from_millis(400));
    eprintln!("maglevd drain: route gone after {:.0} ms", t.as_secs_f64() * 1e3);
    assert!(!file.exists(), "the state file goes with the route");
    let (code, body) = lab.http_local("fe1", &format!("/ready/{VIP}"));
    assert!(code == 503 && body.contains("drained"), "{code} {body}");
    assert!(request(&lab).is_ok(), "a drained frontend still forwards what reaches it");
    let (ok, out) = maglevd(&lab, &["drain", "--undo"]);
    assert!(ok && out.contains("drain ended"), "{out}");
    wait_route(&lab, true, Duration::from_secs(2));
    assert!(file.exists());

    std::fs::write(&drain_file, "").unwrap();
    let t = wait_route(&lab, false, Duration::from_millis(400));
    eprintln!("drain file: route gone after {:.0} ms", t.as_secs_f64() * 1e3);
    let (_, status) = maglevd(&lab, &["status", "--interval", "0"]);
    assert!(status.contains(&format!("the drain file {} exists", drain_file.display())), "{status}");
    std::fs::remove_file(&drain_file).unwrap();
    wait_route(&lab, true, Duration::from_secs(2));
}

#[test]
fn sigterm_withdraws_first_forwards_through_the_drain_period_then_exits() {
    let mut lab = lab("at");
    start(&mut lab, &config(80, "settle_secs = 0\nrise = 1\ndrain_secs = 3"));
    wait_route(&lab, true, Duration::from_secs(10));
    assert!(request(&lab).is_ok());
    lab.signal_maglevd("fe1", "TERM");
    let signalled = Instant::now();
    let t = wait_route(&lab, false, Duration::from_millis(500));
    eprintln!("SIGTERM: route gone after {:.0} ms", t.as_secs_f64() * 1e3);
    // Requests through fe1 keep working during the drain period (the routers are converging).
    let (mut ok, mut failed) = (0, 0);
    while signalled.elapsed() < Duration::from_millis(2500) {
        match request(&lab) {
            Ok(_) => ok += 1,
            Err(_) => failed += 1,
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("during the drain period: {ok} requests served, {failed} failed");
    assert!(ok > 10 && failed == 0, "{ok} served, {failed} failed");
    assert!(lab.maglevd_alive("fe1"), "maglevd stopped before its drain period ended");
    let st = lab.wait_maglevd_exit("fe1", Duration::from_secs(3));
    let took = signalled.elapsed();
    eprintln!("exited {:.2} s after SIGTERM (drain_secs 3), {st}", took.as_secs_f64());
    assert!(st.success(), "{st}");
    assert!(took >= Duration::from_secs(3) && took < Duration::from_secs(5), "{took:?}");
    assert!(!device_exists(&lab), "the device goes with the process");
}

#[test]
fn kill_9_takes_the_route_and_device_with_the_process() {
    let mut lab = lab("ak");
    let state = lab.dir().join("vips");
    let cfg = config(80, &format!("settle_secs = 0\nrise = 1\nstate_dir = \"{}\"", state.display()));
    let path = start(&mut lab, &cfg);
    wait_route(&lab, true, Duration::from_secs(10));
    assert!(device_exists(&lab));
    lab.signal_maglevd("fe1", "KILL");
    let t0 = Instant::now();
    wait_until("the VIP route and device gone", Duration::from_millis(500), Duration::from_millis(5), || {
        !routed(&lab) && !device_exists(&lab)
    });
    eprintln!("kill -9: route and device gone after {:.1} ms", t0.elapsed().as_secs_f64() * 1e3);
    let _ = lab.wait_maglevd_exit("fe1", Duration::from_secs(2));
    // The state file outlives a killed process (no code runs); the next start removes it.
    let file = state.join(VIP.to_string());
    assert!(file.exists(), "nothing ran to remove it");
    std::fs::write(&path, config(81, &format!("settle_secs = 0\nrise = 1\nstate_dir = \"{}\"", state.display())))
        .unwrap();
    lab.start_maglevd("fe1", Path::new(&path), &[]);
    wait_until("the stale state file removed", Duration::from_secs(10), Duration::from_millis(20), || !file.exists());
    // Not ready now (nothing listens on the checked port): stays withdrawn.
    std::thread::sleep(Duration::from_secs(1));
    assert!(!routed(&lab) && !file.exists());
}
