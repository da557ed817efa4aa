//! `SERVICE_NAMES_V1`: frontend -> `namespace/name:port`, so that `dataplane monitor` and
//! `dataplane services`, in other processes, can name what the service maps only know as
//! addresses. No program reads it: the agent creates it from user space (it is not in the
//! object), pins it beside the others, and writes it after each sync, diffed against what it
//! holds: one update per frontend whose Service changed, none for endpoint changes.

use std::{
    borrow::Borrow,
    collections::{BTreeMap, HashMap},
    net::SocketAddrV4,
    path::Path,
};

use anyhow::{Context, Result};
use aya::maps::{HashMap as BpfHash, Map, MapData};
use dataplane_common::{
    lb::{ServiceKey, ServiceName, MAX_FRONTENDS},
    map_names,
};

use super::{
    spec::{key_order, service_key},
    ServiceDelta,
};
use crate::model::ServicePort;

const BPF_MAP_TYPE_HASH: u32 = 1;
/// Entries take memory only once written (65,536 x 144 bytes preallocated would be 9 MiB).
const BPF_F_NO_PREALLOC: u32 = 1;

type Key = (std::net::Ipv4Addr, u16, u8);

/// The pinned map and what it holds.
pub struct ServiceNames {
    map: BpfHash<MapData, ServiceKey, ServiceName>,
    written: BTreeMap<Key, (ServiceKey, String)>,
    /// A write failed: the next sync is a full one (which retries it).
    dirty: bool,
}

impl ServiceNames {
    /// Opens the map pinned in `pin_dir` (adopting its entries), or creates and pins it.
    pub fn open_or_create(pin_dir: &Path) -> Result<ServiceNames> {
        let path = pin_dir.join(map_names::SERVICE_NAMES);
        let data = if path.exists() {
            MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?
        } else {
            let obj = aya_obj::Map::new_from_params(
                BPF_MAP_TYPE_HASH,
                size_of::<ServiceKey>() as u32,
                size_of::<ServiceName>() as u32,
                MAX_FRONTENDS,
                BPF_F_NO_PREALLOC,
            );
            let data = MapData::create(obj, map_names::SERVICE_NAMES, None)
                .with_context(|| format!("creating {}", map_names::SERVICE_NAMES))?;
            data.pin(&path)
                .with_context(|| format!("pinning {}", path.display()))?;
            data
        };
        let map = BpfHash::try_from(Map::HashMap(data))
            .with_context(|| format!("{} does not have the expected layout", path.display()))?;
        let mut written = BTreeMap::new();
        for entry in map.iter() {
            let (k, v): (ServiceKey, ServiceName) =
                entry.with_context(|| format!("reading {}", path.display()))?;
            written.insert(key_order(&k), (k, v.as_str().unwrap_or("").to_string()));
        }
        Ok(ServiceNames {
            map,
            written,
            dirty: false,
        })
    }

    /// Makes the map name exactly the frontends of `services`: changed names first, then the
    /// removals. Returns (written, removed).
    pub fn sync(&mut self, services: &[impl Borrow<ServicePort>]) -> Result<(usize, usize)> {
        self.dirty = true;
        let done = self.sync_all(services);
        self.dirty = done.is_err();
        done
    }

    fn sync_all(&mut self, services: &[impl Borrow<ServicePort>]) -> Result<(usize, usize)> {
        let desired = desired(services);
        let mut written = 0;
        for (order, (key, name)) in &desired {
            if self.written.get(order).map(|(_, n)| n) == Some(name) {
                continue;
            }
            self.map
                .insert(key, ServiceName::new(name), 0)
                .with_context(|| format!("writing {name} to {}", map_names::SERVICE_NAMES))?;
            self.written.insert(*order, (*key, name.clone()));
            written += 1;
        }
        let stale: Vec<Key> = self
            .written
            .keys()
            .filter(|k| !desired.contains_key(k))
            .copied()
            .collect();
        for order in &stale {
            if let Some((key, _)) = self.written.remove(order) {
                // Already gone (a cleanup) is what we wanted.
                let _ = self.map.remove(&key);
            }
        }
        Ok((written, stale.len()))
    }
}

