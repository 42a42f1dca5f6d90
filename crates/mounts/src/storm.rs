//! Mount-storm detection, pure: counts come from a [`MountTable`], time from the caller.
//!
//! A storm is one device or one mount point collecting far more mounts than any workload
//! needs (the Go driver's incident: bind mounts of `/dev` cascading through Bidirectional
//! propagation into thousands of entries and a soft-locked node). Two signals:
//! * **level**: the key's count reaches [`StormConfig::threshold`] (default 100);
//! * **growth**: [`StormConfig::growth_count`] net new mounts of one key inside
//!   [`StormConfig::growth_window`], which fires before the level does in a fast cascade.
//!
//! Each episode is reported once ([`StormSignal::Started`]) with the top offenders and a
//! command to inspect them, and cleared once ([`StormSignal::Cleared`]) when the count falls
//! below [`StormConfig::clear_below`] (hysteresis, so a count hovering at the threshold does
//! not flap) and the growth has stopped.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::mountinfo::escape;
use crate::table::{MountChange, MountTable};

/// Default per-key mount count that makes a storm (the Go driver's seed constant).
pub const DEFAULT_THRESHOLD: usize = 100;
/// Default window of the growth signal.
pub const DEFAULT_GROWTH_WINDOW: Duration = Duration::from_secs(10);

/// Thresholds of the storm detector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StormConfig {
    /// Count at or above which a key is in a storm.
    pub threshold: usize,
    /// Count below which an episode clears (hysteresis; below `threshold`).
    pub clear_below: usize,
    /// New mounts of one key within `growth_window` that make a storm on their own.
    pub growth_count: usize,
    pub growth_window: Duration,
    /// How many offenders a report lists.
    pub top: usize,
}

impl Default for StormConfig {
    fn default() -> Self {
        Self::with_threshold(DEFAULT_THRESHOLD)
    }
}

impl StormConfig {
    /// A configuration scaled from one threshold: clear at 80 % of it, growth at half of it
    /// within 10 s.
    pub fn with_threshold(threshold: usize) -> Self {
        let threshold = threshold.max(1);
        Self {
            threshold,
            clear_below: (threshold * 4 / 5).max(1),
            growth_count: (threshold / 2).max(1),
            growth_window: DEFAULT_GROWTH_WINDOW,
            top: 5,
        }
    }
}

/// What a storm is about: the shared vocabulary's key.
pub use rds_types::StormKey;

/// Why the episode started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StormReason {
    /// The count reached the threshold.
    Level { threshold: usize },
    /// `added` new mounts within `window`.
    Growth { added: usize, window: Duration },
}

/// One key and its count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offender {
    pub key: StormKey,
    pub count: usize,
}

/// A storm episode starting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StormReport {
    pub key: StormKey,
    pub count: usize,
    pub reason: StormReason,
    /// The largest keys of the table at report time (devices and mount points), largest first.
    pub top_offenders: Vec<Offender>,
    /// A few mount points of the key (for a device) or sources (for a mount point).
    pub samples: Vec<PathBuf>,
    /// A sentence for the log and the Kubernetes Event: what, how many, how to inspect it.
    pub message: String,
}

/// A storm episode ending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StormCleared {
    pub key: StormKey,
    pub count: usize,
    pub peak: usize,
    pub lasted: Duration,
}

/// What [`StormDetector::observe`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StormSignal {
    Started(StormReport),
    Cleared(StormCleared),
}

#[derive(Debug, Clone)]
struct Episode {
    since: Instant,
    peak: usize,
}

/// What one change does to one storm key: the detector's whole input from a change.
#[derive(Debug, Clone)]
pub struct Touch {
    key: StormKey,
    growth: Growth,
}

#[derive(Debug, Clone, Copy)]
enum Growth {
    Added,
    Removed,
    Same,
}

/// The storm keys a batch of changes touches, and how (cheap: a device number and a path per
/// change).
pub fn touches(changes: &[MountChange]) -> Vec<Touch> {
    let mut out = Vec::with_capacity(changes.len() * 2);
    for c in changes {
        let m = c.mount();
        let growth = match c {
            MountChange::Attached(_) => Growth::Added,
            MountChange::Detached(_) => Growth::Removed,
            MountChange::Changed { .. } => Growth::Same,
        };
        out.push(Touch {
            key: StormKey::Device(m.dev),
            growth,
        });
        out.push(Touch {
            key: StormKey::MountPoint(m.mount_point.clone()),
            growth,
        });
        if let MountChange::Changed { old, new } = c {
            if old.mount_point != new.mount_point {
                // A move leaves the old mount point with one fewer.
                out.push(Touch {
                    key: StormKey::MountPoint(old.mount_point.clone()),
                    growth: Growth::Removed,
                });
            }
            out.push(Touch {
                key: StormKey::Device(old.dev),
                growth: Growth::Same,
            });
        }
    }
    out
}

