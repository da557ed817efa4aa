//! Loading the programs into the kernel and attaching them to the node's interfaces.

use std::path::{Path, PathBuf};

use std::os::fd::AsFd as _;

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    programs::{
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
        xdp::XdpLink,
        CgroupAttachMode, CgroupSockAddr, ProgramError, SchedClassifier, TcAttachType, Xdp,
        XdpMode,
    },
    Ebpf, EbpfLoader,
};

use dataplane_common::{
    programs::{programs_where, Attach},
    Hook,
};

use crate::{bpf_link, host, maps::MapSource, pin, EBPF_OBJECT};

/// Which XDP attach mode to ask the kernel for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpAttachMode {
    /// Native (driver) mode, falling back to generic if the driver has no XDP support.
    ///
    /// Except on a veth uplink with an overlay: there no XDP is attached (as `off`). Native XDP
    /// on a veth makes its peer drop TSO/GSO, so every burst the other side sends arrives cut
    /// into MTU-sized packets, each decapsulated and forwarded alone (0.2x the throughput of
    /// tc decapsulation of the whole burst in the lab; BENCHMARKS.md (f)). XDP runs only the
    /// service pipeline, which tc ingress runs as fast.
    Auto,
    Native,
    Generic,
    /// No XDP: tc ingress of the uplink runs the service pipeline and opens tunnel packets.
    Off,
}

impl XdpAttachMode {
    /// The mode `auto` stands for on this uplink (see [`XdpAttachMode::Auto`]).
    pub fn resolve(self, uplink: &str, overlay: bool) -> XdpAttachMode {
        if self == XdpAttachMode::Auto && overlay && is_veth(uplink) {
            log::info!(
                "{uplink} is a veth: no XDP with an overlay (it would strip GSO from its peer); \
                 tc ingress runs the uplink's pipeline"
            );
            return XdpAttachMode::Off;
        }
        self
    }
}

impl XdpAttachMode {
    /// Whether `xdp_uplink` may finish forwarded NodePort traffic itself (XDP_TX: the fast path,
    /// `fastpath.rs`) in this mode on `uplink`. Not on a veth in native mode: veth delivers an
    /// XDP_TX'd frame only when its peer runs NAPI (an XDP program or GRO on the peer, which
    /// lives in another namespace), and drops it otherwise. Generic XDP transmits the skb
    /// itself, on any device.
    pub fn forwards(self, uplink: &str) -> bool {
        match self {
            XdpAttachMode::Off => false,
            XdpAttachMode::Generic => true,
            XdpAttachMode::Auto | XdpAttachMode::Native => !is_veth(uplink),
        }
    }
}

/// Whether `iface` (in this thread's network namespace) is a veth.
fn is_veth(iface: &str) -> bool {
    host::netdev::link(iface).is_ok_and(|l| l.is_veth())
}

/// Where to attach, as given on the `dataplane run` command line.
#[derive(Clone, Debug)]
pub struct AttachConfig {
    pub uplink: String,
    pub pod_ifaces: Vec<String>,
    /// Name prefixes of host-side pod devices to attach to as they appear (`veth`, `cali`).
    pub pod_iface_prefixes: Vec<String>,
    pub xdp_mode: XdpAttachMode,
    /// cgroup v2 directory for socket-level balancing of host traffic; None = off.
    pub cgroup: Option<PathBuf>,
}

impl AttachConfig {
    /// The pod devices to cover now: the ones named, and those matching the prefixes.
    pub fn current_pod_ifaces(&self) -> Result<Vec<String>> {
        let mut all = self.pod_ifaces.clone();
        all.extend(host::netdev::names_with_prefixes(&self.pod_iface_prefixes)?);
        all.sort();
        all.dedup();
        Ok(all)
    }
}

/// The loaded object. Dropping it detaches every program; pinned maps stay.
pub struct Datapath {
    pub ebpf: Ebpf,
    pub pin_dir: PathBuf,
}

impl MapSource for Datapath {
    fn open_map(&self, name: &str) -> Result<aya::maps::MapData> {
        self.ebpf.open_map(name)
    }
}

/// Loads the embedded object with its maps pinned (or adopted) under `pin_dir`, and loads every
/// program into the kernel. A verifier rejection is returned with the verifier's log.
pub fn load(pin_dir: &Path) -> Result<Datapath> {
    load_with(pin_dir, true)
}

