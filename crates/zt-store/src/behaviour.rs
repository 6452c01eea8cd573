//! Behaviour and quarantine: the quarantined agents and sessions (every replica refuses their
//! decisions; announced on the change feed like a revocation), and each replica's snapshot of
//! the behaviour it has observed per agent (so that baselines survive a restart and replicas
//! see each other's, approximately, at the interval they write them).

use crate::{Backend, Store, StoreError};

/// A quarantine in force: `target` is `agent:<name>` or `session:<id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredQuarantine {
    pub target: String,
    /// Why: the policy that quarantined, or the operator's reason.
    pub reason: String,
    /// Who: `policy:<id>` or the operator credential's name.
    pub by: String,
    /// The record of the quarantine (its decision id).
    pub decision_id: String,
    pub at_ms: i64,
}

/// One replica's snapshot of one agent's observed behaviour (`state`: JSON the server reads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BehaviourSnapshot {
    pub agent: String,
    pub replica: String,
    pub updated_ms: i64,
    pub state: String,
}

const QUARANTINE_SQLITE: &str =
    "INSERT INTO zt_quarantines (target, reason, by_whom, decision_id, at_ms, released_at_ms)
     VALUES (?, ?, ?, ?, ?, NULL)
     ON CONFLICT (target) DO UPDATE SET reason = excluded.reason, by_whom = excluded.by_whom,
       decision_id = excluded.decision_id, at_ms = excluded.at_ms, released_at_ms = NULL";
const QUARANTINE_PG: &str =
    "INSERT INTO zt_quarantines (target, reason, by_whom, decision_id, at_ms, released_at_ms)
     VALUES ($1, $2, $3, $4, $5, NULL)
     ON CONFLICT (target) DO UPDATE SET reason = excluded.reason, by_whom = excluded.by_whom,
       decision_id = excluded.decision_id, at_ms = excluded.at_ms, released_at_ms = NULL";
const SNAPSHOT_SQLITE: &str = "INSERT INTO zt_behaviour (agent, replica, updated_ms, state) VALUES (?, ?, ?, ?)
     ON CONFLICT (agent, replica) DO UPDATE SET updated_ms = excluded.updated_ms, state = excluded.state";
const SNAPSHOT_PG: &str = "INSERT INTO zt_behaviour (agent, replica, updated_ms, state) VALUES ($1, $2, $3, $4)
     ON CONFLICT (agent, replica) DO UPDATE SET updated_ms = excluded.updated_ms, state = excluded.state";

impl Store {
    /// Puts a target in quarantine (again, if it was released).
    pub async fn add_quarantine(&self, q: &StoredQuarantine) -> Result<(), StoreError> {
        macro_rules! add {
            ($pool:expr, $sql:expr) => {{
                sqlx::query($sql)
                    .bind(&q.target)
                    .bind(&q.reason)
                    .bind(&q.by)
                    .bind(&q.decision_id)
                    .bind(q.at_ms)
                    .execute($pool)
                    .await?;
            }};
        }
        match &self.backend {
            Backend::Sqlite(pool, _) => add!(pool, QUARANTINE_SQLITE),
            Backend::Postgres(pool) => add!(pool, QUARANTINE_PG),
        }
        Ok(())
    }

    /// Releases a target; `false` if it was not in quarantine.
    pub async fn release_quarantine(&self, target: &str, now_ms: i64) -> Result<bool, StoreError> {
        let done = match &self.backend {
            Backend::Sqlite(pool, _) => sqlx::query(
                "UPDATE zt_quarantines SET released_at_ms = ? WHERE target = ? AND released_at_ms IS NULL",
            )
            .bind(now_ms)
            .bind(target)
            .execute(pool)
            .await?
            .rows_affected(),
            Backend::Postgres(pool) => sqlx::query(
                "UPDATE zt_quarantines SET released_at_ms = $1 WHERE target = $2 AND released_at_ms IS NULL",
            )
            .bind(now_ms)
            .bind(target)
            .execute(pool)
            .await?
            .rows_affected(),
        };
        Ok(done == 1)
    }

