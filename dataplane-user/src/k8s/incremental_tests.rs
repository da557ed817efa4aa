//! The incremental translation against the reference one: over sequences of changes (objects
//! of every kind replaced, added, removed, duplicated, reordered, made invalid; the node's
//! addresses and zone changed) [`Translator`] gives exactly what [`translate`] gives, and the
//! ports a change did not touch are the previous state's own.

use std::sync::Arc;

use k8s_openapi::api::{
    core::v1::{Node, Service, Taint},
    discovery::v1::EndpointSlice,
};

use super::{
    decode, translate, Format, LocalNode, NodePortAddresses, Objects, Translator,
    SERVICE_NAME_LABEL, SERVICE_PROXY_NAME_LABEL, TO_BE_DELETED_TAINT, ZONE_LABEL,
};
use crate::{model::ClusterState, services::ServiceDelta};
use dataplane_lab::manifests::{Endpoint, ServiceManifest};

const SEED: &str = include_str!("testdata/seed.yaml");

/// The seed cluster plus `extra` generated Services with their slices.
fn cluster(extra: usize) -> Objects {
    let mut objects = decode(SEED, Format::Yaml).unwrap().objects;
    for i in 0..extra {
        let manifest = ServiceManifest {
            namespace: "gen".into(),
            name: format!("svc-{i}"),
            cluster_ip: format!("10.96.1.{}", i + 1).parse().unwrap(),
            port: 80,
            target_port: 8080,
            protocol: "TCP".into(),
            node_port: (i % 3 == 0).then_some(30100 + i as u16),
            endpoints: (0..3)
                .map(|j| Endpoint {
                    ip: format!("10.244.{}.{}", j + 1, i + 2).parse().unwrap(),
                    node: format!("k8s-{}", j + 1),
                })
                .collect(),
        };
        objects.extend(&decode(&manifest.to_yaml(), Format::Yaml).unwrap().objects);
    }
    objects
}

fn local() -> LocalNode {
    LocalNode {
        name: "k8s-2".into(),
        addresses: vec!["192.168.100.102".parse().unwrap()],
        ..Default::default()
    }
}

/// A small deterministic generator (xorshift64).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }
}

/// A changed copy of a Service: `how` picks the change.
fn service_variant(s: &Service, how: usize) -> Service {
    let mut s = s.clone();
    let spec = s.spec.get_or_insert_with(Default::default);
    match how % 8 {
        0 => spec.ports.get_or_insert_with(Vec::new)[0].port += 1,
        1 => (spec.cluster_ip, spec.cluster_ips) = (Some("None".into()), None),
        2 => spec.ports.get_or_insert_with(Vec::new)[0].port = 70000,
        3 => label(&mut s.metadata.labels, SERVICE_PROXY_NAME_LABEL, "other"),
        4 => spec.external_ips = Some(vec!["203.0.113.7".into()]),
        5 => s.metadata.name = s.metadata.name.map(|n| format!("{n}-b")),
        6 => s.metadata.name = None,
        _ => s.metadata.name = Some("a/b".into()),
    }
    s
}

/// A changed copy of an EndpointSlice.
fn slice_variant(e: &EndpointSlice, how: usize, other_service: &str) -> EndpointSlice {
    let mut e = e.clone();
    match how % 8 {
        0 => {
            let conditions = e.endpoints[0]
                .conditions
                .get_or_insert_with(Default::default);
            conditions.ready = Some(!conditions.ready.unwrap_or(true));
        }
        1 => drop(e.endpoints.pop()),
        2 => label(&mut e.metadata.labels, SERVICE_NAME_LABEL, other_service),
        3 => e.address_type = "IPv6".into(),
        4 => e.endpoints[0].addresses = vec!["bogus".into()],
        5 => e.metadata.name = e.metadata.name.map(|n| format!("{n}-2")),
        6 => drop(
            e.metadata
                .labels
                .as_mut()
                .map(|l| l.remove(SERVICE_NAME_LABEL)),
        ),
        _ => e.endpoints[0].node_name = Some("k8s-2".into()),
    }
    e
}

/// A changed copy of a Node (this node's zone and deletion mark matter to the Services).
fn node_variant(n: &Node, how: usize) -> Node {
    let mut n = n.clone();
    match how % 3 {
        0 => label(
            &mut n.metadata.labels,
            ZONE_LABEL,
            &format!("zone-{}", how % 2),
        ),
        1 => {
            n.spec.get_or_insert_with(Default::default).taints = Some(vec![Taint {
                key: TO_BE_DELETED_TAINT.into(),
                effect: "NoSchedule".into(),
                ..Default::default()
            }])
        }
        _ => n.metadata.name = Some(format!("k8s-{}", how % 4)),
    }
    n
}

fn label(labels: &mut Option<std::collections::BTreeMap<String, String>>, key: &str, value: &str) {
    labels
        .get_or_insert_with(Default::default)
        .insert(key.into(), value.into());
}

