//! The pin directory: where maps live across loader restarts, and how a map pinned by another
//! layout version is detected instead of misread.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use aya::maps::MapData;
use dataplane_common::maps;

use crate::host::mounts::{is_bpffs, mount};

/// The conventional bpffs mount point.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";

/// Makes sure bpffs is mounted under the pin dir and the directory exists. Like cilium-agent, a
/// missing bpffs at /sys/fs/bpf is mounted (a fresh node or a container without the mount).
pub fn prepare_pin_dir(dir: &Path) -> Result<()> {
    ensure_bpffs_mounted(dir)?;
    fs::create_dir_all(dir).with_context(|| format!("creating pin dir {}", dir.display()))?;
    if !is_bpffs(dir)? {
        bail!(
            "pin dir {} is not on a bpf filesystem (mount one with `mount -t bpf bpf /sys/fs/bpf`)",
            dir.display()
        );
    }
    Ok(())
}

fn ensure_bpffs_mounted(dir: &Path) -> Result<()> {
    let root = Path::new(BPFFS_ROOT);
    if !dir.starts_with(root) || !root.is_dir() || is_bpffs(root)? {
        return Ok(());
    }
    // A fresh node has no bpffs; but so has a private mount namespace whose /sys was remounted
    // (`ip netns exec`), and there the pins die with this process, unseen from the host.
    let private_mounts =
        std::fs::read_link("/proc/self/ns/mnt").ok() != std::fs::read_link("/proc/1/ns/mnt").ok();
    if private_mounts {
        log::warn!(
            "no bpffs at {BPFFS_ROOT} in this mount namespace (not the host's: `ip netns exec` \
             remounts /sys): the one mounted now is private, so the maps and links pinned there \
             vanish when this process exits and `dataplane stats`/`cleanup` elsewhere do not see \
             them; run the agent with `nsenter --net=/run/netns/NAME dataplane run ...` instead"
        );
    }
    log::info!("mounting bpffs at {BPFFS_ROOT}");
    mount("bpf", root, "bpf")
}

/// Refuses to start over pinned maps whose layout differs from what this build expects, and
/// names maps of other layout versions (e.g. `STATS_V0`) that this build will not touch.
pub fn check_pinned_layouts(dir: &Path) -> Result<()> {
    for want in maps::pinned() {
        let path = dir.join(want.name);
        if !path.exists() {
            continue;
        }
        let map =
            MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
        let info = map
            .info()
            .with_context(|| format!("reading info of {}", path.display()))?;
        let have = (
            info.key_size(),
            info.value_size(),
            info.max_entries(),
            info.map_type().map(|t| t as u32).unwrap_or(u32::MAX),
        );
        let expect = (
            want.key_size,
            want.value_size,
            want.max_entries,
            want.kind.bpf_type(),
        );
        if have != expect {
            bail!(
                "pinned map {} has layout (key {}, value {}, entries {}, type {}) but this build \
                 expects (key {}, value {}, entries {}, type {}); run `dataplane cleanup --pin-dir {}` first",
                path.display(), have.0, have.1, have.2, have.3, expect.0, expect.1, expect.2, expect.3, dir.display()
            );
        }
        if info.map_flags() & want.flags != want.flags {
            bail!(
                "pinned map {} was created with flags {:#x}, without this build's {:#x}; run \
                 `dataplane cleanup --pin-dir {}` first",
                path.display(),
                info.map_flags(),
                want.flags,
                dir.display()
            );
        }
    }
    for other in foreign_versions(dir)? {
        log::warn!(
            "ignoring {}: another layout version than this build uses",
            other.display()
        );
    }
    Ok(())
}

/// Pinned files that look like our maps but carry another version suffix.
fn foreign_versions(dir: &Path) -> Result<Vec<PathBuf>> {
    let known: Vec<&str> = maps::pinned().map(|m| m.name).collect();
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let Some((base, version)) = name.rsplit_once("_V") else {
            continue;
        };
        let ours = known
            .iter()
            .any(|k| k.rsplit_once("_V").map(|(b, _)| b) == Some(base));
        if ours && version.chars().all(|c| c.is_ascii_digit()) && !known.contains(&name.as_str()) {
            out.push(dir.join(name));
        }
    }
    Ok(out)
}

/// Removes the pinned links (which detaches the programs from their hooks: XDP, tcx and the
/// cgroup socket hooks, `links/<program>@cgroup`), then every map this build pins, then the
/// directory if it is empty.
/// Maps of layouts this build replaced (`CT_V1` by `CT_V2`, `CONFIG_V1` by `CONFIG_V2`): no
/// program of this build uses them. Their state is not carried over: connections translated
/// through `CT_V1` lose it at the upgrade (new connections are unaffected).
pub const RETIRED_MAPS: &[&str] = maps::RETIRED;

