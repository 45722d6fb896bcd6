//! `maglevd bench`: measurements of the three costs that matter for a forwarder.
//!
//! | command | what | needs |
//! |---|---|---|
//! | `bench table` | build time of the Maglev table and of the kernel-compatible `ip_vs_mh` table per backend count ([`table`]) | nothing |
//! | `bench forward` | `dataplane::forward` ns/frame and Mpps over a realistic in-memory mix ([`forward`]) | nothing |
//! | `bench live` | live forwarding through veths in three network namespaces, maglevd's real datapath against the kernel's forwarding in the same run: UDP throughput, loss and one-way latency; `--traffic tcp`: iperf3 bulk TCP; `--traffic http`: wrk against nginx, keep-alive and a connection per request ([`live`]) | root, iproute2, 2 CPUs; iperf3, wrk, nginx for tcp/http |
//!
//! Every command prints a readable report, or one JSON document with `--json`. Pure parts
//! (argument validation, statistics, frames, JSON) are unit-tested; `tests/bench_live.rs` runs
//! the live benchmark end to end.

pub mod forward;
pub mod frames;
pub mod json;
pub mod live;
pub mod netns;
pub mod stats;
pub mod table;

use std::process::ExitCode;

use clap::{Args, Subcommand};

pub use forward::ForwardArgs;
pub use live::LiveArgs;
pub use table::TableArgs;

use crate::io::IoError;

/// Arguments of `maglevd bench`.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct BenchArgs {
    /// Print one JSON document instead of the readable report.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: BenchCommand,
}

/// The benchmarks.
#[derive(Subcommand, Debug, Clone, PartialEq)]
pub enum BenchCommand {
    /// Build time (min/median) of the Maglev table and of the ip_vs_mh table (tab_index 12 and 16)
    /// per backend count.
    Table(TableArgs),
    /// dataplane::forward ns/frame and Mpps over a realistic in-memory mix.
    Forward(ForwardArgs),
    /// Live forwarding through veths in network namespaces (gen -> lb -> sink): maglevd's
    /// datapath vs kernel forwarding on the same topology: UDP throughput, loss and one-way
    /// latency, or (--traffic tcp|http) iperf3 and wrk against nginx. Needs root and iproute2;
    /// removes everything it creates.
    Live(LiveArgs),
}

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Invalid arguments (exit code 2).
    #[error("{0}")]
    Usage(String),
    /// The environment lacks something (root, a tool).
    #[error("{0}")]
    Env(String),
    /// Building the topology or starting a thread failed.
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Io(#[from] IoError),
    /// SIGINT/SIGTERM.
    #[error("interrupted (namespaces removed)")]
    Interrupted,
}

impl BenchError {
    /// Process exit code: 2 for bad arguments, 130 when interrupted, else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            BenchError::Usage(_) => 2,
            BenchError::Interrupted => 130,
            _ => 1,
        }
    }
}

/// Runs the selected benchmark and returns its report (text, or JSON with `--json`).
pub fn run(args: &BenchArgs) -> Result<String, BenchError> {
    let json = args.json;
    let out = match &args.command {
        BenchCommand::Table(a) => {
            let rows = table::measure(a)?;
            if json { table::to_json(&rows, a.repeat).render() } else { table::render(&rows, a.repeat) }
        }
        BenchCommand::Forward(a) => {
            let r = forward::measure(a)?;
            if json { forward::to_json(&r).render() } else { forward::render(&r) }
        }
        BenchCommand::Live(a) => {
            let r = live::measure(a)?;
            if json { live::to_json(&r).render() } else { live::render(&r) }
        }
    };
    Ok(if out.ends_with('\n') { out } else { out + "\n" })
}

/// `maglevd bench …` as a command: prints the report, maps errors to exit codes.
pub fn main(args: &BenchArgs) -> ExitCode {
    match run(args) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// `1.23 ms`, `456.7 µs` or `89 ns`.
pub fn fmt_dur_ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.1} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

/// A CPU share as a percentage, or `n/a`.
pub fn fmt_load(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".into(), |v| format!("{:.1}%", v * 100.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(subcommand)]
        cmd: Top,
    }
    #[derive(Subcommand, Debug)]
    enum Top {
        Bench(BenchArgs),
    }

    fn parse(args: &[&str]) -> Result<BenchArgs, clap::Error> {
        let mut v = vec!["maglevd", "bench"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).map(|c| match c.cmd {
            Top::Bench(b) => b,
        })
    }

    #[test]
    fn cli_defaults() {
        let b = parse(&["table"]).unwrap();
        assert_eq!(
            b.command,
            BenchCommand::Table(TableArgs { size: 65537, backends: "3,100,1000".into(), repeat: 20 })
        );
        assert!(!b.json);
        let b = parse(&["forward", "--json"]).unwrap();
        assert!(b.json);
        assert_eq!(
            b.command,
            BenchCommand::Forward(ForwardArgs {
                seconds: 2.0,
                cpu: None,
                flows: 900,
                no_tracking: false,
                scale: false
            })
        );
        let b = parse(&["live"]).unwrap();
        assert_eq!(b.command, BenchCommand::Live(LiveArgs::default()));
        let b = parse(&["--json", "live", "--seconds", "1", "--repeat", "1", "--probes", "100", "--rx-slots", "64"])
            .unwrap();
        let BenchCommand::Live(l) = b.command else { panic!() };
        assert_eq!((l.seconds, l.repeat, l.probes, l.rx_slots, l.tx_slots), (1.0, 1, 100, 64, 256));
        assert!(parse(&["live", "--flows", "x"]).is_err());
        let b = parse(&["live", "--traffic", "tcp", "--streams", "4"]).unwrap();
        let BenchCommand::Live(l) = b.command else { panic!() };
        assert_eq!((l.traffic, l.streams, l.connections), (live::Traffic::Tcp, 4, 32));
        let b = parse(&["live", "--traffic", "http", "--connections", "64"]).unwrap();
        let BenchCommand::Live(l) = b.command else { panic!() };
        assert_eq!((l.traffic, l.connections), (live::Traffic::Http, 64));
        assert!(parse(&["live", "--traffic", "sctp"]).is_err());
        assert!(parse(&[]).is_err());
    }

    #[test]
    fn usage_errors_exit_2() {
        let b = parse(&["table", "--size", "100"]).unwrap();
        let e = run(&b).unwrap_err();
        assert_eq!(e.exit_code(), 2, "{e}");
        let b = parse(&["live", "--size", "10"]).unwrap();
        assert_eq!(run(&b).unwrap_err().exit_code(), 2);
        assert_eq!(BenchError::Interrupted.exit_code(), 130);
        assert_eq!(BenchError::Env("x".into()).exit_code(), 1);
    }

    #[test]
    fn table_runs_through_the_cli() {
        let b = parse(&["table", "--size", "251", "--backends", "3", "--repeat", "2"]).unwrap();
        let out = run(&b).unwrap();
        assert!(out.contains("maglev") && out.ends_with('\n'), "{out}");
        let b = parse(&["--json", "table", "--size", "251", "--backends", "3", "--repeat", "2"]).unwrap();
        assert!(run(&b).unwrap().starts_with("{\"bench\":\"table\""));
    }

    #[test]
    fn formats() {
        assert_eq!(fmt_dur_ns(89.4), "89 ns");
        assert_eq!(fmt_dur_ns(4567.0), "4.6 µs");
        assert_eq!(fmt_dur_ns(1_234_567.0), "1.23 ms");
        assert_eq!(fmt_load(Some(0.123)), "12.3%");
        assert_eq!(fmt_load(None), "n/a");
    }
}
