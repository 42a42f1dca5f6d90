//! The pure device model: controllers, subsystems, block devices and the NQN → namespace index.
//!
//! No IO here. Inputs are [`Observation`]s (one uevent, enriched with the sysfs attributes the
//! kernel does not put in the event) and [`Snapshot`]s (a full sysfs scan); outputs are typed
//! [`DeviceEvent`]s. Applying the same observation twice changes nothing and emits nothing,
//! so duplicate deliveries (kernel and udev groups both live) are harmless.
//!
//! Identity is the kernel's: a block device that comes back under the same name with another
//! `major:minor` or another `diskseq` is a new device (removed, then added), never a change.

use std::collections::HashMap;

use rds_types::{BlockIdentity, DevNum, NamespaceIds};

/// An NVMe controller's state: the shared vocabulary's.
pub use rds_types::ControllerState;

/// Rank used to pick the best path of a multipath head (live first).
fn rank(s: &ControllerState) -> u8 {
    match s {
        ControllerState::Live => 0,
        ControllerState::Resetting => 1,
        ControllerState::Connecting => 2,
        ControllerState::New => 3,
        ControllerState::Unknown(_) => 4,
        ControllerState::Deleting => 5,
        ControllerState::DeletingNoIo => 6,
        ControllerState::Dead => 7,
    }
}

/// One NVMe controller (`nvmeN`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerInfo {
    pub name: String,
    pub state: ControllerState,
    /// `tcp`, `rdma`, `fc`, `pcie`, `loop`.
    pub transport: String,
    /// The raw `address` attribute (`traddr=10.0.0.5,trsvcid=4420`).
    pub address: String,
    /// Subsystem NQN as the kernel reports it. Kept as a raw string: NQNs of devices this
    /// plugin does not manage need not follow the plugin's own NQN rules.
    pub subsysnqn: String,
    pub cntlid: Option<u16>,
    /// The controller's char device number.
    pub dev: Option<DevNum>,
}

impl ControllerInfo {
    /// One `key=value` field of `address` (`traddr`, `trsvcid`, `host_traddr`, ...).
    pub fn address_field(&self, key: &str) -> Option<&str> {
        self.address.split(',').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k.trim() == key).then_some(v.trim())
        })
    }

    /// Same controller incarnation (a reused name with another subsystem, cntlid or char
    /// device is a new controller).
    fn same_incarnation(&self, other: &ControllerInfo) -> bool {
        self.subsysnqn == other.subsysnqn
            && self.cntlid == other.cntlid
            && self.dev == other.dev
            && self.transport == other.transport
    }
}

/// What an NVMe block device is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NvmeRole {
    /// `nvmeNnM` under controller `nvmeN` (no native multipath).
    Namespace { controller: String },
    /// `nvmeKnM` under subsystem `nvme-subsysK` (native multipath head).
    Head { subsystem: String },
    /// Hidden per-path disk `nvmeNcKnM` (no `/dev` node; never resolved as a volume).
    Path { controller: String },
}

/// NVMe identity attributes of a namespace block device.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NvmeNamespace {
    pub role: NvmeRole,
    /// The subsystem NQN (raw, see [`ControllerInfo::subsysnqn`]).
    pub nqn: String,
    pub nsid: u32,
    pub uuid: Option<String>,
    pub nguid: Option<String>,
    pub wwid: Option<String>,
}

impl NvmeNamespace {
    /// The identifiers, normalised (an all-zero uuid or nguid means "not reported").
    pub fn ids(&self) -> NamespaceIds {
        NamespaceIds::new(self.uuid.clone(), self.nguid.clone(), self.wwid.clone())
    }
}

/// Any block device (loop, NVMe, partitions...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockInfo {
    /// Kernel name (`loop3`, `nvme0n1`).
    pub name: String,
    /// Devpath under the sys root (`/devices/virtual/block/loop3`).
    pub devpath: String,
    /// Name relative to `/dev` (`DEVNAME`; usually equal to `name`).
    pub devname: String,
    pub identity: BlockIdentity,
    /// `disk` or `partition` when known.
    pub devtype: Option<String>,
    /// Size in 512-byte sectors when known.
    pub size_sectors: Option<u64>,
    pub nvme: Option<NvmeNamespace>,
}

/// A namespace block device an NQN resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceDevice {
    /// Kernel name (`nvme0n1`).
    pub name: String,
    pub nsid: u32,
    pub identity: BlockIdentity,
    /// The controller serving it (for a multipath head: the best path's controller).
    pub controller: Option<String>,
    /// That controller's state.
    pub state: Option<ControllerState>,
    /// Device node name relative to the dev root (`nvme0n1`).
    pub dev_path_name: String,
    /// What the target says the namespace is.
    pub ids: NamespaceIds,
}

