//! Scheduled backups: every `interval`, an etcd snapshot file of the store
//! written atomically into the backup dir (see
//! `Store::save_etcd_snapshot`), keeping the newest `retain`. The files are
//! what `etcdctl snapshot save` writes, so `etcdctl snapshot restore` and
//! `roster snapshot restore` both take them.
//!
//! Names are `snapshot-<unix ms, 13 digits>-rev<revision>.db`, so that name
//! order is time order. The latest success is shown on `/metrics` and in
//! `/health`; a failure is logged and counted, and the next tick tries
//! again.

use crate::Server;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const PREFIX: &str = "snapshot-";
const SUFFIX: &str = ".db";

/// `--backup-dir`, `--backup-interval`, `--backup-retain`.
#[derive(Debug, Clone)]
pub struct BackupConfig {
    pub dir: PathBuf,
    pub interval: Duration,
    /// How many backups to keep; older ones are deleted. At least 1.
    pub retain: usize,
}

/// The newest backup written.
#[derive(Debug, Clone)]
pub(crate) struct Latest {
    pub at: SystemTime,
    pub path: PathBuf,
    pub revision: i64,
    pub bytes: u64,
}

#[derive(Default)]
pub(crate) struct BackupState {
    latest: Mutex<Option<Latest>>,
    failures: AtomicU64,
}

impl BackupState {
    pub(crate) fn latest(&self) -> Option<Latest> {
        self.latest.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
}

/// Backs up at once, then every interval, until stopped.
pub(crate) async fn run(server: Server, config: BackupConfig) {
    if let Err(e) = std::fs::create_dir_all(&config.dir) {
        tracing::error!(dir = %config.dir.display(), error = %e, "cannot create the backup dir; no backups will be taken");
        return;
    }
    // Adopt the newest existing backup, so its age shows from the start.
    if let Some(found) = existing(&config.dir).last() {
        let at = std::fs::metadata(found).and_then(|m| m.modified()).unwrap_or(UNIX_EPOCH);
        let revision = revision_of(found).unwrap_or(0);
        *server.backups().latest.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Latest { at, path: found.clone(), revision, bytes: 0 });
    }
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = server.stop().wait() => return,
        }
        let (s, c) = (server.clone(), config.clone());
        match tokio::task::spawn_blocking(move || backup_once(&s, &c)).await {
            Ok(Ok(latest)) => {
                tracing::info!(path = %latest.path.display(), revision = latest.revision, bytes = latest.bytes, "wrote backup");
                *server.backups().latest.lock().unwrap_or_else(|e| e.into_inner()) = Some(latest);
            }
            Ok(Err(e)) => {
                server.backups().failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(dir = %config.dir.display(), error = %e, "backup failed; retrying at the next interval");
            }
            Err(e) => {
                server.backups().failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "backup task failed");
            }
        }
    }
}

fn backup_once(server: &Server, config: &BackupConfig) -> Result<Latest, String> {
    let store = server.store();
    let revision = store.revision();
    let at = SystemTime::now();
    let ms = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
    let path = config.dir.join(format!("{PREFIX}{ms:013}-rev{revision}{SUFFIX}"));
    let bytes = store.save_etcd_snapshot(&path, server.config().member_id).map_err(|e| e.to_string())?;
    let all = existing(&config.dir);
    for old in all.iter().take(all.len().saturating_sub(config.retain.max(1))) {
        if let Err(e) = std::fs::remove_file(old) {
            tracing::warn!(path = %old.display(), error = %e, "cannot delete an old backup");
        }
    }
    Ok(Latest { at, path, revision, bytes })
}

/// Backups in `dir`, oldest first.
fn existing(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with(PREFIX) && name.ends_with(SUFFIX)
        })
        .collect();
    found.sort();
    found
}

fn revision_of(path: &Path) -> Option<i64> {
    let name = path.file_name()?.to_str()?;
    name.strip_suffix(SUFFIX)?.rsplit_once("-rev")?.1.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_names_sort_by_time_and_carry_the_revision() {
        let a = PathBuf::from(format!("{PREFIX}{:013}-rev{}{SUFFIX}", 999_999_999_999u64, 12));
        let b = PathBuf::from(format!("{PREFIX}{:013}-rev{}{SUFFIX}", 1_000_000_000_000u64, 7));
        assert!(a < b);
        assert_eq!(revision_of(&a), Some(12));
        assert_eq!(revision_of(Path::new("other.db")), None);
    }
}
