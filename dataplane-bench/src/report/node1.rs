//! NodePort at the balancer alone (`measure::node1_run`): the table and the targets it answers
//! beside the end-to-end ones (XDP against tc, this dataplane against nftables).

use std::fmt::Write;

use crate::measure::node1_row;
use crate::modes::Mode;
use crate::scenario::Traffic;

use super::agg::*;
use super::markdown::Verdict;
use super::Results;

const NODEPORT: [Traffic; 2] = [Traffic::NodePortNew, Traffic::NodePortEst];

fn at(r: &Results, mode: Mode, n: usize, t: Traffic) -> Option<Agg> {
    packet_agg(r, &node1_row(mode), n, t)
}

/// The section: per mode, ns and Mpps per NodePort packet at node1, and the ratio to ebpf-xdp.
pub(super) fn node1_section(m: &mut String, r: &Results, n_max: usize) {
    if at(r, Mode::EbpfXdp, n_max, Traffic::NodePortNew).is_none() {
        return;
    }
    let _ = writeln!(
        m,
        "### (d) NodePort at the balancer alone (node1), N = {}\n\n\
         The same frames and the same node1 as (d), but a sink on the switch's port toward node1 counts every frame \
         arriving there and drops it (tc ingress, with NAPI on at that port for every mode): the cost is node1's work \
         and the hop out of its uplink, without the switch, node2 and the backend that every end-to-end row includes. \
         That is how Cilium and Katran state a balancer's packets per second. A frame node1 sends with XDP_TX becomes an \
         skb at the sink, which a NIC would not need: the conversion counts against XDP. Valid samples: at least 99.5% \
         of the frames arrived at the sink translated (to a backend's port), none untranslated, and the dataplane's \
         counters agree as in (d).\n",
        ns(n_max as f64)
    );
    let _ = writeln!(
        m,
        "| mode | new flow | Mpps | ratio to ebpf-xdp | established | Mpps | ratio to ebpf-xdp |\n|---|---:|---:|---:|---:|---:|---:|"
    );
    for mode in Mode::ALL {
        let cells: Vec<String> = NODEPORT
            .iter()
            .map(|&t| {
                let reference = at(r, Mode::EbpfXdp, n_max, t);
                match (at(r, mode, n_max, t), reference) {
                    (Some(a), Some(x)) => format!(
                        "{} ns {} | {:.2} | {}",
                        ns(a.median),
                        spread(&a),
                        1e3 / a.median,
                        ratio(a.median / x.median)
                    ),
                    _ => "– | – | –".into(),
                }
            })
            .collect();
        let _ = writeln!(m, "| {} | {} |", mode.key(), cells.join(" | "));
    }
    let _ = writeln!(m);
}

/// The XDP-vs-tc comparison of NodePort packets, per traffic kind, from `median(mode, traffic)`
/// (ns per packet): one part per kind measured, and whether XDP forwards at least 3× the
/// packets per second everywhere.
pub(super) fn xdp_vs_tc(median: impl Fn(Mode, Traffic) -> Option<f64>) -> (Vec<String>, bool) {
    let mut parts = Vec::new();
    let mut met = true;
    for t in NODEPORT {
        if let (Some(x), Some(c)) = (median(Mode::EbpfXdp, t), median(Mode::EbpfTc, t)) {
            met &= c / x >= 3.0;
            parts.push(format!(
                "{}: {:.3} Mpps at XDP vs {:.3} Mpps at tc ({})",
                short(t),
                1e3 / x,
                1e3 / c,
                ratio(c / x)
            ));
        }
    }
    (parts, met)
}

/// XDP against tc, and ebpf-xdp against nftables for new flows, at node1 alone.
pub(super) fn node1_targets(r: &Results, n_max: usize, v: &mut Vec<Verdict>) {
    let med = |mode, t| at(r, mode, n_max, t).map(|a| a.median);
    let (parts, met) = xdp_vs_tc(med);
    if parts.is_empty() {
        return;
    }
    v.push(Verdict {
        target: "XDP NodePort path at least 3× the tc path (packets per second at the balancer alone: node1 and the hop out of its uplink)".into(),
        result: parts.join("; "),
        met: Some(met),
        qualifier: None,
    });
    let t = Traffic::NodePortNew;
    if let (Some(n), Some(e)) = (med(Mode::Nftables, t), med(Mode::EbpfXdp, t)) {
        v.push(Verdict {
            target: format!(
                "cost per packet at least 2× better than kube-proxy's nftables mode at {} services, new NodePort flows, at the balancer alone",
                ns(n_max as f64)
            ),
            result: format!(
                "nftables {} ns vs ebpf-xdp {} ns per packet at node1: {}",
                ns(n),
                ns(e),
                ratio(n / e)
            ),
            met: Some(n / e >= 2.0),
            qualifier: None,
        });
    }
}
