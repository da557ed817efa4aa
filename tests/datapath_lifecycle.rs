//! The datapath's life cycle in lab nodes: SIGTERM leaves it attached through pinned links, a
//! restart adopts the pinned maps and links, an older agent's stats are read then retired, a
//! pinned map of another layout is refused, `dataplane cleanup` detaches and removes the pins;
//! a run that exits or is given a bridge fails loudly, and the teardown check itself.

mod support;

use aya::maps::MapData;
use dataplane_common::{map_names, Hook, Reason, STATS_ENTRIES};
use dataplane_lab::lab::{Cni, LabSpec};
use dataplane_lab::netns;
use support::datapath::*;
use support::node::{bpftool, dataplane_cli, CheckedLab, DataplaneNode};

/// Echo requests per ping run.
const PINGS: u32 = 3;

/// SIGTERM exits 0 and leaves the datapath attached through its pinned links (it keeps
/// counting); a restart with the same pin dir adopts the very same map and links and keeps
/// counting from where it was; `dataplane cleanup` then detaches and removes the pins.
#[test]
fn restart_adopts_pinned_stats_and_cleanup_removes_them() {
    support::require_root();
    let lab = CheckedLab::build(&LabSpec {
        nodes: 1,
        pods_per_node: 1,
        ..Default::default()
    })
    .unwrap();
    let ext = lab.external().unwrap().clone();
    let node_ip = lab.node(0).underlay_ip;
    let node = DataplaneNode::start(&lab, 0, &[]).unwrap_or_else(|e| panic!("{e:#}"));
    assert_attached(&lab, 0);
    let pin_dir = node.pin_dir().to_path_buf();
    let stats_pin = pin_dir.join(map_names::STATS);
    let id = map_id(&stats_pin);

    ext.ping(node_ip, PINGS).unwrap();
    let running = node.stats().unwrap();
    assert!(running.packets(Hook::XdpUplink, Reason::PassIcmp) >= PINGS as u64);
    let programs = node.program_ids();
    node.stop().unwrap_or_else(|e| panic!("{e:#}"));
    assert_attached(&lab, 0);

    // The map and the links outlive the process: the datapath keeps counting.
    let stopped = dataplane::stats::read_pinned(&pin_dir).unwrap();
    ext.ping(node_ip, PINGS).unwrap();
    let idle = dataplane::stats::read_pinned(&pin_dir).unwrap();
    for hook in Hook::PACKET {
        for reason in Reason::ALL {
            assert!(stopped.packets(hook, reason) >= running.packets(hook, reason));
        }
    }
    assert!(
        idle.packets(Hook::XdpUplink, Reason::PassIcmp)
            >= stopped.packets(Hook::XdpUplink, Reason::PassIcmp) + PINGS as u64,
        "the datapath stopped with the agent"
    );

    let node = DataplaneNode::start(&lab, 0, &[]).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        map_id(&stats_pin),
        id,
        "restart created a new STATS_V2 instead of adopting the pinned one"
    );
    let adopted = node.stats().unwrap();
    for row in &idle.rows {
        assert!(
            adopted.packets(row.hook, row.reason) >= row.packets,
            "{} {} reset on restart: {} -> {}",
            row.hook.name(),
            row.reason.name(),
            row.packets,
            adopted.packets(row.hook, row.reason)
        );
    }
    ext.ping(node_ip, PINGS).unwrap();
    let more = node.stats().unwrap();
    assert!(
        more.packets(Hook::XdpUplink, Reason::PassIcmp)
            >= idle.packets(Hook::XdpUplink, Reason::PassIcmp) + PINGS as u64
    );
    node.stop().unwrap_or_else(|e| panic!("{e:#}"));
    assert_attached(&lab, 0);

    let pin = pin_dir.to_string_lossy().into_owned();
    let out = dataplane_cli(&["cleanup", "--pin-dir", &pin]).unwrap();
    assert_detached(&lab, 0);
    assert_unloaded(&programs);
    assert!(
        out.status.success(),
        "dataplane cleanup: {}\n{}",
        out.status,
        out.stderr
    );
    assert!(
        out.stdout
            .contains(&format!("removed {}", stats_pin.display())),
        "{}",
        out.stdout
    );
    assert!(!stats_pin.exists());
    assert!(!pin_dir.exists(), "cleanup leaves the emptied pin dir");
    let out = dataplane_cli(&["stats", "--pin-dir", &pin]).unwrap();
    assert!(!out.status.success(), "stats without pins must fail");
    assert!(out.stderr.contains("STATS_V2"), "{}", out.stderr);
    lab.teardown();
}

