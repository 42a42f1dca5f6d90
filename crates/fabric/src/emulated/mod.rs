//! An emulated NVMe-oF fabric for a kernel without NVMe (tests, the demo, `--fabric emulated`).
//!
//! Behind the same [`Fabric`] trait as the real one, it reproduces what a node observes from
//! the kernel's own NVMe/TCP host, as measured on Debian's 6.12 kernel (the real-kernel test
//! tier records it as fixtures and holds this emulation to them):
//! - the sysfs layout ([`tree`]): native multipath by default, the subsystem
//!   `nvme-subsysK`, the controller `nvmeK` under `nvme-fabrics/ctl`, the namespace head
//!   `nvmeKn1` under the subsystem and the hidden per-path disk `nvmeKcKn1` (no `dev`, no node,
//!   no uevents) under the controller; `address` with `src_addr`, `ctrl_loss_tmo` `off` for -1;
//! - a real block device per namespace: a loop device on the target's backing file, its node
//!   `<dev_root>/nvmeKn1` carrying the loop's `major:minor`, `<sys>/dev/block/M:m` linked to
//!   the real loop device (so its request counters are real);
//! - the uevents, in the kernel's order (netlink group 2, libudev format, when enabled):
//!   connect = controller `add`, subsystem `add`, controller `change` with
//!   `NVME_EVENT=connected`, head `add`; deletion = head `remove`, controller `remove`,
//!   subsystem `remove`; a reconnect that succeeds = head `change` (same `DISKSEQ`) then
//!   controller `change` with `NVME_EVENT=connected`. **No event** when a port is lost: the
//!   controller's `state` goes `resetting`, then `connecting`, silently.
//!
//! The lifecycle follows the kernel: a lost port leaves the controller `connecting` for its
//! `ctrl_loss_tmo` (forever with -1); if the port comes back first the controller is `live`
//! again on the **same** device; once the time runs out the controller, its head and its
//! subsystem are deleted and nothing comes back by itself. A new connect then creates a new
//! controller with the lowest free number (so usually the same name) and a new loop device
//! on the same backing file: a new incarnation with a new `diskseq`. The deleted device stops
//! working the way the kernel's does: its loop device is cut off from the backing file (one
//! sector left), while the backing file keeps every byte.
//!
//! Differences from the kernel, on purpose: while a controller is `connecting` its device
//! still completes I/O (the kernel queues it); the reconnect after a port comes back is
//! immediate (the kernel waits for its next `reconnect_delay` tick); the char devices
//! (`nvmeK`, `ngKn1`), `bdi` and `hwmon` devices get no events and no nodes.
//!
//! Numbers that have no real device behind them (the controllers' char devices) use major
//! [`EMULATED_MAJOR`], from the range devices.txt reserves for local and experimental use.

pub mod announce;
pub mod control;
pub mod events;
mod persist;
pub mod tree;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io;
use std::ops::{Deref, DerefMut};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

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
    /// Native NVMe multipath (the kernel's default): namespaces appear as subsystem heads
    /// `nvmeKn1` with hidden per-controller paths `nvmeKcKn1`; otherwise as `nvmeKn1` under
    /// the controller.
    pub multipath: bool,
    /// Send udev events on netlink group 2 (do this only inside a private network namespace,
    /// or on a node where the plugin is meant to see the emulated events).
    pub inject_uevents: bool,
    /// Disconnects outside this prefix are refused, as with the real fabric.
    pub managed: ManagedPrefix,
    /// The real loop devices (`/dev/loop-control`, `/sys/block/loopN`).
    pub loops: LoopControl,
    /// A connect to a subsystem nobody added creates its target (cluster mode): sized by the
    /// request's `capacity_hint`, else this many bytes; an existing `<nqn>.img` under the
    /// backing directory is reused with its data. `None`: such a connect is refused, as a
    /// real target refuses an unknown subsystem.
    pub create_on_connect: Option<u64>,
    /// Keep the emulated kernel's state in this file after every change, and let it outlive
    /// the process: a new fabric on the same file adopts the targets and the connections
    /// (their loop devices, tree entries and nodes), and dropping the fabric leaves the
    /// connections in place, as a plugin restart leaves the kernel's. `None`: the state lives
    /// in memory and every connection is torn down on drop.
    pub persist: Option<PathBuf>,
}

impl EmulatedConfig {
    /// The usual layout under one directory: `<base>/sys`, `<base>/dev`, `<base>/targets`,
    /// multipath on, without uevent injection.
    pub fn under(base: &Path, managed: ManagedPrefix, loops: LoopControl) -> Self {
        Self {
            sys_root: base.join("sys"),
            dev_root: base.join("dev"),
            backing_dir: base.join("targets"),
            multipath: true,
            inject_uevents: false,
            managed,
            loops,
            create_on_connect: None,
            persist: None,
        }
    }
}

/// The namespace a controller exposes.
#[derive(Debug)]
struct Namespace {
    /// The block device users see (`nvmeKn1`).
    name: String,
    /// Multipath's hidden per-path disk (`nvmeKcKn1`).
    path_disk: Option<String>,
    loop_dev: LoopDevice,
    devpath: String,
    /// The identity the host read when it added the namespace.
    uuid: String,
}

/// One controller connected to a target.
#[derive(Debug)]
struct Connection {
    ctrl: u32,
    subsys: u32,
    /// `None` while the target's namespace is disabled.
    ns: Option<Namespace>,
    req: ConnectRequest,
    state: ControllerState,
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
    /// The target accepts connections (its port is linked).
    port_up: bool,
    /// The target's namespace is enabled.
    ns_enabled: bool,
    conn: Option<Connection>,
    /// Bumped on every port loss: a `ctrl_loss_tmo` timer only acts on its own loss.
    loss: u64,
    /// The target exports its namespace read-only (the host sees a read-only disk).
    read_only: bool,
}

#[derive(Default)]
struct State {
    targets: BTreeMap<Nqn, Target>,
    seqnum: u64,
    injector: Option<UdevInjector>,
    /// What the state file holds (cluster mode): written again only when this changes.
    saved: String,
}

/// The state, locked; in cluster mode written to the state file when the lock is released,
/// so every change is on disk before the next caller sees it.
struct Locked<'a> {
    guard: MutexGuard<'a, State>,
    inner: &'a Inner,
    /// The state was borrowed mutably: it may have changed (readers cost no snapshot).
    touched: bool,
}

