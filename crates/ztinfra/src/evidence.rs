//! `ztinfra evidence`, `ztinfra keys` and `ztinfra replicas`: export and verify the evidence
//! logs (one per replica), manage a replica's signing key, and join replicas to a shared store.
//! Export, key and replica commands read the store directly (a running server may keep
//! writing: SQLite readers do not block it); verify needs only the export and the public keys.

use std::io::{BufRead, BufReader, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use zt_evidence::checkpoint::{Keyring, PublicKey};
use zt_evidence::merkle::{CompactRange, Hash, leaf_hash};
use zt_evidence::verify::{EXPORT_FORMAT, Line, Prefix};
use zt_store::{Location, Store, StoredLog};

/// Where the store is.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// The server's data directory; its store is `<data-dir>/ztinfra.db` [default: ./.ztinfra].
    #[arg(long, env = "ZTINFRA_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The store, when not the data directory's: an SQLite path or a postgres:// URL.
    #[arg(long, env = "ZTINFRA_STORE")]
    store: Option<String>,
}

impl StoreArgs {
    pub(crate) fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(zt_server::defaults::DATA_DIR))
    }

    pub(crate) async fn open(&self) -> anyhow::Result<Store> {
        self.open_or(false).await
    }

    /// Opens the store; `create`: makes the data directory (private) and the SQLite file if
    /// they are missing, as a first start would.
    pub(crate) async fn open_or(&self, create: bool) -> anyhow::Result<Store> {
        let location = match &self.store {
            Some(s) => Location::parse(s)?,
            None => Location::Sqlite(self.data_dir().join(zt_store::SQLITE_FILE)),
        };
        if create && self.store.is_none() {
            zt_server::private_dir(&self.data_dir())?;
        }
        if let Location::Sqlite(path) = &location
            && !create
            && !path.exists()
        {
            bail!(
                "there is no store at `{}` (use --data-dir or --store)",
                path.display()
            );
        }
        Ok(Store::open(&location).await?)
    }
}

