//! The one load/store per context: what the pipelines need from a hook's context, implemented
//! for XDP (direct packet writes, checksums updated by hand) and tc (kernel helpers, which also
//! keep the skb's checksum state right: CHECKSUM_PARTIAL skbs from local pods hold a
//! pseudo-header sum, not a checksum).

use core::mem::{offset_of, size_of, MaybeUninit};

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::{
        bpf_skb_change_tail, bpf_xdp_adjust_meta, bpf_xdp_adjust_tail, bpf_xdp_load_bytes,
        bpf_xdp_store_bytes,
    },
    programs::{TcContext, XdpContext},
};
// The metadata word of a frame XDP deferred to tc ingress: one definition for both sides.
use dataplane_common::programs::{TC_INDEX_EGRESS_DONE, XDP_DEFER_MAGIC as DEFER_MAGIC};

use super::{
    csum,
    flow::{Addr, Tuple},
    hdr::{EthIpv4, Ipv4Hdr, TCP_CHECK_OFF, UDP_CHECK_OFF},
    parse::{self, Parsed, L4, MAX_L4_OFF},
};

/// 1 when the kernel lets XDP programs reserve metadata (`bpf_xdp_adjust_meta`), which is how
/// `xdp_uplink` marks a frame it leaves to tc ingress; set by the loader from a helper probe.
/// Some kernels refuse the helper to XDP (seen here: a 6.18 build whose verifier says "program
/// of this type cannot use helper bpf_xdp_adjust_meta#54"), and the object must load there too:
/// with this 0 the verifier never walks the call (a frozen .rodata constant prunes the branch).
/// Unmarked, tc ingress runs the whole ingress pipeline on every frame XDP passed; a frame XDP
/// already translated carries the rewritten tuple there, which no ingress entry or frontend
/// matches, so it passes.
#[no_mangle]
static XDP_META: u32 = 0;

#[inline(always)]
fn xdp_meta() -> bool {
    crate::config::load_time_flag(&XDP_META)
}

/// A context operation the kernel refused (out of bounds, no room): the caller names the
/// reason.
pub struct Failed;

/// `Ok` when a helper returned 0.
#[inline(always)]
fn rc(rc: i64) -> Result<(), Failed> {
    if rc == 0 {
        Ok(())
    } else {
        Err(Failed)
    }
}

/// `Packet::data` and `Packet::data_end` for a wrapper of an aya context: both contexts have
/// them as inherent methods of the same meaning (the linear data's bounds), which no aya trait
/// offers.
macro_rules! linear_bounds {
    () => {
        #[inline(always)]
        fn data(&self) -> usize {
            self.0.data()
        }

        #[inline(always)]
        fn data_end(&self) -> usize {
            self.0.data_end()
        }
    };
}

