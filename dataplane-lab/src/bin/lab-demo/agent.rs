//! `dataplane run` on a lab node: start it and wait for `ready`, stop it (SIGTERM: the pinned
//! links keep the datapath up), restart it with the same arguments, and take the datapath down
//! with `dataplane cleanup` at the end.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use dataplane_lab::lab::{Child, Lab};
use dataplane_lab::netns;

use crate::interrupted;

/// How long `dataplane run` may take to print `ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// `dataplane run` on one node.
pub struct Agent {
    pub node: String,
    /// Index of the node in the lab.
    pub index: usize,
    pub pin_dir: PathBuf,
    argv: Vec<String>,
    child: Option<Child>,
}

impl Agent {
    /// Starts `bin run` on node `i` with the lab's pod devices and `extra` arguments.
    pub fn start(lab: &Lab, i: usize, bin: &Path, extra: &[String]) -> Result<Agent> {
        let node = lab.node(i);
        let pin_dir = lab.pin_dir(i)?;
        let mut argv: Vec<String> = vec![
            bin.display().to_string(),
            "run".into(),
            "--node-name".into(),
            node.name.clone(),
            "--uplink".into(),
            node.uplink.clone(),
        ];
        let ifaces = node.pod_ifaces();
        if !ifaces.is_empty() {
            argv.push("--pod-ifaces".into());
            argv.extend(ifaces);
        }
        argv.extend(["--pin-dir".into(), pin_dir.display().to_string()]);
        argv.extend(extra.iter().cloned());
        let mut agent = Agent {
            node: node.name.clone(),
            index: i,
            pin_dir,
            argv,
            child: None,
        };
        agent.spawn(lab)?;
        Ok(agent)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::pid)
    }

    pub fn pin(&self) -> String {
        self.pin_dir.display().to_string()
    }

    /// The agent's stderr so far (its log).
    pub fn log(&self) -> String {
        self.child.as_ref().map(Child::stderr).unwrap_or_default()
    }

    fn spawn(&mut self, lab: &Lab) -> Result<()> {
        let ns = lab.node(self.index).ns.clone();
        let argv: Vec<&str> = self.argv.iter().map(String::as_str).collect();
        let mut child = lab.spawn_in(&ns, &argv)?;
        let deadline = Instant::now() + READY_TIMEOUT;
        while !child.stdout().lines().any(|l| l.trim() == "ready") {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "{}: `{}` exited ({status}):\n{}",
                    self.node,
                    argv.join(" "),
                    child.stderr()
                );
            }
            if Instant::now() >= deadline || interrupted() {
                bail!(
                    "{}: `{}` not ready after {READY_TIMEOUT:?}:\n{}",
                    self.node,
                    argv.join(" "),
                    child.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
        Ok(())
    }

    /// SIGTERM (unless it already exited, e.g. on the terminal's Ctrl-C) and wait; returns
    /// its exit status. The datapath stays attached through the pinned links.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| anyhow!("{}: not running", self.node))?;
        let status = match child.try_wait()? {
            Some(s) => s,
            None => {
                // SAFETY: plain syscall; the pid is our child, not yet reaped (try_wait saw it).
                unsafe { libc::kill(child.pid() as i32, libc::SIGTERM) };
                child
                    .wait_timeout(Duration::from_secs(10))?
                    .ok_or_else(|| anyhow!("{}: ignored SIGTERM for 10 s", self.node))?
            }
        };
        if !status.success() {
            bail!("{}: exited {status}:\n{}", self.node, tail(&child.stderr()));
        }
        Ok(status)
    }

    /// Starts the agent again with the same arguments (it adopts the pinned maps and swaps its
    /// programs into the pinned links).
    pub fn restart(&mut self, lab: &Lab) -> Result<()> {
        if self.child.is_some() {
            self.stop()?;
        }
        self.spawn(lab)
    }

    /// Stops the agent, then takes the datapath down with `dataplane cleanup`, the operator's
    /// way, and checks that no XDP program is left on the uplink.
    pub fn stop_and_clean(mut self, lab: &Lab, bin: &Path) -> Result<String> {
        let log = self.log();
        if self.child.is_some() {
            self.stop()
                .map_err(|e| anyhow!("{e:#}; its log ends:\n{}", tail(&log)))?;
        }
        netns::run(&[&bin.to_string_lossy(), "cleanup", "--pin-dir", &self.pin()])?;
        let node = lab.node(self.index);
        let link = netns::ip(&node.ns, &["link", "show", "dev", &node.uplink])?;
        if link.contains("xdp") {
            bail!("XDP is still attached after cleanup:\n{link}");
        }
        Ok("exited 0, programs detached".into())
    }
}

/// The last lines of a log, indented.
pub fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(8)..]
        .iter()
        .map(|l| format!("      {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
