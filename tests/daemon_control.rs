//! The control plane of `maglevd run` under bad reloads and hostile ARP, with the real binary in
//! the namespace lab (tests/lab/lab.sh): each scenario is its own test with its own lab, so one
//! failure hides nothing else.
//!
//! Runs as root (tests/run-all.sh); fails, never skips, without it. All traffic stays inside the
//! namespaces each test creates and removes.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use maglevd::io::PacketSocket;
use maglevd::neigh::{Arp, build_arp};
use maglevd::wire::MacAddr;
use support::lab::{Lab, VIP, http_get_from, repo, text};

/// A lab with maglevd on fe1 only, running `config` (written to the lab dir); the router sends
/// every VIP packet to fe1.
fn lab_with_fe1(tag: &str, config: &str) -> (Lab, PathBuf) {
    let mut lab = Lab::up(&format!("{tag}{}", std::process::id() % 100_000));
    let path = lab.dir().join("maglevd.toml");
    std::fs::write(&path, config).unwrap();
    lab.start_maglevd("fe1", &path, &["--workers", "1"]);
    lab.sh("router", &["ip", "route", "replace", "10.201.0.1/32", "via", "10.158.100.2", "dev", "vlan100"]);
    (lab, path)
}

/// config/maglevd.toml, but SIGTERM stops at once (no [announce] drain period: these tests time
/// the stop itself; tests/announce_e2e.rs covers the drain).
fn example() -> String {
    let text = std::fs::read_to_string(repo().join("config/maglevd.toml")).unwrap();
    assert!(text.contains("\ndrain_secs = 5 "), "config/maglevd.toml's drain_secs changed: update this test");
    text.replace("\ndrain_secs = 5 ", "\ndrain_secs = 0 ")
}

fn wait_until(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn get(lab: &Lab, port: u16) -> String {
    let src = SocketAddr::from(([192, 168, 100, 1], port));
    lab.in_ns("client", move || http_get_from(src, SocketAddr::from((VIP, 80)), "/"))
        .unwrap_or_else(|e| panic!("request from port {port} failed: {e}"))
        .trim()
        .to_string()
}

/// `maglevd check` on a file: (exit code, stdout + stderr).
fn check(path: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_maglevd")).args(["check", "-c"]).arg(path).output().unwrap();
    (out.status.code().unwrap_or(-1), format!("{}{}", text(&out.stdout), text(&out.stderr)))
}

/// Reload fe1 to `config` and wait until the reload is refused; the snapshot generation must not
/// move. Returns the daemon log.
fn reload_is_refused(lab: &mut Lab, path: &Path, config: &str) -> String {
    let (g, failures) =
        (lab.metric("fe1", "maglevd_snapshot_generation"), lab.metric("fe1", "maglevd_reload_failures_total"));
    std::fs::write(path, config).unwrap();
    lab.reload_maglevd("fe1");
    wait_until("the reload refused and counted", Duration::from_secs(10), || {
        lab.metric("fe1", "maglevd_reload_failures_total") > failures
    });
    assert_eq!(lab.metric("fe1", "maglevd_snapshot_generation"), g, "a refused reload published a snapshot");
    lab.maglevd_log("fe1")
}

/// A file `check` refuses is refused by reload too, counted, and the running configuration keeps
/// working — including later MAC changes, which must still reach the data plane. Before the fix,
/// `check` accepted an IPv6 `ipvs-mh` service, the reload was logged as applied without being
/// applied, and every later snapshot failed.
#[test]
fn a_reload_check_refuses_is_refused_whole_and_counted() {
    let (mut lab, path) = lab_with_fe1("rl", &example());
    lab.wait_ready("fe1", Duration::from_secs(15));
    let v6 = format!(
        "{}\n[[service]]\nname = \"v6\"\nvip = \"2001:db8::1\"\nprotocol = \"tcp\"\nport = 80\nalgorithm = \"ipvs-mh\"\n\
         [[service.backend]]\nip = \"2001:db8::10\"\n",
        example()
    );
    let v6_file = lab.dir().join("v6.toml");
    std::fs::write(&v6_file, &v6).unwrap();
    let (code, out) = check(&v6_file);
    eprintln!("check on an IPv6 ipvs-mh service: exit {code}: {}", out.lines().last().unwrap_or(""));
    assert_eq!(code, 2, "check must refuse what run cannot use:\n{out}");
    assert!(out.contains("IPv6") && out.contains("v6"), "{out}");

    let log = reload_is_refused(&mut lab, &path, &v6);
    assert!(log.contains("reload refused, running configuration kept") && log.contains("IPv6"), "{log}");
    assert!(!log.contains("configuration reloaded"), "{log}");

    // The running configuration still publishes: a backend removed by a good reload and added
    // back by another must be resolved by ARP again and reach the data plane (before the fix
    // every publish failed after such a refused reload).
    let g = lab.metric("fe1", "maglevd_snapshot_generation");
    std::fs::write(&path, example().replace("[[service.backend]]\nip = \"10.158.200.251\"\nweight = 1", "")).unwrap();
    lab.reload_maglevd("fe1");
    wait_until("the reload without be1 applied", Duration::from_secs(10), || {
        lab.metric("fe1", "maglevd_snapshot_generation") > g
    });
    std::fs::write(&path, example()).unwrap();
    lab.reload_maglevd("fe1");
    lab.wait_ready("fe1", Duration::from_secs(15));
    let backends: std::collections::BTreeSet<String> = (0..60).map(|i| get(&lab, 41000 + i)).collect();
    eprintln!("after the refused reload and two good ones: {backends:?}");
    assert_eq!(backends.len(), 3, "{backends:?}");
}

/// More VIPs than the kernel's classic BPF filter can hold: `check` and reload refuse them before
/// anything is published (before the fix each worker logged the error after "reloaded").
#[test]
fn a_vip_set_the_kernel_filter_cannot_take_is_refused() {
    let (mut lab, path) = lab_with_fe1("bf", &example());
    lab.wait_ready("fe1", Duration::from_secs(15));
    let mut many = example();
    for i in 0..4200u32 {
        many.push_str(&format!(
            "[[service]]\nvip = \"10.202.{}.{}\"\nprotocol = \"tcp\"\nport = 80\ntable_size = 11\n\
             [[service.backend]]\nip = \"10.158.200.251\"\n",
            i / 250,
            i % 250 + 1
        ));
    }
    let file = lab.dir().join("many.toml");
    std::fs::write(&file, &many).unwrap();
    let (code, out) = check(&file);
    eprintln!("check with 4201 VIPs: exit {code}: {}", out.lines().last().unwrap_or(""));
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("BPF") || out.contains("filter"), "{out}");
    let log = reload_is_refused(&mut lab, &path, &many);
    assert!(log.contains("VIP filter"), "{log}");
    assert!(!log.contains("cannot update the VIP filter"), "no worker may try it: {log}");
    assert!(get(&lab, 42000).starts_with("be"), "still forwarding");
}

