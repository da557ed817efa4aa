//! The writer's model of `LB_ADDR_BITS_V1` (`dataplane_common::addr_bits`), kept beside each
//! store's `LB_ADDRS_V1`: which words an address listing must set first, and which words an
//! address leaving may clear after it left. The rule the pod hooks rely on: every address
//! `LB_ADDRS_V1` lists has its bits set, from before it is listed. Bits are only ever cleared by
//! recomputing a word from the addresses still listed in it.

use std::collections::{HashMap, HashSet};

use dataplane_common::addr_bits::{bits_for, probe, AddrBits, ADDR_BITS_WORDS};

/// What the bitmap holds, for the words this writer has touched or read, and the listed
/// addresses behind each word.
#[derive(Clone, Debug, Default)]
pub struct AddrBitmap {
    words: HashMap<u32, AddrBits>,
    addrs: HashMap<u32, u32>,
    by_word: HashMap<u32, HashSet<u32>>,
}

impl AddrBitmap {
    /// Adopts a listed address whose word the map holds as `current` (read back at open):
    /// returns the word to write if the address's bits are missing from it.
    pub fn adopt(&mut self, addr: u32, flags: u32, current: AddrBits) -> Option<(u32, AddrBits)> {
        let p = probe(addr);
        self.words.entry(p.word).or_insert(current);
        self.add(addr, flags)
    }

    /// Records `addr` listed with `flags`: the word to write *before* the `LB_ADDRS_V1` write,
    /// if its bits are not all set yet.
    pub fn add(&mut self, addr: u32, flags: u32) -> Option<(u32, AddrBits)> {
        let p = probe(addr);
        self.addrs.insert(addr, flags);
        self.by_word.entry(p.word).or_default().insert(addr);
        let word = self.words.entry(p.word).or_default();
        let need = bits_for(&p, flags);
        if word.covers(&need) {
            return None;
        }
        *word = word.union(&need);
        Some((p.word, *word))
    }

    /// Records that `addr` left `LB_ADDRS_V1`: the word recomputed from the addresses still
    /// listed in it, to write *after* the delete, if that clears a bit.
    pub fn remove(&mut self, addr: u32) -> Option<(u32, AddrBits)> {
        self.addrs.remove(&addr)?;
        let p = probe(addr);
        let left = self.by_word.get_mut(&p.word)?;
        left.remove(&addr);
        let needed = left
            .iter()
            .map(|a| bits_for(&probe(*a), self.addrs[a]))
            .fold(AddrBits::default(), |w, b| w.union(&b));
        let word = self.words.entry(p.word).or_default();
        if *word == needed {
            return None;
        }
        *word = needed;
        Some((p.word, needed))
    }

    /// Whether the bitmap holds every bit `addr` listed with `flags` needs.
    pub fn covers(&self, addr: u32, flags: u32) -> bool {
        let p = probe(addr);
        let word = self.words.get(&p.word).copied().unwrap_or_default();
        word.covers(&bits_for(&p, flags))
    }

    /// Set bits over all bits of both bitmaps (what the false positive rate follows).
    pub fn fill(&self) -> f64 {
        fill(self.words.values())
    }
}

/// The pre-filter's fill, read from the maps (metrics): `LB_ADDRS_V1` entries over its capacity,
/// and `LB_ADDR_BITS_V1`'s set bits over all its bits.
pub fn read_fill(source: &(impl crate::maps::MapSource + ?Sized)) -> anyhow::Result<(f64, f64)> {
    use anyhow::Context as _;
    use dataplane_common::{lb::MAX_LB_ADDRS, maps};
    let addrs = crate::maps::open_hash::<u32, u32>(source, &maps::LB_ADDRS)?;
    let listed = addrs.keys().count();
    let bits = crate::maps::open_array::<AddrBits>(source, &maps::LB_ADDR_BITS)?;
    let words: Vec<AddrBits> = bits
        .iter()
        .collect::<Result<_, _>>()
        .context("reading LB_ADDR_BITS_V1")?;
    Ok((listed as f64 / MAX_LB_ADDRS as f64, fill(&words)))
}

