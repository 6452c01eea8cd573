//! Operator and enforcement-point credentials: a name, a role, and the SHA-256 digest of the
//! token (never the token). Revoked credentials stay, marked, so that their names are not
//! reused and the list shows what was once valid.

use sqlx::Row as _;
use zt_identity::{CredentialName, CredentialRecord, Role, TokenDigest};

use crate::{Backend, Store, StoreError};

/// A credential as the list shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialInfo {
    pub record: CredentialRecord,
    pub created_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
}

/// What revoking a credential by name did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    Now,
    Already,
    NoSuchCredential,
}

macro_rules! info_from {
    ($name:ident, $row:ty) => {
        fn $name(row: &$row) -> Result<CredentialInfo, StoreError> {
            let name: String = row.try_get("name")?;
            let role: String = row.try_get("role")?;
            let digest: String = row.try_get("digest")?;
            let revoked_at_ms: Option<i64> = row.try_get("revoked_at_ms")?;
            let corrupt =
                |what: String| StoreError::Corrupt(format!("credential `{name}`: {what}"));
            Ok(CredentialInfo {
                record: CredentialRecord {
                    name: CredentialName::parse(&name).map_err(corrupt)?,
                    role: role.parse().map_err(corrupt)?,
                    digest: TokenDigest::from_hex(&digest)
                        .ok_or_else(|| corrupt("the digest is not 64 hex digits".into()))?,
                    revoked: revoked_at_ms.is_some(),
                },
                created_at_ms: row.try_get("created_at_ms")?,
                revoked_at_ms,
            })
        }
    };
}
info_from!(info_from_sqlite, sqlx::sqlite::SqliteRow);
info_from!(info_from_pg, sqlx::postgres::PgRow);

