//! IPv4 routes, neighbours and addresses of the calling thread's network namespace, read and
//! written over rtnetlink (what `ip route`, `ip neigh` and `ip addr` do).
//!
//! Routes the agent creates carry a protocol number of their own (`proto`): that is how it
//! finds them again, and how it tells them from the routes it must never touch (connected,
//! static, a routing daemon's). This module writes only what its caller names; the caller keeps
//! that rule (see `overlay::routes`).

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context, Result};
use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::{
    address::{AddressAttribute, AddressMessage},
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
    route::{
        RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteMetric,
        RouteProtocol, RouteScope, RouteType,
    },
    AddressFamily, RouteNetlinkMessage,
};

use super::netlink::Netlink;
use crate::model::Cidr;

/// `RT_TABLE_MAIN`.
const MAIN_TABLE: u32 = RouteHeader::RT_TABLE_MAIN as u32;

/// One IPv4 route of the main table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub dst: Cidr,
    /// Output device (ifindex; 0 when the route has several next hops).
    pub oif: u32,
    pub gateway: Option<Ipv4Addr>,
    /// Preferred source of the node's own traffic (`src`).
    pub prefsrc: Option<Ipv4Addr>,
    /// Path MTU (`mtu` metric).
    pub mtu: Option<u32>,
    /// Gateway taken as on the link even outside its subnets.
    pub onlink: bool,
    /// Who created it (`proto`: kernel, boot, static, a daemon's number, ours).
    pub protocol: u8,
}

impl Route {
    /// The protocol as `ip route` names it (`kernel`, `static`, `bird`, `73`).
    pub fn protocol_name(&self) -> String {
        match RouteProtocol::from(self.protocol) {
            RouteProtocol::Other(n) => n.to_string(),
            RouteProtocol::Dhcp => "dhcp".to_owned(),
            p => p.to_string(),
        }
    }

    fn from_message(m: RouteMessage) -> Option<Route> {
        // Every type (blackhole, unreachable, ...): a route of any type holds its destination.
        if m.header.address_family != AddressFamily::Inet {
            return None;
        }
        let mut table = u32::from(m.header.table);
        let mut dst = Ipv4Addr::UNSPECIFIED;
        let mut route = Route {
            dst: Cidr::new(dst, 0),
            oif: 0,
            gateway: None,
            prefsrc: None,
            mtu: None,
            onlink: m.header.flags.contains(RouteFlags::Onlink),
            protocol: m.header.protocol.into(),
        };
        for attribute in m.attributes {
            match attribute {
                RouteAttribute::Table(t) => table = t,
                RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = a,
                RouteAttribute::Gateway(RouteAddress::Inet(a)) => route.gateway = Some(a),
                RouteAttribute::PrefSource(RouteAddress::Inet(a)) => route.prefsrc = Some(a),
                RouteAttribute::Oif(i) => route.oif = i,
                RouteAttribute::Metrics(metrics) => {
                    route.mtu = metrics.into_iter().find_map(|m| match m {
                        RouteMetric::Mtu(mtu) => Some(mtu),
                        _ => None,
                    })
                }
                _ => {}
            }
        }
        route.dst = Cidr::new(dst, m.header.destination_prefix_length);
        (table == MAIN_TABLE).then_some(route)
    }

    fn to_message(&self) -> RouteMessage {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        m.header.destination_prefix_length = self.dst.len;
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = RouteProtocol::from(self.protocol);
        m.header.scope = RouteScope::Universe;
        m.header.kind = RouteType::Unicast;
        if self.onlink {
            m.header.flags = RouteFlags::Onlink;
        }
        let attrs = &mut m.attributes;
        attrs.push(RouteAttribute::Destination(RouteAddress::Inet(
            self.dst.addr,
        )));
        if let Some(gw) = self.gateway {
            attrs.push(RouteAttribute::Gateway(RouteAddress::Inet(gw)));
        }
        if self.oif != 0 {
            attrs.push(RouteAttribute::Oif(self.oif));
        }
        if let Some(src) = self.prefsrc {
            attrs.push(RouteAttribute::PrefSource(RouteAddress::Inet(src)));
        }
        if let Some(mtu) = self.mtu {
            attrs.push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(mtu)]));
        }
        m
    }
}

/// A permanent IPv4 neighbour entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neighbour {
    pub ifindex: u32,
    pub dst: Ipv4Addr,
    pub lladdr: Option<[u8; 6]>,
}

impl Neighbour {
    /// The entry of an `RTM_NEWNEIGH` with an IPv4 destination, and its state.
    fn from_message(m: NeighbourMessage) -> Option<(Neighbour, NeighbourState)> {
        let mut dst = None;
        let mut lladdr = None;
        for attribute in m.attributes {
            match attribute {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => dst = Some(a),
                NeighbourAttribute::LinkLayerAddress(a) => lladdr = a.try_into().ok(),
                _ => {}
            }
        }
        let neighbour = Neighbour {
            ifindex: m.header.ifindex,
            dst: dst?,
            lladdr,
        };
        Some((neighbour, m.header.state))
    }
}

/// One rtnetlink socket for a round of reads and changes.
pub struct Routes {
    nl: Netlink,
}

impl Routes {
    pub fn open() -> Result<Routes> {
        Ok(Routes {
            nl: Netlink::open()?,
        })
    }

