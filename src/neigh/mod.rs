//! ARP: answering for the frontend's own real IP (never for a VIP) and resolving backend MACs.
//!
//! Pure logic, no I/O: frames come in as bytes, frames to send go out through a closure, and the
//! current time is an argument (smoltcp's `iface/neighbor.rs` style), so tests drive time.
//!
//! * [`Responder`] answers ARP requests for the addresses it is given. The daemon gives it an
//!   interface's real IP only when the kernel does not hold that address (the kernel answers for
//!   its own addresses). It never answers for a VIP, even if asked to: the whole point of maglevd is
//!   that no frontend claims the VIP, which removes the seed's `arptables` workaround.
//! * [`NeighTable`] resolves each backend's MAC on the egress interface: broadcast requests with
//!   retries while unresolved, unicast refreshes before an entry expires, learning from replies and
//!   gratuitous ARP. A backend whose MAC is unknown (never resolved, or expired after its refresh
//!   probes went unanswered) is reported as unknown, which keeps it out of the Maglev table.
//! * **No one-packet takeover.** Our own interfaces' MACs are never learned for a backend (frames
//!   sent there would come back to us and loop). A *different* MAC claimed for a resolved backend
//!   (a reply or a gratuitous announcement) is not used at once: it opens a claim, answered by a
//!   broadcast request; the new MAC replaces the old one only if it answers that request and the
//!   old MAC stays silent until the claim window (`probe_interval`) ends. A backend that really
//!   moved is followed within about a second; a single forged reply changes nothing. Claims,
//!   confirmed changes, kept MACs and refused own MACs are counted ([`NeighStats`]).
//!
//! Parsing uses `etherparse`'s ARP slice (docs/dependencies.md: its ARP types are complete and ARP is not a
//! hot path); building writes the fixed 42-byte Ethernet + ARP frame directly.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use etherparse::{ArpOperation, ArpPacketSlice, EtherType};

use crate::wire::{ETH_HEADER_LEN, ETHERTYPE_ARP, EthernetFrame, MacAddr};

/// Length of an Ethernet + ARP (Ethernet/IPv4) frame without padding.
pub const ARP_FRAME_LEN: usize = ETH_HEADER_LEN + 28;

/// The fields of an Ethernet/IPv4 ARP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arp {
    pub request: bool,
    pub sender_mac: MacAddr,
    pub sender_ip: Ipv4Addr,
    pub target_mac: MacAddr,
    pub target_ip: Ipv4Addr,
}

/// Parse an Ethernet frame carrying an Ethernet/IPv4 ARP request or reply; `None` for anything
/// else (other ethertypes, other hardware or protocol types, truncated, unknown operations).
pub fn parse_arp(frame: &[u8]) -> Option<Arp> {
    let eth = EthernetFrame::new_checked(frame)?;
    if eth.ethertype() != ETHERTYPE_ARP {
        return None;
    }
    let arp = ArpPacketSlice::from_slice(eth.payload()).ok()?;
    if arp.proto_addr_type() != EtherType::IPV4 || arp.hw_addr_size() != 6 || arp.proto_addr_size() != 4 {
        return None;
    }
    let request = match arp.operation() {
        ArpOperation::REQUEST => true,
        ArpOperation::REPLY => false,
        _ => return None,
    };
    let mac = |b: &[u8]| -> Option<MacAddr> { Some(MacAddr(b.try_into().ok()?)) };
    let ip = |b: &[u8]| -> Option<Ipv4Addr> { Some(Ipv4Addr::from(<[u8; 4]>::try_from(b).ok()?)) };
    Some(Arp {
        request,
        sender_mac: mac(arp.sender_hw_addr())?,
        sender_ip: ip(arp.sender_protocol_addr())?,
        target_mac: mac(arp.target_hw_addr())?,
        target_ip: ip(arp.target_protocol_addr())?,
    })
}

