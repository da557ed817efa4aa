//! The DaemonSet's capability list is enough: `dataplane run` in the lab with exactly the
//! capabilities deploy/daemonset.yaml adds (bounding set, no_new_privs, as in a container with
//! `drop: [ALL]`; setpriv from util-linux), found by `--uplink-address` instead of an interface name, serving a
//! ClusterIP across nodes through its own VXLAN overlay (Node objects from manifests), a
//! NodePort from outside, and the node's own connection through the cgroup hooks.

mod support;

use std::{net::SocketAddrV4, path::PathBuf, time::Duration};

use dataplane_lab::{
    lab::{Cni, LabSpec, Node},
    manifests::{flannel_node_yaml, Endpoint, ServiceManifest},
    netns,
};
use k8s_openapi::api::apps::v1::DaemonSet;
use support::node::{CheckedLab, DataplaneNode};

const T: Duration = Duration::from_secs(3);

/// The capabilities the DaemonSet adds (it drops ALL).
fn daemonset_caps() -> Vec<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/daemonset.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let docs = dataplane::k8s::documents(&text, dataplane::k8s::Format::Yaml).unwrap();
    let ds: DaemonSet = serde_json::from_value(docs[0].clone()).unwrap();
    let pod = ds.spec.unwrap().template.spec.unwrap();
    let caps = pod.containers[0]
        .security_context
        .clone()
        .unwrap()
        .capabilities
        .unwrap();
    assert_eq!(caps.drop, Some(vec!["ALL".to_owned()]));
    caps.add.unwrap()
}

/// CapEff of `pid` (the kernel's bit mask).
fn effective_caps(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap()
        .trim();
    u64::from_str_radix(hex, 16).unwrap()
}

/// The mask of capability names (linux/capability.h numbers of the ones a DaemonSet may add).
fn mask(names: &[String]) -> u64 {
    names
        .iter()
        .map(|n| match n.as_str() {
            "net_admin" => 1 << 12,
            "net_raw" => 1 << 13,
            "sys_admin" => 1 << 21,
            "sys_resource" => 1 << 24,
            "perfmon" => 1 << 38,
            "bpf" => 1 << 39,
            other => panic!("capability {other} is not in the test's table"),
        })
        .fold(0, |a, b| a | b)
}

fn uplink_mac(n: &Node) -> [u8; 6] {
    let (ns, uplink) = (n.ns.clone(), n.uplink.clone());
    netns::in_netns(&ns, move || dataplane::host::netdev::mac(&uplink))
        .unwrap()
        .unwrap()
}

#[test]
fn the_agent_serves_with_only_the_daemonsets_capabilities() {
    support::require_root();
    let caps: Vec<String> = daemonset_caps().iter().map(|c| c.to_lowercase()).collect();
    let bounding = format!(
        "-all,{}",
        caps.iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let lab = CheckedLab::build(&LabSpec {
        nodes: 2,
        pods_per_node: 1,
        cni: Cni::Flannel,
        pod_mtu: 1450,
        underlay_routes: false,
        external_client: true,
    })
    .unwrap();
    let dir = std::env::temp_dir().join(format!("{}manifests", lab.prefix()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let backend = lab.pod(1, 0);
    let _server = backend.host().tcp_echo_server(8080).unwrap();
    let svc = ServiceManifest {
        namespace: "default".into(),
        name: "web".into(),
        cluster_ip: [10, 96, 0, 10].into(),
        port: 80,
        target_port: 8080,
        protocol: "TCP".into(),
        node_port: Some(30080),
        endpoints: vec![Endpoint {
            ip: backend.ip,
            node: "node2".into(),
        }],
    };
    let nodes: Vec<String> = lab
        .nodes()
        .iter()
        .map(|n| flannel_node_yaml(&n.name, n.underlay_ip, n.pod_cidr, uplink_mac(n)))
        .collect();
    std::fs::write(dir.join("web.yaml"), svc.to_yaml()).unwrap();
    std::fs::write(dir.join("nodes.yaml"), nodes.join("---\n")).unwrap();
    let wrapper = [
        "setpriv",
        "--bounding-set",
        &bounding,
        "--inh-caps",
        "-all",
        "--no-new-privs",
    ];
    let agents: Vec<DataplaneNode> = (0..2)
        .map(|i| {
            let ip = lab.node(i).underlay_ip.to_string();
            let args = [
                "--uplink-address",
                &ip,
                "--overlay",
                "vxlan",
                "--manifests",
                dir.to_str().unwrap(),
            ];
            let pin = lab.pin_dir(i).unwrap();
            DataplaneNode::start_wrapped(&lab, i, &pin, &wrapper, &args)
                .unwrap_or_else(|e| panic!("node{}: {e:#}", i + 1))
        })
        .collect();
    for a in &agents {
        assert_eq!(
            effective_caps(a.pid()),
            mask(&caps),
            "the agent runs with exactly {caps:?}"
        );
    }
    let vip = SocketAddrV4::new(svc.cluster_ip, 80);
    let client = lab.pod(0, 0).host();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let reply = loop {
        match client.tcp_request(vip, "pod", T) {
            Ok(r) => break r,
            Err(e) if std::time::Instant::now() > deadline => panic!(
                "ClusterIP across the overlay: {e:#}\n{}\n{}",
                agents[0].stderr(),
                agents[1].stderr()
            ),
            Err(_) => std::thread::sleep(Duration::from_millis(300)),
        }
    };
    assert_eq!(reply.server, backend.name);
    // The node's own connection: the cgroup connect4 hook.
    let r = lab.node(0).host().tcp_request(vip, "node", T).unwrap();
    assert_eq!(r.server, backend.name);
    let np = SocketAddrV4::new(lab.node(0).underlay_ip, 30080);
    let r = lab.external().unwrap().tcp_request(np, "ext", T).unwrap();
    assert_eq!(r.server, backend.name);
    for a in agents {
        let err = a.stderr();
        assert!(
            !err.contains("Operation not permitted") && !err.contains("ERROR"),
            "{err}"
        );
        a.stop().unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}
