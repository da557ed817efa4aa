//! A Service's type and the policies all its ports share: traffic policies and session
//! affinity (kube-proxy's reading of spec.type, spec.*TrafficPolicy and spec.sessionAffinity).

use k8s_openapi::api::core::v1::ServiceSpec;

use super::problem::{Problem, Subject};
use crate::model::TrafficPolicy;

/// kube's default spec.sessionAffinityConfig.clientIP.timeoutSeconds (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT_SECS: u32 = 10800;

/// spec.type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ServiceType {
    ClusterIp,
    NodePort,
    LoadBalancer,
    ExternalName,
}

impl ServiceType {
    pub(crate) fn read(spec: &ServiceSpec, subject: &Subject) -> Result<Self, Problem> {
        match spec.type_.as_deref().unwrap_or("ClusterIP") {
            "ClusterIP" => Ok(ServiceType::ClusterIp),
            "NodePort" => Ok(ServiceType::NodePort),
            "LoadBalancer" => Ok(ServiceType::LoadBalancer),
            "ExternalName" => Ok(ServiceType::ExternalName),
            other => Err(subject.invalid("spec.type", format!("unknown Service type {other:?}"))),
        }
    }
}

/// Traffic policies and affinity, shared by all ports of a Service.
pub(crate) struct Policies {
    pub external: TrafficPolicy,
    pub internal: TrafficPolicy,
    pub affinity_timeout_secs: Option<u32>,
}

impl Policies {
    pub(crate) fn read(
        spec: &ServiceSpec,
        service_type: ServiceType,
        subject: &Subject,
    ) -> Result<Self, Problem> {
        let external = traffic_policy(
            spec.external_traffic_policy.as_deref(),
            "spec.externalTrafficPolicy",
            subject,
        )?;
        let internal = traffic_policy(
            spec.internal_traffic_policy.as_deref(),
            "spec.internalTrafficPolicy",
            subject,
        )?;
        // kube-proxy's ExternalPolicyLocal: only a Service reachable from outside has an
        // external policy at all.
        let external_reach = matches!(
            service_type,
            ServiceType::NodePort | ServiceType::LoadBalancer
        ) || spec
            .external_ips
            .as_ref()
            .is_some_and(|ips| !ips.is_empty());
        Ok(Policies {
            external: if external_reach {
                external
            } else {
                TrafficPolicy::Cluster
            },
            internal,
            affinity_timeout_secs: affinity(spec, subject)?,
        })
    }
}

fn traffic_policy(
    value: Option<&str>,
    field: &str,
    subject: &Subject,
) -> Result<TrafficPolicy, Problem> {
    match value.unwrap_or("Cluster") {
        "Cluster" => Ok(TrafficPolicy::Cluster),
        "Local" => Ok(TrafficPolicy::Local),
        other => Err(subject.invalid(
            field,
            format!("unknown traffic policy {other:?} (Cluster or Local)"),
        )),
    }
}

/// sessionAffinity ClientIP -> its timeout (the API's range is 1..=86400 seconds).
fn affinity(spec: &ServiceSpec, subject: &Subject) -> Result<Option<u32>, Problem> {
    match spec.session_affinity.as_deref().unwrap_or("None") {
        "None" => Ok(None),
        "ClientIP" => {
            let timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            match timeout {
                None => Ok(Some(DEFAULT_AFFINITY_TIMEOUT_SECS)),
                Some(secs @ 1..=86400) => Ok(Some(secs as u32)),
                Some(secs) => Err(subject.invalid(
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                    format!("{secs} is out of range (1-86400)"),
                )),
            }
        }
        other => Err(subject.invalid(
            "spec.sessionAffinity",
            format!("unknown session affinity {other:?} (None or ClientIP)"),
        )),
    }
}
