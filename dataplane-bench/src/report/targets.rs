//! The targets table: each target against what the run measured.

use std::fmt::Write;

use crate::scenario::Traffic;

use super::agg::*;
use super::budgets::budget_targets;
use super::markdown::Verdict;
use super::node1::{node1_targets, xdp_vs_tc};
use super::tunnel::tunnel_targets;
use super::Results;

pub(super) fn targets(r: &Results, n_min: usize, n_max: usize) -> Vec<Verdict> {
    let mut v = Vec::new();
    let at = |row: &str, n: usize, t: Traffic| packet_agg(r, row, n, t).map(|a| a.median);
    // 1. flat cost.
    {
        let mut parts = Vec::new();
        let mut met = true;
        let mut any = false;
        for t in Traffic::ALL {
            let row = reference(t);
            if let (Some(a), Some(b)) = (at(row, n_min, t), at(row, n_max, t)) {
                any = true;
                let d = (b - a) / a * 100.0;
                met &= d <= 10.0;
                parts.push(format!(
                    "{} ({row}): {} → {} ns ({d:+.1}%)",
                    short(t),
                    ns(a),
                    ns(b)
                ));
            }
        }
        v.push(Verdict {
            target: format!("cost per packet at {} services within 10% of {} service(s) (this dataplane as deployed)", ns(n_max as f64), n_min),
            result: parts.join("; "),
            met: any.then_some(met),
            qualifier: None,
        });
    }
    // 2. 20x cheaper than iptables-legacy.
    {
        let mut parts = Vec::new();
        let mut met_new = true;
        let mut met_all = true;
        let mut any = false;
        for t in Traffic::ALL {
            let row = reference(t);
            if let (Some(l), Some(e), Some(f)) = (
                at("iptables-legacy", n_max, t),
                at(row, n_max, t),
                at("no-nat", n_max, t),
            ) {
                any = true;
                let over = if e - f > 0.0 {
                    (l - f) / (e - f)
                } else {
                    f64::INFINITY
                };
                if t.is_new() {
                    met_new &= over >= 20.0;
                }
                met_all &= over >= 20.0 && l / e >= 20.0;
                parts.push(format!(
                    "{}: NAT cost {} (total per packet {})",
                    short(t),
                    ratio(over),
                    ratio(l / e)
                ));
            }
        }
        let qualifier = match (any, met_new, met_all) {
            (false, _, _) => None,
            (true, true, true) => Some("yes".to_string()),
            (true, true, false) => Some("yes for new flows' NAT cost; no for established flows and for total per-packet cost".to_string()),
            (true, false, _) => Some("no".to_string()),
        };
        v.push(Verdict {
            target: format!("at least 20× cheaper than iptables-legacy at {} services (NAT cost = cost above the no-NAT floor)", ns(n_max as f64)),
            result: parts.join("; "),
            met: any.then_some(met_new),
            qualifier,
        });
    }
    // 2b. total per packet >= 2x better than nftables for new NodePort flows.
    {
        let t = Traffic::NodePortNew;
        let (result, met) = match (at("nftables", n_max, t), at(reference(t), n_max, t)) {
            (Some(n), Some(e)) => (
                format!(
                    "{}: nftables {} ns vs {} {} ns per packet: {}",
                    short(t),
                    ns(n),
                    reference(t),
                    ns(e),
                    ratio(n / e)
                ),
                Some(n / e >= 2.0),
            ),
            _ => ("–".into(), None),
        };
        v.push(Verdict {
            target: format!(
                "total cost per packet at least 2× better than kube-proxy's nftables mode at {} services, new NodePort flows",
                ns(n_max as f64)
            ),
            result,
            met,
            qualifier: None,
        });
    }
    // 3. XDP NodePort >= 3x tc.
    {
        let (parts, met) = xdp_vs_tc(|m, t| at(m.key(), n_max, t));
        let any = !parts.is_empty();
        v.push(Verdict {
            target: "XDP NodePort path at least 3× the tc path (packets per second, end to end: node1, the underlay hop, node2 and the backend)".into(),
            result: parts.join("; "),
            met: any.then_some(met),
            qualifier: None,
        });
        node1_targets(r, n_max, &mut v);
    }
    // 4. sync 50x faster than iptables-restore.
    {
        let l = load_agg(r, "iptables-legacy", n_max, "full");
        let e = load_agg(r, "ebpf-tc", n_max, "full")
            .or_else(|| load_agg(r, "ebpf-xdp", n_max, "full"));
        let (result, met) = match (l, e) {
            (Some(l), Some(e)) => {
                let q = l.median / e.median;
                let samples = |row: &str| -> String {
                    let v: Vec<String> = r
                        .loads
                        .iter()
                        .filter(|s| s.row == row && s.services == n_max && s.kind == "full")
                        .map(|s| secs(s.secs))
                        .collect();
                    v.join(", ")
                };
                let e_row = if load_agg(r, "ebpf-tc", n_max, "full").is_some() {
                    "ebpf-tc"
                } else {
                    "ebpf-xdp"
                };
                let mut s = format!(
                    "ServiceTable::sync {} (samples {}) vs iptables-legacy-restore {} (samples {}): {} of medians, {} to {} across samples",
                    secs(e.median),
                    samples(e_row),
                    secs(l.median),
                    samples("iptables-legacy"),
                    ratio(q),
                    ratio(l.min / e.max),
                    ratio(l.max / e.min)
                );
                if let Some(n) = load_agg(r, "iptables-nft", n_max, "full") {
                    let _ = write!(
                        s,
                        "; iptables-nft-restore {} ({})",
                        secs(n.median),
                        ratio(n.median / e.median)
                    );
                }
                if let Some(n) = load_agg(r, "nftables", n_max, "full") {
                    let _ = write!(
                        s,
                        "; nft -f {} ({})",
                        secs(n.median),
                        ratio(n.median / e.median)
                    );
                }
                let nft = load_agg(r, "nftables", n_max, "full").map(|n| n.median / e.median);
                (s, Some(q >= 100.0 && nft.is_none_or(|x| x >= 2000.0)))
            }
            _ => ("–".into(), None),
        };
        v.push(Verdict { target: format!("full sync of {} services × 10 endpoints (batched map updates) at least 100× faster than iptables-restore and 2,000× than `nft -f` of the same rules", ns(n_max as f64)), result, met, qualifier: None });
    }
    // 5. One changed endpoint in the maps < 5 ms after the source saw it: the source's
    // translation of the change, then the agent's apply of the state it published.
    {
        let e = load_agg(r, "ebpf-tc", n_max, "agent_change")
            .or_else(|| load_agg(r, "ebpf-xdp", n_max, "agent_change"));
        let src = load_agg(r, "ebpf-tc", n_max, "source_change")
            .or_else(|| load_agg(r, "ebpf-xdp", n_max, "source_change"));
        let l = load_agg(r, "iptables-legacy", n_max, "one_change");
        let (result, met) = match e {
            Some(e) => {
                let mut s = format!(
                    "agent::apply of one changed endpoint {} median, {} to {} over the samples",
                    secs(e.median),
                    secs(e.min),
                    secs(e.max)
                );
                let source = src.map_or(0.0, |src| src.median);
                if let Some(src) = src {
                    let _ = write!(
                        s,
                        "; before it the source's translation of the changed EndpointSlice {} ({} to {}): {} together",
                        secs(src.median),
                        secs(src.min),
                        secs(src.max),
                        secs(src.median + e.median)
                    );
                }
                if let Some(l) = l {
                    let _ = write!(
                        s,
                        "; kube-proxy's partial iptables-restore {} ({})",
                        secs(l.median),
                        ratio(l.median / e.median)
                    );
                }
                (s, Some(source + e.median < 0.005))
            }
            None => ("–".into(), None),
        };
        v.push(Verdict {
            target: format!(
                "one changed endpoint in the maps < 5 ms after the source saw it, at {} services (the source's translation + network programming duration)",
                ns(n_max as f64)
            ),
            result,
            met,
            qualifier: None,
        });
    }
    budget_targets(r, n_max, &mut v);
    tunnel_targets(r, &mut v);
    v
}
