//! The command line explains itself: every subcommand has a one-line summary and a longer
//! description, `--help` names RUST_LOG and the exit codes, and `--log-format json` writes one
//! JSON object per log line.

use std::process::Command;

fn maglevd(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_maglevd")).args(args).env("RUST_LOG", "info").output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

const SUBCOMMANDS: &[&str] = &["run", "check", "table", "import-ipvs", "lookup", "status", "drain", "bench"];

#[test]
fn help_names_rust_log_exit_codes_and_every_subcommand() {
    let (code, out, _) = maglevd(&["--help"]);
    assert_eq!(code, Some(0));
    for want in ["RUST_LOG", "Exit codes", "0 success", "2 invalid configuration", "--log-format"] {
        assert!(out.contains(want), "--help lacks {want:?}:\n{out}");
    }
    for sub in SUBCOMMANDS {
        let line = out.lines().find(|l| l.trim_start().starts_with(&format!("{sub} "))).unwrap_or("");
        let summary = line.trim_start().strip_prefix(sub).unwrap_or("").trim();
        assert!(!summary.is_empty() && summary.len() < 70, "{sub}: no one-line summary in --help: {line:?}");
        // The long help has more than the summary.
        let (code, long, _) = maglevd(&[sub, "--help"]);
        assert_eq!(code, Some(0), "{sub} --help");
        let first = long.lines().next().unwrap_or("");
        assert_eq!(first.trim().trim_end_matches('.'), summary, "{sub}: the long help starts with the summary");
        let description = long.split("Usage:").next().unwrap_or("");
        assert!(description.trim().len() > summary.len() + 20, "{sub}: no longer description:\n{long}");
    }
    let (_, run, _) = maglevd(&["run", "--help"]);
    assert!(run.contains("-c, --config <FILE>") && run.contains("configuration file"), "{run}");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let (code, _, err) = maglevd(&["--log-format", "json", "run", "-c", "/nonexistent/maglevd.toml"]);
    assert_eq!(code, Some(2), "{err}");
    let first = err.lines().next().expect("a log line");
    let v: serde_json::Value = serde_json::from_str(first).unwrap_or_else(|e| panic!("{e}: {first}"));
    assert_eq!(v["level"], "INFO", "{v}");
    assert_eq!(v["fields"]["message"], "maglevd starting", "{v}");
    assert_eq!(v["fields"]["config"], "/nonexistent/maglevd.toml", "{v}");
    assert!(v["timestamp"].is_string(), "{v}");
    assert!(err.contains("cannot read the configuration file"), "{err}");
}
