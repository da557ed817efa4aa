//! The node's settings (`CONFIG_V2`, written by the agent at start), for every module.

use dataplane_common::config::Config;

use crate::maps::CONFIG_V2;

/// Used only if the config array could not be read (it always has its one element).
static DEFAULT_CONFIG: Config = Config::with_masq_addr(0);

/// The node's settings, by reference: a 48-byte copy per use would crowd the 512-byte stack.
#[inline(always)]
pub fn node() -> &'static Config {
    CONFIG_V2.get(0).unwrap_or(&DEFAULT_CONFIG)
}