impl Deref for Locked<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        &self.guard
    }
}

impl DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut State {
        self.touched = true;
        &mut self.guard
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let Some(path) = self.inner.cfg.persist.as_ref().filter(|_| self.touched) else {
            return;
        };
        let text = persist::encode(&snapshot(&self.guard));
        if text == self.guard.saved {
            return;
        }
        match persist::save(path, &text) {
            Ok(()) => self.guard.saved = text,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "saving the emulated fabric's state failed: a restart would lose it")
            }
        }
    }
}

fn snapshot(st: &State) -> persist::Saved {
    persist::Saved {
        version: persist::VERSION,
        seqnum: st.seqnum,
        targets: st
            .targets
            .iter()
            .map(|(nqn, t)| persist::SavedTarget {
                nqn: nqn.clone(),
                backing: t.backing.clone(),
                size_bytes: t.size_bytes,
                uuid: t.uuid.clone(),
                port_up: t.port_up,
                ns_enabled: t.ns_enabled,
                loss: t.loss,
                read_only: t.read_only,
                conn: t.conn.as_ref().map(|c| persist::SavedConn {
                    ctrl: c.ctrl,
                    subsys: c.subsys,
                    req: c.req.clone(),
                    state: c.state.as_str().to_owned(),
                    ctrl_devpath: c.ctrl_devpath.clone(),
                    subsys_devpath: c.subsys_devpath.clone(),
                    ns: c.ns.as_ref().map(|n| persist::SavedNs {
                        name: n.name.clone(),
                        path_disk: n.path_disk.clone(),
                        loop_number: n.loop_dev.number(),
                        dev: n.loop_dev.dev_num().to_string(),
                        diskseq: n.loop_dev.diskseq().0,
                        devpath: n.devpath.clone(),
                        uuid: n.uuid.clone(),
                    }),
                }),
            })
            .collect(),
    }
}

struct Inner {
    cfg: EmulatedConfig,
    tree: NvmeTree,
    state: Mutex<State>,
}

/// One target as [`EmulatedFabric::describe`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetView {
    pub nqn: Nqn,
    pub backing: PathBuf,
    pub size_bytes: u64,
    pub port_up: bool,
    pub ns_enabled: bool,
    /// The host's controller (`nvmeN`) and its state.
    pub controller: Option<(String, String)>,
    /// The namespace's block device, the loop device carrying it, its number and diskseq.
    pub namespace: Option<(String, String, DevNum, DiskSeq)>,
}

/// The emulated fabric. Every loop device it attached is detached by [`Self::shutdown`] or on
/// drop (in cluster mode they are left to the next process, see [`EmulatedConfig::persist`]).
pub struct EmulatedFabric {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EmulatedFabric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmulatedFabric")
            .field("cfg", &self.inner.cfg)
            .finish_non_exhaustive()
    }
}

fn tree_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FabricError + 'a {
    move |e| FabricError::io(op, path, e)
}

