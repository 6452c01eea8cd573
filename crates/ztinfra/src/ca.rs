//! `ztinfra ca`: the service's own issuing CA for X.509-SVIDs, kept in the data directory like
//! the evidence signing key (`keys/ca.key`, mode 0600).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use zt_server::workloads::{self, CA_DAYS};

#[derive(Debug, Args)]
pub struct CaDir {
    /// The server's data directory [default: ./.ztinfra].
    #[arg(long, env = "ZTINFRA_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

impl CaDir {
    fn keys(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(zt_server::defaults::DATA_DIR))
            .join("keys")
    }
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Make the CA: an ECDSA P-256 key (`keys/ca.key`, 0600) and its self-signed certificate
    /// (`keys/ca.crt`) for the sessions' trust domain. A running server uses it after a
    /// restart.
    Init {
        #[command(flatten)]
        dir: CaDir,
        /// The trust domain; the server's `trust_domain` must be the same [default:
        /// ztinfra.local].
        #[arg(long, env = "ZTINFRA_TRUST_DOMAIN", default_value = "ztinfra.local")]
        trust_domain: String,
        /// Days the CA certificate is valid.
        #[arg(long, default_value_t = CA_DAYS)]
        days: i64,
    },
    /// Replace the CA with a new one. The old certificate stays trusted and in the bundle
    /// (`keys/ca.previous.crt`) until the next rotation, so SVIDs it issued (one hour at most)
    /// keep working; restart the server to issue with the new key.
    Rotate {
        #[command(flatten)]
        dir: CaDir,
        /// A new trust domain [default: the current CA's].
        #[arg(long)]
        trust_domain: Option<String>,
        #[arg(long, default_value_t = CA_DAYS)]
        days: i64,
    },
    /// Print the CA certificate (PEM) and, on standard error, its trust domain, validity and
    /// SHA-256 fingerprint. The private key is never printed.
    Show {
        #[command(flatten)]
        dir: CaDir,
    },
    /// Issue the service's own TLS server certificate from the CA: SPIFFE ID
    /// `spiffe://<domain>/ztinfra/server` plus the names given. Writes `<out>.crt` (the
    /// certificate and the CA's) and `<out>.key` (0600), for `serve --tls-cert/--tls-key`.
    ServerCert {
        #[command(flatten)]
        dir: CaDir,
        /// A DNS name or IP address clients connect to; repeat for more.
        #[arg(long = "name", required = true)]
        names: Vec<String>,
        /// Where to write: `<out>.crt` and `<out>.key` [default: <data-dir>/keys/server].
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, default_value_t = 90)]
        days: i64,
    },
}

pub fn run(command: CaCommand) -> ExitCode {
    match run_inner(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn check_days(days: i64) -> anyhow::Result<()> {
    if !(1..=3650).contains(&days) {
        anyhow::bail!("`--days` must be 1 to 3650; got {days}");
    }
    Ok(())
}

fn describe(ca: &zt_identity::svid::Ca) {
    use sha2::Digest as _;
    eprintln!("trust domain: {}", ca.domain());
    eprintln!(
        "sha256 fingerprint: {}",
        hex::encode(sha2::Sha256::digest(ca.certificate()))
    );
}

fn run_inner(command: CaCommand) -> anyhow::Result<()> {
    match command {
        CaCommand::Init {
            dir,
            trust_domain,
            days,
        } => {
            check_days(days)?;
            let keys = dir.keys();
            let ca = workloads::init_ca(&keys, &trust_domain, days)?;
            eprintln!(
                "CA made: key {} (0600), certificate {}",
                keys.join(workloads::CA_KEY_FILE).display(),
                keys.join(workloads::CA_CERT_FILE).display()
            );
            describe(&ca);
        }
        CaCommand::Rotate {
            dir,
            trust_domain,
            days,
        } => {
            check_days(days)?;
            let keys = dir.keys();
            let ca = workloads::rotate_ca(&keys, trust_domain.as_deref(), days)?;
            eprintln!(
                "CA rotated; the previous certificate is kept in {} and stays trusted until the next rotation. Restart the server to issue with the new key.",
                keys.join(workloads::CA_PREVIOUS_FILE).display()
            );
            describe(&ca);
        }
        CaCommand::Show { dir } => {
            let keys = dir.keys();
            let ca = workloads::load_ca(&keys)?
                .ok_or_else(|| workloads::WorkloadError::NoCa(keys.clone()))?;
            describe(&ca);
            print!("{}", ca.cert_pem());
        }
        CaCommand::ServerCert {
            dir,
            names,
            out,
            days,
        } => {
            check_days(days)?;
            let keys = dir.keys();
            let ca = workloads::load_ca(&keys)?
                .ok_or_else(|| workloads::WorkloadError::NoCa(keys.clone()))?;
            let key = rcgen::KeyPair::generate().context("cannot make a key")?;
            let now = zt_server::now_ms() / 1000;
            let cert = ca.issue_server(&names, &key, now, days, zt_server::random16())?;
            let out = out.unwrap_or_else(|| keys.join("server"));
            let cert_path = out.with_extension("crt");
            let key_path = out.with_extension("key");
            let mut chain = zt_identity::svid::pem_certificate(&cert);
            chain.push_str(&ca.cert_pem());
            zt_server::write_private_file(&key_path, key.serialize_pem().as_bytes())
                .with_context(|| format!("cannot write `{}`", key_path.display()))?;
            std::fs::write(&cert_path, chain)
                .with_context(|| format!("cannot write `{}`", cert_path.display()))?;
            eprintln!(
                "server certificate for {} written: {} and {} (0600)",
                names.join(", "),
                cert_path.display(),
                key_path.display()
            );
        }
    }
    Ok(())
}
