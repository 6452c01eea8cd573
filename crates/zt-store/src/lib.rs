//! ZT-Infra's durable state, behind one [`Store`] type with two backends: SQLite (embedded, the
//! default, one file under the data directory, in WAL mode with `synchronous=FULL`) and
//! PostgreSQL (for several stateless replicas).
//!
//! It keeps the history of policy activations (which policy version became active when, from
//! which files) and the evidence log (`evidence.rs`: records, checkpoints, public keys, the log's
//! origin). On SQLite, the writes made while serving (evidence appends, policy activations) go
//! through a connection and thread of their own (`appender.rs`), so that they queue rather than
//! contend for SQLite's one write lock; everything else goes through the sqlx pool.
//!
//! Architecture invariant: both backends run the same migrations, numbered and applied once,
//! in order, inside a transaction; a database from a newer ZT-Infra is refused, not modified.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Executor, Row};

mod agents;
mod appender;
mod approvals;
mod behaviour;
pub mod changes;
mod credentials;
mod evidence;
mod grants;
mod plans;
mod policy_versions;
pub use agents::{StoredAgent, StoredSession};
pub use approvals::{Answered, ApprovalAnswer, ApprovalRefusal, StoredApproval};
pub use behaviour::{BehaviourSnapshot, StoredQuarantine};
pub use credentials::{CredentialInfo, Revoked};
pub use evidence::{LogId, StoredCheckpoint, StoredLog, StoredRecord, WriterLock};
pub use grants::{Spend, StoredGrant, UseOp};
pub use plans::{StepState, StepUse, StoredPlan};
pub use policy_versions::StoredPolicyVersion;

/// Where the store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// An SQLite database file, created if missing.
    Sqlite(PathBuf),
    /// A PostgreSQL connection URL (`postgres://` or `postgresql://`).
    Postgres(String),
}

impl Location {
    /// Reads `--store`: a `postgres://` or `postgresql://` URL, an `sqlite:` prefixed path, or a
    /// plain path to an SQLite file.
    pub fn parse(s: &str) -> Result<Self, StoreError> {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Ok(Self::Postgres(s.to_owned()))
        } else if let Some(path) = s
            .strip_prefix("sqlite://")
            .or_else(|| s.strip_prefix("sqlite:"))
        {
            if path.is_empty() {
                return Err(StoreError::Location(s.to_owned()));
            }
            Ok(Self::Sqlite(PathBuf::from(path)))
        } else if s.is_empty() || s.contains("://") {
            Err(StoreError::Location(s.to_owned()))
        } else {
            Ok(Self::Sqlite(PathBuf::from(s)))
        }
    }
}

impl std::fmt::Display for Location {
    /// Shows where the store is without any password in the URL.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(path) => write!(f, "sqlite:{}", path.display()),
            Self::Postgres(url) => {
                let redacted = match (url.find("://"), url.rfind('@')) {
                    (Some(scheme), Some(at)) if at > scheme => {
                        let userinfo = url.get(scheme + 3..at).unwrap_or("");
                        let user = userinfo.split(':').next().unwrap_or("");
                        format!(
                            "{}{user}{}@{}",
                            url.get(..scheme + 3).unwrap_or(""),
                            if userinfo.contains(':') { ":***" } else { "" },
                            url.get(at + 1..).unwrap_or("")
                        )
                    }
                    _ => url.clone(),
                };
                f.write_str(&redacted)
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("`{0}` is not a store location: give a path to an SQLite file or a postgres:// URL")]
    Location(String),
    #[error("cannot open the store at {location}")]
    Open {
        location: String,
        source: sqlx::Error,
    },
    #[error(
        "the store was written by a newer ZT-Infra (schema version {found}, this build knows up to {known}); refusing to touch it"
    )]
    TooNew { found: i64, known: i64 },
    #[error("store error")]
    Database(#[from] sqlx::Error),
    #[error("store error")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the evidence append thread has stopped")]
    AppenderStopped,
    #[error("cannot use the SQLite store: {0}")]
    Unsupported(String),
    #[error("cannot start the evidence append thread")]
    Thread(#[source] std::io::Error),
    #[error("`{0}` exists already")]
    Exists(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error(
        "another writer appended to the evidence log (expected next seq {expected}, found {found})"
    )]
    Conflict { expected: u64, found: u64 },
}

/// One activation of a policy set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activation {
    /// `sha256:<hex>` of the set.
    pub version: String,
    /// Milliseconds since the Unix epoch.
    pub activated_at_ms: i64,
    /// The set's files and their digests, as JSON.
    pub files: serde_json::Value,
}

