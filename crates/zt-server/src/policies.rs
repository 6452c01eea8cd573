//! The active policy set: read from a directory (one node; watched for changes) or from the
//! versions pushed to the store (replicas sharing it; each new version is announced on the
//! store's change feed and activated by every replica), swapped atomically.
//!
//! Architecture invariant: a request sees one whole policy set. The engine is immutable and
//! held behind an `ArcSwap`; a reload builds a new engine completely, and only a set that
//! loaded without error replaces the active one. A failed reload leaves the previous set
//! active and is reported (API, logs, metrics).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::Mutex;
use utoipa::ToSchema;
use zt_core::policy::ENTITIES_FILE;
use zt_core::{Engine, FileInfo, FileKind, PolicyError, SourceFile, ValidationCache};
use zt_store::{Activation, Store, StoreError, StoredPolicyVersion};

use crate::now_ms;

/// The largest policy file read, so that a stray huge file cannot exhaust memory.
pub const MAX_POLICY_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Reads every policy, schema and test file under `dir` (recursively, skipping hidden entries),
/// with paths relative to `dir`.
pub fn read_policy_dir(dir: &Path) -> Result<Vec<SourceFile>, PolicyError> {
    let mut files = Vec::new();
    let error = |path: &Path, message: String| PolicyError {
        file: path.display().to_string(),
        line: None,
        column: None,
        message,
    };
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let entries = std::fs::read_dir(&current)
            .map_err(|e| error(&current, format!("cannot read the policy directory: {e}")))?;
        for entry in entries {
            let entry = entry.map_err(|e| error(&current, format!("cannot list: {e}")))?;
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let meta =
                std::fs::metadata(&path).map_err(|e| error(&path, format!("cannot read: {e}")))?;
            if meta.is_dir() {
                pending.push(path);
                continue;
            }
            let relative = path
                .strip_prefix(dir)
                .unwrap_or(&path)
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            if FileKind::of(&relative).is_none() {
                continue;
            }
            if meta.len() > MAX_POLICY_FILE_BYTES {
                return Err(error(
                    Path::new(&relative),
                    format!(
                        "is {} bytes; policy files are limited to {MAX_POLICY_FILE_BYTES} bytes",
                        meta.len()
                    ),
                ));
            }
            let bytes =
                std::fs::read(&path).map_err(|e| error(&path, format!("cannot read: {e}")))?;
            let text = String::from_utf8(bytes).map_err(|e| {
                error(
                    Path::new(&relative),
                    format!(
                        "is not valid UTF-8 (at byte {})",
                        e.utf8_error().valid_up_to()
                    ),
                )
            })?;
            files.push(SourceFile {
                path: relative,
                text,
            });
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

/// An edit of the entity file: gets its entities, returns the new ones (or why not).
pub type EntityEdit =
    Arc<dyn Fn(Vec<serde_json::Value>) -> Result<Vec<serde_json::Value>, String> + Send + Sync>;

/// Applies `edit` to the entity file among `files` (none: no entities), and returns its new text.
fn edit_entity_file(
    files: &mut Vec<SourceFile>,
    edit: &EntityEdit,
) -> Result<String, EntityEditError> {
    let current = match files.iter().find(|f| f.path == ENTITIES_FILE) {
        None => Vec::new(),
        Some(file) => match serde_json::from_str(&file.text) {
            Ok(serde_json::Value::Array(items)) => items,
            _ => {
                return Err(EntityEditError::Invalid(format!(
                    "`{ENTITIES_FILE}` does not hold a JSON array; fix or replace it first"
                )));
            }
        },
    };
    let edited = edit(current).map_err(EntityEditError::Invalid)?;
    let mut text = serde_json::to_string_pretty(&edited)
        .map_err(|e| EntityEditError::Invalid(e.to_string()))?;
    text.push('\n');
    files.retain(|f| f.path != ENTITIES_FILE);
    files.push(SourceFile {
        path: ENTITIES_FILE.into(),
        text: text.clone(),
    });
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(text)
}

/// Writes the edited entity file and returns the set loaded with it.
fn write_entities(
    dir: &Path,
    cache: &std::sync::Mutex<ValidationCache>,
    edit: &EntityEdit,
) -> Result<Engine, EntityEditError> {
    let path = dir.join(ENTITIES_FILE);
    let io = |e: std::io::Error| EntityEditError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let mut files = read_policy_dir(dir).map_err(|e| EntityEditError::Rejected(vec![e]))?;
    let text = edit_entity_file(&mut files, edit)?;
    let engine = load_cached(&files, cache).map_err(EntityEditError::Rejected)?;
    crate::write_private_file(&path, text.as_bytes()).map_err(io)?;
    Ok(engine)
}

/// A policy set's files as the store keeps them: `[{"path": …, "text": …}]`.
pub fn files_to_json(files: &[SourceFile]) -> String {
    let files: Vec<serde_json::Value> = files
        .iter()
        .map(|f| serde_json::json!({"path": f.path, "text": f.text}))
        .collect();
    serde_json::Value::Array(files).to_string()
}

/// The files of a stored version.
pub fn files_from_json(json: &str) -> Result<Vec<SourceFile>, PolicyError> {
    #[derive(serde::Deserialize)]
    struct File {
        path: String,
        text: String,
    }
    let files: Vec<File> = serde_json::from_str(json).map_err(|e| PolicyError {
        file: "<store>".into(),
        line: None,
        column: None,
        message: format!("the stored policy version is unreadable: {e}"),
    })?;
    Ok(files
        .into_iter()
        .map(|f| SourceFile {
            path: f.path,
            text: f.text,
        })
        .collect())
}

/// The change feed topic of pushed policy versions (key: the version's number).
pub const TOPIC_POLICY: &str = "policy.version";

/// Where the active set comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicySource {
    /// A directory on this node: the single-node mode, watched for changes.
    Dir(PathBuf),
    /// The newest version pushed to the store (`ztinfra policy push`), for replicas sharing it.
    Store,
}

impl std::fmt::Display for PolicySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dir(dir) => write!(f, "{}", dir.display()),
            Self::Store => f.write_str("store"),
        }
    }
}

