//! The `maglevd` command line: parse arguments, call into the library, map errors to exit codes
//! (0 success, 1 runtime failure, 2 invalid configuration or arguments).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use maglevd::{config, daemon, report};

#[derive(Parser, Debug)]
#[command(name = "maglevd", version, about = "Userspace Maglev L4 load balancer (direct server return)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the load balancer: forward VIP traffic from the ingress to the egress interface.
    /// Needs CAP_NET_RAW (AF_PACKET rings) and CAP_NET_ADMIN (large socket send buffers).
    /// SIGHUP reloads the configuration; SIGTERM stops.
    Run {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Forwarding threads (default: daemon.workers, else one per CPU).
        #[arg(long)]
        workers: Option<usize>,
        /// RX ring slots per worker (each holds one frame of up to 64 KiB).
        #[arg(long, default_value_t = 512)]
        rx_slots: usize,
        /// TX ring slots per worker.
        #[arg(long, default_value_t = 256)]
        tx_slots: usize,
    },
    /// Validate a configuration and print a summary of its services and backends.
    Check {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Print each backend's share of the lookup table; with --compare, how many slots (new flows)
    /// would move from the OTHER configuration to this one: the disruption preview before a change.
    Table {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        #[arg(long, value_name = "OTHER")]
        compare: Option<PathBuf>,
    },
    /// Measure table builds, the packet path in memory, and live forwarding through real interfaces
    Bench(maglevd::bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::Run { config, workers, rx_slots, tx_slots } => {
            let opts = daemon::Options { workers, rx_slots, tx_slots, ..daemon::Options::new(config) };
            match daemon::run(&opts) {
                Ok(()) => ExitCode::SUCCESS,
                Err(daemon::DaemonError::Config(e)) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check { config } => check(&config),
        Command::Table { config, compare } => table(&config, compare.as_deref()),
        Command::Bench(args) => maglevd::bench::main(&args),
    }
}

/// Load a configuration or print why not (exit code 2).
fn load(path: &std::path::Path) -> Result<config::Config, ExitCode> {
    config::load(path).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

fn check(path: &std::path::Path) -> ExitCode {
    let cfg = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    print!("{}", report::summary(&cfg));
    println!("{}: ok", path.display());
    ExitCode::SUCCESS
}

fn table(path: &std::path::Path, compare: Option<&std::path::Path>) -> ExitCode {
    let cfg = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let tables = match report::tables(&cfg) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    let Some(other) = compare else {
        print!("{}", report::shares(&tables));
        return ExitCode::SUCCESS;
    };
    let old_cfg = match load(other) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match report::tables(&old_cfg) {
        Ok(old) => {
            print!("{}", report::compare(&tables, &old));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}: {e}", other.display());
            ExitCode::from(2)
        }
    }
}
