//! Per-program budgets (issue 15): the time a packet spends inside this dataplane's programs,
//! from the BPF run-time statistics of the untimed profiling passes, against a budget per
//! packet kind. Every program the packet ran counts (the translating hook and the egress hooks
//! it passes), not only the one that translates.
//!
//! Every run's number includes what the statistics themselves cost (two clock reads and the
//! call, `measure::StatsFloor`: an empty program measured in the same pass). A budget is met
//! when the programs' time above that floor fits: the floor is the same for any program,
//! an empty one included, and on this VM it is about the size of the smallest budget. Both
//! numbers are shown.

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

/// The statistics' floor per program run for `p`: its own pass's, else the median of the run's
/// passes that measured one (a pass whose packets XDP finished has none of its own).
fn stats_floor(r: &Results, p: Option<&Profile>) -> Option<f64> {
    if let Some(f) = p.and_then(|p| p.stats_floor_ns) {
        return Some(f);
    }
    let all = r
        .profiles
        .iter()
        .chain(r.tunnel_profile_hostgw.iter())
        .filter_map(|p| p.stats_floor_ns);
    agg(all.collect()).map(|a| a.median)
}

/// The result text's floor part and the time above the floor (`total` less `runs` floors).
fn above_floor(total: f64, runs: f64, floor: Option<f64>) -> (String, f64) {
    match floor {
        Some(f) => {
            let above = (total - f * runs).max(0.0);
            (
                format!(
                    "; an empty program under the same statistics: {f:.0} ns per run, so {} ns above it",
                    ns(above)
                ),
                above,
            )
        }
        None => (String::new(), total),
    }
}

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
                let runs: f64 = p.programs.iter().map(|q| q.runs_per_packet).sum();
                let (floor_text, above) = above_floor(total, runs, stats_floor(r, Some(p)));
                (
                    format!("{} ns ({}; {detail}){floor_text}", ns(total), b.row),
                    Some(above <= b.max_ns),
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
    let profile = r.tunnel_profile_hostgw.as_ref();
    let floor = stats_floor(r, profile);
    let (result, met) = match profile.map(hooks) {
        Some(h) if !h.is_empty() => {
            let parts: Vec<String> = h.iter().map(|(n, t)| format!("{n} {t:.0} ns")).collect();
            let worst = h.iter().map(|(_, t)| *t).fold(0.0, f64::max);
            let (floor_text, above) = above_floor(worst, 1.0, floor);
            (
                format!(
                    "{} per run (host-gw lab, pod → pod){floor_text} (the slower hook)",
                    parts.join(", ")
                ),
                Some(above <= POD_NO_SERVICE_NS),
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

#[cfg(test)]
mod tests {
    use super::above_floor;
    use crate::measure::StatsFloor;

    #[test]
    fn the_floor_is_taken_once_per_program_run() {
        // Two programs per packet at 60 ns of floor each: 1,000 ns is 880 above it.
        let (text, above) = above_floor(1000.0, 2.0, Some(60.0));
        assert_eq!(above, 880.0);
        assert!(
            text.contains("60 ns per run") && text.contains("880 ns above"),
            "{text}"
        );
        // Never below zero, and without a floor the total is what is judged.
        assert_eq!(above_floor(50.0, 1.0, Some(60.0)).1, 0.0);
        assert_eq!(above_floor(500.0, 1.0, None), (String::new(), 500.0));
    }

    #[test]
    fn a_floor_that_ran_for_too_few_packets_is_none() {
        assert_eq!(
            StatsFloor::ns_per_run((100, 10), (5100, 110), 100),
            Some(50.0)
        );
        // XDP finished the packets: the tc floor ran for the priming only.
        assert_eq!(StatsFloor::ns_per_run((0, 0), (500, 10), 1000), None);
        assert_eq!(StatsFloor::ns_per_run((0, 0), (0, 0), 0), None);
    }
}
