//! `ipvsadm-save -n` / `ipvsadm -R` input, replayed command by command as `ipvsadm-restore`
//! would (each `-a` inserts at the list head; `-e` follows the `last_weight` rule).

use super::*;

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

pub(super) fn parse_save(text: &str) -> Result<(Vec<ImportedService>, Vec<String>), ImportError> {
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
                // list_add_rcu: the new dest becomes the list head (§8.1).
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
