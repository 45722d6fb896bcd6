use super::*;
use crate::ipvs_mh::MhFlags;
use std::time::Duration;

const SEED: &str = include_str!("../../config/maglevd.toml");

fn check(text: &str) -> Result<Config, ConfigError> {
    parse(text, Path::new("test.toml"))
}

/// The full error text for an invalid configuration.
fn error(text: &str) -> String {
    match check(text) {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => e.to_string(),
    }
}

const HEAD: &str = "[interfaces]\ningress = \"net1\"\negress = \"net2\"\n";

fn one_service(body: &str) -> String {
    format!("{HEAD}[[service]]\nvip = \"10.201.0.1\"\nprotocol = \"tcp\"\n{body}")
}

#[test]
fn example_config_is_the_seed_setup() {
    let c = check(SEED).unwrap();
    assert_eq!(c.ingress, "net1");
    assert_eq!(c.egress, "net2");
    assert!(!c.one_arm());
    assert_eq!(c.services.len(), 1);
    let s = &c.services[0];
    assert_eq!(s.name, "web");
    assert_eq!(s.vip, Ipv4Addr::new(10, 201, 0, 1));
    assert_eq!((s.protocol, s.port, s.flow_key, s.table_size), (Protocol::Tcp, Some(80), FlowKey::FiveTuple, 65537));
    let ips: Vec<String> = s.backends.iter().map(|b| b.ip.to_string()).collect();
    assert_eq!(ips, ["10.158.200.251", "10.158.200.252", "10.158.200.253"]);
    assert!(s.backends.iter().all(|b| b.weight == 1 && b.mac.is_none()));
    assert!(warnings(&c).is_empty());
    // The check that protects a DSR setup best, with the documented defaults spelled out.
    let dsr = HealthCheck { kind: CheckKind::Dsr, port: 80, ..HealthCheck::default() };
    assert_eq!(s.health, dsr);
    assert!(s.backends.iter().all(|b| b.health == dsr));
    assert_eq!(s.when_all_down, WhenAllDown::Drop);
}

fn health_service(service: &str, backend: &str) -> String {
    one_service(&format!(
        "port = 80\n{service}[[service.backend]]\nip = \"10.0.0.1\"\n[[service.backend]]\nip = \"10.0.0.2\"\n{backend}"
    ))
}

#[test]
fn health_defaults_and_overrides() {
    // No [service.health]: no checks, every backend up; traffic dropped when all are down.
    let c = check(&health_service("", "")).unwrap();
    let s = &c.services[0];
    assert_eq!(s.health, HealthCheck::default());
    assert_eq!(s.health.kind, CheckKind::None);
    assert_eq!(
        (s.health.interval, s.health.timeout, s.health.rise, s.health.fall),
        (Duration::from_millis(2000), Duration::from_millis(1000), 2, 3)
    );
    assert_eq!(s.when_all_down, WhenAllDown::Drop);

    // Service keys for all backends; a backend table overrides only what it gives.
    let c = check(&health_service(
        "when_all_down = \"all\"\n[service.health]\ncheck = \"http\"\npath = \"/healthz\"\ninterval_ms = 500\ntimeout_ms = 200\nrise = 1\n",
        "[service.backend.health]\nstatus = 204\nhost = \"www.example.com\"\nfall = 5\nport = 8080\n",
    ))
    .unwrap();
    let s = &c.services[0];
    assert_eq!(s.when_all_down, WhenAllDown::All);
    let http =
        |status, host: Option<&str>| CheckKind::Http { path: "/healthz".into(), status, host: host.map(String::from) };
    assert_eq!(
        s.backends[0].health,
        HealthCheck {
            kind: http(200, None),
            port: 80,
            interval: Duration::from_millis(500),
            timeout: Duration::from_millis(200),
            rise: 1,
            fall: 3
        }
    );
    assert_eq!(s.backends[0].health, s.health);
    assert_eq!(
        s.backends[1].health,
        HealthCheck { kind: http(204, Some("www.example.com")), port: 8080, fall: 5, ..s.health.clone() }
    );

    // A backend may switch its kind, or turn checks off for itself.
    let c =
        check(&health_service("[service.health]\ncheck = \"dsr\"\n", "[service.backend.health]\ncheck = \"none\"\n"))
            .unwrap();
    let s = &c.services[0];
    assert_eq!((s.backends[0].health.kind.name(), s.backends[0].health.port), ("dsr", 80));
    assert_eq!((s.backends[1].health.kind.name(), s.backends[1].health.port), ("none", 0));
    // The default timeout is never longer than the interval.
    let c = check(&health_service("[service.health]\ncheck = \"tcp\"\ninterval_ms = 300\n", "")).unwrap();
    assert_eq!(c.services[0].health.timeout, Duration::from_millis(300));
    // http defaults.
    let c = check(&health_service("[service.health]\ncheck = \"http\"\n", "")).unwrap();
    assert_eq!(c.services[0].health.kind, CheckKind::Http { path: "/".into(), status: 200, host: None });
}

