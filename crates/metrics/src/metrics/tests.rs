use std::time::Duration;

use super::*;

fn scrape(m: &Metrics) -> String {
    m.encode().expect("encoding into a String cannot fail")
}

/// The value of exactly the series `series` (name plus label set as encoded), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        Some(value.parse().expect("sample value is a number"))
    })
}

#[track_caller]
fn assert_sample(text: &str, series: &str, expected: f64) {
    assert_eq!(
        sample(text, series),
        Some(expected),
        "expected `{series} {expected}` in the scrape:\n{text}"
    );
}

#[test]
fn build_info_carries_the_version_with_value_one() {
    let t = scrape(&Metrics::new("1.2.3"));
    assert_sample(&t, r#"rds_csi_build_info{version="1.2.3"}"#, 1.0);
}

#[test]
fn scrape_ends_with_the_openmetrics_eof_marker() {
    let t = scrape(&Metrics::new("v"));
    assert!(t.ends_with("# EOF\n"), "expected `# EOF` last:\n{t}");
}

#[test]
fn detection_latency_lands_in_the_bucket_of_its_kind() {
    let m = Metrics::new("v");
    m.detection_latency("mount_missing", Duration::from_micros(30));
    let t = scrape(&m);
    let h = "rds_csi_detection_latency_seconds";
    assert_sample(&t, &format!(r#"{h}_count{{kind="mount_missing"}}"#), 1.0);
    assert_sample(
        &t,
        &format!(r#"{h}_bucket{{le="0.000025",kind="mount_missing"}}"#),
        0.0,
    );
    assert_sample(
        &t,
        &format!(r#"{h}_bucket{{le="0.00005",kind="mount_missing"}}"#),
        1.0,
    );
    assert_eq!(
        sample(&t, &format!(r#"{h}_count{{kind="device_gone"}}"#)),
        None,
        "a kind never observed has no series:\n{t}"
    );
}

#[test]
fn detection_latency_buckets_span_10_microseconds_to_60_seconds() {
    assert_eq!(DETECTION_LATENCY_BUCKETS.first(), Some(&0.000_01));
    assert_eq!(DETECTION_LATENCY_BUCKETS.last(), Some(&60.0));
    assert!(
        DETECTION_LATENCY_BUCKETS.windows(2).all(|w| w[0] < w[1]),
        "buckets must be strictly increasing"
    );
}

#[test]
fn set_conditions_sets_each_listed_kind() {
    let m = Metrics::new("v");
    m.set_conditions(&[("healthy", 7), ("mount_missing", 2)]);
    let t = scrape(&m);
    assert_sample(&t, r#"rds_csi_volume_conditions{kind="healthy"}"#, 7.0);
    assert_sample(
        &t,
        r#"rds_csi_volume_conditions{kind="mount_missing"}"#,
        2.0,
    );
}

#[test]
fn set_conditions_resets_previously_seen_kinds_missing_from_the_snapshot_to_zero() {
    let m = Metrics::new("v");
    m.set_conditions(&[("healthy", 7), ("mount_missing", 2)]);
    m.set_conditions(&[("healthy", 9)]);
    let t = scrape(&m);
    assert_sample(&t, r#"rds_csi_volume_conditions{kind="healthy"}"#, 9.0);
    assert_sample(
        &t,
        r#"rds_csi_volume_conditions{kind="mount_missing"}"#,
        0.0,
    );
}

#[test]
fn set_conditions_with_an_empty_snapshot_zeroes_everything_seen() {
    let m = Metrics::new("v");
    m.set_conditions(&[("healthy", 3), ("device_gone", 1)]);
    m.set_conditions(&[]);
    let t = scrape(&m);
    assert_sample(&t, r#"rds_csi_volume_conditions{kind="healthy"}"#, 0.0);
    assert_sample(&t, r#"rds_csi_volume_conditions{kind="device_gone"}"#, 0.0);
}

#[test]
fn set_conditions_brings_a_reset_kind_back_when_listed_again() {
    let m = Metrics::new("v");
    m.set_conditions(&[("mount_storm", 1)]);
    m.set_conditions(&[]);
    m.set_conditions(&[("mount_storm", 4)]);
    let t = scrape(&m);
    assert_sample(&t, r#"rds_csi_volume_conditions{kind="mount_storm"}"#, 4.0);
}

#[test]
fn stale_detected_counts_per_kind() {
    let m = Metrics::new("v");
    m.stale_detected("device_replaced");
    m.stale_detected("device_replaced");
    m.stale_detected("filesystem_failed");
    let t = scrape(&m);
    assert_sample(
        &t,
        r#"rds_csi_stale_detections_total{kind="device_replaced"}"#,
        2.0,
    );
    assert_sample(
        &t,
        r#"rds_csi_stale_detections_total{kind="filesystem_failed"}"#,
        1.0,
    );
}

#[test]
fn recovery_results_exist_at_zero_before_any_recovery() {
    let t = scrape(&Metrics::new("v"));
    for r in RecoveryResult::ALL {
        assert_sample(
            &t,
            &format!(r#"rds_csi_recoveries_total{{result="{}"}}"#, r.as_str()),
            0.0,
        );
    }
}

#[test]
fn recovery_started_and_finished_count_by_result_and_time_only_finished_ones() {
    let m = Metrics::new("v");
    m.recovery_started();
    m.recovery_started();
    m.recovery_finished(RecoveryResult::Succeeded, Duration::from_millis(300));
    m.recovery_finished(RecoveryResult::Exhausted, Duration::from_secs(40));
    let t = scrape(&m);
    assert_sample(&t, r#"rds_csi_recoveries_total{result="started"}"#, 2.0);
    assert_sample(&t, r#"rds_csi_recoveries_total{result="succeeded"}"#, 1.0);
    assert_sample(&t, r#"rds_csi_recoveries_total{result="failed"}"#, 0.0);
    assert_sample(&t, r#"rds_csi_recoveries_total{result="exhausted"}"#, 1.0);
    assert_sample(&t, "rds_csi_recovery_duration_seconds_count", 2.0);
    assert_sample(&t, "rds_csi_recovery_duration_seconds_sum", 40.3);
}

#[test]
fn mount_storms_count_and_track_the_active_ones() {
    let m = Metrics::new("v");
    m.mount_storm_started();
    m.mount_storm_started();
    m.mount_storm_cleared();
    let t = scrape(&m);
    assert_sample(&t, "rds_csi_mount_storms_total", 2.0);
    assert_sample(&t, "rds_csi_mount_storms_active", 1.0);
}

#[test]
fn mount_storm_cleared_without_a_start_leaves_the_active_gauge_at_zero() {
    let m = Metrics::new("v");
    m.mount_storm_cleared();
    assert_sample(&scrape(&m), "rds_csi_mount_storms_active", 0.0);
}

#[test]
fn set_active_mount_storms_overrides_the_gauge() {
    let m = Metrics::new("v");
    m.mount_storm_started();
    m.set_active_mount_storms(5);
    assert_sample(&scrape(&m), "rds_csi_mount_storms_active", 5.0);
}

#[test]
fn mount_table_size_is_a_gauge() {
    let m = Metrics::new("v");
    m.set_mount_table_size(120);
    m.set_mount_table_size(118);
    assert_sample(&scrape(&m), "rds_csi_mount_table_entries", 118.0);
}

#[test]
fn watcher_event_counters_add_up_separately() {
    let m = Metrics::new("v");
    m.uevents_processed(3);
    m.uevents_processed(1);
    m.uevents_dropped(2);
    m.mount_events_processed(5);
    m.mount_events_dropped(7);
    let t = scrape(&m);
    assert_sample(&t, "rds_csi_uevents_processed_total", 4.0);
    assert_sample(&t, "rds_csi_uevents_dropped_total", 2.0);
    assert_sample(&t, "rds_csi_mount_events_processed_total", 5.0);
    assert_sample(&t, "rds_csi_mount_events_dropped_total", 7.0);
}

#[test]
fn resync_counts_by_source_and_reason() {
    let m = Metrics::new("v");
    m.resync(ResyncSource::Devices, ResyncReason::Enobufs);
    m.resync(ResyncSource::Devices, ResyncReason::Enobufs);
    m.resync(ResyncSource::Mounts, ResyncReason::Overflow);
    let t = scrape(&m);
    assert_sample(
        &t,
        r#"rds_csi_resyncs_total{source="devices",reason="enobufs"}"#,
        2.0,
    );
    assert_sample(
        &t,
        r#"rds_csi_resyncs_total{source="mounts",reason="overflow"}"#,
        1.0,
    );
    assert_sample(
        &t,
        r#"rds_csi_resyncs_total{source="mounts",reason="startup"}"#,
        0.0,
    );
    assert_sample(
        &t,
        r#"rds_csi_resyncs_total{source="devices",reason="overflow"}"#,
        0.0,
    );
}

#[test]
fn csi_operation_counts_by_rpc_and_code_and_times_by_rpc() {
    let m = Metrics::new("v");
    m.csi_operation("NodeStageVolume", 0, Duration::from_millis(2));
    m.csi_operation("NodeStageVolume", 10, Duration::from_millis(1));
    m.csi_operation("NodePublishVolume", 0, Duration::from_millis(2));
    let t = scrape(&m);
    assert_sample(
        &t,
        r#"rds_csi_csi_operations_total{rpc="NodeStageVolume",code="OK"}"#,
        1.0,
    );
    assert_sample(
        &t,
        r#"rds_csi_csi_operations_total{rpc="NodeStageVolume",code="Aborted"}"#,
        1.0,
    );
    assert_sample(
        &t,
        r#"rds_csi_csi_operations_total{rpc="NodePublishVolume",code="OK"}"#,
        1.0,
    );
    assert_sample(
        &t,
        r#"rds_csi_csi_operation_duration_seconds_count{rpc="NodeStageVolume"}"#,
        2.0,
    );
    assert_sample(
        &t,
        r#"rds_csi_csi_operation_duration_seconds_count{rpc="NodePublishVolume"}"#,
        1.0,
    );
}

#[test]
fn nvme_connect_counts_by_result_and_times_every_attempt() {
    let m = Metrics::new("v");
    m.nvme_connect(ConnectResult::Succeeded, Duration::from_millis(250));
    m.nvme_connect(ConnectResult::TimedOut, Duration::from_secs(30));
    let t = scrape(&m);
    assert_sample(
        &t,
        r#"rds_csi_nvme_connects_total{result="succeeded"}"#,
        1.0,
    );
    assert_sample(
        &t,
        r#"rds_csi_nvme_connects_total{result="timed_out"}"#,
        1.0,
    );
    assert_sample(&t, r#"rds_csi_nvme_connects_total{result="failed"}"#, 0.0);
    assert_sample(&t, "rds_csi_nvme_connect_duration_seconds_count", 2.0);
    assert_sample(
        &t,
        r#"rds_csi_nvme_connect_duration_seconds_bucket{le="0.25"}"#,
        1.0,
    );
}

#[test]
fn orphans_cleaned_adds_up() {
    let m = Metrics::new("v");
    m.orphans_cleaned(2);
    m.orphans_cleaned(1);
    assert_sample(&scrape(&m), "rds_csi_orphans_cleaned_total", 3.0);
}

#[test]
fn set_events_copies_the_sinks_totals() {
    let m = Metrics::new("v");
    m.set_events(10, 2, 1);
    m.set_events(12, 2, 3);
    let t = scrape(&m);
    assert_sample(&t, r#"rds_csi_kube_events_total{result="posted"}"#, 12.0);
    assert_sample(&t, r#"rds_csi_kube_events_total{result="dropped"}"#, 2.0);
    assert_sample(&t, r#"rds_csi_kube_events_total{result="failed"}"#, 3.0);
}

#[test]
fn set_events_never_moves_a_counter_backwards() {
    let m = Metrics::new("v");
    m.set_events(10, 2, 1);
    m.set_events(4, 0, 0);
    let t = scrape(&m);
    assert_sample(&t, r#"rds_csi_kube_events_total{result="posted"}"#, 10.0);
    assert_sample(&t, r#"rds_csi_kube_events_total{result="dropped"}"#, 2.0);
}

#[test]
fn durations_are_exported_in_seconds_with_a_unit() {
    let m = Metrics::new("v");
    // Labelled families are only encoded once they hold a series.
    m.detection_latency("mount_missing", Duration::from_millis(1));
    m.csi_operation("NodeStageVolume", 0, Duration::from_millis(1));
    let t = scrape(&m);
    for family in [
        "rds_csi_detection_latency_seconds",
        "rds_csi_recovery_duration_seconds",
        "rds_csi_csi_operation_duration_seconds",
        "rds_csi_nvme_connect_duration_seconds",
    ] {
        assert!(
            t.contains(&format!("# UNIT {family} seconds\n")),
            "expected a seconds unit line for {family}:\n{t}"
        );
    }
}

#[test]
fn metrics_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Metrics>();
}
