//! Every scenario the `demo` plays, as a test (the same code: `rds_harness::scenarios`).

rds_testkit::private_namespaces!();

use rds_harness::scenarios;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn play(name: &str) {
    let _s = SERIAL.lock().await;
    rds_testkit::require_private_namespaces();
    let dir = tempfile::tempdir().expect("tempdir");
    match scenarios::run(name, dir.path()).await {
        Ok(t) => assert!(
            !t.steps.is_empty(),
            "{name}: the scenario recorded its timeline"
        ),
        Err((t, e)) => panic!(
            "{name} did not behave as described: {e}\ntimeline: {:#?}",
            t.steps
        ),
    }
}

macro_rules! scenario_tests {
    ($($test:ident => $name:literal),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                play($name).await;
            }
        )*

        #[test]
        fn every_demo_scenario_has_a_test() {
            let tested = [$($name),*];
            for s in scenarios::ALL {
                assert!(tested.contains(s), "scenario {s} has no test");
            }
        }
    };
}

scenario_tests! {
    ext4_volume_lifecycle => "ext4",
    xfs_volume_lifecycle => "xfs",
    block_volume_lifecycle => "block",
    a_lost_port_is_reconnecting_then_healthy_on_the_same_device => "port-loss",
    reconnect_renamed_is_detected_and_healed => "reconnect-renamed",
    reconnect_same_name_new_diskseq_is_detected_and_healed => "reconnect-same-name",
    another_namespace_behind_the_nqn_is_never_mounted => "namespace-replaced",
    dead_path_is_flagged_and_never_remounted => "dead-path",
    mount_storm_is_flagged_and_cleared => "mount-storm",
    plugin_restart_finds_and_heals_stale_mounts => "plugin-restart",
}

#[tokio::test]
async fn an_unknown_scenario_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    assert!(scenarios::run("no-such-scenario", dir.path())
        .await
        .is_err());
}