#[test]
fn health_mistakes_are_named_and_located() {
    let cases: &[(&str, &str, &str)] = &[
        ("[service.health]\ncheck = \"icmp\"\n", "", "unknown variant `icmp`"),
        ("[service.health]\ncheck = \"tcp\"\nport = 0\n", "", "service[0].health.port: 0 is out of range 1..=65535"),
        ("[service.health]\ninterval_ms = 50\n", "", "service[0].health.interval_ms: 50 is out of range 100..=3600000"),
        ("[service.health]\ntimeout_ms = 0\n", "", "service[0].health.timeout_ms: 0 is out of range 10..=60000"),
        (
            "[service.health]\nrise = 0\n",
            "",
            "service[0].health.rise: 0 is out of range 1..=100 (consecutive successes)",
        ),
        ("[service.health]\nfall = 101\n", "", "service[0].health.fall: 101 is out of range 1..=100"),
        (
            "[service.health]\ncheck = \"http\"\nstatus = 99\n",
            "",
            "service[0].health.status: 99 is out of range 100..=599",
        ),
        (
            "[service.health]\ncheck = \"http\"\npath = \"healthz\"\n",
            "",
            "service[0].health.path: `healthz` is not a request path",
        ),
        (
            "[service.health]\ncheck = \"http\"\npath = \"/a b\"\n",
            "",
            "service[0].health.path: `/a b` is not a request path",
        ),
        (
            "[service.health]\ncheck = \"http\"\nhost = \"a\\r\\nX: y\"\n",
            "",
            "service[0].health.host: `a\\r\\nX: y` is not a Host header value",
        ),
        (
            "[service.health]\ncheck = \"tcp\"\npath = \"/\"\n",
            "",
            "service[0].health.path: only used with check = \"http\"",
        ),
        ("[service.health]\nstatus = 200\n", "", "service[0].health.status: only used with check = \"http\""),
        (
            "[service.health]\ninterval_ms = 1000\ntimeout_ms = 2000\n",
            "",
            "service[0].health.timeout_ms: timeout 2000 ms is longer than the interval 1000 ms",
        ),
        ("[service.health]\ncolour = 1\n", "", "unknown field `colour`"),
        ("", "[service.backend.health]\nwhen_all_down = \"all\"\n", "unknown field `when_all_down`"),
        (
            "[service.health]\ninterval_ms = 500\n",
            "[service.backend.health]\ntimeout_ms = 600\n",
            "service[0].backend[1].health.timeout_ms: timeout 600 ms is longer than the interval 500 ms",
        ),
        (
            "[service.health]\ncheck = \"http\"\n",
            "[service.backend.health]\ncheck = \"tcp\"\nstatus = 204\n",
            "service[0].backend[1].health.status: only used with check = \"http\"",
        ),
        ("when_all_down = \"some\"\n", "", "unknown variant `some`"),
    ];
    for &(service, backend, want) in cases {
        let text = health_service(service, backend);
        let e = error(&text);
        assert!(e.contains(want), "got {e}\n--- config:\n{text}");
        assert_eq!(e.lines().filter(|l| l.starts_with("test.toml:")).count(), 1, "one problem: {e}");
        // Located at the offending line.
        let (line, _) = e.strip_prefix("test.toml:").unwrap().split_once(':').unwrap();
        let line: usize = line.parse().unwrap();
        let offending = text.lines().nth(line - 1).unwrap();
        let key = want.rsplit_once(".health.").map(|(_, k)| k.split(':').next().unwrap());
        if let Some(key) = key {
            assert!(offending.starts_with(key), "{want}: line {line} is `{offending}`");
        }
    }
    // A service's mistake is reported once, not again for each backend that has a table.
    let text = health_service(
        "[service.health]\ninterval_ms = 500\ntimeout_ms = 600\n",
        "[service.backend.health]\nrise = 3\n",
    );
    assert_eq!(error(&text).lines().count(), 1, "{}", error(&text));
}

