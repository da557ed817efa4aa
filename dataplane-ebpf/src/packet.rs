//! What the NAT and reject code needs from a hook's context, implemented for XDP (direct packet
//! writes, checksums updated by hand) and tc (kernel helpers, which also keep the skb's checksum
//! state right: CHECKSUM_PARTIAL skbs from local pods hold a pseudo-header sum, not a checksum).

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::{bpf_skb_change_tail, bpf_xdp_adjust_tail, bpf_xdp_load_bytes, bpf_xdp_store_bytes},
    programs::{TcContext, XdpContext},
};
use dataplane_common::csum;

use crate::parse::{Ipv4Hdr, Ipv4Packet, L4, MAX_L4_OFF};

/// Addresses and ports a packet should carry, network order.
#[derive(Clone, Copy)]
pub struct Tuple {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
}

pub trait Packet {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// Whole frame length (skb->len for tc).
    fn frame_len(&self) -> u32;
    /// Rewrites IPv4 addresses and TCP/UDP ports to `to`, updating every checksum.
    fn rewrite_tuple(&self, pkt: &Ipv4Packet, to: &Tuple) -> Result<(), ()>;
    /// Rewrites the IPv4 addresses only (a non-first fragment: its transport checksum, in the
    /// first fragment, was updated with the first fragment's rewrite).
    fn rewrite_addrs(&self, pkt: &Ipv4Packet, saddr: u32, daddr: u32) -> Result<(), ()>;
    /// Grows or shrinks the frame to `len` bytes.
    fn resize(&self, len: u32) -> Result<(), ()>;
    /// Writes `N` bytes at `offset`.
    fn store<const N: usize>(&self, offset: usize, bytes: &[u8; N]) -> Result<(), ()>;
    /// Reads `N` bytes at `offset`.
    fn load<const N: usize>(&self, offset: usize) -> Result<[u8; N], ()>;
}

/// Offset of the checksum within the transport header.
#[inline(always)]
fn l4_csum_off(l4: L4) -> Result<usize, ()> {
    match l4 {
        L4::Tcp => Ok(16),
        L4::Udp => Ok(6),
        _ => Err(()),
    }
}

pub struct XdpPacket<'a>(pub &'a XdpContext);

impl Packet for XdpPacket<'_> {
    #[inline(always)]
    fn data(&self) -> usize {
        self.0.data()
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        self.0.data_end()
    }

    #[inline(always)]
    fn frame_len(&self) -> u32 {
        (self.0.data_end() - self.0.data()) as u32
    }

    #[inline(always)]
    fn rewrite_tuple(&self, pkt: &Ipv4Packet, to: &Tuple) -> Result<(), ()> {
        let (data, end) = (self.data(), self.data_end());
        let csum_off = l4_csum_off(pkt.l4)?;
        let ip = data + (pkt.l3_off & MAX_L4_OFF);
        let l4 = data + (pkt.l4_off & MAX_L4_OFF);
        // Re-checked here (not trusted from the parser) so the verifier sees the bounds.
        if ip + core::mem::size_of::<Ipv4Hdr>() > end || l4 + csum_off + 2 > end {
            return Err(());
        }
        let ip = ip as *mut Ipv4Hdr;
        let ports = l4 as *mut [u16; 2];
        let check = (l4 + csum_off) as *mut u16;
        unsafe {
            let (old_s, old_d) = ((*ip).saddr, (*ip).daddr);
            let [old_sp, old_dp] = *ports;
            let mut ipc = csum::replace4((*ip).check, old_s, to.saddr);
            ipc = csum::replace4(ipc, old_d, to.daddr);
            let old_c = *check;
            let mut c = csum::replace4(old_c, old_s, to.saddr);
            c = csum::replace4(c, old_d, to.daddr);
            c = csum::replace2(c, old_sp, to.sport);
            c = csum::replace2(c, old_dp, to.dport);
            if pkt.l4 == L4::Udp {
                c = csum::udp_fixup(old_c, c);
            }
            (*ip).saddr = to.saddr;
            (*ip).daddr = to.daddr;
            (*ip).check = ipc;
            *ports = [to.sport, to.dport];
            *check = c;
        }
        Ok(())
    }

    #[inline(always)]
    fn rewrite_addrs(&self, pkt: &Ipv4Packet, saddr: u32, daddr: u32) -> Result<(), ()> {
        let ip = self.data() + (pkt.l3_off & MAX_L4_OFF);
        if ip + core::mem::size_of::<Ipv4Hdr>() > self.data_end() {
            return Err(());
        }
        let ip = ip as *mut Ipv4Hdr;
        unsafe {
            let mut c = csum::replace4((*ip).check, (*ip).saddr, saddr);
            c = csum::replace4(c, (*ip).daddr, daddr);
            (*ip).saddr = saddr;
            (*ip).daddr = daddr;
            (*ip).check = c;
        }
        Ok(())
    }

    #[inline(always)]
    fn resize(&self, len: u32) -> Result<(), ()> {
        // Opaque to LLVM: otherwise it folds `len - (end - data)` into arithmetic on pkt_end,
        // which the verifier forbids.
        let cur = core::hint::black_box(self.frame_len());
        let delta = len as i32 - cur as i32;
        let rc = unsafe { bpf_xdp_adjust_tail(self.0.ctx, delta) };
        if rc == 0 {
            Ok(())
        } else {
            Err(())
        }
    }

    #[inline(always)]
    // The helpers, not direct access: these run on rare paths (ICMP), and LLVM likes to reuse an
    // earlier, unchecked copy of the same packet pointer, which the verifier then refuses.
    fn store<const N: usize>(&self, offset: usize, bytes: &[u8; N]) -> Result<(), ()> {
        let mut buf = *bytes;
        let rc = unsafe {
            bpf_xdp_store_bytes(self.0.ctx, offset as u32, buf.as_mut_ptr().cast(), N as u32)
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(())
        }
    }

    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Result<[u8; N], ()> {
        let mut buf = [0u8; N];
        let rc = unsafe {
            bpf_xdp_load_bytes(self.0.ctx, offset as u32, buf.as_mut_ptr().cast(), N as u32)
        };
        if rc == 0 {
            Ok(buf)
        } else {
            Err(())
        }
    }
}

