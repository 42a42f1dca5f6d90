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
//! Everything the shell spawns (recoveries, evictions, filesystem marks) runs here too; their
//! blocking steps go to this runtime's own blocking pool, each with its deadline, so the thread
//! never blocks on a device.
//!
//! The thread runs until [`NotifyThread::stop`] (or until the value is dropped). Its tasks are
//! owned by whoever spawned them (the plugin's `JoinSet`, the watcher handles), which abort
//! them as before. At the end the runtime is shut down without waiting for its blocking pool:
//! a statvfs held by a dead device must not hold the plugin's exit. Every task still on the
//! runtime is dropped before `stop` returns, so no watcher of a stopped plugin is left.

use std::io;

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

/// Runs a single-threaded runtime on a thread of its own until dropped.
pub struct NotifyThread {
    handle: Handle,
    /// Dropped: the thread's `block_on` returns and it shuts its runtime down.
    stop: oneshot::Sender<()>,
    /// Closed once the runtime is shut down and its tasks are dropped.
    done: oneshot::Receiver<()>,
}

impl NotifyThread {
    /// Build the runtime and start the thread that drives it.
    pub fn start() -> io::Result<Self> {
        let rt = Builder::new_current_thread()
            .enable_all()
            .thread_name("rds-monitor-io")
            .build()?;
        let handle = rt.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let (done_tx, done) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("rds-monitor".into())
            .spawn(move || {
                // Returns when the sender is dropped (or sends).
                rt.block_on(async {
                    let _ = stopped.await;
                });
                rt.shutdown_background();
                drop(done_tx);
            })?;
        Ok(Self { handle, stop, done })
    }

    /// Stop the thread; returns once its runtime is shut down and every task on it dropped
    /// (its blocking pool is not waited for).
    pub async fn stop(self) {
        let Self { stop, done, .. } = self;
        drop(stop);
        let _ = done.await;
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
        let t = NotifyThread::start().expect("start");
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
        t.stop().await;
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
        let t = NotifyThread::start().expect("start");
        let (release, blocked) = std::sync::mpsc::channel::<()>();
        let (started_tx, started) = oneshot::channel::<()>();
        t.handle().spawn_blocking(move || {
            let _ = started_tx.send(());
            let _ = blocked.recv();
        });
        started.await.expect("the blocking task runs");
        // As a statvfs on a dead device: it never returns while the plugin stops.
        // A generous bound that only turns a hang into a failure.
        tokio::time::timeout(std::time::Duration::from_secs(60), t.stop())
            .await
            .expect("stop does not wait for the blocking pool");
        drop(release);
    }
}
