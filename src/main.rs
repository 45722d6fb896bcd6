//! The `maglevd` command line: parse arguments, call into the library, map errors to exit codes
//! (0 success, 1 runtime failure, 2 invalid configuration or arguments).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use maglevd::{config, report};

#[derive(Parser, Debug)]
#[command(name = "maglevd", version, about = "Userspace Maglev L4 load balancer (direct server return)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Table { config, compare } => table(&config, compare.as_deref()),
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