/// A version pushed to the store, as the status tells it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct PushedVersion {
    pub number: u64,
    pub pushed_by: String,
    /// Milliseconds since the Unix epoch.
    pub pushed_at_ms: i64,
    pub note: String,
}

impl From<&StoredPolicyVersion> for PushedVersion {
    fn from(v: &StoredPolicyVersion) -> Self {
        Self {
            number: v.number,
            pushed_by: v.pushed_by.clone(),
            pushed_at_ms: v.pushed_at_ms,
            note: v.note.clone(),
        }
    }
}

/// The newest version pushed to the store; an error when none was.
async fn newest_version(store: &Store) -> Result<StoredPolicyVersion, Vec<PolicyError>> {
    store
        .policy_version(None)
        .await
        .map_err(|e| store_error(&e))?
        .ok_or_else(|| {
            vec![PolicyError {
                file: "<store>".into(),
                line: None,
                column: None,
                message: "no policy set was pushed to the store yet: push one first (`ztinfra policy push DIR --store …`)".into(),
            }]
        })
}

fn store_error(e: &StoreError) -> Vec<PolicyError> {
    vec![PolicyError {
        file: "<store>".into(),
        line: None,
        column: None,
        message: format!("cannot read the policy versions: {}", crate::error_chain(e)),
    }]
}

/// Runs `work` on a thread of its own at the lowest CPU priority (nice 19 on Linux): loading a
/// policy set (reading, parsing, type-checking and indexing: tens of milliseconds for a
/// thousand policies) and freeing the one it replaced. On a busy core the decisions in flight
/// come first and this work waits, rather than a reload stalling every decision behind it.
fn behind_decisions(work: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("ztinfra-policy-load".into())
        .spawn(move || {
            lower_this_threads_priority();
            work();
        })
        .map(drop)
}

/// Runs `load` [`behind_decisions`], with a failure to run it as a policy error.
async fn behind<T: Send + 'static>(
    load: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Vec<PolicyError>> {
    load_behind_decisions(load).await.map_err(|message| {
        vec![PolicyError {
            file: "<reload>".into(),
            line: None,
            column: None,
            message,
        }]
    })
}

