//! What each mode's control plane does to its lab: the whole rule set or service table from
//! empty, one changed service, and (the dataplane only) an upsert and the agent's own apply
//! path. Each returns the time the write took.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use dataplane::services::{ServiceTable, UpdateReport};
use dataplane_lab::netns;

use super::{Mode, ModeLab};
use crate::netutil;
use crate::rules::{self, Svc};
use crate::{scenario, source};

/// nft reading its rules from stdin.
const NFT_STDIN: [&str; 3] = ["nft", "-f", "/dev/stdin"];

/// A write's time and, for the dataplane, its entries written + deleted.
type Timed = Option<(Duration, Option<usize>)>;

impl ModeLab {
    /// The iptables-restore flavour of an iptables mode.
    fn iptables_restore(&self) -> &'static str {
        if self.mode == Mode::IptablesLegacy {
            "iptables-legacy-restore"
        } else {
            "iptables-nft-restore"
        }
    }

    /// Times `command` in node1's namespace reading `rules` on its stdin (a restore tool).
    fn feed(&self, command: &[&str], rules: &str) -> Result<Timed> {
        let t = netutil::run_with_stdin(&self.node1.ns, command, rules.as_bytes())?;
        Ok(Some((t, None)))
    }

    /// Loads the whole rule set / service table for `svcs` from empty and returns how long
    /// the load itself took (emptying first is not timed).
    pub fn load_full(&mut self, svcs: &[Svc]) -> Result<Timed> {
        let facts = scenario::facts();
        let ns = self.node1.ns.clone();
        match self.mode {
            Mode::NoNat => Ok(None),
            Mode::IptablesLegacy | Mode::IptablesNft => {
                let tool = self.iptables_restore();
                netutil::run_with_stdin(&ns, &[tool], b"*filter\nCOMMIT\n*nat\nCOMMIT\n")?;
                self.feed(&[tool], &rules::iptables_full(svcs, &facts))
            }
            Mode::Nftables => {
                if self.nft_loaded {
                    netns::run_in(&ns, &["nft", "delete", "table", "ip", "kube-proxy"])?;
                }
                let t = self.feed(&NFT_STDIN, &rules::nft_full(svcs, &facts))?;
                self.nft_loaded = true;
                Ok(t)
            }
            Mode::EbpfTc | Mode::EbpfXdp => {
                let table = self.table.as_mut().expect("service table");
                table.sync(&[] as &[dataplane::model::ServicePort])?;
                timed_sync(table, svcs)
            }
        }
    }

    /// Applies `after` in place of `before` (one service's endpoints changed) the way each
    /// implementation's control plane does, and returns the time taken. `svcs` is the full
    /// desired state after the change.
    pub fn apply_change(&mut self, svcs: &[Svc], before: &Svc, after: &Svc) -> Result<Timed> {
        let facts = scenario::facts();
        match self.mode {
            Mode::NoNat => Ok(None),
            Mode::IptablesLegacy | Mode::IptablesNft => {
                let text = rules::iptables_partial(svcs, &facts, after, before);
                self.feed(&[self.iptables_restore(), "--noflush"], &text)
            }
            Mode::Nftables => self.feed(&NFT_STDIN, &rules::nft_change(after, before, &facts)),
            Mode::EbpfTc | Mode::EbpfXdp => {
                timed_sync(self.table.as_mut().expect("service table"), svcs)
            }
        }
    }

    /// The dataplane only: `upsert` of the one changed service (what a control plane with
    /// per-object events does instead of a full desired-state sync).
    pub fn upsert_one(&mut self, svc: &Svc) -> Result<Timed> {
        let Some(table) = self.table.as_mut() else {
            return Ok(None);
        };
        let model = scenario::to_model(svc);
        timed(|| table.upsert(&model))
    }

    /// The dataplane only: one changed endpoint through the agent's own path
    /// (`dataplane::agent::apply`: the delta against the previous state, the service maps,
    /// source ranges, service names, the change counters), `reps` times, applying the changed
    /// and the original state in turn after one untimed full apply. The states are what the
    /// Kubernetes source publishes for that EndpointSlice replaced and put back
    /// (`source::states`: unchanged ports shared with the previous state, as the source shares
    /// them). Each sample is what the agent records in
    /// `kubeproxy_network_programming_duration_seconds`: from the source's state reaching the
    /// agent to its maps written; with the source's own time for the change (its snapshot,
    /// translation and comparison). (apply time, entries written + deleted, source time).
    /// `full_diff`: without the previous state, so every change diffs every service port (the
    /// agent's cost per change before the delta path; the comparison).
    pub fn agent_changes(
        &mut self,
        svcs: &[Svc],
        changed: (&Svc, &Svc),
        reps: usize,
        full_diff: bool,
    ) -> Result<Vec<(Duration, usize, Duration)>> {
        let (Some(table), Some(dp), Some(pin_dir)) = (
            self.table.as_mut(),
            self.datapath.as_ref(),
            self.pin_dir.as_ref(),
        ) else {
            return Ok(Vec::new());
        };
        let (states, source_times) = source::states(svcs, changed, reps)?;
        let mut ranges = dataplane::services::SourceRanges::open(&dp.ebpf)?;
        let mut names = dataplane::services::ServiceNames::open_or_create(pin_dir)?;
        let status = dataplane::metrics::AgentStatus::default();
        let mut apply = |prev: Option<&dataplane::model::ClusterState>,
                         next: &dataplane::model::ClusterState| {
            dataplane::agent::apply(table, &mut ranges, &mut names, prev, next, &status, None)
        };
        if !apply(None, &states[0]) {
            bail!("the full apply of {} services was incomplete", svcs.len());
        }
        let entries = |st: &dataplane::metrics::AgentStatus| {
            st.entries_written.load(Ordering::Relaxed) + st.entries_deleted.load(Ordering::Relaxed)
        };
        let mut out = Vec::new();
        for (pair, source_time) in states.windows(2).zip(source_times) {
            let (prev, next) = (&pair[0], &pair[1]);
            let e0 = entries(&status);
            let t0 = Instant::now();
            let complete = apply((!full_diff).then_some(&**prev), next);
            let t = t0.elapsed();
            if !complete {
                bail!("one change was not applied completely");
            }
            out.push((t, (entries(&status) - e0) as usize, source_time));
        }
        Ok(out)
    }
}

/// Times `write` (one call into the service table).
fn timed(write: impl FnOnce() -> Result<UpdateReport>) -> Result<Timed> {
    let t0 = Instant::now();
    let rep = write()?;
    let t = t0.elapsed();
    Ok(Some((t, Some(rep.written() + rep.deleted()))))
}

/// Times the full sync of `table` to `svcs` (their models are built before the clock starts).
fn timed_sync(table: &mut ServiceTable, svcs: &[Svc]) -> Result<Timed> {
    let models: Vec<_> = svcs.iter().map(scenario::to_model).collect();
    timed(|| table.sync(&models))
}
