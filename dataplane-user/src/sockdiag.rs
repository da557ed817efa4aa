//! Destroying the node's TCP sockets that socket-level balancing connected to a backend that has
//! since left its service, so their owners fail fast (ECONNABORTED) instead of hanging on a peer
//! that is gone. Cilium does the same for UDP with `bpf_sock_destroy` from a socket iterator
//! (pkg/socketlb); here it is sock_diag's SOCK_DESTROY (CONFIG_INET_DIAG_DESTROY), which needs
//! no new program and no BTF iterator:
//!
//! 1. NETLINK_SOCK_DIAG dump (SOCK_DIAG_BY_FAMILY, `inet_diag_req_v2`) of this network
//!    namespace's IPv4 TCP sockets, filtered in the kernel by destination port (the dump honours
//!    `id.idiag_dport`) and here by destination address;
//! 2. only sockets the hooks connected: `SOCK_REVNAT_V1` has `{cookie, backend addr, backend
//!    port}` for each socket `sock_connect4` rewrote, with the service address it asked for as the
//!    value; the socket's cookie is the dump's `idiag_cookie`. A socket that connected to the pod
//!    address itself, or through another service, is left alone;
//! 3. SOCK_DESTROY with the socket's exact id (4-tuple and cookie): the kernel's `tcp_abort`.
//!
//! The netlink socket lives in the caller's network namespace, and so do the sockets it sees:
//! the agent's node namespace. Hand-written rather than netlink-packet-sock-diag + netlink-sys:
//! two fixed-layout messages (include/uapi/linux/inet_diag.h, sock_diag.h) did not seem worth
//! four new dependencies in the agent.

