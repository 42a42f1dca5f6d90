//! Helpers of the device watcher tests on the emulated tree.

use rds_fabric::emulated::tree::{ControllerSpec, NamespaceSpec};
use rds_types::{DevNum, DiskSeq};

pub const NQN: &str = "nqn.2000-02.com.mikrotik:pvc-0b5a6c1e-1234-4d2b-9c3a-7f8e9d0a1b2c";
pub const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:5d2f8c1e-0000-4000-8000-000000000001";

pub fn ctrl(name: &str, nqn: &str, state: &str, cntlid: u16) -> ControllerSpec {
    let n: u32 = name.trim_start_matches("nvme").parse().unwrap_or(0);
    ControllerSpec {
        name: name.to_owned(),
        subsysnqn: nqn.to_owned(),
        transport: "tcp".into(),
        traddr: "10.0.0.5".into(),
        trsvcid: "4420".into(),
        state: state.into(),
        cntlid,
        hostnqn: HOSTNQN.into(),
        hostid: "5d2f8c1e-0000-4000-8000-000000000001".into(),
        dev: DevNum::new(241, n),
        ctrl_loss_tmo: Some(600),
        reconnect_delay: Some(5),
    }
}

pub fn ns(name: &str, nsid: u32, dev: DevNum, diskseq: u64) -> NamespaceSpec {
    NamespaceSpec {
        name: name.to_owned(),
        nsid,
        dev,
        diskseq: Some(DiskSeq(diskseq)),
        size_sectors: 2048,
        uuid: Some(format!("0b5a6c1e-1234-4d2b-9c3a-{nsid:012}")),
        nguid: None,
        wwid: None,
    }
}

#[allow(unused_imports)]
pub use rds_testkit::devices::{expect_event, skip_replay, DEADLINE};

/// Builds and injects synthetic udev messages with increasing SEQNUMs.
pub struct Injector {
    seq: u64,
}

impl Injector {
    pub fn new() -> Self {
        Self { seq: 1000 }
    }

    pub fn send(&mut self, action: &str, devpath: &str, subsystem: &str, extra: &[(&str, &str)]) {
        self.seq += 1;
        let seq = self.seq.to_string();
        let mut props = vec![
            ("ACTION", action),
            ("DEVPATH", devpath),
            ("SUBSYSTEM", subsystem),
        ];
        props.extend_from_slice(extra);
        props.push(("SEQNUM", &seq));
        rds_devices::uevent::inject_udev(&rds_devices::uevent::encode_libudev(&props))
            .expect("injecting a udev message (needs root, private netns)");
    }

    /// A block `add`/`remove` for a namespace disk at `devpath`.
    pub fn disk(
        &mut self,
        action: &str,
        devpath: &str,
        ns: &rds_fabric::emulated::tree::NamespaceSpec,
    ) {
        let (ma, mi) = (ns.dev.major.to_string(), ns.dev.minor.to_string());
        let seq = ns.diskseq.map(|d| d.0.to_string()).unwrap_or_default();
        let devname = format!("/dev/{}", ns.name);
        self.send(
            action,
            devpath,
            "block",
            &[
                ("MAJOR", &ma),
                ("MINOR", &mi),
                ("DEVNAME", &devname),
                ("DEVTYPE", "disk"),
                ("DISKSEQ", &seq),
            ],
        );
    }
}
