//! Storm detection driven with synthetic tables and timestamps (pure, no kernel, no clock).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rds_mounts::mountinfo::MountInfo;
use rds_mounts::storm::{StormConfig, StormDetector, StormKey, StormReason, StormSignal};
use rds_mounts::table::{MountChange, MountTable};
use rds_types::DevNum;

const DEV: DevNum = DevNum::new(0, 77);

fn bind(id: u32, point: &str) -> MountInfo {
    MountInfo {
        id,
        parent_id: 1,
        dev: DEV,
        root: PathBuf::from("/"),
        mount_point: PathBuf::from(point),
        mount_options: "rw".into(),
        optional: vec![],
        fs_type: "tmpfs".into(),
        source: Some("stormfs".into()),
        super_options: "rw".into(),
        unique_id: None,
    }
}

/// Insert `n` binds of DEV at distinct points, one pass each, `step` apart; returns signals.
fn attach(
    det: &mut StormDetector,
    t: &mut MountTable,
    ids: std::ops::Range<u32>,
    start: Instant,
    step: Duration,
) -> Vec<StormSignal> {
    let mut out = vec![];
    for (i, id) in ids.enumerate() {
        let m = bind(id, &format!("/s/{id}"));
        t.insert(m.clone());
        out.extend(det.observe(t, &[MountChange::Attached(m)], start + step * i as u32));
    }
    out
}

fn slow() -> StormConfig {
    // Growth effectively disabled: level only.
    StormConfig {
        growth_count: usize::MAX,
        ..StormConfig::default()
    }
}

#[test]
fn reaching_the_threshold_reports_one_storm_per_episode() {
    let mut det = StormDetector::new(slow());
    let mut t = MountTable::new();
    let t0 = Instant::now();
    let s = attach(&mut det, &mut t, 10..160, t0, Duration::from_secs(1));
    let started: Vec<_> = s
        .iter()
        .filter_map(|s| match s {
            StormSignal::Started(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(started.len(), 1, "one report per episode, got {s:?}");
    let r = started[0];
    assert_eq!(r.key, StormKey::Device(DEV));
    assert_eq!(
        r.count, 100,
        "reported when the count reaches the threshold"
    );
    assert_eq!(r.reason, StormReason::Level { threshold: 100 });
    assert_eq!(r.top_offenders[0].key, StormKey::Device(DEV));
    assert!(
        r.message.contains("0:77") && r.message.contains("awk"),
        "actionable message: {}",
        r.message
    );
    assert!(
        r.message.contains("stormfs"),
        "names the source: {}",
        r.message
    );
}

#[test]
fn the_episode_clears_only_below_the_hysteresis_mark() {
    let mut det = StormDetector::new(slow());
    let mut t = MountTable::new();
    let t0 = Instant::now();
    attach(&mut det, &mut t, 10..160, t0, Duration::from_secs(1));
    let mut cleared_at = None;
    for (i, id) in (10..160).enumerate() {
        let m = t.remove(id).expect("present");
        let s = det.observe(
            &t,
            &[MountChange::Detached(m)],
            t0 + Duration::from_secs(200 + i as u64),
        );
        if let Some(StormSignal::Cleared(c)) = s.into_iter().next() {
            assert!(cleared_at.is_none(), "cleared twice");
            assert_eq!(c.peak, 150);
            cleared_at = Some(t.device_count(DEV));
        }
    }
    assert_eq!(
        cleared_at,
        Some(79),
        "clears when the count drops below 80 (not at 99)"
    );
}

#[test]
fn fast_growth_is_a_storm_before_the_level() {
    let mut det = StormDetector::new(StormConfig::default());
    let mut t = MountTable::new();
    let s = attach(
        &mut det,
        &mut t,
        10..70,
        Instant::now(),
        Duration::from_millis(10),
    );
    match s.as_slice() {
        [StormSignal::Started(r)] => {
            assert_eq!(r.count, 50);
            assert!(
                matches!(r.reason, StormReason::Growth { added: 50, .. }),
                "{:?}",
                r.reason
            );
        }
        other => panic!("expected one growth storm, got {other:?}"),
    }
}

#[test]
fn slow_growth_below_the_threshold_is_no_storm() {
    let mut det = StormDetector::new(StormConfig::default());
    let mut t = MountTable::new();
    let s = attach(
        &mut det,
        &mut t,
        10..99,
        Instant::now(),
        Duration::from_secs(1),
    );
    assert!(s.is_empty(), "99 mounts at 1/s is normal: {s:?}");
}

#[test]
fn stacked_mounts_on_one_point_are_a_mount_point_storm() {
    let mut det = StormDetector::new(slow());
    let mut t = MountTable::new();
    let t0 = Instant::now();
    let mut signals = vec![];
    for i in 0..100u32 {
        let mut m = bind(10 + i, "/var/lib/kubelet/pods/x/volumes/v");
        m.dev = DevNum::new(0, 1000 + i); // distinct devices, one path
        t.insert(m.clone());
        signals.extend(det.observe(
            &t,
            &[MountChange::Attached(m)],
            t0 + Duration::from_secs(u64::from(i)),
        ));
    }
    assert!(
        signals.iter().any(|s| matches!(s, StormSignal::Started(r) if r.key == StormKey::MountPoint(Path::new("/var/lib/kubelet/pods/x/volumes/v").into()))),
        "{signals:?}"
    );
}

#[test]
fn a_growth_episode_clears_when_its_mounts_go_away_within_the_window() {
    let mut det = StormDetector::new(StormConfig::default());
    let mut t = MountTable::new();
    let t0 = Instant::now();
    let step = Duration::from_millis(10);
    attach(&mut det, &mut t, 10..160, t0, step);
    let mut cleared = vec![];
    for (i, id) in (10..160).enumerate() {
        let m = t.remove(id).expect("present");
        cleared.extend(det.observe(
            &t,
            &[MountChange::Detached(m)],
            t0 + Duration::from_secs(2) + step * i as u32,
        ));
    }
    assert!(
        cleared
            .iter()
            .any(|s| matches!(s, StormSignal::Cleared(c) if c.key == StormKey::Device(DEV))),
        "net growth is back to zero and the count to 0: the episode must clear, got {cleared:?}"
    );
}