#[derive(Debug, Subcommand)]
pub enum EvidenceCommand {
    /// Export records and the checkpoints over them as JSON lines.
    Export {
        #[command(flatten)]
        store: StoreArgs,
        /// One log only: its origin or its replica's name [default: every log of the store,
        /// one after the other, each under a header naming its origin].
        #[arg(long)]
        log: Option<String>,
        /// First sequence number [default: 0].
        #[arg(long)]
        from: Option<u64>,
        /// Last sequence number; the export runs on to the end of that record's commit batch, so
        /// that a signed checkpoint covers its last record [default: the latest].
        #[arg(long)]
        to: Option<u64>,
        /// Write here instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Verify an export offline: every hash, link, Merkle root and signature. Exit code: 0 valid,
    /// 1 tampered (naming the first bad record and why), 2 unreadable input.
    Verify {
        /// The export (JSON lines).
        file: PathBuf,
        /// The logs' public keys, as `ztinfra keys export` gives them (an array of keyrings, one
        /// per log) or as `GET /v1/evidence/keys` gives one log's. Each log of the export is
        /// verified with its own.
        #[arg(long)]
        keys: PathBuf,
        /// A checkpoint obtained earlier from a source you trust (the `note` of
        /// `GET /v1/evidence/checkpoint`, or `<data-dir>/evidence.checkpoint`): the export of
        /// the log it names must reach its size with its root.
        #[arg(long, value_name = "FILE")]
        checkpoint: Option<PathBuf>,
        /// The export must hold exactly this many records (its tree size).
        #[arg(long, value_name = "N", conflicts_with = "checkpoint")]
        expect_size: Option<u64>,
        /// The Merkle root (hex) the export must have at `--expect-size` (or at its end).
        #[arg(long, value_name = "HEX", conflicts_with = "checkpoint")]
        expect_root: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Print the logs' public keys (for `evidence verify --keys`): one keyring, or an array of
    /// them when the store has several logs.
    Export {
        #[command(flatten)]
        store: StoreArgs,
        /// One log only: its origin or its replica's name.
        #[arg(long)]
        log: Option<String>,
    },
    /// Replace this replica's signing key with a new one, in its log's keyring. The old public
    /// key stays there, so what it signed still verifies; a running server signs with the new
    /// key after a restart.
    Rotate {
        #[command(flatten)]
        store: StoreArgs,
        /// Rotate the key that signs agent sessions' access tokens instead: its public half
        /// stays in every replica's JWKS, so tokens it signed verify until they expire.
        #[arg(long)]
        sessions: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ReplicasCommand {
    /// Join a new replica to a shared store before its first start: makes (or reads) the
    /// signing key in its data directory, and creates its evidence log with that key, the act
    /// recorded as the log's first record. The private key never leaves the data directory.
    Add {
        /// The replica's name: 1 to 64 letters, digits, `.`, `_` or `-`.
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List the store's evidence logs: replica, origin, records, keys.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
}

pub fn run_replicas(command: ReplicasCommand) -> ExitCode {
    let result = runtime().and_then(|rt| {
        rt.block_on(async {
            match command {
                ReplicasCommand::Add { name, store: args } => {
                    zt_server::evidence::check_replica_name(&name)?;
                    let store = args.open_or(true).await?;
                    let signer = std::sync::Arc::new(zt_server::keys::load_or_generate(
                        &args.data_dir().join("keys"),
                    )?);
                    let log = zt_server::evidence::join(
                        &store,
                        std::sync::Arc::clone(&signer),
                        &name,
                        "ztinfra replicas add",
                    )
                    .await?;
                    store.close().await;
                    println!(
                        "replica `{name}` joined: evidence log {} signed by key {}; start it with this data directory ({})",
                        log.origin,
                        signer.info().key_id,
                        args.data_dir().display()
                    );
                    Ok(())
                }
                ReplicasCommand::List { store } => {
                    let store = store.open().await?;
                    println!("{:<20} {:<26} {:>12}  keys", "replica", "log", "records");
                    for log in store.evidence_logs().await? {
                        let size = store
                            .evidence_checkpoint(log.id, 0, true)
                            .await?
                            .map_or(0, |c| c.tree_size);
                        let keyring = zt_server::evidence::load_keyring(&store, &log).await?;
                        let keys: Vec<String> = keyring
                            .keys
                            .iter()
                            .map(|k| match k.retired_at_ms {
                                Some(_) => format!("{} (retired)", k.key_id),
                                None => k.key_id.clone(),
                            })
                            .collect();
                        println!(
                            "{:<20} {:<26} {size:>12}  {}",
                            log.name,
                            log.origin,
                            keys.join(", ")
                        );
                    }
                    store.close().await;
                    Ok(())
                }
            }
        })
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The logs a command names: one (`--log`, by origin or replica name), or every log.
async fn logs(store: &Store, log: Option<&str>) -> anyhow::Result<Vec<StoredLog>> {
    Ok(match log {
        Some(wanted) => vec![zt_server::evidence::find_log(store, wanted).await?],
        None => store.evidence_logs().await?,
    })
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Runs a command's work on a runtime of its own: exit 0, or the error and exit 2.
pub(crate) fn run_command(work: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    match runtime().and_then(|rt| rt.block_on(work)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// A progress display on standard error, when it is a terminal: a bar when the number of
/// records is known, a counter otherwise.
fn progress(len: Option<u64>, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let (bar, template) = match len {
        Some(len) => (
            ProgressBar::new(len),
            format!("{what} {{bar:40}} {{pos}}/{{len}} records ({{per_sec}}, {{eta}} left)"),
        ),
        None => (
            ProgressBar::no_length(),
            format!("{what} {{pos}} records ({{per_sec}})"),
        ),
    };
    bar.set_style(
        ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

pub fn run_evidence(command: EvidenceCommand) -> ExitCode {
    let result = match command {
        EvidenceCommand::Export {
            store,
            log,
            from,
            to,
            output,
        } => runtime().and_then(|rt| {
            rt.block_on(export(&store, log.as_deref(), from, to, output.as_deref()))
        }),
        EvidenceCommand::Verify {
            file,
            keys,
            checkpoint,
            expect_size,
            expect_root,
        } => {
            let expect = Expect {
                checkpoint,
                size: expect_size,
                root: expect_root,
            };
            return verify(&file, &keys, &expect);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

pub fn run_keys(command: KeysCommand) -> ExitCode {
    let result = runtime().and_then(|rt| {
        rt.block_on(async {
            match command {
                KeysCommand::Export { store, log } => {
                    let store = store.open().await?;
                    let mut keyrings = Vec::new();
                    for log in logs(&store, log.as_deref()).await? {
                        keyrings.push(zt_server::evidence::load_keyring(&store, &log).await?);
                    }
                    let json = match keyrings.as_slice() {
                        [one] => serde_json::to_string_pretty(one)?,
                        all => serde_json::to_string_pretty(all)?,
                    };
                    println!("{json}");
                    Ok(())
                }
                KeysCommand::Rotate {
                    store: args,
                    sessions: false,
                } => rotate(&args).await,
                KeysCommand::Rotate {
                    store: args,
                    sessions: true,
                } => rotate_sessions(&args).await,
            }
        })
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn rotate_sessions(args: &StoreArgs) -> anyhow::Result<()> {
    let store = args.open().await?;
    let (old, new) = zt_server::keys::rotate_file(
        &args.data_dir().join("keys"),
        zt_server::keys::SESSION_KEY_FILE,
    )?;
    let public = new.token_signer().public_key();
    store
        .add_token_key(&public.kid, &hex::encode(public.x), zt_server::now_ms())
        .await?;
    store
        .publish(zt_server::sessions::TOPIC_TOKEN_KEY, &public.kid)
        .await?;
    store.close().await;
    println!(
        "rotated: agent session tokens are signed with key {} after a restart; key {} stays in the JWKS, so the tokens it signed verify until they expire",
        public.kid, old.key_id
    );
    Ok(())
}

async fn rotate(args: &StoreArgs) -> anyhow::Result<()> {
    let store = args.open().await?;
    let key_dir = args.data_dir().join("keys");
    let current = zt_server::keys::load_or_generate(&key_dir)?;
    let Some(log) = zt_server::evidence::log_of(&store, &current).await? else {
        bail!(
            "the key in `{}` ({}) signs no evidence log of this store: nothing to rotate",
            key_dir.display(),
            current.info().key_id
        );
    };
    let (old, new) = zt_server::keys::rotate(&key_dir)?;
    let now = zt_server::now_ms();
    let public = PublicKey::new(&log.origin, &new.verifying_key(), now);
    store
        .add_key(
            log.id,
            &public.key_id,
            &serde_json::to_string(&public)?,
            now,
        )
        .await?;
    for json in store.keys(log.id).await? {
        let mut key: PublicKey = serde_json::from_str(&json)?;
        if key.key_id == old.key_id && key.retired_at_ms.is_none() {
            key.retired_at_ms = Some(now);
            store
                .update_key(&key.key_id, &serde_json::to_string(&key)?)
                .await?;
        }
    }
    println!(
        "rotated: the signing key is now {} (key {} is retired and stays in the keyring); restart the server to sign with the new key (its first record then says so, kind `key.rotate`)",
        public.key_id, old.key_id
    );
    Ok(())
}

async fn export(
    args: &StoreArgs,
    log: Option<&str>,
    from: Option<u64>,
    to: Option<u64>,
    output: Option<&Path>,
) -> anyhow::Result<()> {
    let store = args.open().await?;
    let logs = logs(&store, log).await?;
    if logs.len() > 1 && (from.is_some() || to.is_some()) {
        bail!(
            "this store holds {} evidence logs: `--from` and `--to` need `--log`",
            logs.len()
        );
    }
    let sink: Box<dyn Write> = match output {
        Some(path) => Box::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create `{}`", path.display()))?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut out = BufWriter::new(sink);
    for log in &logs {
        export_log(&store, log, from, to, &mut out).await?;
    }
    out.flush()?;
    Ok(())
}

/// Writes one log's header, records and checkpoints.
async fn export_log(
    store: &Store,
    log: &StoredLog,
    from: Option<u64>,
    to: Option<u64>,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let latest = store
        .evidence_checkpoint(log.id, 0, true)
        .await?
        .map_or(0, |c| c.tree_size);
    let from = from.unwrap_or(0);
    let last = to.unwrap_or(latest.saturating_sub(1));
    if latest > 0 && (from > last || last >= latest) {
        bail!(
            "the log holds records 0..={}; `--from {from} --to {last}` is outside it",
            latest - 1
        );
    }
    let end = match store.evidence_checkpoint(log.id, last + 1, false).await? {
        Some(c) if latest > 0 => c.tree_size,
        _ => 0,
    };
    let from = from.min(end);

    let mut prefix = CompactRange::new();
    while prefix.len() < from {
        let page = store
            .evidence_hashes(log.id, prefix.len(), 50_000)
            .await?
            .into_iter()
            .take_while(|(seq, _)| *seq < from)
            .collect::<Vec<_>>();
        if page.is_empty() {
            bail!("record {} is missing from the store", prefix.len());
        }
        for (seq, hash) in page {
            let hash = Hash::from_hex(&hash)
                .with_context(|| format!("record {seq} has a malformed hash"))?;
            prefix.push(leaf_hash(&hash.0));
        }
    }

    let header = Line::Header {
        format: EXPORT_FORMAT.into(),
        origin: log.origin.clone(),
        from,
        to: end,
        prefix: Prefix {
            size: from,
            nodes: prefix.nodes().iter().map(Hash::to_hex).collect(),
        },
    };
    writeln!(out, "{}", serde_json::to_string(&header)?)?;
    let checkpoints = store.evidence_checkpoints(log.id, from, end).await?;
    let mut checkpoints = checkpoints.into_iter().peekable();
    let bar = progress(Some(end - from), "exporting");
    let mut next = from;
    while next < end {
        let page = store.evidence_records(log.id, next, end, 10_000).await?;
        if page.is_empty() {
            bail!("record {next} is missing from the store");
        }
        for record in page {
            // The stored body is canonical JSON already: written as is, not re-encoded.
            writeln!(
                out,
                "{{\"type\":\"record\",\"hash\":\"{}\",\"record\":{}}}",
                record.hash, record.body
            )?;
            next = record.seq + 1;
            while let Some(c) = checkpoints.next_if(|c| c.tree_size <= next) {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string(&Line::Checkpoint { note: c.note })?
                )?;
            }
        }
        bar.set_position(next - from);
    }
    bar.finish_and_clear();
    eprintln!(
        "exported records {from}..{end} of log {} (replica `{}`)",
        log.origin, log.name
    );
    Ok(())
}

/// What `evidence verify` is told to expect, besides what the export says of itself.
#[derive(Debug)]
struct Expect {
    checkpoint: Option<PathBuf>,
    size: Option<u64>,
    root: Option<String>,
}

impl Expect {
    /// The pin these options set, read and checked against `keyring`.
    /// With `several` logs in the export, a checkpoint pins only the log it names.
    fn pin(
        &self,
        keyring: &Keyring,
        several: bool,
    ) -> anyhow::Result<Option<zt_evidence::verify::Pin>> {
        use zt_evidence::verify::Pin;
        if let Some(path) = &self.checkpoint {
            let note = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read `{}`", path.display()))?;
            if several && note.lines().next() != Some(keyring.origin.as_str()) {
                return Ok(None);
            }
            let verified = zt_evidence::checkpoint::verify_note(&note, keyring).map_err(|e| {
                anyhow::anyhow!(
                    "`{}` is not a checkpoint signed by this log's keys: {e}",
                    path.display()
                )
            })?;
            return Ok(Some(Pin {
                size: verified.checkpoint.size,
                root: Some(verified.checkpoint.root),
                exact: false,
            }));
        }
        let root = self
            .root
            .as_deref()
            .map(|hex| {
                zt_evidence::Hash::from_hex(hex).ok_or_else(|| {
                    anyhow::anyhow!("`--expect-root` must be 64 hex digits; got `{hex}`")
                })
            })
            .transpose()?;
        // `--expect-root` without `--expect-size` is checked against the export's end.
        Ok(self.size.map(|size| Pin {
            size,
            root,
            exact: true,
        }))
    }
}

fn verify(file: &Path, keys: &Path, expect: &Expect) -> ExitCode {
    let sections = match sections(file, keys, expect) {
        Ok(sections) => sections,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let several = sections.len() > 1;
    let mut failed = false;
    for section in &sections {
        let name = if several {
            format!("log {}: ", section.keyring.origin)
        } else {
            String::new()
        };
        match verify_section(file, section, several, expect) {
            Ok(Ok(summary)) => {
                let range = match summary.records {
                    0 => "none".to_owned(),
                    _ => format!("{}..={}", summary.from, summary.tree_size - 1),
                };
                println!(
                    "ok: {name}{} records (seq {range}), {} checkpoints, tree size {}, root {}, signed by {}",
                    summary.records,
                    summary.checkpoints,
                    summary.tree_size,
                    summary.root,
                    summary.key_ids.join(", ")
                );
            }
            Ok(Err(failure)) => {
                failed = true;
                let kind = serde_json::to_value(failure.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                match failure.seq {
                    Some(seq) => println!("FAILED {name}at seq {seq}: {kind}: {}", failure.message),
                    None => println!("FAILED: {name}{kind}: {}", failure.message),
                }
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::from(2);
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

type Verdict = Result<zt_evidence::Summary, zt_evidence::Failure>;

/// One log's part of an export: its lines, and the keys it is verified with.
#[derive(Debug)]
struct Section {
    /// The line its header is on, and how many lines it has.
    start: usize,
    lines: usize,
    keyring: Keyring,
}

/// Splits an export into its logs (each begins with a header line) and gives each its own
/// keyring from the keys file (one keyring, or an array of them).
fn sections(file: &Path, keys: &Path, expect: &Expect) -> anyhow::Result<Vec<Section>> {
    let text = std::fs::read_to_string(keys)
        .with_context(|| format!("cannot read `{}`", keys.display()))?;
    let keyrings: Vec<Keyring> = match serde_json::from_str::<Keyring>(&text) {
        Ok(one) => vec![one],
        Err(_) => serde_json::from_str(&text).with_context(|| {
            format!(
                "`{}` is not a keyring or an array of keyrings",
                keys.display()
            )
        })?,
    };
    let reader = BufReader::with_capacity(
        1 << 20,
        std::fs::File::open(file).with_context(|| format!("cannot read `{}`", file.display()))?,
    );
    // A file with no header first (malformed, as the verifier then says) is one section.
    let whole = || -> anyhow::Result<Section> {
        Ok(Section {
            start: 0,
            lines: 0,
            keyring: keyrings
                .first()
                .cloned()
                .context("the keys file is empty")?,
        })
    };
    let mut sections: Vec<Section> = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("cannot read `{}`", file.display()))?;
        if line.starts_with("{\"type\":\"header\"") {
            let origin = match serde_json::from_str::<Line>(&line) {
                Ok(Line::Header { origin, .. }) => origin,
                // Left to the verifier, which names what is wrong with it.
                _ => String::new(),
            };
            let keyring = keyrings
                .iter()
                .find(|k| k.origin == origin)
                .or(match keyrings.as_slice() {
                    [only] if sections.is_empty() => Some(only),
                    _ => None,
                })
                .cloned()
                .with_context(|| format!("`{}` holds no keys of log `{origin}`", keys.display()))?;
            sections.push(Section {
                start: i,
                lines: 0,
                keyring,
            });
        } else if sections.is_empty() {
            sections.push(whole()?);
        }
        if let Some(last) = sections.last_mut() {
            last.lines += 1;
        }
    }
    if sections.is_empty() {
        sections.push(whole()?);
    }
    if sections.len() > 1
        && let Some(path) = &expect.checkpoint
    {
        let note = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read `{}`", path.display()))?;
        let origin = note.lines().next().unwrap_or_default();
        if !sections.iter().any(|s| s.keyring.origin == origin) {
            bail!(
                "`{}` is a checkpoint of log `{origin}`, which the export does not hold",
                path.display()
            );
        }
    }
    if sections.len() > 1 && (expect.size.is_some() || expect.root.is_some()) {
        bail!(
            "the export holds {} logs: `--expect-size` and `--expect-root` need an export of one (`evidence export --log`)",
            sections.len()
        );
    }
    Ok(sections)
}

fn verify_section(
    file: &Path,
    section: &Section,
    several: bool,
    expect: &Expect,
) -> anyhow::Result<Verdict> {
    let keyring = &section.keyring;
    let open = || -> anyhow::Result<_> {
        let reader = BufReader::with_capacity(
            1 << 20,
            std::fs::File::open(file)
                .with_context(|| format!("cannot read `{}`", file.display()))?,
        );
        Ok(reader
            .lines()
            .skip(section.start)
            .take(section.lines)
            .map(|line| line.with_context(|| format!("cannot read `{}`", file.display()))))
    };
    let pin = expect.pin(keyring, several)?;
    let bar = progress(None, "verifying");
    let verdict = zt_evidence::verify::verify_export_pinned(open, keyring, pin, |done| {
        bar.set_position(done)
    })?;
    bar.finish_and_clear();
    // `--expect-root` alone: the root at the export's end.
    Ok(verdict.and_then(|summary| match &expect.root {
        Some(root) if expect.size.is_none() && !summary.root.eq_ignore_ascii_case(root) => {
            Err(zt_evidence::Failure {
                kind: zt_evidence::FailureKind::Modified,
                seq: None,
                message: format!(
                    "the export's root is {}, not the expected {root}",
                    summary.root
                ),
            })
        }
        _ => Ok(summary),
    }))
}
