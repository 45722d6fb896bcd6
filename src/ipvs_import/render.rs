//! The generated maglevd TOML: one `ipvs-mh` service per imported service, with the warnings as
//! comments next to what they are about.

use super::*;

/// A TOML basic string.
pub(super) fn toml_str(s: &str) -> String {
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
pub(super) fn comment(out: &mut String, first: &str, rest: &str, text: &str) {
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

pub(super) fn render(import: &Import, ingress: &str, egress: &str, tab_index: Option<u8>) -> String {
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
         ip_vs_mh table slot for slot and picks the same backend for every new flow.",
    );
    out.push_str("#\n");
    c(
        &mut out,
        " BACKEND ORDER. Each service's backends are in KERNEL LIST ORDER: the first is the list head, the \
         destination added last (`ipvsadm -a` inserts at the head, so this is the reverse of the `ipvsadm -a` \
         order). The mh table depends on this order.",
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
        " WEIGHTS. `weight` is the current weight (a backend with weight 0 gets no new flows); \
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
