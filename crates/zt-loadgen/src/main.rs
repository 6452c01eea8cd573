//! `zt-loadgen`: an HTTP load generator for ZT-Infra's decision endpoints.
//!
//! Each of `--connections` workers keeps one HTTP/1.1 keep-alive connection, cycling through a
//! mix of allowed and denied requests of the demo policy set (`--mix`: the contract's
//! `/v1/decide`, AuthZEN's `/access/v1/evaluation`, or the reference `/actions`).
//!
//! - Closed loop (default): each worker sends its next request as soon as the previous answer
//!   arrives; latency is from send to answer.
//! - Open loop (`--rate R`): requests are scheduled at a fixed R per second, whatever the
//!   server does, and handed to the first free worker; latency is from the *scheduled* time to
//!   the answer, so time spent queued behind a slow server counts (no coordinated omission).
//!
//! With `--tls-ca` the connections are TLS (with `--tls-cert`/`--tls-key`, mutual TLS presenting
//! that certificate); with `--new-connections` every request opens a connection of its own (and
//! its handshake), to measure connection set-up rather than requests on kept-alive ones.
//!
//! After `--warmup`, latencies go into an HDR histogram for `--duration`; the tool prints
//! p50/p99/p99.9/max and decisions per second. Only loopback addresses are accepted: this tool
//! is for benchmarks on the machine itself.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;

#[derive(Debug, Parser)]
#[command(about = "Closed-loop HTTP load for ZT-Infra's POST /v1/decide (loopback only)")]
struct Args {
    /// The server's address, on loopback.
    #[arg(long, default_value = "127.0.0.1:8181")]
    addr: SocketAddr,
    /// Concurrent connections.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Unmeasured seconds first.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Runtime worker threads for the generator.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// The request mix, and with it the endpoint.
    #[arg(long, value_enum, default_value_t = Mix::Decide)]
    mix: Mix,
    /// Open loop: requests per second, scheduled at fixed intervals. Without it, closed loop.
    #[arg(long)]
    rate: Option<u64>,
    /// Send these bodies instead of a built-in mix: a file of JSON documents, one per line,
    /// cycled in order (for other workloads and other decision points).
    #[arg(long, requires = "path")]
    bodies: Option<std::path::PathBuf>,
    /// The endpoint path for `--bodies`, such as `/v1/decide`.
    #[arg(long, requires = "bodies")]
    path: Option<String>,
    /// The `--bodies` lines are forms (`application/x-www-form-urlencoded`), such as token
    /// requests, not JSON.
    #[arg(long, requires = "bodies")]
    form: bool,
    /// One header (`Name: value`) per request, taken in step with `--bodies` (line n with body
    /// n), such as a plan step capability for each step decision.
    #[arg(long, requires = "bodies")]
    headers: Option<std::path::PathBuf>,
    /// A file holding a credential to present with every request (`Authorization: Bearer`),
    /// for a service whose callers are authenticated.
    #[arg(long)]
    token_file: Option<std::path::PathBuf>,
    /// A file holding an agent session's access token, sent in `ZT-Agent-Token` with every
    /// request (an enforcement point asking for that session; use with `--token-file`).
    #[arg(long)]
    agent_token_file: Option<std::path::PathBuf>,
    /// Connect with TLS, trusting the CA certificates (PEM) in this file.
    #[arg(long)]
    tls_ca: Option<std::path::PathBuf>,
    /// Present this client certificate chain (PEM) over TLS: mutual TLS.
    #[arg(long, requires = "tls_ca", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// Open a new connection for every request (and close it after the answer).
    #[arg(long)]
    new_connections: bool,
    /// Print the result as one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Mix {
    /// `POST /v1/decide`
    Decide,
    /// `POST /access/v1/evaluation`
    Authzen,
    /// `POST /actions` (answers 403 on deny, counted as an answer, not an error)
    Actions,
}

impl Mix {
    fn path(self) -> &'static str {
        match self {
            Self::Decide => "/v1/decide",
            Self::Authzen => "/access/v1/evaluation",
            Self::Actions => "/actions",
        }
    }

    fn bodies(self) -> &'static [&'static str] {
        match self {
            Self::Decide | Self::Actions => BODIES,
            Self::Authzen => AUTHZEN_BODIES,
        }
    }
}

/// The request mix: allowed and denied decisions of the demo policy set.
const BODIES: &[&str] = &[
    r#"{"actor":"demo-agent","action":"aws.ec2.describe_instances","resource":"i-1","context":{"env":"prod"}}"#,
    r#"{"actor":"demo-agent","action":"aws.ec2.terminate_instances","resource":"i-2","context":{"env":"staging"}}"#,
    r#"{"actor":"demo-agent","action":"aws.ec2.terminate_instances","resource":"i-3"}"#,
    r#"{"actor":"demo-agent","action":"aws.iam.create_user","resource":"u-1"}"#,
];

