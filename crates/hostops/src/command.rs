//! Run an external tool: an argument vector (never a shell), a deadline, bounded output, and
//! the exact exit status.
//!
//! Tools are only used where no syscall exists (mkfs, e2fsck, resize2fs, xfs_growfs, blkid).
//! The child runs in its own process group so that on expiry the whole group (the tool and
//! anything it forked) gets SIGKILL. A child stuck in D state ignores even SIGKILL; we then give
//! up waiting after a short grace period and report the timeout anyway, leaving a waiter thread
//! behind rather than blocking the caller (incident 6).

use std::ffi::OsString;
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Default cap on captured stdout and stderr, each.
pub const DEFAULT_OUTPUT_LIMIT: usize = 64 * 1024;

/// How long to wait for a killed child to be reaped before reporting the timeout anyway.
const KILL_GRACE: Duration = Duration::from_secs(5);

/// One invocation of an external tool.
#[derive(Debug, Clone)]
pub struct Tool {
    /// Program name (looked up in `PATH`) or absolute path.
    pub program: PathBuf,
    /// Arguments, passed as they are: no shell, no word splitting.
    pub args: Vec<OsString>,
    /// Kill the process group and report [`ToolError::Timeout`] after this long.
    pub deadline: Duration,
    /// Keep at most this many bytes of stdout and of stderr (the rest is drained and dropped).
    pub output_limit: usize,
}

impl Tool {
    pub fn new(program: impl Into<PathBuf>, deadline: Duration) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            deadline,
            output_limit: DEFAULT_OUTPUT_LIMIT,
        }
    }

    pub fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn args<I, A>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = A>,
        A: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// The tool's name for messages and logs.
    pub fn name(&self) -> String {
        self.program.display().to_string()
    }
}

/// What a tool printed when it exited 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolOutput {
    pub stdout: String,
    pub stderr: String,
    /// True when stdout or stderr was longer than the limit and was cut.
    pub truncated: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("{program} not found")]
    NotFound {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} could not be started")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} did not finish within {deadline:?}; its process group was killed")]
    Timeout { program: String, deadline: Duration },
    #[error("{program} exited with status {code}: {stderr}")]
    Exited {
        program: String,
        code: i32,
        stdout: String,
        stderr: String,
    },
    #[error("{program} was killed by signal {signal}: {stderr}")]
    Signalled {
        program: String,
        signal: i32,
        stderr: String,
    },
    #[error("waiting for {program} failed")]
    Wait {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

impl ToolError {
    /// The exit code when the tool ran to completion with a non-zero status.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            ToolError::Exited { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// Read everything from `r`, keeping at most `limit` bytes. Draining the rest keeps the child
/// from blocking on a full pipe.
fn read_bounded(mut r: impl Read, limit: usize) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    let mut truncated = false;
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let room = limit.saturating_sub(kept.len());
                if n > room {
                    truncated = true;
                }
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    (kept, truncated)
}

/// Run the tool to completion or until its deadline (blocking).
///
/// `Ok` only for exit status 0; every other outcome is a precise [`ToolError`] so callers can
/// match the codes their tool documents (blkid's 2, e2fsck's 1).
pub fn run(tool: &Tool) -> Result<ToolOutput, ToolError> {
    let program = tool.name();
    let mut cmd = Command::new(&tool.program);
    cmd.args(&tool.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        // Stable, parseable output from util-linux/e2fsprogs.
        .env("LC_ALL", "C");
    let mut child = cmd.spawn().map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            ToolError::NotFound {
                program: program.clone(),
                source,
            }
        } else {
            ToolError::Spawn {
                program: program.clone(),
                source,
            }
        }
    })?;
    let pid = child.id();
    let limit = tool.output_limit;
    let out = child.stdout.take();
    let err = child.stderr.take();
    let out_reader = std::thread::spawn(move || out.map(|o| read_bounded(o, limit)));
    let err_reader = std::thread::spawn(move || err.map(|e| read_bounded(e, limit)));

    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    tracing::debug!(program = %program, args = ?tool.args, pid, "started tool");

    let status = match rx.recv_timeout(tool.deadline) {
        Ok(s) => s.map_err(|source| ToolError::Wait {
            program: program.clone(),
            source,
        })?,
        Err(_) => {
            // The child leads its own group (process_group(0)): its pgid is its pid.
            let pgid = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            tracing::warn!(program = %program, pid, deadline = ?tool.deadline, "tool timed out; killed its process group");
            // Reap it if it dies promptly; a D-state child may not, and we do not wait for it.
            let _ = rx.recv_timeout(KILL_GRACE);
            return Err(ToolError::Timeout {
                program,
                deadline: tool.deadline,
            });
        }
    };
    // Readers end when every holder of the pipes' write ends has exited. A grandchild that
    // kept them open could stall us: bound that wait too.
    let join = |h: std::thread::JoinHandle<Option<(Vec<u8>, bool)>>| {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(h.join().ok().flatten());
        });
        rx.recv_timeout(KILL_GRACE)
            .ok()
            .flatten()
            .unwrap_or_default()
    };
    let (out, t1) = join(out_reader);
    let (err, t2) = join(err_reader);
    let stdout = String::from_utf8_lossy(&out).into_owned();
    let stderr = String::from_utf8_lossy(&err).into_owned();
    if let Some(code) = status.code() {
        tracing::debug!(program = %program, code, "tool exited");
        if code == 0 {
            return Ok(ToolOutput {
                stdout,
                stderr,
                truncated: t1 || t2,
            });
        }
        return Err(ToolError::Exited {
            program,
            code,
            stdout,
            stderr: stderr.trim().to_owned(),
        });
    }
    Err(ToolError::Signalled {
        program,
        signal: status.signal().unwrap_or(0),
        stderr: stderr.trim().to_owned(),
    })
}