/// A reload with heavy tables runs on the builder thread: SIGTERM during it ends the daemon at
/// once, and ARP goes on (before the fix the control thread built the tables itself: signals and
/// ARP waited for the whole build).
#[test]
fn sigterm_is_not_held_up_by_a_table_build() {
    let (mut lab, path) = lab_with_fe1("tb", &example());
    lab.wait_ready("fe1", Duration::from_secs(15));
    let mut heavy = example();
    for i in 0..7u32 {
        heavy.push_str(&format!(
            "[[service]]\nvip = \"10.202.0.{}\"\nprotocol = \"tcp\"\nport = 80\ntable_size = 4194301\n\
             [[service.backend]]\nip = \"10.158.200.251\"\n[[service.backend]]\nip = \"10.158.200.252\"\n",
            i + 1
        ));
    }
    let file = lab.dir().join("heavy.toml");
    std::fs::write(&file, &heavy).unwrap();
    // How long the build takes, measured by the same code path offline.
    let t = Instant::now();
    let (code, out) = check(&file);
    let build = t.elapsed();
    assert_eq!(code, 0, "{out}");
    eprintln!("`check` of 7 × 4,194,301-slot tables took {build:?}");
    std::fs::write(&path, &heavy).unwrap();
    lab.reload_maglevd("fe1");
    std::thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    let status = lab.stop_maglevd("fe1");
    let stop = t.elapsed();
    eprintln!("SIGTERM during the reload's build: exited ({status}) after {stop:?}");
    assert!(status.success(), "{}", lab.maglevd_log("fe1"));
    // The daemon's build of the same tables takes about as long as `check`'s: a stop that waited
    // for it would take at least half of that.
    assert!(build >= Duration::from_millis(400), "the build is too short ({build:?}) to tell anything");
    assert!(stop < build / 2, "SIGTERM waited for the table build ({stop:?}, build {build:?})");
}