#[derive(Debug, Clone)]
enum Backend {
    /// The pool for everything but evidence appends, which have a connection of their own.
    Sqlite(SqlitePool, appender::Appender),
    Postgres(PgPool),
}

/// The SQLite store's file name in the data directory.
pub const SQLITE_FILE: &str = "ztinfra.db";

/// The longest a PostgreSQL statement may run (PostgreSQL's `statement_timeout`).
pub const PG_STATEMENT_TIMEOUT: &str = "10s";
/// The longest a PostgreSQL connection may take to be had from the pool, connecting included.
pub const PG_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// An SQLite store's files: the database, its write-ahead log and its shared-memory index.
pub fn sqlite_files(path: &Path) -> [PathBuf; 3] {
    ["", "-wal", "-shm"].map(|suffix| {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    })
}

/// Creates the SQLite file readable by its owner only, and makes an existing one (and its
/// write-ahead log and shared-memory files, which SQLite creates with the database file's
/// mode) so where this process may: the store holds every request and its context. (A reader
/// that does not own the files, such as an export run by another account, leaves them as
/// they are.)
fn private_files(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    match std::fs::OpenOptions::new()
        .create_new(true)
        .append(true)
        .mode(0o600)
        .open(path)
    {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        other => drop(other?),
    }
    for file in sqlite_files(path) {
        let file = file.as_path();
        match std::fs::metadata(file) {
            Ok(meta) if meta.permissions().mode() & 0o077 != 0 => {
                match std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600)) {
                    Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {}
                    other => other?,
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// The durable store.
#[derive(Debug, Clone)]
pub struct Store {
    backend: Backend,
    location: Location,
    /// Changes made by this process, for its own subscribers ([`changes`]).
    local: changes::LocalFeed,
}

/// The migrations, in order; a migration is one or more statements valid on both backends,
/// where `{seq_key}` stands for the type of a sequence-number key: SQLite's `INTEGER PRIMARY
/// KEY` (the rowid, so a record is stored once) or PostgreSQL's `BIGINT PRIMARY KEY`.
const MIGRATIONS: &[&[&str]] = &[
    &["CREATE TABLE IF NOT EXISTS zt_policy_activations (
        id BIGINT NOT NULL PRIMARY KEY,
        version TEXT NOT NULL,
        activated_at_ms BIGINT NOT NULL,
        files TEXT NOT NULL
    )"],
    &[
        "CREATE TABLE zt_meta (name TEXT NOT NULL PRIMARY KEY, value TEXT NOT NULL)",
        "CREATE TABLE zt_evidence_records (
            seq {seq_key} NOT NULL,
            hash TEXT NOT NULL,
            body TEXT NOT NULL
        )",
        "CREATE TABLE zt_evidence_checkpoints (
            tree_size BIGINT NOT NULL PRIMARY KEY,
            note TEXT NOT NULL
        )",
        "CREATE TABLE zt_evidence_keys (
            key_id TEXT NOT NULL PRIMARY KEY,
            key_json TEXT NOT NULL,
            created_at_ms BIGINT NOT NULL
        )",
    ],
    &["CREATE TABLE zt_credentials (
        name TEXT NOT NULL PRIMARY KEY,
        role TEXT NOT NULL,
        digest TEXT NOT NULL UNIQUE,
        created_at_ms BIGINT NOT NULL,
        revoked_at_ms BIGINT
    )"],
    &[
        "CREATE TABLE zt_agents (
            name TEXT NOT NULL PRIMARY KEY,
            owner TEXT NOT NULL,
            details TEXT NOT NULL,
            created_at_ms BIGINT NOT NULL,
            disabled_at_ms BIGINT
        )",
        "CREATE TABLE zt_sessions (
            id TEXT NOT NULL PRIMARY KEY,
            agent TEXT NOT NULL,
            parent TEXT,
            claim TEXT NOT NULL,
            started_by TEXT NOT NULL,
            created_at_ms BIGINT NOT NULL,
            expires_at_ms BIGINT NOT NULL,
            revoked_at_ms BIGINT
        )",
        "CREATE INDEX zt_sessions_expiry ON zt_sessions (expires_at_ms)",
    ],
    // A session's place in the Token Status List of its tokens.
    &["ALTER TABLE zt_sessions ADD COLUMN status_idx BIGINT"],
    // Each replica's token signing key, so that every replica verifies every token; and one
    // status list place per session, whichever replica started it.
    &[
        "CREATE TABLE zt_token_keys (
            kid TEXT NOT NULL PRIMARY KEY,
            public_key TEXT NOT NULL,
            created_at_ms BIGINT NOT NULL
        )",
        "CREATE UNIQUE INDEX zt_sessions_status_idx ON zt_sessions (status_idx)",
    ],
    // One evidence log per replica (`evidence.rs`: a record's key is `log · 2^40 + seq`). The
    // log a store already had becomes log 0, its records and keys unchanged.
    &[
        "CREATE TABLE zt_evidence_logs (
            id BIGINT NOT NULL PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            origin TEXT NOT NULL UNIQUE,
            created_at_ms BIGINT NOT NULL
        )",
        "INSERT INTO zt_evidence_logs (id, name, origin, created_at_ms)
         SELECT 0, 'replica-0', value,
                COALESCE((SELECT MIN(created_at_ms) FROM zt_evidence_keys), 0)
         FROM zt_meta WHERE name = 'log_origin'",
        "DELETE FROM zt_meta WHERE name = 'log_origin'",
        "ALTER TABLE zt_evidence_keys ADD COLUMN log BIGINT NOT NULL DEFAULT 0",
        "CREATE INDEX zt_evidence_keys_log ON zt_evidence_keys (log)",
    ],
    // Policy sets pushed to the store, for replicas that share it (`policy_versions.rs`).
    &["CREATE TABLE zt_policy_versions (
        number BIGINT NOT NULL PRIMARY KEY,
        digest TEXT NOT NULL,
        files TEXT NOT NULL,
        pushed_by TEXT NOT NULL,
        pushed_at_ms BIGINT NOT NULL,
        note TEXT NOT NULL
    )"],
    // Each replica's issuing CA certificate (public), so that every replica trusts, and serves
    // in its bundle, the X.509-SVIDs any replica issued.
    &["CREATE TABLE zt_ca_certs (
        fingerprint TEXT NOT NULL PRIMARY KEY,
        domain TEXT NOT NULL,
        cert_pem TEXT NOT NULL,
        created_at_ms BIGINT NOT NULL
    )"],
    // Delegation grants (token exchange), and the uses spent of their counted entries.
    &[
        "CREATE TABLE zt_grants (
        id TEXT NOT NULL PRIMARY KEY,
        parent TEXT,
        origin TEXT NOT NULL,
        actor_session TEXT NOT NULL,
        details TEXT NOT NULL,
        created_at_ms BIGINT NOT NULL,
        expires_at_ms BIGINT NOT NULL,
        revoked_at_ms BIGINT
    )",
        "CREATE TABLE zt_grant_uses (
        grant_id TEXT NOT NULL,
        entry BIGINT NOT NULL,
        used BIGINT NOT NULL,
        PRIMARY KEY (grant_id, entry)
    )",
    ],
    // Plans (Plan-then-Execute) and the single use of their steps.
    &[
        "CREATE TABLE zt_plans (
        id TEXT NOT NULL PRIMARY KEY,
        planner_session TEXT NOT NULL,
        canonical TEXT NOT NULL,
        ordered BIGINT NOT NULL,
        steps BIGINT NOT NULL,
        created_at_ms BIGINT NOT NULL,
        expires_at_ms BIGINT NOT NULL,
        revoked_at_ms BIGINT
    )",
        "CREATE TABLE zt_plan_steps (
        plan TEXT NOT NULL,
        idx BIGINT NOT NULL,
        used_at_ms BIGINT,
        decision_id TEXT,
        PRIMARY KEY (plan, idx)
    )",
    ],
    &[
        "CREATE TABLE zt_approvals (
        id TEXT NOT NULL PRIMARY KEY,
        digest TEXT NOT NULL,
        session TEXT NOT NULL,
        actor TEXT NOT NULL,
        on_behalf_of TEXT NOT NULL,
        policy TEXT NOT NULL,
        approver_group TEXT NOT NULL,
        needed BIGINT NOT NULL,
        excluded TEXT NOT NULL,
        request TEXT NOT NULL,
        note TEXT NOT NULL,
        decision_id TEXT NOT NULL,
        created_at_ms BIGINT NOT NULL,
        expires_at_ms BIGINT NOT NULL,
        status TEXT NOT NULL,
        answered_at_ms BIGINT,
        used_at_ms BIGINT,
        used_by TEXT
    )",
        "CREATE INDEX zt_approvals_digest ON zt_approvals (digest, session)",
        "CREATE INDEX zt_approvals_created ON zt_approvals (created_at_ms)",
        "CREATE TABLE zt_approval_answers (
        approval TEXT NOT NULL,
        approver TEXT NOT NULL,
        verdict TEXT NOT NULL,
        reason TEXT NOT NULL,
        at_ms BIGINT NOT NULL,
        PRIMARY KEY (approval, approver)
    )",
    ],
    &[
        "CREATE TABLE zt_quarantines (
        target TEXT NOT NULL PRIMARY KEY,
        reason TEXT NOT NULL,
        by_whom TEXT NOT NULL,
        decision_id TEXT NOT NULL,
        at_ms BIGINT NOT NULL,
        released_at_ms BIGINT
    )",
        "CREATE TABLE zt_behaviour (
        agent TEXT NOT NULL,
        replica TEXT NOT NULL,
        updated_ms BIGINT NOT NULL,
        state TEXT NOT NULL,
        PRIMARY KEY (agent, replica)
    )",
        "CREATE INDEX zt_behaviour_updated ON zt_behaviour (updated_ms)",
    ],
];

