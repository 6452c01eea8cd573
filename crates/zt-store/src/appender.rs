//! Writes made while serving on SQLite, on a thread of their own: evidence appends and policy
//! activations.
//!
//! SQLite lets one connection write at a time, and a connection that finds the write lock
//! taken sleeps in its busy handler (a millisecond at least) before it tries again: an
//! activation written through the pool while a batch was committing held that batch back by
//! as much, twice a second under W5's reloads (BENCHMARKS.md). So every write made while
//! serving is a job on this one thread, and jobs queue instead of contending for the lock.
//!
//! A batch's transaction (check where the log ends, insert the records, insert the checkpoint,
//! commit and fsync) runs as one job on a thread that owns a connection of its own. Through the
//! async pool every statement would be a round trip to the connection's worker thread, about
//! eight thread switches per batch; on one busy core those switches, not SQLite, were the cost
//! (BENCHMARKS.md). Here a batch costs one hand-off each way.
//!
//! The connection runs with `synchronous=FULL`, like the pool's: a job's reply is sent after
//! its commit's fsync.
//!
//! WAL checkpoints (copying committed pages from the write-ahead log into the database file,
//! and its fsync) are kept out of the commit path: SQLite's automatic checkpoint runs inside
//! the commit that crosses 1,000 pages, and under load that stalled every evidence batch queued
//! behind it (p99 at 64 connections 10.5-12.4 ms with it, 6.5-7.2 ms without; BENCHMARKS.md).
//! A second thread, with a connection of its own, runs passive checkpoints instead, about
//! [`CHECKPOINT_EVERY`] after appends. A passive checkpoint never blocks the appender, but under
//! constant appends it never catches up with the log's end either, and SQLite restarts the log
//! from its beginning only once everything in it has been copied: so when the log passes
//! `restart_frames` pages, the append thread itself checkpoints the short tail the other thread
//! has not copied yet, after replying to its batch, and the next append starts the log over.
//! The log's size stays bounded, and the inline step is rare and short.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior, params};
use tokio::sync::oneshot;

use crate::StoreError;
use crate::evidence::{LogId, StoredCheckpoint, StoredRecord, check_next};

/// How long after an append the checkpoint thread copies what was committed.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(50);
/// Pages in the write-ahead log past which the append thread completes a checkpoint itself, so
/// that the log restarts (16,384 pages of 4 KiB: 64 MiB).
pub(crate) const RESTART_FRAMES: i64 = 16_384;

/// A write run on the append thread's connection: it answers its caller itself, and tells the
/// thread whether it wrote (a failed one needs no checkpoint).
type Job = Box<dyn FnOnce(&mut Connection) -> bool + Send>;

/// The handle on the append thread; the thread ends, and closes its connection, when the last
/// handle is dropped.
#[derive(Debug, Clone)]
pub(crate) struct Appender {
    jobs: mpsc::Sender<Job>,
}

impl Appender {
    /// Opens the append connection on the database at `path` and starts its thread, and the
    /// checkpoint thread beside it; `restart_frames` bounds the write-ahead log (see the module
    /// documentation).
    pub(crate) fn open(path: &Path, restart_frames: i64) -> Result<Self, StoreError> {
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Unsupported(format!(
                "the database refused write-ahead logging (journal mode `{mode}`)"
            )));
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let checkpointer = Connection::open(path)?;
        checkpointer.busy_timeout(Duration::from_secs(5))?;

        // The checkpoint thread waits for a nudge (one is enough: the channel holds one), and
        // ends when the append thread ends and drops its sender.
        let (nudge, nudged) = mpsc::sync_channel::<()>(1);
        let restart = Arc::new(AtomicBool::new(false));
        let wanted = Arc::clone(&restart);
        std::thread::Builder::new()
            .name("zt-wal-checkpoint".into())
            .spawn(move || {
                while nudged.recv().is_ok() {
                    std::thread::sleep(CHECKPOINT_EVERY);
                    while nudged.try_recv().is_ok() {}
                    match passive_checkpoint(&checkpointer) {
                        Ok(done) if done.log >= restart_frames => {
                            wanted.store(true, Ordering::Relaxed);
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "write-ahead log checkpoint failed; the next one retries"),
                    }
                }
            })
            .map_err(StoreError::Thread)?;

