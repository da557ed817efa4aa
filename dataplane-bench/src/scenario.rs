//! What is measured: the services for a given N, and the packets sent to them.
//!
//! Every lab is the same 2-node calico-style cluster: node1 (198.18.0.11) is the node under
//! test, its pod0's veth (`cali0`) is where pod traffic enters and its uplink (`eth0`) where
//! external traffic enters; the 10 endpoints of every service are node2's 10 pods (remote
//! backends, 10.244.2.2-11, port 8080).

use std::net::Ipv4Addr;

use dataplane::model::{
    Backend, Frontend, FrontendKind, Protocol, ServicePort, ServicePortName, TrafficPolicy,
};
use dataplane_lab::packet::Frame;

use crate::injector::FRAME_LEN;
use crate::rules::{NodeFacts, Proto, Svc};

pub const NODE1_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);
/// node1's uplink MAC, fixed in every lab so that the frames are byte-identical across modes.
pub const NODE1_MAC: [u8; 6] = [0x02, 0x42, 0xc6, 0x12, 0x00, 0x0b];
/// calico's host-side veth MAC: where pod frames are addressed.
pub const CALICO_MAC: [u8; 6] = [0xee; 6];
pub const POD_SRC_MAC: [u8; 6] = [0x02, 0x42, 0x0a, 0xf4, 0x01, 0x02];
pub const EXT_SRC_MAC: [u8; 6] = [0x02, 0x42, 0xc6, 0x13, 0x00, 0x01];
pub const SERVICE_PORT: u16 = 80;
pub const TARGET_PORT: u16 = 8080;
pub const ENDPOINTS: usize = 10;
/// Every 10th service also has a NodePort (30000 + j/10): the default NodePort range holds
/// 2768 ports, so 10,000 NodePort services would not fit in a real cluster either.
pub const NODEPORT_EVERY: usize = 10;
pub const NODEPORT_BASE: u16 = 30000;
/// The TCP service used for the connection test (c); it sits in the middle of KUBE-SERVICES.
pub const TCP_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

pub fn facts() -> NodeFacts {
    NodeFacts {
        pod_cidr: "10.244.0.0/16",
        service_cidr: "10.96.0.0/12",
        node_ips: vec![NODE1_IP],
    }
}

pub fn backends() -> Vec<Ipv4Addr> {
    (0..ENDPOINTS as u8)
        .map(|j| Ipv4Addr::new(10, 244, 2, 2 + j))
        .collect()
}

pub fn vip(j: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 1, 1)) + j as u32)
}

pub fn node_port(j: usize) -> Option<u16> {
    j.is_multiple_of(NODEPORT_EVERY)
        .then(|| NODEPORT_BASE + (j / NODEPORT_EVERY) as u16)
}

/// Number of NodePort services among N.
pub fn node_ports(n: usize) -> usize {
    n.div_ceil(NODEPORT_EVERY)
}

/// The N UDP services (all 10 endpoints each), plus the TCP service of (c) in the middle of
/// the rule order.
pub fn services(n: usize) -> Vec<Svc> {
    let mut v: Vec<Svc> = (0..n)
        .map(|j| Svc {
            namespace: "bench".into(),
            name: format!("svc-{j:05}"),
            port_name: "p80".into(),
            vip: vip(j),
            port: SERVICE_PORT,
            proto: Proto::Udp,
            target_port: TARGET_PORT,
            node_port: node_port(j),
            endpoints: backends(),
        })
        .collect();
    let tcp = Svc {
        namespace: "bench".into(),
        name: "tcp-echo".into(),
        port_name: "p80".into(),
        vip: TCP_VIP,
        port: SERVICE_PORT,
        proto: Proto::Tcp,
        target_port: TARGET_PORT,
        node_port: None,
        endpoints: backends(),
    };
    v.insert(n / 2, tcp);
    v
}

/// The service whose endpoints change in the "apply one changed service" measurement, before
/// and after: one endpoint replaced by a new pod address.
pub fn changed(svcs: &[Svc]) -> (Svc, Svc) {
    let before = svcs
        .iter()
        .find(|s| s.proto == Proto::Udp)
        .expect("a UDP service")
        .clone();
    let mut after = before.clone();
    after.endpoints[ENDPOINTS - 1] = Ipv4Addr::new(10, 244, 2, 200);
    (before, after)
}

/// The same service as the dataplane's model (what the control plane would hand ServiceTable).
pub fn to_model(s: &Svc) -> ServicePort {
    let protocol = match s.proto {
        Proto::Udp => Protocol::Udp,
        Proto::Tcp => Protocol::Tcp,
    };
    let mut frontends = vec![Frontend {
        ip: s.vip,
        port: s.port,
        protocol,
        kind: FrontendKind::ClusterIp,
    }];
    if let Some(np) = s.node_port {
        frontends.push(Frontend {
            ip: NODE1_IP,
            port: np,
            protocol,
            kind: FrontendKind::NodePort,
        });
    }
    ServicePort {
        name: ServicePortName {
            namespace: s.namespace.clone(),
            name: s.name.clone(),
            port: s.port_name.clone(),
        },
        frontends,
        backends: s
            .endpoints
            .iter()
            .map(|ip| Backend {
                ip: *ip,
                port: s.target_port,
                node_name: Some("node2".into()),
                ready: true,
                serving: true,
                terminating: false,
                hints: Default::default(),
            })
            .collect(),
        external_policy: TrafficPolicy::Cluster,
        internal_policy: TrafficPolicy::Cluster,
        affinity_timeout_secs: None,
        health_check_node_port: None,
        source_ranges: Vec::new(),
    }
}

