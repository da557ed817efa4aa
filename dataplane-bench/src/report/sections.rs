//! The TCP, load, per-program profile and findings sections.

use std::fmt::Write;

use crate::measure::TcpSample;
use crate::scenario::Traffic;

use super::agg::*;
use super::Results;

pub(super) fn tcp_section(m: &mut String, r: &Results) {
    let _ = writeln!(m, "## (c) TCP connections to a ClusterIP\n");
    if r.tcp.is_empty() {
        let _ = writeln!(m, "Not run (--no-tcp).\n");
        return;
    }
    let _ = writeln!(
        m,
        "From node1's pod0, sequentially: connect to the TCP ClusterIP (10.96.0.10:80, in the middle of the iptables rule \
         order), send a line, read the backend's reply, close with RST (no TIME_WAIT); one connection at a time, so \
         connections/s = 1 / latency. no-nat connects to the backends directly. `ebpf (xdp+tc, as deployed)` is the product \
         exactly as `dataplane run` attaches it. Median of the repetitions; p50/p99 of connect + request + reply latency.\n"
    );
    let rows: Vec<String> = {
        let mut v: Vec<String> = Vec::new();
        for s in &r.tcp {
            if !v.contains(&s.row) {
                v.push(s.row.clone());
            }
        }
        v
    };
    let _ = writeln!(m, "| N | mode | connections/s | p50 | p99 | connections (errors) |\n|---:|---|---:|---:|---:|---:|");
    for &n in &r.services {
        for row in &rows {
            let ss: Vec<&TcpSample> = r
                .tcp
                .iter()
                .filter(|s| &s.row == row && s.services == n)
                .collect();
            if ss.is_empty() {
                continue;
            }
            let cps = agg(ss.iter().map(|s| s.connections_per_sec).collect());
            let p50 = agg(ss.iter().filter_map(|s| s.p50_us).collect());
            let p99 = agg(ss.iter().filter_map(|s| s.p99_us).collect());
            let conns: u64 = ss.iter().map(|s| s.connections).sum();
            let errs: u64 = ss.iter().map(|s| s.errors).sum();
            let _ = writeln!(
                m,
                "| {} | {row} | {} | {} | {} | {conns} ({errs}) |",
                ns(n as f64),
                cps.map_or("–".into(), |a| ns(a.median)),
                p50.map_or("–".into(), |a| format!("{:.0} µs", a.median)),
                p99.map_or("–".into(), |a| format!("{:.0} µs", a.median)),
            );
        }
    }
    let _ = writeln!(m);
}

pub(super) fn load_section(m: &mut String, r: &Results) {
    let _ = writeln!(m, "## (e) Loading the rule set, applying one change\n");
    let _ = writeln!(
        m,
        "Full: the whole rule set into an empty table (iptables-restore / nft -f of kube-proxy's full sync; \
         `ServiceTable::sync` of every service into empty maps). One change: one service's endpoint replaced, applied the way \
         each control plane does it: kube-proxy's partial sync (`iptables-restore --noflush` of the top-level chains in full \
         plus the changed service's chains; the nftables mode's transaction flushing and rewriting the service chain), \
         `ServiceTable::sync` of the full desired state (diffed: only the changed service is written), `upsert` of the one \
         service, and the agent's own path (`agent::apply` of the new state given the previous one: the per-port delta, \
         only the changed port planned and written, source ranges, names, counters; what `kubeproxy_network_programming_duration_seconds` \
         records from the state reaching the agent; 9 samples, median and min–max; \"full diff\": the same without the \
         previous state, what every change cost before the delta path). Median of the samples (the change is applied and reverted: 2 samples). Connection tracking is empty while \
         loading; kube-proxy's conntrack clean-up for removed UDP endpoints is not included, the dataplane's CT purge scan is.\n"
    );
    let _ = writeln!(m, "| N | iptables-legacy | iptables-nft | nftables | ebpf (ServiceTable::sync) | legacy ÷ ebpf |\n|---:|---:|---:|---:|---:|---:|");
    for &n in &r.services {
        let g = |row: &str| load_agg(r, row, n, "full");
        let e = g("ebpf-tc").or_else(|| g("ebpf-xdp"));
        let cell = |a: Option<Agg>| a.map_or("–".into(), |a| secs(a.median));
        let rat = match (g("iptables-legacy"), e) {
            (Some(l), Some(e)) => ratio(l.median / e.median),
            _ => "–".into(),
        };
        let _ = writeln!(
            m,
            "| {} | {} | {} | {} | {} | {rat} |",
            ns(n as f64),
            cell(g("iptables-legacy")),
            cell(g("iptables-nft")),
            cell(g("nftables")),
            cell(e)
        );
    }
    let _ = writeln!(m, "\nOne changed service:\n");
    let _ = writeln!(m, "| N | iptables-legacy (partial restore) | iptables-nft (partial restore) | nftables (transaction) | ebpf sync (full desired state) | ebpf upsert (one service) | ebpf agent apply, full diff | ebpf agent apply (delta; min–max) |\n|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &n in &r.services {
        let g = |row: &str, k: &str| load_agg(r, row, n, k);
        let cell = |a: Option<Agg>| a.map_or("–".into(), |a| secs(a.median));
        let e = |k: &str| g("ebpf-tc", k).or_else(|| g("ebpf-xdp", k));
        let spread = e("agent_change").map_or("–".into(), |a| {
            format!("{} ({}–{})", secs(a.median), secs(a.min), secs(a.max))
        });
        let _ = writeln!(
            m,
            "| {} | {} | {} | {} | {} | {} | {} | {spread} |",
            ns(n as f64),
            cell(g("iptables-legacy", "one_change")),
            cell(g("iptables-nft", "one_change")),
            cell(g("nftables", "one_change")),
            cell(e("one_change")),
            cell(e("upsert")),
            cell(e("agent_full_diff"))
        );
    }
    let _ = writeln!(m);
}

