//! An emulated NVMe-oF fabric for a kernel without NVMe (tests, the demo, `--fabric emulated`).
//!
//! Behind the same [`Fabric`] trait as the real one, it reproduces what a node observes:
//! - the NVMe sysfs layout (subsystem, controller with its state, namespace disk with `dev`,
//!   `diskseq`, `size`, `uuid`) under an injectable sys root, written by
//!   [`crate::emulated::tree::NvmeTree`], so the resolver code that reads production `/sys`
//!   reads it unchanged;
//! - a real block device per namespace: a loop device on the target's backing file, with a node
//!   named like the namespace (`<dev_root>/nvme0n1`) carrying the loop's `major:minor`;
//! - the udev events a real kernel + udev would send (netlink group 2, libudev format), when
//!   enabled.
//!
//! A reconnect attaches a **new** loop device to the same backing file, so the namespace comes
//! back with a new `major:minor` and a new `diskseq` (and, for a same-name reconnect, only the
//! diskseq tells the two apart by name). A dead path truncates the backing file and sets the loop
//! capacity to 0: real EIO, real ext4 abort.
//!
//! Numbers that have no real device behind them (the controllers' char devices, multipath
//! per-path disks) use major [`EMULATED_MAJOR`], from the range devices.txt reserves for local
//! and experimental use; no node is ever created for them.

pub mod announce;
pub mod events;
pub mod tree;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rds_devices::uevent::{encode_libudev, UdevInjector};
use rds_types::{DevNum, DiskSeq, ManagedPrefix, Nqn};
use tree::{ControllerSpec, NamespaceSpec, NvmeTree};

use crate::api::{
    ConnectOutcome, ConnectRequest, ControllerInfo, ControllerState, Fabric, FabricError,
};
use crate::loopdev::{AttachOptions, LoopControl, LoopDevice};
use crate::sysfs;
use events::{disk_event, subsystem_event, Action, ControllerEvent, Props};

/// Major number of emulated things that have no real device (see module docs).
pub const EMULATED_MAJOR: u32 = 240;
/// Every emulated target exposes one namespace with this id.
pub const NSID: u32 = 1;

/// Where the emulation lives and how it behaves.
#[derive(Debug, Clone)]
pub struct EmulatedConfig {
    /// Root of the fake sysfs tree (created if missing).
    pub sys_root: PathBuf,
    /// Where namespace block device nodes are created (created if missing).
    pub dev_root: PathBuf,
    /// Where target backing files live (created if missing).
    pub backing_dir: PathBuf,
    /// Native NVMe multipath: namespaces appear as subsystem heads `nvmeKn1` with hidden
    /// per-controller paths `nvmeKcNn1`; otherwise as `nvmeNn1` under the controller.
    pub multipath: bool,
    /// Send udev events on netlink group 2 (do this only inside a private network namespace).
    pub inject_uevents: bool,
    /// Disconnects outside this prefix are refused, as with the real fabric.
    pub managed: ManagedPrefix,
    /// The real loop devices (`/dev/loop-control`, `/sys/block/loopN`).
    pub loops: LoopControl,
}

impl EmulatedConfig {
    /// The usual layout under one directory: `<base>/sys`, `<base>/dev`, `<base>/targets`,
    /// without multipath and without uevent injection (turn it on inside a private network
    /// namespace, or on a node where the plugin is meant to see the emulated events).
    pub fn under(base: &Path, managed: ManagedPrefix, loops: LoopControl) -> Self {
        Self {
            sys_root: base.join("sys"),
            dev_root: base.join("dev"),
            backing_dir: base.join("targets"),
            multipath: false,
            inject_uevents: false,
            managed,
            loops,
        }
    }
}

/// One live connection to a target.
#[derive(Debug)]
struct Connection {
    ctrl: u32,
    subsys: u32,
    /// The block device users see (`nvmeNn1`, or the head `nvmeKn1` with multipath).
    ns_name: String,
    /// Multipath's hidden per-path disk (`nvmeKcNn1`), with its synthetic number.
    path_disk: Option<(String, DevNum)>,
    loop_dev: LoopDevice,
    req: ConnectRequest,
    state: ControllerState,
    ns_devpath: String,
    ctrl_devpath: String,
    subsys_devpath: String,
}

impl Connection {
    fn ctrl_name(&self) -> String {
        format!("nvme{}", self.ctrl)
    }
}

