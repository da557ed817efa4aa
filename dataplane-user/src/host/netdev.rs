//! Network devices and their IPv4 addresses, asked over rtnetlink: the answers are the calling
//! thread's network namespace's (unlike /sys/class/net, which under `nsenter --net` still shows
//! the mount namespace's view).

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
};

use anyhow::{anyhow, bail, Context, Result};
use netlink_packet_route::{
    address::{AddressAttribute, AddressMessage},
    link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage},
    AddressFamily, RouteNetlinkMessage,
};

use super::netlink::Netlink;

/// What the agent needs to know about one device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// The hardware address (Ethernet devices; `None` on e.g. IPIP or WireGuard devices).
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    /// `IFLA_INFO_KIND`: veth, bridge, vxlan... (`None` for physical devices and `lo`).
    pub kind: Option<InfoKind>,
}

impl Link {
    fn from_message(m: LinkMessage) -> Link {
        let mut link = Link {
            index: m.header.index,
            name: String::new(),
            mac: None,
            mtu: 0,
            kind: None,
        };
        for attribute in m.attributes {
            match attribute {
                LinkAttribute::IfName(name) => link.name = name,
                LinkAttribute::Mtu(mtu) => link.mtu = mtu,
                LinkAttribute::Address(a) if a.len() == 6 => link.mac = a.try_into().ok(),
                LinkAttribute::LinkInfo(infos) => {
                    link.kind = infos.into_iter().find_map(|i| match i {
                        LinkInfo::Kind(k) => Some(k),
                        _ => None,
                    })
                }
                _ => {}
            }
        }
        link
    }

    pub fn is_veth(&self) -> bool {
        self.kind == Some(InfoKind::Veth)
    }

    pub fn is_bridge(&self) -> bool {
        self.kind == Some(InfoKind::Bridge)
    }
}

fn get_link(request: LinkMessage, what: &str) -> Result<Link> {
    match Netlink::open()?.get(RouteNetlinkMessage::GetLink(request)) {
        Ok(Some(RouteNetlinkMessage::NewLink(m))) => Ok(Link::from_message(m)),
        Ok(_) => bail!("no interface {what}"),
        Err(e) => Err(e).with_context(|| format!("no interface {what}")),
    }
}

/// The device called `name`.
pub fn link(name: &str) -> Result<Link> {
    if name.is_empty() || name.len() >= libc::IF_NAMESIZE {
        bail!("invalid interface name {name:?}");
    }
    let mut request = LinkMessage::default();
    request
        .attributes
        .push(LinkAttribute::IfName(name.to_owned()));
    get_link(request, name)
}

/// The device with ifindex `index`.
pub fn link_by_index(index: u32) -> Result<Link> {
    let mut request = LinkMessage::default();
    request.header.index = index;
    get_link(request, &format!("with index {index}"))
}

/// Every device of this network namespace.
pub fn links() -> Result<Vec<Link>> {
    let request = RouteNetlinkMessage::GetLink(LinkMessage::default());
    Netlink::open()?.dump_into(request, "interfaces", |m| match m {
        RouteNetlinkMessage::NewLink(m) => Some(Link::from_message(m)),
        _ => None,
    })
}

/// ifindex of `name`.
pub fn index(name: &str) -> Result<u32> {
    Ok(link(name)?.index)
}

/// Name of interface `index`.
pub fn name(index: u32) -> Result<String> {
    Ok(link_by_index(index)?.name)
}

/// MAC address of `name`.
pub fn mac(name: &str) -> Result<[u8; 6]> {
    link(name)?
        .mac
        .ok_or_else(|| anyhow!("{name} has no Ethernet address"))
}

/// MTU of `name`.
pub fn mtu(name: &str) -> Result<u32> {
    Ok(link(name)?.mtu)
}

/// Devices whose names start with one of `prefixes` (the host side of pod veths: flannel's
/// `veth`, calico's `cali`), sorted.
pub fn names_with_prefixes(prefixes: &[String]) -> Result<Vec<String>> {
    if prefixes.is_empty() {
        return Ok(Vec::new());
    }
    let mut out: Vec<String> = links()?
        .into_iter()
        .map(|l| l.name)
        .filter(|n| prefixes.iter().any(|p| n.starts_with(p.as_str())))
        .collect();
    out.sort();
    Ok(out)
}

