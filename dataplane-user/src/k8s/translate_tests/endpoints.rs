//! EndpointSlices: ports matched by name and protocol, several slices, conditions.

use super::*;

const MULTI_PORT: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.10.10
  ports:
  - {name: http, port: 80, targetPort: web}
  - {name: metrics, port: 9090, targetPort: metrics}
  - {name: dns, port: 53, protocol: UDP, targetPort: dns}
  - {name: dns-tcp, port: 53, protocol: TCP, targetPort: dns-tcp}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports:
- {name: http, port: 8080, protocol: TCP}
- {name: metrics, port: 9102, protocol: TCP}
- {name: dns, port: 5353, protocol: UDP}
# Same name as the UDP port but TCP: must not serve the UDP service port.
- {name: dns, port: 5454, protocol: TCP}
endpoints:
- addresses: [10.244.1.5]
  nodeName: k8s-2
"#;

#[test]
fn multi_port_service_matches_slice_ports_by_name_and_protocol() {
    let state = clean(MULTI_PORT);
    assert_eq!(state.services.len(), 4);
    let target = |port_name: &str| {
        port(&state, "shop", "web", port_name)
            .backends
            .iter()
            .map(|b| b.port)
            .collect::<Vec<_>>()
    };
    assert_eq!(target("http"), [8080]);
    assert_eq!(target("metrics"), [9102]);
    assert_eq!(target("dns"), [5353]);
    // The slice has no TCP port named dns-tcp: no backends (kube-proxy would reject traffic).
    assert_eq!(target("dns-tcp"), Vec::<u16>::new());
    let dns = port(&state, "shop", "web", "dns");
    assert_eq!(
        dns.frontends,
        [Frontend {
            ip: ip("10.96.10.10"),
            port: 53,
            protocol: Protocol::Udp,
            kind: FrontendKind::ClusterIp
        }]
    );
    // Sorted by port name.
    let names: Vec<_> = state
        .services
        .iter()
        .map(|s| s.name.port.as_str())
        .collect();
    assert_eq!(names, ["dns", "dns-tcp", "http", "metrics"]);
}

const SEVERAL_SLICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: api, namespace: prod}
spec:
  clusterIP: 10.96.20.20
  ports: [{name: https, port: 443}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-1, namespace: prod, labels: {kubernetes.io/service-name: api}}
addressType: IPv4
ports: [{name: https, port: 8443}]
endpoints:
- {addresses: [10.244.3.1], nodeName: k8s-3}
- {addresses: [10.244.1.1], nodeName: k8s-1}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-2, namespace: prod, labels: {kubernetes.io/service-name: api}}
addressType: IPv4
ports: [{name: https, port: 8443}]
endpoints:
- {addresses: [10.244.2.1], nodeName: k8s-2}
# Also in api-1, with another node name: listed once, and the local copy wins as in kube-proxy.
- {addresses: [10.244.1.1], nodeName: k8s-2}
---
# Same service name, other namespace: not this service's.
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-x, namespace: staging, labels: {kubernetes.io/service-name: api}}
addressType: IPv4
ports: [{name: https, port: 8443}]
endpoints: [{addresses: [10.244.9.9]}]
---
# No service-name label: nobody's.
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: stray, namespace: prod}
addressType: IPv4
ports: [{name: https, port: 8443}]
endpoints: [{addresses: [10.244.8.8]}]
---
# The slice of a headless Service, which kube-proxy's selector drops.
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-h, namespace: prod, labels: {kubernetes.io/service-name: api, service.kubernetes.io/headless: ""}}
addressType: IPv4
ports: [{name: https, port: 8443}]
endpoints: [{addresses: [10.244.7.7]}]
---
# FQDN slices are ignored by kube-proxy.
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-fqdn, namespace: prod, labels: {kubernetes.io/service-name: api}}
addressType: FQDN
ports: [{name: https, port: 8443}]
endpoints: [{addresses: [api.example.com]}]
"#;

#[test]
fn endpoints_come_from_every_slice_of_the_service() {
    let state = clean(SEVERAL_SLICES);
    let backends = &port(&state, "prod", "api", "https").backends;
    assert_eq!(
        backends,
        &vec![
            ready("10.244.1.1", 8443, "k8s-2"),
            ready("10.244.2.1", 8443, "k8s-2"),
            ready("10.244.3.1", 8443, "k8s-3")
        ]
    );
}

const CONDITIONS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: rolling, namespace: c}
spec:
  clusterIP: 10.96.60.1
  ports: [{port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: rolling-1, namespace: c, labels: {kubernetes.io/service-name: rolling}}
addressType: IPv4
ports: [{port: 8080}]
endpoints:
# No conditions at all: ready, serving, not terminating.
- {addresses: [10.244.1.1]}
# Terminating but still serving (graceful shutdown).
- {addresses: [10.244.1.2], conditions: {ready: false, serving: true, terminating: true}}
# Not ready, serving absent: serving follows ready.
- {addresses: [10.244.1.3], conditions: {ready: false}}
# Terminating and done serving.
- {addresses: [10.244.1.4], conditions: {ready: false, serving: false, terminating: true}}
"#;

#[test]
fn endpoint_conditions_use_the_api_defaults() {
    let state = clean(CONDITIONS);
    let flags: Vec<_> = port(&state, "c", "rolling", "")
        .backends
        .iter()
        .map(|b| {
            (
                b.ip.octets()[3],
                b.ready,
                b.serving,
                b.terminating,
                b.node_name.clone(),
            )
        })
        .collect();
    assert_eq!(
        flags,
        [
            (1, true, true, false, None),
            (2, false, true, true, None),
            (3, false, false, false, None),
            (4, false, false, true, None)
        ]
    );
}
