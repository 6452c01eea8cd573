//! Approvals: a request that a policy lets through only with a person's approval, the answers
//! given to it, and its single use. An approval is bound to the digest of one exact request and
//! to one session; it is answered while pending and unexpired, each approver once, and used at
//! most once, by a decision whose request has the same digest and session: the use is one
//! conditional statement, so that two replicas cannot both use it.

use sqlx::Row as _;

use crate::{Backend, Store, StoreError};

/// An approval as stored. `status` is what was decided (`pending`, `approved`, `denied`);
/// [`StoredApproval::status_at`] adds `expired`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredApproval {
    pub id: String,
    /// `sha256:<hex>` of the request's canonical form.
    pub digest: String,
    /// The requesting session, or empty.
    pub session: String,
    pub actor: String,
    /// The person the session acts for, or empty.
    pub on_behalf_of: String,
    /// The policy that asked for it, its approver group and how many must approve.
    pub policy: String,
    pub group: String,
    pub needed: i64,
    /// JSON array of the identities that may not answer it (the agent, its sessions, its
    /// delegation chain, and for four eyes the person it acts for).
    pub excluded: String,
    /// JSON of the request as decided.
    pub request: String,
    /// What the agent asks the approver to see (a CIBA `binding_message`), or empty.
    pub note: String,
    /// The decision that asked for it.
    pub decision_id: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    pub status: String,
    pub answered_at_ms: Option<i64>,
    pub used_at_ms: Option<i64>,
    /// The decision that used it.
    pub used_by: Option<String>,
}

impl StoredApproval {
    /// `pending`, `approved`, `denied` or `expired` (unanswered, or approved and unused, past
    /// its expiry).
    pub fn status_at(&self, now_ms: i64) -> &str {
        let open =
            self.status == "pending" || (self.status == "approved" && self.used_at_ms.is_none());
        if open && self.expires_at_ms <= now_ms {
            "expired"
        } else {
            &self.status
        }
    }
}

impl StoredApproval {
    /// Why this approval cannot be used for a request of `digest` from `session` at `now_ms`;
    /// `None` when it can (approved, unused, unexpired, given for exactly that).
    pub fn refusal(&self, digest: &str, session: &str, now_ms: i64) -> Option<ApprovalRefusal> {
        if self.session != session {
            Some(ApprovalRefusal::OtherSession)
        } else if self.digest != digest {
            Some(ApprovalRefusal::OtherRequest)
        } else if let Some(decision_id) = &self.used_by {
            Some(ApprovalRefusal::Used {
                decision_id: decision_id.clone(),
            })
        } else {
            match self.status_at(now_ms) {
                "approved" => None,
                "denied" => Some(ApprovalRefusal::Denied),
                "expired" => Some(ApprovalRefusal::Expired),
                _ => Some(ApprovalRefusal::Pending),
            }
        }
    }
}

/// One person's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalAnswer {
    pub approver: String,
    /// `approve` or `deny`.
    pub verdict: String,
    pub reason: String,
    pub at_ms: i64,
}

/// What became of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answered {
    /// Recorded; the approval's status now, and how many have approved.
    Recorded {
        status: String,
        approvals: i64,
    },
    /// The approval was answered already (`approved` or `denied`).
    Closed {
        status: String,
    },
    Expired,
    /// This approver answered it before.
    AlreadyAnswered,
    Unknown,
}

/// Why an approval could not be used for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApprovalRefusal {
    Unknown,
    /// Given to another session.
    OtherSession,
    /// Given for another request (an argument, the resource or the action differ).
    OtherRequest,
    Pending,
    Denied,
    Expired,
    /// Used before, by this decision.
    Used {
        decision_id: String,
    },
}

/// A query of whole approvals: the columns [`approval_from_sqlite`] and [`approval_from_pg`]
/// read, then `$rest` (a literal, so that the query stays a static string).
macro_rules! select {
    ($rest:literal) => {
        concat!(
            "SELECT id, digest, session, actor, on_behalf_of, policy, approver_group, needed, excluded, request, note, decision_id, created_at_ms, expires_at_ms, status, answered_at_ms, used_at_ms, used_by FROM zt_approvals",
            $rest
        )
    };
}