/// The same mix as AuthZEN evaluations.
const AUTHZEN_BODIES: &[&str] = &[
    r#"{"subject":{"type":"Agent","id":"demo-agent"},"action":{"name":"aws.ec2.describe_instances"},"resource":{"type":"Resource","id":"i-1"},"context":{"env":"prod"}}"#,
    r#"{"subject":{"type":"Agent","id":"demo-agent"},"action":{"name":"aws.ec2.terminate_instances"},"resource":{"type":"Resource","id":"i-2"},"context":{"env":"staging"}}"#,
    r#"{"subject":{"type":"Agent","id":"demo-agent"},"action":{"name":"aws.ec2.terminate_instances"},"resource":{"type":"Resource","id":"i-3"}}"#,
    r#"{"subject":{"type":"Agent","id":"demo-agent"},"action":{"name":"aws.iam.create_user"},"resource":{"type":"Resource","id":"u-1"}}"#,
];

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// The TLS client configuration, when `--tls-ca` is given.
fn tls_connector(args: &Args) -> anyhow::Result<Option<tokio_rustls::TlsConnector>> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let Some(ca) = &args.tls_ca else {
        return Ok(None);
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).with_context(|| format!("`{}`", ca.display()))? {
        roots.add(cert?)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .with_root_certificates(roots);
    let config = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .with_context(|| format!("`{}`", cert.display()))?
                .collect::<Result<Vec<_>, _>>()?;
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("`{}`", key.display()))?;
            builder.with_client_auth_cert(chain, key)?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Some(tokio_rustls::TlsConnector::from(Arc::new(config))))
}