/// Which packets: where they enter node1 and whether each frame is a new flow.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Traffic {
    /// Pod -> ClusterIP:80/UDP, a new 5-tuple per packet, entering at the pod's veth.
    ClusterNew,
    /// Pod -> ClusterIP, packets of flows whose first packet was already translated.
    ClusterEst,
    /// External -> NodeIP:nodePort/UDP, new flow per packet, entering at the uplink.
    NodePortNew,
    NodePortEst,
}

impl Traffic {
    pub const ALL: [Traffic; 4] = [
        Traffic::ClusterNew,
        Traffic::ClusterEst,
        Traffic::NodePortNew,
        Traffic::NodePortEst,
    ];

    pub fn is_new(self) -> bool {
        matches!(self, Traffic::ClusterNew | Traffic::NodePortNew)
    }

    pub fn is_nodeport(self) -> bool {
        matches!(self, Traffic::NodePortNew | Traffic::NodePortEst)
    }

    pub fn key(self) -> &'static str {
        match self {
            Traffic::ClusterNew => "clusterip_new_flow",
            Traffic::ClusterEst => "clusterip_established",
            Traffic::NodePortNew => "nodeport_new_flow",
            Traffic::NodePortEst => "nodeport_established",
        }
    }
}

/// Flows per "new flow" set: the most frames one run sends.
pub const NEW_FLOWS: u32 = 100_000;
/// Flows per "established" set.
pub const EST_FLOWS: u32 = 1024;

/// Template layout: the four traffic sets addressed to services, then the same four with the
/// destination already translated (the no-NAT floor).
pub fn set_offset(t: Traffic, floor: bool) -> u32 {
    let base = match t {
        Traffic::ClusterNew => 0,
        Traffic::ClusterEst => NEW_FLOWS,
        Traffic::NodePortNew => NEW_FLOWS + EST_FLOWS,
        Traffic::NodePortEst => 2 * NEW_FLOWS + EST_FLOWS,
    };
    base + if floor {
        2 * (NEW_FLOWS + EST_FLOWS)
    } else {
        0
    }
}

pub fn set_len(t: Traffic) -> u32 {
    if t.is_new() {
        NEW_FLOWS
    } else {
        EST_FLOWS
    }
}

pub const TEMPLATE_CAPACITY: u32 = 4 * (NEW_FLOWS + EST_FLOWS);

/// xorshift64*: deterministic, so every mode gets the same packets in the same order.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn udp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    s: Ipv4Addr,
    d: Ipv4Addr,
    sp: u16,
    dp: u16,
) -> Vec<u8> {
    let f = Frame::eth(src_mac, dst_mac)
        .ipv4(s, d)
        .dont_fragment(true)
        .udp(sp, dp)
        .payload(&[0u8; FRAME_LEN - 42])
        .build();
    debug_assert_eq!(f.len(), FRAME_LEN);
    f
}

/// Source address and port of flow `i` of a set: 60,000 ports per source address.
fn source(base: Ipv4Addr, i: u32) -> (Ipv4Addr, u16) {
    (
        Ipv4Addr::from(u32::from(base) + i / 60_000),
        1024 + (i % 60_000) as u16,
    )
}

/// Builds every template frame for N services: `put(index, frame)`.
pub fn build_templates(n: usize, mut put: impl FnMut(u32, &[u8])) {
    let backends = backends();
    let np_count = node_ports(n);
    for t in Traffic::ALL {
        let mut rng = Rng::new(0x5eed ^ ((t as u64 + 1) * 0x9e37_79b9) ^ n as u64);
        let src_base = match t {
            Traffic::ClusterNew => Ipv4Addr::new(10, 244, 1, 200),
            Traffic::ClusterEst => Ipv4Addr::new(10, 244, 1, 250),
            Traffic::NodePortNew => Ipv4Addr::new(198, 19, 0, 1),
            Traffic::NodePortEst => Ipv4Addr::new(198, 19, 100, 1),
        };
        for i in 0..set_len(t) {
            let (src, sport) = source(src_base, i);
            let be = backends[rng.below(backends.len())];
            let (mac_s, mac_d) = if t.is_nodeport() {
                (EXT_SRC_MAC, NODE1_MAC)
            } else {
                (POD_SRC_MAC, CALICO_MAC)
            };
            let (dst, dport) = if t.is_nodeport() {
                let k = rng.below(np_count);
                (NODE1_IP, NODEPORT_BASE + k as u16)
            } else {
                (vip(rng.below(n)), SERVICE_PORT)
            };
            put(
                set_offset(t, false) + i,
                &udp_frame(mac_s, mac_d, src, dst, sport, dport),
            );
            put(
                set_offset(t, true) + i,
                &udp_frame(mac_s, mac_d, src, be, sport, TARGET_PORT),
            );
        }
    }
}