    /// Every quarantine in force, or (with `target`) that one, if it is.
    pub async fn quarantines(
        &self,
        target: Option<&str>,
    ) -> Result<Vec<StoredQuarantine>, StoreError> {
        type Row = (String, String, String, String, i64);
        let rows: Vec<Row> = match &self.backend {
            Backend::Sqlite(pool, _) => sqlx::query_as(
                "SELECT target, reason, by_whom, decision_id, at_ms FROM zt_quarantines
                 WHERE released_at_ms IS NULL AND (? IS NULL OR target = ?) ORDER BY target",
            )
            .bind(target)
            .bind(target)
            .fetch_all(pool)
            .await?,
            Backend::Postgres(pool) => sqlx::query_as(
                "SELECT target, reason, by_whom, decision_id, at_ms FROM zt_quarantines
                 WHERE released_at_ms IS NULL AND ($1::TEXT IS NULL OR target = $1) ORDER BY target",
            )
            .bind(target)
            .fetch_all(pool)
            .await?,
        };
        Ok(rows
            .into_iter()
            .map(
                |(target, reason, by, decision_id, at_ms)| StoredQuarantine {
                    target,
                    reason,
                    by,
                    decision_id,
                    at_ms,
                },
            )
            .collect())
    }

    /// Writes a replica's snapshots of the agents it has observed, in one transaction.
    pub async fn put_behaviour(&self, snapshots: &[BehaviourSnapshot]) -> Result<(), StoreError> {
        macro_rules! put {
            ($pool:expr, $sql:expr) => {{
                let mut tx = $pool.begin().await?;
                for s in snapshots {
                    sqlx::query($sql)
                        .bind(&s.agent)
                        .bind(&s.replica)
                        .bind(s.updated_ms)
                        .bind(&s.state)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
            }};
        }
        match &self.backend {
            Backend::Sqlite(pool, _) => put!(pool, SNAPSHOT_SQLITE),
            Backend::Postgres(pool) => put!(pool, SNAPSHOT_PG),
        }
        Ok(())
    }

    /// The snapshots written after `after_ms` (by any replica), oldest first.
    pub async fn behaviour_since(
        &self,
        after_ms: i64,
    ) -> Result<Vec<BehaviourSnapshot>, StoreError> {
        let rows: Vec<(String, String, i64, String)> = match &self.backend {
            Backend::Sqlite(pool, _) => sqlx::query_as(
                "SELECT agent, replica, updated_ms, state FROM zt_behaviour WHERE updated_ms > ? ORDER BY updated_ms",
            )
            .bind(after_ms)
            .fetch_all(pool)
            .await?,
            Backend::Postgres(pool) => sqlx::query_as(
                "SELECT agent, replica, updated_ms, state FROM zt_behaviour WHERE updated_ms > $1 ORDER BY updated_ms",
            )
            .bind(after_ms)
            .fetch_all(pool)
            .await?,
        };
        Ok(rows
            .into_iter()
            .map(|(agent, replica, updated_ms, state)| BehaviourSnapshot {
                agent,
                replica,
                updated_ms,
                state,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Location;

    #[tokio::test]
    async fn quarantines_are_kept_until_released_and_snapshots_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&Location::Sqlite(dir.path().join("b.db")))
            .await
            .unwrap();
        let q = StoredQuarantine {
            target: "session:s1".into(),
            reason: "probing".into(),
            by: "policy:probe".into(),
            decision_id: "d1".into(),
            at_ms: 10,
        };
        store.add_quarantine(&q).await.unwrap();
        assert_eq!(
            store.quarantines(None).await.unwrap(),
            std::slice::from_ref(&q)
        );
        assert_eq!(
            store.quarantines(Some("session:s1")).await.unwrap().len(),
            1
        );
        assert!(store.quarantines(Some("agent:a")).await.unwrap().is_empty());
        assert!(store.release_quarantine("session:s1", 20).await.unwrap());
        assert!(!store.release_quarantine("session:s1", 30).await.unwrap());
        assert!(store.quarantines(None).await.unwrap().is_empty());
        // Quarantined again after a release.
        store.add_quarantine(&q).await.unwrap();
        assert_eq!(store.quarantines(None).await.unwrap().len(), 1);

        let snap = |updated_ms, state: &str| BehaviourSnapshot {
            agent: "a".into(),
            replica: "r0".into(),
            updated_ms,
            state: state.into(),
        };
        store.put_behaviour(&[snap(5, "{}")]).await.unwrap();
        store.put_behaviour(&[snap(7, "{\"x\":1}")]).await.unwrap();
        assert_eq!(
            store.behaviour_since(0).await.unwrap(),
            [snap(7, "{\"x\":1}")]
        );
        assert!(store.behaviour_since(7).await.unwrap().is_empty());
    }
}
