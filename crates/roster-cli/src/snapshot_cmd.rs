//! `roster snapshot save|status|restore`: etcdctl's snapshot commands for
//! people who only have Roster installed. The files are etcd snapshots
//! either way (see `roster_store::etcd_snapshot`), so a file saved from
//! `roster serve` restores into etcd, and one saved from etcd restores into
//! Roster.

use crate::registry_cmd::ConnectArgs;
use anyhow::{Context, Result, bail};
use roster_store::etcd_snapshot::{self, SnapshotStatus};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct SnapshotArgs {
    #[command(subcommand)]
    command: SnapshotCommand,
}

#[derive(Debug, clap::Subcommand)]
enum SnapshotCommand {
    /// Stream a snapshot from one member (roster serve or etcd) to a file.
    ///
    /// The file is written as `<file>.part`, checked against the sha256 the
    /// server sends last, fsynced, and only then renamed to `<file>`: an
    /// interrupted save leaves no file behind.
    Save {
        /// Where to write the snapshot.
        file: PathBuf,
        #[command(flatten)]
        conn: ConnectArgs,
    },
    /// Print a snapshot's hash, revision, total keys and size, as
    /// `etcdctl snapshot status` does.
    Status {
        file: PathBuf,
        /// Output format: `table` or `json` (etcdctl's field names).
        #[arg(short = 'w', long = "write-out", default_value = "table", value_parser = ["table", "json"])]
        write_out: String,
    },
    /// Build a new Roster data dir from an etcd or Roster snapshot.
    ///
    /// Keeps every key's value, create/mod revisions and version, the store
    /// revision, the compaction point, and the leases with their keys (each
    /// lease gets its full TTL again from the first start). The snapshot is
    /// checked in full before anything is written, and the data dir only
    /// appears once complete. Then run `roster serve --data-dir <dir>`.
    Restore {
        file: PathBuf,
        /// The data dir to create; it must not exist yet.
        #[arg(long)]
        data_dir: PathBuf,
        /// Accept a snapshot without a sha256 trailer (a bare etcd `db`
        /// file copied from a member's data dir), or with a wrong one.
        #[arg(long)]
        skip_hash_check: bool,
    },
}

pub async fn run(args: SnapshotArgs) -> Result<()> {
    match args.command {
        SnapshotCommand::Save { file, conn } => save(&file, &conn).await,
        SnapshotCommand::Status { file, write_out } => {
            let st = tokio::task::spawn_blocking({
                let file = file.clone();
                move || etcd_snapshot::status(&file)
            })
            .await??;
            print!("{}", render_status(&st, &write_out));
            Ok(())
        }
        SnapshotCommand::Restore { file, data_dir, skip_hash_check } => {
            let started = Instant::now();
            eprintln!("restoring {} into {} ...", file.display(), data_dir.display());
            let r = tokio::task::spawn_blocking({
                let (file, data_dir) = (file.clone(), data_dir.clone());
                move || etcd_snapshot::restore(&file, &data_dir, skip_hash_check)
            })
            .await?
            .with_context(|| format!("cannot restore {}", file.display()))?;
            println!(
                "restored {} keys ({} revisions, {} leases) at revision {} (compacted at {}) into {} in {:.1?}",
                r.keys,
                r.revisions,
                r.leases,
                r.revision,
                r.compact_revision,
                data_dir.display(),
                started.elapsed()
            );
            println!("start it with: roster serve --data-dir {}", data_dir.display());
            Ok(())
        }
    }
}

async fn save(file: &Path, conn: &ConnectArgs) -> Result<()> {
    let client = conn.client()?;
    let (endpoint, mut stream) = client.snapshot().await.context("cannot start a snapshot")?;
    let part = PathBuf::from(format!("{}.part", file.display()));
    let result = receive(&part, &endpoint, &mut stream).await;
    if let Err(e) = result {
        let _ = std::fs::remove_file(&part);
        return Err(e);
    }
    std::fs::rename(&part, file).with_context(|| format!("cannot rename {} to {}", part.display(), file.display()))?;
    println!("Snapshot saved at {}", file.display());
    Ok(())
}

