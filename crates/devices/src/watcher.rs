//! The device watcher task and its cheap-to-clone handle (the resolver).
//!
//! Start-up follows "subscribe, then scan, then replay": the netlink socket is bound before
//! sysfs is read, so an event that races the scan is still received (and applying it twice is
//! harmless). The scan is replayed as synthetic events (ending with `Resynced`) on the event
//! channel, and the model is complete before [`spawn`] returns, so the first `resolve` call
//! already answers.
//!
//! The task owns the writes; the handle reads the model under a read lock (hash-map lookups
//! only, never sysfs) and waits on a `watch` generation counter bumped after every update.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};
use std::time::Duration;

use rds_types::{DevNum, Nqn};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

use crate::model::{
    BlockInfo, ControllerInfo, DeviceEvent, Model, NamespaceDevice, Observation, Snapshot,
};
use crate::scan::{ScanError, SysfsReader, SUBSYSTEMS};
use crate::source::{Received, SourceKind, Sources, UeventSocket};
use crate::uevent::{Action, Origin, Uevent};

/// Default receive buffer: 8 MiB holds bursts of thousands of uevents.
pub const DEFAULT_RCVBUF: usize = 8 << 20;
/// Default period of the controller state re-check (see [`WatcherConfig::state_poll`]).
pub const DEFAULT_STATE_POLL: Duration = Duration::from_secs(1);
/// Default capacity of the event channel.
pub const DEFAULT_CHANNEL_CAPACITY: usize = 4096;

/// Watcher configuration. Roots are values: production passes `/sys` and `/run`, tests and
/// the emulated fabric pass temporary directories.
#[derive(Debug, Clone)]
pub struct WatcherConfig {
    pub sys_root: PathBuf,
    pub run_root: PathBuf,
    pub sources: SourceKind,
    /// Socket receive buffer in bytes.
    pub rcvbuf: usize,
    pub channel_capacity: usize,
    /// Period of a re-read of every known controller's `state` attribute. The kernel sends
    /// no uevent when a fabrics controller starts resetting or reconnecting (only
    /// `NVME_EVENT=connected` once it is live again), so `connecting` is only observable by
    /// reading the attribute. `None` disables the re-check (events and resyncs only).
    pub state_poll: Option<Duration>,
    /// The kernel log (`/dev/kmsg`), read as a hint: an NVMe core message about a controller
    /// makes the watcher re-read controller states at once and for a short while after (see
    /// [`crate::kmsg`]). `None`: periodic re-reads only.
    pub kmsg: Option<PathBuf>,
}

impl WatcherConfig {
    pub fn new(sys_root: impl Into<PathBuf>, run_root: impl Into<PathBuf>) -> Self {
        Self {
            sys_root: sys_root.into(),
            run_root: run_root.into(),
            sources: SourceKind::Auto,
            rcvbuf: DEFAULT_RCVBUF,
            channel_capacity: DEFAULT_CHANNEL_CAPACITY,
            state_poll: Some(DEFAULT_STATE_POLL),
            kmsg: None,
        }
    }

    pub fn with_kmsg(mut self, path: Option<PathBuf>) -> Self {
        self.kmsg = path;
        self
    }

    pub fn with_state_poll(mut self, period: Option<Duration>) -> Self {
        self.state_poll = period;
        self
    }

    pub fn with_sources(mut self, sources: SourceKind) -> Self {
        self.sources = sources;
        self
    }

