//! The emulated fabric's control socket (`serve --fabric emulated`) and its client
//! (`rds-csi-node fabric …`): one request line in, the reply lines out, then the connection
//! closes. The commands and the wire form are [`rds_fabric::emulated::control`]'s.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rds_fabric::emulated::control::{parse_reply, FaultCommand};
use rds_fabric::EmulatedFabric;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::cli::FabricArgs;

/// A request line longer than this is refused (an NQN is at most 223 bytes).
const MAX_LINE: u64 = 4096;
/// How long a client may take to send its line, and a command to run.
const REQUEST_WAIT: Duration = Duration::from_secs(10);
const COMMAND_WAIT: Duration = Duration::from_secs(60);

/// Serve the control socket at `path` until the returned task is aborted. The socket is
/// bound (and locked) like the CSI socket, readable by root only.
pub async fn serve(
    fabric: Arc<EmulatedFabric>,
    path: &Path,
) -> Result<
    (tokio::task::JoinHandle<()>, rds_node::server::BoundSocket),
    Box<dyn std::error::Error + Send + Sync>,
> {
    let p = path.to_owned();
    let (listener, bound) = tokio::task::spawn_blocking(move || {
        rds_node::server::bind(&p, rds_node::server::LOCK_WAIT)
    })
    .await??;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    tracing::info!(socket = %path.display(), "emulated fabric control socket");
    let task = tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let fabric = fabric.clone();
            tokio::spawn(async move {
                if let Err(e) = answer(fabric, stream).await {
                    tracing::warn!(error = %e, "control request failed");
                }
            });
        }
    });
    Ok((task, bound))
}

async fn answer(
    fabric: Arc<EmulatedFabric>,
    stream: tokio::net::UnixStream,
) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    let read = tokio::time::timeout(
        REQUEST_WAIT,
        tokio::io::AsyncReadExt::take(BufReader::new(r), MAX_LINE).read_line(&mut line),
    )
    .await;
    let reply = match read {
        Err(_) => "error: no request line within 10 s\n".to_owned(),
        Ok(Err(e)) => format!("error: reading the request: {e}\n"),
        Ok(Ok(_)) if !line.ends_with('\n') => {
            format!("error: a request is one line of at most {MAX_LINE} bytes\n")
        }
        Ok(Ok(_)) => {
            let req = line.trim().to_owned();
            tracing::info!(request = req, "emulated fabric control");
            let run = tokio::task::spawn_blocking(move || FaultCommand::answer(&fabric, &req));
            match tokio::time::timeout(COMMAND_WAIT, run).await {
                Ok(Ok(reply)) => reply,
                Ok(Err(e)) => format!("error: the command failed: {e}\n"),
                Err(_) => "error: the command did not finish within 60 s\n".to_owned(),
            }
        }
    };
    w.write_all(reply.as_bytes()).await?;
    w.shutdown().await
}

/// `rds-csi-node fabric …`: send one command, print the reply; an error reply is an error.
pub fn client(a: &FabricArgs) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let cmd = FaultCommand::new(&a.command, a.nqn.as_deref())?;
    let socket = rds_node::server::socket_path(&a.socket)?;
    let mut s = UnixStream::connect(&socket).map_err(|e| {
        format!(
            "connecting to {} (is `serve --fabric emulated` running?): {e}",
            socket.display()
        )
    })?;
    s.set_read_timeout(Some(COMMAND_WAIT + REQUEST_WAIT))?;
    s.write_all(format!("{}\n", cmd.to_line()).as_bytes())?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    let text = parse_reply(&reply)?;
    if !text.is_empty() {
        println!("{text}");
    }
    Ok(())
}