use std::{
    collections::{HashMap, HashSet},
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use anyhow::{Context, Result};
use dataplane_common::lb::{SockRevNatKey, SockRevNatValue};

use crate::services::{MapSource, RemovedBackend};

const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_HDRLEN: usize = 16;
/// `struct inet_diag_req_v2`: family, protocol, ext, pad, states, `inet_diag_sockid`.
const REQ_LEN: usize = 8 + SOCKID_LEN;
/// `struct inet_diag_sockid`: sport, dport (be16), src[4], dst[4] (be32), if, cookie[2].
const SOCKID_LEN: usize = 48;
/// `struct inet_diag_msg` up to and including the sockid (family, state, timer, retrans, id).
const MSG_MIN: usize = 4 + SOCKID_LEN;

/// TCP states worth aborting: everything but LISTEN (10), TIME_WAIT (6), CLOSE (7) and
/// NEW_SYN_RECV (12), which have no connected owner waiting on them.
const TCP_STATES: u32 = 0xfff & !((1 << 10) | (1 << 6) | (1 << 7)) & !(1 << 12);

/// One socket of the dump: its raw sockid (to name it exactly in SOCK_DESTROY) and cookie.
struct Found {
    id: [u8; SOCKID_LEN],
    dst: u32,
    dport: u16,
    cookie: u64,
}

/// Destroys the sockets of removed backends, looking them up in `SOCK_REVNAT_V1`.
pub struct SockDestroyer {
    revnat: aya::maps::HashMap<aya::maps::MapData, SockRevNatKey, SockRevNatValue>,
}

impl SockDestroyer {
    /// Opens `SOCK_REVNAT_V1` of the datapath.
    pub fn open(source: &(impl MapSource + ?Sized)) -> Result<Self> {
        Ok(SockDestroyer {
            revnat: crate::maps::open_hash(source, &dataplane_common::maps::SOCK_REVNAT)?,
        })
    }

    /// Aborts every TCP socket of this network namespace that socket-level balancing connected,
    /// through one of `removed`'s frontends, to that removed backend. Returns how many.
    pub fn destroy(&self, removed: &[RemovedBackend]) -> Result<usize> {
        // backend (addr, port) -> the TCP frontends (addr, port) it left.
        let mut gone: HashMap<(u32, u16), HashSet<(u32, u16)>> = HashMap::new();
        for r in removed.iter().filter(|r| r.frontend.proto == 6) {
            gone.entry((r.addr, r.port))
                .or_default()
                .insert((r.frontend.addr, r.frontend.port));
        }
        if gone.is_empty() {
            return Ok(0);
        }
        let nl = Netlink::open()?;
        let ports: HashSet<u16> = gone.keys().map(|&(_, port)| port).collect();
        let mut destroyed = 0;
        for port in ports {
            for s in nl.dump_tcp(port)? {
                let Some(frontends) = gone.get(&(s.dst, s.dport)) else {
                    continue;
                };
                let key = SockRevNatKey {
                    cookie: s.cookie,
                    addr: s.dst,
                    port: s.dport,
                    _pad: 0,
                };
                let Ok(asked) = self.revnat.get(&key, 0) else {
                    continue; // not connected by our hooks (or its entry was evicted)
                };
                if !frontends.contains(&(asked.addr, asked.port)) {
                    continue; // connected through a frontend this backend still serves
                }
                match nl.destroy(&s.id) {
                    Ok(()) => destroyed += 1,
                    // Closed meanwhile.
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                    Err(e) => return Err(e).context("SOCK_DESTROY"),
                }
            }
        }
        Ok(destroyed)
    }
}

struct Netlink {
    fd: OwnedFd,
    seq: std::cell::Cell<u32>,
}

impl Netlink {
    fn open() -> Result<Netlink> {
        // SAFETY: plain syscall; the descriptor is owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error()).context("socket(NETLINK_SOCK_DIAG)");
        }
        // SAFETY: a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let tv = libc::timeval {
            tv_sec: 5,
            tv_usec: 0,
        };
        // A kernel that never answers must not hang the agent's loop.
        // SAFETY: valid option buffer of the size passed.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                core::mem::size_of::<libc::timeval>() as u32,
            )
        };
        Ok(Netlink {
            fd,
            seq: std::cell::Cell::new(1),
        })
    }

    /// One `nlmsghdr` + `inet_diag_req_v2` for IPv4 TCP.
    fn request(&self, kind: u16, flags: u16, states: u32, id: &[u8; SOCKID_LEN]) -> Vec<u8> {
        let seq = self.seq.get();
        self.seq.set(seq.wrapping_add(1));
        let mut m = Vec::with_capacity(NLMSG_HDRLEN + REQ_LEN);
        m.extend_from_slice(&((NLMSG_HDRLEN + REQ_LEN) as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&flags.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&[libc::AF_INET as u8, libc::IPPROTO_TCP as u8, 0, 0]);
        m.extend_from_slice(&states.to_ne_bytes());
        m.extend_from_slice(id);
        m
    }

    fn send(&self, msg: &[u8]) -> io::Result<()> {
        // SAFETY: `msg` is a live buffer of the length passed; the kernel is the destination
        // of an unconnected netlink socket's send.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is writable for its whole length.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// The IPv4 TCP sockets whose destination port is `dport` (network order).
    fn dump_tcp(&self, dport: u16) -> Result<Vec<Found>> {
        let mut id = [0u8; SOCKID_LEN];
        id[2..4].copy_from_slice(&dport.to_ne_bytes());
        self.send(&self.request(
            SOCK_DIAG_BY_FAMILY,
            NLM_F_REQUEST | NLM_F_DUMP,
            TCP_STATES,
            &id,
        ))
        .context("sending the sock_diag dump request")?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = self.recv(&mut buf).context("reading the sock_diag dump")?;
            let mut off = 0;
            while off + NLMSG_HDRLEN <= n {
                let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
                let kind = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().unwrap());
                if len < NLMSG_HDRLEN || off + len > n {
                    anyhow::bail!("malformed sock_diag message (length {len})");
                }
                let body = &buf[off + NLMSG_HDRLEN..off + len];
                match kind {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let errno = i32::from_ne_bytes(body[..4].try_into().unwrap());
                        return Err(io::Error::from_raw_os_error(-errno)).context("sock_diag dump");
                    }
                    SOCK_DIAG_BY_FAMILY if body.len() >= MSG_MIN => {
                        let mut sid = [0u8; SOCKID_LEN];
                        sid.copy_from_slice(&body[4..4 + SOCKID_LEN]);
                        out.push(Found {
                            dport: u16::from_ne_bytes(sid[2..4].try_into().unwrap()),
                            dst: u32::from_ne_bytes(sid[20..24].try_into().unwrap()),
                            cookie: u64::from(u32::from_ne_bytes(sid[40..44].try_into().unwrap()))
                                | u64::from(u32::from_ne_bytes(sid[44..48].try_into().unwrap()))
                                    << 32,
                            id: sid,
                        });
                    }
                    _ => {}
                }
                // NLMSG_ALIGN
                off += (len + 3) & !3;
            }
        }
    }

    /// SOCK_DESTROY of the socket named by `id` (its 4-tuple, interface and cookie, as dumped).
    fn destroy(&self, id: &[u8; SOCKID_LEN]) -> io::Result<()> {
        self.send(&self.request(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, u32::MAX, id))?;
        let mut buf = [0u8; 512];
        let n = self.recv(&mut buf)?;
        if n >= NLMSG_HDRLEN + 4 && u16::from_ne_bytes(buf[4..6].try_into().unwrap()) == NLMSG_ERROR
        {
            let errno = i32::from_ne_bytes(buf[NLMSG_HDRLEN..NLMSG_HDRLEN + 4].try_into().unwrap());
            if errno != 0 {
                return Err(io::Error::from_raw_os_error(-errno));
            }
            return Ok(());
        }
        Err(io::Error::other("no acknowledgement of SOCK_DESTROY"))
    }
}