/// What the watcher reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceEvent {
    ControllerAdded(ControllerInfo),
    ControllerState {
        name: String,
        nqn: String,
        old: ControllerState,
        new: ControllerState,
    },
    ControllerRemoved(ControllerInfo),
    NamespaceAdded {
        nqn: String,
        nsid: u32,
        name: String,
        identity: BlockIdentity,
        /// What the target says the namespace is (uuid, nguid, wwid).
        ids: NamespaceIds,
    },
    NamespaceRemoved {
        nqn: String,
        nsid: u32,
        name: String,
        identity: BlockIdentity,
    },
    BlockAdded(BlockInfo),
    /// Same device (same identity), other attributes (size, ...) changed.
    BlockChanged {
        old: Box<BlockInfo>,
        new: Box<BlockInfo>,
    },
    BlockRemoved(BlockInfo),
    /// The kernel log says a filesystem on block device `name` (`dev`) was shut down: every
    /// operation through its mounts fails (xfs; see [`crate::kmsg`]).
    FilesystemShutDown {
        name: String,
        dev: DevNum,
        message: String,
    },
    /// Events were lost (netlink `ENOBUFS`); a resync follows.
    Overflow,
    /// The model was reconciled with a full scan; the events before this one brought it up
    /// to date.
    Resynced,
    /// The receiver fell behind and `missed` events were dropped (the model itself is
    /// complete and current): rebuild derived state from the handle's `snapshot()`.
    Lagged {
        missed: u64,
    },
}

/// One fact learnt from a uevent (plus sysfs), ready for [`Model::apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    SubsystemUp { name: String, nqn: String },
    SubsystemGone { name: String },
    ControllerUp(ControllerInfo),
    ControllerGone { name: String },
    BlockUp(BlockInfo),
    BlockGone { name: String },
}

/// A full scan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// `(nvme-subsysK, nqn)`.
    pub subsystems: Vec<(String, String)>,
    pub controllers: Vec<ControllerInfo>,
    pub blocks: Vec<BlockInfo>,
}

/// The model. Lookups are hash-map hits; nothing here scans.
#[derive(Debug, Default, Clone)]
pub struct Model {
    subsystems: HashMap<String, String>,
    controllers: HashMap<String, ControllerInfo>,
    blocks: HashMap<String, BlockInfo>,
    /// `major:minor` → names (more than one when an emulated namespace shares its backing loop
    /// device's number); the latest added is last.
    by_dev: HashMap<DevNum, Vec<String>>,
    /// NQN → nsid → resolvable block names (namespaces and heads, never hidden paths).
    by_nqn: HashMap<String, HashMap<u32, Vec<String>>>,
    /// NQN → controller names.
    ctrls_by_nqn: HashMap<String, Vec<String>>,
    /// Controller or subsystem name → NVMe disks under it (namespaces, paths, heads), so a
    /// removal does not scan every block device.
    children: HashMap<String, Vec<String>>,
}

impl Model {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn apply(&mut self, obs: Observation) -> Vec<DeviceEvent> {
        let mut out = Vec::new();
        match obs {
            Observation::SubsystemUp { name, nqn } => {
                self.subsystems.insert(name, nqn);
            }
            Observation::SubsystemGone { name } => {
                self.subsystems.remove(&name);
                // Its heads went with it, even if their remove events were lost.
                for h in self.children.get(&name).cloned().unwrap_or_default() {
                    self.remove_block(&h, &mut out);
                }
            }
            Observation::ControllerUp(c) => self.controller_up(c, &mut out),
            Observation::ControllerGone { name } => self.controller_gone(&name, &mut out),
            Observation::BlockUp(b) => self.block_up(b, &mut out),
            Observation::BlockGone { name } => self.remove_block(&name, &mut out),
        }
        out
    }

    /// Makes the model equal to `snap`, emitting the differences, then [`DeviceEvent::Resynced`].
    pub fn reconcile(&mut self, snap: Snapshot) -> Vec<DeviceEvent> {
        let mut out = Vec::new();
        let blocks: HashMap<&str, &BlockInfo> =
            snap.blocks.iter().map(|b| (b.name.as_str(), b)).collect();
        let ctrls: HashMap<&str, &ControllerInfo> = snap
            .controllers
            .iter()
            .map(|c| (c.name.as_str(), c))
            .collect();
        let gone_blocks: Vec<String> = self
            .blocks
            .keys()
            .filter(|n| !blocks.contains_key(n.as_str()))
            .cloned()
            .collect();
        for n in gone_blocks {
            self.remove_block(&n, &mut out);
        }
        let gone_ctrls: Vec<String> = self
            .controllers
            .keys()
            .filter(|n| !ctrls.contains_key(n.as_str()))
            .cloned()
            .collect();
        for n in gone_ctrls {
            self.controller_gone(&n, &mut out);
        }
        self.subsystems = snap.subsystems.into_iter().collect();
        for c in snap.controllers {
            self.controller_up(c, &mut out);
        }
        for b in snap.blocks {
            self.block_up(b, &mut out);
        }
        out.push(DeviceEvent::Resynced);
        out
    }

