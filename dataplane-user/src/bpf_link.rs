//! The few bpf(2) link commands aya 0.14 does not expose for cgroup links: aya can create and
//! pin a `CgroupSockAddrLink` (through `FdLink`), but has no way to open a pinned cgroup link and
//! swap a program into it (`attach_to_link` exists only for XDP and tc links), nor to read which
//! cgroup and attach type a link serves. Those are three commands with tiny attribute structs,
//! written here against the uapi layout (include/uapi/linux/bpf.h).

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    path::Path,
};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_LINK_DETACH: libc::c_long = 34;

/// `enum bpf_link_type`: BPF_LINK_TYPE_CGROUP.
pub const BPF_LINK_TYPE_CGROUP: u32 = 3;

/// `union bpf_attr` is larger than any command's part of it; the kernel copies
/// min(size, sizeof(attr)) and requires the rest of what we pass to be zero.
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Self {
        Attr([0; 128])
    }

    fn put_u32(&mut self, off: usize, v: u32) {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
    }

    fn put_u64(&mut self, off: usize, v: u64) {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
    }
}

fn sys_bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, writable buffer of the size passed; the kernel reads (and for
    // some commands writes) only within it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.0.as_mut_ptr(),
            attr.0.len() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// BPF_OBJ_GET: opens the object (here: a link) pinned at `path`.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut attr = Attr::new();
    // struct { __aligned_u64 pathname; __u32 bpf_fd; __u32 file_flags; }
    attr.put_u64(0, c.as_ptr() as u64);
    let fd = sys_bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// BPF_LINK_UPDATE: atomically replaces the program a link runs with `prog`. Readers of the hook
/// see either the old program or the new one, never none.
pub fn link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = Attr::new();
    // struct { __u32 link_fd; __u32 new_prog_fd; __u32 flags; __u32 old_prog_fd; }
    attr.put_u32(0, link.as_raw_fd() as u32);
    attr.put_u32(4, prog.as_raw_fd() as u32);
    sys_bpf(BPF_LINK_UPDATE, &mut attr).map(drop)
}

/// BPF_LINK_DETACH: detaches the link's program from its hook now. Removing a link's last pin
/// also detaches it, but the kernel frees a link released from bpffs in a workqueue, so the
/// program can stay attached for a moment after `unlink` returns (seen under load: XDP still on
/// the uplink after `dataplane cleanup` exited).
pub fn link_detach(link: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = Attr::new();
    // struct { __u32 link_fd; } link_detach
    attr.put_u32(0, link.as_raw_fd() as u32);
    sys_bpf(BPF_LINK_DETACH, &mut attr).map(drop)
}

/// Detaches the link pinned at `path` and removes the pin: when this returns, the hook no
/// longer runs the program. A pin that is not a live link is just removed.
pub fn remove_pinned_link(path: &Path) -> io::Result<()> {
    if let Ok(fd) = obj_get(path) {
        use std::os::fd::AsFd;
        // ENOLINK: already detached (its device went away); nothing else to do.
        if let Err(e) = link_detach(fd.as_fd()) {
            if e.raw_os_error() != Some(libc::ENOLINK) {
                log::debug!("detaching {}: {e}", path.display());
            }
        }
    }
    std::fs::remove_file(path)
}

/// What the kernel says about a link (`struct bpf_link_info`, cgroup part).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    pub link_type: u32,
    pub id: u32,
    pub prog_id: u32,
    /// For cgroup links: the cgroup's id (its inode number on cgroup2) and the attach type.
    pub cgroup_id: u64,
    pub attach_type: u32,
}

/// BPF_OBJ_GET_INFO_BY_FD on a link.
pub fn link_info(link: BorrowedFd<'_>) -> io::Result<LinkInfo> {
    // struct bpf_link_info { __u32 type; __u32 id; __u32 prog_id; union { ...
    //   struct { __u64 cgroup_id; __u32 attach_type; } cgroup; ... } } (8-aligned, union at 16).
    let mut info = [0u8; 256];
    let mut attr = Attr::new();
    // struct { __u32 bpf_fd; __u32 info_len; __aligned_u64 info; }
    attr.put_u32(0, link.as_raw_fd() as u32);
    attr.put_u32(4, info.len() as u32);
    attr.put_u64(8, info.as_mut_ptr() as u64);
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let rd32 = |off: usize| u32::from_ne_bytes(info[off..off + 4].try_into().unwrap());
    Ok(LinkInfo {
        link_type: rd32(0),
        id: rd32(4),
        prog_id: rd32(8),
        cgroup_id: u64::from_ne_bytes(info[16..24].try_into().unwrap()),
        attach_type: rd32(24),
    })
}
