//! The kernel's `flannel.1` VXLAN device on a lab node, configured exactly as flannel's vxlan
//! backend configures it (flannel `pkg/backend/vxlan`): the reference the dataplane's own
//! encapsulation is checked against (interop tests, the demo, the bench's baseline).
//!
//! What flannel does on each node, and [`configure`] repeats:
//! - `ip link add flannel.1 type vxlan id 1 dstport 8472 nolearning local <node IP> dev <uplink>`,
//!   its MAC (the `VtepMAC` published in the Node's `flannel.alpha.coreos.com/backend-data`),
//!   MTU 1450 (the uplink's 1500 minus 50 bytes of VXLAN headers), up;
//! - the network address of the node's pod CIDR (`10.244.i.0/32`) on flannel.1;
//! - for every peer node: a permanent neighbour entry `<peer CIDR>.0 lladdr <peer VTEP MAC>`,
//!   a permanent FDB entry `<peer VTEP MAC> dst <peer node IP>`, and the route
//!   `<peer CIDR> via <peer CIDR>.0 dev flannel.1 onlink`.

use std::net::Ipv4Addr;

use anyhow::{anyhow, Context, Result};

use crate::lab::Node;
use crate::netns;

/// The device's name, as flannel names it (`flannel.<VNI>`).
pub const DEVICE: &str = "flannel.1";
/// flannel's default VXLAN network identifier.
pub const VNI: u32 = 1;
/// flannel's default VXLAN UDP port (the Linux kernel's legacy port, not IANA's 4789).
pub const PORT: u16 = 8472;
/// flannel.1's MTU on a 1500-byte underlay.
pub const MTU: u32 = 1450;

/// A node flannel.1 sends to: what flannel reads from the peer's Node object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    /// The peer's underlay address (`flannel.alpha.coreos.com/public-ip`).
    pub underlay_ip: Ipv4Addr,
    /// The peer's pod CIDR (`spec.podCIDR`).
    pub pod_cidr: (Ipv4Addr, u8),
    /// The MAC the peer's VTEP answers on (`VtepMAC`): its flannel.1's MAC, or the uplink's MAC
    /// of a node whose dataplane does the VXLAN work itself.
    pub vtep_mac: [u8; 6],
}

impl Peer {
    /// Lab node `node` as a peer whose VTEP answers on `vtep_mac`.
    pub fn of(node: &Node, vtep_mac: [u8; 6]) -> Peer {
        Peer {
            underlay_ip: node.underlay_ip,
            pod_cidr: node.pod_cidr,
            vtep_mac,
        }
    }
}

/// A locally administered MAC for lab node `index`'s flannel.1 (`02:fa:00:00:00:<index>`), so
/// captures show whose VTEP a frame is for.
pub fn vtep_mac(index: usize) -> [u8; 6] {
    [0x02, 0xfa, 0, 0, 0, index as u8]
}

/// Puts flannel.1 on `node` with MAC `own_vtep_mac`, reaching `peers`.
pub fn configure(node: &Node, own_vtep_mac: [u8; 6], peers: &[Peer]) -> Result<()> {
    let (local, uplink) = (node.underlay_ip, &node.uplink);
    let mut steps = vec![
        format!(
            "ip link add {DEVICE} type vxlan id {VNI} dstport {PORT} nolearning local {local} \
             dev {uplink}"
        ),
        format!(
            "ip link set {DEVICE} address {} mtu {MTU} up",
            mac_text(own_vtep_mac)
        ),
        format!("ip addr add {}/32 dev {DEVICE}", node.pod_cidr.0),
    ];
    steps.extend(peers.iter().flat_map(peer_steps));
    for step in &steps {
        let argv: Vec<&str> = step.split_whitespace().collect();
        netns::run_in(&node.ns, &argv)
            .with_context(|| format!("flannel.1 on {}: `{step}`", node.name))?;
    }
    Ok(())
}

/// Removes flannel.1 from `node` (its neighbours, FDB entries and routes go with it).
pub fn remove(node: &Node) -> Result<()> {
    netns::ip(&node.ns, &["link", "del", DEVICE]).map(drop)
}

/// The neighbour, FDB entry and route flannel adds for one peer (shell words, no quoting).
fn peer_steps(peer: &Peer) -> [String; 3] {
    let ((net, len), mac, dst) = (peer.pod_cidr, mac_text(peer.vtep_mac), peer.underlay_ip);
    [
        format!("ip neigh add {net} lladdr {mac} dev {DEVICE} nud permanent"),
        format!("bridge fdb add {mac} dev {DEVICE} dst {dst} self permanent"),
        format!("ip route add {net}/{len} via {net} dev {DEVICE} onlink"),
    ]
}

/// The MAC address of `iface` in namespace `ns` (read with `ip -o link show`).
pub fn iface_mac(ns: &str, iface: &str) -> Result<[u8; 6]> {
    let out = netns::ip(ns, &["-o", "link", "show", "dev", iface])?;
    let text = out
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .ok_or_else(|| anyhow!("no link/ether in `ip link show {iface}` in {ns}: {out}"))?;
    parse_mac(text)
}

/// `aa:bb:cc:dd:ee:ff` as bytes.
pub fn parse_mac(text: &str) -> Result<[u8; 6]> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("bad MAC {text}"))?;
    bytes.try_into().map_err(|_| anyhow!("bad MAC {text}"))
}

/// Bytes as `aa:bb:cc:dd:ee:ff`.
pub fn mac_text(mac: [u8; 6]) -> String {
    let parts: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    parts.join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_round_trip_and_name_the_node() {
        assert_eq!(mac_text(vtep_mac(2)), "02:fa:00:00:00:02");
        assert_eq!(parse_mac("02:fa:00:00:00:02").unwrap(), vtep_mac(2));
        assert!(parse_mac("02:fa:00").is_err());
        assert!(parse_mac("zz:fa:00:00:00:02").is_err());
    }

    #[test]
    fn a_peer_gets_flannels_neighbour_fdb_entry_and_onlink_route() {
        let peer = Peer {
            underlay_ip: Ipv4Addr::new(198, 18, 0, 11),
            pod_cidr: (Ipv4Addr::new(10, 244, 1, 0), 24),
            vtep_mac: vtep_mac(1),
        };
        let steps = peer_steps(&peer);
        assert_eq!(
            steps,
            [
                "ip neigh add 10.244.1.0 lladdr 02:fa:00:00:00:01 dev flannel.1 nud permanent",
                "bridge fdb add 02:fa:00:00:00:01 dev flannel.1 dst 198.18.0.11 self permanent",
                "ip route add 10.244.1.0/24 via 10.244.1.0 dev flannel.1 onlink",
            ]
        );
    }
}