pub trait Packet {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// Whole frame length (skb->len for tc).
    fn frame_len(&self) -> u32;
    /// A copy of the header (or bytes) `T` at `offset`, through the load helper: for headers
    /// the cursor cannot reach (past the linear data) or that must not add packet-pointer
    /// state to the verifier's (the monitor, rare paths).
    fn load<T: Copy>(&self, offset: usize) -> Option<T>;
    /// A copy of the header `T` at `offset`: read straight from the linear data when it is
    /// there (no helper call: the per-packet paths), else through [`load`](Self::load).
    /// `offset` must be below [`MAX_L4_OFF`] plus the header (it is masked with it so the
    /// verifier sees a bounded pointer).
    #[inline(always)]
    fn read<T: Copy>(&self, offset: usize) -> Option<T> {
        let at = self.data() + (offset & MAX_L4_OFF);
        if offset <= MAX_L4_OFF && at + size_of::<T>() <= self.data_end() {
            // SAFETY: inside the linear data (checked above). A plain read, not an unaligned
            // one: BPF allows unaligned packet loads on this architecture, and read_unaligned
            // would become byte loads. (The parser's header pointers are read the same way.)
            return Some(unsafe { core::ptr::read(at as *const T) });
        }
        self.load(offset)
    }
    /// Writes `v` at `offset`.
    fn store<T: Copy>(&self, offset: usize, v: &T) -> Result<(), Failed>;
    /// Writes the header block `v` at the start of the frame (an encapsulation's outer
    /// headers, into the room just made for them).
    #[inline(always)]
    fn write_front<T: Copy>(&self, v: &T) -> Result<(), Failed> {
        self.store(0, v)
    }
    /// Grows or shrinks the frame to `len` bytes.
    fn resize(&self, len: u32) -> Result<(), Failed>;
    /// Rewrites IP addresses and TCP/UDP ports to `to`, updating every checksum.
    fn rewrite_tuple(&self, pkt: &Parsed, to: &Tuple) -> Result<(), Failed>;
    /// Rewrites the IP addresses only (a non-first fragment: its transport checksum, in the
    /// first fragment, was updated with the first fragment's rewrite).
    fn rewrite_addrs(&self, pkt: &Parsed, saddr: Addr, daddr: Addr) -> Result<(), Failed>;
    /// Whether this hook must leave the TCP/UDP packet to a later one because it cannot
    /// rewrite its checksum safely (XDP: a partial checksum, see [`XdpPacket::partial_csum`]);
    /// a deferred packet is marked so the later hook knows. tc's helpers handle every
    /// checksum state: never.
    #[inline(always)]
    fn defer(&self, _pkt: &Parsed) -> bool {
        false
    }
    /// Notes on the packet, translated at this ingress hook, that no egress hook of this node
    /// has anything to do with it ([`TC_INDEX_EGRESS_DONE`]). tc only: an XDP frame has no skb
    /// yet.
    #[inline(always)]
    fn note_egress_free(&self) {}
    /// Whether an ingress hook noted that on the packet; forgets it either way.
    #[inline(always)]
    fn take_egress_free(&self) -> bool {
        false
    }
}

/// Offset of the checksum within the transport header.
#[inline(always)]
fn l4_csum_off(l4: L4) -> Result<usize, Failed> {
    match l4 {
        L4::Tcp => Ok(TCP_CHECK_OFF),
        L4::Udp => Ok(UDP_CHECK_OFF),
        _ => Err(Failed),
    }
}

/// Where the fields the tc helpers rewrite sit in an IPv4 header.
const IPV4_SADDR_OFF: usize = offset_of!(Ipv4Hdr, saddr);
const IPV4_CHECK_OFF: usize = offset_of!(Ipv4Hdr, check);

pub struct XdpPacket<'a>(pub &'a XdpContext);

impl XdpPacket<'_> {
    /// Whether the transport checksum field holds only the pseudo-header sum of the packet as
    /// it is: a CHECKSUM_PARTIAL skb handed over by a veth peer with tx offload (its stack left
    /// the sum to "the device"). XDP cannot see the skb's checksum state: an incremental update
    /// of such a field as if it were a full checksum corrupts it, and XDP_TX (which turns the
    /// skb into a frame) drops the state, so the seed would go out as the checksum. A complete
    /// checksum equals the seed only by chance (1 in 65,535): such a packet is deferred too,
    /// which costs it the fast path, never its correctness. O(1): header fields only.
    #[inline(always)]
    pub fn partial_csum(&self, pkt: &Parsed) -> bool {
        let Ok(csum_off) = l4_csum_off(pkt.l4) else {
            return false;
        };
        // The load helper, not direct reads: this runs once per packet past the pre-filter,
        // and two more packet pointers in `ingress` made LLVM reuse a register the verifier
        // had not seen written.
        let Some(check) = self.load::<u16>(pkt.l4_off + csum_off) else {
            return false;
        };
        let Some(ip) = self.load::<Ipv4Hdr>(pkt.l3_off) else {
            return false;
        };
        // UDP without a checksum: nothing to corrupt.
        if check == 0 {
            return false;
        }
        let l4_len = u16::from_be(ip.tot_len).wrapping_sub((pkt.l4_off - pkt.l3_off) as u16);
        check == csum::pseudo_seed(ip.saddr, ip.daddr, ip.proto, l4_len)
    }

    /// The device the frame arrived on.
    #[inline(always)]
    pub fn ifindex(&self) -> u32 {
        unsafe { (*self.0.ctx).ingress_ifindex }
    }

    /// Marks the frame for tc ingress (the XDP metadata word [`DEFER_MAGIC`]). Without
    /// metadata ([`XDP_META`] 0) there is nothing to write: tc ingress treats every frame XDP
    /// passed as deferred.
    #[inline(always)]
    pub fn mark_deferred(&self) -> bool {
        if !xdp_meta() {
            return true;
        }
        if unsafe { bpf_xdp_adjust_meta(self.0.ctx, -4) } != 0 {
            return false;
        }
        let (meta, data) = (self.0.metadata(), self.0.data());
        if meta + 4 > data {
            return false;
        }
        // SAFETY: meta .. meta + 4 is the metadata area just reserved (checked above).
        unsafe { core::ptr::write_unaligned(meta as *mut u32, DEFER_MAGIC) };
        true
    }
}

