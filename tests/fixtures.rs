//! BPF_PROG_TEST_RUN fixtures: real programs in the kernel, crafted frames in, verdict, output
//! frame and counters checked. Every datapath feature adds its fixtures here.

mod support;

use std::net::Ipv4Addr;

use dataplane_common::{Hook, Reason};
use dataplane_lab::packet::{ethertype, proto, Frame, TcpFlags};
use support::fixture::{harness, Fixture, Output, Verdict};

const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
const POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 2);

fn eth() -> Frame {
    Frame::eth(MAC_A, MAC_B)
}

fn tcp_syn() -> Frame {
    eth()
        .ipv4(POD, PEER)
        .tcp(40000, 80)
        .flags(TcpFlags::SYN)
        .seq(1)
}

/// Runs one fixture on every hook: until features give hooks their own pipelines, the parsing
/// layer must classify identically everywhere.
fn on_every_hook(name: &'static str, input: Vec<u8>, reason: Reason) {
    on_hooks(&Hook::PACKET, name, input, reason);
}

fn on_hooks(hooks: &[Hook], name: &'static str, input: Vec<u8>, reason: Reason) {
    let mut h = harness();
    for &hook in hooks {
        let verdict = if reason.is_drop() {
            Verdict::Drop
        } else {
            Verdict::Pass
        };
        let output = if reason.is_drop() {
            Output::Ignored
        } else {
            Output::Unchanged
        };
        h.check(&Fixture {
            name,
            hook,
            input: input.clone(),
            verdict,
            reason,
            output,
        });
    }
}

#[test]
fn non_ip_frames_pass_untouched() {
    let arp = eth().ethertype(ethertype::ARP).payload(&[0u8; 28]).build();
    on_every_hook("arp", arp, Reason::PassNotIpv4);
    let ipv6 = eth()
        .ethertype(ethertype::IPV6)
        .payload(&[0x60; 40])
        .build();
    on_every_hook("ipv6", ipv6, Reason::PassNotIpv4);
}

#[test]
fn ipv4_transport_protocols_are_classified() {
    on_every_hook(
        "tcp syn",
        tcp_syn().payload(b"hello").build(),
        Reason::PassTcp,
    );
    on_every_hook(
        "udp",
        eth().ipv4(POD, PEER).udp(5353, 53).payload(b"q").build(),
        Reason::PassUdp,
    );
    on_every_hook(
        "icmp echo",
        eth().ipv4(POD, PEER).icmp_echo(true, 7, 1).build(),
        Reason::PassIcmp,
    );
    on_every_hook(
        "gre",
        eth().ipv4(POD, PEER).ip_proto(proto::GRE, &[0; 8]).build(),
        Reason::PassOtherL4,
    );
    // Ethernet padding after a short IPv4 packet is legal: total length < frame.
    let mut padded = eth().ipv4(POD, PEER).udp(1, 2).build();
    padded.resize(60, 0);
    on_every_hook("udp padded to 60 bytes", padded, Reason::PassUdp);
}

#[test]
fn ip_options_move_the_transport_header() {
    let opts4 = [0x01, 0x01, 0x01, 0x00]; // NOP NOP NOP EOL
    on_every_hook(
        "tcp after 4 bytes of options",
        tcp_syn().ip_options(&opts4).build(),
        Reason::PassTcp,
    );
    let opts40 = [0x01; 40]; // IHL 15, the maximum
    on_every_hook(
        "udp after 40 bytes of options",
        eth().ipv4(POD, PEER).ip_options(&opts40).udp(1, 2).build(),
        Reason::PassUdp,
    );
    // The same TCP packet cut 10 bytes into the TCP header: only a parser that honours the IHL
    // notices the transport header is incomplete (14 + 60 + 20 would fit if options were ignored).
    let mut cut = tcp_syn().ip_options(&opts40).total_len(60 + 10).build();
    cut.truncate(14 + 60 + 10);
    on_every_hook(
        "tcp header cut short after options",
        cut,
        Reason::DropTruncatedL4,
    );
}

#[test]
fn fragments() {
    let first = eth()
        .ipv4(POD, PEER)
        .frag(true, 0)
        .udp(4000, 53)
        .payload(&[7; 32])
        .build();
    on_every_hook("first fragment has ports", first, Reason::PassUdp);
    let middle = eth()
        .ipv4(POD, PEER)
        .frag(true, 185)
        .ip_proto(proto::UDP, &[1; 64])
        .dont_fragment(false)
        .build();
    on_every_hook("middle fragment", middle, Reason::PassFragment);
    let last = eth()
        .ipv4(POD, PEER)
        .frag(false, 370)
        .ip_proto(proto::TCP, &[1; 8])
        .dont_fragment(false)
        .build();
    // 8 bytes of "TCP" in a non-first fragment must not be read as a header.
    on_every_hook("last fragment", last, Reason::PassFragment);
}

