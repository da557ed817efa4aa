//! Aggregation of the samples of one cell (median and range) and the number formats of the
//! report.

use crate::scenario::Traffic;

use super::Results;

/// Median and range of the valid samples of one cell.
#[derive(Clone, Copy, Debug)]
pub(super) struct Agg {
    pub(super) median: f64,
    pub(super) min: f64,
    pub(super) max: f64,
}

pub(super) fn agg(mut v: Vec<f64>) -> Option<Agg> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Agg {
        median,
        min: v[0],
        max: v[n - 1],
    })
}

pub(super) fn packet_agg(r: &Results, row: &str, n: usize, t: Traffic) -> Option<Agg> {
    agg(r
        .packets
        .iter()
        .filter(|s| s.row == row && s.services == n && s.traffic == t && s.ok())
        .map(|s| s.ns_per_packet)
        .collect())
}

pub(super) fn load_agg(r: &Results, row: &str, n: usize, kind: &str) -> Option<Agg> {
    agg(r
        .loads
        .iter()
        .filter(|s| s.row == row && s.services == n && s.kind == kind)
        .map(|s| s.secs)
        .collect())
}

pub(super) const ROWS: [&str; 6] = [
    "no-nat",
    "iptables-legacy",
    "iptables-nft",
    "nftables",
    "ebpf-tc",
    "ebpf-xdp",
];

/// This dataplane as deployed: pod traffic is translated at tc on the pod's veth, external
/// traffic at XDP on the uplink.
pub(super) fn reference(t: Traffic) -> &'static str {
    if t.is_nodeport() {
        "ebpf-xdp"
    } else {
        "ebpf-tc"
    }
}

pub(super) fn title(t: Traffic) -> &'static str {
    match t {
        Traffic::ClusterNew => "(a) pod → ClusterIP, new flow (first packet of a connection)",
        Traffic::ClusterEst => "(b) pod → ClusterIP, established flow",
        Traffic::NodePortNew => "(d) external client → NodePort → remote backend, new flow",
        Traffic::NodePortEst => "(d) external client → NodePort → remote backend, established flow",
    }
}

pub(super) fn short(t: Traffic) -> &'static str {
    match t {
        Traffic::ClusterNew => "ClusterIP, new flow",
        Traffic::ClusterEst => "ClusterIP, established",
        Traffic::NodePortNew => "NodePort, new flow",
        Traffic::NodePortEst => "NodePort, established",
    }
}

pub(super) fn ns(v: f64) -> String {
    let n = v.round() as i64;
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

pub(super) fn secs(v: f64) -> String {
    if v >= 1.0 {
        format!("{v:.2} s")
    } else if v >= 1e-3 {
        format!("{:.1} ms", v * 1e3)
    } else {
        format!("{:.0} µs", v * 1e6)
    }
}

pub(super) fn ratio(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}×")
    } else if v >= 10.0 {
        format!("{v:.1}×")
    } else {
        format!("{v:.2}×")
    }
}

pub(super) fn spread(a: &Agg) -> String {
    if a.median <= 0.0 {
        return String::new();
    }
    let half = (a.max - a.min) / 2.0 / a.median * 100.0;
    format!("±{half:.0}%")
}
