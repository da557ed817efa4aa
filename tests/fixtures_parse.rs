//! BPF_PROG_TEST_RUN fixtures of the parsing layer: real programs in the kernel, crafted frames
//! in, verdict, output frame and counters checked: non-IP, transport protocols, IP options,
//! fragments, malformed IPv4, VLAN tags. The harness is `tests/support/fixture.rs`.

mod support;

use std::net::Ipv4Addr;

use dataplane_common::{Hook, Reason};
use dataplane_lab::packet::{ethertype, proto, Frame, TcpFlags};
use support::fixture::{harness, services::eth, Fixture, Output, Verdict};

const POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 2);

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
