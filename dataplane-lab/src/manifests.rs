//! Kubernetes manifests for the lab, as `kubectl get -o yaml` prints them: what
//! `dataplane run --manifests` reads in the demo and the tests.

use std::{fmt::Write as _, net::Ipv4Addr};

/// One endpoint of a service: pod address and the node it runs on.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub node: String,
}

/// A single-port Service and its EndpointSlice.
#[derive(Clone, Debug)]
pub struct ServiceManifest {
    pub namespace: String,
    pub name: String,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    pub target_port: u16,
    /// "TCP" or "UDP".
    pub protocol: String,
    /// Some: type NodePort with this nodePort.
    pub node_port: Option<u16>,
    pub endpoints: Vec<Endpoint>,
}

impl ServiceManifest {
    /// A `kind: List` with the Service and its EndpointSlice.
    pub fn to_yaml(&self) -> String {
        let mut y = String::from("apiVersion: v1\nkind: List\nitems:\n");
        y += &self.service_yaml();
        y += &self.slice_yaml();
        y
    }

    fn service_yaml(&self) -> String {
        let kind = if self.node_port.is_some() {
            "NodePort"
        } else {
            "ClusterIP"
        };
        let mut y = format!(
            "- apiVersion: v1\n  kind: Service\n  metadata:\n    name: {}\n    namespace: {}\n  spec:\n    type: {kind}\n    clusterIP: {}\n    clusterIPs: [\"{}\"]\n    ports:\n    - name: p\n      port: {}\n      protocol: {}\n      targetPort: {}\n",
            self.name, self.namespace, self.cluster_ip, self.cluster_ip, self.port, self.protocol, self.target_port
        );
        if let Some(np) = self.node_port {
            let _ = writeln!(
                y,
                "      nodePort: {np}\n    externalTrafficPolicy: Cluster"
            );
        }
        y
    }

    fn slice_yaml(&self) -> String {
        let mut y = format!(
            "- apiVersion: discovery.k8s.io/v1\n  kind: EndpointSlice\n  metadata:\n    name: {}-abcde\n    namespace: {}\n    labels:\n      kubernetes.io/service-name: {}\n  addressType: IPv4\n  ports:\n  - name: p\n    port: {}\n    protocol: {}\n  endpoints:\n",
            self.name, self.namespace, self.name, self.target_port, self.protocol
        );
        if self.endpoints.is_empty() {
            y = y.replace("  endpoints:\n", "  endpoints: []\n");
        }
        for e in &self.endpoints {
            let _ = write!(
                y,
                "  - addresses: [\"{}\"]\n    conditions:\n      ready: true\n    nodeName: {}\n",
                e.ip, e.node
            );
        }
        y
    }
}

/// A Node as the API server shows it for a flannel (vxlan) node: InternalIP `ip`, pod CIDR,
/// and flannel's backend data with `vtep_mac`.
pub fn flannel_node_yaml(
    name: &str,
    ip: Ipv4Addr,
    cidr: (Ipv4Addr, u8),
    vtep_mac: [u8; 6],
) -> String {
    let (net, len) = cidr;
    format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  annotations:\n    \
         flannel.alpha.coreos.com/backend-data: '{{\"VNI\":1,\"VtepMAC\":\"{mac}\"}}'\n    \
         flannel.alpha.coreos.com/backend-type: vxlan\n    flannel.alpha.coreos.com/public-ip: {ip}\n\
         spec:\n  podCIDR: {net}/{len}\n  podCIDRs:\n  - {net}/{len}\n\
         status:\n  addresses:\n  - address: {ip}\n    type: InternalIP\n",
        mac = crate::flannel::mac_text(vtep_mac),
    )
}