/// A namespace uuid derived from the NQN (and a generation): stable across reconnects, as a
/// real target's is; another generation is another volume behind the same NQN.
fn uuid_for(nqn: &Nqn, generation: u64) -> String {
    let half = |salt: u64| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        salt.hash(&mut h);
        generation.hash(&mut h);
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

fn nix_mkfifo(path: &Path) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn refused(nqn: &Nqn, address: String, why: &str) -> FabricError {
    FabricError::Refused {
        nqn: nqn.clone(),
        address,
        source: io::Error::new(io::ErrorKind::ConnectionRefused, why.to_owned()),
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
        // The emulation's kernel log: a FIFO in /dev/kmsg's record format.
        let kmsg = cfg.dev_root.join("kmsg");
        if !kmsg.exists() {
            nix_mkfifo(&kmsg).map_err(tree_err("mkfifo", &kmsg))?;
        }
        let injector = if cfg.inject_uevents {
            Some(UdevInjector::new().map_err(|e| FabricError::Uevent {
                devpath: "(opening the netlink socket)".into(),
                source: e,
            })?)
        } else {
            None
        };
        let saved = match &cfg.persist {
            Some(path) => persist::load(path).map_err(tree_err("read the state file", path))?,
            None => None,
        };
        let inner = Arc::new(Inner {
            cfg,
            tree,
            state: Mutex::new(State {
                injector,
                ..State::default()
            }),
        });
        if let Some(saved) = saved {
            inner.adopt(saved);
        }
        Ok(Self { inner })
    }

    pub fn config(&self) -> &EmulatedConfig {
        &self.inner.cfg
    }

    /// Create a target exporting one namespace (nsid 1) of `size_bytes`, backed by a sparse file
    /// under the backing directory, its port up. Returns the backing file.
    pub fn add_target(&self, nqn: &Nqn, size_bytes: u64) -> Result<PathBuf, FabricError> {
        let mut st = self.inner.lock();
        self.inner.create_target(&mut st, nqn, size_bytes, false)
    }

    /// The targets and what the host sees of each, for an operator (`fabric list`).
    pub fn describe(&self) -> Vec<TargetView> {
        let st = self.inner.lock();
        st.targets
            .iter()
            .map(|(nqn, t)| TargetView {
                nqn: nqn.clone(),
                backing: t.backing.clone(),
                size_bytes: t.size_bytes,
                port_up: t.port_up,
                ns_enabled: t.ns_enabled,
                controller: t
                    .conn
                    .as_ref()
                    .map(|c| (c.ctrl_name(), c.state.as_str().to_owned())),
                namespace: t.conn.as_ref().and_then(|c| c.ns.as_ref()).map(|n| {
                    (
                        n.name.clone(),
                        n.loop_dev.name(),
                        n.loop_dev.dev_num(),
                        n.loop_dev.diskseq(),
                    )
                }),
            })
            .collect()
    }

    /// Export the target's namespace read-only (or writable) from its next connect on.
    pub fn set_read_only(&self, nqn: &Nqn, read_only: bool) -> Result<(), FabricError> {
        let mut st = self.inner.lock();
        let t = st
            .targets
            .get_mut(nqn)
            .ok_or_else(|| FabricError::UnknownTarget(nqn.clone()))?;
        t.read_only = read_only;
        Ok(())
    }

    /// The namespace block device of a connected target: name, device number, diskseq.
    pub fn namespace_of(&self, nqn: &Nqn) -> Option<(String, DevNum, DiskSeq)> {
        let st = self.inner.lock();
        let ns = st.targets.get(nqn)?.conn.as_ref()?.ns.as_ref()?;
        Some((
            ns.name.clone(),
            ns.loop_dev.dev_num(),
            ns.loop_dev.diskseq(),
        ))
    }

    /// The controller (`nvmeN`) of a connected target.
    pub fn controller_of(&self, nqn: &Nqn) -> Option<String> {
        let st = self.inner.lock();
        st.targets
            .get(nqn)?
            .conn
            .as_ref()
            .map(Connection::ctrl_name)
    }

    /// The state of a connected target's controller.
    pub fn controller_state(&self, nqn: &Nqn) -> Option<ControllerState> {
        let st = self.inner.lock();
        st.targets.get(nqn)?.conn.as_ref().map(|c| c.state.clone())
    }

    /// The loop device (`loopN`) currently backing a connected target's namespace.
    pub fn loop_of(&self, nqn: &Nqn) -> Option<String> {
        let st = self.inner.lock();
        st.targets
            .get(nqn)?
            .conn
            .as_ref()?
            .ns
            .as_ref()
            .map(|n| n.loop_dev.name())
    }

    /// The target's namespace uuid as the host sees it.
    pub fn uuid_of(&self, nqn: &Nqn) -> Option<String> {
        self.inner.lock().targets.get(nqn).map(|t| t.uuid.clone())
    }

    /// The target's port goes away. Its controller goes `resetting`, then `connecting`, with
    /// no uevent (as the kernel); after the connect's `ctrl_loss_tmo` (never with -1) it is
    /// deleted. New connects are refused until [`Self::restore_port`].
    pub fn lose_port(&self, nqn: &Nqn) -> Result<(), FabricError> {
        self.lose(nqn, false)
    }

    /// The target stops exporting the subsystem on a port that still serves others: the
    /// controller starts reconnecting as after a port loss, but the first reconnect (after
    /// `reconnect_delay`) is answered "no such subsystem" with DNR, and the kernel deletes
    /// the controller then, whatever `ctrl_loss_tmo` says (measured on 6.12). Connects are
    /// refused until [`Self::restore_port`].
    pub fn unexport(&self, nqn: &Nqn) -> Result<(), FabricError> {
        self.lose(nqn, true)
    }

    fn lose(&self, nqn: &Nqn, dnr: bool) -> Result<(), FabricError> {
        let (tmo, loss) = {
            let mut guard = self.inner.lock();
            let st = &mut *guard;
            let target = st
                .targets
                .get_mut(nqn)
                .ok_or_else(|| FabricError::UnknownTarget(nqn.clone()))?;
            target.port_up = false;
            target.loss += 1;
            let loss = target.loss;
            let Some(conn) = target.conn.as_mut() else {
                return Ok(());
            };
            if !conn.state.is_reconnecting() {
                self.inner.set_state(conn, ControllerState::Resetting)?;
                self.inner
                    .log(&mut st.seqnum, conn.ctrl, "starting error recovery");
                self.inner.set_state(conn, ControllerState::Connecting)?;
                let delay = conn.req.reconnect_delay.unwrap_or(10);
                self.inner.log(
                    &mut st.seqnum,
                    conn.ctrl,
                    &format!("Reconnecting in {delay} seconds..."),
                );
            }
            tracing::info!(%nqn, controller = conn.ctrl_name(), dnr, "emulated port lost: controller connecting");
            let tmo = if dnr {
                i32::try_from(conn.req.reconnect_delay.unwrap_or(10)).unwrap_or(i32::MAX)
            } else {
                conn.req.ctrl_loss_tmo.unwrap_or(600)
            };
            (tmo, loss)
        };
        if tmo >= 0 {
            self.inner.arm_loss_timer(nqn, loss, tmo)?;
        }
        Ok(())
    }

    /// The target's port is back: a `connecting` controller is `live` again on the same device
    /// (head `change`, then controller `change` with `NVME_EVENT=connected`); connects succeed.
    pub fn restore_port(&self, nqn: &Nqn) -> Result<(), FabricError> {
        let mut guard = self.inner.lock();
        let st = &mut *guard;
        let target = st
            .targets
            .get_mut(nqn)
            .ok_or_else(|| FabricError::UnknownTarget(nqn.clone()))?;
        target.port_up = true;
        let Some(conn) = target.conn.as_mut() else {
            return Ok(());
        };
        if !conn.state.is_reconnecting() {
            return Ok(());
        }
        self.inner.set_state(conn, ControllerState::Live)?;
        self.inner.log_queues(&mut st.seqnum, conn.ctrl);
        self.inner.log(
            &mut st.seqnum,
            conn.ctrl,
            "Successfully reconnected (attempt 1/60)",
        );
        // The target changed the namespace while the host was away: the kernel's scan after
        // the reconnect finds its identifiers changed and removes it; the new one appears
        // only at the next scan (an AEN, or a rescan).
        let changed = conn.ns.as_ref().is_some_and(|ns| ns.uuid != target.uuid);
        let mut batch = Vec::new();
        if changed {
            self.inner.log(
                &mut st.seqnum,
                conn.ctrl,
                &format!("identifiers changed for nsid {NSID}"),
            );
            // The head is revalidated first (its `change`), then the controller announces
            // the reconnect, then the scan removes the namespace.
            if let Some(ns) = &conn.ns {
                batch.push((
                    ns.devpath.clone(),
                    disk_event(
                        Action::Change,
                        &ns.name,
                        &ns.devpath,
                        ns.loop_dev.dev_num(),
                        ns.loop_dev.diskseq(),
                        &self.inner.cfg.dev_root,
                    ),
                ));
            }
            batch.push((
                conn.ctrl_devpath.clone(),
                self.inner
                    .controller_props(conn, Action::Change, Some("connected")),
            ));
            let ns = conn.ns.take();
            tracing::info!(%nqn, controller = conn.ctrl_name(), "emulated port back: the namespace changed, removed");
            for (devpath, props) in batch {
                send(
                    &self.inner.cfg,
                    &mut st.seqnum,
                    &st.injector,
                    &devpath,
                    props,
                )?;
            }
            if let Some(ns) = ns {
                self.inner.remove_namespace(st, ns, true)?;
            }
            return Ok(());
        }
        if let Some(ns) = &conn.ns {
            batch.push((
                ns.devpath.clone(),
                disk_event(
                    Action::Change,
                    &ns.name,
                    &ns.devpath,
                    ns.loop_dev.dev_num(),
                    ns.loop_dev.diskseq(),
                    &self.inner.cfg.dev_root,
                ),
            ));
        }
        batch.push((
            conn.ctrl_devpath.clone(),
            self.inner
                .controller_props(conn, Action::Change, Some("connected")),
        ));
        tracing::info!(%nqn, controller = conn.ctrl_name(), "emulated port back: controller live");
        for (devpath, props) in batch {
            send(
                &self.inner.cfg,
                &mut st.seqnum,
                &st.injector,
                &devpath,
                props,
            )?;
        }
        Ok(())
    }

    /// The controller's `ctrl_loss_tmo` runs out now (a test does not wait for it): the
    /// controller, its head and its subsystem are deleted.
    pub fn expire(&self, nqn: &Nqn) -> Result<(), FabricError> {
        let mut guard = self.inner.lock();
        let st = &mut *guard;
        let target = st
            .targets
            .get_mut(nqn)
            .ok_or_else(|| FabricError::UnknownTarget(nqn.clone()))?;
        let conn = target
            .conn
            .take()
            .ok_or_else(|| FabricError::NotConnected(nqn.clone()))?;
        tracing::info!(%nqn, controller = conn.ctrl_name(), "emulated ctrl_loss_tmo expired: controller deleted");
        self.inner.tear_down(st, conn, true)
    }

    /// The connect request of a connected target's controller.
    pub fn request_of(&self, nqn: &Nqn) -> Option<ConnectRequest> {
        let st = self.inner.lock();
        st.targets.get(nqn)?.conn.as_ref().map(|c| c.req.clone())
    }

    /// The controller is deleted and connected again at once with its recorded request, by
    /// someone other than the plugin (an operator's `nvme connect`): the namespace comes back
    /// as a new incarnation (a new loop device, a new `diskseq`; the same name unless another
    /// controller holds the number by then).
    pub fn reconnect(&self, nqn: &Nqn) -> Result<ConnectOutcome, FabricError> {
        let req = {
            let st = self.inner.lock();
            st.targets
                .get(nqn)
                .and_then(|t| t.conn.as_ref())
                .map(|c| c.req.clone())
                .ok_or_else(|| FabricError::NotConnected(nqn.clone()))?
        };
        self.lose_controller(nqn)?;
        self.restore_port(nqn)?;
        self.connect(&req)
    }

    /// The port is lost and the controller deleted at once (`lose_port` + `expire`).
    pub fn lose_controller(&self, nqn: &Nqn) -> Result<(), FabricError> {
        self.lose_port(nqn)?;
        self.expire(nqn)
    }

    /// The target's namespace is disabled (`enable` 0 on nvmet): the host removes its head
    /// (its device stops working), the controller stays `live`.
    pub fn disable_namespace(&self, nqn: &Nqn) -> Result<(), FabricError> {
        let mut guard = self.inner.lock();
        let st = &mut *guard;
        let target = st
            .targets
            .get_mut(nqn)
            .ok_or_else(|| FabricError::UnknownTarget(nqn.clone()))?;
        target.ns_enabled = false;
        let Some(ns) = target.conn.as_mut().and_then(|c| c.ns.take()) else {
            return Ok(());
        };
        self.inner.remove_namespace(st, ns, true)
    }

    /// The target's namespace is enabled again: the host rescans and adds it back as a new
    /// incarnation (same name, new loop device, new `diskseq`).
    pub fn enable_namespace(&self, nqn: &Nqn) -> Result<(), FabricError> {
        let mut guard = self.inner.lock();
        let st = &mut *guard;
        let target = st
            .targets
            .get_mut(nqn)
            .ok_or_else(|| FabricError::UnknownTarget(nqn.clone()))?;
        target.ns_enabled = true;
        self.inner.scan(st, nqn)
    }

    /// The target is rebuilt with another volume behind the same NQN: a new namespace uuid and
    /// a fresh, empty backing file. Takes effect for the next namespace the host sees (after a
    /// reconnect or a rescan); the old backing file is kept beside it.
    pub fn replace_namespace(&self, nqn: &Nqn) -> Result<(), FabricError> {
        let mut st = self.inner.lock();
        let target = st
            .targets
            .get_mut(nqn)
            .ok_or_else(|| FabricError::UnknownTarget(nqn.clone()))?;
        let generation = target.loss + 1_000;
        target.uuid = uuid_for(nqn, generation);
        let backing = self
            .inner
            .cfg
            .backing_dir
            .join(format!("{nqn}.{generation}.img"));
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&backing)
            .map_err(tree_err("create backing file", &backing))?;
        f.set_len(target.size_bytes)
            .map_err(tree_err("size backing file", &backing))?;
        target.backing = backing;
        tracing::info!(%nqn, uuid = target.uuid, "emulated target: another namespace behind the NQN");
        Ok(())
    }

    /// The path dies under the namespace: the backing file is truncated to 0 and the loop
    /// capacity re-read, so every I/O of a mounted filesystem fails with EIO.
    pub fn kill_path(&self, nqn: &Nqn) -> Result<(), FabricError> {
        let st = self.inner.lock();
        let target = st
            .targets
            .get(nqn)
            .ok_or_else(|| FabricError::UnknownTarget(nqn.clone()))?;
        let ns = target
            .conn
            .as_ref()
            .and_then(|c| c.ns.as_ref())
            .ok_or_else(|| FabricError::NotConnected(nqn.clone()))?;
        File::options()
            .write(true)
            .open(&target.backing)
            .and_then(|f| f.set_len(0))
            .map_err(tree_err("truncate", &target.backing))?;
        ns.loop_dev.set_capacity()?;
        tracing::info!(%nqn, loop_dev = ns.loop_dev.name(), "emulated path killed");
        Ok(())
    }

    /// Tear down every connection (no events) and detach every loop device this fabric
    /// attached. Idempotent; also run on drop.
    pub fn shutdown(&self) {
        let mut guard = self.inner.lock();
        let st = &mut *guard;
        if self.inner.cfg.persist.is_some() {
            // Cluster mode: the connections outlive the process, as the kernel's do.
            for ns in st
                .targets
                .values_mut()
                .filter_map(|t| t.conn.as_mut())
                .filter_map(|c| c.ns.as_mut())
            {
                ns.loop_dev.release();
            }
            return;
        }
        let conns: Vec<Connection> = st
            .targets
            .values_mut()
            .filter_map(|t| t.conn.take())
            .collect();
        for conn in conns {
            let name = conn.ctrl_name();
            if let Err(e) = self.inner.tear_down(st, conn, false) {
                tracing::warn!(controller = name, error = %e, "emulated teardown failed");
            }
        }
    }
}

