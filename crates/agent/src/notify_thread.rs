//! The kernel-notification path's own thread.
//!
//! The watchers (mounts, devices, filesystem errors, I/O samples) and the monitor shell run
//! on one single-threaded runtime that nothing else shares: the gRPC server, the metrics
//! endpoint and the Events poster stay on the process's multi-threaded runtime.
//!
//! - A kernel notification wakes this thread straight out of `epoll_wait`, as it wakes a
//!   thread blocked in `read(2)`. No runtime worker has to hand the wake on to another.
//! - The hand-over from a watcher to the shell is a task switch on the same thread: no
//!   second thread to unpark, no cache lines moving between CPUs.
//! - A burst of CSI calls or a slow Events API does not delay it, and it does not delay them.
//!
//! Recoveries and filesystem marks, which the shell spawns, run here too. Evictions make their
//! API calls on the process's runtime. What can block goes to this runtime's own blocking
//! pool, each with its deadline: recovery's host work, the mount watcher's full reads, and the
//! device watcher's whole-sysfs reads (a scan, every controller's state). The few sysfs
//! attributes a single uevent needs are read inline.
//!
//! The thread runs until [`NotifyThread::stop`] (or until the value is dropped). Its tasks are
//! owned by whoever spawned them (the plugin's `JoinSet`, the watcher handles), which abort
//! them as before. At the end the runtime is shut down without waiting for its blocking pool:
//! a statvfs held by a dead device must not hold the plugin's exit. Every task still on the
//! runtime is dropped before `stop` returns, so no watcher of a stopped plugin is left.

use std::io;

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

/// How long [`NotifyThread::stop`] waits for the thread.
pub const STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs a single-threaded runtime on a thread of its own until stopped or dropped.
pub struct NotifyThread {
    handle: Handle,
    /// Dropped: the thread's `block_on` returns and it shuts its runtime down.
    stop: oneshot::Sender<()>,
    /// Closed once the runtime is shut down and its tasks are dropped.
    done: oneshot::Receiver<()>,
}

impl NotifyThread {
    /// Start the thread, which builds its runtime and drives it. The runtime is built on the
    /// thread itself, so a thread that cannot be started leaves no runtime to drop here.
    pub async fn start() -> io::Result<Self> {
        let (ready_tx, ready) = oneshot::channel::<io::Result<Handle>>();
        let (stop, stopped) = oneshot::channel::<()>();
        let (done_tx, done) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("rds-monitor".into())
            .spawn(move || {
                let rt = match Builder::new_current_thread()
                    .enable_all()
                    .thread_name("rds-monitor-io")
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(rt.handle().clone()));
                // Returns when the sender is dropped (or sends).
                rt.block_on(async {
                    let _ = stopped.await;
                });
                rt.shutdown_background();
                drop(done_tx);
            })?;
        let handle = ready
            .await
            .map_err(|_| io::Error::other("the monitor's thread ended before its runtime"))??;
        Ok(Self { handle, stop, done })
    }

    /// Stop the thread; returns once its runtime is shut down and every task on it dropped
    /// (its blocking pool is not waited for), or after [`STOP_WAIT`] with a warning: a task
    /// that does not give the thread back must not hold the plugin's exit either.
    /// Returns whether it stopped in time.
    pub async fn stop(self) -> bool {
        let Self { stop, done, .. } = self;
        drop(stop);
        let stopped = tokio::time::timeout(STOP_WAIT, done).await.is_ok();
        if !stopped {
            tracing::warn!(wait = ?STOP_WAIT, "the monitor's thread did not stop in time; leaving it behind");
        }
        stopped
    }

    /// Where the notification path's tasks are spawned; `enter()` it to start a watcher.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn tasks_run_on_the_thread_and_stop_with_it() {
        let t = NotifyThread::start().await.expect("start");
        let name = t
            .handle()
            .spawn(async { std::thread::current().name().map(str::to_owned) })
            .await
            .expect("task runs");
        assert_eq!(name.as_deref(), Some("rds-monitor"));
        // A task still pending when the thread stops is dropped with its runtime.
        let (tx, rx) = oneshot::channel::<()>();
        let pending = t.handle().spawn(async move {
            let _keep = tx;
            std::future::pending::<()>().await
        });
        assert!(t.stop().await, "stopped in time");
        // Dropped before stop returned: the channel is closed now, not later.
        let mut rx = rx;
        assert!(
            matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Closed)),
            "the pending task was dropped before stop returned"
        );
        assert!(pending.await.expect_err("cancelled").is_cancelled());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_blocked_blocking_task_does_not_hold_the_stop() {
        let t = NotifyThread::start().await.expect("start");
        let (release, blocked) = std::sync::mpsc::channel::<()>();
        let (started_tx, started) = oneshot::channel::<()>();
        t.handle().spawn_blocking(move || {
            let _ = started_tx.send(());
            let _ = blocked.recv();
        });
        started.await.expect("the blocking task runs");
        // As a statvfs on a dead device: it never returns while the plugin stops.
        assert!(
            t.stop().await,
            "stop does not wait for the blocking pool (it gave up after {STOP_WAIT:?})"
        );
        drop(release);
    }
}