#[test]
fn health_port_must_be_given_where_the_service_port_is_not_a_tcp_port() {
    let all =
        one_service("port = \"all\"\n[service.health]\ncheck = \"tcp\"\n[[service.backend]]\nip = \"10.0.0.1\"\n");
    let e = error(&all);
    assert!(e.contains("service[0].health.port: the service has port = \"all\": give the TCP port to check"), "{e}");
    check(&all.replace("check = \"tcp\"", "check = \"tcp\"\nport = 22")).unwrap();
    let udp = format!(
        "{HEAD}[[service]]\nvip = \"10.201.0.1\"\nprotocol = \"udp\"\nport = 53\n[service.health]\ncheck = \"dsr\"\n\
         [[service.backend]]\nip = \"10.0.0.1\"\n"
    );
    let e = error(&udp);
    assert!(e.contains("the service is udp and the check is over tcp"), "{e}");
    let c = check(&udp.replace("check = \"dsr\"", "check = \"dsr\"\nport = 53")).unwrap();
    assert_eq!(c.services[0].backends[0].health.port, 53);
    // `none` needs no port.
    check(&all.replace("check = \"tcp\"", "check = \"none\"")).unwrap();
}

#[test]
fn dsr_check_is_ipv4_only() {
    let text = mh_service("[service.health]\ncheck = \"dsr\"\n", "[[service.backend]]\nip = \"2001:db8::a\"\n")
        .replace("10.201.0.1", "2001:db8::1");
    let e = error(&text);
    assert!(e.contains("health.check: the dsr check is IPv4 only"), "{e}");
}

#[test]
fn defaults_and_all_ports() {
    let c =
        check(&one_service("port = \"all\"\n[[service.backend]]\nip = \"10.0.0.1\"\nmac = \"c2:b0:57:49:47:aa\"\n"))
            .unwrap();
    let s = &c.services[0];
    assert_eq!(s.port, None);
    assert_eq!(s.name, "10.201.0.1:*/tcp");
    assert_eq!(s.flow_key, FlowKey::FiveTuple);
    assert_eq!(s.table_size, 65537);
    assert_eq!(s.backends[0].weight, 1);
    assert_eq!(s.backends[0].mac, Some("c2:b0:57:49:47:aa".parse().unwrap()));
}

#[test]
fn flow_keys_parse() {
    for (word, key) in
        [("5-tuple", FlowKey::FiveTuple), ("src-ip", FlowKey::SrcIp), ("src-ip-port", FlowKey::SrcIpPort)]
    {
        let c =
            check(&one_service(&format!("port = 53\nflow_key = \"{word}\"\n[[service.backend]]\nip = \"10.0.0.1\"\n")))
                .unwrap();
        assert_eq!(c.services[0].flow_key, key);
        assert_eq!(key.to_string(), word);
    }
}

#[test]
fn one_arm_mode() {
    let text = SEED.replace("egress = \"net2\"", "egress = \"net1\"");
    assert!(check(&text).unwrap().one_arm());
}

#[test]
fn unknown_key_is_named_with_its_line() {
    let text = SEED.replacen("weight = 1                #", "wieght = 1 #", 1);
    let line = text.lines().position(|l| l.starts_with("wieght")).unwrap() + 1;
    let e = error(&text);
    assert!(e.starts_with(&format!("test.toml:{line}:1: unknown field `wieght`")), "{e}");
    assert!(e.contains("unknown field `wieght`"), "{e}");
    let e = error(&format!("{HEAD}color = \"blue\"\n"));
    assert!(e.contains("unknown field `color`") && e.contains("test.toml:4:"), "{e}");
}

#[test]
fn syntax_error_is_located() {
    let e = error("[interfaces\n");
    assert!(e.starts_with("test.toml:1:12: unclosed table"), "{e}");
    assert!(e.ends_with("    | [interfaces"), "{e}");
}

#[test]
fn missing_sections_and_keys() {
    assert!(error("").contains("missing field `interfaces`"));
    let e = error(HEAD);
    assert!(e.contains("service: no [[service]] is configured"), "{e}");
    let e = error(&format!("{HEAD}[[service]]\nvip = \"10.201.0.1\"\nport = 80\n"));
    assert!(e.contains("missing field `protocol`"), "{e}");
}

