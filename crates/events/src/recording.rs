//! An in-memory [`EventSink`] for the tests of other crates: it keeps every event and lets a test
//! await the one it expects (with a deadline, never a sleep).

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

use crate::event::{EventSink, VolumeEvent};

/// Records every posted event in order.
#[derive(Debug)]
pub struct RecordingSink {
    events: Mutex<Vec<VolumeEvent>>,
    /// Bumped on every post, so waiters wake without polling.
    posted: watch::Sender<u64>,
}

impl Default for RecordingSink {
    fn default() -> Self {
        Self::new()
    }
}

impl RecordingSink {
    /// An empty recorder.
    pub fn new() -> Self {
        Self {
            events: Mutex::new(Vec::new()),
            posted: watch::Sender::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<VolumeEvent>> {
        // A panicking test thread must not hide the events from the others.
        self.events.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A copy of every event posted so far, oldest first.
    pub fn events(&self) -> Vec<VolumeEvent> {
        self.lock().clone()
    }

    /// Removes and returns every event posted so far.
    pub fn take(&self) -> Vec<VolumeEvent> {
        std::mem::take(&mut *self.lock())
    }

    /// Waits until an event matching `pred` has been posted (it may already have been) and returns
    /// the first such event, or `None` once `deadline` has passed.
    pub async fn wait_for(
        &self,
        deadline: Duration,
        mut pred: impl FnMut(&VolumeEvent) -> bool,
    ) -> Option<VolumeEvent> {
        // Subscribe before looking so a post between the look and the wait still wakes us.
        let mut rx = self.posted.subscribe();
        let search = async {
            loop {
                if let Some(found) = self.lock().iter().find(|e| pred(e)).cloned() {
                    return Some(found);
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        };
        tokio::time::timeout(deadline, search).await.ok().flatten()
    }
}

impl EventSink for RecordingSink {
    fn post(&self, ev: VolumeEvent) {
        self.lock().push(ev);
        self.posted.send_modify(|n| *n += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventReason;
    use std::sync::Arc;

    #[test]
    fn recording_sink_keeps_events_in_order_and_take_empties_it() {
        let sink = RecordingSink::new();
        sink.post(VolumeEvent::new(
            "pvc-a",
            EventReason::MountFailure,
            "Stage",
            "1",
        ));
        sink.post(VolumeEvent::new(
            "pvc-b",
            EventReason::MountStorm,
            "Monitor",
            "2",
        ));
        let ids: Vec<String> = sink.events().into_iter().map(|e| e.volume_id).collect();
        assert_eq!(
            ids,
            ["pvc-a", "pvc-b"],
            "events must be kept in posting order"
        );
        assert_eq!(sink.take().len(), 2, "take must return everything recorded");
        assert!(
            sink.events().is_empty(),
            "take must leave the recorder empty"
        );
    }

    #[tokio::test]
    async fn wait_for_returns_an_event_posted_later_from_another_task() {
        let sink = Arc::new(RecordingSink::new());
        let poster = sink.clone();
        let task = tokio::spawn(async move {
            poster.post(VolumeEvent::new(
                "pvc-x",
                EventReason::MountFailure,
                "Stage",
                "other",
            ));
            poster.post(VolumeEvent::new(
                "pvc-y",
                EventReason::RecoveryFailed,
                "Recover",
                "it",
            ));
        });
        let got = sink
            .wait_for(Duration::from_secs(30), |e| {
                e.reason == EventReason::RecoveryFailed
            })
            .await;
        task.await.expect("poster task");
        assert_eq!(
            got.map(|e| e.volume_id).as_deref(),
            Some("pvc-y"),
            "wait_for must find the RecoveryFailed event posted by the other task"
        );
    }

    #[tokio::test]
    async fn wait_for_gives_up_at_the_deadline_when_nothing_matches() {
        let sink = RecordingSink::new();
        sink.post(VolumeEvent::new(
            "pvc-x",
            EventReason::MountFailure,
            "Stage",
            "n",
        ));
        let got = sink
            .wait_for(Duration::from_millis(20), |e| {
                e.reason == EventReason::MountStorm
            })
            .await;
        assert_eq!(
            got, None,
            "no MountStorm was posted, wait_for must return None"
        );
    }
}
