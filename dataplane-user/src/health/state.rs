//! What the health endpoints answer from, and kube-proxy's rules for it
//! (proxy_health.go, service_health.go).

use std::{
    borrow::Borrow,
    collections::{BTreeSet, HashMap},
    sync::Mutex,
    time::{Duration, Instant, SystemTime},
};

use super::http::Answer;
use crate::model::{ServicePort, ServicePortName};

/// How long a state from the source may wait to be applied before the agent counts as
/// unhealthy: kube-proxy's 2 x its default --iptables-sync-period (30 s).
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(60);

/// (namespace, name) of a Service.
pub type ServiceName = (String, String);

/// Shared between the agent loop (writer) and the health servers (readers).
#[derive(Debug)]
pub struct HealthState {
    inner: Mutex<Inner>,
    timeout: Duration,
}

#[derive(Debug)]
struct Inner {
    last_updated: Option<SystemTime>,
    /// When the oldest state not applied yet arrived.
    oldest_pending: Option<Instant>,
    /// Not being deleted (true until a Node object says otherwise, as kube-proxy starts).
    node_eligible: bool,
    /// Local ready endpoints (distinct addresses) per Service with a health-check port.
    local_endpoints: HashMap<ServiceName, usize>,
}

impl Default for HealthState {
    fn default() -> Self {
        HealthState::with_timeout(HEALTH_TIMEOUT)
    }
}

