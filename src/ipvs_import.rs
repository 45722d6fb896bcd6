//! Import an IPVS configuration (`ipvsadm` text output) as maglevd `ipvs-mh` services.
//!
//! `maglevd import-ipvs` reads what `ipvsadm` prints on an IPVS frontend and writes a maglevd TOML
//! file whose `ipvs-mh` services rebuild the kernel's `ip_vs_mh` tables slot for slot (SPEC.md
//! §1–§7, [`crate::ipvs_mh`]). This module is the pure part: text in, [`Import`] and TOML text out,
//! no I/O. It never panics on any input; bad or partial input is an [`ImportError`] naming the
//! 1-based line, the line and what is wrong.
//!
//! # What the table needs, and what the text gives
//!
//! An mh table is a function of the destination list **in kernel list order**, each dest's address,
//! port and `last_weight`, and the table size (SPEC.md §4–§6, §8, §9). The two input formats give
//! these to different degrees:
//!
//! | input | order (§8) | `last_weight` (§9) | table size (§1) |
//! |---|---|---|---|
//! | [`InputFormat::List`]: `ipvsadm -Ln --nosort` | exact: the dump walks the list head → tail (§8.2) | = weight when weight > 0; unknown when 0 | not shown |
//! | [`InputFormat::Save`]: `ipvsadm-save -n` / `ipvsadm -Sn` | only the order a restore of the file creates | as above | not shown |
//!
//! * **List.** Destinations are kept in printed order, which is kernel order *only for `--nosort`
//!   output*: plain `ipvsadm -Ln` sorts them by address and port, and the text does not say which
//!   was run. The format is therefore documented (and the generated file says) "must be
//!   `--nosort` output"; a service whose destinations happen to be in ipvsadm's sort order gets a
//!   warning.
//! * **Save.** `ipvsadm -S` always sorts (it rejects `--nosort`, §8.2). `ipvsadm-restore` replays
//!   the lines in file order and each `-a` inserts at the list head (§8.1), so the restored kernel
//!   order is the **reverse of the file's `-a` order**. The importer replays the file exactly like
//!   that (also `-e`, `-d`, `-E`, `-D`, `-C`, with the §9 `last_weight` rule for `-e`), so a file
//!   with `-a .1`, `-a .2`, `-a .3` gives [.3, .2, .1]. That reproduces only hosts that were
//!   themselves restored from this file; every Save import carries a warning that the order of a
//!   live host cannot be read from a save file, pointing to `ipvsadm -Ln --nosort`.
//! * **`last_weight`.** The text shows the *current* weight. A dest with weight `w > 0` has
//!   `last_weight = w` (any edit to a non-zero weight sets both). A dest shown with weight 0 was
//!   either drained with `ipvsadm -e … -w 0` (it keeps its slots: `last_weight` = the old weight)
//!   or added with weight 0 (no slots). The importer writes the conservative `last_weight = 0`,
//!   with a warning and a comment asking the operator to set the pre-drain weight if it was
//!   drained. In a Save replay, an `-e -w 0` after an `-a -w W` gives `last_weight = W` exactly.
//! * **Table size.** `CONFIG_IP_VS_MH_TAB_INDEX` is a kernel build option and appears in neither
//!   format (the `size=4096` in the `-Ln` header is the *connection* hash table). The file gets
//!   `ipvs_tab_index = 12`, the Kconfig default (M = 4093), with a comment to check
//!   `grep IP_VS_MH_TAB_INDEX /boot/config-$(uname -r)`; [`to_toml_with`] takes an override.
//! * **Dest port.** For `-g`/`-i` on a non-fwmark service ipvsadm forces dest port = service port
//!   (§8.3), but netlink tools (keepalived) store any port, and the stored port is hashed (§4). The
//!   printed port is kept as is; a DR/tunnel dest whose port differs from the service port gets a
//!   warning (in a Save file also that `ipvsadm-restore` would store the service port instead).
//!
//! # ipvsadm's formats (checked against ipvsadm 1.31, `ipvsadm.c` and `libipvs/libipvs.c`)
//!
//! `ipvsadm -Ln [--nosort]` (`list_all` → `print_title` → `print_service_entry`):
//!
//! ```text
//! IP Virtual Server version 1.2.1 (size=4096)
//! Prot LocalAddress:Port Scheduler Flags
//!   -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
//! TCP  10.201.0.1:80 mh (mh-fallback,mh-port)
//!   -> 10.200.0.253:80              Route   1      0          0
//! UDP  [2001:db8::1]:53 mh persistent 300 mask 64 ops
//! FWM  7 IPv6 wlc
//! ```
//!
//! * the version line is omitted by `ipvsadm -Ln -t VIP:PORT` (`list_service`);
//! * service: `"%-4s %s"` of `TCP`/`UDP`/`SCTP` and `ADDR:PORT` (IPv6 as `[ADDR]:PORT`), or
//!   `FWM  <mark>[ IPv6]`; then ` <scheduler>`, ` (<flags>)`, ` persistent <timeout>`,
//!   ` mask <netmask or prefix>`, ` pe <engine>`, ` ops`;
//! * flags (`print_sched_flags`): for `mh` `mh-fallback` (SCHED1) and `mh-port` (SCHED2), for `sh`
//!   `sh-fallback`/`sh-port`, otherwise `flag-1`,`flag-2`,`flag-3`; comma-separated, no spaces.
//!   Older ipvsadm (before the mh names) printed `flag-1,flag-2` for mh too: both are accepted;
//! * dest: `"  -> %-28s %-7s %-6d %-10u %-10u"` (address, `Route`/`Masq`/`Tunnel`/`Local`, weight,
//!   active and inactive connections); `--tun-info` adds a `TunnelInfo` column after `Forward`,
//!   which is accepted. `--stats`, `--rate`, `--thresholds`, `--persistent-conn` listings show
//!   other columns and are rejected (they lack the forwarding method or the weight). Without `-n`
//!   addresses and ports may be names, which are rejected with a hint to use `-n`.
//!
//! `ipvsadm-save -n` = `ipvsadm -Sn` (`print_service_entry` with `FMT_RULE`):
//!
//! ```text
//! -A -t 10.201.0.1:80 -s mh -b mh-fallback,mh-port
//! -a -t 10.201.0.1:80 -r 10.200.0.248:80 -g -w 1
//! -A --sctp-service 10.0.0.1:80 -s rr -p 300 -M 255.255.255.0 --pe sip -o
//! -A -f 7 -6 -s wlc
//! -a -t 10.0.0.2:80 -r 10.0.0.9:80 -i -w 1 --tun-type gue --tun-port 6080 --tun-nocsum
//! ```
//!
//! Services are sorted by fwmark, family, protocol, address, port, and each service's dests by
//! address then port (`ipvs_cmp_services`, `ipvs_cmp_dests`; the comparators subtract `u32`s into
//! an `int`, so "sorted" is not always ascending, and the importer never relies on the sort).
//! `ipvsadm-restore` (`ipvsadm -R`, `config_stream_read`) drops a leading `ipvsadm` word, so
//! command lists such as `ipvsadm -A -t …` are accepted too; blank lines and `#` comments are
//! skipped. Long options (`--add-server`, `--weight=3`, …) are accepted as ipvsadm's popt parser
//! accepts them.
//!
//! # Which services are imported
//!
//! | service | policy | why |
//! |---|---|---|
//! | scheduler `mh`, TCP/UDP, VIP:port | **imported** | the case this mode exists for |
//! | other scheduler (`rr`, `wlc`, `sh`, …) | skipped, warning | only `mh` tables can be reproduced; maglevd's own `maglev` algorithm picks different backends |
//! | fwmark (`FWM`, `-f`) | skipped, warning | maglevd services are VIP:port/protocol; a netfilter mark has no such key |
//! | SCTP | skipped, warning | maglevd forwards TCP and UDP only |
//! | port 0 (all ports; always persistent) | skipped, warning | all-port persistence is per-client state maglevd does not keep |
//! | persistent (`persistent`, `-p`) | imported, warning | the table is exact and a client's first connection matches; IPVS then pins the client (or its `mask` network) to that choice for the timeout, including other ports under `mh-port`, where maglevd looks up every new flow |
//! | one-packet (`ops`, `-o`) | imported, warning | IPVS schedules each datagram; mh's choice per datagram is the same table lookup |
//! | `Masq`/`Tunnel`/`Local` dests | imported, warning | the table does not depend on the forwarding method, but maglevd forwards by direct routing only |
//! | weight 0 dest | imported, warning | `last_weight` is unknown (see above) |
//! | `-x`/`-y` thresholds (Save) | ignored, warning | they drive IPVS's runtime overload flag, which maglevd does not model |
//!
//! A service with no destinations is imported with a warning (its table is empty: every new flow
//! gets no destination).

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::ipvs_mh::{self, Family, MhDest, MhError, MhFlags};

