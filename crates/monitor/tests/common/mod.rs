//! Builders for synthetic events: one volume `n` uses NQN `...:pvc-n`, device 259:n, staging
//! mount id 100+n, and publishes with bind mount ids 1000+10n+pod.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use rds_monitor::*;
use rds_types::{BlockIdentity, DevNum, DiskSeq, NamespaceIds, Nqn};

pub fn vid(n: u32) -> VolumeId {
    VolumeId::parse(&format!("pvc-{n}")).expect("valid volume id")
}

pub fn nqn(n: u32) -> Nqn {
    Nqn::parse(&format!("nqn.2000-02.com.mikrotik:pvc-{n}")).expect("valid test NQN")
}

pub fn ident(minor: u32, seq: u64) -> BlockIdentity {
    BlockIdentity {
        dev: DevNum::new(259, minor),
        diskseq: Some(DiskSeq(seq)),
    }
}

pub fn staging(n: u32) -> PathBuf {
    PathBuf::from(format!(
        "/var/lib/kubelet/plugins/kubernetes.io/csi/rds.csi.srvlab.io/{n}/globalmount"
    ))
}

pub fn target(n: u32, pod: u32) -> PathBuf {
    PathBuf::from(format!(
        "/var/lib/kubelet/pods/pod-{n}-{pod}/volumes/kubernetes.io~csi/pvc-{n}/mount"
    ))
}

pub fn staging_mount_id(n: u32) -> u64 {
    100 + u64::from(n)
}

pub fn bind_id(n: u32, pod: u32) -> u64 {
    1000 + 10 * u64::from(n) + u64::from(pod)
}

pub fn mount(id: u64, dev: DevNum, at: PathBuf) -> MountFacts {
    MountFacts {
        id,
        dev,
        mount_point: at,
        fs_type: "ext4".into(),
        read_only: false,
        super_options: "rw,errors=remount-ro".into(),
    }
}

pub fn staging_mount(n: u32) -> MountFacts {
    mount(staging_mount_id(n), DevNum::new(259, n), staging(n))
}

pub fn bind_mount(n: u32, pod: u32) -> MountFacts {
    mount(bind_id(n, pod), DevNum::new(259, n), target(n, pod))
}

pub fn ns(n: u32, minor: u32, seq: u64) -> NamespaceFacts {
    NamespaceFacts {
        nqn: nqn(n),
        nsid: 1,
        name: format!("nvme{n}n1"),
        identity: ident(minor, seq),
        ids: ids(n),
    }
}

/// The namespace identifiers of volume `n`'s namespace.
pub fn ids(n: u32) -> NamespaceIds {
    NamespaceIds::new(Some(format!("8a0e2a41-0000-4000-8000-{n:012}")), None, None)
}

pub fn ctrl(n: u32, name: &str, state: ControllerState) -> MonitorEvent {
    MonitorEvent::ControllerState(ControllerFacts {
        nqn: nqn(n),
        controller: name.into(),
        state,
    })
}

pub fn staged(n: u32, seq: u64, adopted: bool) -> MonitorEvent {
    MonitorEvent::VolumeStaged {
        volume_id: vid(n),
        nqn: nqn(n),
        nsid: Some(1),
        ids: ids(n),
        staging_path: staging(n),
        mount: Some(MountKey {
            id: staging_mount_id(n),
            dev: DevNum::new(259, n),
        }),
        device: ident(n, seq),
        fs_type: Some("ext4".into()),
        read_only: false,
        adopted,
    }
}

pub fn published(n: u32, pod: u32) -> MonitorEvent {
    MonitorEvent::VolumePublished {
        volume_id: vid(n),
        target: target(n, pod),
        mount: Some(MountKey {
            id: bind_id(n, pod),
            dev: DevNum::new(259, n),
        }),
        read_only: false,
        adopted: false,
        stale: None,
    }
}

pub fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// A monitor driven with a moving clock.
pub struct H {
    pub m: Monitor,
    pub now: Timestamp,
}

impl H {
    pub fn new() -> Self {
        Self::with(MonitorConfig::default())
    }