impl Inner {
    /// Add a target with a sparse backing file `<nqn>.img`. With `reuse`, an existing file
    /// is the target's data (cluster mode: a volume created before a restart); otherwise an
    /// existing file is an error.
    fn create_target(
        &self,
        st: &mut State,
        nqn: &Nqn,
        size_bytes: u64,
        reuse: bool,
    ) -> Result<PathBuf, FabricError> {
        if st.targets.contains_key(nqn) {
            return Err(FabricError::TargetExists(nqn.clone()));
        }
        let backing = self.cfg.backing_dir.join(format!("{nqn}.img"));
        let f = OpenOptions::new()
            .write(true)
            .create_new(!reuse)
            .create(reuse)
            .truncate(false)
            .open(&backing)
            .map_err(tree_err("create backing file", &backing))?;
        let existing = f
            .metadata()
            .map_err(tree_err("stat backing file", &backing))?
            .len();
        let size_bytes = if existing > 0 {
            existing
        } else {
            f.set_len(size_bytes)
                .map_err(tree_err("size backing file", &backing))?;
            size_bytes
        };
        st.targets.insert(
            nqn.clone(),
            Target {
                backing: backing.clone(),
                size_bytes,
                uuid: uuid_for(nqn, 0),
                port_up: true,
                ns_enabled: true,
                conn: None,
                loss: 0,
                read_only: false,
            },
        );
        tracing::info!(%nqn, size_bytes, reused = existing > 0, backing = %backing.display(), "emulated target added");
        Ok(backing)
    }

