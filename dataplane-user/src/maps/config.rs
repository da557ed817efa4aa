//! The single-entry settings maps (index 0 of a one-entry array): `CONFIG_V2`, written by the
//! agent at start and read by every packet program, and `OVERLAY_CONFIG_V1`.

use anyhow::{Context, Result};
use aya::Pod;
use dataplane_common::{
    ct::Config,
    maps::{MapSpec, CONFIG, OVERLAY_CONFIG},
    overlay::OverlayConfig,
};

use super::{open_array, MapSource};

fn read<V: Pod>(source: &(impl MapSource + ?Sized), spec: &MapSpec) -> Result<V> {
    open_array(source, spec)?
        .get(&0, 0)
        .with_context(|| format!("reading {}[0]", spec.name))
}

fn write<V: Pod>(source: &(impl MapSource + ?Sized), spec: &MapSpec, value: &V) -> Result<()> {
    open_array::<V>(source, spec)?
        .set(0, value, 0)
        .with_context(|| format!("writing {}[0]", spec.name))
}

/// Reads the node-wide settings (`CONFIG_V2[0]`).
pub fn read_config(source: &(impl MapSource + ?Sized)) -> Result<Config> {
    read(source, &CONFIG)
}

/// Writes the node-wide settings (`CONFIG_V2[0]`); the programs see it at their next packet.
pub fn write_config(source: &(impl MapSource + ?Sized), config: &Config) -> Result<()> {
    write(source, &CONFIG, config)
}

/// Reads this node's tunnel settings (`OVERLAY_CONFIG_V1[0]`).
pub fn read_overlay_config(source: &(impl MapSource + ?Sized)) -> Result<OverlayConfig> {
    read(source, &OVERLAY_CONFIG)
}

/// Writes this node's tunnel settings (`OVERLAY_CONFIG_V1[0]`).
pub fn write_overlay_config(
    source: &(impl MapSource + ?Sized),
    config: &OverlayConfig,
) -> Result<()> {
    write(source, &OVERLAY_CONFIG, config)
}
