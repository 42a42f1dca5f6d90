//! Synthetic udev events matching an [`NvmeTree`](super::tree::NvmeTree), for the
//! emulated fabric and tests.
//!
//! The contract with the watcher: write the tree first, then announce (the watcher reads the
//! attributes the kernel does not put into events, such as a controller's `state` or a
//! namespace's `nsid`, from the tree when the event arrives). On removal, remove from the
//! tree, then announce. Order, as the kernel does it:
//! connect = subsystem `add` (first controller only), controller `add`, disk `add`(s);
//! delete = disk `remove`(s), controller `remove`, subsystem `remove` (last controller only).
//! A state change needs no event (the watcher re-reads states periodically), but announcing
//! a controller `change` makes it visible at once.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use super::tree::{controller_devpath, subsystem_devpath, ControllerSpec, NamespaceSpec};
use rds_devices::uevent::{encode_libudev, Action, UdevInjector};

/// Properties of a subsystem event.
pub fn subsystem_props(action: &Action, instance: u32, seqnum: u64) -> Vec<(String, String)> {
    vec![
        ("ACTION".into(), action.to_string()),
        (
            "DEVPATH".into(),
            subsystem_devpath(&format!("nvme-subsys{instance}")),
        ),
        ("SUBSYSTEM".into(), "nvme-subsystem".into()),
        ("SEQNUM".into(), seqnum.to_string()),
    ]
}

/// Properties of a controller event, with the transport keys the kernel adds.
pub fn controller_props(action: &Action, c: &ControllerSpec, seqnum: u64) -> Vec<(String, String)> {
    let mut p = vec![
        ("ACTION".into(), action.to_string()),
        ("DEVPATH".into(), controller_devpath(&c.name)),
        ("SUBSYSTEM".into(), "nvme".into()),
        ("MAJOR".into(), c.dev.major.to_string()),
        ("MINOR".into(), c.dev.minor.to_string()),
        ("DEVNAME".into(), format!("/dev/{}", c.name)),
    ];
    if *action == Action::Change && c.state == "live" {
        p.push(("NVME_EVENT".into(), "connected".into()));
    }
    p.extend([
        ("NVME_TRTYPE".into(), c.transport.clone()),
        ("NVME_TRADDR".into(), c.traddr.clone()),
        ("NVME_TRSVCID".into(), c.trsvcid.clone()),
        ("SEQNUM".into(), seqnum.to_string()),
    ]);
    p
}

/// Properties of a namespace disk event (`devpath` as returned by the tree writer).
pub fn disk_props(
    action: &Action,
    devpath: &str,
    ns: &NamespaceSpec,
    seqnum: u64,
) -> Vec<(String, String)> {
    let mut p = vec![
        ("ACTION".into(), action.to_string()),
        ("DEVPATH".into(), devpath.to_owned()),
        ("SUBSYSTEM".into(), "block".into()),
        ("MAJOR".into(), ns.dev.major.to_string()),
        ("MINOR".into(), ns.dev.minor.to_string()),
        ("DEVNAME".into(), format!("/dev/{}", ns.name)),
        ("DEVTYPE".into(), "disk".into()),
    ];
    if let Some(s) = ns.diskseq {
        p.push(("DISKSEQ".into(), s.to_string()));
    }
    p.push(("SEQNUM".into(), seqnum.to_string()));
    p
}

/// Sends synthetic events on netlink group 2 with increasing SEQNUMs. Needs CAP_NET_ADMIN;
/// use inside a private network namespace.
pub struct Announcer {
    inj: UdevInjector,
    seq: AtomicU64,
}

impl Announcer {
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            inj: UdevInjector::new()?,
            // Far above anything a test kernel has sent, never zero (libudev drops SEQNUM 0).
            seq: AtomicU64::new(1 << 40),
        })
    }

    fn next(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn send_props(&self, props: &[(String, String)]) -> io::Result<()> {
        let refs: Vec<(&str, &str)> = props
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.inj.send(&encode_libudev(&refs))
    }

    pub fn subsystem(&self, action: Action, instance: u32) -> io::Result<()> {
        self.send_props(&subsystem_props(&action, instance, self.next()))
    }

    pub fn controller(&self, action: Action, c: &ControllerSpec) -> io::Result<()> {
        self.send_props(&controller_props(&action, c, self.next()))
    }

    pub fn disk(&self, action: Action, devpath: &str, ns: &NamespaceSpec) -> io::Result<()> {
        self.send_props(&disk_props(&action, devpath, ns, self.next()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rds_devices::uevent::parse;
    use rds_types::{DevNum, DiskSeq};

    #[test]
    fn disk_props_parse_back_to_the_namespace_identity() {
        let ns = NamespaceSpec {
            name: "nvme0n1".into(),
            nsid: 1,
            dev: DevNum::new(259, 3),
            diskseq: Some(DiskSeq(41)),
            size_sectors: 8,
            uuid: None,
            nguid: None,
            wwid: None,
        };
        let props = disk_props(&Action::Add, "/devices/x/nvme0n1", &ns, 7);
        let refs: Vec<(&str, &str)> = props
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let ev = parse(&encode_libudev(&refs)).unwrap();
        assert_eq!(ev.dev, Some(ns.dev));
        assert_eq!(ev.diskseq, ns.diskseq);
        assert_eq!(ev.kernel_name(), "nvme0n1");
        assert_eq!(ev.seqnum, Some(7));
    }
}
