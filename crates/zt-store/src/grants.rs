//! Delegation grants: each token issued by token exchange is a grant, stored so that it can be
//! revoked (by its id) and so that its counted uses are spent once across every replica.
//! A grant is never deleted or changed, except to mark it revoked.

use crate::{Backend, Store, StoreError};

/// A grant as stored: who delegated (the origin's subject, and the grant it was taken from,
/// if any), to which session, what (`details`, the JSON of its `authorization_details`), until
/// when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredGrant {
    pub id: String,
    pub parent: Option<String>,
    pub origin: String,
    pub actor_session: String,
    pub details: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
}

/// Uses to spend from one counted entry of a grant: `n` of at most `max` in all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spend<'a> {
    pub grant: &'a str,
    pub entry: i64,
    pub n: i64,
    pub max: i64,
}

const SPEND_SQLITE: &str = "INSERT INTO zt_grant_uses (grant_id, entry, used) VALUES (?, ?, ?)
     ON CONFLICT (grant_id, entry) DO UPDATE SET used = zt_grant_uses.used + excluded.used
     WHERE zt_grant_uses.used + excluded.used <= ?";
const SPEND_PG: &str = "INSERT INTO zt_grant_uses (grant_id, entry, used) VALUES ($1, $2, $3)
     ON CONFLICT (grant_id, entry) DO UPDATE SET used = zt_grant_uses.used + excluded.used
     WHERE zt_grant_uses.used + excluded.used <= $4";

/// A single-use write: spend `n` of a grant entry's `max` uses, or mark a plan step used.
/// Many are applied in one transaction ([`Store::apply_uses`]), each on its own condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UseOp {
    Spend {
        grant: String,
        entry: i64,
        n: i64,
        max: i64,
    },
    Step {
        plan: String,
        index: i64,
        decision_id: String,
        now_ms: i64,
    },
    /// Use an approval for a request of `digest` from `session`.
    Approval {
        id: String,
        digest: String,
        session: String,
        decision_id: String,
        now_ms: i64,
    },
}

/// Marks a plan step used, only if unused, its plan not revoked, and (ordered) every earlier
/// step used: the whole rule is the statement's condition.
pub(crate) const STEP_SQLITE: &str = "UPDATE zt_plan_steps SET used_at_ms = ?1, decision_id = ?2
     WHERE plan = ?3 AND idx = ?4 AND used_at_ms IS NULL
       AND EXISTS (SELECT 1 FROM zt_plans p WHERE p.id = ?3 AND p.revoked_at_ms IS NULL
         AND (p.ordered = 0 OR NOT EXISTS (SELECT 1 FROM zt_plan_steps e
           WHERE e.plan = ?3 AND e.idx < ?4 AND e.used_at_ms IS NULL)))";
pub(crate) const STEP_PG: &str = "UPDATE zt_plan_steps SET used_at_ms = $1, decision_id = $2
     WHERE plan = $3 AND idx = $4 AND used_at_ms IS NULL
       AND EXISTS (SELECT 1 FROM zt_plans p WHERE p.id = $3 AND p.revoked_at_ms IS NULL
         AND (p.ordered = 0 OR NOT EXISTS (SELECT 1 FROM zt_plan_steps e
           WHERE e.plan = $3 AND e.idx < $4 AND e.used_at_ms IS NULL)))";