impl HealthState {
    pub fn with_timeout(timeout: Duration) -> Self {
        HealthState {
            inner: Mutex::new(Inner {
                last_updated: None,
                oldest_pending: None,
                node_eligible: true,
                local_endpoints: HashMap::new(),
            }),
            timeout,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panicked writer left plain data behind: still readable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new state arrived from the source (kube-proxy's QueuedUpdate).
    pub fn queued(&self, now: Instant) {
        let mut inner = self.lock();
        inner.oldest_pending.get_or_insert(now);
    }

    /// Every service port of the state was applied (kube-proxy's Updated); `services` and
    /// `node_deleting` are that state's.
    pub fn updated(
        &self,
        services: &[impl Borrow<ServicePort>],
        node_deleting: bool,
        node_name: &str,
    ) {
        let mut inner = self.lock();
        inner.oldest_pending = None;
        inner.last_updated = Some(SystemTime::now());
        inner.node_eligible = !node_deleting;
        inner.local_endpoints = local_ready_endpoints(services, node_name);
    }

    /// Only the node's deletion marks and endpoint counts changed (an incomplete apply still
    /// reports them: they describe the cluster, not the maps).
    pub fn observe(
        &self,
        services: &[impl Borrow<ServicePort>],
        node_deleting: bool,
        node_name: &str,
    ) {
        let mut inner = self.lock();
        inner.node_eligible = !node_deleting;
        inner.local_endpoints = local_ready_endpoints(services, node_name);
    }

    /// kube-proxy's isHealthy: no applied-late state.
    pub fn is_healthy(&self, now: Instant) -> bool {
        let inner = self.lock();
        inner
            .oldest_pending
            .is_none_or(|since| now.duration_since(since) < self.timeout)
    }

    pub fn node_eligible(&self) -> bool {
        self.lock().node_eligible
    }

    /// `/healthz`: healthy and the node eligible; kube-proxy's JSON body.
    pub fn healthz(&self) -> Answer {
        let healthy = self.is_healthy(Instant::now());
        let eligible = self.node_eligible();
        let body = format!(
            r#"{{"lastUpdated": {},"currentTime": {}, "nodeEligible": {eligible}}}"#,
            self.last_updated_json(healthy),
            json_time(SystemTime::now())
        );
        Answer::json(healthy && eligible, body)
    }

    /// `/livez`: healthy, whatever the node's state.
    pub fn livez(&self) -> Answer {
        let healthy = self.is_healthy(Instant::now());
        let body = format!(
            r#"{{"lastUpdated": {},"currentTime": {}}}"#,
            self.last_updated_json(healthy),
            json_time(SystemTime::now())
        );
        Answer::json(healthy, body)
    }

    /// As kube-proxy: a healthy server reports "now" as its last update (older releases'
    /// semantics), an unhealthy one the real time.
    fn last_updated_json(&self, healthy: bool) -> String {
        let last = if healthy {
            Some(SystemTime::now())
        } else {
            self.lock().last_updated
        };
        last.map(json_time).unwrap_or_else(|| "null".into())
    }

    /// A Service's health-check answer: 200 with at least one local ready endpoint while the
    /// agent is healthy, else 503 (kube-proxy's hcHandler).
    pub fn service(&self, name: &ServiceName) -> Answer {
        let count = self.lock().local_endpoints.get(name).copied().unwrap_or(0);
        let healthy = self.is_healthy(Instant::now());
        let body = format!(
            "{{\n\t\"service\": {{\n\t\t\"namespace\": {},\n\t\t\"name\": {}\n\t}},\n\t\"localEndpoints\": {count},\n\t\"serviceProxyHealthy\": {healthy}\n}}",
            json_string(&name.0),
            json_string(&name.1)
        );
        Answer::json(count != 0 && healthy, body)
    }
}

/// Services with a health-check port -> their distinct local ready endpoint addresses, across
/// ports (kube-proxy's LocalReadyEndpoints: 10.0.0.1:80 and :443 are one endpoint; terminating
/// endpoints do not count, so a draining node fails the check).
pub fn local_ready_endpoints(
    services: &[impl Borrow<ServicePort>],
    node: &str,
) -> HashMap<ServiceName, usize> {
    let mut ips: HashMap<ServiceName, BTreeSet<std::net::Ipv4Addr>> = HashMap::new();
    for svc in services
        .iter()
        .map(Borrow::borrow)
        .filter(|s| s.health_check_node_port.is_some())
    {
        let entry = ips.entry(service_name(&svc.name)).or_default();
        entry.extend(
            svc.backends
                .iter()
                .filter(|b| b.ready && b.node_name.as_deref() == Some(node))
                .map(|b| b.ip),
        );
    }
    ips.into_iter().map(|(k, v)| (k, v.len())).collect()
}

pub(crate) fn service_name(name: &ServicePortName) -> ServiceName {
    (name.namespace.clone(), name.name.clone())
}

/// RFC 3339 UTC with nanoseconds, quoted (Go's %q of a time.Time prints a similar value).
fn json_time(t: SystemTime) -> String {
    match jiff::Timestamp::try_from(t) {
        Ok(ts) => format!("\"{ts:.9}\""),
        Err(_) => "null".into(),
    }
}

fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Backend, TrafficPolicy};

    fn svc(name: &str, port: &str, hc: Option<u16>, backends: &[(u8, &str, bool)]) -> ServicePort {
        ServicePort {
            name: ServicePortName {
                namespace: "ns".into(),
                name: name.into(),
                port: port.into(),
            },
            frontends: vec![],
            backends: backends
                .iter()
                .map(|&(n, node, ready)| Backend {
                    ip: std::net::Ipv4Addr::new(10, 0, 0, n),
                    port: 80,
                    node_name: Some(node.into()),
                    ready,
                    serving: true,
                    terminating: !ready,
                    hints: Default::default(),
                })
                .collect(),
            external_policy: TrafficPolicy::Local,
            internal_policy: TrafficPolicy::Cluster,
            affinity_timeout_secs: None,
            health_check_node_port: hc,
            source_ranges: vec![],
        }
    }

    #[test]
    fn local_ready_endpoints_are_distinct_addresses_across_ports() {
        let services = [
            svc(
                "lb",
                "http",
                Some(32000),
                &[(1, "n1", true), (2, "n2", true)],
            ),
            svc(
                "lb",
                "https",
                Some(32000),
                &[(1, "n1", true), (3, "n1", false)],
            ),
            svc("plain", "", None, &[(4, "n1", true)]),
        ];
        let counts = local_ready_endpoints(&services, "n1");
        assert_eq!(counts.len(), 1, "only Services with a health-check port");
        assert_eq!(counts[&("ns".into(), "lb".into())], 1);
    }

    #[test]
    fn service_check_needs_a_local_ready_endpoint_and_a_healthy_agent() {
        let state = HealthState::with_timeout(Duration::from_millis(50));
        let name: ServiceName = ("ns".into(), "lb".into());
        assert_eq!(state.service(&name).status, 503, "unknown: no endpoints");
        state.updated(
            &[svc("lb", "", Some(32000), &[(1, "n1", true)])],
            false,
            "n1",
        );
        let ok = state.service(&name);
        assert_eq!(ok.status, 200);
        assert!(ok.body.contains("\"localEndpoints\": 1"), "{}", ok.body);
        state.updated(
            &[svc("lb", "", Some(32000), &[(1, "n1", false)])],
            false,
            "n1",
        );
        assert_eq!(state.service(&name).status, 503, "terminating only: fail");
        // A state applied too late makes every check fail.
        state.updated(
            &[svc("lb", "", Some(32000), &[(1, "n1", true)])],
            false,
            "n1",
        );
        state.queued(Instant::now());
        assert_eq!(state.service(&name).status, 200, "pending, not late yet");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(state.service(&name).status, 503);
        assert_eq!(state.livez().status, 503);
        assert!(state
            .service(&name)
            .body
            .contains("\"serviceProxyHealthy\": false"));
    }

    #[test]
    fn healthz_fails_while_the_node_is_deleted_livez_does_not() {
        let state = HealthState::default();
        assert_eq!((state.healthz().status, state.livez().status), (200, 200));
        state.updated(&[] as &[ServicePort], true, "n1");
        let h = state.healthz();
        assert_eq!(h.status, 503);
        assert!(h.body.contains("\"nodeEligible\": false"), "{}", h.body);
        assert_eq!(state.livez().status, 200);
        state.observe(&[] as &[ServicePort], false, "n1");
        assert_eq!(state.healthz().status, 200);
    }

    #[test]
    fn times_are_rfc3339() {
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_767_225_600, 5);
        assert_eq!(json_time(t), "\"2026-01-01T00:00:00.000000005Z\"");
    }
}
