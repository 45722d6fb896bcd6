//! `maglevd import-ipvs` as an operator runs it: every sample ipvsadm output in tests/data/ipvs/
//! becomes a configuration that `maglevd` accepts; for the kernel-verified cases, its tables equal
//! the kernel's slot for slot and `maglevd lookup` names the kernel's backend; broken inputs fail
//! with the line number.

use std::path::{Path, PathBuf};
use std::process::Command;

use maglevd::{config, report};
use serde_json::Value;

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

fn maglevd(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_maglevd")).args(args).output().expect("run maglevd");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// The sample files that are broken (`broken_*`) or not.
fn samples(broken: bool) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(data("ipvs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("broken_") == broken)
        .collect();
    v.sort();
    v
}

#[test]
fn every_good_sample_imports_to_a_valid_config() {
    let all = samples(false);
    assert!(all.len() >= 10, "{all:?}");
    for input in all {
        let (code, toml, err) = maglevd(&["import-ipvs", input.to_str().unwrap()]);
        assert_eq!(code, 0, "{}: {err}", input.display());
        let cfg = config::parse(&toml, &input).unwrap_or_else(|e| panic!("{}: {e}", input.display()));
        assert!(report::tables(&cfg).is_ok(), "{}", input.display());
        if input.to_str().unwrap().ends_with("_save.txt") {
            assert!(err.contains("--nosort"), "a save file must warn that a live host's order is unknown: {err}");
        }
    }
}

#[test]
fn imported_tables_and_lookups_are_the_kernels() {
    let cases: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(data("cases_public.json")).unwrap()).unwrap();
    for (case, files) in [
        ("A_3dests_w1", ["case_a_nosort.txt", "case_a_save.txt"]),
        ("seed_6dests", ["seed_nosort.txt", "seed_save.txt"]),
    ] {
        let case = cases.iter().find(|c| c["name"] == case).unwrap();
        for file in files {
            let out = std::env::temp_dir().join(format!("maglevd-import-{}-{file}.toml", std::process::id()));
            let (code, _, err) =
                maglevd(&["import-ipvs", data(&format!("ipvs/{file}")).to_str().unwrap(), "-o", out.to_str().unwrap()]);
            assert_eq!(code, 0, "{file}: {err}");
            let cfg = config::load(&out).unwrap();
            let tables = report::tables(&cfg).unwrap();
            let want: Vec<u32> = case["table"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap() as u32).collect();
            assert_eq!(tables[0].table.slots(), &want[..], "{file}");
            let svc = case["ipvsadm"][0].as_str().unwrap().split_whitespace().nth(3).unwrap();
            for l in case["lookups"].as_array().unwrap().iter().take(8) {
                let client = format!("{}:{}", l["client_addr"].as_str().unwrap(), l["client_port"]);
                let (code, stdout, err) =
                    maglevd(&["lookup", "-c", out.to_str().unwrap(), "--service", svc, "--client", &client]);
                assert_eq!(code, 0, "{err}");
                // An ipvs-mh backend is named IP:port.
                let dest = &case["dests"][l["dest_no_flags"].as_u64().unwrap() as usize];
                let want = format!("{}:{}", dest["addr"].as_str().unwrap(), dest["port"]);
                assert_eq!(stdout.trim(), want, "{file}: client {client}");
            }
            let _ = std::fs::remove_file(out);
        }
    }
}

#[test]
fn broken_inputs_name_the_line() {
    let broken = samples(true);
    assert!(broken.len() >= 5);
    for input in broken {
        let (code, _, err) = maglevd(&["import-ipvs", input.to_str().unwrap()]);
        assert_eq!(code, 2, "{}: {err}", input.display());
        assert!(err.starts_with(&format!("error: {}: line ", input.display())), "{}: {err}", input.display());
    }
    let (code, _, err) = maglevd(&["import-ipvs", "/nonexistent/ipvs.txt"]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/ipvs.txt: cannot read"), "{err}");
    let (code, _, err) = maglevd(&["import-ipvs", data("ipvs/seed_nosort.txt").to_str().unwrap(), "--tab-index", "18"]);
    assert_eq!(code, 2, "{err}");
}

/// IPVS lets one service have dests on the same IP with different ports (`-r 10.0.2.1:8080` and
/// `-r 10.0.2.1:8081`); in an ipvs-mh service a backend is (IP, port). The import must give a
/// configuration that `check` accepts, whose `table --dump` is the kernel's table with both
/// ports, and whose `lookup` names the kernel's `IP:port`.
#[test]
fn a_dest_ip_on_two_ports_round_trips_through_check_table_and_lookup() {
    use maglevd::ipvs_mh::{self, Family, MhDest, MhFlags};
    // Kernel order of both sample files (the save file restores to it).
    let kernel: Vec<(&str, u16)> = vec![("10.0.2.2", 8080), ("10.0.2.1", 8081), ("10.0.2.1", 8080)];
    let dests: Vec<MhDest> = kernel.iter().map(|(a, p)| MhDest::new(a.parse().unwrap(), *p, 1)).collect();
    let want = ipvs_mh::build(Family::Inet, &dests, 12).unwrap();
    let label = |i: u32| format!("{}:{}", kernel[i as usize].0, kernel[i as usize].1);
    for file in ["two_ports_nosort.txt", "two_ports_save.txt"] {
        let out = std::env::temp_dir().join(format!("maglevd-import-{}-{file}.toml", std::process::id()));
        let out_s = out.to_str().unwrap();
        let (code, _, err) = maglevd(&["import-ipvs", data(&format!("ipvs/{file}")).to_str().unwrap(), "-o", out_s]);
        assert_eq!(code, 0, "{file}: {err}");
        let (code, summary, err) = maglevd(&["check", "-c", out_s]);
        assert_eq!(code, 0, "{file}: {err}");
        assert!(summary.contains("backends 3"), "{summary}");

        let (code, dump, err) = maglevd(&["table", "-c", out_s, "--dump"]);
        assert_eq!(code, 0, "{file}: {err}");
        let lines: Vec<&str> = dump.lines().skip(1).collect();
        assert_eq!(lines.len(), want.size() as usize, "{file}");
        for (slot, (line, &owner)) in lines.iter().zip(want.slots()).enumerate() {
            assert_eq!(*line, format!("{slot} {}", label(owner)), "{file}");
        }
        assert!(dump.contains(" 10.0.2.1:8080\n") && dump.contains(" 10.0.2.1:8081\n"), "{file}");

        let flags = MhFlags { mh_port: true, mh_fallback: false };
        for i in 0..24u16 {
            let client = format!("192.0.2.{}:{}", 1 + i * 7, 30000 + i * 977);
            let addr: std::net::SocketAddr = client.parse().unwrap();
            let expect = want.lookup(&dests, addr.ip(), addr.port(), flags, true).unwrap();
            let (code, stdout, err) =
                maglevd(&["lookup", "-c", out_s, "--service", "10.201.0.1:80", "--client", &client]);
            assert_eq!(code, 0, "{err}");
            assert_eq!(stdout.trim(), label(expect as u32), "{file}: client {client}");
        }
        let _ = std::fs::remove_file(out);
    }
}

/// Input whose every service is skipped (here a fwmark service only) has nothing to import: a
/// user error (exit code 2) that says why, not a "maglevd bug" (exit code 1).
#[test]
fn input_with_no_importable_service_is_a_user_error() {
    let input = std::env::temp_dir().join(format!("maglevd-import-{}-fwmark-only.txt", std::process::id()));
    std::fs::write(
        &input,
        "IP Virtual Server version 1.2.1 (size=4096)\nProt LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\nFWM  7 mh\n  -> 10.0.2.1:0                   Route   1      0          0         \n",
    )
    .unwrap();
    let (code, stdout, err) = maglevd(&["import-ipvs", input.to_str().unwrap()]);
    let _ = std::fs::remove_file(&input);
    assert_eq!(code, 2, "{err}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(!err.contains("bug"), "{err}");
    assert!(err.contains("no service to import") && err.contains("fwmark 7"), "{err}");
}
