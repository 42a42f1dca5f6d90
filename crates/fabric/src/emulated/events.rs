//! The udev events the emulation sends, built as property lists (pure, no IO).
//!
//! They mirror what udevd forwards on netlink group 2 for a real NVMe/TCP host: `DEVNAME` is the
//! absolute node path (udev's convention, here under the emulation's device root), block events
//! carry `MAJOR`, `MINOR`, `DEVTYPE=disk` and `DISKSEQ`, controller events carry the
//! `NVME_TR*` transport properties and, after a reconnect, `NVME_EVENT=connected`.

use std::path::Path;

use rds_types::{DevNum, DiskSeq};

/// A uevent action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Add,
    Remove,
    Change,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Add => "add",
            Action::Remove => "remove",
            Action::Change => "change",
        }
    }
}

/// Properties of one event, in the order udev sends them; `SEQNUM` is added when sent.
pub type Props = Vec<(&'static str, String)>;

fn devname(dev_root: &Path, name: &str) -> String {
    dev_root.join(name).to_string_lossy().into_owned()
}

/// An NVMe controller event (`SUBSYSTEM=nvme`).
pub struct ControllerEvent<'a> {
    pub action: Action,
    pub name: &'a str,
    pub devpath: &'a str,
    pub dev: DevNum,
    pub transport: &'a str,
    pub traddr: &'a str,
    pub trsvcid: &'a str,
    /// `NVME_EVENT` (`connected` after a reconnect).
    pub nvme_event: Option<&'a str>,
}

impl ControllerEvent<'_> {
    pub fn props(&self, dev_root: &Path) -> Props {
        let mut p: Props = vec![
            ("ACTION", self.action.as_str().to_owned()),
            ("DEVPATH", self.devpath.to_owned()),
            ("SUBSYSTEM", "nvme".to_owned()),
        ];
        if let Some(ev) = self.nvme_event {
            p.push(("NVME_EVENT", ev.to_owned()));
        }
        p.extend([
            ("MAJOR", self.dev.major.to_string()),
            ("MINOR", self.dev.minor.to_string()),
            ("DEVNAME", devname(dev_root, self.name)),
            ("NVME_TRTYPE", self.transport.to_owned()),
            ("NVME_TRADDR", self.traddr.to_owned()),
            ("NVME_TRSVCID", self.trsvcid.to_owned()),
            ("NVME_HOST_TRADDR", "none".to_owned()),
            ("NVME_HOST_IFACE", "none".to_owned()),
        ]);
        p
    }
}

/// A namespace disk event (`SUBSYSTEM=block`, `DEVTYPE=disk`).
pub fn disk_event(
    action: Action,
    name: &str,
    devpath: &str,
    dev: DevNum,
    diskseq: DiskSeq,
    dev_root: &Path,
) -> Props {
    vec![
        ("ACTION", action.as_str().to_owned()),
        ("DEVPATH", devpath.to_owned()),
        ("SUBSYSTEM", "block".to_owned()),
        ("MAJOR", dev.major.to_string()),
        ("MINOR", dev.minor.to_string()),
        ("DEVNAME", devname(dev_root, name)),
        ("DEVTYPE", "disk".to_owned()),
        ("DISKSEQ", diskseq.to_string()),
    ]
}

/// A subsystem event (`SUBSYSTEM=nvme-subsystem`).
pub fn subsystem_event(action: Action, devpath: &str) -> Props {
    vec![
        ("ACTION", action.as_str().to_owned()),
        ("DEVPATH", devpath.to_owned()),
        ("SUBSYSTEM", "nvme-subsystem".to_owned()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(p: &'a Props, k: &str) -> Option<&'a str> {
        p.iter().find(|(key, _)| *key == k).map(|(_, v)| v.as_str())
    }

    #[test]
    fn disk_events_carry_the_identity_a_watcher_keys_on() {
        let p = disk_event(
            Action::Add,
            "nvme3n1",
            "/devices/virtual/nvme-fabrics/ctl/nvme3/nvme3n1",
            DevNum::new(7, 12),
            DiskSeq(41),
            Path::new("/tmp/x/dev"),
        );
        assert_eq!(get(&p, "ACTION"), Some("add"));
        assert_eq!(get(&p, "SUBSYSTEM"), Some("block"));
        assert_eq!(get(&p, "DEVTYPE"), Some("disk"));
        assert_eq!(get(&p, "MAJOR"), Some("7"));
        assert_eq!(get(&p, "MINOR"), Some("12"));
        assert_eq!(get(&p, "DISKSEQ"), Some("41"));
        assert_eq!(
            get(&p, "DEVNAME"),
            Some("/tmp/x/dev/nvme3n1"),
            "DEVNAME is udev's absolute node path under the device root"
        );
    }

    #[test]
    fn controller_events_name_the_transport_and_the_reconnect() {
        let ev = ControllerEvent {
            action: Action::Change,
            name: "nvme2",
            devpath: "/devices/virtual/nvme-fabrics/ctl/nvme2",
            dev: DevNum::new(240, 2),
            transport: "tcp",
            traddr: "10.0.0.5",
            trsvcid: "4420",
            nvme_event: Some("connected"),
        };
        let p = ev.props(Path::new("/dev"));
        assert_eq!(get(&p, "SUBSYSTEM"), Some("nvme"));
        assert_eq!(get(&p, "NVME_EVENT"), Some("connected"));
        assert_eq!(get(&p, "NVME_TRTYPE"), Some("tcp"));
        assert_eq!(get(&p, "NVME_TRADDR"), Some("10.0.0.5"));
        assert_eq!(get(&p, "NVME_TRSVCID"), Some("4420"));
        assert_eq!(get(&p, "DEVNAME"), Some("/dev/nvme2"));
    }
}
