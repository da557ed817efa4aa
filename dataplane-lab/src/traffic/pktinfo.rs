//! recvmsg/sendmsg with IP_PKTINFO: learn a datagram's destination address and send the reply
//! from it.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;

const CONTROL_LEN: usize = 64;

/// Control-message buffer, aligned for `cmsghdr`.
#[repr(C, align(8))]
struct Control([u8; CONTROL_LEN]);

pub(super) fn enable(socket: &UdpSocket) -> io::Result<()> {
    super::set_option(
        socket,
        libc::IPPROTO_IP,
        libc::IP_PKTINFO,
        &(1 as libc::c_int),
    )
}

/// A message header naming `name` (the peer), the one buffer `iov` and the control buffer;
/// the caller sets `msg_controllen`. The header points into the three: they must outlive it.
fn header(
    name: &mut libc::sockaddr_in,
    iov: &mut libc::iovec,
    control: &mut Control,
) -> libc::msghdr {
    // SAFETY: all-zero is a valid msghdr.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = (name as *mut libc::sockaddr_in).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    msg
}

/// Receives one datagram: (length, sender, destination address or 0.0.0.0 if unknown).
pub(super) fn recv(
    socket: &UdpSocket,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddrV4, Ipv4Addr)> {
    // SAFETY: all-zero is a valid sockaddr_in / msghdr / control buffer.
    let (mut name, mut control): (libc::sockaddr_in, Control) = unsafe { zeroed() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut msg = header(&mut name, &mut iov, &mut control);
    msg.msg_controllen = CONTROL_LEN;
    // SAFETY: every pointer in `msg` refers to live buffers of the stated sizes.
    let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let peer = SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(name.sin_addr.s_addr)),
        u16::from_be(name.sin_port),
    );
    Ok((n as usize, peer, destination(&msg)))
}

/// The header destination address from an IP_PKTINFO control message.
fn destination(msg: &libc::msghdr) -> Ipv4Addr {
    // SAFETY: walks the control buffer the kernel just filled, with the libc macros.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::IPPROTO_IP && (*cmsg).cmsg_type == libc::IP_PKTINFO {
                let info = libc::CMSG_DATA(cmsg)
                    .cast::<libc::in_pktinfo>()
                    .read_unaligned();
                return Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr));
            }
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
    Ipv4Addr::UNSPECIFIED
}

/// Sends `payload` to `to` from source address `from`; falls back to the routing source
/// when `from` is unknown or cannot be used (e.g. a broadcast destination).
pub(super) fn send(
    socket: &UdpSocket,
    payload: &[u8],
    to: SocketAddrV4,
    from: Ipv4Addr,
) -> io::Result<()> {
    if from.is_unspecified() || from.is_broadcast() || from.is_multicast() {
        return socket.send_to(payload, to).map(drop);
    }
    match send_from(socket, payload, to, from) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => socket.send_to(payload, to).map(drop),
        other => other,
    }
}

fn send_from(
    socket: &UdpSocket,
    payload: &[u8],
    to: SocketAddrV4,
    from: Ipv4Addr,
) -> io::Result<()> {
    // SAFETY: all-zero is a valid sockaddr_in / msghdr / control buffer.
    let (mut name, mut control): (libc::sockaddr_in, Control) = unsafe { zeroed() };
    name.sin_family = libc::AF_INET as libc::sa_family_t;
    name.sin_port = to.port().to_be();
    name.sin_addr.s_addr = u32::from(*to.ip()).to_be();
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut _,
        iov_len: payload.len(),
    };
    let mut msg = header(&mut name, &mut iov, &mut control);
    // SAFETY: CMSG_SPACE/CMSG_FIRSTHDR/CMSG_DATA on our own aligned buffer, which is
    // larger than one in_pktinfo control message.
    unsafe {
        msg.msg_controllen = libc::CMSG_SPACE(size_of::<libc::in_pktinfo>() as u32) as usize;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::IPPROTO_IP;
        (*cmsg).cmsg_type = libc::IP_PKTINFO;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<libc::in_pktinfo>() as u32) as usize;
        let info = libc::in_pktinfo {
            ipi_ifindex: 0,
            ipi_spec_dst: libc::in_addr {
                s_addr: u32::from(from).to_be(),
            },
            ipi_addr: libc::in_addr { s_addr: 0 },
        };
        libc::CMSG_DATA(cmsg)
            .cast::<libc::in_pktinfo>()
            .write_unaligned(info);
    }
    // SAFETY: `msg` points at live buffers of the stated sizes.
    let n = unsafe { libc::sendmsg(socket.as_raw_fd(), &msg, 0) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
