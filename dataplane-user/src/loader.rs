//! Loading the programs into the kernel and attaching them to the node's interfaces.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use aya::{
    programs::{ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode},
    Ebpf, EbpfLoader,
};

use crate::{pin, EBPF_OBJECT};

/// Which XDP attach mode to ask the kernel for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpAttachMode {
    /// Native (driver) mode, falling back to generic if the driver has no XDP support.
    Auto,
    Native,
    Generic,
}

/// Where to attach, as given on the `dataplane run` command line.
#[derive(Clone, Debug)]
pub struct AttachConfig {
    pub uplink: String,
    pub pod_ifaces: Vec<String>,
    pub xdp_mode: XdpAttachMode,
}

/// The loaded object. Dropping it detaches every program; pinned maps stay.
pub struct Datapath {
    pub ebpf: Ebpf,
    pub pin_dir: PathBuf,
}

/// Loads the embedded object with its maps pinned (or adopted) under `pin_dir`, and loads every
/// program into the kernel. A verifier rejection is returned with the verifier's log.
pub fn load(pin_dir: &Path) -> Result<Datapath> {
    pin::prepare_pin_dir(pin_dir)?;
    pin::check_pinned_layouts(pin_dir)?;
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(pin_dir)
        .load(EBPF_OBJECT)
        .context("loading the eBPF object (maps and BTF)")?;
    load_programs(&mut ebpf)?;
    Ok(Datapath { ebpf, pin_dir: pin_dir.to_path_buf() })
}

/// Program names in the object, with their kind.
pub const XDP_PROGRAMS: &[&str] = &["xdp_uplink"];
pub const TC_PROGRAMS: &[&str] =
    &["tc_uplink_ingress", "tc_uplink_egress", "tc_pod_ingress", "tc_pod_egress"];

fn load_programs(ebpf: &mut Ebpf) -> Result<()> {
    for name in XDP_PROGRAMS {
        let prog: &mut Xdp = program(ebpf, name)?;
        prog.load().map_err(|e| verifier_error(name, e))?;
    }
    for name in TC_PROGRAMS {
        let prog: &mut SchedClassifier = program(ebpf, name)?;
        prog.load().map_err(|e| verifier_error(name, e))?;
    }
    Ok(())
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let prog = ebpf.program_mut(name).ok_or_else(|| anyhow!("program {name} missing from object"))?;
    prog.try_into().with_context(|| format!("program {name} has an unexpected type"))
}

/// Keeps the verifier log in the error: it is the only useful part of a rejection.
fn verifier_error(name: &str, e: ProgramError) -> anyhow::Error {
    match e {
        ProgramError::LoadError { io_error, verifier_log } => {
            anyhow!("the kernel verifier rejected {name}: {io_error}\n{verifier_log}")
        }
        other => anyhow!("loading {name}: {other}"),
    }
}

impl Datapath {
    /// Attaches XDP and tc ingress/egress on the uplink and tc on every pod-facing device.
    pub fn attach(&mut self, cfg: &AttachConfig) -> Result<()> {
        self.attach_xdp(&cfg.uplink, cfg.xdp_mode)?;
        self.attach_tc("tc_uplink_ingress", &cfg.uplink, TcAttachType::Ingress)?;
        self.attach_tc("tc_uplink_egress", &cfg.uplink, TcAttachType::Egress)?;
        for iface in &cfg.pod_ifaces {
            self.attach_tc("tc_pod_ingress", iface, TcAttachType::Ingress)?;
            self.attach_tc("tc_pod_egress", iface, TcAttachType::Egress)?;
        }
        Ok(())
    }

    fn attach_xdp(&mut self, iface: &str, mode: XdpAttachMode) -> Result<()> {
        let prog: &mut Xdp = program(&mut self.ebpf, "xdp_uplink")?;
        let first = match mode {
            XdpAttachMode::Generic => XdpMode::Skb,
            _ => XdpMode::Driver,
        };
        match prog.attach(iface, first) {
            Ok(_) => log::info!("xdp_uplink attached to {iface} ({first:?} mode)"),
            Err(e) if mode == XdpAttachMode::Auto => {
                log::warn!("native XDP on {iface} failed ({e}); using generic XDP");
                prog.attach(iface, XdpMode::Skb)
                    .with_context(|| format!("attaching xdp_uplink to {iface}"))?;
            }
            Err(e) => return Err(e).with_context(|| format!("attaching xdp_uplink to {iface}")),
        }
        Ok(())
    }

    fn attach_tc(&mut self, name: &str, iface: &str, kind: TcAttachType) -> Result<()> {
        let prog: &mut SchedClassifier = program(&mut self.ebpf, name)?;
        // tcx (kernel >= 6.6) needs no clsact qdisc; aya picks tcx on such kernels.
        prog.attach(iface, kind).with_context(|| format!("attaching {name} to {iface} {kind:?}"))?;
        log::info!("{name} attached to {iface} ({kind:?})");
        Ok(())
    }
}

/// Writes `CONFIG_V1` (node-wide settings) through an open datapath.
pub fn write_config(ebpf: &mut Ebpf, cfg: &dataplane_common::ct::Config) -> Result<()> {
    let map = ebpf
        .map_mut(dataplane_common::map_names::CONFIG)
        .ok_or_else(|| anyhow!("CONFIG_V1 missing from object"))?;
    let mut array: aya::maps::Array<_, dataplane_common::ct::Config> = aya::maps::Array::try_from(map)?;
    array.set(0, *cfg, 0).context("writing CONFIG_V1")?;
    Ok(())
}

/// Writes `CONFIG_V1` through its pin (for tools and tests running beside `dataplane run`).
pub fn write_pinned_config(pin_dir: &Path, cfg: &dataplane_common::ct::Config) -> Result<()> {
    let path = pin_dir.join(dataplane_common::map_names::CONFIG);
    let data = aya::maps::MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let mut array: aya::maps::Array<_, dataplane_common::ct::Config> =
        aya::maps::Array::try_from(aya::maps::Map::from_map_data(data)?)?;
    array.set(0, *cfg, 0).context("writing CONFIG_V1")?;
    Ok(())
}

/// Reads `CONFIG_V1` through its pin.
pub fn read_pinned_config(pin_dir: &Path) -> Result<dataplane_common::ct::Config> {
    let path = pin_dir.join(dataplane_common::map_names::CONFIG);
    let data = aya::maps::MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let array: aya::maps::Array<_, dataplane_common::ct::Config> =
        aya::maps::Array::try_from(aya::maps::Map::from_map_data(data)?)?;
    Ok(array.get(&0, 0)?)
}

/// The first IPv4 address of `iface` in this network namespace: the node address masqueraded
/// connections leave with (kube-proxy's MASQUERADE picks the outgoing interface's address).
pub fn interface_ipv4(iface: &str) -> Result<std::net::Ipv4Addr> {
    let mut addrs: *mut libc::ifaddrs = std::ptr::null_mut();
    if unsafe { libc::getifaddrs(&mut addrs) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getifaddrs");
    }
    let mut found = None;
    let mut cur = addrs;
    while !cur.is_null() {
        let ifa = unsafe { &*cur };
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }.to_string_lossy();
        if name == iface && !ifa.ifa_addr.is_null() && unsafe { (*ifa.ifa_addr).sa_family } as i32 == libc::AF_INET {
            let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
            found = Some(std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
            break;
        }
        cur = ifa.ifa_next;
    }
    unsafe { libc::freeifaddrs(addrs) };
    found.ok_or_else(|| anyhow!("interface {iface} has no IPv4 address (give --masquerade-ip)"))
}
