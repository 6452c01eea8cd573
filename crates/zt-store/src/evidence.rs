//! The evidence log's tables: records, checkpoints, public keys, and the log's origin.
//!
//! A batch of records and the checkpoint that covers it are written in one transaction, so a
//! crash leaves either both or neither. On PostgreSQL, writers on several replicas take an
//! advisory lock for the transaction, and every writer checks that the log ends where it
//! believes it does ([`StoreError::Conflict`] otherwise), so that no two records share a place.

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

/// Refuses a batch that does not start where the stored log ends (`next`: one past the last
/// stored sequence number, `None` for an empty log).
pub(crate) fn check_next(next: Option<i64>, expected: u64) -> Result<(), StoreError> {
    let found = to_u64(next.unwrap_or(0))?;
    if found == expected {
        Ok(())
    } else {
        Err(StoreError::Conflict { expected, found })
    }
}

/// The advisory lock key serializing evidence writers on PostgreSQL.
const APPEND_LOCK: i64 = 7_247_017;

pub(crate) fn to_i64(n: u64) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(|_| StoreError::Corrupt(format!("sequence number {n} out of range")))
}

fn to_u64(n: i64) -> Result<u64, StoreError> {
    u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("negative sequence number {n}")))
}

impl Store {
    /// The value of `name` in the store's metadata, set to `init()` if absent (first writer
    /// wins).
    pub async fn meta_get_or_init(
        &self,
        name: &str,
        init: impl FnOnce() -> String,
    ) -> Result<String, StoreError> {
        let value = init();
        match &self.backend {
            Backend::Sqlite(pool, _) => {
                sqlx::query(
                    "INSERT INTO zt_meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
                )
                .bind(name)
                .bind(&value)
                .execute(pool)
                .await?;
                Ok(
                    sqlx::query_scalar("SELECT value FROM zt_meta WHERE name = ?")
                        .bind(name)
                        .fetch_one(pool)
                        .await?,
                )
            }
            Backend::Postgres(pool) => {
                sqlx::query("INSERT INTO zt_meta (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
                    .bind(name)
                    .bind(&value)
                    .execute(pool)
                    .await?;
                Ok(
                    sqlx::query_scalar("SELECT value FROM zt_meta WHERE name = $1")
                        .bind(name)
                        .fetch_one(pool)
                        .await?,
                )
            }
        }
    }

    /// Adds a public key (as JSON) to the keyring unless a key with its id is there.
    pub async fn add_key(
        &self,
        key_id: &str,
        key_json: &str,
        created_at_ms: i64,
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(pool, _) => {
                sqlx::query("INSERT INTO zt_evidence_keys (key_id, key_json, created_at_ms) VALUES (?, ?, ?) ON CONFLICT (key_id) DO NOTHING")
                    .bind(key_id).bind(key_json).bind(created_at_ms).execute(pool).await?;
            }
            Backend::Postgres(pool) => {
                sqlx::query("INSERT INTO zt_evidence_keys (key_id, key_json, created_at_ms) VALUES ($1, $2, $3) ON CONFLICT (key_id) DO NOTHING")
                    .bind(key_id).bind(key_json).bind(created_at_ms).execute(pool).await?;
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

    /// Every public key's JSON, oldest first.
    pub async fn keys(&self) -> Result<Vec<String>, StoreError> {
        let sql = "SELECT key_json FROM zt_evidence_keys ORDER BY created_at_ms, key_id";
        Ok(match &self.backend {
            Backend::Sqlite(pool, _) => sqlx::query_scalar(sql).fetch_all(pool).await?,
            Backend::Postgres(pool) => sqlx::query_scalar(sql).fetch_all(pool).await?,
        })
    }

    /// Appends records and the checkpoint over them, in one transaction, and returns once it
    /// is durable. `records` must start where the stored log ends.
    pub async fn append_evidence(
        &self,
        records: Vec<StoredRecord>,
        checkpoint: StoredCheckpoint,
    ) -> Result<(), StoreError> {
        let Some(first) = records.first().map(|r| r.seq) else {
            return Ok(());
        };
        match &self.backend {
            Backend::Sqlite(_, appender) => appender.append(records, checkpoint).await?,
            Backend::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(APPEND_LOCK)
                    .execute(&mut *tx)
                    .await?;
                let next: Option<i64> =
                    sqlx::query_scalar("SELECT MAX(seq) + 1 FROM zt_evidence_records")
                        .fetch_one(&mut *tx)
                        .await?;
                check_next(next, first)?;
                let seqs = records
                    .iter()
                    .map(|r| to_i64(r.seq))
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
                .bind(to_i64(checkpoint.tree_size)?)
                .bind(&checkpoint.note)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// The hashes (hex) of records `from..` in order, at most `limit` of them.
    pub async fn evidence_hashes(
        &self,
        from: u64,
        limit: u32,
    ) -> Result<Vec<(u64, String)>, StoreError> {
        let rows: Vec<(i64, String)> = match &self.backend {
            Backend::Sqlite(pool, _) => {
                sqlx::query_as(
                    "SELECT seq, hash FROM zt_evidence_records WHERE seq >= ? ORDER BY seq LIMIT ?",
                )
                .bind(to_i64(from)?)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?
            }
            Backend::Postgres(pool) => sqlx::query_as(
                "SELECT seq, hash FROM zt_evidence_records WHERE seq >= $1 ORDER BY seq LIMIT $2",
            )
            .bind(to_i64(from)?)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?,
        };
        rows.into_iter()
            .map(|(seq, hash)| Ok((to_u64(seq)?, hash)))
            .collect()
    }

    /// Records `from..to` in order, at most `limit` of them.
    pub async fn evidence_records(
        &self,
        from: u64,
        to: u64,
        limit: u32,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        let rows: Vec<(i64, String, String)> = match &self.backend {
            Backend::Sqlite(pool, _) => {
                sqlx::query_as("SELECT seq, hash, body FROM zt_evidence_records WHERE seq >= ? AND seq < ? ORDER BY seq LIMIT ?")
                    .bind(to_i64(from)?).bind(to_i64(to)?).bind(i64::from(limit)).fetch_all(pool).await?
            }
            Backend::Postgres(pool) => {
                sqlx::query_as("SELECT seq, hash, body FROM zt_evidence_records WHERE seq >= $1 AND seq < $2 ORDER BY seq LIMIT $3")
                    .bind(to_i64(from)?).bind(to_i64(to)?).bind(i64::from(limit)).fetch_all(pool).await?
            }
        };
        rows.into_iter()
            .map(|(seq, hash, body)| {
                Ok(StoredRecord {
                    seq: to_u64(seq)?,
                    hash,
                    body,
                })
            })
            .collect()
    }

    /// The checkpoints with `from < tree_size <= to`, in order.
    pub async fn evidence_checkpoints(
        &self,
        from: u64,
        to: u64,
    ) -> Result<Vec<StoredCheckpoint>, StoreError> {
        let rows: Vec<(i64, String)> = match &self.backend {
            Backend::Sqlite(pool, _) => {
                sqlx::query_as("SELECT tree_size, note FROM zt_evidence_checkpoints WHERE tree_size > ? AND tree_size <= ? ORDER BY tree_size")
                    .bind(to_i64(from)?).bind(to_i64(to)?).fetch_all(pool).await?
            }
            Backend::Postgres(pool) => {
                sqlx::query_as("SELECT tree_size, note FROM zt_evidence_checkpoints WHERE tree_size > $1 AND tree_size <= $2 ORDER BY tree_size")
                    .bind(to_i64(from)?).bind(to_i64(to)?).fetch_all(pool).await?
            }
        };
        rows.into_iter()
            .map(|(size, note)| {
                Ok(StoredCheckpoint {
                    tree_size: to_u64(size)?,
                    note,
                })
            })
            .collect()
    }

    /// The first checkpoint covering at least `size` records: the latest when `size` is 0 and
    /// `latest` is set.
    pub async fn evidence_checkpoint(
        &self,
        size: u64,
        latest: bool,
    ) -> Result<Option<StoredCheckpoint>, StoreError> {
        let row: Option<(i64, String)> = match (&self.backend, latest) {
            (Backend::Sqlite(pool, _), true) => {
                sqlx::query_as("SELECT tree_size, note FROM zt_evidence_checkpoints ORDER BY tree_size DESC LIMIT 1")
                    .fetch_optional(pool).await?
            }
            (Backend::Postgres(pool), true) => {
                sqlx::query_as("SELECT tree_size, note FROM zt_evidence_checkpoints ORDER BY tree_size DESC LIMIT 1")
                    .fetch_optional(pool).await?
            }
            (Backend::Sqlite(pool, _), false) => {
                sqlx::query_as("SELECT tree_size, note FROM zt_evidence_checkpoints WHERE tree_size >= ? ORDER BY tree_size LIMIT 1")
                    .bind(to_i64(size)?).fetch_optional(pool).await?
            }
            (Backend::Postgres(pool), false) => {
                sqlx::query_as("SELECT tree_size, note FROM zt_evidence_checkpoints WHERE tree_size >= $1 ORDER BY tree_size LIMIT 1")
                    .bind(to_i64(size)?).fetch_optional(pool).await?
            }
        };
        row.map(|(size, note)| {
            Ok(StoredCheckpoint {
                tree_size: to_u64(size)?,
                note,
            })
        })
        .transpose()
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
        let origin = store
            .meta_get_or_init("log_origin", || "first".into())
            .await
            .unwrap();
        assert_eq!(
            store
                .meta_get_or_init("log_origin", || "second".into())
                .await
                .unwrap(),
            origin
        );

        store.add_key("k1", "{\"key_id\":\"k1\"}", 1).await.unwrap();
        store.add_key("k1", "{\"ignored\":true}", 1).await.unwrap();
        store.add_key("k2", "{\"key_id\":\"k2\"}", 2).await.unwrap();
        store
            .update_key("k1", "{\"key_id\":\"k1\",\"retired\":true}")
            .await
            .unwrap();
        assert_eq!(
            store.keys().await.unwrap(),
            [
                "{\"key_id\":\"k1\",\"retired\":true}",
                "{\"key_id\":\"k2\"}"
            ]
        );

        let batch: Vec<_> = (0..3).map(record).collect();
        store
            .append_evidence(
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
                big,
                StoredCheckpoint {
                    tree_size: size,
                    note: "big".into(),
                },
            )
            .await
            .unwrap();
        let stored = store.evidence_records(0, size, u32::MAX).await.unwrap();
        assert_eq!(stored.len() as u64, size);
        assert!(
            stored
                .iter()
                .enumerate()
                .all(|(i, r)| *r == record(i as u64))
        );

        let hashes = store.evidence_hashes(1, 3).await.unwrap();
        assert_eq!(hashes.iter().map(|h| h.0).collect::<Vec<_>>(), [1, 2, 3]);
        let records = store.evidence_records(2, 4, 100).await.unwrap();
        assert_eq!(records, [record(2), record(3)]);
        let checkpoints = store.evidence_checkpoints(0, 5).await.unwrap();
        assert_eq!(
            checkpoints.iter().map(|c| c.tree_size).collect::<Vec<_>>(),
            [3, 5]
        );
        assert_eq!(
            store
                .evidence_checkpoint(4, false)
                .await
                .unwrap()
                .unwrap()
                .tree_size,
            5
        );
        assert_eq!(
            store
                .evidence_checkpoint(0, true)
                .await
                .unwrap()
                .unwrap()
                .note,
            "big"
        );
        assert!(
            store
                .evidence_checkpoint(size + 1, false)
                .await
                .unwrap()
                .is_none()
        );
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
