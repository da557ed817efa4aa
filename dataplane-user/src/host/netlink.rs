//! A synchronous rtnetlink (NETLINK_ROUTE) client over the rust-netlink crates: `netlink-sys`
//! for the socket, `netlink-packet-route` for the messages (the crates `rtnetlink` is built
//! on). Synchronous on purpose: a netlink socket talks to the network namespace the calling
//! thread was in when it was opened, and the callers (overlay sync, attach) are synchronous code
//! that must run in the agent's namespace; an async client would run on a runtime thread.

use std::io;

use anyhow::{Context, Result};
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// One rtnetlink socket of the calling thread's network namespace.
pub(crate) struct Netlink {
    socket: Socket,
    seq: u32,
}

impl Netlink {
    pub(crate) fn open() -> Result<Netlink> {
        let mut socket = Socket::new(NETLINK_ROUTE).context("opening a netlink socket")?;
        socket.bind_auto().context("binding the netlink socket")?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .context("connecting the netlink socket")?;
        Ok(Netlink { socket, seq: 0 })
    }

    /// Every object the kernel lists for `request` (a `Get*` message with its filter fields).
    pub(crate) fn dump(
        &mut self,
        request: RouteNetlinkMessage,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.exchange(request, NLM_F_DUMP)
    }

    /// The objects of a dump that `pick` keeps (it also turns them into the caller's type).
    pub(crate) fn dump_into<T>(
        &mut self,
        request: RouteNetlinkMessage,
        what: &str,
        pick: impl FnMut(RouteNetlinkMessage) -> Option<T>,
    ) -> Result<Vec<T>> {
        let replies = self
            .dump(request)
            .with_context(|| format!("listing {what}"))?;
        Ok(replies.into_iter().filter_map(pick).collect())
    }

    /// One object (`Get*` of one link, by name or index).
    pub(crate) fn get(
        &mut self,
        request: RouteNetlinkMessage,
    ) -> io::Result<Option<RouteNetlinkMessage>> {
        Ok(self.exchange(request, NLM_F_ACK)?.into_iter().next())
    }

    /// A change (`New*` with `flags` such as NLM_F_CREATE | NLM_F_REPLACE, or `Del*`), acknowledged.
    pub(crate) fn apply(&mut self, request: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        self.exchange(request, flags | NLM_F_ACK).map(drop)
    }

    /// Sends `request` and collects the replies up to the end of the dump or the
    /// acknowledgement; a negative acknowledgement is the kernel's errno.
    fn exchange(
        &mut self,
        request: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(request));
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        let mut out = Vec::new();
        loop {
            let (datagram, _) = self.socket.recv_from_full()?;
            let mut offset = 0;
            while offset < datagram.len() {
                let message =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(&datagram[offset..])
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = message.header.length as usize;
                if message.header.sequence_number == self.seq {
                    match message.payload {
                        NetlinkPayload::Done(_) => return Ok(out),
                        NetlinkPayload::Error(e) => {
                            return match e.code {
                                None => Ok(out),
                                Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                            };
                        }
                        NetlinkPayload::InnerMessage(m) => out.push(m),
                        _ => {}
                    }
                }
                if len == 0 {
                    break;
                }
                offset += len;
            }
        }
    }
}