#[test]
fn bad_values_are_named_and_located() {
    let cases: &[(&str, &str, &str)] = &[
        ("vip = \"10.201.0.300\"", "service[0].vip: `10.201.0.300` is not an IPv4 address", "test.toml:6:7"),
        ("vip = \"2001:db8::1\"", "is an IPv6 address; only `ipvs-mh` services may be IPv6", "test.toml:6:7"),
        ("vip = \"224.0.0.1\"", "cannot be a VIP", "test.toml:6:7"),
        ("port = 0", "service[0].port: 0 is out of range 1..=65535", "test.toml:7:8"),
        ("port = 70000", "70000 is out of range", "test.toml:7:8"),
        ("table_size = 65536", "service[0].table_size: 65536 is not a prime", "test.toml:8:14"),
        ("table_size = 2", "2 is out of range 3..=4194301", ""),
        ("table_size = 16777213", "16777213 is out of range 3..=4194301", ""),
        ("table_size = 13", "13 is too small for 2 backends", ""),
        ("weight = 70000", "service[0].backend[0].weight: 70000 is out of range 0..=65535", "test.toml:11:10"),
        ("weight = -1", "-1 is out of range", ""),
        ("mac = \"c2:b0:57:49:47\"", "service[0].backend[0].mac: `c2:b0:57:49:47` is not a MAC address", ""),
        ("mac = \"ff:ff:ff:ff:ff:ff\"", "is not a unicast MAC address", ""),
        ("ip = \"10.0.0.256\"", "service[0].backend[0].ip: `10.0.0.256` is not an IPv4 address", ""),
        ("ip = \"10.201.0.1\"", "10.201.0.1 is a VIP; a backend must be a real address", ""),
        ("ip = \"10.0.0.2\"", "service[0].backend[1].ip: 10.0.0.2 is already backend[0]", ""),
        ("ip = \"0.0.0.0\"", "cannot be a backend address", ""),
    ];
    for &(line, want, at) in cases {
        let mut body = "port = 80\ntable_size = 251\n[[service.backend]]\nip = \"10.0.0.1\"\nweight = 1\nmac = \"c2:b0:57:49:47:aa\"\n[[service.backend]]\nip = \"10.0.0.2\"\n".to_string();
        let field = line.split(" =").next().unwrap();
        if field == "vip" {
            body = body.replace("port = 80", &format!("{line}\nport = 80"));
        } else if field == "ip" {
            body = body.replacen("ip = \"10.0.0.1\"", line, 1);
        } else {
            let prefix = format!("{field} =");
            let replaced: Vec<String> =
                body.lines().map(|l| if l.starts_with(&prefix) { line.to_string() } else { l.to_string() }).collect();
            body = replaced.join("\n") + "\n";
        }
        let mut text = format!("{HEAD}[[service]]\n");
        if field != "vip" {
            text.push_str("vip = \"10.201.0.1\"\n");
        }
        text.push_str("protocol = \"tcp\"\n");
        text.push_str(&body);
        let e = error(&text);
        assert!(e.contains(want), "{line}: got {e}\n--- config:\n{text}");
        if !at.is_empty() {
            assert!(e.starts_with(at), "{line}: expected location {at}, got {e}\n--- config:\n{text}");
        }
    }
}

#[test]
fn bad_enums_and_types() {
    let e = error(&one_service("port = 80\nprotocol2 = 1\n"));
    assert!(e.contains("unknown field `protocol2`"), "{e}");
    let e = error(&format!("{HEAD}[[service]]\nvip = \"10.201.0.1\"\nprotocol = \"sctp\"\nport = 80\n"));
    assert!(e.contains("unknown variant `sctp`") && e.contains("test.toml:6:"), "{e}");
    let e = error(&one_service("port = \"some\"\n"));
    assert!(e.contains("\"all\""), "{e}");
    let e = error(&one_service("port = 80\nflow_key = \"4-tuple\"\n"));
    assert!(e.contains("unknown variant `4-tuple`"), "{e}");
    let e = error(&one_service("port = 80\n[[service.backend]]\nip = \"10.0.0.1\"\nweight = \"heavy\"\n"));
    assert!(e.contains("invalid type"), "{e}");
}

#[test]
fn interface_names() {
    let e = error(&SEED.replace("ingress = \"net1\"", "ingress = \"a-very-long-interface-name\""));
    assert!(e.contains("interfaces.ingress: `a-very-long-interface-name` is not a valid interface name"), "{e}");
    let e = error(&SEED.replace("egress = \"net2\"", "egress = \"\""));
    assert!(e.contains("interfaces.egress"), "{e}");
}

#[test]
fn overlapping_services() {
    let svc = |port: &str| {
        format!(
            "[[service]]\nvip = \"10.201.0.1\"\nprotocol = \"tcp\"\nport = {port}\n[[service.backend]]\nip = \"10.0.0.1\"\n"
        )
    };
    let e = error(&format!("{HEAD}{}{}", svc("80"), svc("80")));
    assert!(e.contains("service[1]: 10.201.0.1:80/tcp has the same VIP, protocol and port as service[0]"), "{e}");
    assert!(e.contains("`10.201.0.1:80/tcp` is already the name of service[0]"), "{e}");
    let e = error(&format!("{HEAD}{}{}", svc("80"), svc("\"all\"")));
    assert!(e.contains("overlapping ports"), "{e}");
    // Different ports, or the same port over different protocols, are fine.
    check(&format!("{HEAD}{}{}", svc("80"), svc("443"))).unwrap();
    let udp = svc("80").replace("tcp", "udp");
    check(&format!("{HEAD}{}{}", svc("80"), udp)).unwrap();
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = one_service("port = 0\ntable_size = 100\n[[service.backend]]\nip = \"x\"\nweight = 99999\n");
    let e = error(&text);
    assert_eq!(e.lines().count(), 4, "{e}");
}