/// `ipvs_tab_index` written when no override is given: the Kconfig default (M = 4093).
pub const DEFAULT_TAB_INDEX: u8 = ipvs_mh::DEFAULT_TAB_INDEX;

/// Largest weight IPVS stores (`int`); the kernel rejects negative ones.
const MAX_WEIGHT: u32 = i32::MAX as u32;
/// Largest weight ipvsadm's `-w` accepts (`string_to_number(optarg, 0, 65535)`).
const IPVSADM_MAX_WEIGHT: u32 = 65_535;
/// ipvsadm's default scheduler (`DEF_SCHED`).
const DEFAULT_SCHEDULER: &str = "wlc";
/// Longest source line quoted in an error.
const MAX_QUOTE: usize = 200;
/// Comment width in the generated file.
const COMMENT_WIDTH: usize = 100;

// ---------------------------------------------------------------------------------------------
// Types

/// Which `ipvsadm` output a text is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InputFormat {
    /// `ipvsadm -Ln --nosort`: the kernel's destination order. Must be `--nosort` output.
    List,
    /// `ipvsadm-save -n` / `ipvsadm -Sn` (sorted), or any `ipvsadm-restore` input.
    Save,
}

impl InputFormat {
    fn source(self) -> &'static str {
        match self {
            InputFormat::List => "`ipvsadm -Ln --nosort`",
            InputFormat::Save => "`ipvsadm-save -n` (`ipvsadm -Sn`)",
        }
    }
}

/// A virtual service's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    /// Lowercase name, as in maglevd's `protocol` key.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        }
    }
}

/// A destination's forwarding method (`Forward` column, `-g`/`-m`/`-i`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Forward {
    /// Direct routing (`-g`, the default): what maglevd does.
    Route,
    /// NAT (`-m`).
    Masq,
    /// IP-in-IP or GUE tunnel (`-i`).
    Tunnel,
    /// The dest is an address of the IPVS host itself (`Local` in listings only).
    Local,
}

impl Forward {
    /// The name ipvsadm lists (`fwd_name`).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Forward::Route => "Route",
            Forward::Masq => "Masq",
            Forward::Tunnel => "Tunnel",
            Forward::Local => "Local",
        }
    }
}

/// A persistent service's settings (`persistent T [mask M] [pe E]`, `-p T [-M M] [--pe E]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Persistence {
    /// Template timeout in seconds.
    pub timeout: u32,
    /// Persistence granularity as printed (`255.255.255.0`, or an IPv6 prefix length).
    pub netmask: Option<String>,
    /// Persistence engine (`sip`).
    pub engine: Option<String>,
}

/// One IPVS virtual service read from the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedService {
    /// Virtual address; the unspecified address of the service's family for fwmark services.
    pub vip: IpAddr,
    /// Protocol; `Tcp` for fwmark services (ipvsadm's placeholder).
    pub protocol: Proto,
    /// Virtual port (0 for fwmark and all-port services).
    pub port: u16,
    /// Firewall mark of a fwmark service.
    pub fwmark: Option<u32>,
    /// Scheduler name (`mh`, `rr`, …).
    pub scheduler: String,
    /// `mh-port` / `mh-fallback` (only read for `mh` services).
    pub flags: MhFlags,
    pub persistence: Option<Persistence>,
    /// One-packet scheduling (`ops`, `-o`).
    pub one_packet: bool,
    /// Destinations in **kernel list order** (index 0 = list head = most recently added).
    pub dests: Vec<ImportedDest>,
    /// 1-based line of the service (`-A` line for Save).
    pub line: usize,
    /// Why the service is not imported, or `None` if it becomes an `ipvs-mh` service.
    pub skipped: Option<String>,
    /// Warnings about this service (each will also appear in [`Import::warnings`]).
    pub warnings: Vec<String>,
}

/// One destination (real server).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedDest {
    pub addr: IpAddr,
    /// Stored port, as printed (§8.3).
    pub port: u16,
    /// Current weight: availability.
    pub weight: u32,
    /// Weight the table is built from (§9); see the module doc for weight 0.
    pub last_weight: u32,
    /// False when `last_weight` is a guess (weight 0 and no non-zero weight seen).
    pub last_weight_known: bool,
    pub forward: Forward,
    /// 1-based line of the dest (`-a` line for Save).
    pub line: usize,
    /// Warnings about this dest (each will also appear in [`Import::warnings`]).
    pub warnings: Vec<String>,
}

/// The result of [`parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Import {
    pub format: InputFormat,
    /// Every service of the input, in input order; [`Import::imported`] are the ones written.
    pub services: Vec<ImportedService>,
    /// Warnings not tied to one service (e.g. the Save order caveat).
    pub file_warnings: Vec<String>,
    /// Every warning (file, skipped services, services, dests), each naming its line and service.
    pub warnings: Vec<String>,
}

/// Bad or partial input: where and what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}\n    | {text}")]
pub struct ImportError {
    /// 1-based line number.
    pub line: usize,
    /// The offending line (trimmed, shortened if very long).
    pub text: String,
    pub message: String,
}

/// Options of [`to_toml_with`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TomlOptions {
    /// `[interfaces] ingress`.
    pub ingress: String,
    /// `[interfaces] egress`.
    pub egress: String,
    /// `CONFIG_IP_VS_MH_TAB_INDEX` of the IPVS host, if known; `None` writes [`DEFAULT_TAB_INDEX`].
    pub tab_index: Option<u8>,
}

impl ImportedService {
    /// True if this service becomes an `ipvs-mh` service.
    #[must_use]
    pub fn is_imported(&self) -> bool {
        self.skipped.is_none()
    }

    /// The service's address family (decides address folding, SPEC.md §3).
    #[must_use]
    pub const fn family(&self) -> Family {
        Family::of(self.vip)
    }

    /// `10.201.0.1:80/tcp`, `[2001:db8::1]:80/udp` or `fwmark 7`, `fwmark 7 (IPv6)`.
    #[must_use]
    pub fn label(&self) -> String {
        match (self.fwmark, self.vip) {
            (Some(m), IpAddr::V4(_)) => format!("fwmark {m}"),
            (Some(m), IpAddr::V6(_)) => format!("fwmark {m} (IPv6)"),
            (None, _) => format!("{}/{}", endpoint(self.vip, self.port), self.protocol.as_str()),
        }
    }

    /// The destinations as [`crate::ipvs_mh::build`] takes them, in kernel list order.
    #[must_use]
    pub fn mh_dests(&self) -> Vec<MhDest> {
        self.dests.iter().map(ImportedDest::mh_dest).collect()
    }
}

impl ImportedDest {
    /// This dest for [`crate::ipvs_mh::build`]: weights are ≤ `i32::MAX` by construction.
    #[must_use]
    pub fn mh_dest(&self) -> MhDest {
        MhDest {
            addr: self.addr,
            port: self.port,
            weight: i32::try_from(self.weight).unwrap_or(i32::MAX),
            last_weight: i32::try_from(self.last_weight).unwrap_or(i32::MAX),
            overloaded: false,
        }
    }
}

impl Import {
    /// The services written to the TOML file (scheduler `mh`, TCP/UDP, VIP:port).
    pub fn imported(&self) -> impl Iterator<Item = &ImportedService> {
        self.services.iter().filter(|s| s.is_imported())
    }

