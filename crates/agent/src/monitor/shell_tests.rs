//! The shell driven with paused time and fake seams: what it publishes, when its timers fire,
//! what it asks its seams to do and in which order. No kernel, no threads of its own.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rds_devices::DeviceEvent;
use rds_monitor::{ControllerFacts, MonitorConfig, NamespaceFacts, RecoveryReason, RecoveryReport};
use rds_mounts::watch::MountEvent;
use rds_node::identity::Readiness;
use rds_node::record::{DeviceRecord, VolumeRecord};
use rds_node::validate::{AbsPath, Access, FsType, Target};
use rds_types::{
    BlockIdentity, ConditionKind, ControllerState, DevNum, DiskSeq, MountKey, NamespaceIds, Nqn,
    VolumeId,
};
use tokio::sync::mpsc;

use super::io::{IoSample, IoWatchSet};
use super::seams::*;
use super::*;

const NQN: &str = "nqn.2000-02.com.mikrotik:pvc-1";
const STAGING: &str = "/var/lib/kubelet/plugins/kubernetes.io/csi/rds/pvc-1/globalmount";

fn vid() -> VolumeId {
    VolumeId::parse("pvc-1").unwrap()
}

fn nqn() -> Nqn {
    Nqn::parse(NQN).unwrap()
}

fn ident(seq: u64) -> BlockIdentity {
    BlockIdentity {
        dev: DevNum::new(259, 1),
        diskseq: Some(DiskSeq(seq)),
    }
}

fn ids() -> NamespaceIds {
    NamespaceIds::new(
        Some("8a0e2a41-0000-4000-8000-000000000001".into()),
        None,
        None,
    )
}

fn record() -> VolumeRecord {
    VolumeRecord {
        volume_id: vid(),
        target: Target {
            nqn: nqn(),
            address: "10.0.0.5".parse().unwrap(),
            port: 4420,
            ctrl_loss_tmo: 3,
            reconnect_delay: 1,
            keep_alive_tmo: None,
            capacity_hint: None,
        },
        staging_path: AbsPath::parse("staging", STAGING).unwrap(),
        access: Access::Mount {
            fs_type: FsType::Ext4,
            flags: vec![],
        },
        read_only: false,
        device: DeviceRecord::new("nvme0n1", ident(7), Some(1), ids()),
        publishes: Default::default(),
        staged_at: 0,
    }
}

fn table(with_staging: bool) -> Arc<rds_mounts::table::MountTable> {
    let mut text = String::from("1 0 8:1 / / rw - ext4 /dev/sda1 rw\n");
    if with_staging {
        text.push_str(&format!(
            "42 1 259:1 / {STAGING} rw,nosuid,nodev - ext4 /dev/nvme0n1 rw\n"
        ));
    }
    Arc::new(
        rds_mounts::mountinfo::parse_table(text.as_bytes())
            .entries
            .into_iter()
            .collect(),
    )
}

#[derive(Default)]
struct Fakes {
    namespaces: Mutex<Vec<NamespaceFacts>>,
    controllers: Mutex<Vec<ControllerFacts>>,
    log: Mutex<Vec<String>>,
    recoveries: Mutex<Vec<Result<RecoveryReport, RecoveryFailure>>>,
}

