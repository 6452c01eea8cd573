//! The evidence logs' tables: records, checkpoints, public keys, and the logs themselves.
//!
//! Each replica appends to a log of its own ([`LogId`]): its own origin, chain, tree,
//! checkpoints and keys. A record's key in `zt_evidence_records` (and a checkpoint's in
//! `zt_evidence_checkpoints`) is `log · 2^40 + seq`, so each log is one range of the primary
//! key, log 0 is what a store made before there were several logs already held, and no append
//! waits for another log's. A batch of records and the checkpoint that covers it are written in
//! one transaction, so a crash leaves either both or neither, and every writer checks that its
//! log ends where it believes it does ([`StoreError::Conflict`] otherwise), so that no two
//! records share a place even if two processes wrongly write one log.

use crate::{Backend, Store, StoreError};

/// A record as stored: its place, its hash (hex) and its canonical JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    pub seq: u64,
    pub hash: String,
    pub body: String,
}

/// A signed checkpoint as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCheckpoint {
    pub tree_size: u64,
    pub note: String,
}

/// One evidence log of the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLog {
    pub id: LogId,
    /// The replica's name, given when it joined.
    pub name: String,
    /// The name in its checkpoints (`ztinfra/<16 hex digits>`).
    pub origin: String,
    pub created_at_ms: i64,
}

/// Which evidence log: each replica appends to its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LogId(pub u32);

/// A log holds fewer than `2^SEQ_BITS` records; a store at most `2^(63 - SEQ_BITS)` logs.
const SEQ_BITS: u32 = 40;
const MAX_LOGS: u32 = 1 << (63 - SEQ_BITS);

impl LogId {
    /// The stored key of record (or tree size) `n` of this log.
    pub(crate) fn key(self, n: u64) -> Result<i64, StoreError> {
        if self.0 >= MAX_LOGS || n >= 1 << SEQ_BITS {
            return Err(StoreError::Corrupt(format!(
                "record {n} of log {} is out of range",
                self.0
            )));
        }
        Ok((i64::from(self.0) << SEQ_BITS) | n as i64)
    }

    /// The key of `n`, or the first key past this log's when `n` is beyond it.
    pub(crate) fn upto(self, n: u64) -> Result<i64, StoreError> {
        if n >= 1 << SEQ_BITS {
            Ok(self.key(0)? + (1 << SEQ_BITS))
        } else {
            self.key(n)
        }
    }

    /// The place within this log of a stored key.
    fn place(self, key: i64) -> Result<u64, StoreError> {
        to_u64(key - self.key(0)?)
    }

    fn as_i64(self) -> i64 {
        i64::from(self.0)
    }
}

impl std::fmt::Display for LogId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Refuses a batch that does not start where the stored log ends (`last`: the stored key of
/// its last record, `None` for an empty log).
pub(crate) fn check_next(log: LogId, last: Option<i64>, expected: u64) -> Result<(), StoreError> {
    let found = match last {
        Some(key) => log.place(key)? + 1,
        None => 0,
    };
    if found == expected {
        Ok(())
    } else {
        Err(StoreError::Conflict { expected, found })
    }
}

fn to_u64(n: i64) -> Result<u64, StoreError> {
    u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("negative sequence number {n}")))
}

fn to_log(id: i64) -> Result<LogId, StoreError> {
    u32::try_from(id)
        .ok()
        .filter(|id| *id < MAX_LOGS)
        .map(LogId)
        .ok_or_else(|| StoreError::Corrupt(format!("evidence log id {id} out of range")))
}

type LogRow = (i64, String, String, i64);

fn log_from((id, name, origin, created_at_ms): LogRow) -> Result<StoredLog, StoreError> {
    Ok(StoredLog {
        id: to_log(id)?,
        name,
        origin,
        created_at_ms,
    })
}

impl Store {
    /// Every evidence log, oldest first.
    pub async fn evidence_logs(&self) -> Result<Vec<StoredLog>, StoreError> {
        let sql = "SELECT id, name, origin, created_at_ms FROM zt_evidence_logs ORDER BY id";
        let rows: Vec<LogRow> = match &self.backend {
            Backend::Sqlite(pool, _) => sqlx::query_as(sql).fetch_all(pool).await?,
            Backend::Postgres(pool) => sqlx::query_as(sql).fetch_all(pool).await?,
        };
        rows.into_iter().map(log_from).collect()
    }

