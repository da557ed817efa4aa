//! The packet injector: a tiny XDP program, built from raw instructions, that every timed run
//! goes through, for every mode alike.
//!
//! BPF_PROG_TEST_RUN runs an XDP program on frames made from one `data_in`; with
//! `BPF_F_TEST_XDP_LIVE_FRAMES` every frame the program passes is turned into an skb and
//! received by the interface given as `ingress_ifindex` (in the calling thread's network
//! namespace): the full stack (tc, netfilter, routing, forwarding, the veths to the backends)
//! processes it before the syscall returns. Two problems, one program:
//! - the pages behind live frames are recycled *without* being re-initialised, and the stack
//!   rewrites packets in place (DNAT, MAC rewrite on forwarding), so a recycled frame would be
//!   the previous, already-translated packet;
//! - a run must carry many different packets (a new flow per frame, flows spread over all
//!   services), not one `data_in` repeated.
//!
//! So the injector copies frame `offset + (counter++ % modulus)` of a template array (built in
//! userspace with real checksums) over the frame, then either returns XDP_PASS (iptables,
//! nftables, no-NAT and tc modes: the frame enters the stack) or tail-calls this dataplane's
//! `xdp_uplink` (XDP mode: the product's program decides, then the stack forwards what it
//! passes). Without live frames (the "xdp program only" rows) the same injector+tail call runs
//! `repeat` times on one buffer and the last output frame is returned.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use anyhow::{bail, Context, Result};
use aya::programs::Xdp;

use crate::rawbpf::*;

/// Every template frame is this long: Ethernet + IPv4 + UDP + 22 bytes of payload.
pub const FRAME_LEN: usize = 64;

/// `ctl` map value: what the next frame is.
#[derive(Clone, Copy, Debug, Default)]
pub struct Ctl {
    pub counter: u64,
    pub modulus: u64,
    pub offset: u64,
}

/// The template array and control map shared by all injector programs.
pub struct Templates {
    pub frames: MappedArray,
    pub ctl: RawMap,
}

impl Templates {
    pub fn new(capacity: u32) -> Result<Templates> {
        Ok(Templates {
            frames: MappedArray::create(FRAME_LEN as u32, capacity, "bench_frames")?,
            ctl: RawMap::create(BPF_MAP_TYPE_ARRAY, 4, 24, 1, 0, "bench_ctl")?,
        })
    }

    pub fn set(&mut self, index: u32, frame: &[u8]) {
        assert_eq!(
            frame.len(),
            FRAME_LEN,
            "template frames are {FRAME_LEN} bytes"
        );
        self.frames.element_mut(index).copy_from_slice(frame);
    }

    pub fn get(&self, index: u32) -> Vec<u8> {
        self.frames.element(index).to_vec()
    }

    /// Starts the injectors' walk over `frames` templates from `offset`: the next run's
    /// frame `i` is template `offset + i % frames`.
    pub fn walk(&self, offset: u32, frames: u32) -> Result<()> {
        self.set_ctl(Ctl {
            counter: 0,
            modulus: frames as u64,
            offset: offset as u64,
        })
    }

    pub fn set_ctl(&self, ctl: Ctl) -> Result<()> {
        let mut v = Vec::with_capacity(24);
        v.extend_from_slice(&ctl.counter.to_ne_bytes());
        v.extend_from_slice(&ctl.modulus.to_ne_bytes());
        v.extend_from_slice(&ctl.offset.to_ne_bytes());
        self.ctl.update(&0u32.to_ne_bytes(), &v)
    }

    pub fn counter(&self) -> Result<u64> {
        let mut v = [0u8; 24];
        self.ctl.lookup(&0u32.to_ne_bytes(), &mut v)?;
        Ok(u64::from_ne_bytes(v[..8].try_into().unwrap()))
    }
}

/// The injector's instructions. `tail`: prog-array fd to tail-call index 0 of, or None to pass.
fn program(t: &Templates, tail: Option<&RawMap>) -> Vec<Insn> {
    let mut p = Vec::new();
    p.push(mov64_reg(R6, R1));
    p.push(st_w(R10, -4, 0));
    p.extend(ld_map_fd(R1, t.ctl.fd.as_raw_fd()));
    p.push(mov64_reg(R2, R10));
    p.push(add64_imm(R2, -4));
    p.push(call(HELPER_MAP_LOOKUP_ELEM));
    let j1 = p.len();
    p.push(jeq_imm(R0, 0, 0)); // -> drop, patched below
    p.push(mov64_reg(R7, R0));
    p.push(ldx_dw(R8, R7, 0)); // counter
    p.push(mov64_reg(R1, R8));
    p.push(add64_imm(R1, 1));
    p.push(stx_dw(R7, 0, R1));
    p.push(ldx_dw(R9, R7, 8)); // modulus
    p.push(mod64_reg(R8, R9));
    p.push(ldx_dw(R1, R7, 16)); // offset
    p.push(add64_reg(R8, R1));
    p.push(stx_w(R10, -8, R8));
    p.extend(ld_map_fd(R1, t.frames.map.fd.as_raw_fd()));
    p.push(mov64_reg(R2, R10));
    p.push(add64_imm(R2, -8));
    p.push(call(HELPER_MAP_LOOKUP_ELEM));
    let j2 = p.len();
    p.push(jeq_imm(R0, 0, 0)); // -> drop
    p.push(ldx_w(R2, R6, 0)); // data
    p.push(ldx_w(R3, R6, 4)); // data_end
    p.push(mov64_reg(R4, R2));
    p.push(add64_imm(R4, FRAME_LEN as i32));
    let j3 = p.len();
    p.push(jgt_reg(R4, R3, 0)); // -> drop
    for k in 0..(FRAME_LEN / 8) as i16 {
        p.push(ldx_dw(R5, R0, 8 * k));
        p.push(stx_dw(R2, 8 * k, R5));
    }
    match tail {
        Some(progs) => {
            p.push(mov64_reg(R1, R6));
            p.extend(ld_map_fd(R2, progs.fd.as_raw_fd()));
            p.push(mov64_imm(R3, 0));
            p.push(call(HELPER_TAIL_CALL));
            // Only reached if the tail call failed: XDP_ABORTED, visible as an error below.
            p.push(mov64_imm(R0, 0));
            p.push(exit());
        }
        None => {
            p.push(mov64_imm(R0, 2)); // XDP_PASS
            p.push(exit());
        }
    }
    let drop = p.len();
    p.push(mov64_imm(R0, 1)); // XDP_DROP
    p.push(exit());
    for j in [j1, j2, j3] {
        p[j].off = (drop - j - 1) as i16;
    }
    p
}

