//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod loopdev;

use rds_devices::sysfs_tree::{ControllerSpec, NamespaceSpec};
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
