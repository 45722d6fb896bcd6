//! `/metrics` (Prometheus text format 0.0.4) and `/healthz` over HTTP/1.0, on a plain
//! `std::net::TcpListener`: one GET route each, so no HTTP crate and no async runtime in the
//! forwarder process. Requests are handled one at a time with short timeouts; a slow or broken
//! client cannot hold the endpoint for more than a second.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::Shared;
use crate::metrics;

/// Serve until the process exits.
pub fn serve(listener: TcpListener, shared: &Shared) {
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::Relaxed) {
            return;
        }
        if let Ok(s) = stream {
            let _ = handle(s, shared);
        }
    }
}

fn handle(mut s: TcpStream, shared: &Shared) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    s.set_write_timeout(Some(Duration::from_secs(1)))?;
    let mut buf = [0u8; 1024];
    let mut len = 0;
    // Read until the end of the request line (enough to route on).
    while len < buf.len() {
        let n = s.read(&mut buf[len..])?;
        if n == 0 {
            break;
        }
        len += n;
        if buf[..len].contains(&b'\n') {
            break;
        }
    }
    let line = std::str::from_utf8(&buf[..len]).unwrap_or("").lines().next().unwrap_or("");
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, body) = match (method, path) {
        ("GET", "/metrics") => ("200 OK", render(shared)),
        ("GET", "/healthz") => health(shared),
        ("GET", _) => ("404 Not Found", "not found: try /metrics or /healthz\n".to_string()),
        _ => ("405 Method Not Allowed", "only GET\n".to_string()),
    };
    let head = format!(
        "HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body.as_bytes())
}

/// Ready when every service has at least one usable backend.
fn health(shared: &Shared) -> (&'static str, String) {
    let snap = shared.snapshot.load();
    let empty: Vec<&str> = snap.services().iter().filter(|s| s.table.is_empty()).map(|s| s.name.as_str()).collect();
    if empty.is_empty() {
        ("200 OK", "ok\n".to_string())
    } else {
        ("503 Service Unavailable", format!("no usable backend: {}\n", empty.join(", ")))
    }
}

/// Every metric of the daemon.
pub fn render(shared: &Shared) -> String {
    let mut out = String::new();
    metrics::render_counters(&shared.counters, &mut out);
    let arp = &shared.arp;
    for (name, help, v) in [
        ("arp_replies_sent", "ARP requests for our address answered by maglevd.", &arp.replies_sent),
        ("arp_vip_requests_refused", "ARP requests for a VIP left unanswered (by design).", &arp.vip_requests_refused),
        ("arp_probes_sent", "ARP probes sent to resolve or refresh backend MACs.", &arp.probes_sent),
        ("arp_macs_learned", "Backend MACs learned or changed.", &arp.macs_learned),
        ("arp_macs_expired", "Backend MACs forgotten after unanswered refreshes.", &arp.macs_expired),
        ("arp_errors", "ARP socket errors.", &arp.errors),
        ("reload_failures", "Reloads refused; the running configuration was kept.", &shared.reload_failures),
    ] {
        let _ = writeln!(out, "# HELP maglevd_{name}_total {help}");
        let _ = writeln!(out, "# TYPE maglevd_{name}_total counter");
        let _ = writeln!(out, "maglevd_{name}_total {}", v.load(Ordering::Relaxed));
    }
    let snap = shared.snapshot.load();
    let _ = writeln!(out, "# HELP maglevd_snapshot_generation Generation of the forwarding snapshot in use.");
    let _ = writeln!(out, "# TYPE maglevd_snapshot_generation gauge");
    let _ = writeln!(out, "maglevd_snapshot_generation {}", snap.generation());
    let _ = writeln!(out, "# HELP maglevd_workers Forwarding worker threads.");
    let _ = writeln!(out, "# TYPE maglevd_workers gauge");
    let _ = writeln!(out, "maglevd_workers {}", shared.counters.workers());
    let _ = writeln!(out, "# HELP maglevd_backend_up 1 if the backend is in the table (weight > 0 and MAC known).");
    let _ = writeln!(out, "# TYPE maglevd_backend_up gauge");
    let _ = writeln!(out, "# HELP maglevd_backend_slots Lookup-table slots owned by the backend.");
    let _ = writeln!(out, "# TYPE maglevd_backend_slots gauge");
    for s in snap.services() {
        let shares = s.table.shares(s.backends.len());
        for (b, slots) in s.backends.iter().zip(shares) {
            let labels = format!("service=\"{}\",backend=\"{}\"", s.name, b.ip);
            let _ = writeln!(out, "maglevd_backend_up{{{labels}}} {}", u8::from(b.usable()));
            let _ = writeln!(out, "maglevd_backend_slots{{{labels}}} {slots}");
        }
    }
    out
}
