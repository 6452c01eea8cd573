//! `ztinfra evidence` and `ztinfra keys`: export and verify the evidence log, and manage its
//! signing key. Export and key commands read the store directly (a running server may keep
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
use zt_store::{Location, Store};

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
        /// The log's public keys, as `GET /v1/evidence/keys` or `ztinfra keys export` give them.
        #[arg(long)]
        keys: PathBuf,
        /// A checkpoint obtained earlier from a source you trust (the `note` of
        /// `GET /v1/evidence/checkpoint`, or `<data-dir>/evidence.checkpoint`): the export must
        /// reach its size with its root.
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
    /// Print the log's public keys (for `evidence verify --keys`).
    Export {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Replace the signing key with a new one. The old public key stays in the keyring, so what
    /// it signed still verifies; a running server signs with the new key after a restart.
    Rotate {
        #[command(flatten)]
        store: StoreArgs,
        /// Rotate the key that signs agent sessions' access tokens instead: its public half
        /// stays in every replica's JWKS, so tokens it signed verify until they expire.
        #[arg(long)]
        sessions: bool,
    },
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
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
            from,
            to,
            output,
        } => runtime().and_then(|rt| rt.block_on(export(&store, from, to, output.as_deref()))),
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
                KeysCommand::Export { store } => {
                    let store = store.open().await?;
                    let keyring = keyring(&store).await?;
                    println!("{}", serde_json::to_string_pretty(&keyring)?);
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

async fn keyring(store: &Store) -> anyhow::Result<Keyring> {
    let origin = zt_server::evidence::origin(store).await?;
    Ok(zt_server::evidence::load_keyring(store, &origin).await?)
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
    let origin = zt_server::evidence::origin(&store).await?;
    let (old, new) = zt_server::keys::rotate(&args.data_dir().join("keys"))?;
    let now = zt_server::now_ms();
    let public = PublicKey::new(&origin, &new.verifying_key(), now);
    store
        .add_key(&public.key_id, &serde_json::to_string(&public)?, now)
        .await?;
    for json in store.keys().await? {
        let mut key: PublicKey = serde_json::from_str(&json)?;
        if key.key_id == old.key_id && key.retired_at_ms.is_none() {
            key.retired_at_ms = Some(now);
            store
                .update_key(&key.key_id, &serde_json::to_string(&key)?)
                .await?;
        }
    }
    println!(
        "rotated: the signing key is now {} (key {} is retired and stays in the keyring); restart the server to sign with the new key",
        public.key_id, old.key_id
    );
    Ok(())
}

async fn export(
    args: &StoreArgs,
    from: Option<u64>,
    to: Option<u64>,
    output: Option<&Path>,
) -> anyhow::Result<()> {
    let store = args.open().await?;
    let origin = zt_server::evidence::origin(&store).await?;
    let latest = store
        .evidence_checkpoint(0, true)
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
    let end = match store.evidence_checkpoint(last + 1, false).await? {
        Some(c) if latest > 0 => c.tree_size,
        _ => 0,
    };
    let from = from.min(end);

    let mut prefix = CompactRange::new();
    while prefix.len() < from {
        let page = store
            .evidence_hashes(prefix.len(), 50_000)
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

    let sink: Box<dyn Write> = match output {
        Some(path) => Box::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create `{}`", path.display()))?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut out = BufWriter::new(sink);
    let header = Line::Header {
        format: EXPORT_FORMAT.into(),
        origin,
        from,
        to: end,
        prefix: Prefix {
            size: from,
            nodes: prefix.nodes().iter().map(Hash::to_hex).collect(),
        },
    };
    writeln!(out, "{}", serde_json::to_string(&header)?)?;
    let checkpoints = store.evidence_checkpoints(from, end).await?;
    let mut checkpoints = checkpoints.into_iter().peekable();
    let bar = progress(Some(end - from), "exporting");
    let mut next = from;
    while next < end {
        let page = store.evidence_records(next, end, 10_000).await?;
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
    out.flush()?;
    bar.finish_and_clear();
    eprintln!("exported records {from}..{end} of the log");
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
    fn pin(&self, keyring: &Keyring) -> anyhow::Result<Option<zt_evidence::verify::Pin>> {
        use zt_evidence::verify::Pin;
        if let Some(path) = &self.checkpoint {
            let note = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read `{}`", path.display()))?;
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
    let verdict = verify_file(file, keys, expect).map(|verdict| {
        // `--expect-root` alone: the root at the export's end.
        verdict.and_then(|summary| match &expect.root {
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
        })
    });
    match verdict {
        Ok(Ok(summary)) => {
            let range = match summary.records {
                0 => "none".to_owned(),
                _ => format!("{}..={}", summary.from, summary.tree_size - 1),
            };
            println!(
                "ok: {} records (seq {range}), {} checkpoints, tree size {}, root {}, signed by {}",
                summary.records,
                summary.checkpoints,
                summary.tree_size,
                summary.root,
                summary.key_ids.join(", ")
            );
            ExitCode::SUCCESS
        }
        Ok(Err(failure)) => {
            let kind = serde_json::to_value(failure.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            match failure.seq {
                Some(seq) => println!("FAILED at seq {seq}: {kind}: {}", failure.message),
                None => println!("FAILED: {kind}: {}", failure.message),
            }
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

type Verdict = Result<zt_evidence::Summary, zt_evidence::Failure>;

fn verify_file(file: &Path, keys: &Path, expect: &Expect) -> anyhow::Result<Verdict> {
    let keyring: Keyring = serde_json::from_str(
        &std::fs::read_to_string(keys)
            .with_context(|| format!("cannot read `{}`", keys.display()))?,
    )
    .with_context(|| format!("`{}` is not a keyring", keys.display()))?;
    let open = || -> anyhow::Result<_> {
        let reader = BufReader::with_capacity(
            1 << 20,
            std::fs::File::open(file)
                .with_context(|| format!("cannot read `{}`", file.display()))?,
        );
        Ok(reader
            .lines()
            .map(|line| line.with_context(|| format!("cannot read `{}`", file.display()))))
    };
    let pin = expect.pin(&keyring)?;
    let bar = progress(None, "verifying");
    let verdict = zt_evidence::verify::verify_export_pinned(open, &keyring, pin, |done| {
        bar.set_position(done)
    })?;
    bar.finish_and_clear();
    Ok(verdict)
}