/// Runs `load` [`behind_decisions`] and waits for it; the error says why it did not finish.
async fn load_behind_decisions<T: Send + 'static>(
    load: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let (done, result) = tokio::sync::oneshot::channel();
    // The receiver is gone only if the server is stopping.
    behind_decisions(move || drop(done.send(load())))
        .map_err(|e| format!("cannot start the policy loader: {e}"))?;
    result
        .await
        .map_err(|_| "the policy loader stopped before it finished".to_owned())
}

#[cfg(target_os = "linux")]
fn lower_this_threads_priority() {
    // On Linux the nice value belongs to the thread, and lowering it needs no privilege.
    let thread = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(thread), 19) {
        tracing::debug!(error = %e, "the policy loader runs at normal priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_this_threads_priority() {}

/// Reads and loads the set in `dir`, type-checking only what `cache` has not seen validate.
pub fn load_dir(
    dir: &Path,
    cache: &std::sync::Mutex<ValidationCache>,
) -> Result<Engine, Vec<PolicyError>> {
    let files = read_policy_dir(dir).map_err(|e| vec![e])?;
    load_cached(&files, cache)
}

fn load_cached(
    files: &[SourceFile],
    cache: &std::sync::Mutex<ValidationCache>,
) -> Result<Engine, Vec<PolicyError>> {
    // A load that panicked leaves the cache empty or as it was: safe to use either way.
    let mut cache = cache
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let loaded = Engine::load_cached(files, &mut cache);
    metrics::counter!("ztinfra_policy_validated_total").increment(cache.last_validated() as u64);
    tracing::debug!(
        validated = cache.last_validated(),
        "policies type-checked (the others were unchanged)"
    );
    loaded
}

/// The last reload that failed, while the previous set stayed active.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReloadFailure {
    /// Milliseconds since the Unix epoch.
    pub at_ms: i64,
    pub errors: Vec<PolicyError>,
}

/// What `GET /v1/policies` tells.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PolicyStatus {
    /// `sha256:<hex>` of the active set.
    pub version: String,
    /// The policy directory, or `store` for the versions pushed to the store.
    pub source: String,
    /// With `source` `store`: the pushed version that is active.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pushed: Option<PushedVersion>,
    /// Milliseconds since the Unix epoch when the active set was loaded.
    pub loaded_at_ms: i64,
    pub policies: usize,
    pub files: Vec<FileInfo>,
    /// Validator warnings of the active set (for example, a policy that can never apply).
    pub warnings: Vec<PolicyError>,
    /// Set when the newest attempt to reload failed: the active set is older than the files.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_reload_error: Option<ReloadFailure>,
}

#[derive(Debug)]
struct Active {
    engine: Arc<Engine>,
    loaded_at_ms: i64,
    pushed: Option<PushedVersion>,
}

/// A set loaded, and the pushed version it came from (from the store).
type Loaded = (Engine, Option<PushedVersion>);

/// The active set and how to reload it.
#[derive(Debug)]
pub struct Policies {
    /// Where the set is read, at start, on change and on reload.
    source: PolicySource,
    active: ArcSwap<Active>,
    last_error: std::sync::Mutex<Option<ReloadFailure>>,
    /// Held by a reload, and by an entity edit from reading the file to activating the set.
    reloading: Mutex<()>,
    /// What the previous load validated, so that a reload type-checks only changed policies.
    validation: Arc<std::sync::Mutex<ValidationCache>>,
    store: Store,
}

/// Why an edit of the entity store was not applied.
#[derive(Debug, thiserror::Error)]
pub enum EntityEditError {
    /// The body is not an array of entities in Cedar's entity JSON format.
    #[error("{0}")]
    Invalid(String),
    /// The policy set would not load with the edited entities; nothing was written.
    #[error("the policy set would not load with these entities")]
    Rejected(Vec<PolicyError>),
    /// The entity file could not be read or written.
    #[error("cannot update `{path}`: {message}")]
    Io { path: String, message: String },
    /// The store could not take the new version.
    #[error("cannot store the edited set: {0}")]
    Store(String),
}

/// The result of a reload that succeeded.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Reloaded {
    pub version: String,
    /// Whether the version differs from the one active before.
    pub changed: bool,
    pub policies: usize,
}