/// A backend that is not on the egress subnet cannot be resolved by ARP: start-up and reload
/// refuse it with a message naming it (before the fix maglevd broadcast ARP for it forever).
#[test]
fn a_backend_off_the_egress_link_is_refused() {
    let off = example().replace("10.158.200.253", "10.99.0.7");
    let (mut lab, path) = lab_with_fe1("ol", &off);
    let status = lab.wait_maglevd_exit("fe1", Duration::from_secs(10));
    let log = lab.maglevd_log("fe1");
    eprintln!("start-up with an off-link backend: {status}: {}", log.lines().last().unwrap_or(""));
    assert!(!status.success());
    assert!(log.contains("10.99.0.7") && log.contains("10.158.200.2/24"), "{log}");

    std::fs::write(&path, example()).unwrap();
    lab.start_maglevd("fe1", &path, &["--workers", "1"]);
    lab.wait_ready("fe1", Duration::from_secs(15));
    let log = reload_is_refused(&mut lab, &path, &off);
    assert!(log.contains("10.99.0.7"), "{log}");
}

/// One forged ARP reply claiming a backend's address cannot take the backend over, and a
/// claim of our own MAC is refused: traffic keeps reaching the real backend (before the fix a
/// single reply redirected the backend's flows; with our own MAC, frames looped).
#[test]
fn one_forged_arp_reply_cannot_take_a_backend_over() {
    let (mut lab, _path) = lab_with_fe1("ar", &example());
    lab.wait_ready("fe1", Duration::from_secs(15));
    let flows: Vec<(u16, String)> = (0..30).map(|i| (43000 + i, get(&lab, 43000 + i))).collect();
    let fe1_net2 = MacAddr([0xc2, 0xb0, 0x57, 0x49, 0x47, 0xf2]);
    // From be3's namespace (on the same segment), claim be1's address: once with a stranger's
    // MAC, once with fe1's own net2 MAC.
    for claimed in [MacAddr([0x02, 0xba, 0xd0, 0, 0, 1]), fe1_net2] {
        let arp = Arp {
            request: false,
            sender_mac: claimed,
            sender_ip: "10.158.200.251".parse().unwrap(),
            target_mac: fe1_net2,
            target_ip: "10.158.200.2".parse().unwrap(),
        };
        let frame = build_arp(fe1_net2, &arp);
        let mut frame = frame.to_vec();
        // The Ethernet source is be3's real MAC (a host on the segment lying about be1).
        frame[6..12].copy_from_slice(&[0xc2, 0xb0, 0x57, 0x49, 0x47, 0xa3]);
        lab.in_ns("be3", move || {
            let mut s = PacketSocket::open("net1", 0x0806).expect("packet socket in be3");
            s.send(&frame).expect("send the forged reply");
        });
    }
    wait_until("the claim settled", Duration::from_secs(5), || {
        lab.metric("fe1", "maglevd_arp_mac_conflicts_kept_total") >= 1.0
    });
    let m = lab.metrics("fe1");
    eprintln!(
        "forged replies: own MAC refused {}, claims {}, kept {}, changes {}",
        m["maglevd_arp_own_mac_refused_total"],
        m["maglevd_arp_mac_claims_total"],
        m["maglevd_arp_mac_conflicts_kept_total"],
        m["maglevd_arp_mac_changes_confirmed_total"]
    );
    assert_eq!(m["maglevd_arp_own_mac_refused_total"], 1.0);
    assert_eq!(m["maglevd_arp_mac_changes_confirmed_total"], 0.0);
    for (port, be) in &flows {
        assert_eq!(&get(&lab, *port), be, "flow from port {port} moved");
    }
}

/// The ingress interface deleted and re-created (a CNI re-plumbing a pod): while it is gone
/// `/healthz` fails naming it; once it is back maglevd re-opens its rings and forwards again
/// (before the fix `/healthz` stayed 200 and VIP traffic was black-holed for good).
#[test]
fn a_recreated_ingress_interface_is_followed() {
    let (mut lab, _path) = lab_with_fe1("lk", &example());
    lab.wait_ready("fe1", Duration::from_secs(15));
    assert!(get(&lab, 44000).starts_with("be"));
    lab.sh("fe1", &["ip", "link", "del", "net1"]);
    let t = Instant::now();
    wait_until("/healthz failing without net1", Duration::from_secs(5), || lab.http_local("fe1", "/healthz").0 == 503);
    let (_, body) = lab.http_local("fe1", "/healthz");
    eprintln!("net1 deleted: /healthz 503 after {:?}: {}", t.elapsed(), body.trim());
    assert!(body.contains("net1"), "{body}");

    // Re-plumb it as the lab (and a CNI plugin) does: a macvlan on the node's vlan100.
    lab.recreate_fe1_net1();
    let t = Instant::now();
    wait_until("/healthz back", Duration::from_secs(10), || lab.http_local("fe1", "/healthz").0 == 200);
    eprintln!("net1 re-created: /healthz 200 after {:?}", t.elapsed());
    let served: Vec<String> = (0..20).map(|i| get(&lab, 44100 + i)).collect();
    assert!(served.iter().all(|b| b.starts_with("be")), "{served:?}");
    assert!(lab.maglevd_log("fe1").contains("rings re-opened"), "{}", lab.maglevd_log("fe1"));
}