    pub fn with(cfg: MonitorConfig) -> Self {
        Self {
            m: Monitor::new(cfg),
            now: Timestamp::from_duration(Duration::from_secs(1000)),
        }
    }

    /// Volume `n` staged normally: namespace seen (diskseq 7), controller live, staging mount
    /// attached, then the stage.
    pub fn with_volume(n: u32) -> Self {
        let mut h = Self::new();
        h.add_volume(n);
        h
    }

    pub fn add_volume(&mut self, n: u32) {
        self.ev(MonitorEvent::NamespaceAdded(ns(n, n, 7)));
        self.ev(ctrl(n, &format!("nvme{n}"), ControllerState::Live));
        self.ev(MonitorEvent::MountAttached(staging_mount(n)));
        self.ev(staged(n, 7, false));
        assert_eq!(
            self.kind(n),
            ConditionKind::Healthy,
            "setup: volume {n} healthy"
        );
    }

    pub fn add_publish(&mut self, n: u32, pod: u32) {
        self.ev(MonitorEvent::MountAttached(bind_mount(n, pod)));
        self.ev(published(n, pod));
    }

    pub fn ev(&mut self, e: MonitorEvent) -> Vec<Action> {
        let out = self.m.on_event(e, self.now);
        self.assert_consistent();
        out
    }

    pub fn after(&mut self, d: Duration, e: MonitorEvent) -> Vec<Action> {
        self.now = self.now.saturating_add(d);
        self.ev(e)
    }

    pub fn tick_after(&mut self, d: Duration) -> Vec<Action> {
        self.after(d, MonitorEvent::Tick)
    }

    pub fn kind(&self, n: u32) -> ConditionKind {
        self.m
            .condition(&vid(n))
            .map(|c| c.kind)
            .unwrap_or_else(|| panic!("volume {n} should be tracked"))
    }

    pub fn message(&self, n: u32) -> String {
        self.m
            .condition(&vid(n))
            .expect("tracked")
            .message
            .to_string()
    }

    pub fn publish_kind(&self, n: u32, pod: u32) -> Option<ConditionKind> {
        self.m
            .publish_condition(&vid(n), &target(n, pod))
            .map(|c| c.kind)
    }

    pub fn publish_message(&self, n: u32, pod: u32) -> String {
        self.m
            .publish_condition(&vid(n), &target(n, pod))
            .map(|c| c.message.to_string())
            .unwrap_or_default()
    }

    pub fn assert_consistent(&self) {
        let d = rds_monitor::recompute::check(&self.m);
        assert!(
            d.is_empty(),
            "incremental state diverged from recomputation: {}",
            d.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        );
    }

    /// Replaces the staging namespace with a new incarnation (removal, then add).
    pub fn replace_device(&mut self, n: u32, minor: u32, seq: u64) -> Vec<Action> {
        let mut out = self.ev(MonitorEvent::NamespaceRemoved {
            nqn: nqn(n),
            nsid: 1,
            identity: ident(n, 7),
        });
        out.extend(self.after(ms(300), MonitorEvent::NamespaceAdded(ns(n, minor, seq))));
        out
    }
}

pub fn recovers(actions: &[Action]) -> Vec<(VolumeId, RecoveryReason, u32)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Recover {
                volume_id,
                reason,
                attempt,
                ..
            } => Some((volume_id.clone(), reason.clone(), *attempt)),
            _ => None,
        })
        .collect()
}

pub fn posted(actions: &[Action]) -> Vec<(EventReason, EventType, String)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::PostEvent {
                reason,
                type_,
                message,
                ..
            } => Some((*reason, *type_, message.to_string())),
            _ => None,
        })
        .collect()
}

pub fn ticks(actions: &[Action]) -> Vec<Timestamp> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::ScheduleTick { at } => Some(*at),
            _ => None,
        })
        .collect()
}

pub fn metrics(actions: &[Action]) -> Vec<MetricEvent> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Metric(m) => Some(m.clone()),
            _ => None,
        })
        .collect()
}
