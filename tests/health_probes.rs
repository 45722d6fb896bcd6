//! The health checks against real backends in the seed-like lab: the prober runs in fe1's
//! namespace and checks be1..be3 (nginx, VIP on lo) with `tcp`, `http` and `dsr`. Stopping nginx
//! takes a backend down on every check; removing the VIP from a backend's loopback (a DSR
//! blackhole) is seen by `dsr` only. Prints how long and how many probes each transition took.

mod support;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use maglevd::config::{CheckKind, HealthCheck};
use maglevd::health::{Egress, Health, Prober, Target, TargetKey};
use maglevd::io::InterfaceInfo;
use maglevd::wire::MacAddr;
use support::lab::{Lab, VIP};

const INTERVAL: Duration = Duration::from_millis(200);

fn be_ip(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 158, 200, 250 + n))
}

fn key(kind: &str, n: u8) -> TargetKey {
    TargetKey { service: kind.to_string(), backend: be_ip(n), port: 80 }
}

fn target(kind: CheckKind, n: u8, mac: Option<MacAddr>) -> Target {
    let check = HealthCheck {
        kind: kind.clone(),
        port: 80,
        interval: INTERVAL,
        timeout: Duration::from_millis(150),
        rise: 2,
        fall: 3,
    };
    let service = if mac.is_none() { "dsr-nomac".to_string() } else { kind.name().to_string() };
    Target { key: TargetKey { service, backend: be_ip(n), port: 80 }, vip: IpAddr::V4(VIP), check, mac }
}

/// Probes finished so far, per target.
fn probe_counts(prober: &Prober) -> BTreeMap<TargetKey, u64> {
    prober.view().targets.iter().map(|(k, t)| (k.clone(), t.health.probes)).collect()
}

