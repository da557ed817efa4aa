//! Parsers for the scalar fields of Kubernetes objects. Errors are messages for a
//! [`Problem`](super::Problem); the caller knows the field's path.

use std::net::{IpAddr, Ipv4Addr};

use crate::model::Protocol;

/// An address of either family; only IPv4 is served, IPv6 is recognised so it can be skipped
/// as unsupported instead of being reported as invalid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Family<T> {
    V4(T),
    V6,
}

/// An IP address as Kubernetes writes it ("10.96.0.1", "fd00::1").
pub(crate) fn ip(text: &str) -> Result<Family<Ipv4Addr>, String> {
    match text.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => Ok(Family::V4(v4)),
        Ok(IpAddr::V6(_)) => Ok(Family::V6),
        Err(_) => Err(format!("{text:?} is not an IP address")),
    }
}

/// Like [`ip`], for fields that may only hold IPv4.
pub(crate) fn ipv4(text: &str) -> Result<Ipv4Addr, String> {
    match ip(text)? {
        Family::V4(v4) => Ok(v4),
        Family::V6 => Err(format!("{text:?} is not an IPv4 address")),
    }
}

/// "address/prefix", with the prefix checked; does not require the host bits to be zero
/// (calico's IPv4Address annotation is an interface address, "192.168.100.111/24").
pub(crate) fn address_with_prefix(text: &str) -> Result<Family<(Ipv4Addr, u8)>, String> {
    let bad = || format!("{text:?} is not an address/prefix");
    let (addr, prefix) = text.split_once('/').ok_or_else(bad)?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    match ip(addr).map_err(|_| bad())? {
        Family::V4(v4) if prefix <= 32 => Ok(Family::V4((v4, prefix))),
        Family::V6 if prefix <= 128 => Ok(Family::V6),
        _ => Err(bad()),
    }
}

/// A network in CIDR notation ("10.244.1.0/24"); host bits must be zero, as the API server
/// requires for podCIDRs.
pub(crate) fn cidr(text: &str) -> Result<Family<(Ipv4Addr, u8)>, String> {
    let parsed = address_with_prefix(text)?;
    if let Family::V4((addr, prefix)) = parsed {
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
        if u32::from(addr) & !mask != 0 {
            return Err(format!("{text:?} has host bits set"));
        }
    }
    Ok(parsed)
}

/// A CIDR whose host bits may be set ("10.0.0.1/8" is 10.0.0.0/8), as kube-proxy's
/// ParseCIDRSloppy reads loadBalancerSourceRanges and --nodeport-addresses.
pub(crate) fn network(text: &str) -> Result<Family<(Ipv4Addr, u8)>, String> {
    Ok(match address_with_prefix(text)? {
        Family::V4((addr, prefix)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            Family::V4((Ipv4Addr::from(u32::from(addr) & mask), prefix))
        }
        Family::V6 => Family::V6,
    })
}

/// A TCP/UDP port number: 1..=65535.
pub(crate) fn port(value: i32) -> Result<u16, String> {
    u16::try_from(value)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{value} is not a port number (1-65535)"))
}

/// A service or endpoint port's protocol, with the API's default (TCP) when absent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PortProtocol {
    Supported(Protocol),
    /// Valid in Kubernetes, not served by the datapath.
    Sctp,
}

pub(crate) fn protocol(value: Option<&str>) -> Result<PortProtocol, String> {
    match value.unwrap_or("TCP") {
        "TCP" => Ok(PortProtocol::Supported(Protocol::Tcp)),
        "UDP" => Ok(PortProtocol::Supported(Protocol::Udp)),
        "SCTP" => Ok(PortProtocol::Sctp),
        other => Err(format!("unknown protocol {other:?} (TCP, UDP or SCTP)")),
    }
}

/// A MAC address as "aa:bb:cc:dd:ee:ff".
pub(crate) fn mac(text: &str) -> Result<[u8; 6], String> {
    let bad = || format!("{text:?} is not a MAC address");
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next().filter(|p| p.len() == 2).ok_or_else(bad)?;
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    match parts.next() {
        None => Ok(mac),
        Some(_) => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ips() {
        assert_eq!(ip("10.96.0.1"), Ok(Family::V4(Ipv4Addr::new(10, 96, 0, 1))));
        assert_eq!(ip("fd00::1"), Ok(Family::V6));
        assert!(ip("10.96.0.256").is_err());
        assert!(ip("").is_err());
        assert!(ipv4("fd00::1").is_err());
    }

    #[test]
    fn cidrs() {
        assert_eq!(
            cidr("10.244.1.0/24"),
            Ok(Family::V4((Ipv4Addr::new(10, 244, 1, 0), 24)))
        );
        assert_eq!(
            cidr("0.0.0.0/0"),
            Ok(Family::V4((Ipv4Addr::UNSPECIFIED, 0)))
        );
        assert_eq!(
            cidr("10.244.1.7/32"),
            Ok(Family::V4((Ipv4Addr::new(10, 244, 1, 7), 32)))
        );
        assert_eq!(cidr("fd00:10:244::/64"), Ok(Family::V6));
        assert!(cidr("10.244.1.1/24").unwrap_err().contains("host bits"));
        for bad in [
            "10.244.1.0",
            "10.244.1.0/33",
            "10.244.1.0/x",
            "/24",
            "fd00::/129",
        ] {
            assert!(cidr(bad).is_err(), "{bad}");
        }
        assert_eq!(
            address_with_prefix("192.168.100.111/24"),
            Ok(Family::V4((Ipv4Addr::new(192, 168, 100, 111), 24)))
        );
    }

    #[test]
    fn ports_and_protocols() {
        assert_eq!(port(1), Ok(1));
        assert_eq!(port(65535), Ok(65535));
        for bad in [0, -1, 65536] {
            assert!(port(bad).is_err());
        }
        assert_eq!(protocol(None), Ok(PortProtocol::Supported(Protocol::Tcp)));
        assert_eq!(
            protocol(Some("UDP")),
            Ok(PortProtocol::Supported(Protocol::Udp))
        );
        assert_eq!(protocol(Some("SCTP")), Ok(PortProtocol::Sctp));
        assert!(protocol(Some("tcp")).is_err());
    }

    #[test]
    fn macs() {
        assert_eq!(
            mac("aa:bb:cc:dd:ee:0f"),
            Ok([0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0x0f])
        );
        for bad in [
            "aa:bb:cc:dd:ee",
            "aa:bb:cc:dd:ee:ff:00",
            "aa:bb:cc:dd:ee:fg",
            "aabbccddeeff",
            "a:bb:cc:dd:ee:fff",
        ] {
            assert!(mac(bad).is_err(), "{bad}");
        }
    }
}