/// [`load`], telling the programs whether `xdp_uplink` will be attached (`false`:
/// `tc_uplink_ingress` runs the service pipeline itself; attach with [`XdpAttachMode::Off`]).
pub fn load_with(pin_dir: &Path, uplink_xdp: bool) -> Result<Datapath> {
    load_for(pin_dir, uplink_xdp, false)
}

/// [`load_with`], and whether `xdp_uplink` sends forwarded NodePort traffic back out of the
/// uplink itself (XDP_TX; see [`XdpAttachMode::forwards`]). Off in [`load`] and [`load_with`]:
/// a caller that runs `xdp_uplink` other than attached to an uplink (the benchmark's injector)
/// keeps the translate-and-pass behaviour.
pub fn load_for(pin_dir: &Path, uplink_xdp: bool, xdp_forward: bool) -> Result<Datapath> {
    pin::prepare_pin_dir(pin_dir)?;
    pin::remove_retired_maps(pin_dir)?;
    pin::check_pinned_layouts(pin_dir)?;
    let flag: u32 = uplink_xdp.into();
    let forward: u32 = (uplink_xdp && xdp_forward).into();
    let meta: u32 = xdp_metadata_supported().into();
    let mut loader = EbpfLoader::new();
    // BTF-defined maps carry no pinning attribute (aya-ebpf 0.2 emits none): each map is
    // pinned by name here, and a pin an earlier run left is adopted (aya opens it instead of
    // creating the map). The legacy ring buffer is pinned by its definition, under the default
    // directory.
    for map in dataplane_common::maps::ALL {
        loader.map_pin_path(map.name, pin_dir.join(map.name));
    }
    let mut ebpf = loader
        .default_map_pin_directory(pin_dir)
        .override_global("UPLINK_XDP", &flag, true)
        .override_global("XDP_FORWARD", &forward, true)
        .override_global("XDP_META", &meta, true)
        .load(EBPF_OBJECT)
        .context("loading the eBPF object (maps and BTF)")?;
    load_programs(&mut ebpf)?;
    Ok(Datapath {
        ebpf,
        pin_dir: pin_dir.to_path_buf(),
    })
}

/// Whether XDP programs may call `bpf_xdp_adjust_meta` here (`XDP_META` in the object): how
/// `xdp_uplink` marks the frames it leaves to tc ingress. Some kernels refuse the helper to XDP
/// (a 6.18 build seen here); there tc ingress runs the ingress pipeline on every frame XDP
/// passed instead (correct, one conntrack lookup more per passed frame). Probed once.
pub fn xdp_metadata_supported() -> bool {
    static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        let probed = aya::sys::is_helper_supported(
            aya::programs::ProgramType::Xdp,
            aya::sys::BpfHelper::BPF_FUNC_xdp_adjust_meta,
        );
        let supported = matches!(probed, Ok(true));
        if !supported {
            log::warn!(
                "this kernel refuses bpf_xdp_adjust_meta to XDP programs ({probed:?}): \
                 tc ingress of the uplink runs the ingress pipeline on every frame XDP passes"
            );
        }
        supported
    })
}

/// Program names in the object, by kind (from the one program table, `Hook::program`).
pub fn xdp_programs() -> impl Iterator<Item = &'static str> {
    programs_where(|a| a == Attach::Xdp)
}
pub fn tc_programs() -> impl Iterator<Item = &'static str> {
    programs_where(|a| matches!(a, Attach::TcIngress | Attach::TcEgress))
}
pub fn sock_programs() -> impl Iterator<Item = &'static str> {
    programs_where(|a| matches!(a, Attach::Cgroup(_)))
}

fn load_programs(ebpf: &mut Ebpf) -> Result<()> {
    for name in xdp_programs() {
        let prog: &mut Xdp = program(ebpf, name)?;
        prog.load().map_err(|e| verifier_error(name, e))?;
    }
    for name in tc_programs() {
        let prog: &mut SchedClassifier = program(ebpf, name)?;
        prog.load().map_err(|e| verifier_error(name, e))?;
    }
    for name in sock_programs() {
        let prog: &mut CgroupSockAddr = program(ebpf, name)?;
        prog.load().map_err(|e| verifier_error(name, e))?;
    }
    Ok(())
}

/// The object's program `name` as its kind `T` (`Xdp`, `SchedClassifier`, ...).
pub fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from object"))?;
    prog.try_into()
        .with_context(|| format!("program {name} has an unexpected type"))
}

