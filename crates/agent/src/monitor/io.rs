//! Stall detection's input: a sampler that reads each staged device's request counters
//! (`<sys>/dev/block/M:m/inflight` and `.../stat`) every period, off the runtime, and hands
//! them to the shell as [`IoSample`]s. Reading these counters never touches the device, so a
//! hung device cannot hang the sampler. The machine decides what a stall is.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rds_types::DevNum;
use tokio::sync::mpsc;

/// The devices to sample, as the machine asked (`WatchIo`/`UnwatchIo`), counted.
#[derive(Debug, Clone, Default)]
pub struct IoWatchSet(Arc<Mutex<BTreeMap<DevNum, usize>>>);

impl IoWatchSet {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<DevNum, usize>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn add(&self, dev: DevNum) {
        *self.lock().entry(dev).or_default() += 1;
    }

    pub fn remove(&self, dev: DevNum) {
        let mut m = self.lock();
        if let Some(n) = m.get_mut(&dev) {
            *n -= 1;
            if *n == 0 {
                m.remove(&dev);
            }
        }
    }

    pub fn devices(&self) -> Vec<DevNum> {
        self.lock().keys().copied().collect()
    }
}

/// One device's counters at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoSample {
    pub dev: DevNum,
    pub inflight: u64,
    /// Requests completed since the device appeared (reads, writes, discards, flushes).
    pub completed: u64,
}

/// Parse `inflight` (`reads writes`) and `stat` (the kernel's 11, 15 or 17 fields).
pub fn parse_counters(inflight: &str, stat: &str) -> Option<(u64, u64)> {
    let nums =
        |s: &str| -> Option<Vec<u64>> { s.split_whitespace().map(|f| f.parse().ok()).collect() };
    let i = nums(inflight)?;
    let s = nums(stat)?;
    if i.len() < 2 || s.len() < 11 {
        return None;
    }
    let completed = [0usize, 4, 11, 15].iter().filter_map(|&k| s.get(k)).sum();
    Some((i[0] + i[1], completed))
}

/// Read one device's counters under a sys root.
pub fn read_counters(sys_root: &Path, dev: DevNum) -> io::Result<(u64, u64)> {
    let dir = sys_root.join("dev/block").join(dev.to_string());
    let inflight = std::fs::read_to_string(dir.join("inflight"))?;
    let stat = std::fs::read_to_string(dir.join("stat"))?;
    parse_counters(&inflight, &stat).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected counters in {}", dir.display()),
        )
    })
}

/// Sample every watched device each `period` and send what was read. A full channel drops the
/// sample (the next period brings a fresher one); a read that does not come back within the
/// period is waited for before the next one starts (never two at once).
pub async fn run_sampler(
    set: IoWatchSet,
    sys_root: PathBuf,
    period: Duration,
    tx: mpsc::Sender<IoSample>,
) {
    let mut tick = tokio::time::interval(period.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let devs = set.devices();
        if devs.is_empty() {
            continue;
        }
        let root = sys_root.clone();
        let job = tokio::task::spawn_blocking(move || {
            devs.into_iter()
                .filter_map(|dev| match read_counters(&root, dev) {
                    Ok((inflight, completed)) => Some(IoSample {
                        dev,
                        inflight,
                        completed,
                    }),
                    Err(e) => {
                        tracing::debug!(%dev, error = %e, "cannot read the device's counters");
                        None
                    }
                })
                .collect::<Vec<_>>()
        });
        let Ok(samples) = job.await else {
            continue;
        };
        for s in samples {
            match tx.try_send(s) {
                Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_sum_the_completed_kinds_the_kernel_prints() {
        // 17 fields (6.x): reads 10, writes 20, discards 3, flushes 4 completed.
        let stat = "10 0 80 5 20 0 160 9 2 14 14 3 0 24 1 4 1\n";
        assert_eq!(parse_counters("1 1\n", stat), Some((2, 37)));
        // 11 fields (old kernels).
        assert_eq!(
            parse_counters("0 0", "10 0 80 5 20 0 160 9 0 14 14"),
            Some((0, 30))
        );
        assert_eq!(parse_counters("x", stat), None);
        assert_eq!(parse_counters("1 1", "1 2 3"), None);
    }

    #[test]
    fn the_watch_set_counts_its_devices() {
        let s = IoWatchSet::default();
        let d = DevNum::new(259, 1);
        s.add(d);
        s.add(d);
        s.remove(d);
        assert_eq!(s.devices(), vec![d]);
        s.remove(d);
        assert!(s.devices().is_empty());
    }

    #[test]
    fn a_real_loop_device_s_counters_read() {
        // Any block device this machine has: the counters exist for every one of them.
        let Some(dev) = std::fs::read_dir("/sys/dev/block")
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok())
            .and_then(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|s| s.parse::<DevNum>().ok())
            })
        else {
            panic!("no block device under /sys/dev/block");
        };
        read_counters(Path::new("/sys"), dev).expect("counters of a real device");
    }
}
