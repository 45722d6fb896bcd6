//! The kernel drop filter (`maglevd::io::tc`): a tc ingress filter that drops VIP frames after
//! maglevd's RX rings copied them.
//!
//! * In throwaway namespaces (`mlvkd-<pid>-<n>`, a client and a frontend joined by a veth pair):
//!   with a ring opened as the daemon opens it and the filter installed by `KernelDrop`, VIP
//!   frames reach the ring and not the frontend's IPv4 stack (its `Ip: InReceives` in
//!   `/proc/net/snmp` stays still), while IPv4 to other addresses, ARP and a ping to the
//!   frontend's own address still reach the kernel; the filter follows a new VIP set, installing
//!   it twice leaves one, and removing it leaves the interface as it was.
//! * With the real daemon in the namespace lab (tests/lab/lab.sh): installed at start (metric
//!   `maglevd_kernel_drop_installed` 1), replaced on a reload that adds a VIP, installed again on
//!   a re-created ingress interface, gone after a clean stop; `kernel_drop = false` installs none.
//!
//! Runs as root; fails, never skips, without it. Every frame stays in namespaces the tests create
//! and remove.

mod common;
mod support;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::ns::{require_lab, serial};
use etherparse::PacketBuilder;
use maglevd::io::{KernelDrop, PacketSocket, RxRing, tc};
use maglevd::netns::Netns;
use support::lab::{Lab, repo};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const FRONTEND: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
const OTHER: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 3);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 9);
const BURST: usize = 50;

/// The frontend namespace (`fe0`, holding FRONTEND, no VIP, no forwarding) and the client's
/// (`cl0`, CLIENT).
fn pair() -> (Netns, Netns) {
    let fe = common::ns::new_ns("mlvkd");
    let cl = common::ns::new_ns("mlvkd");
    fe.veth("fe0", &cl, "cl0").expect("veth fe0 ↔ cl0");
    fe.addr("fe0", &format!("{FRONTEND}/24")).unwrap();
    cl.addr("cl0", &format!("{CLIENT}/24")).unwrap();
    (fe, cl)
}

fn udp(src_mac: [u8; 6], dst_mac: [u8; 6], dst: Ipv4Addr, sport: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(src_mac, dst_mac).ipv4(CLIENT.octets(), dst.octets(), 64).udp(sport, 9);
    let payload = b"MLV:kdrop";
    let mut v = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut v, payload).unwrap();
    v
}

/// `Ip: InReceives` of the namespace: IPv4 packets that entered its IP stack.
fn ip_in_receives(ns: &Netns) -> u64 {
    let snmp = ns.exec(&["cat", "/proc/net/snmp"]).unwrap();
    let mut ip = snmp.lines().filter(|l| l.starts_with("Ip:"));
    let (names, values) = (ip.next().unwrap(), ip.next().unwrap());
    let at = names.split_whitespace().position(|n| n == "InReceives").unwrap();
    values.split_whitespace().nth(at).unwrap().parse().unwrap()
}

/// Sends BURST frames to `dst` from the client; the frames the ring then holds, and how many
/// IPv4 packets entered the frontend's stack meanwhile.
fn burst(fe: &Netns, cl: &Netns, rx: &mut RxRing, dst: Ipv4Addr) -> (usize, u64) {
    let (cl_mac, fe_mac) = (cl.mac("cl0").unwrap(), fe.mac("fe0").unwrap());
    let before = ip_in_receives(fe);
    cl.run(|| {
        let mut s = PacketSocket::sender("cl0").unwrap();
        for i in 0..BURST {
            s.send(&udp(cl_mac, fe_mac, dst, 2000 + i as u16)).unwrap();
        }
    })
    .unwrap();
    let mut got = 0;
    let deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < deadline {
        got += rx.recv_batch(64, |_| {});
        std::thread::sleep(Duration::from_millis(10));
    }
    (got, ip_in_receives(fe) - before)
}

fn tc_show(ns: &Netns, what: &str) -> String {
    ns.exec(&["tc", what, "show", "dev", "fe0", "ingress"]).unwrap_or_default()
        + &ns.exec(&["tc", what, "show", "dev", "fe0"]).unwrap_or_default()
}

fn ping(cl: &Netns) -> bool {
    let _ = cl.ip(&["neigh", "flush", "dev", "cl0"]);
    cl.exec(&["ping", "-c", "2", "-i", "0.2", "-W", "1", &FRONTEND.to_string()]).is_ok()
}