/// What an empty program measured under the same statistics in these passes.
fn stats_floor_note(m: &mut String, r: &Results) {
    let floors: Vec<String> = r
        .profiles
        .iter()
        .filter_map(|p| Some(format!("{:.0}", p.stats_floor_ns?)))
        .collect();
    if floors.is_empty() {
        return;
    }
    let _ = writeln!(
        m,
        "**The statistics' own cost.** An empty tc program (it only returns TCX_NEXT, so the dataplane's program runs \
         next) attached first on the device each pass injects at measured {} ns per run (the passes whose packets reached \
         tc): the clock reads BPF_ENABLE_STATS adds around every program run, part of each number above and of every \
         program's. The per-program budgets in the targets table are judged on the time above it.\n",
        floors.join(", ")
    );
}

pub(super) fn profile_section(m: &mut String, r: &Results, n_max: usize) {
    let _ = writeln!(m, "## Where the time goes\n");
    let at = |row: &str, n: usize, t: Traffic| packet_agg(r, row, n, t).map(|a| a.median);
    if !r.profiles.is_empty() {
        let _ = writeln!(
            m,
            "Time inside this dataplane's programs per packet, from the kernel's BPF run-time statistics (BPF_ENABLE_STATS, \
             enabled only for this separate, untimed pass at N = {}: it adds its own overhead to each program run, so these \
             totals are a little higher than the tables above). The rest of the total is the kernel: skb allocation, routing, \
             forwarding, the underlay hop, node2 and the backend.\n",
            ns(n_max as f64)
        );
        let _ = writeln!(m, "| mode | traffic | total ns/packet | inside BPF programs (ns per packet: program × runs) | rest (kernel) |\n|---|---|---:|---|---:|");
        for p in &r.profiles {
            let (inside, detail) = (p.inside_ns(), p.terms("×"));
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} = {} | {} |",
                p.row,
                short(p.traffic),
                ns(p.total_ns_per_packet),
                detail.join(", "),
                ns(inside),
                ns(p.total_ns_per_packet - inside)
            );
        }
        let _ = writeln!(m);
        stats_floor_note(m, r);
    }
    // XDP vs tc explanation from the numbers.
    if let (Some(x), Some(c), Some(f)) = (
        at("ebpf-xdp", n_max, Traffic::NodePortNew),
        at("ebpf-tc", n_max, Traffic::NodePortNew),
        at("no-nat", n_max, Traffic::NodePortNew),
    ) {
        let prog = at("ebpf-xdp-prog", n_max, Traffic::NodePortNew);
        let _ = writeln!(
            m,
            "**XDP vs tc for NodePort.** At N = {}: XDP {} ns, tc {} ns per new-flow packet, no-NAT forwarding alone {} ns{}. \
             In ebpf-xdp `xdp_uplink` runs with the fast path on (`XDP_FORWARD`, as the agent loads it on a NIC uplink): \
             a NodePort packet to node2's backend is translated completely (DNAT and masquerade), routed with \
             `bpf_fib_lookup`, its MACs rewritten and sent back out of the uplink with XDP_TX, so on node1 it never becomes \
             an skb (no tc, routing, forwarding or tc egress). The cost per packet here is end to end, though: the switch, \
             node2's forwarding and the backend are in every mode's number (about what no-NAT costs beyond node1), so the \
             ratio of totals stays well below the ratio of node1's own work; Cilium's 3× is measured at the balancer \
             alone, and so is the table \"(d) NodePort at the balancer alone\": there XDP's gain is node1's own, and \
             for established flows it is the largest (the program replaces skb allocation, routing, forwarding and \
             both tc hooks), for new flows the smallest (conntrack creation costs the same on either hook). On this lab the veth uplink needs NAPI on the switch's end for XDP_TX'd frames (GRO turned on there for \
             ebpf-xdp only, which adds that NAPI pass to this mode's packets, not to the others'). What is left inside the \
             program for a new flow is conntrack: the hash lookups (cache misses in a 262,144-entry table) and the LRU's \
             node allocation for each of the entries a masqueraded connection creates (see the profile above). Per-CPU LRU \
             lists for CT_V2 (`BPF_F_NO_COMMON_LRU`, as Katran) were measured side by side and were slower here (new \
             ClusterIP flow at tc_pod_ingress 4.0 vs 2.5 µs, new NodePort flow at XDP 6.4 vs 4.8 µs): each CPU's list holds \
             only max_entries / CPUs entries, so flows that all arrive on one CPU start evicting at half the table. \
             Fewer entries per connection is the lever taken: a masqueraded connection the fast path opens (backend \
             behind the uplink, next hop resolved) has two entries, each with the whole translation, both at ingress \
             (`CT_F_FULL`, bpf-maps.md), instead of four, and its packets need one conntrack lookup, not two; what is \
             left per new flow is those two inserts (a profile of new NodePort flows at XDP before the change put 27% \
             of the program's time in `bpf_lru_pop_free`, 26% in hash bucket walks and 18% in the LRU update) and the \
             FIB lookup.\n",
            ns(n_max as f64),
            ns(x),
            ns(c),
            ns(f),
            prog.map_or(String::new(), |p| format!("; the XDP program alone costs {} ns per new flow", ns(p)))
        );
    }
    if at("ebpf-xdp", n_max, Traffic::NodePortEst).is_some() {
        let _ = writeln!(
            m,
            "**Where new flows grow with N.** Established flows are flat (conntrack only); new flows are not. A profile \
             taken when backends were still a hash keyed by service and slot (`perf record -e cpu-clock -a -g` over \
             `dataplane-bench --modes ebpf-xdp --reps 1 --no-tcp` at N = 1 and at N = 10,000, the same frames; leaf \
             functions of the samples under `xdp_uplink`) put the growth in the hash tables' bucket walk \
             (`lookup_nulls_elem_raw`, 571 → 1,345 samples), while the conntrack inserts (`bpf_lru_pop_free` 1,065 → \
             1,052, `htab_lru_map_update_elem` 821 → 761) cost the same at every N. That lever was taken: `BACKENDS_V2` \
             is an array indexed by the set's first slot plus the pick (one inlined index, no bucket walk), and the \
             growth of a new ClusterIP flow end to end fell from +50% to the figure in the targets. What is left growing \
             is the one `SERVICES_V2` hash lookup and the cache misses of touching a cold backend slot and service \
             entry among 10,000 services × 10 endpoints.\n"
        );
    }
    // iptables per rule.
    let sweep = &r.services;
    if let (Some(&lo), Some(&hi)) = (sweep.iter().min(), sweep.iter().max()) {
        if hi > lo {
            for row in ["iptables-legacy", "iptables-nft"] {
                if let (Some(a), Some(b)) = (
                    at(row, lo, Traffic::ClusterNew),
                    at(row, hi, Traffic::ClusterNew),
                ) {
                    // On average a new ClusterIP packet walks 2 rules for each service before its own.
                    let per_rule = (b - a) / (hi - lo) as f64;
                    let _ = writeln!(
                        m,
                        "**{row}.** A new ClusterIP flow costs {} ns more at {} services than at {}: kube-proxy's KUBE-SERVICES \
                         holds 2 rules per service and a packet walks half of them on average, so about {:.1} ns per rule \
                         walked. Established flows skip the nat table (conntrack already holds the translation), which is why \
                         their cost does not grow with N.\n",
                        ns(b - a),
                        ns(hi as f64),
                        ns(lo as f64),
                        per_rule
                    );
                }
            }
        }
    }
    {
        let e = load_agg(r, "ebpf-tc", n_max, "full")
            .or_else(|| load_agg(r, "ebpf-xdp", n_max, "full"));
        let plan = load_agg(r, "ebpf-plan-only", n_max, "full");
        let entries = r
            .loads
            .iter()
            .find(|s| {
                s.services == n_max
                    && s.kind == "full"
                    && s.row.starts_with("ebpf-")
                    && s.map_entries.is_some()
            })
            .and_then(|s| s.map_entries);
        if let (Some(e), Some(p), Some(k)) = (e, plan, entries) {
            let writes = (e.median - p.median).max(0.0);
            let _ = writeln!(
                m,
                "**ServiceTable::sync.** At N = {}: {} for {} map entries (SERVICES_V2 + BACKENDS_V2). The same sync into the \
                 in-memory model of the maps (`MemMaps`: planning, diffing, ordering, no bpf() call) takes {}, so about {} \
                 goes to the kernel map writes: {:.2} µs per entry (SERVICES_V2 with BPF_MAP_UPDATE_BATCH, thousands of \
                 entries per syscall; BACKENDS_V2 slots stored straight into the mmap'd array; in the same safe order: \
                 backend slots of a set before the frontend switch). What is left is mostly the planning itself.\n",
                ns(n_max as f64),
                secs(e.median),
                k,
                secs(p.median),
                secs(writes),
                writes / k as f64 * 1e6
            );
        }
    }
    let (lo, hi) = (
        *sweep.iter().min().unwrap_or(&1),
        *sweep.iter().max().unwrap_or(&1),
    );
    if let (Some(new_lo), Some(est_lo), Some(new_hi), Some(est_hi)) = (
        at("ebpf-xdp-prog", lo, Traffic::ClusterNew),
        at("ebpf-xdp-prog", lo, Traffic::ClusterEst),
        at("ebpf-xdp-prog", hi, Traffic::ClusterNew),
        at("ebpf-xdp-prog", hi, Traffic::ClusterEst),
    ) {
        let _ = writeln!(
            m,
            "**This dataplane, new vs established, and why new flows grow with N.** The XDP program alone: {} ns for a new \
             flow and {} ns for an established one at N = {}; {} and {} ns at N = {}. The new-flow difference is connection \
             creation: a random backend, two inserts into the LRU conntrack map CT_V2 (262,144 preallocated entries; one \
             insert per direction, a third probed one for masqueraded flows), each a few cache misses. Established packets \
             only look up CT_V2, so they cost the same at every N. New flows also look up the service (SERVICES_V2) and the \
             chosen slot (BACKENDS_V2, an array of 1,048,576 slots indexed by the set's first slot: no hash, no bucket \
             walk): at {} services those hold about {} entries, the lookups stop hitting the CPU caches, and that is the \
             growth (+{} ns) that puts the new-flow path past the 10% target.\n",
            ns(new_lo),
            ns(est_lo),
            ns(lo as f64),
            ns(new_hi),
            ns(est_hi),
            ns(hi as f64),
            ns(hi as f64),
            ns((hi as f64) * 1.1 * 11.0),
            ns(new_hi - new_lo)
        );
    }
}

