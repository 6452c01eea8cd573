//! Registered agents and their sessions. Revocation marks a session, never deletes it, so that
//! a revoked session cannot come back by being started again under its id.

use sqlx::Row as _;

use crate::{Backend, Store, StoreError};

/// A registered agent; `details` is its JSON (description, allowed models and tool manifests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAgent {
    pub name: String,
    pub owner: String,
    pub details: String,
    pub created_at_ms: i64,
    pub disabled_at_ms: Option<i64>,
}

/// A session as stored: its claim (JSON) and times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    pub id: String,
    pub agent: String,
    pub parent: Option<String>,
    pub claim: String,
    pub started_by: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
    /// Its tokens' index in the Token Status List.
    pub status_idx: Option<i64>,
}

macro_rules! rows_from {
    ($agent:ident, $session:ident, $row:ty) => {
        fn $agent(row: &$row) -> Result<StoredAgent, StoreError> {
            Ok(StoredAgent {
                name: row.try_get("name")?,
                owner: row.try_get("owner")?,
                details: row.try_get("details")?,
                created_at_ms: row.try_get("created_at_ms")?,
                disabled_at_ms: row.try_get("disabled_at_ms")?,
            })
        }

        fn $session(row: &$row) -> Result<StoredSession, StoreError> {
            Ok(StoredSession {
                id: row.try_get("id")?,
                agent: row.try_get("agent")?,
                parent: row.try_get("parent")?,
                claim: row.try_get("claim")?,
                started_by: row.try_get("started_by")?,
                created_at_ms: row.try_get("created_at_ms")?,
                expires_at_ms: row.try_get("expires_at_ms")?,
                revoked_at_ms: row.try_get("revoked_at_ms")?,
                status_idx: row.try_get("status_idx")?,
            })
        }
    };
}
rows_from!(
    agent_from_sqlite,
    session_from_sqlite,
    sqlx::sqlite::SqliteRow
);
rows_from!(agent_from_pg, session_from_pg, sqlx::postgres::PgRow);