macro_rules! approval_from {
    ($name:ident, $row:ty) => {
        fn $name(row: &$row) -> Result<StoredApproval, StoreError> {
            Ok(StoredApproval {
                id: row.try_get("id")?,
                digest: row.try_get("digest")?,
                session: row.try_get("session")?,
                actor: row.try_get("actor")?,
                on_behalf_of: row.try_get("on_behalf_of")?,
                policy: row.try_get("policy")?,
                group: row.try_get("approver_group")?,
                needed: row.try_get("needed")?,
                excluded: row.try_get("excluded")?,
                request: row.try_get("request")?,
                note: row.try_get("note")?,
                decision_id: row.try_get("decision_id")?,
                created_at_ms: row.try_get("created_at_ms")?,
                expires_at_ms: row.try_get("expires_at_ms")?,
                status: row.try_get("status")?,
                answered_at_ms: row.try_get("answered_at_ms")?,
                used_at_ms: row.try_get("used_at_ms")?,
                used_by: row.try_get("used_by")?,
            })
        }
    };
}
approval_from!(approval_from_sqlite, sqlx::sqlite::SqliteRow);
approval_from!(approval_from_pg, sqlx::postgres::PgRow);

/// Marks an approval used by a decision: only if approved, unused, unexpired, and given for
/// this request digest and session. The whole rule is the statement's condition.
pub(crate) const USE_SQLITE: &str = "UPDATE zt_approvals SET used_at_ms = ?1, used_by = ?2
     WHERE id = ?3 AND digest = ?4 AND session = ?5 AND status = 'approved'
       AND used_at_ms IS NULL AND expires_at_ms > ?1";
pub(crate) const USE_PG: &str = "UPDATE zt_approvals SET used_at_ms = $1, used_by = $2
     WHERE id = $3 AND digest = $4 AND session = $5 AND status = 'approved'
       AND used_at_ms IS NULL AND expires_at_ms > $1";

impl Store {
    /// Stores a new approval, pending.
    pub async fn add_approval(&self, a: &StoredApproval) -> Result<(), StoreError> {
        macro_rules! add {
            ($pool:expr, $sql:expr) => {
                sqlx::query($sql)
                    .bind(&a.id)
                    .bind(&a.digest)
                    .bind(&a.session)
                    .bind(&a.actor)
                    .bind(&a.on_behalf_of)
                    .bind(&a.policy)
                    .bind(&a.group)
                    .bind(a.needed)
                    .bind(&a.excluded)
                    .bind(&a.request)
                    .bind(&a.note)
                    .bind(&a.decision_id)
                    .bind(a.created_at_ms)
                    .bind(a.expires_at_ms)
                    .execute($pool)
                    .await?
                    .rows_affected()
            };
        }
        match &self.backend {
            Backend::Sqlite(pool, _) => add!(
                pool,
                "INSERT INTO zt_approvals (id, digest, session, actor, on_behalf_of, policy, approver_group, needed, excluded, request, note, decision_id, created_at_ms, expires_at_ms, status)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending')"
            ),
            Backend::Postgres(pool) => add!(
                pool,
                "INSERT INTO zt_approvals (id, digest, session, actor, on_behalf_of, policy, approver_group, needed, excluded, request, note, decision_id, created_at_ms, expires_at_ms, status)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, 'pending')"
            ),
        };
        Ok(())
    }

