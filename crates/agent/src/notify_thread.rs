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
//! The thread runs until the [`NotifyThread`] is dropped. Its tasks are owned by whoever
//! spawned them (the plugin's `JoinSet`, the watcher handles), which abort them as before.
//! At the end the runtime is shut down without waiting for its blocking pool: a statvfs held
//! by a dead device must not hold the plugin's exit.

use std::io;

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

/// Runs a single-threaded runtime on a thread of its own until dropped.
pub struct NotifyThread {
    handle: Handle,
    /// Dropped with the value: the thread's `block_on` returns and it shuts its runtime down.
    _stop: oneshot::Sender<()>,
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
        std::thread::Builder::new()
            .name("rds-monitor".into())
            .spawn(move || {
                // Returns when the sender is dropped (or sends).
                rt.block_on(async {
                    let _ = stopped.await;
                });
                rt.shutdown_background();
            })?;
        Ok(Self {
            handle,
            _stop: stop,
        })
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
        drop(t);
        assert!(rx.await.is_err(), "the pending task was dropped");
        assert!(pending.await.expect_err("cancelled").is_cancelled());
    }
}