    /// How a namespace's loop device is attached: in cluster mode without autoclear, so an
    /// unused namespace keeps its device across a restart (as the kernel's does).
    fn attach_options(&self, read_only: bool) -> AttachOptions {
        AttachOptions {
            read_only,
            autoclear: self.cfg.persist.is_none(),
        }
    }

    /// Take over what an earlier process left (cluster mode): its targets, its controllers and
    /// the loop devices that carry their namespaces. A namespace whose loop device is no
    /// longer the one recorded (detached and reused meanwhile) is gone, as after a removal;
    /// a controller whose tree entry is gone is gone.
    fn adopt(self: &Arc<Self>, saved: persist::Saved) {
        let mut timers = Vec::new();
        {
            let mut st = self.lock();
            st.seqnum = saved.seqnum;
            for t in saved.targets {
                let conn = t.conn.and_then(|c| {
                    let name = format!("nvme{}", c.ctrl);
                    if !self.tree.controller_dir(&name).is_dir() {
                        tracing::warn!(nqn = %t.nqn, controller = name, "emulated controller left no tree entry: gone");
                        return None;
                    }
                    let ns = c.ns.and_then(|n| {
                        match self.cfg.loops.adopt(
                            n.loop_number,
                            DiskSeq(n.diskseq),
                            &t.backing,
                            t.read_only,
                        ) {
                            Ok(loop_dev) => Some(Namespace {
                                name: n.name,
                                path_disk: n.path_disk,
                                loop_dev,
                                devpath: n.devpath,
                                uuid: n.uuid,
                            }),
                            Err(e) => {
                                tracing::warn!(nqn = %t.nqn, namespace = n.name, error = %e, "emulated namespace's loop device is gone: namespace removed");
                                if let Some(p) = &n.path_disk {
                                    let _ = self.tree.remove_disk(p);
                                }
                                let _ = self.tree.remove_disk(&n.name);
                                // Only the node we made: a block node of this number.
                                if let Ok(dev) = n.dev.parse::<DevNum>() {
                                    let node = self.cfg.dev_root.join(&n.name);
                                    if let Err(e) = remove_node_if_ours(&node, dev) {
                                        tracing::warn!(node = %node.display(), error = %e, "removing the gone namespace's node");
                                    }
                                }
                                None
                            }
                        }
                    });
                    Some(Connection {
                        ctrl: c.ctrl,
                        subsys: c.subsys,
                        ns,
                        req: c.req,
                        state: ControllerState::parse(&c.state),
                        ctrl_devpath: c.ctrl_devpath,
                        subsys_devpath: c.subsys_devpath,
                    })
                });
                if let Some(c) = &conn {
                    tracing::info!(nqn = %t.nqn, controller = c.ctrl_name(), state = c.state.as_str(),
                        namespace = c.ns.as_ref().map(|n| n.name.as_str()), "emulated connection adopted");
                    // The loss timer restarts whole: the emulation does not know how long the
                    // port has been gone (documented in the README's cluster mode section).
                    if !t.port_up && c.state.is_reconnecting() {
                        if let Some(tmo) = c.req.ctrl_loss_tmo.filter(|v| *v >= 0) {
                            timers.push((t.nqn.clone(), t.loss, tmo));
                        }
                    }
                }
                st.targets.insert(
                    t.nqn,
                    Target {
                        backing: t.backing,
                        size_bytes: t.size_bytes,
                        uuid: t.uuid,
                        port_up: t.port_up,
                        ns_enabled: t.ns_enabled,
                        conn,
                        loss: t.loss,
                        read_only: t.read_only,
                    },
                );
            }
        }
        for (nqn, loss, tmo) in timers {
            if let Err(e) = self.arm_loss_timer(&nqn, loss, tmo) {
                tracing::warn!(%nqn, error = %e, "emulated ctrl_loss_tmo timer");
            }
        }
    }