impl Policies {
    /// Loads the initial set. Failing here fails start-up: a service never starts with a set
    /// that did not load.
    pub async fn start(source: PolicySource, store: Store) -> Result<Self, Vec<PolicyError>> {
        let validation = Arc::new(std::sync::Mutex::new(ValidationCache::default()));
        let (engine, pushed) = Self::read(&source, &store, &validation).await?;
        let policies = Self {
            source,
            active: ArcSwap::from_pointee(Active {
                engine: Arc::new(engine),
                loaded_at_ms: now_ms(),
                pushed,
            }),
            last_error: std::sync::Mutex::new(None),
            reloading: Mutex::new(()),
            validation,
            store,
        };
        policies.record(&policies.engine()).await;
        Ok(policies)
    }

    /// Reads and loads the set from its source: the directory, or the newest pushed version.
    async fn read(
        source: &PolicySource,
        store: &Store,
        validation: &Arc<std::sync::Mutex<ValidationCache>>,
    ) -> Result<Loaded, Vec<PolicyError>> {
        match source {
            PolicySource::Dir(dir) => {
                let (dir, validation) = (dir.clone(), Arc::clone(validation));
                behind(move || load_dir(&dir, &validation).map(|e| (e, None))).await?
            }
            PolicySource::Store => {
                Self::load_version(newest_version(store).await?, validation).await
            }
        }
    }

    /// Loads a pushed version's set.
    async fn load_version(
        version: StoredPolicyVersion,
        validation: &Arc<std::sync::Mutex<ValidationCache>>,
    ) -> Result<Loaded, Vec<PolicyError>> {
        let files = files_from_json(&version.files).map_err(|e| vec![e])?;
        let pushed = PushedVersion::from(&version);
        let validation = Arc::clone(validation);
        behind(move || load_cached(&files, &validation).map(|e| (e, Some(pushed)))).await?
    }

    /// The active engine.
    pub fn engine(&self) -> Arc<Engine> {
        Arc::clone(&self.active.load().engine)
    }

    /// Runs `f` on the active engine without taking a reference count.
    pub fn with_engine<R>(&self, f: impl FnOnce(&Engine) -> R) -> R {
        f(&self.active.load().engine)
    }

    /// Reloads from the source (from the store: only when a newer version was pushed). On
    /// failure the active set stays, and the errors are kept for `GET /v1/policies`.
    pub async fn reload(&self) -> Result<Reloaded, Vec<PolicyError>> {
        let _one_at_a_time = self.reloading.lock().await;
        let loaded = match &self.source {
            PolicySource::Store => {
                let newest = newest_version(&self.store).await?;
                let active = self.active.load();
                if active
                    .pushed
                    .as_ref()
                    .is_some_and(|p| p.number >= newest.number)
                {
                    return Ok(Reloaded {
                        version: active.engine.version().to_owned(),
                        changed: false,
                        policies: active.engine.policies().policy_count(),
                    });
                }
                Self::load_version(newest, &self.validation).await
            }
            PolicySource::Dir(_) => Self::read(&self.source, &self.store, &self.validation).await,
        };
        self.activate(loaded).await
    }

    /// Makes a freshly loaded set active, or reports why it did not load. The caller holds
    /// `reloading`.
    async fn activate(
        &self,
        loaded: Result<Loaded, Vec<PolicyError>>,
    ) -> Result<Reloaded, Vec<PolicyError>> {
        match loaded {
            Ok((engine, pushed)) => {
                let previous = self.engine();
                let changed = previous.version() != engine.version();
                let newly_pushed = pushed.is_some() && pushed != self.active.load().pushed;
                if let Some(p) = &pushed
                    && newly_pushed
                {
                    let delay = (now_ms() - p.pushed_at_ms).max(0) as f64 / 1000.0;
                    metrics::histogram!("ztinfra_policy_push_to_activation_seconds").record(delay);
                }
                let reloaded = Reloaded {
                    version: engine.version().to_owned(),
                    changed,
                    policies: engine.policies().policy_count(),
                };
                let engine = Arc::new(engine);
                // The set and the error it clears change together, under the lock that
                // `status` reads both under.
                let (replaced, recovered) = {
                    let mut last = self
                        .last_error
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let replaced = (changed || newly_pushed).then(|| {
                        self.active.swap(Arc::new(Active {
                            engine: Arc::clone(&engine),
                            loaded_at_ms: now_ms(),
                            pushed: pushed.clone(),
                        }))
                    });
                    (replaced, last.take().is_some())
                };
                if recovered {
                    tracing::info!(version = %reloaded.version, "policy set recovered: the files load again");
                }
                if let Some(replaced) = replaced {
                    // Freeing a large set takes milliseconds: not on the decision path either
                    // (a decision still holding it frees it when done). Should the thread not
                    // start, the set is freed here when the closure is dropped.
                    let _ = behind_decisions(move || drop((replaced, previous)));
                    self.record(&engine).await;
                    tracing::info!(version = %reloaded.version, policies = reloaded.policies, pushed = ?pushed.as_ref().map(|p| p.number), "policy set activated");
                }
                metrics::counter!("ztinfra_policy_reloads_total", "outcome" => "ok").increment(1);
                Ok(reloaded)
            }
            Err(errors) => {
                for e in &errors {
                    tracing::error!(error = %e, "policy reload failed; the previous set stays active");
                }
                *self
                    .last_error
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(ReloadFailure {
                    at_ms: now_ms(),
                    errors: errors.clone(),
                });
                metrics::counter!("ztinfra_policy_reloads_total", "outcome" => "error")
                    .increment(1);
                Err(errors)
            }
        }
    }

