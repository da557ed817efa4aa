//! The kernel's flannel.1 as `dataplane_lab::flannel` configures it, alone (no dataplane): two
//! nodes without host-gw routes reach each other's pods only through the VXLAN devices, and the
//! device carries flannel's parameters. Needs root.

use std::net::SocketAddrV4;
use std::time::Duration;

use dataplane_lab::flannel::{self, Peer};
use dataplane_lab::lab::{Lab, LabSpec};
use dataplane_lab::netns;

#[test]
fn pods_of_two_flannel_1_nodes_reach_each_other_through_vxlan() {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "needs root (network namespaces)"
    );
    let lab = Lab::build(&LabSpec {
        nodes: 2,
        pods_per_node: 1,
        pod_mtu: flannel::MTU,
        underlay_routes: false,
        external_client: false,
        ..Default::default()
    })
    .unwrap();
    let (n1, n2) = (lab.node(0), lab.node(1));
    let (m1, m2) = (flannel::vtep_mac(n1.index), flannel::vtep_mac(n2.index));
    flannel::configure(n1, m1, &[Peer::of(n2, m2)]).unwrap();
    flannel::configure(n2, m2, &[Peer::of(n1, m1)]).unwrap();

    let details = netns::ip(&n1.ns, &["-d", "link", "show", "dev", flannel::DEVICE]).unwrap();
    for expected in ["vxlan id 1 ", "dstport 8472", "nolearning", "mtu 1450"] {
        assert!(details.contains(expected), "{expected:?} not in {details}");
    }
    assert_eq!(flannel::iface_mac(&n1.ns, flannel::DEVICE).unwrap(), m1);

    let (p1, p2) = (lab.pod(0, 0).host(), lab.pod(1, 0).host());
    p1.ping(p2.ip, 2).unwrap();
    let _server = p2.tcp_echo_server(7000).unwrap();
    let reply = p1
        .tcp_request(SocketAddrV4::new(p2.ip, 7000), "hi", Duration::from_secs(3))
        .unwrap();
    assert_eq!(*reply.peer.ip(), p1.ip, "no NAT on the way");

    flannel::remove(n1).unwrap();
    assert!(
        p1.ping(p2.ip, 1).is_err(),
        "no route once flannel.1 is gone"
    );
}