    /// Delete the controller of loss number `loss` after `tmo` seconds unless it is back.
    fn arm_loss_timer(self: &Arc<Self>, nqn: &Nqn, loss: u64, tmo: i32) -> Result<(), FabricError> {
        let weak = Arc::downgrade(self);
        let nqn = nqn.clone();
        let wait = Duration::from_secs(u64::try_from(tmo).unwrap_or(0));
        std::thread::Builder::new()
            .name("emulated-ctrl-loss".into())
            .spawn(move || {
                std::thread::sleep(wait);
                Inner::expire_if(&weak, &nqn, loss);
            })
            .map(|_| ())
            .map_err(|e| FabricError::io("spawn", Path::new("ctrl_loss_tmo timer"), e))
    }

    /// The host scans the target's namespaces: an enabled namespace it does not have yet is
    /// added (with its `add` event) on a live controller.
    fn scan(&self, st: &mut State, nqn: &Nqn) -> Result<(), FabricError> {
        let target = st
            .targets
            .get_mut(nqn)
            .ok_or_else(|| FabricError::UnknownTarget(nqn.clone()))?;
        let (backing, size, uuid, ro) = (
            target.backing.clone(),
            target.size_bytes,
            target.uuid.clone(),
            target.read_only,
        );
        let Some(conn) = target.conn.as_mut() else {
            return Ok(());
        };
        if !target.ns_enabled || conn.ns.is_some() || conn.state != ControllerState::Live {
            return Ok(());
        }
        let opts = self.attach_options(ro);
        let loop_dev = self.cfg.loops.attach(&backing, opts)?;
        let ns = self.add_namespace(conn, loop_dev, size, &uuid)?;
        let props = disk_event(
            Action::Add,
            &ns.name,
            &ns.devpath,
            ns.loop_dev.dev_num(),
            ns.loop_dev.diskseq(),
            &self.cfg.dev_root,
        );
        let devpath = ns.devpath.clone();
        conn.ns = Some(ns);
        send(&self.cfg, &mut st.seqnum, &st.injector, &devpath, props)
    }