#[test]
fn malformed_ipv4_is_dropped_with_its_reason() {
    let mut short = tcp_syn().build();
    short.truncate(14 + 10);
    // The kernel's skb test_run refuses (EINVAL) an IPv4 frame with less than 20 bytes of IP
    // header, so this input can only be run through XDP; tc shares the same parser code.
    on_hooks(
        &[Hook::XdpUplink],
        "ipv4 header cut at 10 bytes",
        short,
        Reason::DropTruncatedIpv4,
    );
    let mut opts_cut = tcp_syn().ip_options(&[0x01; 40]).build();
    opts_cut.truncate(14 + 40);
    // Total length (80) beyond the 54-byte frame is what gives this one away.
    on_every_hook("ipv4 options cut", opts_cut, Reason::DropBadIpv4);
    on_every_hook(
        "version 6 in an ipv4 ethertype",
        tcp_syn().ip_version(6).build(),
        Reason::DropBadIpv4,
    );
    on_every_hook("ihl 4", tcp_syn().ihl(4).build(), Reason::DropBadIpv4);
    on_every_hook(
        "total length beyond frame",
        tcp_syn().total_len(1500).build(),
        Reason::DropBadIpv4,
    );
    on_every_hook(
        "total length below header",
        tcp_syn().total_len(19).build(),
        Reason::DropBadIpv4,
    );
    let mut tcp_cut = tcp_syn().total_len(20 + 10).build();
    tcp_cut.truncate(14 + 20 + 10);
    on_every_hook(
        "tcp header 10 of 20 bytes",
        tcp_cut,
        Reason::DropTruncatedL4,
    );
    let mut udp_cut = eth().ipv4(POD, PEER).udp(1, 2).total_len(20 + 4).build();
    udp_cut.truncate(14 + 20 + 4);
    on_every_hook("udp header 4 of 8 bytes", udp_cut, Reason::DropTruncatedL4);
    let mut icmp_cut = eth()
        .ipv4(POD, PEER)
        .icmp_echo(true, 1, 1)
        .total_len(20 + 4)
        .build();
    icmp_cut.truncate(14 + 20 + 4);
    on_every_hook(
        "icmp header 4 of 8 bytes",
        icmp_cut,
        Reason::DropTruncatedL4,
    );
}

#[test]
fn vlan_tags() {
    on_every_hook(
        "802.1q tcp",
        eth().vlan(100).ipv4(POD, PEER).tcp(1, 80).build(),
        Reason::PassTcp,
    );
    on_every_hook(
        "qinq udp",
        eth().qinq(10).vlan(20).ipv4(POD, PEER).udp(1, 53).build(),
        Reason::PassUdp,
    );
    on_every_hook(
        "802.1q arp",
        eth()
            .vlan(100)
            .ethertype(ethertype::ARP)
            .payload(&[0; 28])
            .build(),
        Reason::PassNotIpv4,
    );
    let three = eth()
        .qinq(1)
        .vlan(2)
        .vlan(3)
        .ipv4(POD, PEER)
        .udp(1, 2)
        .build();
    on_every_hook("three tags", three, Reason::PassTooManyVlans);
    let mut cut_tag = eth().vlan(100).ipv4(POD, PEER).udp(1, 2).build();
    cut_tag.truncate(16);
    on_every_hook("vlan tag cut", cut_tag, Reason::DropTruncatedL2);
}

// ---- Service load balancing: DNAT, reverse NAT, masquerade, reject, ICMP errors ----------------

#[path = "support/cluster.rs"]
#[allow(dead_code)]
mod cluster;

use std::net::SocketAddrV4;

use dataplane::model::{Backend, FrontendKind, Protocol, TrafficPolicy};
use dataplane_lab::packet::{icmp_quote, parse, IcmpKind};
use support::fixture::MASQ_ADDR;

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 19);
const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 15);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const NODE_IP: Ipv4Addr = MASQ_ADDR;
const EXTERNAL: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);

fn one_backend(ip: Ipv4Addr, port: u16) -> Vec<Backend> {
    vec![Backend {
        ip,
        port,
        node_name: Some("node2".into()),
        ready: true,
        serving: true,
        terminating: false,
        hints: Default::default(),
    }]
}

/// The fixture services: TCP and UDP on VIP:80/53 -> BACKEND:8080/5353; a NodePort 30080 on the
/// node address; an empty service on VIP:81; a hairpin service whose backend is CLIENT itself.
fn services() -> Vec<dataplane::model::ServicePort> {
    let mut web = cluster::cluster_ip(
        "web",
        SocketAddrV4::new(VIP, 80),
        Protocol::Tcp,
        one_backend(BACKEND, 8080),
    );
    web.external_policy = TrafficPolicy::Cluster;
    let web = cluster::with_node_port(web, &[NODE_IP], 30080);
    vec![
        web,
        cluster::cluster_ip(
            "dns",
            SocketAddrV4::new(VIP, 53),
            Protocol::Udp,
            one_backend(BACKEND, 5353),
        ),
        cluster::cluster_ip("empty", SocketAddrV4::new(VIP, 81), Protocol::Tcp, vec![]),
        cluster::cluster_ip(
            "self",
            SocketAddrV4::new(VIP, 82),
            Protocol::Tcp,
            one_backend(CLIENT, 8080),
        ),
        local_only_without_local_endpoints(),
    ]
}

/// NodePort 30081 with externalTrafficPolicy Local whose only endpoint is on another node.
fn local_only_without_local_endpoints() -> dataplane::model::ServicePort {
    let mut svc = cluster::cluster_ip(
        "local",
        SocketAddrV4::new(VIP, 83),
        Protocol::Tcp,
        one_backend(BACKEND, 8080),
    );
    svc.external_policy = TrafficPolicy::Local;
    cluster::with_node_port(svc, &[NODE_IP], 30081)
}

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

fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: TcpFlags) -> Frame {
    eth()
        .ipv4(src, dst)
        .tcp(sport, dport)
        .flags(flags)
        .seq(7)
        .ack(0)
        .payload(b"GET /")
}

fn service_fixture(
    name: &'static str,
    hook: Hook,
    input: Vec<u8>,
    reason: Reason,
    output: Vec<u8>,
) -> Fixture {
    Fixture {
        name,
        hook,
        input,
        verdict: Verdict::Pass,
        reason,
        output: Output::Exactly(output),
    }
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
    // observes. With --xdp-mode off, tc ingress runs the same pipeline: tests/overlay.rs.)
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

#[test]
fn service_without_endpoints_answers_icmp_port_unreachable() {
    let mut h = harness();
    h.sync_services(&services());
    for (hook, verdict) in [
        (Hook::XdpUplink, Verdict::Tx),
        (Hook::TcPodIngress, Verdict::Redirect),
    ] {
        let syn = tcp(CLIENT, 43001, VIP, 81, TcpFlags::SYN).build();
        let ip_packet = &syn[14..];
        let want = Frame::eth(MAC_B, MAC_A)
            .ipv4(VIP, CLIENT)
            .dont_fragment(false)
            .icmp_error(3, 3, 0, icmp_quote(ip_packet))
            .build();
        h.check(&Fixture {
            name: "reject",
            hook,
            input: syn,
            verdict,
            reason: Reason::RejectNoEndpoints,
            output: Output::Exactly(want),
        });
    }
}

/// Sets `REJECT_TOKENS_V1` on every CPU: `tokens` left, credited up to `last_ns`.
fn set_reject_bucket(h: &mut support::fixture::Harness, tokens: u64, last_ns: u64) {
    use aya::maps::{PerCpuArray, PerCpuValues};
    use dataplane_common::lb::RejectBucket;
    let map = h
        .datapath
        .ebpf
        .map_mut(dataplane_common::map_names::REJECT_TOKENS)
        .unwrap();
    let mut array: PerCpuArray<_, RejectBucket> = PerCpuArray::try_from(map).unwrap();
    let cpus = aya::util::nr_cpus().unwrap();
    let value = RejectBucket { tokens, last_ns };
    array
        .set(0, PerCpuValues::try_from(vec![value; cpus]).unwrap(), 0)
        .unwrap();
}

/// CLOCK_MONOTONIC, what bpf_ktime_get_ns reads.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The no-endpoint REJECT goes back to a source that may be forged: beyond the per-CPU token
/// bucket (1000/s, burst 50, like the kernel's ICMP limit) it is dropped with its own reason.
#[test]
fn rejects_beyond_the_token_bucket_are_dropped() {
    let mut h = harness();
    h.sync_services(&services());
    // 3 tokens on every CPU, none credited for the next minute.
    set_reject_bucket(&mut h, 3, monotonic_ns() + 60_000_000_000);
    // One CPU: the bucket is per CPU.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
    let syn = tcp(CLIENT, 43002, VIP, 81, TcpFlags::SYN).build();
    let mut seen = Vec::new();
    for _ in 0..5 {
        let o = h.run(Hook::XdpUplink, &syn);
        assert_eq!(
            o.stats_delta.len(),
            1,
            "one counter per packet: {:?}",
            o.stats_delta
        );
        seen.push((o.verdict, o.stats_delta[0].1));
    }
    // A full bucket again for the other fixtures (all zero: refilled on the next packet).
    set_reject_bucket(&mut h, 0, 0);
    let (tx, drop) = (
        (Verdict::Tx, Reason::RejectNoEndpoints),
        (Verdict::Drop, Reason::DropRejectRateLimited),
    );
    assert_eq!(seen, [tx, tx, tx, drop, drop]);
    // Refilled: answered again.
    let o = h.run(Hook::XdpUplink, &syn);
    assert_eq!(o.verdict, Verdict::Tx);
}

#[test]
fn icmp_errors_about_natted_connections_are_translated_back() {
    let mut h = harness();
    h.sync_services(&services());
    // A UDP flow client -> VIP:53 balanced to BACKEND:5353 ...
    let q = eth().ipv4(CLIENT, VIP).udp(44001, 53).payload(b"q").build();
    assert_eq!(h.run(Hook::XdpUplink, &q).verdict, Verdict::Pass);
    // ... and the backend's port unreachable about it, quoting the translated datagram.
    let sent = eth()
        .ipv4(CLIENT, BACKEND)
        .udp(44001, 5353)
        .payload(b"q")
        .build();
    let err = eth()
        .ipv4(BACKEND, CLIENT)
        .icmp_error(3, 3, 0, icmp_quote(&sent[14..]))
        .build();
    // Before routing the error is left alone (the connection's reply entry is an egress one) ...
    for hook in [Hook::XdpUplink, Hook::TcPodIngress] {
        let o = h.run(hook, &err);
        assert_eq!(
            o.stats_delta,
            vec![(hook, Reason::PassIcmp, 1, err.len() as u64)],
            "{}",
            hook.name()
        );
        assert_eq!(o.output, err);
    }
    // ... and translated on its way out to the client, whichever device that is.
    for hook in [Hook::TcPodEgress, Hook::TcUplinkEgress] {
        let o = h.run(hook, &err);
        assert_eq!(o.verdict, Verdict::Pass);
        assert_eq!(
            o.stats_delta,
            vec![(hook, Reason::IcmpErrorTranslated, 1, err.len() as u64)],
            "{}",
            hook.name()
        );
        let out = parse(&o.output).unwrap();
        let ip = out.ipv4().unwrap();
        assert_eq!(
            (ip.src, ip.dst),
            (VIP, CLIENT),
            "the error comes from the service"
        );
        let icmp = out.icmp().unwrap();
        assert!(
            ip.checksum_ok && icmp.checksum_ok,
            "outer and ICMP checksums"
        );
        let IcmpKind::Error(Some(quoted)) = &icmp.kind else {
            panic!("no quote: {icmp:?}")
        };
        assert_eq!((quoted.src, quoted.dst), (CLIENT, VIP));
        assert_eq!((quoted.sport, quoted.dport), (Some(44001), Some(53)));
        assert!(quoted.checksum_ok, "quoted IP header checksum");
    }
}

// ---- Overlay: VXLAN / IPIP encapsulation at tc egress of the uplink, decapsulation in XDP -----

mod overlay {
    use std::net::Ipv4Addr;

    use aya::maps::{PerCpuArray, PerCpuValues};
    use dataplane::{
        model::NodeInfo,
        overlay::{write_config, OverlayTable},
    };
    use dataplane_common::{
        map_names,
        overlay::{OverlayConfig, MODE_IPIP, MODE_NONE, MODE_VXLAN, OVL_F_UDP_CSUM},
        Hook, Reason,
    };
    use dataplane_lab::{
        lab::{Lab, LabSpec},
        netns,
        packet::{self, parse, Frame},
    };

    use super::support::fixture::{harness, Harness, Outcome, Verdict};

    const NODE1: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);
    const NODE2: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 12);
    /// A node address on the underlay that nobody answers ARP for.
    const NODE3: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 13);
    const POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
    const PEER: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 2);
    const FAR: Ipv4Addr = Ipv4Addr::new(10, 244, 3, 2);
    const NODE1_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];
    const NODE2_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x12];
    const VTEP2: [u8; 6] = [0x02, 0xfa, 0, 0, 0, 0x22];
    const VTEP3: [u8; 6] = [0x02, 0xfa, 0, 0, 0, 0x33];
    /// The MAC a frame has before encapsulation: the overlay route's placeholder next hop.
    const NEXTHOP: [u8; 6] = dataplane::overlay::NEXTHOP_MAC;
    const IPID: u32 = 0x1234;

    fn nodes() -> Vec<NodeInfo> {
        let n = |name: &str, address, cidr, vtep| NodeInfo {
            name: name.into(),
            address,
            pod_cidrs: vec![(cidr, 24)],
            vtep_mac: Some(vtep),
            ipip_tunnel_addr: None,
            created: None,
        };
        vec![
            n("node1", NODE1, Ipv4Addr::new(10, 244, 1, 0), NODE1_MAC),
            n("node2", NODE2, Ipv4Addr::new(10, 244, 2, 0), VTEP2),
            n("node3", NODE3, Ipv4Addr::new(10, 244, 3, 0), VTEP3),
        ]
    }

    /// Sets the overlay up in the harness's maps (node1's view), runs `f`, and puts everything
    /// back to "no overlay" even if `f` panics, so other fixtures see the datapath they expect.
    fn with_overlay<T>(h: &mut Harness, mode: u32, f: impl FnOnce(&mut Harness) -> T) -> T {
        struct Reset<'a>(&'a mut Harness);
        impl Drop for Reset<'_> {
            fn drop(&mut self) {
                configure(self.0, MODE_NONE);
                let mut t = OverlayTable::from_ebpf(&self.0.datapath.ebpf).unwrap();
                t.sync_maps(&[], "node1").unwrap();
            }
        }
        configure(h, mode);
        // The maps only: no kernel routes from a fixture.
        OverlayTable::from_ebpf(&h.datapath.ebpf)
            .unwrap()
            .sync_maps(&nodes(), "node1")
            .unwrap();
        let reset = Reset(h);
        f(reset.0)
    }

    fn configure(h: &mut Harness, mode: u32) {
        let mut cfg = OverlayConfig::none();
        cfg.mode = mode;
        cfg.tunnel_addr = u32::from(NODE1).to_be();
        cfg.vtep_mac = NODE1_MAC;
        cfg.flags = OVL_F_UDP_CSUM;
        write_config(&h.datapath.ebpf, &cfg).unwrap();
        // The next outer IP ID, on every CPU.
        let map = h.datapath.ebpf.map_mut(map_names::OVERLAY_IPID).unwrap();
        let mut ids: PerCpuArray<_, u32> = PerCpuArray::try_from(map).unwrap();
        let cpus = aya::util::nr_cpus().unwrap();
        ids.set(0, PerCpuValues::try_from(vec![IPID; cpus]).unwrap(), 0)
            .unwrap();
    }

    /// A lab node whose uplink has node1's MAC and address and knows node2's MAC: tc fixtures
    /// run on a thread in its namespace, on its eth0 (FIB lookups need a real device).
    fn underlay() -> Lab {
        let lab = Lab::build(&LabSpec {
            nodes: 1,
            pods_per_node: 0,
            external_client: false,
            ..Default::default()
        })
        .unwrap();
        let ns = lab.node(0).ns.clone();
        let mac = |m: [u8; 6]| {
            m.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        };
        netns::ip(&ns, &["link", "set", "eth0", "address", &mac(NODE1_MAC)]).unwrap();
        netns::ip(
            &ns,
            &[
                "neigh",
                "replace",
                &NODE2.to_string(),
                "lladdr",
                &mac(NODE2_MAC),
                "dev",
                "eth0",
                "nud",
                "permanent",
            ],
        )
        .unwrap();
        lab
    }

    /// `struct __sk_buff` up to `ifindex` (offset 40), the only field set.
    fn skb_on(ns: &str) -> Vec<u8> {
        let ifindex = netns::in_netns(ns, || dataplane::host::netdev::index("eth0"))
            .unwrap()
            .unwrap();
        let mut ctx = vec![0u8; 44];
        ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
        ctx
    }

    /// Configures `mode` (node1's view of the three nodes), runs the uplink's tc egress program
    /// on `input` in `ns` (on its eth0), resets the overlay: all under the harness lock, taken on
    /// the namespace thread.
    fn egress(ns: &str, mode: u32, input: Vec<u8>) -> Outcome {
        let ctx = skb_on(ns);
        netns::in_netns(ns, move || {
            let mut h = harness();
            with_overlay(&mut h, mode, |h| {
                h.run_ctx(Hook::TcUplinkEgress, &input, Some(&ctx))
            })
        })
        .unwrap()
    }

    /// XDP on the uplink with the overlay in `mode` (no namespace needed: no FIB lookups).
    fn xdp(mode: u32, input: &[u8]) -> Outcome {
        let mut h = harness();
        with_overlay(&mut h, mode, |h| h.run(Hook::XdpUplink, input))
    }

    /// A pod's ICMP echo request as node1 forwards it: TTL 63, to the overlay next hop.
    fn forwarded_ping(dst: Ipv4Addr, tos: u8, df: bool, payload: usize) -> Frame {
        Frame::eth(NODE1_MAC, NEXTHOP)
            .ipv4(POD, dst)
            .ttl(63)
            .tos(tos)
            .id(0x4242)
            .dont_fragment(df)
            .icmp_echo(true, 0x77, 1)
            .payload(&vec![0x5a; payload])
    }

    fn sport_of(frame: &[u8]) -> u16 {
        u16::from_be_bytes([frame[34], frame[35]])
    }

    fn counted(hook: Hook, pairs: &[(Reason, usize)]) -> Vec<(Hook, Reason, u64, u64)> {
        pairs
            .iter()
            .map(|&(r, len)| (hook, r, 1, len as u64))
            .collect()
    }

    #[test]
    fn vxlan_encapsulation_is_byte_exact() {
        let lab = underlay();
        let ns = lab.node(0).ns.clone();
        let input = forwarded_ping(PEER, 0xb9, true, 56).build();
        let out = egress(&ns, MODE_VXLAN, input.clone());
        assert_eq!(
            out.verdict,
            Verdict::Pass,
            "the neighbour is known: straight out of eth0"
        );
        assert_eq!(
            out.stats_delta,
            counted(
                Hook::TcUplinkEgress,
                &[
                    (Reason::PassIcmp, input.len()),
                    (Reason::OverlayEncap, input.len())
                ]
            )
        );
        let sport = sport_of(&out.output);
        assert!((32768..60999).contains(&sport), "{sport}");
        let mut inner = input.clone();
        inner[0..6].copy_from_slice(&VTEP2);
        inner[6..12].copy_from_slice(&NODE1_MAC);
        // flannel.1's outer header: TOS = inner ECN (ECT(1) here), DF clear, TTL 64, fresh ID;
        // UDP to 8472 with a checksum (the builder computes it over every byte).
        let want = Frame::eth(NODE1_MAC, NODE2_MAC)
            .ipv4(NODE1, NODE2)
            .tos(0x01)
            .ttl(64)
            .id(IPID as u16)
            .dont_fragment(false)
            .udp(sport, 8472)
            .payload(&packet::vxlan(1, &inner))
            .build();
        assert_frames_eq(&out.output, &want);
        let udp = parse(&out.output).unwrap().udp().unwrap().clone();
        assert!(udp.checksum != 0 && udp.checksum_ok, "{udp:?}");
        // The same flow always gets the same source port (the flow hash); others spread.
        assert_eq!(
            sport_of(&egress(&ns, MODE_VXLAN, input.clone()).output),
            sport
        );
        let ports: std::collections::BTreeSet<u16> = (0..8u16)
            .map(|i| {
                let f = Frame::eth(NODE1_MAC, NEXTHOP)
                    .ipv4(POD, PEER)
                    .udp(40000 + i, 53)
                    .payload(b"q")
                    .build();
                sport_of(&egress(&ns, MODE_VXLAN, f).output)
            })
            .collect();
        assert!(
            ports.len() >= 6,
            "flows spread over source ports: {ports:?}"
        );
        // A UDP datagram without checksum: the outer checksum cannot lean on it and is 0.
        let f = Frame::eth(NODE1_MAC, NEXTHOP)
            .ipv4(POD, PEER)
            .udp(40000, 53)
            .l4_checksum(0)
            .payload(b"q")
            .build();
        let out = egress(&ns, MODE_VXLAN, f);
        assert_eq!(parse(&out.output).unwrap().udp().unwrap().checksum, 0);
        // TCP: the LCO checksum is right.
        let f = Frame::eth(NODE1_MAC, NEXTHOP)
            .ipv4(POD, PEER)
            .tcp(40000, 80)
            .payload(&[7; 333])
            .build();
        let out = egress(&ns, MODE_VXLAN, f);
        let p = parse(&out.output).unwrap();
        assert!(
            p.udp().unwrap().checksum_ok && p.decap_vxlan().unwrap().1.tcp().unwrap().checksum_ok
        );
    }

    #[test]
    fn ipip_encapsulation_is_byte_exact() {
        let lab = underlay();
        let ns = lab.node(0).ns.clone();
        for (tos, df) in [(0x00, true), (0x03, false)] {
            let input = forwarded_ping(PEER, tos, df, 56).build();
            let out = egress(&ns, MODE_IPIP, input.clone());
            assert_eq!(out.verdict, Verdict::Pass);
            assert_eq!(
                out.stats_delta,
                counted(
                    Hook::TcUplinkEgress,
                    &[
                        (Reason::PassIcmp, input.len()),
                        (Reason::OverlayEncap, input.len())
                    ]
                )
            );
            // tunl0: TTL and DF of the inner packet, TOS = inner ECN (CE -> ECT(0)), fresh ID.
            let want = Frame::eth(NODE1_MAC, NODE2_MAC)
                .ipv4(NODE1, NODE2)
                .tos(if tos == 3 { 2 } else { tos & 3 })
                .ttl(63)
                .id(IPID as u16)
                .dont_fragment(df)
                .ip_proto(packet::proto::IPIP, &input[14..])
                .build();
            assert_frames_eq(&out.output, &want);
        }
    }

    #[test]
    fn encapsulation_leaves_local_and_foreign_destinations_alone() {
        let lab = underlay();
        let ns = lab.node(0).ns.clone();
        for (mode, dst) in [
            (MODE_VXLAN, Ipv4Addr::new(10, 244, 1, 5)),
            (MODE_VXLAN, Ipv4Addr::new(192, 0, 2, 1)),
            (MODE_NONE, PEER),
        ] {
            let input = forwarded_ping(dst, 0, true, 56).build();
            let out = egress(&ns, mode, input.clone());
            assert_eq!(
                (out.verdict, &out.output),
                (Verdict::Pass, &input),
                "{dst} in mode {mode}"
            );
            assert_eq!(
                out.stats_delta,
                counted(Hook::TcUplinkEgress, &[(Reason::PassIcmp, input.len())])
            );
        }
    }

    #[test]
    fn encapsulation_refuses_what_the_underlay_cannot_carry() {
        let lab = underlay();
        let ns = lab.node(0).ns.clone();
        // 1480 bytes of IP + 50 > the uplink's 1500: the kernel route's MTU (1450) normally
        // stops it earlier; here it is dropped and counted, not sent oversized.
        let input = forwarded_ping(PEER, 0, true, 1480 - 28).build();
        let out = egress(&ns, MODE_VXLAN, input.clone());
        assert_eq!(out.verdict, Verdict::Drop);
        assert_eq!(
            out.stats_delta,
            counted(
                Hook::TcUplinkEgress,
                &[
                    (Reason::PassIcmp, input.len()),
                    (Reason::DropOverlayTooBig, input.len())
                ]
            )
        );
        // 1450 bytes fit exactly.
        let input = forwarded_ping(PEER, 0, true, 1450 - 28).build();
        assert_eq!(egress(&ns, MODE_VXLAN, input).verdict, Verdict::Pass);
        // No neighbour for node3 yet: handed to the kernel to resolve (redirect), headers in place.
        let input = forwarded_ping(FAR, 0, true, 56).build();
        let out = egress(&ns, MODE_IPIP, input.clone());
        assert_eq!(out.verdict, Verdict::Redirect);
        assert_eq!(
            out.stats_delta,
            counted(
                Hook::TcUplinkEgress,
                &[
                    (Reason::PassIcmp, input.len()),
                    (Reason::OverlayEncap, input.len())
                ]
            )
        );
        let p = parse(&out.output).unwrap();
        assert_eq!(
            (
                p.ipv4().unwrap().src,
                p.ipv4().unwrap().dst,
                p.ipv4().unwrap().protocol
            ),
            (NODE1, NODE3, 4)
        );
    }

    /// A tunnel packet from `src` to `dst` around `inner` (an Ethernet frame for VXLAN, the IP
    /// packet is taken from it for IPIP).
    fn tunnel(mode: u32, src: Ipv4Addr, dst: Ipv4Addr, vni: u32, inner: &[u8]) -> Vec<u8> {
        let outer = Frame::eth(NODE2_MAC, NODE1_MAC).ipv4(src, dst);
        if mode == MODE_VXLAN {
            outer
                .udp(45000, 8472)
                .payload(&packet::vxlan(vni, inner))
                .build()
        } else {
            outer.ip_proto(packet::proto::IPIP, &inner[14..]).build()
        }
    }

    fn reply() -> Vec<u8> {
        Frame::eth(VTEP2, NODE1_MAC)
            .ipv4(PEER, POD)
            .ttl(63)
            .icmp_echo(false, 0x77, 1)
            .payload(&[0x5a; 56])
            .build()
    }

    #[test]
    fn decapsulation_in_xdp_yields_the_inner_frame_to_the_uplinks_mac() {
        for mode in [MODE_VXLAN, MODE_IPIP] {
            let inner = reply();
            let input = tunnel(mode, NODE2, NODE1, 1, &inner);
            let out = xdp(mode, &input);
            assert_eq!(out.verdict, Verdict::Pass, "mode {mode}");
            // The inner packet, in a frame from the underlay neighbour to this uplink's MAC.
            let mut want = inner.clone();
            want[0..6].copy_from_slice(&NODE1_MAC);
            want[6..12].copy_from_slice(&NODE2_MAC);
            assert_frames_eq(&out.output, &want);
            assert_eq!(
                out.stats_delta,
                vec![
                    (Hook::XdpUplink, Reason::PassIcmp, 1, want.len() as u64),
                    (Hook::XdpUplink, Reason::OverlayDecap, 1, input.len() as u64)
                ],
                "mode {mode}"
            );
        }
    }

    /// tc ingress of the uplink: what opens tunnel packets when no XDP is attached (a veth
    /// uplink) and whatever XDP left closed. Same frame out as XDP's.
    #[test]
    fn decapsulation_at_tc_ingress_yields_the_same_inner_frame() {
        for mode in [MODE_VXLAN, MODE_IPIP] {
            let inner = reply();
            let input = tunnel(mode, NODE2, NODE1, 1, &inner);
            let mut h = harness();
            let out = with_overlay(&mut h, mode, |h| h.run(Hook::TcUplinkIngress, &input));
            assert_eq!(out.verdict, Verdict::Pass, "mode {mode}");
            let mut want = inner.clone();
            want[0..6].copy_from_slice(&NODE1_MAC);
            want[6..12].copy_from_slice(&NODE2_MAC);
            assert_frames_eq(&out.output, &want);
            assert_eq!(
                out.stats_delta,
                vec![
                    (
                        Hook::TcUplinkIngress,
                        Reason::PassIcmp,
                        1,
                        want.len() as u64
                    ),
                    (
                        Hook::TcUplinkIngress,
                        Reason::OverlayDecap,
                        1,
                        input.len() as u64
                    )
                ],
                "mode {mode}"
            );
            // A tunnel packet whose outer length does not match its inner packet's (one header
            // in front of several packets: a UDP GRO train) is refused, not half-opened.
            let mut train = input.clone();
            let off = if mode == MODE_VXLAN {
                34 + 30 + 2
            } else {
                34 + 2
            };
            let tot = u16::from_be_bytes([train[off], train[off + 1]]) - 8;
            train[off..off + 2].copy_from_slice(&tot.to_be_bytes());
            let out = with_overlay(&mut h, mode, |h| h.run(Hook::TcUplinkIngress, &train));
            assert_eq!(out.verdict, Verdict::Drop, "mode {mode}");
        }
    }

    /// A tunnel packet from a known node's address is opened only if its inner source is that
    /// node's: in its pod CIDRs or its own address. Anyone on the underlay can forge the outer
    /// source; the inner one must match it. XDP and tc ingress (a veth uplink) alike.
    #[test]
    fn decapsulation_refuses_spoofed_inner_sources() {
        let from = |src: Ipv4Addr| {
            Frame::eth(VTEP2, NODE1_MAC)
                .ipv4(src, POD)
                .udp(5353, 53)
                .payload(b"spoof")
                .build()
        };
        let spoofed = [
            ("this node's own pod", POD),
            ("another node's pod", FAR),
            ("an outside address", Ipv4Addr::new(203, 0, 113, 9)),
            ("this node's address", NODE1),
            ("another node's address", NODE3),
        ];
        for mode in [MODE_VXLAN, MODE_IPIP] {
            for hook in [Hook::XdpUplink, Hook::TcUplinkIngress] {
                let mut h = harness();
                for (name, src) in spoofed {
                    let input = tunnel(mode, NODE2, NODE1, 1, &from(src));
                    let out = with_overlay(&mut h, mode, |h| h.run(hook, &input));
                    assert_eq!(out.verdict, Verdict::Drop, "{name}, mode {mode}, {hook:?}");
                    assert_eq!(
                        out.stats_delta,
                        vec![(
                            hook,
                            Reason::DropOverlaySpoofedSource,
                            1,
                            input.len() as u64
                        )],
                        "{name}, mode {mode}, {hook:?}"
                    );
                }
                // From node2's pods or node2 itself: opened.
                for (name, src) in [("node2's pod", PEER), ("node2's address", NODE2)] {
                    let input = tunnel(mode, NODE2, NODE1, 1, &from(src));
                    let out = with_overlay(&mut h, mode, |h| h.run(hook, &input));
                    assert_eq!(out.verdict, Verdict::Pass, "{name}, mode {mode}, {hook:?}");
                    assert!(
                        out.stats_delta.iter().any(|d| d.1 == Reason::OverlayDecap),
                        "{name}: {:?}",
                        out.stats_delta
                    );
                }
                // A wrong VNI has its own reason at tc ingress too.
                if mode == MODE_VXLAN {
                    let input = tunnel(mode, NODE2, NODE1, 7, &from(PEER));
                    let out = with_overlay(&mut h, mode, |h| h.run(hook, &input));
                    assert_eq!(
                        out.stats_delta,
                        vec![(hook, Reason::DropOverlayWrongVni, 1, input.len() as u64)],
                    );
                }
            }
        }
    }

    #[test]
    fn decapsulation_refuses_what_is_not_for_this_node() {
        let inner = reply();
        let arp = Frame::eth(VTEP2, [0xff; 6])
            .ethertype(packet::ethertype::ARP)
            .payload(&[0; 28])
            .build();
        let relay = Frame::eth(VTEP2, NODE1_MAC)
            .ipv4(PEER, Ipv4Addr::new(192, 0, 2, 1))
            .icmp_echo(true, 1, 1)
            .build();
        let stranger = Ipv4Addr::new(198, 18, 0, 100);
        let mut no_i_flag = tunnel(MODE_VXLAN, NODE2, NODE1, 1, &inner);
        no_i_flag[42] = 0;
        let frag = Frame::eth(NODE2_MAC, NODE1_MAC)
            .ipv4(NODE2, NODE1)
            .frag(true, 0)
            .dont_fragment(false)
            .udp(45000, 8472)
            .payload(&packet::vxlan(1, &inner))
            .build();
        let cases: Vec<(&str, u32, Vec<u8>, Reason)> = vec![
            (
                "vxlan from an unknown address",
                MODE_VXLAN,
                tunnel(MODE_VXLAN, stranger, NODE1, 1, &inner),
                Reason::DropOverlayUnknownPeer,
            ),
            (
                "ipip from an unknown address",
                MODE_IPIP,
                tunnel(MODE_IPIP, stranger, NODE1, 1, &inner),
                Reason::DropOverlayUnknownPeer,
            ),
            (
                "vxlan to another address",
                MODE_VXLAN,
                tunnel(MODE_VXLAN, NODE2, Ipv4Addr::new(198, 18, 0, 99), 1, &inner),
                Reason::DropOverlayNotLocal,
            ),
            (
                "ipip to another address",
                MODE_IPIP,
                tunnel(MODE_IPIP, NODE2, NODE3, 1, &inner),
                Reason::DropOverlayNotLocal,
            ),
            (
                "vxlan relay",
                MODE_VXLAN,
                tunnel(MODE_VXLAN, NODE2, NODE1, 1, &relay),
                Reason::DropOverlayNotLocal,
            ),
            (
                "ipip relay",
                MODE_IPIP,
                tunnel(MODE_IPIP, NODE2, NODE1, 1, &relay),
                Reason::DropOverlayNotLocal,
            ),
            (
                "inner packet for another node",
                MODE_VXLAN,
                tunnel(
                    MODE_VXLAN,
                    NODE2,
                    NODE1,
                    1,
                    &Frame::eth(VTEP2, NODE1_MAC)
                        .ipv4(PEER, FAR)
                        .icmp_echo(true, 1, 1)
                        .build(),
                ),
                Reason::DropOverlayNotLocal,
            ),
            (
                "wrong VNI",
                MODE_VXLAN,
                tunnel(MODE_VXLAN, NODE2, NODE1, 2, &inner),
                Reason::DropOverlayWrongVni,
            ),
            (
                "VXLAN flags without I",
                MODE_VXLAN,
                no_i_flag,
                Reason::DropOverlayMalformed,
            ),
            (
                "inner ARP",
                MODE_VXLAN,
                tunnel(MODE_VXLAN, NODE2, NODE1, 1, &arp),
                Reason::DropOverlayMalformed,
            ),
            (
                "outer fragment",
                MODE_VXLAN,
                frag,
                Reason::DropOverlayMalformed,
            ),
            (
                "truncated inner frame",
                MODE_VXLAN,
                tunnel(MODE_VXLAN, NODE2, NODE1, 1, &inner[..30]),
                Reason::DropOverlayMalformed,
            ),
        ];
        for (name, mode, input, reason) in cases {
            let out = xdp(mode, &input);
            assert_eq!(out.verdict, Verdict::Drop, "{name}");
            assert_eq!(
                out.stats_delta,
                vec![(Hook::XdpUplink, reason, 1, input.len() as u64)],
                "{name}"
            );
        }
        // Not tunnel traffic of the configured mode: left to the service pipeline and the kernel.
        for (name, mode, input, reason) in [
            (
                "vxlan while in ipip mode",
                MODE_IPIP,
                tunnel(MODE_VXLAN, NODE2, NODE1, 1, &inner),
                Reason::PassUdp,
            ),
            (
                "ipip while in vxlan mode",
                MODE_VXLAN,
                tunnel(MODE_IPIP, NODE2, NODE1, 1, &inner),
                Reason::PassOtherL4,
            ),
            (
                "vxlan without an overlay",
                MODE_NONE,
                tunnel(MODE_VXLAN, stranger, NODE1, 1, &inner),
                Reason::PassUdp,
            ),
            (
                "another UDP port",
                MODE_VXLAN,
                Frame::eth(NODE2_MAC, NODE1_MAC)
                    .ipv4(stranger, NODE1)
                    .udp(45000, 4789)
                    .payload(&packet::vxlan(1, &inner))
                    .build(),
                Reason::PassUdp,
            ),
        ] {
            let out = xdp(mode, &input);
            assert_eq!(
                (out.verdict, &out.output),
                (Verdict::Pass, &input),
                "{name}"
            );
            assert_eq!(
                out.stats_delta,
                vec![(Hook::XdpUplink, reason, 1, input.len() as u64)],
                "{name}"
            );
        }
    }

    fn assert_frames_eq(got: &[u8], want: &[u8]) {
        assert!(
            got == want,
            "output frame differs\n got: {got:02x?}\nwant: {want:02x?}\n got parsed: {:?}\nwant parsed: {:?}",
            parse(got),
            parse(want)
        );
    }
}
