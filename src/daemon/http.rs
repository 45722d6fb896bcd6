//! `/metrics` (Prometheus text format 0.0.4) and `/healthz` over HTTP/1.0, on a plain
//! `std::net::TcpListener`: one GET route each, so no HTTP crate and no async runtime in the
//! forwarder process. Requests are handled one at a time with short timeouts; a slow or broken
//! client cannot hold the endpoint for more than a second.
//!
//! # Exposition
//! `prometheus-client`'s text encoder for the 0.0.4 format (the format and names maglevd has always
//! served, so the `_total` names and dashboards stay as they are): it escapes label values (service
//! names are free text), writes HELP and TYPE for every family and each family in one block.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

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
    let text = "text/plain; charset=utf-8";
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => ("200 OK", metrics::CONTENT_TYPE, render(shared)),
        ("GET", "/healthz") => {
            let (status, body) = health(shared);
            (status, text, body)
        }
        ("GET", _) => ("404 Not Found", text, "not found: try /metrics or /healthz\n".to_string()),
        _ => ("405 Method Not Allowed", text, "only GET\n".to_string()),
    };
    let head = format!(
        "HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
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

/// Every metric of the daemon, in the 0.0.4 text format ([`metrics::CONTENT_TYPE`]).
pub fn render(shared: &Shared) -> String {
    metrics::encode(vec![Box::new(shared.counters.totals()), Box::new(DaemonMetrics::collect(shared))])
}

/// The daemon's metrics other than the packet counters, read at scrape time.
#[derive(Debug)]
struct DaemonMetrics {
    /// (name without `_total`, help, value).
    counters: Vec<(&'static str, &'static str, u64)>,
    generation: u64,
    workers: usize,
    backends: Vec<BackendState>,
}

#[derive(Debug)]
struct BackendState {
    service: String,
    backend: String,
    up: bool,
    slots: u64,
}

impl BackendState {
    fn labels(&self) -> [(&'static str, &str); 2] {
        [("service", self.service.as_str()), ("backend", self.backend.as_str())]
    }
}

impl DaemonMetrics {
    fn collect(shared: &Shared) -> DaemonMetrics {
        let arp = &shared.arp;
        let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        let counters = vec![
            ("maglevd_arp_replies_sent", "ARP requests for our address answered by maglevd.", get(&arp.replies_sent)),
            (
                "maglevd_arp_vip_requests_refused",
                "ARP requests for a VIP left unanswered (by design).",
                get(&arp.vip_requests_refused),
            ),
            ("maglevd_arp_probes_sent", "ARP probes sent to resolve or refresh backend MACs.", get(&arp.probes_sent)),
            ("maglevd_arp_macs_learned", "Backend MACs learned or changed.", get(&arp.macs_learned)),
            ("maglevd_arp_macs_expired", "Backend MACs forgotten after unanswered refreshes.", get(&arp.macs_expired)),
            ("maglevd_arp_errors", "ARP socket errors.", get(&arp.errors)),
            (
                "maglevd_reload_failures",
                "Reloads refused; the running configuration was kept.",
                get(&shared.reload_failures),
            ),
        ];
        let snap = shared.snapshot.load();
        let mut backends = Vec::new();
        for s in snap.services() {
            let shares = s.table.shares(s.backends.len());
            for (b, slots) in s.backends.iter().zip(shares) {
                backends.push(BackendState {
                    service: s.name.clone(),
                    backend: b.ip.to_string(),
                    up: b.usable(),
                    slots,
                });
            }
        }
        DaemonMetrics { counters, generation: snap.generation(), workers: shared.counters.workers(), backends }
    }
}

impl Collector for DaemonMetrics {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        for (name, help, v) in &self.counters {
            metrics::counter(&mut enc, name, help, *v)?;
        }
        metrics::gauge(
            &mut enc,
            "maglevd_snapshot_generation",
            "Generation of the forwarding snapshot in use.",
            self.generation,
        )?;
        metrics::gauge(&mut enc, "maglevd_workers", "Forwarding worker threads.", self.workers as u64)?;
        metrics::gauge_family(
            &mut enc,
            "maglevd_backend_up",
            "1 if the backend is in the table (weight > 0 and MAC known).",
            self.backends.iter().map(|b| (b.labels(), u64::from(b.up))),
        )?;
        metrics::gauge_family(
            &mut enc,
            "maglevd_backend_slots",
            "Lookup-table slots owned by the backend.",
            self.backends.iter().map(|b| (b.labels(), b.slots)),
        )
    }
}
