//! The device watcher (rds-devices) follows the emulated fabric through the udev events it
//! injects: the end-to-end path the node plugin relies on when run with `--fabric emulated`.
//!
//! One test in its own binary, hence its own private network namespace: no other test's
//! injected events can reach this watcher.

rds_testkit::private_namespaces!();

use std::time::Duration;

use rds_devices::source::SourceKind;
use rds_devices::watcher::{spawn, WatcherConfig};
use rds_fabric::loopdev::LoopControl;
use rds_fabric::{ConnectRequest, ControllerState, EmulatedConfig, EmulatedFabric, Fabric};
use rds_types::{ManagedPrefix, Nqn};

const PREFIX: &str = "nqn.2000-02.com.mikrotik:pvc-";
/// Generous: events arrive within microseconds.
const DEADLINE: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_follows_connect_state_reconnect_and_loss_through_injected_events() {
    rds_testkit::require_private_namespaces();
    let dir = tempfile::tempdir().unwrap();
    let sys = dir.path().join("sys");
    let fabric = EmulatedFabric::new(EmulatedConfig {
        sys_root: sys.clone(),
        dev_root: dir.path().join("dev"),
        backing_dir: dir.path().join("targets"),
        multipath: false,
        inject_uevents: true,
        managed: ManagedPrefix::parse(PREFIX).unwrap(),
        loops: LoopControl::new("/dev", "/sys"),
        create_on_connect: None,
        persist: None,
    })
    .unwrap();
    let (watcher, _events) =
        spawn(WatcherConfig::new(&sys, dir.path().join("run")).with_sources(SourceKind::Udev))
            .expect("watcher");
    let nqn = Nqn::parse(&format!("{PREFIX}watched")).unwrap();
    fabric.add_target(&nqn, 32 << 20).unwrap();
    fabric
        .connect(&ConnectRequest::tcp(
            nqn.clone(),
            "10.0.0.5".parse().unwrap(),
            4420,
        ))
        .unwrap();
    let (name, dev, seq) = fabric.namespace_of(&nqn).unwrap();

    let found = watcher
        .wait_for_namespace(&nqn, 1, DEADLINE)
        .await
        .expect("the watcher must learn of the namespace from the injected events");
    assert_eq!(found.name, name);
    assert_eq!(
        (found.identity.dev, found.identity.diskseq),
        (dev, Some(seq))
    );

    // No uevent announces a lost port: the watcher finds `connecting` by re-reading states.
    fabric.lose_port(&nqn).unwrap();
    let ctrl = fabric.controller_of(&nqn).unwrap();
    watcher
        .wait_until(DEADLINE, |m| {
            m.controller(&ctrl)
                .filter(|c| c.state == ControllerState::Connecting)
                .map(|_| ())
        })
        .await
        .expect("the watcher must see the controller reconnecting");
    fabric.restore_port(&nqn).unwrap();
    watcher
        .wait_until(DEADLINE, |m| {
            m.controller(&ctrl)
                .filter(|c| c.state == ControllerState::Live)
                .map(|_| ())
        })
        .await
        .expect("the watcher must see the controller live again");

    fabric.reconnect(&nqn).unwrap();
    let (_, new_dev, new_seq) = fabric.namespace_of(&nqn).unwrap();
    let replaced = watcher
        .wait_until(DEADLINE, |m| {
            m.resolve(nqn.as_str(), Some(1))
                .filter(|d| d.identity.diskseq == Some(new_seq))
        })
        .await
        .expect("the watcher must see the new incarnation (same name, new diskseq)");
    assert_eq!(replaced.name, name, "the same name came back");
    assert_eq!(replaced.identity.dev, new_dev);

    fabric.lose_controller(&nqn).unwrap();
    watcher
        .wait_until(DEADLINE, |m| {
            m.resolve(nqn.as_str(), Some(1)).is_none().then_some(())
        })
        .await
        .expect("the watcher must see the namespace gone");
}
