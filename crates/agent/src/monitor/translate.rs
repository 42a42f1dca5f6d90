//! Pure translations from the watchers' and the node service's vocabulary to the state
//! machine's, and from the machine's conditions to the published ones. No IO.

use std::path::Path;
use std::time::SystemTime;

use rds_devices::DeviceEvent;
use rds_monitor::{ControllerFacts, MonitorEvent, MountFacts, NamespaceFacts, StaleMark};
use rds_mounts::mountinfo::MountInfo;
use rds_node::record::{StaleRecord, VolumeRecord};
use rds_node::validate::Access;
use rds_types::{Health, MountKey, Nqn};

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
/// devices, NQNs this plugin could never manage, the watcher's own bookkeeping).
pub fn device_event(ev: &DeviceEvent) -> Option<MonitorEvent> {
    Some(match ev {
        DeviceEvent::NamespaceAdded {
            nqn,
            nsid,
            name,
            identity,
            ids,
        } => MonitorEvent::NamespaceAdded(NamespaceFacts {
            nqn: Nqn::parse(nqn).ok()?,
            nsid: *nsid,
            name: name.clone(),
            identity: *identity,
            ids: ids.clone(),
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
        // The kernel shut the filesystem down (xfs says so only in its log): the same fact as
        // a FAN_FS_ERROR of ext4, every operation through the mount fails with EIO.
        DeviceEvent::FilesystemShutDown { dev, .. } => MonitorEvent::FsError {
            dev: *dev,
            errno: libc::EIO,
            count: 1,
        },
        _ => return None,
    })
}

/// A stage (fresh, or replayed from its record at start-up with `adopted`). `mount` is the
/// staging mount as the node service made it or the start-up scan found it; a filesystem
/// volume without one is missing it, never taken for raw block: the record decides the kind.
pub fn staged(rec: &VolumeRecord, mount: Option<MountKey>, adopted: bool) -> Option<MonitorEvent> {
    let device = rec.device.identity()?;
    let fs_type = match &rec.access {
        Access::Mount { fs_type, .. } => Some(fs_type.as_str().to_owned()),
        Access::Block => None,
    };
    Some(MonitorEvent::VolumeStaged {
        volume_id: rec.volume_id.clone(),
        nqn: rec.target.nqn.clone(),
        nsid: rec.device.nsid,
        ids: rec.device.ids.clone(),
        staging_path: rec.staging_path.as_path().to_owned(),
        // A mount of another device at the staging path is not the volume's.
        mount: mount.filter(|m| fs_type.is_some() && m.dev == device.dev),
        device,
        fs_type,
        read_only: rec.read_only,
        adopted,
    })
}

/// The staging mount of a record in a scanned table (re-adoption).
pub fn adopted_mount(
    rec: &VolumeRecord,
    table: &rds_mounts::table::MountTable,
) -> Option<MountKey> {
    table.top_at(rec.staging_path.as_path()).map(mount_key)
}

pub fn published(
    rec: &VolumeRecord,
    target: &Path,
    mount: Option<MountKey>,
    adopted: bool,
) -> MonitorEvent {
    let entry = rec.publishes.iter().find(|p| p.target == target);
    MonitorEvent::VolumePublished {
        volume_id: rec.volume_id.clone(),
        target: target.to_owned(),
        mount: mount.filter(|_| !rec.access.is_block()),
        read_only: entry.map_or(rec.read_only, |p| p.read_only),
        adopted,
        stale: entry.and_then(|p| p.stale.as_ref()).and_then(stale_mark),
    }
}

pub fn stale_mark(s: &StaleRecord) -> Option<StaleMark> {
    let (kind, old_device, new_device) = s.decode()?;
    Some(StaleMark {
        kind,
        old_device,
        new_device,
    })
}

/// The published shape of a machine condition: `since` on the wall clock.
pub fn health(c: &rds_monitor::VolumeCondition, since: SystemTime) -> Health {
    Health {
        kind: c.kind,
        message: c.message.clone(),
        since,
    }
}