        let (jobs, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("zt-evidence-append".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    if !job(&mut conn) {
                        continue;
                    }
                    let _ = nudge.try_send(());
                    // Busy (the other thread is copying) or not everything copied: next time.
                    if restart.load(Ordering::Relaxed)
                        && passive_checkpoint(&conn)
                            .is_ok_and(|done| !done.busy && done.copied == done.log)
                    {
                        restart.store(false, Ordering::Relaxed);
                    }
                }
            })
            .map_err(StoreError::Thread)?;
        Ok(Self { jobs })
    }

    pub(crate) async fn append(
        &self,
        log: LogId,
        records: Vec<StoredRecord>,
        checkpoint: StoredCheckpoint,
    ) -> Result<(), StoreError> {
        self.write(move |conn| append(conn, log, &records, &checkpoint))
            .await
    }

    /// Runs `write` on the append thread, after the jobs queued before it, and gives its
    /// result; the answer comes after its commit's fsync.
    pub(crate) async fn write<T: Send + 'static>(
        &self,
        write: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let result = write(conn);
            let written = result.is_ok();
            let _ = reply.send(result);
            written
        });
        self.jobs
            .send(job)
            .map_err(|_| StoreError::AppenderStopped)?;
        answer.await.map_err(|_| StoreError::AppenderStopped)?
    }
}

/// One batch in one transaction; dropping the transaction on an error rolls it back.
fn append(
    conn: &mut Connection,
    log: LogId,
    records: &[StoredRecord],
    checkpoint: &StoredCheckpoint,
) -> Result<(), StoreError> {
    let Some(first) = records.first() else {
        return Ok(());
    };
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let last: Option<i64> = tx
        .prepare_cached("SELECT MAX(seq) FROM zt_evidence_records WHERE seq >= ?1 AND seq < ?2")?
        .query_row(params![log.key(0)?, log.upto(u64::MAX)?], |row| row.get(0))?;
    check_next(log, last, first.seq)?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO zt_evidence_records (seq, hash, body) VALUES (?1, ?2, ?3)",
        )?;
        for r in records {
            insert.execute(params![log.key(r.seq)?, r.hash, r.body])?;
        }
        tx.prepare_cached("INSERT INTO zt_evidence_checkpoints (tree_size, note) VALUES (?1, ?2)")?
            .execute(params![log.key(checkpoint.tree_size)?, checkpoint.note])?;
    }
    tx.commit()?;
    Ok(())
}

/// What a checkpoint did: `busy` when another checkpoint was running; `log` pages in the
/// write-ahead log, `copied` of them in the database now.
#[derive(Debug, Clone, Copy)]
struct Checkpointed {
    busy: bool,
    log: i64,
    copied: i64,
}

/// `PRAGMA wal_checkpoint(PASSIVE)`: copies what it can without waiting for anyone.
fn passive_checkpoint(conn: &Connection) -> Result<Checkpointed, StoreError> {
    Ok(conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        Ok(Checkpointed {
            busy: row.get::<_, i64>(0)? != 0,
            log: row.get(1)?,
            copied: row.get(2)?,
        })
    })?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Store;

    /// Appends as fast as the disk allows, with a small restart bound: the write-ahead log
    /// must stay near that bound (without the checkpoint thread and the inline restart it grows
    /// by every page written), and every record must be there.
    #[tokio::test]
    async fn the_write_ahead_log_stays_bounded_under_constant_appends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ztinfra.db");
        // The schema, through the store; its own appender is not used here.
        let store = Store::open(&crate::Location::Sqlite(path.clone()))
            .await
            .unwrap();
        let appender = Appender::open(&path, 64).unwrap();
        let body = "x".repeat(4000);
        let (batches, per_batch) = (400u64, 20u64);
        let mut largest = 0;
        for b in 0..batches {
            let records = (0..per_batch)
                .map(|i| StoredRecord {
                    seq: b * per_batch + i,
                    hash: format!("{:064x}", b * per_batch + i),
                    body: body.clone(),
                })
                .collect();
            let checkpoint = StoredCheckpoint {
                tree_size: (b + 1) * per_batch,
                note: format!("checkpoint {b}"),
            };
            appender
                .append(LogId(0), records, checkpoint)
                .await
                .unwrap();
            let wal = std::fs::metadata(dir.path().join("ztinfra.db-wal")).map_or(0, |m| m.len());
            largest = largest.max(wal);
        }
        // 400 batches of 80 KB: 32 MB written through the log, which would hold all of it
        // and more (about 45 MB) if it never restarted. Bounded, it stays at a few MB here.
        let written = batches * per_batch * 4000;
        assert!(
            largest < 16 * 1024 * 1024,
            "the write-ahead log reached {largest} bytes for {written} bytes appended"
        );
        let stored = store
            .evidence_hashes(LogId(0), 0, u32::MAX)
            .await
            .unwrap()
            .iter()
            .map(|(seq, _)| *seq)
            .collect::<Vec<_>>();
        assert_eq!(stored, (0..batches * per_batch).collect::<Vec<_>>());
        drop(appender);
        store.close().await;
    }
}
