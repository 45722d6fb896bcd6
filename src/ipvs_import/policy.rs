//! Which services are imported, and the warnings about what the text cannot tell (the table
//! of policies is in the parent module's docs).

use super::*;

/// ipvsadm's `ipvs_cmp_dests`: `int` differences of `u32` words, then of ports.
pub(super) fn ipvsadm_cmp_dests(a: &ImportedDest, b: &ImportedDest) -> i32 {
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

pub(super) fn finish(
    format: InputFormat,
    mut services: Vec<ImportedService>,
    mut file_warnings: Vec<String>,
) -> Import {
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
