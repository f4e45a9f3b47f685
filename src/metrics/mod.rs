//! The Prometheus endpoint (`[metrics] listen`): `GET /metrics` in the
//! Prometheus text exposition format (0.0.4), built at each scrape from
//! what `telemetry` counts (`collect.rs`) and the process (`process.rs`).
//! Reads only: it imports `telemetry` and the error codes, and the
//! supervisor hands it the served models (after every reload too).
//!
//! The server is hyper's HTTP/1 connection driver on the supervisor's
//! tokio thread, with no framework: one path, one method, one request per
//! connection (Prometheus reconnects each scrape; nothing to keep alive),
//! at most [`MAX_CONNECTIONS`] at once, each bounded in time, so a client
//! that connects and stalls costs a socket, never the event loop. A scrape
//! is a few hundred atomic loads and one short read of `/proc/self`.
//!
//! Why these crates: prometheus-client is the Prometheus project's own
//! Rust client (its text encoder, its collector interface; no registry
//! of our own to keep). hyper with only `server` and `http1` is the
//! smallest maintained HTTP server on tokio. Together, with hyper-util's
//! tokio adapters and http-body-util, they cost the stripped aarch64
//! release binary 327,680 bytes (4,985,816 -> 5,313,496; budget 8 MB,
//! scripts/build-arm.sh and tests/arm.rs check it).

mod collect;
mod process;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::prometheus_text;
use prometheus_client::registry::Registry;
use tokio::sync::Semaphore;

pub use collect::{ModelGauges, ModelSource, Sources};

use crate::telemetry::DaemonStats;

/// Scrapes served at once; more connections are closed unanswered.
/// Prometheus scrapes one at a time per target; a few spare for an
/// operator's curl.
pub const MAX_CONNECTIONS: usize = 8;
/// A client must send its request head within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A whole connection (request and response) ends after this.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot listen on {addr} for Prometheus scrapes (metrics.listen): {source}{hint}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
        hint: &'static str,
    },
}

/// The running endpoint. Dropping it stops the server (its accept task
/// is aborted; scrapes in progress finish on their own tasks).
pub struct Endpoint {
    sources: Arc<Sources>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Endpoint {
    /// Binds `addr` and starts serving on the current tokio runtime. The
    /// model list starts empty: [`Endpoint::set_models`].
    pub fn start(addr: SocketAddr, daemon: Arc<DaemonStats>) -> Result<Endpoint, MetricsError> {
        let bind_error = |source: std::io::Error| {
            let hint = match source.kind() {
                std::io::ErrorKind::AddrInUse => {
                    "; another process listens there (see `ss -ltnp`), or set [metrics] listen to a free port"
                }
                std::io::ErrorKind::AddrNotAvailable => {
                    "; no interface of this machine has that address"
                }
                std::io::ErrorKind::PermissionDenied => {
                    "; ports below 1024 need privileges the service does not have"
                }
                _ => "",
            };
            MetricsError::Bind { addr, source, hint }
        };
        // std's bind sets SO_REUSEADDR, so a restart does not wait out
        // TIME_WAIT; a port another process listens on still fails here.
        let std_listener = std::net::TcpListener::bind(addr).map_err(bind_error)?;
        std_listener.set_nonblocking(true).map_err(bind_error)?;
        let listener = tokio::net::TcpListener::from_std(std_listener).map_err(bind_error)?;
        let addr = listener.local_addr().unwrap_or(addr);

        let sources = Arc::new(Sources::new(daemon));
        let mut registry = Registry::default();
        registry.register_collector(Box::new(collect::Exposition(Arc::clone(&sources))));
        let task = tokio::spawn(serve(listener, Arc::new(registry)));
        log::info!("metrics: serving Prometheus scrapes on http://{addr}/metrics");
        Ok(Endpoint { sources, task })
    }

    /// The models scrapes report from now on (after start and every reload).
    pub fn set_models(&self, models: Vec<ModelSource>) {
        self.sources.set_models(models);
    }
}

async fn serve(listener: tokio::net::TcpListener, registry: Arc<Registry>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, most likely: wait rather than
                // spin, and say so at most once a second.
                log::warn!("metrics: cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            // Closed unanswered: the scraper sees a reset and retries.
            drop(stream);
            continue;
        };
        let registry = Arc::clone(&registry);
        tokio::spawn(async move {
            let _permit = permit;
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(
                    TokioIo::new(stream),
                    service_fn(|req| {
                        let response = respond(&req, &registry);
                        async move { Ok::<_, Infallible>(response) }
                    }),
                );
            // A client that sends nothing, or reads nothing back, is cut
            // off; either way there is nothing to report.
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
        });
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// `GET /metrics` (and `HEAD`); 404 for any other path, 405 for another
/// method.
fn respond(req: &Request<Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
    if req.uri().path() != "/metrics" {
        return text(
            StatusCode::NOT_FOUND,
            "not found: the metrics are at /metrics\n",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed: /metrics answers GET and HEAD\n",
        );
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let mut body = String::with_capacity(16 * 1024);
    if let Err(e) = prometheus_text::encode(&mut body, registry) {
        log::error!("metrics: cannot encode the exposition: {e}");
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the metrics could not be encoded; see the daemon's log\n",
        );
    }
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(prometheus_text::CONTENT_TYPE),
    );
    r
}
