//! `ztinfra policy`: offline work on policy sets.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use zt_core::{Engine, FileKind};

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy directory against its schema and run its *.tests.json cases.
    /// Exit code: 0 valid and every test passed, 1 otherwise, 2 if the directory cannot be read.
    Check {
        /// The policy directory.
        dir: PathBuf,
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
        PolicyCommand::ImportZtJson { file, output } => import(&file, output.as_deref()),
    }
}

fn check(dir: &std::path::Path) -> ExitCode {
    let files = match zt_server::policies::read_policy_dir(dir) {
        Ok(files) => files,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let engine = match Engine::load(&files) {
        Ok(engine) => engine,
        Err(errors) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            eprintln!(
                "{}: invalid policy set ({} error(s))",
                dir.display(),
                errors.len()
            );
            return ExitCode::FAILURE;
        }
    };
    let set = engine.policies();
    for w in set.warnings() {
        eprintln!("warning: {w}");
    }
    println!(
        "{}: valid, {} policies, version {}",
        dir.display(),
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
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
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
