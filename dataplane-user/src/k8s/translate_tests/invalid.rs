//! Invalid objects: each named with its field, the rest applied; no input panics.

use serde_json::Value;

use super::*;

/// One invalid object (appended to the seed cluster) and the problem it must produce.
struct BadCase {
    yaml: &'static str,
    kind: &'static str,
    object: &'static str,
    field: &'static str,
    /// A word the message must contain.
    says: &'static str,
}

const fn bad(
    kind: &'static str,
    object: &'static str,
    field: &'static str,
    says: &'static str,
    yaml: &'static str,
) -> BadCase {
    BadCase {
        yaml,
        kind,
        object,
        field,
        says,
    }
}

const BAD_CASES: &[BadCase] = &[
    bad("Service", "bad/ip", "spec.clusterIP", "10.0.0.300", "
apiVersion: v1
kind: Service
metadata: {name: ip, namespace: bad}
spec: {clusterIP: 10.0.0.300, ports: [{port: 80}]}"),
    bad("Service", "bad/ips", "spec.clusterIPs[0]", "not an IP", "
apiVersion: v1
kind: Service
metadata: {name: ips, namespace: bad}
spec: {clusterIPs: [ten.0.0.1], ports: [{port: 80}]}"),
    bad("Service", "bad/port0", "spec.ports[0].port", "port number", "
apiVersion: v1
kind: Service
metadata: {name: port0, namespace: bad}
spec: {clusterIP: 10.96.90.1, ports: [{port: 0}]}"),
    bad("Service", "bad/port-range", "spec.ports[1].port", "70000", "
apiVersion: v1
kind: Service
metadata: {name: port-range, namespace: bad}
spec: {clusterIP: 10.96.90.2, ports: [{name: a, port: 80}, {name: b, port: 70000}]}"),
    bad("Service", "bad/nodeport", "spec.ports[0].nodePort", "-5", "
apiVersion: v1
kind: Service
metadata: {name: nodeport, namespace: bad}
spec: {type: NodePort, clusterIP: 10.96.90.3, ports: [{port: 80, nodePort: -5}]}"),
    bad("Service", "bad/proto", "spec.ports[0].protocol", "HTTP", "
apiVersion: v1
kind: Service
metadata: {name: proto, namespace: bad}
spec: {clusterIP: 10.96.90.4, ports: [{port: 80, protocol: HTTP}]}"),
    bad("Service", "bad/port-type", "spec.ports[0].port", "invalid type", "
apiVersion: v1
kind: Service
metadata: {name: port-type, namespace: bad}
spec: {clusterIP: 10.96.90.5, ports: [{port: eighty}]}"),
    // k8s-openapi decodes a missing port as 0.
    bad("Service", "bad/no-port", "spec.ports[0].port", "not a port number", "
apiVersion: v1
kind: Service
metadata: {name: no-port, namespace: bad}
spec: {clusterIP: 10.96.90.6, ports: [{name: http}]}"),
    bad("Service", "bad/no-ports", "spec.ports", "at least one port", "
apiVersion: v1
kind: Service
metadata: {name: no-ports, namespace: bad}
spec: {clusterIP: 10.96.90.7}"),
    bad("Service", "bad/dup-name", "spec.ports[1].name", "duplicate", "
apiVersion: v1
kind: Service
metadata: {name: dup-name, namespace: bad}
spec: {clusterIP: 10.96.90.8, ports: [{name: a, port: 80}, {name: a, port: 81}]}"),
    bad("Service", "bad/dup-port", "spec.ports[1].port", "duplicate", "
apiVersion: v1
kind: Service
metadata: {name: dup-port, namespace: bad}
spec: {clusterIP: 10.96.90.9, ports: [{name: a, port: 80}, {name: b, port: 80}]}"),
    bad("Service", "bad/ext", "spec.externalIPs[1]", "not an IP", "
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: bad}
spec: {clusterIP: 10.96.90.10, externalIPs: [203.0.113.1, nope], ports: [{port: 80}]}"),
    bad("Service", "bad/lb", "status.loadBalancer.ingress[0].ip", "not an IP", "
apiVersion: v1
kind: Service
metadata: {name: lb, namespace: bad}
spec: {type: LoadBalancer, clusterIP: 10.96.90.11, ports: [{port: 80, nodePort: 30011}]}
status: {loadBalancer: {ingress: [{ip: 1.2.3}]}}"),
    bad("Service", "bad/type", "spec.type", "Sideways", "
apiVersion: v1
kind: Service
metadata: {name: type, namespace: bad}
spec: {type: Sideways, clusterIP: 10.96.90.12, ports: [{port: 80}]}"),
    bad("Service", "bad/etp", "spec.externalTrafficPolicy", "Global", "
apiVersion: v1
kind: Service
metadata: {name: etp, namespace: bad}
spec: {type: NodePort, externalTrafficPolicy: Global, clusterIP: 10.96.90.13, ports: [{port: 80, nodePort: 30013}]}"),
    bad("Service", "bad/itp", "spec.internalTrafficPolicy", "Nearby", "
apiVersion: v1
kind: Service
metadata: {name: itp, namespace: bad}
spec: {internalTrafficPolicy: Nearby, clusterIP: 10.96.90.14, ports: [{port: 80}]}"),
    bad("Service", "bad/affinity", "spec.sessionAffinity", "Cookie", "
apiVersion: v1
kind: Service
metadata: {name: affinity, namespace: bad}
spec: {sessionAffinity: Cookie, clusterIP: 10.96.90.15, ports: [{port: 80}]}"),
    bad("Service", "bad/timeout", "spec.sessionAffinityConfig.clientIP.timeoutSeconds", "out of range", "
apiVersion: v1
kind: Service
metadata: {name: timeout, namespace: bad}
spec: {sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}, clusterIP: 10.96.90.16, ports: [{port: 80}]}"),
    bad("Service", "bad/<unnamed>", "metadata.name", "missing", "
apiVersion: v1
kind: Service
metadata: {namespace: bad}
spec: {clusterIP: 10.96.90.17, ports: [{port: 80}]}"),
    bad("Service", "test001/app-svc-clusterip", "metadata.name", "duplicate", "
apiVersion: v1
kind: Service
metadata: {name: app-svc-clusterip, namespace: test001}
spec: {clusterIP: 10.96.90.18, ports: [{port: 80}]}"),
    // A bad slice of a seed service: that slice is skipped, the seed's own slice still applies.
    bad("EndpointSlice", "test001/extra", "endpoints[1].addresses[0]", "not an IPv4", "
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: extra, namespace: test001, labels: {kubernetes.io/service-name: app-svc-clusterip}}
addressType: IPv4
ports: [{port: 8080}]
endpoints: [{addresses: [10.244.1.50]}, {addresses: [\"fd00::50\"]}]"),
    bad("EndpointSlice", "test001/extra", "endpoints[0].addresses", "no address", "
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: extra, namespace: test001, labels: {kubernetes.io/service-name: app-svc-clusterip}}
addressType: IPv4
ports: [{port: 8080}]
endpoints: [{addresses: []}]"),
    bad("EndpointSlice", "test001/extra", "ports[0].port", "port number", "
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: extra, namespace: test001, labels: {kubernetes.io/service-name: app-svc-clusterip}}
addressType: IPv4
ports: [{port: 0}]
endpoints: [{addresses: [10.244.1.50]}]"),
    bad("EndpointSlice", "test001/extra", "ports[0].protocol", "QUIC", "
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: extra, namespace: test001, labels: {kubernetes.io/service-name: app-svc-clusterip}}
addressType: IPv4
ports: [{port: 8080, protocol: QUIC}]
endpoints: [{addresses: [10.244.1.50]}]"),
    bad("EndpointSlice", "test001/extra", "addressType", "IPX", "
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: extra, namespace: test001, labels: {kubernetes.io/service-name: app-svc-clusterip}}
addressType: IPX
ports: [{port: 8080}]
endpoints: [{addresses: [10.244.1.50]}]"),
    bad("EndpointSlice", "test001/extra", "addressType", "missing", "
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: extra, namespace: test001, labels: {kubernetes.io/service-name: app-svc-clusterip}}
ports: [{port: 8080}]
endpoints: [{addresses: [10.244.1.50]}]"),
    bad("EndpointSlice", "test001/extra", "endpoints[0].conditions.ready", "invalid type", "
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: extra, namespace: test001, labels: {kubernetes.io/service-name: app-svc-clusterip}}
addressType: IPv4
ports: [{port: 8080}]
endpoints: [{addresses: [10.244.1.50], conditions: {ready: maybe}}]"),
    bad("Node", "n-cidr", "spec.podCIDR", "not an address/prefix", "
apiVersion: v1
kind: Node
metadata: {name: n-cidr}
spec: {podCIDR: 10.244.9.0}
status: {addresses: [{type: InternalIP, address: 192.168.100.9}]}"),
    bad("Node", "n-hostbits", "spec.podCIDRs[0]", "host bits", "
apiVersion: v1
kind: Node
metadata: {name: n-hostbits}
spec: {podCIDRs: [10.244.9.1/24]}
status: {addresses: [{type: InternalIP, address: 192.168.100.9}]}"),
    bad("Node", "n-noaddr", "status.addresses", "no IPv4 InternalIP", "
apiVersion: v1
kind: Node
metadata: {name: n-noaddr}
spec: {podCIDR: 10.244.9.0/24}
status: {addresses: [{type: Hostname, address: n-noaddr}]}"),
    bad("Node", "n-badaddr", "status.addresses[0].address", "not an IP", "
apiVersion: v1
kind: Node
metadata: {name: n-badaddr}
status: {addresses: [{type: InternalIP, address: 192.168.100}]}"),
    bad("Node", "n-pubip", "metadata.annotations[flannel.alpha.coreos.com/public-ip]", "not an IPv4", "
apiVersion: v1
kind: Node
metadata: {name: n-pubip, annotations: {flannel.alpha.coreos.com/public-ip: \"fd00::9\"}}
status: {addresses: [{type: InternalIP, address: 192.168.100.9}]}"),
    bad("Node", "n-json", "metadata.annotations[flannel.alpha.coreos.com/backend-data]", "not JSON", "
apiVersion: v1
kind: Node
metadata: {name: n-json, annotations: {flannel.alpha.coreos.com/backend-data: \"{VNI: 1\"}}
status: {addresses: [{type: InternalIP, address: 192.168.100.9}]}"),
    bad("Node", "n-mac", "metadata.annotations[flannel.alpha.coreos.com/backend-data].VtepMAC", "not a MAC", "
apiVersion: v1
kind: Node
metadata: {name: n-mac, annotations: {flannel.alpha.coreos.com/backend-data: '{\"VNI\":1,\"VtepMAC\":\"6e:d4:3a:1c:9b\"}'}}
status: {addresses: [{type: InternalIP, address: 192.168.100.9}]}"),
    bad("Node", "n-calico", "metadata.annotations[projectcalico.org/IPv4Address]", "address/prefix", "
apiVersion: v1
kind: Node
metadata: {name: n-calico, annotations: {projectcalico.org/IPv4Address: 192.168.100.9}}
status: {addresses: [{type: InternalIP, address: 192.168.100.9}]}"),
    bad("Node", "n-tunl", "metadata.annotations[projectcalico.org/IPv4IPIPTunnelAddr]", "not an IP", "
apiVersion: v1
kind: Node
metadata: {name: n-tunl, annotations: {projectcalico.org/IPv4IPIPTunnelAddr: tunl0}}
status: {addresses: [{type: InternalIP, address: 192.168.100.9}]}"),
    bad("Node", "k8s-1", "metadata.name", "duplicate", "
apiVersion: v1
kind: Node
metadata: {name: k8s-1}
status: {addresses: [{type: InternalIP, address: 192.168.100.9}]}"),
];

#[test]
fn every_invalid_object_is_named_with_its_field_and_the_rest_still_applies() {
    let baseline = clean(SEED);
    for case in BAD_CASES {
        let yaml = format!("{SEED}\n---{}\n", case.yaml);
        let (state, problems) = run(&yaml);
        let context = format!(
            "case {}/{} {}: {problems:#?}",
            case.kind, case.object, case.field
        );
        assert_eq!(problems.len(), 1, "{context}");
        let problem = &problems[0];
        assert_eq!(
            (
                problem.severity,
                problem.kind,
                problem.object.as_str(),
                problem.field.as_str()
            ),
            (Severity::Invalid, case.kind, case.object, case.field),
            "{context}"
        );
        assert!(problem.message.contains(case.says), "{context}");
        // The log line names the object and the field.
        let line = problem.to_string();
        assert!(
            line.contains(case.object) && line.contains(case.field),
            "{line}"
        );
        // The invalid object added nothing and removed nothing.
        assert_eq!(state, baseline, "{context}");
    }
}

/// Every way of breaking one field of the seed cluster (wrong type, null, empty, negative,
/// huge, nonsense) must give problems, never a panic, and never lose the objects it did not
/// touch (checked by counting).
#[test]
fn no_input_makes_translation_panic() {
    let documents = crate::k8s::documents(SEED, Format::Yaml).unwrap();
    assert_eq!(documents.len(), 1);
    let replacements = [
        Value::Null,
        Value::from(""),
        Value::from(-1),
        Value::from(70000),
        Value::from(i64::MAX),
        Value::from("x/y:z"),
        Value::from("None"),
        Value::Array(vec![]),
        Value::Object(Default::default()),
        Value::from(true),
    ];
    let mut paths = Vec::new();
    collect_paths(&documents[0], &mut Vec::new(), &mut paths);
    assert!(paths.len() > 150, "only {} paths", paths.len());
    let local = local();
    let mut runs = 0;
    for path in &paths {
        for replacement in &replacements {
            let mut document = documents[0].clone();
            *pointer_mut(&mut document, path) = replacement.clone();
            let text = serde_json::to_string(&document).unwrap();
            let decoded = decode(&text, Format::Json).unwrap();
            let _ = translate(&decoded.objects, &local);
            runs += 1;
        }
    }
    assert_eq!(runs, paths.len() * replacements.len());
}

/// JSON-pointer-like paths of every value in `value` (objects and arrays included).
fn collect_paths(value: &Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    if !prefix.is_empty() {
        out.push(prefix.clone());
    }
    let children: Vec<(String, &Value)> = match value {
        Value::Object(map) => map.iter().map(|(k, v)| (k.clone(), v)).collect(),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| (i.to_string(), v))
            .collect(),
        _ => return,
    };
    for (key, child) in children {
        prefix.push(key);
        collect_paths(child, prefix, out);
        prefix.pop();
    }
}

fn pointer_mut<'a>(value: &'a mut Value, path: &[String]) -> &'a mut Value {
    path.iter().fold(value, |v, key| match v {
        Value::Object(map) => map.get_mut(key).unwrap(),
        Value::Array(items) => &mut items[key.parse::<usize>().unwrap()],
        _ => unreachable!("paths only lead through objects and arrays"),
    })
}
