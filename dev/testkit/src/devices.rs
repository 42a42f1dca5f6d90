//! Waiting for device watcher events in tests (never a timing assertion).

use std::time::Duration;

use rds_devices::DeviceEvent;
use tokio::sync::mpsc;

/// Generous deadline for awaited events (never a timing assertion).
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Receives events until one matches `pred`; panics naming `what` after [`DEADLINE`].
pub async fn expect_event(
    rx: &mut mpsc::Receiver<DeviceEvent>,
    what: &str,
    pred: impl Fn(&DeviceEvent) -> bool,
) -> DeviceEvent {
    let fut = async {
        while let Some(ev) = rx.recv().await {
            if pred(&ev) {
                return ev;
            }
        }
        panic!("event stream ended while waiting for {what}");
    };
    tokio::time::timeout(DEADLINE, fut)
        .await
        .unwrap_or_else(|_| panic!("expected {what} within {DEADLINE:?}"))
}

/// Skips the start-up replay (everything up to the first `Resynced`).
pub async fn skip_replay(rx: &mut mpsc::Receiver<DeviceEvent>) {
    expect_event(rx, "the start-up replay's Resynced", |e| {
        matches!(e, DeviceEvent::Resynced)
    })
    .await;
}

/// A device watcher started on a single-threaded runtime of its own, as the plugin's
/// notification thread runs it. The runtime is returned undriven: run it (`block_on`, or a
/// thread of its own) or drop it to end the watcher's task with it.
pub fn spawn_on_own_runtime(
    cfg: rds_devices::WatcherConfig,
) -> (
    tokio::runtime::Runtime,
    rds_devices::DeviceWatcherHandle,
    mpsc::Receiver<DeviceEvent>,
) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
    let (handle, rx) = {
        let _on = rt.enter();
        rds_devices::spawn(cfg).expect("watcher starts")
    };
    (rt, handle, rx)
}
