//! The few bpf(2) calls aya has no API for: creating standalone maps and loading a program from
//! raw instructions. The benchmark's packet injector is such a program (see `injector.rs`): the
//! eBPF crate must not change for the benchmark, and aya loads programs only from ELF objects.
//! Once loaded, the injector is pinned and reopened as an `aya::programs::Xdp`, so test runs go
//! through aya's `TestRun` like the fixtures do.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use anyhow::{bail, Context, Result};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_MAP_LOOKUP_AND_DELETE_BATCH: libc::c_long = 25;

pub const BPF_MAP_TYPE_ARRAY: u32 = 2;
pub const BPF_MAP_TYPE_PROG_ARRAY: u32 = 3;
pub const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
pub const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
/// Array map usable with mmap(2).
pub const BPF_F_MMAPABLE: u32 = 1 << 10;

/// bpf_attr is a union of per-command structs; 128 zeroed bytes cover every command used here
/// (the kernel accepts a larger attr whose tail is zero).
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Attr {
        Attr([0; 128])
    }
    fn u32(&mut self, off: usize, v: u32) -> &mut Self {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(&mut self, off: usize, v: u64) -> &mut Self {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn get_u32(&self, off: usize) -> u32 {
        u32::from_ne_bytes(self.0[off..off + 4].try_into().unwrap())
    }
}

fn sys_bpf(cmd: libc::c_long, attr: &mut Attr) -> std::io::Result<libc::c_long> {
    // SAFETY: attr is a valid, initialised 128-byte buffer; pointers inside it (set by callers)
    // point at live buffers for the duration of the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut Attr,
            std::mem::size_of::<Attr>(),
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// A map created with BPF_MAP_CREATE.
pub struct RawMap {
    pub fd: OwnedFd,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

impl RawMap {
    pub fn create(
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        flags: u32,
        name: &str,
    ) -> Result<RawMap> {
        let mut a = Attr::new();
        a.u32(0, map_type)
            .u32(4, key_size)
            .u32(8, value_size)
            .u32(12, max_entries)
            .u32(16, flags);
        let n = name.as_bytes();
        let len = n.len().min(15);
        a.0[28..28 + len].copy_from_slice(&n[..len]);
        let fd =
            sys_bpf(BPF_MAP_CREATE, &mut a).with_context(|| format!("BPF_MAP_CREATE {name}"))?;
        // SAFETY: the kernel returned a new fd that nothing else owns.
        Ok(RawMap {
            fd: unsafe { OwnedFd::from_raw_fd(fd as RawFd) },
            key_size,
            value_size,
            max_entries,
        })
    }

    pub fn update(&self, key: &[u8], value: &[u8]) -> Result<()> {
        if key.len() != self.key_size as usize || value.len() != self.value_size as usize {
            bail!("map update with wrong key/value size");
        }
        let mut a = Attr::new();
        a.u32(0, self.fd.as_raw_fd() as u32)
            .u64(8, key.as_ptr() as u64)
            .u64(16, value.as_ptr() as u64)
            .u64(24, 0);
        sys_bpf(BPF_MAP_UPDATE_ELEM, &mut a).context("BPF_MAP_UPDATE_ELEM")?;
        Ok(())
    }

    pub fn lookup(&self, key: &[u8], value: &mut [u8]) -> Result<()> {
        let mut a = Attr::new();
        a.u32(0, self.fd.as_raw_fd() as u32)
            .u64(8, key.as_ptr() as u64)
            .u64(16, value.as_mut_ptr() as u64);
        sys_bpf(BPF_MAP_LOOKUP_ELEM, &mut a).context("BPF_MAP_LOOKUP_ELEM")?;
        Ok(())
    }
}

/// A BPF_F_MMAPABLE array mapped into this process.
pub struct MappedArray {
    pub map: RawMap,
    ptr: *mut u8,
    len: usize,
}

// The mapping is plain shared memory; access is synchronised by the caller (one writer, and
// the kernel reads it only during test runs the writer starts).
unsafe impl Send for MappedArray {}
unsafe impl Sync for MappedArray {}

impl MappedArray {
    pub fn create(value_size: u32, max_entries: u32, name: &str) -> Result<MappedArray> {
        let map = RawMap::create(
            BPF_MAP_TYPE_ARRAY,
            4,
            value_size,
            max_entries,
            BPF_F_MMAPABLE,
            name,
        )?;
        let page = 4096usize;
        let len =
            ((value_size as usize).div_ceil(8) * 8 * max_entries as usize).div_ceil(page) * page;
        // SAFETY: mapping a BPF array fd with a length within the map's size.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("mmap of BPF array {name}"));
        }
        Ok(MappedArray {
            map,
            ptr: ptr as *mut u8,
            len,
        })
    }

    /// The bytes of element `i`.
    pub fn element(&self, i: u32) -> &[u8] {
        assert!(i < self.map.max_entries);
        let stride = (self.map.value_size as usize).div_ceil(8) * 8;
        // SAFETY: in bounds of the mapping (checked above).
        unsafe {
            std::slice::from_raw_parts(
                self.ptr.add(i as usize * stride),
                self.map.value_size as usize,
            )
        }
    }

    /// The bytes of element `i` (value_size rounded up to 8 per element).
    pub fn element_mut(&mut self, i: u32) -> &mut [u8] {
        assert!(i < self.map.max_entries);
        let stride = (self.map.value_size as usize).div_ceil(8) * 8;
        let off = i as usize * stride;
        // SAFETY: in bounds of the mapping (checked above), exclusively borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(off), self.map.value_size as usize) }
    }
}

impl Drop for MappedArray {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what create() mapped.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}

/// Loads an XDP program from raw instructions; returns its fd or the verifier log.
pub fn load_xdp(insns: &[Insn], name: &str) -> Result<OwnedFd> {
    load(BPF_PROG_TYPE_XDP, BPF_XDP, insns, name)
}

/// Loads a tc (SCHED_CLS) program, attachable with tcx.
pub fn load_tc(insns: &[Insn], name: &str) -> Result<OwnedFd> {
    load(BPF_PROG_TYPE_SCHED_CLS, 0, insns, name)
}

fn load(prog_type: u32, attach_type: u32, insns: &[Insn], name: &str) -> Result<OwnedFd> {
    let license = CString::new("GPL").unwrap();
    let mut log = vec![0u8; 1 << 20];
    let mut a = Attr::new();
    a.u32(0, prog_type)
        .u32(4, insns.len() as u32)
        .u64(8, insns.as_ptr() as u64)
        .u64(16, license.as_ptr() as u64)
        .u32(24, 1)
        .u32(28, log.len() as u32)
        .u64(32, log.as_mut_ptr() as u64)
        .u32(68, attach_type);
    let n = name.as_bytes();
    let len = n.len().min(15);
    a.0[48..48 + len].copy_from_slice(&n[..len]);
    match sys_bpf(BPF_PROG_LOAD, &mut a) {
        // SAFETY: new fd owned by nobody else.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }),
        Err(e) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            bail!(
                "loading {name}: {e}\n{}",
                String::from_utf8_lossy(&log[..end])
            )
        }
    }
}

/// Deletes every entry of a hash/LRU map (conntrack flush between runs) with
/// BPF_MAP_LOOKUP_AND_DELETE_BATCH; returns how many were deleted.
pub fn drain_hash(fd: RawFd, key_size: usize, value_size: usize) -> Result<usize> {
    const CHUNK: u32 = 8192;
    let mut keys = vec![0u8; key_size * CHUNK as usize];
    // Per-CPU maps would need value_size * ncpus; CT_V2 is a plain LRU hash.
    let mut values = vec![0u8; value_size * CHUNK as usize];
    let mut total = 0usize;
    loop {
        // in_batch NULL: the kernel starts at the first bucket each time, as entries are deleted.
        let mut out_batch = 0u64;
        let mut a = Attr::new();
        a.u64(0, 0)
            .u64(8, &mut out_batch as *mut u64 as u64)
            .u64(16, keys.as_mut_ptr() as u64)
            .u64(24, values.as_mut_ptr() as u64)
            .u32(32, CHUNK)
            .u32(36, fd as u32);
        let r = sys_bpf(BPF_MAP_LOOKUP_AND_DELETE_BATCH, &mut a);
        let count = a.get_u32(32) as usize;
        total += count;
        match r {
            Ok(_) if count > 0 => continue,
            Ok(_) => return Ok(total),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(total),
            Err(e) => return Err(e).context("BPF_MAP_LOOKUP_AND_DELETE_BATCH"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Instructions
// ---------------------------------------------------------------------------------------------

/// One eBPF instruction (struct bpf_insn).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Insn {
    pub code: u8,
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | (dst & 0x0f),
        off,
        imm,
    }
}

pub const R0: u8 = 0;
pub const R1: u8 = 1;
pub const R2: u8 = 2;
pub const R3: u8 = 3;
pub const R4: u8 = 4;
pub const R5: u8 = 5;
pub const R6: u8 = 6;
pub const R7: u8 = 7;
pub const R8: u8 = 8;
pub const R9: u8 = 9;
pub const R10: u8 = 10;

/// dst = src (64-bit)
pub const fn mov64_reg(dst: u8, src: u8) -> Insn {
    insn(0xbf, dst, src, 0, 0)
}
/// dst = imm (64-bit, sign-extended)
pub const fn mov64_imm(dst: u8, imm: i32) -> Insn {
    insn(0xb7, dst, 0, 0, imm)
}
/// dst += imm
pub const fn add64_imm(dst: u8, imm: i32) -> Insn {
    insn(0x07, dst, 0, 0, imm)
}
/// dst += src
pub const fn add64_reg(dst: u8, src: u8) -> Insn {
    insn(0x0f, dst, src, 0, 0)
}
/// dst %= src (unsigned; by zero leaves dst unchanged)
pub const fn mod64_reg(dst: u8, src: u8) -> Insn {
    insn(0x9f, dst, src, 0, 0)
}
/// dst = *(u64 *)(src + off)
pub const fn ldx_dw(dst: u8, src: u8, off: i16) -> Insn {
    insn(0x79, dst, src, off, 0)
}
/// dst = *(u32 *)(src + off)
pub const fn ldx_w(dst: u8, src: u8, off: i16) -> Insn {
    insn(0x61, dst, src, off, 0)
}
/// dst = *(u16 *)(src + off)
pub const fn ldx_h(dst: u8, src: u8, off: i16) -> Insn {
    insn(0x69, dst, src, off, 0)
}
/// lock *(u64 *)(dst + off) += src (BPF_ATOMIC BPF_ADD)
pub const fn atomic_add_dw(dst: u8, off: i16, src: u8) -> Insn {
    insn(0xdb, dst, src, off, 0)
}
/// *(u64 *)(dst + off) = src
pub const fn stx_dw(dst: u8, off: i16, src: u8) -> Insn {
    insn(0x7b, dst, src, off, 0)
}
/// *(u32 *)(dst + off) = src
pub const fn stx_w(dst: u8, off: i16, src: u8) -> Insn {
    insn(0x63, dst, src, off, 0)
}
/// *(u32 *)(dst + off) = imm
pub const fn st_w(dst: u8, off: i16, imm: i32) -> Insn {
    insn(0x62, dst, 0, off, imm)
}
/// if dst == imm goto +off
pub const fn jeq_imm(dst: u8, imm: i32, off: i16) -> Insn {
    insn(0x15, dst, 0, off, imm)
}
/// if dst != imm goto +off
pub const fn jne_imm(dst: u8, imm: i32, off: i16) -> Insn {
    insn(0x55, dst, 0, off, imm)
}
/// if dst > src goto +off (unsigned)
pub const fn jgt_reg(dst: u8, src: u8, off: i16) -> Insn {
    insn(0x2d, dst, src, off, 0)
}
/// call helper
pub const fn call(helper: i32) -> Insn {
    insn(0x85, 0, 0, 0, helper)
}
pub const fn exit() -> Insn {
    insn(0x95, 0, 0, 0, 0)
}
/// dst = map (two instructions: BPF_LD_IMM64 with BPF_PSEUDO_MAP_FD)
pub fn ld_map_fd(dst: u8, fd: RawFd) -> [Insn; 2] {
    [insn(0x18, dst, 1, 0, fd), insn(0, 0, 0, 0, 0)]
}

pub const HELPER_MAP_LOOKUP_ELEM: i32 = 1;
pub const HELPER_TAIL_CALL: i32 = 12;

const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;

/// What BPF_PROG_TEST_RUN reported.
#[derive(Clone, Copy, Debug)]
pub struct TestRunOut {
    pub retval: u32,
    /// Average nanoseconds per run (per frame in live-frames mode), measured by the kernel.
    pub duration_ns: u32,
    pub data_size_out: u32,
}

/// BPF_PROG_TEST_RUN on a program fd. `live_batch`: Some(batch) for XDP live frames.
pub fn prog_test_run(
    prog_fd: RawFd,
    data_in: &[u8],
    data_out: Option<&mut [u8]>,
    ctx_in: Option<&[u8]>,
    repeat: u32,
    live_batch: Option<u32>,
) -> std::io::Result<TestRunOut> {
    let mut a = Attr::new();
    a.u32(0, prog_fd as u32)
        .u32(8, data_in.len() as u32)
        .u64(16, data_in.as_ptr() as u64)
        .u32(32, repeat);
    if let Some(out) = data_out {
        a.u32(12, out.len() as u32).u64(24, out.as_mut_ptr() as u64);
    }
    if let Some(ctx) = ctx_in {
        a.u32(40, ctx.len() as u32).u64(48, ctx.as_ptr() as u64);
    }
    if let Some(batch) = live_batch {
        a.u32(64, BPF_F_TEST_XDP_LIVE_FRAMES).u32(72, batch);
    }
    sys_bpf(BPF_PROG_TEST_RUN, &mut a)?;
    Ok(TestRunOut {
        retval: a.get_u32(4),
        duration_ns: a.get_u32(36),
        data_size_out: a.get_u32(12),
    })
}

const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// (run_time_ns, run_cnt) of a program (counted only while BPF_ENABLE_STATS is on).
pub fn prog_run_stats(fd: RawFd) -> Result<(u64, u64)> {
    let mut info = [0u8; 256];
    let mut a = Attr::new();
    a.u32(0, fd as u32)
        .u32(4, info.len() as u32)
        .u64(8, info.as_mut_ptr() as u64);
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a).context("BPF_OBJ_GET_INFO_BY_FD")?;
    let rd = |off: usize| u64::from_ne_bytes(info[off..off + 8].try_into().unwrap());
    Ok((rd(192), rd(200)))
}

const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;

/// Name and (run_time_ns, run_cnt) of the loaded program with this id.
pub fn prog_stats_by_id(id: u32) -> Result<(String, u64, u64)> {
    let mut a = Attr::new();
    a.u32(0, id);
    let fd = sys_bpf(BPF_PROG_GET_FD_BY_ID, &mut a)
        .with_context(|| format!("BPF_PROG_GET_FD_BY_ID {id}"))?;
    // SAFETY: new fd owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    let mut info = [0u8; 256];
    let mut a = Attr::new();
    a.u32(0, fd.as_raw_fd() as u32)
        .u32(4, info.len() as u32)
        .u64(8, info.as_mut_ptr() as u64);
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a).context("BPF_OBJ_GET_INFO_BY_FD")?;
    let name_end = info[64..80].iter().position(|&b| b == 0).unwrap_or(16);
    let name = String::from_utf8_lossy(&info[64..64 + name_end]).into_owned();
    let rd = |off: usize| u64::from_ne_bytes(info[off..off + 8].try_into().unwrap());
    Ok((name, rd(192), rd(200)))
}

const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;
/// tcx: insert before `relative_fd` (0: before every program, i.e. first).
const BPF_F_BEFORE: u32 = 1 << 3;

/// Attaches a tc program first on `ifindex`'s tcx ingress (or egress) chain, in the calling
/// thread's namespace; the link lasts as long as the returned fd.
fn tcx_attach_first(prog: RawFd, ifindex: u32, ingress: bool) -> Result<OwnedFd> {
    let mut a = Attr::new();
    let kind = if ingress {
        BPF_TCX_INGRESS
    } else {
        BPF_TCX_EGRESS
    };
    a.u32(0, prog as u32)
        .u32(4, ifindex)
        .u32(8, kind)
        .u32(12, BPF_F_BEFORE);
    let fd = sys_bpf(BPF_LINK_CREATE, &mut a).context("BPF_LINK_CREATE (tcx)")?;
    // SAFETY: new fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// A tc program loaded from raw instructions and attached first on tc ingress of a device
/// (`ifindex` in namespace `ns`); detached when dropped.
pub struct TcxFirst {
    pub prog: OwnedFd,
    _link: OwnedFd,
}

impl TcxFirst {
    pub fn attach(ns: &str, ifindex: u32, insns: &[Insn], name: &str) -> Result<TcxFirst> {
        let prog = load_tc(insns, name)?;
        let fd = prog.as_raw_fd();
        let link =
            dataplane_lab::netns::in_netns(ns, move || tcx_attach_first(fd, ifindex, true))??;
        Ok(TcxFirst { prog, _link: link })
    }
}