    fn lock(&self) -> Locked<'_> {
        // A panic while holding the lock leaves the state as consistent as any error path does.
        Locked {
            guard: self.state.lock().unwrap_or_else(|p| p.into_inner()),
            inner: self,
            touched: false,
        }
    }

    /// The `ctrl_loss_tmo` timer of loss number `loss` ran out.
    fn expire_if(weak: &Weak<Inner>, nqn: &Nqn, loss: u64) {
        let Some(inner) = weak.upgrade() else {
            return;
        };
        let mut guard = inner.lock();
        let st = &mut *guard;
        let Some(target) = st.targets.get_mut(nqn) else {
            return;
        };
        let still = target.loss == loss
            && !target.port_up
            && target
                .conn
                .as_ref()
                .is_some_and(|c| c.state.is_reconnecting());
        if !still {
            return;
        }
        if let Some(conn) = target.conn.take() {
            tracing::info!(%nqn, controller = conn.ctrl_name(), "emulated ctrl_loss_tmo expired: controller deleted");
            if let Err(e) = inner.tear_down(st, conn, true) {
                tracing::warn!(%nqn, error = %e, "emulated controller deletion");
            }
        }
    }

    /// A line in the emulation's kernel log, as the NVMe core prints it (nobody reading it is
    /// fine: the log is only a hint).
    fn log(&self, seqnum: &mut u64, ctrl: u32, text: &str) {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        *seqnum += 1;
        let rec = rds_devices::kmsg::format_record(
            *seqnum,
            &format!("nvme nvme{ctrl}: {text}"),
            Some(DevNum::new(EMULATED_MAJOR, ctrl)),
        );
        let path = self.cfg.dev_root.join("kmsg");
        if let Ok(mut f) = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
        {
            let _ = f.write_all(rec.as_bytes());
        }
    }

    /// What nvme-tcp prints when it sets up a controller's queues.
    fn log_queues(&self, seqnum: &mut u64, ctrl: u32) {
        self.log(seqnum, ctrl, "creating 2 I/O queues.");
        self.log(seqnum, ctrl, "mapped 2/0/0 default/read/poll queues.");
    }

    fn set_state(&self, conn: &mut Connection, state: ControllerState) -> Result<(), FabricError> {
        let name = conn.ctrl_name();
        self.tree
            .set_controller_state(&name, state.as_str())
            .map_err(tree_err("write state of", &self.tree.controller_dir(&name)))?;
        conn.state = state;
        Ok(())
    }

    /// The lowest controller number no live controller, node or tree entry uses (the
    /// kernel's instance allocator hands out the lowest free one).
    fn alloc_ctrl(&self, st: &State) -> u32 {
        let in_use = |n: u32| {
            sysfs::class_nvme(&self.cfg.sys_root)
                .join(format!("nvme{n}"))
                .exists()
                || self
                    .cfg
                    .sys_root
                    .join(format!("class/nvme-subsystem/nvme-subsys{n}"))
                    .exists()
                || self.cfg.dev_root.join(format!("nvme{n}n{NSID}")).exists()
                || st.targets.values().any(|t| {
                    t.conn
                        .as_ref()
                        .is_some_and(|c| c.ctrl == n || c.subsys == n)
                })
        };
        (0..).find(|n| !in_use(*n)).unwrap_or(0)
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

    /// Write subsystem, controller and (if enabled) namespace into the tree, create the node,
    /// send the `add` events. On failure everything done so far is undone.
    fn bring_up(
        &self,
        st: &mut State,
        nqn: &Nqn,
        req: ConnectRequest,
    ) -> Result<Connection, FabricError> {
        let ctrl = self.alloc_ctrl(st);
        let target = st
            .targets
            .get(nqn)
            .ok_or_else(|| FabricError::UnknownTarget(nqn.clone()))?;
        let (backing, size, uuid, enabled, ro) = (
            target.backing.clone(),
            target.size_bytes,
            target.uuid.clone(),
            target.ns_enabled,
            target.read_only,
        );
        let mut conn = Connection {
            ctrl,
            // The kernel names a new subsystem after its first controller's instance.
            subsys: ctrl,
            ns: None,
            req,
            state: ControllerState::Live,
            ctrl_devpath: String::new(),
            subsys_devpath: String::new(),
        };
        if let Err(e) = self.write_controller(&mut conn, nqn) {
            let _ = self.tear_down(st, conn, false);
            return Err(e);
        }
        self.log_queues(&mut st.seqnum, ctrl);
        self.log(
            &mut st.seqnum,
            ctrl,
            &format!(
                "new ctrl: NQN \"{nqn}\", addr {}:{}, hostnqn: {}",
                conn.req.traddr,
                conn.req.trsvcid,
                conn.req.host_nqn.as_deref().unwrap_or("")
            ),
        );
        let mut batch = vec![
            (
                conn.ctrl_devpath.clone(),
                self.controller_props(&conn, Action::Add, None),
            ),
            (
                conn.subsys_devpath.clone(),
                subsystem_event(Action::Add, &conn.subsys_devpath),
            ),
            (
                conn.ctrl_devpath.clone(),
                self.controller_props(&conn, Action::Change, Some("connected")),
            ),
        ];
        if enabled {
            let ns = self
                .cfg
                .loops
                .attach(&backing, self.attach_options(ro))
                .map_err(FabricError::from)
                .and_then(|l| self.add_namespace(&conn, l, size, &uuid));
            match ns {
                Ok(ns) => {
                    batch.push((
                        ns.devpath.clone(),
                        disk_event(
                            Action::Add,
                            &ns.name,
                            &ns.devpath,
                            ns.loop_dev.dev_num(),
                            ns.loop_dev.diskseq(),
                            &self.cfg.dev_root,
                        ),
                    ));
                    conn.ns = Some(ns);
                }
                Err(e) => {
                    let _ = self.tear_down(st, conn, false);
                    return Err(e);
                }
            }
        }
        for (devpath, props) in batch {
            if let Err(e) = send(&self.cfg, &mut st.seqnum, &st.injector, &devpath, props) {
                let _ = self.tear_down(st, conn, false);
                return Err(e);
            }
        }
        Ok(conn)
    }

    fn write_controller(&self, conn: &mut Connection, nqn: &Nqn) -> Result<(), FabricError> {
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
        Ok(())
    }

    /// Write a namespace of `conn` (head and hidden path with multipath), its node and its
    /// `dev/block` link; on failure the loop device is detached (by drop).
    fn add_namespace(
        &self,
        conn: &Connection,
        loop_dev: LoopDevice,
        size_bytes: u64,
        uuid: &str,
    ) -> Result<Namespace, FabricError> {
        let root = &self.cfg.sys_root;
        let ctrl_name = conn.ctrl_name();
        let name = if self.cfg.multipath {
            format!("nvme{}n{NSID}", conn.subsys)
        } else {
            format!("nvme{}n{NSID}", conn.ctrl)
        };
        let spec = NamespaceSpec {
            name: name.clone(),
            nsid: NSID,
            dev: loop_dev.dev_num(),
            diskseq: Some(loop_dev.diskseq()),
            size_sectors: size_bytes / 512,
            uuid: Some(uuid.to_owned()),
            nguid: None,
            wwid: None,
        };
        let mut path_disk = None;
        let devpath = if self.cfg.multipath {
            let devpath = self
                .tree
                .add_head(conn.subsys, &spec)
                .map_err(tree_err("write namespace head under", root))?;
            let path_name = format!("nvme{}c{}n{NSID}", conn.subsys, conn.ctrl);
            self.tree
                .add_path(
                    &ctrl_name,
                    &NamespaceSpec {
                        name: path_name.clone(),
                        diskseq: None,
                        ..spec.clone()
                    },
                )
                .map_err(tree_err("write namespace path under", root))?;
            path_disk = Some(path_name);
            devpath
        } else {
            self.tree
                .add_namespace(&ctrl_name, &spec)
                .map_err(tree_err("write namespace under", root))?
        };
        let ns = Namespace {
            name,
            path_disk,
            loop_dev,
            devpath,
            uuid: uuid.to_owned(),
        };
        let node = self.cfg.dev_root.join(&ns.name);
        let _ = remove_node_if_ours(&node, ns.loop_dev.dev_num());
        if let Err(e) = mknod_block(&node, ns.loop_dev.dev_num()) {
            let _ = self.remove_tree_namespace(&ns);
            return Err(FabricError::io("mknod", &node, e));
        }
        let real = self
            .cfg
            .loops
            .sys_root()
            .join("block")
            .join(ns.loop_dev.name());
        let real = std::fs::canonicalize(&real).unwrap_or(real);
        self.tree
            .link_dev_block(ns.loop_dev.dev_num(), &real)
            .map_err(tree_err("link dev/block under", root))?;
        Ok(ns)
    }

    fn remove_tree_namespace(&self, ns: &Namespace) -> Result<(), FabricError> {
        let root = &self.cfg.sys_root;
        if let Some(p) = &ns.path_disk {
            self.tree
                .remove_disk(p)
                .map_err(tree_err("remove path disk under", root))?;
        }
        self.tree
            .remove_disk(&ns.name)
            .map_err(tree_err("remove namespace under", root))?;
        self.tree
            .unlink_dev_block(ns.loop_dev.dev_num())
            .map_err(tree_err("unlink dev/block under", root))
    }

    /// Remove a namespace as the kernel does when it goes: its device stops working (the
    /// loop device is cut off, the backing file untouched), tree entries and node go, the
    /// head's `remove` event is sent (when `events`).
    fn remove_namespace(
        &self,
        st: &mut State,
        ns: Namespace,
        events: bool,
    ) -> Result<(), FabricError> {
        let mut first: Option<FabricError> = None;
        let mut keep = |r: Result<(), FabricError>| {
            if let Err(e) = r {
                tracing::warn!(error = %e, "emulated namespace removal step failed");
                first.get_or_insert(e);
            }
        };
        keep(ns.loop_dev.cut_off().map_err(FabricError::from));
        keep(self.remove_tree_namespace(&ns));
        keep(
            remove_node_if_ours(&self.cfg.dev_root.join(&ns.name), ns.loop_dev.dev_num())
                .map_err(tree_err("remove node", &self.cfg.dev_root)),
        );
        if events {
            let props = disk_event(
                Action::Remove,
                &ns.name,
                &ns.devpath,
                ns.loop_dev.dev_num(),
                ns.loop_dev.diskseq(),
                &self.cfg.dev_root,
            );
            keep(send(
                &self.cfg,
                &mut st.seqnum,
                &st.injector,
                &ns.devpath,
                props,
            ));
        }
        // While mounted the device only gets autoclear and lives on, as with `losetup -d`.
        keep(ns.loop_dev.detach().map_err(FabricError::from));
        first.map_or(Ok(()), Err)
    }

    /// Delete a controller as the kernel does: `deleting`, its namespace removed, then the
    /// controller and its subsystem (with their `remove` events when `events`). Keeps going
    /// after errors and returns the first.
    fn tear_down(
        &self,
        st: &mut State,
        mut conn: Connection,
        events: bool,
    ) -> Result<(), FabricError> {
        let root = &self.cfg.sys_root;
        let name = conn.ctrl_name();
        let mut first: Option<FabricError> = None;
        let mut keep = |r: Result<(), FabricError>| {
            if let Err(e) = r {
                tracing::warn!(controller = name, error = %e, "emulated teardown step failed");
                first.get_or_insert(e);
            }
        };
        if self.tree.controller_dir(&conn.ctrl_name()).is_dir() {
            keep(self.set_state(&mut conn, ControllerState::Deleting));
        }
        self.log(
            &mut st.seqnum,
            conn.ctrl,
            &format!("Removing ctrl: NQN \"{}\"", conn.req.nqn),
        );
        if let Some(ns) = conn.ns.take() {
            keep(self.remove_namespace(st, ns, events));
        }
        keep(
            self.tree
                .remove_controller(&conn.ctrl_name())
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
        first.map_or(Ok(()), Err)
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
        let inner = &self.inner;
        if !inner.cfg.managed.covers(&req.nqn) {
            return Err(FabricError::NotManaged {
                what: "connect".into(),
                subsysnqn: req.nqn.to_string(),
                prefix: inner.cfg.managed.to_string(),
            });
        }
        req.to_options_line()?;
        let mut guard = inner.lock();
        let st = &mut *guard;
        if let (Some(default), false) = (
            inner.cfg.create_on_connect,
            st.targets.contains_key(&req.nqn),
        ) {
            inner.create_target(st, &req.nqn, req.capacity_hint.unwrap_or(default), true)?;
        }
        let target = st.targets.get(&req.nqn).ok_or_else(|| {
            refused(
                &req.nqn,
                req.address(),
                "the emulated target has no such subsystem",
            )
        })?;
        if let Some(c) = &target.conn {
            // The kernel: EALREADY for the same subsystem and address, reported as the
            // existing controller.
            return Ok(ConnectOutcome {
                controller: c.ctrl_name(),
                already_connected: true,
            });
        }
        if !target.port_up {
            return Err(refused(
                &req.nqn,
                req.address(),
                "failed to connect socket: -111 (the emulated target's port is down)",
            ));
        }
        let conn = inner.bring_up(st, &req.nqn, req.clone())?;
        let outcome = ConnectOutcome {
            controller: conn.ctrl_name(),
            already_connected: false,
        };
        if let Some(ns) = &conn.ns {
            tracing::info!(nqn = %req.nqn, controller = outcome.controller, namespace = ns.name,
                dev = %ns.loop_dev.dev_num(), diskseq = %ns.loop_dev.diskseq(), "emulated connect");
        }
        if let Some(t) = st.targets.get_mut(&req.nqn) {
            t.conn = Some(conn);
        }
        Ok(outcome)
    }

    fn disconnect(&self, controller: &str) -> Result<(), FabricError> {
        let inner = &self.inner;
        // The same guard as the kernel fabric, read from the same tree.
        let info = sysfs::read_controller(&inner.cfg.sys_root, controller)?
            .ok_or_else(|| FabricError::NoSuchController(controller.to_owned()))?;
        let covered = Nqn::parse(&info.subsysnqn).is_ok_and(|n| inner.cfg.managed.covers(&n));
        if !covered {
            return Err(FabricError::NotManaged {
                what: format!("disconnect {controller}"),
                subsysnqn: info.subsysnqn,
                prefix: inner.cfg.managed.to_string(),
            });
        }
        let mut guard = inner.lock();
        let st = &mut *guard;
        let conn = st
            .targets
            .values_mut()
            .find(|t| t.conn.as_ref().is_some_and(|c| c.ctrl_name() == controller))
            .and_then(|t| t.conn.take())
            .ok_or_else(|| FabricError::NoSuchController(controller.to_owned()))?;
        tracing::info!(controller, nqn = %info.subsysnqn, "emulated disconnect");
        inner.tear_down(st, conn, true)
    }

    fn controllers(&self) -> Result<Vec<ControllerInfo>, FabricError> {
        sysfs::scan_controllers(&self.inner.cfg.sys_root)
    }

    fn rescan(&self, controller: &str) -> Result<(), FabricError> {
        let inner = &self.inner;
        let info = sysfs::read_controller(&inner.cfg.sys_root, controller)?
            .ok_or_else(|| FabricError::NoSuchController(controller.to_owned()))?;
        let nqn = Nqn::parse(&info.subsysnqn)
            .ok()
            .filter(|n| inner.cfg.managed.covers(n))
            .ok_or_else(|| FabricError::NotManaged {
                what: format!("rescan {controller}"),
                subsysnqn: info.subsysnqn.clone(),
                prefix: inner.cfg.managed.to_string(),
            })?;
        let mut guard = inner.lock();
        tracing::info!(controller, %nqn, "emulated rescan");
        inner.scan(&mut guard, &nqn)
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
    fn namespace_uuid_is_stable_per_nqn_and_generation_and_well_formed() {
        let a = Nqn::parse("nqn.2000-02.com.mikrotik:pvc-a").unwrap();
        let b = Nqn::parse("nqn.2000-02.com.mikrotik:pvc-b").unwrap();
        let ua = uuid_for(&a, 0);
        assert_eq!(
            ua,
            uuid_for(&a, 0),
            "a reconnect must see the same namespace uuid"
        );
        assert_ne!(ua, uuid_for(&b, 0));
        assert_ne!(ua, uuid_for(&a, 1), "another volume behind the same NQN");
        let groups: Vec<usize> = ua.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12], "uuid {ua} must be 8-4-4-4-12");
        assert!(ua.bytes().all(|c| c == b'-' || c.is_ascii_hexdigit()));
    }
}