/// [`run`] on the blocking pool, for async callers. The deadline is enforced inside `run`.
pub async fn run_async(tool: Tool) -> Result<ToolOutput, ToolError> {
    let program = tool.name();
    let deadline = tool.deadline;
    // `run` bounds itself; the outer bound only covers a stuck reaper (deadline + 2 graces).
    let outer = deadline + KILL_GRACE * 3;
    match crate::deadline::run_blocking("external tool", outer, move || run(&tool)).await {
        Ok(r) => r,
        Err(_) => Err(ToolError::Timeout { program, deadline }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_successful_tool_returns_its_stdout() {
        let out = run(&Tool::new("echo", Duration::from_secs(30)).args(["a b", "c"]))
            .expect("echo succeeds");
        assert_eq!(
            out.stdout, "a b c\n",
            "arguments pass through unsplit, without a shell"
        );
    }

    #[test]
    fn arguments_are_never_interpreted_by_a_shell() {
        let out = run(&Tool::new("echo", Duration::from_secs(30)).arg("$(id); `id`"))
            .expect("echo succeeds");
        assert_eq!(out.stdout, "$(id); `id`\n");
    }

    #[test]
    fn a_missing_tool_is_not_found() {
        let e = run(&Tool::new(
            "/nonexistent/rds-no-such-tool",
            Duration::from_secs(30),
        ))
        .unwrap_err();
        assert!(
            matches!(e, ToolError::NotFound { .. }),
            "expected NotFound, got {e:?}"
        );
    }

    #[test]
    fn the_exact_exit_code_and_stderr_are_reported() {
        let e =
            run(&Tool::new("sh", Duration::from_secs(30)).args(["-c", "echo oops >&2; exit 3"]))
                .unwrap_err();
        match e {
            ToolError::Exited { code, stderr, .. } => {
                assert_eq!(code, 3);
                assert_eq!(stderr, "oops");
            }
            other => panic!("expected Exited with code 3, got {other:?}"),
        }
    }

    #[test]
    fn a_tool_past_its_deadline_is_killed_with_its_children() {
        // The shell forks a long sleep; both must die with the group.
        let e = run(&Tool::new("sh", Duration::from_millis(200))
            .args(["-c", "sleep 1000 & sleep 1000; wait"]))
        .unwrap_err();
        assert!(
            matches!(e, ToolError::Timeout { .. }),
            "expected Timeout, got {e:?}"
        );
    }

    #[test]
    fn a_tool_killed_by_a_signal_is_signalled() {
        let e = run(&Tool::new("sh", Duration::from_secs(30)).args(["-c", "kill -TERM $$"]))
            .unwrap_err();
        assert!(
            matches!(e, ToolError::Signalled { signal, .. } if signal == libc::SIGTERM),
            "expected Signalled(SIGTERM), got {e:?}"
        );
    }

    #[test]
    fn output_is_bounded() {
        let mut t =
            Tool::new("sh", Duration::from_secs(30)).args(["-c", "head -c 100000 /dev/zero"]);
        t.output_limit = 1000;
        let out = run(&t).expect("sh succeeds");
        assert_eq!(out.stdout.len(), 1000, "stdout is cut at the limit");
        assert!(out.truncated, "truncation is reported");
    }
}
