//! BPF_PROG_TEST_RUN fixtures of service load balancing: DNAT, reverse NAT, masquerade, traffic
//! policies, loadBalancerSourceRanges, the pre-filter, UDP checksums, hairpin. The fixture
//! services are `tests/support/fixture/services.rs`.

mod support;

use std::net::{Ipv4Addr, SocketAddrV4};

use dataplane::model::{Backend, FrontendKind, Protocol, TrafficPolicy};
use dataplane_common::{Hook, Reason};
use dataplane_lab::packet::{parse, TcpFlags};
use support::{
    cluster,
    fixture::{harness, services::*, Fixture, Output, Verdict, MASQ_ADDR},
};

#[test]
fn external_traffic_policy_local_without_local_endpoints_drops_like_kube_proxy() {
    let mut h = harness();
    h.sync_services(&services());
    let syn = tcp(EXTERNAL, 5556, NODE_IP, 30081, TcpFlags::SYN).build();
    h.check(&Fixture {
        name: "etp local, no local endpoint",
        hook: Hook::XdpUplink,
        input: syn,
        verdict: Verdict::Drop,
        reason: Reason::DropNoLocalEndpoints,
        output: Output::Ignored,
    });
    // Its ClusterIP still reaches the remote endpoint (internal policy is Cluster).
    let syn = tcp(CLIENT, 45001, VIP, 83, TcpFlags::SYN).build();
    let o = h.run(Hook::TcPodIngress, &syn);
    assert_eq!(
        o.stats_delta,
        vec![(
            Hook::TcPodIngress,
            Reason::LbNewConnection,
            1,
            syn.len() as u64
        )]
    );
}

/// kube-proxy's two answers for a frontend with nothing eligible on this node (iptables
/// proxier, "has no local endpoints" DROP vs "has no endpoints" REJECT): a Local policy drops
/// when the service has endpoints elsewhere, and rejects when it has none anywhere, for the
/// internal policy as for the external one.
#[test]
fn local_policies_drop_with_remote_endpoints_and_reject_without_any() {
    let mut h = harness();
    let mut itp_local = cluster::cluster_ip(
        "itp-local",
        SocketAddrV4::new(VIP, 84),
        Protocol::Tcp,
        one_backend(BACKEND, 8080),
    );
    itp_local.internal_policy = TrafficPolicy::Local;
    let mut etp_local_empty = cluster::cluster_ip(
        "etp-empty",
        SocketAddrV4::new(VIP, 85),
        Protocol::Tcp,
        vec![],
    );
    etp_local_empty.external_policy = TrafficPolicy::Local;
    let etp_local_empty = cluster::with_node_port(etp_local_empty, &[NODE_IP], 30082);
    let mut all = services();
    all.extend([itp_local, etp_local_empty]);
    h.sync_services(&all);
    h.check(&Fixture {
        name: "itp local, remote endpoint only: drop",
        hook: Hook::TcPodIngress,
        input: tcp(CLIENT, 45101, VIP, 84, TcpFlags::SYN).build(),
        verdict: Verdict::Drop,
        reason: Reason::DropNoLocalEndpoints,
        output: Output::Ignored,
    });
    h.check(&Fixture {
        name: "etp local, no endpoint anywhere: reject",
        hook: Hook::XdpUplink,
        input: tcp(EXTERNAL, 5557, NODE_IP, 30082, TcpFlags::SYN).build(),
        verdict: Verdict::Tx,
        reason: Reason::RejectNoEndpoints,
        output: Output::Ignored,
    });
}