/// Build an Ethernet + ARP frame. `eth_dst` is the Ethernet destination (broadcast for requests
/// that resolve, unicast for replies and refreshes).
pub fn build_arp(eth_dst: MacAddr, arp: &Arp) -> [u8; ARP_FRAME_LEN] {
    let mut f = [0u8; ARP_FRAME_LEN];
    f[0..6].copy_from_slice(&eth_dst.0);
    f[6..12].copy_from_slice(&arp.sender_mac.0);
    f[12..14].copy_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    // htype Ethernet (1), ptype IPv4, hlen 6, plen 4, operation.
    f[14..22].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, if arp.request { 1 } else { 2 }]);
    f[22..28].copy_from_slice(&arp.sender_mac.0);
    f[28..32].copy_from_slice(&arp.sender_ip.octets());
    f[32..38].copy_from_slice(&arp.target_mac.0);
    f[38..42].copy_from_slice(&arp.target_ip.octets());
    f
}

/// Answers ARP requests for a set of addresses on one interface, never for a VIP.
#[derive(Debug, Clone)]
pub struct Responder {
    mac: MacAddr,
    answer_for: Vec<Ipv4Addr>,
    vips: Vec<Ipv4Addr>,
}

/// What the responder did with a frame (each outcome is counted by the daemon).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// A reply to send on the interface the request came in on.
    Reply([u8; ARP_FRAME_LEN]),
    /// A request for a VIP: deliberately unanswered.
    RefusedVip,
    /// Not a request for one of our addresses.
    NotOurs,
}

impl Responder {
    /// `answer_for` are the interface's real addresses maglevd must answer for; any of them that is
    /// also a VIP is ignored (and the configuration layer rejects such a setup first).
    pub fn new(mac: MacAddr, answer_for: Vec<Ipv4Addr>, vips: Vec<Ipv4Addr>) -> Responder {
        let answer_for = answer_for.into_iter().filter(|ip| !vips.contains(ip)).collect();
        Responder { mac, answer_for, vips }
    }

    pub fn handle(&self, arp: &Arp) -> Answer {
        if !arp.request {
            return Answer::NotOurs;
        }
        if self.vips.contains(&arp.target_ip) {
            return Answer::RefusedVip;
        }
        if !self.answer_for.contains(&arp.target_ip) {
            return Answer::NotOurs;
        }
        let reply = Arp {
            request: false,
            sender_mac: self.mac,
            sender_ip: arp.target_ip,
            target_mac: arp.sender_mac,
            target_ip: arp.sender_ip,
        };
        Answer::Reply(build_arp(arp.sender_mac, &reply))
    }
}

/// Timers of the backend resolver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeighTimers {
    /// Interval between probes (broadcast while unresolved, unicast while refreshing).
    pub probe_interval: Duration,
    /// Age of the last confirmation after which refresh probes start.
    pub refresh_after: Duration,
    /// Age of the last confirmation after which the MAC is forgotten (backend leaves the table).
    pub expire_after: Duration,
    /// Broadcast probes sent at `probe_interval` for a new or expired entry before slowing down.
    pub fast_probes: u32,
    /// Interval between broadcast probes after `fast_probes` went unanswered.
    pub slow_probe_interval: Duration,
}

impl Default for NeighTimers {
    fn default() -> Self {
        NeighTimers {
            probe_interval: Duration::from_secs(1),
            refresh_after: Duration::from_secs(15),
            expire_after: Duration::from_secs(30),
            fast_probes: 3,
            slow_probe_interval: Duration::from_secs(5),
        }
    }
}

/// The resolution state of one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NeighState {
    /// No MAC known; `probes` broadcast requests sent so far.
    Unresolved { probes: u32, next_probe: Instant },
    /// MAC known and confirmed at `confirmed`; `claim` is another MAC claimed for the same address
    /// and not confirmed yet.
    Resolved { mac: MacAddr, confirmed: Instant, next_probe: Instant, claim: Option<Claim> },
}

/// A different MAC claimed for a resolved backend, waiting for confirmation (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub mac: MacAddr,
    /// End of the confirmation window.
    pub until: Instant,
    /// The confirming broadcast request was sent.
    pub probed: bool,
    /// The claimed MAC answered after that request.
    pub answered: bool,
    /// The known MAC answered while the claim was open: it stays.
    pub contested: bool,
}