    /// Creates a log and its first public key together, under the next free id;
    /// [`StoreError::Exists`] if the name, the origin or the key is taken, or, with `first`, if
    /// the store has a log already (the first start of replicas starting together).
    pub async fn add_evidence_log(
        &self,
        name: &str,
        origin: &str,
        key_id: &str,
        key_json: &str,
        created_at_ms: i64,
        first: bool,
    ) -> Result<LogId, StoreError> {
        let refuse_second = move |logs: i64| {
            if first && logs > 0 {
                Err(StoreError::Exists("the store's first evidence log".into()))
            } else {
                Ok(())
            }
        };
        let exists = format!("{name} ({origin}, key {key_id})");
        let id: i64 = match &self.backend {
            // On the append thread, in an immediate transaction: a deferred one that read
            // first could not take the write lock from another writer in between.
            Backend::Sqlite(_, appender) => {
                let (owned_name, owned_origin) = (name.to_owned(), origin.to_owned());
                let (owned_key, owned_json) = (key_id.to_owned(), key_json.to_owned());
                appender
                    .write(move |conn| {
                        let tx = conn.transaction_with_behavior(
                            rusqlite::TransactionBehavior::Immediate,
                        )?;
                        refuse_second(tx.query_row(
                            "SELECT COUNT(*) FROM zt_evidence_logs",
                            [],
                            |row| row.get(0),
                        )?)?;
                        let unique = |e: rusqlite::Error| match e.sqlite_error_code() {
                            Some(rusqlite::ErrorCode::ConstraintViolation) => {
                                StoreError::Exists(exists.clone())
                            }
                            _ => StoreError::Sqlite(e),
                        };
                        let id: i64 = tx
                            .query_row(
                                "INSERT INTO zt_evidence_logs (id, name, origin, created_at_ms)
                                 VALUES ((SELECT COALESCE(MAX(id) + 1, 0) FROM zt_evidence_logs), ?1, ?2, ?3)
                                 RETURNING id",
                                rusqlite::params![owned_name, owned_origin, created_at_ms],
                                |row| row.get(0),
                            )
                            .map_err(unique)?;
                        tx.execute(
                            "INSERT INTO zt_evidence_keys (key_id, key_json, created_at_ms, log) VALUES (?1, ?2, ?3, ?4)",
                            rusqlite::params![owned_key, owned_json, created_at_ms, id],
                        )
                        .map_err(unique)?;
                        tx.commit()?;
                        Ok(id)
                    })
                    .await?
            }
            Backend::Postgres(pool) => {
                let taken = |e: sqlx::Error| match &e {
                    sqlx::Error::Database(db) if db.is_unique_violation() => {
                        StoreError::Exists(exists.clone())
                    }
                    _ => StoreError::Database(e),
                };
                let mut tx = pool.begin().await?;
                // Replicas joining at once take ids one after the other.
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(JOIN_LOCK)
                    .execute(&mut *tx)
                    .await?;
                refuse_second(
                    sqlx::query_scalar("SELECT COUNT(*) FROM zt_evidence_logs")
                        .fetch_one(&mut *tx)
                        .await?,
                )?;
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO zt_evidence_logs (id, name, origin, created_at_ms)
                     VALUES ((SELECT COALESCE(MAX(id) + 1, 0) FROM zt_evidence_logs), $1, $2, $3)
                     RETURNING id",
                )
                .bind(name)
                .bind(origin)
                .bind(created_at_ms)
                .fetch_one(&mut *tx)
                .await
                .map_err(taken)?;
                sqlx::query("INSERT INTO zt_evidence_keys (key_id, key_json, created_at_ms, log) VALUES ($1, $2, $3, $4)")
                    .bind(key_id).bind(key_json).bind(created_at_ms).bind(id)
                    .execute(&mut *tx).await.map_err(taken)?;
                tx.commit().await?;
                id
            }
        };
        to_log(id)
    }

    /// Adds a public key (as JSON) to a log's keyring unless a key with its id is there.
    pub async fn add_key(
        &self,
        log: LogId,
        key_id: &str,
        key_json: &str,
        created_at_ms: i64,
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(pool, _) => {
                sqlx::query("INSERT INTO zt_evidence_keys (key_id, key_json, created_at_ms, log) VALUES (?, ?, ?, ?) ON CONFLICT (key_id) DO NOTHING")
                    .bind(key_id).bind(key_json).bind(created_at_ms).bind(log.as_i64()).execute(pool).await?;
            }
            Backend::Postgres(pool) => {
                sqlx::query("INSERT INTO zt_evidence_keys (key_id, key_json, created_at_ms, log) VALUES ($1, $2, $3, $4) ON CONFLICT (key_id) DO NOTHING")
                    .bind(key_id).bind(key_json).bind(created_at_ms).bind(log.as_i64()).execute(pool).await?;
            }
        }
        Ok(())
    }

    /// Replaces a key's JSON (to mark it retired).
    pub async fn update_key(&self, key_id: &str, key_json: &str) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(pool, _) => {
                sqlx::query("UPDATE zt_evidence_keys SET key_json = ? WHERE key_id = ?")
                    .bind(key_json)
                    .bind(key_id)
                    .execute(pool)
                    .await?;
            }
            Backend::Postgres(pool) => {
                sqlx::query("UPDATE zt_evidence_keys SET key_json = $1 WHERE key_id = $2")
                    .bind(key_json)
                    .bind(key_id)
                    .execute(pool)
                    .await?;
            }
        }
        Ok(())
    }

    /// Every public key's JSON of one log, oldest first.
    pub async fn keys(&self, log: LogId) -> Result<Vec<String>, StoreError> {
        Ok(match &self.backend {
            Backend::Sqlite(pool, _) => sqlx::query_scalar("SELECT key_json FROM zt_evidence_keys WHERE log = ? ORDER BY created_at_ms, key_id")
                .bind(log.as_i64()).fetch_all(pool).await?,
            Backend::Postgres(pool) => sqlx::query_scalar("SELECT key_json FROM zt_evidence_keys WHERE log = $1 ORDER BY created_at_ms, key_id")
                .bind(log.as_i64()).fetch_all(pool).await?,
        })
    }

    /// The log whose keyring holds the key `key_id`, if any.
    pub async fn key_log(&self, key_id: &str) -> Result<Option<LogId>, StoreError> {
        let id: Option<i64> = match &self.backend {
            Backend::Sqlite(pool, _) => {
                sqlx::query_scalar("SELECT log FROM zt_evidence_keys WHERE key_id = ?")
                    .bind(key_id)
                    .fetch_optional(pool)
                    .await?
            }
            Backend::Postgres(pool) => {
                sqlx::query_scalar("SELECT log FROM zt_evidence_keys WHERE key_id = $1")
                    .bind(key_id)
                    .fetch_optional(pool)
                    .await?
            }
        };
        id.map(to_log).transpose()
    }

    /// Appends records and the checkpoint over them to `log`, in one transaction, and returns
    /// once it is durable. `records` must start where the stored log ends.
    pub async fn append_evidence(
        &self,
        log: LogId,
        records: Vec<StoredRecord>,
        checkpoint: StoredCheckpoint,
    ) -> Result<(), StoreError> {
        let Some(first) = records.first().map(|r| r.seq) else {
            return Ok(());
        };
        match &self.backend {
            Backend::Sqlite(_, appender) => appender.append(log, records, checkpoint).await?,
            Backend::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let last: Option<i64> = sqlx::query_scalar(
                    "SELECT MAX(seq) FROM zt_evidence_records WHERE seq >= $1 AND seq < $2",
                )
                .bind(log.key(0)?)
                .bind(log.upto(u64::MAX)?)
                .fetch_one(&mut *tx)
                .await?;
                check_next(log, last, first)?;
                let seqs = records
                    .iter()
                    .map(|r| log.key(r.seq))
                    .collect::<Result<Vec<_>, _>>()?;
                let hashes: Vec<&str> = records.iter().map(|r| r.hash.as_str()).collect();
                let bodies: Vec<&str> = records.iter().map(|r| r.body.as_str()).collect();
                sqlx::query(
                    "INSERT INTO zt_evidence_records (seq, hash, body)
                     SELECT * FROM UNNEST($1::BIGINT[], $2::TEXT[], $3::TEXT[])",
                )
                .bind(seqs)
                .bind(hashes)
                .bind(bodies)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO zt_evidence_checkpoints (tree_size, note) VALUES ($1, $2)",
                )
                .bind(log.key(checkpoint.tree_size)?)
                .bind(&checkpoint.note)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// The hashes (hex) of records `from..` of `log` in order, at most `limit` of them.
    pub async fn evidence_hashes(
        &self,
        log: LogId,
        from: u64,
        limit: u32,
    ) -> Result<Vec<(u64, String)>, StoreError> {
        let (from, end) = (log.upto(from)?, log.upto(u64::MAX)?);
        let rows: Vec<(i64, String)> = match &self.backend {
            Backend::Sqlite(pool, _) => {
                sqlx::query_as(
                    "SELECT seq, hash FROM zt_evidence_records WHERE seq >= ? AND seq < ? ORDER BY seq LIMIT ?",
                )
                .bind(from)
                .bind(end)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?
            }
            Backend::Postgres(pool) => sqlx::query_as(
                "SELECT seq, hash FROM zt_evidence_records WHERE seq >= $1 AND seq < $2 ORDER BY seq LIMIT $3",
            )
            .bind(from)
            .bind(end)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?,
        };
        rows.into_iter()
            .map(|(seq, hash)| Ok((log.place(seq)?, hash)))
            .collect()
    }

    /// Records `from..to` of `log` in order, at most `limit` of them.
    pub async fn evidence_records(
        &self,
        log: LogId,
        from: u64,
        to: u64,
        limit: u32,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        let (from, to) = (log.upto(from)?, log.upto(to)?);
        let rows: Vec<(i64, String, String)> = match &self.backend {
            Backend::Sqlite(pool, _) => {
                sqlx::query_as("SELECT seq, hash, body FROM zt_evidence_records WHERE seq >= ? AND seq < ? ORDER BY seq LIMIT ?")
                    .bind(from).bind(to).bind(i64::from(limit)).fetch_all(pool).await?
            }
            Backend::Postgres(pool) => {
                sqlx::query_as("SELECT seq, hash, body FROM zt_evidence_records WHERE seq >= $1 AND seq < $2 ORDER BY seq LIMIT $3")
                    .bind(from).bind(to).bind(i64::from(limit)).fetch_all(pool).await?
            }
        };
        rows.into_iter()
            .map(|(seq, hash, body)| {
                Ok(StoredRecord {
                    seq: log.place(seq)?,
                    hash,
                    body,
                })
            })
            .collect()
    }

    /// The checkpoints of `log` with `from < tree_size <= to`, in order.
    pub async fn evidence_checkpoints(
        &self,
        log: LogId,
        from: u64,
        to: u64,
    ) -> Result<Vec<StoredCheckpoint>, StoreError> {
        let (from, to) = (log.upto(from)?, log.upto(to)?);
        let rows: Vec<(i64, String)> = match &self.backend {
            Backend::Sqlite(pool, _) => {
                sqlx::query_as("SELECT tree_size, note FROM zt_evidence_checkpoints WHERE tree_size > ? AND tree_size <= ? ORDER BY tree_size")
                    .bind(from).bind(to).fetch_all(pool).await?
            }
            Backend::Postgres(pool) => {
                sqlx::query_as("SELECT tree_size, note FROM zt_evidence_checkpoints WHERE tree_size > $1 AND tree_size <= $2 ORDER BY tree_size")
                    .bind(from).bind(to).fetch_all(pool).await?
            }
        };
        rows.into_iter()
            .map(|(size, note)| {
                Ok(StoredCheckpoint {
                    tree_size: log.place(size)?,
                    note,
                })
            })
            .collect()
    }

    /// The first checkpoint of `log` covering at least `size` records: the latest when `size`
    /// is 0 and `latest` is set.
    pub async fn evidence_checkpoint(
        &self,
        log: LogId,
        size: u64,
        latest: bool,
    ) -> Result<Option<StoredCheckpoint>, StoreError> {
        // Sizes start at 1: a log's range of checkpoint keys is (key(0), key(0) + 2^40).
        let (low, end) = (
            log.upto(if latest { 1 } else { size.max(1) })?,
            log.upto(u64::MAX)?,
        );
        let row: Option<(i64, String)> = match (&self.backend, latest) {
            (Backend::Sqlite(pool, _), true) => {
                sqlx::query_as("SELECT tree_size, note FROM zt_evidence_checkpoints WHERE tree_size >= ? AND tree_size < ? ORDER BY tree_size DESC LIMIT 1")
                    .bind(low).bind(end).fetch_optional(pool).await?
            }
            (Backend::Postgres(pool), true) => {
                sqlx::query_as("SELECT tree_size, note FROM zt_evidence_checkpoints WHERE tree_size >= $1 AND tree_size < $2 ORDER BY tree_size DESC LIMIT 1")
                    .bind(low).bind(end).fetch_optional(pool).await?
            }
            (Backend::Sqlite(pool, _), false) => {
                sqlx::query_as("SELECT tree_size, note FROM zt_evidence_checkpoints WHERE tree_size >= ? AND tree_size < ? ORDER BY tree_size LIMIT 1")
                    .bind(low).bind(end).fetch_optional(pool).await?
            }
            (Backend::Postgres(pool), false) => {
                sqlx::query_as("SELECT tree_size, note FROM zt_evidence_checkpoints WHERE tree_size >= $1 AND tree_size < $2 ORDER BY tree_size LIMIT 1")
                    .bind(low).bind(end).fetch_optional(pool).await?
            }
        };
        row.map(|(size, note)| {
            Ok(StoredCheckpoint {
                tree_size: log.place(size)?,
                note,
            })
        })
        .transpose()
    }
}

