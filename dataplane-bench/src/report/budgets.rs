//! Per-program budgets (issue 15): the time a packet spends inside this dataplane's programs,
//! from the BPF run-time statistics of the untimed profiling passes, against a budget per
//! packet kind. Every program the packet ran counts (the translating hook and the egress hooks
//! it passes), not only the one that translates.

use crate::measure::Profile;
use crate::scenario::Traffic;

use super::agg::*;
use super::markdown::Verdict;
use super::Results;

/// One budget: which profiling pass it reads and the most it may cost per packet.
struct Budget {
    what: &'static str,
    /// Mode row of the profile (the product as deployed for that traffic).
    row: &'static str,
    traffic: Traffic,
    max_ns: f64,
}

const BUDGETS: [Budget; 4] = [
    Budget {
        what: "established ClusterIP flow (tc, pod veth)",
        row: "ebpf-tc",
        traffic: Traffic::ClusterEst,
        max_ns: 120.0,
    },
    Budget {
        what: "established NodePort flow (XDP, uplink)",
        row: "ebpf-xdp",
        traffic: Traffic::NodePortEst,
        max_ns: 120.0,
    },
    Budget {
        what: "new ClusterIP flow",
        row: "ebpf-tc",
        traffic: Traffic::ClusterNew,
        max_ns: 500.0,
    },
    Budget {
        what: "new NodePort flow with masquerade",
        row: "ebpf-xdp",
        traffic: Traffic::NodePortNew,
        max_ns: 700.0,
    },
];

/// A pod packet that matches no service, on the pod hooks.
const POD_NO_SERVICE_NS: f64 = 60.0;

/// Nanoseconds per packet inside the programs of `p`, and the per-program detail.
fn inside(p: &Profile) -> (f64, String) {
    let total = p.inside_ns();
    // Programs a pass ran for a handful of packets only (the priming of established flows)
    // weigh nothing in the sum and are left out of the detail.
    let detail: Vec<String> = p
        .programs
        .iter()
        .filter(|q| q.runs_per_packet >= 0.01)
        .map(|q| {
            format!(
                "{} {:.0} ns × {:.2}",
                q.program, q.ns_per_run, q.runs_per_packet
            )
        })
        .collect();
    (total, detail.join(" + "))
}

pub(super) fn budget_targets(r: &Results, n_max: usize, v: &mut Vec<Verdict>) {
    for b in &BUDGETS {
        let p = r
            .profiles
            .iter()
            .find(|p| p.row == b.row && p.traffic == b.traffic && p.services == n_max);
        let (result, met) = match p {
            Some(p) => {
                let (total, detail) = inside(p);
                (
                    format!("{} ns ({}; {detail})", ns(total), b.row),
                    Some(total <= b.max_ns),
                )
            }
            None => ("–".into(), None),
        };
        v.push(Verdict {
            target: format!(
                "{} at most {} ns per packet inside the programs at {} services (BPF run-time statistics)",
                b.what,
                b.max_ns,
                ns(n_max as f64)
            ),
            result,
            met,
            qualifier: None,
        });
    }
    pod_no_service(r, v);
}

/// From the overlay section's host-gw pass: pod → pod packets through the product's pod
/// hooks (tc_pod_ingress on the sender's veth, tc_pod_egress toward the receiver), no service.
fn pod_no_service(r: &Results, v: &mut Vec<Verdict>) {
    let hooks = |p: &Profile| -> Vec<(String, f64)> {
        p.programs
            .iter()
            .filter(|q| q.program.starts_with("tc_pod_"))
            .map(|q| (q.program.clone(), q.ns_per_run))
            .collect()
    };
    let (result, met) = match r.tunnel_profile_hostgw.as_ref().map(hooks) {
        Some(h) if !h.is_empty() => {
            let parts: Vec<String> = h.iter().map(|(n, t)| format!("{n} {t:.0} ns")).collect();
            (
                format!("{} per run (host-gw lab, pod → pod)", parts.join(", ")),
                Some(h.iter().all(|(_, t)| *t <= POD_NO_SERVICE_NS)),
            )
        }
        _ => ("–".into(), None),
    };
    v.push(Verdict {
        target: format!(
            "a pod packet that matches no service at most {POD_NO_SERVICE_NS} ns on each pod hook (BPF run-time statistics)"
        ),
        result,
        met,
        qualifier: None,
    });
}