/// One IPv4 address of this network namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv4Address {
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
    /// The device's name.
    pub dev: String,
    /// `IFA_LABEL` (`lo:overlay`; the device's name when the address has no label of its own).
    pub label: String,
}

impl Ipv4Address {
    /// The address of an `RTM_NEWADDR` (IPv4 only), naming its device from `names`.
    fn from_message(m: AddressMessage, names: &BTreeMap<u32, String>) -> Option<Ipv4Address> {
        if m.header.family != AddressFamily::Inet {
            return None;
        }
        let dev = names.get(&m.header.index).cloned().unwrap_or_default();
        let mut local = None;
        let mut label = dev.clone();
        for attribute in m.attributes {
            match attribute {
                AddressAttribute::Local(IpAddr::V4(a)) => local = Some(a),
                // Point-to-point devices without IFA_LOCAL: the address is the local one.
                AddressAttribute::Address(IpAddr::V4(a)) if local.is_none() => local = Some(a),
                AddressAttribute::Label(l) => label = l,
                _ => {}
            }
        }
        Some(Ipv4Address {
            addr: local?,
            prefix_len: m.header.prefix_len,
            dev,
            label,
        })
    }
}

/// Every IPv4 address of this network namespace, in the kernel's order.
pub fn ipv4_addresses() -> Result<Vec<Ipv4Address>> {
    let names: BTreeMap<u32, String> = links()?.into_iter().map(|l| (l.index, l.name)).collect();
    let mut request = AddressMessage::default();
    request.header.family = AddressFamily::Inet;
    let request = RouteNetlinkMessage::GetAddress(request);
    Netlink::open()?.dump_into(request, "addresses", |m| match m {
        RouteNetlinkMessage::NewAddress(m) => Ipv4Address::from_message(m, &names),
        _ => None,
    })
}

/// Every IPv4 address of `iface`, in the kernel's order.
pub fn ipv4s_of(iface: &str) -> Result<Vec<Ipv4Addr>> {
    Ok(ipv4_addresses()?
        .into_iter()
        .filter(|a| a.dev == iface)
        .map(|a| a.addr)
        .collect())
}

/// The first IPv4 address of `iface`: the node address masqueraded connections leave with
/// (kube-proxy's MASQUERADE picks the outgoing interface's address).
pub fn first_ipv4(iface: &str) -> Result<Ipv4Addr> {
    ipv4s_of(iface)?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("interface {iface} has no IPv4 address (give --masquerade-ip)"))
}

/// The device holding `addr` (`--uplink-address`: the node's InternalIP from the downward
/// API's status.hostIP names the uplink on any node, whatever its interface is called).
pub fn with_ipv4(addr: Ipv4Addr) -> Result<String> {
    let all = ipv4_addresses()?;
    all.iter()
        .find(|a| a.addr == addr)
        .map(|a| a.dev.clone())
        .ok_or_else(|| {
            let have: Vec<String> = all
                .iter()
                .map(|a| format!("{} {}", a.dev, a.addr))
                .collect();
            anyhow!("no interface has {addr} (have: {})", have.join(", "))
        })
}

/// Every IPv4 address of this network namespace, loopback included.
pub fn local_ipv4s() -> Result<Vec<Ipv4Addr>> {
    Ok(ipv4_addresses()?.into_iter().map(|a| a.addr).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_found_by_name_and_index() {
        let lo = link("lo").unwrap();
        assert_eq!(lo.name, "lo");
        assert_eq!(name(lo.index).unwrap(), "lo");
        assert!(lo.mtu > 0);
        assert!(local_ipv4s().unwrap().contains(&Ipv4Addr::LOCALHOST));
        assert_eq!(first_ipv4("lo").unwrap(), Ipv4Addr::LOCALHOST);
        assert_eq!(with_ipv4(Ipv4Addr::LOCALHOST).unwrap(), "lo");
        assert!(link("no-such-dev0").is_err());
        assert!(link("").is_err());
    }
}