    /// Edits the entity file (`entities.json` at the top of the policy set): `edit` gets its
    /// entities (none if there is no such file) and returns the new ones. The edited set is
    /// loaded in memory first; only if it loads is it kept and made active: from a directory,
    /// the file is replaced (written beside it, synced, then renamed over it); from the store,
    /// it becomes a new version (`by` made it), which every replica then activates (an edit
    /// that races another replica's is applied again to the newer version). Edits and reloads
    /// take turns, so a reload that read the set before the edit cannot activate after it.
    pub async fn edit_entities(
        &self,
        by: &str,
        edit: EntityEdit,
    ) -> Result<Reloaded, EntityEditError> {
        let _one_at_a_time = self.reloading.lock().await;
        let loaded = match &self.source {
            PolicySource::Dir(dir) => {
                let dir = dir.clone();
                let validation = Arc::clone(&self.validation);
                let engine = behind(move || write_entities(&dir, &validation, &edit))
                    .await
                    .map_err(|e| EntityEditError::Io {
                        path: ENTITIES_FILE.into(),
                        message: e
                            .into_iter()
                            .map(|e| e.message)
                            .collect::<Vec<_>>()
                            .join("; "),
                    })??;
                (engine, None)
            }
            PolicySource::Store => self.store_entities(by, edit).await?,
        };
        self.activate(Ok(loaded))
            .await
            .map_err(EntityEditError::Rejected)
    }

    /// An entity edit on the newest pushed version, stored as the next version and announced.
    async fn store_entities(&self, by: &str, edit: EntityEdit) -> Result<Loaded, EntityEditError> {
        let failed = |e: StoreError| EntityEditError::Store(crate::error_chain(&e));
        for _ in 0..5 {
            let newest = self
                .store
                .policy_version(None)
                .await
                .map_err(failed)?
                .ok_or_else(|| {
                    EntityEditError::Store("no policy set was pushed to the store".into())
                })?;
            let mut files =
                files_from_json(&newest.files).map_err(|e| EntityEditError::Rejected(vec![e]))?;
            let validation = Arc::clone(&self.validation);
            let edit = Arc::clone(&edit);
            let (engine, files) = behind(move || {
                edit_entity_file(&mut files, &edit)?;
                let engine = load_cached(&files, &validation).map_err(EntityEditError::Rejected)?;
                Ok::<_, EntityEditError>((engine, files))
            })
            .await
            .map_err(EntityEditError::Rejected)??;
            let version = StoredPolicyVersion {
                number: newest.number + 1,
                digest: engine.version().to_owned(),
                files: files_to_json(&files),
                pushed_by: by.to_owned(),
                pushed_at_ms: now_ms(),
                note: "entity edit".into(),
            };
            match self.store.add_policy_version(&version).await {
                Ok(()) => {
                    if let Err(e) = self
                        .store
                        .publish(TOPIC_POLICY, &version.number.to_string())
                        .await
                    {
                        // Stored: the other replicas take it at their next reload or feed resumption.
                        tracing::error!(error = %crate::error_chain(&e), "cannot announce the new policy version");
                    }
                    return Ok((engine, Some(PushedVersion::from(&version))));
                }
                // Another replica stored a version meanwhile: edit that one.
                Err(StoreError::Exists(_)) => continue,
                Err(e) => return Err(failed(e)),
            }
        }
        Err(EntityEditError::Store(
            "other versions kept arriving; try again".into(),
        ))
    }