/// The advisory lock key under which replicas joining at once take log ids on PostgreSQL.
const JOIN_LOCK: i64 = 7_247_019;
/// The advisory lock held by the process writing a log on PostgreSQL (a session lock on a
/// connection of its own, released when the process goes). Advisory locks are the whole
/// database's, so the key is a hash of the store's schema and the log's id: two stores in two
/// schemas of one database (as the tests make) do not take each other's.
const WRITER_LOCK: &str = "SELECT pg_try_advisory_lock(hashtextextended(current_schema() || '/ztinfra-evidence-writer/' || $1::text, 7248))";

/// Held while this process writes a log: on PostgreSQL, a connection taken out of the pool
/// holding the log's writer lock; nothing on SQLite, which one process uses.
#[derive(Debug)]
pub struct WriterLock {
    connection: Option<sqlx::PgConnection>,
}

impl WriterLock {
    /// Releases the lock now (dropping it releases it when the server notices the connection
    /// closed).
    pub async fn release(self) {
        use sqlx::Connection as _;
        if let Some(connection) = self.connection {
            let _ = connection.close().await;
        }
    }
}

/// How long a start waits for a log's writer lock: a replica killed a moment ago holds it
/// until the server notices its connection is gone.
const WRITER_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl Store {
    /// Takes the right to write `log` for as long as the returned value lives: on PostgreSQL,
    /// [`StoreError::Exists`] when another process writes it (two replicas started with one
    /// key: a copied data directory).
    pub async fn lock_log_writer(&self, log: LogId) -> Result<WriterLock, StoreError> {
        match &self.backend {
            Backend::Sqlite(..) => Ok(WriterLock { connection: None }),
            Backend::Postgres(pool) => {
                let mut connection = pool.acquire().await?.detach();
                let started = std::time::Instant::now();
                loop {
                    let taken: bool = sqlx::query_scalar(WRITER_LOCK)
                        .bind(log.as_i64())
                        .fetch_one(&mut connection)
                        .await?;
                    if taken {
                        return Ok(WriterLock {
                            connection: Some(connection),
                        });
                    }
                    if started.elapsed() >= WRITER_LOCK_WAIT {
                        return Err(StoreError::Exists(format!(
                            "evidence log {log} is being written by another process: each replica needs a key of its own (a copied data directory shares one; so do replicas that shared one log before logs were per replica: give each but one an empty `keys` directory and join it with `ztinfra replicas add`)"
                        )));
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Location;

    fn record(seq: u64) -> StoredRecord {
        StoredRecord {
            seq,
            hash: format!("{seq:064x}"),
            body: format!("{{\"seq\":{seq}}}"),
        }
    }

    async fn exercise(store: &Store) {
        let log = store
            .add_evidence_log("a", "ztinfra/a", "k1", "{\"key_id\":\"k1\"}", 1, true)
            .await
            .unwrap();
        assert_eq!(log, LogId(0));
        // Name, origin and key are each one log's.
        for (name, origin, key) in [("a", "o", "k9"), ("b", "ztinfra/a", "k9"), ("b", "o", "k1")] {
            let err = store
                .add_evidence_log(name, origin, key, "{}", 1, false)
                .await
                .unwrap_err();
            assert!(matches!(err, StoreError::Exists(_)), "{err}");
        }
        // A first log only in a store without one.
        let err = store
            .add_evidence_log("c", "ztinfra/c", "k8", "{}", 1, true)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Exists(_)), "{err}");
        store
            .add_key(log, "k1", "{\"ignored\":true}", 1)
            .await
            .unwrap();
        store
            .add_key(log, "k2", "{\"key_id\":\"k2\"}", 2)
            .await
            .unwrap();
        store
            .update_key("k1", "{\"key_id\":\"k1\",\"retired\":true}")
            .await
            .unwrap();
        assert_eq!(
            store.keys(log).await.unwrap(),
            [
                "{\"key_id\":\"k1\",\"retired\":true}",
                "{\"key_id\":\"k2\"}"
            ]
        );
        assert_eq!(store.key_log("k2").await.unwrap(), Some(log));
        assert_eq!(store.key_log("k3").await.unwrap(), None);

        // A second log: its records, checkpoints and keys are its own, and its appends take
        // places 0.. whatever the first log holds.
        let other = store
            .add_evidence_log("b", "ztinfra/b", "k3", "{\"key_id\":\"k3\"}", 3, false)
            .await
            .unwrap();
        assert_eq!(other, LogId(1));
        store
            .append_evidence(
                other,
                vec![record(0), record(1)],
                StoredCheckpoint {
                    tree_size: 2,
                    note: "other".into(),
                },
            )
            .await
            .unwrap();
        assert_eq!(store.keys(other).await.unwrap(), ["{\"key_id\":\"k3\"}"]);
        assert_eq!(
            store
                .evidence_logs()
                .await
                .unwrap()
                .iter()
                .map(|l| (l.id, l.origin.as_str()))
                .collect::<Vec<_>>(),
            [(log, "ztinfra/a"), (other, "ztinfra/b")]
        );

        let batch: Vec<_> = (0..3).map(record).collect();
        store
            .append_evidence(
                log,
                batch,
                StoredCheckpoint {
                    tree_size: 3,
                    note: "n3".into(),
                },
            )
            .await
            .unwrap();
        let batch: Vec<_> = (3..5).map(record).collect();
        store
            .append_evidence(
                log,
                batch,
                StoredCheckpoint {
                    tree_size: 5,
                    note: "n5".into(),
                },
            )
            .await
            .unwrap();
        // A writer that believes the log is shorter (or longer) is refused, and nothing is written.
        let err = store
            .append_evidence(
                log,
                vec![record(4)],
                StoredCheckpoint {
                    tree_size: 5,
                    note: "x".into(),
                },
            )
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Conflict {
                    expected: 4,
                    found: 5
                }
            ),
            "{err}"
        );

        // A large batch.
        let size = 5 + 1_000;
        let big: Vec<_> = (5..size).map(record).collect();
        store
            .append_evidence(
                log,
                big,
                StoredCheckpoint {
                    tree_size: size,
                    note: "big".into(),
                },
            )
            .await
            .unwrap();
        let stored = store
            .evidence_records(log, 0, size, u32::MAX)
            .await
            .unwrap();
        assert_eq!(stored.len() as u64, size);
        assert!(
            stored
                .iter()
                .enumerate()
                .all(|(i, r)| *r == record(i as u64))
        );

        let hashes = store.evidence_hashes(log, 1, 3).await.unwrap();
        assert_eq!(hashes.iter().map(|h| h.0).collect::<Vec<_>>(), [1, 2, 3]);
        let records = store.evidence_records(log, 2, 4, 100).await.unwrap();
        assert_eq!(records, [record(2), record(3)]);
        let checkpoints = store.evidence_checkpoints(log, 0, 5).await.unwrap();
        assert_eq!(
            checkpoints.iter().map(|c| c.tree_size).collect::<Vec<_>>(),
            [3, 5]
        );
        assert_eq!(
            store
                .evidence_checkpoint(log, 4, false)
                .await
                .unwrap()
                .unwrap()
                .tree_size,
            5
        );
        assert_eq!(
            store
                .evidence_checkpoint(log, 0, true)
                .await
                .unwrap()
                .unwrap()
                .note,
            "big"
        );
        // The other log's end is its own.
        assert_eq!(
            store
                .evidence_checkpoint(other, 0, true)
                .await
                .unwrap()
                .unwrap()
                .note,
            "other"
        );
        assert_eq!(store.evidence_hashes(other, 0, 10).await.unwrap().len(), 2);
        assert!(
            store
                .evidence_checkpoint(log, size + 1, false)
                .await
                .unwrap()
                .is_none()
        );
    }

    /// A store made before there were several logs: its log becomes log 0, named `replica-0`,
    /// with its origin, keys, records and checkpoints where they were.
    #[tokio::test]
    async fn a_store_with_one_log_migrates_to_log_0() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ztinfra.db");
        {
            let db = rusqlite::Connection::open(&path).unwrap();
            db.execute_batch("CREATE TABLE zt_schema_version (version BIGINT NOT NULL)")
                .unwrap();
            for (i, statements) in crate::MIGRATIONS.iter().take(6).enumerate() {
                for statement in *statements {
                    db.execute_batch(&statement.replace("{seq_key}", "INTEGER PRIMARY KEY"))
                        .unwrap();
                }
                db.execute(
                    "INSERT INTO zt_schema_version (version) VALUES (?1)",
                    [i as i64 + 1],
                )
                .unwrap();
            }
            db.execute_batch(
                "INSERT INTO zt_meta (name, value) VALUES ('log_origin', 'ztinfra/old');
                 INSERT INTO zt_evidence_keys (key_id, key_json, created_at_ms) VALUES ('k0', '{}', 7);
                 INSERT INTO zt_evidence_records (seq, hash, body) VALUES (0, 'h0', 'b0'), (1, 'h1', 'b1');
                 INSERT INTO zt_evidence_checkpoints (tree_size, note) VALUES (2, 'n2');",
            )
            .unwrap();
        }
        let store = Store::open(&Location::Sqlite(path)).await.unwrap();
        let logs = store.evidence_logs().await.unwrap();
        assert_eq!(
            logs,
            [StoredLog {
                id: LogId(0),
                name: "replica-0".into(),
                origin: "ztinfra/old".into(),
                created_at_ms: 7,
            }]
        );
        assert_eq!(store.key_log("k0").await.unwrap(), Some(LogId(0)));
        assert_eq!(
            store.evidence_hashes(LogId(0), 0, 10).await.unwrap(),
            [(0, "h0".to_owned()), (1, "h1".to_owned())]
        );
        let latest = store.evidence_checkpoint(LogId(0), 0, true).await.unwrap();
        assert_eq!(
            latest.map(|c| (c.tree_size, c.note)),
            Some((2, "n2".into()))
        );
        // The next log starts at its own place 0.
        let next = store
            .add_evidence_log("b", "ztinfra/b", "k1", "{}", 8, false)
            .await
            .unwrap();
        assert_eq!(next, LogId(1));
        assert!(store.evidence_hashes(next, 0, 10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn sqlite_evidence_tables() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_in(dir.path()).await.unwrap();
        exercise(&store).await;
    }

    #[tokio::test]
    async fn postgres_evidence_tables() {
        let Some(url) = crate::tests::postgres_url() else {
            return;
        };
        let scoped = crate::tests::fresh_schema(&url, "evidence").await;
        let store = Store::open(&Location::parse(&scoped).unwrap())
            .await
            .unwrap();
        exercise(&store).await;
        store.close().await;
    }
}
