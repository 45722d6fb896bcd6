//! Import an IPVS configuration (`ipvsadm` text output) as maglevd `ipvs-mh` services.
//!
//! `maglevd import-ipvs` reads what `ipvsadm` prints on an IPVS frontend and writes a maglevd TOML
//! file whose `ipvs-mh` services rebuild the kernel's `ip_vs_mh` tables slot for slot
//! ([`crate::ipvs_mh`] §1–§7; the § numbers here are that module's). This module is the pure part: text in, [`Import`] and TOML text out,
//! no I/O. It never panics on any input; bad or partial input is an [`ImportError`] naming the
//! 1-based line, the line and what is wrong.
//!
//! # What the table needs, and what the text gives
//!
//! An mh table is a function of the destination list **in kernel list order**, each dest's address,
//! port and `last_weight`, and the table size (§4–§6, §8, §9). The two input formats give
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

    /// The service's address family (decides address folding, [`crate::ipvs_mh`] §3).
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

mod list;
mod policy;
mod render;
mod save;

use list::parse_list;
use policy::finish;
use render::render;
use save::parse_save;

#[cfg(test)]
mod tests;
