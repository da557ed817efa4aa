//! The part both sources share: wait for changes, coalesce bursts, translate, log new problems,
//! count, and publish the new [`ClusterState`] if it differs from the last one.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, Instant},
};

use tokio::sync::{watch, Notify};

use super::{
    incremental::Translator,
    local::LocalNode,
    objects::Objects,
    problem::{Problem, ProblemLog},
};
use crate::model::ClusterState;

/// After a change, wait this long without further changes before syncing...
pub const QUIET: Duration = Duration::from_millis(100);
/// ...but never longer than this after the first change (a steady stream of changes must not
/// starve the sync).
pub const MAX_DELAY: Duration = Duration::from_secs(1);

/// Counters of a source, for metrics. Shared with the source's tasks; read with
/// [`SourceStats::snapshot`].
#[derive(Debug, Default)]
pub struct SourceStats {
    services: AtomicU64,
    endpoint_slices: AtomicU64,
    nodes: AtomicU64,
    problems: AtomicU64,
    syncs: AtomicU64,
    updates: AtomicU64,
    errors: AtomicU64,
    last_sync_micros: AtomicU64,
}

/// A consistent-enough copy of [`SourceStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceStatsSnapshot {
    /// Objects the last sync read, per kind.
    pub services: u64,
    pub endpoint_slices: u64,
    pub nodes: u64,
    /// Problems (invalid + unsupported) the last sync found.
    pub problems: u64,
    /// Translations run.
    pub syncs: u64,
    /// States published (syncs whose result differed from the previous state).
    pub updates: u64,
    /// API errors (list/watch failures, retried with backoff) and manifest files that did not
    /// parse, since start.
    pub errors: u64,
    /// How long the last translation took.
    pub last_sync_micros: u64,
}

impl SourceStats {
    /// The current values.
    pub fn snapshot(&self) -> SourceStatsSnapshot {
        SourceStatsSnapshot {
            services: self.services.load(Relaxed),
            endpoint_slices: self.endpoint_slices.load(Relaxed),
            nodes: self.nodes.load(Relaxed),
            problems: self.problems.load(Relaxed),
            syncs: self.syncs.load(Relaxed),
            updates: self.updates.load(Relaxed),
            errors: self.errors.load(Relaxed),
            last_sync_micros: self.last_sync_micros.load(Relaxed),
        }
    }

    pub(crate) fn count_error(&self) {
        self.errors.fetch_add(1, Relaxed);
    }

    fn record_sync(&self, objects: &Objects, problems: usize, took: Duration) {
        self.services.store(objects.services.len() as u64, Relaxed);
        self.endpoint_slices
            .store(objects.endpoint_slices.len() as u64, Relaxed);
        self.nodes.store(objects.nodes.len() as u64, Relaxed);
        self.problems.store(problems as u64, Relaxed);
        self.syncs.fetch_add(1, Relaxed);
        self.last_sync_micros
            .store(took.as_micros().try_into().unwrap_or(u64::MAX), Relaxed);
    }
}

/// What a source holds right now: its objects and the problems it found reading them (manifest
/// objects that did not decode).
#[derive(Clone, Debug, Default)]
pub(crate) struct Snapshot {
    pub objects: Objects,
    pub problems: Vec<Problem>,
}

/// Turns a source's snapshots into published states.
pub(crate) struct Publisher {
    /// This node; a change (an address added or removed) re-translates.
    local: watch::Receiver<LocalNode>,
    tx: watch::Sender<Arc<ClusterState>>,
    stats: Arc<SourceStats>,
    log: ProblemLog,
    /// Translates each snapshot in proportion to what changed: the published states share
    /// every unchanged port, so comparing them is cheap too.
    translator: Translator,
    published: bool,
}

impl Publisher {
    pub fn new(
        local: watch::Receiver<LocalNode>,
        tx: watch::Sender<Arc<ClusterState>>,
        stats: Arc<SourceStats>,
    ) -> Self {
        Publisher {
            local,
            tx,
            stats,
            log: ProblemLog::default(),
            translator: Translator::new(),
            published: false,
        }
    }

    /// Resolves when every receiver is gone.
    pub async fn closed(&self) {
        self.tx.closed().await
    }