/// What the resolver refused or confirmed, cumulative.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NeighStats {
    /// ARP packets that offered one of our own MACs for a backend.
    pub own_mac_refused: u64,
    /// Claims of a different MAC for a resolved backend.
    pub challenges: u64,
    /// Claims confirmed: the backend's MAC changed.
    pub changes_confirmed: u64,
    /// Claims rejected because the known MAC still answers.
    pub conflicts_kept: u64,
    /// MACs forgotten after their refreshes went unanswered.
    pub expired: u64,
}

impl NeighState {
    pub fn mac(&self) -> Option<MacAddr> {
        match self {
            NeighState::Resolved { mac, .. } => Some(*mac),
            NeighState::Unresolved { .. } => None,
        }
    }
}

/// A probe to send: an ARP request for `target`, broadcast or unicast to a known MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub target: Ipv4Addr,
    pub unicast: Option<MacAddr>,
}

/// Backend MAC resolution on one interface (see the module docs).
#[derive(Debug, Clone)]
pub struct NeighTable {
    mac: MacAddr,
    ip: Ipv4Addr,
    timers: NeighTimers,
    entries: BTreeMap<Ipv4Addr, NeighState>,
    /// MACs of our own interfaces: never a backend's.
    own: Vec<MacAddr>,
    stats: NeighStats,
}

impl NeighTable {
    /// A resolver that sends requests from `mac`/`ip` (the egress interface's own).
    pub fn new(mac: MacAddr, ip: Ipv4Addr, timers: NeighTimers) -> NeighTable {
        NeighTable { mac, ip, timers, entries: BTreeMap::new(), own: vec![mac], stats: NeighStats::default() }
    }

    /// Send probes from this MAC and address from now on (the interface was re-created or
    /// changed).
    pub fn set_sender(&mut self, mac: MacAddr, ip: Ipv4Addr) {
        self.mac = mac;
        self.ip = ip;
        if !self.own.contains(&mac) {
            self.own.push(mac);
        }
    }

    /// Our own interfaces' MACs (the sending MAC is always among them): never learned for a
    /// backend.
    pub fn set_own_macs(&mut self, macs: &[MacAddr]) {
        self.own = macs.to_vec();
        if !self.own.contains(&self.mac) {
            self.own.push(self.mac);
        }
    }

    /// What was refused, claimed and confirmed so far.
    pub fn stats(&self) -> NeighStats {
        self.stats
    }

    /// Track exactly `targets` from now on: new ones start unresolved (probed at once), others are
    /// dropped, existing ones keep their state. Returns true if a MAC disappeared.
    pub fn set_targets(&mut self, targets: impl IntoIterator<Item = Ipv4Addr>, now: Instant) -> bool {
        let wanted: std::collections::BTreeSet<Ipv4Addr> = targets.into_iter().collect();
        let lost = self.entries.iter().any(|(ip, s)| !wanted.contains(ip) && s.mac().is_some());
        self.entries.retain(|ip, _| wanted.contains(ip));
        for ip in wanted {
            self.entries.entry(ip).or_insert(NeighState::Unresolved { probes: 0, next_probe: now });
        }
        lost
    }

    /// The known MAC of `ip`.
    pub fn mac(&self, ip: Ipv4Addr) -> Option<MacAddr> {
        self.entries.get(&ip).and_then(|s| s.mac())
    }

    /// Every tracked backend and its state.
    pub fn entries(&self) -> impl Iterator<Item = (Ipv4Addr, &NeighState)> {
        self.entries.iter().map(|(ip, s)| (*ip, s))
    }

