//! ICMP messages the datapath originates: port unreachable for services without endpoints
//! (what kube-proxy's `-j REJECT` sends, for TCP and UDP alike; a TCP client's connect() fails
//! with ECONNREFUSED at once instead of retrying SYNs).

use dataplane_common::csum;

use crate::{packet::Packet, parse::Ipv4Packet};

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_PORT_UNREACH: u8 = 3;
/// IPv4 header (20) + ICMP header (8) + quoted IPv4 header (20) + 8 bytes of its payload.
const REJECT_L3_LEN: usize = 56;

/// Ones'-complement checksum of a fixed-size block (native 16-bit loads, stored back natively).
#[inline(always)]
fn checksum<const N: usize>(bytes: &[u8; N]) -> u16 {
    let mut sum = 0u32;
    let mut i = 0;
    while i + 1 < N {
        sum += u16::from_ne_bytes([bytes[i], bytes[i + 1]]) as u32;
        i += 2;
    }
    !csum::fold(sum)
}

/// Turns the packet in place into an ICMP port unreachable from the frontend back to the client
/// (MACs swapped); the caller sends it back out of the interface it came in on. Packets with IP
/// options are not answered (the quote would need their variable-length header).
#[inline(always)]
pub fn reject_port_unreachable<P: Packet>(p: &P, pkt: &Ipv4Packet) -> Result<(), ()> {
    if pkt.l4_off - pkt.l3_off != 20 {
        return Err(());
    }
    let quote: [u8; 28] = p.load(pkt.l3_off)?;
    let macs: [u8; 12] = p.load(0)?;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(REJECT_L3_LEN as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 1;
    ip[12..16].copy_from_slice(&pkt.daddr.to_ne_bytes());
    ip[16..20].copy_from_slice(&pkt.saddr.to_ne_bytes());
    let ipc = checksum(&ip);
    ip[10..12].copy_from_slice(&ipc.to_ne_bytes());
    let mut icmp = [0u8; 36];
    icmp[0] = ICMP_DEST_UNREACH;
    icmp[1] = ICMP_PORT_UNREACH;
    icmp[8..36].copy_from_slice(&quote);
    let ic = checksum(&icmp);
    icmp[2..4].copy_from_slice(&ic.to_ne_bytes());
    let mut swapped = [0u8; 12];
    swapped[..6].copy_from_slice(&macs[6..]);
    swapped[6..].copy_from_slice(&macs[..6]);

    p.resize((pkt.l3_off + REJECT_L3_LEN) as u32)?;
    p.store(0, &swapped)?;
    p.store(pkt.l3_off, &ip)?;
    p.store(pkt.l3_off + 20, &icmp)
}