/// loadBalancerSourceRanges: the LB IP accepts new connections only from the listed ranges
/// (one LPM lookup, for flagged frontends only), drops the others with drop-source-range even
/// when it has no endpoints (kube-proxy's firewall runs before its reject); the Service's
/// NodePort stays open (kube-proxy restricts the load-balancer IPs only).
#[test]
fn load_balancer_source_ranges_allow_listed_clients_and_drop_the_rest() {
    const LB_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
    const OUTSIDER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 200);
    let mut h = harness();
    let ranged = |name: &str, port: u16, node_port: u16, backends: Vec<Backend>| {
        let mut svc =
            cluster::cluster_ip(name, SocketAddrV4::new(VIP, port), Protocol::Tcp, backends);
        svc.frontends.push(dataplane::model::Frontend {
            ip: LB_IP,
            port,
            protocol: Protocol::Tcp,
            kind: FrontendKind::LoadBalancer,
        });
        // EXTERNAL (198.18.0.100) is inside, OUTSIDER is not.
        svc.source_ranges = vec![(Ipv4Addr::new(198, 18, 0, 96), 27)];
        cluster::with_node_port(svc, &[NODE_IP], node_port)
    };
    let mut all = services();
    all.push(ranged("lb", 86, 30086, one_backend(BACKEND, 8080)));
    all.push(ranged("lb-empty", 87, 30087, vec![]));
    h.sync_services(&all);
    let syn = |src, dst, dport| tcp(src, 5600, dst, dport, TcpFlags::SYN).build();
    h.check(&Fixture {
        name: "LB IP from a listed client",
        hook: Hook::XdpUplink,
        input: syn(EXTERNAL, LB_IP, 86),
        verdict: Verdict::Pass,
        reason: Reason::LbNewConnection,
        output: Output::Ignored,
    });
    h.check(&Fixture {
        name: "LB IP from an unlisted client",
        hook: Hook::XdpUplink,
        input: syn(OUTSIDER, LB_IP, 86),
        verdict: Verdict::Drop,
        reason: Reason::DropSourceRange,
        output: Output::Ignored,
    });
    h.check(&Fixture {
        name: "LB IP without endpoints, unlisted client: dropped, not rejected",
        hook: Hook::XdpUplink,
        input: syn(OUTSIDER, LB_IP, 87),
        verdict: Verdict::Drop,
        reason: Reason::DropSourceRange,
        output: Output::Ignored,
    });
    h.check(&Fixture {
        name: "the NodePort is not restricted",
        hook: Hook::XdpUplink,
        input: syn(OUTSIDER, NODE_IP, 30086),
        verdict: Verdict::Pass,
        reason: Reason::LbNewConnection,
        output: Output::Ignored,
    });
}

#[test]
fn clusterip_connection_is_dnated_tracked_and_reverse_natted() {
    let mut h = harness();
    h.sync_services(&services());
    // tc (kernel checksum helpers) and XDP (hand-updated checksums) must both produce frames
    // byte-identical to ones built from scratch with correct checksums. Replies are restored
    // after routing, at the egress hook toward the client.
    for (hook, egress, sport) in [
        (Hook::TcPodIngress, Hook::TcPodEgress, 40001),
        (Hook::XdpUplink, Hook::TcUplinkEgress, 40002),
    ] {
        let syn = tcp(CLIENT, sport, VIP, 80, TcpFlags::SYN).build();
        let dnat = tcp(CLIENT, sport, BACKEND, 8080, TcpFlags::SYN).build();
        h.check(&service_fixture(
            "syn to clusterip",
            hook,
            syn,
            Reason::LbNewConnection,
            dnat,
        ));
        let ack = tcp(CLIENT, sport, VIP, 80, TcpFlags::ACK).build();
        let ack_dnat = tcp(CLIENT, sport, BACKEND, 8080, TcpFlags::ACK).build();
        h.check(&service_fixture(
            "ack of the same connection",
            hook,
            ack,
            Reason::NatForward,
            ack_dnat,
        ));
        let reply = tcp(BACKEND, 8080, CLIENT, sport, TcpFlags::SYN | TcpFlags::ACK).build();
        let reply_nat = tcp(VIP, 80, CLIENT, sport, TcpFlags::SYN | TcpFlags::ACK).build();
        h.check(&service_fixture(
            "reply from the backend",
            egress,
            reply,
            Reason::NatReply,
            reply_nat,
        ));
    }
}

/// Sets the pre-filter flag and the `LB_ADDRS_V1` entry of `addr` (None: not listed).
fn set_prefilter(h: &mut support::fixture::Harness, on: bool, addr: Ipv4Addr, flags: Option<u32>) {
    use dataplane_common::{ct::CFG_F_POD_FILTER, map_names};
    let mut cfg = dataplane_common::ct::Config::with_masq_addr(u32::from(MASQ_ADDR).to_be());
    if on {
        cfg.flags |= CFG_F_POD_FILTER;
    }
    dataplane::maps::write_config(&h.datapath.ebpf, &cfg).unwrap();
    let map = h.datapath.ebpf.map_mut(map_names::LB_ADDRS).unwrap();
    let mut addrs: aya::maps::HashMap<_, u32, u32> = aya::maps::HashMap::try_from(map).unwrap();
    let key = u32::from(addr).to_be();
    match flags {
        Some(f) => addrs.insert(key, f, 0).unwrap(),
        None => {
            let _ = addrs.remove(&key);
        }
    }
}