    /// The IPv4 routes of the main table.
    pub fn main_table(&mut self) -> Result<Vec<Route>> {
        let mut request = RouteMessage::default();
        request.header.address_family = AddressFamily::Inet;
        let request = RouteNetlinkMessage::GetRoute(request);
        self.nl.dump_into(request, "routes", |m| match m {
            RouteNetlinkMessage::NewRoute(m) => Route::from_message(m),
            _ => None,
        })
    }

    /// Installs `route`, replacing the route of the same destination, table and metric.
    pub fn replace(&mut self, route: &Route) -> Result<()> {
        self.nl
            .apply(
                RouteNetlinkMessage::NewRoute(route.to_message()),
                NLM_F_CREATE | NLM_F_REPLACE,
            )
            .with_context(|| format!("route replace {} proto {}", route.dst, route.protocol))
    }

    /// Removes the route to `dst` through `oif` created by `protocol` (no other).
    pub fn delete(&mut self, dst: Cidr, oif: u32, protocol: u8) -> Result<()> {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        m.header.destination_prefix_length = dst.len;
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = RouteProtocol::from(protocol);
        // RT_SCOPE_NOWHERE: any scope (what `ip route del` asks).
        m.header.scope = RouteScope::NoWhere;
        m.header.kind = RouteType::Unicast;
        m.attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(dst.addr)));
        m.attributes.push(RouteAttribute::Oif(oif));
        self.nl
            .apply(RouteNetlinkMessage::DelRoute(m), 0)
            .with_context(|| format!("route del {dst} proto {protocol}"))
    }

    /// The permanent IPv4 neighbours of device `ifindex`.
    pub fn permanent_neighbours(&mut self, ifindex: u32) -> Result<Vec<Neighbour>> {
        let mut request = NeighbourMessage::default();
        request.header.family = AddressFamily::Inet;
        let request = RouteNetlinkMessage::GetNeighbour(request);
        self.nl.dump_into(request, "neighbours", |m| match m {
            RouteNetlinkMessage::NewNeighbour(m) => Neighbour::from_message(m)
                .filter(|(n, state)| n.ifindex == ifindex && *state == NeighbourState::Permanent)
                .map(|(n, _)| n),
            _ => None,
        })
    }

    fn neighbour_message(ifindex: u32, dst: Ipv4Addr) -> NeighbourMessage {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.ifindex = ifindex;
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(dst)));
        m
    }

    /// `neigh replace <dst> lladdr <mac> dev <ifindex> nud permanent`.
    pub fn replace_neighbour(&mut self, ifindex: u32, dst: Ipv4Addr, mac: [u8; 6]) -> Result<()> {
        let mut m = Self::neighbour_message(ifindex, dst);
        m.header.state = NeighbourState::Permanent;
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        self.nl
            .apply(
                RouteNetlinkMessage::NewNeighbour(m),
                NLM_F_CREATE | NLM_F_REPLACE,
            )
            .with_context(|| format!("neigh replace {dst}"))
    }

    pub fn delete_neighbour(&mut self, ifindex: u32, dst: Ipv4Addr) -> Result<()> {
        let m = Self::neighbour_message(ifindex, dst);
        self.nl
            .apply(RouteNetlinkMessage::DelNeighbour(m), 0)
            .with_context(|| format!("neigh del {dst}"))
    }

    fn address_message(ifindex: u32, addr: Ipv4Addr, prefix_len: u8) -> AddressMessage {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.prefix_len = prefix_len;
        m.header.index = ifindex;
        m.attributes.push(AddressAttribute::Local(IpAddr::V4(addr)));
        m
    }

    /// `address add <addr>/<prefix_len> dev <ifindex> label <label>`.
    pub fn add_address(
        &mut self,
        ifindex: u32,
        addr: Ipv4Addr,
        prefix_len: u8,
        label: &str,
    ) -> Result<()> {
        let mut m = Self::address_message(ifindex, addr, prefix_len);
        m.attributes
            .push(AddressAttribute::Address(IpAddr::V4(addr)));
        m.attributes.push(AddressAttribute::Label(label.to_owned()));
        self.nl
            .apply(
                RouteNetlinkMessage::NewAddress(m),
                NLM_F_CREATE | NLM_F_REPLACE,
            )
            .with_context(|| format!("address add {addr}/{prefix_len} label {label}"))
    }

    pub fn delete_address(&mut self, ifindex: u32, addr: Ipv4Addr, prefix_len: u8) -> Result<()> {
        let m = Self::address_message(ifindex, addr, prefix_len);
        self.nl
            .apply(RouteNetlinkMessage::DelAddress(m), 0)
            .with_context(|| format!("address del {addr}/{prefix_len}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn main_table_is_readable_without_root() {
        let routes = Routes::open().unwrap().main_table().unwrap();
        assert!(routes.iter().all(|r| r.dst.len <= 32));
    }

    #[test]
    fn protocols_are_named_like_iproute2() {
        let mut r = Route {
            dst: Cidr::new(Ipv4Addr::UNSPECIFIED, 0),
            oif: 1,
            gateway: None,
            prefsrc: None,
            mtu: None,
            onlink: false,
            protocol: 4,
        };
        assert_eq!(r.protocol_name(), "static");
        r.protocol = 2;
        assert_eq!(r.protocol_name(), "kernel");
        r.protocol = 73;
        assert_eq!(r.protocol_name(), "73");
        let back = Route::from_message(r.to_message()).unwrap();
        assert_eq!(back, r);
    }
}