/// Keeps the verifier log in the error: it is the only useful part of a rejection.
fn verifier_error(name: &str, e: ProgramError) -> anyhow::Error {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            anyhow!("the kernel verifier rejected {name}: {io_error}\n{verifier_log}")
        }
        other => anyhow!("loading {name}: {other}"),
    }
}

/// A bridge (flannel's cni0) is not a pod device: replies of a backend on the same bridge are
/// bridged straight to the client pod and never pass the bridge's own tc hooks, so they would
/// never be un-NATed. Its ports (the pods' host-side veths) are.
fn refuse_bridge(iface: &str) -> Result<()> {
    if host::netdev::link(iface)?.is_bridge() {
        bail!(
            "{iface} is a bridge: attach to its ports instead (the pods' host-side veths, e.g. \
             --pod-iface-prefix veth); replies between pods on the bridge never pass {iface}'s \
             own hooks and would reach clients untranslated"
        );
    }
    Ok(())
}

/// Where a hook's link is pinned: `<pin dir>/links/<program>@<interface>`.
pub fn link_pin(pin_dir: &Path, program: &str, iface: &str) -> PathBuf {
    pin_dir.join("links").join(format!("{program}@{iface}"))
}

impl Datapath {
    /// Attaches XDP and tc ingress/egress on the uplink and tc on every pod-facing device.
    ///
    /// The XDP and tc links are pinned under `<pin dir>/links/`, so the datapath keeps running
    /// when this process exits (an upgrade or a crash): a link lives as long as its pin. A
    /// restarted agent finds the pins and atomically swaps its freshly loaded programs into the
    /// existing links (bpf_link_update): not one packet sees the hook empty. Pins of interfaces
    /// no longer configured are removed, which detaches them.
    pub fn attach(&mut self, cfg: &AttachConfig) -> Result<()> {
        std::fs::create_dir_all(self.pin_dir.join("links"))?;
        let mut wanted = Vec::new();
        // `Off`: no XDP link is wanted, so a pinned one an earlier run left is removed below.
        if cfg.xdp_mode != XdpAttachMode::Off {
            wanted.push(link_pin(
                &self.pin_dir,
                Hook::XdpUplink.program(),
                &cfg.uplink,
            ));
            self.attach_xdp(&cfg.uplink, cfg.xdp_mode)?;
        }
        let mut tc = vec![
            (
                Hook::TcUplinkIngress.program(),
                cfg.uplink.as_str(),
                TcAttachType::Ingress,
            ),
            (
                Hook::TcUplinkEgress.program(),
                cfg.uplink.as_str(),
                TcAttachType::Egress,
            ),
        ];
        let pod_ifaces = cfg.current_pod_ifaces()?;
        for iface in &pod_ifaces {
            refuse_bridge(iface)?;
        }
        for iface in &pod_ifaces {
            tc.push((Hook::TcPodIngress.program(), iface, TcAttachType::Ingress));
            tc.push((Hook::TcPodEgress.program(), iface, TcAttachType::Egress));
        }
        for (name, iface, kind) in tc {
            self.attach_tc(name, iface, kind)?;
            wanted.push(link_pin(&self.pin_dir, name, iface));
        }
        if let Some(cgroup) = &cfg.cgroup {
            self.attach_sock(cgroup)?;
            wanted.extend(sock_programs().map(|p| sock_link_pin(&self.pin_dir, p)));
        }
        // Also drops the cgroup links when socket-level balancing was turned off.
        self.remove_stale_links(&wanted)?;
        Ok(())
    }

    /// Makes the pod-device programs cover exactly `ifaces` (plus the uplink's): attaches to new
    /// devices, detaches from devices that went away. Pods come and go; the agent calls this
    /// with the devices matching `--pod-iface-prefix` whenever it polls.
    pub fn sync_pod_ifaces(&mut self, ifaces: &[String]) -> Result<Vec<String>> {
        let mut added = Vec::new();
        for iface in ifaces {
            if link_pin(&self.pin_dir, Hook::TcPodIngress.program(), iface).exists()
                && link_pin(&self.pin_dir, Hook::TcPodEgress.program(), iface).exists()
            {
                continue;
            }
            // A veth can vanish between listing and attaching: skip it, the next poll decides.
            let attached = self
                .attach_tc(Hook::TcPodIngress.program(), iface, TcAttachType::Ingress)
                .and_then(|_| {
                    self.attach_tc(Hook::TcPodEgress.program(), iface, TcAttachType::Egress)
                });
            match attached {
                Ok(()) => added.push(iface.clone()),
                Err(e) => log::warn!("pod device {iface}: {e:#}"),
            }
        }
        for entry in std::fs::read_dir(self.pin_dir.join("links"))? {
            let entry = entry?;
            let (path, name) = (entry.path(), entry.file_name());
            let name = name.to_string_lossy();
            let Some((prog, iface)) = name.split_once('@') else {
                continue;
            };
            if prog.starts_with("tc_pod_") && !ifaces.iter().any(|i| i == iface) {
                log::info!("pod device {iface} is gone: dropping {name}");
                crate::bpf_link::remove_pinned_link(&path)?;
            }
        }
        Ok(added)
    }

