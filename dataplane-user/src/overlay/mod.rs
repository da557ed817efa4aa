//! The overlay's control side: this node's tunnel settings (`OVERLAY_CONFIG_V1`), the typed
//! [`OverlayTable`] over the pod-CIDR routes (`OVERLAY_ROUTES_V1`) and the known nodes
//! (`OVERLAY_PEERS_V1`), and the kernel routes that lead the node's traffic to the datapath.
//!
//! # What replaces flannel.1 / tunl0
//! flannel and calico route remote pod CIDRs into a tunnel device
//! (`10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink`, `... via 192.168.100.112 dev tunl0
//! onlink`), whose MTU makes the kernel send ICMP fragmentation needed and clamp TCP's MSS, and
//! whose address is the source of the node's own traffic to pods elsewhere. Without devices,
//! [`OverlayTable::sync`] installs, per remote CIDR,
//!
//! ```text
//! <cidr> via <cidr address> dev <uplink> onlink src <overlay address> mtu <uplink MTU - overhead> proto 73
//! neigh <cidr address> lladdr 02:6f:76:6c:00:00 dev <uplink> nud permanent
//! ```
//!
//! so the kernel treats the traffic exactly as it would for the device (TTL, PMTU, ICMP
//! fragmentation needed with MTU 1450 for VXLAN / 1480 for IPIP, MSS), and the datapath
//! encapsulates it at tc egress of the uplink. The next-hop MAC is a placeholder no host owns:
//! a frame that left unencapsulated would reach nobody. The overlay address is this node's
//! flannel.1 address (the first address of its pod CIDR, `10.244.1.0`) or calico's tunnel
//! address (`projectcalico.org/IPv4IPIPTunnelAddr`), put on `lo` with the label `lo:overlay`:
//! remote pods see the node's traffic from it and answer through the tunnel.
//!
//! Kernel state is written over rtnetlink in the calling thread's network namespace, which
//! must be the agent's ([`OverlayTable::sync`] checks the namespace cookie the agent recorded).
//!
//! # Parts
//! - [`plan`]: the node list -> routes, peers and overlay address (pure).
//! - [`table`]: [`OverlayTable`], the diff against what the maps hold, written through an
//!   [`OverlayStore`] ([`store`]: the kernel maps, or in memory for tests).
//! - [`routes`]: the kernel routes, neighbours and address (through [`crate::host`]).
//!
//! # One writer
//! Like the service maps: one table at a time writes a set of maps. Opening a table adopts what
//! the maps hold; [`OverlayTable::sync`] makes them (and the kernel routes) hold exactly the
//! desired state, touching only what changed.

use std::{net::Ipv4Addr, path::Path};

use anyhow::{bail, Result};
use dataplane_common::{
    map_names,
    overlay::{
        OverlayConfig, DEFAULT_VXLAN_PORT, DEFAULT_VXLAN_VNI, MODE_IPIP, MODE_NONE, MODE_VXLAN,
        OVL_F_UDP_CSUM,
    },
};

use crate::host::{netdev, netns, sysctl};

pub mod plan;
mod routes;
pub mod store;
pub mod table;

pub use crate::model::Cidr;
pub use plan::{plan, Desired};
pub use store::{read_config, write_config, MemOverlay, OverlayMaps, OverlayStore};
pub use table::{OverlayTable, SyncReport};

/// `proto` of the kernel routes the overlay installs (how `sync` finds its own routes again).
pub const ROUTE_PROTO: u8 = 73;
/// MAC of the placeholder next hop of overlay routes (locally administered, owned by nobody).
pub const NEXTHOP_MAC: [u8; 6] = [0x02, 0x6f, 0x76, 0x6c, 0x00, 0x00];
/// Label of the overlay address on `lo`.
pub const ADDRESS_LABEL: &str = "lo:overlay";

