//! BPF_PROG_TEST_RUN fixtures of ICMP: the no-endpoints REJECT and its token bucket, ICMP errors
//! about NATed connections translated back.

mod support;

use dataplane_common::{Hook, Reason};
use dataplane_lab::packet::{icmp_quote, parse, Frame, IcmpKind, TcpFlags};
use support::fixture::{harness, services::*, Fixture, Output, Verdict};

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
