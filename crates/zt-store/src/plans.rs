//! Plans (Plan-then-Execute): a planner's accepted plan, and the single use of each of its
//! steps. A plan is never changed once stored, except to mark it revoked; a step is marked used
//! once, by the decision that used it, and the check and the mark are one statement, so that
//! two replicas cannot both use it.

use crate::{Backend, Store, StoreError};

/// A plan as stored: its canonical JSON (whose SHA-256 is its id) and times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPlan {
    pub id: String,
    pub planner_session: String,
    pub canonical: String,
    pub ordered: bool,
    pub steps: i64,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
}

/// What became of an attempt to use a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepUse {
    Used,
    /// Used before, by this decision.
    AlreadyUsed {
        decision_id: String,
    },
    /// An earlier step of an ordered plan is not used yet.
    Waiting {
        earlier: i64,
    },
    Revoked,
    Unknown,
}

/// A step's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepState {
    pub index: i64,
    pub used_at_ms: Option<i64>,
    pub decision_id: Option<String>,
}

type PlanRow = (String, String, String, i64, i64, i64, i64, Option<i64>);

fn plan_from(row: PlanRow) -> StoredPlan {
    let (
        id,
        planner_session,
        canonical,
        ordered,
        steps,
        created_at_ms,
        expires_at_ms,
        revoked_at_ms,
    ) = row;
    StoredPlan {
        id,
        planner_session,
        canonical,
        ordered: ordered != 0,
        steps,
        created_at_ms,
        expires_at_ms,
        revoked_at_ms,
    }
}

