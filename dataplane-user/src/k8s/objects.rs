//! The Kubernetes objects a source hands to [`translate`](super::translate).

use std::sync::Arc;

use k8s_openapi::{
    api::{
        core::v1::{Node, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

/// Services (and their slices) with this label belong to another proxy: kube-proxy's informers
/// select `!service.kubernetes.io/service-proxy-name`, and so do ours.
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// The endpoints controller's mark on the slices of headless Services; kube-proxy's informers
/// select it away (for Services too: they share the selector).
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";

/// The raw objects one translation reads: what the API server's stores or the manifest files
/// hold at one point in time. `Arc`s because the kube-rs stores hand out `Arc`s and a sync must
/// not deep-copy 10,000 services.
#[derive(Clone, Debug, Default)]
pub struct Objects {
    pub services: Vec<Arc<Service>>,
    /// discovery.k8s.io/v1 EndpointSlices.
    pub endpoint_slices: Vec<Arc<EndpointSlice>>,
    pub nodes: Vec<Arc<Node>>,
}

impl Objects {
    /// Appends `other`'s objects (e.g. the next manifest file's).
    pub fn extend(&mut self, other: &Objects) {
        self.services.extend(other.services.iter().cloned());
        self.endpoint_slices
            .extend(other.endpoint_slices.iter().cloned());
        self.nodes.extend(other.nodes.iter().cloned());
    }

    /// Number of objects of every kind together.
    pub fn len(&self) -> usize {
        self.services.len() + self.endpoint_slices.len() + self.nodes.len()
    }

    /// True if there are no objects at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// "namespace/name" of a namespaced object, as logs and problems name it. A missing namespace
/// means "default" (what `kubectl apply` would use); a missing name shows as "<unnamed>".
pub(crate) fn namespaced_name(meta: &ObjectMeta) -> String {
    format!(
        "{}/{}",
        namespace(meta),
        meta.name.as_deref().unwrap_or("<unnamed>")
    )
}

/// metadata.namespace, defaulting to "default".
pub(crate) fn namespace(meta: &ObjectMeta) -> &str {
    meta.namespace
        .as_deref()
        .filter(|ns| !ns.is_empty())
        .unwrap_or("default")
}

/// True for objects kube-proxy's label selector excludes (see [`SERVICE_PROXY_NAME_LABEL`]).
pub(crate) fn not_proxied(meta: &ObjectMeta) -> bool {
    label(meta, SERVICE_PROXY_NAME_LABEL).is_some() || label(meta, HEADLESS_LABEL).is_some()
}

/// metadata.labels[key], if present.
pub(crate) fn label<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.labels.as_ref()?.get(key).map(String::as_str)
}

/// metadata.annotations[key], if present.
pub(crate) fn annotation<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}