#[derive(Debug)]
struct Target {
    backing: PathBuf,
    size_bytes: u64,
    uuid: String,
    conn: Option<Connection>,
}

#[derive(Default)]
struct State {
    targets: BTreeMap<Nqn, Target>,
    next_ctrl: u32,
    next_subsys: u32,
    next_path_minor: u32,
    seqnum: u64,
    injector: Option<UdevInjector>,
}

/// The emulated fabric. Every loop device it attached is detached by [`Self::shutdown`] or on
/// drop.
pub struct EmulatedFabric {
    cfg: EmulatedConfig,
    tree: NvmeTree,
    state: Mutex<State>,
}

impl std::fmt::Debug for EmulatedFabric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmulatedFabric")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

fn tree_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FabricError + 'a {
    move |e| FabricError::io(op, path, e)
}

/// A namespace uuid derived from the NQN: stable across reconnects, as a real target's is.
fn uuid_for(nqn: &Nqn) -> String {
    let half = |salt: u64| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        salt.hash(&mut h);
        nqn.as_str().hash(&mut h);
        h.finish()
    };
    let (a, b) = (half(1), half(2));
    // RFC 4122 variant, version 8 (custom).
    let a = (a & !0xf000) | 0x8000;
    let b = (b & !(0xc000 << 48)) | (0x8000 << 48);
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