impl Packet for XdpPacket<'_> {
    #[inline(always)]
    fn defer(&self, pkt: &Parsed) -> bool {
        // Unmarked (no room for metadata), the packet is translated here as before.
        self.partial_csum(pkt) && self.mark_deferred()
    }

    linear_bounds!();

    #[inline(always)]
    fn frame_len(&self) -> u32 {
        (self.0.data_end() - self.0.data()) as u32
    }

    #[inline(always)]
    fn rewrite_tuple(&self, pkt: &Parsed, to: &Tuple) -> Result<(), Failed> {
        let (data, end) = (self.data(), self.data_end());
        let csum_off = l4_csum_off(pkt.l4)?;
        let ip = data + (pkt.l3_off & MAX_L4_OFF);
        let l4 = data + (pkt.l4_off & MAX_L4_OFF);
        // Re-checked here (not trusted from the parser) so the verifier sees the bounds.
        if ip + size_of::<Ipv4Hdr>() > end || l4 + csum_off + 2 > end {
            return Err(Failed);
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
    fn rewrite_addrs(&self, pkt: &Parsed, saddr: Addr, daddr: Addr) -> Result<(), Failed> {
        let ip = self.data() + (pkt.l3_off & MAX_L4_OFF);
        if ip + size_of::<Ipv4Hdr>() > self.data_end() {
            return Err(Failed);
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
    fn resize(&self, len: u32) -> Result<(), Failed> {
        // Opaque to LLVM: otherwise it folds `len - (end - data)` into arithmetic on pkt_end,
        // which the verifier forbids.
        let cur = core::hint::black_box(self.frame_len());
        let delta = len as i32 - cur as i32;
        rc(unsafe { bpf_xdp_adjust_tail(self.0.ctx, delta) } as i64)
    }

    // The helpers, not direct access: these run on rare paths (ICMP, the monitor, the
    // decapsulation's outer headers), and LLVM likes to reuse an earlier, unchecked copy of the
    // same packet pointer, which the verifier then refuses.
    #[inline(always)]
    fn store<T: Copy>(&self, offset: usize, v: &T) -> Result<(), Failed> {
        // The helper only reads its buffer (the `*mut` is the binding's): no copy, which would
        // take another size_of::<T>() of the 512-byte stack.
        rc(unsafe {
            bpf_xdp_store_bytes(
                self.0.ctx,
                offset as u32,
                (v as *const T as *mut T).cast(),
                size_of::<T>() as u32,
            )
        })
    }

    #[inline(always)]
    fn load<T: Copy>(&self, offset: usize) -> Option<T> {
        let mut buf = MaybeUninit::<T>::uninit();
        let ok = unsafe {
            bpf_xdp_load_bytes(
                self.0.ctx,
                offset as u32,
                buf.as_mut_ptr().cast(),
                size_of::<T>() as u32,
            )
        } == 0;
        // SAFETY: the helper filled all of it.
        ok.then(|| unsafe { buf.assume_init() })
    }
}

pub struct TcPacket<'a>(pub &'a TcContext);

impl TcPacket<'_> {
    /// Rewrites both IP addresses to `to` (8 bytes at `saddr`): one checksum difference for
    /// the IP header and, with `l4` (its checksum's offset and `BPF_F_MARK_MANGLED_0` or 0),
    /// the transport's pseudo-header sum, so at most two checksum helpers and one store
    /// whatever changed. The old values are the parsed flow's (what the packet holds).
    #[inline(always)]
    fn replace_addrs(
        &self,
        pkt: &Parsed,
        l4: Option<(usize, u64)>,
        to: [u32; 2],
    ) -> Result<(), Failed> {
        let from = [pkt.flow.saddr, pkt.flow.daddr];
        if from == to {
            return Ok(());
        }
        let ctx = self.0;
        let d = csum::diff(from, to) as u64;
        // Size 0: `to` is a precomputed difference (`from` must be 0).
        if let Some((l4_check, mangled)) = l4 {
            ctx.l4_csum_replace(l4_check, 0, d, BPF_F_PSEUDO_HDR as u64 | mangled)
                .map_err(|_| Failed)?;
        }
        ctx.l3_csum_replace(pkt.l3_off + IPV4_CHECK_OFF, 0, d, 0)
            .map_err(|_| Failed)?;
        ctx.store(pkt.l3_off + IPV4_SADDR_OFF, &to, 0)
            .map_err(|_| Failed)
    }

    /// Rewrites both ports (4 bytes at the transport header's start): L4 checksum only (a
    /// CHECKSUM_PARTIAL packet's field holds no port: the helper leaves it).
    #[inline(always)]
    fn replace_ports(
        &self,
        pkt: &Parsed,
        l4_check: usize,
        mangled: u64,
        sport: u16,
        dport: u16,
    ) -> Result<(), Failed> {
        if pkt.flow.sport == sport && pkt.flow.dport == dport {
            return Ok(());
        }
        // The two 16-bit fields as one native 32-bit word, the way they sit in memory.
        let word = |s: u16, d: u16| s as u32 | (d as u32) << 16;
        let d = csum::diff([word(pkt.flow.sport, pkt.flow.dport)], [word(sport, dport)]);
        let ctx = self.0;
        ctx.l4_csum_replace(l4_check, 0, d as u64, mangled)
            .map_err(|_| Failed)?;
        ctx.store(pkt.l4_off, &[sport, dport], 0)
            .map_err(|_| Failed)
    }

    /// Headers may sit in paged skb data (GRO, veth); makes what the parser reads linear.
    ///
    /// Only what it reads: a pull copies payload out of the frags into the head, reallocating
    /// it when it is shared, and every TCP segment a local socket sends is a clone whose head
    /// holds just its headers (66 bytes with timestamps). Pulling the whole 128-byte window for
    /// each of them was a head copy per GSO burst on every hook it crossed.
    #[inline(always)]
    pub fn linearize(&self) {
        let ctx = self.0;
        let len = ctx.len();
        let linear = (ctx.data_end() - ctx.data()) as u32;
        if linear >= len || linear >= parse::PARSE_WINDOW {
            return;
        }
        let need = parse::parsed_len(self.load::<EthIpv4>(0));
        let want = if len < need { len } else { need };
        if linear < want {
            let _ = ctx.pull_data(want);
        }
    }

    /// [`Packet::write_front`] for tc: in place when the frame's head is linear that far (the
    /// encapsulation's room is: `bpf_skb_adjust_room` made it there), with 8-byte stores and no
    /// helper call, else with the store helper.
    #[inline(always)]
    fn write_front_in_place<T: Copy>(&self, v: &T) -> Result<(), Failed> {
        let n = size_of::<T>();
        let (data, end) = (self.0.data(), self.0.data_end());
        if data + n > end {
            return self.store(0, v);
        }
        #[repr(C, align(8))]
        struct Words<T>(T);
        let src = Words(*v);
        let words = &src as *const Words<T> as *const u8;
        let mut i = 0;
        // SAFETY: `data .. data + n` is linear packet data (checked above); the source is the
        // 8-byte aligned stack copy. Unaligned packet stores are allowed on this architecture.
        unsafe {
            while i + 8 <= n {
                core::ptr::write((data + i) as *mut u64, *(words.add(i) as *const u64));
                i += 8;
            }
            if i + 4 <= n {
                core::ptr::write((data + i) as *mut u32, *(words.add(i) as *const u32));
                i += 4;
            }
            if i + 2 <= n {
                core::ptr::write((data + i) as *mut u16, *(words.add(i) as *const u16));
                i += 2;
            }
            if i < n {
                core::ptr::write((data + i) as *mut u8, *words.add(i));
            }
        }
        Ok(())
    }

    /// Whether `xdp_uplink` deferred this frame to tc ingress (its metadata word; every frame
    /// where the kernel gives XDP no metadata, see [`XDP_META`]).
    #[inline(always)]
    pub fn deferred_by_xdp(&self) -> bool {
        if !xdp_meta() {
            return true;
        }
        let skb = self.0.skb.skb;
        let (meta, data) = unsafe { ((*skb).data_meta as usize, (*skb).data as usize) };
        if meta + 4 > data {
            return false;
        }
        // SAFETY: the metadata area, bounds checked above.
        unsafe { core::ptr::read_unaligned(meta as *const u32) == DEFER_MAGIC }
    }

    /// The device the hook runs on.
    #[inline(always)]
    pub fn ifindex(&self) -> u32 {
        unsafe { (*self.0.skb.skb).ifindex }
    }
}

impl TcPacket<'_> {
    /// Sets the packet's `tc_index` to `note` as it leaves this hook, whatever the verdict.
    /// tcx overwrites `tc_index` with `qdisc_skb_cb->tc_classid` (the `__sk_buff.tc_classid`
    /// a program writes) on a `TC_ACT_OK` (include/net/tcx.h, `tcx_action_code`) and leaves
    /// it as is on a redirect: both are written. The cb's `tc_classid` is scratch the
    /// kernel does not clear, so an ingress hook sets it on every packet (`forget_egress_note`).
    #[inline(always)]
    fn set_egress_note(&self, note: u16) {
        let skb = self.0.skb.skb;
        // SAFETY: tc programs may write `__sk_buff.tc_index` and `__sk_buff.tc_classid`.
        unsafe {
            (*skb).tc_index = note as u32;
            (*skb).tc_classid = note as u32;
        }
    }

    /// At an ingress hook: a note another netns or node left on the packet (veth pairs keep
    /// `tc_index`), or stale cb bytes, are not this node's.
    #[inline(always)]
    pub fn forget_egress_note(&self) {
        self.set_egress_note(0);
    }
}