impl ServiceNames {
    /// [`ServiceNames::sync`] of only what `delta` changed (the agent's per-change path): the
    /// changed ports' frontends are (re)named, frontends of removed or changed ports that no
    /// longer list them are removed when they still carry that port's name. Equal to the full
    /// sync except for a frontend two ports claim, which keeps the last name written (a label;
    /// the next full sync settles it). After a failed write it runs the full sync of
    /// `services` (the whole state), which retries what failed.
    pub fn sync_delta(
        &mut self,
        services: &[impl Borrow<ServicePort>],
        delta: &ServiceDelta,
    ) -> Result<(usize, usize)> {
        if self.dirty {
            return self.sync(services);
        }
        let done = self.apply_delta(delta);
        self.dirty = done.is_err();
        done
    }

    fn apply_delta(&mut self, delta: &ServiceDelta) -> Result<(usize, usize)> {
        let mut written = 0;
        for (_, after) in &delta.changes {
            let Some(svc) = after else { continue };
            let name = svc.name.to_string();
            for fe in &svc.frontends {
                let key = service_key(fe);
                let order = key_order(&key);
                if self.written.get(&order).map(|(_, n)| n) == Some(&name) {
                    continue;
                }
                self.map
                    .insert(key, ServiceName::new(&name), 0)
                    .with_context(|| format!("writing {name} to {}", map_names::SERVICE_NAMES))?;
                self.written.insert(order, (key, name.clone()));
                written += 1;
            }
        }
        let mut removed = 0;
        for (before, after) in &delta.changes {
            let Some(old) = before else { continue };
            let name = old.name.to_string();
            let kept = |k: &ServiceKey| {
                after.is_some_and(|a| a.frontends.iter().any(|f| service_key(f) == *k))
            };
            for fe in &old.frontends {
                let key = service_key(fe);
                let order = key_order(&key);
                if kept(&key) || self.written.get(&order).map(|(_, n)| n) != Some(&name) {
                    continue;
                }
                self.written.remove(&order);
                // Already gone (a cleanup) is what we wanted.
                let _ = self.map.remove(&key);
                removed += 1;
            }
        }
        Ok((written, removed))
    }
}

fn desired(services: &[impl Borrow<ServicePort>]) -> BTreeMap<Key, (ServiceKey, String)> {
    let mut out = BTreeMap::new();
    for svc in services.iter().map(Borrow::borrow) {
        let name = svc.name.to_string();
        for fe in &svc.frontends {
            let key = service_key(fe);
            out.insert(key_order(&key), (key, name.clone()));
        }
    }
    out
}

/// Every name in the map, by (address, port, protocol).
pub(crate) fn read(data: MapData) -> Result<HashMap<Key, String>> {
    let map = BpfHash::<_, ServiceKey, ServiceName>::try_from(Map::HashMap(data))?;
    Ok(map
        .iter()
        .filter_map(Result::ok)
        .filter_map(|(k, v)| Some((key_order(&k), v.as_str()?.to_string())))
        .collect())
}

/// What the map pinned in `pin_dir` names, by (frontend, protocol); empty when there is none
/// (an agent of an older version, or none running yet).
pub fn read_names(pin_dir: &Path) -> HashMap<(SocketAddrV4, u8), String> {
    MapData::from_pin(pin_dir.join(map_names::SERVICE_NAMES))
        .ok()
        .and_then(|data| read(data).ok())
        .unwrap_or_default()
        .into_iter()
        .map(|((ip, port, proto), name)| ((SocketAddrV4::new(ip, port), proto), name))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_cut_at_a_character_boundary_and_read_back() {
        assert_eq!(
            ServiceName::new("default/web:http").as_str(),
            Some("default/web:http")
        );
        let long = "é".repeat(100);
        let cut = ServiceName::new(&long);
        let text = cut.as_str().unwrap();
        assert!(text.len() < 144 && long.starts_with(text));
    }
}