#[test]
fn warnings_for_small_tables_and_all_drained() {
    let c = check(&one_service("port = 80\ntable_size = 101\n[[service.backend]]\nip = \"10.0.0.1\"\nweight = 0\n[[service.backend]]\nip = \"10.0.0.2\"\nweight = 0\n")).unwrap();
    let w = warnings(&c);
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(w[0].contains("recommends at least 100"));
    assert!(w[1].contains("every backend has weight 0"));
}

#[test]
fn unreadable_file_names_the_path() {
    let e = load(Path::new("/nonexistent/maglevd.toml")).unwrap_err().to_string();
    assert!(e.starts_with("/nonexistent/maglevd.toml: cannot read the configuration file"), "{e}");
}

#[test]
fn arbitrary_text_never_panics() {
    // A few hostile inputs; the property test in tests/ covers random ones.
    for t in [
        "\u{0}",
        "[[service]]\n[[service]]",
        "interfaces = 5",
        "[interfaces]\ningress = 1\negress = []",
        "[[service.backend]]\nip=1",
    ] {
        let _ = check(t);
    }
}

#[test]
fn daemon_section_and_interface_addresses() {
    let c = check(SEED).unwrap();
    assert_eq!(c.daemon, Daemon::default());
    assert_eq!(c.daemon.metrics, Some("127.0.0.1:9100".parse().unwrap()));
    assert_eq!((c.ingress_address, c.egress_address), (None, None));
    assert!(c.kernel_drop, "interfaces.kernel_drop defaults to true");
    let off = check(&SEED.replace("egress = \"net2\"", "egress = \"net2\"\nkernel_drop = false")).unwrap();
    assert!(!off.kernel_drop);
    let e = error(&SEED.replace("egress = \"net2\"", "egress = \"net2\"\nkernel_drop = \"yes\""));
    assert!(e.contains("kernel_drop"), "{e}");
    let e = error(&SEED.replace("egress = \"net2\"", "egress = \"net2\"\nkernel_drops = false"));
    assert!(e.contains("kernel_drops"), "{e}");
    let text = SEED
        .replace(
            "egress = \"net2\"",
            "egress = \"net2\"\ningress_address = \"10.158.100.2\"\negress_address = \"10.158.200.2\"",
        )
        .replace("workers = 0 ", "workers = 2 ")
        .replace("metrics = \"127.0.0.1:9100\"", "metrics = \"\"");
    let c = check(&text).unwrap();
    assert_eq!(c.ingress_address, Some(Ipv4Addr::new(10, 158, 100, 2)));
    assert_eq!(c.egress_address, Some(Ipv4Addr::new(10, 158, 200, 2)));
    assert_eq!(c.daemon, Daemon { workers: Some(2), metrics: None, ..Daemon::default() });
    assert_eq!(c.daemon.config_check, Some(std::time::Duration::from_secs(5)));
    let off = check(&text.replace("config_check_secs = 5 ", "config_check_secs = 0 ")).unwrap();
    assert_eq!(off.daemon.config_check, None);
    let e = error(&text.replace("config_check_secs = 5 ", "config_check_secs = 7200 "));
    assert!(e.contains("daemon.config_check_secs: 7200 is out of range 0..=3600"), "{e}");
    let bad = text.replace("workers = 2", "workers = 500").replace("metrics = \"\"", "metrics = \"localhost\"");
    let e = error(&bad);
    assert!(e.contains("daemon.workers: 500 is out of range"), "{e}");
    assert!(e.contains("daemon.metrics: `localhost` is not ADDRESS:PORT"), "{e}");
    let e = error(&text.replace("10.158.100.2", "10.201.0.1"));
    assert!(e.contains("interfaces.ingress_address: 10.201.0.1 is a VIP"), "{e}");
    let e = error(&text.replace("10.158.200.2\"", "10.158.200\""));
    assert!(e.contains("interfaces.egress_address: `10.158.200` is not an IPv4 address"), "{e}");
}

fn mh_service(extra: &str, backends: &str) -> String {
    format!(
        "{HEAD}[[service]]\nvip = \"10.201.0.1\"\nprotocol = \"tcp\"\nport = 80\nalgorithm = \"ipvs-mh\"\n{extra}{backends}"
    )
}

const MH_BACKENDS: &str = "[[service.backend]]\nip = \"10.200.0.253\"\n[[service.backend]]\nip = \"10.200.0.252\"\nweight = 0\nlast_weight = 3\nport = 8080\n";

