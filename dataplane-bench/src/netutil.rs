//! Small helpers on lab namespaces: interface facts, neighbours, the backends' delivery counters.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::unix::fs::FileExt;

use anyhow::{anyhow, bail, Context, Result};
use dataplane_lab::netns::{self, in_netns};

/// ifindex of `iface` inside namespace `ns`.
pub fn ifindex(ns: &str, iface: &str) -> Result<u32> {
    let name = std::ffi::CString::new(iface)?;
    let idx = in_netns(ns, move || unsafe { libc::if_nametoindex(name.as_ptr()) })?;
    if idx == 0 {
        bail!("no interface {iface} in {ns}");
    }
    Ok(idx)
}

/// MAC address of `iface` in `ns`.
pub use dataplane_lab::flannel::iface_mac as mac;

/// `aa:bb:cc:dd:ee:ff`.
pub fn fmt_mac(m: &[u8; 6]) -> String {
    dataplane_lab::flannel::mac_text(*m)
}

/// A permanent neighbour entry: no ARP resolution or probing during timed runs.
pub fn permanent_neighbor(ns: &str, ip: Ipv4Addr, mac: &[u8; 6], dev: &str) -> Result<()> {
    netns::ip(
        ns,
        &[
            "neigh",
            "replace",
            &ip.to_string(),
            "lladdr",
            &fmt_mac(mac),
            "dev",
            dev,
            "nud",
            "permanent",
        ],
    )?;
    Ok(())
}

/// Readies pod `p` of `node` as a UDP backend of the benchmark: it answers nothing (no ICMP
/// port unreachable: the only work a delivered packet causes there is the UDP lookup that
/// counts it), the node reaches it without ARP, and a socket bound to the service port takes
/// what arrives untranslated (counted as an error, not answered). Returns its delivery counter
/// and that socket.
pub fn udp_backend(
    node: &dataplane_lab::lab::Node,
    p: &dataplane_lab::lab::Pod,
) -> Result<(UdpCounter, std::net::UdpSocket)> {
    netns::set_sysctls(
        &p.ns,
        &[
            ("net.ipv4.icmp_msgs_per_sec", "0"),
            ("net.ipv4.icmp_msgs_burst", "0"),
        ],
    )?;
    let m = mac(&p.ns, "eth0")?;
    permanent_neighbor(&node.ns, p.ip, &m, &p.host_iface)?;
    let untranslated = in_netns(&p.ns, || {
        std::net::UdpSocket::bind(std::net::SocketAddrV4::new(
            Ipv4Addr::UNSPECIFIED,
            crate::scenario::SERVICE_PORT,
        ))
    })??;
    Ok((UdpCounter::open(&p.ns)?, untranslated))
}

/// The `Udp: NoPorts` counter of one namespace: datagrams that reached the host with a valid
/// checksum, for a port nothing listens on. Backends count what the benchmark delivered to
/// them this way (only correctly translated packets are addressed to them, and a broken
/// checksum counts as InCsumErrors instead).
pub struct UdpCounter {
    file: File,
}

impl UdpCounter {
    /// Opens the namespace's /proc/net/snmp from a thread inside it; the open file keeps
    /// reporting that namespace from any thread.
    pub fn open(ns: &str) -> Result<UdpCounter> {
        let file =
            in_netns(ns, || File::open("/proc/thread-self/net/snmp"))?.context("opening snmp")?;
        Ok(UdpCounter { file })
    }

    pub fn read(&self) -> Result<UdpStats> {
        let mut buf = vec![0u8; 16384];
        let n = self.file.read_at(&mut buf, 0)?;
        let text = String::from_utf8_lossy(&buf[..n]);
        let udp: Vec<&str> = text.lines().filter(|l| l.starts_with("Udp:")).collect();
        if udp.len() < 2 {
            bail!("no Udp lines in snmp");
        }
        let names: Vec<&str> = udp[0].split_whitespace().collect();
        let values: Vec<&str> = udp[1].split_whitespace().collect();
        let get = |k: &str| -> Result<u64> {
            let i = names
                .iter()
                .position(|n| *n == k)
                .ok_or_else(|| anyhow!("no {k} in snmp"))?;
            Ok(values
                .get(i)
                .ok_or_else(|| anyhow!("short snmp"))?
                .parse()?)
        };
        Ok(UdpStats {
            no_ports: get("NoPorts")?,
            csum_errors: get("InCsumErrors")?,
            in_datagrams: get("InDatagrams")?,
            rcvbuf_errors: get("RcvbufErrors")?,
        })
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UdpStats {
    /// Datagrams to a port nothing listens on, checksum verified: the translated packets
    /// (backends listen on nothing on the target port).
    pub no_ports: u64,
    pub csum_errors: u64,
    /// Datagrams queued to (or dropped by a full buffer of) a socket: only the socket on the
    /// untranslated service port exists, so these are packets that were not translated.
    pub in_datagrams: u64,
    pub rcvbuf_errors: u64,
}

impl UdpStats {
    pub fn untranslated(&self) -> u64 {
        self.in_datagrams + self.rcvbuf_errors
    }
}

impl std::ops::Sub for UdpStats {
    type Output = UdpStats;
    fn sub(self, o: UdpStats) -> UdpStats {
        UdpStats {
            no_ports: self.no_ports - o.no_ports,
            csum_errors: self.csum_errors - o.csum_errors,
            in_datagrams: self.in_datagrams - o.in_datagrams,
            rcvbuf_errors: self.rcvbuf_errors - o.rcvbuf_errors,
        }
    }
}

/// Pins the calling thread to `cpu`.
pub fn pin_to_cpu(cpu: usize) -> Result<()> {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity(0) affects the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error()).context("sched_setaffinity");
        }
    }
    Ok(())
}

/// Runs a command inside `ns` with `input` on stdin; returns its wall time. Used for
/// iptables-restore and nft -f, which read the rule set from stdin.
pub fn run_with_stdin(ns: &str, argv: &[&str], input: &[u8]) -> Result<std::time::Duration> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut full = vec![
        "nsenter".to_string(),
        format!("--net={}", netns::ns_path(ns).display()),
        "--".to_string(),
    ];
    full.extend(argv.iter().map(|s| s.to_string()));
    // The input goes through a temporary file, not a pipe: the tools then read it at full
    // speed and the time measured is theirs, not this process's writing.
    let tmp = std::env::temp_dir().join(format!(
        "dpl-bench-{}-{}.rules",
        std::process::id(),
        argv[0]
    ));
    std::fs::write(&tmp, input)?;
    let stdin = File::open(&tmp)?;
    let t0 = std::time::Instant::now();
    let out = Command::new(&full[0])
        .args(&full[1..])
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("starting {}", full.join(" ")))?;
    let took = t0.elapsed();
    let _ = std::fs::remove_file(&tmp);
    if !out.status.success() {
        let mut f = File::create(std::env::temp_dir().join("dpl-bench-failed.rules")).ok();
        if let Some(f) = f.as_mut() {
            let _ = f.write_all(input);
        }
        bail!(
            "`{}` failed ({}): {} (input kept in {}/dpl-bench-failed.rules)",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .take(5)
                .collect::<Vec<_>>()
                .join(" | "),
            std::env::temp_dir().display()
        );
    }
    Ok(took)
}
