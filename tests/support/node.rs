//! Running the real `dataplane` binary on lab nodes, and checking that labs leave nothing behind.
//!
//! [`DataplaneNode::start`] runs `dataplane run` inside a node's namespace (through nsenter, so
//! /sys/fs/bpf stays visible) and waits for its `ready` line; a process that exits or stays
//! silent instead (a verifier rejection, a refused pinned map, an attach error) makes `start`
//! fail with the process's stderr in the error, so the test fails loudly with the reason.
//!
//! [`CheckedLab`] wraps a [`Lab`] and asserts, when it is dropped, that no namespace with the
//! lab's prefix is left (`ip netns list`) and that its pin directories are gone.

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use dataplane::stats::Stats;
use dataplane_lab::lab::{Child, Lab, LabSpec};
use dataplane_lab::netns;

/// The `dataplane` binary of this build.
pub const DATAPLANE_BIN: &str = env!("CARGO_BIN_EXE_dataplane");

/// How long `dataplane run` may take to load, attach and print `ready`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long `dataplane run` may take to detach and exit after SIGTERM (the lab's child
/// handling sends SIGKILL after its own grace period).
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// `dataplane run` on one lab node.
pub struct DataplaneNode {
    child: Option<Child>,
    node_name: String,
    ns: String,
    pin_dir: PathBuf,
}

impl DataplaneNode {
    /// Starts `dataplane run --node-name nodeN --uplink eth0 --pod-ifaces <host veths>
    /// --pin-dir <lab.pin_dir(node)> <extra_args>` in the namespace of node `node` (0-based) and
    /// waits for `ready` on its stdout.
    pub fn start(lab: &Lab, node: usize, extra_args: &[&str]) -> Result<Self> {
        let pin_dir = lab.pin_dir(node)?;
        Self::start_with_pin_dir(lab, node, &pin_dir, extra_args)
    }

    /// Like [`DataplaneNode::start`], with another pin directory (it must be on bpffs).
    pub fn start_with_pin_dir(
        lab: &Lab,
        node: usize,
        pin_dir: &Path,
        extra_args: &[&str],
    ) -> Result<Self> {
        Self::start_wrapped(lab, node, pin_dir, &[], extra_args)
    }

    /// Like [`DataplaneNode::start_with_pin_dir`], run through `wrapper` (e.g. `setpriv` with a
    /// reduced capability set): `wrapper... dataplane run ...`.
    pub fn start_wrapped(
        lab: &Lab,
        node: usize,
        pin_dir: &Path,
        wrapper: &[&str],
        extra_args: &[&str],
    ) -> Result<Self> {
        let n = lab
            .nodes()
            .get(node)
            .ok_or_else(|| anyhow!("no node with 0-based index {node}"))?;
        let pin = pin_dir.to_string_lossy().into_owned();
        let ifaces = n.pod_ifaces();
        let mut argv: Vec<&str> = wrapper.to_vec();
        argv.extend([DATAPLANE_BIN, "run", "--node-name", &n.name]);
        // The uplink by name unless the caller finds it by address.
        if !extra_args.contains(&"--uplink-address") {
            argv.extend(["--uplink", &n.uplink]);
        }
        if !ifaces.is_empty() {
            argv.push("--pod-ifaces");
            argv.extend(ifaces.iter().map(String::as_str));
        }
        argv.extend(["--pin-dir", pin.as_str()]);
        argv.extend_from_slice(extra_args);

        let mut child = lab.spawn_in(&n.ns, &argv)?;
        wait_ready(&mut child, READY_TIMEOUT)
            .with_context(|| format!("{}: `dataplane run` did not become ready", n.name))?;
        Ok(DataplaneNode {
            child: Some(child),
            node_name: n.name.clone(),
            ns: n.ns.clone(),
            pin_dir: pin_dir.to_path_buf(),
        })
    }

    /// The directory its maps are pinned in.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// The node's namespace.
    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// The node's name (`nodeN`).
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// Pid of the `dataplane` process.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::pid)
    }

    /// Ids of the BPF programs the process holds (program and link fds in /proc/PID/fdinfo).
    /// Once it has exited, none of them may still be loaded: a program still attached
    /// anywhere (XDP, tcx, cgroup) would keep its id alive.
    pub fn program_ids(&self) -> Vec<u32> {
        let dir = format!("/proc/{}/fdinfo", self.pid());
        let mut ids: Vec<u32> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{dir}: {e}"))
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
            .flat_map(|info| {
                info.lines()
                    .filter_map(|l| l.strip_prefix("prog_id:"))
                    .filter_map(|v| v.trim().parse().ok())
                    .collect::<Vec<u32>>()
            })
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Its stderr so far (the log).
    pub fn stderr(&self) -> String {
        self.child.as_ref().map(Child::stderr).unwrap_or_default()
    }

    /// The counters, read in-process from the pinned `STATS_V2`.
    pub fn stats(&self) -> Result<Stats> {
        dataplane::stats::read_pinned(&self.pin_dir)
            .with_context(|| format!("{}: reading the pinned stats", self.node_name))
    }

    /// SIGKILL (a crash, an OOM kill): the process gets no chance to clean anything up.
    pub fn kill(mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        // SAFETY: plain syscall on our own unreaped child.
        unsafe { libc::kill(child.pid() as i32, libc::SIGKILL) };
        match child.wait_timeout(STOP_TIMEOUT)? {
            Some(_) => Ok(()),
            None => bail!("{}: `dataplane run` survived SIGKILL", self.node_name),
        }
    }

    /// SIGTERM, and expect a clean exit (status 0) within a few seconds.
    pub fn stop(mut self) -> Result<()> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        // Still running? (It must be: `dataplane run` only exits on a signal.)
        if let Some(status) = child.try_wait()? {
            bail!(
                "{}: `dataplane run` had already exited ({status}) before stop; stderr:\n{}",
                self.node_name,
                child.stderr()
            );
        }
        // SAFETY: plain syscall; the pid is our unreaped child (try_wait saw it running).
        unsafe { libc::kill(child.pid() as i32, libc::SIGTERM) };
        let status = child.wait_timeout(STOP_TIMEOUT)?;
        let stderr = child.stderr();
        match status {
            Some(s) if s.success() => Ok(()),
            Some(s) => bail!(
                "{}: `dataplane run` exited with {s} after SIGTERM; stderr:\n{stderr}",
                self.node_name
            ),
            None => {
                let s = child.stop()?;
                bail!(
                    "{}: `dataplane run` ignored SIGTERM for {STOP_TIMEOUT:?} (killed: {s}); \
                     stderr:\n{stderr}",
                    self.node_name
                )
            }
        }
    }
}

