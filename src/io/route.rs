//! VIP routes for a BGP daemon: one `VIP/32` route per announced VIP, in a kernel routing table
//! that no rule consults, through a TUN device that lives exactly as long as this process.
//!
//! # Why routes, and why a TUN device
//! A BGP daemon on the frontend (BIRD 2's `kernel` protocol with `learn`, FRR's `redistribute
//! table`) imports the routes of a kernel table and announces them with its own address as next
//! hop. The table is the whole interface between maglevd and the BGP daemon: no files to
//! re-read, no control socket, no reload; the kernel tells the daemon of each change at once
//! (netlink notifications).
//!
//! The routes go through a TUN device this process creates ([`super::sys::open_tun`]) and never
//! reads: a non-persistent TUN device is deleted by the kernel when its descriptor is closed,
//! and its routes with it. However maglevd ends — a clean stop, a panic, `kill -9`, the OOM
//! killer — its routes vanish with it, and the BGP daemon withdraws the VIPs within
//! milliseconds, long before any hold timer would. A route on `lo` or another lasting device
//! would outlive a crashed maglevd and keep the VIP announced toward a frontend that no longer
//! forwards.
//!
//! No rule points at the table (and the device has no address), so these routes change no
//! forwarding on the frontend: they are a message, not a path.
//!
//! # What is installed
//! * the device ([`crate::config::Announce::device`], default `maglevd0`), set up (`IFF_UP`);
//! * per announced VIP: `VIP/32 dev maglevd0 table T proto 240 scope link`
//!   (`ip route show table T`); protocol [`ROUTE_PROTOCOL`] marks them as maglevd's.
//!
//! # Privileges and failures
//! Creating the device and changing routes need CAP_NET_ADMIN (raised for each change only) and
//! `/dev/net/tun` (a container needs the device: see `docker/k8s/frontend.yaml`). A device
//! deleted by hand is re-created, with its routes, at the next change or check.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;

use super::netlink::{Failure, NLM_F_CREATE, NLM_F_REPLACE, NetlinkError, Rtnl};
use super::sys;
use crate::reconcile::{Change, reconcile};

/// The routing protocol number of maglevd's routes (`proto 240` in `ip route`; unassigned in
/// `/etc/iproute2/rt_protos`).
pub const ROUTE_PROTOCOL: u8 = 240;

const RTM_NEWLINK: u16 = 16;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_TABLE: u16 = 15;
const RT_SCOPE_LINK: u8 = 253;
const RTN_UNICAST: u8 = 1;
/// `rtm_table` when the table is given in `RTA_TABLE`.
const RT_TABLE_UNSPEC: u8 = 0;

/// Why the device or a route could not be set up.
pub type RouteError = NetlinkError;

/// `struct rtmsg` for a `VIP/32` route of maglevd's.
fn rtmsg() -> [u8; 12] {
    // family, dst_len, src_len, tos, table, protocol, scope, type, flags (u32)
    [libc::AF_INET as u8, 32, 0, 0, RT_TABLE_UNSPEC, ROUTE_PROTOCOL, RT_SCOPE_LINK, RTN_UNICAST, 0, 0, 0, 0]
}

/// `struct ifinfomsg` setting `IFF_UP` on interface `index`.
fn link_up(index: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[4..8].copy_from_slice(&index.to_ne_bytes());
    let up = libc::IFF_UP as u32;
    b[8..12].copy_from_slice(&up.to_ne_bytes()); // ifi_flags
    b[12..16].copy_from_slice(&up.to_ne_bytes()); // ifi_change
    b
}

/// The device and the routes through it; dropping it closes the device (and the kernel deletes
/// the routes).
#[derive(Debug)]
pub struct VipRoutes {
    rtnl: Rtnl,
    device: String,
    table: u32,
    /// The descriptor holding the device (none after a failed re-creation).
    tun: Option<OwnedFd>,
    ifindex: u32,
    /// The VIPs whose route is in place.
    routes: BTreeSet<Ipv4Addr>,
}

impl VipRoutes {
    /// Creates `device` and sets it up, in the calling thread's network namespace; no route yet.
    pub fn open(device: &str, table: u32) -> Result<VipRoutes, RouteError> {
        let _privs = crate::privs::raised();
        let rtnl = Rtnl::open().map_err(|e| RouteError::new("opening an rtnetlink socket", (e, None)))?;
        let mut r =
            VipRoutes { rtnl, device: device.to_string(), table, tun: None, ifindex: 0, routes: BTreeSet::new() };
        r.create()?;
        Ok(r)
    }

