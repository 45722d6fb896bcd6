//! ipvs-mh mode through the whole product: a configuration written from each public kernel case
//! (tests/data/cases_public.json) gives the kernel's table slot for slot, `lookup` names the
//! kernel's backend for every client and flag combination, and the data plane's `forward()` sends
//! a TCP packet from that client to the same backend.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use maglevd::config::{self, Config, Protocol};
use maglevd::dataplane::{DropReason, Snapshot, Verdict, forward};
use maglevd::report;
use serde_json::Value;

fn cases() -> Vec<Value> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/cases_public.json")).unwrap();
    serde_json::from_str::<Vec<Value>>(&text).unwrap()
}

/// The VIP:port of a case, from its `ipvsadm -A -t VIP:PORT` command.
fn service_of(case: &Value) -> SocketAddr {
    let add = case["ipvsadm"][0].as_str().unwrap();
    add.split_whitespace().nth(3).unwrap().parse().unwrap()
}

fn config_for(case: &Value, flags: &[&str], drain: Option<usize>) -> Config {
    let vip = service_of(case);
    let mut t = format!(
        "[interfaces]\ningress = \"net1\"\negress = \"net2\"\n[[service]]\nvip = \"{}\"\nprotocol = \"tcp\"\nport = {}\nalgorithm = \"ipvs-mh\"\nipvs_tab_index = {}\nipvs_flags = {:?}\n",
        vip.ip(),
        vip.port(),
        case["tab_index"],
        flags
    );
    for (i, d) in case["dests"].as_array().unwrap().iter().enumerate() {
        let weight = if drain == Some(i) { 0 } else { d["weight"].as_i64().unwrap() };
        t.push_str(&format!(
            "[[service.backend]]\nip = \"{}\"\nport = {}\nweight = {weight}\nlast_weight = {}\n",
            d["addr"].as_str().unwrap(),
            d["port"],
            d["last_weight"]
        ));
    }
    config::parse(&t, Path::new("case.toml")).unwrap_or_else(|e| panic!("{e}\n{t}"))
}

const FLAGS: [(&str, &[&str]); 4] = [
    ("dest_no_flags", &[]),
    ("dest_mh_port", &["mh-port"]),
    ("dest_mh_fallback", &["mh-fallback"]),
    ("dest_mh_fallback_mh_port", &["mh-fallback", "mh-port"]),
];

/// `maglevd lookup`'s answer for a new TCP flow from `client`, as the backend's IP.
fn lookup_ip(cfg: &Config, vip: SocketAddr, client: SocketAddr) -> Option<IpAddr> {
    let q = report::Question { dst: vip, protocol: Protocol::Tcp, client, packet: report::Packet::First };
    match report::lookup(cfg, &q).unwrap() {
        report::Answer::Backend { backend, .. } => Some(backend.ip),
        report::Answer::None(reason) => {
            assert_eq!(reason, "no_backend");
            None
        }
    }
}

fn dest_ip(case: &Value, index: i64) -> Option<IpAddr> {
    (index >= 0).then(|| case["dests"][index as usize]["addr"].as_str().unwrap().parse().unwrap())
}

#[test]
fn tables_match_the_kernel_slot_for_slot() {
    for case in cases() {
        let cfg = config_for(&case, &[], None);
        let tables = report::tables(&cfg).unwrap();
        let want: Vec<u32> = case["table"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap() as u32).collect();
        assert_eq!(tables[0].table.slots(), &want[..], "{}", case["name"]);
    }
}

#[test]
fn lookup_names_the_kernels_backend() {
    for case in cases() {
        let vip = service_of(&case);
        for (key, flags) in FLAGS {
            let cfg = config_for(&case, flags, None);
            for l in case["lookups"].as_array().unwrap() {
                let client = SocketAddr::new(
                    l["client_addr"].as_str().unwrap().parse().unwrap(),
                    l["client_port"].as_u64().unwrap() as u16,
                );
                let got = lookup_ip(&cfg, vip, client);
                assert_eq!(got, dest_ip(&case, l[key].as_i64().unwrap()), "{} {key} client {client}", case["name"]);
            }
        }
    }
}

