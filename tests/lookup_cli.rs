//! `maglevd lookup` is the data plane's decision: for first packets, fragments and ICMP errors,
//! for every kind of service, its answer equals what `dataplane::forward` does with the same
//! packet built independently here; and the command line exposes all of it.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::process::Command;

use maglevd::config::{Config, Protocol};
use maglevd::dataplane::{Snapshot, Verdict, forward};
use maglevd::report::{self, Answer, BackendName, Packet, Question};

fn maglevd(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_maglevd")).args(args).output().expect("run maglevd");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// A configuration file holding `text`, removed on drop.
struct TempConfig(std::path::PathBuf);

impl TempConfig {
    fn new(name: &str, text: &str) -> Self {
        let p = std::env::temp_dir().join(format!("maglevd-lookup-{}-{name}.toml", std::process::id()));
        std::fs::write(&p, text).unwrap();
        Self(p)
    }
    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// An ipvs-mh service (mh-port, mh-fallback, one backend drained) next to the fixture's.
const MH_SERVICE: &str = r#"
[[service]]
name = "mh"
vip = "10.201.0.9"
protocol = "tcp"
port = 443
algorithm = "ipvs-mh"
ipvs_flags = ["mh-port", "mh-fallback"]
[[service.backend]]
ip = "10.158.200.251"
port = 443
[[service.backend]]
ip = "10.158.200.252"
port = 8443
[[service.backend]]
ip = "10.158.200.252"
port = 443
weight = 0
last_weight = 1
"#;

fn config() -> (String, Config) {
    let text = format!("{}{MH_SERVICE}", common::FIXTURE_CONFIG);
    let cfg = maglevd::config::parse(&text, std::path::Path::new("lookup.toml")).unwrap();
    (text, cfg)
}

/// What the forwarder does with `frame`, in `lookup`'s terms.
fn forwarder(cfg: &Config, snap: &Snapshot, frame: &mut [u8]) -> Answer {
    match forward(frame, snap) {
        Verdict::Forward { service, backend } => {
            let s = &cfg.services[usize::from(service)];
            Answer::Backend { service: s.name.clone(), backend: BackendName::of(s, &s.backends[backend as usize]) }
        }
        Verdict::Drop(r) => Answer::None(r.name().to_string()),
        Verdict::Pass(r) => Answer::None(format!("left to the kernel: {}", r.name())),
    }
}

/// The frame for a question, built here with the test helpers (not by `report`).
fn frame(q: &Question) -> Vec<u8> {
    let (vip, client) = (q.dst.ip().to_string(), q.client.ip().to_string());
    let (vport, cport) = (q.dst.port(), q.client.port());
    let segment = |src: &str, sport, dst: &str, dport| match q.protocol {
        Protocol::Tcp => common::tcp(src, sport, dst, dport, b"payload"),
        Protocol::Udp => common::udp(src, sport, dst, dport, b"payload"),
    };
    match q.packet {
        Packet::First => segment(&client, cport, &vip, vport),
        Packet::Fragment => {
            // A later fragment: no ports at all.
            let mut f = segment(&client, cport, &vip, vport);
            common::make_fragment(&mut f, 185, false);
            f
        }
        Packet::IcmpError => {
            // Time exceeded, quoting the backend's reply VIP → client.
            let reply = common::ip_packet(&segment(&vip, vport, &client, cport));
            common::icmp("192.0.2.254", &vip, 11, 0, [0; 4], &reply[..28])
        }
    }
}

#[test]
fn lookup_answers_what_the_forwarder_does() {
    let (_, cfg) = config();
    let snap = Snapshot::build(&cfg, common::links(), &|b| b.ipv4().map(common::backend_mac), 1).unwrap();
    let targets: [(&str, Protocol, u16); 6] = [
        ("10.201.0.1", Protocol::Tcp, 80),  // maglev 5-tuple
        ("10.201.0.2", Protocol::Udp, 53),  // all UDP ports, src-ip
        ("10.201.0.3", Protocol::Tcp, 443), // two port services: fragments are ambiguous
        ("10.201.0.4", Protocol::Tcp, 80),  // every backend drained
        ("10.201.0.9", Protocol::Tcp, 443), // ipvs-mh
        ("10.201.0.1", Protocol::Tcp, 81),  // no such port
    ];
    let mut seen = std::collections::BTreeSet::new();
    for (vip, protocol, port) in targets {
        for i in 0..24u16 {
            let client = SocketAddr::new(IpAddr::from([198, 51, (i >> 4) as u8, 1 + i as u8]), 1024 + 977 * i);
            for packet in [Packet::First, Packet::Fragment, Packet::IcmpError] {
                let q = Question { dst: SocketAddr::new(vip.parse().unwrap(), port), protocol, client, packet };
                let got = report::lookup(&cfg, &q).unwrap();
                let want = forwarder(&cfg, &snap, &mut frame(&q));
                assert_eq!(got, want, "{q:?}");
                seen.insert(match &got {
                    Answer::Backend { service, .. } => format!("{service}: forwarded"),
                    Answer::None(r) => r.clone(),
                });
            }
            // An ICMP error about a flow reaches the flow's backend.
            let first =
                Question { dst: SocketAddr::new(vip.parse().unwrap(), port), protocol, client, packet: Packet::First };
            let icmp = Question { packet: Packet::IcmpError, ..first };
            if let Answer::Backend { .. } = report::lookup(&cfg, &first).unwrap() {
                assert_eq!(report::lookup(&cfg, &icmp).unwrap(), report::lookup(&cfg, &first).unwrap());
            }
        }
    }
    for want in ["web: forwarded", "dns: forwarded", "mh: forwarded", "fragment_no_service", "no_backend", "no_service"]
    {
        assert!(seen.contains(want), "{want} never answered: {seen:?}");
    }
}

#[test]
fn the_command_line_asks_about_fragments_icmp_errors_and_protocols() {
    let (text, cfg) = config();
    let file = TempConfig::new("fixture", &text);
    let ask = |extra: &[&str]| {
        let mut args = vec!["lookup", "-c", file.path()];
        args.extend_from_slice(extra);
        maglevd(&args)
    };
    // Every fragment for a VIP with two TCP port services is dropped: the CLI says why.
    let (code, out, err) = ask(&["--service", "10.201.0.3:80", "--client", "192.0.2.1:1000", "--fragment"]);
    assert_eq!((code, out.as_str()), (0, "none (fragment_no_service)\n"), "{err}");
    let (code, out, _) = ask(&["--service", "drained", "--client", "192.0.2.1:1000"]);
    assert_eq!((code, out.as_str()), (0, "none (no_backend)\n"));
    // The flow's first packet and an ICMP error about it reach the same backend.
    for i in 1..=8 {
        let client = format!("192.0.2.{i}:{}", 40000 + i);
        let (_, first, _) = ask(&["--service", "web", "--client", &client]);
        let (code, icmp, err) = ask(&["--service", "10.201.0.1:80", "--client", &client, "--icmp-error"]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(first, icmp);
        assert!(first.starts_with("10.158.200.25"), "{first}");
    }
    // ipvs-mh backends are named IP:port; the answer is the library's.
    let q = report::question(&cfg, "mh", None, "192.0.2.7:5555".parse().unwrap(), Packet::First).unwrap();
    let (_, out, _) = ask(&["--service", "10.201.0.9:443", "--client", "192.0.2.7:5555"]);
    assert_eq!(out.trim(), report::lookup(&cfg, &q).unwrap().to_string());
    assert!(out.trim().ends_with(":443") || out.trim().ends_with(":8443"), "{out}");
    // --protocol selects like a /udp suffix; a contradiction is an error.
    let (code, out, _) = ask(&["--service", "10.201.0.2:53", "--protocol", "udp", "--client", "192.0.2.1:53"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("10.158.200.25"), "{out}");
    let (code, _, err) = ask(&["--service", "10.201.0.2:53/tcp", "--protocol", "udp", "--client", "192.0.2.1:53"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("contradicts --protocol udp"), "{err}");
    let (code, _, err) = ask(&["--service", "web", "--client", "192.0.2.1:1", "--fragment", "--icmp-error"]);
    assert_eq!(code, 2, "{err}");
    let (code, help, _) = maglevd(&["lookup", "--help"]);
    assert_eq!(code, 0);
    assert!(help.contains("--fragment") && help.contains("--icmp-error") && help.contains("--protocol"), "{help}");
}

/// IPv6 ipvs-mh services are not forwarded; `lookup` still answers their new flows from the
/// kernel table (the one documented exception), and refuses fragment and ICMP questions.
#[test]
fn ipv6_ipvs_mh_services_are_answered_from_the_kernel_table() {
    use maglevd::ipvs_mh::{self, Family, MhDest, MhFlags};
    let text = "[interfaces]\ningress = \"net1\"\negress = \"net2\"\n[[service]]\nvip = \"2001:db8::1\"\nprotocol = \"tcp\"\nport = 80\nalgorithm = \"ipvs-mh\"\n\
                [[service.backend]]\nip = \"2001:db8::a\"\n[[service.backend]]\nip = \"2001:db8::a\"\nport = 8080\n[[service.backend]]\nip = \"2001:db8::b\"\n";
    let file = TempConfig::new("v6", text);
    let dests: Vec<MhDest> = [("2001:db8::a", 80), ("2001:db8::a", 8080), ("2001:db8::b", 80)]
        .iter()
        .map(|(a, p)| MhDest::new(a.parse().unwrap(), *p, 1))
        .collect();
    let t = ipvs_mh::build(Family::Inet6, &dests, 12).unwrap();
    for i in 0..12u16 {
        let client: SocketAddr = format!("[2001:db8:ffff::{i:x}]:{}", 2000 + i).parse().unwrap();
        let want = t.lookup(&dests, client.ip(), client.port(), MhFlags::default(), true).unwrap();
        let want = SocketAddr::new(dests[want].addr, dests[want].port).to_string();
        let (code, out, err) =
            maglevd(&["lookup", "-c", file.path(), "--service", "[2001:db8::1]:80", "--client", &client.to_string()]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(out.trim(), want);
    }
    let (code, _, err) = maglevd(&[
        "lookup",
        "-c",
        file.path(),
        "--service",
        "[2001:db8::1]:80",
        "--client",
        "[2001:db8::9]:1",
        "--fragment",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("IPv4 only"), "{err}");
}