/// Set bits over all bits of both bitmaps, for the words of a map (absent words are clear).
pub fn fill<'a>(words: impl IntoIterator<Item = &'a AddrBits>) -> f64 {
    let set: u64 = words.into_iter().map(|w| w.count_ones() as u64).sum();
    set as f64 / (ADDR_BITS_WORDS as f64 * 128.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataplane_common::lb::{ADDR_F_BACKEND, ADDR_F_FRONTEND, ADDR_F_NODE};

    fn a(i: u32) -> u32 {
        u32::from_ne_bytes([10, (i >> 16) as u8, (i >> 8) as u8, i as u8])
    }

    /// Two addresses sharing a word: removing one keeps the other's bits.
    #[test]
    fn removing_an_address_keeps_the_bits_of_the_others_in_its_word() {
        let mut m = AddrBitmap::default();
        let first = a(1);
        let w = probe(first).word;
        let other = (2..1_000_000)
            .map(a)
            .find(|x| probe(*x).word == w && probe(*x).mask != probe(first).mask)
            .expect("another address in the same word");
        assert!(m.add(first, ADDR_F_BACKEND).is_some());
        assert!(m.add(other, ADDR_F_FRONTEND).is_some());
        assert_eq!(m.add(other, ADDR_F_FRONTEND), None, "already set: no write");
        let (word, bits) = m.remove(first).expect("first's own bits cleared");
        assert_eq!(word, w);
        assert!(bits.covers(&bits_for(&probe(other), ADDR_F_FRONTEND)));
        assert!(m.covers(other, ADDR_F_FRONTEND));
        // The last address of the word: the word ends up clear (or as other bits need).
        m.remove(other);
        assert_eq!(m.words[&w], AddrBits::default());
        assert_eq!(m.fill(), 0.0);
    }

    #[test]
    fn adopting_fills_in_missing_bits_and_never_clears_any() {
        let mut m = AddrBitmap::default();
        let x = a(7);
        let stale = AddrBits {
            any: 1 << 63,
            ingress: 0,
        };
        let (word, bits) = m.adopt(x, ADDR_F_NODE, stale).expect("bits were missing");
        assert_eq!(word, probe(x).word);
        assert!(
            bits.covers(&stale),
            "bits no listed address needs stay until a remove"
        );
        assert!(m.covers(x, ADDR_F_NODE));
        let mut n = AddrBitmap::default();
        let full = bits_for(&probe(x), ADDR_F_NODE);
        assert_eq!(
            n.adopt(x, ADDR_F_NODE, full),
            None,
            "complete: nothing written"
        );
    }

    /// What the pod hooks rely on, checked against the modeled map itself (not the writer's
    /// model): every address `LB_ADDRS_V1` lists, and every frontend and backend address the
    /// service maps hold, has its bits in `LB_ADDR_BITS_V1`, for the ingress test too where
    /// its flags say so. Through syncs that add, change and remove services (one by one and
    /// batched) and an upsert.
    fn assert_covered(m: &crate::services::MemMaps, when: &str) {
        let word = |a: u32| m.addr_bits.get(&probe(a).word).copied().unwrap_or_default();
        for (a, f) in &m.addrs {
            assert!(
                word(*a).covers(&bits_for(&probe(*a), *f)),
                "{when}: listed address {:?} (flags {f}) lacks its bits",
                a.to_ne_bytes()
            );
        }
        use dataplane_common::addr_bits::{maybe_any, maybe_ingress};
        // Frontends must pass the ingress test, backends the egress one.
        let frontends = m.services.keys().map(|k| (k.addr, "frontend", "ingress"));
        let backends = m.backends.values().map(|v| (v.addr, "backend", "egress"));
        for (addr, role, test) in frontends.chain(backends) {
            let passes = if test == "ingress" {
                maybe_ingress
            } else {
                maybe_any
            };
            assert!(
                passes(&word(addr), &probe(addr)),
                "{when}: {role} {:?} fails the {test} test",
                addr.to_ne_bytes()
            );
        }
    }

    #[test]
    fn every_address_a_service_uses_has_its_bits_through_syncs_and_a_restart() {
        use crate::services::{tests as st, MemMaps, ServiceTable};
        for batch in [false, true] {
            let mem = MemMaps {
                batch,
                ..Default::default()
            };
            let mut t = ServiceTable::with_store(mem, st::local()).unwrap();
            t.set_node_addrs(&[u32::from_ne_bytes([198, 18, 0, 11])])
                .unwrap();
            let mut svcs = st::many(200);
            t.sync(&svcs).unwrap();
            assert_covered(t.store(), "first sync");
            // Every service gets other backends, half of the services go, one is upserted.
            for (i, s) in svcs.iter_mut().enumerate() {
                s.backends = (1..=4)
                    .map(|j| st::endpoint([10, 245, i as u8, j], 8080, "worker-2"))
                    .collect();
            }
            svcs.truncate(100);
            t.sync(&svcs).unwrap();
            assert_covered(t.store(), "second sync");
            let mut extra = st::app_svc(crate::model::Protocol::Udp);
            extra
                .backends
                .push(st::endpoint([10, 246, 0, 1], 53, "worker-1"));
            t.upsert(&extra).unwrap();
            assert_covered(t.store(), "upsert");
            assert!(t.store().bitmap.fill() > 0.0);
            // A restart over maps whose bitmap is new (empty): adoption fills it in before
            // anything trusts it.
            let mut adopted = t.store().clone();
            adopted.addr_bits.clear();
            adopted.bitmap = AddrBitmap::default();
            let t = ServiceTable::with_store(adopted, st::local()).unwrap();
            assert_covered(t.store(), "after adoption");
        }
    }

    /// A removed address (the store's delete) clears only bits no remaining address needs.
    #[test]
    fn deleting_addresses_from_the_store_keeps_the_others_covered() {
        use crate::services::{MapStore as _, MemMaps};
        let mut m = MemMaps::default();
        for i in 0..70_000u32 {
            m.put_addr(
                a(i),
                [ADDR_F_BACKEND, ADDR_F_FRONTEND, ADDR_F_NODE][i as usize % 3],
            )
            .unwrap();
        }
        for i in (0..70_000u32).step_by(2) {
            m.delete_addr(a(i)).unwrap();
        }
        assert_covered(&m, "after deletes");
        for i in (1..70_000u32).step_by(2) {
            m.delete_addr(a(i)).unwrap();
        }
        assert!(m.addr_bits.values().all(|w| *w == AddrBits::default()));
    }
}
