//! The control-plane source's part of one change: the scenario's services as the Kubernetes
//! objects a cluster would hold (a Service and an EndpointSlice each, decoded by the agent's
//! own decoder), and the states the agent's translator (`dataplane::k8s::Translator`, what both
//! sources run) publishes while one EndpointSlice is replaced and put back, the way a
//! reflector store changes: a new object in the old one's place, every other one the same.
//! So the states the agent applies share exactly the ports the real source would share.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use dataplane::k8s::{self, Format, LocalNode, Objects, Translator};
use dataplane::model::ClusterState;
use serde_json::{json, Value};

use crate::rules::{Proto, Svc};
use crate::scenario::{self, NODE1_IP};

/// node1 as the agent under test sees itself: NodePorts on its uplink address.
fn local() -> LocalNode {
    LocalNode {
        name: "node1".into(),
        addresses: vec![NODE1_IP],
        ..Default::default()
    }
}

/// The published states of `reps` changes (the first state, then `changed` and the original
/// slice in turn) and the source's time for each change: the snapshot (every object's `Arc`
/// cloned, as a store's snapshot is), its translation and the comparison with the last
/// published state.
pub fn states(
    svcs: &[Svc],
    changed: (&Svc, &Svc),
    reps: usize,
) -> Result<(Vec<Arc<ClusterState>>, Vec<Duration>)> {
    let mut objects = objects(svcs)?;
    let slot = svcs
        .iter()
        .position(|s| s == changed.0)
        .context("the changed service is not among the services")?;
    let new_slice = objects_of(changed.1)?.endpoint_slices[0].clone();
    let slices = [objects.endpoint_slices[slot].clone(), new_slice];
    let mut translator = Translator::new();
    let (first, _) = translator.translate(objects.clone(), &local());
    check(&first, svcs)?;
    let mut states = vec![Arc::new(first)];
    let mut times = Vec::new();
    for rep in 0..reps {
        objects.endpoint_slices[slot] = slices[(rep + 1) % 2].clone();
        let t0 = Instant::now();
        let (state, _problems) = translator.translate(objects.clone(), &local());
        let changed = **states.last().expect("the first state") != state;
        times.push(t0.elapsed());
        if !changed {
            bail!("the source saw no change in rep {rep}");
        }
        states.push(Arc::new(state));
    }
    Ok((states, times))
}

/// The translation is the model the other rows write (`scenario::to_model`).
fn check(state: &ClusterState, svcs: &[Svc]) -> Result<()> {
    let mut want: Vec<_> = svcs.iter().map(scenario::to_model).collect();
    want.sort_by(|a, b| a.name.cmp(&b.name));
    let got: Vec<_> = state.services.iter().map(|p| (**p).clone()).collect();
    if got != want {
        bail!("the translated services differ from the scenario's model");
    }
    Ok(())
}

/// Every service's Service and EndpointSlice, in the scenario's order.
fn objects(svcs: &[Svc]) -> Result<Objects> {
    let text: String = svcs.iter().map(|s| manifest(s).to_string()).collect();
    decode(&text, svcs.len())
}

/// The objects of `svc` alone.
fn objects_of(svc: &Svc) -> Result<Objects> {
    decode(&manifest(svc).to_string(), 1)
}

fn decode(text: &str, services: usize) -> Result<Objects> {
    let decoded = k8s::decode(text, Format::Json).map_err(|e| anyhow::anyhow!("{e}"))?;
    let o = decoded.objects;
    if !decoded.problems.is_empty() || o.services.len() != services {
        bail!(
            "the bench's manifests decoded with problems: {:?}",
            decoded.problems
        );
    }
    Ok(o)
}

/// A `kind: List` of the Service and its EndpointSlice, as the API server would hold them.
fn manifest(s: &Svc) -> Value {
    let protocol = match s.proto {
        Proto::Udp => "UDP",
        Proto::Tcp => "TCP",
    };
    let mut port = json!({"name": s.port_name, "port": s.port, "protocol": protocol,
        "targetPort": s.target_port});
    if let Some(np) = s.node_port {
        port["nodePort"] = json!(np);
    }
    let kind = if s.node_port.is_some() {
        "NodePort"
    } else {
        "ClusterIP"
    };
    let meta = |name: String| json!({"name": name, "namespace": s.namespace});
    let mut slice_meta = meta(format!("{}-abcde", s.name));
    slice_meta["labels"] = json!({ k8s::SERVICE_NAME_LABEL: s.name });
    let endpoints: Vec<Value> = s
        .endpoints
        .iter()
        .map(|ip| {
            json!({"addresses": [ip.to_string()], "conditions": {"ready": true},
            "nodeName": "node2"})
        })
        .collect();
    json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Service", "metadata": meta(s.name.clone()),
         "spec": {"type": kind, "clusterIP": s.vip.to_string(), "clusterIPs": [s.vip.to_string()],
                  "ports": [port], "externalTrafficPolicy": "Cluster"}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": slice_meta,
         "addressType": "IPv4",
         "ports": [{"name": s.port_name, "port": s.target_port, "protocol": protocol}],
         "endpoints": endpoints},
    ]})
}