/// A new HTTP/1.1 connection to `addr`, over TLS when `tls` is given.
async fn connect(
    addr: SocketAddr,
    tls: Option<&tokio_rustls::TlsConnector>,
) -> anyhow::Result<Sender> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_nodelay(true)?;
    let Some(tls) = tls else {
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        return Ok(sender);
    };
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let stream = tls.connect(name, stream).await?;
    let (sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

/// How long before a request is due the scheduler stops sleeping and starts yielding.
const SPIN: Duration = Duration::from_micros(300);

/// One request to send: its index in the mix and, in open loop, when it was due.
type Ticket = (usize, Option<Instant>);

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !args.addr.ip().is_loopback() {
        bail!(
            "`{}` is not a loopback address; zt-loadgen only loads this machine",
            args.addr
        );
    }
    if args.connections == 0 || args.duration == 0 || args.rate == Some(0) {
        bail!("`--connections`, `--duration` and `--rate` must be at least 1");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let bodies: Arc<Vec<Bytes>> = Arc::new(match &args.bodies {
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read `{}`", file.display()))?;
            let lines: Vec<Bytes> = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| Bytes::from(l.to_owned()))
                .collect();
            if lines.is_empty() {
                bail!("`{}` holds no request bodies", file.display());
            }
            lines
        }
        None => args
            .mix
            .bodies()
            .iter()
            .map(|b| Bytes::from_static(b.as_bytes()))
            .collect(),
    });
    let path = args
        .path
        .clone()
        .unwrap_or_else(|| args.mix.path().to_owned());
    let headers: Arc<Vec<(String, String)>> = Arc::new(match &args.headers {
        Some(file) => std::fs::read_to_string(file)
            .with_context(|| format!("cannot read `{}`", file.display()))?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                l.split_once(':')
                    .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
                    .with_context(|| format!("`{l}` is not `Name: value`"))
            })
            .collect::<anyhow::Result<_>>()?,
        None => Vec::new(),
    });
    let content_type = if args.form {
        "application/x-www-form-urlencoded"
    } else {
        "application/json"
    };
    // Closed loop: the workers take the bodies in order, each once per cycle.
    let next = Arc::new(AtomicU64::new(0));
    // Open loop: one scheduler hands out tickets; workers take them as they come free.
    let (tickets, queue) = tokio::sync::mpsc::channel::<Ticket>(1 << 20);
    let queue = Arc::new(tokio::sync::Mutex::new(queue));
    let open_loop = args.rate.is_some();
    let read = |file: &std::path::Path| {
        std::fs::read_to_string(file)
            .map(|text| text.trim().to_owned())
            .with_context(|| format!("cannot read `{}`", file.display()))
    };
    let authorization = args
        .token_file
        .as_deref()
        .map(read)
        .transpose()?
        .map(|token| format!("Bearer {token}"));
    let agent_token = args.agent_token_file.as_deref().map(read).transpose()?;
    let tls = tls_connector(&args)?;
    let new_connections = args.new_connections;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut workers = Vec::new();
    for _ in 0..args.connections {
        let (measuring, stop, errors, queue, bodies, headers, next) = (
            Arc::clone(&measuring),
            Arc::clone(&stop),
            Arc::clone(&errors),
            Arc::clone(&queue),
            Arc::clone(&bodies),
            Arc::clone(&headers),
            Arc::clone(&next),
        );
        let uri = format!("{scheme}://{}{}", args.addr, path);
        let addr = args.addr;
        let tls = tls.clone();
        let (authorization, agent_token) = (authorization.clone(), agent_token.clone());
        workers.push(tokio::spawn(async move {
            let mut histogram =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).context("histogram bounds")?;
            let mut sender = connect(addr, tls.as_ref()).await?;
            loop {
                let (index, due) = if open_loop {
                    let next = queue.lock().await.recv().await;
                    match next {
                        Some(_) if stop.load(Ordering::Relaxed) => break,
                        Some(ticket) => ticket,
                        None => break,
                    }
                } else {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let i = usize::try_from(next.fetch_add(1, Ordering::Relaxed)).unwrap_or(0);
                    (i, None)
                };
                let body = bodies
                    .get(index % bodies.len())
                    .cloned()
                    .unwrap_or_default();
                let mut request = hyper::Request::post(uri.as_str())
                    .header("content-type", content_type)
                    .header("host", addr.to_string());
                if let Some((name, value)) = headers.get(index % headers.len().max(1)) {
                    request = request.header(name.as_str(), value.as_str());
                }
                if let Some(value) = &authorization {
                    request = request.header("authorization", value.as_str());
                }
                if let Some(value) = &agent_token {
                    request = request.header("zt-agent-token", value.as_str());
                }
                let request = request.body(Full::new(body))?;
                let started = due.unwrap_or_else(Instant::now);
                if new_connections {
                    sender = connect(addr, tls.as_ref()).await?;
                }
                let response = sender.send_request(request).await?;
                let status = response.status();
                response.into_body().collect().await?;
                let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                // `/actions` answers a deny with 403: an answer, not an error.
                if !(status.is_success() || status == hyper::StatusCode::FORBIDDEN) {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                if measuring.load(Ordering::Relaxed) {
                    histogram.saturating_record(micros.max(1));
                }
            }
            anyhow::Ok(histogram)
        }));
    }
    // The scheduler is a thread of its own, sleeping until each request is due: tokio's timer
    // wheel ticks in milliseconds, and a request handed out a millisecond late would be
    // measured a millisecond slow.
    let scheduler = args.rate.map(|rate| {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let start = Instant::now();
            let mut sent: u64 = 0;
            while !stop.load(Ordering::Relaxed) {
                let due = start + Duration::from_nanos(sent.saturating_mul(1_000_000_000) / rate);
                // Sleep until shortly before, then yield until due: a thread woken from sleep
                // (and, in a VM, its idle CPU) can be late by more than the latencies measured.
                let now = Instant::now();
                if due > now + SPIN {
                    std::thread::sleep(due - now - SPIN);
                }
                while Instant::now() < due {
                    std::thread::yield_now();
                }
                let index = usize::try_from(sent).unwrap_or_default();
                if tickets.blocking_send((index, Some(due))).is_err() {
                    return;
                }
                sent += 1;
            }
        })
    });
    tokio::time::sleep(Duration::from_secs(args.warmup)).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.duration)).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    if let Some(scheduler) = scheduler {
        // Dropping the scheduler's sender ends the workers once the queue drains.
        tokio::task::spawn_blocking(move || scheduler.join())
            .await?
            .map_err(|_| anyhow::anyhow!("the scheduler thread panicked"))?;
    }

    let mut total = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for worker in workers {
        total.add(worker.await??)?;
    }
    let count = total.len();
    // Closed loop: every body taken, warm-up included (open loop counts its tickets instead).
    let failed = errors.load(Ordering::Relaxed);
    let seconds = elapsed.as_secs_f64();
    let per_second = count as f64 / seconds;
    let [p50, p99, p999] = [0.5, 0.99, 0.999].map(|q| total.value_at_quantile(q));
    let max = total.max();
    if args.json {
        println!(
            "{{\"offered\":{},\"connections\":{},\"seconds\":{seconds:.3},\"sent\":{},\"requests\":{count},\"errors\":{failed},\"per_second\":{per_second:.1},\"p50_us\":{p50},\"p99_us\":{p99},\"p999_us\":{p999},\"max_us\":{max}}}",
            args.rate.unwrap_or(0),
            args.connections,
            next.load(Ordering::Relaxed),
        );
        return Ok(());
    }
    let offered = args
        .rate
        .map_or_else(|| "closed-loop".to_owned(), |r| format!("{r}/s"));
    println!(
        "mix={:?} offered={offered} connections={} duration={seconds:.1}s requests={count} errors={failed} decisions/s={per_second:.0} p50={p50}us p99={p99}us p99.9={p999}us max={max}us",
        args.mix, args.connections,
    );
    if failed > 0 {
        bail!("some requests failed");
    }
    Ok(())
}