    pub fn with_rcvbuf(mut self, rcvbuf: usize) -> Self {
        self.rcvbuf = rcvbuf;
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("opening the uevent netlink socket")]
    Socket(#[source] std::io::Error),
    #[error("initial sysfs scan")]
    Scan(#[source] ScanError),
    #[error("the device watcher task has stopped")]
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WaitError {
    #[error("namespace {nsid} of {nqn} did not appear within {waited:?}")]
    Timeout {
        nqn: String,
        nsid: u32,
        waited: Duration,
    },
    #[error("the device watcher stopped while waiting for namespace {nsid} of {nqn}")]
    Stopped { nqn: String, nsid: u32 },
}

struct Shared {
    model: RwLock<Model>,
    generation: watch::Sender<u64>,
    sources: Sources,
    /// Set when the task has ended (socket failure): waiters stop waiting.
    stopped: AtomicBool,
}

type ResyncReply = oneshot::Sender<Result<(), ScanError>>;

/// Cheap-to-clone handle: resolver queries, waits and resync requests.
#[derive(Clone)]
pub struct DeviceWatcherHandle {
    shared: Arc<Shared>,
    resync_tx: mpsc::Sender<ResyncReply>,
}

/// The handle is the resolver.
pub type Resolver = DeviceWatcherHandle;

impl std::fmt::Debug for DeviceWatcherHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceWatcherHandle")
            .field("sources", &self.shared.sources)
            .field("generation", &*self.shared.generation.borrow())
            .finish()
    }
}

/// Starts the watcher (inside a tokio runtime): binds the socket, scans `sys_root`, and
/// returns the handle and the event stream (the scan replay first).
pub fn spawn(
    config: WatcherConfig,
) -> Result<(DeviceWatcherHandle, mpsc::Receiver<DeviceEvent>), WatchError> {
    let sources = config.sources.resolve(&config.run_root);
    info!(
        kernel = sources.kernel,
        udev = sources.udev,
        sys_root = %config.sys_root.display(),
        "device watcher sources"
    );
    // Subscribe first...
    let socket = UeventSocket::open(sources, config.rcvbuf).map_err(WatchError::Socket)?;
    if let Ok(effective) = socket.rcvbuf() {
        debug!(
            requested = config.rcvbuf,
            effective, "uevent receive buffer"
        );
    }
    // ...then scan.
    let reader = SysfsReader::new(config.sys_root.clone());
    let snap = reader.scan().map_err(WatchError::Scan)?;
    let mut model = Model::new();
    let replay = model.reconcile(snap);
    let (generation, _) = watch::channel(0u64);
    let shared = Arc::new(Shared {
        model: RwLock::new(model),
        generation,
        sources,
        stopped: AtomicBool::new(false),
    });
    let (tx, rx) = mpsc::channel(config.channel_capacity.max(1));
    let (resync_tx, resync_rx) = mpsc::channel(16);
    let kmsg = config.kmsg.as_ref().and_then(|p| {
        match crate::kmsg::Kmsg::open(p).and_then(|k| {
            // SAFETY: the AsyncFd owns the log's file, whose fd stays open and unchanged until
            // it is dropped.
            unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(k, tokio::io::Interest::READABLE)
            }
            .map_err(|e| e.into_parts().1)
        }) {
            Ok(k) => {
                info!(path = %p.display(), "reading the kernel log for controller state hints");
                Some(k)
            }
            Err(e) => {
                warn!(path = %p.display(), error = %e, "kernel log unavailable: controller states are re-read periodically only");
                None
            }
        }
    });
    let task = Task {
        shared: shared.clone(),
        reader,
        socket,
        tx,
        resync_rx,
        state_poll: config.state_poll,
        lagged: 0,
        kmsg,
        burst_until: None,
        stalled: None,
    };
    tokio::spawn(task.run(replay));
    Ok((DeviceWatcherHandle { shared, resync_tx }, rx))
}

impl DeviceWatcherHandle {
    fn model(&self) -> RwLockReadGuard<'_, Model> {
        self.shared
            .model
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The namespace device `nqn` resolves to now (`nsid` `None`: its lowest nsid).
    pub fn resolve(&self, nqn: &Nqn, nsid: Option<u32>) -> Option<NamespaceDevice> {
        self.model().resolve(nqn.as_str(), nsid)
    }

    /// As [`Self::resolve`] for an NQN that need not follow the plugin's NQN rules.
    pub fn resolve_raw(&self, nqn: &str, nsid: Option<u32>) -> Option<NamespaceDevice> {
        self.model().resolve(nqn, nsid)
    }

    pub fn controllers_for(&self, nqn: &Nqn) -> Vec<ControllerInfo> {
        self.model().controllers_for(nqn.as_str())
    }

