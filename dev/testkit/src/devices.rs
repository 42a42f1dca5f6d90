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
