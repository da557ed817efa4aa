//! The overlay's kernel state: per remote pod CIDR a route onto the uplink and a permanent
//! neighbour for its placeholder gateway, and the overlay address on `lo` (see the module
//! documentation of [`super`]), written over rtnetlink ([`crate::host::routes`]) in the calling
//! thread's network namespace.
//!
//! Never rewrites a route the agent did not create: the routes it owns carry
//! [`ROUTE_PROTO`]; a destination the main table routes otherwise (connected, default, static,
//! a routing daemon's) is left alone, checked again right before writing.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use anyhow::{anyhow, Result};
use dataplane_common::overlay::{OverlayConfig, MODE_NONE};

use super::{Desired, ADDRESS_LABEL, NEXTHOP_MAC, ROUTE_PROTO};
use crate::{
    host::{
        netdev,
        routes::{Route, Routes},
        sysctl,
    },
    model::Cidr,
    node_validation::Reserved,
};

/// What no pod CIDR may overlap, from this namespace's addresses: the uplink's subnets (the
/// underlay), and every other address of the node except the overlay's own on `lo` (those only
/// for other nodes' CIDRs: cni0 holds an address of the local pod CIDR).
pub(super) fn reserved(uplink_ifindex: u32) -> Result<Vec<Reserved>> {
    let uplink = netdev::name(uplink_ifindex)?;
    let mut out = Vec::new();
    for a in netdev::ipv4_addresses()? {
        if a.label == ADDRESS_LABEL {
            continue;
        }
        if a.dev == uplink {
            let subnet = Cidr::new(a.addr, a.prefix_len);
            out.push(Reserved::new(
                subnet,
                format!("the underlay subnet of {}", a.dev),
            ));
        } else {
            let what = format!("this node's address on {}", a.dev);
            out.push(Reserved::remote_only(Cidr::new(a.addr, 32), what));
        }
    }
    Ok(out)
}

/// Destinations in the main table held by routes the agent did not create (connected,
/// default, static, another daemon's), described as `proto <who> dev <device>`: `route replace`
/// would overwrite them.
pub(super) fn foreign_routes() -> Result<BTreeMap<Cidr, String>> {
    let names: BTreeMap<u32, String> = netdev::links()?
        .into_iter()
        .map(|l| (l.index, l.name))
        .collect();
    let routes = Routes::open()?.main_table()?;
    Ok(routes
        .into_iter()
        .filter(|r| r.protocol != ROUTE_PROTO)
        .map(|r| {
            let dev = names.get(&r.oif).map_or("?", String::as_str);
            let what = format!("proto {} dev {dev}", r.protocol_name());
            (r.dst, what)
        })
        .collect())
}

/// One overlay route as the kernel should hold it.
fn overlay_route(cidr: Cidr, uplink: u32, src: Option<Ipv4Addr>, mtu: u32) -> Route {
    Route {
        dst: cidr,
        oif: uplink,
        gateway: Some(cidr.addr),
        prefsrc: src,
        mtu: Some(mtu),
        onlink: true,
        protocol: ROUTE_PROTO,
    }
}

/// Addresses with the overlay label on `lo`.
fn overlay_addresses() -> Result<BTreeSet<Ipv4Addr>> {
    Ok(netdev::ipv4_addresses()?
        .into_iter()
        .filter(|a| a.dev == "lo" && a.label == ADDRESS_LABEL)
        .map(|a| a.addr)
        .collect())
}

/// Traffic from the underlay to a remote pod (NodePort, external clients) leaves through the
/// interface it came in on: without tunnel devices the kernel would answer it with ICMP
/// redirects toward the overlay's placeholder gateways. Returns the number of sysctls changed.
fn stop_redirects(uplink: &str) -> Result<usize> {
    let mut changes = 0;
    for dev in ["all", uplink] {
        let key = format!("net/ipv4/conf/{dev}/send_redirects");
        if sysctl::read(&key)? == "0" {
            continue;
        }
        match sysctl::write(&key, "0") {
            Ok(()) => changes += 1,
            // An unprivileged container has /proc/sys read-only: the overlay works, the kernel
            // just also sends redirects (set it on the host).
            Err(e) => log::warn!(
                "overlay: cannot write {key} ({e}): set it to 0 on the host (sysctl -w {}=0), \
                 else the node sends ICMP redirects toward the overlay's placeholder gateways",
                key.replace('/', ".")
            ),
        }
    }
    Ok(changes)
}

/// Makes the kernel hold the routes, neighbours and address of `desired`; returns the number of
/// changes. Additions first (the address before the routes that use it as source), then
/// removals (the routes before the address: the kernel drops the routes using an address as
/// source with the address).
pub(super) fn sync(cfg: &OverlayConfig, desired: &Desired) -> Result<usize> {
    let uplink_index = cfg.uplink_ifindex;
    let uplink = netdev::link_by_index(uplink_index)?;
    let mtu = uplink
        .mtu
        .checked_sub(cfg.overhead())
        .ok_or_else(|| anyhow!("{}: MTU below the overlay overhead", uplink.name))?;
    let lo = netdev::index("lo")?;
    let addresses = overlay_addresses()?;
    let foreign = foreign_routes()?;
    let mut kernel = Routes::open()?;
    let neighbours: BTreeSet<Ipv4Addr> = kernel
        .permanent_neighbours(uplink_index)?
        .into_iter()
        .filter(|n| n.lladdr == Some(NEXTHOP_MAC))
        .map(|n| n.dst)
        .collect();
    let routes: BTreeMap<Cidr, Route> = kernel
        .main_table()?
        .into_iter()
        .filter(|r| r.protocol == ROUTE_PROTO && r.oif == uplink_index)
        .map(|r| (r.dst, r))
        .collect();
    // Never overwrite a route the agent did not create (the caller left such CIDRs out of
    // `desired`; this re-check closes the window since).
    let wanted: BTreeSet<Cidr> = desired
        .remote_cidrs()
        .filter(|c| !foreign.contains_key(c))
        .copied()
        .collect();

    let mut changes = if cfg.mode != MODE_NONE {
        stop_redirects(&uplink.name)?
    } else {
        0
    };
    if let Some(addr) = desired.overlay_addr.filter(|a| !addresses.contains(a)) {
        kernel.add_address(lo, addr, 32, ADDRESS_LABEL)?;
        changes += 1;
    }
    for cidr in &wanted {
        if !neighbours.contains(&cidr.addr) {
            kernel.replace_neighbour(uplink_index, cidr.addr, NEXTHOP_MAC)?;
            changes += 1;
        }
        let want = overlay_route(*cidr, uplink_index, desired.overlay_addr, mtu);
        if routes.get(cidr) != Some(&want) {
            kernel.replace(&want)?;
            changes += 1;
        }
    }
    for cidr in routes.keys().filter(|c| !wanted.contains(c)) {
        kernel.delete(*cidr, uplink_index, ROUTE_PROTO)?;
        changes += 1;
    }
    let gateways: BTreeSet<Ipv4Addr> = wanted.iter().map(|c| c.addr).collect();
    for gw in neighbours.iter().filter(|g| !gateways.contains(g)) {
        kernel.delete_neighbour(uplink_index, *gw)?;
        changes += 1;
    }
    for addr in addresses
        .iter()
        .filter(|a| Some(**a) != desired.overlay_addr)
    {
        kernel.delete_address(lo, *addr, 32)?;
        changes += 1;
    }
    Ok(changes)
}