/// The pre-filter (`CFG_F_POD_FILTER`, which the agent turns on once `LB_ADDRS_V1` holds the
/// node's addresses): on every packet hook, a packet whose addresses `LB_ADDRS_V1` does not list
/// skips the conntrack and service lookups. Shown with entries taken out of `LB_ADDRS_V1` by
/// hand (ServiceTable never leaves that state: it lists an address before any map entry uses
/// it): a SYN to a frontend that is not listed passes untranslated on the ingress hooks, and
/// the tracked reply of a backend that is not listed passes untranslated on the egress hooks;
/// listed again, they are translated. With the filter off the same packets are translated.
#[test]
fn the_pre_filter_skips_lookups_for_unlisted_addresses_on_every_hook() {
    use dataplane_common::lb::{ADDR_F_BACKEND, ADDR_F_FRONTEND};
    let mut h = harness();
    h.sync_services(&services());
    set_prefilter(&mut h, true, VIP, None);
    // (The fixture object runs the uplink's service pipeline in XDP; its tc ingress only
    // observes. With --xdp-mode off, tc ingress runs the same pipeline: tests/overlay_{vxlan,ipip}.rs.)
    for (hook, sport) in [(Hook::TcPodIngress, 40101), (Hook::XdpUplink, 40102)] {
        let syn = tcp(CLIENT, sport, VIP, 80, TcpFlags::SYN).build();
        h.check(&Fixture {
            name: "syn to an unlisted frontend, filter on",
            hook,
            input: syn.clone(),
            verdict: Verdict::Pass,
            reason: Reason::PassTcp,
            output: Output::Unchanged,
        });
        set_prefilter(&mut h, true, VIP, Some(ADDR_F_FRONTEND));
        let dnat = tcp(CLIENT, sport, BACKEND, 8080, TcpFlags::SYN).build();
        h.check(&service_fixture(
            "listed again",
            hook,
            syn,
            Reason::LbNewConnection,
            dnat,
        ));
        set_prefilter(&mut h, true, VIP, None);
    }
    // CLIENT is listed too (the hairpin service's backend): take both out.
    set_prefilter(&mut h, true, CLIENT, None);
    set_prefilter(&mut h, true, BACKEND, None);
    for (egress, sport) in [(Hook::TcPodEgress, 40101), (Hook::TcUplinkEgress, 40102)] {
        let reply = tcp(BACKEND, 8080, CLIENT, sport, TcpFlags::SYN | TcpFlags::ACK).build();
        h.check(&Fixture {
            name: "reply of an unlisted backend, filter on",
            hook: egress,
            input: reply.clone(),
            verdict: Verdict::Pass,
            reason: Reason::PassTcp,
            output: Output::Unchanged,
        });
        set_prefilter(&mut h, false, BACKEND, None);
        let reply_nat = tcp(VIP, 80, CLIENT, sport, TcpFlags::SYN | TcpFlags::ACK).build();
        h.check(&service_fixture(
            "filter off",
            egress,
            reply,
            Reason::NatReply,
            reply_nat,
        ));
        set_prefilter(&mut h, true, BACKEND, None);
    }
    set_prefilter(&mut h, false, VIP, Some(ADDR_F_FRONTEND));
    set_prefilter(&mut h, false, BACKEND, Some(ADDR_F_BACKEND));
    set_prefilter(&mut h, false, CLIENT, Some(ADDR_F_BACKEND));
}

