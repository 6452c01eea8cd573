//! The evidence log of a running service: group commit of records and their checkpoint, the
//! in-memory Merkle tree for proofs, and start-up recovery.
//!
//! Architecture invariant: a decision response is sent only after its record is durable. Each
//! handler hands its records to [`EvidenceLog::append`] and waits. One writer task takes every
//! record waiting at that moment, and those of the requests ready to be decided just after
//! (up to `max_batch`), seals them onto the chain, computes the root with their leaves, signs
//! one checkpoint over it, and writes records and checkpoint in one transaction (SQLite
//! `synchronous=FULL`, PostgreSQL's commit). Only then does the tree take the leaves, and are
//! the handlers told their receipts. While one batch commits, the next gathers: one fsync
//! serves many requests.
//!
//! The tree keeps in memory only the nodes above its tiles of 256 records, and the last tile's:
//! proofs read the leaves of the other tiles they need from the store ([`Shared::with_tree`]),
//! so memory does not grow with the log (about 64 bytes per record otherwise).
//!
//! The checkpoint is signed once per batch rather than per record: one Ed25519 signature costs
//! about 34 µs per core here, so signing per record would cap a core at about 30,000 records/s
//! before any other work; per batch, the cost is shared by every record in it, and every record
//! is still covered by a signature (its batch's checkpoint) plus an inclusion proof.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use utoipa::ToSchema;
use zt_evidence::checkpoint::{Checkpoint, Keyring, PublicKey, verify_note};
use zt_evidence::merkle::{Hash, Tiles, TreeError, leaf_hash};
use zt_evidence::{Chain, PendingRecord, Tree};
use zt_store::{LogId, Store, StoreError, StoredCheckpoint, StoredLog, StoredRecord};

use crate::keys::Signer;
use crate::now_ms;

/// The name of the log a store's first replica creates.
pub const FIRST_REPLICA: &str = "replica-0";
/// Records read per query when loading the log.
const PAGE: u32 = 50_000;
/// The longest the writer holds a batch open for records already on their way.
const GATHER: Duration = Duration::from_millis(1);
/// The tree in memory keeps the nodes below this height only for its last tile of
/// `2^TILE_HEIGHT` records: about a quarter of a byte per record instead of 64, so that memory
/// does not grow with the log; proofs read the one or two other tiles they need from the store.
const TILE_HEIGHT: u32 = 8;

#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    #[error("the evidence store failed")]
    Store(#[from] StoreError),
    #[error("the evidence writer has stopped")]
    WriterStopped,
    #[error("the records could not be committed: {0}")]
    Commit(String),
    #[error(
        "the stored evidence log is inconsistent: {0}; run `ztinfra evidence export` and `ztinfra evidence verify` to find out more"
    )]
    Inconsistent(String),
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error("record {0} is not in the log")]
    NoRecord(u64),
    #[error("there is no evidence log `{0}` in this store")]
    NoLog(String),
    #[error("`{0}` is not a replica name: use 1 to 64 letters, digits, `.`, `_` or `-`")]
    BadName(String),
    #[error(
        "this replica's evidence key ({key_id}) is in none of the store's {logs} evidence logs: a replica joins a shared store only explicitly, with `ztinfra replicas add NAME` (on this replica's data directory) or by starting with `--join NAME`"
    )]
    NotJoined { key_id: String, logs: usize },
}

/// Where a decision's record is in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, ToSchema)]
pub struct Receipt {
    /// The log the record is in: its origin, as its checkpoints name it.
    pub log: String,
    pub seq: u64,
    /// SHA-256 (hex) of the record's canonical encoding.
    pub hash: String,
    /// The size of the first signed checkpoint that includes the record.
    pub checkpoint_size: u64,
    /// SHA-256 (hex) of the record before it (all zeros for the first).
    #[serde(skip)]
    pub prev_hash: String,
}

/// The latest durable checkpoint.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Durable {
    /// The log's origin, as the note names it.
    pub log: String,
    pub tree_size: u64,
    /// Root hash, hex.
    pub root: String,
    /// The C2SP signed note; empty while the log is empty.
    pub note: String,
}

#[derive(Debug)]
struct Job {
    records: Vec<PendingRecord>,
    reply: oneshot::Sender<Result<Vec<Receipt>, String>>,
}

/// One log as this process holds it: its own (written by the writer task) or another
/// replica's (read, and brought up to date from the store before each answer).
#[derive(Debug)]
struct Shared {
    log: LogId,
    /// Decisions being made whose records are not yet handed to the writer.
    arriving: AtomicUsize,
    keyring: Keyring,
    store: Store,
    tree: RwLock<Tree>,
    durable: ArcSwap<Durable>,
    /// Set when a commit fails, cleared when one succeeds (or a probe write does).
    failing: AtomicBool,
}

/// The service's handle on its log, and on the other replicas' logs for reading.
#[derive(Debug, Clone)]
pub struct EvidenceLog {
    jobs: mpsc::Sender<Job>,
    shared: Arc<Shared>,
    signer: Arc<Signer>,
    /// This process's right to write its log, for as long as the log is open.
    writing: Arc<zt_store::WriterLock>,
    /// The other replicas' logs read so far, by origin, each with the chain its tree ends at
    /// (a few hundred bytes, and a quarter of a byte per record, each).
    others: Arc<tokio::sync::Mutex<HashMap<String, Arc<Other>>>>,
}

#[derive(Debug)]
struct Other {
    shared: Arc<Shared>,
    chain: tokio::sync::Mutex<Chain>,
}

