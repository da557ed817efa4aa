//! Reading a TCP stream in frames (lines, HTTP header blocks, bodies) with a liveness check on
//! every read timeout, so server threads notice their stop flag.

use std::io::{self, Read};
use std::net::TcpStream;

use super::MAX_LINE;

/// A TCP stream read in chunks up to a delimiter, with a liveness check on every timeout tick.
pub(super) struct Framed {
    pub(super) stream: TcpStream,
    pending: Vec<u8>,
}

impl Framed {
    pub(super) fn new(stream: TcpStream) -> Framed {
        Framed {
            stream,
            pending: Vec::new(),
        }
    }

    /// Returns the bytes before the next `delim` (which is consumed), or `None` on a clean EOF.
    /// Read timeouts call `keep_going`; when it says no, the read fails with `TimedOut`.
    pub(super) fn read_until(
        &mut self,
        delim: &[u8],
        mut keep_going: impl FnMut() -> bool,
    ) -> io::Result<Option<Vec<u8>>> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(pos) = find(&self.pending, delim) {
                let frame = self.pending[..pos].to_vec();
                self.pending.drain(..pos + delim.len());
                return Ok(Some(frame));
            }
            if self.pending.len() > MAX_LINE {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "frame too long"));
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(None),
                Ok(n) => self.pending.extend_from_slice(&chunk[..n]),
                Err(e) if is_timeout(&e) => {
                    if !keep_going() {
                        return Err(io::Error::new(io::ErrorKind::TimedOut, "read timed out"));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads exactly `n` more bytes (e.g. an HTTP body).
    pub(super) fn read_exact(
        &mut self,
        n: usize,
        mut keep_going: impl FnMut() -> bool,
    ) -> io::Result<Vec<u8>> {
        let mut chunk = [0u8; 4096];
        while self.pending.len() < n {
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(k) => self.pending.extend_from_slice(&chunk[..k]),
                Err(e) if is_timeout(&e) && keep_going() => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(self.pending.drain(..n).collect())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

pub(super) fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}