    fn remove_stale_links(&self, wanted: &[PathBuf]) -> Result<()> {
        for entry in std::fs::read_dir(self.pin_dir.join("links"))? {
            let path = entry?.path();
            if !wanted.contains(&path) {
                log::info!("detaching {} (no longer configured)", path.display());
                crate::bpf_link::remove_pinned_link(&path)?;
            }
        }
        Ok(())
    }

    fn attach_xdp(&mut self, iface: &str, mode: XdpAttachMode) -> Result<()> {
        let pin = link_pin(&self.pin_dir, Hook::XdpUplink.program(), iface);
        let prog: &mut Xdp = program(&mut self.ebpf, Hook::XdpUplink.program())?;
        let swap = |fd| {
            prog.attach_to_link(XdpLink::try_from(fd)?)
                .map_err(Into::into)
        };
        if adopt_pinned(&pin, "XDP", swap, || {
            format!("xdp_uplink swapped into the pinned link on {iface}")
        })? {
            return Ok(());
        }
        let first = match mode {
            XdpAttachMode::Generic => XdpMode::Skb,
            _ => XdpMode::Driver,
        };
        let id = match prog.attach(iface, first) {
            Ok(id) => {
                log::info!("xdp_uplink attached to {iface} ({first:?} mode)");
                id
            }
            Err(e) if mode == XdpAttachMode::Auto => {
                log::warn!("native XDP on {iface} failed ({e}); using generic XDP");
                prog.attach(iface, XdpMode::Skb)
                    .with_context(|| format!("attaching xdp_uplink to {iface}"))?
            }
            Err(e) => return Err(e).with_context(|| format!("attaching xdp_uplink to {iface}")),
        };
        let link = FdLink::try_from(prog.take_link(id)?).context("XDP link is not a bpf_link")?;
        link.pin(&pin)
            .with_context(|| format!("pinning {}", pin.display()))?;
        Ok(())
    }

    fn attach_tc(&mut self, name: &str, iface: &str, kind: TcAttachType) -> Result<()> {
        let pin = link_pin(&self.pin_dir, name, iface);
        let prog: &mut SchedClassifier = program(&mut self.ebpf, name)?;
        let swap = |fd| {
            prog.attach_to_link(SchedClassifierLink::try_from(fd)?)
                .map_err(Into::into)
        };
        if adopt_pinned(&pin, "tc", swap, || {
            format!("{name} swapped into the pinned link on {iface} ({kind:?})")
        })? {
            return Ok(());
        }
        // tcx (kernel >= 6.6) needs no clsact qdisc; aya picks tcx on such kernels.
        let id = prog
            .attach(iface, kind)
            .with_context(|| format!("attaching {name} to {iface} {kind:?}"))?;
        log::info!("{name} attached to {iface} ({kind:?})");
        let link =
            FdLink::try_from(prog.take_link(id)?).context("tc link is not a bpf_link (tcx)")?;
        link.pin(&pin)
            .with_context(|| format!("pinning {}", pin.display()))?;
        Ok(())
    }