/// Writes the stream to `part`, showing progress, and checks its sha256.
async fn receive(
    part: &Path,
    endpoint: &str,
    stream: &mut tonic::Streaming<roster_api::etcdserverpb::SnapshotResponse>,
) -> Result<()> {
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(part).with_context(|| format!("cannot create {}", part.display()))?,
    );
    let started = Instant::now();
    let mut shown = Instant::now();
    let mut got: u64 = 0;
    let mut h = Sha256::new();
    // The last 32 bytes are the hash of everything before them, so each
    // chunk is hashed once the next one shows it was not the trailer.
    let mut held: Vec<u8> = Vec::new();
    loop {
        let msg = match stream.message().await {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(s) => bail!("snapshot from {endpoint} failed after {got} bytes: {}", s.message()),
        };
        out.write_all(&msg.blob)?;
        got += msg.blob.len() as u64;
        held.extend_from_slice(&msg.blob);
        if held.len() > 32 {
            let keep = held.split_off(held.len() - 32);
            h.update(&held);
            held = keep;
        }
        if shown.elapsed() > Duration::from_secs(1) {
            let total = got + msg.remaining_bytes;
            eprintln!("  {} of {} received", human_bytes(got), human_bytes(total));
            shown = Instant::now();
        }
    }
    if held.len() != 32 || h.finalize().as_slice() != held.as_slice() {
        bail!("snapshot from {endpoint} ended after {got} bytes without a matching sha256 (cut off?)");
    }
    let f = out.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    eprintln!("received {} from {endpoint} in {:.1?}", human_bytes(got), started.elapsed());
    Ok(())
}

fn render_status(st: &SnapshotStatus, format: &str) -> String {
    if format == "json" {
        return format!(
            "{{\"hash\":{},\"revision\":{},\"totalKey\":{},\"totalSize\":{}}}\n",
            st.hash, st.revision, st.total_keys, st.total_size
        );
    }
    let cells =
        [format!("{:x}", st.hash), st.revision.to_string(), st.total_keys.to_string(), human_bytes(st.total_size)];
    let heads = ["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"];
    let widths: Vec<usize> = heads.iter().zip(&cells).map(|(h, c)| h.len().max(c.len()) + 2).collect();
    let rule: String = widths.iter().map(|w| format!("+{}", "-".repeat(*w))).collect::<String>() + "+\n";
    let center = |s: &str, w: usize| {
        let left = (w - s.len()) / 2;
        format!("{}{}{}", " ".repeat(left), s, " ".repeat(w - s.len() - left))
    };
    let head: String =
        heads.iter().zip(&widths).map(|(h, w)| format!("|{}", center(h, *w))).collect::<String>() + "|\n";
    let row: String = cells
        .iter()
        .zip(&widths)
        .enumerate()
        .map(|(i, (c, w))| {
            if i == 0 || i == 3 {
                format!("| {c:<width$}", width = w - 1)
            } else {
                format!("| {c:>width$} ", width = w - 2)
            }
        })
        .collect::<String>()
        + "|\n";
    format!("{rule}{head}{rule}{row}{rule}")
}

/// Sizes as etcdctl prints them (go-humanize's SI bytes: "2.1 MB").
fn human_bytes(n: u64) -> String {
    if n < 10 {
        return format!("{n} B");
    }
    let units = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let e = ((n as f64).ln() / 1000f64.ln()).floor() as usize;
    let val = ((n as f64) / 1000f64.powi(e as i32) * 10.0 + 0.5).floor() / 10.0;
    if val < 10.0 { format!("{val:.1} {}", units[e]) } else { format!("{val:.0} {}", units[e]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_print_as_etcdctl_prints_them() {
        assert_eq!(human_bytes(5), "5 B");
        assert_eq!(human_bytes(20480), "20 kB");
        assert_eq!(human_bytes(2_101_248), "2.1 MB");
        assert_eq!(human_bytes(999), "999 B");
    }
}
