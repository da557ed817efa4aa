//! Where the overlay's maps live: [`OverlayMaps`] on the kernel maps (`OVERLAY_CONFIG_V1`,
//! `OVERLAY_ROUTES_V1`, `OVERLAY_PEERS_V1`), [`MemOverlay`] in memory for rootless tests. The
//! table ([`super::OverlayTable`]) is written against [`OverlayStore`] only.

use std::{collections::BTreeMap, net::Ipv4Addr};

use anyhow::{Context, Result};
use aya::maps::{lpm_trie::Key, LpmTrie, MapData};
use dataplane_common::{
    maps::{OVERLAY_PEERS, OVERLAY_ROUTES},
    overlay::{OverlayConfig, OverlayPeer, OverlayRoute},
};

use crate::{
    maps::{self, MapSource},
    model::Cidr,
};

/// The overlay maps, as the table uses them.
pub trait OverlayStore {
    /// This node's tunnel settings (`OVERLAY_CONFIG_V1`).
    fn config(&self) -> Result<OverlayConfig>;
    /// Every route the map holds.
    fn routes(&self) -> Result<BTreeMap<Cidr, OverlayRoute>>;
    /// Every peer the map holds.
    fn peers(&self) -> Result<BTreeMap<Ipv4Addr, OverlayPeer>>;
    fn put_route(&mut self, cidr: Cidr, route: OverlayRoute) -> Result<()>;
    fn remove_route(&mut self, cidr: Cidr) -> Result<()>;
    fn put_peer(&mut self, addr: Ipv4Addr, peer: OverlayPeer) -> Result<()>;
    fn remove_peer(&mut self, addr: Ipv4Addr) -> Result<()>;
}

/// Writes `OVERLAY_CONFIG_V1`.
pub fn write_config(source: &(impl MapSource + ?Sized), cfg: &OverlayConfig) -> Result<()> {
    maps::write_overlay_config(source, cfg)
}

/// Reads `OVERLAY_CONFIG_V1`.
pub fn read_config(source: &(impl MapSource + ?Sized)) -> Result<OverlayConfig> {
    maps::read_overlay_config(source)
}

fn key(cidr: Cidr) -> Key<u32> {
    Key::new(u32::from(cidr.len), u32::from(cidr.addr).to_be())
}

/// The kernel maps.
pub struct OverlayMaps {
    config: OverlayConfig,
    routes: LpmTrie<MapData, u32, OverlayRoute>,
    peers: maps::Hash<u32, OverlayPeer>,
}

impl OverlayMaps {
    pub fn open(source: &(impl MapSource + ?Sized)) -> Result<OverlayMaps> {
        Ok(OverlayMaps {
            config: read_config(source)?,
            routes: LpmTrie::try_from(maps::open(source, &OVERLAY_ROUTES)?)
                .context("OVERLAY_ROUTES_V1 layout")?,
            peers: maps::open_hash(source, &OVERLAY_PEERS)?,
        })
    }
}

impl OverlayStore for OverlayMaps {
    fn config(&self) -> Result<OverlayConfig> {
        Ok(self.config)
    }

    fn routes(&self) -> Result<BTreeMap<Cidr, OverlayRoute>> {
        let mut out = BTreeMap::new();
        for entry in self.routes.iter() {
            let (key, value) = entry.context("reading OVERLAY_ROUTES_V1")?;
            let addr = Ipv4Addr::from(u32::from_be(key.data()));
            out.insert(Cidr::new(addr, key.prefix_len() as u8), value);
        }
        Ok(out)
    }

    fn peers(&self) -> Result<BTreeMap<Ipv4Addr, OverlayPeer>> {
        let mut out = BTreeMap::new();
        for entry in self.peers.iter() {
            let (addr, value) = entry.context("reading OVERLAY_PEERS_V1")?;
            out.insert(Ipv4Addr::from(u32::from_be(addr)), value);
        }
        Ok(out)
    }

    fn put_route(&mut self, cidr: Cidr, route: OverlayRoute) -> Result<()> {
        self.routes
            .insert(&key(cidr), route, 0)
            .with_context(|| format!("adding route {cidr}"))
    }

    fn remove_route(&mut self, cidr: Cidr) -> Result<()> {
        self.routes
            .remove(&key(cidr))
            .with_context(|| format!("removing route {cidr}"))
    }

    fn put_peer(&mut self, addr: Ipv4Addr, peer: OverlayPeer) -> Result<()> {
        self.peers
            .insert(u32::from(addr).to_be(), peer, 0)
            .with_context(|| format!("adding peer {addr}"))
    }

    fn remove_peer(&mut self, addr: Ipv4Addr) -> Result<()> {
        self.peers
            .remove(&u32::from(addr).to_be())
            .with_context(|| format!("removing peer {addr}"))
    }
}

/// The maps in memory (tests). A config whose `netns_cookie` is 0 belongs to no namespace, so
/// a table over it never touches kernel routes.
#[derive(Clone, Debug)]
pub struct MemOverlay {
    pub config: OverlayConfig,
    pub routes: BTreeMap<Cidr, OverlayRoute>,
    pub peers: BTreeMap<Ipv4Addr, OverlayPeer>,
}

impl MemOverlay {
    pub fn new(config: OverlayConfig) -> MemOverlay {
        MemOverlay {
            config,
            routes: BTreeMap::new(),
            peers: BTreeMap::new(),
        }
    }
}

impl OverlayStore for MemOverlay {
    fn config(&self) -> Result<OverlayConfig> {
        Ok(self.config)
    }

    fn routes(&self) -> Result<BTreeMap<Cidr, OverlayRoute>> {
        Ok(self.routes.clone())
    }

    fn peers(&self) -> Result<BTreeMap<Ipv4Addr, OverlayPeer>> {
        Ok(self.peers.clone())
    }

    fn put_route(&mut self, cidr: Cidr, route: OverlayRoute) -> Result<()> {
        self.routes.insert(cidr, route);
        Ok(())
    }

    fn remove_route(&mut self, cidr: Cidr) -> Result<()> {
        self.routes.remove(&cidr);
        Ok(())
    }

    fn put_peer(&mut self, addr: Ipv4Addr, peer: OverlayPeer) -> Result<()> {
        self.peers.insert(addr, peer);
        Ok(())
    }

    fn remove_peer(&mut self, addr: Ipv4Addr) -> Result<()> {
        self.peers.remove(&addr);
        Ok(())
    }
}