/// The egress interface deleted and re-created with another MAC and address (no
/// `egress_address` in the configuration): the `dsr` health checks follow it. Before the fix the
/// prober kept the old interface's address, every probe failed ("cannot reserve a source port
/// on 10.158.200.2") and all backends went down for good.
#[test]
fn a_recreated_egress_interface_is_followed_by_the_health_checks() {
    // Checks every 500 ms (fall 3, rise 2): a prober stuck on the old address takes every
    // backend down 1.5 s after the interface went.
    let text = example();
    let fast = text.replacen("interval_ms = 2000 ", "interval_ms = 500 ", 1).replacen(
        "timeout_ms = 1000 ",
        "timeout_ms = 400 ",
        1,
    );
    assert_ne!(fast, text, "config/maglevd.toml's health check timings changed: update this test");
    let (mut lab, _path) = lab_with_fe1("le", &fast);
    lab.wait_ready("fe1", Duration::from_secs(15));
    assert!(get(&lab, 45000).starts_with("be"));
    lab.sh("fe1", &["ip", "link", "del", "net2"]);
    wait_until("/healthz failing without net2", Duration::from_secs(5), || lab.http_local("fe1", "/healthz").0 == 503);
    let fe1 = lab.ns("fe1");
    let mac = "c2:b0:57:49:47:f9";
    lab.sh(
        "w1",
        &[
            "ip", "link", "add", "link", "vlan200", "name", "fe1-net2", "address", mac, "type", "macvlan", "mode",
            "bridge",
        ],
    );
    lab.sh("w1", &["ip", "link", "set", "fe1-net2", "netns", &fe1]);
    lab.sh("fe1", &["ip", "link", "set", "fe1-net2", "name", "net2"]);
    lab.sh("fe1", &["ip", "addr", "add", "10.158.200.9/24", "dev", "net2"]);
    lab.sh("fe1", &["ip", "link", "set", "net2", "up"]);
    // Longer than fall x interval: with probes still failing, every backend is down by then.
    std::thread::sleep(Duration::from_secs(3));
    let t = Instant::now();
    lab.wait_ready("fe1", Duration::from_secs(10));
    eprintln!("net2 re-created as 10.158.200.9 {mac}: every backend up {:?} after the 3 s wait", t.elapsed());
    let served: Vec<String> = (0..20).map(|i| get(&lab, 45100 + i)).collect();
    assert!(served.iter().all(|b| b.starts_with("be")), "{served:?}");
}

/// Under systemd (`Type=notify`, `WatchdogSec=`): READY=1 once forwarding, WATCHDOG=1 at half the
/// watchdog period while every thread makes progress, STOPPING=1 on SIGTERM — read here from the
/// notification socket systemd would hold.
#[test]
fn systemd_readiness_and_watchdog_notifications() {
    let mut lab = Lab::up(&format!("sd{}", std::process::id() % 100_000));
    let path = lab.dir().join("maglevd.toml");
    std::fs::write(&path, example()).unwrap();
    let sock_path = lab.dir().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let t = Instant::now();
    lab.start_maglevd_env(
        "fe1",
        &path,
        &["--workers", "1"],
        &[("NOTIFY_SOCKET", sock_path.to_str().unwrap()), ("WATCHDOG_USEC", "1000000")],
    );
    let mut buf = [0u8; 512];
    let mut messages = Vec::new();
    while messages.iter().filter(|m: &&String| m.contains("WATCHDOG=1")).count() < 3 {
        let n = sock.recv(&mut buf).unwrap_or_else(|e| panic!("{e}; got {messages:?}:\n{}", lab.maglevd_log("fe1")));
        messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let took = t.elapsed();
    eprintln!("notifications in {took:?}: {messages:?}");
    assert!(messages[0].contains("READY=1"), "{messages:?}");
    assert!(took < Duration::from_secs(5), "three watchdog pings at a 1 s period took {took:?}");
    assert!(lab.stop_maglevd("fe1").success());
    let n = sock.recv(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
}