    /// Syncs once now, then after every (coalesced) notification on `changes`, until every
    /// receiver is gone.
    pub async fn run(mut self, changes: Arc<Notify>, snapshot: impl Fn() -> Snapshot) {
        loop {
            self.sync(snapshot());
            tokio::select! {
                _ = self.tx.closed() => return,
                _ = settle(&changes) => {}
                _ = local_changed(&mut self.local) => {}
            }
        }
    }

    /// Translates and publishes if the state changed. The first sync always publishes, so a
    /// consumer waiting for `changed()` learns the source is up even when it is empty.
    fn sync(&mut self, snapshot: Snapshot) {
        let started = Instant::now();
        let local = self.local.borrow_and_update().clone();
        let (state, mut problems) = self.translator.translate(snapshot.objects, &local);
        problems.extend(snapshot.problems);
        problems.sort();
        problems.dedup();
        self.log.report(&problems);
        let objects = self.translator.objects();
        self.stats
            .record_sync(objects, problems.len(), started.elapsed());
        let changed = !self.published || **self.tx.borrow() != state;
        if changed {
            log::info!(
                "k8s: {} service ports, {} nodes ({} objects, {} problems)",
                state.services.len(),
                state.nodes.len(),
                objects.len(),
                problems.len()
            );
            // Counted before it is visible: a reader woken by the send sees it counted.
            self.stats.updates.fetch_add(1, Relaxed);
            self.tx.send_replace(Arc::new(state));
            self.published = true;
        }
    }
}

/// Resolves when `local` changes; pends forever once its sender is gone (a fixed node).
async fn local_changed(local: &mut watch::Receiver<LocalNode>) {
    if local.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Waits for a change, then until changes stop for [`QUIET`] (at most [`MAX_DELAY`]).
async fn settle(changes: &Notify) {
    changes.notified().await;
    let deadline = tokio::time::Instant::now() + MAX_DELAY;
    loop {
        let quiet_until = (tokio::time::Instant::now() + QUIET).min(deadline);
        match tokio::time::timeout_at(quiet_until, changes.notified()).await {
            Ok(()) if tokio::time::Instant::now() < deadline => continue,
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task that signals a change on `changes` every `period`, `times` times or forever.
    fn notify_every(
        changes: &Arc<Notify>,
        period: Duration,
        times: Option<usize>,
    ) -> tokio::task::JoinHandle<()> {
        let changes = changes.clone();
        tokio::spawn(async move {
            for _ in 0..times.unwrap_or(usize::MAX) {
                changes.notify_one();
                tokio::time::sleep(period).await;
            }
        })
    }

    #[tokio::test(start_paused = true)]
    async fn settle_waits_for_quiet() {
        let changes = Arc::new(Notify::new());
        let start = tokio::time::Instant::now();
        let notifier = notify_every(&changes, Duration::from_millis(50), Some(5));
        settle(&changes).await;
        notifier.await.unwrap();
        // Last change at 200 ms, then 100 ms quiet.
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_millis(350),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn settle_gives_up_waiting_for_quiet_after_max_delay() {
        let changes = Arc::new(Notify::new());
        let start = tokio::time::Instant::now();
        let notifier = notify_every(&changes, Duration::from_millis(20), None);
        settle(&changes).await;
        notifier.abort();
        let took = start.elapsed();
        assert!(took >= MAX_DELAY && took < MAX_DELAY + QUIET, "{took:?}");
    }

    #[tokio::test]
    async fn publishes_first_state_then_only_changes() {
        let (tx, mut rx) = watch::channel(Arc::new(ClusterState::default()));
        let stats = Arc::new(SourceStats::default());
        let (_local_tx, local) = watch::channel(LocalNode::default());
        let mut publisher = Publisher::new(local, tx, stats.clone());
        publisher.sync(Snapshot::default());
        assert!(
            rx.has_changed().unwrap(),
            "the first sync publishes even an empty state"
        );
        rx.mark_unchanged();
        publisher.sync(Snapshot::default());
        assert!(
            !rx.has_changed().unwrap(),
            "an equal state is not published again"
        );
        let s = stats.snapshot();
        assert_eq!((s.syncs, s.updates), (2, 1));
    }
}
