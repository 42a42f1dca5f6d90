use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::*;

const DEADLINE: Duration = Duration::from_secs(30);

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), MetricsError>>,
}

impl Server {
    async fn start(metrics: Arc<Metrics>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind an ephemeral port on 127.0.0.1");
        let addr = listener.local_addr().expect("local address");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_on(listener, metrics, async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) -> Result<(), MetricsError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(DEADLINE, &mut self.task)
            .await
            .expect("server stops within the deadline after shutdown")
            .expect("server task does not panic")
    }
}

/// Sends one raw HTTP/1.1 request and returns (status line, headers, body).
async fn request(addr: SocketAddr, method: &str, path: &str) -> (String, String, String) {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream
            .write_all(req.as_bytes())
            .await
            .expect("send request");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read response");
        String::from_utf8(raw).expect("response is UTF-8")
    };
    let raw = tokio::time::timeout(DEADLINE, exchange)
        .await
        .expect("response within the deadline");
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .expect("response has a head and a body");
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (
        status.to_owned(),
        headers.to_ascii_lowercase(),
        body.to_owned(),
    )
}

#[tokio::test]
async fn get_metrics_returns_the_registry_as_openmetrics_text() {
    let metrics = Arc::new(Metrics::new("9.9.9"));
    metrics.stale_detected("mount_missing");
    let server = Server::start(Arc::clone(&metrics)).await;

    let (status, headers, body) = request(server.addr, "GET", "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK", "GET /metrics succeeds");
    assert!(
        headers.contains(&format!("content-type: {CONTENT_TYPE}")),
        "expected the OpenMetrics content type, got headers:\n{headers}"
    );
    assert!(
        body.contains(r#"rds_csi_build_info{version="9.9.9"} 1"#),
        "expected build_info in the body:\n{body}"
    );
    assert!(
        body.contains(r#"rds_csi_stale_detections_total{kind="mount_missing"} 1"#),
        "expected the recorded detection in the body:\n{body}"
    );
    server.stop().await.expect("graceful shutdown returns Ok");
}

#[tokio::test]
async fn other_paths_get_404() {
    let server = Server::start(Arc::new(Metrics::new("v"))).await;
    for path in ["/", "/metricsx", "/metrics/", "/healthz"] {
        let (status, _, _) = request(server.addr, "GET", path).await;
        assert_eq!(status, "HTTP/1.1 404 Not Found", "GET {path} is not served");
    }
    server.stop().await.expect("graceful shutdown returns Ok");
}

#[tokio::test]
async fn methods_other_than_get_get_404() {
    let server = Server::start(Arc::new(Metrics::new("v"))).await;
    let (status, _, _) = request(server.addr, "POST", "/metrics").await;
    assert_eq!(
        status, "HTTP/1.1 404 Not Found",
        "POST /metrics is not served"
    );
    server.stop().await.expect("graceful shutdown returns Ok");
}

#[tokio::test]
async fn shutdown_stops_accepting_connections() {
    let server = Server::start(Arc::new(Metrics::new("v"))).await;
    let addr = server.addr;
    server.stop().await.expect("graceful shutdown returns Ok");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "expected the listener on {addr} to be closed after shutdown"
    );
}

#[tokio::test]
async fn binding_an_address_in_use_fails_naming_the_address() {
    let taken = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = taken.local_addr().expect("local address");
    let err = serve(addr, Arc::new(Metrics::new("v")), std::future::pending())
        .await
        .expect_err("binding an address already in use fails");
    assert!(
        matches!(err, MetricsError::Bind { addr: a, .. } if a == addr),
        "expected a Bind error for {addr}, got {err:?}"
    );
    assert!(
        err.to_string().contains(&addr.to_string()),
        "expected the message to name {addr}: {err}"
    );
    assert!(
        std::error::Error::source(&err).is_some(),
        "expected the io::Error as source"
    );
}

#[tokio::test]
async fn shutdown_closes_idle_keep_alive_connections_and_returns() {
    let server = Server::start(Arc::new(Metrics::new("v"))).await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let req = format!("GET /nope HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr);
    stream
        .write_all(req.as_bytes())
        .await
        .expect("send request");
    let mut raw = Vec::new();
    let mut chunk = [0u8; 1024];
    tokio::time::timeout(DEADLINE, async {
        while !raw.ends_with(b"not found\n") {
            let n = stream.read(&mut chunk).await.expect("read response");
            assert_ne!(n, 0, "connection closed before the response was complete");
            raw.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("keep-alive response within the deadline");

    server
        .stop()
        .await
        .expect("graceful shutdown returns Ok with an idle connection open");
    let n = tokio::time::timeout(DEADLINE, stream.read(&mut chunk))
        .await
        .expect("the idle connection is closed within the deadline")
        .unwrap_or(0);
    assert_eq!(
        n, 0,
        "expected EOF on the idle keep-alive connection after shutdown"
    );
}
