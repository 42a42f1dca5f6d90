//! Run a blocking host operation off the async runtime, bounded in time.
//!
//! A `stat`, `statvfs`, `umount` or read on a dead block device can sleep in the kernel (D state)
//! for as long as the transport retries, forever with `ctrl_loss_tmo=-1` (incidents 6 and 10).
//! Such calls never run on a runtime worker: they go to tokio's blocking pool and the caller
//! waits at most `deadline`. On expiry the caller gets [`TimedOut`] naming the operation; the
//! blocked thread is left behind (nothing can interrupt an uninterruptible sleep) and finishes,
//! or not, on its own. Its result is then dropped.

use std::time::Duration;

/// A blocking operation did not finish within its deadline.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} did not finish within {deadline:?} (the kernel call may be stuck on a dead device; the thread was left behind)")]
pub struct TimedOut {
    /// The operation, as named by the caller (`"statvfs"`, `"umount"`).
    pub what: &'static str,
    /// The deadline that expired.
    pub deadline: Duration,
}

/// Run `f` on tokio's blocking pool and wait for it at most `deadline`.
///
/// A panic inside `f` is propagated to the caller (it is a bug, not an outcome).
pub async fn run_blocking<T>(
    what: &'static str,
    deadline: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, TimedOut>
where
    T: Send + 'static,
{
    let handle = tokio::task::spawn_blocking(f);
    match tokio::time::timeout(deadline, handle).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(join)) => match join.try_into_panic() {
            Ok(payload) => std::panic::resume_unwind(payload),
            // Cancelled: only happens while the runtime shuts down. Report it as not finished.
            Err(_) => Err(TimedOut { what, deadline }),
        },
        Err(_) => {
            tracing::warn!(operation = what, deadline = ?deadline, "blocking host operation timed out; its thread is left behind");
            Err(TimedOut { what, deadline })
        }
    }
}

/// Either the deadline expired or the operation itself failed.
#[derive(Debug, thiserror::Error)]
pub enum Bounded<E: std::error::Error + 'static> {
    #[error(transparent)]
    TimedOut(#[from] TimedOut),
    #[error(transparent)]
    Failed(E),
}

/// [`run_blocking`] for a fallible operation, flattening the two error layers:
/// `bounded("statvfs", d, move || volume_stats(&p)).await?`.
pub async fn bounded<T, E>(
    what: &'static str,
    deadline: Duration,
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, Bounded<E>>
where
    T: Send + 'static,
    E: std::error::Error + Send + 'static,
{
    run_blocking(what, deadline, f)
        .await?
        .map_err(Bounded::Failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn run_blocking_returns_the_value_of_a_quick_operation() {
        let v = run_blocking("add", Duration::from_secs(30), || 40 + 2).await;
        assert_eq!(v, Ok(42), "a quick closure must return its value");
    }

    #[tokio::test]
    async fn bounded_passes_the_operation_error_through() {
        let r: Result<(), Bounded<std::io::Error>> =
            bounded("fails", Duration::from_secs(30), || {
                Err(std::io::Error::other("boom"))
            })
            .await;
        assert!(
            matches!(r, Err(Bounded::Failed(ref e)) if e.to_string() == "boom"),
            "got {r:?}"
        );
    }

    #[tokio::test]
    async fn run_blocking_names_the_operation_and_deadline_when_it_expires() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let deadline = Duration::from_millis(50);
        // The closure blocks until the test drops the sender, i.e. past the deadline.
        let r = run_blocking("stuck-op", deadline, move || {
            let _ = rx.recv();
        })
        .await;
        drop(tx);
        let err = r.expect_err("a closure that blocks past its deadline must time out");
        assert_eq!(err.what, "stuck-op");
        assert_eq!(err.deadline, deadline);
        assert!(
            err.to_string().contains("stuck-op"),
            "message names the operation: {err}"
        );
    }
}
