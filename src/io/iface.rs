//! Interface facts: index, MAC, IPv4 addresses, MTU.
//!
//! Read through `getifaddrs` (the AF_PACKET entries carry a `sockaddr_ll`
//! with ifindex and MAC, the AF_INET entries the addresses), `if_nametoindex`
//! and `ioctl(SIOCGIFMTU)`. All three use sockets of the calling thread's
//! network namespace, so they are right after `setns` too (unlike
//! `/sys/class/net`, which shows the namespace sysfs was mounted in).

use std::net::Ipv4Addr;

use super::IoError;
use super::sys;

/// What the datapath needs to know about an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceInfo {
    /// Name, e.g. `eth0`.
    pub name: String,
    /// Kernel interface index.
    pub ifindex: u32,
    /// Hardware address (all zero for interfaces without one, e.g. `lo`).
    pub mac: [u8; 6],
    /// IPv4 addresses configured on it.
    pub ipv4: Vec<Ipv4Addr>,
    /// The same addresses with their prefix lengths: the subnets on the link.
    pub ipv4_nets: Vec<(Ipv4Addr, u8)>,
    /// MTU (L3 payload size, without the Ethernet header).
    pub mtu: u32,
}

impl InterfaceInfo {
    /// Looks the interface up; a missing one gives
    /// [`IoError::NoSuchInterface`] naming it.
    pub fn lookup(name: &str) -> Result<InterfaceInfo, IoError> {
        let ifindex = sys::if_nametoindex(name).map_err(|e| IoError::sys(name, "if_nametoindex", e))?;
        let addrs = sys::ifaddrs().map_err(|e| IoError::sys(name, "getifaddrs", e))?;
        let mut info = InterfaceInfo {
            name: name.to_string(),
            ifindex,
            mac: [0; 6],
            ipv4: Vec::new(),
            ipv4_nets: Vec::new(),
            mtu: 0,
        };
        for a in addrs {
            match a {
                sys::IfAddr::Link { name: n, ifindex: i, mac: Some(m) } if n == name || i == ifindex => info.mac = m,
                sys::IfAddr::V4 { name: n, addr, prefix } if n == name => {
                    info.ipv4.push(addr);
                    info.ipv4_nets.push((addr, prefix));
                }
                _ => {}
            }
        }
        info.mtu = sys::if_mtu(name).map_err(|e| IoError::sys(name, "ioctl(SIOCGIFMTU)", e))?;
        Ok(info)
    }

    /// Is `ip` inside one of the interface's IPv4 subnets?
    pub fn on_link(&self, ip: Ipv4Addr) -> bool {
        self.ipv4_nets.iter().any(|&(net, prefix)| {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix.min(32))).unwrap_or(0);
            u32::from(net) & mask == u32::from(ip) & mask
        })
    }

    /// Names of all interfaces with a link-layer entry.
    pub fn names() -> Result<Vec<String>, IoError> {
        let addrs = sys::ifaddrs().map_err(|e| IoError::sys("-", "getifaddrs", e))?;
        let mut v: Vec<String> = addrs
            .into_iter()
            .filter_map(|a| match a {
                sys::IfAddr::Link { name, .. } => Some(name),
                sys::IfAddr::V4 { .. } => None,
            })
            .collect();
        v.dedup();
        Ok(v)
    }

    /// MAC as `aa:bb:cc:dd:ee:ff`.
    pub fn mac_string(&self) -> String {
        format_mac(&self.mac)
    }
}

/// Formats a MAC address as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(m: &[u8; 6]) -> String {
    format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback() {
        let lo = InterfaceInfo::lookup("lo").unwrap();
        assert!(lo.ifindex > 0);
        assert_eq!(lo.mac, [0; 6]);
        // Whatever lo's MTU is here (65536 by default, but it can be changed): as the kernel says.
        let sysfs = std::fs::read_to_string("/sys/class/net/lo/mtu").expect("lo's MTU in /sys");
        assert_eq!(lo.mtu.to_string(), sysfs.trim());
        assert!(InterfaceInfo::names().unwrap().iter().any(|n| n == "lo"));
    }

    #[test]
    fn missing_interface_is_named() {
        let e = InterfaceInfo::lookup("mlvnope0").unwrap_err();
        assert_eq!(e.to_string(), "mlvnope0: no such network interface");
        assert!(matches!(e, IoError::NoSuchInterface { .. }));
    }

    #[test]
    fn mac_format() {
        assert_eq!(format_mac(&[0, 0x1b, 0x21, 0xaa, 0xbb, 0x0c]), "00:1b:21:aa:bb:0c");
    }
}
