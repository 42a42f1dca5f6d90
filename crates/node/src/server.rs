//! The gRPC server on a unix socket: socket hygiene, graceful shutdown.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("endpoint {0:?} is not a unix:// URL (for example unix:///csi/csi.sock)")]
    NotUnix(String),
    #[error("endpoint {path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("endpoint {0} exists and is not a socket: refusing to remove it")]
    NotASocket(PathBuf),
    #[error("another instance serves {path} (it holds {lock}; waited {waited:?}): stop it first")]
    InUse {
        path: PathBuf,
        lock: PathBuf,
        waited: Duration,
    },
}

/// `unix:///csi/csi.sock` (or `unix:/csi/csi.sock`, or a bare absolute path) to its path.
pub fn socket_path(endpoint: &str) -> Result<PathBuf, EndpointError> {
    let p = endpoint
        .strip_prefix("unix://")
        .or_else(|| endpoint.strip_prefix("unix:"))
        .unwrap_or(endpoint);
    if !p.starts_with('/') {
        return Err(EndpointError::NotUnix(endpoint.to_owned()));
    }
    Ok(PathBuf::from(p))
}

/// The socket this process serves, and the lock that makes it the only one serving there.
///
/// The lock is an exclusive `flock` on `<socket>.lock` beside the socket, held for the life of
/// the process (the kernel releases it when the process dies, however it dies). The socket is
/// removed on shutdown only while it is still the one this process created (same device and
/// inode): a successor that already took over keeps its socket.
#[derive(Debug)]
pub struct BoundSocket {
    path: PathBuf,
    ino: (u64, u64),
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl BoundSocket {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Remove the socket if it is still ours; returns whether it was removed.
    pub fn remove(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if m.file_type().is_socket() && (m.dev(), m.ino()) == self.ino => {
                std::fs::remove_file(&self.path).is_ok()
            }
            Ok(_) => {
                tracing::info!(socket = %self.path.display(), "the socket is no longer ours: leaving it");
                false
            }
            Err(_) => false,
        }
    }
}

/// How long a second instance waits for the lock before giving up.
pub const LOCK_WAIT: Duration = Duration::from_secs(10);

fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".lock");
    path.with_file_name(name)
}

/// Bind the socket: create the parent directory, take the socket's lock (waiting up to
/// `lock_wait` for a previous instance to exit), remove a stale socket (only a socket), and
/// restrict permissions to owner and group (kubelet runs as root).
pub fn bind(
    path: &Path,
    lock_wait: Duration,
) -> Result<(UnixListener, BoundSocket), EndpointError> {
    use std::os::unix::fs::MetadataExt;
    let io = |op| {
        move |source| EndpointError::Io {
            path: path.to_owned(),
            op,
            source,
        }
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io("creating the parent directory"))?;
    }
    let lock_file = lock_path(path);
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_file)
        .map_err(io("opening the lock file"))?;
    let start = std::time::Instant::now();
    let mut file = lock;
    let lock = loop {
        use nix::fcntl::{Flock, FlockArg};
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(held) => break held,
            Err((f, nix::errno::Errno::EWOULDBLOCK)) if start.elapsed() < lock_wait => {
                // Retry pacing while another instance shuts down, not synchronisation.
                file = f;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(EndpointError::InUse {
                    path: path.to_owned(),
                    lock: lock_file,
                    waited: start.elapsed(),
                })
            }
            Err((_, e)) => return Err(io("locking")(e.into())),
        }
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(io("removing the stale socket"))?
        }
        Ok(_) => return Err(EndpointError::NotASocket(path.to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("inspecting")(e)),
    }
    let listener = UnixListener::bind(path).map_err(io("binding"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(io("setting permissions"))?;
    let m = std::fs::symlink_metadata(path).map_err(io("inspecting the new socket"))?;
    Ok((
        listener,
        BoundSocket {
            path: path.to_owned(),
            ino: (m.dev(), m.ino()),
            _lock: lock,
        },
    ))
}

/// The accepted connections, each reaching the server with any client's `:authority`
/// accepted ([`crate::authority`]).
pub fn incoming(
    listener: UnixListener,
) -> impl tokio_stream::Stream<
    Item = std::io::Result<crate::authority::AnyAuthority<tokio::net::UnixStream>>,
> {
    use tokio_stream::StreamExt;
    UnixListenerStream::new(listener).map(|r| r.map(crate::authority::AnyAuthority::new))
}

/// Requests the codec could not take get the code the CSI spec and gRPC give bad input:
/// a string field that is not UTF-8 (or any undecodable message) is `InvalidArgument`, not
/// tonic's `Internal`; a message over the size limit is `ResourceExhausted`, not
/// `OutOfRange`. The status of such a call is in the response headers (a trailers-only
/// response), which is where this layer rewrites it.
#[derive(Debug, Clone, Copy, Default)]
pub struct BadInputCodes;

impl<S> tower::Layer<S> for BadInputCodes {
    type Service = BadInputCodesService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        BadInputCodesService { inner }
    }
}

