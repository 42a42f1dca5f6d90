//! Pure translations from the watchers' and the node service's vocabulary to the state
//! machine's. No IO.

use std::path::Path;

use rds_devices::DeviceEvent;
use rds_monitor::{ControllerFacts, MonitorEvent, MountFacts, MountKey, NamespaceFacts};
use rds_mounts::mountinfo::MountInfo;
use rds_types::Nqn;

use rds_node::observer::Condition;
use rds_node::record::VolumeRecord;
use rds_node::validate::Access;

/// The state machine keys mounts by the mountinfo id (with the device, so a reused id on
/// another device is another mount). Every strategy of the mount watcher reports it.
pub fn mount_facts(m: &MountInfo) -> MountFacts {
    MountFacts {
        id: u64::from(m.id),
        dev: m.dev,
        mount_point: m.mount_point.clone(),
        fs_type: m.fs_type.clone(),
        read_only: m.is_read_only(),
        super_options: m.super_options.clone(),
    }
}

pub fn mount_key(m: &MountInfo) -> MountKey {
    MountKey {
        id: u64::from(m.id),
        dev: m.dev,
    }
}

/// A device event in the machine's terms; `None` for events it does not need (plain block
/// devices, NQNs this plugin could never manage).
pub fn device_event(ev: &DeviceEvent) -> Option<MonitorEvent> {
    Some(match ev {
        DeviceEvent::NamespaceAdded {
            nqn,
            nsid,
            name,
            identity,
        } => MonitorEvent::NamespaceAdded(NamespaceFacts {
            nqn: Nqn::parse(nqn).ok()?,
            nsid: *nsid,
            name: name.clone(),
            identity: *identity,
        }),
        DeviceEvent::NamespaceRemoved {
            nqn,
            nsid,
            identity,
            ..
        } => MonitorEvent::NamespaceRemoved {
            nqn: Nqn::parse(nqn).ok()?,
            nsid: *nsid,
            identity: *identity,
        },
        DeviceEvent::ControllerAdded(c) => MonitorEvent::ControllerState(ControllerFacts {
            nqn: Nqn::parse(&c.subsysnqn).ok()?,
            controller: c.name.clone(),
            state: c.state.clone(),
        }),
        DeviceEvent::ControllerState { name, nqn, new, .. } => {
            MonitorEvent::ControllerState(ControllerFacts {
                nqn: Nqn::parse(nqn).ok()?,
                controller: name.clone(),
                state: new.clone(),
            })
        }
        DeviceEvent::ControllerRemoved(c) => MonitorEvent::ControllerRemoved {
            nqn: Nqn::parse(&c.subsysnqn).ok()?,
            controller: c.name.clone(),
        },
        _ => return None,
    })
}

/// The replay of one persisted record at start-up (or of a fresh stage): `mount` is the
/// staging mount found in the mount table, if any.
pub fn staged(
    rec: &VolumeRecord,
    mount: Option<&MountInfo>,
    adopted: bool,
) -> Option<MonitorEvent> {
    let device = rec.device.identity()?;
    let fs_type = match &rec.access {
        Access::Mount { fs_type, .. } => Some(fs_type.as_str().to_owned()),
        Access::Block => None,
    };
    Some(MonitorEvent::VolumeStaged {
        volume_id: rec.volume_id.clone(),
        nqn: rec.target.nqn.clone(),
        nsid: rec.device.nsid,
        staging_path: rec.staging_path.as_path().to_owned(),
        mount: mount.filter(|m| m.dev == device.dev).map(mount_key),
        device,
        fs_type,
        read_only: rec.read_only,
        adopted,
    })
}

pub fn published(
    rec: &VolumeRecord,
    target: &Path,
    mount: Option<&MountInfo>,
    read_only: bool,
    adopted: bool,
) -> MonitorEvent {
    MonitorEvent::VolumePublished {
        volume_id: rec.volume_id.clone(),
        target: target.to_owned(),
        mount: mount.map(mount_key),
        read_only,
        adopted,
    }
}

/// What NodeGetVolumeStats reports for a condition. "Dead" conditions skip statvfs: on a
/// replaced, gone, failed or reconnecting device it can fail or hang.
pub fn csi_condition(c: &rds_monitor::VolumeCondition, since: std::time::SystemTime) -> Condition {
    use rds_monitor::ConditionKind as K;
    let dead = matches!(
        c.kind,
        K::DeviceReplaced
            | K::DeviceGone
            | K::FilesystemFailed
            | K::MountMissing
            | K::ControllerReconnecting
            | K::Recovering
    );
    let since = humantime::format_rfc3339_seconds(since);
    Condition {
        abnormal: c.is_abnormal(),
        message: if c.is_abnormal() {
            format!("{}: {} (since {since})", c.kind, c.message)
        } else {
            format!("healthy (since {since})")
        },
        dead,
    }
}
