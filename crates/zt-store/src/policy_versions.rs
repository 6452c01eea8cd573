//! Policy sets kept in the store, for replicas that share it: each push (and each entity edit
//! made through a replica's API) is a new version, numbered from 1, holding the whole set's
//! files; the newest version is the one every replica activates. Versions are never changed or
//! removed, so the history is what was pushed, by whom and when; a rollback is a new version
//! with an older one's files.

use crate::{Backend, Store, StoreError};

/// One stored version of a policy set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPolicyVersion {
    /// 1, 2, …: the order of pushes.
    pub number: u64,
    /// `sha256:<hex>` of the set (its policy version, as decisions name it).
    pub digest: String,
    /// The set's files, as JSON: `[{"path": …, "text": …}]`. Empty in [`Store::policy_history`].
    pub files: String,
    /// Who made it: `ztinfra policy push (user)`, or the credential that edited entities.
    pub pushed_by: String,
    pub pushed_at_ms: i64,
    /// Why: the push's `--note`, `rollback to N`, `entity edit`.
    pub note: String,
}

type Row = (i64, String, String, String, i64, String);

fn from_row((number, digest, files, pushed_by, pushed_at_ms, note): Row) -> StoredPolicyVersion {
    StoredPolicyVersion {
        number: u64::try_from(number).unwrap_or_default(),
        digest,
        files,
        pushed_by,
        pushed_at_ms,
        note,
    }
}

