//! One measurement of each kind: packets through a mode's node (live frames), the dataplane's
//! XDP program alone (classic test run), TCP connections from a pod to a ClusterIP.

mod floor;
mod node1;
mod packets;
mod profile;
mod tcp;

pub use floor::*;
pub use node1::*;
pub use packets::*;
pub use profile::*;
pub use tcp::*;
