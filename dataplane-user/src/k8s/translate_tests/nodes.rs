//! Nodes: calico, flannel and plain addresses.

use super::*;

const NODES: &str = r#"
apiVersion: v1
kind: Node
metadata:
  name: calico-1
  creationTimestamp: "2024-01-02T03:04:05Z"
  annotations:
    projectcalico.org/IPv4Address: 192.168.100.111/24
    projectcalico.org/IPv4IPIPTunnelAddr: 192.168.208.192
spec: {podCIDR: 10.244.5.0/24}
status:
  addresses: [{type: InternalIP, address: 10.0.0.111}]
---
# flannel host-gw writes backend-data null.
apiVersion: v1
kind: Node
metadata:
  name: hostgw-1
  annotations:
    flannel.alpha.coreos.com/backend-data: "null"
    flannel.alpha.coreos.com/backend-type: host-gw
spec: {podCIDRs: [10.244.6.0/24]}
status:
  addresses:
  - {type: Hostname, address: hostgw-1}
  - {type: ExternalIP, address: 203.0.113.66}
  - {type: InternalIP, address: 192.168.100.66}
---
# A node without pod CIDRs yet is still a node.
apiVersion: v1
kind: Node
metadata: {name: bare-1}
status:
  addresses: [{type: InternalIP, address: 192.168.100.77}]
"#;

#[test]
fn nodes_from_calico_flannel_and_plain_addresses() {
    let state = clean(NODES);
    assert_eq!(
        state.nodes,
        [
            NodeInfo {
                name: "bare-1".into(),
                address: ip("192.168.100.77"),
                pod_cidrs: vec![],
                vtep_mac: None,
                ipip_tunnel_addr: None,
                created: None,
            },
            NodeInfo {
                name: "calico-1".into(),
                address: ip("192.168.100.111"),
                pod_cidrs: vec![(ip("10.244.5.0"), 24)],
                vtep_mac: None,
                ipip_tunnel_addr: Some(ip("192.168.208.192")),
                created: Some(1704164645),
            },
            NodeInfo {
                name: "hostgw-1".into(),
                address: ip("192.168.100.66"),
                pod_cidrs: vec![(ip("10.244.6.0"), 24)],
                vtep_mac: None,
                ipip_tunnel_addr: None,
                created: None,
            },
        ]
    );
}