impl Store {
    /// Opens (creating if needed) the store at `location` and brings its schema up to date.
    pub async fn open(location: &Location) -> Result<Self, StoreError> {
        let open_error = |source| StoreError::Open {
            location: location.to_string(),
            source,
        };
        let backend = match location {
            Location::Sqlite(path) => {
                private_files(path).map_err(|e| open_error(sqlx::Error::Io(e)))?;
                let options = SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Full)
                    .busy_timeout(Duration::from_secs(5))
                    .foreign_keys(true);
                let pool = SqlitePoolOptions::new()
                    .max_connections(4)
                    .connect_with(options)
                    .await
                    .map_err(open_error)?;
                Backend::Sqlite(
                    pool,
                    appender::Appender::open(path, appender::RESTART_FRAMES)?,
                )
            }
            Location::Postgres(url) => {
                // A statement that runs longer than this is cancelled by the server; a
                // connection that cannot be had (the server is down) fails after
                // `PG_CONNECT_TIMEOUT`. Either way the decision waiting on it is denied.
                let options = PgConnectOptions::from_str(url)
                    .map_err(open_error)?
                    .options([("statement_timeout", PG_STATEMENT_TIMEOUT)]);
                let pool = PgPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(PG_CONNECT_TIMEOUT)
                    .connect_with(options)
                    .await
                    .map_err(open_error)?;
                Backend::Postgres(pool)
            }
        };
        let store = Self {
            backend,
            location: location.clone(),
            local: changes::LocalFeed::new(),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Opens an SQLite store in `dir`, under the standard file name.
    pub async fn open_in(dir: &Path) -> Result<Self, StoreError> {
        Self::open(&Location::Sqlite(dir.join(SQLITE_FILE))).await
    }

    pub fn location(&self) -> &Location {
        &self.location
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let known = MIGRATIONS.len() as i64;
        macro_rules! run {
            ($pool:expr, $lock:expr, $insert_version:expr, $seq_key:expr) => {{
                let mut tx = $pool.begin().await?;
                if let Some(lock) = $lock {
                    tx.execute(lock).await?;
                }
                tx.execute(
                    "CREATE TABLE IF NOT EXISTS zt_schema_version (version BIGINT NOT NULL)",
                )
                .await?;
                let row = sqlx::query("SELECT MAX(version) AS v FROM zt_schema_version")
                    .fetch_one(&mut *tx)
                    .await?;
                let found: i64 = row.try_get::<Option<i64>, _>("v")?.unwrap_or(0);
                if found > known {
                    return Err(StoreError::TooNew { found, known });
                }
                for (i, statements) in MIGRATIONS.iter().enumerate().skip(found as usize) {
                    for statement in *statements {
                        // The templates are constants; only the sequence type differs.
                        let sql = statement.replace("{seq_key}", $seq_key);
                        tx.execute(sqlx::AssertSqlSafe(sql)).await?;
                    }
                    sqlx::query($insert_version)
                        .bind(i as i64 + 1)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
            }};
        }
        match &self.backend {
            Backend::Sqlite(pool, _) => run!(
                pool,
                None::<&str>,
                "INSERT INTO zt_schema_version (version) VALUES (?)",
                // The rowid itself: records are stored once, in sequence order.
                "INTEGER PRIMARY KEY"
            ),
            // Replicas starting together must not migrate at once.
            Backend::Postgres(pool) => run!(
                pool,
                Some("SELECT pg_advisory_xact_lock(7247016)"),
                "INSERT INTO zt_schema_version (version) VALUES ($1)",
                "BIGINT PRIMARY KEY"
            ),
        }
        Ok(())
    }

    /// Records that a policy set became active.
    pub async fn record_activation(&self, activation: &Activation) -> Result<(), StoreError> {
        let files = activation.files.to_string();
        match &self.backend {
            Backend::Sqlite(_, appender) => {
                let version = activation.version.clone();
                let at = activation.activated_at_ms;
                appender
                    .write(move |conn| {
                        conn.prepare_cached(
                            "INSERT INTO zt_policy_activations (id, version, activated_at_ms, files)
                             VALUES ((SELECT COALESCE(MAX(id), 0) + 1 FROM zt_policy_activations), ?1, ?2, ?3)",
                        )?
                        .execute(rusqlite::params![version, at, files])?;
                        Ok(())
                    })
                    .await?;
            }
            Backend::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                tx.execute("LOCK TABLE zt_policy_activations IN EXCLUSIVE MODE")
                    .await?;
                sqlx::query(
                    "INSERT INTO zt_policy_activations (id, version, activated_at_ms, files)
                     VALUES ((SELECT COALESCE(MAX(id), 0) + 1 FROM zt_policy_activations), $1, $2, $3)",
                )
                .bind(&activation.version)
                .bind(activation.activated_at_ms)
                .bind(&files)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
            }
        };
        Ok(())
    }

    /// The most recent activations, newest first.
    pub async fn activations(&self, limit: u32) -> Result<Vec<Activation>, StoreError> {
        let rows = match &self.backend {
            Backend::Sqlite(pool, _) => {
                let rows = sqlx::query("SELECT version, activated_at_ms, files FROM zt_policy_activations ORDER BY id DESC LIMIT ?")
                    .bind(i64::from(limit))
                    .fetch_all(pool)
                    .await?;
                rows.iter()
                    .map(activation_from_sqlite)
                    .collect::<Result<Vec<_>, _>>()?
            }
            Backend::Postgres(pool) => {
                let rows = sqlx::query("SELECT version, activated_at_ms, files FROM zt_policy_activations ORDER BY id DESC LIMIT $1")
                    .bind(i64::from(limit))
                    .fetch_all(pool)
                    .await?;
                rows.iter()
                    .map(activation_from_pg)
                    .collect::<Result<Vec<_>, _>>()?
            }
        };
        Ok(rows)
    }

    /// Checks that the store answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(pool, _) => {
                pool.execute("SELECT 1").await?;
            }
            Backend::Postgres(pool) => {
                pool.execute("SELECT 1").await?;
            }
        }
        Ok(())
    }

    /// Whether the store takes evidence again after appends failed (a full disk, a database
    /// or table that went away): reads the end of the evidence tables, and writes and commits
    /// one small row (the time, under `health_probe` in `zt_meta`) the way evidence is written
    /// (on SQLite, on the append thread, synced).
    pub async fn probe_write(&self, now_ms: i64) -> Result<(), StoreError> {
        const TABLES: &str = "SELECT (SELECT MAX(seq) FROM zt_evidence_records),
                                     (SELECT MAX(tree_size) FROM zt_evidence_checkpoints)";
        let value = now_ms.to_string();
        match &self.backend {
            Backend::Sqlite(_, appender) => {
                appender
                    .write(move |conn| {
                        conn.prepare_cached(TABLES)?.query_row([], |_| Ok(()))?;
                        conn.prepare_cached(
                            "INSERT INTO zt_meta (name, value) VALUES ('health_probe', ?1)
                             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                        )?
                        .execute(rusqlite::params![value])?;
                        Ok(())
                    })
                    .await?;
            }
            Backend::Postgres(pool) => {
                pool.execute(TABLES).await?;
                sqlx::query(
                    "INSERT INTO zt_meta (name, value) VALUES ('health_probe', $1)
                     ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                )
                .bind(value)
                .execute(pool)
                .await?;
            }
        }
        Ok(())
    }

    /// Closes the pool, waiting for connections to finish. On SQLite the evidence append
    /// connection closes when the last clone of the store is dropped.
    pub async fn close(&self) {
        match &self.backend {
            Backend::Sqlite(pool, _) => pool.close().await,
            Backend::Postgres(pool) => pool.close().await,
        }
    }
}

