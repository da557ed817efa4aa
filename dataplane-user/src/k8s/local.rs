//! Finding this node's addresses, the NodePort frontends.

use std::{net::Ipv4Addr, time::Duration};

use tokio::sync::watch;

use super::parse::{self, Family};

/// The node this agent runs on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalNode {
    /// The Node object's name; endpoints with this nodeName are local.
    pub name: String,
    /// This host's addresses (loopback excepted), the candidates for NodePorts.
    pub addresses: Vec<Ipv4Addr>,
    /// Which of them NodePorts answer on (`--nodeport-addresses`).
    pub nodeport_addresses: NodePortAddresses,
}

impl LocalNode {
    /// This host's IPv4 addresses (every interface's, loopback excepted: NodePorts on 127.0.0.1
    /// never reach the uplink hooks), as kube-proxy's default `--nodeport-addresses` takes
    /// every local address. Sorted, without duplicates.
    pub fn detect(name: impl Into<String>) -> anyhow::Result<LocalNode> {
        LocalNode::detect_with(name, NodePortAddresses::All)
    }

    /// [`LocalNode::detect`] with NodePorts on `nodeport_addresses`.
    pub fn detect_with(
        name: impl Into<String>,
        nodeport_addresses: NodePortAddresses,
    ) -> anyhow::Result<LocalNode> {
        let mut addresses: Vec<Ipv4Addr> = crate::host::netdev::local_ipv4s()?
            .into_iter()
            .filter(|ip| !ip.is_loopback())
            .collect();
        addresses.sort();
        addresses.dedup();
        Ok(LocalNode {
            name: name.into(),
            addresses,
            nodeport_addresses,
        })
    }

    /// Publishes this node's addresses now and whenever they change, re-read every
    /// `interval`, so NodePorts follow addresses added or removed at runtime (kube-proxy's
    /// nodeport-addresses follow the node's interfaces too). A failed read keeps the last
    /// list. The task ends when every receiver is dropped.
    pub fn follow(self, interval: Duration) -> watch::Receiver<LocalNode> {
        let (tx, rx) = watch::channel(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            loop {
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tick.tick() => {}
                }
                let current = tx.borrow().clone();
                match LocalNode::detect_with(current.name.clone(), current.nodeport_addresses) {
                    Ok(now) if now.addresses != current.addresses => {
                        log::info!("node addresses now {:?}", now.addresses);
                        tx.send_replace(now);
                    }
                    Ok(_) => {}
                    Err(e) => log::warn!("listing this node's addresses: {e:#}"),
                }
            }
        });
        rx
    }
}

/// kube-proxy's `--nodeport-addresses`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NodePortAddresses {
    /// Unset: every local address, as kube-proxy's iptables mode defaults to.
    #[default]
    All,
    /// The local addresses inside one of these IPv4 CIDRs (IPv6 CIDRs match nothing here).
    Cidrs(Vec<(Ipv4Addr, u8)>),
    /// `primary`: the node's primary address from its Node object (first InternalIP, else
    /// first ExternalIP), whether or not it is configured here yet.
    Primary,
}

impl NodePortAddresses {
    /// Parses the flag's value: `primary`, or a comma-separated CIDR list.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(NodePortAddresses::All);
        }
        if text == "primary" {
            return Ok(NodePortAddresses::Primary);
        }
        let mut cidrs = Vec::new();
        for part in text.split(',').map(str::trim) {
            match parse::network(part) {
                Ok(Family::V4(cidr)) => cidrs.push(cidr),
                Ok(Family::V6) => {}
                Err(message) => return Err(format!("{part:?}: {message}")),
            }
        }
        Ok(NodePortAddresses::Cidrs(cidrs))
    }

    /// The addresses NodePorts answer on, of `local`'s and given this node's primary address.
    pub(crate) fn select(&self, local: &[Ipv4Addr], primary: Option<Ipv4Addr>) -> Vec<Ipv4Addr> {
        match self {
            NodePortAddresses::All => local.to_vec(),
            NodePortAddresses::Cidrs(cidrs) => local
                .iter()
                .copied()
                .filter(|ip| cidrs.iter().any(|c| in_cidr(*ip, *c)))
                .collect(),
            NodePortAddresses::Primary => primary.into_iter().collect(),
        }
    }
}

/// True if `ip` is inside `(network, prefix length)`.
pub(crate) fn in_cidr(ip: Ipv4Addr, (network, len): (Ipv4Addr, u8)) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    u32::from(ip) & mask == u32::from(network) & mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detect_skips_loopback() {
        let local = LocalNode::detect("n1").unwrap();
        assert_eq!(local.name, "n1");
        assert!(local.addresses.iter().all(|ip| !ip.is_loopback()));
        // The raw list does include loopback on any Linux host: the filter is doing the work.
        assert!(crate::host::netdev::local_ipv4s()
            .unwrap()
            .contains(&Ipv4Addr::LOCALHOST));
    }
}