impl Store {
    /// Adds a credential; [`StoreError::Exists`] if one of that name exists (revoked or not).
    pub async fn add_credential(
        &self,
        name: &CredentialName,
        role: Role,
        digest: TokenDigest,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let inserted = match &self.backend {
            Backend::Sqlite(pool, _) => sqlx::query(
                "INSERT INTO zt_credentials (name, role, digest, created_at_ms) VALUES (?, ?, ?, ?)
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(name.as_str())
            .bind(role.as_str())
            .bind(digest.to_hex())
            .bind(now_ms)
            .execute(pool)
            .await?
            .rows_affected(),
            Backend::Postgres(pool) => sqlx::query(
                "INSERT INTO zt_credentials (name, role, digest, created_at_ms) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(name.as_str())
            .bind(role.as_str())
            .bind(digest.to_hex())
            .bind(now_ms)
            .execute(pool)
            .await?
            .rows_affected(),
        };
        if inserted == 1 {
            Ok(())
        } else {
            Err(StoreError::Exists(name.to_string()))
        }
    }

    /// Adds the admin credential `name` if the store has never had an admin credential (none,
    /// revoked or not): the first start's. `false`: there is one already (or another replica
    /// made it first).
    pub async fn add_first_admin(
        &self,
        name: &CredentialName,
        digest: TokenDigest,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let inserted = match &self.backend {
            Backend::Sqlite(pool, _) => sqlx::query(
                "INSERT INTO zt_credentials (name, role, digest, created_at_ms)
                 SELECT ?, 'admin', ?, ? WHERE NOT EXISTS (SELECT 1 FROM zt_credentials WHERE role = 'admin')
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(name.as_str())
            .bind(digest.to_hex())
            .bind(now_ms)
            .execute(pool)
            .await?
            .rows_affected(),
            Backend::Postgres(pool) => {
                // Replicas starting together: one at a time, so that only one admin is made.
                let mut tx = pool.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock(7247018)")
                    .execute(&mut *tx)
                    .await?;
                let inserted = sqlx::query(
                    "INSERT INTO zt_credentials (name, role, digest, created_at_ms)
                     SELECT $1, 'admin', $2, $3 WHERE NOT EXISTS (SELECT 1 FROM zt_credentials WHERE role = 'admin')
                     ON CONFLICT (name) DO NOTHING",
                )
                .bind(name.as_str())
                .bind(digest.to_hex())
                .bind(now_ms)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                tx.commit().await?;
                inserted
            }
        };
        Ok(inserted == 1)
    }

    /// The credential whose token has `digest`, revoked or not.
    pub async fn credential(
        &self,
        digest: TokenDigest,
    ) -> Result<Option<CredentialRecord>, StoreError> {
        let info = match &self.backend {
            Backend::Sqlite(pool, _) => sqlx::query(
                "SELECT name, role, digest, created_at_ms, revoked_at_ms FROM zt_credentials WHERE digest = ?",
            )
            .bind(digest.to_hex())
            .fetch_optional(pool)
            .await?
            .as_ref()
            .map(info_from_sqlite)
            .transpose()?,
            Backend::Postgres(pool) => sqlx::query(
                "SELECT name, role, digest, created_at_ms, revoked_at_ms FROM zt_credentials WHERE digest = $1",
            )
            .bind(digest.to_hex())
            .fetch_optional(pool)
            .await?
            .as_ref()
            .map(info_from_pg)
            .transpose()?,
        };
        Ok(info.map(|i| i.record))
    }

    /// Every credential, by name.
    pub async fn credentials(&self) -> Result<Vec<CredentialInfo>, StoreError> {
        match &self.backend {
            Backend::Sqlite(pool, _) => sqlx::query(
                "SELECT name, role, digest, created_at_ms, revoked_at_ms FROM zt_credentials ORDER BY name",
            )
            .fetch_all(pool)
            .await?
            .iter()
            .map(info_from_sqlite)
            .collect(),
            Backend::Postgres(pool) => sqlx::query(
                "SELECT name, role, digest, created_at_ms, revoked_at_ms FROM zt_credentials ORDER BY name",
            )
            .fetch_all(pool)
            .await?
            .iter()
            .map(info_from_pg)
            .collect(),
        }
    }

    /// Revokes the credential `name`.
    pub async fn revoke_credential(
        &self,
        name: &CredentialName,
        now_ms: i64,
    ) -> Result<Revoked, StoreError> {
        let updated = match &self.backend {
            Backend::Sqlite(pool, _) => sqlx::query(
                "UPDATE zt_credentials SET revoked_at_ms = ? WHERE name = ? AND revoked_at_ms IS NULL",
            )
            .bind(now_ms)
            .bind(name.as_str())
            .execute(pool)
            .await?
            .rows_affected(),
            Backend::Postgres(pool) => sqlx::query(
                "UPDATE zt_credentials SET revoked_at_ms = $1 WHERE name = $2 AND revoked_at_ms IS NULL",
            )
            .bind(now_ms)
            .bind(name.as_str())
            .execute(pool)
            .await?
            .rows_affected(),
        };
        if updated == 1 {
            return Ok(Revoked::Now);
        }
        let exists = self
            .credentials()
            .await?
            .iter()
            .any(|c| &c.record.name == name);
        Ok(if exists {
            Revoked::Already
        } else {
            Revoked::NoSuchCredential
        })
    }
}

#[cfg(test)]
mod tests {
    use zt_identity::NewSecret;

    use super::*;
    use crate::Location;

    fn name(n: &str) -> CredentialName {
        CredentialName::parse(n).unwrap()
    }

    async fn credentials_round_trip(store: &Store) -> Result<(), StoreError> {
        let admin = NewSecret::from_random([1; 32]);
        assert!(
            store
                .add_first_admin(&name("admin"), admin.digest(), 1)
                .await?
        );
        // Only the first: a second start (or replica) makes none.
        let again = NewSecret::from_random([2; 32]);
        assert!(
            !store
                .add_first_admin(&name("admin-2"), again.digest(), 2)
                .await?
        );
        assert_eq!(store.credential(again.digest()).await?, None);

        let pep = NewSecret::from_random([3; 32]);
        store
            .add_credential(&name("gw"), Role::Pep, pep.digest(), 3)
            .await?;
        assert!(matches!(
            store
                .add_credential(&name("gw"), Role::Admin, again.digest(), 4)
                .await,
            Err(StoreError::Exists(n)) if n == "gw"
        ));
        let found = store.credential(pep.digest()).await?;
        assert_eq!(found.as_ref().map(|r| r.role), Some(Role::Pep));
        assert_eq!(found.map(|r| r.revoked), Some(false));

        assert_eq!(store.revoke_credential(&name("gw"), 5).await?, Revoked::Now);
        assert_eq!(
            store.revoke_credential(&name("gw"), 6).await?,
            Revoked::Already
        );
        assert_eq!(
            store.revoke_credential(&name("nobody"), 6).await?,
            Revoked::NoSuchCredential
        );
        assert_eq!(
            store.credential(pep.digest()).await?.map(|r| r.revoked),
            Some(true)
        );
        let list = store.credentials().await?;
        let names: Vec<&str> = list.iter().map(|c| c.record.name.as_str()).collect();
        assert_eq!(names, ["admin", "gw"]);
        assert_eq!(list.get(1).and_then(|c| c.revoked_at_ms), Some(5));
        // All admins revoked: still no second first admin.
        store.revoke_credential(&name("admin"), 7).await?;
        assert!(
            !store
                .add_first_admin(&name("admin-3"), again.digest(), 8)
                .await?
        );
        Ok(())
    }

    #[tokio::test]
    async fn sqlite_keeps_credentials_as_digests() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_in(dir.path()).await?;
        credentials_round_trip(&store).await?;
        store.close().await;
        // The token itself is in none of the store's files; its digest is.
        let token = NewSecret::from_random([3; 32]);
        let mut digest_seen = false;
        for file in crate::sqlite_files(&dir.path().join(crate::SQLITE_FILE)) {
            let bytes = std::fs::read(file).unwrap_or_default();
            let holds = |needle: &str| bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
            assert!(!holds(token.token()));
            digest_seen |= holds(&token.digest().to_hex());
        }
        assert!(digest_seen);
        Ok(())
    }

    #[tokio::test]
    async fn postgres_keeps_credentials() -> Result<(), StoreError> {
        let Some(url) = crate::tests::postgres_url() else {
            return Ok(());
        };
        let scoped = crate::tests::fresh_schema(&url, "credentials").await;
        let store = Store::open(&Location::parse(&scoped)?).await?;
        credentials_round_trip(&store).await?;
        store.close().await;
        Ok(())
    }
}