    /// Learn from an ARP packet seen on the interface: a reply or request *from* a tracked backend
    /// that is addressed to us, or a gratuitous announcement. Returns true if a MAC appeared or
    /// changed (the forwarding snapshot must be rebuilt); a different MAC for a resolved backend
    /// only opens a claim (see the module docs).
    pub fn on_arp(&mut self, arp: &Arp, now: Instant) -> bool {
        let to_us = arp.target_ip == self.ip;
        let gratuitous = arp.target_ip == arp.sender_ip;
        if !(to_us || gratuitous) || !arp.sender_mac.is_unicast() {
            return false;
        }
        let Some(state) = self.entries.get_mut(&arp.sender_ip) else {
            return false;
        };
        if self.own.contains(&arp.sender_mac) {
            self.stats.own_mac_refused += 1;
            return false;
        }
        let t = self.timers;
        match state {
            NeighState::Unresolved { .. } => {
                *state = NeighState::Resolved {
                    mac: arp.sender_mac,
                    confirmed: now,
                    next_probe: now + t.refresh_after,
                    claim: None,
                };
                true
            }
            NeighState::Resolved { mac, confirmed, next_probe, claim } => {
                if arp.sender_mac == *mac {
                    *confirmed = now;
                    *next_probe = now + t.refresh_after;
                    if let Some(c) = claim {
                        c.contested = true;
                    }
                    return false;
                }
                match claim {
                    None => {
                        self.stats.challenges += 1;
                        *claim = Some(Claim {
                            mac: arp.sender_mac,
                            until: now + t.probe_interval,
                            probed: false,
                            answered: false,
                            contested: false,
                        });
                    }
                    Some(c) if c.mac == arp.sender_mac && c.probed => c.answered = true,
                    Some(_) => {}
                }
                false
            }
        }
    }

    /// Advance time: expire entries whose refresh went unanswered, settle claims, and emit the
    /// probes due now. Returns true if a MAC disappeared or changed.
    pub fn poll(&mut self, now: Instant, mut send: impl FnMut(Probe)) -> bool {
        let t = self.timers;
        let mut changed = false;
        for (ip, state) in self.entries.iter_mut() {
            if let NeighState::Resolved { confirmed, .. } = *state
                && now.saturating_duration_since(confirmed) >= t.expire_after
            {
                *state = NeighState::Unresolved { probes: 0, next_probe: now };
                self.stats.expired += 1;
                changed = true;
            }
            if let NeighState::Resolved { mac, confirmed, next_probe, claim: Some(c) } = state {
                if !c.probed {
                    send(Probe { target: *ip, unicast: None });
                    c.probed = true;
                } else if now >= c.until {
                    if c.answered && !c.contested {
                        self.stats.changes_confirmed += 1;
                        *mac = c.mac;
                        *confirmed = now;
                        *next_probe = now + t.refresh_after;
                        changed = true;
                    } else if c.contested {
                        self.stats.conflicts_kept += 1;
                    }
                    if let NeighState::Resolved { claim, .. } = state {
                        *claim = None;
                    }
                }
            }
            match state {
                NeighState::Unresolved { probes, next_probe } if now >= *next_probe => {
                    send(Probe { target: *ip, unicast: None });
                    *probes = probes.saturating_add(1);
                    let wait = if *probes < t.fast_probes { t.probe_interval } else { t.slow_probe_interval };
                    *next_probe = now + wait;
                }
                NeighState::Resolved { mac, next_probe, .. } if now >= *next_probe => {
                    send(Probe { target: *ip, unicast: Some(*mac) });
                    *next_probe = now + t.probe_interval;
                }
                _ => {}
            }
        }
        changed
    }

    /// The earliest time `poll` has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.entries
            .values()
            .map(|s| match *s {
                NeighState::Unresolved { next_probe, .. } => next_probe,
                NeighState::Resolved { confirmed, next_probe, claim, .. } => {
                    let due = next_probe.min(confirmed + self.timers.expire_after);
                    match claim {
                        // The confirming request is due at once.
                        Some(c) if !c.probed => confirmed,
                        Some(c) => due.min(c.until),
                        None => due,
                    }
                }
            })
            .min()
    }

    /// The ARP request frame for a probe, sent from this table's interface.
    pub fn probe_frame(&self, probe: &Probe) -> [u8; ARP_FRAME_LEN] {
        let arp = Arp {
            request: true,
            sender_mac: self.mac,
            sender_ip: self.ip,
            target_mac: probe.unicast.unwrap_or(MacAddr::ZERO),
            target_ip: probe.target,
        };
        build_arp(probe.unicast.unwrap_or(MacAddr::BROADCAST), &arp)
    }
}

#[cfg(test)]
mod tests;
