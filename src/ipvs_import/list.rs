//! `ipvsadm -Ln --nosort` (and `--tun-info`) listings: lines → [`ImportedService`]s in printed
//! order, which is the kernel's list order for `--nosort` output (see the parent module).

use super::*;

const LIST_SERVICE_TITLES: [&str; 4] = ["Prot", "LocalAddress:Port", "Scheduler", "Flags"];
const LIST_DEST_TITLES: [&str; 5] = ["RemoteAddress:Port", "Forward", "Weight", "ActiveConn", "InActConn"];
const LIST_DEST_TITLES_TUN: [&str; 6] =
    ["RemoteAddress:Port", "Forward", "TunnelInfo", "Weight", "ActiveConn", "InActConn"];
const OTHER_LISTINGS: &str = "--stats, --rate, --thresholds and --persistent-conn listings lack the forwarding method \
                              or the weight: use `ipvsadm -Ln --nosort`";

pub(super) fn parse_list(text: &str) -> Result<(Vec<ImportedService>, Vec<String>), ImportError> {
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
