//! `SOURCE_RANGES_V1`: every frontend's loadBalancerSourceRanges, keyed by (frontend id, client
//! prefix) in one LPM trie. Written after each [`ServiceTable`](super::ServiceTable) sync, once
//! the frontend ids are known: a new restricted frontend drops everything for that moment
//! (fail closed), and ranges leave only after their frontend no longer names them.

use std::{borrow::Borrow, collections::BTreeSet, net::Ipv4Addr};

use anyhow::{Context, Result};
use aya::maps::{
    lpm_trie::{Key, LpmTrie},
    MapData,
};
use dataplane_common::{
    lb::{source_range_prefix_len, SourceRangeKey},
    maps::SOURCE_RANGES,
};

use super::{
    spec::{has_source_ranges, ip_from_be, ip_to_be, service_key},
    LocalContext, MapSource, ServiceTable,
};
use crate::model::ServicePort;

/// One entry: (frontend id, network, prefix length).
pub type RangeEntry = (u32, Ipv4Addr, u8);

/// The trie and what this agent knows it holds.
pub struct SourceRanges {
    trie: LpmTrie<MapData, SourceRangeKey, u32>,
    written: BTreeSet<RangeEntry>,
}

impl SourceRanges {
    /// Opens the map and adopts its entries (a restarted agent removes the stale ones at its
    /// first sync).
    pub fn open(source: &(impl MapSource + ?Sized)) -> Result<Self> {
        let map = crate::maps::open(source, &SOURCE_RANGES)?;
        let trie: LpmTrie<MapData, SourceRangeKey, u32> =
            LpmTrie::try_from(map).context("SOURCE_RANGES_V1 does not have the expected layout")?;
        let mut written = BTreeSet::new();
        for entry in trie.keys() {
            let key = entry.context("reading SOURCE_RANGES_V1")?;
            let data = key.data();
            let len = key.prefix_len().saturating_sub(32).min(32) as u8;
            written.insert((data.frontend_id, ip_from_be(data.addr), len));
        }
        Ok(SourceRanges { trie, written })
    }

    /// Makes the trie hold exactly the ranges of `services`' restricted frontends, under the
    /// ids `table` gave them. New entries first, then the stale ones. Returns (added, removed).
    pub fn sync(
        &mut self,
        services: &[impl Borrow<ServicePort>],
        table: &ServiceTable,
    ) -> Result<(usize, usize)> {
        let desired = desired(services, table.local(), |svc_key| {
            table.frontend_id(svc_key)
        });
        let added: Vec<RangeEntry> = desired.difference(&self.written).copied().collect();
        let removed: Vec<RangeEntry> = self.written.difference(&desired).copied().collect();
        for &entry in &added {
            self.trie
                .insert(&key(entry), 1, 0)
                .with_context(|| format!("writing source range {entry:?} to SOURCE_RANGES_V1"))?;
            self.written.insert(entry);
        }
        for &entry in &removed {
            // Already gone (another writer, a cleanup) is what we wanted.
            let _ = self.trie.remove(&key(entry));
            self.written.remove(&entry);
        }
        Ok((added.len(), removed.len()))
    }

    /// What the trie holds, as this agent knows it.
    pub fn entries(&self) -> &BTreeSet<RangeEntry> {
        &self.written
    }
}

fn key((frontend_id, addr, len): RangeEntry) -> Key<SourceRangeKey> {
    Key::new(
        source_range_prefix_len(len),
        SourceRangeKey {
            frontend_id,
            addr: ip_to_be(addr),
        },
    )
}

/// Every (frontend id, range) the restricted frontends of `services` need; frontends the
/// table does not hold (not applied) have no id and need none yet.
pub(crate) fn desired(
    services: &[impl Borrow<ServicePort>],
    local: &LocalContext,
    frontend_id: impl Fn(&dataplane_common::lb::ServiceKey) -> Option<u32>,
) -> BTreeSet<RangeEntry> {
    let mut out = BTreeSet::new();
    for svc in services.iter().map(Borrow::borrow) {
        for fe in svc
            .frontends
            .iter()
            .filter(|fe| has_source_ranges(svc, fe.kind, local))
        {
            let Some(id) = frontend_id(&service_key(fe)) else {
                continue;
            };
            out.extend(svc.source_ranges.iter().map(|&(net, len)| (id, net, len)));
        }
    }
    out
}