/// `dataplane run --overlay`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OverlayMode {
    /// Direct routing: no encapsulation (the underlay routes pod CIDRs).
    #[default]
    None,
    /// VXLAN, wire-compatible with flannel's vxlan backend (flannel.1).
    Vxlan,
    /// IPv4-in-IPv4, wire-compatible with calico's IPIP (tunl0).
    Ipip,
}

impl OverlayMode {
    pub const fn code(self) -> u32 {
        match self {
            OverlayMode::None => MODE_NONE,
            OverlayMode::Vxlan => MODE_VXLAN,
            OverlayMode::Ipip => MODE_IPIP,
        }
    }

    pub const fn from_code(code: u32) -> Option<OverlayMode> {
        match code {
            MODE_NONE => Some(OverlayMode::None),
            MODE_VXLAN => Some(OverlayMode::Vxlan),
            MODE_IPIP => Some(OverlayMode::Ipip),
            _ => None,
        }
    }
}

/// What `dataplane run` is told about the overlay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverlaySettings {
    pub mode: OverlayMode,
    /// Outer source address (default: the uplink's first IPv4 address).
    pub tunnel_ip: Ipv4Addr,
    pub vni: u32,
    pub vxlan_port: u16,
    /// Outer UDP checksum like the kernel's default (`udpcsum`).
    pub udp_checksum: bool,
    /// The underlay interface (its MAC is the VTEP MAC).
    pub uplink: String,
}

impl OverlaySettings {
    /// flannel's defaults on `uplink`.
    pub fn new(mode: OverlayMode, uplink: &str, tunnel_ip: Ipv4Addr) -> Self {
        OverlaySettings {
            mode,
            tunnel_ip,
            vni: DEFAULT_VXLAN_VNI,
            vxlan_port: DEFAULT_VXLAN_PORT,
            udp_checksum: true,
            uplink: uplink.to_string(),
        }
    }

    /// The `OVERLAY_CONFIG_V1` value, with what the kernel knows about the uplink and the
    /// calling thread's network namespace (the agent's): ifindex, MAC (the VTEP MAC), local
    /// port range (outer UDP source ports) and default TTL.
    pub fn to_config(&self) -> Result<OverlayConfig> {
        if self.vni >= 1 << 24 {
            bail!("VXLAN VNI {} does not fit 24 bits", self.vni);
        }
        let mut cfg = OverlayConfig::none();
        cfg.mode = self.mode.code();
        cfg.tunnel_addr = u32::from(self.tunnel_ip).to_be();
        cfg.vni = self.vni;
        cfg.vxlan_port = self.vxlan_port.to_be();
        cfg.flags = if self.udp_checksum { OVL_F_UDP_CSUM } else { 0 };
        let uplink = netdev::link(&self.uplink)?;
        cfg.uplink_ifindex = uplink.index;
        // A device without an Ethernet address (tun, wireguard) can still carry IPIP or no overlay.
        cfg.vtep_mac = uplink.mac.unwrap_or_default();
        (cfg.src_port_min, cfg.src_port_max) = sysctl::local_port_range()?;
        cfg.vxlan_ttl = sysctl::default_ttl()?;
        cfg.netns_cookie = netns::cookie()?;
        Ok(cfg)
    }
}

/// Removes the kernel routes, neighbours and overlay address the agent of `pin_dir` installed
/// (`dataplane cleanup`), if this is its network namespace; returns the number of changes (0
/// when there is nothing to do or the maps belong to another namespace).
pub fn remove_kernel_state(pin_dir: &Path) -> Result<usize> {
    if !pin_dir.join(map_names::OVERLAY_CONFIG).exists() {
        return Ok(0);
    }
    let mut cfg = read_config(pin_dir)?;
    if cfg.uplink_ifindex == 0 || !netns::is_current(cfg.netns_cookie)? {
        return Ok(0);
    }
    cfg.mode = MODE_NONE;
    routes::sync(&cfg, &Desired::default())
}
