//! `LB_ADDR_BITS_V1`: the pre-filter's address bitmap, a Bloom filter over `LB_ADDRS_V1` that the
//! pod hooks test without a hash lookup. An array lookup with a computed index is inlined by the
//! verifier (a bounds check and an add), where `LB_ADDRS_V1` costs a jhash and a bucket walk per
//! address; most pod packets carry no service, backend or node address, and a clear bit sends
//! them on at once.
//!
//! Blocked Bloom filter: each address hashes (one 64-bit multiply, Fibonacci hashing) to one
//! word and two bits in it, so a test reads one 8-byte word. Two bitmaps share the word index:
//! `any` (every `LB_ADDRS_V1` address: the egress test on source and destination) and `ingress`
//! (frontends and the node's addresses: the ingress test on the destination). A set bit with no
//! address behind it (a false positive, or an address since removed) only costs its packets the
//! exact check; a missing bit would let a service's packets pass untranslated, so the agent sets
//! an address's bits before it lists the address (and the address before any service entry
//! uses it), and clears bits only when no listed address needs them.

use crate::lb::{ADDR_F_FRONTEND, ADDR_F_NODE};

/// log2 of the words in `LB_ADDR_BITS_V1`.
pub const ADDR_BITS_WORDS_LOG2: u32 = 15;
/// Words in `LB_ADDR_BITS_V1` (32,768 x 16 bytes = 512 KiB; 2 Mi bits per bitmap): at the
/// 131,072 addresses `LB_ADDRS_V1` holds at most, about 1.7% of absent addresses test positive (unit test).
pub const ADDR_BITS_WORDS: u32 = 1 << ADDR_BITS_WORDS_LOG2;

/// One entry of `LB_ADDR_BITS_V1`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddrBits {
    /// Bits of every listed address (any `ADDR_F_*`).
    pub any: u64,
    /// Bits of the addresses listed with `ADDR_F_FRONTEND` or `ADDR_F_NODE`.
    pub ingress: u64,
}

impl AddrBits {
    /// Whether every bit of `other` is set here.
    pub const fn covers(&self, other: &AddrBits) -> bool {
        self.any & other.any == other.any && self.ingress & other.ingress == other.ingress
    }

    pub const fn union(&self, other: &AddrBits) -> AddrBits {
        AddrBits {
            any: self.any | other.any,
            ingress: self.ingress | other.ingress,
        }
    }

    /// Set bits in both bitmaps.
    pub const fn count_ones(&self) -> u32 {
        self.any.count_ones() + self.ingress.count_ones()
    }
}

/// Where an address's bits are: the word index and the (one or two) bits in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddrProbe {
    pub word: u32,
    pub mask: u64,
}

/// splitmix64's multipliers (the first is 2^64 / golden ratio).
const MUL1: u64 = 0x9E37_79B9_7F4A_7C15;
const MUL2: u64 = 0xBF58_476D_1CE4_E5B9;

/// The probe of `addr` (network order, as the packet carries it): two multiplies and an
/// xor-shift (splitmix64's finalizer, shortened), so the top 27 bits depend on every bit of
/// the address and on each other as little as a random function's; 15 pick the word, 6 and 6
/// the two bits. (A single multiply maps an address range onto a lattice: its bits within the
/// word then follow the word index, and a range shifted by a constant, as the service range is
/// from the pod range, meets the same bits: 7% false positives instead of 1.7%.)
#[inline(always)]
pub const fn probe(addr: u32) -> AddrProbe {
    let mut h = (addr as u64).wrapping_mul(MUL1);
    h ^= h >> 29;
    // The top bits are what is used: no final xor-shift needed.
    h = h.wrapping_mul(MUL2);
    let word = (h >> (64 - ADDR_BITS_WORDS_LOG2)) as u32;
    let b1 = (h >> (64 - ADDR_BITS_WORDS_LOG2 - 6)) & 63;
    let b2 = (h >> (64 - ADDR_BITS_WORDS_LOG2 - 12)) & 63;
    AddrProbe {
        word,
        mask: (1 << b1) | (1 << b2),
    }
}