impl Store {
    /// Stores `version`, whose number must be one past the newest stored one;
    /// [`StoreError::Exists`] if another version took that number first (the caller reads the
    /// newest again and decides whether to try again).
    pub async fn add_policy_version(
        &self,
        version: &StoredPolicyVersion,
    ) -> Result<(), StoreError> {
        let number = i64::try_from(version.number).map_err(|_| {
            StoreError::Corrupt(format!("policy version {} out of range", version.number))
        })?;
        let taken = |e: sqlx::Error| match &e {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                StoreError::Exists(format!("policy version {number}"))
            }
            _ => StoreError::Database(e),
        };
        // A number that skips one is refused like a taken one: versions stay 1, 2, 3, …
        let newest = self.newest_policy_version().await?;
        if version.number != newest + 1 {
            return Err(StoreError::Exists(format!("policy version {number}")));
        }
        match &self.backend {
            Backend::Sqlite(pool, _) => {
                sqlx::query("INSERT INTO zt_policy_versions (number, digest, files, pushed_by, pushed_at_ms, note) VALUES (?, ?, ?, ?, ?, ?)")
                    .bind(number).bind(&version.digest).bind(&version.files).bind(&version.pushed_by).bind(version.pushed_at_ms).bind(&version.note)
                    .execute(pool).await.map_err(taken)?;
            }
            Backend::Postgres(pool) => {
                sqlx::query("INSERT INTO zt_policy_versions (number, digest, files, pushed_by, pushed_at_ms, note) VALUES ($1, $2, $3, $4, $5, $6)")
                    .bind(number).bind(&version.digest).bind(&version.files).bind(&version.pushed_by).bind(version.pushed_at_ms).bind(&version.note)
                    .execute(pool).await.map_err(taken)?;
            }
        }
        Ok(())
    }

    /// The newest version's number; 0 when none was pushed.
    pub async fn newest_policy_version(&self) -> Result<u64, StoreError> {
        let sql = "SELECT COALESCE(MAX(number), 0) FROM zt_policy_versions";
        let newest: i64 = match &self.backend {
            Backend::Sqlite(pool, _) => sqlx::query_scalar(sql).fetch_one(pool).await?,
            Backend::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await?,
        };
        Ok(u64::try_from(newest).unwrap_or_default())
    }

    /// One version with its files: `number`, or the newest when `None`.
    pub async fn policy_version(
        &self,
        number: Option<u64>,
    ) -> Result<Option<StoredPolicyVersion>, StoreError> {
        // The newest: the highest number there is.
        let (low, high) = match number {
            Some(n) => {
                let n = i64::try_from(n).unwrap_or(i64::MAX);
                (n, n)
            }
            None => (0, i64::MAX),
        };
        let row: Option<Row> = match &self.backend {
            Backend::Sqlite(pool, _) => sqlx::query_as("SELECT number, digest, files, pushed_by, pushed_at_ms, note FROM zt_policy_versions WHERE number BETWEEN ? AND ? ORDER BY number DESC LIMIT 1")
                .bind(low).bind(high).fetch_optional(pool).await?,
            Backend::Postgres(pool) => sqlx::query_as("SELECT number, digest, files, pushed_by, pushed_at_ms, note FROM zt_policy_versions WHERE number BETWEEN $1 AND $2 ORDER BY number DESC LIMIT 1")
                .bind(low).bind(high).fetch_optional(pool).await?,
        };
        Ok(row.map(from_row))
    }

    /// The newest `limit` versions, newest first, without their files.
    pub async fn policy_history(&self, limit: u32) -> Result<Vec<StoredPolicyVersion>, StoreError> {
        let rows: Vec<Row> = match &self.backend {
            Backend::Sqlite(pool, _) => sqlx::query_as("SELECT number, digest, '', pushed_by, pushed_at_ms, note FROM zt_policy_versions ORDER BY number DESC LIMIT ?")
                .bind(i64::from(limit)).fetch_all(pool).await?,
            Backend::Postgres(pool) => sqlx::query_as("SELECT number, digest, '', pushed_by, pushed_at_ms, note FROM zt_policy_versions ORDER BY number DESC LIMIT $1")
                .bind(i64::from(limit)).fetch_all(pool).await?,
        };
        Ok(rows.into_iter().map(from_row).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Location;

    fn version(number: u64, note: &str) -> StoredPolicyVersion {
        StoredPolicyVersion {
            number,
            digest: format!("sha256:{number}"),
            files: format!("[{{\"path\":\"p.cedar\",\"text\":\"{note}\"}}]"),
            pushed_by: "test".into(),
            pushed_at_ms: 1_000 + number as i64,
            note: note.into(),
        }
    }

    async fn exercise(store: &Store) {
        assert_eq!(store.newest_policy_version().await.unwrap(), 0);
        assert_eq!(store.policy_version(None).await.unwrap(), None);
        store.add_policy_version(&version(1, "one")).await.unwrap();
        store.add_policy_version(&version(2, "two")).await.unwrap();
        // Taken, and skipping ahead: both refused, nothing written.
        for number in [2, 4] {
            let err = store
                .add_policy_version(&version(number, "x"))
                .await
                .unwrap_err();
            assert!(matches!(err, StoreError::Exists(_)), "{err}");
        }
        assert_eq!(
            store.policy_version(None).await.unwrap(),
            Some(version(2, "two"))
        );
        assert_eq!(
            store.policy_version(Some(1)).await.unwrap(),
            Some(version(1, "one"))
        );
        assert_eq!(store.policy_version(Some(9)).await.unwrap(), None);
        let history = store.policy_history(10).await.unwrap();
        assert_eq!(
            history
                .iter()
                .map(|v| (v.number, v.note.as_str(), v.files.as_str()))
                .collect::<Vec<_>>(),
            [(2, "two", ""), (1, "one", "")]
        );
    }

    #[tokio::test]
    async fn sqlite_policy_versions() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_in(dir.path()).await.unwrap();
        exercise(&store).await;
    }

    #[tokio::test]
    async fn postgres_policy_versions() {
        let Some(url) = crate::tests::postgres_url() else {
            return;
        };
        let scoped = crate::tests::fresh_schema(&url, "policy_versions").await;
        let store = Store::open(&Location::parse(&scoped).unwrap())
            .await
            .unwrap();
        exercise(&store).await;
        store.close().await;
    }
}
