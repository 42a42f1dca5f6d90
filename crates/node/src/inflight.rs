//! Unmounts still running in the kernel.
//!
//! An unmount that outlives its deadline is left behind on a blocked thread (a hung device
//! keeps it in `deactivate_super` while dirty data is written back). Its mount has already
//! left the mount table, so nothing else shows the device is still in use: unstage asks here
//! before disconnecting the controller.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use rds_types::DevNum;

/// The devices with an unmount in progress. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Unmounts {
    running: Arc<DashMap<DevNum, (usize, Instant)>>,
}

/// Held by the thread doing one unmount; dropped when the syscall returns, however late.
#[derive(Debug)]
pub struct InFlight {
    dev: DevNum,
    running: Arc<DashMap<DevNum, (usize, Instant)>>,
}

impl Unmounts {
    /// An unmount of `dev` starts; move the token into the thread that makes the syscall.
    pub fn start(&self, dev: DevNum) -> InFlight {
        self.running
            .entry(dev)
            .and_modify(|(n, _)| *n += 1)
            .or_insert((1, Instant::now()));
        InFlight {
            dev,
            running: self.running.clone(),
        }
    }

    /// How long the oldest unfinished unmount of `dev` has been running, if one is.
    pub fn running_for(&self, dev: DevNum) -> Option<Duration> {
        self.running.get(&dev).map(|e| e.1.elapsed())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let dashmap::Entry::Occupied(mut e) = self.running.entry(self.dev) {
            e.get_mut().0 -= 1;
            if e.get().0 == 0 {
                e.remove();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_is_busy_until_its_last_unmount_returns() {
        let u = Unmounts::default();
        let d = DevNum::new(259, 1);
        let a = u.start(d);
        let b = u.start(d);
        assert!(u.running_for(d).is_some());
        drop(a);
        assert!(u.running_for(d).is_some(), "one still running");
        let t = std::thread::spawn(move || drop(b));
        t.join().unwrap();
        assert!(u.running_for(d).is_none());
        assert!(u.running_for(DevNum::new(259, 2)).is_none());
    }
}
