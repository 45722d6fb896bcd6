//! `maglevd::ipvs_import` against ipvsadm output samples (`tests/data/ipvs/`, see its README) and
//! the kernel-verified cases of `tests/data/cases_public.json`: an imported listing must rebuild
//! the case's table slot for slot.

use maglevd::ipvs_import::{self, Forward, Import, InputFormat, Proto, TomlOptions};
use maglevd::ipvs_mh::{self, Family, MhDest, MhFlags, NO_DEST};
use proptest::prelude::*;
use serde::Deserialize;
use std::net::IpAddr;

#[derive(Debug, Deserialize)]
struct Case {
    name: String,
    af: String,
    tab_index: u8,
    ipvsadm: Vec<String>,
    dests: Vec<CaseDest>,
    table: Vec<i64>,
}

#[derive(Debug, Deserialize, PartialEq, Eq)]
struct CaseDest {
    addr: IpAddr,
    port: u16,
    weight: i32,
    last_weight: i32,
}

fn cases() -> Vec<Case> {
    serde_json::from_str(include_str!("data/cases_public.json")).expect("cases_public.json parses")
}

fn case(name: &str) -> Case {
    cases().into_iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no case {name}"))
}

fn sample(name: &str) -> String {
    let path = format!("{}/tests/data/ipvs/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn import(name: &str) -> Import {
    let text = sample(name);
    let format = ipvs_import::detect(&text).unwrap_or_else(|| panic!("{name}: format not detected"));
    ipvs_import::parse(&text, format).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn table_of(family: Family, dests: &[MhDest], tab_index: u8) -> Vec<i64> {
    let t = ipvs_mh::build(family, dests, tab_index).expect("table builds");
    t.slots().iter().map(|&s| if s == NO_DEST { -1 } else { i64::from(s) }).collect()
}

fn as_case_dests(dests: &[MhDest]) -> Vec<CaseDest> {
    dests
        .iter()
        .map(|d| CaseDest { addr: d.addr, port: d.port, weight: d.weight, last_weight: d.last_weight })
        .collect()
}

/// The case's table from the one imported service of `file`.
fn assert_reproduces(file: &str, c: &Case) {
    let imp = import(file);
    let svcs: Vec<_> = imp.imported().collect();
    assert_eq!(svcs.len(), 1, "{file}");
    let s = svcs[0];
    let family = if c.af == "inet" { Family::Inet } else { Family::Inet6 };
    assert_eq!(s.family(), family);
    let dests = s.mh_dests();
    assert_eq!(as_case_dests(&dests), c.dests, "{file}: dests in kernel order");
    let got = table_of(family, &dests, c.tab_index);
    assert_eq!(got.len(), c.table.len());
    let diff = got.iter().zip(&c.table).filter(|(a, b)| a != b).count();
    assert_eq!(diff, 0, "{file}: {diff} slots differ from case {}", c.name);
}

fn line_of(imp: &Import, needle: &str) -> bool {
    imp.warnings.iter().any(|w| w.contains(needle))
}

// ---------------------------------------------------------------------------------------------
// The public cases, both formats

#[test]
fn list_nosort_reproduces_public_cases() {
    assert_reproduces("case_a_nosort.txt", &case("A_3dests_w1"));
    assert_reproduces("seed_nosort.txt", &case("seed_6dests"));
    // Exact, DR-only, non-zero weights and kernel (descending) order: nothing to warn about.
    assert!(import("seed_nosort.txt").warnings.is_empty(), "{:?}", import("seed_nosort.txt").warnings);
    assert!(import("case_a_nosort.txt").warnings.is_empty());
}

#[test]
fn save_is_replayed_in_reverse_file_order() {
    // The save file lists .1, .2, .3; restore adds them in that order, each at the list head:
    // kernel order [.3, .2, .1], which is case A's order.
    let text = sample("case_a_save.txt");
    let file_order: Vec<&str> = text.lines().filter(|l| l.starts_with("-a")).collect();
    assert!(file_order[0].contains("10.0.0.1:80") && file_order[2].contains("10.0.0.3:80"));
    assert_reproduces("case_a_save.txt", &case("A_3dests_w1"));
    assert_reproduces("seed_save.txt", &case("seed_6dests"));
    let imp = import("seed_save.txt");
    assert_eq!(imp.format, InputFormat::Save);
    assert_eq!(imp.file_warnings.len(), 1);
    assert!(imp.warnings[0].contains("ipvsadm-save sorts") && imp.warnings[0].contains("ipvsadm -Ln --nosort"));
    // The service line numbers: -A on line 1, the head dest (.253) is the last -a, line 7.
    let s = imp.imported().next().unwrap();
    assert_eq!(s.line, 1);
    assert_eq!((s.dests[0].line, s.dests[5].line), (7, 2));
}

#[test]
fn case_command_sequences_replay_to_the_case_state() {
    // The cases' own `ipvsadm …` command lists are restore input too (ipvsadm -R drops the word
    // `ipvsadm`): replaying them gives the kernel's list and weights exactly.
    for c in cases() {
        let text = c.ipvsadm.join("\n");
        assert_eq!(ipvs_import::detect(&text), Some(InputFormat::Save), "{}", c.name);
        let imp = ipvs_import::parse(&text, InputFormat::Save).unwrap();
        let s = imp.imported().next().unwrap();
        let dests = s.mh_dests();
        assert_eq!(as_case_dests(&dests), c.dests, "{}", c.name);
        assert_eq!(table_of(s.family(), &dests, c.tab_index), c.table, "{}", c.name);
    }
}

#[test]
fn replay_follows_edit_delete_and_readd_rules() {
    let text = "\
ipvsadm -A -t 10.0.0.100:80 -s mh
ipvsadm -a -t 10.0.0.100:80 -r 10.0.0.1:80 -g -w 5
ipvsadm -a -t 10.0.0.100:80 -r 10.0.0.2 -g -w 3   # no port: the service port
ipvsadm -a -t 10.0.0.100:80 -r 10.0.0.3:80 -g -w 1
ipvsadm -e -t 10.0.0.100:80 -r 10.0.0.1:80 -g -w 0
ipvsadm -d -t 10.0.0.100:80 -r 10.0.0.3:80
ipvsadm -a -t 10.0.0.100:80 -r 10.0.0.3:80 -g -w 1
ipvsadm -e -t 10.0.0.100:80 -r 10.0.0.2:80
";
    let imp = ipvs_import::parse(text, InputFormat::Save).unwrap();
    let s = imp.imported().next().unwrap();
    let got: Vec<(String, u32, u32)> = s.dests.iter().map(|d| (d.addr.to_string(), d.weight, d.last_weight)).collect();
    assert_eq!(
        got,
        [
            ("10.0.0.3".to_string(), 1, 1), // deleted and re-added: head again
            ("10.0.0.2".to_string(), 1, 1), // -e without -w sets ipvsadm's default weight 1
            ("10.0.0.1".to_string(), 0, 5), // drained: keeps last_weight 5, no guess needed
        ]
    );
    assert!(s.dests.iter().all(|d| d.last_weight_known && d.port == 80));
    assert!(!line_of(&imp, "weight 0"), "{:?}", imp.warnings);
}

// ---------------------------------------------------------------------------------------------
// Weights, flags, IPv6, mixed services

#[test]
fn drained_dest_is_warned_and_last_weight_is_conservative() {
    // ipvs_mh §9: draining with `-e -w 0` keeps the table (case drain_edit_to_zero = seed table).
    let seed = case("seed_6dests");
    let imp = import("drained_nosort.txt");
    let s = imp.imported().next().unwrap();
    let d = &s.dests[3];
    assert_eq!(
        (d.addr.to_string().as_str(), d.weight, d.last_weight, d.last_weight_known),
        ("10.200.0.250", 0, 0, false)
    );
    assert_eq!(d.line, 8);
    assert_eq!(imp.warnings.len(), 1, "{:?}", imp.warnings);
    assert!(imp.warnings[0].starts_with("line 8: 10.201.0.1:80/tcp backend 10.200.0.250:80: weight 0"));
    let mut dests = s.mh_dests();
    assert_ne!(table_of(Family::Inet, &dests, 12), seed.table, "last_weight 0 gives .250 no slots");
    // What the warning asks the operator to do if it was drained: the seed's table again.
    dests[3].last_weight = 1;
    assert_eq!(table_of(Family::Inet, &dests, 12), seed.table);
    let toml = ipvs_import::to_toml(&imp, "net1", "net2");
    assert!(toml.contains("last_weight = 0   # set to the pre-drain weight"), "{toml}");
    // Save format: same conservative reading, with the restore-specific explanation.
    let imp = import("drained_save.txt");
    let d = imp.imported().next().unwrap().dests.iter().find(|d| d.weight == 0).unwrap().clone();
    assert_eq!((d.last_weight, d.last_weight_known, d.line), (0, false, 4));
    assert!(line_of(&imp, "a host restored from this file gives it no slots"));
}

#[test]
fn mh_flags_both_spellings() {
    let both = MhFlags { mh_port: true, mh_fallback: true };
    for f in ["ipv6_nosort.txt", "ipv6_save.txt", "old_flags_nosort.txt", "old_flags_save.txt"] {
        let imp = import(f);
        assert_eq!(imp.imported().next().unwrap().flags, both, "{f}");
    }
    let imp = import("tun_info_nosort.txt");
    let s = imp.imported().next().unwrap();
    assert_eq!(s.flags, MhFlags { mh_port: false, mh_fallback: true });
    assert_eq!(s.dests[0].forward, Forward::Tunnel);
    assert!(line_of(&imp, "Tunnel (-i)"));
}

#[test]
fn ipv6_services() {
    for f in ["ipv6_nosort.txt", "ipv6_save.txt"] {
        let imp = import(f);
        let svcs: Vec<_> = imp.imported().collect();
        assert_eq!(svcs.len(), 2, "{f}");
        let s = svcs[0];
        assert_eq!(s.label(), "[2001:db8::100]:80/tcp");
        assert_eq!(s.family(), Family::Inet6);
        let order: Vec<String> = s.dests.iter().map(|d| d.addr.to_string()).collect();
        assert_eq!(order, ["2001:db8::13", "2001:db8::12", "2001:db8::11"], "{f}");
        let t = ipvs_mh::build(Family::Inet6, &s.mh_dests(), 12).unwrap();
        assert!(t.slots().iter().all(|&x| x < 3));
        assert_eq!((svcs[1].protocol, svcs[1].port), (Proto::Udp, 53));
        assert_eq!(svcs[1].dests.iter().map(|d| d.last_weight).collect::<Vec<_>>().len(), 2);
    }
    // The UDP service's two dests are in ipvsadm's sort order: the --nosort reminder fires (List
    // only: a save file is always sorted).
    let imp = import("ipv6_nosort.txt");
    assert!(imp.warnings.iter().any(|w| w.contains("[2001:db8::100]:53/udp") && w.contains("--nosort")));
    assert!(!import("ipv6_save.txt").warnings.iter().any(|w| w.contains("sort order")));
}

#[test]
fn mixed_services_policies() {
    for f in ["mixed_nosort.txt", "mixed_save.txt"] {
        let imp = import(f);
        assert_eq!(imp.services.len(), 12, "{f}");
        let imported: Vec<String> = imp.imported().map(|s| s.label()).collect();
        let mut want = vec![
            "10.201.0.1:80/tcp",
            "10.201.0.1:443/tcp",
            "10.201.0.2:53/udp",
            "10.201.0.8:80/tcp",
            "10.201.0.9:53/udp",
        ];
        let mut got = imported.clone();
        got.sort();
        want.sort_unstable();
        assert_eq!(got, want, "{f}");
        let skipped = |label: &str| {
            imp.services.iter().find(|s| s.label() == label).and_then(|s| s.skipped.clone()).unwrap_or_default()
        };
        assert!(skipped("10.201.0.3:80/tcp").contains("`rr` is not `mh`"), "{f}");
        assert!(skipped("10.201.0.4:80/tcp").contains("`wlc`"));
        assert!(skipped("10.201.0.5:80/tcp").contains("`sh`"));
        assert!(skipped("10.201.0.6:3868/sctp").contains("SCTP"));
        assert!(skipped("10.201.0.7:0/tcp").contains("port 0"));
        assert!(skipped("fwmark 7").contains("firewall-mark"));
        assert!(skipped("fwmark 8 (IPv6)").contains("firewall-mark"));
        // Warnings, each naming line and service.
        for needle in [
            "10.201.0.1:80/tcp backend 10.200.0.11:80: forwarding method Masq",
            "10.201.0.1:80/tcp backend 10.200.0.10:80: weight 0",
            "10.201.0.1:443/tcp: persistent (timeout 300s, mask 255.255.255.0)",
            "10.201.0.2:53/udp: one-packet scheduling",
            "10.201.0.8:80/tcp backend 10.200.0.91:8080: port 8080 differs from the service port 80",
            "10.201.0.9:53/udp: no destinations",
            "fwmark 7: not imported",
        ] {
            assert!(
                imp.warnings.iter().any(|w| w.starts_with("line ") && w.contains(needle)),
                "{f}: {needle}\n{:#?}",
                imp.warnings
            );
        }
        let s = imp.imported().find(|s| s.label() == "10.201.0.1:80/tcp").unwrap();
        assert_eq!(s.flags, MhFlags { mh_port: true, mh_fallback: false });
        let w: Vec<(u32, u32)> = s.dests.iter().map(|d| (d.weight, d.last_weight)).collect();
        assert_eq!(w, [(2, 2), (1, 1), (0, 0)], "{f}");
        let s = imp.imported().find(|s| s.label() == "10.201.0.8:80/tcp").unwrap();
        assert_eq!(s.dests.iter().map(|d| d.port).collect::<Vec<_>>(), [8080, 80], "printed port kept");
    }
    assert!(line_of(&import("mixed_save.txt"), "ipvsadm-restore of this file would store the service port"));
}

// ---------------------------------------------------------------------------------------------
// Errors

fn parse_err(name: &str, format: InputFormat) -> ipvs_import::ImportError {
    match ipvs_import::parse(&sample(name), format) {
        Ok(i) => panic!("{name} parsed: {i:?}"),
        Err(e) => e,
    }
}

#[test]
fn errors_name_the_line() {
    use InputFormat::{List, Save};
    for (file, format, line, needle) in [
        ("broken_truncated_nosort.txt", List, 9, "truncated destination line"),
        ("broken_dest_before_service_nosort.txt", List, 4, "destination line before any service"),
        ("broken_bad_address_nosort.txt", List, 7, "`10.200.0.351` is not an IPv4 address"),
        ("broken_stats_list.txt", List, 2, "unknown columns"),
        ("broken_hostnames_list.txt", List, 4, "run ipvsadm with -n"),
        ("broken_dest_before_service_save.txt", Save, 1, "no `-A` line for it"),
        ("broken_truncated_save.txt", Save, 7, "needs a value (truncated line?)"),
        ("broken_bad_address_save.txt", Save, 4, "`10.200.0.2500` is not an IPv4 address"),
    ] {
        let e = parse_err(file, format);
        assert_eq!(e.line, line, "{file}: {e}");
        assert!(e.message.contains(needle), "{file}: {e}");
        let text = sample(file);
        assert_eq!(e.text, text.lines().nth(line - 1).unwrap().trim(), "{file}");
        assert!(e.to_string().starts_with(&format!("line {line}: ")));
    }
}

#[test]
fn more_errors() {
    use InputFormat::{List, Save};
    let cases: &[(&str, InputFormat, usize, &str)] = &[
        ("", List, 1, "empty"),
        ("   \n\n", Save, 1, "empty"),
        ("TCP  10.0.0.1:80\n", List, 1, "no scheduler"),
        ("TCP  10.0.0.1:80 mh (mh-port\n", List, 1, "(flag,flag)"),
        ("TCP  10.0.0.1:80 mh (sh-port)\n", List, 1, "does not apply"),
        ("TCP  10.0.0.1:80 mh bogus\n", List, 1, "unexpected `bogus`"),
        ("TCP  10.0.0.1:80 mh\nTCP  10.0.0.1:80 mh\n", List, 2, "listed twice"),
        ("TCP  10.0.0.1:80 mh\n  -> 10.0.0.2:80 Route 1 0 0\n  -> 10.0.0.2:80 Route 1 0 0\n", List, 3, "listed twice"),
        ("TCP  10.0.0.1:80 mh\n  -> 10.0.0.2:80 Bridge 1 0 0\n", List, 2, "unknown forwarding method"),
        ("TCP  10.0.0.1:80 mh\n  -> 10.0.0.2:80 Route -1 0 0\n", List, 2, "negative"),
        ("TCP  10.0.0.1:80 mh\n  -> 10.0.0.2:80 Route 1 0 0 7\n", List, 2, "unknown columns"),
        ("TCP  10.0.0.1:80 mh\n  -> [2001:db8::2]:80 Route 1 0 0\n", List, 2, "another address family"),
        ("IP Virtual Server version 1.2.1 (size=4096)\nTCP  10.0.0.1:80 mh\n", List, 2, "column titles"),
        ("IP Virtual Server version 1.2.1 (size=4096)\n", List, 1, "truncated"),
        ("hello\n", List, 1, "unrecognised line"),
        ("-A -t 10.0.0.1:80 -s mh\n-A -t 10.0.0.1:80 -s mh\n", Save, 2, "added twice"),
        ("-A -t 10.0.0.1 -s mh\n", Save, 1, "Zero port"),
        ("-A -t 10.0.0.1:80 -s mh -o\n", Save, 1, "One-Packet"),
        ("-A -t 10.0.0.1:80 -s rr -b mh-port\n", Save, 1, "does not apply"),
        ("-A -t 10.0.0.1:80 -s mh -w 3\n", Save, 1, "illegal with -A"),
        ("-A -t 10.0.0.1:80 -s mh\n-a -t 10.0.0.1:80 -r 10.0.0.2 -g -g\n", Save, 2, "multiple"),
        ("-A -t 10.0.0.1:80 -s mh\n-a -t 10.0.0.1:80 -r 10.0.0.2 -w 70000x\n", Save, 2, "not a number"),
        ("-A -t 10.0.0.1:80 -s mh\n-e -t 10.0.0.1:80 -r 10.0.0.2 -w 1\n", Save, 2, "does not exist"),
        ("-A -t 10.0.0.1:80 -s mh\n-a -t 10.0.0.1:80 -r 10.0.0.2 --tun-type gue\n", Save, 2, "need -i"),
        ("-A -t 10.0.0.1:80 -s mh --frobnicate\n", Save, 1, "unknown option"),
        ("-L -n\n", Save, 1, "not a rule"),
        ("TCP  10.0.0.1:80 mh\n", Save, 1, "unexpected argument `TCP`"),
    ];
    for &(text, format, line, needle) in cases {
        let e = ipvs_import::parse(text, format).expect_err(text);
        assert_eq!(e.line, line, "{text:?}: {e}");
        assert!(e.message.contains(needle), "{text:?}: {e}");
    }
}

#[test]
fn detect_formats() {
    for (f, want) in [
        ("seed_nosort.txt", InputFormat::List),
        ("seed_save.txt", InputFormat::Save),
        ("broken_stats_list.txt", InputFormat::List),
    ] {
        assert_eq!(ipvs_import::detect(&sample(f)), Some(want), "{f}");
    }
    assert_eq!(ipvs_import::detect("TCP  10.0.0.1:80 mh\n"), Some(InputFormat::List));
    assert_eq!(ipvs_import::detect("# saved\n\nipvsadm -A -t 10.0.0.1:80\n"), Some(InputFormat::Save));
    assert_eq!(ipvs_import::detect("--add-service --tcp-service=10.0.0.1:80\n"), Some(InputFormat::Save));
    assert_eq!(ipvs_import::detect(""), None);
    assert_eq!(ipvs_import::detect("hello world\n"), None);
}

#[test]
fn save_accepts_restore_syntax() {
    let text = "\
# written by hand
--add-service --tcp-service=10.0.0.1:80 --scheduler mh --sched-flags mh-port
--add-server --tcp-service 10.0.0.1:80 --real-server 10.0.0.2:80 --gatewaying --weight=4 -x 100 -y 10
-a -t 10.0.0.1:80 -r 10.0.0.3:80 -i -w 1 --tun-type gue --tun-port 6080 --tun-nocsum
-A -t 10.0.0.1:443 -s mh -p -b mh-fallback
--set 900 120 300
";
    let imp = ipvs_import::parse(text, InputFormat::Save).unwrap();
    let svcs: Vec<_> = imp.imported().collect();
    assert_eq!(svcs.len(), 2);
    assert_eq!(
        svcs[0].dests.iter().map(|d| (d.weight, d.forward)).collect::<Vec<_>>(),
        [(1, Forward::Tunnel), (4, Forward::Route)]
    );
    assert_eq!(svcs[1].persistence.as_ref().map(|p| p.timeout), Some(300));
    assert!(svcs[1].flags.mh_fallback);
    assert!(line_of(&imp, "thresholds (-x/-y) ignored"));
    assert!(line_of(&imp, "line 6: `--set` ignored"));
}

// ---------------------------------------------------------------------------------------------
// TOML output

fn toml_of(imp: &Import) -> toml::Value {
    let text = ipvs_import::to_toml(imp, "net1", "net2");
    toml::from_str(&text).unwrap_or_else(|e| panic!("generated TOML does not parse: {e}\n{text}"))
}

#[test]
fn toml_for_the_seed() {
    let imp = import("seed_nosort.txt");
    let text = ipvs_import::to_toml(&imp, "net1", "net2");
    assert!(text.contains("--nosort") && text.contains("grep IP_VS_MH_TAB_INDEX /boot/config-$(uname -r)"));
    assert!(text.contains("KERNEL LIST ORDER"));
    let v = toml_of(&imp);
    assert_eq!(v["interfaces"]["ingress"].as_str(), Some("net1"));
    assert_eq!(v["interfaces"]["egress"].as_str(), Some("net2"));
    let svcs = v["service"].as_array().unwrap();
    assert_eq!(svcs.len(), 1);
    let s = &svcs[0];
    assert_eq!(s["name"].as_str(), Some("10.201.0.1:80/tcp"));
    assert_eq!(s["vip"].as_str(), Some("10.201.0.1"));
    assert_eq!(s["protocol"].as_str(), Some("tcp"));
    assert_eq!(s["port"].as_integer(), Some(80));
    assert_eq!(s["algorithm"].as_str(), Some("ipvs-mh"));
    assert_eq!(s["ipvs_tab_index"].as_integer(), Some(12));
    assert_eq!(s["ipvs_flags"].as_array().map(Vec::len), Some(0));
    let keys: Vec<&str> = s.as_table().unwrap().keys().map(String::as_str).collect();
    let mut keys = keys;
    keys.sort_unstable();
    assert_eq!(keys, ["algorithm", "backend", "ipvs_flags", "ipvs_tab_index", "name", "port", "protocol", "vip"]);
    let b = s["backend"].as_array().unwrap();
    let ips: Vec<&str> = b.iter().map(|b| b["ip"].as_str().unwrap()).collect();
    assert_eq!(ips, ["10.200.0.253", "10.200.0.252", "10.200.0.251", "10.200.0.250", "10.200.0.249", "10.200.0.248"]);
    for b in b {
        let mut keys: Vec<&str> = b.as_table().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["ip", "last_weight", "port", "weight"]);
        assert_eq!(
            (b["port"].as_integer(), b["weight"].as_integer(), b["last_weight"].as_integer()),
            (Some(80), Some(1), Some(1))
        );
    }
}

#[test]
fn toml_for_mixed_ipv6_and_options() {
    let imp = import("mixed_nosort.txt");
    let v = toml_of(&imp);
    let svcs = v["service"].as_array().unwrap();
    let names: Vec<&str> = svcs.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["10.201.0.1:80/tcp", "10.201.0.1:443/tcp", "10.201.0.2:53/udp", "10.201.0.8:80/tcp", "10.201.0.9:53/udp"]
    );
    let flags = |i: usize| -> Vec<&str> {
        svcs[i]["ipvs_flags"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect()
    };
    assert_eq!(flags(0), ["mh-port"]);
    assert_eq!(flags(2), ["mh-fallback", "mh-port"]);
    assert_eq!(svcs[2]["protocol"].as_str(), Some("udp"));
    assert!(svcs[4].get("backend").is_none());
    let b = svcs[0]["backend"].as_array().unwrap();
    assert_eq!(b[2]["weight"].as_integer(), Some(0));
    assert_eq!(b[2]["last_weight"].as_integer(), Some(0));
    let text = ipvs_import::to_toml(&imp, "net1", "net2");
    assert!(text.contains("# NOT IMPORTED:"));
    assert!(text.contains("# WARNING: forwarding method Masq"));
    assert!(text.lines().all(|l| l.chars().count() <= 110 || !l.starts_with('#')), "comments are wrapped");

    let v = toml_of(&import("ipv6_nosort.txt"));
    let s = &v["service"][0];
    assert_eq!(s["name"].as_str(), Some("[2001:db8::100]:80/tcp"));
    assert_eq!(s["vip"].as_str(), Some("2001:db8::100"));
    assert_eq!(s["backend"][0]["ip"].as_str(), Some("2001:db8::13"));

    // Override of the table index, and odd interface names are escaped.
    let opts = TomlOptions { ingress: "we\"ird\\".into(), egress: "net2".into(), tab_index: Some(8) };
    let text = ipvs_import::to_toml_with(&import("seed_save.txt"), &opts).unwrap();
    let v: toml::Value = toml::from_str(&text).unwrap();
    assert_eq!(v["service"][0]["ipvs_tab_index"].as_integer(), Some(8));
    assert_eq!(v["interfaces"]["ingress"].as_str(), Some("we\"ird\\"));
    assert!(text.contains("M = 251") && text.contains("ipvsadm-save file"));
    let bad = TomlOptions { tab_index: Some(18), ..opts };
    assert!(ipvs_import::to_toml_with(&import("seed_save.txt"), &bad).is_err());
}

// ---------------------------------------------------------------------------------------------
// Never panics

fn mutate(text: &str, cut: usize, len: usize, insert: &str) -> String {
    let bytes = text.as_bytes();
    let cut = cut % (bytes.len() + 1);
    let end = (cut + len).min(bytes.len());
    let mut out = bytes[..cut].to_vec();
    out.extend_from_slice(insert.as_bytes());
    out.extend_from_slice(&bytes[end..]);
    String::from_utf8_lossy(&out).into_owned()
}

const SAMPLES: [&str; 6] = [
    "seed_nosort.txt",
    "mixed_nosort.txt",
    "ipv6_nosort.txt",
    "mixed_save.txt",
    "ipv6_save.txt",
    "tun_info_nosort.txt",
];

fn check_no_panic(text: &str) {
    for format in [InputFormat::List, InputFormat::Save] {
        let _ = ipvs_import::detect(text);
        if let Ok(imp) = ipvs_import::parse(text, format) {
            let out = ipvs_import::to_toml(&imp, "net1", "net2");
            assert!(toml::from_str::<toml::Value>(&out).is_ok(), "invalid TOML for input {text:?}:\n{out}");
            for s in imp.imported() {
                let _ = ipvs_mh::build(s.family(), &s.mh_dests(), 8);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn mutated_samples_never_panic(which in 0..SAMPLES.len(), cut in 0usize..4000, len in 0usize..40,
                                   insert in "[ -~\\n\\t\\[\\]():,\u{e9}\u{7}]{0,12}") {
        check_no_panic(&mutate(&sample(SAMPLES[which]), cut, len, &insert));
    }

    #[test]
    fn token_soup_never_panics(toks in proptest::collection::vec(prop_oneof![
        Just("TCP"), Just("UDP"), Just("FWM"), Just("->"), Just("-A"), Just("-a"), Just("-e"), Just("-d"),
        Just("-t"), Just("-f"), Just("-6"), Just("-r"), Just("-w"), Just("-p"), Just("-b"), Just("mh"),
        Just("Route"), Just("Masq"), Just("persistent"), Just("mask"), Just("(mh-port)"), Just("0"), Just("1"),
        Just("10.0.0.1:80"), Just("[2001:db8::1]:80"), Just("10.0.0.2"), Just("mh-fallback,flag-3"), Just("\n"),
        Just("IPv6"), Just("ops"), Just("#"), Just("ipvsadm"), Just("-s"), Just("99999999999")], 0..40)) {
        check_no_panic(&toks.join(" "));
    }
}
