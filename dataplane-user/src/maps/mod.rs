//! Access to the datapath's maps from the agent and the tools: one way to open a map (from a pin
//! dir or a loaded object, by its row of the map table `dataplane_common::maps`), typed and
//! checked against the table's layout; the single-entry settings maps (`CONFIG_V2`,
//! `OVERLAY_CONFIG_V1`) read and written in one place; the batch syscalls aya lacks; and an
//! in-memory stand-in for tests that run without root.
//!
//! ```ignore
//! use dataplane::maps::{self, MapSource};
//! let services: maps::Hash<ServiceKey, ServiceValue> = maps::open_hash(pin_dir, &SERVICES)?;
//! let cfg = maps::read_config(pin_dir)?;             // CONFIG_V2[0]
//! maps::write_overlay_config(&datapath.ebpf, &ocfg)?; // OVERLAY_CONFIG_V1[0]
//! ```

pub mod batch;
mod config;
mod mem;
pub mod slots;

use std::{
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    maps::{Array, Map, MapData},
    Ebpf, Pod,
};
use dataplane_common::maps::MapSpec;

pub use self::config::{read_config, read_overlay_config, write_config, write_overlay_config};
pub use self::mem::{KvMap, MemMap};

/// Something the datapath's maps can be opened from: a pin dir (`Path`, `PathBuf`), or a loaded
/// object (`aya::Ebpf`, `loader::Datapath`), which keeps its own handles.
pub trait MapSource {
    /// A new handle on the kernel map called `name`.
    fn open_map(&self, name: &str) -> Result<MapData>;
}

impl MapSource for Path {
    fn open_map(&self, name: &str) -> Result<MapData> {
        let path = self.join(name);
        MapData::from_pin(&path).with_context(|| {
            format!(
                "opening {} (is the datapath loaded with this pin dir?)",
                path.display()
            )
        })
    }
}

impl MapSource for PathBuf {
    fn open_map(&self, name: &str) -> Result<MapData> {
        self.as_path().open_map(name)
    }
}

impl MapSource for Ebpf {
    fn open_map(&self, name: &str) -> Result<MapData> {
        let map = self
            .map(name)
            .ok_or_else(|| anyhow!("map {name} is not in the eBPF object"))?;
        let data = match map {
            Map::HashMap(d)
            | Map::LruHashMap(d)
            | Map::Array(d)
            | Map::PerCpuArray(d)
            | Map::LpmTrie(d) => d,
            _ => bail!("map {name} has a type the agent does not open"),
        };
        // A second descriptor on the same kernel map: the object keeps its maps, and what is
        // opened from it does not borrow it.
        let fd = data
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .with_context(|| format!("dup of {name}"))?;
        MapData::from_fd(fd).with_context(|| format!("reopening {name}"))
    }
}

/// A typed kernel hash (or LRU hash) map.
pub type Hash<K, V> = aya::maps::HashMap<MapData, K, V>;

/// Opens the map of `spec`, refusing one whose type, key or value size is not the table's (a map
/// of another layout is named, never misread).
pub fn open(source: &(impl MapSource + ?Sized), spec: &MapSpec) -> Result<Map> {
    let data = source.open_map(spec.name)?;
    let info = data
        .info()
        .with_context(|| format!("reading info of {}", spec.name))?;
    let have = (
        info.map_type().map(|t| t as u32).unwrap_or(u32::MAX),
        info.key_size(),
        info.value_size(),
    );
    let want = (spec.kind.bpf_type(), spec.key_size, spec.value_size);
    if have != want {
        bail!(
            "{} has (type, key, value) {have:?} but this build expects {want:?}",
            spec.name
        );
    }
    if info.map_flags() & spec.flags != spec.flags {
        bail!(
            "{} has flags {:#x} but this build expects {:#x} set",
            spec.name,
            info.map_flags(),
            spec.flags
        );
    }
    Ok(Map::from_map_data(data)?)
}

/// Opens `spec` as a hash map of `K -> V`.
pub fn open_hash<K: Pod, V: Pod>(
    source: &(impl MapSource + ?Sized),
    spec: &MapSpec,
) -> Result<Hash<K, V>> {
    Hash::try_from(open(source, spec)?)
        .with_context(|| format!("{} does not have the layout this build expects", spec.name))
}

/// Opens `spec` as an array of `V`.
pub fn open_array<V: Pod>(
    source: &(impl MapSource + ?Sized),
    spec: &MapSpec,
) -> Result<Array<MapData, V>> {
    Array::try_from(open(source, spec)?)
        .with_context(|| format!("{} does not have the layout this build expects", spec.name))
}
