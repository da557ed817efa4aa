//! Internet checksum arithmetic (RFC 1071 / RFC 1624), pure so host tests cover it.
//!
//! Values are the raw 16/32-bit words as they sit in memory (network order bytes loaded natively):
//! ones'-complement sums are byte-order independent as long as the checksum field is treated the
//! same way, so no swapping is needed.

/// Folds a 32-bit ones'-complement accumulator to 16 bits (not complemented).
#[inline(always)]
pub const fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Incremental update of checksum `check` when a 32-bit word changes from `from` to `to`
/// (RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m')).
#[inline(always)]
pub const fn replace4(check: u16, from: u32, to: u32) -> u16 {
    let nf = !from;
    let sum = (!check) as u32 + (nf >> 16) + (nf & 0xffff) + (to >> 16) + (to & 0xffff);
    !fold(sum)
}

/// Incremental update when a 16-bit word changes from `from` to `to`.
#[inline(always)]
pub const fn replace2(check: u16, from: u16, to: u16) -> u16 {
    let sum = (!check) as u32 + (!from) as u32 + to as u32;
    !fold(sum)
}

/// The ones'-complement difference (`__wsum`) of 32-bit words changing from `from[i]` to
/// `to[i]`: what the kernel's `bpf_csum_diff` returns, for `bpf_l3_csum_replace` /
/// `bpf_l4_csum_replace` with size 0 (one helper call for several changed words).
#[inline(always)]
pub const fn diff<const N: usize>(from: [u32; N], to: [u32; N]) -> u32 {
    let mut sum = 0u64;
    let mut i = 0;
    while i < N {
        sum += (!from[i]) as u64 + to[i] as u64;
        i += 1;
    }
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum as u32
}

/// What the kernel does with such a difference on a complete checksum field
/// (`inet_proto_csum_replace_by_diff`, `csum_replace_by_diff`): `~fold(diff + ~check)`.
#[inline(always)]
pub const fn apply_diff(check: u16, diff: u32) -> u16 {
    let sum = diff as u64 + (!check) as u64;
    let sum = (sum & 0xffff_ffff) + (sum >> 32);
    !fold(((sum & 0xffff_ffff) + (sum >> 32)) as u32)
}

/// UDP: a zero checksum means "none" and stays zero; a computed zero is sent as 0xffff.
#[inline(always)]
pub const fn udp_fixup(old: u16, new: u16) -> u16 {
    if old == 0 {
        0
    } else if new == 0 {
        0xffff
    } else {
        new
    }
}