#[test]
fn vip_frames_reach_the_ring_and_not_the_ip_stack_everything_else_reaches_the_kernel() {
    let _s = serial();
    require_lab("tests/kernel_drop.rs");
    let (fe, cl) = pair();
    // The daemon's own ring for these VIPs (fanout group, VIP filter, vnet header).
    let (rx_cfg, _) = maglevd::daemon::worker_rings(&[VIP], 0x4b44, 64, 64).unwrap();
    let mut rx = fe.run(|| RxRing::open("fe0", &rx_cfg)).unwrap().unwrap();

    // Without the filter, VIP frames go to the ring and through the IP stack.
    let (ring, stack) = burst(&fe, &cl, &mut rx, VIP);
    assert_eq!((ring, stack), (BURST, BURST as u64), "without the filter: ring and IP stack both get them");

    let k = fe.run(|| KernelDrop::install("fe0", &[VIP])).unwrap().unwrap();
    assert!(k.created_clsact());
    assert!(fe.run(|| tc::installed("fe0")).unwrap().unwrap());
    let shown = tc_show(&fe, "filter");
    assert!(
        shown.contains("pref 19788") && shown.contains("handle 0x4d4c") && shown.contains("direct-action"),
        "{shown}"
    );

    let (ring, stack) = burst(&fe, &cl, &mut rx, VIP);
    assert_eq!((ring, stack), (BURST, 0), "VIP frames: in the ring, not in the IP stack");
    let (ring, stack) = burst(&fe, &cl, &mut rx, OTHER);
    assert_eq!((ring, stack), (0, BURST as u64), "other IPv4: not in the ring, in the IP stack");
    assert!(ping(&cl), "ARP and a ping to the frontend's own address work with the filter on");

    // A new VIP set replaces the program (the ring's filter is not changed here).
    let mut k = k;
    k.set_vips(&[OTHER]).unwrap();
    let (_, stack) = burst(&fe, &cl, &mut rx, VIP);
    assert_eq!(stack, BURST as u64, "a VIP taken out of the set reaches the stack again");
    let (_, stack) = burst(&fe, &cl, &mut rx, OTHER);
    assert_eq!(stack, 0, "the new VIP is dropped");
    k.set_vips(&[VIP]).unwrap();

    // Installing again (a restart after a crash) replaces it: still one filter.
    let again = fe.run(|| KernelDrop::install("fe0", &[VIP])).unwrap().unwrap();
    assert!(!again.created_clsact(), "the qdisc was there");
    let shown = tc_show(&fe, "filter");
    assert_eq!(shown.matches("handle 0x4d4c").count(), 1, "{shown}");
    again.remove().unwrap();
    assert!(!fe.run(|| tc::installed("fe0")).unwrap().unwrap());

    // Removing it (the one that created the qdisc) leaves the interface as it was.
    k.remove().unwrap();
    assert!(!fe.run(|| tc::installed("fe0")).unwrap().unwrap());
    assert!(!tc_show(&fe, "qdisc").contains("clsact"), "{}", tc_show(&fe, "qdisc"));
    let (ring, stack) = burst(&fe, &cl, &mut rx, VIP);
    assert_eq!((ring, stack), (BURST, BURST as u64), "after removal: as without the filter");
    assert!(ping(&cl));
}

#[test]
fn an_existing_qdisc_and_other_filters_are_left_alone() {
    let _s = serial();
    require_lab("tests/kernel_drop.rs");
    let (fe, _cl) = pair();
    // Someone's clsact with a filter of their own (classic BPF "no verdict").
    fe.exec(&["tc", "qdisc", "add", "dev", "fe0", "clsact"]).unwrap();
    let theirs = ["tc", "filter", "add", "dev", "fe0", "ingress", "pref", "100", "protocol", "all", "bpf", "da"];
    fe.exec(&[&theirs[..], &["bytecode", "1,6 0 0 4294967295,"]].concat()).unwrap();
    let k = fe.run(|| KernelDrop::install("fe0", &[VIP])).unwrap().unwrap();
    assert!(!k.created_clsact());
    let shown = tc_show(&fe, "filter");
    assert!(shown.contains("pref 100") && shown.contains("pref 19788"), "{shown}");
    drop(k); // removes it, errors ignored
    let shown = tc_show(&fe, "filter");
    assert!(shown.contains("pref 100") && !shown.contains("pref 19788"), "{shown}");
    assert!(tc_show(&fe, "qdisc").contains("clsact"));
}