impl Store {
    /// Stores an accepted plan and its steps, unused. `false` when a plan of that id exists.
    pub async fn add_plan(&self, plan: &StoredPlan) -> Result<bool, StoreError> {
        macro_rules! add {
            ($pool:expr, $exists:expr, $plan:expr, $step:expr) => {{
                let mut tx = $pool.begin().await?;
                let found: Option<(String,)> = sqlx::query_as($exists)
                    .bind(&plan.id)
                    .fetch_optional(&mut *tx)
                    .await?;
                if found.is_some() {
                    return Ok(false);
                }
                sqlx::query($plan)
                    .bind(&plan.id)
                    .bind(&plan.planner_session)
                    .bind(&plan.canonical)
                    .bind(i64::from(plan.ordered))
                    .bind(plan.steps)
                    .bind(plan.created_at_ms)
                    .bind(plan.expires_at_ms)
                    .execute(&mut *tx)
                    .await?;
                for index in 0..plan.steps {
                    sqlx::query($step)
                        .bind(&plan.id)
                        .bind(index)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
            }};
        }
        match &self.backend {
            Backend::Sqlite(pool, _) => add!(
                pool,
                "SELECT id FROM zt_plans WHERE id = ?",
                "INSERT INTO zt_plans (id, planner_session, canonical, ordered, steps, created_at_ms, expires_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
                "INSERT INTO zt_plan_steps (plan, idx) VALUES (?, ?)"
            ),
            Backend::Postgres(pool) => add!(
                pool,
                "SELECT id FROM zt_plans WHERE id = $1",
                "INSERT INTO zt_plans (id, planner_session, canonical, ordered, steps, created_at_ms, expires_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                "INSERT INTO zt_plan_steps (plan, idx) VALUES ($1, $2)"
            ),
        }
        Ok(true)
    }

    /// The plan `id`, if stored.
    pub async fn plan(&self, id: &str) -> Result<Option<StoredPlan>, StoreError> {
        let row: Option<PlanRow> = match &self.backend {
            Backend::Sqlite(pool, _) => {
                sqlx::query_as("SELECT id, planner_session, canonical, ordered, steps, created_at_ms, expires_at_ms, revoked_at_ms FROM zt_plans WHERE id = ?")
                    .bind(id)
                    .fetch_optional(pool)
                    .await?
            }
            Backend::Postgres(pool) => {
                sqlx::query_as("SELECT id, planner_session, canonical, ordered, steps, created_at_ms, expires_at_ms, revoked_at_ms FROM zt_plans WHERE id = $1")
                    .bind(id)
                    .fetch_optional(pool)
                    .await?
            }
        };
        Ok(row.map(plan_from))
    }

    /// Each step's state, in order.
    pub async fn plan_steps(&self, id: &str) -> Result<Vec<StepState>, StoreError> {
        let rows: Vec<(i64, Option<i64>, Option<String>)> = match &self.backend {
            Backend::Sqlite(pool, _) => {
                sqlx::query_as("SELECT idx, used_at_ms, decision_id FROM zt_plan_steps WHERE plan = ? ORDER BY idx")
                    .bind(id)
                    .fetch_all(pool)
                    .await?
            }
            Backend::Postgres(pool) => {
                sqlx::query_as("SELECT idx, used_at_ms, decision_id FROM zt_plan_steps WHERE plan = $1 ORDER BY idx")
                    .bind(id)
                    .fetch_all(pool)
                    .await?
            }
        };
        Ok(rows
            .into_iter()
            .map(|(index, used_at_ms, decision_id)| StepState {
                index,
                used_at_ms,
                decision_id,
            })
            .collect())
    }

    /// Why step `index` of plan `id` could not be used, as the store stands now.
    pub async fn step_refusal(&self, id: &str, index: i64) -> Result<StepUse, StoreError> {
        // Why not: read what stands now.
        let Some(plan) = self.plan(id).await? else {
            return Ok(StepUse::Unknown);
        };
        if plan.revoked_at_ms.is_some() {
            return Ok(StepUse::Revoked);
        }
        let steps = self.plan_steps(id).await?;
        match steps.iter().find(|s| s.index == index) {
            None => Ok(StepUse::Unknown),
            Some(StepState {
                decision_id: Some(decision_id),
                used_at_ms: Some(_),
                ..
            }) => Ok(StepUse::AlreadyUsed {
                decision_id: decision_id.clone(),
            }),
            Some(_) => Ok(steps
                .iter()
                .find(|s| s.index < index && s.used_at_ms.is_none())
                .map_or(StepUse::Revoked, |s| StepUse::Waiting { earlier: s.index })),
        }
    }

    /// Marks a plan revoked (the first time counts); `false` when there is no such plan.
    pub async fn revoke_plan(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let done = match &self.backend {
            Backend::Sqlite(pool, _) => sqlx::query(
                "UPDATE zt_plans SET revoked_at_ms = COALESCE(revoked_at_ms, ?) WHERE id = ?",
            )
            .bind(now_ms)
            .bind(id)
            .execute(pool)
            .await?
            .rows_affected(),
            Backend::Postgres(pool) => sqlx::query(
                "UPDATE zt_plans SET revoked_at_ms = COALESCE(revoked_at_ms, $1) WHERE id = $2",
            )
            .bind(now_ms)
            .bind(id)
            .execute(pool)
            .await?
            .rows_affected(),
        };
        Ok(done == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Location;

    /// Marks a step used, or says why not.
    async fn use_step(store: &Store, id: &str, index: i64, decision_id: &str) -> StepUse {
        let done = store
            .apply_uses(vec![crate::UseOp::Step {
                plan: id.into(),
                index,
                decision_id: decision_id.into(),
                now_ms: 5,
            }])
            .await
            .unwrap();
        if done == [true] {
            StepUse::Used
        } else {
            store.step_refusal(id, index).await.unwrap()
        }
    }

    async fn steps_are_used_once_and_in_order(store: &Store) {
        let plan = |id: &str, ordered: bool| StoredPlan {
            id: id.into(),
            planner_session: "planner".into(),
            canonical: "{}".into(),
            ordered,
            steps: 3,
            created_at_ms: 1,
            expires_at_ms: 1000,
            revoked_at_ms: None,
        };
        assert!(store.add_plan(&plan("p1", true)).await.unwrap());
        assert!(!store.add_plan(&plan("p1", true)).await.unwrap());
        assert_eq!(
            use_step(store, "p1", 1, "d0").await,
            StepUse::Waiting { earlier: 0 }
        );
        assert_eq!(use_step(store, "p1", 0, "d1").await, StepUse::Used);
        assert_eq!(
            use_step(store, "p1", 0, "d2").await,
            StepUse::AlreadyUsed {
                decision_id: "d1".into()
            }
        );
        assert_eq!(use_step(store, "p1", 1, "d3").await, StepUse::Used);
        assert_eq!(use_step(store, "p1", 7, "d4").await, StepUse::Unknown);
        assert_eq!(use_step(store, "nope", 0, "d4").await, StepUse::Unknown);
        assert!(store.revoke_plan("p1", 8).await.unwrap());
        assert_eq!(use_step(store, "p1", 2, "d5").await, StepUse::Revoked);
        let states = store.plan_steps("p1").await.unwrap();
        assert_eq!(states.len(), 3);
        assert_eq!(states[1].decision_id.as_deref(), Some("d3"));
        assert_eq!(states[2].used_at_ms, None);
        // Unordered: any step first.
        assert!(store.add_plan(&plan("p2", false)).await.unwrap());
        assert_eq!(use_step(store, "p2", 2, "d6").await, StepUse::Used);
        let stored = store.plan("p2").await.unwrap().unwrap();
        assert!(!stored.ordered);
        assert_eq!(stored.steps, 3);
        assert!(!store.revoke_plan("nope", 1).await.unwrap());
    }

    #[tokio::test]
    async fn sqlite_uses_each_step_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&Location::Sqlite(dir.path().join("z.db")))
            .await
            .unwrap();
        steps_are_used_once_and_in_order(&store).await;
    }

    #[tokio::test]
    async fn postgres_uses_each_step_once() {
        let Some(url) = crate::tests::postgres_url() else {
            return;
        };
        let scoped = crate::tests::fresh_schema(&url, "plans").await;
        let store = Store::open(&Location::parse(&scoped).unwrap())
            .await
            .unwrap();
        steps_are_used_once_and_in_order(&store).await;
    }
}