/// One random change of `objects` (or of `local`), picked by `rng` from variants of `pool`'s:
/// mostly updates in place (a new object for a name, as a store sees them), some additions,
/// removals and duplicates.
fn mutate(objects: &mut Objects, local: &mut LocalNode, pool: &Objects, rng: &mut Rng) {
    let how = rng.below(1000);
    let svc = &pool.services[rng.below(pool.services.len())];
    let slice = &pool.endpoint_slices[rng.below(pool.endpoint_slices.len())];
    let node = &pool.nodes[rng.below(pool.nodes.len())];
    let other = svc.metadata.name.clone().unwrap_or_default();
    match rng.below(26) {
        0..=4 => update(&mut objects.services, svc, service_variant(svc, how), rng),
        5..=11 => update(
            &mut objects.endpoint_slices,
            slice,
            slice_variant(slice, how, &other),
            rng,
        ),
        12 | 13 => update(&mut objects.nodes, node, node_variant(node, how), rng),
        // Back to the pool's own object.
        14 => update(&mut objects.services, svc, (**svc).clone(), rng),
        15 | 16 => update(&mut objects.endpoint_slices, slice, (**slice).clone(), rng),
        17 => drop(take(&mut objects.services, rng)),
        18 | 19 => drop(take(&mut objects.endpoint_slices, rng)),
        20 => objects.endpoint_slices.reverse(),
        // A second object of one name (a manifest listing it twice).
        21 => insert(&mut objects.endpoint_slices, slice.clone(), rng),
        // The odd names go (duplicates, renamed and unnamed objects).
        22 | 23 => {
            only_named_as(&mut objects.services, &pool.services);
            only_named_as(&mut objects.endpoint_slices, &pool.endpoint_slices);
        }
        _ => {
            local.addresses = match how % 3 {
                0 => vec!["192.168.100.102".parse().unwrap()],
                1 => vec![
                    "192.168.100.102".parse().unwrap(),
                    "10.0.0.5".parse().unwrap(),
                ],
                _ => vec![],
            };
            local.nodeport_addresses = if how.is_multiple_of(2) {
                NodePortAddresses::All
            } else {
                NodePortAddresses::Primary
            };
        }
    }
}

fn name<K: kube::Resource>(o: &K) -> (Option<String>, Option<String>) {
    (o.meta().namespace.clone(), o.meta().name.clone())
}

/// `new` in the place of the object named as `original` (added if there is none).
fn update<K: kube::Resource>(objects: &mut Vec<Arc<K>>, original: &K, new: K, rng: &mut Rng) {
    match objects.iter().position(|o| name(&**o) == name(original)) {
        Some(i) => objects[i] = Arc::new(new),
        None => insert(objects, Arc::new(new), rng),
    }
}

/// Keeps the first object of each name `pool` has, and no other.
fn only_named_as<K: kube::Resource>(objects: &mut Vec<Arc<K>>, pool: &[Arc<K>]) {
    let mut wanted: std::collections::HashSet<_> = pool.iter().map(|o| name(&**o)).collect();
    objects.retain(|o| wanted.remove(&name(&**o)));
}

fn insert<T>(objects: &mut Vec<Arc<T>>, new: Arc<T>, rng: &mut Rng) {
    objects.insert(rng.below(objects.len() + 1), new);
}

fn take<T>(objects: &mut Vec<Arc<T>>, rng: &mut Rng) -> Option<Arc<T>> {
    (!objects.is_empty()).then(|| objects.remove(rng.below(objects.len())))
}

#[test]
fn every_change_translates_as_the_reference_does() {
    let pool = cluster(6);
    for seed in 1..=4u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let (mut objects, mut local) = (pool.clone(), local());
        let mut translator = Translator::new();
        for step in 0..600 {
            let (got, got_problems) = translator.translate(objects.clone(), &local);
            let (want, want_problems) = translate(&objects, &local);
            assert_eq!(got, want, "seed {seed} step {step}");
            assert_eq!(got_problems, want_problems, "seed {seed} step {step}");
            mutate(&mut objects, &mut local, &pool, &mut rng);
        }
        // Each path taken often enough to have been compared.
        let paths = translator.paths();
        assert!(
            paths.incremental > 200 && paths.rebuilt > 20 && paths.reference > 20,
            "seed {seed}: {paths:?}"
        );
    }
}

/// Ports of `b` that are `a`'s own `Arc`s.
fn shared(a: &ClusterState, b: &ClusterState) -> usize {
    let ptrs: std::collections::HashSet<_> = a.services.iter().map(Arc::as_ptr).collect();
    b.services
        .iter()
        .filter(|p| ptrs.contains(&Arc::as_ptr(p)))
        .count()
}

#[test]
fn unchanged_ports_are_the_previous_states() {
    let objects = cluster(40);
    let mut translator = Translator::new();
    let (a, _) = translator.translate(objects.clone(), &local());
    let ports = a.services.len();
    // One endpoint of one slice no longer ready: a new object in the slice's place.
    let mut changed = objects.clone();
    let i = changed.endpoint_slices.len() - 5;
    changed.endpoint_slices[i] = Arc::new(slice_variant(&changed.endpoint_slices[i], 0, ""));
    let (b, _) = translator.translate(changed, &local());
    assert_eq!(shared(&a, &b), ports - 1);
    assert_eq!(ServiceDelta::of(&a.services, &b.services).len(), 1);
    // The same snapshot again: the same state.
    let (c, _) = translator.translate(translator.objects().clone(), &local());
    assert_eq!(shared(&b, &c), ports);
    // Every object decoded again (new `Arc`s, the original slice back): the equal ports are
    // still shared, by value.
    let (d, _) = translator.translate(cluster(40), &local());
    assert_eq!(shared(&b, &d), ports - 1);
    assert_eq!(d, a);
}
