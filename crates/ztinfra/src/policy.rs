//! `ztinfra policy`: work on policy sets: check and convert them, and push them to a shared
//! store (with its history and rollback) for replicas started with `--policies-from-store`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Subcommand;
use zt_core::{Engine, FileKind, SourceFile};
use zt_server::policies::{TOPIC_POLICY, files_from_json, files_to_json};
use zt_store::{Store, StoreError, StoredPolicyVersion};

use crate::evidence::{StoreArgs, runtime};

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy directory against its schema and run its *.tests.json cases.
    /// Exit code: 0 valid and every test passed, 1 otherwise, 2 if the directory cannot be read.
    Check {
        /// The policy directory.
        dir: PathBuf,
    },
    /// Check a policy directory as `check` does (every test must pass), then store it as the
    /// store's next policy version, which every replica started with `--policies-from-store`
    /// activates at once. Exit code: 0 pushed, 1 not valid, 2 any other error.
    Push {
        /// The policy directory.
        dir: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
        /// Why, kept in the history.
        #[arg(long, default_value = "")]
        note: String,
    },
    /// List the store's policy versions, newest first.
    History {
        #[command(flatten)]
        store: StoreArgs,
        /// How many [default: 20].
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Push an earlier version's files again, as the next version (checked again first).
    Rollback {
        /// The version to go back to.
        version: u64,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Convert a ZT-Infra reference JSON policy into an equivalent Cedar policy set.
    #[command(name = "import-zt-json")]
    ImportZtJson {
        /// The JSON policy file.
        file: PathBuf,
        /// Write the Cedar text here instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

pub fn run(command: PolicyCommand) -> ExitCode {
    match command {
        PolicyCommand::Check { dir } => check(&dir),
        PolicyCommand::Push { dir, store, note } => {
            let files = match zt_server::policies::read_policy_dir(&dir) {
                Ok(files) => files,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let Some(digest) = check_files(&dir.display().to_string(), &files) else {
                eprintln!("not pushed: the set must be valid and pass its tests");
                return ExitCode::FAILURE;
            };
            finish(runtime().and_then(|rt| rt.block_on(push(&store, &files, &digest, &note))))
        }
        PolicyCommand::History { store, limit } => {
            finish(runtime().and_then(|rt| rt.block_on(history(&store, limit))))
        }
        PolicyCommand::Rollback { version, store } => {
            finish(runtime().and_then(|rt| rt.block_on(rollback(&store, version))))
        }
        PolicyCommand::ImportZtJson { file, output } => import(&file, output.as_deref()),
    }
}

fn finish(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Who pushes, as the history names it.
fn pusher() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("ztinfra policy push ({user})")
}

/// Stores `files` (checked by [`check_files`], which gave their `digest`) as the next version
/// and announces it.
async fn store_version(
    store: &Store,
    files: &[SourceFile],
    digest: &str,
    by: &str,
    note: &str,
) -> anyhow::Result<StoredPolicyVersion> {
    for _ in 0..5 {
        let version = StoredPolicyVersion {
            number: store.newest_policy_version().await? + 1,
            digest: digest.to_owned(),
            files: files_to_json(files),
            pushed_by: by.to_owned(),
            pushed_at_ms: zt_server::now_ms(),
            note: note.to_owned(),
        };
        match store.add_policy_version(&version).await {
            Ok(()) => {
                store
                    .publish(TOPIC_POLICY, &version.number.to_string())
                    .await
                    .context("stored, but the replicas could not be told; they take it at their next reload")?;
                return Ok(version);
            }
            // Another push (or an entity edit) took the number: the next one.
            Err(StoreError::Exists(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    bail!("other versions kept arriving; try again")
}

async fn push(
    args: &StoreArgs,
    files: &[SourceFile],
    digest: &str,
    note: &str,
) -> anyhow::Result<()> {
    let store = args.open().await?;
    let version = store_version(&store, files, digest, &pusher(), note).await?;
    store.close().await;
    println!(
        "pushed version {} ({}): replicas following the store activate it now",
        version.number, version.digest
    );
    Ok(())
}

async fn history(args: &StoreArgs, limit: u32) -> anyhow::Result<()> {
    let store = args.open().await?;
    println!(
        "{:>7}  {:<24}  {:<30}  {:<73}  note",
        "version", "pushed at", "by", "digest"
    );
    for v in store.policy_history(limit).await? {
        println!(
            "{:>7}  {:<24}  {:<30}  {:<73}  {}",
            v.number,
            crate::credentials::time(v.pushed_at_ms),
            v.pushed_by,
            v.digest,
            v.note
        );
    }
    store.close().await;
    Ok(())
}

async fn rollback(args: &StoreArgs, number: u64) -> anyhow::Result<()> {
    let store = args.open().await?;
    let Some(old) = store.policy_version(Some(number)).await? else {
        bail!("the store has no policy version {number} (`ztinfra policy history` lists them)");
    };
    let files = files_from_json(&old.files).map_err(|e| anyhow::anyhow!("{e}"))?;
    let Some(digest) = check_files(&format!("version {number}"), &files) else {
        bail!("version {number} no longer passes its checks; not pushed");
    };
    let note = format!("rollback to {number}");
    let version = store_version(&store, &files, &digest, &pusher(), &note).await?;
    store.close().await;
    println!(
        "pushed version {} with the files of version {number} ({}): replicas following the store activate it now",
        version.number, version.digest
    );
    Ok(())
}

fn check(dir: &std::path::Path) -> ExitCode {
    let files = match zt_server::policies::read_policy_dir(dir) {
        Ok(files) => files,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match check_files(&dir.display().to_string(), &files) {
        Some(_) => ExitCode::SUCCESS,
        None => ExitCode::FAILURE,
    }
}

/// Validates a set and runs its tests, printing what it finds; the set's version (its digest)
/// only if it loads and every test passes.
fn check_files(label: &str, files: &[SourceFile]) -> Option<String> {
    let engine = match Engine::load(files) {
        Ok(engine) => engine,
        Err(errors) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            eprintln!("{label}: invalid policy set ({} error(s))", errors.len());
            return None;
        }
    };
    let set = engine.policies();
    for w in set.warnings() {
        eprintln!("warning: {w}");
    }
    println!(
        "{label}: valid, {} policies, version {}",
        set.policy_count(),
        set.version()
    );
    let (mut passed, mut failed) = (0usize, 0usize);
    for file in files
        .iter()
        .filter(|f| FileKind::of(&f.path) == Some(FileKind::Tests))
    {
        match zt_core::testing::run(&engine, file) {
            Ok(outcomes) => {
                for o in outcomes {
                    match o.failure {
                        None => {
                            passed += 1;
                            println!("  ok    {}: {}", o.file, o.name);
                        }
                        Some(why) => {
                            failed += 1;
                            println!("  FAIL  {}: {}: {why}", o.file, o.name);
                        }
                    }
                }
            }
            Err(e) => {
                failed += 1;
                eprintln!("error: {e}");
            }
        }
    }
    if passed + failed > 0 {
        println!("policy tests: {passed} passed, {failed} failed");
    }
    (failed == 0).then(|| set.version().to_owned())
}

fn import(file: &std::path::Path, output: Option<&std::path::Path>) -> ExitCode {
    let json = match std::fs::read_to_string(file) {
        Ok(json) => json,
        Err(e) => {
            eprintln!("error: cannot read `{}`: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    let cedar = match zt_core::import::zt_json_to_cedar(&json) {
        Ok(cedar) => cedar,
        Err(e) => {
            eprintln!("error: `{}`: {e}", file.display());
            return ExitCode::FAILURE;
        }
    };
    // The conversion must yield a set that loads; check before handing it over.
    let source = zt_core::SourceFile {
        path: "imported.cedar".into(),
        text: cedar.clone(),
    };
    if let Err(errors) = Engine::load(&[source]) {
        for e in errors {
            eprintln!("error: the converted set does not load: {e}");
        }
        return ExitCode::FAILURE;
    }
    match output {
        Some(path) => {
            if let Err(e) = std::fs::write(path, cedar) {
                eprintln!("error: cannot write `{}`: {e}", path.display());
                return ExitCode::from(2);
            }
            eprintln!("wrote {}", path.display());
        }
        None => print!("{cedar}"),
    }
    ExitCode::SUCCESS
}