    /// Follows the store's change feed and activates each version pushed (by `ztinfra policy
    /// push`, a rollback, or an entity edit on another replica) as it is announced; after the
    /// feed was lost, reads the newest version again. A version that does not load here leaves
    /// the previous one active and is reported, as a failed reload is.
    pub async fn follow(self: Arc<Self>) -> Result<(), StoreError> {
        let mut feed = self.store.subscribe().await?;
        tokio::spawn(async move {
            while let Some(item) = feed.recv().await {
                match item {
                    zt_store::changes::Feed::Change(change) if change.topic == TOPIC_POLICY => {}
                    zt_store::changes::Feed::Change(_) => continue,
                    zt_store::changes::Feed::Lost => {
                        tracing::warn!(
                            "the store's change feed was lost: policy versions pushed meanwhile are read when it is back"
                        );
                        continue;
                    }
                    zt_store::changes::Feed::Resumed => {}
                }
                let _ = self.reload().await;
            }
        });
        Ok(())
    }

    async fn record(&self, engine: &Engine) {
        metrics::gauge!("ztinfra_policies_active").set(engine.policies().policy_count() as f64);
        let activation = Activation {
            version: engine.version().to_owned(),
            activated_at_ms: now_ms(),
            files: serde_json::to_value(engine.policies().files()).unwrap_or_default(),
        };
        if let Err(e) = self.store.record_activation(&activation).await {
            tracing::error!(error = %crate::error_chain(&e), "cannot record the policy activation in the store");
        }
    }

    pub fn status(&self) -> PolicyStatus {
        // Under the lock an activation holds while it swaps the set and clears the error, so
        // that a new version is never shown with the error it cleared.
        let last = self
            .last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let active = self.active.load();
        let set = active.engine.policies();
        PolicyStatus {
            version: set.version().to_owned(),
            source: self.source.to_string(),
            pushed: active.pushed.clone(),
            loaded_at_ms: active.loaded_at_ms,
            policies: set.policy_count(),
            files: set.files().to_vec(),
            warnings: set.warnings().to_vec(),
            last_reload_error: last.clone(),
        }
    }

    /// Watches the policy directory and reloads on change, after changes settle for `quiet`.
    /// The returned watcher must be kept alive.
    pub fn watch(
        self: &Arc<Self>,
        quiet: Duration,
    ) -> Result<notify::RecommendedWatcher, notify::Error> {
        use notify::Watcher;
        let PolicySource::Dir(dir) = &self.source else {
            return Err(notify::Error::generic("only a policy directory is watched"));
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok_and(|e| !e.kind.is_access()) {
                    let _ = tx.send(());
                }
            })?;
        watcher.watch(dir, notify::RecursiveMode::Recursive)?;
        let policies = Arc::clone(self);
        tokio::spawn(async move {
            while rx.recv().await.is_some() {
                // Let a burst of writes (an editor saving, a checkout) settle.
                loop {
                    match tokio::time::timeout(quiet, rx.recv()).await {
                        Ok(Some(())) => continue,
                        Ok(None) => return,
                        Err(_) => break,
                    }
                }
                let _ = policies.reload().await;
            }
        });
        Ok(watcher)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn loads_run_behind_decisions() {
        let here = rustix::process::getpriority_process(None).unwrap();
        let loader = load_behind_decisions(|| rustix::process::getpriority_process(None))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(loader, 19);
        // The caller's own priority is untouched.
        assert_eq!(rustix::process::getpriority_process(None).unwrap(), here);
    }

    #[tokio::test]
    async fn a_load_that_panics_is_an_error_not_a_hang() {
        let outcome =
            load_behind_decisions(|| -> u32 { std::panic::panic_any("a broken loader") }).await;
        assert_eq!(
            outcome,
            Err("the policy loader stopped before it finished".to_owned())
        );
    }
}