/// Removes pins of retired layouts, saying so: they would only hold kernel memory.
pub fn remove_retired_maps(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for name in RETIRED_MAPS {
        let path = dir.join(name);
        if path.exists() {
            log::warn!(
                "{} is a map of an older layout that this version replaced; removing it (its \
                 entries are not carried over)",
                path.display()
            );
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            removed.push(path);
        }
    }
    Ok(removed)
}

pub fn cleanup(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = remove_retired_maps(dir)?;
    let links = dir.join("links");
    if links.is_dir() {
        for entry in fs::read_dir(&links)? {
            let path = entry?.path();
            crate::bpf_link::remove_pinned_link(&path)
                .with_context(|| format!("detaching and removing {}", path.display()))?;
            removed.push(path);
        }
        fs::remove_dir(&links).with_context(|| format!("removing {}", links.display()))?;
    }
    for map in maps::pinned() {
        let path = dir.join(map.name);
        if path.exists() {
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            removed.push(path);
        }
    }
    if dir.exists() && fs::read_dir(dir)?.next().is_none() {
        fs::remove_dir(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(removed)
}

/// The built object against the tables the loader and the docs use: every map it defines has
/// the layout the map table (`dataplane_common::maps::ALL`) says, so the agent and the programs
/// agree on key and value sizes before anything is loaded; every map but the ring buffer is
/// BTF-defined with its key and value types (what `bpftool map dump` names fields by); and
/// every program is one of `Hook::program`'s.
#[cfg(test)]
mod object_tests {
    use std::collections::BTreeSet;

    use aya_obj::{maps::Map, Object, ProgramSection};
    use dataplane_common::{
        maps::{MapKind, ALL},
        programs::Attach,
        Hook,
    };

    fn object() -> Object {
        Object::parse(crate::EBPF_OBJECT).expect("parsing the built eBPF object")
    }

    #[test]
    fn every_map_of_the_object_is_in_the_map_table() {
        let obj = object();
        let pinned: BTreeSet<&str> = obj
            .maps
            .keys()
            .map(String::as_str)
            .filter(|n| !n.starts_with('.'))
            .collect();
        let listed: BTreeSet<&str> = ALL.iter().map(|m| m.name).collect();
        assert_eq!(
            pinned, listed,
            "maps in the object vs dataplane_common::maps::ALL"
        );
        for want in ALL {
            let m = &obj.maps[want.name];
            let got = (m.map_type(), m.key_size(), m.value_size(), m.max_entries());
            let expect = (
                want.kind.bpf_type(),
                want.key_size,
                want.value_size,
                want.max_entries,
            );
            assert_eq!(got, expect, "{}: (type, key, value, entries)", want.name);
            assert_eq!(
                m.map_flags() & want.flags,
                want.flags,
                "{}: flags",
                want.name
            );
        }
    }

    #[test]
    fn every_map_but_the_ring_buffer_carries_btf_key_and_value_types() {
        let obj = object();
        assert!(obj.btf.is_some(), "the object has no .BTF section");
        for want in ALL {
            match (&obj.maps[want.name], want.kind) {
                // A ring buffer has neither key nor value; the kernel takes no BTF for it.
                (Map::Legacy(_), MapKind::RingBuf) => {}
                (Map::Btf(m), kind) if kind != MapKind::RingBuf => {
                    assert_ne!(m.def.btf_key_type_id, 0, "{}: key type", want.name);
                    assert_ne!(m.def.btf_value_type_id, 0, "{}: value type", want.name);
                }
                (_, kind) => panic!("{}: unexpected definition for a {kind:?}", want.name),
            }
        }
    }

    #[test]
    fn every_map_has_a_section_in_bpf_maps_md() {
        let doc = include_str!("../../bpf-maps.md");
        for l in dataplane_common::maps::pinned() {
            let heading = |level: &str| format!("\n{level} {}\n", l.name);
            assert!(
                doc.contains(&heading("##")) || doc.contains(&heading("###")),
                "bpf-maps.md has no section for {}",
                l.name
            );
            assert!(
                doc.contains(&format!("[`{}`]", l.name)),
                "bpf-maps.md's table lacks {}",
                l.name
            );
        }
    }

    #[test]
    fn every_program_of_the_object_is_in_the_hook_table() {
        let obj = object();
        let in_object: BTreeSet<&str> = obj.programs.keys().map(String::as_str).collect();
        let listed: BTreeSet<&str> = Hook::ALL.iter().map(|h| h.program()).collect();
        assert_eq!(in_object, listed, "programs in the object vs Hook::program");
        for hook in Hook::ALL {
            let section = &obj.programs[hook.program()].section;
            let kind_matches = match hook.attach() {
                Attach::Xdp => matches!(section, ProgramSection::Xdp { .. }),
                Attach::TcIngress | Attach::TcEgress => {
                    matches!(section, ProgramSection::SchedClassifier)
                }
                Attach::Cgroup(_) => matches!(section, ProgramSection::CgroupSockAddr { .. }),
            };
            assert!(kind_matches, "{}: section {section:?}", hook.program());
        }
    }
}