/// The detector's state: open episodes and recent attach times per key.
#[derive(Debug, Clone)]
pub struct StormDetector {
    config: StormConfig,
    active: HashMap<StormKey, Episode>,
    recent: HashMap<StormKey, VecDeque<Instant>>,
    last_prune: Option<Instant>,
}

impl StormDetector {
    pub fn new(config: StormConfig) -> Self {
        Self {
            config,
            active: HashMap::new(),
            recent: HashMap::new(),
            last_prune: None,
        }
    }

    pub fn config(&self) -> &StormConfig {
        &self.config
    }

    /// Keys currently in a storm episode.
    pub fn active(&self) -> impl Iterator<Item = &StormKey> {
        self.active.keys()
    }

    /// Account for `changes` (already applied to `table`) seen at `now`, and report episodes
    /// that start or end. Only keys touched by the changes, keys with recent growth and open
    /// episodes are evaluated, so a pass costs O(changes), not O(table).
    /// (Only `now` values passed in are compared; the detector reads no clock.)
    pub fn observe(
        &mut self,
        table: &MountTable,
        changes: &[MountChange],
        now: Instant,
    ) -> Vec<StormSignal> {
        self.observe_touches(table, touches(changes), now)
    }

    /// [`observe`](Self::observe) on what [`touches`] took from the changes, so that the
    /// changes themselves can be handed on first.
    pub fn observe_touches(
        &mut self,
        table: &MountTable,
        touches: Vec<Touch>,
        now: Instant,
    ) -> Vec<StormSignal> {
        let mut touched: Vec<StormKey> = Vec::with_capacity(touches.len());
        for t in touches {
            match t.growth {
                Growth::Added => self.recent.entry(t.key.clone()).or_default().push_back(now),
                // Growth is net: a key losing mounts is not growing.
                Growth::Removed => self.shrink(&t.key),
                Growth::Same => {}
            }
            touched.push(t.key);
        }
        let window = self.config.growth_window;
        let expired = |times: &mut VecDeque<Instant>| {
            while times
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) > window)
            {
                times.pop_front();
            }
            times.is_empty()
        };
        let last = *self.last_prune.get_or_insert(now);
        if now.saturating_duration_since(last) > window {
            // Full sweep at most once per window, so a pass stays O(changes).
            self.recent.retain(|_, times| !expired(times));
            self.last_prune = Some(now);
        } else {
            for k in &touched {
                if self.recent.get_mut(k).is_some_and(expired) {
                    self.recent.remove(k);
                }
            }
        }
        touched.extend(self.active.keys().cloned());
        touched.sort();
        touched.dedup();

        let mut out = Vec::new();
        for key in touched {
            let count = count_of(table, &key);
            let added = self.recent.get(&key).map_or(0, VecDeque::len);
            match self.active.get_mut(&key) {
                Some(ep) => {
                    ep.peak = ep.peak.max(count);
                    if count < self.config.clear_below && added < self.config.growth_count {
                        let ep = self.active.remove(&key).unwrap_or(Episode {
                            since: now,
                            peak: count,
                        });
                        out.push(StormSignal::Cleared(StormCleared {
                            key,
                            count,
                            peak: ep.peak,
                            lasted: now.saturating_duration_since(ep.since),
                        }));
                    }
                }
                None => {
                    let reason = if count >= self.config.threshold {
                        StormReason::Level {
                            threshold: self.config.threshold,
                        }
                    } else if added >= self.config.growth_count {
                        StormReason::Growth { added, window }
                    } else {
                        continue;
                    };
                    self.active.insert(
                        key.clone(),
                        Episode {
                            since: now,
                            peak: count,
                        },
                    );
                    out.push(StormSignal::Started(self.report(table, key, count, reason)));
                }
            }
        }
        out
    }

    fn shrink(&mut self, key: &StormKey) {
        if let Some(times) = self.recent.get_mut(key) {
            times.pop_back();
            if times.is_empty() {
                self.recent.remove(key);
            }
        }
    }

    /// Re-evaluate every key of a complete snapshot (start-up, resync) for the level signal
    /// only: a snapshot is not growth. Opens episodes for keys at or over the threshold and
    /// clears open ones that fell below the hysteresis mark.
    pub fn resync(&mut self, table: &MountTable, now: Instant) -> Vec<StormSignal> {
        let mut keys: Vec<StormKey> = table
            .device_counts()
            .filter(|(_, n)| *n >= self.config.threshold)
            .map(|(d, _)| StormKey::Device(d))
            .chain(
                table
                    .mount_point_counts()
                    .filter(|(_, n)| *n >= self.config.threshold)
                    .map(|(p, _)| StormKey::MountPoint(p.to_path_buf())),
            )
            .collect();
        keys.extend(self.active.keys().cloned());
        keys.sort();
        keys.dedup();
        let mut out = Vec::new();
        for key in keys {
            let count = count_of(table, &key);
            if let Some(ep) = self.active.get_mut(&key) {
                ep.peak = ep.peak.max(count);
                if count < self.config.clear_below {
                    let peak = ep.peak;
                    let since = ep.since;
                    self.active.remove(&key);
                    self.recent.remove(&key);
                    out.push(StormSignal::Cleared(StormCleared {
                        key,
                        count,
                        peak,
                        lasted: now.saturating_duration_since(since),
                    }));
                }
            } else if count >= self.config.threshold {
                self.active.insert(
                    key.clone(),
                    Episode {
                        since: now,
                        peak: count,
                    },
                );
                let reason = StormReason::Level {
                    threshold: self.config.threshold,
                };
                out.push(StormSignal::Started(self.report(table, key, count, reason)));
            }
        }
        out
    }

    fn report(
        &self,
        table: &MountTable,
        key: StormKey,
        count: usize,
        reason: StormReason,
    ) -> StormReport {
        let top_offenders = top_offenders(table, self.config.top);
        let samples: Vec<PathBuf> = match &key {
            StormKey::Device(d) => table
                .on_device(*d)
                .take(3)
                .map(|m| m.mount_point.clone())
                .collect(),
            StormKey::MountPoint(p) => table
                .at_mount_point(p)
                .take(3)
                .map(|m| PathBuf::from(m.source.clone().unwrap_or_default()))
                .collect(),
        };
        let message = message(&key, count, &reason, &samples, &top_offenders, table);
        StormReport {
            key,
            count,
            reason,
            top_offenders,
            samples,
            message,
        }
    }
}