    pub fn controller(&self, name: &str) -> Option<ControllerInfo> {
        self.model().controller(name).cloned()
    }

    /// Any block device by number (loop devices included).
    pub fn block(&self, dev: DevNum) -> Option<BlockInfo> {
        self.model().block(dev).cloned()
    }

    pub fn block_by_name(&self, name: &str) -> Option<BlockInfo> {
        self.model().block_by_name(name).cloned()
    }

    /// A sorted copy of the whole model.
    pub fn snapshot(&self) -> Snapshot {
        self.model().to_snapshot()
    }

    /// False once the watcher task has ended (its socket failed): the model no longer
    /// follows the kernel. For liveness probes.
    pub fn is_running(&self) -> bool {
        !self.shared.stopped.load(Ordering::Acquire)
    }

    /// Which sources are live.
    pub fn sources(&self) -> Sources {
        self.shared.sources
    }

    /// Bumped after every model update; `changed()` on it wakes after the next one.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.generation.subscribe()
    }

    /// Waits until `nqn`/`nsid` resolves, woken by the event that makes it so (no polling).
    pub async fn wait_for_namespace(
        &self,
        nqn: &Nqn,
        nsid: u32,
        deadline: Duration,
    ) -> Result<NamespaceDevice, WaitError> {
        self.wait_until(deadline, |m| m.resolve(nqn.as_str(), Some(nsid)))
            .await
            .map_err(|stopped| {
                if stopped {
                    WaitError::Stopped {
                        nqn: nqn.to_string(),
                        nsid,
                    }
                } else {
                    WaitError::Timeout {
                        nqn: nqn.to_string(),
                        nsid,
                        waited: deadline,
                    }
                }
            })
    }

    /// Waits until `probe` returns `Some` on the model (checked now, then after every update).
    /// `Err(true)` when the watcher stopped, `Err(false)` on timeout.
    pub async fn wait_until<T>(
        &self,
        deadline: Duration,
        probe: impl Fn(&Model) -> Option<T>,
    ) -> Result<T, bool> {
        // Subscribe before the first check so no update falls in between.
        let mut rx = self.shared.generation.subscribe();
        let wait = async {
            loop {
                if let Some(v) = probe(&self.model()) {
                    return Ok(v);
                }
                if self.shared.stopped.load(Ordering::Acquire) || rx.changed().await.is_err() {
                    return Err(true);
                }
            }
        };
        tokio::time::timeout(deadline, wait)
            .await
            .unwrap_or(Err(false))
    }

    /// Rescans sysfs and reconciles the model (emits the differences and `Resynced`);
    /// returns once the model is up to date.
    pub async fn resync(&self) -> Result<(), WatchError> {
        let (tx, rx) = oneshot::channel();
        self.resync_tx
            .send(tx)
            .await
            .map_err(|_| WatchError::Stopped)?;
        rx.await
            .map_err(|_| WatchError::Stopped)?
            .map_err(WatchError::Scan)
    }
}

struct Task {
    shared: Arc<Shared>,
    reader: SysfsReader,
    socket: UeventSocket,
    tx: mpsc::Sender<DeviceEvent>,
    resync_rx: mpsc::Receiver<ResyncReply>,
    state_poll: Option<Duration>,
    /// Events dropped because the receiver was full, not yet reported.
    lagged: u64,
    kmsg: Option<tokio::io::unix::AsyncFd<crate::kmsg::Kmsg>>,
    /// After a kernel-log hint, states are re-read every [`BURST_PERIOD`] until then (a
    /// transition takes a few steps: `resetting`, then `connecting`).
    burst_until: Option<tokio::time::Instant>,
    /// A whole-sysfs read that ran past [`SYSFS_WAIT`] and is still running: no other starts
    /// until it has finished (a held read must not pile up threads).
    stalled: Option<tokio::task::AbortHandle>,
}

/// Deadline of one off-the-runtime read of sysfs (a scan, or every controller's state).
const SYSFS_WAIT: Duration = Duration::from_secs(5);

