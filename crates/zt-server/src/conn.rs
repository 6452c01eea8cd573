//! Connections: the accept loop, and what it refuses to let one client hold.
//!
//! A client may open connections, send part of a request, and wait; each such connection costs
//! a file descriptor and each unfinished body the memory received so far. [`serve`] bounds all
//! of it, for the decision service and the MCP gateway alike:
//!
//! - a request head is at most [`MAX_HEAD_BYTES`] (431 beyond, answered by hyper), and a
//!   connection's read buffer at most [`READ_BUFFER_BYTES`];
//! - a connection must send a request's whole head within `header_timeout` of the server
//!   starting to wait for it (hyper's header timer, which starts as soon as the connection is
//!   idle): this closes slow heads, and keep-alive connections idle for that long;
//! - a request's body must arrive within `body_timeout` of its head (408 otherwise);
//! - a body announced larger than `max_body_bytes` is answered 413 at once, before any of it is
//!   read (so a client sending `Expect: 100-continue` never gets its `100 Continue`);
//! - bodies being received hold a share of one budget, `max_pending_body_bytes`, taken as their
//!   bytes arrive and given back when the body is dropped: a request whose bytes do not fit is
//!   answered 503, so unfinished bodies together never hold more than the budget;
//! - at most `max_connections` connections are served at once; beyond that, a connection is
//!   accepted, answered 503 and closed, so that the accept loop never stalls and the backlog
//!   never fills with connections nobody reads.
//!
//! With TLS ([`Tls`]), each connection's handshake runs in its own task and must end within
//! `header_timeout`; every request of the connection then carries the client's verified
//! X.509-SVID, if it presented one, as a [`Peer`] extension.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt as _;

use crate::problem::Problem;

/// The most a connection's read buffer holds: the largest request head, and a body's bytes on
/// their way to the budget.
pub const READ_BUFFER_BYTES: usize = 64 * 1024;

/// The largest request head (request line and headers); a larger one is answered 431.
pub const MAX_HEAD_BYTES: usize = 32 * 1024;

/// What one connection and one request may hold (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub max_connections: usize,
    pub max_body_bytes: usize,
    pub max_pending_body_bytes: usize,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            header_timeout: crate::defaults::HEADER_TIMEOUT,
            body_timeout: crate::defaults::BODY_TIMEOUT,
            max_connections: crate::defaults::MAX_CONNECTIONS,
            max_body_bytes: crate::defaults::MAX_BODY_BYTES,
            max_pending_body_bytes: crate::defaults::MAX_PENDING_BODY_BYTES,
        }
    }
}

impl ConnLimits {
    /// Lowers `max_connections` to what the process's file descriptor limit allows, keeping 64
    /// descriptors for the store, the policy files and the log (after raising the soft limit to
    /// the hard one, which needs no privilege).
    fn fit_descriptors(mut self) -> Self {
        if let Some(available) = descriptors() {
            let fit = available.saturating_sub(64).max(16);
            if self.max_connections > fit {
                tracing::warn!(
                    max_connections = self.max_connections,
                    lowered_to = fit,
                    "`max_connections` is more than the open file limit allows; lowered"
                );
                self.max_connections = fit;
            }
        }
        self
    }
}

#[cfg(target_os = "linux")]
fn descriptors() -> Option<usize> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let raised = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    let current = match setrlimit(Resource::Nofile, raised) {
        Ok(()) => limit.maximum,
        Err(_) => limit.current,
    };
    current.and_then(|n| usize::try_from(n).ok())
}

#[cfg(not(target_os = "linux"))]
fn descriptors() -> Option<usize> {
    None
}

/// The client of a TLS connection, as every request on it carries it: its X.509-SVID when it
/// presented one that verified, `None` otherwise. Requests on plain connections have no `Peer`.
#[derive(Debug, Clone, Default)]
pub struct Peer(pub Option<Arc<zt_identity::svid::X509Svid>>);

/// A TLS listener's acceptor, and what names its clients.
#[derive(Clone)]
pub struct Tls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub workloads: Arc<crate::workloads::Workloads>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").finish_non_exhaustive()
    }
}