impl Store {
    /// Applies single-use writes in one transaction, in order, and says of each whether its
    /// condition held (a use left, a step usable). One commit for all of them: on SQLite on
    /// the append thread, where writes queue instead of contending for the write lock.
    pub async fn apply_uses(&self, ops: Vec<UseOp>) -> Result<Vec<bool>, StoreError> {
        match &self.backend {
            Backend::Sqlite(_, appender) => {
                appender
                    .write(move |conn| {
                        let tx = conn
                            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                        let mut done = Vec::with_capacity(ops.len());
                        for op in &ops {
                            let changed =
                                match op {
                                    UseOp::Spend { n, max, .. } if n > max => 0,
                                    UseOp::Spend {
                                        grant,
                                        entry,
                                        n,
                                        max,
                                    } => tx
                                        .prepare_cached(SPEND_SQLITE)?
                                        .execute(rusqlite::params![grant, entry, n, max])?,
                                    UseOp::Step {
                                        plan,
                                        index,
                                        decision_id,
                                        now_ms,
                                    } => tx.prepare_cached(STEP_SQLITE)?.execute(
                                        rusqlite::params![now_ms, decision_id, plan, index],
                                    )?,
                                    UseOp::Approval {
                                        id,
                                        digest,
                                        session,
                                        decision_id,
                                        now_ms,
                                    } => tx.prepare_cached(crate::approvals::USE_SQLITE)?.execute(
                                        rusqlite::params![now_ms, decision_id, id, digest, session],
                                    )?,
                                };
                            done.push(changed == 1);
                        }
                        tx.commit()?;
                        Ok(done)
                    })
                    .await
            }
            Backend::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let mut done = Vec::with_capacity(ops.len());
                for op in &ops {
                    let changed = match op {
                        UseOp::Spend { n, max, .. } if n > max => 0,
                        UseOp::Spend {
                            grant,
                            entry,
                            n,
                            max,
                        } => sqlx::query(SPEND_PG)
                            .bind(grant)
                            .bind(entry)
                            .bind(n)
                            .bind(max)
                            .execute(&mut *tx)
                            .await?
                            .rows_affected(),
                        UseOp::Step {
                            plan,
                            index,
                            decision_id,
                            now_ms,
                        } => sqlx::query(STEP_PG)
                            .bind(now_ms)
                            .bind(decision_id)
                            .bind(plan)
                            .bind(index)
                            .execute(&mut *tx)
                            .await?
                            .rows_affected(),
                        UseOp::Approval {
                            id,
                            digest,
                            session,
                            decision_id,
                            now_ms,
                        } => sqlx::query(crate::approvals::USE_PG)
                            .bind(now_ms)
                            .bind(decision_id)
                            .bind(id)
                            .bind(digest)
                            .bind(session)
                            .execute(&mut *tx)
                            .await?
                            .rows_affected(),
                    };
                    done.push(changed == 1);
                }
                tx.commit().await?;
                Ok(done)
            }
        }
    }

    /// Stores a grant, spending `reserve` from the grant it was taken from (a child's counted
    /// uses are its parent's, handed down) in the same transaction. `false`, and nothing
    /// stored, when a reservation finds too few uses left.
    pub async fn add_grant(
        &self,
        grant: &StoredGrant,
        reserve: &[Spend<'_>],
    ) -> Result<bool, StoreError> {
        macro_rules! add {
            ($pool:expr, $spend:expr, $insert:expr) => {{
                let mut tx = $pool.begin().await?;
                for spend in reserve {
                    if spend.n > spend.max {
                        return Ok(false);
                    }
                    let done = sqlx::query($spend)
                        .bind(spend.grant)
                        .bind(spend.entry)
                        .bind(spend.n)
                        .bind(spend.max)
                        .execute(&mut *tx)
                        .await?;
                    if done.rows_affected() != 1 {
                        return Ok(false);
                    }
                }
                sqlx::query($insert)
                    .bind(&grant.id)
                    .bind(&grant.parent)
                    .bind(&grant.origin)
                    .bind(&grant.actor_session)
                    .bind(&grant.details)
                    .bind(grant.created_at_ms)
                    .bind(grant.expires_at_ms)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }};
        }
        match &self.backend {
            Backend::Sqlite(pool, _) => add!(
                pool,
                SPEND_SQLITE,
                "INSERT INTO zt_grants (id, parent, origin, actor_session, details, created_at_ms, expires_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?)"
            ),
            Backend::Postgres(pool) => add!(
                pool,
                SPEND_PG,
                "INSERT INTO zt_grants (id, parent, origin, actor_session, details, created_at_ms, expires_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)"
            ),
        }
        Ok(true)
    }

    /// Marks a grant revoked (the first time counts); `false` when there is no such grant.
    pub async fn revoke_grant(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let done = match &self.backend {
            Backend::Sqlite(pool, _) => sqlx::query(
                "UPDATE zt_grants SET revoked_at_ms = COALESCE(revoked_at_ms, ?) WHERE id = ?",
            )
            .bind(now_ms)
            .bind(id)
            .execute(pool)
            .await?
            .rows_affected(),
            Backend::Postgres(pool) => sqlx::query(
                "UPDATE zt_grants SET revoked_at_ms = COALESCE(revoked_at_ms, $1) WHERE id = $2",
            )
            .bind(now_ms)
            .bind(id)
            .execute(pool)
            .await?
            .rows_affected(),
        };
        Ok(done == 1)
    }

    /// The ids of the revoked grants that have not expired at `now_ms`.
    pub async fn revoked_grants(&self, now_ms: i64) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> = match &self.backend {
            Backend::Sqlite(pool, _) => sqlx::query_as(
                "SELECT id FROM zt_grants WHERE revoked_at_ms IS NOT NULL AND expires_at_ms > ?",
            )
            .bind(now_ms)
            .fetch_all(pool)
            .await?,
            Backend::Postgres(pool) => sqlx::query_as(
                "SELECT id FROM zt_grants WHERE revoked_at_ms IS NOT NULL AND expires_at_ms > $1",
            )
            .bind(now_ms)
            .fetch_all(pool)
            .await?,
        };
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Location;

    async fn spend(store: &Store, spend: &Spend<'_>) -> bool {
        store
            .apply_uses(vec![UseOp::Spend {
                grant: spend.grant.to_owned(),
                entry: spend.entry,
                n: spend.n,
                max: spend.max,
            }])
            .await
            .unwrap()
            == [true]
    }

    async fn spend_and_revoke(store: &Store) {
        let grant = |id: &str, parent: Option<&str>| StoredGrant {
            id: id.into(),
            parent: parent.map(Into::into),
            origin: "alice".into(),
            actor_session: "s1".into(),
            details: "[]".into(),
            created_at_ms: 10,
            expires_at_ms: 1000,
        };
        assert!(store.add_grant(&grant("g1", None), &[]).await.unwrap());
        let from_g1 = |n| Spend {
            grant: "g1",
            entry: 0,
            n,
            max: 5,
        };
        // A child takes 3 of g1's 5; a second child asking for 3 finds 2 and is not stored.
        assert!(
            store
                .add_grant(&grant("g2", Some("g1")), &[from_g1(3)])
                .await
                .unwrap()
        );
        assert!(
            !store
                .add_grant(&grant("g3", Some("g1")), &[from_g1(3)])
                .await
                .unwrap()
        );
        assert!(
            store
                .add_grant(&grant("g3", Some("g1")), &[from_g1(1)])
                .await
                .unwrap()
        );
        assert!(spend(store, &from_g1(1)).await);
        assert!(!spend(store, &from_g1(1)).await);
        // Another entry counts on its own.
        let other = Spend {
            grant: "g1",
            entry: 1,
            n: 1,
            max: 1,
        };
        assert!(spend(store, &other).await);
        assert!(!spend(store, &other).await);
        let too_many = Spend {
            grant: "g9",
            entry: 0,
            n: 2,
            max: 1,
        };
        assert!(!spend(store, &too_many).await);

        assert!(store.revoked_grants(0).await.unwrap().is_empty());
        assert!(store.revoke_grant("g2", 50).await.unwrap());
        assert!(!store.revoke_grant("nope", 50).await.unwrap());
        assert_eq!(store.revoked_grants(0).await.unwrap(), ["g2"]);
        assert!(store.revoked_grants(1000).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn sqlite_spends_each_use_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&Location::Sqlite(dir.path().join("z.db")))
            .await
            .unwrap();
        spend_and_revoke(&store).await;
    }

    #[tokio::test]
    async fn postgres_spends_each_use_once() {
        let Some(url) = crate::tests::postgres_url() else {
            return;
        };
        let scoped = crate::tests::fresh_schema(&url, "grants").await;
        let store = Store::open(&Location::parse(&scoped).unwrap())
            .await
            .unwrap();
        spend_and_revoke(&store).await;
    }
}
