//! `zt-loadgen`: a closed-loop HTTP load generator for ZT-Infra's decision endpoint.
//!
//! Each of `--connections` workers keeps one HTTP/1.1 keep-alive connection and sends the next
//! request as soon as the previous answer arrives, cycling through a mix of allowed and denied
//! requests. After `--warmup`, it records each request's latency in an HDR histogram for
//! `--duration`, then prints p50/p99/p99.9/max and decisions per second. Only loopback
//! addresses are accepted: this tool is for benchmarks on the machine itself.

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
    /// The path to post to.
    #[arg(long, default_value = "/v1/decide")]
    path: String,
}

/// The request mix: allowed and denied decisions of the demo policy set.
const BODIES: &[&str] = &[
    r#"{"actor":"demo-agent","action":"aws.ec2.describe_instances","resource":"i-1","context":{"env":"prod"}}"#,
    r#"{"actor":"demo-agent","action":"aws.ec2.terminate_instances","resource":"i-2","context":{"env":"staging"}}"#,
    r#"{"actor":"demo-agent","action":"aws.ec2.terminate_instances","resource":"i-3"}"#,
    r#"{"actor":"demo-agent","action":"aws.iam.create_user","resource":"u-1"}"#,
];

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !args.addr.ip().is_loopback() {
        bail!(
            "`{}` is not a loopback address; zt-loadgen only loads this machine",
            args.addr
        );
    }
    if args.connections == 0 || args.duration == 0 {
        bail!("`--connections` and `--duration` must be at least 1");
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
    let mut workers = Vec::new();
    for worker in 0..args.connections {
        let (measuring, stop, errors) = (
            Arc::clone(&measuring),
            Arc::clone(&stop),
            Arc::clone(&errors),
        );
        let uri = format!("http://{}{}", args.addr, args.path);
        let addr = args.addr;
        workers.push(tokio::spawn(async move {
            let mut histogram =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).context("histogram bounds")?;
            let stream = tokio::net::TcpStream::connect(addr)
                .await
                .with_context(|| format!("cannot connect to {addr}"))?;
            stream.set_nodelay(true)?;
            let io = hyper_util::rt::TokioIo::new(stream);
            let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(connection);
            let mut i = worker;
            while !stop.load(Ordering::Relaxed) {
                let body = BODIES.get(i % BODIES.len()).copied().unwrap_or("{}");
                i += 1;
                let request = hyper::Request::post(uri.as_str())
                    .header("content-type", "application/json")
                    .header("host", addr.to_string())
                    .body(Full::new(Bytes::from_static(body.as_bytes())))?;
                let started = Instant::now();
                let response = sender.send_request(request).await?;
                let ok = response.status().is_success();
                response.into_body().collect().await?;
                let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                if measuring.load(Ordering::Relaxed) {
                    histogram.saturating_record(micros.max(1));
                }
            }
            anyhow::Ok(histogram)
        }));
    }
    tokio::time::sleep(Duration::from_secs(args.warmup)).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.duration)).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);

    let mut total = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for worker in workers {
        total.add(worker.await??)?;
    }
    let count = total.len();
    let us = |q: f64| total.value_at_quantile(q);
    println!(
        "connections={} duration={:.1}s requests={} errors={} decisions/s={:.0} p50={}us p99={}us p99.9={}us max={}us",
        args.connections,
        elapsed.as_secs_f64(),
        count,
        errors.load(Ordering::Relaxed),
        count as f64 / elapsed.as_secs_f64(),
        us(0.5),
        us(0.99),
        us(0.999),
        total.max()
    );
    if errors.load(Ordering::Relaxed) > 0 {
        bail!("some requests failed");
    }
    Ok(())
}