/// Serves `router` on `listener` under `limits` (with `max_connections` fitted to the open file
/// limit), over TLS when `tls` is given, until `shutdown` resolves, then lets the connections
/// finish their requests (at most 10 s).
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: ConnLimits,
    tls: Option<Tls>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let limits = limits.fit_descriptors();
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let budget = Arc::new(Semaphore::new(limits.max_pending_body_bytes));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        // Each connection's read buffer grows to this at most (hyper's default is about 400
        // KiB): request heads are far smaller, and bodies are counted in the budget instead.
        .max_buf_size(READ_BUFFER_BYTES)
        .max_header_size(MAX_HEAD_BYTES);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                // Out of descriptors (EMFILE), or a connection reset before it was accepted:
                // pause briefly rather than spin.
                tracing::warn!(error = %e, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            metrics::counter!("ztinfra_connections_refused_total").increment(1);
            tokio::spawn(refuse(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let budget = Arc::clone(&budget);
        let Some(tls) = &tls else {
            let service = service(router, limits, budget, None);
            let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "connection closed with an error");
                }
                drop(permit);
            });
            continue;
        };
        let tls = tls.clone();
        let http = http.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let handshake =
                tokio::time::timeout(limits.header_timeout, tls.acceptor.accept(stream)).await;
            let stream = match handshake {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "TLS handshake failed");
                    metrics::counter!("ztinfra_tls_handshakes_failed_total").increment(1);
                    return;
                }
                Err(_) => {
                    metrics::counter!("ztinfra_tls_handshakes_failed_total").increment(1);
                    return;
                }
            };
            let peer = Peer(tls.workloads.peer(stream.get_ref().1.peer_certificates()));
            let service = service(router, limits, budget, Some(peer));
            let connection = watcher.watch(http.serve_connection(TokioIo::new(stream), service));
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection closed with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open 10 s after shutdown began; closing them");
    }
}

/// The service of one connection: each request goes to `router`, carrying `peer` (for TLS).
fn service(
    router: Router,
    limits: ConnLimits,
    budget: Arc<Semaphore>,
    peer: Option<Peer>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response,
    Error = Infallible,
    Future = impl std::future::Future<Output = Result<Response, Infallible>> + Send,
> + Clone {
    hyper::service::service_fn(move |mut request: Request<Incoming>| {
        let router = router.clone();
        let budget = Arc::clone(&budget);
        if let Some(peer) = &peer {
            request.extensions_mut().insert(peer.clone());
        }
        async move { Ok::<_, Infallible>(handle(router, request, limits, budget).await) }
    })
}

/// Answers a connection beyond `max_connections`: 503, then closed.
async fn refuse(mut stream: tokio::net::TcpStream) {
    let body = serde_json::to_string(&Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "too-many-connections",
        "too many connections",
        "the service has as many connections open as it allows (`max_connections`); try again",
    ))
    .unwrap_or_default();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: {}\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        crate::problem::CONTENT_TYPE,
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

async fn handle(
    router: Router,
    request: Request<Incoming>,
    limits: ConnLimits,
    budget: Arc<Semaphore>,
) -> Response {
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|n| n > limits.max_body_bytes as u64) {
        let mut response = crate::body::too_large().into_response();
        // The body is not read: the connection cannot be reused.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return response;
    }
    let deadline = tokio::time::Instant::now() + limits.body_timeout;
    let request = request.map(|body| {
        Body::new(GuardedBody {
            inner: body,
            deadline,
            timer: None,
            budget,
            held: None,
        })
    });
    match router.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// Why a request body was cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("the request body did not arrive in time (`body_timeout`)")]
    Timeout,
    #[error("the service holds as many unfinished request bodies as it allows; try again")]
    Busy,
}

impl BodyError {
    /// The answer to a request whose body was cut off.
    pub fn problem(self) -> Problem {
        let (status, slug, title) = match self {
            Self::Timeout => (
                StatusCode::REQUEST_TIMEOUT,
                "body-timeout",
                "request body timeout",
            ),
            Self::Busy => (StatusCode::SERVICE_UNAVAILABLE, "busy", "service busy"),
        };
        Problem::new(status, slug, title, self.to_string())
    }
}

/// A request body bounded in time, and in memory through the shared budget.
struct GuardedBody {
    inner: Incoming,
    deadline: tokio::time::Instant,
    /// Made when the body first has to wait: most bodies are whole in the first read.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    budget: Arc<Semaphore>,
    held: Option<OwnedSemaphorePermit>,
}

impl GuardedBody {
    fn take_budget(&mut self, bytes: usize) -> Result<(), BodyError> {
        let n = u32::try_from(bytes).map_err(|_| BodyError::Busy)?;
        let permit = Arc::clone(&self.budget)
            .try_acquire_many_owned(n)
            .map_err(|_| BodyError::Busy)?;
        match &mut self.held {
            Some(held) => held.merge(permit),
            None => self.held = Some(permit),
        }
        Ok(())
    }
}

impl http_body::Body for GuardedBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len();
                    if let Err(e) = this.take_budget(len) {
                        metrics::counter!("ztinfra_request_bodies_refused_total", "reason" => "busy").increment(1);
                        return Poll::Ready(Some(Err(e.into())));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let deadline = this.deadline;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.as_mut().poll(cx).is_ready() {
                    metrics::counter!("ztinfra_request_bodies_refused_total", "reason" => "timeout").increment(1);
                    return Poll::Ready(Some(Err(BodyError::Timeout.into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