impl Packet for TcPacket<'_> {
    #[inline(always)]
    fn note_egress_free(&self) {
        self.set_egress_note(TC_INDEX_EGRESS_DONE);
    }

    #[inline(always)]
    fn take_egress_free(&self) -> bool {
        // SAFETY: tc programs may read `__sk_buff.tc_index` (a u16 in the skb).
        if unsafe { (*self.0.skb.skb).tc_index } != TC_INDEX_EGRESS_DONE as u32 {
            return false;
        }
        self.set_egress_note(0);
        true
    }

    #[inline(always)]
    fn write_front<T: Copy>(&self, v: &T) -> Result<(), Failed> {
        self.write_front_in_place(v)
    }

    linear_bounds!();

    #[inline(always)]
    fn frame_len(&self) -> u32 {
        self.0.len()
    }

    #[inline(always)]
    fn rewrite_tuple(&self, pkt: &Parsed, to: &Tuple) -> Result<(), Failed> {
        let l4_check = pkt.l4_off + l4_csum_off(pkt.l4)?;
        // UDP checksum 0 means "none": the helper leaves it, and never writes a computed 0.
        let mangled = if pkt.l4 == L4::Udp {
            BPF_F_MARK_MANGLED_0 as u64
        } else {
            0
        };
        self.replace_addrs(pkt, Some((l4_check, mangled)), [to.saddr, to.daddr])?;
        self.replace_ports(pkt, l4_check, mangled, to.sport, to.dport)
    }

    #[inline(always)]
    fn rewrite_addrs(&self, pkt: &Parsed, saddr: Addr, daddr: Addr) -> Result<(), Failed> {
        self.replace_addrs(pkt, None, [saddr, daddr])
    }

    #[inline(always)]
    fn resize(&self, len: u32) -> Result<(), Failed> {
        rc(unsafe { bpf_skb_change_tail(self.0.skb.skb, len, 0) })
    }

    #[inline(always)]
    fn store<T: Copy>(&self, offset: usize, v: &T) -> Result<(), Failed> {
        self.0.store(offset, v, 0).map_err(|_| Failed)
    }

    #[inline(always)]
    fn load<T: Copy>(&self, offset: usize) -> Option<T> {
        self.0.load(offset).ok()
    }
}