    /// Why there is nothing to write, when no service is imported: the input has no virtual
    /// service, or every one was skipped (the warnings say why each). `None` when some service is
    /// imported. A file without services is not a maglevd configuration, so this is the user's
    /// error to report, not a file to write.
    #[must_use]
    pub fn nothing_to_import(&self) -> Option<String> {
        if self.imported().next().is_some() {
            return None;
        }
        if self.services.is_empty() {
            return Some("no service to import: the input has no virtual services".into());
        }
        let skipped: Vec<String> = self.services.iter().map(|s| format!("{} (line {})", s.label(), s.line)).collect();
        Some(format!(
            "no service to import: every virtual service was skipped ({}); only TCP/UDP services with scheduler \
             `mh` on a VIP:port become ipvs-mh services (see the warnings for each)",
            skipped.join(", ")
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Entry points

/// Guess the format from the first significant line (blank lines and `#` comments skipped).
#[must_use]
pub fn detect(text: &str) -> Option<InputFormat> {
    let line = text.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#'))?;
    let mut toks = line.split_whitespace();
    let first = toks.next()?;
    if line.starts_with("IP Virtual Server version") || matches!(first, "Prot" | "->" | "TCP" | "UDP" | "SCTP" | "FWM")
    {
        return Some(InputFormat::List);
    }
    let cmd = if first == "ipvsadm" { toks.next()? } else { first };
    cmd.starts_with('-').then_some(InputFormat::Save)
}

/// Parse `ipvsadm` output of the given format.
///
/// # Errors
/// [`ImportError`] for input that is not that format, is truncated, or describes a state the
/// kernel or ipvsadm refuses (a dest before its service, a duplicate, an unparsable address, …).
pub fn parse(text: &str, format: InputFormat) -> Result<Import, ImportError> {
    if text.trim().is_empty() {
        return Err(ImportError {
            line: 1,
            text: String::new(),
            message: "the input is empty: nothing to import".into(),
        });
    }
    let (services, file_warnings) = match format {
        InputFormat::List => parse_list(text)?,
        InputFormat::Save => parse_save(text)?,
    };
    Ok(finish(format, services, file_warnings))
}

/// The maglevd TOML for `import`, with `ipvs_tab_index = 12` (see [`to_toml_with`]).
#[must_use]
pub fn to_toml(import: &Import, ingress: &str, egress: &str) -> String {
    render(import, ingress, egress, None)
}

/// The maglevd TOML for `import` with options (a known `CONFIG_IP_VS_MH_TAB_INDEX`).
///
/// # Errors
/// [`MhError::InvalidTabIndex`] for a table index outside 8..=17.
pub fn to_toml_with(import: &Import, opts: &TomlOptions) -> Result<String, MhError> {
    if let Some(i) = opts.tab_index {
        ipvs_mh::table_size(i)?;
    }
    Ok(render(import, &opts.ingress, &opts.egress, opts.tab_index))
}

// ---------------------------------------------------------------------------------------------
// Shared helpers

fn error(line: usize, raw: &str, message: impl Into<String>) -> ImportError {
    let t = raw.trim();
    let text = if t.chars().count() > MAX_QUOTE {
        let mut s: String = t.chars().take(MAX_QUOTE).collect();
        s.push('…');
        s
    } else {
        t.to_string()
    };
    ImportError { line, text, message: message.into() }
}

/// `1.2.3.4:80` or `[2001:db8::1]:80`.
fn endpoint(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

fn unspecified(family: Family) -> IpAddr {
    match family {
        Family::Inet => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        Family::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

fn parse_port(s: &str) -> Result<u16, String> {
    if s.is_empty() {
        return Err("the port is missing (truncated?)".into());
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse::<u16>().map_err(|_| format!("port `{s}` is out of range 0..=65535"));
    }
    if s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(format!("port `{s}` is a service name, not a number (run ipvsadm with -n)"));
    }
    Err(format!("`{s}` is not a port number"))
}

fn parse_ipv4(s: &str) -> Result<Ipv4Addr, String> {
    s.parse::<Ipv4Addr>().map_err(|_| {
        if s.bytes().any(|b| b.is_ascii_alphabetic()) {
            format!("`{s}` is not a numeric address (run ipvsadm with -n)")
        } else {
            format!("`{s}` is not an IPv4 address")
        }
    })
}

/// ipvsadm's `parse_service` for numeric input: `A.B.C.D[:PORT]`, `[V6]:PORT`, or a bare IPv6
/// address (no port). `port_required` for listings, which always print the port.
fn parse_endpoint(s: &str, port_required: bool) -> Result<(IpAddr, Option<u16>), String> {
    if let Some(rest) = s.strip_prefix('[') {
        let Some((inner, after)) = rest.split_once(']') else {
            return Err(format!("`{s}`: `[` without `]` (truncated?)"));
        };
        let a = inner.parse::<Ipv6Addr>().map_err(|_| format!("`{inner}` is not an IPv6 address"))?;
        let Some(port) = after.strip_prefix(':') else {
            return Err(format!("`{s}`: expected `[ADDRESS]:PORT`"));
        };
        return Ok((IpAddr::V6(a), Some(parse_port(port)?)));
    }
    if let Ok(a) = s.parse::<Ipv6Addr>() {
        if port_required {
            return Err(format!("`{s}`: expected `[ADDRESS]:PORT` for an IPv6 address"));
        }
        return Ok((IpAddr::V6(a), None));
    }
    match s.rsplit_once(':') {
        Some((host, port)) => {
            if host.contains(':') {
                return Err(format!("`{s}` is not an address: IPv6 addresses are written `[ADDRESS]:PORT`"));
            }
            Ok((IpAddr::V4(parse_ipv4(host)?), Some(parse_port(port)?)))
        }
        None if port_required => {
            let a = parse_ipv4(s)?;
            Err(format!("`{a}` has no port: expected ADDRESS:PORT (truncated?)"))
        }
        None => Ok((IpAddr::V4(parse_ipv4(s)?), None)),
    }
}

fn parse_weight(s: &str) -> Result<u32, String> {
    let w: i64 = s.parse().map_err(|_| format!("weight `{s}` is not a number"))?;
    if w < 0 {
        return Err(format!("weight {w} is negative; IPVS rejects negative weights"));
    }
    u32::try_from(w)
        .ok()
        .filter(|&w| w <= MAX_WEIGHT)
        .ok_or_else(|| format!("weight {w} exceeds IPVS's limit {MAX_WEIGHT}"))
}

/// Scheduler flags (`mh-fallback,mh-port`, `flag-1,…`). For `mh`: SCHED1 = fallback, SCHED2 =
/// port; `flag-3` is unused by mh and gives a warning. `strict` applies ipvsadm's `-b` rules
/// (`parse_sched_flags`) to every scheduler; listings of non-mh services are not checked.
fn sched_flags(sched: &str, list: &str, strict: bool) -> Result<(MhFlags, Option<String>), String> {
    let mut flags = MhFlags::default();
    let mut note = None;
    for name in list.split(',') {
        let for_sched = |s: &str| {
            if sched == s || !strict && sched != "mh" {
                Ok(())
            } else {
                Err(format!(
                    "scheduler flag `{name}` does not apply to scheduler `{sched}` (ipvsadm: incompatible scheduler flag)"
                ))
            }
        };
        match name {
            "flag-1" | "mh-fallback" => {
                if name == "mh-fallback" {
                    for_sched("mh")?;
                }
                flags.mh_fallback = true;
            }
            "flag-2" | "mh-port" => {
                if name == "mh-port" {
                    for_sched("mh")?;
                }
                flags.mh_port = true;
            }
            "flag-3" => {
                note = Some("scheduler flag `flag-3` (IP_VS_SVC_F_SCHED3) is not used by mh; ignored".to_string());
            }
            "sh-fallback" | "sh-port" => for_sched("sh")?,
            "" => return Err(format!("empty scheduler flag in `{list}`")),
            other if strict || sched == "mh" => return Err(format!("unknown scheduler flag `{other}`")),
            _ => {}
        }
    }
    if sched != "mh" {
        flags = MhFlags::default();
        note = None;
    }
    Ok((flags, note))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SvcKey {
    Addr(Proto, IpAddr, u16),
    Mark(u32, Family),
}

fn key_of(s: &ImportedService) -> SvcKey {
    match s.fwmark {
        Some(m) => SvcKey::Mark(m, s.family()),
        None => SvcKey::Addr(s.protocol, s.vip, s.port),
    }
}

fn family_check(svc: &ImportedService, addr: IpAddr, forward: Forward) -> Result<(), String> {
    if Family::of(addr) != svc.family() && forward != Forward::Tunnel {
        return Err(format!(
            "destination {addr} is of another address family than service {}: only tunnelling (-i) allows that",
            svc.label()
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// `ipvsadm -Ln --nosort`

const LIST_SERVICE_TITLES: [&str; 4] = ["Prot", "LocalAddress:Port", "Scheduler", "Flags"];
const LIST_DEST_TITLES: [&str; 5] = ["RemoteAddress:Port", "Forward", "Weight", "ActiveConn", "InActConn"];
const LIST_DEST_TITLES_TUN: [&str; 6] =
    ["RemoteAddress:Port", "Forward", "TunnelInfo", "Weight", "ActiveConn", "InActConn"];
const OTHER_LISTINGS: &str = "--stats, --rate, --thresholds and --persistent-conn listings lack the forwarding method \
                              or the weight: use `ipvsadm -Ln --nosort`";

fn parse_list(text: &str) -> Result<(Vec<ImportedService>, Vec<String>), ImportError> {
    let mut services: Vec<ImportedService> = Vec::new();
    let mut version_seen = false;
    let mut svc_titles = false;
    let mut dest_titles = false;
    let mut tun_info = false;
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let t = raw.trim();
        if t.is_empty() {
            continue;
        }
        let toks: Vec<&str> = t.split_whitespace().collect();
        if t.starts_with("IP Virtual Server version") {
            if version_seen || svc_titles || !services.is_empty() {
                return Err(error(
                    n,
                    raw,
                    "a second listing header: only one `ipvsadm -Ln --nosort` listing per input",
                ));
            }
            let ok = toks.len() == 6
                && toks[5]
                    .strip_prefix("(size=")
                    .and_then(|s| s.strip_suffix(')'))
                    .is_some_and(|s| s.parse::<u32>().is_ok());
            if !ok {
                return Err(error(n, raw, "malformed header: expected `IP Virtual Server version X.Y.Z (size=N)`"));
            }
            version_seen = true;
            continue;
        }
        if toks[0] == "Prot" {
            if toks != LIST_SERVICE_TITLES {
                return Err(error(
                    n,
                    raw,
                    format!("unknown columns: expected `{}`; {OTHER_LISTINGS}", LIST_SERVICE_TITLES.join(" ")),
                ));
            }
            if svc_titles || !services.is_empty() {
                return Err(error(n, raw, "column titles after services: only one listing per input"));
            }
            svc_titles = true;
            continue;
        }
        if toks[0] == "->" && toks.get(1) == Some(&"RemoteAddress:Port") {
            if toks[1..] == LIST_DEST_TITLES {
                tun_info = false;
            } else if toks[1..] == LIST_DEST_TITLES_TUN {
                tun_info = true;
            } else {
                return Err(error(
                    n,
                    raw,
                    format!("unknown columns: expected `-> {}`; {OTHER_LISTINGS}", LIST_DEST_TITLES.join(" ")),
                ));
            }
            if dest_titles || !services.is_empty() {
                return Err(error(n, raw, "column titles after services: only one listing per input"));
            }
            dest_titles = true;
            continue;
        }
        if (version_seen || svc_titles) && !(svc_titles && dest_titles) {
            return Err(error(n, raw, "the column titles are missing or incomplete (truncated or edited listing?)"));
        }
        if toks[0] == "->" {
            let Some(svc) = services.last_mut() else {
                return Err(error(n, raw, "destination line before any service line"));
            };
            let dest = list_dest(&toks[1..], tun_info).map_err(|m| error(n, raw, m))?;
            family_check(svc, dest.0, dest.1).map_err(|m| error(n, raw, m))?;
            let (addr, forward, port, weight) = dest;
            if svc.dests.iter().any(|d| d.addr == addr && d.port == port) {
                return Err(error(n, raw, format!("destination {} is listed twice", endpoint(addr, port))));
            }
            let last_weight_known = weight > 0;
            svc.dests.push(ImportedDest {
                addr,
                port,
                weight,
                last_weight: weight,
                last_weight_known,
                forward,
                line: n,
                warnings: Vec::new(),
            });
            continue;
        }
        if !matches!(toks[0], "TCP" | "UDP" | "SCTP" | "FWM") {
            return Err(error(
                n,
                raw,
                "unrecognised line: expected a service line (TCP/UDP/SCTP/FWM …), a destination line (`  -> …`) \
                 or the listing header",
            ));
        }
        let svc = list_service(&toks, n).map_err(|m| error(n, raw, m))?;
        if services.iter().any(|s| key_of(s) == key_of(&svc)) {
            return Err(error(n, raw, format!("service {} is listed twice", svc.label())));
        }
        services.push(svc);
    }
    if (version_seen || svc_titles) && !(svc_titles && dest_titles) {
        let last = text.lines().count().max(1);
        let raw = text.lines().last().unwrap_or("");
        return Err(error(last, raw, "the listing ends inside its header (truncated?)"));
    }
    Ok((services, Vec::new()))
}

/// A service line's tokens.
fn list_service(toks: &[&str], line: usize) -> Result<ImportedService, String> {
    let truncated = |what: &str| format!("truncated service line: no {what}");
    let (vip, protocol, port, fwmark, mut i) = if toks[0] == "FWM" {
        let mark = toks.get(1).ok_or_else(|| truncated("firewall mark"))?;
        let mark: u32 =
            mark.parse().ok().filter(|&m| m > 0).ok_or_else(|| format!("`{mark}` is not a firewall mark (1..)"))?;
        let v6 = toks.get(2) == Some(&"IPv6");
        let family = if v6 { Family::Inet6 } else { Family::Inet };
        (unspecified(family), Proto::Tcp, 0, Some(mark), if v6 { 3 } else { 2 })
    } else {
        let protocol = match toks[0] {
            "TCP" => Proto::Tcp,
            "UDP" => Proto::Udp,
            _ => Proto::Sctp,
        };
        let ep = toks.get(1).ok_or_else(|| truncated("address"))?;
        let (vip, port) = parse_endpoint(ep, true)?;
        (vip, protocol, port.unwrap_or(0), None, 2)
    };
    let scheduler = toks.get(i).ok_or_else(|| truncated("scheduler"))?;
    if scheduler.starts_with('(') || matches!(*scheduler, "persistent" | "mask" | "pe" | "ops") {
        return Err(truncated("scheduler"));
    }
    let scheduler = (*scheduler).to_string();
    i += 1;
    let mut svc = ImportedService {
        vip,
        protocol,
        port,
        fwmark,
        scheduler,
        flags: MhFlags::default(),
        persistence: None,
        one_packet: false,
        dests: Vec::new(),
        line,
        skipped: None,
        warnings: Vec::new(),
    };
    if let Some(f) = toks.get(i).filter(|t| t.starts_with('(')) {
        let list = f
            .strip_prefix('(')
            .and_then(|f| f.strip_suffix(')'))
            .ok_or_else(|| format!("`{f}`: scheduler flags must be `(flag,flag)`"))?;
        let (flags, note) = sched_flags(&svc.scheduler, list, false)?;
        svc.flags = flags;
        svc.warnings.extend(note);
        i += 1;
    }
    while let Some(&tok) = toks.get(i) {
        let value = toks.get(i + 1).copied();
        i += 2;
        match tok {
            "persistent" if svc.persistence.is_none() => {
                let v = value.ok_or("truncated service line: `persistent` without its timeout")?;
                let timeout = v.parse().map_err(|_| format!("persistence timeout `{v}` is not a number"))?;
                svc.persistence = Some(Persistence { timeout, netmask: None, engine: None });
            }
            "mask" | "pe" => {
                let v = value.ok_or_else(|| format!("truncated service line: `{tok}` without its value"))?;
                let Some(p) = svc.persistence.as_mut() else {
                    return Err(format!("`{tok}` without `persistent`"));
                };
                if tok == "mask" {
                    let ok = match svc.vip {
                        IpAddr::V4(_) => v.parse::<Ipv4Addr>().is_ok(),
                        IpAddr::V6(_) => v.parse::<u8>().is_ok_and(|m| (1..=128).contains(&m)),
                    };
                    if !ok {
                        return Err(format!("`{v}` is not a persistence netmask"));
                    }
                    p.netmask = Some(v.to_string());
                } else {
                    p.engine = Some(v.to_string());
                }
            }
            "ops" if !svc.one_packet => {
                svc.one_packet = true;
                i -= 1;
            }
            other => return Err(format!("unexpected `{other}` in the service line")),
        }
    }
    Ok(svc)
}

/// A dest line's tokens after `->`: (addr, forward, port, weight).
fn list_dest(toks: &[&str], tun_info: bool) -> Result<(IpAddr, Forward, u16, u32), String> {
    let want = if tun_info { 6 } else { 5 };
    let columns = if tun_info { LIST_DEST_TITLES_TUN.join(" ") } else { LIST_DEST_TITLES.join(" ") };
    if toks.len() < want {
        return Err(format!("truncated destination line: expected {want} columns ({columns}), found {}", toks.len()));
    }
    if toks.len() > want {
        return Err(format!(
            "unknown columns in the destination line: expected {want} ({columns}), found {}",
            toks.len()
        ));
    }
    let (addr, port) = parse_endpoint(toks[0], true)?;
    let forward = match toks[1] {
        "Route" => Forward::Route,
        "Masq" => Forward::Masq,
        "Tunnel" => Forward::Tunnel,
        "Local" => Forward::Local,
        other => return Err(format!("unknown forwarding method `{other}` (expected Route, Masq, Tunnel or Local)")),
    };
    let w = if tun_info { 3 } else { 2 };
    let weight = parse_weight(toks[w])?;
    for (name, v) in [("ActiveConn", toks[w + 1]), ("InActConn", toks[w + 2])] {
        if v.parse::<u64>().is_err() {
            return Err(format!("{name} `{v}` is not a number (truncated or edited line?)"));
        }
    }
    Ok((addr, forward, port.unwrap_or(0), weight))
}

// ---------------------------------------------------------------------------------------------
// `ipvsadm-save -n` / `ipvsadm -R` input: replayed like ipvsadm-restore

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmd {
    AddService,
    EditService,
    DeleteService,
    AddDest,
    EditDest,
    DeleteDest,
    Clear,
}

#[derive(Debug, Default)]
struct Command<'a> {
    cmd: Option<Cmd>,
    /// `-t`/`-u`/`--sctp-service` with its argument, or `-f`.
    service: Option<(Option<Proto>, &'a str)>,
    ipv6: bool,
    scheduler: Option<&'a str>,
    persistent: Option<Option<&'a str>>,
    netmask: Option<&'a str>,
    engine: Option<&'a str>,
    ops: bool,
    sched_flags: Option<&'a str>,
    real: Option<&'a str>,
    forward: Option<Forward>,
    weight: Option<&'a str>,
    u_threshold: Option<&'a str>,
    l_threshold: Option<&'a str>,
    tunnel_options: Vec<&'a str>,
    /// A command that does not touch the service table (`--set`, `-Z`, daemons).
    ignored: Option<&'a str>,
}

fn set<T>(slot: &mut Option<T>, v: T, name: &str) -> Result<(), String> {
    if slot.is_some() {
        return Err(format!("multiple `{name}` options"));
    }
    *slot = Some(v);
    Ok(())
}

fn parse_command<'a>(toks: &[&'a str]) -> Result<Command<'a>, String> {
    let mut c = Command::default();
    let mut i = 0;
    while let Some(&tok) = toks.get(i) {
        i += 1;
        let (name, inline) = match tok.strip_prefix("--").and_then(|_| tok.split_once('=')) {
            Some((n, v)) => (n, Some(v)),
            None => (tok, None),
        };
        // The option's value: `--opt=value` or the next word.
        let mut value = || -> Result<&'a str, String> {
            if let Some(v) = inline {
                return Ok(v);
            }
            let v = toks.get(i).copied().ok_or_else(|| format!("option `{name}` needs a value (truncated line?)"))?;
            i += 1;
            Ok(v)
        };
        let cmd = match name {
            "-A" | "--add-service" => Some(Cmd::AddService),
            "-E" | "--edit-service" => Some(Cmd::EditService),
            "-D" | "--delete-service" => Some(Cmd::DeleteService),
            "-a" | "--add-server" => Some(Cmd::AddDest),
            "-e" | "--edit-server" => Some(Cmd::EditDest),
            "-d" | "--delete-server" => Some(Cmd::DeleteDest),
            "-C" | "--clear" => Some(Cmd::Clear),
            _ => None,
        };
        if let Some(cmd) = cmd {
            set(&mut c.cmd, cmd, "command")?;
            continue;
        }
        match name {
            "-Z" | "--zero" | "--set" | "--start-daemon" | "--stop-daemon" => {
                if c.cmd.is_some() {
                    return Err("multiple commands".into());
                }
                c.ignored = Some(name);
                return Ok(c);
            }
            "-t" | "--tcp-service" => set(&mut c.service, (Some(Proto::Tcp), value()?), "service")?,
            "-u" | "--udp-service" => set(&mut c.service, (Some(Proto::Udp), value()?), "service")?,
            "--sctp-service" => set(&mut c.service, (Some(Proto::Sctp), value()?), "service")?,
            "-f" | "--fwmark-service" => set(&mut c.service, (None, value()?), "service")?,
            "-6" | "--ipv6" => {
                if !matches!(c.service, Some((None, _))) {
                    return Err("-6 used before -f (ipvsadm: -6 applies to fwmark services)".into());
                }
                c.ipv6 = true;
            }
            "-s" | "--scheduler" => set(&mut c.scheduler, value()?, name)?,
            "-p" | "--persistent" => {
                // popt's optional argument: the next word unless it is an option.
                let v = inline.or_else(|| toks.get(i).copied().filter(|t| !t.starts_with('-')));
                if v.is_some() && inline.is_none() {
                    i += 1;
                }
                set(&mut c.persistent, v, name)?;
            }
            "-M" | "--netmask" => set(&mut c.netmask, value()?, name)?,
            "--pe" => set(&mut c.engine, value()?, name)?,
            "-o" | "--ops" => c.ops = true,
            "-b" | "--sched-flags" => set(&mut c.sched_flags, value()?, name)?,
            "-r" | "--real-server" => set(&mut c.real, value()?, name)?,
            "-g" | "--gatewaying" => set(&mut c.forward, Forward::Route, "forwarding-method")?,
            "-i" | "--ipip" => set(&mut c.forward, Forward::Tunnel, "forwarding-method")?,
            "-m" | "--masquerading" => set(&mut c.forward, Forward::Masq, "forwarding-method")?,
            "-w" | "--weight" => set(&mut c.weight, value()?, name)?,
            "-x" | "--u-threshold" => set(&mut c.u_threshold, value()?, name)?,
            "-y" | "--l-threshold" => set(&mut c.l_threshold, value()?, name)?,
            "--tun-type" | "--tun-port" => {
                let v = value()?;
                c.tunnel_options.push(name);
                c.tunnel_options.push(v);
            }
            "--tun-nocsum" | "--tun-csum" | "--tun-remcsum" => c.tunnel_options.push(name),
            "-L" | "-l" | "--list" | "-S" | "--save" | "-R" | "--restore" => {
                return Err(format!("`{name}` is not a rule (list/save/restore commands cannot be imported)"));
            }
            other if other.starts_with('-') => return Err(format!("unknown option `{other}`")),
            other => return Err(format!("unexpected argument `{other}`")),
        }
    }
    if c.cmd.is_none() {
        return Err("no command: expected -A, -E, -D, -a, -e, -d or -C".into());
    }
    Ok(c)
}

/// Replays commands like ipvsadm-restore into the kernel's lists.
struct Replay {
    services: Vec<ImportedService>,
    file_warnings: Vec<String>,
}

fn parse_save(text: &str) -> Result<(Vec<ImportedService>, Vec<String>), ImportError> {
    let mut r = Replay { services: Vec::new(), file_warnings: Vec::new() };
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let mut toks: Vec<&str> = raw.split_whitespace().take_while(|t| !t.starts_with('#')).collect();
        if toks.first() == Some(&"ipvsadm") {
            toks.remove(0);
        }
        if toks.is_empty() {
            continue;
        }
        let c = parse_command(&toks).map_err(|m| error(n, raw, m))?;
        if let Some(what) = c.ignored {
            r.file_warnings.push(format!("line {n}: `{what}` ignored: it does not change virtual services"));
            continue;
        }
        r.apply(n, &c).map_err(|m| error(n, raw, m))?;
    }
    Ok((r.services, r.file_warnings))
}

impl Replay {
    fn apply(&mut self, line: usize, c: &Command<'_>) -> Result<(), String> {
        let Some(cmd) = c.cmd else { return Err("no command".into()) };
        let service_opts = c.scheduler.is_some()
            || c.persistent.is_some()
            || c.netmask.is_some()
            || c.engine.is_some()
            || c.ops
            || c.sched_flags.is_some();
        let dest_opts = c.real.is_some()
            || c.forward.is_some()
            || c.weight.is_some()
            || c.u_threshold.is_some()
            || c.l_threshold.is_some()
            || !c.tunnel_options.is_empty();
        if cmd == Cmd::Clear {
            if c.service.is_some() || service_opts || dest_opts {
                return Err("-C takes no options".into());
            }
            self.services.clear();
            return Ok(());
        }
        let Some((proto, spec)) = c.service else {
            return Err("no virtual service: expected -t, -u, --sctp-service or -f".into());
        };
        let (vip, protocol, port, fwmark) = match proto {
            Some(p) => {
                let (vip, port) = parse_endpoint(spec, false)?;
                (vip, p, port.unwrap_or(0), None)
            }
            None => {
                let mark: u32 = spec
                    .parse()
                    .ok()
                    .filter(|&m| m > 0)
                    .ok_or_else(|| format!("`{spec}` is not a firewall mark (1..)"))?;
                let family = if c.ipv6 { Family::Inet6 } else { Family::Inet };
                (unspecified(family), Proto::Tcp, 0, Some(mark))
            }
        };
        let key = match fwmark {
            Some(m) => SvcKey::Mark(m, Family::of(vip)),
            None => SvcKey::Addr(protocol, vip, port),
        };
        let found = self.services.iter().position(|s| key_of(s) == key);
        let label = match fwmark {
            Some(m) => format!("fwmark {m}"),
            None => format!("{}/{}", endpoint(vip, port), protocol.as_str()),
        };
        match cmd {
            Cmd::AddService | Cmd::EditService => {
                if dest_opts {
                    return Err("destination options (-r, -g/-i/-m, -w, -x, -y, --tun-*) are illegal with -A/-E".into());
                }
                let mut svc = ImportedService {
                    vip,
                    protocol,
                    port,
                    fwmark,
                    scheduler: String::new(),
                    flags: MhFlags::default(),
                    persistence: None,
                    one_packet: c.ops,
                    dests: Vec::new(),
                    line,
                    skipped: None,
                    warnings: Vec::new(),
                };
                configure_service(&mut svc, c)?;
                match (cmd, found) {
                    (Cmd::AddService, None) => self.services.push(svc),
                    (Cmd::AddService, Some(_)) => {
                        return Err(format!("service {label} is added twice (the kernel answers EEXIST)"));
                    }
                    (_, Some(i)) => {
                        // -E replaces the scheduler, flags and persistence and keeps the dests.
                        let old = &mut self.services[i];
                        svc.dests = std::mem::take(&mut old.dests);
                        svc.line = old.line;
                        *old = svc;
                    }
                    (_, None) => return Err(format!("-E of service {label}, which does not exist (ESRCH)")),
                }
            }
            Cmd::DeleteService => {
                if service_opts || dest_opts {
                    return Err("-D takes only the service".into());
                }
                let i = found.ok_or_else(|| format!("-D of service {label}, which does not exist (ESRCH)"))?;
                self.services.remove(i);
            }
            Cmd::AddDest | Cmd::EditDest | Cmd::DeleteDest => {
                if service_opts {
                    return Err("service options (-s, -p, -M, --pe, -o, -b) are illegal with -a/-e/-d".into());
                }
                let Some(i) = found else {
                    return Err(format!(
                        "destination for service {label}, which has not been added: no `-A` line for it before this one"
                    ));
                };
                self.dest(line, cmd, c, i)?;
            }
            Cmd::Clear => {}
        }
        Ok(())
    }

    fn dest(&mut self, line: usize, cmd: Cmd, c: &Command<'_>, i: usize) -> Result<(), String> {
        let svc = &mut self.services[i];
        let real = c.real.ok_or("no real server: expected -r ADDRESS[:PORT]")?;
        let (addr, port) = parse_endpoint(real, false)?;
        // ipvsadm copies the service port when -r has none.
        let port = port.unwrap_or(svc.port);
        let at = svc.dests.iter().position(|d| d.addr == addr && d.port == port);
        let ep = endpoint(addr, port);
        if cmd == Cmd::DeleteDest {
            if c.forward.is_some() || c.weight.is_some() || c.u_threshold.is_some() || c.l_threshold.is_some() {
                return Err("-d takes only the service and -r".into());
            }
            let at = at.ok_or_else(|| format!("-d of destination {ep}, which does not exist (ENOENT)"))?;
            svc.dests.remove(at);
            return Ok(());
        }
        // ipvsadm's defaults for -a and -e alike: weight 1, direct routing.
        let forward = c.forward.unwrap_or(Forward::Route);
        let weight = match c.weight {
            Some(w) => parse_weight(w)?,
            None => 1,
        };
        if !c.tunnel_options.is_empty() && forward != Forward::Tunnel {
            return Err("tunnel options (--tun-*) conflict with the forwarding method: they need -i".into());
        }
        family_check(svc, addr, forward)?;
        let mut warnings = Vec::new();
        if weight > IPVSADM_MAX_WEIGHT {
            warnings.push(format!(
                "weight {weight} is above ipvsadm's limit {IPVSADM_MAX_WEIGHT}: ipvsadm-restore would reject this line"
            ));
        }
        if c.u_threshold.is_some() || c.l_threshold.is_some() {
            warnings.push(
                "connection thresholds (-x/-y) ignored: IPVS marks a dest overloaded (unavailable to mh) at its upper \
                 threshold; maglevd keeps no connection counts"
                    .into(),
            );
        }
        for v in [c.u_threshold, c.l_threshold].into_iter().flatten() {
            if v.parse::<u32>().ok().filter(|&t| t <= MAX_WEIGHT).is_none() {
                return Err(format!("threshold `{v}` is not a number 0..={MAX_WEIGHT}"));
            }
        }
        match (cmd, at) {
            (Cmd::AddDest, Some(_)) => Err(format!("destination {ep} is added twice (the kernel answers EEXIST)")),
            (Cmd::AddDest, None) => {
                // list_add_rcu: the new dest becomes the list head (SPEC.md §8.1).
                svc.dests.insert(
                    0,
                    ImportedDest {
                        addr,
                        port,
                        weight,
                        last_weight: weight,
                        last_weight_known: weight > 0,
                        forward,
                        line,
                        warnings,
                    },
                );
                Ok(())
            }
            (_, Some(at)) => {
                // -e: the dest keeps its place; last_weight changes only to a non-zero weight (§9).
                let d = &mut svc.dests[at];
                d.weight = weight;
                if weight != 0 {
                    d.last_weight = weight;
                    d.last_weight_known = true;
                }
                d.forward = forward;
                d.warnings.extend(warnings);
                Ok(())
            }
            (_, None) => Err(format!("-e of destination {ep}, which does not exist (ENOENT)")),
        }
    }
}

/// The service settings of an `-A`/`-E` line, with ipvsadm's checks.
fn configure_service(svc: &mut ImportedService, c: &Command<'_>) -> Result<(), String> {
    svc.scheduler = c.scheduler.unwrap_or(DEFAULT_SCHEDULER).to_string();
    if let Some(list) = c.sched_flags {
        let (flags, note) = sched_flags(&svc.scheduler, list, true)?;
        svc.flags = flags;
        svc.warnings.extend(note);
    }
    if let Some(t) = c.persistent {
        let timeout = match t {
            None => 300, // IPVS_SVC_PERSISTENT_TIMEOUT
            Some(t) => t
                .parse()
                .ok()
                .filter(|t| (1..=86_400 * 31).contains(t))
                .ok_or_else(|| format!("invalid persistence timeout `{t}`"))?,
        };
        svc.persistence =
            Some(Persistence { timeout, netmask: c.netmask.map(str::to_string), engine: c.engine.map(str::to_string) });
    }
    if let Some(m) = c.netmask {
        let ok = match svc.vip {
            IpAddr::V4(_) => m.parse::<Ipv4Addr>().is_ok(),
            IpAddr::V6(_) => m.parse::<u8>().is_ok_and(|m| (1..=128).contains(&m)),
        };
        if !ok {
            return Err(format!("`{m}` is not a persistence netmask"));
        }
    }
    if svc.fwmark.is_none() && svc.port == 0 && svc.persistence.is_none() {
        return Err("Zero port specified for non-persistent service (ipvsadm refuses it)".into());
    }
    if svc.one_packet && svc.fwmark.is_none() && svc.protocol != Proto::Udp {
        return Err("One-Packet Scheduling is only for UDP virtual services (ipvsadm refuses -o here)".into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Policies and warnings

/// ipvsadm's `ipvs_cmp_dests`: `int` differences of `u32` words, then of ports.
fn ipvsadm_cmp_dests(a: &ImportedDest, b: &ImportedDest) -> i32 {
    let r = match (a.addr, b.addr) {
        (IpAddr::V4(x), IpAddr::V4(y)) => x.to_bits().wrapping_sub(y.to_bits()) as i32,
        (IpAddr::V6(x), IpAddr::V6(y)) => {
            let (x, y) = (x.octets(), y.octets());
            (0..4)
                .map(|w| {
                    let word = |o: &[u8; 16]| u32::from_be_bytes([o[4 * w], o[4 * w + 1], o[4 * w + 2], o[4 * w + 3]]);
                    word(&x).wrapping_sub(word(&y)) as i32
                })
                .find(|&r| r != 0)
                .unwrap_or(0)
        }
        _ => 0,
    };
    if r != 0 { r } else { i32::from(a.port) - i32::from(b.port) }
}

fn skip_reason(s: &ImportedService) -> Option<String> {
    if let Some(m) = s.fwmark {
        return Some(format!(
            "firewall-mark service (fwmark {m}): maglevd services are VIP:port/protocol, which a netfilter mark does \
             not name"
        ));
    }
    if s.scheduler != "mh" {
        return Some(format!(
            "scheduler `{}` is not `mh`: only mh tables can be reproduced (maglevd's own `maglev` algorithm picks other \
             backends)",
            s.scheduler
        ));
    }
    if s.protocol == Proto::Sctp {
        return Some("SCTP service: maglevd forwards TCP and UDP only".into());
    }
    if s.port == 0 {
        return Some(
            "port 0 (every port of the VIP, always persistent): IPVS pins each client to one backend for all ports, \
             state maglevd does not keep"
                .into(),
        );
    }
    None
}

fn service_warnings(s: &mut ImportedService, format: InputFormat) {
    if let Some(p) = &s.persistence {
        let mut w = format!(
            "persistent (timeout {}s{}{}): the table is exact and a client's first connection goes to the same \
             backend, but IPVS then sends the client's later connections to that backend via its persistence \
             template for the timeout",
            p.timeout,
            p.netmask.as_ref().map_or(String::new(), |m| format!(", mask {m}")),
            p.engine.as_ref().map_or(String::new(), |e| format!(", pe {e}")),
        );
        w.push_str(
            " (the whole mask network shares one template); maglevd looks up the table for every new flow, so \
             results differ after a table change within the timeout, with a netmask wider than one address, or \
             with mh-port",
        );
        s.warnings.push(w);
    }
    if s.one_packet {
        s.warnings.push(
            "one-packet scheduling (ops): IPVS schedules every datagram without a connection entry; the mh choice is \
             the same table lookup maglevd makes"
                .into(),
        );
    }
    if s.dests.is_empty() {
        s.warnings.push(
            "no destinations: the table is empty and every new flow gets no destination (IPVS answers ICMP \
             port-unreachable)"
                .into(),
        );
    } else if s.dests.iter().all(|d| d.last_weight == 0) {
        s.warnings
            .push("every backend has last_weight 0: the table is empty unless some were drained (see below)".into());
    }
    if format == InputFormat::List
        && s.dests.len() >= 2
        && s.dests.windows(2).all(|p| ipvsadm_cmp_dests(&p[0], &p[1]) <= 0)
    {
        s.warnings.push(
            "the destinations are in ipvsadm's sort order (address, then port), which is what `ipvsadm -Ln` without \
             --nosort prints: if this listing was made without --nosort the backend order is wrong; re-run \
             `ipvsadm -Ln --nosort` (with --nosort this order is right)"
                .into(),
        );
    }
    let (vport, fwmark) = (s.port, s.fwmark);
    for d in &mut s.dests {
        if d.weight == 0 && !d.last_weight_known {
            let how = match format {
                InputFormat::List => "the listing shows only the current weight",
                InputFormat::Save => {
                    "a host restored from this file gives it no slots, but the saved host may not have"
                }
            };
            d.warnings.push(format!(
                "weight 0: either drained (`ipvsadm -e … -w 0`, which keeps its slots: last_weight = its weight \
                 before) or added with weight 0 (no slots); {how}. last_weight = 0 is written: if this backend was \
                 drained, set last_weight to its weight before the drain"
            ));
        }
        match d.forward {
            Forward::Route => {}
            f => d.warnings.push(format!(
                "forwarding method {}: the mh table does not depend on it, but maglevd forwards by direct routing \
                 only; the backend must accept packets for the VIP (VIP on loopback, arp_ignore/arp_announce)",
                match f {
                    Forward::Masq => "Masq (NAT, -m)",
                    Forward::Tunnel => "Tunnel (-i)",
                    _ => "Local (an address of the IPVS host itself)",
                }
            )),
        }
        if fwmark.is_none() && matches!(d.forward, Forward::Route | Forward::Tunnel) && d.port != vport {
            let restore = match format {
                InputFormat::List => "",
                InputFormat::Save => {
                    "; ipvsadm-restore of this file would store the service port instead and build another table"
                }
            };
            d.warnings.push(format!(
                "port {} differs from the service port {vport}: ipvsadm forces the service port for -g/-i, so this \
                 dest was set over netlink (e.g. keepalived). Port {} is kept: it is what the kernel hashes{restore}",
                d.port, d.port
            ));
        }
    }
}

fn finish(format: InputFormat, mut services: Vec<ImportedService>, mut file_warnings: Vec<String>) -> Import {
    if format == InputFormat::Save && !services.is_empty() {
        file_warnings.insert(
            0,
            "ipvsadm-save sorts destinations, so a save file does not record the kernel's destination order of the \
             host it was saved from. Backends are written in the order ipvsadm-restore of this file creates (the \
             reverse of the file's `-a` lines: each add inserts at the list head). That reproduces the mh tables only \
             of hosts restored from this file; for a live host import `ipvsadm -Ln --nosort` instead"
                .into(),
        );
    }
    if services.is_empty() {
        file_warnings.push("no virtual services in the input".into());
    }
    let mut warnings = file_warnings.clone();
    for s in &mut services {
        s.skipped = skip_reason(s);
        let label = s.label();
        if let Some(r) = &s.skipped {
            warnings.push(format!("line {}: {label}: not imported: {r}", s.line));
            continue;
        }
        service_warnings(s, format);
        warnings.extend(s.warnings.iter().map(|w| format!("line {}: {label}: {w}", s.line)));
        for d in &s.dests {
            let ep = endpoint(d.addr, d.port);
            warnings.extend(d.warnings.iter().map(|w| format!("line {}: {label} backend {ep}: {w}", d.line)));
        }
    }
    Import { format, services, file_warnings, warnings }
}

// ---------------------------------------------------------------------------------------------
// TOML output

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Append `text` as `#` comment lines wrapped at [`COMMENT_WIDTH`]; `first`/`rest` prefix the
/// first and the continuation lines (each ending in a space). Control characters (invalid in TOML comments) become `?`.
fn comment(out: &mut String, first: &str, rest: &str, text: &str) {
    let clean: String = text.chars().map(|c| if c.is_control() && c != '\t' { '?' } else { c }).collect();
    let mut line = String::from(first);
    let mut empty = true;
    for word in clean.split_whitespace() {
        if !empty && line.chars().count() + 1 + word.chars().count() > COMMENT_WIDTH {
            out.push_str(line.trim_end());
            out.push('\n');
            line = String::from(rest);
            empty = true;
        }
        if !empty {
            line.push(' ');
        }
        line.push_str(word);
        empty = false;
    }
    out.push_str(line.trim_end());
    out.push('\n');
}

fn render(import: &Import, ingress: &str, egress: &str, tab_index: Option<u8>) -> String {
    let index = tab_index.unwrap_or(DEFAULT_TAB_INDEX);
    let size = ipvs_mh::table_size(index).unwrap_or(0);
    let mut out = String::new();
    let c = |out: &mut String, text: &str| comment(out, "# ", "# ", text);
    c(
        &mut out,
        &format!(" maglevd configuration imported by `maglevd import-ipvs` from {} output.", import.format.source()),
    );
    out.push_str("#\n");
    c(
        &mut out,
        " Only IPVS services with scheduler `mh` become `ipvs-mh` services: maglevd rebuilds the kernel's \
         ip_vs_mh table slot for slot and picks the same backend for every new flow (SPEC.md §1-§7).",
    );
    out.push_str("#\n");
    c(
        &mut out,
        " BACKEND ORDER. Each service's backends are in KERNEL LIST ORDER: the first is the list head, the \
         destination added last (`ipvsadm -a` inserts at the head, so this is the reverse of the `ipvsadm -a` \
         order). The mh table depends on this order (SPEC.md §8).",
    );
    match import.format {
        InputFormat::List => c(
            &mut out,
            " The input must be `ipvsadm -Ln --nosort` output, which prints the kernel order: plain `ipvsadm -Ln` \
             sorts destinations by address and the listing does not say which was run. If it came from plain \
             `ipvsadm -Ln`, this file is wrong: re-run with --nosort.",
        ),
        InputFormat::Save => c(
            &mut out,
            " The input was an ipvsadm-save file, which is sorted: the backends are in the order ipvsadm-restore \
             of that file creates (the reverse of its `-a` lines). That matches only hosts restored from the file; \
             for a live host import `ipvsadm -Ln --nosort` instead.",
        ),
    }
    out.push_str("#\n");
    c(
        &mut out,
        " WEIGHTS (SPEC.md §9). `weight` is the current weight (a backend with weight 0 gets no new flows); \
         `last_weight` is the weight the table is built from. ipvsadm shows only the current weight: a backend \
         shown with weight 0 may have been drained (`ipvsadm -e ... -w 0` keeps its slots, last_weight = its \
         weight before) or added with weight 0 (no slots). Such backends are written with last_weight = 0 and a \
         WARNING: set the pre-drain weight if they were drained.",
    );
    out.push_str("#\n");
    match tab_index {
        None => c(
            &mut out,
            &format!(
                "TABLE SIZE. ipvs_tab_index is the IPVS host's CONFIG_IP_VS_MH_TAB_INDEX, which ipvsadm does not \
                 show (the `size=` in the `ipvsadm -Ln` header is the connection table, not the mh table). \
                 {DEFAULT_TAB_INDEX} is the Kconfig default (M = {size}). Check it on the IPVS host and change \
                 every ipvs_tab_index below if it differs:"
            ),
        ),
        Some(i) => c(
            &mut out,
            &format!(
                "TABLE SIZE. ipvs_tab_index = {i} (M = {size}) was given as the IPVS host's CONFIG_IP_VS_MH_TAB_INDEX:"
            ),
        ),
    }
    out.push_str("#     grep IP_VS_MH_TAB_INDEX /boot/config-$(uname -r)\n");
    if !import.warnings.is_empty() {
        out.push_str("#\n");
        c(
            &mut out,
            &format!(" WARNINGS ({}), repeated next to the services and backends they concern:", import.warnings.len()),
        );
        for w in &import.warnings {
            comment(&mut out, "#  - ", "#    ", w);
        }
    }
    out.push('\n');
    out.push_str("[interfaces]\n");
    let _ = writeln!(out, "ingress = {}", toml_str(ingress));
    let _ = writeln!(out, "egress = {}", toml_str(egress));

    let skipped: Vec<&ImportedService> = import.services.iter().filter(|s| !s.is_imported()).collect();
    if !skipped.is_empty() {
        out.push('\n');
        c(&mut out, " NOT IMPORTED:");
        for s in skipped {
            let text = format!(
                "line {}: {} (scheduler {}): {}",
                s.line,
                s.label(),
                s.scheduler,
                s.skipped.as_deref().unwrap_or_default()
            );
            comment(&mut out, "#  - ", "#    ", &text);
        }
    }
    for s in import.imported() {
        out.push('\n');
        out.push_str("[[service]]\n");
        let mut desc = format!("from line {}: {} scheduler {}", s.line, s.label(), s.scheduler);
        if s.flags.mh_fallback || s.flags.mh_port {
            let _ = write!(desc, " ({})", flag_names(s.flags).join(","));
        }
        c(&mut out, &format!(" {desc}"));
        for w in &s.warnings {
            comment(&mut out, "# WARNING: ", "#   ", w);
        }
        let _ = writeln!(out, "name = {}", toml_str(&s.label()));
        let _ = writeln!(out, "vip = {}", toml_str(&s.vip.to_string()));
        let _ = writeln!(out, "protocol = {}", toml_str(s.protocol.as_str()));
        let _ = writeln!(out, "port = {}", s.port);
        out.push_str("algorithm = \"ipvs-mh\"\n");
        let _ = writeln!(
            out,
            "ipvs_tab_index = {index}   # CONFIG_IP_VS_MH_TAB_INDEX of the IPVS host: see the top of this file"
        );
        let flags: Vec<String> = flag_names(s.flags).iter().map(|f| toml_str(f)).collect();
        let _ = writeln!(out, "ipvs_flags = [{}]", flags.join(", "));
        if !s.dests.is_empty() {
            c(
                &mut out,
                " backends in KERNEL LIST ORDER (= `ipvsadm -Ln --nosort` order = reverse of the `ipvsadm -a` order)",
            );
        }
        for d in &s.dests {
            out.push('\n');
            out.push_str("[[service.backend]]\n");
            c(
                &mut out,
                &format!(" line {}: {} {} weight {}", d.line, endpoint(d.addr, d.port), d.forward.as_str(), d.weight),
            );
            for w in &d.warnings {
                comment(&mut out, "# WARNING: ", "#   ", w);
            }
            let _ = writeln!(out, "ip = {}", toml_str(&d.addr.to_string()));
            let _ = writeln!(out, "port = {}", d.port);
            let _ = writeln!(out, "weight = {}", d.weight);
            if d.last_weight_known {
                let _ = writeln!(out, "last_weight = {}", d.last_weight);
            } else {
                let _ = writeln!(
                    out,
                    "last_weight = {}   # set to the pre-drain weight if drained with `ipvsadm -e ... -w 0`",
                    d.last_weight
                );
            }
        }
    }
    out
}

fn flag_names(f: MhFlags) -> Vec<&'static str> {
    let mut v = Vec::new();
    if f.mh_fallback {
        v.push("mh-fallback");
    }
    if f.mh_port {
        v.push("mh-port");
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(parse_endpoint("10.0.0.1:80", true), Ok((v4, Some(80))));
        assert_eq!(parse_endpoint("[2001:db8::1]:443", true), Ok((v6, Some(443))));
        assert_eq!(parse_endpoint("10.0.0.1", false), Ok((v4, None)));
        assert_eq!(parse_endpoint("2001:db8::1", false), Ok((v6, None)));
        for bad in [
            "10.0.0.1",
            "2001:db8::1",
            "[2001:db8::1]",
            "[2001:db8::1:80",
            "10.0.0:80",
            "10.0.0.1:",
            "1.2.3.4:65536",
            "",
        ] {
            assert!(parse_endpoint(bad, true).is_err(), "{bad}");
        }
        assert!(parse_endpoint("www.example.com:http", true).unwrap_err().contains("-n"));
        assert!(parse_endpoint("10.0.0.1:http", true).unwrap_err().contains("-n"));
    }

    #[test]
    fn weights() {
        assert_eq!(parse_weight("0"), Ok(0));
        assert_eq!(parse_weight("2147483647"), Ok(MAX_WEIGHT));
        assert!(parse_weight("2147483648").is_err());
        assert!(parse_weight("-1").is_err());
        assert!(parse_weight("x").is_err());
    }

    #[test]
    fn flags() {
        let both = MhFlags { mh_port: true, mh_fallback: true };
        assert_eq!(sched_flags("mh", "mh-fallback,mh-port", true), Ok((both, None)));
        assert_eq!(sched_flags("mh", "flag-1,flag-2", true), Ok((both, None)));
        assert!(sched_flags("mh", "flag-3", true).unwrap().1.is_some());
        assert!(sched_flags("mh", "sh-port", true).is_err());
        assert!(sched_flags("rr", "mh-port", true).is_err());
        assert!(sched_flags("mh", "bogus", false).is_err());
        assert_eq!(sched_flags("sh", "sh-fallback,sh-port", true), Ok((MhFlags::default(), None)));
        assert_eq!(sched_flags("wlc", "whatever", false), Ok((MhFlags::default(), None)));
    }

    #[test]
    fn ipvsadm_comparator_wraps_like_c() {
        let d = |a: &str, port| ImportedDest {
            addr: a.parse().unwrap(),
            port,
            weight: 1,
            last_weight: 1,
            last_weight_known: true,
            forward: Forward::Route,
            line: 1,
            warnings: Vec::new(),
        };
        assert!(ipvsadm_cmp_dests(&d("10.0.0.1", 80), &d("10.0.0.2", 80)) < 0);
        assert!(ipvsadm_cmp_dests(&d("10.0.0.1", 81), &d("10.0.0.1", 80)) > 0);
        // 10.x − 200.x wraps to a positive int in C: "sorted" is not ascending there.
        assert!(ipvsadm_cmp_dests(&d("10.0.0.1", 80), &d("200.0.0.1", 80)) > 0);
        assert!(ipvsadm_cmp_dests(&d("2001:db8::1", 80), &d("2001:db8::2", 80)) < 0);
    }

    #[test]
    fn comments_are_wrapped_and_clean() {
        let mut out = String::new();
        comment(&mut out, "# ", "#   ", &format!("{} bad\u{7}char", "word ".repeat(40)));
        assert!(out.lines().all(|l| l.starts_with('#') && l.chars().count() <= COMMENT_WIDTH));
        assert!(out.contains("bad?char"));
        assert_eq!(toml_str("a\"b\\c\u{1}"), "\"a\\\"b\\\\c\\u0001\"");
    }
}