#[test]
fn a_missing_interface_is_an_error_naming_it() {
    let _s = serial();
    require_lab("tests/kernel_drop.rs");
    let (fe, _cl) = pair();
    let e = fe.run(|| KernelDrop::install("mlvnone0", &[VIP])).unwrap().unwrap_err();
    assert!(e.to_string().contains("mlvnone0"), "{e}");
    assert!(!e.is_permission());
}

// ---------------------------------------------------------------------------------------------
// The daemon

/// config/maglevd.toml, but SIGTERM stops at once (no [announce] drain period: these tests time
/// the stop itself; tests/announce_e2e.rs covers the drain).
fn example() -> String {
    let text = std::fs::read_to_string(repo().join("config/maglevd.toml")).unwrap();
    assert!(text.contains("\ndrain_secs = 5 "), "config/maglevd.toml's drain_secs changed: update this test");
    text.replace("\ndrain_secs = 5 ", "\ndrain_secs = 0 ")
}

fn lab_fe1(tag: &str, config: &str) -> (Lab, PathBuf) {
    let mut lab = Lab::up(&format!("{tag}{}", std::process::id() % 100_000));
    let path = lab.dir().join("maglevd.toml");
    std::fs::write(&path, config).unwrap();
    lab.start_maglevd("fe1", &path, &["--workers", "1"]);
    (lab, path)
}

fn fe1_filter(lab: &Lab) -> String {
    lab.sh("fe1", &["tc", "filter", "show", "dev", "net1", "ingress"])
}

fn wait_until(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_daemon_installs_follows_and_removes_its_filter() {
    let (mut lab, path) = lab_fe1("kd", &example());
    lab.wait_ready("fe1", Duration::from_secs(15));
    let shown = fe1_filter(&lab);
    // 10.201.0.1 = 180944897: the VIP is a constant of the program.
    assert!(shown.contains("pref 19788") && shown.contains("180944897"), "{shown}");
    assert_eq!(lab.metric("fe1", "maglevd_kernel_drop_installed"), 1.0);
    assert!(lab.maglevd_log("fe1").contains("kernel drop filter installed"), "{}", lab.maglevd_log("fe1"));

    // A reload that adds a VIP replaces the program.
    let added = example()
        + "\n[[service]]\nname = \"second\"\nvip = \"10.201.0.7\"\nprotocol = \"tcp\"\nport = 80\n\
           [[service.backend]]\nip = \"10.158.200.251\"\n";
    std::fs::write(&path, added).unwrap();
    lab.reload_maglevd("fe1");
    // 10.201.0.7 = 180944903.
    wait_until("the filter follows the new VIP", Duration::from_secs(10), || fe1_filter(&lab).contains("180944903"));
    assert!(fe1_filter(&lab).contains("180944897"));

    // A re-created ingress interface gets it again.
    lab.sh("fe1", &["ip", "link", "del", "net1"]);
    lab.recreate_fe1_net1();
    wait_until("the filter on the re-created net1", Duration::from_secs(10), || {
        fe1_filter(&lab).contains("pref 19788")
    });
    assert!(fe1_filter(&lab).contains("180944903"), "the current VIPs, not the first ones");
    assert_eq!(lab.metric("fe1", "maglevd_kernel_drop_installed"), 1.0);

    // A clean stop removes it, and the qdisc maglevd created.
    assert!(lab.stop_maglevd("fe1").success());
    assert!(!fe1_filter(&lab).contains("pref 19788"), "{}", fe1_filter(&lab));
    let qdiscs = lab.sh("fe1", &["tc", "qdisc", "show", "dev", "net1"]);
    assert!(!qdiscs.contains("clsact"), "{qdiscs}");
    assert!(lab.maglevd_log("fe1").contains("kernel drop filter removed"), "{}", lab.maglevd_log("fe1"));
}

#[test]
fn kernel_drop_false_installs_nothing() {
    let config = example().replacen("egress = \"net2\"", "egress = \"net2\"\nkernel_drop = false", 1);
    let (mut lab, _) = lab_fe1("kf", &config);
    lab.wait_ready("fe1", Duration::from_secs(15));
    assert!(!fe1_filter(&lab).contains("pref 19788"), "{}", fe1_filter(&lab));
    assert_eq!(lab.metric("fe1", "maglevd_kernel_drop_installed"), 0.0);
    assert!(lab.stop_maglevd("fe1").success());
}