fn mknod_block(path: &Path, dev: DevNum) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    let rc = unsafe {
        libc::mknod(
            c.as_ptr(),
            libc::S_IFBLK | 0o600,
            dev.to_dev_t() as libc::dev_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Remove `path` only if it is a block node for `dev` (the one we made).
fn remove_node_if_ours(path: &Path, dev: DevNum) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_block_device() && DevNum::from_dev_t(m.rdev()) == dev => {
            std::fs::remove_file(path)
        }
        Ok(_) => {
            tracing::warn!(node = %path.display(), %dev, "not removing a node that is not ours");
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

impl EmulatedFabric {
    /// Create the roots and record the multipath setting in the tree.
    pub fn new(cfg: EmulatedConfig) -> Result<Self, FabricError> {
        for dir in [&cfg.sys_root, &cfg.dev_root, &cfg.backing_dir] {
            std::fs::create_dir_all(dir).map_err(tree_err("create", dir))?;
        }
        let tree = NvmeTree::new(&cfg.sys_root);
        tree.set_multipath(cfg.multipath)
            .map_err(tree_err("write multipath parameter under", &cfg.sys_root))?;
        let injector = if cfg.inject_uevents {
            Some(UdevInjector::new().map_err(|e| FabricError::Uevent {
                devpath: "(opening the netlink socket)".into(),
                source: e,
            })?)
        } else {
            None
        };
        Ok(Self {
            cfg,
            tree,
            state: Mutex::new(State {
                injector,
                ..State::default()
            }),
        })
    }

    pub fn config(&self) -> &EmulatedConfig {
        &self.cfg
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the state as consistent as any error path does.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Create a target exporting one namespace (nsid 1) of `size_bytes`, backed by a sparse file
    /// under the backing directory. Returns the backing file.
    pub fn add_target(&self, nqn: &Nqn, size_bytes: u64) -> Result<PathBuf, FabricError> {
        let mut st = self.lock();
        if st.targets.contains_key(nqn) {
            return Err(FabricError::TargetExists(nqn.clone()));
        }
        let backing = self.cfg.backing_dir.join(format!("{nqn}.img"));
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&backing)
            .map_err(tree_err("create backing file", &backing))?;
        f.set_len(size_bytes)
            .map_err(tree_err("size backing file", &backing))?;
        st.targets.insert(
            nqn.clone(),
            Target {
                backing: backing.clone(),
                size_bytes,
                uuid: uuid_for(nqn),
                conn: None,
            },
        );
        tracing::debug!(%nqn, size_bytes, backing = %backing.display(), "emulated target added");
        Ok(backing)
    }

    /// The namespace block device of a connected target: name, device number, diskseq.
    pub fn namespace_of(&self, nqn: &Nqn) -> Option<(String, DevNum, DiskSeq)> {
        let st = self.lock();
        let c = st.targets.get(nqn)?.conn.as_ref()?;
        Some((
            c.ns_name.clone(),
            c.loop_dev.dev_num(),
            c.loop_dev.diskseq(),
        ))
    }

    /// The controller (`nvmeN`) of a connected target.
    pub fn controller_of(&self, nqn: &Nqn) -> Option<String> {
        let st = self.lock();
        st.targets
            .get(nqn)?
            .conn
            .as_ref()
            .map(Connection::ctrl_name)
    }

    /// The loop device (`loopN`) currently backing a connected target's namespace.
    pub fn loop_of(&self, nqn: &Nqn) -> Option<String> {
        let st = self.lock();
        st.targets
            .get(nqn)?
            .conn
            .as_ref()
            .map(|c| c.loop_dev.name())
    }

    /// Set the controller's `state` attribute and send a `change` event (with
    /// `NVME_EVENT=connected` when it goes back to `live` from a reconnecting state).
    pub fn set_controller_state(
        &self,
        nqn: &Nqn,
        state: ControllerState,
    ) -> Result<(), FabricError> {
        let mut guard = self.lock();
        let st = &mut *guard;
        let conn = connected(&mut st.targets, nqn)?;
        let name = conn.ctrl_name();
        self.tree
            .set_controller_state(&name, state.as_str())
            .map_err(tree_err("write state of", &self.tree.controller_dir(&name)))?;
        let reconnected = state == ControllerState::Live
            && matches!(
                conn.state,
                ControllerState::Connecting | ControllerState::Resetting
            );
        conn.state = state;
        let props = self.controller_props(conn, Action::Change, reconnected.then_some("connected"));
        let devpath = conn.ctrl_devpath.clone();
        tracing::info!(%nqn, controller = name, state = %conn.state, "emulated controller state");
        send(&self.cfg, &mut st.seqnum, &st.injector, &devpath, props)
    }

    /// The controller is replaced by one with a new number (and, with multipath, a new
    /// subsystem instance): the namespace comes back under a new name, on a new loop device
    /// (new `major:minor` and `diskseq`). Events: block/nvme/subsystem `remove`, then `add`s and
    /// a controller `change` with `NVME_EVENT=connected`.
    pub fn reconnect_renamed(&self, nqn: &Nqn) -> Result<ConnectOutcome, FabricError> {
        self.reconnect(nqn, false)
    }

    /// The controller comes back with the same number and the namespace with the same name, on
    /// a new loop device: only the device number and above all the new `diskseq` tell it apart.
    pub fn reconnect_same_name(&self, nqn: &Nqn) -> Result<ConnectOutcome, FabricError> {
        self.reconnect(nqn, true)
    }

    fn reconnect(&self, nqn: &Nqn, same_name: bool) -> Result<ConnectOutcome, FabricError> {
        let mut guard = self.lock();
        let st = &mut *guard;
        let (target, old) = take_conn(&mut st.targets, nqn)?;
        // Attach the new loop device while the old one is still bound: a new device number
        // is then guaranteed.
        let loop_dev = match self
            .cfg
            .loops
            .attach(&target.backing, AttachOptions::default())
        {
            Ok(l) => l,
            Err(e) => {
                target.conn = Some(old);
                return Err(e.into());
            }
        };
        let req = old.req.clone();
        let numbers = same_name.then_some((old.ctrl, old.subsys));
        // A failed teardown step is logged and reported by tear_down; the new incarnation is
        // brought up regardless, as the kernel would.
        let _ = self.tear_down(st, old, true);
        let conn = self.bring_up(st, nqn, req, loop_dev, numbers)?;
        let props = self.controller_props(&conn, Action::Change, Some("connected"));
        let devpath = conn.ctrl_devpath.clone();
        let outcome = ConnectOutcome {
            controller: conn.ctrl_name(),
            already_connected: false,
        };
        tracing::info!(%nqn, controller = outcome.controller, namespace = conn.ns_name,
            dev = %conn.loop_dev.dev_num(), diskseq = %conn.loop_dev.diskseq(), same_name, "emulated reconnect");
        set_conn(&mut st.targets, nqn, conn);
        send(&self.cfg, &mut st.seqnum, &st.injector, &devpath, props)?;
        Ok(outcome)
    }

    /// `ctrl_loss_tmo` expired: namespace, controller and subsystem are removed (with their
    /// `remove` events) and nothing replaces them. The target can be connected again.
    pub fn lose_controller(&self, nqn: &Nqn) -> Result<(), FabricError> {
        let mut guard = self.lock();
        let st = &mut *guard;
        let (_, conn) = take_conn(&mut st.targets, nqn)?;
        tracing::info!(%nqn, controller = conn.ctrl_name(), "emulated controller lost");
        self.tear_down(st, conn, true)
    }

    /// The path dies under the namespace: the backing file is truncated to 0 and the loop
    /// capacity re-read, so every I/O of a mounted filesystem fails with EIO.
    pub fn kill_path(&self, nqn: &Nqn) -> Result<(), FabricError> {
        let mut st = self.lock();
        let target = st
            .targets
            .get_mut(nqn)
            .ok_or_else(|| FabricError::UnknownTarget(nqn.clone()))?;
        let conn = target
            .conn
            .as_ref()
            .ok_or_else(|| FabricError::NotConnected(nqn.clone()))?;
        File::options()
            .write(true)
            .open(&target.backing)
            .and_then(|f| f.set_len(0))
            .map_err(tree_err("truncate", &target.backing))?;
        conn.loop_dev.set_capacity()?;
        tracing::info!(%nqn, loop_dev = conn.loop_dev.name(), "emulated path killed");
        Ok(())
    }

    /// Tear down every connection (no events) and detach every loop device this fabric
    /// attached. Idempotent; also run on drop.
    pub fn shutdown(&self) {
        let mut guard = self.lock();
        let st = &mut *guard;
        let conns: Vec<Connection> = st
            .targets
            .values_mut()
            .filter_map(|t| t.conn.take())
            .collect();
        for conn in conns {
            let name = conn.ctrl_name();
            if let Err(e) = self.tear_down(st, conn, false) {
                tracing::warn!(controller = name, error = %e, "emulated teardown failed");
            }
        }
    }

    fn alloc_ctrl(&self, st: &mut State) -> u32 {
        let in_use = |n: u32| {
            sysfs::class_nvme(&self.cfg.sys_root)
                .join(format!("nvme{n}"))
                .exists()
                || self.cfg.dev_root.join(format!("nvme{n}n{NSID}")).exists()
                || st
                    .targets
                    .values()
                    .any(|t| t.conn.as_ref().is_some_and(|c| c.ctrl == n))
        };
        let mut n = st.next_ctrl;
        while in_use(n) {
            n += 1;
        }
        st.next_ctrl = n + 1;
        n
    }

    fn alloc_subsys(&self, st: &mut State) -> u32 {
        let in_use = |n: u32| {
            self.cfg
                .sys_root
                .join(format!("class/nvme-subsystem/nvme-subsys{n}"))
                .exists()
                || (self.cfg.multipath
                    && self.cfg.dev_root.join(format!("nvme{n}n{NSID}")).exists())
                || st
                    .targets
                    .values()
                    .any(|t| t.conn.as_ref().is_some_and(|c| c.subsys == n))
        };
        let mut n = st.next_subsys;
        while in_use(n) {
            n += 1;
        }
        st.next_subsys = n + 1;
        n
    }

    fn controller_props(&self, c: &Connection, action: Action, nvme_event: Option<&str>) -> Props {
        let name = c.ctrl_name();
        let traddr = c.req.traddr.to_string();
        let trsvcid = c.req.trsvcid.to_string();
        ControllerEvent {
            action,
            name: &name,
            devpath: &c.ctrl_devpath,
            dev: DevNum::new(EMULATED_MAJOR, c.ctrl),
            transport: c.req.transport.as_str(),
            traddr: &traddr,
            trsvcid: &trsvcid,
            nvme_event,
        }
        .props(&self.cfg.dev_root)
    }

    /// Write subsystem, controller and namespace into the tree, create the node, send the
    /// `add` events. On failure everything done so far is undone (the loop device included).
    fn bring_up(
        &self,
        st: &mut State,
        nqn: &Nqn,
        req: ConnectRequest,
        loop_dev: LoopDevice,
        numbers: Option<(u32, u32)>,
    ) -> Result<Connection, FabricError> {
        let (ctrl, subsys) = match numbers {
            Some(n) => n,
            None => (self.alloc_ctrl(st), self.alloc_subsys(st)),
        };
        let path_disk = self.cfg.multipath.then(|| {
            st.next_path_minor += 1;
            (
                format!("nvme{subsys}c{ctrl}n{NSID}"),
                DevNum::new(EMULATED_MAJOR, st.next_path_minor),
            )
        });
        let ns_name = if self.cfg.multipath {
            format!("nvme{subsys}n{NSID}")
        } else {
            format!("nvme{ctrl}n{NSID}")
        };
        let mut conn = Connection {
            ctrl,
            subsys,
            ns_name,
            path_disk,
            loop_dev,
            req,
            state: ControllerState::Live,
            ns_devpath: String::new(),
            ctrl_devpath: String::new(),
            subsys_devpath: String::new(),
        };
        let target = st
            .targets
            .get(nqn)
            .ok_or_else(|| FabricError::UnknownTarget(nqn.clone()))?;
        let (size_bytes, uuid) = (target.size_bytes, target.uuid.clone());
        if let Err(e) = self.write_tree(&mut conn, nqn, size_bytes, &uuid) {
            let _ = self.tear_down(st, conn, false);
            return Err(e);
        }
        let node = self.cfg.dev_root.join(&conn.ns_name);
        if let Err(e) = mknod_block(&node, conn.loop_dev.dev_num()) {
            let _ = self.tear_down(st, conn, false);
            return Err(FabricError::io("mknod", &node, e));
        }
        let mut batch = vec![
            (
                conn.subsys_devpath.clone(),
                subsystem_event(Action::Add, &conn.subsys_devpath),
            ),
            (
                conn.ctrl_devpath.clone(),
                self.controller_props(&conn, Action::Add, None),
            ),
        ];
        batch.push((
            conn.ns_devpath.clone(),
            disk_event(
                Action::Add,
                &conn.ns_name,
                &conn.ns_devpath,
                conn.loop_dev.dev_num(),
                conn.loop_dev.diskseq(),
                &self.cfg.dev_root,
            ),
        ));
        for (devpath, props) in batch {
            if let Err(e) = send(&self.cfg, &mut st.seqnum, &st.injector, &devpath, props) {
                let _ = self.tear_down(st, conn, false);
                return Err(e);
            }
        }
        Ok(conn)
    }

    fn write_tree(
        &self,
        conn: &mut Connection,
        nqn: &Nqn,
        size_bytes: u64,
        uuid: &str,
    ) -> Result<(), FabricError> {
        let root = &self.cfg.sys_root;
        let name = conn.ctrl_name();
        conn.subsys_devpath = self
            .tree
            .add_subsystem(conn.subsys, nqn.as_str())
            .map_err(tree_err("write subsystem under", root))?;
        conn.ctrl_devpath = self
            .tree
            .add_controller(&ControllerSpec {
                name: name.clone(),
                subsysnqn: nqn.to_string(),
                transport: conn.req.transport.as_str().to_owned(),
                traddr: conn.req.traddr.to_string(),
                trsvcid: conn.req.trsvcid.to_string(),
                state: conn.state.as_str().to_owned(),
                cntlid: 1,
                hostnqn: conn.req.host_nqn.clone().unwrap_or_default(),
                hostid: conn.req.host_id.clone().unwrap_or_default(),
                dev: DevNum::new(EMULATED_MAJOR, conn.ctrl),
                ctrl_loss_tmo: conn.req.ctrl_loss_tmo,
                reconnect_delay: conn.req.reconnect_delay,
            })
            .map_err(tree_err("write controller under", root))?;
        let ns = NamespaceSpec {
            name: conn.ns_name.clone(),
            nsid: NSID,
            dev: conn.loop_dev.dev_num(),
            diskseq: Some(conn.loop_dev.diskseq()),
            size_sectors: size_bytes / 512,
            uuid: Some(uuid.to_owned()),
            nguid: None,
            wwid: None,
        };
        conn.ns_devpath = if self.cfg.multipath {
            let devpath = self
                .tree
                .add_head(conn.subsys, &ns)
                .map_err(tree_err("write namespace head under", root))?;
            if let Some((path_name, path_dev)) = &conn.path_disk {
                let path_ns = NamespaceSpec {
                    name: path_name.clone(),
                    dev: *path_dev,
                    diskseq: None,
                    ..ns.clone()
                };
                self.tree
                    .add_path(&name, &path_ns)
                    .map_err(tree_err("write namespace path under", root))?;
            }
            devpath
        } else {
            self.tree
                .add_namespace(&name, &ns)
                .map_err(tree_err("write namespace under", root))?
        };
        Ok(())
    }

    /// Remove namespace, controller and subsystem from the tree (sending `remove` events when
    /// `events`), remove the node, detach the loop device. Keeps going after errors and returns
    /// the first.
    fn tear_down(&self, st: &mut State, conn: Connection, events: bool) -> Result<(), FabricError> {
        let root = &self.cfg.sys_root;
        let name = conn.ctrl_name();
        let mut first: Option<FabricError> = None;
        let mut keep = |r: Result<(), FabricError>| {
            if let Err(e) = r {
                tracing::warn!(controller = name, error = %e, "emulated teardown step failed");
                first.get_or_insert(e);
            }
        };
        // As the kernel does: the controller is `deleting` while its namespaces go away.
        if self.tree.controller_dir(&name).is_dir() {
            keep(
                self.tree
                    .set_controller_state(&name, ControllerState::Deleting.as_str())
                    .map_err(tree_err("write state under", root)),
            );
        }
        if let Some((path_name, _)) = &conn.path_disk {
            keep(
                self.tree
                    .remove_disk(path_name)
                    .map_err(tree_err("remove path disk under", root)),
            );
        }
        keep(
            self.tree
                .remove_disk(&conn.ns_name)
                .map_err(tree_err("remove namespace under", root)),
        );
        keep(
            remove_node_if_ours(
                &self.cfg.dev_root.join(&conn.ns_name),
                conn.loop_dev.dev_num(),
            )
            .map_err(tree_err("remove node", &self.cfg.dev_root)),
        );
        if events && !conn.ns_devpath.is_empty() {
            let props = disk_event(
                Action::Remove,
                &conn.ns_name,
                &conn.ns_devpath,
                conn.loop_dev.dev_num(),
                conn.loop_dev.diskseq(),
                &self.cfg.dev_root,
            );
            keep(send(
                &self.cfg,
                &mut st.seqnum,
                &st.injector,
                &conn.ns_devpath,
                props,
            ));
        }
        keep(
            self.tree
                .remove_controller(&name)
                .map_err(tree_err("remove controller under", root)),
        );
        if events && !conn.ctrl_devpath.is_empty() {
            let props = self.controller_props(&conn, Action::Remove, None);
            keep(send(
                &self.cfg,
                &mut st.seqnum,
                &st.injector,
                &conn.ctrl_devpath,
                props,
            ));
        }
        keep(
            self.tree
                .remove_subsystem(conn.subsys)
                .map_err(tree_err("remove subsystem under", root)),
        );
        if events && !conn.subsys_devpath.is_empty() {
            let props = subsystem_event(Action::Remove, &conn.subsys_devpath);
            keep(send(
                &self.cfg,
                &mut st.seqnum,
                &st.injector,
                &conn.subsys_devpath,
                props,
            ));
        }
        // While mounted the device only gets autoclear and lives on, as with `losetup -d`.
        keep(conn.loop_dev.detach().map_err(FabricError::from));
        match first {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

fn connected<'a>(
    targets: &'a mut BTreeMap<Nqn, Target>,
    nqn: &Nqn,
) -> Result<&'a mut Connection, FabricError> {
    targets
        .get_mut(nqn)
        .ok_or_else(|| FabricError::UnknownTarget(nqn.clone()))?
        .conn
        .as_mut()
        .ok_or_else(|| FabricError::NotConnected(nqn.clone()))
}

/// Take a target's live connection out (the caller tears it down or puts it back).
fn take_conn<'a>(
    targets: &'a mut BTreeMap<Nqn, Target>,
    nqn: &Nqn,
) -> Result<(&'a mut Target, Connection), FabricError> {
    let target = targets
        .get_mut(nqn)
        .ok_or_else(|| FabricError::UnknownTarget(nqn.clone()))?;
    let conn = target
        .conn
        .take()
        .ok_or_else(|| FabricError::NotConnected(nqn.clone()))?;
    Ok((target, conn))
}

fn set_conn(targets: &mut BTreeMap<Nqn, Target>, nqn: &Nqn, conn: Connection) {
    if let Some(t) = targets.get_mut(nqn) {
        t.conn = Some(conn);
    }
}

/// Encode and inject one event (when enabled), numbering it with the next `SEQNUM`.
fn send(
    cfg: &EmulatedConfig,
    seqnum: &mut u64,
    injector: &Option<UdevInjector>,
    devpath: &str,
    props: Props,
) -> Result<(), FabricError> {
    let Some(injector) = injector.as_ref().filter(|_| cfg.inject_uevents) else {
        return Ok(());
    };
    *seqnum += 1;
    let seq = seqnum.to_string();
    let mut pairs: Vec<(&str, &str)> = props.iter().map(|(k, v)| (*k, v.as_str())).collect();
    pairs.push(("SEQNUM", &seq));
    injector
        .send(&encode_libudev(&pairs))
        .map_err(|e| FabricError::Uevent {
            devpath: devpath.to_owned(),
            source: e,
        })
}

impl Fabric for EmulatedFabric {
    fn connect(&self, req: &ConnectRequest) -> Result<ConnectOutcome, FabricError> {
        if !self.cfg.managed.covers(&req.nqn) {
            return Err(FabricError::NotManaged {
                what: "connect".into(),
                subsysnqn: req.nqn.to_string(),
                prefix: self.cfg.managed.to_string(),
            });
        }
        req.to_options_line()?;
        let mut guard = self.lock();
        let st = &mut *guard;
        let target = st
            .targets
            .get(&req.nqn)
            .ok_or_else(|| FabricError::Refused {
                nqn: req.nqn.clone(),
                address: req.address(),
                source: io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    "the emulated target has no such subsystem",
                ),
            })?;
        if let Some(c) = &target.conn {
            return Ok(ConnectOutcome {
                controller: c.ctrl_name(),
                already_connected: true,
            });
        }
        let loop_dev = self
            .cfg
            .loops
            .attach(&target.backing, AttachOptions::default())?;
        let conn = self.bring_up(st, &req.nqn, req.clone(), loop_dev, None)?;
        let outcome = ConnectOutcome {
            controller: conn.ctrl_name(),
            already_connected: false,
        };
        tracing::info!(nqn = %req.nqn, controller = outcome.controller, namespace = conn.ns_name,
            dev = %conn.loop_dev.dev_num(), diskseq = %conn.loop_dev.diskseq(), "emulated connect");
        set_conn(&mut st.targets, &req.nqn, conn);
        Ok(outcome)
    }

    fn disconnect(&self, controller: &str) -> Result<(), FabricError> {
        // The same guard as the kernel fabric, read from the same tree.
        let info = sysfs::read_controller(&self.cfg.sys_root, controller)?
            .ok_or_else(|| FabricError::NoSuchController(controller.to_owned()))?;
        let covered = Nqn::parse(&info.subsysnqn).is_ok_and(|n| self.cfg.managed.covers(&n));
        if !covered {
            return Err(FabricError::NotManaged {
                what: format!("disconnect {controller}"),
                subsysnqn: info.subsysnqn,
                prefix: self.cfg.managed.to_string(),
            });
        }
        let mut guard = self.lock();
        let st = &mut *guard;
        let conn = st
            .targets
            .values_mut()
            .find(|t| t.conn.as_ref().is_some_and(|c| c.ctrl_name() == controller))
            .and_then(|t| t.conn.take())
            .ok_or_else(|| FabricError::NoSuchController(controller.to_owned()))?;
        tracing::info!(controller, nqn = %info.subsysnqn, "emulated disconnect");
        self.tear_down(st, conn, true)
    }

    fn controllers(&self) -> Result<Vec<ControllerInfo>, FabricError> {
        sysfs::scan_controllers(&self.cfg.sys_root)
    }
}

impl Drop for EmulatedFabric {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_uuid_is_stable_per_nqn_and_well_formed() {
        let a = Nqn::parse("nqn.2000-02.com.mikrotik:pvc-a").unwrap();
        let b = Nqn::parse("nqn.2000-02.com.mikrotik:pvc-b").unwrap();
        let ua = uuid_for(&a);
        assert_eq!(
            ua,
            uuid_for(&a),
            "a reconnect must see the same namespace uuid"
        );
        assert_ne!(ua, uuid_for(&b));
        let groups: Vec<usize> = ua.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12], "uuid {ua} must be 8-4-4-4-12");
        assert!(ua.bytes().all(|c| c == b'-' || c.is_ascii_hexdigit()));
    }
}