macro_rules! activation_from {
    ($name:ident, $row:ty) => {
        fn $name(row: &$row) -> Result<Activation, StoreError> {
            let files: String = row.try_get("files")?;
            Ok(Activation {
                version: row.try_get("version")?,
                activated_at_ms: row.try_get("activated_at_ms")?,
                files: serde_json::from_str(&files)
                    .map_err(|e| StoreError::Corrupt(format!("activation files: {e}")))?,
            })
        }
    };
}
activation_from!(activation_from_sqlite, sqlx::sqlite::SqliteRow);
activation_from!(activation_from_pg, sqlx::postgres::PgRow);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_and_hide_passwords() {
        assert_eq!(
            Location::parse("data/z.db").unwrap(),
            Location::Sqlite("data/z.db".into())
        );
        assert_eq!(
            Location::parse("sqlite:/tmp/z.db").unwrap(),
            Location::Sqlite("/tmp/z.db".into())
        );
        let pg = Location::parse("postgres://u:secret@h:5432/db").unwrap();
        assert_eq!(pg.to_string(), "postgres://u:***@h:5432/db");
        assert!(!format!("{pg}").contains("secret"));
        for bad in ["", "mysql://x", "sqlite:"] {
            assert!(Location::parse(bad).is_err(), "{bad:?}");
        }
    }

    async fn round_trip(store: &Store) {
        let marker = format!("sha256:{}", std::process::id());
        for n in 0..2 {
            store
                .record_activation(&Activation {
                    version: marker.clone(),
                    activated_at_ms: n,
                    files: serde_json::json!([{"path": "a.cedar", "n": n}]),
                })
                .await
                .unwrap();
        }
        let got = store.activations(2).await.unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].activated_at_ms, 1, "newest first");
        assert_eq!(got[0].version, marker);
        assert_eq!(
            got[0].files,
            serde_json::json!([{"path": "a.cedar", "n": 1}])
        );
    }

    #[tokio::test]
    async fn sqlite_store_migrates_once_and_keeps_activations() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_in(dir.path()).await.unwrap();
        round_trip(&store).await;
        store.close().await;
        // Reopening applies no migration twice and keeps the data.
        let store = Store::open_in(dir.path()).await.unwrap();
        assert_eq!(store.activations(10).await.unwrap().len(), 2);
        let Backend::Sqlite(pool, _) = &store.backend else {
            unreachable!()
        };
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(pool)
            .await
            .unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(pool)
            .await
            .unwrap();
        assert_eq!(sync, 2, "synchronous=FULL");
    }

    #[tokio::test]
    async fn a_store_from_a_newer_build_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_in(dir.path()).await.unwrap();
        let Backend::Sqlite(pool, _) = &store.backend else {
            unreachable!()
        };
        sqlx::query("INSERT INTO zt_schema_version (version) VALUES (99)")
            .execute(pool)
            .await
            .unwrap();
        store.close().await;
        let err = Store::open_in(dir.path()).await.unwrap_err();
        assert!(matches!(err, StoreError::TooNew { found: 99, .. }), "{err}");
    }

    /// The PostgreSQL URL for tests: `ZTINFRA_TEST_POSTGRES_URL`. Unset, the test is skipped with
    /// a message, except in CI (`CI=true`), where a missing database fails the run.
    pub(crate) fn postgres_url() -> Option<String> {
        match std::env::var("ZTINFRA_TEST_POSTGRES_URL") {
            Ok(url) if !url.is_empty() => Some(url),
            _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
                panic!("ZTINFRA_TEST_POSTGRES_URL is unset, and CI requires the PostgreSQL tests")
            }
            _ => {
                eprintln!("skipped: set ZTINFRA_TEST_POSTGRES_URL to run the PostgreSQL tests");
                None
            }
        }
    }

    /// A PostgreSQL URL whose connections use a new, empty schema of their own, so that tests
    /// and concurrent runs do not meet.
    pub(crate) async fn fresh_schema(url: &str, name: &str) -> String {
        let schema = format!("zt_test_{name}_{}", std::process::id());
        let admin = PgPool::connect(url).await.unwrap();
        admin
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
            )))
            .await
            .unwrap();
        admin.close().await;
        format!(
            "{url}{}options=-c%20search_path%3D{schema}",
            if url.contains('?') { "&" } else { "?" }
        )
    }

    #[tokio::test]
    async fn postgres_store_keeps_activations() {
        let Some(url) = postgres_url() else { return };
        let scoped = fresh_schema(&url, "activations").await;
        let store = Store::open(&Location::parse(&scoped).unwrap())
            .await
            .unwrap();
        round_trip(&store).await;
        store.close().await;
        let store = Store::open(&Location::parse(&scoped).unwrap())
            .await
            .unwrap();
        assert_eq!(store.activations(10).await.unwrap().len(), 2);
        store.close().await;
    }
}