/// Re-read period while a kernel-log hint is fresh, and for how long.
const BURST_PERIOD: Duration = Duration::from_millis(20);
const BURST_FOR: Duration = Duration::from_millis(600);

impl crate::kmsg::Kmsg {
    fn hints(&mut self) -> Vec<crate::kmsg::Hint> {
        let mut out = Vec::new();
        if let Err(e) = self.read_hints(&mut out) {
            debug!(error = %e, "reading the kernel log");
        }
        out
    }
}

impl std::os::fd::AsRawFd for crate::kmsg::Kmsg {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.file().as_raw_fd()
    }
}

/// Readable kernel log, or never.
async fn kmsg_ready(
    k: &mut Option<tokio::io::unix::AsyncFd<crate::kmsg::Kmsg>>,
) -> Vec<crate::kmsg::Hint> {
    match k {
        Some(k) => match k.readable_mut().await {
            Ok(mut g) => {
                let hints = g.get_inner_mut().hints();
                g.clear_ready();
                hints
            }
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// The next burst re-read, or never.
async fn burst(until: Option<tokio::time::Instant>) {
    match until {
        Some(u) if tokio::time::Instant::now() < u => tokio::time::sleep(BURST_PERIOD).await,
        _ => std::future::pending().await,
    }
}

impl Drop for Task {
    /// However the task ends (its loop breaks, or it is dropped with its runtime), waiters and
    /// `is_running` learn at once that the model is no longer followed.
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::Release);
        self.shared.generation.send_modify(|g| *g += 1);
    }
}

impl Task {
    async fn run(mut self, replay: Vec<DeviceEvent>) {
        self.emit(replay);
        let mut poll = self.state_poll.map(|p| {
            let mut i = tokio::time::interval(p.max(Duration::from_millis(1)));
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        });
        loop {
            // While events are owed a `Lagged` marker, wait for room in the channel too.
            let lag_tx = (self.lagged > 0).then(|| self.tx.clone());
            tokio::select! {
                biased;
                hints = kmsg_ready(&mut self.kmsg) => {
                    let mut nvme = false;
                    for h in hints {
                        match h {
                            crate::kmsg::Hint::Nvme(n) => {
                                debug!(hint = ?n, "kernel log: NVMe controller message");
                                nvme = true;
                            }
                            crate::kmsg::Hint::FsShutdown { device, message } => {
                                self.fs_shutdown(device, message);
                            }
                        }
                    }
                    if nvme {
                        self.recheck_states().await;
                        self.burst_until = Some(tokio::time::Instant::now() + BURST_FOR);
                    }
                }
                _ = burst(self.burst_until) => self.recheck_states().await,
                _ = tick(&mut poll) => self.recheck_states().await,
                permit = reserve(&lag_tx) => {
                    if let Some(p) = permit {
                        p.send(DeviceEvent::Lagged { missed: self.lagged });
                    }
                    self.lagged = 0;
                }
                req = self.resync_rx.recv() => match req {
                    Some(reply) => {
                        let res = self.resync().await;
                        let _ = reply.send(res);
                    }
                    // Every handle is gone: nobody can query the model any more.
                    None => break,
                },
                got = self.socket.recv() => match got {
                    Ok(Received::Event(ev)) => self.on_uevent(ev).await,
                    Ok(Received::Overflow) => {
                        warn!("uevent queue overflowed (ENOBUFS): events lost, resyncing from sysfs");
                        self.emit(vec![DeviceEvent::Overflow]);
                        if let Err(e) = self.resync().await {
                            error!(error = %e, "resync after overflow failed");
                        }
                    }
                    Ok(Received::Unreadable(why)) => {
                        warn!(reason = %why, "unreadable uevent, resyncing from sysfs");
                        if let Err(e) = self.resync().await {
                            error!(error = %e, "resync after an unreadable uevent failed");
                        }
                    }
                    Ok(Received::Ignored) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        error!(error = %e, "uevent socket failed; device watcher stops");
                        break;
                    }
                },
            }
        }
        debug!("device watcher task ended");
    }

    async fn on_uevent(&mut self, ev: Uevent) {
        if !SUBSYSTEMS.contains(&ev.subsystem.as_str()) {
            return;
        }
        // With both groups live, udevd re-broadcasts every kernel event later; a late
        // add/change for a device already removed must not resurrect it.
        if ev.origin == Origin::Udev
            && self.shared.sources.kernel
            && ev.action != Action::Remove
            && !self.reader.exists(&ev.devpath)
        {
            debug!(devpath = %ev.devpath, "stale udev event for a device no longer in sysfs");
            return;
        }
        let Some(obs) = self.reader.observe(&ev) else {
            return;
        };
        debug!(action = %ev.action, devpath = %ev.devpath, seqnum = ?ev.seqnum, "uevent");
        let events = {
            let mut m = self
                .shared
                .model
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            m.apply(obs)
        };
        if !events.is_empty() {
            self.shared.generation.send_modify(|g| *g += 1);
            self.emit(events);
        }
    }

    /// Re-reads the state of every known controller (a few tiny sysfs reads).
    async fn recheck_states(&mut self) {
        let names: Vec<String> = {
            let m = self
                .shared
                .model
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            m.controllers().map(|c| c.name.clone()).collect()
        };
        let Ok(fresh) = self
            .off_runtime("controller state re-read", move |r| {
                names
                    .iter()
                    .filter_map(|n| r.controller_by_name(n))
                    .collect::<Vec<_>>()
            })
            .await
        else {
            return;
        };
        let events: Vec<DeviceEvent> = {
            let mut m = self
                .shared
                .model
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            fresh
                .into_iter()
                .flat_map(|c| m.apply(Observation::ControllerUp(c)))
                .collect()
        };
        if !events.is_empty() {
            self.shared.generation.send_modify(|g| *g += 1);
            self.emit(events);
        }
    }

    /// Runs a read of sysfs off the runtime, bounded by [`SYSFS_WAIT`]: this task shares its
    /// thread with the rest of the notification path. Reads of many attributes (a scan,
    /// every controller's state) go here; the few a single uevent needs stay inline. Past the
    /// deadline the read is left to finish, and none other starts until it has.
    async fn off_runtime<T: Send + 'static>(
        &mut self,
        what: &'static str,
        f: impl FnOnce(&SysfsReader) -> T + Send + 'static,
    ) -> Result<T, ScanError> {
        if let Some(h) = &self.stalled {
            if !h.is_finished() {
                debug!(
                    what,
                    "an earlier sysfs read is still held by the kernel; skipped"
                );
                return Err(ScanError::Stalled(SYSFS_WAIT));
            }
            self.stalled = None;
        }
        let reader = self.reader.clone();
        let mut job = tokio::task::spawn_blocking(move || f(&reader));
        match tokio::time::timeout(SYSFS_WAIT, &mut job).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(ScanError::Read {
                path: self.reader.sys_root().to_owned(),
                source: std::io::Error::other(format!("{what} task failed: {e}")),
            }),
            Err(_) => {
                warn!(what, wait = ?SYSFS_WAIT, "a sysfs read did not finish in time; no other starts until it does");
                self.stalled = Some(job.abort_handle());
                Err(ScanError::Stalled(SYSFS_WAIT))
            }
        }
    }

    /// Discards everything queued on the socket. Called before an overflow resync: every
    /// queued message predates the scan that follows, and applying one after the scan could
    /// resurrect a device whose remove event was lost.
    fn drain(&mut self) -> usize {
        // Bounded: on a host that never stops sending, stop after a queue's worth.
        let mut n = 0;
        while n < 1 << 16 {
            match self.socket.try_recv() {
                Ok(Some(_)) => n += 1,
                _ => break,
            }
        }
        n
    }

    async fn resync(&mut self) -> Result<(), ScanError> {
        let discarded = self.drain();
        if discarded > 0 {
            debug!(discarded, "queued uevents superseded by the resync");
        }
        let snap = self.off_runtime("sysfs scan", |r| r.scan()).await??;
        let events = {
            let mut m = self
                .shared
                .model
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            m.reconcile(snap)
        };
        self.shared.generation.send_modify(|g| *g += 1);
        info!(
            changes = events.len() - 1,
            "device model resynced from sysfs"
        );
        self.emit(events);
        Ok(())
    }

    /// Queues events without ever waiting: a slow or absent reader must not stall the model
    /// (the resolver answers CSI calls from it). When the channel is full, events are dropped
    /// and counted; a [`DeviceEvent::Lagged`] marker goes out as soon as there is room.
    /// The kernel shut a filesystem down on block device `device`: its number from sysfs
    /// (`class/block/<name>/dev`; the name comes from the log, so it is checked first).
    fn fs_shutdown(&mut self, device: String, message: String) {
        let path = self
            .reader
            .sys_root()
            .join("class/block")
            .join(&device)
            .join("dev");
        match std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse::<DevNum>().ok())
        {
            Some(dev) => self.emit(vec![DeviceEvent::FilesystemShutDown {
                name: device,
                dev,
                message,
            }]),
            None => {
                warn!(
                    device,
                    message,
                    "kernel log: a filesystem was shut down on a device sysfs does not know"
                )
            }
        }
    }

    fn emit(&mut self, events: Vec<DeviceEvent>) {
        for ev in events {
            log_event(&ev);
            if self.lagged > 0 {
                match self.tx.try_send(DeviceEvent::Lagged {
                    missed: self.lagged,
                }) {
                    Ok(()) => self.lagged = 0,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        self.lagged += 1;
                        continue;
                    }
                    // Nobody listens: the model still serves the resolver.
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                }
            }
            match self.tx.try_send(ev) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    if self.lagged == 0 {
                        warn!(
                            "device event receiver is behind; dropping events until it catches up"
                        );
                    }
                    self.lagged += 1;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
    }
}

