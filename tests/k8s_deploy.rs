//! deploy/ agrees with the code: the manifests parse as Kubernetes objects (k8s-openapi types),
//! RBAC grants exactly what the watcher watches, the DaemonSet's flags are flags of
//! `dataplane run`, its pin dir is on the host's bpffs, its probes hit the metrics port.

use std::{collections::BTreeSet, path::PathBuf};

use dataplane::k8s::{documents, Format, WATCHED};
use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{Container, Namespace, Probe, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use serde::de::DeserializeOwned;

/// The flags `dataplane run` accepts. Must match `dataplane run --help`; the test below checks
/// it against the real binary.
const RUN_FLAGS: &[&str] = &[
    "--kubernetes",
    "--node-name",
    "--uplink",
    "--uplink-address",
    "--service-cluster-ip-range",
    "--pod-ifaces",
    "--pod-iface-prefix",
    "--pin-dir",
    "--xdp-mode",
    "--masquerade-ip",
    "--socket-lb",
    "--cgroup-path",
    "--overlay",
    "--manifests",
    "--kubeconfig",
    "--metrics-bind-address",
    "--no-metrics",
];

/// Flags being wired into the CLI right now: missing from `--help` is a warning, not a failure.
/// Remove entries as they land.
const PENDING_FLAGS: &[&str] = &[];

const VERBS: [&str; 3] = ["get", "list", "watch"];

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Every object of `kind` in deploy/<file>, decoded with k8s-openapi's type.
fn objects<K: DeserializeOwned>(file: &str, kind: &str) -> Vec<K> {
    let path = deploy_dir().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    documents(&text, Format::Yaml)
        .unwrap_or_else(|e| panic!("{file}: {e}"))
        .into_iter()
        .filter(|doc| doc["kind"] == kind)
        .map(|doc| serde_json::from_value(doc).unwrap_or_else(|e| panic!("{file}: {kind}: {e}")))
        .collect()
}

fn one<K: DeserializeOwned>(file: &str, kind: &str) -> K {
    let mut all = objects::<K>(file, kind);
    assert_eq!(all.len(), 1, "{file}: expected one {kind}");
    all.remove(0)
}

fn daemonset() -> DaemonSet {
    one("daemonset.yaml", "DaemonSet")
}

fn container(ds: &DaemonSet) -> Container {
    let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(pod.containers.len(), 1);
    pod.containers[0].clone()
}

fn args(ds: &DaemonSet) -> Vec<String> {
    container(ds).args.unwrap_or_default()
}

/// The value after `flag` in the DaemonSet's args.
fn flag_value(ds: &DaemonSet, flag: &str) -> String {
    let args = args(ds);
    let i = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("no {flag} in {args:?}"));
    args.get(i + 1)
        .cloned()
        .unwrap_or_else(|| panic!("{flag} without a value"))
}

#[test]
fn every_manifest_parses_and_names_one_namespace() {
    let namespace: Namespace = one("namespace.yaml", "Namespace");
    let ns = namespace.metadata.name.unwrap();
    let account: ServiceAccount = one("rbac.yaml", "ServiceAccount");
    assert_eq!(account.metadata.namespace.as_deref(), Some(ns.as_str()));
    let ds = daemonset();
    assert_eq!(ds.metadata.namespace.as_deref(), Some(ns.as_str()));
    let pod = ds.spec.unwrap().template.spec.unwrap();
    assert_eq!(
        pod.service_account_name, account.metadata.name,
        "the DaemonSet runs as the bound ServiceAccount"
    );
}

