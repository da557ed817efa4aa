//! The node's settings (`CONFIG_V2`, written by the agent at start), for every module.

use dataplane_common::config::Config;

use crate::maps::CONFIG_V2;

/// Used only if the config array could not be read (it always has its one element).
static DEFAULT_CONFIG: Config = Config::with_masq_addr(0);

/// A load-time flag (`UPLINK_XDP`, `XDP_FORWARD`, `XDP_META`): a `#[no_mangle]` static the
/// loader patches into .rodata (`EbpfLoader::override_global`) before the programs load. Read
/// volatile so the compiler cannot fold the initial value; the verifier sees the frozen value
/// as a constant and prunes the branch not taken.
#[inline(always)]
pub fn load_time_flag(flag: &'static u32) -> bool {
    unsafe { core::ptr::read_volatile(flag) != 0 }
}

/// The node's settings, by reference: a 48-byte copy per use would crowd the 512-byte stack.
#[inline(always)]
pub fn node() -> &'static Config {
    CONFIG_V2.get(0).unwrap_or(&DEFAULT_CONFIG)
}