/// Waits until `key` is `want`; returns the time it took from `since` and the probes finished
/// since `before` was taken (at `since`).
fn wait_for(
    prober: &Prober,
    key: &TargetKey,
    want: Health,
    (since, before): (Instant, &BTreeMap<TargetKey, u64>),
    timeout: Duration,
) -> (Duration, u64) {
    let probes_before = before.get(key).copied().unwrap_or(0);
    loop {
        let v = prober.view();
        let t = &v.targets[key];
        if t.health.health == want {
            return (since.elapsed(), t.health.probes - probes_before);
        }
        assert!(since.elapsed() < timeout, "{key:?} not {want:?} after {timeout:?}: {:?}", t.health);
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn health(prober: &Prober, key: &TargetKey) -> Health {
    prober.view().targets[key].health.health
}

#[test]
fn tcp_http_and_dsr_checks_against_the_lab_backends() {
    let lab = Lab::up("hpr");
    // The backends' MACs as the frontend sees them (what ARP would resolve).
    let macs: Vec<MacAddr> =
        (1..=3).map(|n| MacAddr(lab.in_ns(&format!("be{n}"), || InterfaceInfo::lookup("net1").unwrap().mac))).collect();
    let http = CheckKind::Http { path: "/".into(), status: 200, host: None };
    let mut targets = Vec::new();
    for n in 1..=3u8 {
        for kind in [CheckKind::Tcp, http.clone(), CheckKind::Dsr] {
            targets.push(target(kind, n, Some(macs[n as usize - 1])));
        }
    }
    targets.push(target(CheckKind::Dsr, 3, None));
    let start = (Instant::now(), &BTreeMap::new());
    let (prober, changes) = lab.in_ns("fe1", move || {
        let net2 = InterfaceInfo::lookup("net2").unwrap();
        let egress = Egress { name: net2.name.clone(), mac: MacAddr(net2.mac), ip: net2.ipv4[0] };
        Prober::start(egress, 4, targets).unwrap()
    });

    // 1. Everything answers: all up; the backend without a MAC cannot be dsr-probed.
    for n in 1..=3 {
        for kind in ["tcp", "http", "dsr"] {
            let (t, probes) = wait_for(&prober, &key(kind, n), Health::Up, start, Duration::from_secs(10));
            eprintln!("start: {kind} be{n} up after {t:?} ({probes} probes)");
        }
    }
    let nomac = TargetKey { service: "dsr-nomac".into(), ..key("dsr", 3) };
    wait_for(&prober, &nomac, Health::Down, start, Duration::from_secs(10));
    let err = prober.view().targets[&nomac].health.last_error.clone().unwrap();
    assert!(err.contains("no MAC known for 10.158.200.253"), "{err}");
    let v = prober.view();
    assert!(
        v.targets.values().filter(|t| t.target.key.service != "dsr-nomac").all(|t| t.health.downs == 0),
        "a healthy backend went down: {v:#?}"
    );

    // 2. nginx on be1 stops: every check takes be1 down, with "refused".
    let dir = lab.dir().join("be1");
    let pid = std::fs::read_to_string(dir.join("nginx.pid")).unwrap();
    let before = probe_counts(&prober);
    let t0 = (Instant::now(), &before);
    assert!(std::process::Command::new("kill").args(["-TERM", pid.trim()]).status().unwrap().success());
    for kind in ["tcp", "http", "dsr"] {
        let (t, probes) = wait_for(&prober, &key(kind, 1), Health::Down, t0, Duration::from_secs(10));
        eprintln!("nginx stopped: {kind} be1 down after {t:?} ({probes} probes)");
        let err = prober.view().targets[&key(kind, 1)].health.last_error.clone().unwrap();
        assert!(err.contains("refused"), "{kind}: {err}");
    }
    for kind in ["tcp", "http", "dsr"] {
        assert_eq!(health(&prober, &key(kind, 2)), Health::Up);
        assert_eq!(health(&prober, &key(kind, 3)), Health::Up);
    }

    // 3. nginx on be1 starts again: up again after `rise` successes.
    let d = dir.display().to_string();
    let before = probe_counts(&prober);
    let t0 = (Instant::now(), &before);
    lab.sh("be1", &["nginx", "-q", "-p", &d, "-c", &format!("{d}/nginx.conf"), "-e", &format!("{d}/error.log")]);
    for kind in ["tcp", "http", "dsr"] {
        let (t, probes) = wait_for(&prober, &key(kind, 1), Health::Up, t0, Duration::from_secs(10));
        eprintln!("nginx started: {kind} be1 up after {t:?} ({probes} probes)");
    }

    // 4. be2 loses the VIP from its loopback: its real IP still serves (tcp, http up), but every
    // client packet forwarded to it would be dropped; only dsr sees it.
    let before = probe_counts(&prober);
    let t0 = (Instant::now(), &before);
    lab.sh("be2", &["ip", "addr", "del", "10.201.0.1/32", "dev", "lo"]);
    let (t, probes) = wait_for(&prober, &key("dsr", 2), Health::Down, t0, Duration::from_secs(10));
    eprintln!("VIP removed from be2's lo: dsr be2 down after {t:?} ({probes} probes)");
    let err = prober.view().targets[&key("dsr", 2)].health.last_error.clone().unwrap();
    assert!(err.contains("no answer from 10.201.0.1:80"), "{err}");
    // Give the real-IP checks as many probes again: they must not notice anything.
    std::thread::sleep(INTERVAL * 6);
    let v = prober.view();
    for kind in ["tcp", "http"] {
        let h = &v.targets[&key(kind, 2)].health;
        assert_eq!((h.health, h.downs), (Health::Up, 0), "{kind} be2: {h:?}");
    }
    eprintln!("VIP removed from be2's lo: tcp and http be2 still up after {:?}", t0.0.elapsed());

    // 5. The VIP comes back: dsr up again.
    let before = probe_counts(&prober);
    let t0 = (Instant::now(), &before);
    lab.sh("be2", &["ip", "addr", "add", "10.201.0.1/32", "dev", "lo"]);
    let (t, probes) = wait_for(&prober, &key("dsr", 2), Health::Up, t0, Duration::from_secs(10));
    eprintln!("VIP back on be2's lo: dsr be2 up after {t:?} ({probes} probes)");

    // The probe's own RST removed each half-open connection: be3 (probed all along) holds no
    // SYN-RECV connection from the frontend beyond the one a probe may have in flight.
    let syn_recv = lab.sh("be3", &["ss", "-Htn", "state", "syn-recv", "dst", "10.158.200.2"]);
    assert!(syn_recv.lines().count() <= 1, "half-open connections left on be3:\n{syn_recv}");

    // Every transition reached the channel, in order of generation.
    let got: Vec<_> = changes.try_iter().collect();
    assert!(got.windows(2).all(|w| w[0].generation < w[1].generation));
    let be1_downs = got.iter().filter(|c| c.key.backend == be_ip(1) && c.transition.to == Health::Down).count();
    assert_eq!(be1_downs, 3, "{got:#?}");
    assert_eq!(prober.view().generation, got.last().unwrap().generation);
    drop(prober);
}
