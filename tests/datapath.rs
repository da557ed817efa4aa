//! The datapath attached in lab nodes, with real packets.
mod support;