    /// The approval `id` and its answers, in the order given.
    pub async fn approval(
        &self,
        id: &str,
    ) -> Result<Option<(StoredApproval, Vec<ApprovalAnswer>)>, StoreError> {
        type AnswerRow = (String, String, String, i64);
        let (approval, answers): (Option<StoredApproval>, Vec<AnswerRow>) = match &self.backend {
            Backend::Sqlite(pool, _) => {
                let row = sqlx::query(select!(" WHERE id = ?"))
                    .bind(id)
                    .fetch_optional(pool)
                    .await?;
                let answers = sqlx::query_as(
                    "SELECT approver, verdict, reason, at_ms FROM zt_approval_answers WHERE approval = ? ORDER BY at_ms, approver",
                )
                .bind(id)
                .fetch_all(pool)
                .await?;
                (row.as_ref().map(approval_from_sqlite).transpose()?, answers)
            }
            Backend::Postgres(pool) => {
                let row = sqlx::query(select!(" WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(pool)
                    .await?;
                let answers = sqlx::query_as(
                    "SELECT approver, verdict, reason, at_ms FROM zt_approval_answers WHERE approval = $1 ORDER BY at_ms, approver",
                )
                .bind(id)
                .fetch_all(pool)
                .await?;
                (row.as_ref().map(approval_from_pg).transpose()?, answers)
            }
        };
        Ok(approval.map(|a| {
            let answers = answers
                .into_iter()
                .map(|(approver, verdict, reason, at_ms)| ApprovalAnswer {
                    approver,
                    verdict,
                    reason,
                    at_ms,
                })
                .collect();
            (a, answers)
        }))
    }

    /// The newest approval still open (pending, or approved and unused, and unexpired) for a
    /// request digest and session: asking again waits for the same approval.
    pub async fn open_approval(
        &self,
        digest: &str,
        session: &str,
        now_ms: i64,
    ) -> Result<Option<StoredApproval>, StoreError> {
        Ok(match &self.backend {
            Backend::Sqlite(pool, _) => sqlx::query(select!(
                " WHERE digest = ? AND session = ? AND expires_at_ms > ?
                   AND (status = 'pending' OR (status = 'approved' AND used_at_ms IS NULL))
                 ORDER BY created_at_ms DESC LIMIT 1"
            ))
            .bind(digest)
            .bind(session)
            .bind(now_ms)
            .fetch_optional(pool)
            .await?
            .as_ref()
            .map(approval_from_sqlite)
            .transpose()?,
            Backend::Postgres(pool) => sqlx::query(select!(
                " WHERE digest = $1 AND session = $2 AND expires_at_ms > $3
                   AND (status = 'pending' OR (status = 'approved' AND used_at_ms IS NULL))
                 ORDER BY created_at_ms DESC LIMIT 1"
            ))
            .bind(digest)
            .bind(session)
            .bind(now_ms)
            .fetch_optional(pool)
            .await?
            .as_ref()
            .map(approval_from_pg)
            .transpose()?,
        })
    }

    /// The newest approval for a request digest and session, whatever became of it.
    pub async fn latest_approval(
        &self,
        digest: &str,
        session: &str,
    ) -> Result<Option<StoredApproval>, StoreError> {
        Ok(match &self.backend {
            Backend::Sqlite(pool, _) => sqlx::query(select!(
                " WHERE digest = ? AND session = ? ORDER BY created_at_ms DESC, id DESC LIMIT 1"
            ))
            .bind(digest)
            .bind(session)
            .fetch_optional(pool)
            .await?
            .as_ref()
            .map(approval_from_sqlite)
            .transpose()?,
            Backend::Postgres(pool) => sqlx::query(select!(
                " WHERE digest = $1 AND session = $2 ORDER BY created_at_ms DESC, id DESC LIMIT 1"
            ))
            .bind(digest)
            .bind(session)
            .fetch_optional(pool)
            .await?
            .as_ref()
            .map(approval_from_pg)
            .transpose()?,
        })
    }

    /// The newest approvals (at most `limit`) whose status at `now_ms` is `status`, or all.
    pub async fn approvals(
        &self,
        status: Option<&str>,
        now_ms: i64,
        limit: i64,
    ) -> Result<Vec<StoredApproval>, StoreError> {
        if !matches!(
            status,
            None | Some("pending" | "approved" | "denied" | "expired")
        ) {
            return Err(StoreError::Corrupt(format!(
                "`{}` is not an approval status",
                status.unwrap_or_default()
            )));
        }
        let status = status.unwrap_or("all");
        let limit = limit.clamp(1, 1000);
        Ok(match &self.backend {
            Backend::Sqlite(pool, _) => sqlx::query(
                select!(
                " WHERE ?1 = 'all'
                    OR (?1 = 'pending' AND status = 'pending' AND expires_at_ms > ?2)
                    OR (?1 = 'approved' AND status = 'approved' AND (used_at_ms IS NOT NULL OR expires_at_ms > ?2))
                    OR (?1 = 'denied' AND status = 'denied')
                    OR (?1 = 'expired' AND expires_at_ms <= ?2
                        AND (status = 'pending' OR (status = 'approved' AND used_at_ms IS NULL)))
                 ORDER BY created_at_ms DESC, id LIMIT ?3"),
            )
            .bind(status)
            .bind(now_ms)
            .bind(limit)
            .fetch_all(pool)
            .await?
            .iter()
            .map(approval_from_sqlite)
            .collect::<Result<_, _>>()?,
            Backend::Postgres(pool) => sqlx::query(
                select!(
                " WHERE $1 = 'all'
                    OR ($1 = 'pending' AND status = 'pending' AND expires_at_ms > $2)
                    OR ($1 = 'approved' AND status = 'approved' AND (used_at_ms IS NOT NULL OR expires_at_ms > $2))
                    OR ($1 = 'denied' AND status = 'denied')
                    OR ($1 = 'expired' AND expires_at_ms <= $2
                        AND (status = 'pending' OR (status = 'approved' AND used_at_ms IS NULL)))
                 ORDER BY created_at_ms DESC, id LIMIT $3"),
            )
            .bind(status)
            .bind(now_ms)
            .bind(limit)
            .fetch_all(pool)
            .await?
            .iter()
            .map(approval_from_pg)
            .collect::<Result<_, _>>()?,
        })
    }

    /// Records one approver's answer (`approve` or `deny`) to a pending, unexpired approval, in
    /// one transaction that holds the approval's row: a denial closes it denied; the approval
    /// that completes the number needed closes it approved.
    pub async fn answer_approval(
        &self,
        id: &str,
        answer: &ApprovalAnswer,
    ) -> Result<Answered, StoreError> {
        macro_rules! answer {
            ($pool:expr, $from:ident, $lock:expr, $select:expr, $insert:expr, $count:expr, $close:expr) => {{
                let mut tx = $pool.begin().await?;
                // A write first: it holds the row (PostgreSQL) or the database (SQLite) until
                // commit, so that two answers are counted one after the other.
                let touched = sqlx::query($lock).bind(id).execute(&mut *tx).await?;
                if touched.rows_affected() != 1 {
                    return Ok(Answered::Unknown);
                }
                let row = sqlx::query($select).bind(id).fetch_one(&mut *tx).await?;
                let approval = $from(&row)?;
                if approval.status != "pending" {
                    return Ok(Answered::Closed {
                        status: approval.status,
                    });
                }
                if approval.expires_at_ms <= answer.at_ms {
                    return Ok(Answered::Expired);
                }
                let inserted = sqlx::query($insert)
                    .bind(id)
                    .bind(&answer.approver)
                    .bind(&answer.verdict)
                    .bind(&answer.reason)
                    .bind(answer.at_ms)
                    .execute(&mut *tx)
                    .await?;
                if inserted.rows_affected() != 1 {
                    return Ok(Answered::AlreadyAnswered);
                }
                let (approvals,): (i64,) =
                    sqlx::query_as($count).bind(id).fetch_one(&mut *tx).await?;
                let status = if answer.verdict == "deny" {
                    "denied"
                } else if approvals >= approval.needed {
                    "approved"
                } else {
                    "pending"
                };
                if status != "pending" {
                    sqlx::query($close)
                        .bind(status)
                        .bind(answer.at_ms)
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(Answered::Recorded {
                    status: status.to_owned(),
                    approvals,
                })
            }};
        }
        match &self.backend {
            Backend::Sqlite(pool, _) => answer!(
                pool,
                approval_from_sqlite,
                "UPDATE zt_approvals SET status = status WHERE id = ?",
                select!(" WHERE id = ?"),
                "INSERT INTO zt_approval_answers (approval, approver, verdict, reason, at_ms) VALUES (?, ?, ?, ?, ?)
                 ON CONFLICT (approval, approver) DO NOTHING",
                "SELECT COUNT(*) FROM zt_approval_answers WHERE approval = ? AND verdict = 'approve'",
                "UPDATE zt_approvals SET status = ?, answered_at_ms = ? WHERE id = ?"
            ),
            Backend::Postgres(pool) => answer!(
                pool,
                approval_from_pg,
                "UPDATE zt_approvals SET status = status WHERE id = $1",
                select!(" WHERE id = $1"),
                "INSERT INTO zt_approval_answers (approval, approver, verdict, reason, at_ms) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (approval, approver) DO NOTHING",
                "SELECT COUNT(*) FROM zt_approval_answers WHERE approval = $1 AND verdict = 'approve'",
                "UPDATE zt_approvals SET status = $1, answered_at_ms = $2 WHERE id = $3"
            ),
        }
    }

    /// Why approval `id` could not be used for a request of `digest` from `session` at
    /// `now_ms`, as the store stands now.
    pub async fn approval_refusal(
        &self,
        id: &str,
        digest: &str,
        session: &str,
        now_ms: i64,
    ) -> Result<ApprovalRefusal, StoreError> {
        let Some((a, _)) = self.approval(id).await? else {
            return Ok(ApprovalRefusal::Unknown);
        };
        // Usable as read now: its use lost a race, and it is as good as not given yet.
        Ok(a.refusal(digest, session, now_ms)
            .unwrap_or(ApprovalRefusal::Pending))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Location, UseOp};

    fn approval(id: &str, needed: i64) -> StoredApproval {
        StoredApproval {
            id: id.into(),
            digest: "sha256:aa".into(),
            session: "s1".into(),
            actor: "agent".into(),
            on_behalf_of: String::new(),
            policy: "p".into(),
            group: "sre".into(),
            needed,
            excluded: "[]".into(),
            request: "{}".into(),
            note: String::new(),
            decision_id: "d0".into(),
            created_at_ms: 10,
            expires_at_ms: 1000,
            status: "pending".into(),
            answered_at_ms: None,
            used_at_ms: None,
            used_by: None,
        }
    }

    fn say(approver: &str, verdict: &str, at_ms: i64) -> ApprovalAnswer {
        ApprovalAnswer {
            approver: approver.into(),
            verdict: verdict.into(),
            reason: "because".into(),
            at_ms,
        }
    }

    async fn use_it(store: &Store, id: &str, digest: &str, session: &str, now_ms: i64) -> bool {
        store
            .apply_uses(vec![UseOp::Approval {
                id: id.into(),
                digest: digest.into(),
                session: session.into(),
                decision_id: format!("use-{now_ms}"),
                now_ms,
            }])
            .await
            .unwrap()
            == [true]
    }

    async fn approvals_are_answered_then_used_once(store: &Store) {
        store.add_approval(&approval("a1", 2)).await.unwrap();
        assert!(!use_it(store, "a1", "sha256:aa", "s1", 20).await);
        assert_eq!(
            store
                .approval_refusal("a1", "sha256:aa", "s1", 20)
                .await
                .unwrap(),
            ApprovalRefusal::Pending
        );
        let open = store.open_approval("sha256:aa", "s1", 20).await.unwrap();
        assert_eq!(open.map(|a| a.id).as_deref(), Some("a1"));
        // Four eyes: one approval leaves it pending, the same person again does not count.
        assert_eq!(
            store
                .answer_approval("a1", &say("alice", "approve", 30))
                .await
                .unwrap(),
            Answered::Recorded {
                status: "pending".into(),
                approvals: 1
            }
        );
        assert_eq!(
            store
                .answer_approval("a1", &say("alice", "approve", 31))
                .await
                .unwrap(),
            Answered::AlreadyAnswered
        );
        assert_eq!(
            store
                .answer_approval("a1", &say("bob", "approve", 32))
                .await
                .unwrap(),
            Answered::Recorded {
                status: "approved".into(),
                approvals: 2
            }
        );
        assert_eq!(
            store
                .answer_approval("a1", &say("carol", "deny", 33))
                .await
                .unwrap(),
            Answered::Closed {
                status: "approved".into()
            }
        );
        assert_eq!(store.approval("a1").await.unwrap().unwrap().1.len(), 2);
        // Used only for its own request and session, then only once.
        assert!(!use_it(store, "a1", "sha256:bb", "s1", 40).await);
        assert_eq!(
            store
                .approval_refusal("a1", "sha256:bb", "s1", 40)
                .await
                .unwrap(),
            ApprovalRefusal::OtherRequest
        );
        assert!(!use_it(store, "a1", "sha256:aa", "s2", 40).await);
        assert_eq!(
            store
                .approval_refusal("a1", "sha256:aa", "s2", 40)
                .await
                .unwrap(),
            ApprovalRefusal::OtherSession
        );
        assert!(use_it(store, "a1", "sha256:aa", "s1", 41).await);
        assert!(!use_it(store, "a1", "sha256:aa", "s1", 42).await);
        assert_eq!(
            store
                .approval_refusal("a1", "sha256:aa", "s1", 42)
                .await
                .unwrap(),
            ApprovalRefusal::Used {
                decision_id: "use-41".into()
            }
        );
        assert!(
            store
                .open_approval("sha256:aa", "s1", 50)
                .await
                .unwrap()
                .is_none()
        );
        let latest = store
            .latest_approval("sha256:aa", "s1")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (latest.id.as_str(), latest.used_by.as_deref()),
            ("a1", Some("use-41"))
        );
        assert!(
            store
                .latest_approval("sha256:aa", "s9")
                .await
                .unwrap()
                .is_none()
        );

        // A denial closes it; an expired one takes no answer and no use.
        store.add_approval(&approval("a2", 2)).await.unwrap();
        assert_eq!(
            store
                .answer_approval("a2", &say("bob", "deny", 30))
                .await
                .unwrap(),
            Answered::Recorded {
                status: "denied".into(),
                approvals: 0
            }
        );
        assert_eq!(
            store
                .approval_refusal("a2", "sha256:aa", "s1", 40)
                .await
                .unwrap(),
            ApprovalRefusal::Denied
        );
        store.add_approval(&approval("a3", 1)).await.unwrap();
        assert_eq!(
            store
                .answer_approval("a3", &say("bob", "approve", 1000))
                .await
                .unwrap(),
            Answered::Expired
        );
        assert_eq!(
            store
                .answer_approval("zz", &say("bob", "approve", 10))
                .await
                .unwrap(),
            Answered::Unknown
        );
        store.add_approval(&approval("a4", 1)).await.unwrap();
        store
            .answer_approval("a4", &say("bob", "approve", 20))
            .await
            .unwrap();
        assert!(!use_it(store, "a4", "sha256:aa", "s1", 1000).await);
        assert_eq!(
            store
                .approval_refusal("a4", "sha256:aa", "s1", 1000)
                .await
                .unwrap(),
            ApprovalRefusal::Expired
        );

        let ids = |list: Vec<StoredApproval>| list.into_iter().map(|a| a.id).collect::<Vec<_>>();
        assert_eq!(
            ids(store.approvals(Some("denied"), 500, 10).await.unwrap()),
            ["a2"]
        );
        assert_eq!(
            ids(store.approvals(Some("pending"), 500, 10).await.unwrap()),
            ["a3"]
        );
        assert_eq!(
            ids(store.approvals(Some("expired"), 1000, 10).await.unwrap()),
            ["a3", "a4"]
        );
        assert_eq!(
            ids(store.approvals(Some("approved"), 1000, 10).await.unwrap()),
            ["a1"]
        );
        assert_eq!(store.approvals(None, 1000, 10).await.unwrap().len(), 4);
        assert!(store.approvals(Some("nope"), 1000, 10).await.is_err());
    }

    #[tokio::test]
    async fn sqlite_answers_and_uses_approvals_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&Location::Sqlite(dir.path().join("z.db")))
            .await
            .unwrap();
        approvals_are_answered_then_used_once(&store).await;
    }

    #[tokio::test]
    async fn postgres_answers_and_uses_approvals_once() {
        let Some(url) = crate::tests::postgres_url() else {
            return;
        };
        let scoped = crate::tests::fresh_schema(&url, "approvals").await;
        let store = Store::open(&Location::parse(&scoped).unwrap())
            .await
            .unwrap();
        approvals_are_answered_then_used_once(&store).await;
    }
}
