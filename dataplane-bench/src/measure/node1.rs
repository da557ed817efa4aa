//! NodePort packets at the balancer alone: node1's work and the hop out of its uplink, without
//! the switch, node2 and the backend that the end-to-end rows include (about 3 µs of every
//! mode's number). A sink on the switch's port toward node1 counts each frame arriving there
//! and drops it: this is what Cilium and Katran measure as a balancer's packets per second.
//!
//! The sink runs at tc ingress of that port with NAPI on there (GRO, as `ebpf-xdp` needs for its
//! XDP_TX'd frames anyway) for every mode alike: a frame node1 sent with XDP_TX becomes an skb
//! at the switch, a frame node1 forwarded as an skb stays one. That conversion counts against
//! XDP (a NIC would take the frame as it is), so the ratio is, if anything, low.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use anyhow::Result;

use super::packets::{check_hooks, inject, PacketSample, Run};
use crate::injector::{Injector, Templates};
use crate::modes::{Mode, ModeLab};
use crate::netutil;
use crate::rawbpf::*;

/// The report's row of a mode measured at node1 alone.
pub fn node1_row(mode: Mode) -> String {
    format!("{}@node1", mode.key())
}

/// The backends' port, as a little-endian load of its network-order bytes reads it.
const BACKEND_PORT_LE: i32 = 8080u16.swap_bytes() as i32;
/// Offsets in `struct __sk_buff`.
const SKB_DATA: i16 = 76;
const SKB_DATA_END: i16 = 80;
/// Ethernet + IPv4 without options + the UDP destination port.
const DPORT_OFF: i16 = 14 + 20 + 2;
const TC_ACT_SHOT: i32 = 2;
const TC_ACT_OK: i32 = 0;
/// The EtherType's offset, and IPv4's as a little-endian load of its network-order bytes.
const ETHERTYPE_OFF: i16 = 12;
const ETH_P_IP_LE: i32 = 0x0800u16.swap_bytes() as i32;

/// The counting sink: slot 0 counts IPv4 frames to a backend's port (translated), slot 1 the
/// other IPv4 frames; anything else (ARP) goes on uncounted.
struct Sink {
    counts: RawMap,
    _prog: TcxFirst,
}

impl Sink {
    fn attach(ns: &str, ifindex: u32) -> Result<Sink> {
        let counts = RawMap::create(BPF_MAP_TYPE_ARRAY, 4, 8, 2, 0, "bench_sink")?;
        let map = ld_map_fd(R1, counts.fd.as_raw_fd());
        let insns = [
            ldx_w(R6, R1, SKB_DATA),
            ldx_w(R7, R1, SKB_DATA_END),
            mov64_imm(R8, 1),
            mov64_reg(R2, R6),
            add64_imm(R2, DPORT_OFF as i32 + 2),
            jgt_reg(R2, R7, 5),
            // Not IPv4 (node1's ARP for its next hop): neither, and on to the switch.
            ldx_h(R3, R6, ETHERTYPE_OFF),
            jne_imm(R3, ETH_P_IP_LE, 14),
            ldx_h(R3, R6, DPORT_OFF),
            jne_imm(R3, BACKEND_PORT_LE, 1),
            mov64_imm(R8, 0),
            stx_w(R10, -4, R8),
            mov64_reg(R2, R10),
            add64_imm(R2, -4),
            map[0],
            map[1],
            call(HELPER_MAP_LOOKUP_ELEM),
            jeq_imm(R0, 0, 2),
            mov64_imm(R1, 1),
            atomic_add_dw(R0, 0, R1),
            mov64_imm(R0, TC_ACT_SHOT),
            exit(),
            mov64_imm(R0, TC_ACT_OK),
            exit(),
        ];
        let prog = TcxFirst::attach(ns, ifindex, &insns, "bench_sink")?;
        Ok(Sink {
            counts,
            _prog: prog,
        })
    }

    /// (translated, other) frames so far.
    fn counts(&self) -> Result<(u64, u64)> {
        let mut v = [0u8; 8];
        let mut read = |k: u32| -> Result<u64> {
            self.counts.lookup(&k.to_ne_bytes(), &mut v)?;
            Ok(u64::from_ne_bytes(v))
        };
        Ok((read(0)?, read(1)?))
    }
}

/// NodePort frames of `run` through node1 into the sink; valid when at least 99.5% arrived
/// translated (less the dataplane's refusals), none untranslated, and the dataplane's counters
/// agree as in the end-to-end rows.
pub fn node1_run(
    ml: &ModeLab,
    pass: &Arc<Injector>,
    templates: &Templates,
    run: Run,
) -> Result<PacketSample> {
    let ifindex = netutil::ifindex(ml.lab.switch_ns(), &ml.node1.name)?;
    ml.set_switch_napi(true)?;
    let measured = (|| -> Result<PacketSample> {
        let sink = Sink::attach(ml.lab.switch_ns(), ifindex)?;
        let mut inj = inject(ml, pass, templates, run)?;
        let (translated, other) = sink.counts()?;
        let exhausted = check_hooks(ml, run, &mut inj)?;
        let want = inj.sent - exhausted;
        if translated * 1000 < want * 995 {
            inj.problems.push(format!(
                "only {translated} of {want} frames left node1 translated"
            ));
        }
        if other > 0 {
            inj.problems
                .push(format!("{other} frames left node1 untranslated"));
        }
        Ok(PacketSample {
            delivered: translated,
            untranslated: other,
            snat_exhausted: exhausted,
            ..inj.sample(node1_row(ml.mode), run)
        })
    })();
    ml.set_switch_napi(false)?;
    measured
}