/// An older agent's `STATS_V1` (32 reasons per hook) is still read by `dataplane stats`, with a
/// note naming the layout, so an upgrade can be watched; `dataplane run` of this build removes
/// the retired pin and counts in `STATS_V2`.
#[test]
fn stats_of_an_older_agent_are_read_then_retired() {
    let lab = one_bare_node();
    let pin_dir = lab.pin_dir(0).unwrap();
    std::fs::create_dir_all(&pin_dir).unwrap();
    let old_pin = pin_dir.join("STATS_V1");
    let old = old_pin.to_string_lossy().into_owned();
    let v1_entries = (Hook::ALL.len() * 32).to_string();
    netns::run(&[
        bpftool(),
        "map",
        "create",
        &old,
        "type",
        "percpu_array",
        "key",
        "4",
        "value",
        "16",
        "entries",
        &v1_entries,
        "name",
        "STATS_V1",
    ])
    .unwrap();
    // tc-pod-ingress (3) x pass-tcp (1) at the old width: index 3 * 32 + 1 = 97.
    let mut update = vec![
        bpftool(),
        "map",
        "update",
        "pinned",
        &old,
        "key",
        "97",
        "0",
        "0",
        "0",
    ];
    update.push("value");
    update.extend([
        "7", "0", "0", "0", "0", "0", "0", "0", "0", "0", "0", "0", "0", "0", "0", "0",
    ]);
    netns::run(&update).unwrap();

    let pin = pin_dir.to_string_lossy().into_owned();
    let out = dataplane_cli(&["stats", "--pin-dir", &pin]).unwrap();
    assert!(out.status.success(), "dataplane stats: {}", out.stderr);
    assert!(
        out.stdout
            .contains("STATS_V1 is the layout of an older agent"),
        "{}",
        out.stdout
    );
    let row = out.stdout.lines().find(|l| l.starts_with("tc-pod-ingress"));
    let row = row.unwrap_or_else(|| panic!("no tc-pod-ingress row: {}", out.stdout));
    assert!(row.contains("pass-tcp"), "{row}");

    let node = DataplaneNode::start(&lab, 0, &[]).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(!old_pin.exists(), "the retired STATS_V1 pin was kept");
    assert!(pin_dir.join(map_names::STATS).exists());
    node.stop().unwrap_or_else(|e| panic!("{e:#}"));
    lab.teardown();
}

/// A pinned STATS_V2 of another layout is refused, left untouched, and named in the error
/// together with the way out (`dataplane cleanup`), which removes it so the next run starts.
#[test]
fn pinned_map_of_another_layout_is_refused() {
    let lab = one_bare_node();
    let pin_dir = lab.pin_dir(0).unwrap();
    let stats_pin = pin_dir.join(map_names::STATS);
    let entries = STATS_ENTRIES.to_string();
    netns::run(&[
        bpftool(),
        "map",
        "create",
        &stats_pin.to_string_lossy(),
        "type",
        "percpu_array",
        "key",
        "4",
        "value",
        "8",
        "entries",
        &entries,
        "name",
        "STATS_V2",
    ])
    .unwrap();
    let foreign = map_id(&stats_pin);

    let err = match DataplaneNode::start(&lab, 0, &[]) {
        Ok(_) => panic!("dataplane run started over a STATS_V2 with 8-byte values"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("exited (exit status: "), "{err}");
    assert!(!err.contains("exit status: 0)"), "{err}");
    assert!(
        err.contains("STATS_V2"),
        "error does not name the map: {err}"
    );
    assert!(
        err.contains("dataplane cleanup"),
        "error does not suggest cleanup: {err}"
    );
    assert_eq!(map_id(&stats_pin), foreign, "the foreign map was replaced");
    let info = MapData::from_pin(&stats_pin).unwrap().info().unwrap();
    assert_eq!(info.value_size(), 8);

    let pin = pin_dir.to_string_lossy().into_owned();
    let out = dataplane_cli(&["cleanup", "--pin-dir", &pin]).unwrap();
    assert!(
        out.status.success(),
        "dataplane cleanup: {}\n{}",
        out.status,
        out.stderr
    );
    assert!(!stats_pin.exists(), "cleanup left {}", stats_pin.display());

    let node = DataplaneNode::start(&lab, 0, &[]).unwrap_or_else(|e| panic!("{e:#}"));
    assert_ne!(map_id(&stats_pin), foreign);
    node.stop().unwrap_or_else(|e| panic!("{e:#}"));
    lab.teardown();
}

/// A `dataplane run` that exits instead of becoming ready fails `DataplaneNode::start` with the
/// process's stderr: the path a verifier rejection takes to fail a test loudly.
#[test]
fn a_run_that_exits_fails_start_with_its_stderr() {
    let lab = one_bare_node();
    let err = match DataplaneNode::start(&lab, 0, &["--xdp-mode", "no-such-mode"]) {
        Ok(_) => panic!("started with an invalid --xdp-mode"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("did not become ready"), "{err}");
    assert!(
        err.contains("no-such-mode"),
        "stderr missing from the error: {err}"
    );
    lab.teardown();
}

/// flannel's bridge given as a pod device is refused at start, naming what to attach instead
/// (replies of a backend on the same bridge would never be un-NATed).
#[test]
fn a_bridge_as_pod_device_is_refused() {
    support::require_root();
    let lab = CheckedLab::build(&LabSpec {
        nodes: 1,
        pods_per_node: 1,
        cni: Cni::Flannel,
        external_client: false,
        ..Default::default()
    })
    .unwrap();
    let err = match DataplaneNode::start(&lab, 0, &["--pod-ifaces", "cni0"]) {
        Ok(_) => panic!("started with the cni0 bridge as a pod device"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("cni0 is a bridge"), "{err}");
    assert!(err.contains("--pod-iface-prefix veth"), "{err}");
    lab.teardown();
}

/// The teardown check itself: a namespace with the lab's prefix that survives the lab (here one
/// created behind its back) makes the test fail.
#[test]
fn a_namespace_left_behind_fails_the_teardown_check() {
    let lab = one_bare_node();
    let stray = format!("{}stray", lab.prefix());
    netns::add_ns(&stray).unwrap();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| lab.teardown()));
    netns::del_ns(&stray).unwrap();
    let message = result.expect_err("the teardown check accepted a leftover namespace");
    let text = message
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(text.contains(&stray), "{text}");
}
