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
                let want = case["dests"][l["dest_no_flags"].as_u64().unwrap() as usize]["addr"].as_str().unwrap();
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
