//! The `--manifests PATH` source: a YAML/JSON file, or a directory of them (not recursive;
//! `*.yaml`, `*.yml`, `*.json`, hidden files skipped), polled for changes.
//!
//! A file that does not parse is logged (file and error) and keeps contributing the objects it
//! had when it last parsed, so a half-saved edit never removes services from the datapath. A
//! file that is deleted from the directory takes its objects with it.
//!
//! A re-read file's objects that did not change keep their `Arc`s (as the API source's stores
//! do): the translator translates again only what changed (`incremental.rs`).

use std::{
    collections::{BTreeMap, HashMap},
    fs, io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result};
use kube::Resource;
use tokio::sync::Notify;

use super::{
    decode::{decode, Decoded, Format},
    objects::Objects,
    sync::{Snapshot, SourceStats},
};

/// How often files are checked for changes.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Identifies a file's content well enough to notice edits, including replace-by-rename.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fingerprint {
    len: u64,
    mtime_ns: i128,
    inode: u64,
    device: u64,
}

impl Fingerprint {
    fn of(meta: &fs::Metadata) -> Self {
        Fingerprint {
            len: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            inode: meta.ino(),
            device: meta.dev(),
        }
    }
}

struct ManifestFile {
    /// What the file looked like when last read (parsed or not).
    fingerprint: Fingerprint,
    /// Its content when it last parsed; None if it never did.
    last_good: Option<Decoded>,
}

/// The manifest files under one path and their last good content.
pub(crate) struct ManifestSet {
    root: PathBuf,
    files: BTreeMap<PathBuf, ManifestFile>,
    stats: Arc<SourceStats>,
}

impl ManifestSet {
    /// Reads every manifest under `root` once. Errors if `root` cannot be read at all.
    pub(crate) fn load(root: &Path, stats: Arc<SourceStats>) -> Result<Self> {
        let mut set = ManifestSet {
            root: root.to_owned(),
            files: BTreeMap::new(),
            stats,
        };
        set.list()
            .with_context(|| format!("reading manifests from {}", root.display()))?;
        set.refresh();
        Ok(set)
    }

    /// Re-reads the files that changed, appeared or went away; true if any did.
    pub(crate) fn refresh(&mut self) -> bool {
        let listed = match self.list() {
            Ok(listed) => listed,
            Err(error) => {
                // E.g. the path is being replaced: keep everything, try again next poll.
                log::warn!(
                    "manifests: cannot read {}: {error}; keeping the last good objects",
                    self.root.display()
                );
                return false;
            }
        };
        let before = self.files.len();
        self.files
            .retain(|path, _| listed.iter().any(|(p, _)| p == path));
        let mut changed = self.files.len() != before;
        for (path, fingerprint) in listed {
            if self
                .files
                .get(&path)
                .is_some_and(|f| f.fingerprint == fingerprint)
            {
                continue;
            }
            changed = true;
            let last_good = self.files.remove(&path).and_then(|f| f.last_good);
            let last_good = self.read(&path, last_good);
            self.files.insert(
                path,
                ManifestFile {
                    fingerprint,
                    last_good,
                },
            );
        }
        changed
    }

    /// The objects of every file (in path order) and the objects that did not decode.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let mut snapshot = Snapshot::default();
        for decoded in self.files.values().filter_map(|f| f.last_good.as_ref()) {
            snapshot.objects.extend(&decoded.objects);
            snapshot.problems.extend(decoded.problems.iter().cloned());
        }
        snapshot
    }

    /// The manifest files under the root, with their fingerprints.
    fn list(&self) -> io::Result<Vec<(PathBuf, Fingerprint)>> {
        let meta = fs::metadata(&self.root)?;
        if !meta.is_dir() {
            return Ok(vec![(self.root.clone(), Fingerprint::of(&meta))]);
        }
        let mut files = Vec::new();
        for entry in fs::read_dir(&self.root)? {
            let path = entry?.path();
            let hidden = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_none_or(|n| n.starts_with('.'));
            if hidden || Format::of(&path).is_none() {
                continue;
            }
            // Follows symlinks (ConfigMap volumes are symlinks); a dangling one is skipped.
            match fs::metadata(&path) {
                Ok(meta) if meta.is_file() => files.push((path, Fingerprint::of(&meta))),
                _ => {}
            }
        }
        files.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(files)
    }

    /// Reads and decodes one file; on failure logs it and keeps `last_good`.
    fn read(&self, path: &Path, last_good: Option<Decoded>) -> Option<Decoded> {
        // A root file named without a known extension is read as YAML (JSON is YAML, mostly).
        let format = Format::of(path).unwrap_or(Format::Yaml);
        let result = fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|text| decode(&text, format).map_err(|e| e.to_string()));
        match result {
            Ok(mut decoded) => {
                log::debug!(
                    "manifests: {}: {} objects",
                    path.display(),
                    decoded.objects.len()
                );
                if let Some(before) = &last_good {
                    keep_unchanged(&mut decoded.objects, &before.objects);
                }
                Some(decoded)
            }
            Err(error) => {
                self.stats.count_error();
                let kept = last_good.as_ref().map_or(0, |d| d.objects.len());
                log::warn!(
                    "manifests: {}: {error}; keeping its last good objects ({kept})",
                    path.display()
                );
                last_good
            }
        }
    }
}