impl Fakes {
    fn log(&self, s: String) {
        self.log.lock().unwrap().push(s);
    }
    fn taken(&self) -> Vec<String> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

struct F(Arc<Fakes>);

impl DeviceModel for F {
    fn snapshot(&self, _: &[Nqn]) -> (Vec<NamespaceFacts>, Vec<ControllerFacts>) {
        (
            self.0.namespaces.lock().unwrap().clone(),
            self.0.controllers.lock().unwrap().clone(),
        )
    }
}

impl MountTracker for F {
    fn track(&self, id: u32) {
        self.0.log(format!("track {id}"));
    }
    fn untrack(&self, id: u32) {
        self.0.log(format!("untrack {id}"));
    }
}

impl FsWatcher for F {
    fn watch(&self, p: &Path, dev: DevNum) -> Result<(), String> {
        self.0.log(format!("watch {} {dev}", p.display()));
        Ok(())
    }
    fn unwatch(&self, dev: DevNum) -> Result<(), String> {
        self.0.log(format!("unwatch {dev}"));
        Ok(())
    }
}

#[tonic::async_trait]
impl RecoveryRunner for F {
    async fn recover(
        &self,
        _: &VolumeId,
        reason: &RecoveryReason,
    ) -> Result<RecoveryReport, RecoveryFailure> {
        self.0.log(format!("recover {reason:?}"));
        let next = self.0.recoveries.lock().unwrap().pop();
        next.unwrap_or(Err(RecoveryFailure {
            error: "connection refused".into(),
            final_: false,
        }))
    }
}

struct Running {
    fakes: Arc<Fakes>,
    handle: MonitorHandle,
    mounts: mpsc::Sender<MountEvent>,
    devices: mpsc::Sender<DeviceEvent>,
    io: mpsc::Sender<IoSample>,
    io_set: IoWatchSet,
    events: Arc<rds_events::RecordingSink>,
    ready: Readiness,
}

/// A shell with one adopted ext4 volume, its namespace and a live controller present.
async fn start() -> Running {
    start_with(true).await
}

async fn start_with(staging_mounted: bool) -> Running {
    let fakes = Arc::new(Fakes::default());
    fakes.namespaces.lock().unwrap().push(NamespaceFacts {
        nqn: nqn(),
        nsid: 1,
        name: "nvme0n1".into(),
        identity: ident(7),
        ids: ids(),
    });
    fakes.controllers.lock().unwrap().push(ControllerFacts {
        nqn: nqn(),
        controller: "nvme0".into(),
        state: ControllerState::Live,
    });
    let conditions = Conditions::default();
    let (handle, notes) = MonitorHandle::new(conditions.clone());
    let events = Arc::new(rds_events::RecordingSink::new());
    let io_set = IoWatchSet::default();
    let seams = Seams {
        devices: Arc::new(F(fakes.clone())),
        mounts: Arc::new(F(fakes.clone())),
        fs_errors: Some(Arc::new(F(fakes.clone()))),
        io: io_set.clone(),
        events: events.clone(),
        recovery: Some(Arc::new(F(fakes.clone()))),
        evictor: None,
        metrics: None,
    };
    let (mounts, mount_rx) = mpsc::channel(64);
    let (devices, device_rx) = mpsc::channel(64);
    let (io, io_rx) = mpsc::channel(64);
    let sources = Sources {
        notes,
        mounts: mount_rx,
        devices: device_rx,
        fs_errors: None,
        io: io_rx,
        events_stats: None,
    };
    let shell = Shell::new(MonitorConfig::default(), conditions, seams);
    let ready = Readiness::default();
    tokio::spawn(shell.run(sources, vec![record()], ready.clone()));
    mounts
        .send(MountEvent::Resynced {
            table: table(staging_mounted),
        })
        .await
        .unwrap();
    ready.wait().await;
    Running {
        fakes,
        handle,
        mounts,
        devices,
        io,
        io_set,
        events,
        ready,
    }
}

async fn kind_becomes(r: &Running, kind: ConditionKind) {
    r.handle
        .wait_for(&vid(), None, Duration::from_secs(3600), |h| h.kind == kind)
        .await
        .unwrap_or_else(|last| panic!("expected {kind}, last {last:?}"));
}

fn removed() -> DeviceEvent {
    DeviceEvent::NamespaceRemoved {
        nqn: NQN.into(),
        nsid: 1,
        name: "nvme0n1".into(),
        identity: ident(7),
    }
}

fn controller_removed() -> DeviceEvent {
    DeviceEvent::ControllerRemoved(rds_devices::ControllerInfo {
        name: "nvme0".into(),
        state: ControllerState::Deleting,
        transport: "tcp".into(),
        address: "traddr=10.0.0.5,trsvcid=4420".into(),
        subsysnqn: NQN.into(),
        cntlid: Some(1),
        dev: None,
    })
}

#[tokio::test(start_paused = true)]
async fn adoption_publishes_the_volume_and_asks_for_its_watches_before_ready() {
    let r = start().await;
    assert!(r.ready.is_ready());
    let h = r.handle.volume_condition(&vid()).expect("published");
    assert_eq!(h.kind, ConditionKind::Healthy, "{h:?}");
    // The filesystem marks run off the loop: let their task finish.
    tokio::time::sleep(Duration::from_millis(10)).await;
    let log = r.fakes.taken();
    assert_eq!(
        log,
        vec!["track 42".to_owned(), format!("watch {STAGING} 259:1")],
        "{log:?}"
    );
    assert_eq!(r.io_set.devices(), vec![DevNum::new(259, 1)]);
}

#[tokio::test(start_paused = true)]
async fn a_loss_is_abnormal_at_once_then_gone_and_reconnected_with_backoff() {
    let r = start().await;
    r.devices.send(removed()).await.unwrap();
    kind_becomes(&r, ConditionKind::DeviceRemoved).await;
    r.devices.send(controller_removed()).await.unwrap();
    // The gone-grace passes on the paused clock: no wall time is spent.
    kind_becomes(&r, ConditionKind::DeviceGone).await;
    let recovers = |log: &[String]| log.iter().filter(|l| l.starts_with("recover")).count();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let log = r.fakes.taken();
    let n = recovers(&log);
    // 1 + 2 + 4 + 8 + 16 + 30 seconds: 5 attempts within the first minute, then one per 30 s.
    assert!(
        (4..=6).contains(&n),
        "reconnect attempts in 60 s: {n} ({log:?})"
    );
    assert!(log
        .iter()
        .all(|l| !l.starts_with("recover") || l.contains("Reconnect")));
    tokio::time::sleep(Duration::from_secs(300)).await;
    let more = recovers(&r.fakes.taken());
    assert!((9..=11).contains(&more), "and no end: {more} in 5 minutes");
    let failures = r
        .events
        .events()
        .iter()
        .filter(|e| e.reason == rds_types::EventReason::RecoveryFailed)
        .count();
    assert!(
        failures >= n + more - 1,
        "every failure is an Event ({failures})"
    );
}

#[tokio::test(start_paused = true)]
async fn after_a_recovery_the_old_filesystem_mark_ends_before_the_new_one_starts() {
    let r = start().await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    r.fakes.taken();
    r.fakes.recoveries.lock().unwrap().push(Ok(RecoveryReport {
        new_device: ident(9),
        new_mount: Some(MountKey {
            id: 77,
            dev: DevNum::new(259, 1),
        }),
        republished: vec![],
        stale_targets: vec![],
    }));
    r.devices.send(removed()).await.unwrap();
    r.devices
        .send(DeviceEvent::NamespaceAdded {
            nqn: NQN.into(),
            nsid: 1,
            name: "nvme0n1".into(),
            identity: ident(9),
            ids: ids(),
        })
        .await
        .unwrap();
    kind_becomes(&r, ConditionKind::DeviceReplaced).await;
    // The debounce passes, the fake executor heals onto mount 77.
    r.mounts
        .send(MountEvent::Attached(
            rds_mounts::mountinfo::parse_table(
                format!("77 1 259:1 / {STAGING} rw - ext4 /dev/nvme0n1 rw\n").as_bytes(),
            )
            .entries
            .remove(0),
        ))
        .await
        .unwrap();
    kind_becomes(&r, ConditionKind::Healthy).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    let log: Vec<String> = r
        .fakes
        .taken()
        .into_iter()
        .filter(|l| !l.starts_with("recover"))
        .collect();
    assert_eq!(
        log,
        vec![
            "untrack 42".to_owned(),
            "track 77".to_owned(),
            "unwatch 259:1".to_owned(),
            format!("watch {STAGING} 259:1"),
        ],
        "ext4 keeps its fsid: the old mark must go first"
    );
}

#[tokio::test(start_paused = true)]
async fn a_note_is_taken_in_before_the_csi_call_goes_on() {
    let r = start().await;
    use rds_node::observer::VolumeObserver;
    r.handle.unstaged(&vid()).await;
    assert!(
        r.handle.volume_condition(&vid()).is_none(),
        "the unstage was seen when the note returned"
    );
    r.handle
        .staged(
            &record(),
            Some(MountKey {
                id: 42,
                dev: DevNum::new(259, 1),
            }),
        )
        .await;
    assert!(r.handle.volume_condition(&vid()).is_some());
}

#[tokio::test(start_paused = true)]
async fn stalled_counters_become_io_stalled_after_the_stall_period() {
    let r = start().await;
    let dev = DevNum::new(259, 1);
    r.io.send(IoSample {
        dev,
        inflight: 3,
        completed: 10,
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(29)).await;
    r.io.send(IoSample {
        dev,
        inflight: 3,
        completed: 10,
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        r.handle.volume_condition(&vid()).unwrap().kind,
        ConditionKind::Healthy
    );
    kind_becomes(&r, ConditionKind::IoStalled).await;
    r.io.send(IoSample {
        dev,
        inflight: 1,
        completed: 11,
    })
    .await
    .unwrap();
    kind_becomes(&r, ConditionKind::Healthy).await;
}

#[tokio::test(start_paused = true)]
async fn a_missing_staging_mount_at_start_up_is_mount_missing_for_a_filesystem_volume() {
    let r = start_with(false).await;
    let h = r.handle.volume_condition(&vid()).unwrap();
    assert_eq!(
        h.kind,
        ConditionKind::MountMissing,
        "never read as raw block: {h:?}"
    );
}
