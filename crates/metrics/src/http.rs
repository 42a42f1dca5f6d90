//! The scrape endpoint: `GET /metrics` over HTTP/1.1, everything else 404.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE as CONTENT_TYPE_HEADER};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tracing::{debug, error, info, warn};

use crate::error::MetricsError;
use crate::metrics::Metrics;

/// The only path served.
pub const METRICS_PATH: &str = "/metrics";

/// What prometheus-client's text encoder produces (OpenMetrics 1.0, with `# EOF`), which
/// Prometheus negotiates and parses natively.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A client that has not sent its headers by then is cut off (slow or stuck scrapers must
/// not pile up connections).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// After shutdown, in-flight scrapes get this long to finish before the server returns.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Pause after a failed `accept` (EMFILE, ENFILE) so the loop does not spin on it.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Binds `addr` and serves [`METRICS_PATH`] until `shutdown` completes, then lets in-flight
/// scrapes finish (bounded by a short grace period) and returns.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), MetricsError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })?;
    serve_on(listener, metrics, shutdown).await
}

/// [`serve`] on an already bound listener (tests bind port 0 and read the port back).
pub async fn serve_on(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), MetricsError> {
    let local = listener.local_addr().map_err(MetricsError::LocalAddr)?;
    info!(address = %local, path = METRICS_PATH, "serving metrics");

    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);

    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let metrics = Arc::clone(&metrics);
                    let service = service_fn(move |req| {
                        let response = respond(&metrics, &req);
                        async move { Ok::<_, Infallible>(response) }
                    });
                    let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
                    tokio::spawn(async move {
                        if let Err(error) = connection.await {
                            debug!(%peer, %error, "metrics connection ended with an error");
                        }
                    });
                }
                Err(error) => {
                    warn!(address = %local, %error, "accepting a metrics connection failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
    }

    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(address = %local, grace = ?SHUTDOWN_GRACE, "metrics connections still open after the grace period; dropping them");
    }
    info!(address = %local, "metrics endpoint stopped");
    Ok(())
}

/// Routes one request. Pure apart from encoding, so the routing is testable without sockets.
fn respond(metrics: &Metrics, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    route(metrics, req.method(), req.uri().path())
}

fn route(metrics: &Metrics, method: &Method, path: &str) -> Response<Full<Bytes>> {
    if method != Method::GET || path != METRICS_PATH {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    }
    match metrics.encode() {
        Ok(body) => {
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response
                .headers_mut()
                .insert(CONTENT_TYPE_HEADER, HeaderValue::from_static(CONTENT_TYPE));
            response
        }
        Err(err) => {
            error!(error = %err, "encoding metrics failed");
            plain(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n")
        }
    }
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE_HEADER,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests;