/// Each object of `objects` equal to `before`'s object of its kind and name becomes that
/// object's `Arc`: one edited Service in a file of 10,000 is then one changed object.
fn keep_unchanged(objects: &mut Objects, before: &Objects) {
    reuse(&mut objects.services, &before.services);
    reuse(&mut objects.endpoint_slices, &before.endpoint_slices);
    reuse(&mut objects.nodes, &before.nodes);
}

fn reuse<K: Resource + PartialEq>(objects: &mut [Arc<K>], before: &[Arc<K>]) {
    let name = |o: &Arc<K>| {
        let meta = o.meta();
        (meta.namespace.clone(), meta.name.clone())
    };
    let before: HashMap<_, &Arc<K>> = before.iter().map(|o| (name(o), o)).collect();
    for object in objects {
        if let Some(&old) = before.get(&name(object)).filter(|old| ***old == *object) {
            *object = old.clone();
        }
    }
}

/// Polls `set` every [`POLL_INTERVAL`] and notifies `changes` when a file changed. Runs until
/// aborted (by the publisher's task, when it ends).
pub(crate) async fn poll(set: Arc<Mutex<ManifestSet>>, changes: Arc<Notify>) {
    let mut interval = tokio::time::interval(POLL_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await; // the first tick is immediate; `load` just read everything
    loop {
        interval.tick().await;
        let set = set.clone();
        // File I/O and parsing are blocking; keep them off the async workers.
        let changed = tokio::task::spawn_blocking(move || lock(&set).refresh())
            .await
            .unwrap_or(false);
        if changed {
            changes.notify_one();
        }
    }
}

/// Locks the set; a panic while holding the lock cannot leave it inconsistent in a way that
/// matters (the next refresh re-reads), so poisoning is ignored.
pub(crate) fn lock(set: &Mutex<ManifestSet>) -> std::sync::MutexGuard<'_, ManifestSet> {
    set.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = include_str!("testdata/seed.yaml");

    #[test]
    fn a_reread_file_keeps_the_objects_that_did_not_change() {
        let dir = std::env::temp_dir().join(format!("dpl-manifests-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("seed.yaml");
        fs::write(&file, SEED).unwrap();
        let mut set = ManifestSet::load(&file, Arc::default()).unwrap();
        let before = set.snapshot().objects;
        // One endpoint of one slice changes (and the file's size, so the poll notices).
        let edited = SEED.replacen("    - 10.244.1.19\n", "    - 10.244.1.199\n", 1);
        fs::write(&file, edited).unwrap();
        assert!(set.refresh());
        let after = set.snapshot().objects;
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(same(&before.services, &after.services), [true, true]);
        assert_eq!(same(&before.nodes, &after.nodes), [true, true, true]);
        let slices = same(&before.endpoint_slices, &after.endpoint_slices);
        assert_eq!(slices.iter().filter(|s| !**s).count(), 1, "{slices:?}");
    }

    /// Whether each object of `a` is the same `Arc` as `b`'s at its place.
    fn same<K>(a: &[Arc<K>], b: &[Arc<K>]) -> Vec<bool> {
        a.iter().zip(b).map(|(a, b)| Arc::ptr_eq(a, b)).collect()
    }
}