impl Store {
    /// Registers an agent; [`StoreError::Exists`] if the name is taken (disabled or not).
    pub async fn add_agent(&self, agent: &StoredAgent) -> Result<(), StoreError> {
        let inserted = match &self.backend {
            Backend::Sqlite(pool, _) => sqlx::query(
                "INSERT INTO zt_agents (name, owner, details, created_at_ms) VALUES (?, ?, ?, ?)
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(&agent.name)
            .bind(&agent.owner)
            .bind(&agent.details)
            .bind(agent.created_at_ms)
            .execute(pool)
            .await?
            .rows_affected(),
            Backend::Postgres(pool) => sqlx::query(
                "INSERT INTO zt_agents (name, owner, details, created_at_ms) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(&agent.name)
            .bind(&agent.owner)
            .bind(&agent.details)
            .bind(agent.created_at_ms)
            .execute(pool)
            .await?
            .rows_affected(),
        };
        if inserted == 1 {
            Ok(())
        } else {
            Err(StoreError::Exists(agent.name.clone()))
        }
    }

    /// Every agent, by name.
    pub async fn agents(&self) -> Result<Vec<StoredAgent>, StoreError> {
        match &self.backend {
            Backend::Sqlite(pool, _) => sqlx::query(
                "SELECT name, owner, details, created_at_ms, disabled_at_ms FROM zt_agents ORDER BY name",
            )
            .fetch_all(pool)
            .await?
            .iter()
            .map(agent_from_sqlite)
            .collect(),
            Backend::Postgres(pool) => sqlx::query(
                "SELECT name, owner, details, created_at_ms, disabled_at_ms FROM zt_agents ORDER BY name",
            )
            .fetch_all(pool)
            .await?
            .iter()
            .map(agent_from_pg)
            .collect(),
        }
    }

    /// Disables an agent (no effect if it is disabled already); `false` if there is none.
    pub async fn disable_agent(&self, name: &str, now_ms: i64) -> Result<bool, StoreError> {
        let found = match &self.backend {
            Backend::Sqlite(pool, _) => sqlx::query(
                "UPDATE zt_agents SET disabled_at_ms = COALESCE(disabled_at_ms, ?) WHERE name = ?",
            )
            .bind(now_ms)
            .bind(name)
            .execute(pool)
            .await?
            .rows_affected(),
            Backend::Postgres(pool) => sqlx::query(
                "UPDATE zt_agents SET disabled_at_ms = COALESCE(disabled_at_ms, $1) WHERE name = $2",
            )
            .bind(now_ms)
            .bind(name)
            .execute(pool)
            .await?
            .rows_affected(),
        };
        Ok(found == 1)
    }

    /// Stores a new session; [`StoreError::Exists`] if its id or status list place is taken.
    pub async fn add_session(&self, session: &StoredSession) -> Result<(), StoreError> {
        let unique = |e: sqlx::Error| match &e {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                StoreError::Exists(session.id.clone())
            }
            _ => StoreError::Database(e),
        };
        match &self.backend {
            Backend::Sqlite(pool, _) => {
                sqlx::query(
                    "INSERT INTO zt_sessions (id, agent, parent, claim, started_by, created_at_ms, expires_at_ms, status_idx)
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(&session.id)
                .bind(&session.agent)
                .bind(&session.parent)
                .bind(&session.claim)
                .bind(&session.started_by)
                .bind(session.created_at_ms)
                .bind(session.expires_at_ms)
                .bind(session.status_idx)
                .execute(pool)
                .await
                .map_err(unique)?;
            }
            Backend::Postgres(pool) => {
                sqlx::query(
                    "INSERT INTO zt_sessions (id, agent, parent, claim, started_by, created_at_ms, expires_at_ms, status_idx)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(&session.id)
                .bind(&session.agent)
                .bind(&session.parent)
                .bind(&session.claim)
                .bind(&session.started_by)
                .bind(session.created_at_ms)
                .bind(session.expires_at_ms)
                .bind(session.status_idx)
                .execute(pool)
                .await
                .map_err(unique)?;
            }
        }
        Ok(())
    }

    /// The sessions that have not expired by `now_ms`, revoked or not.
    pub async fn unexpired_sessions(&self, now_ms: i64) -> Result<Vec<StoredSession>, StoreError> {
        match &self.backend {
            Backend::Sqlite(pool, _) => sqlx::query(
                "SELECT id, agent, parent, claim, started_by, created_at_ms, expires_at_ms, revoked_at_ms, status_idx
                 FROM zt_sessions WHERE expires_at_ms > ? ORDER BY created_at_ms, id",
            )
            .bind(now_ms)
            .fetch_all(pool)
            .await?
            .iter()
            .map(session_from_sqlite)
            .collect(),
            Backend::Postgres(pool) => sqlx::query(
                "SELECT id, agent, parent, claim, started_by, created_at_ms, expires_at_ms, revoked_at_ms, status_idx
                 FROM zt_sessions WHERE expires_at_ms > $1 ORDER BY created_at_ms, id",
            )
            .bind(now_ms)
            .fetch_all(pool)
            .await?
            .iter()
            .map(session_from_pg)
            .collect(),
        }
    }

    /// The agent `name`, if registered.
    pub async fn agent(&self, name: &str) -> Result<Option<StoredAgent>, StoreError> {
        match &self.backend {
            Backend::Sqlite(pool, _) => sqlx::query(
                "SELECT name, owner, details, created_at_ms, disabled_at_ms FROM zt_agents WHERE name = ?",
            )
            .bind(name)
            .fetch_optional(pool)
            .await?
            .as_ref()
            .map(agent_from_sqlite)
            .transpose(),
            Backend::Postgres(pool) => sqlx::query(
                "SELECT name, owner, details, created_at_ms, disabled_at_ms FROM zt_agents WHERE name = $1",
            )
            .bind(name)
            .fetch_optional(pool)
            .await?
            .as_ref()
            .map(agent_from_pg)
            .transpose(),
        }
    }

    /// The session `id`, if stored.
    pub async fn session(&self, id: &str) -> Result<Option<StoredSession>, StoreError> {
        match &self.backend {
            Backend::Sqlite(pool, _) => sqlx::query(
                "SELECT id, agent, parent, claim, started_by, created_at_ms, expires_at_ms, revoked_at_ms, status_idx
                 FROM zt_sessions WHERE id = ?",
            )
            .bind(id)
            .fetch_optional(pool)
            .await?
            .as_ref()
            .map(session_from_sqlite)
            .transpose(),
            Backend::Postgres(pool) => sqlx::query(
                "SELECT id, agent, parent, claim, started_by, created_at_ms, expires_at_ms, revoked_at_ms, status_idx
                 FROM zt_sessions WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(pool)
            .await?
            .as_ref()
            .map(session_from_pg)
            .transpose(),
        }
    }

    /// Records a token signing key's public half (once; a key already there stays).
    pub async fn add_token_key(
        &self,
        kid: &str,
        public_key: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(pool, _) => {
                sqlx::query("INSERT INTO zt_token_keys (kid, public_key, created_at_ms) VALUES (?, ?, ?) ON CONFLICT (kid) DO NOTHING")
                    .bind(kid)
                    .bind(public_key)
                    .bind(now_ms)
                    .execute(pool)
                    .await?;
            }
            Backend::Postgres(pool) => {
                sqlx::query("INSERT INTO zt_token_keys (kid, public_key, created_at_ms) VALUES ($1, $2, $3) ON CONFLICT (kid) DO NOTHING")
                    .bind(kid)
                    .bind(public_key)
                    .bind(now_ms)
                    .execute(pool)
                    .await?;
            }
        }
        Ok(())
    }

    /// Every token signing key's `(kid, public key)`.
    pub async fn token_keys(&self) -> Result<Vec<(String, String)>, StoreError> {
        let rows = match &self.backend {
            Backend::Sqlite(pool, _) => {
                sqlx::query_as(
                    "SELECT kid, public_key FROM zt_token_keys ORDER BY created_at_ms, kid",
                )
                .fetch_all(pool)
                .await?
            }
            Backend::Postgres(pool) => {
                sqlx::query_as(
                    "SELECT kid, public_key FROM zt_token_keys ORDER BY created_at_ms, kid",
                )
                .fetch_all(pool)
                .await?
            }
        };
        Ok(rows)
    }

    /// Records an issuing CA certificate (public) of the trust domain `domain`, under its
    /// SHA-256 `fingerprint` (once; one already there stays).
    pub async fn add_ca_cert(
        &self,
        fingerprint: &str,
        domain: &str,
        cert_pem: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(pool, _) => {
                sqlx::query("INSERT INTO zt_ca_certs (fingerprint, domain, cert_pem, created_at_ms) VALUES (?, ?, ?, ?) ON CONFLICT (fingerprint) DO NOTHING")
                    .bind(fingerprint)
                    .bind(domain)
                    .bind(cert_pem)
                    .bind(now_ms)
                    .execute(pool)
                    .await?;
            }
            Backend::Postgres(pool) => {
                sqlx::query("INSERT INTO zt_ca_certs (fingerprint, domain, cert_pem, created_at_ms) VALUES ($1, $2, $3, $4) ON CONFLICT (fingerprint) DO NOTHING")
                    .bind(fingerprint)
                    .bind(domain)
                    .bind(cert_pem)
                    .bind(now_ms)
                    .execute(pool)
                    .await?;
            }
        }
        Ok(())
    }

    /// The PEM certificates of every issuing CA of `domain` any replica recorded, oldest first.
    pub async fn ca_certs(&self, domain: &str) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> = match &self.backend {
            Backend::Sqlite(pool, _) => {
                sqlx::query_as("SELECT cert_pem FROM zt_ca_certs WHERE domain = ? ORDER BY created_at_ms, fingerprint")
                    .bind(domain)
                    .fetch_all(pool)
                    .await?
            }
            Backend::Postgres(pool) => {
                sqlx::query_as("SELECT cert_pem FROM zt_ca_certs WHERE domain = $1 ORDER BY created_at_ms, fingerprint")
                    .bind(domain)
                    .fetch_all(pool)
                    .await?
            }
        };
        Ok(rows.into_iter().map(|(pem,)| pem).collect())
    }

    /// One past the highest status list index ever given to a session (0 for none).
    pub async fn next_status_idx(&self) -> Result<u64, StoreError> {
        let max: Option<i64> = match &self.backend {
            Backend::Sqlite(pool, _) => {
                sqlx::query_scalar("SELECT MAX(status_idx) FROM zt_sessions")
                    .fetch_one(pool)
                    .await?
            }
            Backend::Postgres(pool) => {
                sqlx::query_scalar("SELECT MAX(status_idx) FROM zt_sessions")
                    .fetch_one(pool)
                    .await?
            }
        };
        Ok(max.map_or(0, |m| u64::try_from(m).unwrap_or(0) + 1))
    }

    /// Marks sessions revoked (those already revoked keep their time), in one transaction.
    pub async fn revoke_sessions(&self, ids: &[String], now_ms: i64) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(pool, _) => {
                let mut tx = pool.begin().await?;
                for id in ids {
                    sqlx::query(
                        "UPDATE zt_sessions SET revoked_at_ms = COALESCE(revoked_at_ms, ?) WHERE id = ?",
                    )
                    .bind(now_ms)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
            }
            Backend::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                for id in ids {
                    sqlx::query(
                        "UPDATE zt_sessions SET revoked_at_ms = COALESCE(revoked_at_ms, $1) WHERE id = $2",
                    )
                    .bind(now_ms)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Location;

    async fn round_trip(store: &Store) {
        let agent = StoredAgent {
            name: "triage-bot".into(),
            owner: "team-sre".into(),
            details: "{}".into(),
            created_at_ms: 1,
            disabled_at_ms: None,
        };
        store.add_agent(&agent).await.unwrap();
        assert!(matches!(
            store.add_agent(&agent).await,
            Err(StoreError::Exists(_))
        ));
        let session = |id: &str, parent: Option<&str>, expires, idx| StoredSession {
            id: id.into(),
            agent: "triage-bot".into(),
            parent: parent.map(str::to_owned),
            claim: "{}".into(),
            started_by: "broker".into(),
            created_at_ms: 2,
            expires_at_ms: expires,
            revoked_at_ms: None,
            status_idx: Some(idx),
        };
        store
            .add_session(&session("a", None, 100, 5))
            .await
            .unwrap();
        store
            .add_session(&session("b", Some("a"), 100, 7))
            .await
            .unwrap();
        store
            .add_session(&session("old", None, 10, 6))
            .await
            .unwrap();
        // A taken id, or a taken status list place, is refused as taken.
        assert!(matches!(
            store.add_session(&session("a", None, 100, 8)).await,
            Err(StoreError::Exists(_))
        ));
        assert!(matches!(
            store.add_session(&session("c", None, 100, 7)).await,
            Err(StoreError::Exists(_))
        ));
        let b = store.session("b").await.unwrap().unwrap();
        assert_eq!(b.parent.as_deref(), Some("a"));
        assert_eq!(store.session("zz").await.unwrap(), None);
        let agent = store.agent("triage-bot").await.unwrap().unwrap();
        assert_eq!(agent.owner, "team-sre");
        store.add_ca_cert("f1", "a.local", "PEM1", 1).await.unwrap();
        store
            .add_ca_cert("f1", "a.local", "PEM1-again", 2)
            .await
            .unwrap();
        store.add_ca_cert("f2", "b.local", "PEM2", 3).await.unwrap();
        store.add_ca_cert("f3", "a.local", "PEM3", 4).await.unwrap();
        assert_eq!(store.ca_certs("a.local").await.unwrap(), ["PEM1", "PEM3"]);
        store.add_token_key("k1", "00", 1).await.unwrap();
        store.add_token_key("k1", "11", 2).await.unwrap();
        let keys = store.token_keys().await.unwrap();
        assert_eq!(keys, [("k1".to_owned(), "00".to_owned())]);
        store
            .revoke_sessions(&["a".into(), "b".into()], 50)
            .await
            .unwrap();
        store.revoke_sessions(&["a".into()], 60).await.unwrap();
        let live = store.unexpired_sessions(20).await.unwrap();
        let ids: Vec<(&str, Option<i64>)> = live
            .iter()
            .map(|s| (s.id.as_str(), s.revoked_at_ms))
            .collect();
        assert_eq!(ids, [("a", Some(50)), ("b", Some(50))]);
        assert!(store.disable_agent("triage-bot", 70).await.unwrap());
        assert!(!store.disable_agent("nobody", 70).await.unwrap());
        assert_eq!(store.agents().await.unwrap()[0].disabled_at_ms, Some(70));
        assert_eq!(store.next_status_idx().await.unwrap(), 8);
    }

    #[tokio::test]
    async fn sqlite_keeps_agents_and_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_in(dir.path()).await.unwrap();
        round_trip(&store).await;
    }

    #[tokio::test]
    async fn postgres_keeps_agents_and_sessions() {
        let Some(url) = crate::tests::postgres_url() else {
            return;
        };
        let scoped = crate::tests::fresh_schema(&url, "agents").await;
        let store = Store::open(&Location::parse(&scoped).unwrap())
            .await
            .unwrap();
        round_trip(&store).await;
    }
}