#[test]
fn rbac_grants_exactly_get_list_watch_on_the_watched_resources() {
    let role: ClusterRole = one("rbac.yaml", "ClusterRole");
    let mut granted = BTreeSet::new();
    for rule in role.rules.unwrap_or_default() {
        assert!(
            rule.resource_names.is_none() && rule.non_resource_urls.is_none(),
            "{rule:?}"
        );
        for group in rule.api_groups.unwrap_or_default() {
            for resource in rule.resources.clone().unwrap_or_default() {
                for verb in &rule.verbs {
                    granted.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    let wanted: BTreeSet<_> = WATCHED
        .iter()
        .flat_map(|(group, resource)| {
            VERBS
                .iter()
                .map(move |verb| (group.to_string(), resource.to_string(), verb.to_string()))
        })
        .collect();
    assert_eq!(
        granted, wanted,
        "the ClusterRole must grant get/list/watch on dataplane::k8s::WATCHED, nothing more"
    );
    assert_eq!(
        WATCHED,
        [
            ("", "services"),
            ("discovery.k8s.io", "endpointslices"),
            ("", "nodes")
        ]
    );

    let binding: ClusterRoleBinding = one("rbac.yaml", "ClusterRoleBinding");
    assert_eq!(
        (
            binding.role_ref.kind.as_str(),
            Some(binding.role_ref.name.as_str())
        ),
        ("ClusterRole", role.metadata.name.as_deref())
    );
    let account: ServiceAccount = one("rbac.yaml", "ServiceAccount");
    let subjects = binding.subjects.unwrap_or_default();
    assert!(
        subjects.iter().any(|s| s.kind == "ServiceAccount"
            && Some(&s.name) == account.metadata.name.as_ref()
            && s.namespace == account.metadata.namespace),
        "the binding names the ServiceAccount: {subjects:?}"
    );
}

#[test]
fn daemonset_runs_on_the_host_network_with_the_node_name() {
    let ds = daemonset();
    let pod = ds.spec.as_ref().unwrap().template.spec.clone().unwrap();
    assert_eq!(pod.host_network, Some(true));
    let c = container(&ds);
    assert_eq!(c.command.as_deref(), Some(&["dataplane".to_owned()][..]));
    assert_eq!(args(&ds).first().map(String::as_str), Some("run"));
    // --node-name $(NODE_NAME), NODE_NAME from the downward API.
    assert_eq!(flag_value(&ds, "--node-name"), "$(NODE_NAME)");
    let env = c.env.unwrap_or_default();
    let node_name = env
        .iter()
        .find(|e| e.name == "NODE_NAME")
        .expect("NODE_NAME env");
    let field = node_name
        .value_from
        .as_ref()
        .and_then(|v| v.field_ref.as_ref())
        .expect("NODE_NAME from a fieldRef");
    assert_eq!(field.field_path, "spec.nodeName");
    // In-cluster: the service account, no kubeconfig file and no manifests.
    assert!(!args(&ds)
        .iter()
        .any(|a| a == "--kubeconfig" || a == "--manifests"));
}

#[test]
fn pin_dir_is_on_the_hosts_bpffs_and_cgroups_are_mounted() {
    let ds = daemonset();
    let pod = ds.spec.as_ref().unwrap().template.spec.clone().unwrap();
    let c = container(&ds);
    let mounts = c.volume_mounts.clone().unwrap_or_default();
    let volumes = pod.volumes.unwrap_or_default();
    let host_path_of = |mount_path: &str| {
        let mount = mounts
            .iter()
            .find(|m| m.mount_path == mount_path)
            .unwrap_or_else(|| panic!("no mount at {mount_path}"));
        let volume = volumes
            .iter()
            .find(|v| v.name == mount.name)
            .expect("mounted volume exists");
        (
            mount.clone(),
            volume
                .host_path
                .as_ref()
                .expect("a hostPath volume")
                .path
                .clone(),
        )
    };
    let (bpf, host) = host_path_of("/sys/fs/bpf");
    assert_eq!(host, "/sys/fs/bpf");
    let pin_dir = flag_value(&ds, "--pin-dir");
    assert!(
        pin_dir.starts_with("/sys/fs/bpf/"),
        "--pin-dir {pin_dir} must be under the bpffs mount"
    );
    // The API server accepts Bidirectional propagation only in privileged containers;
    // HostToContainer sees the host's bpffs (and pins made there) without privilege.
    assert_eq!(bpf.mount_propagation.as_deref(), Some("HostToContainer"));
    assert_ne!(bpf.read_only, Some(true), "pins are written there");
    let (cgroup_mount, cgroup) = host_path_of("/sys/fs/cgroup");
    assert_eq!(cgroup, "/sys/fs/cgroup");
    assert_eq!(
        cgroup_mount.read_only,
        Some(true),
        "the cgroup root is only opened to attach to"
    );
}

#[test]
fn the_container_is_unprivileged_with_exactly_the_capabilities_the_agent_uses() {
    let ds = daemonset();
    let c = container(&ds);
    let sc = c.security_context.clone().expect("a securityContext");
    assert_ne!(sc.privileged, Some(true), "no privileged container");
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    let caps = sc.capabilities.expect("capabilities");
    assert_eq!(caps.drop, Some(vec!["ALL".to_owned()]));
    // tests/least_privilege.rs runs the agent with exactly these (and shows PERFMON is needed);
    // SYS_ADMIN would only mount a bpffs or cgroup2 the host lacks.
    let mut add = caps.add.unwrap_or_default();
    add.sort();
    assert_eq!(add, ["BPF", "NET_ADMIN", "PERFMON"]);
    let pod = ds.spec.as_ref().unwrap().template.spec.clone().unwrap();
    for volume in pod.volumes.unwrap_or_default() {
        let path = volume.host_path.map(|h| h.path).unwrap_or_default();
        assert!(
            ["/sys/fs/bpf", "/sys/fs/cgroup"].contains(&path.as_str()),
            "unexpected host path {path}"
        );
    }
}

#[test]
fn the_image_tag_is_the_crate_version() {
    let c = container(&daemonset());
    let image = c.image.expect("an image");
    let (_, tag) = image.rsplit_once(':').expect("a tagged image");
    assert_eq!(tag, env!("CARGO_PKG_VERSION"), "{image}");
    let dockerfile = std::fs::read_to_string(deploy_dir().join("Dockerfile")).unwrap();
    assert!(
        dockerfile.contains(&format!("-t {image} ")),
        "the Dockerfile's build command tags {image}"
    );
}

#[test]
fn the_uplink_is_found_from_the_nodes_address() {
    let ds = daemonset();
    assert!(
        !args(&ds).iter().any(|a| a == "--uplink" || a == "eth0"),
        "no interface name hard-coded: {:?}",
        args(&ds)
    );
    assert_eq!(flag_value(&ds, "--uplink-address"), "$(HOST_IP)");
    let env = container(&ds).env.unwrap_or_default();
    let host_ip = env
        .iter()
        .find(|e| e.name == "HOST_IP")
        .expect("HOST_IP env");
    let field = host_ip
        .value_from
        .as_ref()
        .and_then(|v| v.field_ref.as_ref())
        .expect("HOST_IP from a fieldRef");
    assert_eq!(field.field_path, "status.hostIP");
}

#[test]
fn probes_hit_healthz_and_readyz_on_the_metrics_port() {
    let ds = daemonset();
    let c = container(&ds);
    let metrics_port: i32 = flag_value(&ds, "--metrics-bind-address")
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let ports = c.ports.clone().unwrap_or_default();
    let resolve = |port: &IntOrString| match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => {
            ports
                .iter()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .unwrap_or_else(|| panic!("no port {name}"))
                .container_port
        }
    };
    // Liveness must not fail on a service the agent cannot write (a restart would not help);
    // readiness does.
    for (which, probe, path) in [
        (
            "liveness",
            &c.liveness_probe,
            dataplane::metrics::LIVENESS_PATH,
        ),
        (
            "readiness",
            &c.readiness_probe,
            dataplane::metrics::READINESS_PATH,
        ),
    ] {
        let probe: &Probe = probe.as_ref().unwrap_or_else(|| panic!("no {which} probe"));
        let get = probe
            .http_get
            .as_ref()
            .unwrap_or_else(|| panic!("{which} probe is not httpGet"));
        assert_eq!(get.path.as_deref(), Some(path), "{which}");
        assert_eq!(resolve(&get.port), metrics_port, "{which} probe port");
    }
}

#[test]
fn daemonset_flags_are_flags_of_dataplane_run() {
    let ds = daemonset();
    for arg in args(&ds).iter().filter(|a| a.starts_with("--")) {
        let flag = arg.split('=').next().unwrap();
        assert!(
            RUN_FLAGS.contains(&flag),
            "{flag} is not a `dataplane run` flag ({RUN_FLAGS:?})"
        );
    }
}

#[test]
fn run_flags_match_the_binarys_help() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_dataplane"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    assert!(output.status.success(), "dataplane run --help: {output:?}");
    let help = String::from_utf8_lossy(&output.stdout);
    let mut missing = Vec::new();
    for flag in RUN_FLAGS {
        // clap prints "--flag <VALUE>" or "--flag" followed by a space or line end.
        let present = help
            .split(|c: char| c.is_whitespace() || c == ',' || c == '=')
            .any(|word| word == *flag);
        if !present {
            missing.push(*flag);
        }
    }
    let (pending, unexpected): (Vec<_>, Vec<_>) =
        missing.into_iter().partition(|f| PENDING_FLAGS.contains(f));
    if !pending.is_empty() {
        eprintln!("warning: `dataplane run` does not have {pending:?} yet (being wired)");
    }
    // The other direction only warns: a new flag the DaemonSet does not use breaks nothing,
    // but RUN_FLAGS should learn it.
    let unlisted: Vec<_> = help
        .split_whitespace()
        .filter(|w| w.starts_with("--") && w.len() > 2 && *w != "--help")
        .filter(|w| !RUN_FLAGS.contains(w))
        .collect();
    if !unlisted.is_empty() {
        eprintln!("warning: RUN_FLAGS lacks {unlisted:?} from `dataplane run --help`");
    }
    assert!(
        unexpected.is_empty(),
        "`dataplane run --help` lacks {unexpected:?}:\n{help}"
    );
}

#[test]
fn dockerfile_builds_with_xtask_and_ships_the_binary_with_iproute2() {
    let dockerfile = std::fs::read_to_string(deploy_dir().join("Dockerfile")).unwrap();
    // The static binary of `cargo xtask release`, as in the OCI layout it writes (release.rs).
    assert!(dockerfile.contains("RUN cargo xtask release"));
    assert!(dockerfile.contains(
        "COPY --from=build /src/target/x86_64-unknown-linux-musl/release/dataplane \
         /usr/local/bin/dataplane"
    ));
    assert!(dockerfile.contains("iproute2"));
    assert!(dockerfile
        .lines()
        .any(|l| l.starts_with("FROM debian:") && l.contains("slim")));
}