/// One loaded injector.
pub struct Injector {
    fd: OwnedFd,
    /// Keeps the tail-call target slot alive.
    _progs: Option<RawMap>,
}

/// Where a test run's frames enter the stack.
#[derive(Clone, Copy, Debug)]
pub struct Ingress {
    pub ifindex: u32,
}

/// What one test run reported.
#[derive(Clone, Copy, Debug)]
pub struct RunResult {
    /// Kernel-measured nanoseconds per frame (BPF_PROG_TEST_RUN duration).
    pub ns_per_frame: f64,
    pub retval: u32,
    /// Wall time of the syscall.
    pub wall_ns: u64,
}

impl Injector {
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }

    /// Loads an injector; with `tail_target` (a loaded XDP program) it tail-calls it after
    /// writing the frame, else it passes.
    pub fn load(t: &Templates, tail_target: Option<&Xdp>, name: &str) -> Result<Injector> {
        let progs = match tail_target {
            Some(_) => Some(RawMap::create(
                BPF_MAP_TYPE_PROG_ARRAY,
                4,
                4,
                1,
                0,
                "bench_tail",
            )?),
            None => None,
        };
        let insns = program(t, progs.as_ref());
        let fd = load_xdp(&insns, name)?;
        if let (Some(map), Some(target)) = (&progs, tail_target) {
            let target_fd = target
                .fd()
                .context("tail-call target not loaded")?
                .as_fd()
                .as_raw_fd();
            map.update(&0u32.to_ne_bytes(), &(target_fd as u32).to_ne_bytes())
                .context("putting the dataplane's program into the tail-call slot")?;
        }
        Ok(Injector { fd, _progs: progs })
    }

    /// Live frames: `repeat` frames injected at `ingress` (an ifindex of the calling thread's
    /// namespace), `batch` per kernel batch.
    pub fn run_live(
        &self,
        ingress: Ingress,
        first_frame: &[u8],
        repeat: u32,
        batch: u32,
    ) -> Result<RunResult> {
        let ctx = xdp_md(first_frame.len() as u32, ingress.ifindex);
        let t0 = std::time::Instant::now();
        let r = prog_test_run(
            self.fd.as_raw_fd(),
            first_frame,
            None,
            Some(&ctx),
            repeat,
            Some(batch),
        )
        .context("BPF_PROG_TEST_RUN (live frames)")?;
        let wall = t0.elapsed().as_nanos() as u64;
        Ok(RunResult {
            ns_per_frame: r.duration_ns as f64,
            retval: r.retval,
            wall_ns: wall,
        })
    }

    /// Classic test run: the program runs `repeat` times on one buffer (restored by the
    /// injector each time); returns the verdict and the last output frame.
    pub fn run_direct(&self, first_frame: &[u8], repeat: u32) -> Result<(RunResult, Vec<u8>)> {
        let mut out = vec![0u8; first_frame.len() + 256];
        let t0 = std::time::Instant::now();
        let r = prog_test_run(
            self.fd.as_raw_fd(),
            first_frame,
            Some(&mut out),
            None,
            repeat,
            None,
        )
        .context("BPF_PROG_TEST_RUN")?;
        let wall = t0.elapsed().as_nanos() as u64;
        let size = r.data_size_out as usize;
        if size > out.len() {
            bail!("test_run returned {size} bytes");
        }
        out.truncate(size);
        Ok((
            RunResult {
                ns_per_frame: r.duration_ns as f64,
                retval: r.retval,
                wall_ns: wall,
            },
            out,
        ))
    }
}

/// struct xdp_md for ctx_in: data 0, data_end = frame length, the ingress interface.
fn xdp_md(len: u32, ifindex: u32) -> [u8; 24] {
    let mut b = [0u8; 24];
    b[4..8].copy_from_slice(&len.to_ne_bytes());
    b[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    b
}

/// Fails with the reason when this kernel refuses live-frame test runs, before any lab is built:
/// every timed packet of the benchmark is a live frame. A one-instruction program that drops its
/// frame, so nothing reaches any stack. Seen here: a 6.18 build (6.18.44-fc-v1300) answers EPERM
/// where 6.18.44-fc-v1147 ran the benchmark.
pub fn check_live_frames() -> Result<()> {
    let prog = load_xdp(&[mov64_imm(R0, 1), exit()], "bench_live_probe")?;
    let frame = [0u8; 64];
    match prog_test_run(prog.as_raw_fd(), &frame, None, None, 1, Some(1)) {
        Ok(_) => Ok(()),
        Err(e) => bail!(
            "this kernel refuses BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES ({e}): the \
             benchmark injects every packet that way and cannot run here; `--only sync` and \
             `--only plan` do not need it"
        ),
    }
}