    fn controller_up(&mut self, c: ControllerInfo, out: &mut Vec<DeviceEvent>) {
        match self.controllers.get_mut(&c.name) {
            Some(old) if old.same_incarnation(&c) => {
                if old.state != c.state {
                    out.push(DeviceEvent::ControllerState {
                        name: c.name.clone(),
                        nqn: c.subsysnqn.clone(),
                        old: old.state.clone(),
                        new: c.state.clone(),
                    });
                }
                *old = c;
            }
            Some(_) => {
                let name = c.name.clone();
                self.controller_gone(&name, out);
                self.controller_up(c, out);
            }
            None => {
                self.ctrls_by_nqn
                    .entry(c.subsysnqn.clone())
                    .or_default()
                    .push(c.name.clone());
                out.push(DeviceEvent::ControllerAdded(c.clone()));
                self.controllers.insert(c.name.clone(), c);
            }
        }
    }

    fn controller_gone(&mut self, name: &str, out: &mut Vec<DeviceEvent>) {
        // Its namespaces and paths went with it (sysfs children), even if their remove
        // events were lost.
        for child in self.children.get(name).cloned().unwrap_or_default() {
            self.remove_block(&child, out);
        }
        if let Some(c) = self.controllers.remove(name) {
            remove_from(&mut self.ctrls_by_nqn, &c.subsysnqn, name);
            out.push(DeviceEvent::ControllerRemoved(c));
        }
    }

    fn block_up(&mut self, mut b: BlockInfo, out: &mut Vec<DeviceEvent>) {
        if let Some(old) = self.blocks.get(&b.name) {
            if old.identity.same_device(&b.identity) && old.nvme == b.nvme {
                // A change event without DISKSEQ keeps the known one.
                if b.identity.diskseq.is_none() {
                    b.identity.diskseq = old.identity.diskseq;
                }
                if b.size_sectors.is_none() {
                    b.size_sectors = old.size_sectors;
                }
                if *old != b {
                    let old = old.clone();
                    self.blocks.insert(b.name.clone(), b.clone());
                    out.push(DeviceEvent::BlockChanged {
                        old: Box::new(old),
                        new: Box::new(b),
                    });
                }
                return;
            }
            // Same name, another device: the old one is gone.
            let name = b.name.clone();
            self.remove_block(&name, out);
        }
        self.by_dev
            .entry(b.identity.dev)
            .or_default()
            .push(b.name.clone());
        out.push(DeviceEvent::BlockAdded(b.clone()));
        if let Some(parent) = nvme_parent(&b) {
            self.children
                .entry(parent.to_owned())
                .or_default()
                .push(b.name.clone());
        }
        if let Some(ns) = resolvable(&b) {
            self.by_nqn
                .entry(ns.nqn.clone())
                .or_default()
                .entry(ns.nsid)
                .or_default()
                .push(b.name.clone());
            out.push(DeviceEvent::NamespaceAdded {
                nqn: ns.nqn.clone(),
                nsid: ns.nsid,
                name: b.name.clone(),
                identity: b.identity,
                ids: ns.ids(),
            });
        }
        self.blocks.insert(b.name.clone(), b);
    }

    fn remove_block(&mut self, name: &str, out: &mut Vec<DeviceEvent>) {
        let Some(b) = self.blocks.remove(name) else {
            return;
        };
        remove_from(&mut self.by_dev, &b.identity.dev, name);
        if let Some(parent) = nvme_parent(&b) {
            remove_from(&mut self.children, &parent.to_owned(), name);
        }
        if let Some(ns) = resolvable(&b) {
            if let Some(by_nsid) = self.by_nqn.get_mut(&ns.nqn) {
                remove_from(by_nsid, &ns.nsid, name);
                if by_nsid.is_empty() {
                    self.by_nqn.remove(&ns.nqn);
                }
            }
            out.push(DeviceEvent::NamespaceRemoved {
                nqn: ns.nqn.clone(),
                nsid: ns.nsid,
                name: b.name.clone(),
                identity: b.identity,
            });
        }
        out.push(DeviceEvent::BlockRemoved(b));
    }