#[test]
fn the_data_plane_forwards_to_the_kernels_backend() {
    let mut checked = 0;
    for case in cases() {
        let vip = service_of(&case);
        let IpAddr::V4(_) = vip.ip() else { continue };
        for (key, flags) in FLAGS {
            let cfg = config_for(&case, flags, None);
            let snap =
                Snapshot::build(&cfg, common::links(), &|b| Some(common::backend_mac(b.ipv4().unwrap())), 1).unwrap();
            for l in case["lookups"].as_array().unwrap() {
                let (addr, port) = (l["client_addr"].as_str().unwrap(), l["client_port"].as_u64().unwrap() as u16);
                let mut frame = common::tcp(addr, port, &vip.ip().to_string(), vip.port(), &[]);
                let verdict = forward(&mut frame, &snap);
                match l[key].as_i64().unwrap() {
                    -1 => assert_eq!(verdict, Verdict::Drop(DropReason::NoBackend)),
                    want => assert_eq!(
                        verdict,
                        Verdict::Forward { service: 0, backend: want as u32 },
                        "{} {key} client {addr}:{port}",
                        case["name"]
                    ),
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 160, "{checked}");
}

/// `ipvsadm -e -w 0` (weight 0, last_weight kept): the table does not change, clients of the
/// drained backend get no backend without mh-fallback and another one with it.
#[test]
fn draining_by_weight_zero_keeps_the_table() {
    let case = &cases()[1];
    assert_eq!(case["name"], "seed_6dests");
    let vip = service_of(case);
    let base = config_for(case, &[], None);
    let drained = config_for(case, &[], Some(2));
    let fallback = config_for(case, &["mh-fallback"], Some(2));
    let (tb, td) = (report::tables(&base).unwrap(), report::tables(&drained).unwrap());
    assert_eq!(tb[0].table.slots(), td[0].table.slots(), "draining must not change the kernel table");
    let gone = dest_ip(case, 2);
    let mut hit = 0;
    for port in 0..2000u16 {
        let client = SocketAddr::from(([192, 168, (port >> 8) as u8, port as u8], 40000 + port));
        let before = lookup_ip(&base, vip, client);
        let (d, f) = (lookup_ip(&drained, vip, client), lookup_ip(&fallback, vip, client));
        if before == gone {
            hit += 1;
            assert_eq!(d, None, "without mh-fallback a drained backend's client gets no backend");
            assert!(f.is_some() && f != gone, "with mh-fallback it is rehashed to another backend");
        } else {
            assert_eq!((d, f), (before, before), "clients of other backends stay");
        }
    }
    assert!(hit > 200, "{hit} of 2000 clients hashed to the drained backend");
}

fn two_backends(algorithm: &str, a: (&str, Option<u16>, Option<&str>), b: (&str, Option<u16>, Option<&str>)) -> String {
    let mut t = format!(
        "[interfaces]\ningress = \"net1\"\negress = \"net2\"\n[[service]]\nvip = \"10.201.0.1\"\nprotocol = \"tcp\"\nport = 80\nalgorithm = \"{algorithm}\"\n"
    );
    for (ip, port, mac) in [a, b] {
        t.push_str(&format!("[[service.backend]]\nip = \"{ip}\"\n"));
        if let Some(p) = port {
            t.push_str(&format!("port = {p}\n"));
        }
        if let Some(m) = mac {
            t.push_str(&format!("mac = \"{m}\"\n"));
        }
    }
    t
}

/// In an ipvs-mh service a backend is (IP, port), as in IPVS: one IP on two ports is two
/// backends; the same IP and port twice is a duplicate. Maglev services still identify a backend
/// by its IP alone.
#[test]
fn backend_identity_is_ip_and_port_in_ipvs_mh_services() {
    let parse = |t: String| config::parse(&t, Path::new("dup.toml"));
    let ok = parse(two_backends("ipvs-mh", ("10.0.2.1", Some(8080), None), ("10.0.2.1", Some(8081), None))).unwrap();
    let ports: Vec<u16> = ok.services[0].backends.iter().map(|b| b.port).collect();
    assert_eq!(ports, [8080, 8081]);

    let e = parse(two_backends("ipvs-mh", ("10.0.2.1", Some(8080), None), ("10.0.2.1", Some(8080), None)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("service[0].backend[1].port: 10.0.2.1:8080 is already backend[0] of this service"), "{e}");
    // Without `port`, both take the service port: a duplicate.
    let e = parse(two_backends("ipvs-mh", ("10.0.2.1", None, None), ("10.0.2.1", None, None))).unwrap_err().to_string();
    assert!(e.contains("10.0.2.1:80 is already backend[0]"), "{e}");
    // One IP is one host: two static MACs for it are a mistake.
    let e = parse(two_backends(
        "ipvs-mh",
        ("10.0.2.1", Some(8080), Some("02:00:00:00:00:01")),
        ("10.0.2.1", Some(8081), Some("02:00:00:00:00:02")),
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("backend[1].mac: 10.0.2.1 already has mac 02:00:00:00:00:01 in backend[0]"), "{e}");

    let e = parse(two_backends("maglev", ("10.0.2.1", None, None), ("10.0.2.1", None, None))).unwrap_err().to_string();
    assert!(e.contains("service[0].backend[1].ip: 10.0.2.1 is already backend[0] of this service"), "{e}");
}