/// The bits an address listed with `flags` (`ADDR_F_*`) needs in its word.
#[inline(always)]
pub const fn bits_for(probe: &AddrProbe, flags: u32) -> AddrBits {
    AddrBits {
        any: if flags != 0 { probe.mask } else { 0 },
        ingress: if flags & (ADDR_F_FRONTEND | ADDR_F_NODE) != 0 {
            probe.mask
        } else {
            0
        },
    }
}

/// Whether `word` may hold the address of `probe` in the `any` bitmap.
#[inline(always)]
pub const fn maybe_any(word: &AddrBits, probe: &AddrProbe) -> bool {
    word.any & probe.mask == probe.mask
}

/// Whether `word` may hold the address of `probe` as a frontend or node address.
#[inline(always)]
pub const fn maybe_ingress(word: &AddrBits, probe: &AddrProbe) -> bool {
    word.ingress & probe.mask == probe.mask
}

user_pod!(AddrBits);

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{collections::HashMap, vec::Vec};

    use super::*;
    use crate::lb::ADDR_F_BACKEND;

    fn be(a: [u8; 4]) -> u32 {
        u32::from_ne_bytes(a)
    }

    #[test]
    fn probes_stay_in_the_map_and_set_one_or_two_bits() {
        for i in 0..200_000u32 {
            let p = probe(i.wrapping_mul(2_654_435_761));
            assert!(p.word < ADDR_BITS_WORDS);
            assert!(matches!(p.mask.count_ones(), 1 | 2), "{p:?}");
        }
    }

    #[test]
    fn a_listed_address_always_tests_positive_for_its_kinds() {
        let mut words: HashMap<u32, AddrBits> = HashMap::new();
        let listed: Vec<(u32, u32)> = (0..5_000u32)
            .map(|i| {
                let flags = [ADDR_F_FRONTEND, ADDR_F_BACKEND, ADDR_F_NODE][i as usize % 3];
                (be([10, 244, (i >> 8) as u8, i as u8]), flags)
            })
            .collect();
        for (a, f) in &listed {
            let p = probe(*a);
            let w = words.entry(p.word).or_default();
            *w = w.union(&bits_for(&p, *f));
        }
        for (a, f) in &listed {
            let p = probe(*a);
            let w = words[&p.word];
            assert!(maybe_any(&w, &p));
            if *f != ADDR_F_BACKEND {
                assert!(maybe_ingress(&w, &p));
            }
            assert!(w.covers(&bits_for(&p, *f)));
        }
    }

    /// Pod and service addresses differ in their last octets, which are the top bits of the
    /// network-order u32: the hash must still spread them over the words.
    #[test]
    fn a_pod_range_spreads_over_the_words_and_false_positives_stay_rare() {
        let mut words = std::vec![AddrBits::default(); ADDR_BITS_WORDS as usize];
        let mut load = std::vec![0u32; ADDR_BITS_WORDS as usize];
        // 131,072 listed addresses (LB_ADDRS_V1's capacity): 10.244.0.0/15.
        for i in 0..131_072u32 {
            let a = be([10, 244 + (i >> 16) as u8, (i >> 8) as u8, i as u8]);
            let p = probe(a);
            words[p.word as usize] = words[p.word as usize].union(&bits_for(&p, ADDR_F_BACKEND));
            load[p.word as usize] += 1;
        }
        let max = *load.iter().max().unwrap();
        assert!(max <= 24, "most loaded word holds {max} addresses (mean 4)");
        // Addresses that are not listed: another range, and the service range.
        let mut positives = 0;
        let trials = 100_000u32;
        for i in 0..trials {
            let a = be([10, 96 + (i >> 16) as u8, (i >> 8) as u8, i as u8]);
            let p = probe(a);
            positives += maybe_any(&words[p.word as usize], &p) as u32;
        }
        let rate = positives as f64 / trials as f64;
        std::println!("false positive rate at capacity: {rate}, most loaded word {max}");
        assert!(rate < 0.03, "false positive rate {rate}");
    }

    #[test]
    fn backends_alone_set_no_ingress_bits() {
        let p = probe(be([10, 244, 1, 7]));
        assert_eq!(bits_for(&p, ADDR_F_BACKEND).ingress, 0);
        assert_eq!(bits_for(&p, ADDR_F_BACKEND).any, p.mask);
        assert_eq!(bits_for(&p, ADDR_F_NODE).ingress, p.mask);
        assert_eq!(bits_for(&p, 0), AddrBits::default());
    }
}