    /// The device's name.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// The routing table.
    pub fn table(&self) -> u32 {
        self.table
    }

    /// The VIPs whose route is in place.
    pub fn routes(&self) -> &BTreeSet<Ipv4Addr> {
        &self.routes
    }

    fn create(&mut self) -> Result<(), RouteError> {
        self.tun = None;
        self.routes.clear();
        let tun = sys::open_tun(&self.device).map_err(|e| {
            let hint = match e.raw_os_error() {
                Some(libc::ENOENT) => Some(
                    "/dev/net/tun is missing: give the container the device (see docker/k8s/frontend.yaml) \
                     or remove announce.table"
                        .to_string(),
                ),
                Some(libc::EBUSY) => {
                    Some("another process holds it: another maglevd in this network namespace?".into())
                }
                Some(libc::EINVAL) => Some("an interface of another kind has this name".into()),
                // open() of the device node: file permissions (distributions make it 0666).
                Some(libc::EACCES) => Some(
                    "cannot open /dev/net/tun: it must be readable and writable by maglevd's user \
                     (distributions make it mode 0666)"
                        .into(),
                ),
                // TUNSETIFF: the capability.
                Some(libc::EPERM) => Some("needs CAP_NET_ADMIN".into()),
                _ => None,
            };
            RouteError::new(format!("creating the TUN device {}", self.device), (e, hint))
        })?;
        let index = sys::if_nametoindex(&self.device)
            .map_err(|e| RouteError::new(format!("looking up the TUN device {}", self.device), (e, None)))?;
        self.rtnl
            .request(RTM_NEWLINK, 0, &link_up(index), |_| {})
            .map_err(|f| RouteError::new(format!("setting {} up", self.device), f))?;
        self.tun = Some(tun);
        self.ifindex = index;
        Ok(())
    }

    /// Makes the routes in place exactly `want`: adds the missing ones, deletes the others. A
    /// device deleted (or replaced) by hand since the last call is created again first. Routes
    /// that could not be changed are retried at the next call; the first error is returned.
    pub fn set(&mut self, want: &BTreeSet<Ipv4Addr>) -> Result<(), RouteError> {
        let _privs = crate::privs::raised();
        if self.tun.is_none() || sys::if_nametoindex(&self.device).ok() != Some(self.ifindex) {
            self.create()?;
        }
        let mut routes = std::mem::take(&mut self.routes);
        let r = reconcile(&mut routes, want, |vip, change| match change {
            Change::Remove => match self.route(RTM_DELROUTE, 0, vip) {
                // Already gone (deleted by hand): as good.
                Err(f) if matches!(f.0.raw_os_error(), Some(libc::ESRCH | libc::ENOENT)) => Ok(()),
                r => r.map_err(|f| RouteError::new(format!("deleting the route of {vip}"), f)),
            },
            Change::Add => self.route(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, vip).map_err(|f| {
                RouteError::new(format!("adding the route of {vip} to table {} via {}", self.table, self.device), f)
            }),
        });
        self.routes = routes;
        r
    }

    fn route(&mut self, kind: u16, flags: u16, vip: Ipv4Addr) -> Result<(), Failure> {
        let (table, oif) = (self.table, self.ifindex);
        self.rtnl.request(kind, flags, &rtmsg(), |m| {
            m.attr(RTA_TABLE, &table.to_ne_bytes());
            m.attr(RTA_DST, &vip.octets());
            m.attr(RTA_OIF, &oif.to_ne_bytes());
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_route_header_is_an_ipv4_host_route_of_maglevds_protocol() {
        let h = rtmsg();
        assert_eq!(h[0], libc::AF_INET as u8);
        assert_eq!(h[1], 32, "a /32");
        assert_eq!(h[5], ROUTE_PROTOCOL);
        assert_eq!(h[6], RT_SCOPE_LINK);
        assert_eq!(h[7], RTN_UNICAST);
    }

    #[test]
    fn link_up_sets_and_changes_only_iff_up() {
        let b = link_up(7);
        assert_eq!(u32::from_ne_bytes(b[4..8].try_into().unwrap()), 7);
        assert_eq!(u32::from_ne_bytes(b[8..12].try_into().unwrap()), libc::IFF_UP as u32);
        assert_eq!(u32::from_ne_bytes(b[12..16].try_into().unwrap()), libc::IFF_UP as u32);
    }
}