    /// The device `nqn` (and `nsid`, or its lowest nsid) resolves to now. Among several
    /// candidates (one per path without native multipath), the one whose controller is in the
    /// best state wins.
    pub fn resolve(&self, nqn: &str, nsid: Option<u32>) -> Option<NamespaceDevice> {
        let by_nsid = self.by_nqn.get(nqn)?;
        let names = match nsid {
            Some(id) => by_nsid.get(&id)?,
            None => by_nsid.iter().min_by_key(|(id, _)| **id)?.1,
        };
        names
            .iter()
            .filter_map(|n| self.blocks.get(n))
            .map(|b| self.namespace_device(b))
            .min_by_key(|d| d.state.as_ref().map_or(u8::MAX, rank))
    }

    fn namespace_device(&self, b: &BlockInfo) -> NamespaceDevice {
        let ns = b.nvme.as_ref();
        let (controller, state) = match ns.map(|n| &n.role) {
            Some(NvmeRole::Namespace { controller }) | Some(NvmeRole::Path { controller }) => (
                Some(controller.clone()),
                self.controllers.get(controller).map(|c| c.state.clone()),
            ),
            Some(NvmeRole::Head { .. }) => {
                let best = ns
                    .and_then(|n| self.ctrls_by_nqn.get(&n.nqn))
                    .into_iter()
                    .flatten()
                    .filter_map(|c| self.controllers.get(c))
                    .min_by_key(|c| rank(&c.state));
                (best.map(|c| c.name.clone()), best.map(|c| c.state.clone()))
            }
            None => (None, None),
        };
        NamespaceDevice {
            name: b.name.clone(),
            nsid: ns.map_or(0, |n| n.nsid),
            identity: b.identity,
            controller,
            state,
            dev_path_name: b.devname.clone(),
            ids: ns.map(NvmeNamespace::ids).unwrap_or_default(),
        }
    }

    /// Controllers connected to `nqn`.
    pub fn controllers_for(&self, nqn: &str) -> Vec<ControllerInfo> {
        self.ctrls_by_nqn
            .get(nqn)
            .into_iter()
            .flatten()
            .filter_map(|n| self.controllers.get(n))
            .cloned()
            .collect()
    }

    pub fn controller(&self, name: &str) -> Option<&ControllerInfo> {
        self.controllers.get(name)
    }

    /// The block device with this number (the most recently added when several share it).
    pub fn block(&self, dev: DevNum) -> Option<&BlockInfo> {
        self.by_dev
            .get(&dev)?
            .iter()
            .rev()
            .find_map(|n| self.blocks.get(n))
    }

    pub fn block_by_name(&self, name: &str) -> Option<&BlockInfo> {
        self.blocks.get(name)
    }

    pub fn subsystem_nqn(&self, name: &str) -> Option<&str> {
        self.subsystems.get(name).map(String::as_str)
    }

    pub fn controllers(&self) -> impl Iterator<Item = &ControllerInfo> {
        self.controllers.values()
    }

    pub fn blocks(&self) -> impl Iterator<Item = &BlockInfo> {
        self.blocks.values()
    }

    /// A sorted, comparable view of the whole model (tests: "the model is exact").
    pub fn to_snapshot(&self) -> Snapshot {
        let mut s = Snapshot {
            subsystems: self
                .subsystems
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            controllers: self.controllers.values().cloned().collect(),
            blocks: self.blocks.values().cloned().collect(),
        };
        s.sort();
        s
    }
}

impl Snapshot {
    /// Sorts every list by name, so two snapshots compare by content.
    pub fn sort(&mut self) {
        self.subsystems.sort();
        self.controllers.sort_by(|a, b| a.name.cmp(&b.name));
        self.blocks.sort_by(|a, b| a.name.cmp(&b.name));
    }
}

/// The controller or subsystem an NVMe disk sits under.
fn nvme_parent(b: &BlockInfo) -> Option<&str> {
    match &b.nvme.as_ref()?.role {
        NvmeRole::Namespace { controller } | NvmeRole::Path { controller } => Some(controller),
        NvmeRole::Head { subsystem } => Some(subsystem),
    }
}

/// The NVMe part of a block device an NQN can resolve to (namespaces and heads).
fn resolvable(b: &BlockInfo) -> Option<&NvmeNamespace> {
    b.nvme
        .as_ref()
        .filter(|n| !matches!(n.role, NvmeRole::Path { .. }))
}

fn remove_from<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Vec<String>>, key: &K, name: &str) {
    if let Some(v) = map.get_mut(key) {
        v.retain(|n| n != name);
        if v.is_empty() {
            map.remove(key);
        }
    }
}