#[test]
fn ipvs_mh_service_defaults_and_keys() {
    let c = check(&mh_service("", MH_BACKENDS)).unwrap();
    let s = &c.services[0];
    assert_eq!(s.algorithm, Algorithm::IpvsMh { tab_index: 12, flags: MhFlags::default() });
    assert_eq!(s.table_size, 4093);
    // Backend order is kept (kernel list order); port defaults to the service port; last_weight to
    // the weight.
    assert_eq!(s.backends[0].ip.to_string(), "10.200.0.253");
    assert_eq!((s.backends[0].port, s.backends[0].weight, s.backends[0].last_weight), (80, 1, 1));
    assert_eq!((s.backends[1].port, s.backends[1].weight, s.backends[1].last_weight), (8080, 0, 3));
    let c =
        check(&mh_service("ipvs_tab_index = 8\nipvs_flags = [\"mh-port\", \"mh-fallback\"]\n", MH_BACKENDS)).unwrap();
    assert_eq!(
        c.services[0].algorithm,
        Algorithm::IpvsMh { tab_index: 8, flags: MhFlags { mh_port: true, mh_fallback: true } }
    );
    assert_eq!(c.services[0].table_size, 251);
    assert_eq!(c.services[0].algorithm.to_string(), "ipvs-mh (tab_index 8, mh-port, mh-fallback)");
}

#[test]
fn ipvs_mh_mistakes_are_named() {
    let cases: &[(&str, &str)] = &[
        ("ipvs_tab_index = 18\n", "service[0].ipvs_tab_index: 18 is out of range 8..=17"),
        ("ipvs_flags = [\"mh-sport\"]\n", "service[0].ipvs_flags: unknown flag `mh-sport`"),
        ("table_size = 4093\n", "service[0].table_size: not used with algorithm = \"ipvs-mh\""),
        ("flow_key = \"src-ip\"\n", "service[0].flow_key: not used with algorithm = \"ipvs-mh\""),
    ];
    for (extra, want) in cases {
        let e = error(&mh_service(extra, MH_BACKENDS));
        assert!(e.contains(want), "{extra}: {e}");
    }
    let e = error(&mh_service("", "[[service.backend]]\nip = \"10.0.0.1\"\nlast_weight = 70000\n"));
    assert!(e.contains("service[0].backend[0].last_weight: 70000 is out of range"), "{e}");
    let e = error(&mh_service("", "[[service.backend]]\nip = \"10.0.0.1\"\nport = 70000\n"));
    assert!(e.contains("service[0].backend[0].port: 70000 is out of range 0..=65535"), "{e}");
    let e = error(&mh_service("", MH_BACKENDS).replace("port = 80\n", "port = \"all\"\n"));
    assert!(e.contains("an ipvs-mh service has one port"), "{e}");
    let e = error(&one_service(
        "port = 80\nipvs_tab_index = 12\n[[service.backend]]\nip = \"10.0.0.1\"\nport = 80\nlast_weight = 1\n",
    ));
    for key in ["ipvs_tab_index", "backend[0].port", "backend[0].last_weight"] {
        assert!(e.contains(&format!("service[0].{key}: only used with algorithm = \"ipvs-mh\"")), "{key}: {e}");
    }
    let e =
        error(&mh_service("algorithm2 = 1\n", MH_BACKENDS).replace("algorithm = \"ipvs-mh\"", "algorithm = \"ipvs\""));
    assert!(e.contains("unknown variant `ipvs`"), "{e}");
}

#[test]
fn ipv6_only_in_ipvs_mh_services() {
    let v6 = mh_service("", "[[service.backend]]\nip = \"2001:db8::10\"\n").replace("10.201.0.1", "2001:db8::1");
    let c = check(&v6).unwrap();
    assert_eq!(c.services[0].endpoint(), "[2001:db8::1]:80/tcp");
    let e = error(&v6.replace("algorithm = \"ipvs-mh\"\n", ""));
    assert!(e.contains("service[0].vip: `2001:db8::1` is an IPv6 address"), "{e}");
    let e = error(&mh_service("", "[[service.backend]]\nip = \"2001:db8::10\"\n"));
    assert!(e.contains("is not of the VIP's address family"), "{e}");
}

#[test]
fn a_service_without_backends_is_valid_and_warned() {
    let c = check(&one_service("port = 80\n")).unwrap();
    assert!(c.services[0].backends.is_empty());
    let w = warnings(&c);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("no [[service.backend]]: all its traffic will be dropped"), "{w:?}");
    // The forwarder builds an empty table for it: every packet is a counted no_backend drop.
    let t = crate::table::ServiceTable::build(&c.services[0], |_| true).unwrap();
    assert!(t.is_empty());
}