fn count_of(table: &MountTable, key: &StormKey) -> usize {
    match key {
        StormKey::Device(d) => table.device_count(*d),
        StormKey::MountPoint(p) => table.mount_point_count(p),
    }
}

/// The `n` largest devices and mount points of the table, largest first.
pub fn top_offenders(table: &MountTable, n: usize) -> Vec<Offender> {
    let mut all: Vec<Offender> = table
        .device_counts()
        .map(|(d, count)| Offender {
            key: StormKey::Device(d),
            count,
        })
        .chain(
            table
                .mount_point_counts()
                .filter(|(_, c)| *c > 1)
                .map(|(p, count)| Offender {
                    key: StormKey::MountPoint(p.to_path_buf()),
                    count,
                }),
        )
        .collect();
    all.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
    all.truncate(n);
    all
}

fn inspect_command(key: &StormKey) -> String {
    match key {
        StormKey::Device(d) => {
            format!("awk '$3 == \"{d}\"' /proc/self/mountinfo | sort -k5 | head -50")
        }
        StormKey::MountPoint(p) => format!(
            "awk '$5 == \"{}\"' /proc/self/mountinfo | head -50",
            String::from_utf8_lossy(&escape(path_bytes(p)))
        ),
    }
}

fn path_bytes(p: &Path) -> &[u8] {
    use std::os::unix::ffi::OsStrExt;
    p.as_os_str().as_bytes()
}

fn message(
    key: &StormKey,
    count: usize,
    reason: &StormReason,
    samples: &[PathBuf],
    top: &[Offender],
    table: &MountTable,
) -> String {
    let what = match key {
        StormKey::Device(d) => {
            let fs = table
                .on_device(*d)
                .next()
                .map(|m| {
                    format!(
                        " ({} {})",
                        m.fs_type,
                        m.source.as_deref().unwrap_or("no source")
                    )
                })
                .unwrap_or_default();
            format!("device {d}{fs}")
        }
        StormKey::MountPoint(p) => format!("mount point {}", p.display()),
    };
    let why = match reason {
        StormReason::Level { threshold } => format!("{count} mounts (threshold {threshold})"),
        StormReason::Growth { added, window } => format!(
            "{added} new mounts within {}s ({count} in total)",
            window.as_secs()
        ),
    };
    let samples = samples
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let top = top
        .iter()
        .map(|o| format!("{} ({})", o.key, o.count))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "{why} on {what}; e.g. {samples}; largest: {top}. Look for a bind mount propagating \
         into itself (Bidirectional mount propagation) and inspect with: {}",
        inspect_command(key)
    )
}