/// What the transport checksum field of a CHECKSUM_PARTIAL packet holds: the folded
/// pseudo-header sum, not complemented (the kernel's `~csum_tcpudp_magic(saddr, daddr, len,
/// proto, 0)`; the device or `skb_checksum_help` adds the segment later). Addresses as loaded
/// from the packet, `proto` and `l4_len` (transport header + payload bytes) as numbers.
#[inline(always)]
pub const fn pseudo_seed(saddr: u32, daddr: u32, proto: u8, l4_len: u16) -> u16 {
    let sum = (saddr >> 16)
        + (saddr & 0xffff)
        + (daddr >> 16)
        + (daddr & 0xffff)
        + (proto as u16).to_be() as u32
        + l4_len.to_be() as u32;
    fold(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Full RFC 1071 checksum of a byte buffer, read as native 16-bit words like the datapath
    /// does (the result is stored back natively).
    fn full(bytes: &[u8]) -> u16 {
        let sum: u32 = bytes
            .chunks(2)
            .map(|c| u16::from_ne_bytes([c[0], c[1]]) as u32)
            .sum();
        !fold(sum)
    }

    fn load4(b: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }

    #[test]
    fn replace4_matches_full_recompute() {
        // An IPv4 header: checksum at 10..12, addresses at 12..20.
        let mut hdr: [u8; 20] = [
            0x45, 0, 0, 0x54, 0x1c, 0x46, 0x40, 0, 0x40, 0x01, 0, 0, 10, 244, 1, 2, 10, 96, 0, 10,
        ];
        let c = full(&hdr);
        hdr[10..12].copy_from_slice(&c.to_ne_bytes());
        let mut seed = 0x1234_5678u32;
        for _ in 0..10_000 {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let at = if seed & 1 == 0 { 12 } else { 16 };
            let old = load4(&hdr, at);
            let check = u16::from_ne_bytes([hdr[10], hdr[11]]);
            let updated = replace4(check, old, seed);
            hdr[at..at + 4].copy_from_slice(&seed.to_ne_bytes());
            hdr[10..12].copy_from_slice(&[0, 0]);
            assert_eq!(updated, full(&hdr), "seed {seed:#x}");
            hdr[10..12].copy_from_slice(&updated.to_ne_bytes());
            assert_eq!(full(&hdr), 0, "a header with a valid checksum sums to zero");
        }
    }

    #[test]
    fn diff_of_all_four_fields_matches_full_recompute() {
        // IPv4 (checksum 10..12, addresses 12..20) + UDP (ports 20..24, checksum 26..28) with a
        // pseudo-header: the addresses count in both checksums, the ports in UDP's only.
        let mut pkt: [u8; 28] = [
            0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 244, 1, 2, 10, 96, 0, 10, 0x9c, 0x40,
            0, 80, 0, 8, 0, 0,
        ];
        let ip = full(&pkt[..20]);
        pkt[10..12].copy_from_slice(&ip.to_ne_bytes());
        let udp_full = |p: &[u8; 28]| {
            let mut ph = p[12..20].to_vec();
            ph.extend_from_slice(&[0, 17, 0, 8]);
            ph.extend_from_slice(&p[20..28]);
            full(&ph)
        };
        let u = udp_full(&pkt);
        pkt[26..28].copy_from_slice(&u.to_ne_bytes());
        let (saddr, daddr) = (load4(&pkt, 12), load4(&pkt, 16));
        let ports = load4(&pkt, 20);
        let (nsaddr, ndaddr) = (
            u32::from_ne_bytes([198, 18, 0, 11]),
            u32::from_ne_bytes([10, 244, 2, 5]),
        );
        let nports = u32::from_ne_bytes([0xea, 0x60, 0x1f, 0x90]);
        let addrs = diff([saddr, daddr], [nsaddr, ndaddr]);
        let ip_new = apply_diff(ip, addrs);
        let udp_new = apply_diff(apply_diff(u, addrs), diff([ports], [nports]));
        pkt[12..16].copy_from_slice(&nsaddr.to_ne_bytes());
        pkt[16..20].copy_from_slice(&ndaddr.to_ne_bytes());
        pkt[20..24].copy_from_slice(&nports.to_ne_bytes());
        pkt[10..12].copy_from_slice(&[0, 0]);
        pkt[26..28].copy_from_slice(&[0, 0]);
        assert_eq!(ip_new, full(&pkt[..20]));
        assert_eq!(udp_new, udp_full(&pkt));
    }

    #[test]
    fn replace2_matches_full_recompute() {
        let mut udp: [u8; 8] = [0x9c, 0x40, 0x00, 0x50, 0x00, 0x08, 0, 0];
        let c = full(&udp);
        udp[6..8].copy_from_slice(&c.to_ne_bytes());
        let old = u16::from_ne_bytes([udp[2], udp[3]]);
        let new = u16::from_ne_bytes([0x1f, 0x90]);
        let updated = replace2(c, old, new);
        udp[2..4].copy_from_slice(&new.to_ne_bytes());
        udp[6..8].copy_from_slice(&[0, 0]);
        assert_eq!(updated, full(&udp));
    }

    #[test]
    fn udp_zero_checksum_rules() {
        assert_eq!(udp_fixup(0, 0x1234), 0);
        assert_eq!(udp_fixup(0x1111, 0), 0xffff);
        assert_eq!(udp_fixup(0x1111, 0x2222), 0x2222);
    }

    #[test]
    fn pseudo_seed_is_what_a_full_sum_starts_from() {
        // A UDP datagram 10.0.0.1:1000 -> 10.0.0.2:53 with 4 payload bytes: its full checksum
        // is the complement of the seed plus the segment's own sum (checksum field zero).
        let (s, d) = ([10u8, 0, 0, 1], [10u8, 0, 0, 2]);
        let seg = [0x03u8, 0xe8, 0x00, 0x35, 0x00, 0x0c, 0, 0, 1, 2, 3, 4];
        let pseudo = [10u8, 0, 0, 1, 10, 0, 0, 2, 0, 17, 0, 12];
        let seed = pseudo_seed(load4(&s, 0), load4(&d, 0), 17, 12);
        assert_eq!(!seed, full(&pseudo));
        let mut all = [0u8; 24];
        all[..12].copy_from_slice(&pseudo);
        all[12..].copy_from_slice(&seg);
        let seg_sum: u32 = seg
            .chunks(2)
            .map(|c| u16::from_ne_bytes([c[0], c[1]]) as u32)
            .sum();
        assert_eq!(!fold(seed as u32 + seg_sum), full(&all));
    }
}
