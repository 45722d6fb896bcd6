//! The `maglevd` command line: parse arguments, call into the library, map errors to exit codes
//! (0 success, 1 runtime failure, 2 invalid configuration or arguments).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use maglevd::{config, daemon, report};

#[derive(Parser, Debug)]
#[command(
    name = "maglevd",
    version,
    about = "Userspace Maglev L4 load balancer (direct server return)",
    long_about = "Userspace Maglev L4 load balancer for direct server return: replaces IPVS (ipvsadm -s mh, \
                  direct routing) on the frontends of an anycast/ECMP VIP.",
    after_long_help = "Logs go to standard error. RUST_LOG sets what is logged (default \"info\"; e.g. \
                       RUST_LOG=debug, RUST_LOG=maglevd=debug,warn); --log-format json writes one JSON \
                       object per line for log shippers.\n\n\
                       Exit codes: 0 success; 1 runtime failure (an interface, a capability, a socket); \
                       2 invalid configuration or arguments."
)]
struct Cli {
    /// Log line format on standard error.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines (colored on a terminal).
    Text,
    /// One JSON object per line (timestamp, level, target, fields).
    Json,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum ImportFormat {
    /// `ipvsadm -Ln --nosort` (the kernel's true destination order)
    List,
    /// `ipvsadm-save -n` / `ipvsadm -Sn` (sorted: the order of a live host cannot be read from it)
    Save,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LookupProtocol {
    Tcp,
    Udp,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the load balancer.
    ///
    /// Forwards VIP traffic from the ingress to the egress interface, resolves backend MACs by ARP
    /// and serves /metrics and /healthz. Needs CAP_NET_RAW (AF_PACKET rings) and CAP_NET_ADMIN
    /// (large socket send buffers), never root. SIGHUP reloads the configuration (as does a change
    /// of the file seen by the periodic check); SIGTERM stops.
    Run {
        /// The configuration file (TOML; see config/maglevd.toml).
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
    /// Validate a configuration and summarize it.
    ///
    /// Validates exactly as `maglevd run` does at start-up and on reload (every table, the
    /// forwarding snapshot, the kernel VIP filter) and prints its services, backends, weight shares
    /// and warnings. Exit code 2 names every problem with its file, line and column.
    Check {
        /// The configuration file (TOML).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Print each backend's share of the lookup table.
    ///
    /// With --compare, how many slots (new flows) would move from the OTHER configuration to this
    /// one: the disruption preview before a change. With --dump, every slot.
    Table {
        /// The configuration file (TOML).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// The configuration to compare with (e.g. the running one).
        #[arg(long, value_name = "OTHER", conflicts_with = "dump")]
        compare: Option<PathBuf>,
        /// Print every slot of every service: `SLOT BACKEND` (`-` for none), e.g. to diff two
        /// frontends' tables. A backend is its IP, or IP:PORT in an ipvs-mh service.
        #[arg(long)]
        dump: bool,
    },
    /// Convert an IPVS configuration into a maglevd one.
    ///
    /// Writes a maglevd configuration with ipvs-mh services that reproduce the kernel's IPVS
    /// tables, from the output of `ipvsadm -Ln --nosort` or `ipvsadm-save -n`. Warnings (what the
    /// input cannot tell) go to stderr and into the file as comments.
    ImportIpvs {
        /// The ipvsadm output; `-` for standard input.
        #[arg(value_name = "FILE", default_value = "-")]
        input: PathBuf,
        /// Input format (default: detected).
        #[arg(long, value_enum)]
        format: Option<ImportFormat>,
        /// The ingress interface name to write into the configuration.
        #[arg(long, default_value = "net1")]
        ingress: String,
        /// The egress interface name to write into the configuration.
        #[arg(long, default_value = "net2")]
        egress: String,
        /// The IPVS hosts' CONFIG_IP_VS_MH_TAB_INDEX (8..=17; default 12).
        #[arg(long)]
        tab_index: Option<u8>,
        /// Write the configuration here instead of standard output.
        #[arg(short, long, value_name = "OUT")]
        output: Option<PathBuf>,
    },
    /// Print the backend a packet from a client reaches.
    ///
    /// Prints the backend a packet from CLIENT to a service reaches, or `none (REASON)` with the
    /// drop reason as the metrics name it, on a frontend where every backend with weight > 0 is
    /// up. The answer is the forwarder's own: the packet is built and run through the data plane.
    /// With ipvs-mh it is the backend the kernel's IPVS picks, named IP:PORT.
    /// IPv6 ipvs-mh services (not forwarded by maglevd) are answered from the kernel table, for
    /// new flows only.
    Lookup {
        /// The configuration file (TOML).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// The service: its name, or the packet's destination VIP:PORT[/tcp|/udp] (IPv6 as [ADDR]:PORT).
        #[arg(long, value_name = "SERVICE")]
        service: String,
        /// The client's address and source port (ADDR:PORT, IPv6 as [ADDR]:PORT).
        #[arg(long, value_name = "ADDR:PORT")]
        client: std::net::SocketAddr,
        /// The packet's protocol, when VIP:PORT serves both (same as a /tcp or /udp suffix).
        #[arg(long, value_enum)]
        protocol: Option<LookupProtocol>,
        /// Ask about a later IP fragment of the flow (no ports in it) whose first fragment this
        /// frontend did not see, instead of its first packet: such fragments are hashed without
        /// ports and go to the VIP's fragment service. (First fragments, and the later ones that
        /// follow them, go where the flow goes.)
        #[arg(long, conflicts_with = "icmp_error")]
        fragment: bool,
        /// Ask about an ICMP error (fragmentation needed) sent to the VIP about the flow, as a
        /// router on the path to the client sends for the backend's replies: it must reach the
        /// flow's backend.
        #[arg(long)]
        icmp_error: bool,
    },
    /// Show the running daemon: services, backends, workers, rates, flows.
    ///
    /// Reads the daemon through its HTTP listener (daemon.metrics of -c FILE, or --address):
    /// per service and backend the state (up, down with the last probe error, drained, MAC
    /// unresolved), MAC, weight, table share, packets and bits per second and totals, flows
    /// assigned; per worker RX/TX rates, ring drops and flow-table use; the snapshot generation,
    /// the configuration file, when it was applied and the last refused reload. Rates come from
    /// two readings --interval apart. --flows lists tracked flows (like ipvsadm -Lnc). Exit 1 if
    /// the daemon cannot be read.
    Status(maglevd::status::StatusArgs),
    /// Withdraw every VIP from BGP without stopping (--undo ends it).
    ///
    /// Needs [announce] in the daemon's configuration: the VIP routes a BGP daemon announces are
    /// removed at once, /ready/VIP answers 503, and forwarding goes on for the traffic still
    /// arriving while the routers converge. Not kept across a restart: for that, use
    /// announce.drain_file. Exit 1 if the daemon cannot be reached or has no [announce].
    Drain(maglevd::status::DrainArgs),
    /// Measure maglevd.
    ///
    /// Table builds, the packet path in memory, and live forwarding through real interfaces in
    /// network namespaces, against kernel forwarding in the same run.
    Bench(maglevd::bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
        LogFormat::Json => logs.json().init(),
    }
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
        Command::Table { config, compare, dump } => table(&config, compare.as_deref(), dump),
        Command::Lookup { config, service, client, protocol, fragment, icmp_error } => {
            let protocol = protocol.map(|p| match p {
                LookupProtocol::Tcp => config::Protocol::Tcp,
                LookupProtocol::Udp => config::Protocol::Udp,
            });
            let packet = match (fragment, icmp_error) {
                (true, _) => report::Packet::Fragment,
                (_, true) => report::Packet::IcmpError,
                _ => report::Packet::First,
            };
            lookup(&config, &service, protocol, client, packet)
        }
        Command::ImportIpvs { input, format, ingress, egress, tab_index, output } => import_ipvs(
            &input,
            format,
            maglevd::ipvs_import::TomlOptions { ingress, egress, tab_index },
            output.as_deref(),
        ),
        Command::Bench(args) => maglevd::bench::main(&args),
        Command::Status(args) => maglevd::status::main(&args),
        Command::Drain(args) => maglevd::status::drain_main(&args),
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
    // What `run` would build at start-up and on reload, by the same code.
    if let Err(e) = daemon::prepare_offline(&cfg) {
        eprintln!("error: {}: maglevd run cannot use this configuration: {e}", path.display());
        return ExitCode::from(2);
    }
    println!("{}: ok", path.display());
    ExitCode::SUCCESS
}

fn table(path: &std::path::Path, compare: Option<&std::path::Path>, dump: bool) -> ExitCode {
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
    if dump {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        return match report::dump(&tables, &mut out).and_then(|()| std::io::Write::flush(&mut out)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: writing the dump: {e}");
                ExitCode::FAILURE
            }
        };
    }
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

fn lookup(
    path: &std::path::Path,
    selector: &str,
    protocol: Option<config::Protocol>,
    client: std::net::SocketAddr,
    packet: report::Packet,
) -> ExitCode {
    let cfg = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match report::question(&cfg, selector, protocol, client, packet).and_then(|q| report::lookup(&cfg, &q)) {
        Ok(answer) => {
            println!("{answer}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}: {e}", path.display());
            ExitCode::from(2)
        }
    }
}

fn import_ipvs(
    input: &std::path::Path,
    format: Option<ImportFormat>,
    opts: maglevd::ipvs_import::TomlOptions,
    output: Option<&std::path::Path>,
) -> ExitCode {
    use maglevd::ipvs_import::{self, InputFormat};
    let name = input.display().to_string();
    let text = if name == "-" {
        let mut t = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut t).map(|_| t)
    } else {
        std::fs::read_to_string(input)
    };
    let text = match text {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {name}: cannot read: {e}");
            return ExitCode::from(2);
        }
    };
    let format = match format {
        Some(ImportFormat::List) => InputFormat::List,
        Some(ImportFormat::Save) => InputFormat::Save,
        None => match ipvs_import::detect(&text) {
            Some(f) => f,
            None => {
                eprintln!("error: {name}: neither `ipvsadm -Ln --nosort` nor `ipvsadm-save -n` output (give --format)");
                return ExitCode::from(2);
            }
        },
    };
    let import = match ipvs_import::parse(&text, format) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("error: {name}: {e}");
            return ExitCode::from(2);
        }
    };
    let toml = match ipvs_import::to_toml_with(&import, &opts) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: --tab-index: {e}");
            return ExitCode::from(2);
        }
    };
    for w in &import.warnings {
        eprintln!("warning: {name}: {w}");
    }
    if let Some(why) = import.nothing_to_import() {
        eprintln!("error: {name}: {why}");
        return ExitCode::from(2);
    }
    // The file must be one maglevd accepts: check it with the real parser before writing it.
    if let Err(e) = config::parse(&toml, std::path::Path::new("<import-ipvs output>")) {
        eprintln!("error: the generated configuration does not validate (a maglevd bug, please report):\n{e}");
        return ExitCode::FAILURE;
    }
    match output {
        Some(path) => match std::fs::write(path, &toml) {
            Ok(()) => {
                eprintln!("wrote {}: check it with `maglevd check -c {0}` and `maglevd lookup`", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {}: cannot write: {e}", path.display());
                ExitCode::FAILURE
            }
        },
        None => {
            print!("{toml}");
            ExitCode::SUCCESS
        }
    }
}