pub(super) fn findings(m: &mut String, r: &Results) {
    let _ = writeln!(m, "## Masquerade capacity\n");
    let (refused, sent) = r
        .packets
        .iter()
        .filter(|s| s.traffic == Traffic::NodePortNew && s.row.starts_with("ebpf"))
        .fold((0u64, 0u64), |(a, b), s| (a + s.snat_exhausted, b + s.sent));
    let (lo, hi) = r.snat_range;
    let ports = (hi as u64).saturating_sub(lo as u64) + 1;
    if let Some(p) = &r.snat_probe {
        let _ = writeln!(
            m,
            "The dataplane masquerades NodePort traffic with source ports {lo}–{hi} (CONFIG_V2's default: {} ports per backend \
             address:port, {} for the 10 backends here). Of {} new NodePort flows to one service, none expiring, it \
             masqueraded {} and refused {} (`drop-snat-ports-exhausted`); over all of this run's new NodePort flows (100,000 \
             per sample in chunks of {}, the table never emptied within a sample) it refused {} of {}. Closed \
             connections give their port back (after an RST at once, after both FINs once the backend's TIME_WAIT \
             is over, or sooner when no free port is left; expired ones too), and \
             `tests/conntrack.rs` runs 100,000 real short TCP connections (ab against nginx) through one masqueraded \
             backend with none refused. {}\n",
            ns(ports as f64),
            ns((ports * 10) as f64),
            ns(p.flows as f64),
            ns(p.accepted as f64),
            ns(p.refused_ports_exhausted as f64),
            ns(crate::measure::NODEPORT_CHUNK as f64),
            ns(refused as f64),
            ns(sent as f64),
            if p.refused_ports_exhausted > 0 || refused > 0 {
                "**Refusals are a finding**: kube-proxy's MASQUERADE --random-fully draws from 1024–65535; a NodePort receiving \
                 many short UDP flows (DNS) would be refused here. A wider range or a longer probe would fix it."
            } else {
                "No refusals. (An earlier default, 61000–65535 with 8 probes, refused 55% of such a burst; this benchmark \
                 reported it and the default was widened.)"
            }
        );
    }
}