pub struct TcPacket<'a>(pub &'a TcContext);

impl TcPacket<'_> {
    /// Replaces a 32-bit IP address at `off`: IP header checksum and the L4 pseudo-header sum.
    #[inline(always)]
    fn replace_addr(
        &self,
        pkt: &Ipv4Packet,
        off: usize,
        l4_check: usize,
        mangled: u64,
        to: u32,
    ) -> Result<(), ()> {
        let ctx = self.0;
        let old: u32 = ctx.load(off).map_err(|_| ())?;
        if old == to {
            return Ok(());
        }
        ctx.l4_csum_replace(
            l4_check,
            old as u64,
            to as u64,
            BPF_F_PSEUDO_HDR as u64 | mangled | 4,
        )
        .map_err(|_| ())?;
        ctx.l3_csum_replace(pkt.l3_off + 10, old as u64, to as u64, 4)
            .map_err(|_| ())?;
        ctx.store(off, &to, 0).map_err(|_| ())
    }

    #[inline(always)]
    fn replace_port(&self, off: usize, l4_check: usize, mangled: u64, to: u16) -> Result<(), ()> {
        let ctx = self.0;
        let old: u16 = ctx.load(off).map_err(|_| ())?;
        if old == to {
            return Ok(());
        }
        ctx.l4_csum_replace(l4_check, old as u64, to as u64, mangled | 2)
            .map_err(|_| ())?;
        ctx.store(off, &to, 0).map_err(|_| ())
    }
}

impl Packet for TcPacket<'_> {
    #[inline(always)]
    fn data(&self) -> usize {
        self.0.data()
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        self.0.data_end()
    }

    #[inline(always)]
    fn frame_len(&self) -> u32 {
        self.0.len()
    }

    #[inline(always)]
    fn rewrite_tuple(&self, pkt: &Ipv4Packet, to: &Tuple) -> Result<(), ()> {
        let l4_check = pkt.l4_off + l4_csum_off(pkt.l4)?;
        // UDP checksum 0 means "none": the helper leaves it, and never writes a computed 0.
        let mangled = if pkt.l4 == L4::Udp {
            BPF_F_MARK_MANGLED_0 as u64
        } else {
            0
        };
        self.replace_addr(pkt, pkt.l3_off + 12, l4_check, mangled, to.saddr)?;
        self.replace_addr(pkt, pkt.l3_off + 16, l4_check, mangled, to.daddr)?;
        self.replace_port(pkt.l4_off, l4_check, mangled, to.sport)?;
        self.replace_port(pkt.l4_off + 2, l4_check, mangled, to.dport)
    }

    #[inline(always)]
    fn rewrite_addrs(&self, pkt: &Ipv4Packet, saddr: u32, daddr: u32) -> Result<(), ()> {
        for (off, to) in [(pkt.l3_off + 12, saddr), (pkt.l3_off + 16, daddr)] {
            let ctx = self.0;
            let old: u32 = ctx.load(off).map_err(|_| ())?;
            if old != to {
                ctx.l3_csum_replace(pkt.l3_off + 10, old as u64, to as u64, 4)
                    .map_err(|_| ())?;
                ctx.store(off, &to, 0).map_err(|_| ())?;
            }
        }
        Ok(())
    }

    #[inline(always)]
    fn resize(&self, len: u32) -> Result<(), ()> {
        let rc = unsafe { bpf_skb_change_tail(self.0.skb.skb, len, 0) };
        if rc == 0 {
            Ok(())
        } else {
            Err(())
        }
    }

    #[inline(always)]
    fn store<const N: usize>(&self, offset: usize, bytes: &[u8; N]) -> Result<(), ()> {
        self.0.store(offset, bytes, 0).map_err(|_| ())
    }

    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Result<[u8; N], ()> {
        self.0.load(offset).map_err(|_| ())
    }
}
