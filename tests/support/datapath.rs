//! Where the datapath is attached in a lab node: tcx programs per device, XDP on the uplink,
//! programs gone from the kernel after a stop; pinned map ids.

use std::path::Path;
use std::time::Duration;

use aya::maps::MapData;
use aya::programs::tc::{SchedClassifier, TcAttachType};
use dataplane_lab::lab::{Lab, LabSpec};
use dataplane_lab::netns;

use super::node::{bpftool, CheckedLab};

/// Names of the programs attached with tcx to `iface` in namespace `ns`, ingress then egress.
pub fn tcx_programs(ns: &str, iface: &str) -> (Vec<String>, Vec<String>) {
    let iface = iface.to_string();
    let ns_name = ns.to_string();
    netns::in_netns(ns, move || {
        let query = |kind| -> Vec<String> {
            let (_, progs) = SchedClassifier::query_tcx(&iface, kind)
                .unwrap_or_else(|e| panic!("query tcx {kind:?} of {iface} in {ns_name}: {e}"));
            progs
                .iter()
                .map(|p| p.name_as_str().unwrap_or("?").to_string())
                .collect()
        };
        (query(TcAttachType::Ingress), query(TcAttachType::Egress))
    })
    .unwrap()
}

pub fn uplink_link(lab: &Lab, node: usize) -> String {
    let n = lab.node(node);
    netns::run(&["ip", "-n", &n.ns, "link", "show", &n.uplink]).unwrap()
}

pub fn bpftool_net_show(lab: &Lab, node: usize) -> String {
    lab.node(node)
        .host()
        .run(&[bpftool(), "net", "show"])
        .unwrap()
}

/// XDP on the uplink, tcx ingress/egress on the uplink and on every pod device.
pub fn assert_attached(lab: &Lab, node: usize) {
    let n = lab.node(node);
    let link = uplink_link(lab, node);
    assert!(
        link.contains("prog/xdp") && link.contains("xdp_uplink"),
        "{link}"
    );
    let net = bpftool_net_show(lab, node);
    assert!(
        net.contains(&format!("{}(", n.uplink)),
        "bpftool net show:\n{net}"
    );
    // The kernel keeps the first 15 bytes of a program name.
    let prog = |name: &str| vec![name[..name.len().min(15)].to_string()];
    let mut want = vec![(
        n.uplink.clone(),
        prog("tc_uplink_ingress"),
        prog("tc_uplink_egress"),
    )];
    for iface in n.pod_ifaces() {
        want.push((iface, prog("tc_pod_ingress"), prog("tc_pod_egress")));
    }
    for (iface, ingress, egress) in want {
        assert_eq!(
            tcx_programs(&n.ns, &iface),
            (ingress, egress),
            "{}: tcx programs on {iface}",
            n.name
        );
    }
}

/// Nothing of ours left attached: no XDP on the uplink (`ip link`, `bpftool net show` in the
/// namespace) and no tcx program on the uplink or any pod device.
pub fn assert_detached(lab: &Lab, node: usize) {
    let n = lab.node(node);
    let link = uplink_link(lab, node);
    assert!(
        !link.contains("xdp"),
        "{}: XDP still attached after stop:\n{link}",
        n.name
    );
    let net = bpftool_net_show(lab, node);
    for needle in [
        "tcx",
        "xdp_uplink",
        "tc_uplink",
        "tc_pod",
        "driver id",
        "generic id",
    ] {
        assert!(
            !net.contains(needle),
            "{}: bpftool net show after stop:\n{net}",
            n.name
        );
    }
    let mut ifaces = vec![n.uplink.clone()];
    ifaces.extend(n.pod_ifaces());
    for iface in ifaces {
        let (ingress, egress) = tcx_programs(&n.ns, &iface);
        assert!(
            ingress.is_empty() && egress.is_empty(),
            "{}: tcx programs left on {iface} after stop: {ingress:?} {egress:?}",
            n.name
        );
    }
}

/// Programs a stopped `dataplane run` held are gone from the kernel: nothing (XDP, tcx, cgroup
/// socket hooks) keeps them attached.
pub fn assert_unloaded(ids: &[u32]) {
    // xdp_uplink + 4 tc programs at least.
    assert!(
        ids.len() >= 5,
        "only {ids:?} program ids found in the process's fds"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let left: Vec<String> = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .filter(|p| ids.contains(&p.id()))
            .map(|p| format!("{} ({})", p.name_as_str().unwrap_or("?"), p.id()))
            .collect();
        if left.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "programs still loaded after the process exited: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn map_id(path: &Path) -> u32 {
    MapData::from_pin(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .info()
        .unwrap()
        .id()
}

/// A lab of one node without pods or external client (root required).
pub fn one_bare_node() -> CheckedLab {
    super::require_root();
    CheckedLab::build(&LabSpec {
        nodes: 1,
        pods_per_node: 0,
        external_client: false,
        ..Default::default()
    })
    .unwrap()
}