/// `load` on `path` in a thread, waited for at most two seconds (a blocking `open` must fail the
/// test, not hang it).
fn load_within_2s(path: &Path) -> Result<Config, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let p = path.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(load(&p).map_err(|e| e.to_string()));
    });
    rx.recv_timeout(std::time::Duration::from_secs(2)).expect("config::load blocked for more than 2 s")
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("maglevd-cfg-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_fifo_at_the_config_path_is_refused_without_blocking() {
    let dir = scratch_dir("fifo");
    let path = dir.join("maglevd.toml");
    let status = std::process::Command::new("mkfifo").arg(&path).status().expect("run mkfifo");
    assert!(status.success());
    let err = load_within_2s(&path).unwrap_err();
    assert!(err.contains("not a regular file"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_symlink_to_a_device_is_refused() {
    let dir = scratch_dir("dev");
    let path = dir.join("maglevd.toml");
    std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
    let err = load_within_2s(&path).unwrap_err();
    assert!(err.contains("not a regular file"), "{err}");
    assert!(err.contains("maglevd.toml"), "names the file: {err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_oversized_file_is_refused_before_it_is_read_whole() {
    let dir = scratch_dir("big");
    let path = dir.join("maglevd.toml");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(MAX_CONFIG_BYTES + 1).unwrap();
    let err = load_within_2s(&path).unwrap_err();
    assert!(err.contains("larger than"), "{err}");
    // A symlink to a regular file (a Kubernetes ConfigMap mount) is fine.
    std::fs::write(dir.join("real.toml"), SEED).unwrap();
    let link = dir.join("link.toml");
    std::os::unix::fs::symlink(dir.join("real.toml"), &link).unwrap();
    assert!(load_within_2s(&link).is_ok());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_total_table_memory_is_bounded() {
    // Each table is within the per-table bound; together they are not (≈ 9 × 16 MiB of slots).
    let mut text = HEAD.to_string();
    for i in 0..9 {
        text.push_str(&format!(
            "[[service]]\nvip = \"10.201.0.{}\"\nprotocol = \"tcp\"\nport = 80\ntable_size = 4194301\n\
             [[service.backend]]\nip = \"10.0.0.1\"\n",
            i + 1
        ));
    }
    let err = error(&text);
    assert!(err.contains("service[8].table_size"), "{err}");
    assert!(err.contains("all tables together"), "{err}");
    assert_eq!(err.lines().count(), 1, "reported once, at the service that crosses the bound: {err}");
    // Eight of them fit.
    let eight: String = text.split("[[service]]").take(9).collect::<Vec<_>>().join("[[service]]");
    assert!(check(&eight).is_ok());
}

#[test]
fn flows_section_defaults_values_and_mistakes() {
    let c = check(SEED).unwrap();
    assert_eq!(c.flows, Flows::default());
    assert_eq!(c.flows.capacity, 1 << 20);
    let d = std::time::Duration::from_secs;
    assert_eq!(
        (c.flows.timeouts.tcp, c.flows.timeouts.tcp_fin, c.flows.timeouts.udp, c.flows.fragment_timeout),
        (d(900), d(30), d(300), d(5))
    );
    // The commented lines of the example file are the defaults.
    let uncommented: String = SEED
        .lines()
        .map(|l| {
            if l.starts_with("# [flows]") || l.starts_with("# capacity") || l.contains("_timeout_secs =") {
                l.trim_start_matches("# ")
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(uncommented.contains("\n[flows]\n"), "{uncommented}");
    assert_eq!(check(&uncommented).unwrap().flows, Flows::default());

    let section = "[flows]\ncapacity = 2048\ntcp_timeout_secs = 3600\ntcp_fin_timeout_secs = 10\nudp_timeout_secs = 60\nfragment_timeout_secs = 2\n";
    let c = check(&format!("{SEED}\n{section}")).unwrap();
    assert_eq!(c.flows.capacity, 2048);
    assert_eq!(
        (c.flows.timeouts.tcp, c.flows.timeouts.tcp_fin, c.flows.timeouts.udp, c.flows.fragment_timeout),
        (d(3600), d(10), d(60), d(2))
    );
    let partial = check(&format!("{SEED}\n[flows]\nudp_timeout_secs = 30\n")).unwrap();
    assert_eq!(
        partial.flows,
        Flows { timeouts: crate::flow::Timeouts { udp: d(30), ..Default::default() }, ..Flows::default() }
    );

    let cases: &[(&str, &str)] = &[
        ("capacity = 1000", "flows.capacity: 1000 is out of range 1024..=67108864"),
        ("capacity = 67108865", "flows.capacity: 67108865 is out of range 1024..=67108864"),
        ("capacity = -1", "flows.capacity: -1 is out of range"),
        ("tcp_timeout_secs = 0", "flows.tcp_timeout_secs: 0 is out of range 1..=604800 (seconds)"),
        ("tcp_fin_timeout_secs = 3601", "flows.tcp_fin_timeout_secs: 3601 is out of range 1..=3600"),
        ("udp_timeout_secs = 604801", "flows.udp_timeout_secs: 604801 is out of range 1..=604800"),
        ("fragment_timeout_secs = 61", "flows.fragment_timeout_secs: 61 is out of range 1..=60"),
    ];
    for (line, want) in cases {
        let text = format!("{SEED}\n[flows]\n{line}\n");
        let at = text.lines().position(|l| l == *line).unwrap() + 1;
        let col = line.find('=').unwrap() + 3;
        let e = error(&text);
        assert!(e.contains(&format!("test.toml:{at}:{col}: {want}")), "{line}: {e}");
    }
    // Every problem is reported, not just the first.
    let e = error(&format!("{SEED}\n[flows]\ncapacity = 1\nudp_timeout_secs = 0\n"));
    assert_eq!(e.lines().count(), 2, "{e}");
    let e = error(&format!("{SEED}\n[flows]\ntcp_timeout = 900\n"));
    assert!(e.contains("unknown field `tcp_timeout`"), "{e}");
    let e = error(&format!("{SEED}\n[flows]\ncapacity = \"big\"\n"));
    assert!(e.contains("invalid type"), "{e}");
}

fn announce(section: &str) -> String {
    format!(
        "{HEAD}[announce]\n{section}\n[[service]]\nvip = \"10.201.0.1\"\nprotocol = \"tcp\"\nport = 80\n[[service.backend]]\nip = \"10.0.0.1\"\n"
    )
}

#[test]
fn announce_is_off_without_its_section_and_defaults_with_it() {
    assert_eq!(check(&one_service("port = 80\n[[service.backend]]\nip = \"10.0.0.1\"\n")).unwrap().announce, None);
    let a = check(&announce("")).unwrap().announce.unwrap();
    assert_eq!(a, Announce::default());
    assert_eq!(a.table, None, "routes only when a table is named");
    assert_eq!((a.device.as_str(), a.rise, a.fall), ("maglevd0", 2, 1));
    assert_eq!(
        (a.settle, a.interval, a.drain),
        (Duration::from_secs(5), Duration::from_millis(500), Duration::from_secs(5))
    );
    let a = check(&announce(
        "table = 4711\ndevice = \"vips0\"\nsettle_secs = 0\ninterval_ms = 200\nrise = 3\nfall = 1\ndrain_secs = 12\n\
         state_dir = \"/run/maglevd/vips\"\ndrain_file = \"/etc/maglevd/drain\"",
    ))
    .unwrap()
    .announce
    .unwrap();
    assert_eq!(a.table, Some(4711));
    assert_eq!(a.device, "vips0");
    assert_eq!((a.settle, a.interval, a.rise, a.fall), (Duration::ZERO, Duration::from_millis(200), 3, 1));
    assert_eq!(a.drain, Duration::from_secs(12));
    assert_eq!(a.state_dir.as_deref(), Some(Path::new("/run/maglevd/vips")));
    assert_eq!(a.drain_file.as_deref(), Some(Path::new("/etc/maglevd/drain")));
}

#[test]
fn announce_refuses_what_it_cannot_use_and_names_the_key() {
    for (section, key, says) in [
        ("table = 254", "announce.table", "not a free routing table"),
        ("table = 0", "announce.table", "not a free routing table"),
        ("table = 4294967295", "announce.table", "not a free routing table"),
        ("device = \"a/b\"", "announce.device", "not a valid interface name"),
        ("device = \"sixteen-chars-xx\"", "announce.device", "not a valid interface name"),
        ("interval_ms = 50", "announce.interval_ms", "out of range 100..=60000"),
        ("rise = 0", "announce.rise", "out of range 1..=100"),
        ("fall = 101", "announce.fall", "out of range 1..=100"),
        ("settle_secs = -1", "announce.settle_secs", "out of range 0..=3600"),
        ("drain_secs = 3601", "announce.drain_secs", "out of range 0..=3600"),
        ("state_dir = \"run/vips\"", "announce.state_dir", "not an absolute path"),
        ("drain_file = \"drain\"", "announce.drain_file", "not an absolute path"),
        ("tabel = 4711", "tabel", "unknown field"),
    ] {
        let e = error(&announce(section));
        assert!(e.contains(key) && e.contains(says), "{section}: {e}");
    }
}