impl Drop for DataplaneNode {
    fn drop(&mut self) {
        if let Err(e) = self.stop_inner() {
            eprintln!("warning: {e:#}");
        }
    }
}

/// Waits for a line `ready` on `child`'s stdout. Exiting first, or staying silent past
/// `timeout`, is an error carrying the process's stderr (and stdout).
pub fn wait_ready(child: &mut Child, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if child.stdout().lines().any(|l| l.trim() == "ready") {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            // Give the last output a chance to be collected (try_wait finished the capture).
            if child.stdout().lines().any(|l| l.trim() == "ready") {
                bail!("`{}` printed ready but exited ({status})", child.cmdline());
            }
            bail!(
                "`{}` exited ({status}) before printing `ready`; stderr:\n{}{}",
                child.cmdline(),
                child.stderr(),
                stdout_note(child)
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "`{}` did not print `ready` within {timeout:?}; stderr so far:\n{}{}",
                child.cmdline(),
                child.stderr(),
                stdout_note(child)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stdout_note(child: &Child) -> String {
    let out = child.stdout();
    if out.trim().is_empty() {
        String::new()
    } else {
        format!("\nstdout:\n{out}")
    }
}

/// Output of a finished `dataplane` CLI command (run in the root namespace: pinned maps are on
/// the machine-wide bpffs).
pub struct CliOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `dataplane <args>` to completion.
pub fn dataplane_cli(args: &[&str]) -> Result<CliOutput> {
    let out = Command::new(DATAPLANE_BIN)
        .args(args)
        .output()
        .with_context(|| format!("starting {DATAPLANE_BIN}"))?;
    Ok(CliOutput {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// The `bpftool` binary; the tests fail (never skip) without it. `.ci/run` installs it.
pub fn bpftool() -> &'static str {
    for path in [
        "/usr/sbin/bpftool",
        "/usr/bin/bpftool",
        "/usr/local/sbin/bpftool",
    ] {
        if Path::new(path).exists() {
            return path;
        }
    }
    panic!("bpftool is not installed (apt-get install bpftool; .ci/run installs it)");
}

/// Namespaces whose name starts with `prefix`, as `ip netns list` shows them.
pub fn namespaces_with_prefix(prefix: &str) -> Vec<String> {
    let listed = netns::run(&["ip", "netns", "list"]).expect("ip netns list");
    listed
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| name.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

/// Asserts that a dropped lab left nothing: no namespace with its prefix, no pin directory.
pub fn assert_lab_removed(prefix: &str, pin_base: &Path) {
    let left = namespaces_with_prefix(prefix);
    assert!(
        left.is_empty(),
        "lab {prefix} left namespaces behind after teardown: {left:?}"
    );
    assert!(
        !pin_base.exists(),
        "lab {prefix} left its pin directory {} behind",
        pin_base.display()
    );
}

/// A [`Lab`] whose teardown is checked: dropping it drops the lab, then asserts (unless the
/// test is already failing) that nothing of it remains. Start [`DataplaneNode`]s after it, so
/// they are stopped before the lab goes.
pub struct CheckedLab {
    lab: Option<Lab>,
}

impl CheckedLab {
    pub fn build(spec: &LabSpec) -> Result<CheckedLab> {
        Ok(CheckedLab {
            lab: Some(Lab::build(spec)?),
        })
    }

    /// Tears the lab down now and checks it is gone.
    pub fn teardown(mut self) {
        self.teardown_inner();
    }

    fn teardown_inner(&mut self) {
        if let Some(lab) = self.lab.take() {
            let prefix = lab.prefix().to_string();
            let pin_base = lab.pin_base().to_path_buf();
            drop(lab);
            if !std::thread::panicking() {
                assert_lab_removed(&prefix, &pin_base);
            }
        }
    }
}

impl Deref for CheckedLab {
    type Target = Lab;

    fn deref(&self) -> &Lab {
        self.lab.as_ref().expect("lab already torn down")
    }
}

impl Drop for CheckedLab {
    fn drop(&mut self) {
        self.teardown_inner();
    }
}
