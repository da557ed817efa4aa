//! What a sync did and did not do: the outcome [`ServiceTable::sync_report`] returns, with
//! the service ports that failed, those left out for capacity and the backends that left for
//! good. Types only; `apply.rs` fills them in.

use dataplane_common::lb::ServiceKey;

#[cfg(doc)]
use super::ServiceTable;
use super::UpdateReport;
use crate::model::ServicePortName;

/// What a [`ServiceTable::sync_report`] did and did not do.
#[derive(Clone, Debug, Default)]
pub struct SyncOutcome {
    /// Entries written and deleted by the service ports that were applied.
    pub report: UpdateReport,
    /// Service ports (or removals of frontends) whose writes failed: left as they were.
    pub failed: Vec<ServiceFailure>,
    /// Maps the desired state does not fit in, with the service ports left out.
    pub over_capacity: Vec<CapacityProblem>,
    /// Backends that left a frontend and are no longer endpoints of its service at all (gone
    /// from the EndpointSlices, not merely terminating or unready; or the service is gone).
    /// Sockets the node's socket-level balancing connected to them have no future.
    pub removed_backends: Vec<RemovedBackend>,
    /// Deferred work that failed (old slots, flow purges); retried by the next update. The
    /// services themselves are applied.
    pub cleanup_errors: Vec<String>,
}

impl SyncOutcome {
    /// Whether everything desired is in the maps and nothing is left to retry.
    pub fn is_complete(&self) -> bool {
        self.failed.is_empty() && self.over_capacity.is_empty() && self.cleanup_errors.is_empty()
    }

    /// Service ports not applied (failed or left out for capacity).
    pub fn not_applied(&self) -> usize {
        self.failed.len()
            + self
                .over_capacity
                .iter()
                .map(|p| p.skipped.len())
                .sum::<usize>()
    }

    /// One error describing everything that went wrong, if anything did.
    pub fn error(&self) -> Option<anyhow::Error> {
        if self.is_complete() {
            return None;
        }
        let mut parts: Vec<String> = self
            .failed
            .iter()
            .map(|f| format!("{}: {}", f.service, f.error))
            .collect();
        parts.extend(self.over_capacity.iter().map(ToString::to_string));
        parts.extend(self.cleanup_errors.iter().cloned());
        Some(anyhow::anyhow!("{}", parts.join("; ")))
    }
}

/// A service port (or a frontend removal) that could not be written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceFailure {
    /// `namespace/name:port`, or for a removal `namespace/name:port (removing frontend ...)`.
    pub service: String,
    pub error: String,
}

/// The desired state does not fit in `map`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapacityProblem {
    /// `SERVICES_V2` or `BACKENDS_V2`.
    pub map: &'static str,
    /// Entries the whole desired state needs (for BACKENDS_V2 including room for replacing the
    /// largest set, which an update writes before it deletes the old one).
    pub needed: usize,
    /// Entries the map has.
    pub limit: usize,
    /// Service ports left out (those already in the maps keep their previous state).
    pub skipped: Vec<ServicePortName>,
}

impl std::fmt::Display for CapacityProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.skipped.iter().take(5).map(|n| n.to_string()).collect();
        write!(
            f,
            "{} would need {} entries, limit {}: {} service port(s) not applied ({}{})",
            self.map,
            self.needed,
            self.limit,
            self.skipped.len(),
            names.join(", "),
            if self.skipped.len() > 5 { ", ..." } else { "" }
        )
    }
}

/// A backend that left `frontend` for good. Network order, as in the maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RemovedBackend {
    pub frontend: ServiceKey,
    pub addr: u32,
    pub port: u16,
}