    /// Socket-level balancing hooks. Other agents (other lab nodes on this kernel, or other
    /// tools) may have their own programs on the same cgroup; ours only act on sockets of this
    /// node's network namespace (CONFIG_V2.netns_cookie). On kernels >= 5.7 aya attaches with a
    /// bpf_link, which is always multi-attach and takes no flags: `Single` passes 0, whereas
    /// `AllowMultiple` passes BPF_F_ALLOW_MULTI and the kernel answers EINVAL.
    ///
    /// Like the XDP and tc links, the cgroup links are pinned (`links/<program>@cgroup`), so the
    /// node's own connections to services keep being balanced while no agent runs (upgrade,
    /// crash, SIGKILL). A restarted agent opens the pin and swaps its program in with
    /// BPF_LINK_UPDATE (aya 0.14 cannot adopt a cgroup link: see `bpf_link`), so the hook is
    /// never empty. A pin for another cgroup or attach type (a changed `--cgroup-path`) is
    /// replaced: the new link is created before the old pin is removed, so there is no gap.
    fn attach_sock(&mut self, cgroup: &Path) -> Result<()> {
        let cgroup_id = host::cgroup::id(cgroup)
            .with_context(|| format!("reading the id of cgroup {}", cgroup.display()))?;
        for hook in Hook::ALL {
            let (name, Attach::Cgroup(attach_type)) = (hook.program(), hook.attach()) else {
                continue;
            };
            let pin = sock_link_pin(&self.pin_dir, name);
            let prog: &mut CgroupSockAddr = program(&mut self.ebpf, name)?;
            let prog_fd = prog.fd()?.as_fd().try_clone_to_owned()?;
            if pin.exists() {
                match adopt_cgroup_link(&pin, cgroup_id, attach_type, prog_fd.as_fd()) {
                    Ok(()) => {
                        log::info!("{name} swapped into the pinned cgroup link");
                        continue;
                    }
                    Err(e) => log::warn!(
                        "pinned cgroup link {} not adoptable ({e:#}); replacing it",
                        pin.display()
                    ),
                }
            }
            let dir = std::fs::File::open(cgroup)
                .with_context(|| format!("opening cgroup {}", cgroup.display()))?;
            let id = prog
                .attach(dir, CgroupAttachMode::Single)
                .with_context(|| format!("attaching {name} to cgroup {}", cgroup.display()))?;
            let link = FdLink::try_from(prog.take_link(id)?)
                .context("cgroup link is not a bpf_link (kernel < 5.7?)")?;
            if pin.exists() {
                // The new link already runs; the old one is detached.
                crate::bpf_link::remove_pinned_link(&pin)?;
            }
            link.pin(&pin)
                .with_context(|| format!("pinning {}", pin.display()))?;
        }
        log::info!(
            "socket-level balancing attached to cgroup {}",
            cgroup.display()
        );
        Ok(())
    }
}

/// Where the cgroup link of a socket program is pinned.
pub fn sock_link_pin(pin_dir: &Path, program: &str) -> PathBuf {
    link_pin(pin_dir, program, "cgroup")
}

/// Swaps `prog` into the link pinned at `pin` if that link is a cgroup link of `attach_type` on
/// the cgroup `cgroup_id`.
fn adopt_cgroup_link(
    pin: &Path,
    cgroup_id: u64,
    attach_type: u32,
    prog: std::os::fd::BorrowedFd<'_>,
) -> Result<()> {
    let link = bpf_link::obj_get(pin).context("BPF_OBJ_GET")?;
    let info = bpf_link::link_info(link.as_fd()).context("BPF_OBJ_GET_INFO_BY_FD")?;
    if info.link_type != bpf_link::BPF_LINK_TYPE_CGROUP
        || info.cgroup_id != cgroup_id
        || info.attach_type != attach_type
    {
        bail!(
            "it is link type {} on cgroup {} attach type {}, wanted cgroup link on {cgroup_id} \
             attach type {attach_type}",
            info.link_type,
            info.cgroup_id,
            info.attach_type
        );
    }
    bpf_link::link_update(link.as_fd(), prog).context("BPF_LINK_UPDATE")
}

/// Swaps a program into the link pinned at `pin`, if there is one (an agent restart: the
/// attachment never goes away). `swap` takes the pinned link as the program's link type and
/// attaches the program to it. Ok(true) once swapped (`swapped` is the log line); a pin that
/// cannot be used is logged and removed, and Ok(false) says to attach anew.
fn adopt_pinned<T>(
    pin: &Path,
    link_kind: &str,
    swap: impl FnOnce(FdLink) -> Result<T>,
    swapped: impl FnOnce() -> String,
) -> Result<bool> {
    if !pin.exists() {
        return Ok(false);
    }
    match PinnedLink::from_pin(pin)
        .map_err(anyhow::Error::from)
        .and_then(|p| swap(FdLink::from(p)))
    {
        Ok(_) => {
            log::info!("{}", swapped());
            Ok(true)
        }
        Err(e) => {
            log::warn!(
                "pinned {link_kind} link {} unusable ({e:#}); attaching anew",
                pin.display()
            );
            crate::bpf_link::remove_pinned_link(pin)?;
            Ok(false)
        }
    }
}