#[derive(Debug, Clone)]
pub struct BadInputCodesService<S> {
    inner: S,
}

/// The code a codec-level rejection should carry, if this is one.
pub fn remapped_code(code: tonic::Code, message: &str) -> Option<tonic::Code> {
    match code {
        tonic::Code::Internal if message.starts_with("failed to decode Protobuf message") => {
            Some(tonic::Code::InvalidArgument)
        }
        tonic::Code::OutOfRange if message.contains("decoded message length too large") => {
            Some(tonic::Code::ResourceExhausted)
        }
        _ => None,
    }
}

impl<S, B, R> tower::Service<http::Request<B>> for BadInputCodesService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut resp = fut.await?;
            let h = resp.headers();
            let code = h
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok())
                .map(tonic::Code::from_i32);
            let message = h
                .get("grpc-message")
                .and_then(|v| v.to_str().ok())
                .map(percent_decode)
                .unwrap_or_default();
            if let Some(new) = code.and_then(|c| remapped_code(c, &message)) {
                tracing::warn!(code = ?new, %message, "request refused by the codec");
                let v = http::HeaderValue::from(new as i32);
                resp.headers_mut().insert("grpc-status", v);
            }
            Ok(resp)
        })
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; shutdown only by kill -9");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: finishing in-flight RPCs, refusing new ones"),
        _ = int.recv() => tracing::info!("SIGINT: finishing in-flight RPCs, refusing new ones"),
    }
}

/// How long to wait for in-flight work after the signal.
pub fn grace() -> Duration {
    crate::defaults::SHUTDOWN_GRACE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_forms() {
        assert_eq!(
            socket_path("unix:///csi/csi.sock").unwrap(),
            PathBuf::from("/csi/csi.sock")
        );
        assert_eq!(
            socket_path("unix:/csi/csi.sock").unwrap(),
            PathBuf::from("/csi/csi.sock")
        );
        assert_eq!(
            socket_path("/csi/csi.sock").unwrap(),
            PathBuf::from("/csi/csi.sock")
        );
        assert!(socket_path("tcp://127.0.0.1:10000").is_err());
    }

    #[tokio::test]
    async fn a_regular_file_at_the_endpoint_is_never_removed() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("csi.sock");
        std::fs::write(&p, b"precious").unwrap();
        assert!(matches!(
            bind(&p, Duration::ZERO),
            Err(EndpointError::NotASocket(_))
        ));
        assert_eq!(std::fs::read(&p).unwrap(), b"precious");
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced_and_the_new_one_is_not_world_writable() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/csi.sock");
        drop(bind(&p, Duration::ZERO).unwrap());
        let l = bind(&p, Duration::ZERO).expect("stale socket replaced");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o002,
            0,
            "socket must not be world-writable: {mode:o}"
        );
        drop(l);
    }

    #[tokio::test]
    async fn one_instance_per_socket_and_a_successors_socket_is_never_removed() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("csi.sock");
        let (_l1, first) = bind(&p, Duration::ZERO).unwrap();
        match bind(&p, Duration::from_millis(300)) {
            Err(EndpointError::InUse { lock, .. }) => {
                assert_eq!(lock, d.path().join("csi.sock.lock"))
            }
            other => panic!("a second instance must not take the socket: {other:?}"),
        }
        assert!(p.exists(), "the first instance's socket is untouched");
        // A successor replaced the socket (say, an operator removed the lock): the first
        // instance's shutdown leaves the successor's socket alone.
        std::fs::remove_file(&p).unwrap();
        let _successor = std::os::unix::net::UnixListener::bind(&p).unwrap();
        assert!(!first.remove(), "not ours any more");
        assert!(p.exists(), "the successor's socket stays");
        drop(first);
        let (_l2, second) = bind(&p, Duration::ZERO).expect("the lock is free once released");
        assert!(second.remove(), "its own socket is removed");
        assert!(!p.exists());
    }
}