/// A slot in the event channel when `tx` is given; never completes otherwise.
async fn reserve(tx: &Option<mpsc::Sender<DeviceEvent>>) -> Option<mpsc::Permit<'_, DeviceEvent>> {
    match tx {
        Some(tx) => tx.reserve().await.ok(),
        None => std::future::pending().await,
    }
}

/// Next tick of the optional interval; never completes when there is none.
async fn tick(poll: &mut Option<tokio::time::Interval>) {
    match poll {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

fn log_event(ev: &DeviceEvent) {
    match ev {
        DeviceEvent::ControllerAdded(c) => {
            info!(ctrl = %c.name, nqn = %c.subsysnqn, state = %c.state, "controller added")
        }
        DeviceEvent::ControllerState { name, old, new, .. } => {
            info!(ctrl = %name, old = %old, new = %new, "controller state")
        }
        DeviceEvent::ControllerRemoved(c) => {
            info!(ctrl = %c.name, nqn = %c.subsysnqn, "controller removed")
        }
        DeviceEvent::NamespaceAdded {
            nqn,
            nsid,
            name,
            identity,
            ids,
        } => {
            info!(%nqn, nsid, dev = %identity.dev, diskseq = ?identity.diskseq.map(|d| d.0), name = %name, %ids, "namespace added")
        }
        DeviceEvent::NamespaceRemoved {
            nqn,
            nsid,
            name,
            identity,
        } => {
            info!(%nqn, nsid, dev = %identity.dev, diskseq = ?identity.diskseq.map(|d| d.0), name = %name, "namespace removed")
        }
        DeviceEvent::BlockAdded(b) | DeviceEvent::BlockRemoved(b) => {
            debug!(name = %b.name, dev = %b.identity.dev, diskseq = ?b.identity.diskseq.map(|d| d.0), event = if matches!(ev, DeviceEvent::BlockAdded(_)) { "added" } else { "removed" }, "block device")
        }
        DeviceEvent::BlockChanged { new, .. } => {
            debug!(name = %new.name, dev = %new.identity.dev, "block device changed")
        }
        DeviceEvent::FilesystemShutDown { name, dev, message } => {
            warn!(name = %name, dev = %dev, message = %message, "kernel log: filesystem shut down")
        }
        DeviceEvent::Overflow | DeviceEvent::Resynced | DeviceEvent::Lagged { .. } => {}
    }
}