/// One log, for reading: records, proofs, checkpoint and keys.
#[derive(Debug, Clone)]
pub struct LogView {
    shared: Arc<Shared>,
}

/// A record on its way to the log (see [`EvidenceLog::announce`]).
#[derive(Debug)]
pub struct Announcement {
    shared: Arc<Shared>,
}

impl Drop for Announcement {
    fn drop(&mut self) {
        self.shared.arriving.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An inclusion proof, as served.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct InclusionProof {
    pub seq: u64,
    pub tree_size: u64,
    /// The record's hash (hex); its Merkle leaf is SHA-256(0x00 || hash).
    pub record_hash: String,
    pub leaf_hash: String,
    pub root: String,
    pub proof: Vec<String>,
    /// The signed checkpoint for `tree_size`, when one was published at exactly that size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
}

/// One evidence log of the store, as listed.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LogInfo {
    /// Its origin: the name in its checkpoints, and what `?log=` takes.
    pub log: String,
    /// The replica that writes it.
    pub replica: String,
    pub created_at_ms: i64,
}

/// A consistency proof, as served.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ConsistencyProof {
    pub from: u64,
    pub to: u64,
    pub from_root: String,
    pub to_root: String,
    pub proof: Vec<String>,
}

fn hex_all(hashes: &[Hash]) -> Vec<String> {
    hashes.iter().map(Hash::to_hex).collect()
}

fn random_hex(bytes: usize) -> String {
    use rand_core::RngCore;
    let mut buf = vec![0u8; bytes];
    rand_core::OsRng.fill_bytes(&mut buf);
    hex::encode(buf)
}