#[test]
fn udp_checksums_including_the_zero_checksum() {
    let mut h = harness();
    h.sync_services(&services());
    for (hook, egress, sport) in [
        (Hook::TcPodIngress, Hook::TcPodEgress, 41001),
        (Hook::XdpUplink, Hook::TcUplinkEgress, 41002),
    ] {
        let q = eth()
            .ipv4(CLIENT, VIP)
            .udp(sport, 53)
            .payload(b"query")
            .build();
        let want = eth()
            .ipv4(CLIENT, BACKEND)
            .udp(sport, 5353)
            .payload(b"query")
            .build();
        h.check(&service_fixture(
            "udp to clusterip",
            hook,
            q,
            Reason::LbNewConnection,
            want,
        ));
        let r = eth()
            .ipv4(BACKEND, CLIENT)
            .udp(5353, sport)
            .payload(b"answer")
            .build();
        let want = eth()
            .ipv4(VIP, CLIENT)
            .udp(53, sport)
            .payload(b"answer")
            .build();
        h.check(&service_fixture(
            "udp reply",
            egress,
            r,
            Reason::NatReply,
            want,
        ));
    }
    for (hook, sport) in [(Hook::TcPodIngress, 41003), (Hook::XdpUplink, 41004)] {
        // Checksum 0 means "no checksum": it must stay 0, not become a wrong value.
        let q = eth()
            .ipv4(CLIENT, VIP)
            .udp(sport, 53)
            .l4_checksum(0)
            .payload(b"nocsum")
            .build();
        let want = eth()
            .ipv4(CLIENT, BACKEND)
            .udp(sport, 5353)
            .l4_checksum(0)
            .payload(b"nocsum")
            .build();
        h.check(&service_fixture(
            "udp without checksum",
            hook,
            q,
            Reason::LbNewConnection,
            want,
        ));
    }
}

#[test]
fn nodeport_is_masqueraded_after_routing_and_its_reply_restored_in_two_steps() {
    let mut h = harness();
    h.sync_services(&services());
    // Ingress (XDP): DNAT only. The kernel must route a packet whose source is still the
    // client; with the node address as source it would drop it as a martian.
    let syn = tcp(EXTERNAL, 5555, NODE_IP, 30080, TcpFlags::SYN).build();
    let dnat = tcp(EXTERNAL, 5555, BACKEND, 8080, TcpFlags::SYN).build();
    h.check(&service_fixture(
        "nodeport syn",
        Hook::XdpUplink,
        syn,
        Reason::LbNewConnection,
        dnat.clone(),
    ));
    // Egress (after routing to the remote backend): SNAT to the node address and a port of the
    // masquerade range.
    let o = h.run(Hook::TcUplinkEgress, &dnat);
    assert_eq!(
        o.stats_delta,
        vec![(
            Hook::TcUplinkEgress,
            Reason::NatForward,
            1,
            dnat.len() as u64
        )]
    );
    let out = parse(&o.output).unwrap();
    let (ip, t) = (out.ipv4().unwrap(), out.tcp().unwrap());
    assert_eq!((ip.src, ip.dst, t.dport), (NODE_IP, BACKEND, 8080));
    assert!(
        (1024..=32767).contains(&t.sport),
        "masquerade port {} from the SNAT range",
        t.sport
    );
    assert!(ip.checksum_ok && t.checksum_ok);
    // The reply: un-SNAT at ingress, un-DNAT at egress.
    let reply = tcp(
        BACKEND,
        8080,
        NODE_IP,
        t.sport,
        TcpFlags::SYN | TcpFlags::ACK,
    )
    .build();
    let unsnat = tcp(BACKEND, 8080, EXTERNAL, 5555, TcpFlags::SYN | TcpFlags::ACK).build();
    h.check(&service_fixture(
        "nodeport reply in",
        Hook::XdpUplink,
        reply,
        Reason::NatReply,
        unsnat.clone(),
    ));
    let restored = tcp(
        NODE_IP,
        30080,
        EXTERNAL,
        5555,
        TcpFlags::SYN | TcpFlags::ACK,
    )
    .build();
    h.check(&service_fixture(
        "nodeport reply out",
        Hook::TcUplinkEgress,
        unsnat,
        Reason::NatReply,
        restored,
    ));
}

#[test]
fn hairpin_is_masqueraded() {
    let mut h = harness();
    h.sync_services(&services());
    let syn = tcp(CLIENT, 42001, VIP, 82, TcpFlags::SYN).build();
    let dnat = tcp(CLIENT, 42001, CLIENT, 8080, TcpFlags::SYN).build();
    h.check(&service_fixture(
        "hairpin syn",
        Hook::TcPodIngress,
        syn,
        Reason::LbNewConnection,
        dnat.clone(),
    ));
    let o = h.run(Hook::TcPodEgress, &dnat);
    let out = parse(&o.output).unwrap();
    let (ip, t) = (out.ipv4().unwrap(), out.tcp().unwrap());
    assert_eq!(
        (ip.src, ip.dst, t.dport),
        (NODE_IP, CLIENT, 8080),
        "a pod reaching itself sees the node"
    );
    assert!(ip.checksum_ok && t.checksum_ok);
}
