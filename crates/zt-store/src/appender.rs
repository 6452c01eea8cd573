//! Evidence appends on SQLite, on a thread of their own.
//!
//! A batch's transaction (check where the log ends, insert the records, insert the checkpoint,
//! commit and fsync) runs as one job on a thread that owns a connection of its own. Through the
//! async pool every statement would be a round trip to the connection's worker thread, about
//! eight thread switches per batch; on one busy core those switches, not SQLite, were the cost
//! (BENCHMARKS.md). Here a batch costs one hand-off each way.
//!
//! The connection runs with `synchronous=FULL`, like the pool's: a job's reply is sent after
//! its commit's fsync.

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior, params};
use tokio::sync::oneshot;

use crate::StoreError;
use crate::evidence::{StoredCheckpoint, StoredRecord, check_next, to_i64};

#[derive(Debug)]
struct Job {
    records: Vec<StoredRecord>,
    checkpoint: StoredCheckpoint,
    reply: oneshot::Sender<Result<(), StoreError>>,
}

/// The handle on the append thread; the thread ends, and closes its connection, when the last
/// handle is dropped.
#[derive(Debug, Clone)]
pub(crate) struct Appender {
    jobs: mpsc::Sender<Job>,
}

impl Appender {
    /// Opens the append connection on the database at `path` and starts its thread.
    pub(crate) fn open(path: &Path) -> Result<Self, StoreError> {
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
        let (jobs, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("zt-evidence-append".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    let result = append(&mut conn, &job.records, &job.checkpoint);
                    let _ = job.reply.send(result);
                }
            })
            .map_err(StoreError::Thread)?;
        Ok(Self { jobs })
    }

    pub(crate) async fn append(
        &self,
        records: Vec<StoredRecord>,
        checkpoint: StoredCheckpoint,
    ) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job {
                records,
                checkpoint,
                reply,
            })
            .map_err(|_| StoreError::AppenderStopped)?;
        answer.await.map_err(|_| StoreError::AppenderStopped)?
    }
}

/// One batch in one transaction; dropping the transaction on an error rolls it back.
fn append(
    conn: &mut Connection,
    records: &[StoredRecord],
    checkpoint: &StoredCheckpoint,
) -> Result<(), StoreError> {
    let Some(first) = records.first() else {
        return Ok(());
    };
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let next: Option<i64> = tx
        .prepare_cached("SELECT MAX(seq) + 1 FROM zt_evidence_records")?
        .query_row([], |row| row.get(0))?;
    check_next(next, first.seq)?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO zt_evidence_records (seq, hash, body) VALUES (?1, ?2, ?3)",
        )?;
        for r in records {
            insert.execute(params![to_i64(r.seq)?, r.hash, r.body])?;
        }
        tx.prepare_cached("INSERT INTO zt_evidence_checkpoints (tree_size, note) VALUES (?1, ?2)")?
            .execute(params![to_i64(checkpoint.tree_size)?, checkpoint.note])?;
    }
    tx.commit()?;
    Ok(())
}