/// Loads a log's keyring from the store.
pub async fn load_keyring(store: &Store, log: &StoredLog) -> Result<Keyring, EvidenceError> {
    let keys = store
        .keys(log.id)
        .await?
        .iter()
        .map(|json| {
            serde_json::from_str::<PublicKey>(json).map_err(|e| {
                EvidenceError::Inconsistent(format!("a stored public key is unreadable: {e}"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Keyring {
        origin: log.origin.clone(),
        keys,
    })
}

/// Checks a replica's name: 1 to 64 letters, digits, `.`, `_` or `-`.
pub fn check_replica_name(name: &str) -> Result<(), EvidenceError> {
    let fine = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if fine {
        Ok(())
    } else {
        Err(EvidenceError::BadName(name.to_owned()))
    }
}

/// The store's log named `wanted` (its origin, or its replica's name).
pub async fn find_log(store: &Store, wanted: &str) -> Result<StoredLog, EvidenceError> {
    store
        .evidence_logs()
        .await?
        .into_iter()
        .find(|log| log.origin == wanted || log.name == wanted)
        .ok_or_else(|| EvidenceError::NoLog(wanted.to_owned()))
}

/// The log this signing key signs, if it is in one.
pub async fn log_of(store: &Store, signer: &Signer) -> Result<Option<StoredLog>, EvidenceError> {
    let Some(id) = store.key_log(&signer.info().key_id).await? else {
        return Ok(None);
    };
    Ok(store
        .evidence_logs()
        .await?
        .into_iter()
        .find(|l| l.id == id))
}

/// Creates a log for a replica named `name`, signed by `signer`'s key; with `first`, only in
/// a store with no log yet.
async fn create_log(
    store: &Store,
    signer: &Signer,
    name: &str,
    first: bool,
) -> Result<StoredLog, EvidenceError> {
    let origin = format!("ztinfra/{}", random_hex(8));
    let public = PublicKey::new(&origin, &signer.verifying_key(), now_ms());
    let json =
        serde_json::to_string(&public).map_err(|e| EvidenceError::Inconsistent(e.to_string()))?;
    let id = store
        .add_evidence_log(
            name,
            &origin,
            &public.key_id,
            &json,
            public.created_at_ms,
            first,
        )
        .await?;
    Ok(StoredLog {
        id,
        name: name.to_owned(),
        origin,
        created_at_ms: public.created_at_ms,
    })
}

/// A record of an act of the log itself (a replica joining, a key rotation), which no policy
/// set takes part in: its `policy_version` is empty.
fn act(kind: &str, request: serde_json::Value, message: String) -> PendingRecord {
    PendingRecord {
        time_ms: now_ms(),
        caller: None,
        kind: Some(kind.into()),
        decision_id: uuid::Uuid::now_v7().to_string(),
        request,
        decision: "allow".into(),
        reasons: serde_json::json!([{"kind": "act", "message": message}]),
        policy_version: String::new(),
    }
}

/// Joins a replica to a store: creates its log, with `signer`'s key as the log's first key,
/// and records the act as the log's first record (kind `replica.join`, naming the replica,
/// the log, the key and `how` it joined), durable before this returns. The only way a key
/// enters a store that has a log already.
pub async fn join(
    store: &Store,
    signer: Arc<Signer>,
    name: &str,
    how: &str,
) -> Result<StoredLog, EvidenceError> {
    if let Some(log) = log_of(store, &signer).await? {
        return Err(StoreError::Exists(format!(
            "this replica's key is already in log `{}` ({})",
            log.name, log.origin
        ))
        .into());
    }
    check_replica_name(name)?;
    let log = create_log(store, &signer, name, false).await?;
    let evidence = EvidenceLog::open(store.clone(), Arc::clone(&signer), 1, None).await?;
    let record = act(
        "replica.join",
        serde_json::json!({
            "replica": name,
            "log": log.origin,
            "key_id": signer.info().key_id,
            "how": how,
        }),
        format!("replica `{name}` joined the store with an evidence log of its own"),
    );
    evidence.append(vec![record], None).await?;
    // The replica itself writes the log from now on.
    evidence.release().await;
    tracing::info!(replica = %name, log = %log.origin, key_id = %signer.info().key_id, "joined the store with a new evidence log");
    Ok(log)
}

impl EvidenceLog {
    /// Opens the log that `signer`'s key signs (a store with no log yet gets its first, for
    /// this replica; a store with logs but none of this key refuses: see [`join`]), loads
    /// every record hash into the tree, checks the tree against the latest checkpoint, and
    /// starts the writer.
    pub async fn open(
        store: Store,
        signer: Arc<Signer>,
        max_batch: usize,
        local_copy: Option<PathBuf>,
    ) -> Result<Self, EvidenceError> {
        let log = match log_of(&store, &signer).await? {
            Some(log) => log,
            None => {
                let not_joined = |logs| EvidenceError::NotJoined {
                    key_id: signer.info().key_id.clone(),
                    logs,
                };
                let logs = store.evidence_logs().await?.len();
                if logs > 0 {
                    return Err(not_joined(logs));
                }
                match create_log(&store, &signer, FIRST_REPLICA, true).await {
                    // Another replica created the first log meanwhile.
                    Err(EvidenceError::Store(StoreError::Exists(_))) => {
                        return Err(not_joined(1));
                    }
                    other => other?,
                }
            }
        };
        let writing = Arc::new(store.lock_log_writer(log.id).await?);
        let (shared, chain, last_key) = load(store, &log).await?;
        tracing::info!(origin = %log.origin, replica = %log.name, records = shared.durable.load().tree_size, key_id = %signer.info().key_id, "evidence log open");
        let shared = Arc::new(shared);
        if let Some(path) = local_copy {
            check_local_copy(&shared, &path).await?;
            tokio::spawn(keep_local_copy(Arc::clone(&shared), path));
        }
        let (jobs, rx) = mpsc::channel(4096);
        tokio::spawn(writer(
            rx,
            Arc::clone(&shared),
            Arc::clone(&signer),
            chain,
            max_batch.max(1),
        ));
        let log = Self {
            jobs,
            shared,
            signer,
            writing,
            others: Arc::default(),
        };
        // A key that signs this log for the first time after another did (`ztinfra keys
        // rotate`) first records that, so that a keyring never changes without a record.
        let key_id = log.signer.info().key_id.clone();
        if let Some(previous) = last_key.filter(|previous| *previous != key_id) {
            let record = act(
                "key.rotate",
                serde_json::json!({"key_id": key_id, "previous_key_id": previous}),
                format!("key {key_id} signs this log from now on, after key {previous}"),
            );
            log.append(vec![record], None).await?;
            tracing::info!(key_id = %key_id, previous = %previous, "the key rotation is recorded");
        }
        Ok(log)
    }

    /// Gives up the right to write this log at once (rather than when the process goes), for a
    /// command that wrote the log's first record before the replica starts.
    pub async fn release(self) {
        let Self { writing, .. } = self;
        if let Ok(lock) = Arc::try_unwrap(writing) {
            lock.release().await;
        }
    }

    /// Announces a record that will be appended soon, so that the writer can hold its batch
    /// open for it; the announcement ends when the returned value is handed to `append` or
    /// dropped.
    pub fn announce(&self) -> Announcement {
        self.shared.arriving.fetch_add(1, Ordering::Relaxed);
        Announcement {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Appends records and waits until they are durable. The receipts are in the order given.
    pub async fn append(
        &self,
        records: Vec<PendingRecord>,
        announced: Option<Announcement>,
    ) -> Result<Vec<Receipt>, EvidenceError> {
        let (reply, answer) = oneshot::channel();
        let sent = self.jobs.send(Job { records, reply }).await;
        drop(announced);
        sent.map_err(|_| EvidenceError::WriterStopped)?;
        match answer.await {
            Ok(Ok(receipts)) => Ok(receipts),
            Ok(Err(message)) => Err(EvidenceError::Commit(message)),
            Err(_) => Err(EvidenceError::WriterStopped),
        }
    }

    /// Signs the 32 bytes of a record hash (given in hex) with the log's signing key, for
    /// interfaces that answer every decision with its own signature (the `/actions` reference
    /// contract). Returns the key id and the base64 signature.
    pub fn sign_record_hash(&self, hash_hex: &str) -> Option<(String, String)> {
        use base64::Engine as _;
        let hash = Hash::from_hex(hash_hex)?;
        let signature = self.signer.sign(&hash.0);
        Some((
            self.signer.info().key_id.clone(),
            base64::engine::general_purpose::STANDARD.encode(signature.to_bytes()),
        ))
    }

    /// This replica's own log, for reading.
    pub fn own(&self) -> LogView {
        LogView {
            shared: Arc::clone(&self.shared),
        }
    }

    /// The latest durable checkpoint of this replica's log.
    pub fn checkpoint(&self) -> Arc<Durable> {
        self.shared.durable.load_full()
    }

    /// A log's keyring: this replica's as loaded, another's read from the store now (so that a
    /// key rotated there shows at once).
    pub async fn keyring(&self, log: Option<&str>) -> Result<Keyring, EvidenceError> {
        match log {
            Some(wanted) => match self.other_log(wanted).await? {
                Some(found) => load_keyring(&self.shared.store, &found).await,
                None => Ok(self.shared.keyring.clone()),
            },
            None => Ok(self.shared.keyring.clone()),
        }
    }

    /// The stored log `wanted` (an origin or a replica's name) names, unless it is this
    /// replica's own.
    async fn other_log(&self, wanted: &str) -> Result<Option<StoredLog>, EvidenceError> {
        if wanted == self.shared.keyring.origin {
            return Ok(None);
        }
        let found = find_log(&self.shared.store, wanted).await?;
        Ok((found.id != self.shared.log).then_some(found))
    }

    /// Every log of the store.
    pub async fn logs(&self) -> Result<Vec<LogInfo>, EvidenceError> {
        Ok(self
            .shared
            .store
            .evidence_logs()
            .await?
            .into_iter()
            .map(|log| LogInfo {
                log: log.origin,
                replica: log.name,
                created_at_ms: log.created_at_ms,
            })
            .collect())
    }

    /// A log of the store, for reading: this replica's when `log` is `None` or names it (by
    /// origin or replica name), another replica's otherwise, brought up to date from the store.
    pub async fn view(&self, log: Option<&str>) -> Result<LogView, EvidenceError> {
        let Some(wanted) = log else {
            return Ok(self.own());
        };
        let other = {
            let mut others = self.others.lock().await;
            match others.get(wanted) {
                Some(other) => Arc::clone(other),
                None => {
                    // Named by its replica, or not read yet: held under its origin.
                    let Some(found) = self.other_log(wanted).await? else {
                        return Ok(self.own());
                    };
                    match others.get(&found.origin) {
                        Some(other) => Arc::clone(other),
                        None => {
                            let (shared, chain, _) =
                                load(self.shared.store.clone(), &found).await?;
                            let other = Arc::new(Other {
                                shared: Arc::new(shared),
                                chain: tokio::sync::Mutex::new(chain),
                            });
                            others.insert(found.origin.clone(), Arc::clone(&other));
                            return Ok(LogView {
                                shared: Arc::clone(&other.shared),
                            });
                        }
                    }
                }
            }
        };
        catch_up_shared(&other.shared, &mut *other.chain.lock().await).await?;
        Ok(LogView {
            shared: Arc::clone(&other.shared),
        })
    }

    /// Whether evidence can be written: `false` from a failed commit until a commit, or a
    /// probe write made here, succeeds (so that a service nobody sends decisions to while it
    /// is failing can still become ready again).
    pub async fn writable(&self) -> bool {
        if !self.shared.failing.load(Ordering::Relaxed) {
            return true;
        }
        match self.shared.store.probe_write(now_ms()).await {
            Ok(()) => {
                self.shared.failing.store(false, Ordering::Relaxed);
                tracing::info!("the evidence store takes writes again");
                true
            }
            Err(e) => {
                tracing::debug!(error = %crate::error_chain(&e), "probe write failed");
                false
            }
        }
    }
}

impl LogView {
    pub fn keyring(&self) -> &Keyring {
        &self.shared.keyring
    }

    pub fn origin(&self) -> &str {
        &self.shared.keyring.origin
    }

    /// The latest durable checkpoint.
    pub fn checkpoint(&self) -> Arc<Durable> {
        self.shared.durable.load_full()
    }

    /// A durable record: its hash and canonical JSON, served only once its bytes are checked
    /// against its hash, and its hash against the tree (a record edited in the store, hash
    /// and all, is [`EvidenceError::Inconsistent`], counted in
    /// `ztinfra_evidence_corrupt_total`, and never served).
    pub async fn record(&self, seq: u64) -> Result<StoredRecord, EvidenceError> {
        if seq >= self.checkpoint().tree_size {
            return Err(EvidenceError::NoRecord(seq));
        }
        let stored = self
            .shared
            .store
            .evidence_records(self.shared.log, seq, seq.saturating_add(1), 1)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| corrupt(format!("record {seq} is missing from the store")))?;
        let hash = Hash::from_hex(&stored.hash)
            .ok_or_else(|| corrupt(format!("record {seq} has a malformed hash")))?;
        if Hash::digest(stored.body.as_bytes()) != hash {
            return Err(corrupt(format!(
                "record {seq} does not match its hash: its stored text was altered"
            )));
        }
        let leaf = self
            .shared
            .with_tree(|tree, tiles| tree.leaf(seq, tiles))
            .await?;
        if leaf_hash(&hash.0) != leaf {
            return Err(corrupt(format!(
                "record {seq} does not match the log's tree: its stored hash was altered"
            )));
        }
        Ok(stored)
    }

    /// The durable records `from..to` (at most 1,000), as stored: for browsing. Each is checked
    /// against its hash and the tree only when read by itself ([`LogView::record`]).
    pub async fn records(&self, from: u64, to: u64) -> Result<Vec<StoredRecord>, EvidenceError> {
        let to = to.min(self.checkpoint().tree_size);
        if from >= to {
            return Ok(Vec::new());
        }
        Ok(self
            .shared
            .store
            .evidence_records(self.shared.log, from, to, 1000)
            .await?)
    }

    /// The inclusion proof of record `seq` in the tree of `size` records (the latest checkpoint's
    /// size by default). Only durable sizes are served.
    pub async fn inclusion(
        &self,
        seq: u64,
        size: Option<u64>,
    ) -> Result<InclusionProof, EvidenceError> {
        let durable = self.checkpoint();
        let size = size.unwrap_or(durable.tree_size);
        if size > durable.tree_size {
            return Err(TreeError::TooLarge {
                size,
                len: durable.tree_size,
            }
            .into());
        }
        let (proof, leaf, root) = self
            .shared
            .with_tree(|tree, tiles| {
                Ok((
                    tree.inclusion_proof(seq, size, tiles)?,
                    tree.leaf(seq, tiles)?,
                    tree.root(size, tiles)?,
                ))
            })
            .await?;
        // Checked against its hash and the tree's leaf before it is used.
        let record = self.record(seq).await?;
        let checkpoint = self
            .shared
            .store
            .evidence_checkpoint(self.shared.log, size, false)
            .await?
            .filter(|c| c.tree_size == size)
            .map(|c| c.note);
        Ok(InclusionProof {
            seq,
            tree_size: size,
            record_hash: record.hash,
            leaf_hash: leaf.to_hex(),
            root: root.to_hex(),
            proof: hex_all(&proof),
            checkpoint,
        })
    }

    /// The consistency proof between two durable tree sizes.
    pub async fn consistency(&self, from: u64, to: u64) -> Result<ConsistencyProof, EvidenceError> {
        let durable = self.checkpoint();
        if to > durable.tree_size {
            return Err(TreeError::TooLarge {
                size: to,
                len: durable.tree_size,
            }
            .into());
        }
        let (proof, from_root, to_root) = self
            .shared
            .with_tree(|tree, tiles| {
                Ok((
                    tree.consistency_proof(from, to, tiles)?,
                    tree.root(from, tiles)?,
                    tree.root(to, tiles)?,
                ))
            })
            .await?;
        Ok(ConsistencyProof {
            from,
            to,
            from_root: from_root.to_hex(),
            to_root: to_root.to_hex(),
            proof: hex_all(&proof),
        })
    }
}

/// Reads a log from the store: every record hash into a tree, checked against the latest
/// signed checkpoint; also gives the id of the key that signed that checkpoint.
async fn load(
    store: Store,
    log: &StoredLog,
) -> Result<(Shared, Chain, Option<String>), EvidenceError> {
    let keyring = load_keyring(&store, log).await?;
    let mut tree = Tree::with_tile_height(TILE_HEIGHT);
    let mut chain = Chain::genesis();
    catch_up(&store, log.id, &mut tree, &mut chain).await?;
    let mut last_key = None;
    let durable = match store.evidence_checkpoint(log.id, 0, true).await? {
        None if tree.is_empty() => Durable {
            log: log.origin.clone(),
            tree_size: 0,
            root: zt_evidence::merkle::empty_root().to_hex(),
            note: String::new(),
        },
        None => {
            return Err(EvidenceError::Inconsistent(format!(
                "{} records but no checkpoint",
                tree.len()
            )));
        }
        Some(stored) => {
            let verified = verify_note(&stored.note, &keyring).map_err(|e| {
                EvidenceError::Inconsistent(format!("the latest checkpoint does not verify: {e}"))
            })?;
            let size = verified.checkpoint.size;
            last_key = Some(verified.key_id);
            if size != tree.len() || tree.root(size, &Tiles::new())? != verified.checkpoint.root {
                return Err(EvidenceError::Inconsistent(format!(
                    "the latest checkpoint (size {size}) does not match the {} stored records",
                    tree.len()
                )));
            }
            Durable {
                log: log.origin.clone(),
                tree_size: size,
                root: verified.checkpoint.root.to_hex(),
                note: stored.note,
            }
        }
    };
    let shared = Shared {
        log: log.id,
        arriving: AtomicUsize::new(0),
        keyring,
        store,
        tree: RwLock::new(tree),
        durable: ArcSwap::from_pointee(durable),
        failing: AtomicBool::new(false),
    };
    Ok((shared, chain, last_key))
}

impl Shared {
    /// Runs `ask` on the tree, reading from the store the tiles of leaves it needs and the tree
    /// no longer holds (at most three for any proof), until it answers.
    async fn with_tree<T>(
        &self,
        ask: impl Fn(&Tree, &Tiles) -> Result<T, TreeError>,
    ) -> Result<T, EvidenceError> {
        let mut tiles = Tiles::new();
        loop {
            let answer = {
                let tree = self.tree.read().map_err(|_| EvidenceError::WriterStopped)?;
                ask(&tree, &tiles)
            };
            match answer {
                Err(TreeError::TileNeeded { tile }) if !tiles.contains(tile) => {
                    let leaves = self.tile(tile).await?;
                    self.tree
                        .read()
                        .map_err(|_| EvidenceError::WriterStopped)?
                        .add_tile(&mut tiles, tile, leaves)
                        .map_err(|e| {
                            EvidenceError::Inconsistent(format!(
                                "{e}: the stored records {}..{} were altered",
                                tile << TILE_HEIGHT,
                                (tile + 1) << TILE_HEIGHT
                            ))
                        })?;
                }
                other => return Ok(other?),
            }
        }
    }

    /// The leaf hashes of one whole tile, from the store.
    async fn tile(&self, tile: u64) -> Result<Vec<Hash>, EvidenceError> {
        let size = 1u64 << TILE_HEIGHT;
        let start = tile * size;
        let page = self
            .store
            .evidence_hashes(self.log, start, size as u32)
            .await?;
        if page.len() as u64 != size {
            return Err(EvidenceError::Inconsistent(format!(
                "records {start}..{} are not all in the store",
                start + size
            )));
        }
        page.iter()
            .enumerate()
            .map(|(i, (seq, hash))| {
                let hash = Hash::from_hex(hash).filter(|_| *seq == start + i as u64);
                hash.map(|h| leaf_hash(&h.0)).ok_or_else(|| {
                    EvidenceError::Inconsistent(format!(
                        "record {} is missing or malformed",
                        start + i as u64
                    ))
                })
            })
            .collect()
    }
}

/// Adds a page of stored record hashes to the tree and the chain; `false` for an empty page.
fn apply_page(
    tree: &mut Tree,
    chain: &mut Chain,
    page: &[(u64, String)],
) -> Result<bool, EvidenceError> {
    for (seq, hash) in page {
        if *seq != chain.next_seq {
            return Err(EvidenceError::Inconsistent(format!(
                "record {} is missing",
                chain.next_seq
            )));
        }
        let hash = Hash::from_hex(hash).ok_or_else(|| {
            EvidenceError::Inconsistent(format!("record {seq} has a malformed hash"))
        })?;
        tree.push(leaf_hash(&hash.0));
        chain.next_seq += 1;
        chain.last_hash = hash;
    }
    Ok(!page.is_empty())
}

/// Reads every stored record of `log` the tree does not have yet into the tree and the chain.
async fn catch_up(
    store: &Store,
    log: LogId,
    tree: &mut Tree,
    chain: &mut Chain,
) -> Result<(), EvidenceError> {
    while apply_page(
        tree,
        chain,
        &store.evidence_hashes(log, chain.next_seq, PAGE).await?,
    )? {}
    Ok(())
}

/// Brings a log held in memory up to date with the store: another replica's log before it
/// answers, or this replica's after a conflicting append. The latest checkpoint is read
/// first, so that the records it covers are read after it (they were committed with it).
async fn catch_up_shared(shared: &Shared, chain: &mut Chain) -> Result<(), EvidenceError> {
    let latest = shared
        .store
        .evidence_checkpoint(shared.log, 0, true)
        .await?;
    loop {
        let page = shared
            .store
            .evidence_hashes(shared.log, chain.next_seq, PAGE)
            .await?;
        let mut tree = shared
            .tree
            .write()
            .map_err(|_| EvidenceError::WriterStopped)?;
        if !apply_page(&mut tree, chain, &page)? {
            break;
        }
    }
    if let Some(latest) = latest
        && latest.tree_size > shared.durable.load().tree_size
    {
        let root = shared
            .with_tree(|tree, tiles| tree.root(latest.tree_size, tiles))
            .await?;
        shared.durable.store(Arc::new(Durable {
            log: shared.keyring.origin.clone(),
            tree_size: latest.tree_size,
            root: root.to_hex(),
            note: latest.note,
        }));
    }
    Ok(())
}

/// A store found altered while serving: logged, counted, and an error for the caller.
fn corrupt(message: String) -> EvidenceError {
    metrics::counter!("ztinfra_evidence_corrupt_total").increment(1);
    tracing::error!(problem = %message, "the evidence store is corrupt");
    EvidenceError::Inconsistent(message)
}

/// How often the local copy of the latest checkpoint is brought up to date.
const LOCAL_COPY_EVERY: Duration = Duration::from_millis(100);

/// Refuses a store that is behind, or different from, the latest checkpoint this node kept
/// outside it (see [`keep_local_copy`]).
async fn check_local_copy(shared: &Shared, path: &std::path::Path) -> Result<(), EvidenceError> {
    let note = match std::fs::read_to_string(path) {
        Ok(note) => note,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(EvidenceError::Inconsistent(format!(
                "cannot read `{}`: {e}",
                path.display()
            )));
        }
    };
    let refuse = |why: String| {
        EvidenceError::Inconsistent(format!(
            "{why}. `{}` holds the latest checkpoint this node signed or saw; if the store was replaced on purpose (a new database), move that file away and start again",
            path.display()
        ))
    };
    let verified = verify_note(&note, &shared.keyring).map_err(|e| {
        refuse(format!(
            "the kept checkpoint does not verify with this log's keys: {e}"
        ))
    })?;
    let kept = verified.checkpoint;
    let len = shared
        .tree
        .read()
        .map_err(|_| EvidenceError::WriterStopped)?
        .len();
    if kept.size > len {
        return Err(refuse(format!(
            "the store holds {len} evidence records, but a checkpoint of {} was signed: records were removed from the store",
            kept.size
        )));
    }
    let root = shared
        .with_tree(|tree, tiles| tree.root(kept.size, tiles))
        .await?;
    if root != kept.root {
        return Err(refuse(format!(
            "the first {} stored records are not the ones the kept checkpoint signed",
            kept.size
        )));
    }
    Ok(())
}

/// Keeps the latest durable checkpoint in a file outside the store (written beside it and
/// renamed over it, synced), at most [`LOCAL_COPY_EVERY`] behind, so that records removed from
/// the store together with their checkpoints are noticed at the next start.
async fn keep_local_copy(shared: Arc<Shared>, path: PathBuf) {
    let mut written = 0;
    let mut failed = false;
    loop {
        tokio::time::sleep(LOCAL_COPY_EVERY).await;
        if Arc::strong_count(&shared) == 1 {
            return;
        }
        let durable = shared.durable.load_full();
        if durable.tree_size == written || durable.note.is_empty() {
            continue;
        }
        let target = path.clone();
        let note = durable.note.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            crate::write_private_file(&target, note.as_bytes())
        })
        .await;
        match outcome {
            Ok(Ok(())) => {
                written = durable.tree_size;
                failed = false;
            }
            Ok(Err(e)) if !failed => {
                failed = true;
                tracing::error!(error = %e, path = %path.display(), "cannot keep the local copy of the latest checkpoint");
            }
            _ => {}
        }
    }
}

async fn writer(
    mut jobs: mpsc::Receiver<Job>,
    shared: Arc<Shared>,
    signer: Arc<Signer>,
    mut chain: Chain,
    max_batch: usize,
) {
    while let Some(first) = jobs.recv().await {
        let mut batch = vec![first];
        let mut count = batch.iter().map(|j| j.records.len()).sum::<usize>();
        // Take what is waiting, then let the tasks that are ready to run (requests already
        // read, decisions being made) run before committing: the writer is woken by the first
        // record and would otherwise run next, before the others could add theirs, and commit
        // records one or two at a time. Each commit costs the core far more than a record does
        // (its signature, and the fsync's own work in the kernel; BENCHMARKS.md), so the
        // writer yields until two yields in a row bring nothing (Tokio may run a yielded task
        // again at once, when it polls for I/O) and no decision it was told of is still on its
        // way, for at most `GATHER` after the first yield.
        let opened = Instant::now();
        let (mut yields, mut empty_yields, mut before_yield) = (0u32, 0u32, count);
        loop {
            while count < max_batch {
                match jobs.try_recv() {
                    Ok(job) => {
                        count += job.records.len();
                        batch.push(job);
                    }
                    Err(_) => break,
                }
            }
            if yields > 0 {
                empty_yields = if count == before_yield {
                    empty_yields + 1
                } else {
                    0
                };
            }
            let idle = empty_yields >= 2 && shared.arriving.load(Ordering::Relaxed) == 0;
            if idle || count >= max_batch || (yields > 0 && opened.elapsed() >= GATHER) {
                break;
            }
            (yields, before_yield) = (yields + 1, count);
            tokio::task::yield_now().await;
        }
        let committing = Instant::now();
        let mut result = commit(&shared, &signer, &mut chain, &batch).await;
        if let Err(EvidenceError::Store(StoreError::Conflict { .. })) = &result {
            // Another replica wrote first: read its records, then place ours after them.
            result = match catch_up_shared(&shared, &mut chain).await {
                Ok(()) => commit(&shared, &signer, &mut chain, &batch).await,
                Err(e) => Err(e),
            };
        }
        metrics::histogram!("ztinfra_evidence_batch_records").record(count as f64);
        metrics::histogram!("ztinfra_evidence_commit_seconds").record(committing.elapsed());
        match result {
            Ok(receipts) => {
                shared.failing.store(false, Ordering::Relaxed);
                let mut receipts = receipts.into_iter();
                for job in batch {
                    let mine: Vec<Receipt> = receipts.by_ref().take(job.records.len()).collect();
                    let _ = job.reply.send(Ok(mine));
                }
            }
            Err(e) => {
                let message = crate::error_chain(&e);
                tracing::error!(error = %message, records = count, "evidence commit failed; these decisions are denied");
                metrics::counter!("ztinfra_evidence_commit_failures_total").increment(1);
                shared.failing.store(true, Ordering::Relaxed);
                for job in batch {
                    let _ = job.reply.send(Err(message.clone()));
                }
            }
        }
    }
}

async fn commit(
    shared: &Shared,
    signer: &Signer,
    chain: &mut Chain,
    batch: &[Job],
) -> Result<Vec<Receipt>, EvidenceError> {
    let mut next = *chain;
    let sealed: Vec<_> = batch
        .iter()
        .flat_map(|job| &job.records)
        .map(|pending| next.seal(pending))
        .collect();
    // The root with the new leaves, without touching the tree: it takes them only once they
    // are durable, so a failed commit leaves nothing to undo.
    let leaves: Vec<Hash> = sealed.iter().map(|r| r.leaf()).collect();
    let (size, root) = {
        let tree = shared
            .tree
            .read()
            .map_err(|_| EvidenceError::WriterStopped)?;
        let mut range = tree.compact_range(tree.len(), &Tiles::new())?;
        for leaf in &leaves {
            range.push(*leaf);
        }
        (range.len(), range.root())
    };
    let note = signer.sign_checkpoint(&Checkpoint {
        origin: shared.keyring.origin.clone(),
        size,
        root,
    });
    let mut placed = Vec::with_capacity(sealed.len());
    let stored: Vec<StoredRecord> = sealed
        .into_iter()
        .map(|r| {
            let hash = r.hash.to_hex();
            placed.push((r.seq, hash.clone()));
            StoredRecord {
                seq: r.seq,
                hash,
                body: r.canonical,
            }
        })
        .collect();
    shared
        .store
        .append_evidence(
            shared.log,
            stored,
            StoredCheckpoint {
                tree_size: size,
                note: note.clone(),
            },
        )
        .await?;
    {
        let mut tree = shared
            .tree
            .write()
            .map_err(|_| EvidenceError::WriterStopped)?;
        for leaf in leaves {
            tree.push(leaf);
        }
    }
    let mut prev = chain.last_hash.to_hex();
    *chain = next;
    shared.durable.store(Arc::new(Durable {
        log: shared.keyring.origin.clone(),
        tree_size: size,
        root: root.to_hex(),
        note,
    }));
    Ok(placed
        .into_iter()
        .map(|(seq, hash)| Receipt {
            log: shared.keyring.origin.clone(),
            seq,
            prev_hash: std::mem::replace(&mut prev, hash.clone()),
            hash,
            checkpoint_size: size,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pending(i: usize) -> PendingRecord {
        PendingRecord {
            time_ms: 1_700_000_000_000,
            caller: None,
            kind: None,
            decision_id: format!("d-{i}"),
            request: json!({"actor": "a", "action": "x.y", "resource": format!("r{i}")}),
            decision: "deny".into(),
            reasons: json!([]),
            policy_version: "sha256:00".into(),
        }
    }

    /// On one worker thread, as on a server pinned to one core: decisions ready at the same
    /// moment share a commit. The writer is woken by the first record and used to run before
    /// the others were made, committing it alone (checkpoint sizes 2, then 33). Usually all 32
    /// share one commit; the writer's 1 ms bound may split them on a slow, loaded machine, so
    /// the test asks only that the first record did not go alone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn decisions_ready_together_share_a_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_in(dir.path()).await.unwrap();
        let signer = Arc::new(crate::keys::load_or_generate(&dir.path().join("keys")).unwrap());
        let log = EvidenceLog::open(store, signer, 1000, None).await.unwrap();
        // Warm up: the first commit opens what the later ones reuse.
        log.append(vec![pending(0)], None).await.unwrap();

        // Spawned from a task on the one worker, all 32 are queued before any of them runs,
        // however the operating system schedules the test's threads.
        let sizes = tokio::spawn(async move {
            let tasks: Vec<_> = (1..=32)
                .map(|i| {
                    let log = log.clone();
                    tokio::spawn(async move { log.append(vec![pending(i)], None).await })
                })
                .collect();
            let mut sizes = std::collections::BTreeSet::new();
            for task in tasks {
                let receipts = task.await.unwrap().unwrap();
                sizes.extend(receipts.iter().map(|r| r.checkpoint_size));
            }
            sizes
        })
        .await
        .unwrap();
        let sizes: Vec<u64> = sizes.into_iter().collect();
        assert_eq!(sizes.last(), Some(&33), "{sizes:?}");
        assert!(
            sizes.first().is_some_and(|&first| first > 2),
            "the first record was committed alone: checkpoint sizes {sizes:?}"
        );
    }

    async fn check_proofs(log: &EvidenceLog, whole: &Tree) {
        use zt_evidence::merkle::{verify_consistency, verify_inclusion};
        let none = Tiles::new();
        let hashes = |hex: &[String]| -> Vec<Hash> {
            hex.iter().map(|h| Hash::from_hex(h).unwrap()).collect()
        };
        for (seq, size) in [
            (3, 700),
            (300, 700),
            (255, 256),
            (256, 513),
            (600, 650),
            (699, 700),
        ] {
            let answer = log.own().inclusion(seq, Some(size)).await.unwrap();
            let root = whole.root(size, &none).unwrap();
            let path = hashes(&answer.proof);
            assert_eq!(answer.root, root.to_hex(), "root of {size}");
            assert_eq!(path, whole.inclusion_proof(seq, size, &none).unwrap());
            let leaf = Hash::from_hex(&answer.leaf_hash).unwrap();
            assert!(verify_inclusion(seq, size, &leaf, &path, &root));
        }
        for (from, to) in [(1, 700), (100, 700), (300, 513), (256, 512), (650, 700)] {
            let answer = log.own().consistency(from, to).await.unwrap();
            let path = hashes(&answer.proof);
            let (old, new) = (
                whole.root(from, &none).unwrap(),
                whole.root(to, &none).unwrap(),
            );
            assert_eq!(path, whole.consistency_proof(from, to, &none).unwrap());
            assert_eq!(
                (answer.from_root, answer.to_root),
                (old.to_hex(), new.to_hex())
            );
            assert!(verify_consistency(from, to, &old, &new, &path));
        }
    }

    /// The log's tree keeps only the nodes above its tiles of 256 records (and the last tile's):
    /// proofs that need the others read them back from the store, and give what a whole tree
    /// gives, before and after a restart.
    #[tokio::test]
    async fn proofs_read_the_tiles_the_tree_dropped_from_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let signer = Arc::new(crate::keys::load_or_generate(&dir.path().join("keys")).unwrap());
        let store = Store::open_in(dir.path()).await.unwrap();
        let log = EvidenceLog::open(store, Arc::clone(&signer), 1000, None)
            .await
            .unwrap();
        let mut whole = Tree::new();
        for batch in 0..7 {
            let records = (0..100).map(|i| pending(batch * 100 + i)).collect();
            for receipt in log.append(records, None).await.unwrap() {
                whole.push(leaf_hash(&Hash::from_hex(&receipt.hash).unwrap().0));
            }
        }
        assert_eq!(log.checkpoint().tree_size, 700);
        let held = log.shared.tree.read().unwrap().held();
        // Two tiles of 256 dropped: 2 nodes at height 8, 1 at 9, and the last tile's 188
        // leaves with their parents; a whole tree of 700 holds 1,399.
        assert!(held < 400, "{held} hashes held");
        check_proofs(&log, &whole).await;
        drop(log);

        let store = Store::open_in(dir.path()).await.unwrap();
        let log = EvidenceLog::open(store, signer, 1000, None).await.unwrap();
        check_proofs(&log, &whole).await;

        // A record altered in the store after the start: a proof that reads its tile refuses
        // to be built from it.
        let db = rusqlite::Connection::open(dir.path().join("ztinfra.db")).unwrap();
        let altered = format!("{:064x}", 7);
        db.execute(
            "UPDATE zt_evidence_records SET hash = ?1 WHERE seq = 3",
            [&altered],
        )
        .unwrap();
        match log.own().inclusion(10, Some(700)).await {
            Err(EvidenceError::Inconsistent(message)) => {
                assert!(message.contains("records 0..256"), "{message}");
            }
            other => panic!("a proof over an altered tile: {other:?}"),
        }
        // Proofs that need no dropped tile are still served.
        assert!(log.own().inclusion(650, Some(700)).await.is_ok());
    }
}
